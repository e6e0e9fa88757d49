// The tensor-core MMA node (k.mma, m16n8k16 f16 × f16 → f32): two warps, each A (16 × 32) · B
// (32 × 8) + C as two chained mmas with fragments loaded in CUDA's layout, against a float64
// reference; on devices that emulate it (every software device) bit for bit against the
// accumulation order codegen/emit/mma.ts documents. The CUDA text goes through ptxas where nvcc exists.
import { describe, expect, it } from 'vitest';
import { f16BitsToF32, f32ToF16Bits } from '../../codegen/dsl/f16.js';
import { kernel, storage } from '../../codegen/dsl/index.js';
import { CUDA_CAPS } from '../../codegen/dsl/types.js';
import { emitCUDA } from '../../codegen/emit/cuda.js';
import { ptxasReport } from '../../src/profile.js';
import { forEachBackend } from '../backends.js';
import { mmaTile } from '../fixtures/mmaTile.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';

const STEPS = 2, K = 16 * STEPS, WARPS = 2;

interface Case { A: number[][][]; B: number[][][]; C: Float32Array; a: Uint32Array; bt: Uint32Array }
/** Random f16 A [warp][16][K] and B [warp][K][8] (as values and packed words), f32 C [warp][16][8]. */
function makeCase(r: () => number): Case {
  const half = () => f16BitsToF32(f32ToF16Bits(r() * 2 - 1));
  const A = Array.from({ length: WARPS }, () => Array.from({ length: 16 }, () => Array.from({ length: K }, half)));
  const B = Array.from({ length: WARPS }, () => Array.from({ length: K }, () => Array.from({ length: 8 }, half)));
  const pack = (lo: number, hi: number) => (f32ToF16Bits(lo) | (f32ToF16Bits(hi) << 16)) >>> 0;
  const a = new Uint32Array(WARPS * 16 * K / 2), bt = new Uint32Array(WARPS * 8 * K / 2);
  for (let w = 0; w < WARPS; w++) {
    for (let i = 0; i < 16; i++) for (let k = 0; k < K; k += 2) a[(w * 16 + i) * K / 2 + k / 2] = pack(A[w]![i]![k]!, A[w]![i]![k + 1]!);
    for (let n = 0; n < 8; n++) for (let k = 0; k < K; k += 2) bt[(w * 8 + n) * K / 2 + k / 2] = pack(B[w]![k]![n]!, B[w]![k + 1]![n]!);
  }
  return { A, B, C: randomF32(WARPS * 16 * 8, r), a, bt };
}
/** D = C + A·B in float64, or (exact) in the documented order: k ascending, each sum rounded to f32. */
function reference(c: Case, f32Order: boolean): Float64Array {
  const D = new Float64Array(WARPS * 16 * 8);
  for (let w = 0; w < WARPS; w++) {
    for (let i = 0; i < 16; i++) {
      for (let n = 0; n < 8; n++) {
        let acc = c.C[(w * 16 + i) * 8 + n]!;
        for (let k = 0; k < K; k++) {
          const p = c.A[w]![i]![k]! * c.B[w]![k]![n]!;
          acc = f32Order ? Math.fround(acc + p) : acc + p;
        }
        D[(w * 16 + i) * 8 + n] = acc;
      }
    }
  }
  return D;
}

forEachBackend('mma m16n8k16', (dev) => {
  it('two warps × two chained mmas: within 1e-6 of float64; bit-exact in the documented order where emulated', async () => {
    const c = makeCase(rng(freshSeed('mma tile')));
    const bufs = new Buffers(dev);
    try {
      const d = bufs.output('f32', WARPS * 16 * 8, 'd');
      dev.launch(mmaTile(dev.caps, STEPS), { a: bufs.input('u32', c.a, 'a'), bt: bufs.input('u32', c.bt, 'bt'), c: bufs.input('f32', c.C, 'c'), d }, {});
      const out = await bufs.read(d);
      expect(out.every(Number.isFinite)).toBe(true);
      expect(relErr(out, reference(c, false))).toBeLessThan(1e-6);
      // Software devices run the emulation (tensor cores sum in their own order: CUDA agrees within tolerance).
      if (dev.profile.software) expect(Array.from(out)).toEqual(Array.from(reference(c, true)));
    } finally { bufs.free(); }
  });
});

describe('mma on CUDA', () => {
  it('emits mma.sync m16n8k16 that ptxas (sm_90a) accepts with no spills', (ctx) => {
    const ir = mmaTile(CUDA_CAPS, STEPS).ir;
    expect(emitCUDA(ir)).toContain('mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32');
    const r = ptxasReport(ir);
    if (typeof r === 'string') { ctx.skip(`no ptxas verdict: ${r}`); return; }
    expect(r.registers).toBeGreaterThan(0);
    expect([r.spillStores, r.spillLoads]).toEqual([0, 0]);
  });
  it('the builder refuses operands of the wrong kind and workgroups of partial warps', () => {
    expect(() => mmaTileBad()).toThrow(/operand a 'fa' must be a private u32\[4\]/);
  });
});

function mmaTileBad() {
  return kernel({
    name: 'mmaBad', caps: CUDA_CAPS, workgroupSize: 32, grid: () => 1, bindings: { d: storage('f32', 'read_write') }, uniforms: {},
    body(k) {
      const fa = k.privateArray('fa', 'u32', 2), fb = k.privateArray('fb', 'u32', 2), acc = k.privateArray('acc', 'f32', 4);
      k.mma(acc, fa, fb, acc);
    },
  });
}
