// `npm run bench -- generate`: end-to-end prefill and decode tokens/s, batch 1, per backend and
// weight format, side by side in one run. A decode step is timed as serving runs it: the
// fixed-shape decode step (a replayed CUDA graph where the device captures them), greedy argmax on
// the device, and the token id (4 bytes) read back — no logits readback. Decode is memory-bound: next to tokens/s the table
// shows the weight bytes one token reads and the GB/s that implies, and (with --copy) the
// device's measured copy bandwidth, whose ratio is the floor: tokens/s ≤ copy GB/s ÷ bytes/token.
//
//   npm run bench -- generate                          brown-target, f16 and int4 (g128), all backends
//   npm run bench -- generate --model DIR --formats f16,int4 --backends cpu,webgpu
//   npm run bench -- generate --llama3-8b --backends cuda   Llama-3-8B shapes, random INT4 weights
//                                                           built in memory (no download)
// Options: --prompt N (prompt tokens, default 128) --decode N (default 64) --copy (measure copy
// bandwidth: out = a + b, 3 × 4n bytes) --synthetic-layers N (fewer layers for the synthetic model, e.g. on cpu)
// --executors wasm,js (the cpu device's executors to run, default wasm; wasm-scalar: wasm with
// KILN_WASM_SIMD=0, for SIMD128 A/B in one run; wasm-rows: wasm with KILN_WEIGHT_LAYOUT=rows, the
// weights in checkpoint order instead of strips; wasm-exact: wasm with KILN_WASM_FMA=exact, fma
// through the exact helper instead of the host's fused relaxed multiply-add; wasm-msg: wasm with
// KILN_CPU_REPLAY=messages, a replayed step sent to each worker by message instead of through shared
// words; wasm-tiled: wasm with KILN_CPU_GEMM=tiled, the tiled GEMM past 8 rows instead of the
// register GEMM) --workers 1,2 (cpu worker
// threads, one device per count; default all cores) --rounds N (timed runs per
// device, interleaved across devices; default 2) --json (print
// {"machine", "rows": [{backend, executor, model, weights, prefill_tok_s, decode_tok_s, launches_per_step}]}
// instead of the table; progress goes to stderr).
import os from 'node:os';
import { BackendUnavailableError, type BackendKind, type Device } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { parseHfConfig } from '../src/io/hfConfig.js';
import { type MemoryTensor, memoryStore, type TensorStore } from '../src/io/safetensors.js';
import { openModel } from '../src/io/index.js';
import { BlockManager } from '../src/kv/blockManager.js';
import { LlamaForward } from '../src/model/forward.js';
import { allLinears, EMBED, FINAL_NORM, LM_HEAD, layerPrefix, type ModelSpec } from '../src/model/spec.js';
import { freeWeights, uploadWeights, type WeightFormat } from '../src/model/weights.js';
import { DEFAULT_MODEL } from '../src/llm.js';
import { argmax as argmaxKernel } from '../codegen/kernels/sampling.js';
import { copyBandwidth } from './common.js';

/** The cpu executors besides wasm and js: wasm with one switch the device reads when it is created. */
const WASM_VARIANTS = {
  'wasm-scalar': ['KILN_WASM_SIMD', '0'], 'wasm-rows': ['KILN_WEIGHT_LAYOUT', 'rows'], 'wasm-exact': ['KILN_WASM_FMA', 'exact'],
  'wasm-msg': ['KILN_CPU_REPLAY', 'messages'], 'wasm-tiled': ['KILN_CPU_GEMM', 'tiled'],
} as const;
export type Executor = 'wasm' | keyof typeof WASM_VARIANTS | 'js';
const EXECUTORS: readonly string[] = ['wasm', ...Object.keys(WASM_VARIANTS), 'js'];
interface Options {
  backends: BackendKind[]; formats: WeightFormat[]; model: string; prompt: number; decode: number;
  copy: boolean; llama3: boolean; layers: number | null; executors: Executor[]; json: boolean; rounds: number;
  workers: number[] | null;
}

function parse(args: string[]): Options {
  const o: Options = {
    backends: ['cpu', 'webgpu', 'cuda'], formats: ['f16', 'int4'], model: DEFAULT_MODEL, prompt: 128, decode: 64, copy: false, llama3: false, layers: null,
    executors: ['wasm'], json: false, rounds: 2, workers: null,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--backends') o.backends = v().split(',') as BackendKind[];
    else if (a === '--formats') o.formats = v().split(',') as WeightFormat[];
    else if (a === '--model') o.model = v();
    else if (a === '--prompt') o.prompt = Number(v());
    else if (a === '--decode') o.decode = Number(v());
    else if (a === '--copy') o.copy = true;
    else if (a === '--llama3-8b') { o.llama3 = true; o.formats = ['int4']; o.copy = true; }
    else if (a === '--synthetic-layers') o.layers = Number(v());
    else if (a === '--executors') {
      o.executors = v().split(',') as Executor[];
      const bad = o.executors.find((x) => !EXECUTORS.includes(x));
      if (bad !== undefined) throw new Error(`bench generate: --executors takes ${EXECUTORS.slice(0, -1).join(', ')} and/or js, not '${bad}'`);
    } else if (a === '--json') o.json = true;
    else if (a === '--rounds') o.rounds = Number(v());
    else if (a === '--workers') o.workers = v().split(',').map(Number);
    else throw new Error(`bench generate: unknown option ${a}`);
  }
  return o;
}

/** Llama-3-8B's config with AutoAWQ INT4 (g128) weights. */
function llama3Spec(layers: number | null): ModelSpec {
  return parseHfConfig({
    architectures: ['LlamaForCausalLM'], hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: layers ?? 32,
    num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 8192, rms_norm_eps: 1e-5,
    rope_theta: 500000, tie_word_embeddings: false, bos_token_id: 128000, eos_token_id: 128001,
    rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    quantization_config: { quant_method: 'awq', version: 'gemm', bits: 4, group_size: 128, zero_point: true },
  }, { source: 'llama3-8b (synthetic)' });
}

/** Random weights of the right shapes: INT4 words fill every bit; scales small f16 so activations stay finite. */
function syntheticStore(spec: ModelSpec): TensorStore {
  let s = 0x9e3779b9;
  const next = () => { s ^= s << 13; s ^= s >>> 17; s ^= s << 5; return s | 0; };
  const ints = (n: number) => { const a = new Int32Array(n); for (let i = 0; i < n; i++) a[i] = next(); return a; };
  // f16 bits of small random values: sign random, exponent 2^-8..2^-6 (|x| ≈ 0.004..0.03).
  const halves = (n: number, lo = 0x1c00, span = 0x0800) => { const a = new Uint16Array(n); for (let i = 0; i < n; i++) a[i] = ((next() & 0x8000) | (lo + ((next() >>> 0) % span))) & 0xffff; return a; };
  const t = new Map<string, MemoryTensor>();
  t.set(EMBED, { dtype: 'F16', shape: [spec.vocabSize, spec.hidden], data: halves(spec.vocabSize * spec.hidden, 0x2c00) });
  t.set(`${LM_HEAD}.weight`, { dtype: 'F16', shape: [spec.vocabSize, spec.hidden], data: halves(spec.vocabSize * spec.hidden) });
  t.set(FINAL_NORM, { dtype: 'F16', shape: [spec.hidden], data: new Uint16Array(spec.hidden).fill(0x3c00) });
  const g = spec.quantization!.groupSize;
  for (let l = 0; l < spec.layers; l++) {
    for (const n of ['input_layernorm', 'post_attention_layernorm']) t.set(`${layerPrefix(l)}.${n}.weight`, { dtype: 'F16', shape: [spec.hidden], data: new Uint16Array(spec.hidden).fill(0x3c00) });
  }
  for (const lin of allLinears(spec)) {
    t.set(`${lin.name}.qweight`, { dtype: 'I32', shape: [lin.K, lin.N / 8], data: ints((lin.K * lin.N) / 8) });
    t.set(`${lin.name}.qzeros`, { dtype: 'I32', shape: [lin.K / g, lin.N / 8], data: ints(((lin.K / g) * lin.N) / 8) });
    t.set(`${lin.name}.scales`, { dtype: 'F16', shape: [lin.K / g, lin.N], data: halves((lin.K / g) * lin.N, 0x1000) });
  }
  return memoryStore('llama3-8b (synthetic)', t);
}


export interface Row {
  backend: string; executor: Executor | null; device: string; model: string; format: string; prefill: number; decode: number; bytes: number; copy: number | null;
  /** Kernel launches per decode step (graph replays count the launches they hold). */
  launches: number;
}

/** Counts the launches a device queues (directly, or by replaying a captured graph). */
export function countLaunches(dev: Device): { n: number } {
  const counter = { n: 0 };
  const launch = dev.launch.bind(dev);
  dev.launch = ((...a: Parameters<Device['launch']>) => { counter.n++; launch(...a); }) as Device['launch'];
  const capture = dev.captureGraph?.bind(dev);
  if (capture) {
    dev.captureGraph = (record) => {
      const saved = counter.n;
      const g = capture(record);
      counter.n = saved; // recording is not running
      const replay = g.replay.bind(g);
      g.replay = () => { counter.n += g.launches; replay(); };
      return g;
    };
  }
  return counter;
}

export interface Prepared {
  once(): Promise<{ prefill: number; decode: number; launches: number }>;
  row(best: { prefill: number; decode: number; launches: number }): Row;
  close(): void;
}

/** A model on one device, ready to run `once()`: prefill the prompt, then decode greedily. */
export function prepare(dev: Device, spec: ModelSpec, store: TensorStore, format: WeightFormat, label: string, o: Pick<Options, 'prompt' | 'decode'>, promptIds: number[], executor: Executor | null, counter: { n: number }): Prepared {
  const weights = uploadWeights(dev, spec, store, { format });
  const blockSize = 16;
  const numBlocks = Math.ceil((o.prompt + o.decode + 1) / blockSize) + 1;
  const fw = new LlamaForward(dev, spec, weights, { numBlocks, blockSize, maxBatchTokens: Math.max(o.prompt, 1), kvDtype: dev.kind === 'cuda' ? 'f16' : 'f32' });
  const bm = new BlockManager(numBlocks, { blockSize, prefixCaching: false });
  const argmax = (row: Float32Array) => { let b = 0; for (let i = 1; i < row.length; i++) if (row[i]! > row[b]!) b = i; return b; };
  // Decode as a serving step does: the fixed-shape decode step (a replayed graph where the device
  // records them), greedy argmax on the device, and only the token id read back.
  const argmaxOp = argmaxKernel({ caps: dev.caps });
  const tokenBuf = dev.alloc('u32', 1, 'bench.token');
  return {
    async once() {
      bm.addSequence(0);
      const t0 = performance.now();
      const slots = bm.append(0, promptIds);
      const r = await fw.forward([{ tokens: promptIds, ctxLen: 0, blockTable: bm.blockTable(0), slots, logits: 'last' }]);
      const prefillMs = performance.now() - t0;
      let tok = argmax(r.logits);
      const t1 = performance.now();
      const launches0 = counter.n;
      for (let i = 0; i < o.decode; i++) {
        const pos = promptIds.length + i;
        const step = bm.append(0, [tok]); // before reading the block table: it may add a block
        fw.decodeStep([{ tokens: [tok], ctxLen: pos, blockTable: bm.blockTable(0), slots: step, logits: 'last' }]);
        dev.run(argmaxOp, { x: fw.logitsBuffer, tokens: tokenBuf }, { rows: 1, vocab: spec.vocabSize });
        tok = (await dev.read(tokenBuf))[0]!;
      }
      const decodeMs = performance.now() - t1;
      bm.free(0);
      return { prefill: (promptIds.length / prefillMs) * 1000, decode: (o.decode / decodeMs) * 1000, launches: (counter.n - launches0) / Math.max(1, o.decode) };
    },
    row: (best) => ({ backend: dev.kind, executor, device: dev.description, model: label, format: format + (weights.groupSize ? ` g${weights.groupSize}` : ''), ...best, bytes: weights.bytesPerToken, copy: null }),
    close() { fw.destroy(); dev.free(tokenBuf); freeWeights(dev, weights); },
  };
}

/**
 * Each model and format on every device, their runs interleaved (device A, B, A, B, …) after a
 * warm-up each, best per device: on a shared machine the load changes from second to second, and
 * interleaving gives every device the same chances.
 */
async function runInterleaved(devs: Dev[], spec: ModelSpec, store: TensorStore, format: WeightFormat, label: string, o: Options, prompt: number[]): Promise<Row[]> {
  const prepared = devs.map((d) => prepare(d.dev, spec, store, format, label, o, prompt, d.executor, d.counter));
  try {
    for (const p of prepared) await p.once(); // compile every kernel, capture the decode graphs
    const best = prepared.map(() => ({ prefill: 0, decode: 0, launches: 0 }));
    for (let r = 0; r < o.rounds; r++) {
      for (const [i, p] of prepared.entries()) {
        const x = await p.once(), b = best[i]!;
        b.prefill = Math.max(b.prefill, x.prefill);
        b.decode = Math.max(b.decode, x.decode);
        b.launches = x.launches;
      }
    }
    return prepared.map((p, i) => ({ ...p.row(best[i]!), copy: devs[i]!.copy }));
  } finally {
    for (const p of prepared) p.close();
  }
}

/** The prompt text (repeated to the prompt length) every end-to-end benchmark feeds. */
export const PROMPT_TEXT = 'The jury said that the city of Atlanta had been a good place to live, and that it would not be changed by anything the grand jury could find in its investigation of the primary election. ';

interface Dev { dev: Device; executor: Executor | null; counter: { n: number }; copy: number | null }

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const rows: Row[] = [];
  const log = o.json ? (m: string) => process.stderr.write(`${m}\n`) : (m: string) => console.log(m);
  const runs = o.backends.flatMap((kind): [BackendKind, Executor | null, number | undefined][] => (kind === 'cpu'
    ? o.executors.flatMap((x) => (o.workers ?? [undefined]).map((w): [BackendKind, Executor, number | undefined] => [kind, x, w]))
    : [[kind, null, undefined]]));
  const devs: Dev[] = [];
  try {
    for (const [kind, executor, workers] of runs) {
      let dev: Device;
      // A wasm variant sets its switch while the device is created (which is when it reads it).
      const variant = executor && executor !== 'wasm' && executor !== 'js' ? WASM_VARIANTS[executor] : undefined;
      const saved = variant ? process.env[variant[0]] : undefined;
      if (variant) process.env[variant[0]] = variant[1];
      try { dev = await createDevice(kind, { ...(executor ? { executor: executor === 'js' ? 'js' : 'wasm' } : {}), ...(workers !== undefined ? { workers } : {}) }); } catch (e) {
        if (e instanceof BackendUnavailableError) { log(`${kind}: skipped — ${e.reason}`); continue; }
        throw e;
      } finally {
        if (variant) { if (saved === undefined) delete process.env[variant[0]]; else process.env[variant[0]] = saved; }
      }
      log(`${kind}: ${dev.description}`);
      const copy = o.copy ? await copyBandwidth(dev, dev.profile.software ? 4 << 20 : 64 << 20, { reps: 3, samples: 5 }) : null;
      devs.push({ dev, executor, counter: countLaunches(dev), copy });
    }
    if (o.llama3) {
      const spec = llama3Spec(o.layers);
      const t0 = performance.now();
      const store = syntheticStore(spec);
      log(`  synthetic ${spec.layers}-layer Llama-3-8B INT4 weights built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      const prompt = Array.from({ length: o.prompt }, (_, i) => (i * 7919) % spec.vocabSize);
      rows.push(...(await runInterleaved(devs, spec, store, 'int4', `llama3-8b${o.layers ? ` (${o.layers} layers)` : ''}`, o, prompt)));
    } else {
      const files = openModel(o.model);
      try {
        let ids = files.tokenizer ? files.tokenizer.encode(PROMPT_TEXT.repeat(20)) : [1];
        ids = ids.slice(0, o.prompt);
        for (const f of o.formats) rows.push(...(await runInterleaved(devs, files.spec, files.weights, f, o.model.split('/').pop()!, o, ids)));
      } finally { files.weights.close(); }
    }
  } finally {
    for (const d of devs) await d.dev.destroy();
  }
  if (o.json) {
    const cpus = os.cpus();
    const machine = `${cpus[0]?.model.trim() ?? 'unknown cpu'} × ${os.availableParallelism()}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`;
    console.log(JSON.stringify({
      machine,
      rows: rows.map((r) => ({
        backend: r.backend, executor: r.executor, device: r.device, model: r.model, weights: r.format,
        prefill_tok_s: Number(r.prefill.toFixed(1)), decode_tok_s: Number(r.decode.toFixed(1)), launches_per_step: Number(r.launches.toFixed(1)),
      })),
    }, null, 2));
    return;
  }
  console.log(`\nprefill ${o.llama3 ? o.prompt : 'up to ' + o.prompt} tokens, decode ${o.decode} tokens, batch 1 (best of ${o.rounds} runs after a warm-up, the devices' runs interleaved)\n`);
  console.log('| backend | executor | device | model | weights | prefill tok/s | decode tok/s | launches/step | weight MB/token | achieved GB/s | copy GB/s | % of floor |');
  console.log('|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const gbs = (r.bytes * r.decode) / 1e9;
    console.log(`| ${r.backend} | ${r.executor ?? '—'} | ${r.device} | ${r.model} | ${r.format} | ${r.prefill.toFixed(1)} | ${r.decode.toFixed(1)} | ${r.launches.toFixed(1)} | ${(r.bytes / 1e6).toFixed(2)} | ${gbs.toFixed(2)} | ${r.copy ? r.copy.toFixed(1) : '—'} | ${r.copy ? ((100 * gbs) / r.copy).toFixed(0) + '%' : '—'} |`);
  }
}
