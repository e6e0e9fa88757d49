// Weight strips (WeightLayout 'strips', the cpu device's layout): the same linear ops over the same
// weights laid out in 16-byte column strips give the bits of the row-major layout — every GEMV
// schedule the sources offer (one word, 8- and 16-byte vectors, nibble pairs), the GEMM, the
// gate/up halves — and match the float64 reference; the host re-tiling puts each word where the
// kernels look for it; shapes whose rows do not cut into strips keep 'rows'.
import { describe, expect, it } from 'vitest';
import { denseLinear, type DenseWeightDtype, denseWeightLayout } from '../../codegen/kernels/denseMatmul.js';
import { int4Linear, int4WeightLayout } from '../../codegen/kernels/int4Matmul.js';
import type { GemvVariant, LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import { STRIP_WORDS, toWeightLayout, type WeightLayout } from '../../codegen/kernels/weightLayout.js';
import type { LinearChoiceInput } from '../../codegen/kernels/linearOp.js';
import type { DeviceBuffer } from '../../src/backend/device.js';
import { uploadDense, uploadInt4 } from '../../src/ops/linear.js';
import { dequantizeAwq } from '../../src/quant/awq.js';
import { roundToF16 } from '../../src/quant/f16.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { firstDiff, linearRef, randomAwq, randomInputs, runOp } from './linearRef.js';

describe('toWeightLayout (host re-tiling)', () => {
  it('word j of row k goes to strip j / 4, row k, lane j % 4; rows is the identity', () => {
    const K = 3, rowWords = 8;
    const rows = Uint32Array.from({ length: K * rowWords }, (_, i) => 1000 * Math.floor(i / rowWords) + (i % rowWords));
    expect(toWeightLayout('rows', rows, K, rowWords)).toBe(rows);
    // Written out by hand: strip 0 holds words 0..3 of rows 0, 1, 2, then strip 1 words 4..7.
    expect([...toWeightLayout('strips', rows, K, rowWords)]).toEqual([
      0, 1, 2, 3, 1000, 1001, 1002, 1003, 2000, 2001, 2002, 2003,
      4, 5, 6, 7, 1004, 1005, 1006, 1007, 2004, 2005, 2006, 2007,
    ]);
    expect(() => toWeightLayout('strips', new Uint32Array(K * 6), K, 6)).toThrow(/rows of 6 words do not cut into strips of 4/);
    expect(() => toWeightLayout('strips', new Uint32Array(5), K, rowWords)).toThrow(/5 elements is not K · rowWords = 3 · 8/);
  });

  it("ops keep 'rows' where a row is not whole strips, and only take 'strips' when asked", () => {
    expect(int4WeightLayout(96, 'strips')).toBe('strips'); // 12 words
    expect(int4WeightLayout(40, 'strips')).toBe('rows'); // 5 words
    expect(int4WeightLayout(96)).toBe('rows');
    expect(denseWeightLayout('f16', 4 * STRIP_WORDS, 'strips')).toBe('strips'); // 16 columns = 8 words
    expect(denseWeightLayout('f16', 12, 'strips')).toBe('rows'); // 6 words
    expect(denseWeightLayout('f32', 12, 'strips')).toBe('strips');
    expect(int4Linear({ K: 128, N: 40, groupSize: 64, weightLayout: 'strips' }).source.layout).toBe('rows');
  });

  it('the MMA path refuses strips (its kernel reads rows)', () => {
    expect(() => int4Linear({ K: 128, N: 64, groupSize: 64, weightLayout: 'strips', choice: { mmaMaxRows: 16 } }))
      .toThrow(/mmaMaxRows = 16 but the MMA kernel reads weights in the 'rows' layout, not 'strips'/);
  });
});

/** GEMV schedules to force (each with its own load width), filtered to what fits. */
const INT4_GEMVS: GemvVariant[] = [
  { workgroupSize: 32, units: 1 },
  { workgroupSize: 32, units: 2, vec: 2 },
  { workgroupSize: 32, units: 4, vec: 4 },
  { workgroupSize: 64, units: 1, narrow: true },
  { workgroupSize: 32, units: 4, vec: 4, unrollK: 2 },
];
const DENSE_GEMVS: Record<DenseWeightDtype, GemvVariant[]> = {
  f32: [{ workgroupSize: 32, units: 2 }, { workgroupSize: 32, units: 4 }],
  f16: [{ workgroupSize: 32, units: 1 }, { workgroupSize: 32, units: 2, vec: 2 }, { workgroupSize: 32, units: 4, vec: 4 }],
};

forEachBackend('weight strips', (dev) => {
  /** Run `make(layout)` over weights uploaded by `upload(layout)`; the two layouts' bits must agree. */
  async function bothLayouts(M: number, K: number, N: number, e: LinearEpilogue, seed: string,
    upload: (layout: WeightLayout) => Record<string, DeviceBuffer>, make: (layout: WeightLayout) => ReturnType<typeof int4Linear>,
    ref: (x: Float32Array, inp: ReturnType<typeof randomInputs>) => Float64Array, tol: number): Promise<void> {
    const r = rng(freshSeed(seed));
    const inp = randomInputs(M, K, N, e, r);
    const bits: Uint32Array[] = [];
    for (const layout of ['rows', 'strips'] as const) {
      const op = make(layout);
      expect(op.source.layout).toBe(layout);
      const w = upload(layout);
      try {
        const res = await runOp(dev, op, w, inp, M);
        expect(relErr(res.values, ref(inp.x, inp))).toBeLessThan(tol);
        bits.push(res.bits);
      } finally { for (const b of Object.values(w)) dev.free(b); }
    }
    expect(firstDiff(bits[0]!, bits[1]!)).toBe(-1);
  }

  describe('INT4: strips give the bits of rows', () => {
    const [K, N, g] = [256, 96, 64];
    const cases: { M: number; choice?: LinearChoiceInput; e?: LinearEpilogue; label: string }[] = [
      ...INT4_GEMVS.map((v) => ({ M: 2, choice: { gemv: v }, label: `GEMV ${JSON.stringify(v)}` })),
      { M: 1, label: 'GEMV, default schedule' },
      { M: 20, label: 'GEMM' },
      { M: 3, e: { gateUp: true, residual: true }, label: 'GEMV gate/up + residual' },
      { M: 12, e: { gateUp: true, bias: true }, label: 'GEMM gate/up + bias' },
    ];
    for (const c of cases) {
      it(`${c.label}, M=${c.M}`, async () => {
        const e = c.e ?? {}, Nw = e.gateUp ? 2 * N : N;
        const awq = randomAwq(K, Nw, g, rng(freshSeed(`strips int4 weights ${c.label}`)));
        const W = dequantizeAwq(awq);
        await bothLayouts(c.M, K, N, e, `strips int4 ${c.label}`,
          (layout) => { const w = uploadInt4(dev, awq, 'w', layout); return { qweight: w.qweight, qzeros: w.qzeros, scales: w.scales }; },
          (layout) => int4Linear({ K, N, groupSize: g, caps: dev.caps, weightLayout: layout, ...e, ...(c.choice ? { choice: c.choice } : {}) }),
          (x, inp) => linearRef(x, W, c.M, K, N, e, inp.bias, inp.residual), 4e-6); // int4.test.ts: measured 4.8e-7
      });
    }
  });

  for (const dtype of ['f32', 'f16'] as const) {
    describe(`dense ${dtype}: strips give the bits of rows`, () => {
      const [K, N] = [192, 64];
      const cases: { M: number; choice?: LinearChoiceInput; e?: LinearEpilogue; label: string }[] = [
        ...DENSE_GEMVS[dtype].map((v) => ({ M: 3, choice: { gemv: v }, label: `GEMV ${JSON.stringify(v)}` })),
        { M: 1, label: 'GEMV, default schedule' },
        { M: 17, label: 'GEMM' },
        { M: 2, e: { gateUp: true, bias: true }, label: 'GEMV gate/up + bias' },
        { M: 10, e: { residual: true }, label: 'GEMM + residual' },
      ];
      for (const c of cases) {
        it(`${c.label}, M=${c.M}`, async () => {
          const e = c.e ?? {}, Nw = e.gateUp ? 2 * N : N;
          const w = randomF32(K * Nw, rng(freshSeed(`strips dense ${dtype} weights ${c.label}`)), -0.2, 0.2);
          const seen = dtype === 'f16' ? Float64Array.from(w, roundToF16) : Float64Array.from(w);
          await bothLayouts(c.M, K, N, e, `strips dense ${dtype} ${c.label}`,
            (layout) => ({ w: uploadDense(dev, w, K, Nw, dtype, 'KN', 'w', layout) }),
            (layout) => denseLinear({ K, N, weight: dtype, caps: dev.caps, weightLayout: layout, ...e, ...(c.choice ? { choice: c.choice } : {}) }),
            (x, inp) => linearRef(x, seen, c.M, K, N, e, inp.bias, inp.residual), 4e-6); // dense.test.ts: measured ≤ 4e-7
        });
      }
    });
  }
});
