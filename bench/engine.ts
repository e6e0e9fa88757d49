// `npm run bench -- engine`: the continuous-batching engine against static batching, one
// fixed-seed workload side by side in one run, plus aggregate decode tokens/s by concurrency.
//
//   npm run bench -- engine [--requests 64] [--rate R] [--json] [--model DIR] [--device cpu]
//
// Workload: N requests, prompts of 32–256 tokens cut from ../shared/data/brown-heldout.txt,
// 16–128 new tokens each (EOS ignored, so every mode generates the same tokens), temperature 0.8
// with a seed per request; arrivals all at once, or Poisson at --rate requests/s. Modes:
// static (staticBatchSize 8), continuous with maxSeqs 8 (the scheduling effect alone) and
// continuous with maxSeqs 64.
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { BackendKind } from '../src/backend/device.js';
import { createEngine, type EngineOptions, type RequestResult } from '../src/engine.js';
import { DEFAULT_MODEL, loadModel, type LLM } from '../src/llm.js';
import { lcg } from './common.js';

const HELDOUT = new URL('../../shared/data/brown-heldout.txt', import.meta.url);

interface Options { requests: number; rate: number; json: boolean; model: string; device: BackendKind; seed: number }

function parse(args: string[]): Options {
  const o: Options = { requests: 64, rate: Infinity, json: false, model: DEFAULT_MODEL, device: 'cpu', seed: 42 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`bench engine: ${a} needs a value`); return x; };
    if (a === '--requests') o.requests = Number(v());
    else if (a === '--rate') o.rate = Number(v());
    else if (a === '--json') o.json = true;
    else if (a === '--model') o.model = v();
    else if (a === '--device') o.device = v() as BackendKind;
    else if (a === '--seed') o.seed = Number(v());
    else throw new Error(`bench engine: unknown option ${a} (--requests N, --rate R, --json, --model DIR, --device D, --seed S)`);
  }
  if (!Number.isInteger(o.requests) || o.requests < 1) throw new Error(`bench engine: --requests ${o.requests} must be a positive integer`);
  if (!(o.rate > 0)) throw new Error(`bench engine: --rate ${o.rate} must be positive`);
  return o;
}

interface Req { prompt: number[]; maxTokens: number; seed: number; at: number }

export function makeWorkload(llm: LLM, n: number, rate: number, seed: number): Req[] {
  if (!fs.existsSync(HELDOUT)) throw new Error(`bench engine: ${HELDOUT.pathname} is missing (../shared/data beside the checkout)`);
  const ids = llm.encode(fs.readFileSync(HELDOUT, 'utf8'));
  const r = lcg(seed);
  let t = 0;
  return Array.from({ length: n }, (_, i) => {
    const len = 32 + Math.floor(r() * 225);
    const start = Math.floor(r() * (ids.length - len));
    if (rate !== Infinity) t += -Math.log(1 - r()) / rate;
    return { prompt: ids.slice(start, start + len), maxTokens: 16 + Math.floor(r() * 113), seed: 1000 + i, at: rate === Infinity ? 0 : t };
  });
}

const quantile = (xs: number[], q: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(q * s.length))]!; };

export interface ModeRow { mode: 'static' | 'continuous'; max_seqs: number; req_s: number; tok_s: number; p50_s: number; p99_s: number; ttft_p50_s: number; mean_batch: number; cpu_s_per_1k_tok: number }

/** Run the workload through a fresh engine with `opts`; arrivals follow `at`. */
export async function runWorkload(llm: LLM, reqs: Req[], opts: EngineOptions): Promise<{ results: RequestResult[]; wallS: number; cpuS: number; meanBatch: number }> {
  const e = createEngine(llm, opts);
  try {
    const t0 = performance.now(), c0 = process.cpuUsage();
    const pending: Promise<RequestResult>[] = [];
    for (const q of reqs) {
      const wait = t0 + q.at * 1000 - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      pending.push(e.generate({ prompt: q.prompt, maxTokens: q.maxTokens, temperature: 0.8, seed: q.seed, stopTokenIds: [] }).result());
    }
    const results = await Promise.all(pending);
    const wallS = (performance.now() - t0) / 1000;
    // CPU time of the whole process (workers included): on a shared box it moves far less with
    // other load than wall time does.
    const c = process.cpuUsage(c0), cpuS = (c.user + c.system) / 1e6;
    for (const x of results) if (x.finishReason !== 'length') throw new Error(`bench engine: request ${x.requestId} ended with ${x.finishReason} ${x.error ?? ''}`);
    return { results, wallS, cpuS, meanBatch: e.stats().meanBatchSize };
  } finally {
    await e.close();
  }
}

function row(mode: ModeRow['mode'], maxSeqs: number, r: Awaited<ReturnType<typeof runWorkload>>): ModeRow {
  const lat = r.results.map((x) => x.timings.totalMs / 1000), ttft = r.results.map((x) => x.timings.ttftMs / 1000);
  const toks = r.results.reduce((s, x) => s + x.usage.generatedTokens, 0);
  return {
    mode, max_seqs: maxSeqs, req_s: r.results.length / r.wallS, tok_s: toks / r.wallS,
    p50_s: quantile(lat, 0.5), p99_s: quantile(lat, 0.99), ttft_p50_s: quantile(ttft, 0.5), mean_batch: r.meanBatch,
    cpu_s_per_1k_tok: (r.cpuS * 1000) / toks,
  };
}

/** Aggregate decode tokens/s with `c` sequences decoding together (decode-only steps). */
async function decodeRate(llm: LLM, c: number, prompt: number[]): Promise<number> {
  let tokens = 0, ms = 0, seen = 0;
  // Each level builds a new engine, whose first all-decode step captures its decode graph (tens of
  // ms on cpu): not what a step costs, so it is left out.
  const e = createEngine(llm, {
    maxSeqs: Math.max(c, 1), onStep: (s) => { if (s.decodeOnly && s.seqs === c && seen++ > 0) { tokens += s.generated; ms += s.ms; } },
  });
  try {
    const hs = Array.from({ length: c }, (_, i) => e.generate({ prompt, maxTokens: 48, temperature: 0.8, seed: i, stopTokenIds: [] }));
    await Promise.all(hs.map((h) => h.result()));
  } finally {
    await e.close();
  }
  return ms ? (tokens * 1000) / ms : 0;
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const llm = await loadModel(o.model, { device: o.device });
  try {
    const reqs = makeWorkload(llm, o.requests, o.rate, o.seed);
    const machine = `${os.cpus().length} × ${os.cpus()[0]?.model.trim() ?? 'cpu'}, ${llm.device.description}`;
    // Warm-up: compile every kernel shape once so no mode pays for it.
    await runWorkload(llm, reqs.slice(0, 4).map((q) => ({ ...q, maxTokens: 4, at: 0 })), { maxSeqs: 8 });
    const rows: ModeRow[] = [];
    const modes: [ModeRow['mode'], number, EngineOptions][] = [
      ['static', 8, { scheduling: 'static', staticBatchSize: 8, maxSeqs: 8 }],
      ['continuous', 8, { maxSeqs: 8 }],
      ['continuous', 64, { maxSeqs: 64 }],
    ];
    for (const [mode, maxSeqs, opts] of modes) {
      if (!o.json) process.stderr.write(`running ${mode} maxSeqs ${maxSeqs} …\n`);
      rows.push(row(mode, maxSeqs, await runWorkload(llm, reqs, opts)));
    }
    const prompt = reqs[0]!.prompt.slice(0, 32);
    const scaling: { concurrent: number; tok_s: number }[] = [];
    for (const c of [1, 4, 16, 64]) scaling.push({ concurrent: c, tok_s: await decodeRate(llm, c, prompt) });
    if (o.json) {
      console.log(JSON.stringify({ machine, rows, scaling }));
      return;
    }
    const total = reqs.reduce((s, q) => s + q.maxTokens, 0);
    console.log(`\nengine: ${o.requests} requests (${total} output tokens), ${o.rate === Infinity ? 'all arriving at once' : `Poisson arrivals at ${o.rate} req/s`}; ${llm.source}; ${machine}\n`);
    console.log('| mode | maxSeqs | req/s | output tok/s | P50 latency s | P99 latency s | P50 TTFT s | mean batch | req/s vs static | CPU s / 1k tokens |');
    console.log('|---|---|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      console.log(`| ${r.mode} | ${r.max_seqs} | ${r.req_s.toFixed(2)} | ${r.tok_s.toFixed(1)} | ${r.p50_s.toFixed(2)} | ${r.p99_s.toFixed(2)} | ${r.ttft_p50_s.toFixed(2)} | ${r.mean_batch.toFixed(1)} | ${(r.req_s / rows[0]!.req_s).toFixed(2)}× | ${r.cpu_s_per_1k_tok.toFixed(1)} |`);
    }
    console.log('\n| concurrent sequences | aggregate decode tok/s | vs 1 |');
    console.log('|---|---|---|');
    for (const s of scaling) console.log(`| ${s.concurrent} | ${s.tok_s.toFixed(1)} | ${(s.tok_s / scaling[0]!.tok_s).toFixed(2)}× |`);
  } finally {
    await llm.close();
  }
}
