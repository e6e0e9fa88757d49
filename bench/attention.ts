// `npm run bench -- attention`: ragged paged attention per backend.
//   decode:  batch B of single tokens over contexts C (head_dim 128, 32 query heads, GQA 4:1):
//            effective GB/s over the KV bytes that must be read (B·C·8 heads·128·2 (K and V)·bytes),
//            next to a measured copy bandwidth (the roofline), and the share of it reached;
//   prefill: one sequence of L new tokens over an empty cache: GFLOP/s over the causal
//            attention's 2·H·D·L·(L+1) multiply-adds ×2.
// One run, side by side: these machines are noisy. Metadata (tiles, block tables) is uploaded once
// per cell; each timing queues only the op's launches.
//
// Software devices (cpu, llvmpipe) run every cell scaled down — batch and lengths ÷ --scale
// (default 8) — and say so: full size is gigabytes of KV and minutes per cell there.
//
// Options:
//   --backends cpu,webgpu,cuda   devices (default all; absent ones are listed with the reason)
//   --kv f32,f16                 KV cache element types (default both)
//   --batches 1,64 --contexts 512,8192 --prefill 512,2048
//   --scale N                    software scale-down factor (default 8; 1 = full size)
//   --chunk 512                  split-KV chunk (KV positions)
//   --reps 5 --samples 3         launches per timing sample (back to back), samples per cell
//   --staging default,scalar16   K/V staging variants, side by side: default (vector loads, the
//                                deepest kvTile the device's workgroup memory allows), scalar16
//                                (4-byte loads, one 16-position block per step: the original),
//                                vec16 (vector loads, 16-position steps), noprefetch (default
//                                without the register double-buffering), scalar (no MMA: the
//                                scalar dot products where the device has tensor cores), mma
//                                (forced; f16 KV only — f32 cells run the default)
import { pagedAttention } from '../codegen/kernels/pagedAttention.js';
import { BackendUnavailableError, type BackendKind, type Device, type DeviceBuffer } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { attentionTargetCtas, prepareAttention } from '../src/ops/attention.js';
import { timeOnDevice } from '../src/backend/timing.js';
import { contiguousBatch, copyBandwidth, randomF32 } from './common.js';

const HEAD_DIM = 128, HEADS = 32, KV_HEADS = 8, BLOCK = 16;

interface Options {
  backends: BackendKind[]; kv: ('f32' | 'f16')[]; batches: number[]; contexts: number[]; prefill: number[];
  scale: number; chunk: number; reps: number; samples: number; staging: Staging[];
}
const STAGINGS = {
  default: {}, scalar16: { vecLoads: false, kvTile: 16, mma: false }, vec16: { kvTile: 16, mma: false },
  noprefetch: { prefetch: false }, scalar: { mma: false }, mma: { mma: true },
} as const;
/** A staging's op parameters for a KV type (the MMA path needs f16 KV). */
const stagingParams = (st: Staging, kv: 'f32' | 'f16') => (st === 'mma' && kv !== 'f16' ? {} : STAGINGS[st]);
type Staging = keyof typeof STAGINGS;

function parseArgs(args: string[]): Options {
  const o: Options = {
    backends: ['cpu', 'webgpu', 'cuda'], kv: ['f32', 'f16'], batches: [1, 64], contexts: [512, 8192], prefill: [512, 2048],
    scale: 8, chunk: 512, reps: 5, samples: 3, staging: ['default'],
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const need = () => { const v = args[++i]; if (v === undefined) throw new Error(`${a} needs a value`); return v; };
    const ints = (v: string) => v.split(',').map((s) => { const n = Number(s); if (!Number.isInteger(n) || n < 1) throw new Error(`${a}: '${s}' is not a positive integer`); return n; });
    if (a === '--backends') o.backends = need().split(',') as BackendKind[];
    else if (a === '--kv') o.kv = need().split(',') as ('f32' | 'f16')[];
    else if (a === '--batches') o.batches = ints(need());
    else if (a === '--contexts') o.contexts = ints(need());
    else if (a === '--prefill') o.prefill = ints(need());
    else if (a === '--scale') o.scale = ints(need())[0]!;
    else if (a === '--chunk') o.chunk = ints(need())[0]!;
    else if (a === '--reps') o.reps = ints(need())[0]!;
    else if (a === '--samples') o.samples = ints(need())[0]!;
    else if (a === '--staging') o.staging = need().split(',') as Staging[];
    else throw new Error(`unknown option '${a}' (see the header of bench/attention.ts)`);
  }
  for (const b of o.backends) if (!['cpu', 'webgpu', 'cuda'].includes(b)) throw new Error(`--backends: unknown backend '${b}'`);
  for (const k of o.kv) if (k !== 'f32' && k !== 'f16') throw new Error(`--kv: '${k}' is not f32 or f16`);
  for (const v of o.staging) if (!(v in STAGINGS)) throw new Error(`--staging: '${v}' is not one of ${Object.keys(STAGINGS).join(', ')}`);
  return o;
}



/** Fill a large buffer from a repeated random chunk (the values only need to be finite). */
function fill(dev: Device, buf: DeviceBuffer<'f32' | 'u32'>, seed: number): void {
  const chunk = Math.min(buf.length, 1 << 22);
  const f = randomF32(chunk, seed, 1);
  // f16 words: two halves in [−1, 1] (0x3c00 = 1.0); the pattern is irrelevant to the timing.
  const data = buf.dtype === 'u32' ? Uint32Array.from(f, (x) => ((Math.abs(x) * 0x3bff) | ((Math.abs(x) * 0x3bff) << 16)) >>> 0) : f;
  for (let at = 0; at < buf.length; at += chunk) dev.write(buf as never, data.subarray(0, Math.min(chunk, buf.length - at)) as never, at);
}


/** Time one batch of sequences (each: qLen new tokens after ctxLen cached) on fresh buffers. */
async function runCell(dev: Device, kv: 'f32' | 'f16', spec: { qLen: number; ctxLen: number }[], o: Options, staging: Staging): Promise<number> {
  const op = pagedAttention({
    headDim: HEAD_DIM, groupSize: HEADS / KV_HEADS, kvDtype: kv, blockSize: BLOCK, chunkSize: o.chunk, caps: dev.caps,
    targetCtas: attentionTargetCtas(dev), ...stagingParams(staging, kv),
  });
  const { seqs, numTokens: row, numBlocks, maxBlocksPerSeq } = contiguousBatch(spec, BLOCK);
  const cache = { numBlocks, numKvHeads: KV_HEADS, maxBlocksPerSeq };
  const prep = prepareAttention(op.config, { numTokens: row, seqs }, cache);
  const words = numBlocks * BLOCK * KV_HEADS * HEAD_DIM / (kv === 'f16' ? 2 : 1);
  const dt = kv === 'f16' ? 'u32' : 'f32';
  const bufs: DeviceBuffer[] = [];
  const alloc = <T extends 'f32' | 'u32'>(t: T, n: number, label: string) => { const b = dev.alloc(t, n, label); bufs.push(b); return b; };
  try {
    const kCache = alloc(dt, words, 'kCache'), vCache = alloc(dt, words, 'vCache');
    fill(dev, kCache, 3);
    fill(dev, vCache, 4);
    const q = alloc('f32', row * HEADS * HEAD_DIM, 'q'), out = alloc('f32', row * HEADS * HEAD_DIM, 'out');
    dev.write(q, randomF32(q.length, 5, 1));
    const tiles = alloc('u32', prep.tiles.length, 'tiles'), blockTables = alloc('u32', prep.blockTables.length, 'blockTables');
    dev.write(tiles, prep.tiles);
    dev.write(blockTables, prep.blockTables);
    const bound = { q, kCache, vCache, blockTables, tiles, out } as never;
    // On CUDA: CUDA events over a graph of `reps` launches, the L2 flushed before each replay.
    return (await timeOnDevice(dev, () => dev.run(op, bound, prep.sizes), { launches: o.reps, reps: o.samples, samples: o.samples, flushBytes: dev.profile.software ? 0 : 256 << 20 })).ms;
  } finally { for (const b of bufs) dev.free(b); }
}

async function openDevice(kind: BackendKind): Promise<Device | string> {
  try { return await createDevice(kind); } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    return `failed to open: ${(e as Error).message.split('\n')[0]}`;
  }
}

const fmt = (v: number, digits = 2) => (v >= 100 ? v.toFixed(0) : v.toFixed(digits));
const row = (cells: (string | number)[]) => console.log(`| ${cells.join(' | ')} |`);

async function benchDevice(dev: Device, o: Options): Promise<void> {
  const software = dev.profile.software;
  const s = software ? o.scale : 1;
  const bw = await copyBandwidth(dev, software ? 4 << 20 : 64 << 20, o);
  console.log(`\n## ${dev.kind}: ${dev.description}`);
  console.log(`copy bandwidth (out = a + b): ${fmt(bw)} GB/s — the roofline for decode`);
  console.log(`heads: ${HEADS} query, ${KV_HEADS} KV (GQA ${HEADS / KV_HEADS}:1), head_dim ${HEAD_DIM}, block ${BLOCK}, split-KV chunk ${o.chunk}`);
  if (s > 1) console.log(`software device: batch, contexts and prefill lengths ÷ ${s} (--scale 1 for full size)`);
  for (const st of o.staging) {
    const cfg = (kv: 'f32' | 'f16') => pagedAttention({ headDim: HEAD_DIM, groupSize: HEADS / KV_HEADS, kvDtype: kv, blockSize: BLOCK, chunkSize: o.chunk, caps: dev.caps, ...stagingParams(st, kv) }).config;
    const about = (kv: 'f32' | 'f16') => { const c = cfg(kv); return `${kv} kvTile ${c.kvTile}, ${c.vecLoads ? '16-byte' : '4-byte'} loads${c.prefetch ? ', prefetch' : ''}${c.mma ? ', MMA' : ''}`; };
    console.log(`staging ${st}: ${o.kv.map(about).join('; ')}`);
  }
  console.log('\n### decode (one new token per sequence)\n');
  row(['KV', 'staging', 'batch', 'context', 'ms', 'KV MB read', 'GB/s', '% of copy']);
  row(['---', '---', '---', '---', '---', '---', '---', '---']);
  for (const kv of o.kv) {
    for (const B0 of o.batches) {
      for (const C0 of o.contexts) {
        for (const st of o.staging) {
          const B = Math.max(1, Math.round(B0 / s)), C = Math.max(BLOCK, Math.round(C0 / s));
          const bytes = B * C * KV_HEADS * HEAD_DIM * 2 * (kv === 'f16' ? 2 : 4);
          try {
            const ms = await runCell(dev, kv, Array.from({ length: B }, () => ({ qLen: 1, ctxLen: C - 1 })), o, st);
            const gbs = bytes / ms / 1e6;
            row([kv, st, B, C, fmt(ms, 3), fmt(bytes / 1e6), fmt(gbs), `${fmt((100 * gbs) / bw, 1)}%`]);
          } catch (e) { row([kv, st, B, C, `failed: ${(e as Error).message.split('\n')[0]}`, '', '', '']); }
        }
      }
    }
  }
  console.log('\n### prefill (one sequence, empty cache, causal)\n');
  row(['KV', 'staging', 'tokens', 'ms', 'GFLOP', 'GFLOP/s']);
  row(['---', '---', '---', '---', '---', '---']);
  for (const kv of o.kv) {
    for (const L0 of o.prefill) {
      for (const st of o.staging) {
        const L = Math.max(BLOCK, Math.round(L0 / s));
        const flop = 2 * HEADS * HEAD_DIM * L * (L + 1); // Σ_j (j+1) positions × 2 dots of D × 2 flops
        try {
          const ms = await runCell(dev, kv, [{ qLen: L, ctxLen: 0 }], o, st);
          row([kv, st, L, fmt(ms, 3), fmt(flop / 1e9, 3), fmt(flop / ms / 1e6)]);
        } catch (e) { row([kv, st, L, `failed: ${(e as Error).message.split('\n')[0]}`, '', '']); }
      }
    }
  }
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  console.log(`# paged attention — ${new Date().toISOString().slice(0, 10)}`);
  for (const kind of o.backends) {
    const dev = await openDevice(kind);
    if (typeof dev === 'string') { console.log(`\n## ${kind}: not available — ${dev}`); continue; }
    try { await benchDevice(dev, o); } finally { await dev.destroy(); }
  }
}
