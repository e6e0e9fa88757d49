// The INT4 linear op's tensor-core MMA path (codegen/kernels/int4Mma.ts), forced through the
// linear op on every backend (k.mma is emulated off CUDA): float64 reference of f16(x)·W for
// M = 1, 5, 16, 17, 64 with the epilogues, row bits independent of M, the chooser (tensor cores
// only, M ≤ 64), and ptxas on sm_90a.
import { describe, expect, it } from 'vitest';
import { BASELINE_CAPS, CUDA_CAPS } from '../../codegen/dsl/types.js';
import { emitCUDA } from '../../codegen/emit/cuda.js';
import { denseLinear } from '../../codegen/kernels/denseMatmul.js';
import { int4MmaKernel, int4MmaSplit, int4MmaSteps, MMA_MAX_ROWS } from '../../codegen/kernels/int4Mma.js';
import { int4Linear } from '../../codegen/kernels/int4Matmul.js';
import { fullEpilogue, type LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import type { Device, DeviceBuffer } from '../../src/backend/device.js';
import { uploadInt4 } from '../../src/ops/linear.js';
import { dequantizeAwq } from '../../src/quant/awq.js';
import { f16BitsToF32, f32ToF16Bits } from '../../src/quant/f16.js';
import { ptxasReport } from '../../src/profile.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, relErr, rng } from '../util.js';
import { firstDiff, linearRef, randomAwq, randomInputs, rowBits, runOp } from './linearRef.js';

const toF16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));

/**
 * Bias and residual with f32 output and split-K 4 (4 groups; the row-bits test reuses its kernel;
 * word staging, N % 32 ≠ 0), every epilogue at once with f16 output and no split (3 groups).
 */
const ROWS_CASE = { e: { bias: true, residual: true } as LinearEpilogue, K: 256, N: 40, g: 64, tol: 1e-5 };
const EPILOGUES: { e: LinearEpilogue; K: number; N: number; g: number; tol: number }[] = [
  ROWS_CASE,
  { e: { bias: true, gateUp: true, residual: true, out: 'f16' }, K: 192, N: 32, g: 64, tol: 2e-3 }, // vec4 staging of both halves
  // N % 32 == 0: qweight staged by vec4 loads, 4 mma steps per stage (2 where workgroup memory is
  // 32 KB: WebGPU here), words 12..15 of the second workgroup past N.
  { e: { residual: true }, K: 256, N: 96, g: 64, tol: 1e-5 },
];

async function withWeights<T>(dev: Device, K: number, Nw: number, g: number, seed: number,
  body: (w: Record<string, DeviceBuffer>, W: Float64Array, r: () => number) => Promise<T>): Promise<T> {
  const r = rng(seed);
  const awq = randomAwq(K, Nw, g, r);
  const up = uploadInt4(dev, awq, 'mma');
  try {
    return await body({ qweight: up.qweight, qzeros: up.qzeros, scales: up.scales }, dequantizeAwq(awq), r);
  } finally { for (const b of [up.qweight, up.qzeros, up.scales]) dev.free(b); }
}

forEachBackend('int4 MMA linear', (dev) => {
  for (const { e, K, N, g, tol } of EPILOGUES) {
    const tag = JSON.stringify(e);
    it(`${tag}, K = ${K}, N = ${N}, g = ${g} (split-K ${int4MmaSplit(K, g)}): M = 1, 5, 16, 17, 64 within ${tol} of float64 (x rounded to f16)`, async () => {
      const Nw = e.gateUp ? 2 * N : N;
      const op = int4Linear({ K, N, groupSize: g, ...e, caps: dev.caps, choice: { mmaMaxRows: MMA_MAX_ROWS } });
      const ir = op.plan({ M: 1 }).steps[0]!.kernel.ir;
      expect(ir.name.includes('_v4_'), 'vec4 staging exactly where N % 32 == 0').toBe(N % 32 === 0);
      if (N === 96) expect(ir.params.steps, 'steps staged per barrier pair').toBe(dev.caps.maxWorkgroupStorage >= 48 * 1024 ? 4 : 2);
      await withWeights(dev, K, Nw, g, freshSeed(`int4 mma ${tag}`), async (w, W, r) => {
        for (const M of [1, 5, 16, 17, 64]) {
          const inp = randomInputs(M, K, N, e, r);
          const got = await runOp(dev, op, w, inp, M);
          const ref = linearRef(Float32Array.from(inp.x, toF16), W, M, K, N, e, inp.bias, inp.residual);
          expect(got.values.every(Number.isFinite), `M = ${M}: every output written`).toBe(true);
          expect(relErr(got.values, ref), `M = ${M}`).toBeLessThan(tol);
        }
      });
    });
  }

  it('row bits are the same for M = 1 and M = 37 (padding rows never reach a real row)', async () => {
    const { e, K, N, g } = ROWS_CASE;
    const op = int4Linear({ K, N, groupSize: g, ...e, caps: dev.caps, choice: { mmaMaxRows: MMA_MAX_ROWS } });
    await withWeights(dev, K, N, g, freshSeed('int4 mma rows'), async (w, _W, r) => {
      const inp = randomInputs(37, K, N, e, r);
      const all = await runOp(dev, op, w, inp, 37);
      for (const row of [0, 20, 36]) {
        const one = await runOp(dev, op, w, {
          x: inp.x.slice(row * K, (row + 1) * K), bias: inp.bias, residual: inp.residual!.slice(row * N, (row + 1) * N),
        }, 1);
        expect(firstDiff(rowBits(all, row, 1, N), one.bits), `row ${row}`).toBe(-1);
      }
    });
  });

  it('split-K 8 (CUDA\'s choice for long K, 1024 invocations): M = 1, 17 within 1e-5 of float64; row 16 of M = 17 equals M = 1', async (ctx) => {
    const K = 256, N = 40, g = 32, e = fullEpilogue({ residual: true });
    let kern: ReturnType<typeof int4MmaKernel>;
    try { kern = int4MmaKernel({ groupSize: g, split: 8, epilogue: e, caps: dev.caps }); } catch (err) {
      ctx.skip(`this device cannot hold a 1024-invocation MMA workgroup with its fragment scratch: ${(err as Error).message}`);
      return;
    }
    await withWeights(dev, K, N, g, freshSeed('int4 mma split 8'), async (w, W, r) => {
      const inp = randomInputs(17, K, N, e, r);
      const run = async (x: Float32Array, residual: Float32Array, M: number) => {
        const xb = dev.alloc('f32', M * K, 'x'), rb = dev.alloc('f32', M * N, 'residual'), out = dev.alloc('f32', M * N, 'out');
        try {
          dev.write(xb, x);
          dev.write(rb, residual);
          dev.write(out, new Float32Array(M * N).fill(Number.NaN));
          dev.launch(kern, { x: xb, ...w, residual: rb, out } as never, { M, K, N, Nw: N });
          return await dev.read(out);
        } finally { for (const b of [xb, rb, out]) dev.free(b); }
      };
      const all = await run(inp.x, inp.residual!, 17);
      const ref = linearRef(Float32Array.from(inp.x, toF16), W, 17, K, N, e, undefined, inp.residual);
      expect(relErr(all, ref)).toBeLessThan(1e-5);
      const one = await run(inp.x.slice(16 * K, 17 * K), inp.residual!.slice(16 * N, 17 * N), 1);
      expect(firstDiff(new Uint32Array(one.buffer, one.byteOffset, N), new Uint32Array(all.buffer, all.byteOffset + 16 * N * 4, N)), 'row 16').toBe(-1);
    });
  });

  it('magic-number B fragments (nibblePairF16, f16 pair subtraction) give the bits of int → f32, − z, pack (M = 17, vec4 staging of 4 steps and of 2, f16 out)', async () => {
    const cases = [
      { e: fullEpilogue({ bias: true, out: 'f16' }), K: 128, N: 64, g: 64, vec4: true },
      { e: fullEpilogue({ bias: true, out: 'f16' }), K: 96, N: 64, g: 32, vec4: true },
    ];
    for (const { e, K, N, g, vec4 } of cases) {
      const Nw = e.gateUp ? 2 * N : N, M = 17;
      const build = (dequant: 'magic' | 'convert') =>
        int4MmaKernel({ groupSize: g, split: int4MmaSplit(K, g, e, dev.caps), epilogue: e, caps: dev.caps, vec4, dequant });
      const magic = build('magic'), convert = build('convert');
      await withWeights(dev, K, Nw, g, freshSeed('int4 mma magic'), async (w, W, r) => {
        const inp = randomInputs(M, K, N, e, r);
        const run = async (kern: typeof magic) => {
          const bufs: DeviceBuffer[] = [];
          const put = (name: string, data: Float32Array) => { const b = dev.alloc('f32', data.length, name); bufs.push(b); dev.write(b, data); return b; };
          try {
            const out = e.out === 'f16' ? dev.alloc('u32', M * N / 2, 'out') : dev.alloc('f32', M * N, 'out');
            bufs.push(out);
            dev.write(out, e.out === 'f16' ? new Uint32Array(M * N / 2).fill(0x7e007e00) : new Float32Array(M * N).fill(Number.NaN));
            dev.launch(kern, {
              x: put('x', inp.x), ...w, ...(e.bias ? { bias: put('bias', inp.bias!) } : {}), ...(e.residual ? { residual: put('residual', inp.residual!) } : {}), out,
            } as never, { M, K, N, Nw });
            const got = await dev.read(out);
            return new Uint32Array(got.buffer, got.byteOffset, got.byteLength / 4);
          } finally { for (const b of bufs) dev.free(b); }
        };
        expect(magic.ir.params.steps, 'steps staged per barrier pair').toBe(g / 16);
        const [a, b] = [await run(magic), await run(convert)];
        const ref = linearRef(Float32Array.from(inp.x, toF16), W, M, K, N, e, inp.bias, inp.residual);
        const values = Float32Array.from({ length: M * N }, (_, i) => f16BitsToF32((a[i >> 1]! >>> (16 * (i & 1))) & 0xffff));
        expect(relErr(values, ref), `${magic.ir.name} against float64`).toBeLessThan(2e-3);
        expect(firstDiff(a, b), `${magic.ir.name} against ${convert.ir.name}`).toBe(-1);
      });
    }
  });
});

describe('int4 MMA path: chooser and CUDA', () => {
  it('split-K: 8 for long K where the caps have tensor cores and 1024 invocations (not gate/up: its sums would not fit), else 4, 2, 1', () => {
    const plain = fullEpilogue({}), gateUp = fullEpilogue({ gateUp: true });
    expect([int4MmaSplit(4096, 128, plain, CUDA_CAPS), int4MmaSplit(14336, 128, plain, CUDA_CAPS), int4MmaSplit(4096, 128, gateUp, CUDA_CAPS)]).toEqual([8, 8, 4]);
    expect([int4MmaSplit(4096, 128, plain, BASELINE_CAPS), int4MmaSplit(4096, 128), int4MmaSplit(384, 128, plain, CUDA_CAPS)]).toEqual([4, 4, 1]);
  });

  const K = 256, g = 64;
  const stepsOf = (caps: typeof CUDA_CAPS, M: number, mmaMaxRows?: number) =>
    int4Linear({ K, N: 64, groupSize: g, caps, ...(mmaMaxRows === undefined ? {} : { choice: { mmaMaxRows } }) })
      .plan({ M }).steps.map((s) => s.kernel.ir.name);
  const usesMma = (names: string[]) => names.some((n) => n.startsWith('int4Mma'));

  it('the linear op takes it at every M up to 64 by default where the caps have tensor cores (else never), or up to mmaMaxRows when asked', () => {
    for (const M of [1, 8, 17, 64]) expect(stepsOf(CUDA_CAPS, M), `M = ${M}`).toEqual([expect.stringMatching(/^int4Mma_/)]);
    expect(usesMma(stepsOf(CUDA_CAPS, 65))).toBe(false);
    expect(usesMma(stepsOf(CUDA_CAPS, 1, 0)), 'mmaMaxRows = 0 turns it off').toBe(false);
    for (const M of [1, 8, 17, 64]) expect(stepsOf(CUDA_CAPS, M, 64), `M = ${M}`).toEqual([expect.stringMatching(/^int4Mma_/)]);
    expect(usesMma(stepsOf(CUDA_CAPS, 65, 64))).toBe(false);
    expect(usesMma(stepsOf(CUDA_CAPS, 17, 16))).toBe(false);
    for (const M of [1, 17, 64]) expect(usesMma(stepsOf(BASELINE_CAPS, M)), `M = ${M}`).toBe(false);
    // A source without an MMA kernel (dense f32) keeps its GEMV / GEMM; forcing it is refused.
    expect(denseLinear({ K, N: 64, weight: 'f32', caps: CUDA_CAPS }).plan({ M: 4 }).steps[0]!.kernel.ir.name).not.toMatch(/^int4Mma/);
    expect(() => denseLinear({ K, N: 64, weight: 'f32', caps: CUDA_CAPS, choice: { mmaMaxRows: 64 } }))
      .toThrow(/mmaMaxRows = 64 but the f32 source has no MMA kernel/);
    expect(() => int4Linear({ K, N: 64, groupSize: g, caps: CUDA_CAPS, choice: { mmaMaxRows: 65 } })).toThrow(/mmaMaxRows = 65 is not an integer in 0\.\.64/);
  });

  it('mma.sync per 16 of K per 8-column tile (2 tiles a warp; 4 with gateUp), and ptxas (sm_90a) takes every epilogue, word and vec4 staging, with no spills', (ctx) => {
    for (const e of EPILOGUES.map((c) => fullEpilogue(c.e))) {
      for (const vec4 of [false, true]) {
        const ir = int4MmaKernel({ groupSize: 128, split: 4, epilogue: e, caps: CUDA_CAPS, vec4 }).ir;
        expect(emitCUDA(ir).match(/mma\.sync\.aligned\.m16n8k16/g)).toHaveLength(e.gateUp ? 4 : 2);
        const r = ptxasReport(ir);
        if (typeof r === 'string') { ctx.skip(`no ptxas verdict: ${r}`); return; }
        expect([r.spillStores, r.spillLoads], `${JSON.stringify(e)}, vec4 ${vec4}`).toEqual([0, 0]);
      }
    }
  });

  it('stages 4 mma steps (64 of K) per barrier pair where g and workgroup memory allow, else 2 or 1', () => {
    expect([int4MmaSteps(128, 8, 1, 0, CUDA_CAPS), int4MmaSteps(32, 8, 1, 0, CUDA_CAPS), int4MmaSteps(16, 8, 1, 0, CUDA_CAPS)]).toEqual([4, 2, 1]);
    // 16 KB: split 4 beside 2048 words of scratch leaves room for 2 steps' tiles, not 4.
    expect(int4MmaSteps(128, 4, 1, 2048, BASELINE_CAPS)).toBe(2);
  });
});
