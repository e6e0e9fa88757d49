// The dense f16 linear layer's tensor-core MMA path (codegen/kernels/mmaMatmul.ts denseMmaKernel),
// forced through the linear op on every backend (k.mma is emulated off CUDA): float64 reference
// of f16(x)·W with the epilogues at M = 1, 17, 37, row bits independent of M, the fused op with
// its norm prologue (lm_head) equal to rmsNorm → linear, and ptxas on sm_90a.
import { describe, expect, it } from 'vitest';
import { CUDA_CAPS } from '../../codegen/dsl/types.js';
import { emitCUDA } from '../../codegen/emit/cuda.js';
import { denseLinear } from '../../codegen/kernels/denseMatmul.js';
import { fusedLinear } from '../../codegen/kernels/fusedLinear.js';
import { fullEpilogue, type LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import { denseMmaKernel, denseMmaSplit } from '../../codegen/kernels/mmaMatmul.js';
import { defaultRmsNormWorkgroup, rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import type { DeviceBuffer } from '../../src/backend/device.js';
import { uploadDense } from '../../src/ops/linear.js';
import { f16BitsToF32, f32ToF16Bits } from '../../src/quant/f16.js';
import { ptxasReport } from '../../src/profile.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';
import { firstDiff, linearRef, randomInputs, rowBits, runOp } from './linearRef.js';

const toF16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));
const CASES: { e: LinearEpilogue; K: number; N: number; tol: number }[] = [
  { e: { bias: true, residual: true }, K: 128, N: 72, tol: 1e-5 }, // split-K 4; a partial tile (72 = 64 + 8)
  { e: { bias: true, gateUp: true, residual: true, out: 'f16' }, K: 48, N: 24, tol: 2e-3 }, // split-K 1
];

forEachBackend('dense f16 MMA linear', (dev) => {
  for (const { e, K, N, tol } of CASES) {
    it(`${JSON.stringify(e)}, K = ${K} (split-K ${denseMmaSplit(K)}), N = ${N}: M = 1, 17, 37 within ${tol} of float64 (x rounded to f16); rows of M = 37 equal M = 1 runs`, async () => {
      const r = rng(freshSeed(`dense mma ${JSON.stringify(e)}`));
      const Nw = e.gateUp ? 2 * N : N;
      const W = Float64Array.from(randomF32(K * Nw, r, -0.5, 0.5), toF16);
      const op = denseLinear({ K, N, weight: 'f16', ...e, caps: dev.caps, weightLayout: 'rows', choice: { mmaMaxRows: 64 } });
      expect(op.plan({ M: 37 }).steps.map((s) => s.kernel.ir.name)).toEqual([expect.stringMatching(/^denseMma_f16_/)]);
      const w = uploadDense(dev, W, K, Nw, 'f16', 'KN', 'w');
      try {
        const inp = randomInputs(37, K, N, e, r);
        let all: Awaited<ReturnType<typeof runOp>> | undefined;
        for (const M of [1, 17, 37]) {
          const got = await runOp(dev, op, { w }, inp, M);
          const ref = linearRef(Float32Array.from(inp.x.subarray(0, M * K), toF16), W, M, K, N, e, inp.bias, inp.residual?.subarray(0, M * N));
          expect(got.values.every(Number.isFinite), `M = ${M}: every output written`).toBe(true);
          expect(relErr(got.values, ref), `M = ${M}`).toBeLessThan(tol);
          if (M === 37) all = got;
        }
        const wordsPerRow = e.out === 'f16' ? N / 2 : N;
        for (const row of [0, 36]) {
          const one = await runOp(dev, op, { w }, { x: inp.x.slice(row * K, (row + 1) * K), bias: inp.bias, residual: inp.residual!.slice(row * N, (row + 1) * N) }, 1);
          expect(firstDiff(rowBits(all!, row, 1, wordsPerRow), one.bits), `row ${row}`).toBe(-1);
        }
      } finally { dev.free(w); }
    });
  }

  it('split-K 8 (CUDA\'s choice for N = 4096 layers): M = 1, 17 within 1e-5 of float64; row 16 of M = 17 equals M = 1', async (ctx) => {
    const K = 128, N = 40, e = fullEpilogue({ residual: true });
    let kern: ReturnType<typeof denseMmaKernel>;
    try { kern = denseMmaKernel({ epilogue: e, split: 8, caps: dev.caps }); } catch (err) {
      ctx.skip(`this device cannot hold a 1024-invocation MMA workgroup with its fragment scratch: ${(err as Error).message}`);
      return;
    }
    const r = rng(freshSeed('dense mma split 8'));
    const W = Float64Array.from(randomF32(K * N, r, -0.5, 0.5), toF16);
    const bufs = new Buffers(dev);
    try {
      const w = bufs.adopt(uploadDense(dev, W, K, N, 'f16', 'KN', 'w'));
      const x = randomF32(17 * K, r), res = randomF32(17 * N, r);
      const run = async (xs: Float32Array, rs: Float32Array, M: number) => {
        const out = bufs.output('f32', M * N, `out${M}`);
        dev.launch(kern, { x: bufs.input('f32', xs, `x${M}`), w, residual: bufs.input('f32', rs, `r${M}`), out } as never, { M, K, N, Nw: N });
        return dev.read(out);
      };
      const all = await run(x, res, 17);
      expect(relErr(all, linearRef(Float32Array.from(x, toF16), W, 17, K, N, e, undefined, res))).toBeLessThan(1e-5);
      const one = await run(x.slice(16 * K), res.slice(16 * N), 1);
      expect(firstDiff(new Uint32Array(one.buffer, one.byteOffset, N), new Uint32Array(all.buffer, all.byteOffset + 16 * N * 4, N)), 'row 16').toBe(-1);
    } finally { bufs.free(); }
  });

  it('lm_head: the fused op with its RMSNorm prologue has rmsNorm → linear\'s bits (M = 1, 37)', async () => {
    const r = rng(freshSeed('dense mma lm_head'));
    const K = 64, N = 80, EPS = 1e-5, normWg = defaultRmsNormWorkgroup(K, dev.caps);
    const op = denseLinear({ K, N, weight: 'f16', caps: dev.caps, weightLayout: 'rows', choice: { mmaMaxRows: 64 } });
    const fused = fusedLinear({ linear: op, norm: { workgroupSize: normWg, eps: EPS } });
    const bufs = new Buffers(dev);
    try {
      const w = bufs.adopt(uploadDense(dev, randomF32(K * N, r, -0.5, 0.5), K, N, 'f16', 'KN', 'w'));
      const x = bufs.input('f32', randomF32(37 * K, r, -2, 2), 'x'), normW = bufs.input('f32', randomF32(K, r, 0.5, 1.5), 'normW');
      const h = bufs.output('f32', 37 * K, 'h'), outA = bufs.output('f32', 37 * N, 'outA'), outB = bufs.output('f32', 37 * N, 'outB');
      for (const M of [1, 37]) {
        bufs.poison(outA);
        bufs.poison(outB);
        dev.launch(rmsNorm({ caps: dev.caps, workgroupSize: normWg }), { x, w: normW, out: h }, { M, D: K, eps: EPS });
        dev.run(op, { x: h, w, out: outA } as never, { M });
        expect(fused.plan({ M }).steps).toHaveLength(1);
        dev.run(fused, { x, w, normW, out: outB } as never, { M });
        const a = (await dev.read(outA as DeviceBuffer<'f32'>)).subarray(0, M * N), b = (await dev.read(outB as DeviceBuffer<'f32'>)).subarray(0, M * N);
        expect(a.every(Number.isFinite), `M = ${M}: written`).toBe(true);
        expect(firstDiff(new Uint32Array(b.buffer, b.byteOffset, b.length), new Uint32Array(a.buffer, a.byteOffset, a.length)), `M = ${M}`).toBe(-1);
      }
    } finally { bufs.free(); }
  });
});

describe('dense f16 MMA: split-K and CUDA', () => {
  it('split-K: 8 where K/16 allows on tensor-core caps with 1024 invocations (not gate/up), else 4, 2, 1', () => {
    const plain = fullEpilogue({});
    expect([denseMmaSplit(4096, plain, CUDA_CAPS), denseMmaSplit(4096, fullEpilogue({ gateUp: true }), CUDA_CAPS), denseMmaSplit(4096), denseMmaSplit(48, plain, CUDA_CAPS)]).toEqual([8, 4, 4, 1]);
  });

  it('mma.sync per 16 of K per tile, and ptxas (sm_90a) takes every epilogue with no spills', (ctx) => {
    for (const e of CASES.map((c) => fullEpilogue(c.e))) {
      const ir = denseMmaKernel({ epilogue: e, split: denseMmaSplit(4096, e, CUDA_CAPS), caps: CUDA_CAPS }).ir;
      expect(emitCUDA(ir).match(/mma\.sync\.aligned\.m16n8k16/g)).toHaveLength(e.gateUp ? 4 : 2);
      const rep = ptxasReport(ir);
      if (typeof rep === 'string') { ctx.skip(`no ptxas verdict: ${rep}`); return; }
      expect([rep.spillStores, rep.spillLoads], JSON.stringify(e)).toEqual([0, 0]);
    }
  });
});
