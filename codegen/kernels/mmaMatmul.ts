// Dense f16 matmul on the tensor-core MMA node (k.mma, m16n8k16): mmaMatmul, the plain building
// block (out[M, N] = f16(x)[M, K] · w[K, N], no epilogues), and below it denseMmaKernel, the dense
// f16 linear layer's MMA path with the epilogues and fusions. Rows are padded to 16 (rows past M
// are zeros and never stored), so a row's arithmetic — each output summed over k in the same order, whatever M — never
// depends on the batch. Activations are rounded to f16 on load (as tensor cores take them); w is
// f16 packed two columns per u32 word [K, N/2] (the dense f16 layout), re-paired along k for the
// B fragment (exact: f16 → f32 → f16).
//
// Workgroup: 4 warps, each one 16 × 8 output tile: 16 rows × 32 columns per workgroup; K in steps
// of 16 (K a multiple of 16, N of 8).
import { kernel, storage } from '../dsl/index.js';
import type { ArrayRef, Caps, Val } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, type Epilogue, epilogueBindings, epilogueRefs, epilogueTag, epilogueValue, memoKernel, storeOutput, type WeightSource } from './linearCommon.js';
import { COL_WARPS, MMA_COLS, MMA_SET, mmaScratch, mmaSumScratch, mmaSumSets, TILES } from './mmaCommon.js';
import { type MmaFusion, mmaFusionBindings, mmaFusionParams, mmaFusionTag, mmaFusionUniforms, mmaNormScratch, mmaRopeAppend, mmaXSource } from './mmaFusion.js';

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

// ---- the dense f16 linear layer on the MMA node -----------------------------------------------
//
// y = f16(x)·W (+ bias) (→ SiLU(gate)·up) (+ residual) for W f16 packed two columns per word
// [K, Nw/2] (the dense f16 source, 'rows' layout): the linear op's path on devices with tensor
// cores for M = 1..MMA_MAX_ROWS (lm_head, dense models), with int4Mma's geometry and fusions.
// Numerics per output [m, n]: K in chunks of 16; split set i (of S, int4Mma's warp sets) sums
// chunks i, i + S, … in order through the mma (f32 accumulate, from +0), then set 0 adds the sets'
// sums in order 1, 2, …; S is the largest of 4, 2, 1 dividing K/16 — a function of K alone, never
// M, so rows are batch-invariant. Then the shared epilogue (linearCommon).
// B fragments are read from global memory, one word (two columns) per k row per lane for both of
// the warp's tiles: tile 0 takes the low (even) and tile 1 the high (odd) column of each of the
// warp's 8 words, so a warp request is 4 rows × 32 bytes, one sector each; a lane then holds the 4
// adjacent output columns 4t..4t + 3 of its rows (tile 0, 1, 0, 1 in CUDA's C layout).

export const DENSE_MMA_SPLITS: readonly number[] = [1, 2, 4, 8];

/**
 * The split-K for K (a multiple of 16): the largest of 4, 2, 1 dividing K / 16 — or 8, as for
 * int4Mma (int4MmaSplit), on tensor-core devices with 1024-invocation workgroups, not for gate/up.
 * A function of K, the epilogue and the device, never of M.
 */
export function denseMmaSplit(K: number, e?: Epilogue, caps?: Caps): number {
  const wide = !!caps?.tensorCores && caps.maxInvocationsPerWorkgroup >= 8 * MMA_SET && !!e && !e.gateUp;
  return [...(wide ? [8] : []), 4, 2, 1].find((s) => (K / 16) % s === 0)!;
}

/** Why the dense MMA kernel cannot run these sizes, or undefined when it can. */
export function denseMmaUnfit(K: number, N: number): string | undefined {
  if (K % 16) return `K = ${K} is not a multiple of 16 (one mma step)`;
  if (N % 2) return `N = ${N} is not even (two f16 columns per word)`;
  return undefined;
}

export interface DenseMmaParams {
  epilogue: Epilogue;
  split?: number;
  fusion?: MmaFusion;
  caps?: Caps;
}

export function denseMmaKernel(p: DenseMmaParams) {
  const e = p.epilogue, caps = p.caps ?? BASELINE_CAPS, S = p.split ?? 1, f = p.fusion ?? {};
  const ft = mmaFusionTag(f);
  if (!DENSE_MMA_SPLITS.includes(S)) throw new Error(`denseMma: split ${S} is not one of ${DENSE_MMA_SPLITS.join(', ')}`);
  if (TILES !== 2) throw new Error('denseMma: the B loads pair tile 0 and 1 in one word (TILES = 2)');
  if (f.rope && !caps.deviceFence) throw new Error('denseMma: the RoPE epilogue needs caps.deviceFence (the last workgroup of a head finishes it)');
  return memoKernel(`denseMma/${S}/${epilogueTag(e)}/${ft}/${capsKey(caps)}`, () => kernel({
    name: `denseMma_f16_s${S}_${epilogueTag(e)}${ft ? `_${ft}` : ''}`,
    params: { weight: 'f16', split: S, ...e, ...mmaFusionParams(f) },
    caps,
    workgroupSize: MMA_SET * S,
    bindings: {
      x: storage('f32', 'read', { shape: '[M, K]', vec: 2 }),
      w: storage('u32', 'read', { shape: '[K, Nw / 2]' }),
      ...epilogueBindings(e),
      ...mmaFusionBindings(f),
    },
    uniforms: { M: 'u32', K: 'u32', N: 'u32', Nw: 'u32', ...mmaFusionUniforms(f) },
    grid: `[ceil(N / ${MMA_COLS}), ceil(M / 16)]`,
    body(k, refs, uniforms) {
      const { M, K, N, Nw } = uniforms;
      const w = refs.w as ArrayRef<'u32', false>;
      const epi = epilogueRefs(k, refs);
      const lid = k.let('lid', k.localIndex);
      const lane = k.let('lane', lid.band(31)), warp = k.let('warp', lid.shr(5).band(COL_WARPS - 1));
      const set = k.let('set', lid.shr(5).div(COL_WARPS)), sl = k.let('sl', lid.band(MMA_SET - 1));
      const gq = k.let('gq', lane.shr(2)), t = k.let('t', lane.band(3));
      const row0 = k.let('row0', k.workgroupId.y.mul(16));
      const wgCol = k.let('wgCol', k.workgroupId.x.mul(MMA_COLS));
      const halves = e.gateUp ? 2 : 1;
      const rLo = k.let('rLo', row0.add(gq)), rHi = k.let('rHi', rLo.add(8));
      const okLo = k.let('okLo', rLo.lt(M)), okHi = k.let('okHi', rHi.lt(M));
      const scratch = mmaScratch(k, [mmaNormScratch(f), mmaSumScratch(TILES * halves, S)]);
      const xSrc = mmaXSource(k, f, refs, { row0, rLo, rHi, okLo, okHi, M, K, wg: MMA_SET * S, lid }, uniforms, scratch);
      const xPair = (hi: boolean, kk: Val<'u32'>, tag: string) => k.pack2x16float(xSrc(hi, kk, tag));
      // The warp's 16 columns from wBase: word wBase/2 + gq holds tile 0's column gq (low half) and
      // tile 1's (high half). N is even, so a word is in range whole or not at all.
      const wBase = k.let('wBase', wgCol.add(warp.mul(8 * TILES)));
      const wordsPerRow = k.let('wpr', Nw.div(2));
      const bWord = k.let('bWord', wBase.shr(1).add(gq));
      const bOk = k.let('bOk', bWord.lt(N.shr(1)));
      const halvesWord = Array.from({ length: halves }, (_, h) => k.let(`bw${h}`, k.select(bOk, bWord, k.u32(0)).add(h ? N.shr(1) : k.u32(0))));
      const tiles = Array.from({ length: TILES * halves }, (_, i) => ({ j: i % TILES, h: Math.floor(i / TILES), acc: k.privateArray(`acc${i}`, 'f32', 4) }));
      for (const tl of tiles) for (let i = 0; i < 4; i++) tl.acc.set(i, 0);
      const fa = k.privateArray('fa', 'u32', 4), fb = k.privateArray('fb', 'u32', 2);
      k.for('ci', k.u32(0), K.div(16 * S), (ci) => {
        const k0 = k.let('k0', ci.mul(S).add(set).mul(16));
        const ka = k.let('ka', k0.add(t.mul(2))), kb = k.let('kb', ka.add(8));
        fa.set(0, xPair(false, ka, '0'));
        fa.set(1, xPair(true, ka, '1'));
        fa.set(2, xPair(false, kb, '2'));
        fa.set(3, xPair(true, kb, '3'));
        for (let h = 0; h < halves; h++) {
          /** Row kk's word of this lane (columns of tile 0, 1), as f32 (exact from f16); zeros past N. */
          const rowsOf = [ka, ka.add(1), kb, kb.add(1)].map((kk, r) => {
            const v = k.let(`wp${h}_${r}`, k.unpack2x16float(w.at(kk.mul(wordsPerRow).add(halvesWord[h]!))));
            return k.let(`wv${h}_${r}`, k.select(bOk, v, k.vec('vec2<f32>', k.f32(0), k.f32(0))));
          });
          tiles.filter((tl) => tl.h === h).forEach((tl) => {
            const pick = (v: Val<'vec2<f32>'>) => (tl.j ? v.y : v.x);
            fb.set(0, k.pack2x16float(k.vec('vec2<f32>', pick(rowsOf[0]!), pick(rowsOf[1]!))));
            fb.set(1, k.pack2x16float(k.vec('vec2<f32>', pick(rowsOf[2]!), pick(rowsOf[3]!))));
            k.mma(tl.acc, fa, fb, tl.acc);
          });
        }
      });
      mmaSumSets(k, tiles.map((tl) => tl.acc), S, set, sl, scratch);
      // Row g (C[0], C[1]) and g + 8 (C[2], C[3]): columns wBase + 4t + 0..3 = tile 0, 1, 0, 1 of
      // C[i] and C[i + 1]; stored as two pairs, each where it lies within N.
      const mine = k.let('mine', set.eq(0));
      const n0 = k.let('nOut', wBase.add(t.mul(4)));
      const gate = [tiles[0]!.acc, tiles[1]!.acc], up = e.gateUp ? [tiles[2]!.acc, tiles[3]!.acc] : undefined;
      for (const [r, ok, i] of [[rLo, okLo, 0], [rHi, okHi, 2]] as const) {
        for (let p = 0; p < 2; p++) {
          const n = k.let(`nOut${i}_${p}`, n0.add(2 * p));
          k.if(ok.and(n.lt(N)).and(mine), () => {
            const vals = [0, 1].map((j) => k.let(`v${i}_${p}_${j}`, epilogueValue(k, e, epi, N, r, n.add(j), gate[j]!.at(i + p), up ? up[j]!.at(i + p) : undefined)));
            storeOutput(k, e, epi, N, r, n, vals);
          });
        }
      }
      if (f.rope) mmaRopeAppend(k, f.rope, refs, { row0, M, K, wg: MMA_SET * S, lid, N, wgCol, cols: MMA_COLS }, uniforms);
    },
  }));
}

/** The kernel for a dense f16 source ('rows' layout), or undefined for any other source. */
export function denseMmaFor(src: WeightSource, K: number, e: Epilogue, caps: Caps, fusion?: MmaFusion) {
  if (!isDenseF16Rows(src)) return undefined;
  return denseMmaKernel({ epilogue: e, split: denseMmaSplit(K, e, caps), caps, ...(fusion ? { fusion } : {}) });
}

/** Whether `src` is the dense f16 source (one u32 word of two f16 per unit, weight binding `w`). */
export function isDenseF16Rows(src: WeightSource): boolean {
  return !src.group && src.cols === 2 && 'w' in src.bindings && src.bindings.w!.t === 'u32' && src.layout === 'rows';
}
