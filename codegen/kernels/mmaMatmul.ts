// out[M, N] = f16(x)[M, K] · w[K, N] through the tensor-core MMA node (k.mma, m16n8k16): the
// building block of an MMA GEMM path. Rows are padded to 16 (rows past M are zeros and never
// stored), so a row's arithmetic — each output summed over k in the same order, whatever M — never
// depends on the batch. Activations are rounded to f16 on load (as tensor cores take them); w is
// f16 packed two columns per u32 word [K, N/2] (the dense f16 layout), re-paired along k for the
// B fragment (exact: f16 → f32 → f16).
//
// Workgroup: 4 warps, each one 16 × 8 output tile: 16 rows × 32 columns per workgroup; K in steps
// of 16 (K a multiple of 16, N of 8).
import { kernel, storage } from '../dsl/index.js';
import type { Caps, Val } from '../dsl/index.js';

export interface MmaMatmulParams { caps?: Caps }

const WARPS = 4;

export function mmaMatmul(p: MmaMatmulParams = {}) {
  return kernel({
    name: 'mmaMatmul',
    params: {},
    caps: p.caps,
    workgroupSize: 32 * WARPS,
    bindings: {
      x: storage('f32', 'read', { shape: '[M, K]' }),
      w: storage('u32', 'read', { shape: '[K, N / 2]' }),
      out: storage('f32', 'read_write', { shape: '[M, N]' }),
    },
    uniforms: { M: 'u32', K: 'u32', N: 'u32' },
    grid: `[ceil(N / ${8 * WARPS}), ceil(M / 16)]`,
    body(k, { x, w, out }, { M, K, N }) {
      const lid = k.let('lid', k.localIndex);
      const lane = k.let('lane', lid.band(31));
      const g = k.let('g', lane.shr(2)), t = k.let('t', lane.band(3));
      const row0 = k.let('row0', k.workgroupId.y.mul(16));
      const col = k.let('col', k.workgroupId.x.mul(8 * WARPS).add(lid.shr(5).mul(8)).add(g)); // this lane's B column
      const colOk = k.let('colOk', col.lt(N));
      const fa = k.privateArray('fa', 'u32', 4), fb = k.privateArray('fb', 'u32', 2), acc = k.privateArray('acc', 'f32', 4);
      for (let i = 0; i < 4; i++) acc.set(i, 0);
      /** x[r, kk] and x[r, kk + 1] as an f16 pair (zeros past M: the padding rows). */
      const xPair = (r: Val<'u32'>, kk: Val<'u32'>, tag: string) => {
        const ok = k.let(`xo${tag}`, r.lt(M));
        const at = k.let(`xa${tag}`, k.select(ok, r, k.u32(0)).mul(K).add(kk));
        const lo = k.select(ok, x.at(at), k.f32(0)), hi = k.select(ok, x.at(at.add(1)), k.f32(0));
        return k.pack2x16float(k.vec('vec2<f32>', lo, hi));
      };
      /** w[kk, col] and w[kk + 1, col] as an f16 pair (zeros past N). */
      const wPair = (kk: Val<'u32'>, tag: string) => {
        const c = k.let(`wc${tag}`, k.select(colOk, col, k.u32(0)));
        const word = (kr: Val<'u32'>) => k.unpack2x16float(w.at(kr.mul(N.div(2)).add(c.shr(1))));
        const pick = (v: Val<'vec2<f32>'>) => k.select(c.band(1).eq(1), v.y, v.x);
        const lo = k.let(`wl${tag}`, pick(word(kk))), hi = k.let(`wh${tag}`, pick(word(kk.add(1))));
        return k.pack2x16float(k.vec('vec2<f32>', k.select(colOk, lo, k.f32(0)), k.select(colOk, hi, k.f32(0))));
      };
      k.for('k0', k.u32(0), K, (k0) => {
        const ka = k.let('ka', k0.add(t.mul(2))), kb = k.let('kb', ka.add(8));
        const rLo = k.let('rLo', row0.add(g)), rHi = k.let('rHi', rLo.add(8));
        fa.set(0, xPair(rLo, ka, '0'));
        fa.set(1, xPair(rHi, ka, '1'));
        fa.set(2, xPair(rLo, kb, '2'));
        fa.set(3, xPair(rHi, kb, '3'));
        fb.set(0, wPair(ka, '0'));
        fb.set(1, wPair(kb, '1'));
        k.mma(acc, fa, fb, acc);
      }, 16);
      // The warp's 16 × 8 tile, in CUDA's C layout: rows g and g + 8, columns 2t and 2t + 1.
      const col0 = k.let('col0', k.workgroupId.x.mul(8 * WARPS).add(lid.shr(5).mul(8)));
      for (let i = 0; i < 4; i++) {
        const r = k.let(`or${i}`, row0.add(g).add(8 * (i >> 1)));
        const c = k.let(`oc${i}`, col0.add(t.mul(2)).add(i & 1));
        k.if(r.lt(M).and(c.lt(N)), () => out.set(r.mul(N).add(c), acc.at(i)));
      }
    },
  });
}
