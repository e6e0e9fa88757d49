// The MMA GEMM building block (codegen/kernels/mmaMatmul.ts): f16(x) · w through k.mma with rows
// padded to 16, against a float64 reference of the f16-rounded inputs, and a row's bits the same
// whatever M (the padding never enters another row).
import { describe, expect, it } from 'vitest';
import { f16BitsToF32, f32ToF16Bits } from '../../codegen/dsl/f16.js';
import { CUDA_CAPS } from '../../codegen/dsl/types.js';
import { emitCUDA } from '../../codegen/emit/cuda.js';
import { mmaMatmul } from '../../codegen/kernels/mmaMatmul.js';
import { ptxasReport } from '../../src/profile.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';

const K = 48, N = 40;
const toF16 = (v: number) => f16BitsToF32(f32ToF16Bits(v));

forEachBackend('mma matmul', (dev) => {
  it(`M = 1, 5, 17 (rows padded to 16), K = ${K}, N = ${N}: within 1e-5 of float64; row bits independent of M`, async () => {
    const r = rng(freshSeed('mma matmul'));
    const Mmax = 17;
    const x = randomF32(Mmax * K, r), wv = randomF32(K * N, r, -0.5, 0.5);
    const wWords = new Uint32Array((K * N) / 2);
    for (let i = 0; i < wWords.length; i++) wWords[i] = (f32ToF16Bits(wv[2 * i]!) | (f32ToF16Bits(wv[2 * i + 1]!) << 16)) >>> 0;
    const bufs = new Buffers(dev);
    try {
      const xb = bufs.input('f32', x, 'x'), wb = bufs.input('u32', wWords, 'w');
      const out = bufs.output('f32', Mmax * N, 'out');
      const k = mmaMatmul({ caps: dev.caps });
      const results = new Map<number, Float32Array>();
      for (const M of [1, 5, 17]) {
        bufs.poison(out);
        dev.launch(k, { x: xb, w: wb, out }, { M, K, N });
        const got = (await bufs.read(out)).slice(0, M * N);
        const ref = new Float64Array(M * N);
        for (let m = 0; m < M; m++) {
          for (let n = 0; n < N; n++) {
            let s = 0;
            for (let kk = 0; kk < K; kk++) s += toF16(x[m * K + kk]!) * toF16(wv[kk * N + n]!);
            ref[m * N + n] = s;
          }
        }
        expect(got.every(Number.isFinite), `M = ${M}: every output written`).toBe(true);
        expect(relErr(got, ref), `M = ${M}`).toBeLessThan(1e-5);
        results.set(M, got);
      }
      const rowsOf = (M: number, rows: number) => new Uint32Array(results.get(M)!.slice(0, rows * N).buffer);
      expect(rowsOf(17, 5)).toEqual(rowsOf(5, 5));
      expect(rowsOf(5, 1)).toEqual(rowsOf(1, 1));
    } finally { bufs.free(); }
  });
});

describe('mma matmul on CUDA', () => {
  it('one mma.sync per 16 of K, and ptxas (sm_90a) takes it with no spills', (ctx) => {
    const ir = mmaMatmul({ caps: CUDA_CAPS }).ir;
    expect(emitCUDA(ir).match(/mma\.sync\.aligned\.m16n8k16/g)).toHaveLength(1);
    const r = ptxasReport(ir);
    if (typeof r === 'string') { ctx.skip(`no ptxas verdict: ${r}`); return; }
    expect([r.spillStores, r.spillLoads]).toEqual([0, 0]);
  });
});
