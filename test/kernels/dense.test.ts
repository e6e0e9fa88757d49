// Dense linear layer (f32 and f16 weights), the INT4 layer's unquantized twin: float64 reference,
// every epilogue, batch invariance, and bad input refused before launch.
import { describe, expect, it } from 'vitest';
import { denseLinear, type DenseWeightDtype } from '../../codegen/kernels/denseMatmul.js';
import type { LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import type { LinearChoiceInput } from '../../codegen/kernels/linearOp.js';
import { LinearShapeError, runLinear, uploadDense } from '../../src/ops/linear.js';
import { roundToF16 } from '../../src/quant/f16.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';
import { firstDiff, linearRef, randomInputs, rowBits, runOp } from './linearRef.js';

/** A random weight [K, Nw] and the values the kernel sees (f16-rounded for f16 weights). */
function randomWeight(K: number, Nw: number, dtype: DenseWeightDtype, r: () => number) {
  const w = randomF32(K * Nw, r, -0.2, 0.2);
  return { w, seen: dtype === 'f16' ? Float64Array.from(w, roundToF16) : Float64Array.from(w) };
}

const CASES: Record<DenseWeightDtype, [number, number, number][]> = {
  // [M, K, N]: odd K and N where the dtype allows them, GEMV (M ≤ 8) and GEMM.
  f32: [[1, 172, 97], [4, 256, 64], [8, 64, 300], [9, 172, 97], [70, 256, 130]],
  f16: [[1, 172, 96], [5, 256, 64], [8, 64, 300], [9, 172, 96], [70, 256, 130]],
};
const EPILOGUES: LinearEpilogue[] = [
  { bias: true }, { residual: true }, { gateUp: true }, { out: 'f16' },
  { bias: true, gateUp: true, residual: true, out: 'f16' },
];

forEachBackend('denseLinear', (dev) => {
  for (const dtype of ['f32', 'f16'] as const) {
    describe(`${dtype} weights`, () => {
      for (const [M, K, N] of CASES[dtype]) {
        it(`M=${M} K=${K} N=${N}`, async () => {
          const r = rng(freshSeed(`dense ${dtype} M=${M} K=${K} N=${N}`));
          const { w, seen } = randomWeight(K, N, dtype, r);
          const wb = uploadDense(dev, w, K, N, dtype, 'KN', 'w');
          try {
            const op = denseLinear({ K, N, weight: dtype, caps: dev.caps });
            const inp = randomInputs(M, K, N, {}, r);
            const res = await runOp(dev, op, { w: wb }, inp, M);
            expect(relErr(res.values, linearRef(inp.x, seen, M, K, N, {}))).toBeLessThan(2.5e-6); // measured 2.6e-7
          } finally { dev.free(wb); }
        });
      }
      for (const e of EPILOGUES) {
        for (const M of [3, 20]) {
          it(`epilogue ${JSON.stringify(e)} M=${M}`, async () => {
            const [K, N] = [160, 48];
            const r = rng(freshSeed(`dense ${dtype} epilogue ${JSON.stringify(e)} M=${M}`));
            const Nw = e.gateUp ? 2 * N : N;
            const { w, seen } = randomWeight(K, Nw, dtype, r);
            const wb = uploadDense(dev, w, K, Nw, dtype, 'KN', 'w');
            try {
              const op = denseLinear({ K, N, weight: dtype, caps: dev.caps, ...e });
              const inp = randomInputs(M, K, N, e, r);
              const res = await runOp(dev, op, { w: wb }, inp, M);
              const ref = linearRef(inp.x, seen, M, K, N, e, inp.bias, inp.residual);
              // Measured 4.4e-7 (f32 out), 2.2e-4 (f16 out) (max measured on cpu, cpu-js and llvmpipe; bound ≤ 10×; re-derive with test/measure).
              expect(relErr(res.values, ref)).toBeLessThan(e.out === 'f16' ? 2e-3 : 4e-6);
            } finally { dev.free(wb); }
          });
        }
      }
    });
  }

  it("torch's [N, K] layout uploads transposed", async () => {
    const [M, K, N] = [2, 64, 40];
    const r = rng(freshSeed('dense NK'));
    const { w, seen } = randomWeight(K, N, 'f32', r);
    const nk = new Float32Array(N * K);
    for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) nk[n * K + k] = w[k * N + n]!;
    const wb = uploadDense(dev, nk, K, N, 'f32', 'NK', 'w');
    try {
      const inp = randomInputs(M, K, N, {}, r);
      const res = await runOp(dev, denseLinear({ K, N, weight: 'f32', caps: dev.caps }), { w: wb }, inp, M);
      expect(relErr(res.values, linearRef(inp.x, seen, M, K, N, {}))).toBeLessThan(1.5e-6); // measured 1.6e-7
    } finally { dev.free(wb); }
  });

  describe('batch invariance: rows bit-identical at M = 1, 5, 8 and 100', () => {
    const setups: { dtype: DenseWeightDtype; e: LinearEpilogue; choice: LinearChoiceInput; alt: LinearChoiceInput }[] = [
      { dtype: 'f32', e: { residual: true }, choice: { segLen: 64 }, alt: { segLen: 64, gemv: { workgroupSize: 32, units: 2 }, gemm: { tileM: 16, tileN: 64, tileK: 32, blockM: 2, blockN: 4 } } },
      { dtype: 'f16', e: { bias: true, gateUp: true }, choice: { segLen: 96 }, alt: { segLen: 96, gemv: { workgroupSize: 128, units: 1 }, gemm: { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 } } },
    ];
    for (const { dtype, e, choice, alt } of setups) {
      it(`${dtype} ${JSON.stringify(e)} segLen ${choice.segLen}`, async () => {
        const [K, N, M] = [172, 48, 100];
        const r = rng(freshSeed(`dense invariance ${dtype}`));
        const Nw = e.gateUp ? 2 * N : N;
        const { w } = randomWeight(K, Nw, dtype, r);
        const wb = uploadDense(dev, w, K, Nw, dtype, 'KN', 'w');
        try {
          const op = denseLinear({ K, N, weight: dtype, caps: dev.caps, ...e, choice });
          const inp = randomInputs(M, K, N, e, r);
          const full = await runOp(dev, op, { w: wb }, inp, M);
          const rows = (r0: number, m: number) => ({
            x: inp.x.slice(r0 * K, (r0 + m) * K), bias: inp.bias, residual: inp.residual?.slice(r0 * N, (r0 + m) * N),
          });
          for (const [r0, m] of [[0, 1], [3, 5], [99, 1], [92, 8]] as const) {
            const part = await runOp(dev, op, { w: wb }, rows(r0, m), m);
            expect(firstDiff(part.bits, rowBits(full, r0, m, N)), `rows ${r0}.. at M=${m}`).toBe(-1);
          }
          const altOp = denseLinear({ K, N, weight: dtype, caps: dev.caps, ...e, choice: alt });
          for (const m of [5, 100]) {
            const res = await runOp(dev, altOp, { w: wb }, rows(0, m), m);
            expect(firstDiff(res.bits, rowBits(full, 0, m, N)), `alternative schedule at M=${m}`).toBe(-1);
          }
          // The register GEMM (cpu): rows and units that do not divide M and N, vector loads or not.
          const staged = { rows: 6, units: 2, vec: 2, workgroupSize: 4, staged: { chunk: 40, block: 3 } } as const; // chunks across segment ends
          for (const gemmRows of [{ rows: 8, units: 4, vec: 4, workgroupSize: 16 }, { rows: 3, units: 5, workgroupSize: 4 }, staged] as const) {
            const rowsOp = denseLinear({ K, N, weight: dtype, caps: dev.caps, ...e, choice: { ...choice, gemmRows } });
            const res = await runOp(dev, rowsOp, { w: wb }, rows(0, M), M);
            expect(firstDiff(res.bits, full.bits), `register GEMM ${JSON.stringify(gemmRows)}`).toBe(-1);
          }
        } finally { dev.free(wb); }
      });
    }
  });

  describe('bad input', () => {
    it('configuration', () => {
      expect(() => denseLinear({ K: 64, N: 33, weight: 'f16' })).toThrow(/N = 33 must be even for f16 weights/);
      expect(() => denseLinear({ K: 64, N: 33, weight: 'f32', out: 'f16' })).toThrow(/N = 33 must be even for f16 output/);
      expect(() => denseLinear({ K: 0, N: 32, weight: 'f32' })).toThrow(/K = 0/);
      expect(() => denseLinear({ K: 64, N: 32, weight: 'bf16' as never })).toThrow(/weight dtype 'bf16'/);
    });
    it('tensors of the wrong shape or dtype are refused before launch', async () => {
      const [M, K, N] = [2, 64, 32];
      const bufs = new Buffers(dev);
      try {
        expect(() => uploadDense(dev, new Float32Array(K * N - 1), K, N, 'f16', 'KN', 'bad')).toThrow(/'w' has 2047 elements; expected \[K, N\] = \[64, 32\]/);
        const op = denseLinear({ K, N, weight: 'f16', caps: dev.caps });
        const x = bufs.input('f32', new Float32Array(M * K), 'x');
        const out = bufs.output('f32', M * N, 'out');
        const wf32 = bufs.input('f32', new Float32Array(K * N), 'w_f32');
        const wShort = bufs.input('u32', new Uint32Array((K * N) / 2 - 8), 'w_short');
        expect(() => runLinear(dev, op, { x, w: wf32 as never, out }, M)).toThrow(/'w' .*is f32; expected u32 \[K, Nw \/ 2\] = \[64, 16\]/);
        expect(() => runLinear(dev, op, { x, w: wShort, out }, M)).toThrow(LinearShapeError);
        const outShort = bufs.output('f32', M * N - 1, 'out_short');
        const w = bufs.input('u32', new Uint32Array((K * N) / 2), 'w');
        expect(() => runLinear(dev, op, { x, w, out: outShort }, M)).toThrow(/'out' .*expected f32 \[M, N\] = \[2, 32\]/);
        expect(() => runLinear(dev, op, { x, w, out, bias: x }, M)).toThrow(/unexpected tensor 'bias'/);
        expect((await bufs.read(out)).every((v) => Number.isNaN(v))).toBe(true);
      } finally { bufs.free(); }
    });
  });
});
