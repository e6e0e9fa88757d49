// Fused linear ops on the tensor-core MMA path (fusedLinear.ts → int4Mma.ts with mmaFusion.ts),
// forced on every backend (k.mma is emulated off CUDA): the RMSNorm prologue, gate/up and the
// residual, and the QKV projection's RoPE + KV append (gathered embeddings in layer 0) give the
// separate launches' bits (rmsNorm → int4Mma → ropeQkv → kvAppend) at M = 1 and 37; rows 0 and 36
// of the M = 37 run equal M = 1 runs of the same rows; float64 reference of norm → linear.
import { describe, expect, it } from 'vitest';
import { CUDA_CAPS } from '../../codegen/dsl/types.js';
import { fusedLinear, type RopeAppendEpilogue } from '../../codegen/kernels/fusedLinear.js';
import { int4Linear } from '../../codegen/kernels/int4Matmul.js';
import { int4MmaKernel, int4MmaSplit } from '../../codegen/kernels/int4Mma.js';
import { fullEpilogue, type LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import { denseMmaKernel, denseMmaSplit } from '../../codegen/kernels/mmaMatmul.js';
import { defaultRmsNormWorkgroup, rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import type { Device, DeviceBuffer } from '../../src/backend/device.js';
import { linearHints, runLinear, uploadInt4 } from '../../src/ops/linear.js';
import { ptxasReport } from '../../src/profile.js';
import { dequantizeAwq } from '../../src/quant/awq.js';
import { f16BitsToF32, f32ToF16Bits, } from '../../src/quant/f16.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';
import { firstDiff, linearRef, randomAwq } from './linearRef.js';
import { checkRopeFusion, type RopeFusionCase } from './ropeFusionCheck.js';

const ROWS = [1, 37]; // 37: three 16-row blocks, the last padded
const EPS = 1e-5;
const G = 32;

async function bits(dev: Device, b: DeviceBuffer, words?: number): Promise<Uint32Array> {
  const v = await dev.read(b);
  const u = new Uint32Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  return words === undefined ? u : u.subarray(0, words);
}

/** An INT4 layer forced onto the MMA path, its weights on the device; W dequantized for references. */
function mmaLayer(dev: Device, bufs: Buffers, K: number, N: number, e: LinearEpilogue, r: () => number, fence: boolean) {
  const hints = { ...linearHints(dev), ...(fence ? {} : { caps: { ...dev.caps, deviceFence: false } }) };
  const op = int4Linear({ K, N, groupSize: G, ...e, ...hints, weightLayout: 'rows', choice: { mmaMaxRows: 64 } });
  const awq = randomAwq(K, op.Nw, G, r);
  const w = uploadInt4(dev, awq, 'w');
  for (const b of [w.qweight, w.qzeros, w.scales]) bufs.adopt(b);
  return { op, weights: { qweight: w.qweight, qzeros: w.qzeros, scales: w.scales }, W: dequantizeAwq(awq) };
}

forEachBackend('fused linear on the MMA path', (dev) => {
  const normWg = (K: number) => defaultRmsNormWorkgroup(K, dev.caps);
  const fences = dev.caps.deviceFence ? [true, false] : [false];

  it(`RMSNorm prologue, gate/up and residual: the separate launches' bits at M = ${ROWS.join(', ')}, rows independent of M, float64 reference`, async () => {
    const r = rng(freshSeed('mma fusion norm gateUp'));
    const bufs = new Buffers(dev);
    try {
      const K = 64, N = 40, e: LinearEpilogue = { gateUp: true, residual: true }; // split-K 2; fits WebGPU's 32 KB
      const { op, weights, W } = mmaLayer(dev, bufs, K, N, e, r, true);
      const fused = fusedLinear({ linear: op, norm: { workgroupSize: normWg(K), eps: EPS } });
      const Mmax = Math.max(...ROWS);
      const x = bufs.input('f32', randomF32(Mmax * K, r, -2, 2), 'x');
      const normW = bufs.input('f32', randomF32(K, r, 0.5, 1.5), 'normW');
      const residual = bufs.input('f32', randomF32(Mmax * N, r), 'residual');
      const [outA, outB, h] = [bufs.output('f32', Mmax * N, 'outA'), bufs.output('f32', Mmax * N, 'outB'), bufs.output('f32', Mmax * K, 'h')];
      const byM = new Map<number, Uint32Array>();
      for (const M of ROWS) {
        bufs.poison(outA);
        bufs.poison(outB);
        dev.launch(rmsNorm({ caps: dev.caps, workgroupSize: normWg(K) }), { x, w: normW, out: h }, { M, D: K, eps: EPS });
        runLinear(dev, op, { x: h, ...weights, residual, out: outA } as never, M);
        expect(fused.plan({ M }).steps.map((s) => s.kernel.ir.name), `M = ${M}: one launch`).toEqual([expect.stringMatching(/^int4Mma_.*_norm\d+$/)]);
        dev.run(fused, { x, ...weights, normW, residual, out: outB } as never, { M });
        const a = await bits(dev, outA, M * N), b = await bits(dev, outB, M * N);
        expect(firstDiff(b, a), `M = ${M}: first differing word`).toBe(-1);
        byM.set(M, b);
        // float64: norm, x rounded to f16 (as the tensor cores take it), the layer, SiLU·mul, residual.
        const xs = (await dev.read(x)).subarray(0, M * K), nw = await dev.read(normW);
        const xn = new Float32Array(M * K);
        for (let m = 0; m < M; m++) {
          let ss = 0;
          for (let k = 0; k < K; k++) ss += xs[m * K + k]! ** 2;
          const inv = 1 / Math.sqrt(ss / K + EPS);
          for (let k = 0; k < K; k++) xn[m * K + k] = f16BitsToF32(f32ToF16Bits(xs[m * K + k]! * inv * nw[k]!));
        }
        const want = linearRef(xn, W, M, K, N, e, undefined, (await dev.read(residual)).subarray(0, M * N));
        expect(relErr((await dev.read(outB)).subarray(0, M * N), want), `M = ${M}: against float64`).toBeLessThan(2e-3);
      }
      // Rows of the M = 37 run equal M = 1 runs of the same rows (row 0: the run above).
      const all = byM.get(37)!;
      expect(firstDiff(all.subarray(0, N), byM.get(1)!), 'row 0: M = 37 against M = 1').toBe(-1);
      for (const row of [36]) {
        const xr = bufs.input('f32', (await dev.read(x)).slice(row * K, (row + 1) * K), `x${row}`);
        const rr = bufs.input('f32', (await dev.read(residual)).slice(row * N, (row + 1) * N), `res${row}`);
        bufs.poison(outB);
        dev.run(fused, { x: xr, ...weights, normW, residual: rr, out: outB } as never, { M: 1 });
        expect(firstDiff(await bits(dev, outB, N), all.subarray(row * N, (row + 1) * N)), `row ${row}: M = 1 against M = 37`).toBe(-1);
      }
    } finally { bufs.free(); }
  });

  describe('QKV projection with RoPE and the KV-cache append', () => {
    // The second case is layer 0's (x gathered from an f16 table) with a head across two workgroups.
    const cases: RopeFusionCase[] = [
      { K: 128, layout: 'halves', heads: 4, kvHeads: 2, headDim: 16, kvDtype: 'f32', blockSize: 4 },
      { K: 96, layout: 'interleaved', heads: 3, kvHeads: 1, headDim: 24, kvDtype: 'f16', blockSize: 8, gather: true },
    ];
    for (const c of cases) for (const fence of fences) {
      it(`${c.layout}, ${c.heads}/${c.kvHeads} heads of ${c.headDim}, ${c.kvDtype} KV${c.gather ? ', x gathered' : ''}${fence ? '' : ', no fence'}: q and the cache have the separate launches' bits`, async () => {
        const r = rng(freshSeed(`mma fusion rope ${c.layout}`));
        const bufs = new Buffers(dev);
        try {
          const N = (c.heads + 2 * c.kvHeads) * c.headDim, K = c.K;
          const { op, weights } = mmaLayer(dev, bufs, K, N, {}, r, fence);
          await checkRopeFusion(dev, bufs, r, c, { op, weights, normWorkgroup: normWg(K), eps: EPS, rows: ROWS, launches: () => (fence ? 1 : 3) });
        } finally { bufs.free(); }
      });
    }
  });
});

describe('fused MMA kernels at Llama-3-8B shapes: CUDA', () => {
  // What LlamaForward builds on CUDA (int4 g = 128, K = 4096: split-K 8, gate/up 4, vec4 staging; lm_head split-K 8; norm workgroup 256).
  const norm = { workgroupSize: 256 };
  const rope: RopeAppendEpilogue = { layout: 'halves', heads: 32, kvHeads: 8, headDim: 128, kvDtype: 'f16', blockSize: 16 };
  const kernels = () => [
    ...[{ e: {}, fusion: { gather: 'f16' as const, norm, rope } }, { e: { gateUp: true }, fusion: { norm } }, { e: { residual: true }, fusion: {} }].map(({ e, fusion }) =>
      int4MmaKernel({ groupSize: 128, split: int4MmaSplit(4096, 128, fullEpilogue(e), CUDA_CAPS), epilogue: fullEpilogue(e), fusion, caps: CUDA_CAPS, vec4: true })),
    denseMmaKernel({ epilogue: fullEpilogue({}), split: denseMmaSplit(4096, fullEpilogue({}), CUDA_CAPS), fusion: { norm }, caps: CUDA_CAPS }),
  ];
  it('QKV (gather, norm, RoPE + append), gate/up (norm), o/down (residual), lm_head (norm): ptxas (sm_90a) with no spills', (ctx) => {
    for (const kern of kernels()) {
      const r = ptxasReport(kern.ir);
      if (typeof r === 'string') { ctx.skip(`no ptxas verdict: ${r}`); return; }
      console.log(`${kern.ir.name}: ${r.registers} registers, ${r.spillStores}/${r.spillLoads} spill stores/loads`);
      expect([r.spillStores, r.spillLoads], kern.ir.name).toEqual([0, 0]);
    }
  });
});
