// `npm run bench -- llamacpp`: llama.cpp and Kiln's cpu device side by side in one process, on
// the same weights: llama.cpp at 1 and 2 threads on the checkpoint converted to GGUF F16, Kiln's
// cpu device (wasm executor) on f16 weights; batch-1 prefill of one prompt and greedy decode,
// their runs interleaved (issue #13 states its cpu goal as a ratio to llama.cpp's one thread).
// Before timing, llama.cpp's greedy continuation of the reference prompt must equal the ids
// PyTorch computed (brown-models.json), which checks the conversion.
//
//   npm run bench -- llamacpp --install    first time: fetch llama.cpp (node-llama-cpp's prebuilt
//                                          CPU binary, ~30 MB) into .cache/llamacpp
//   npm run bench -- llamacpp              brown-target; options: --model DIR --prompt N (128)
//     --decode N (64) --rounds N (3) --threads 1,2 (llama.cpp) --workers N (Kiln; default all cores)
// KILN_LLAMACPP_ADDON=/path/llama-addon.node uses another build of the addon instead of the cache.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createDevice } from '../src/backend/index.js';
import { openModel } from '../src/io/index.js';
import { DEFAULT_MODEL } from '../src/llm.js';
import { CACHE_DIR, findAddon, install, installCommand, LLAMACPP_VERSION, loadLlamaCpp, platformPackage, REPO_ROOT, type LlamaSession } from './llamacpp/addon.js';
import { convertHfLlama } from './llamacpp/convert.js';
import { countLaunches, prepare, PROMPT_TEXT } from './generate.js';

interface Options { model: string; prompt: number; decode: number; rounds: number; threads: number[]; workers: number | null; install: boolean }

function parse(args: string[]): Options {
  const o: Options = { model: DEFAULT_MODEL, prompt: 128, decode: 64, rounds: 3, threads: [1, 2], workers: null, install: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`bench llamacpp: ${a} needs a value`); return x; };
    const count = (name: string, x: string) => { const n = Number(x); if (!Number.isInteger(n) || n < 1) throw new Error(`bench llamacpp: ${name} takes a positive integer, not '${x}'`); return n; };
    if (a === '--model') o.model = v();
    else if (a === '--prompt') o.prompt = count(a, v());
    else if (a === '--decode') o.decode = count(a, v());
    else if (a === '--rounds') o.rounds = count(a, v());
    else if (a === '--threads') o.threads = v().split(',').map((x) => count(a, x));
    else if (a === '--workers') o.workers = count(a, v());
    else if (a === '--install') o.install = true;
    else throw new Error(`bench llamacpp: unknown option ${a}`);
  }
  return o;
}

/** Bump when convert.ts changes what it writes: cached conversions are keyed by it. */
const CONVERTER_VERSION = 1;

/** The model as GGUF F16 under .cache/llamacpp/models, converted once per checkpoint (keyed by its files' sizes and times). */
function convertCached(dir: string): string {
  const h = createHash('sha256').update(`converter ${CONVERTER_VERSION}\n`);
  for (const f of fs.readdirSync(dir).sort()) {
    const st = fs.statSync(path.join(dir, f));
    if (st.isFile()) h.update(`${f} ${st.size} ${st.mtimeMs}\n`);
  }
  const out = path.join(CACHE_DIR, 'models', `${path.basename(path.resolve(dir))}-${h.digest('hex').slice(0, 12)}-f16.gguf`);
  if (!fs.existsSync(out)) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, convertHfLlama(dir));
    fs.renameSync(tmp, out);
  }
  return out;
}

/** PyTorch's greedy ids for a brown model (brown-models.json beside the model, or in ../shared/models); null for others. */
function referenceIds(dir: string): { prompt: number[]; greedy: number[]; file: string } | null {
  const name = path.basename(path.resolve(dir));
  if (!name.startsWith('brown-')) return null;
  for (const file of [path.join(path.dirname(path.resolve(dir)), 'brown-models.json'), path.join(REPO_ROOT, '..', 'shared', 'models', 'brown-models.json')]) {
    if (!fs.existsSync(file)) continue;
    const g = (JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, { prompt_ids?: number[]; greedy_ids_fp32?: number[] }>)[name.slice('brown-'.length)];
    if (g?.prompt_ids && g.greedy_ids_fp32) return { prompt: g.prompt_ids, greedy: g.greedy_ids_fp32, file };
  }
  return null;
}

/** Prefill `prompt`, then greedy-decode until `total` ids: the whole sequence. */
async function greedy(s: LlamaSession, prompt: readonly number[], total: number): Promise<number[]> {
  const out = [...prompt];
  let tok = await s.prefill(prompt);
  while (out.length < total) { out.push(tok); if (out.length < total) tok = await s.step(tok, out.length - 1); }
  return out;
}

interface Timed { prefill: number; decode: number }

/** One measured run on llama.cpp, as generate's `once()` does on a Kiln device: prefill, then `decode` greedy steps. */
async function llamaOnce(s: LlamaSession, ids: readonly number[], decode: number): Promise<Timed> {
  const t0 = performance.now();
  let tok = await s.prefill(ids);
  const prefillMs = performance.now() - t0;
  const t1 = performance.now();
  for (let i = 0; i < decode; i++) tok = await s.step(tok, ids.length + i);
  const decodeMs = performance.now() - t1;
  return { prefill: (ids.length / prefillMs) * 1000, decode: (decode / decodeMs) * 1000 };
}

function missingMessage(): string {
  const pkg = platformPackage();
  if (!pkg) return `llama.cpp: skipped — node-llama-cpp publishes no prebuilt binary for ${process.platform}-${process.arch}; set KILN_LLAMACPP_ADDON to a llama-addon.node built for this machine.`;
  return [
    `llama.cpp: not installed. This benchmark drives llama.cpp through node-llama-cpp's prebuilt CPU binary`,
    `(${pkg}@${LLAMACPP_VERSION}, about 30 MB from the npm registry), kept in ${path.relative(process.cwd(), CACHE_DIR)} (git-ignored; not a dependency).`,
    `Get it with:  npm run bench -- llamacpp --install`,
    `(which runs: ${installCommand()}), or set KILN_LLAMACPP_ADDON to a llama-addon.node.`,
  ].join('\n');
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  let addon = findAddon();
  if (!addon && o.install) { install(); addon = findAddon(); }
  if (!addon) { console.log(missingMessage()); return; }

  const files = openModel(o.model);
  const label = path.basename(path.resolve(o.model));
  if (o.prompt + o.decode + 1 > files.spec.maxPositions) throw new Error(`bench llamacpp: --prompt ${o.prompt} + --decode ${o.decode} exceeds ${label}'s ${files.spec.maxPositions} positions`);
  if (!files.tokenizer) throw new Error(`bench llamacpp: ${o.model} has no tokenizer.json (the prompt is text)`);
  const ids = files.tokenizer.encode(PROMPT_TEXT.repeat(20)).slice(0, o.prompt);
  if (ids.length < o.prompt) throw new Error(`bench llamacpp: the prompt text gives only ${ids.length} tokens`);

  const t0 = performance.now();
  const gguf = convertCached(o.model);
  console.log(`model: ${label} → ${path.relative(process.cwd(), gguf)} (${(fs.statSync(gguf).size / 1e6).toFixed(1)} MB, ready in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  const llama = await loadLlamaCpp(addon, gguf, files.spec.maxPositions);
  const dev = await createDevice('cpu', { executor: 'wasm', ...(o.workers ? { workers: o.workers } : {}) });
  const kiln = prepare(dev, files.spec, files.weights, 'f16', label, o, ids, 'wasm', countLaunches(dev));
  try {
    console.log(`llama.cpp: ${path.relative(process.cwd(), addon)} (node-llama-cpp ${LLAMACPP_VERSION}), ${llama.describe()}, CPU backend ${llama.cpuBackend ?? 'unknown'}`);
    console.log(`  ${llama.systemInfo.trim()}`);
    console.log(`kiln: ${dev.description}`);
    const sessions: LlamaSession[] = [];
    for (const t of o.threads) sessions.push(await llama.session(t, Math.max(o.prompt, 32)));

    const ref = referenceIds(o.model);
    if (ref) {
      const got = await greedy(sessions[0]!, ref.prompt, ref.greedy.length);
      if (got.join() !== ref.greedy.join()) {
        throw new Error(`llama.cpp's greedy ids differ from ${ref.file}'s greedy_ids_fp32 — the GGUF conversion is wrong:\n  got  ${got.join(' ')}\n  want ${ref.greedy.join(' ')}`);
      }
      console.log(`greedy check: llama.cpp's ${ref.greedy.length - ref.prompt.length} greedy ids after the reference prompt equal PyTorch's (${path.basename(ref.file)})`);
    } else console.log(`greedy check: skipped — no reference ids for ${label} (only brown-* models have them)`);

    // Warm-up each, then rounds interleaved (llama.cpp per thread count, Kiln), best per engine.
    const runs: { name: string; threads: string; once: () => Promise<Timed> }[] = [
      ...sessions.map((s) => ({ name: 'llama.cpp', threads: `${s.threads} thread${s.threads > 1 ? 's' : ''}`, once: () => llamaOnce(s, ids, o.decode) })),
      { name: 'kiln cpu (wasm, f16)', threads: `${o.workers ?? os.availableParallelism()} workers`, once: () => kiln.once() },
    ];
    for (const r of runs) await r.once();
    const best = runs.map(() => ({ prefill: 0, decode: 0 }));
    for (let round = 0; round < o.rounds; round++) {
      for (const [i, r] of runs.entries()) {
        const x = await r.once();
        best[i]!.prefill = Math.max(best[i]!.prefill, x.prefill);
        best[i]!.decode = Math.max(best[i]!.decode, x.decode);
      }
    }
    const base = best[0]!;
    const cpus = os.cpus();
    console.log(`\n${label}, batch 1: prefill ${o.prompt} tokens, greedy decode ${o.decode} tokens; best of ${o.rounds} runs after a warm-up, runs interleaved`);
    console.log(`machine: ${cpus[0]?.model.trim() ?? 'unknown cpu'} × ${os.availableParallelism()}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
    console.log(`| engine | threads | prefill tok/s | decode tok/s | prefill ÷ llama.cpp ${runs[0]!.threads} | decode ÷ llama.cpp ${runs[0]!.threads} |`);
    console.log('|---|---|---:|---:|---:|---:|');
    for (const [i, r] of runs.entries()) {
      const b = best[i]!;
      console.log(`| ${r.name} | ${r.threads} | ${b.prefill.toFixed(1)} | ${b.decode.toFixed(1)} | ${(b.prefill / base.prefill).toFixed(3)} | ${(b.decode / base.decode).toFixed(3)} |`);
    }
  } finally {
    kiln.close();
    await dev.destroy();
    await llama.close();
    files.weights.close();
  }
}
