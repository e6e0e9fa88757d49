// `npm run bench -- cpu-attention`: the cpu device's attention, old against new, side by side in one
// process: pagedAttention as the forward ran it on cpu before attentionRows (decode steps: one token
// per workgroup of 32; prefill: the default tiles) and attentionRows with one query head per
// invocation and with its default (headsPerInvocation: both heads of a KV head), at brown-target's heads
// (head_dim 32, 8 query / 4 KV heads), one layer's launch. Cells: decode batches at a context, and
// one prefill of L tokens over an empty cache. The variants' samples are interleaved (A, B, A, B…)
// and each keeps its best, on one thread (workers 0) and on the worker pool.
//
// Options:
//   --workers 0,2          cpu devices (0: the main thread)
//   --kv f32,f16           KV cache element types (default both; bench generate's cpu runs use f32)
//   --decode 1x40,1x160,8x160   decode cells: batch × context (tokens already cached)
//   --prefill 128          prefill lengths
//   --rounds 5 --reps 20   interleaved rounds; launches per sample (back to back, one sync)
import { attentionRows } from '../codegen/kernels/attentionRows.js';
import { pagedAttention } from '../codegen/kernels/pagedAttention.js';
import { attentionConfig } from '../codegen/kernels/pagedAttentionConfig.js';
import type { Device, DeviceBuffer } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { prepareAttention } from '../src/ops/attention.js';
import { contiguousBatch, lcg, randomF32 } from './common.js';

const HEAD_DIM = 32, HEADS = 8, KV_HEADS = 4, BLOCK = 16;

interface Options { workers: number[]; kv: ('f32' | 'f16')[]; decode: [number, number][]; prefill: number[]; rounds: number; reps: number }

function parseArgs(args: string[]): Options {
  const o: Options = { workers: [0, 2], kv: ['f32', 'f16'], decode: [[1, 40], [1, 160], [8, 160]], prefill: [128], rounds: 5, reps: 20 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const need = () => { const v = args[++i]; if (v === undefined) throw new Error(`${a} needs a value`); return v; };
    const ints = (v: string, min = 1) => v.split(',').map((s) => { const n = Number(s); if (!Number.isInteger(n) || n < min) throw new Error(`${a}: '${s}' is not an integer ≥ ${min}`); return n; });
    if (a === '--workers') o.workers = ints(need(), 0);
    else if (a === '--kv') o.kv = need().split(',') as ('f32' | 'f16')[];
    else if (a === '--decode') {
      o.decode = need().split(',').map((cell) => {
        const m = /^(\d+)x(\d+)$/.exec(cell);
        if (!m || Number(m[1]) < 1) throw new Error(`--decode: '${cell}' is not batch×context, e.g. 1x40`);
        return [Number(m[1]), Number(m[2])] as [number, number];
      });
    } else if (a === '--prefill') o.prefill = ints(need());
    else if (a === '--rounds') o.rounds = ints(need())[0]!;
    else if (a === '--reps') o.reps = ints(need())[0]!;
    else throw new Error(`unknown option '${a}' (see the header of bench/cpuAttention.ts)`);
  }
  for (const kv of o.kv) if (kv !== 'f32' && kv !== 'f16') throw new Error(`--kv: '${kv}' is not f32 or f16`);
  return o;
}

type AnyAttention = ReturnType<typeof pagedAttention> | ReturnType<typeof attentionRows>;

/** One cell on one device: a random cache and q, both ops' metadata uploaded once; returns a launcher per op. */
function makeCell(dev: Device, kv: 'f32' | 'f16', seqs: { qLen: number; ctxLen: number }[], ops: AnyAttention[]) {
  const r = lcg(12345);
  const { seqs: ragged, numTokens, numBlocks, maxBlocksPerSeq } = contiguousBatch(seqs, BLOCK);
  const words = numBlocks * BLOCK * KV_HEADS * (kv === 'f16' ? HEAD_DIM / 2 : HEAD_DIM);
  const owned: DeviceBuffer[] = [];
  const put = <T extends 'f32' | 'u32'>(t: T, data: Float32Array | Uint32Array, label: string) => {
    const b = dev.alloc(t, data.length, label);
    dev.write(b, data as never);
    owned.push(b);
    return b;
  };
  // f16 words: two random halves in [0.5, 1) (exponent 14), signs random.
  const cache = (label: string) => (kv === 'f16'
    ? put('u32', Uint32Array.from({ length: words }, () => ((0x3800 | Math.floor(r() * 1024) | (r() < 0.5 ? 0x8000 : 0)) | ((0x3800 | Math.floor(r() * 1024)) << 16)) >>> 0), label)
    : put('f32', randomF32(words, label === 'kCache' ? 1 : 2, 1), label));
  const kCache = cache('kCache'), vCache = cache('vCache');
  const q = put('f32', randomF32(numTokens * HEADS * HEAD_DIM, 3, 1), 'q');
  const out = dev.alloc('f32', numTokens * HEADS * HEAD_DIM, 'out');
  owned.push(out);
  const launchers = ops.map((o) => {
    const prep = prepareAttention(o.config, { numTokens, seqs: ragged }, { numBlocks, numKvHeads: KV_HEADS, maxBlocksPerSeq });
    const tiles = put('u32', prep.tiles, 'tiles'), blockTables = put('u32', prep.blockTables, 'blockTables');
    return () => dev.run(o, { q, kCache, vCache, blockTables, tiles, out }, prep.sizes);
  });
  return { launchers, free: () => { for (const b of owned) dev.free(b); } };
}

/** Interleaved rounds: each round times every launcher once (reps back to back, one sync); best µs per launch. */
async function timeInterleaved(dev: Device, launchers: (() => void)[], rounds: number, reps: number): Promise<number[]> {
  for (const l of launchers) { l(); await dev.sync(); } // compile
  const best = launchers.map(() => Infinity);
  for (let round = 0; round < rounds; round++) {
    for (const [i, l] of launchers.entries()) {
      const t = performance.now();
      for (let k = 0; k < reps; k++) l();
      await dev.sync();
      best[i] = Math.min(best[i]!, ((performance.now() - t) / reps) * 1000);
    }
  }
  return best;
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const rows: string[] = [];
  const started = new Date().toISOString().slice(0, 16).replace('T', ' ');
  for (const workers of o.workers) {
    const dev = await createDevice('cpu', { workers });
    try {
      for (const kv of o.kv) {
        const params = { headDim: HEAD_DIM, groupSize: HEADS / KV_HEADS, kvDtype: kv, blockSize: BLOCK, caps: dev.caps };
        const rowsOp = attentionRows(params), rowsOneHead = attentionRows({ ...params, headsPerInvocation: 1 });
        // What src/model/forward.ts ran on cpu before attentionRows.
        const pagedDecode = pagedAttention({ ...params, tileTokens: 1, workgroupSize: 32, kvTile: attentionConfig(params).kvTile });
        const pagedPrefill = pagedAttention(params);
        const cells: { label: string; seqs: { qLen: number; ctxLen: number }[]; old: AnyAttention }[] = [
          ...o.decode.map(([b, ctx]) => ({ label: `decode ${b} × context ${ctx}`, seqs: Array.from({ length: b }, () => ({ qLen: 1, ctxLen: ctx })), old: pagedDecode })),
          ...o.prefill.map((L) => ({ label: `prefill ${L} tokens`, seqs: [{ qLen: L, ctxLen: 0 }], old: pagedPrefill })),
        ];
        for (const cell of cells) {
          const { launchers, free } = makeCell(dev, kv, cell.seqs, [cell.old, rowsOneHead, rowsOp]);
          try {
            const [old, one, fresh] = await timeInterleaved(dev, launchers, o.rounds, cell.label.startsWith('prefill') ? Math.max(1, Math.floor(o.reps / 10)) : o.reps);
            rows.push(`| ${workers ? `${workers} workers` : 'main thread'} | ${kv} | ${cell.label} | ${old!.toFixed(1)} | ${one!.toFixed(1)} | ${fresh!.toFixed(1)} | ${(old! / fresh!).toFixed(2)} |`);
            console.error(rows.at(-1));
          } finally { free(); }
        }
      }
    } finally { dev.destroy(); }
  }
  console.log(`\ncpu attention, one layer's launch (head_dim 32, 8 query / 4 KV heads, blocks of 16), µs per launch, best of ${o.rounds} interleaved rounds (${started} UTC)\n`);
  console.log('| threads | KV | cell | pagedAttention (cpu before) | attentionRows, 1 head per invocation | attentionRows (default) | old / new |');
  console.log('|---|---|---|---:|---:|---:|---:|');
  for (const r of rows) console.log(r);
}
