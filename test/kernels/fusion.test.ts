// Fused linear ops (codegen/kernels/fusedLinear.ts) against the launches they replace: RMSNorm →
// linear (GEMV + finish, or GEMM) → ropeQkv → kvAppend. Same bits, for every row count (GEMV
// with the finish folded into the last arrival, GEMV + finish, GEMM); plus a float64 reference of
// the normed layer, so the comparison is not between two equally wrong paths.
import { describe, expect, it } from 'vitest';
import { denseLinear } from '../../codegen/kernels/denseMatmul.js';
import { fusedLinear, } from '../../codegen/kernels/fusedLinear.js';
import { int4Linear } from '../../codegen/kernels/int4Matmul.js';
import type { LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import type { LinearOp } from '../../codegen/kernels/linearOp.js';
import { defaultRmsNormWorkgroup, rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import type { Device, DeviceBuffer } from '../../src/backend/device.js';
import { linearHints, runFusedLinear, runLinear, uploadDense, uploadInt4 } from '../../src/ops/linear.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';
import { firstDiff, linearRef, randomAwq } from './linearRef.js';
import { checkRopeFusion, type RopeFusionCase } from './ropeFusionCheck.js';

const ROWS = [1, 3, 8, 10];
const EPS = 1e-5;

type Weights = Record<string, DeviceBuffer>;

/** An INT4 (g = 32) or dense f32 layer with its weights on the device (dense: W kept for the reference). */
function layer(dev: Device, bufs: Buffers, kind: 'int4' | 'f32', K: number, N: number, e: LinearEpilogue, r: () => number, narrow = false,
  fence = true) {
  // Without the fence (caps.deviceFence false) the op plans as on WebGPU: the fence-free paths run here too.
  const hints = { ...linearHints(dev), ...(fence ? {} : { caps: { ...dev.caps, deviceFence: false } }) };
  const Nw = e.gateUp ? 2 * N : N;
  if (kind === 'int4') {
    // narrow: the GPUs' decode schedule (nibble pairs per invocation), whatever this device is.
    const choice = narrow ? { choice: { gemv: { workgroupSize: 256, units: 1, narrow: true, unrollK: 8 as const } } } : {};
    const op = int4Linear({ K, N, groupSize: 32, ...e, ...hints, ...choice });
    const w = uploadInt4(dev, randomAwq(K, Nw, 32, r), 'w', op.source.layout); // the device's layout (cpu: strips)
    for (const b of [w.qweight, w.qzeros, w.scales]) bufs.adopt(b);
    return { op, weights: { qweight: w.qweight, qzeros: w.qzeros, scales: w.scales } as Weights, W: undefined };
  }
  const op = denseLinear({ K, N, weight: 'f32', ...e, ...hints });
  const W = randomF32(K * Nw, r, -0.2, 0.2);
  const w = uploadDense(dev, W, K, Nw, 'f32', 'KN', 'w', op.source.layout);
  bufs.adopt(w);
  return { op, weights: { w } as Weights, W };
}

/** Words of a buffer as bits. */
async function bits(dev: Device, b: DeviceBuffer): Promise<Uint32Array> {
  const v = await dev.read(b);
  return new Uint32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
}

forEachBackend('fused linear', (dev) => {
  const normWg = (K: number) => defaultRmsNormWorkgroup(K, dev.caps);

  describe('RMSNorm prologue and folded finish', () => {
    const cases: { kind: 'int4' | 'f32'; K: number; N: number; e: LinearEpilogue; norm: boolean; narrow?: boolean }[] = [
      { kind: 'int4', K: 256, N: 96, e: {}, norm: true },
      { kind: 'int4', K: 128, N: 64, e: { gateUp: true, residual: true }, norm: true, narrow: true },
      { kind: 'int4', K: 128, N: 64, e: { gateUp: true }, norm: true },
      { kind: 'int4', K: 192, N: 80, e: { residual: true }, norm: false },
      { kind: 'f32', K: 96, N: 40, e: { bias: true, gateUp: true }, norm: true },
      { kind: 'f32', K: 64, N: 48, e: { residual: true, out: 'f16' }, norm: false },
    ];
    for (const c of cases) for (const fence of dev.caps.deviceFence ? [true, false] : [false]) {
      it(`${c.kind} K = ${c.K}, N = ${c.N}, ${JSON.stringify(c.e)}${c.norm ? ', normed' : ''}${c.narrow ? ', nibble-pair GEMV' : ''}${fence ? '' : ', no fence'}: the separate launches' bits for M = ${ROWS.join(', ')}`, async () => {
        const r = rng(freshSeed(`fusion ${c.kind} ${c.K} ${c.N} ${JSON.stringify(c.e)}`));
        const bufs = new Buffers(dev);
        try {
          const { op, weights, W } = layer(dev, bufs, c.kind, c.K, c.N, c.e, r, c.narrow, fence);
          const fused = fusedLinear({ linear: op, ...(c.norm ? { norm: { workgroupSize: normWg(c.K), eps: EPS } } : {}) });
          const Mmax = Math.max(...ROWS), K = c.K, N = c.N, Nw = op.Nw;
          const x = bufs.input('f32', randomF32(Mmax * K, r, -2, 2), 'x');
          const normW = bufs.input('f32', randomF32(K, r, 0.5, 1.5), 'normW');
          const bias = c.e.bias ? bufs.input('f32', randomF32(Nw, r, -0.5, 0.5), 'bias') : undefined;
          const residual = c.e.residual ? bufs.input('f32', randomF32(Mmax * N, r), 'residual') : undefined;
          const f16 = c.e.out === 'f16';
          const outLen = f16 ? (Mmax * N) / 2 : Mmax * N;
          const outA = f16 ? bufs.output('u32', outLen, 'outA') : bufs.output('f32', outLen, 'outA');
          const outB = f16 ? bufs.output('u32', outLen, 'outB') : bufs.output('f32', outLen, 'outB');
          const h = bufs.output('f32', Mmax * K, 'h');
          const extra = { ...(bias ? { bias } : {}), ...(residual ? { residual } : {}) };
          for (const M of ROWS) {
            bufs.poison(outA);
            bufs.poison(outB);
            // The separate launches.
            if (c.norm) dev.launch(rmsNorm({ caps: dev.caps, workgroupSize: normWg(K) }), { x, w: normW, out: h }, { M, D: K, eps: EPS });
            runLinear(dev, op, { x: c.norm ? h : x, ...weights, ...extra, out: outA } as never, M);
            // The fused op.
            const plan = fused.plan({ M });
            if (M <= 8) expect(plan.steps.length, `M = ${M}: launches`).toBe(fence ? 1 : 2);
            dev.run(fused, { x, ...weights, ...(c.norm ? { normW } : {}), ...extra, out: outB } as never, { M });
            const a = (await bits(dev, outA)).subarray(0, f16 ? (M * N) / 2 : M * N);
            const b = (await bits(dev, outB)).subarray(0, f16 ? (M * N) / 2 : M * N);
            expect(firstDiff(b, a), `M = ${M}: first differing word`).toBe(-1);
            if (W && !f16) {
              // float64 reference of norm → linear → epilogue (dense weights only: W is known).
              const xs = (await dev.read(x)).subarray(0, M * K), nw = await dev.read(normW);
              const xn = new Float32Array(M * K);
              for (let m = 0; m < M; m++) {
                let ss = 0;
                for (let k = 0; k < K; k++) ss += xs[m * K + k]! ** 2;
                const inv = c.norm ? 1 / Math.sqrt(ss / K + EPS) : 1;
                for (let k = 0; k < K; k++) xn[m * K + k] = xs[m * K + k]! * inv * (c.norm ? nw[k]! : 1);
              }
              const want = linearRef(xn, W, M, K, N, c.e, bias && await dev.read(bias), residual && (await dev.read(residual)).subarray(0, M * N));
              expect(relErr((await dev.read(outB as DeviceBuffer<'f32'>)).subarray(0, M * N), want), `M = ${M}: against float64`).toBeLessThan(3e-6); // measured 3.1e-7
            }
          }
        } finally { bufs.free(); }
      });
    }
  });

  it('a wrong tensor is named before any launch', () => {
    const bufs = new Buffers(dev);
    try {
      const { op, weights } = layer(dev, bufs, 'int4', 64, 32, {}, rng(1));
      const fused = fusedLinear({ linear: op, norm: { workgroupSize: normWg(64), eps: EPS } });
      const x = bufs.output('f32', 64, 'x'), out = bufs.output('f32', 32, 'out');
      expect(() => runFusedLinear(dev, fused, { x, ...weights, out }, { M: 1 })).toThrow(/tensor 'normW' is missing; expected f32 \[K\] = \[64\]/);
      const normW = bufs.output('f32', 63, 'normW');
      expect(() => runFusedLinear(dev, fused, { x, ...weights, normW, out }, { M: 1 })).toThrow(/'normW' \(buffer 'normW'\) is f32 \[63\]/);
      expect(() => runFusedLinear(dev, fused, { x, ...weights, normW, out }, { M: 2 })).toThrow(/tensor 'x' \(buffer 'x'\) has 64 elements; expected f32 \[M, K\]/);
    } finally { bufs.free(); }
  });

  describe('QKV projection with RoPE and the KV-cache append', () => {
    // The second case is layer 0's: x gathered from an f16 embedding table inside the op.
    const cases: RopeFusionCase[] = [
      { K: 128, layout: 'halves', heads: 4, kvHeads: 2, headDim: 16, kvDtype: 'f32', blockSize: 4 },
      { K: 96, layout: 'interleaved', heads: 3, kvHeads: 1, headDim: 24, kvDtype: 'f16', blockSize: 8, gather: true },
    ];
    for (const c of cases) for (const fence of dev.caps.deviceFence ? [true, false] : [false]) {
      it(`${c.layout}, ${c.heads}/${c.kvHeads} heads of ${c.headDim}, ${c.kvDtype} KV${c.gather ? ', x gathered from the embeddings' : ''}${fence ? '' : ', no fence'}: q and the cache have the separate launches' bits`, async () => {
        const r = rng(freshSeed(`fusion rope ${c.layout} ${c.kvDtype}`));
        const bufs = new Buffers(dev);
        try {
          const N = (c.heads + 2 * c.kvHeads) * c.headDim, K = c.K;
          const { op, weights } = layer(dev, bufs, 'int4', K, N, {}, r, false, fence);
          // Up to 8 rows: one launch with the fence; without it two, the finish, RoPE and append in the second.
          const launches = (M: number) => (M <= 8 ? (fence ? 1 : 2) : undefined);
          await checkRopeFusion(dev, bufs, r, c, { op: op as LinearOp, weights, normWorkgroup: normWg(K), eps: EPS, rows: ROWS, launches });
        } finally { bufs.free(); }
      });
    }
  });
});
