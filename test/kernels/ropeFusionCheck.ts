// The fused QKV projection (RMSNorm prologue, RoPE + KV-append epilogue, optionally x gathered
// from an f16 embedding table) against the separate launches it replaces: embedding → rmsNorm →
// linear → ropeQkv → kvAppend. Shared by the GEMV (fusion.test.ts) and MMA (mmaFusion.test.ts) tests.
import { expect } from 'vitest';
import { embedding } from '../../codegen/kernels/embedding.js';
import { fusedLinear, type RopeAppendEpilogue } from '../../codegen/kernels/fusedLinear.js';
import { kvAppend } from '../../codegen/kernels/kvAppend.js';
import type { LinearOp } from '../../codegen/kernels/linearOp.js';
import { rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import { ropeTable } from '../../codegen/kernels/rope.js';
import { ropeQkv } from '../../codegen/kernels/ropeQkv.js';
import type { Device, DeviceBuffer } from '../../src/backend/device.js';
import { runLinear } from '../../src/ops/linear.js';
import { f32ArrayToF16, packF16Pairs } from '../../src/quant/f16.js';
import { randomF32 } from '../util.js';
import type { Buffers } from './buffers.js';
import { firstDiff } from './linearRef.js';

export type RopeFusionCase = RopeAppendEpilogue & { K: number; gather?: boolean };

export interface RopeFusionRun {
  /** The QKV projection, N = (heads + 2·kvHeads)·headDim, with its weights on the device. */
  op: LinearOp;
  weights: Record<string, DeviceBuffer>;
  normWorkgroup: number;
  eps: number;
  /** Row counts to run, in order; the buffers are sized for the largest (row 3 is padding: slot −1). */
  rows: number[];
  /** The fused op's launch count at M rows, or undefined to leave it unchecked. */
  launches: (M: number) => number | undefined;
}

/** Words of a buffer as bits. */
async function bits(dev: Device, b: DeviceBuffer): Promise<Uint32Array> {
  const v = await dev.read(b);
  return new Uint32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
}

/** Runs both paths at every row count and expects q, both caches (and the gathered x) to have the same bits. */
export async function checkRopeFusion(dev: Device, bufs: Buffers, r: () => number, c: RopeFusionCase, run: RopeFusionRun): Promise<void> {
  const { op, weights, normWorkgroup, eps } = run;
  const N = (c.heads + 2 * c.kvHeads) * c.headDim, K = c.K, V = 50, maxPos = 64, numBlocks = 16;
  const rope: RopeAppendEpilogue = { layout: c.layout, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, kvDtype: c.kvDtype, blockSize: c.blockSize };
  const fused = fusedLinear({ linear: op, norm: { workgroupSize: normWorkgroup, eps }, rope, ...(c.gather ? { gather: { table: 'f16', vocab: V } } : {}) });
  const Mmax = Math.max(...run.rows), perPos = c.kvDtype === 'f16' ? c.headDim / 2 : c.headDim;
  const cacheLen = numBlocks * c.blockSize * c.kvHeads * perPos;
  const x = bufs.input('f32', randomF32(Mmax * K, r, -2, 2), 'x');
  // f16 embedding table [V, K/2] words (random f16 values in ±2), and the rows' token ids.
  const embed = bufs.input('u32', packF16Pairs(f32ArrayToF16(randomF32(V * K, r, -2, 2))), 'embed');
  const ids = bufs.input('u32', Uint32Array.from({ length: Mmax }, () => Math.floor(r() * V)), 'ids');
  const xB = bufs.output('f32', Mmax * K, 'xB');
  const normW = bufs.input('f32', randomF32(K, r, 0.5, 1.5), 'normW');
  const table = bufs.input('f32', ropeTable({ headDim: c.headDim, theta: 10000 }, maxPos), 'table');
  const pos = bufs.input('u32', Uint32Array.from({ length: Mmax }, () => Math.floor(r() * maxPos)), 'pos');
  // Distinct slots, row 3 padding (−1: not appended).
  const order = [...Array(numBlocks * c.blockSize).keys()].sort(() => r() - 0.5);
  const slots = bufs.input('i32', Int32Array.from({ length: Mmax }, (_, i) => (i === 3 ? -1 : order[i]!)), 'slots');
  const cacheT = c.kvDtype === 'f16' ? 'u32' : 'f32';
  const [kA, vA, kB, vB] = ['kA', 'vA', 'kB', 'vB'].map((l) => bufs.output(cacheT, cacheLen, l)) as DeviceBuffer[];
  const qLen = Mmax * c.heads * c.headDim;
  const qA = bufs.output('f32', qLen, 'qA'), qB = bufs.output('f32', qLen, 'qB');
  const h = bufs.output('f32', Mmax * K, 'h'), qkv = bufs.output('f32', Mmax * N, 'qkv');
  const kNew = bufs.output('f32', Mmax * c.kvHeads * c.headDim, 'kNew'), vNew = bufs.output('f32', Mmax * c.kvHeads * c.headDim, 'vNew');
  for (const M of run.rows) {
    for (const b of [kA!, vA!, kB!, vB!, qA, qB, xB]) bufs.poison(b as DeviceBuffer<'f32'>);
    if (c.gather) dev.launch(embedding({ table: 'f16', caps: dev.caps }), { ids, table: embed, out: x }, { T: M, V, D: K });
    dev.launch(rmsNorm({ caps: dev.caps, workgroupSize: normWorkgroup }), { x, w: normW, out: h }, { M, D: K, eps });
    runLinear(dev, op, { x: h, ...weights, out: qkv } as never, M);
    dev.launch(ropeQkv({ layout: c.layout, caps: dev.caps }), { qkv, pos, table, q: qA, k: kNew, v: vNew }, { T: M, Hq: c.heads, Hk: c.kvHeads, D: c.headDim, maxPos });
    dev.run(kvAppend({ headDim: c.headDim, kvDtype: c.kvDtype, blockSize: c.blockSize, caps: dev.caps }),
      { kNew, vNew, slots, kCache: kA, vCache: vA } as never, { numTokens: M, numKvHeads: c.kvHeads, numBlocks });
    const launches = run.launches(M);
    if (launches !== undefined) expect(fused.plan({ M, maxPos, numBlocks }).steps.length, `M = ${M}: launches`).toBe(launches);
    const xIn = c.gather ? { x: xB, ids, embed } : { x };
    dev.run(fused, { ...xIn, ...weights, normW, pos, table, slots, q: qB, kCache: kB, vCache: vB } as never, { M, maxPos, numBlocks });
    if (c.gather) expect(firstDiff((await bits(dev, xB)).subarray(0, M * K), (await bits(dev, x)).subarray(0, M * K)), `M = ${M}: gathered x`).toBe(-1);
    const q0 = (await bits(dev, qA)).subarray(0, M * c.heads * c.headDim), q1 = (await bits(dev, qB)).subarray(0, M * c.heads * c.headDim);
    expect(firstDiff(q1, q0), `M = ${M}: q`).toBe(-1);
    expect(firstDiff(await bits(dev, kB!), await bits(dev, kA!)), `M = ${M}: K cache (untouched slots stay poisoned in both)`).toBe(-1);
    expect(firstDiff(await bits(dev, vB!), await bits(dev, vA!)), `M = ${M}: V cache`).toBe(-1);
    // Not a comparison of two empty caches: M rows (less the padding) were appended.
    const written = [...await bits(dev, kB!)].filter((w) => w !== 0xdeadbeef && !Number.isNaN(new Float32Array(new Uint32Array([w]).buffer)[0])).length;
    expect(written, `M = ${M}: words appended`).toBe((M > 3 ? M - 1 : M) * c.kvHeads * perPos);
  }
}
