// INT4 (AutoAWQ GEMM layout) linear layer: float64 dequantize-then-matmul reference over the
// shapes the issue lists, a hand-built layout that pins the nibble interleave, every epilogue,
// batch invariance (bit-identical rows whatever M and path), and bad input refused before launch.
import { describe, expect, it } from 'vitest';
import type { GemmRowsVariant } from '../../codegen/kernels/linearGemmRows.js';
import { BASELINE_CAPS, type Caps, CUDA_CAPS } from '../../codegen/dsl/types.js';
import { denseSource } from '../../codegen/kernels/denseMatmul.js';
import type { DeviceClass } from '../../codegen/kernels/deviceProfile.js';
import { gemvVariantFits, type LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import type { LinearChoiceInput } from '../../codegen/kernels/linearOp.js';
import { INT4_GEMM_SPACE, INT4_GEMV_SPACE, int4Linear, int4Source } from '../../codegen/kernels/int4Matmul.js';
import type { Device, DeviceBuffer } from '../../src/backend/device.js';
import { LinearShapeError, runLinear, uploadInt4 } from '../../src/ops/linear.js';
import { type AwqTensors, dequantizeAwq, packAwqRows } from '../../src/quant/awq.js';
import { f32ToF16Bits } from '../../src/quant/f16.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';
import { firstDiff, type LinearInputs, linearRef, randomAwq, randomInputs, rowBits, runOp } from './linearRef.js';

function weightsOf(w: ReturnType<typeof uploadInt4>): Record<string, DeviceBuffer> {
  return { qweight: w.qweight, qzeros: w.qzeros, scales: w.scales };
}
function freeWeights(dev: Device, w: ReturnType<typeof uploadInt4>): void {
  for (const b of [w.qweight, w.qzeros, w.scales]) dev.free(b);
}

/** Every M, K, N and group size of the issue is covered; the big K and big N never meet. */
const CASES: { M: number; K: number; N: number; g: number }[] = [
  { M: 1, K: 128, N: 32, g: 32 },
  { M: 2, K: 384, N: 96, g: 64 },
  { M: 3, K: 384, N: 1024, g: 128 },
  { M: 5, K: 4096, N: 32, g: 128 },
  { M: 8, K: 128, N: 4096, g: 64 },
  { M: 17, K: 384, N: 96, g: 32 },
  { M: 64, K: 128, N: 1024, g: 128 },
  { M: 130, K: 4096, N: 32, g: 32 },
  { M: 64, K: 128, N: 4096, g: 32 },
];

const EPILOGUES: LinearEpilogue[] = [
  { bias: true },
  { residual: true },
  { gateUp: true },
  { out: 'f16' },
  { bias: true, gateUp: true, residual: true, out: 'f16' },
];

function sliceRows(inp: LinearInputs, r0: number, M: number, K: number, N: number): LinearInputs {
  return {
    x: inp.x.slice(r0 * K, (r0 + M) * K),
    bias: inp.bias,
    residual: inp.residual?.slice(r0 * N, (r0 + M) * N),
  };
}

/** Register GEMM variants (linearGemmRows.ts) every schedule must match bit for bit. */
const GEMM_ROWS_VARIANTS: GemmRowsVariant[] = [
  { rows: 8, units: 4, vec: 4, workgroupSize: 16 },
  { rows: 3, units: 5, workgroupSize: 4 },
];

forEachBackend('int4Linear', (dev) => {
  describe('matches float64 dequantize-then-matmul', () => {
    for (const { M, K, N, g } of CASES) {
      it(`M=${M} K=${K} N=${N} g=${g}`, async () => {
        const r = rng(freshSeed(`int4 M=${M} K=${K} N=${N} g=${g}`));
        const awq = randomAwq(K, N, g, r);
        const w = uploadInt4(dev, awq, 'w');
        try {
          const op = int4Linear({ K, N, groupSize: g, caps: dev.caps });
          const inp = randomInputs(M, K, N, {}, r);
          const res = await runOp(dev, op, weightsOf(w), inp, M);
          const ref = linearRef(inp.x, dequantizeAwq(awq), M, K, N, {});
          expect(relErr(res.values, ref)).toBeLessThan(4e-6); // measured 4.3e-7 (max measured on cpu, cpu-js and llvmpipe; bound ≤ 10×; re-derive with test/measure)
        } finally { freeWeights(dev, w); }
      });
    }
  });

  describe('epilogues', () => {
    for (const e of EPILOGUES) {
      for (const M of [3, 20]) {
        it(`${JSON.stringify(e)} M=${M}`, async () => {
          const [K, N, g] = [256, 64, 64];
          const r = rng(freshSeed(`int4 epilogue ${JSON.stringify(e)} M=${M}`));
          const awq = randomAwq(K, e.gateUp ? 2 * N : N, g, r);
          const w = uploadInt4(dev, awq, 'w');
          try {
            const op = int4Linear({ K, N, groupSize: g, caps: dev.caps, ...e });
            const inp = randomInputs(M, K, N, e, r);
            const res = await runOp(dev, op, weightsOf(w), inp, M);
            const ref = linearRef(inp.x, dequantizeAwq(awq), M, K, N, e, inp.bias, inp.residual);
            // Measured 4.8e-7 (f32 out), 2.2e-4 (f16 out) (max measured on cpu, cpu-js and llvmpipe; bound ≤ 10×; re-derive with test/measure).
            expect(relErr(res.values, ref)).toBeLessThan(e.out === 'f16' ? 2e-3 : 4e-6);
          } finally { freeWeights(dev, w); }
        });
      }
    }
  });

  it('layout: nibble i of word c holds column 8c + [0,2,4,6,1,3,5,7][i] (qweight, qzeros, scale pairs)', async () => {
    const [K, N, g] = [64, 32, 32];
    const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];
    // Distinct values across the 8 columns of every word, different for every row and group.
    const qOf = (k: number, n: number) => (3 * n + k) % 16;
    const zOf = (grp: number, n: number) => (5 * n + 7 * grp + 1) % 16;
    const sOf = (grp: number, n: number) => (1 + (n % 8) / 8) * (grp + 1) * (n < 16 ? 1 : 0.5);
    const pack = (rows: number, val: (row: number, n: number) => number) => {
      const words = new Int32Array(rows * (N / 8));
      for (let row = 0; row < rows; row++) {
        for (let c = 0; c < N / 8; c++) {
          let word = 0;
          for (let i = 0; i < 8; i++) word |= val(row, 8 * c + ORDER[i]!) << (4 * i);
          words[row * (N / 8) + c] = word;
        }
      }
      return words;
    };
    const qweight = pack(K, qOf), qzeros = pack(K / g, zOf);
    const scales = Uint16Array.from({ length: (K / g) * N }, (_, i) => f32ToF16Bits(sOf(Math.floor(i / N), i % N)));
    // The quantizer's packer agrees with the hand-built words.
    expect(packAwqRows(Array.from({ length: K * N }, (_, i) => qOf(Math.floor(i / N), i % N)), K, N)).toEqual(qweight);
    const awq: AwqTensors = { K, N, groupSize: g, qweight, qzeros, scales };
    const w = uploadInt4(dev, awq, 'layout');
    try {
      for (const M of [3, 12]) { // GEMV and GEMM paths
        // One-hot rows pick single weight rows k_m from both groups: y[m, n] = W[k_m, n] exactly.
        const ks = Array.from({ length: M }, (_, m) => (m * 23 + 5) % K);
        const x = new Float32Array(M * K);
        ks.forEach((kk, m) => (x[m * K + kk] = 1));
        const op = int4Linear({ K, N, groupSize: g, caps: dev.caps });
        const res = await runOp(dev, op, weightsOf(w), { x }, M);
        const want = new Float32Array(M * N);
        ks.forEach((kk, m) => {
          const grp = Math.floor(kk / g);
          for (let n = 0; n < N; n++) want[m * N + n] = (qOf(kk, n) - zOf(grp, n)) * sOf(grp, n);
        });
        expect(Array.from(res.values)).toEqual(Array.from(want));
      }
    } finally { freeWeights(dev, w); }
  });

  describe('batch invariance: a row is bit-identical at M = 1, 5, 8 and 130 (GEMV and GEMM)', () => {
    const setups: { e: LinearEpilogue; choice?: LinearChoiceInput; alt: LinearChoiceInput; label: string }[] = [
      { label: 'one K segment', e: {}, choice: { segLen: 384 }, alt: { segLen: 384, gemv: { workgroupSize: 32, units: 2 }, gemm: { tileM: 16, tileN: 64, tileK: 32, blockM: 2, blockN: 4 } } },
      {
        // f32 output: f16 rounding would hide a changed summation order.
        label: '3 K segments, bias + gate/up + residual',
        e: { bias: true, gateUp: true, residual: true },
        choice: { segLen: 128 },
        alt: { segLen: 128, gemv: { workgroupSize: 128, units: 4 }, gemm: { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 } },
      },
      {
        label: 'default split, f16 output',
        e: { residual: true, out: 'f16' },
        alt: { gemv: { workgroupSize: 64, units: 2 }, gemm: { tileM: 32, tileN: 32, tileK: 32, blockM: 2, blockN: 4 } },
      },
    ];
    for (const { e, choice, alt, label } of setups) {
      it(label, async () => {
        const [K, N, g, M] = [384, 96, 64, 130];
        const r = rng(freshSeed(`int4 invariance ${label}`));
        const awq = randomAwq(K, e.gateUp ? 2 * N : N, g, r);
        const w = uploadInt4(dev, awq, 'w');
        try {
          const op = int4Linear({ K, N, groupSize: g, caps: dev.caps, ...e, choice });
          const inp = randomInputs(M, K, N, e, r);
          const wpr = e.out === 'f16' ? N / 2 : N;
          const full = await runOp(dev, op, weightsOf(w), inp, M);
          const ref = linearRef(inp.x, dequantizeAwq(awq), M, K, N, e, inp.bias, inp.residual);
          expect(relErr(full.values, ref)).toBeLessThan(e.out === 'f16' ? 2e-3 : 2.5e-6); // measured 2.9e-7, 2.1e-4
          for (const [r0, rows] of [[0, 1], [0, 5], [129, 1], [122, 8], [40, 9]] as const) {
            const part = await runOp(dev, op, weightsOf(w), sliceRows(inp, r0, rows, K, N), rows);
            expect(firstDiff(part.bits, rowBits(full, r0, rows, wpr)), `rows ${r0}..${r0 + rows - 1} at M=${rows}`).toBe(-1);
          }
          // Other schedules (GEMV units and workgroup, GEMM tiling) change speed, never bits.
          const altOp = int4Linear({ K, N, groupSize: g, caps: dev.caps, ...e, choice: { ...choice, ...alt } });
          for (const rows of [5, 130]) {
            const res = await runOp(dev, altOp, weightsOf(w), sliceRows(inp, 0, rows, K, N), rows);
            expect(firstDiff(res.bits, rowBits(full, 0, rows, wpr)), `alternative schedule at M=${rows}`).toBe(-1);
          }
          // The register GEMM (cpu), rows and units that do not divide M and N, vector loads or not.
          for (const gemmRows of GEMM_ROWS_VARIANTS) {
            const rowsOp = int4Linear({ K, N, groupSize: g, caps: dev.caps, ...e, choice: { ...choice, gemmRows } });
            const res = await runOp(dev, rowsOp, weightsOf(w), sliceRows(inp, 0, 130, K, N), 130);
            expect(firstDiff(res.bits, full.bits), `register GEMM ${JSON.stringify(gemmRows)}`).toBe(-1);
          }
        } finally { freeWeights(dev, w); }
      });
    }
  });

  it('every GEMV and GEMM variant in the tuning space gives the same bits', async () => {
    const [K, N, g] = [256, 64, 64];
    const r = rng(freshSeed('int4 variant space'));
    const awq = randomAwq(K, N, g, r);
    const w = uploadInt4(dev, awq, 'w');
    try {
      const inp = randomInputs(20, K, N, {}, r);
      const ref = int4Linear({ K, N, groupSize: g, caps: dev.caps, choice: { segLen: 128 } });
      const base2 = await runOp(dev, ref, weightsOf(w), inp, 2);
      const base20 = await runOp(dev, ref, weightsOf(w), inp, 20);
      expect(firstDiff(base2.bits, rowBits(base20, 0, 2, N))).toBe(-1);
      for (const gemv of INT4_GEMV_SPACE.filter((v) => v.workgroupSize <= dev.caps.maxInvocationsPerWorkgroup)) {
        const op = int4Linear({ K, N, groupSize: g, caps: dev.caps, choice: { segLen: 128, gemv } });
        expect(firstDiff((await runOp(dev, op, weightsOf(w), inp, 2)).bits, base2.bits), JSON.stringify(gemv)).toBe(-1);
      }
      for (const gemm of INT4_GEMM_SPACE) {
        let op: ReturnType<typeof int4Linear>;
        try { op = int4Linear({ K, N, groupSize: g, caps: dev.caps, choice: { segLen: 128, gemm } }); } catch { continue; } // over this device's limits
        expect(firstDiff((await runOp(dev, op, weightsOf(w), inp, 20)).bits, base20.bits), JSON.stringify(gemm)).toBe(-1);
      }
    } finally { freeWeights(dev, w); }
  });

  it('the magic-number dequant (GPUs) gives the bits of shift / convert, GEMV and GEMM', async () => {
    const [K, N, g] = [256, 64, 32];
    const r = rng(freshSeed('int4 magic dequant'));
    const awq = randomAwq(K, N, g, r);
    const w = uploadInt4(dev, awq, 'w');
    try {
      const inp = randomInputs(12, K, N, {}, r);
      const gemv = { workgroupSize: 32, units: 4, vec: 4 as const };
      for (const M of [2, 12]) {
        const op = (deviceClass: 'gpu' | 'cpu') => int4Linear({ K, N, groupSize: g, caps: dev.caps, deviceClass, choice: { segLen: 128, gemv } });
        const magic = op('gpu'), plain = op('cpu');
        expect([magic.source.tag, plain.source.tag]).toEqual(['int4g32m', 'int4g32']);
        expect(firstDiff((await runOp(dev, magic, weightsOf(w), inp, M)).bits, (await runOp(dev, plain, weightsOf(w), inp, M)).bits), `M=${M}`).toBe(-1);
      }
    } finally { freeWeights(dev, w); }
  });

  describe('bad input is refused before launch, naming the tensor and its shape', () => {
    it('configuration: K not a multiple of g, N not a multiple of 8, unknown group size', () => {
      expect(() => int4Linear({ K: 100, N: 32, groupSize: 32 })).toThrow(/K = 100 is not a multiple of groupSize 32/);
      expect(() => int4Linear({ K: 128, N: 36, groupSize: 32 })).toThrow(/N = 36 is not a multiple of 8.*\[K, N\/8\]/);
      expect(() => int4Linear({ K: 96, N: 32, groupSize: 48 })).toThrow(/groupSize 48 is not one of 32, 64, 128/);
      expect(() => int4Linear({ K: 128, N: 32, groupSize: 32, choice: { segLen: 48 } })).toThrow(/segment length 48/);
    });

    it('vector-load GEMV variants: refused where rows are not whole vectors, skipped by the default chooser', () => {
      const v4 = { workgroupSize: 32, units: 4, vec: 4 } as const, v2 = { workgroupSize: 64, units: 2, vec: 2 } as const;
      const s = { workgroupSize: 64, units: 1 };
      expect(() => int4Linear({ K: 128, N: 40, groupSize: 32, choice: { gemv: v4 } }))
        .toThrow(/GEMV variant .* a weight row holds 5 units of 8 columns \(Nw = 40\), not a multiple of 4/);
      expect(() => int4Linear({ K: 128, N: 32, groupSize: 32, choice: { gemv: { workgroupSize: 64, units: 2, vec: 4 } } }))
        .toThrow(/units = 2, not a multiple of 4/);
      expect(() => int4Linear({ K: 128, N: 32, groupSize: 32, choice: { gemv: { workgroupSize: 64, units: 1, unrollK: 3 as never } } }))
        .toThrow(/unrollK = 3, not 1, 2, 4 or 8/);
      expect(gemvVariantFits(v4, int4Source(32), 40, CUDA_CAPS)).toBe(false);
      expect(gemvVariantFits(v4, int4Source(32), 2 * 40, CUDA_CAPS)).toBe(false);
      expect(gemvVariantFits(v4, int4Source(32), 64, CUDA_CAPS)).toBe(true);
      expect(gemvVariantFits({ ...s, unrollK: 2 }, int4Source(32), 64, CUDA_CAPS)).toBe(true);
      expect(gemvVariantFits({ ...s, unrollK: 2 }, denseSource('f16'), 64, CUDA_CAPS)).toBe(false); // no groups: K need not divide
      expect(gemvVariantFits(v2, denseSource('f16'), 64, CUDA_CAPS)).toBe(true); // dense f16 has a vector form too
      expect(gemvVariantFits(v4, denseSource('f16'), 36, CUDA_CAPS)).toBe(false); // 18 words a row: not whole vec4s
      expect(gemvVariantFits(v2, denseSource('f32'), 64, CUDA_CAPS)).toBe(false); // no vector form
      // Subgroup caps: 16-byte loads for M ≤ 2, 8-byte for M ≤ 4, where N allows; k unrolled
      // where the device wants GPU-scale parallelism. No subgroups: 8-byte loads, k unrolled.
      const gemvs = (N: number, caps: Caps, o: { gateUp?: boolean; parallelism?: number; deviceClass?: DeviceClass } = {}) =>
        int4Linear({ K: 128, N, groupSize: 32, caps, ...o }).choice.gemv;
      const k = <V extends object>(v: V, unrollK: number) => ({ ...v, unrollK });
      // A GPU at GPU-scale parallelism: nibble pairs in 256-invocation workgroups at every M (for warps per SM).
      const pair = { workgroupSize: 256, units: 1, narrow: true, unrollK: 8 };
      expect(gemvs(64, CUDA_CAPS)).toEqual(Array(8).fill(pair));
      expect(gemvs(64, CUDA_CAPS, { deviceClass: 'cpu' })).toEqual([k(v4, 8), k(v4, 8), k(v2, 8), k(v2, 8), k(s, 8), k(s, 8), k(s, 8), k(s, 8)]);
      expect(gemvs(64, CUDA_CAPS, { parallelism: 2048 })).toEqual([v4, v4, v2, v2, s, s, s, s]);
      expect(gemvs(48, CUDA_CAPS, { parallelism: 2048 })).toEqual([v2, v2, v2, v2, s, s, s, s]);
      expect(gemvs(16, CUDA_CAPS, { gateUp: true, parallelism: 2048 })).toEqual([v4, v4, v2, v2, s, s, s, s]); // Nw = 2N = 32
      expect(gemvs(40, CUDA_CAPS, { parallelism: 2048 })).toEqual(Array(8).fill(s));
      expect(gemvs(64, BASELINE_CAPS)).toEqual([...Array(4).fill(k(v2, 4)), ...Array(4).fill(k(v2, 2))]);
      expect(gemvs(40, BASELINE_CAPS)).toEqual(Array(8).fill(s));
      // The schedule follows what runs the kernels (Device.profile), not the caps: a hardware GPU
      // without subgroups gets the GPU schedule, a rasteriser with them the llvmpipe one.
      expect(gemvs(64, BASELINE_CAPS, { deviceClass: 'gpu' })).toEqual([v4, v4, v2, v2, s, s, s, s]);
      expect(gemvs(64, CUDA_CAPS, { deviceClass: 'software-gpu' })).toEqual([...Array(4).fill(k(v2, 4)), ...Array(4).fill(k(v2, 2))]);
      expect(gemvs(64, CUDA_CAPS, { deviceClass: 'cpu', parallelism: 2048 })).toEqual([v4, v4, v2, v2, s, s, s, s]);
    });

    it('host tensors of the wrong size', () => {
      const awq = randomAwq(128, 32, 32, rng(1));
      expect(() => uploadInt4(dev, { ...awq, qzeros: awq.qzeros.subarray(1) }, 'bad'))
        .toThrow(/'qzeros' has 15 elements; expected \[K\/g, N\/8\] = \[4, 4\]/);
      expect(() => uploadInt4(dev, { ...awq, scales: awq.scales.subarray(0, 64) }, 'bad'))
        .toThrow(/'scales' has 64 elements; expected \[K\/g, N\] = \[4, 32\]/);
    });

    it('device tensors of the wrong shape or dtype; nothing runs', async () => {
      const [K, N, g, M] = [128, 32, 32, 2];
      const r = rng(freshSeed('int4 bad input'));
      const awq = randomAwq(K, N, g, r);
      const w = uploadInt4(dev, awq, 'w');
      const bufs = new Buffers(dev);
      try {
        const op = int4Linear({ K, N, groupSize: g, caps: dev.caps, residual: true });
        const x = bufs.input('f32', new Float32Array(M * K).fill(1), 'x');
        const residual = bufs.input('f32', new Float32Array(M * N), 'res');
        const out = bufs.output('f32', M * N, 'out');
        const good = { ...weightsOf(w), x, residual, out };
        const shortQ = bufs.input('u32', new Uint32Array((K * N) / 8 / 2), 'q_half');
        const signedQ = bufs.input('i32', new Int32Array((K * N) / 8), 'q_i32');
        const shortX = bufs.input('f32', new Float32Array(M * K - 1), 'x_short');
        expect(() => runLinear(dev, op, { ...good, qweight: shortQ }, M)).toThrow(LinearShapeError);
        expect(() => runLinear(dev, op, { ...good, qweight: shortQ }, M)).toThrow(/'qweight' .*has 256 elements; expected u32 \[K, Nw \/ 8\] = \[128, 4\]/);
        expect(() => runLinear(dev, op, { ...good, qweight: signedQ as never }, M)).toThrow(/'qweight' .*is i32; expected u32 \[K, Nw \/ 8\]/);
        expect(() => runLinear(dev, op, { ...good, x: shortX }, M)).toThrow(/'x' .*expected f32 \[M, K\] = \[2, 128\]/);
        const { residual: _r, ...noResidual } = good;
        expect(() => runLinear(dev, op, noResidual, M)).toThrow(/'residual' is missing; expected f32 \[M, N\] = \[2, 32\]/);
        expect(() => runLinear(dev, op, good, 0)).toThrow(/M = 0/);
        expect((await bufs.read(out)).every((v) => Number.isNaN(v))).toBe(true);
      } finally { bufs.free(); freeWeights(dev, w); }
    });
  });
});
