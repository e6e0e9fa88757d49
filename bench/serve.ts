// `npm run bench -- serve` (`kiln bench serve`): the seed's five serving configurations measured
// through a real `kiln serve` process each, one fixed-seed workload sent over HTTP.
//
//   npm run bench -- serve [--requests 24] [--configs naive,continuous,awq,speculative,combined]
//                          [--json] [--model DIR] [--draft DIR|ngram] [--spec-k 4] [--awq auto|rtn]
//                          [--rate R] [--seed S] [--device cpu] [--max-seqs N] [--no-save]
//
// Workload: N requests, prompts of 32–256 tokens of ../shared/data/brown-heldout.txt (sent as
// text), 16–128 new tokens each with ignore_eos (so every configuration generates the same
// number of tokens), temperature 0.8, a seed per request, streamed (SSE) so time to first token
// is seen by the client. Two phases per configuration:
//   saturation  all N requests at once: req/s and output tok/s at full load;
//   latency     the same N requests arriving as a Poisson process at 0.8 × naive's measured
//               saturation req/s (one rate and one arrival schedule for every configuration):
//               P50 / P99 latency and P50 time to first token.
// Configurations: naive (static batches of 8, f16), continuous (f16), awq (continuous, INT4: an
// AWQ checkpoint made by `kiln quantize --method awq` when that works, else --quant int4-rtn; the
// table says which), speculative (continuous, f16, --draft), combined (continuous + INT4 + draft).
// --max-seqs N caps the continuous configurations' sequences per step (kiln serve's default: 64).
// cost_rel: the server process's CPU-seconds per 1,000 output tokens at saturation relative to naive
// (machine-seconds, measured from /proc so other load on a shared box does not count; wall-clock
// naive tok/s ÷ tok/s off Linux).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HfTokenizer } from '../src/io/tokenizer.js';
import { DEFAULT_MODEL } from '../src/llm.js';
import { lcg } from './common.js';

const ROOT = new URL('..', import.meta.url).pathname;
const CLI = path.join(ROOT, 'src/cli.ts');
const HELDOUT = new URL('../../shared/data/brown-heldout.txt', import.meta.url).pathname;
const DRAFT = new URL('../../shared/models/brown-draft', import.meta.url).pathname;
const ALL = ['naive', 'continuous', 'awq', 'speculative', 'combined'] as const;
type Config = (typeof ALL)[number];

interface Options {
  requests: number; configs: Config[]; json: boolean; model: string; draft: string; specK: number;
  awq: 'auto' | 'rtn'; rate?: number; seed: number; device: string; save: boolean;
  /** --max-seqs for the continuous configurations (default: kiln serve's, 64). */
  maxSeqs?: number;
}

function parse(args: string[]): Options {
  const o: Options = { requests: 24, configs: [...ALL], json: false, model: DEFAULT_MODEL, draft: DRAFT, specK: 4, awq: 'auto', seed: 42, device: 'cpu', save: true };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`bench serve: ${a} needs a value`); return x; };
    if (a === '--requests') o.requests = Number(v());
    else if (a === '--configs') {
      o.configs = v().split(',').filter(Boolean) as Config[];
      for (const c of o.configs) if (!ALL.includes(c)) throw new Error(`bench serve: --configs: unknown configuration '${c}' (${ALL.join(', ')})`);
    } else if (a === '--json') o.json = true;
    else if (a === '--model') o.model = v();
    else if (a === '--draft') o.draft = v();
    else if (a === '--spec-k') o.specK = Number(v());
    else if (a === '--awq') { const x = v(); if (x !== 'auto' && x !== 'rtn') throw new Error(`bench serve: --awq must be auto or rtn, got '${x}'`); o.awq = x; }
    else if (a === '--rate') o.rate = Number(v());
    else if (a === '--seed') o.seed = Number(v());
    else if (a === '--device') o.device = v();
    else if (a === '--no-save') o.save = false;
    else if (a === '--max-seqs') o.maxSeqs = Number(v());
    else throw new Error(`bench serve: unknown option ${a} (--requests N, --configs LIST, --json, --model DIR, --draft DIR|ngram, --spec-k K, --awq auto|rtn, --rate R, --seed S, --device D, --max-seqs N, --no-save)`);
  }
  if (!Number.isInteger(o.requests) || o.requests < 1) throw new Error(`bench serve: --requests ${o.requests} must be a positive integer`);
  if (!Number.isInteger(o.specK) || o.specK < 1 || o.specK > 16) throw new Error(`bench serve: --spec-k ${o.specK} must be an integer in [1, 16]`);
  if (o.rate !== undefined && !(o.rate > 0)) throw new Error(`bench serve: --rate ${o.rate} must be positive`);
  if (!o.configs.length) throw new Error('bench serve: --configs is empty');
  if (o.maxSeqs !== undefined && (!Number.isInteger(o.maxSeqs) || o.maxSeqs < 1)) throw new Error(`bench serve: --max-seqs ${o.maxSeqs} must be a positive integer`);
  return o;
}

interface Req { prompt: string; maxTokens: number; seed: number }

function workload(model: string, n: number, seed: number): Req[] {
  if (!fs.existsSync(HELDOUT)) throw new Error(`bench serve: ${HELDOUT} is missing (../shared/data beside the checkout)`);
  const tok = HfTokenizer.fromDir(model);
  const ids = tok.encode(fs.readFileSync(HELDOUT, 'utf8'), { addSpecialTokens: false });
  const r = lcg(seed);
  return Array.from({ length: n }, (_, i) => {
    const len = 32 + Math.floor(r() * 225);
    const start = Math.floor(r() * (ids.length - len));
    return { prompt: tok.decode(ids.slice(start, start + len)), maxTokens: 16 + Math.floor(r() * 113), seed: 1000 + i };
  });
}

/** Poisson arrival times (seconds from the start) at `rate` requests/s, from a fixed seed. */
function arrivals(n: number, rate: number, seed: number): number[] {
  const r = lcg(seed ^ 0x5eed);
  let t = 0;
  return Array.from({ length: n }, () => (t += -Math.log(1 - r()) / rate));
}

// ---- the server process -------------------------------------------------------------------------

interface Served { child: ChildProcess; url: string; log: () => string }

async function startServe(args: string[]): Promise<Served> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--port', '0', '--quiet', ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`kiln serve ${args.join(' ')}: not listening after 120 s\n${err}`)); }, 120_000);
    const poll = setInterval(() => {
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) { clearInterval(poll); clearTimeout(t); resolve(m[1]!); }
    }, 50);
    child.once('exit', (code) => { clearInterval(poll); clearTimeout(t); reject(new Error(`kiln serve ${args.join(' ')} exited with ${code}:\n${err}`)); });
  });
  return { child, url, log: () => err };
}

/** CPU seconds (user + system, all threads) the server process has used so far; NaN off Linux. */
function cpuSeconds(s: Served): number {
  try {
    // /proc/PID/stat: fields 14 and 15 are utime and stime in clock ticks (100 per second on Linux).
    const f = fs.readFileSync(`/proc/${s.child.pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

async function stopServe(s: Served): Promise<void> {
  if (s.child.exitCode !== null) return;
  const exited = new Promise<void>((r) => s.child.once('exit', () => r()));
  s.child.kill('SIGTERM');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(t);
}

// ---- the load generator ---------------------------------------------------------------------------

interface Timing { sent: number; first: number; end: number; tokens: number }

/** One streamed completion; times in ms (performance.now()). */
async function send(url: string, q: Req): Promise<Timing> {
  const sent = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: AbortSignal.timeout(900_000),
    body: JSON.stringify({ prompt: q.prompt, max_tokens: q.maxTokens, temperature: 0.8, seed: q.seed, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`bench serve: HTTP ${res.status}: ${await res.text()}`);
  let first = -1, tokens = -1, buf = '';
  const dec = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    for (let nl = buf.indexOf('\n\n'); nl >= 0; nl = buf.indexOf('\n\n')) {
      const ev = buf.slice(0, nl).replace(/^data: /, '');
      buf = buf.slice(nl + 2);
      if (ev === '[DONE]') continue;
      const j = JSON.parse(ev);
      if (j.error) throw new Error(`bench serve: stream error: ${j.error.message}`);
      if (first < 0 && j.choices?.[0]?.text) first = performance.now();
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  if (tokens !== q.maxTokens) throw new Error(`bench serve: asked for ${q.maxTokens} tokens, got ${tokens}`);
  return { sent, first, end: performance.now(), tokens };
}

async function runPhase(url: string, reqs: Req[], at: number[] | null): Promise<{ timings: Timing[]; wallS: number }> {
  const t0 = performance.now();
  const pending = reqs.map(async (q, i) => {
    const wait = at ? t0 + at[i]! * 1000 - performance.now() : 0;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    return send(url, q);
  });
  const timings = await Promise.all(pending);
  return { timings, wallS: (Math.max(...timings.map((t) => t.end)) - t0) / 1000 };
}

const quantile = (xs: number[], q: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(q * s.length))]!; };

export interface Row {
  config: Config; req_s: number; p50_s: number; p99_s: number; ttft_p50_s: number; tok_s: number;
  /** Relative to naive: CPU-seconds per 1,000 output tokens where measured (steadier on a shared box), else wall-clock. */
  cost_rel: number;
  /** The server's CPU-seconds per 1,000 output tokens at saturation, and wall-clock seconds per 1,000. */
  cpu_s_per_1k: number; wall_s_per_1k: number;
}

// ---- configurations ---------------------------------------------------------------------------------

/** The INT4 weights for awq/combined: an AWQ checkpoint when `kiln quantize --method awq` works, else RTN at load. */
function int4Source(o: Options, say: (s: string) => void): { args: string[]; label: string } {
  const rtn = { args: ['--model', o.model, '--quant', 'int4-rtn'], label: 'INT4 RTN g128 (--quant int4-rtn)' };
  if (o.awq === 'rtn') return rtn;
  const dir = path.join(os.tmpdir(), `kiln-bench-awq-${path.basename(path.resolve(o.model))}`);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    say(`making the AWQ checkpoint: kiln quantize --method awq --model ${o.model} --out ${dir} (cached for later runs)`);
    const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'quantize', '--method', 'awq', '--model', o.model, '--out', dir, '--device', o.device, '--force'], { cwd: ROOT, encoding: 'utf8', timeout: 1_800_000 });
    if (r.status !== 0) {
      say(`kiln quantize --method awq failed (${r.error?.message ?? `exit ${r.status}`}): using int4-rtn\n${(r.stderr ?? '').slice(-2000)}`);
      fs.rmSync(dir, { recursive: true, force: true });
      return rtn;
    }
  }
  return { args: ['--model', dir, '--quant', 'none'], label: `INT4 AWQ g128 (kiln quantize --method awq, cached in ${dir})` };
}

function configArgs(c: Config, o: Options, int4: { args: string[] }): string[] {
  const f16 = ['--model', o.model, '--quant', 'f16'];
  const draft = ['--draft', o.draft, '--spec-k', String(o.specK)];
  const seqs = o.maxSeqs !== undefined ? ['--max-seqs', String(o.maxSeqs)] : [];
  switch (c) {
    case 'naive': return [...f16, '--scheduling', 'static', '--static-batch-size', '8'];
    case 'continuous': return [...f16, ...seqs];
    case 'awq': return [...int4.args, ...seqs];
    case 'speculative': return [...f16, ...draft, ...seqs];
    case 'combined': return [...int4.args, ...draft, ...seqs];
  }
}

function machine(device: string): string {
  const cpus = os.cpus();
  return `${cpus.length}× ${cpus[0]?.model.trim() ?? os.arch()}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.arch()}, Node ${process.versions.node}, device ${device}`;
}

function markdown(rows: Row[], meta: { machine: string; date: string; requests: number; saturation: string; rate: number; int4: string; draft: string; specK: number; maxSeqs?: number }): string {
  const f = (x: number, d = 2) => x.toFixed(d);
  return [
    `## kiln bench serve — ${meta.date}`,
    '',
    `Machine: ${meta.machine}. ${meta.requests} requests, prompts 32–256 tokens, outputs 16–128 tokens (ignore_eos), temperature 0.8, per-request seeds, streamed over HTTP to one \`kiln serve\` process per configuration.`,
    `Throughput at saturation (all requests at once); latency under Poisson arrivals at ${f(meta.rate, 3)} req/s = 0.8 × naive's saturation throughput, the same for every row.`,
    `INT4 rows: ${meta.int4}. Speculative rows: drafter ${meta.draft}, k = ${meta.specK} (adaptive). Continuous rows: ${meta.maxSeqs ? `--max-seqs ${meta.maxSeqs}` : 'up to 64 sequences per step'}.`,
    '',
    'Cost: the server process\'s CPU-seconds per 1,000 output tokens at saturation (steadier than wall-clock on a shared machine), relative to naive; wall-clock seconds per 1,000 tokens beside it.',
    '',
    '| config | req/s | output tok/s | P50 latency (s) | P99 latency (s) | TTFT P50 (s) | cost / 1k tokens vs naive | CPU-s / 1k tok | wall s / 1k tok |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.config} | ${f(r.req_s)} | ${f(r.tok_s, 0)} | ${f(r.p50_s)} | ${f(r.p99_s)} | ${f(r.ttft_p50_s, 3)} | ${f(r.cost_rel)}× | ${f(r.cpu_s_per_1k, 1)} | ${f(r.wall_s_per_1k, 1)} |`),
    '',
  ].join('\n');
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const say = (s: string) => process.stderr.write(`${s}\n`);
  const reqs = workload(o.model, o.requests, o.seed);
  const int4 = o.configs.some((c) => c === 'awq' || c === 'combined') ? int4Source(o, say) : { args: [], label: '-' };
  // Naive's saturation throughput sets the Poisson rate: measure it first (even when not listed).
  const order: Config[] = o.rate === undefined && !o.configs.includes('naive') ? ['naive', ...o.configs] : o.configs.includes('naive') ? ['naive', ...o.configs.filter((c) => c !== 'naive')] : o.configs;
  let rate = o.rate;
  const raw = new Map<Config, { req_s: number; tok_s: number; cpu_1k: number; lat: Timing[] }>();
  for (const c of order) {
    const s = await startServe([...configArgs(c, o, int4), '--device', o.device]);
    try {
      say(`${c}: ${s.url} (kiln serve ${configArgs(c, o, int4).join(' ')})`);
      // One short request first, so kernel compilation and first-touch are not in the numbers.
      await send(s.url, { prompt: reqs[0]!.prompt, maxTokens: 16, seed: 1 });
      const cpu0 = cpuSeconds(s);
      const sat = await runPhase(s.url, reqs, null);
      const cpuS = cpuSeconds(s) - cpu0;
      const tokens = sat.timings.reduce((n, t) => n + t.tokens, 0);
      const req_s = reqs.length / sat.wallS, tok_s = tokens / sat.wallS, cpu_1k = (cpuS * 1000) / tokens;
      say(`  saturation: ${req_s.toFixed(2)} req/s, ${tok_s.toFixed(0)} tok/s (${sat.wallS.toFixed(1)} s), ${cpu_1k.toFixed(1)} CPU-s per 1k tokens`);
      if (rate === undefined) { rate = 0.8 * req_s; say(`  Poisson rate for every configuration: 0.8 × ${req_s.toFixed(3)} = ${rate.toFixed(3)} req/s`); }
      if (!o.configs.includes(c)) { raw.set(c, { req_s, tok_s, cpu_1k, lat: [] }); continue; }
      const lat = await runPhase(s.url, reqs, arrivals(reqs.length, rate, o.seed));
      raw.set(c, { req_s, tok_s, cpu_1k, lat: lat.timings });
      const p50 = quantile(lat.timings.map((t) => t.end - t.sent), 0.5) / 1000;
      say(`  Poisson ${rate.toFixed(3)} req/s: P50 ${p50.toFixed(2)} s`);
    } finally {
      await stopServe(s);
    }
  }
  const naive = raw.get('naive');
  const rows: Row[] = o.configs.map((c) => {
    const x = raw.get(c)!;
    const lat = x.lat.map((t) => (t.end - t.sent) / 1000), ttft = x.lat.map((t) => (t.first - t.sent) / 1000);
    const cost = naive ? (Number.isFinite(x.cpu_1k) && Number.isFinite(naive.cpu_1k) ? x.cpu_1k / naive.cpu_1k : naive.tok_s / x.tok_s) : Number.NaN;
    return {
      config: c, req_s: x.req_s, p50_s: quantile(lat, 0.5), p99_s: quantile(lat, 0.99), ttft_p50_s: quantile(ttft, 0.5), tok_s: x.tok_s,
      cost_rel: cost, cpu_s_per_1k: x.cpu_1k, wall_s_per_1k: 1000 / x.tok_s,
    };
  });
  const date = new Date().toISOString().slice(0, 10);
  // Paths relative to the checkout, so results read the same from any clone.
  const draft = o.draft === 'ngram' ? 'ngram' : path.relative(ROOT, path.resolve(o.draft));
  const meta = { machine: machine(o.device), date, requests: o.requests, saturation: 'all at once', rate: rate!, int4: int4.label, draft, specK: o.specK, maxSeqs: o.maxSeqs };
  const json = { machine: meta.machine, date, requests: o.requests, poisson_rate_req_s: rate, naive_saturation_req_s: raw.get('naive')?.req_s, int4: int4.label, draft, spec_k: o.specK, max_seqs: o.maxSeqs ?? 64, rows };
  const md = markdown(rows, meta);
  if (o.save) {
    const dir = path.join(ROOT, 'bench/results');
    fs.mkdirSync(dir, { recursive: true });
    const host = `${os.cpus().length}core-${os.arch()}-${o.device}`;
    const base = path.join(dir, `serve-${date}-${host}${o.maxSeqs !== undefined ? `-maxseqs${o.maxSeqs}` : ''}`);
    fs.writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
    fs.writeFileSync(`${base}.md`, md);
    say(`saved ${base}.md and .json`);
  }
  process.stdout.write(o.json ? `${JSON.stringify(json)}\n` : md);
}
