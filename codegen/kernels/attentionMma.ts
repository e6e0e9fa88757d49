// Paged attention's score and PV phases on the tensor-core MMA node (AttentionConfig.mma; k.mma,
// m16n8k16 f16 × f16 → f32, codegen/emit/mma.ts), as FlashAttention-2 does them: the tile's rows
// (tokens × the group's query heads, padded to 16) are the MMA's 16 rows, so at decode the q heads
// of one KV head fill them (GQA 4: 4 of 16 live rows; more tokens per tile at prefill).
//
// Per step of KT staged positions (K and V already f16 pairs in workgroup memory):
//   S = Q·Kᵀ — Q rounded to f16 once into A fragments (registers, D/16 k-steps); warp w takes the
//     step's 8-position column tiles w, w + warps, …; S · scale·log2 e goes to the score rows, and
//     the online softmax (unchanged, per 16-position cache block in order) turns it into P.
//   O = O·α + P·V, one cache block (16 positions = one k-step) at a time in order: each row's C
//     scaled by the block's α (1 where the row has no position in the block), P rounded to f16 as
//     FlashAttention-2 does (zeros outside the row's range), V's B fragments paired along positions
//     from the staged rows. Warp w takes the head_dim column tiles w·per … (w + 1)·per − 1.
// Every output depends on its own row of A and the block order only — not on the tile's other rows
// — so rows stay bit-identical across batches and chunkings on one device. The result differs from
// the scalar path's (f16 Q and P, tensor-core sums), so a device takes this path for every row.
import { min } from '../dsl/index.js';
import type { ArrayRef, KernelBuilder, Val } from '../dsl/index.js';
import type { AttentionConfig } from './pagedAttentionConfig.js';
import { type RowLayout, conflictFreeRows, rowOffset } from './sharedLayout.js';

export interface MmaAttentionInputs {
  c: AttentionConfig;
  lid: Val<'u32'>;
  /** Global q element (row r of the tile, head_dim element d), 0 where ok is false. */
  qAt: (r: Val<'u32'>, ok: Val<'bool'>, d: Val<'u32'>) => Val<'f32'>;
  /** Whether tile row r holds a query (a token of the tile). */
  rowLive: (r: Val<'u32'>) => Val<'bool'>;
  kS: ArrayRef<'u32' | 'f32', true>;
  /** Where q is staged before the loop and the outputs after it: the K tile where it holds mmaExchangeWords. */
  xS: ArrayRef<'u32' | 'f32', true>;
  vS: ArrayRef<'u32' | 'f32', true>; sS: ArrayRef<'f32', true>;
  alphaS: ArrayRef<'f32', true>; rowA: ArrayRef<'u32', true>; rowB: ArrayRef<'u32', true>;
  scaleLog2: Val<'f32'>;
  /** Offset of word w (runtime) within a staged row. */
  wordAt: (w: Val<'u32'>) => Val<'u32'>;
  /** First word of score row r. */
  scoreRow: (r: Val<'u32'>) => Val<'u32'>;
}

/** Rows of q (D f32 words) in workgroup memory: staging stores (lane = word) and the A-fragment reads conflict-free. */
const qLayouts = new Map<number, RowLayout>();
function qLayout(D: number): RowLayout {
  const known = qLayouts.get(D);
  if (known) return known;
  const P8 = D / 16;
  const found = conflictFreeRows(D, function* (l) {
    for (let w0 = 0; w0 < D; w0 += 32) yield Array.from({ length: 32 }, (_, ln) => (w0 + ln < D ? rowOffset(l, w0 + ln) : -1));
    for (const ks of [0, P8 - 1]) {
      for (const j of [0, 1]) yield Array.from({ length: 32 }, (_, ln) => (ln >> 2) * l.stride + rowOffset(l, 2 * (ks + P8 * ((ln & 3) + 4 * j))));
    }
  });
  const layout = { stride: found.stride, skew: found.skew, words: D };
  qLayouts.set(D, layout);
  return layout;
}

/** Output rows ≡ 16 mod 32 words apart, ≥ 10 words of padding (rows g shifted by bits 1, 2 of g). */
const outStride = (D: number) => D + 10 + ((16 - ((D + 10) % 32)) + 32) % 32;
/** Words the q and output exchange takes (16 rows). */
export const mmaExchangeWords = (D: number) => 16 * Math.max(qLayout(D).stride, outStride(D));

export interface MmaAttention {
  scores(): void;
  pv(): void;
  /** Each output this lane holds: tile row, head_dim element, value (call after the KV loop). */
  outputs(write: (r: Val<'u32'>, d: Val<'u32'>, v: Val<'f32'>) => void): void;
}

/** Declares the fragments and accumulators, loads Q's A fragments, and returns the phase emitters. */
export function mmaAttention(k: KernelBuilder, p: MmaAttentionInputs): MmaAttention {
  const { c, lid } = p;
  const { headDim: D, rows: R, kvTile: KT, subBlocks: NB, kvLayout: L, workgroupSize: W, blockSize: BS } = c;
  const NW = W / 32;
  const lane = k.let('mLane', lid.band(31)), warp = k.let('mWarp', lid.shr(5));
  const g = k.let('mG', lane.shr(2)), t = k.let('mT', lane.band(3));
  const rLo = k.let('mRowLo', g), rHi = k.let('mRowHi', g.add(8));
  const okLo = k.let('mOkLo', p.rowLive(rLo)), okHi = k.let('mOkHi', p.rowLive(rHi));
  const pair = (a: Val<'f32'>, b: Val<'f32'>) => k.pack2x16float(k.vec('vec2<f32>', a, b));
  /** fn for C rows of half h (rows g + 8h) that exist in the tile (R may be under 16). */
  const inRows = (h: number, fn: () => void) => {
    if (R <= 8 * h) return;
    if (R >= 8 * h + 8) fn(); else k.if((h ? rHi : rLo).lt(R), fn);
  };
  // k-step ks takes head_dim pairs (words) ks + (P/8)·m, m = 0..7 — strided, not contiguous, so
  // that K's B reads (lane t: m = t and t + 4, of position g) hit 32 banks for any odd row stride.
  // Q's A fragments use the same pairs: a dot product's terms in a fixed (permuted) order.
  const P8 = D / 16;
  const kWord = (ks: number, j: number) => k.let(`mkw${ks}_${j}`, t.add(4 * j).mul(P8).add(ks));
  // q goes through xS (the K tile where large enough: free until the first step is staged): coalesced global loads, then
  // fragment reads from rows laid out conflict-free for both (qLayout).
  const QL = qLayout(D);
  const qWord = (w: Val<'u32'>) => (QL.skew ? w.add(w.shr(5).mul(QL.skew)) : w);
  k.for('mqe', lid, k.u32(R * D), (e) => {
    const r = k.let('mqr', e.div(D));
    p.xS.set(r.mul(QL.stride).add(qWord(e.rem(D))), k.bitcast('u32', p.qAt(r, p.rowLive(r), e.rem(D))) as Val<'u32' | 'f32'>);
  }, W);
  k.barrier();
  const qAt = (r: Val<'u32'>, ok: Val<'bool'>, d: Val<'u32'>) =>
    k.select(ok, k.bitcast('f32', p.xS.at(min(r, k.u32(R - 1)).mul(QL.stride).add(qWord(d)))), k.f32(0));
  // Q as A fragments, per k-step: [0] row g, pair m = t; [1] row g + 8; [2], [3] the same at m = t + 4.
  const qF = Array.from({ length: D / 16 }, (_, ks) => {
    const f = k.privateArray(`mq${ks}`, 'u32', 4);
    ([[rLo, okLo, 0], [rHi, okHi, 0], [rLo, okLo, 1], [rHi, okHi, 1]] as const).forEach(([r, ok, j], i) => {
      const d = k.let(`mqd${ks}_${i}`, kWord(ks, j).mul(2));
      f.set(i, pair(qAt(r, ok, d), qAt(r, ok, d.add(1))));
    });
    return f;
  });
  k.barrier(); // the K tile is read before the first step is staged into it
  /** Offsets of this lane's K words within a staged row, per k-step (the layout's skew folded in). */
  const kOff = Array.from({ length: D / 16 }, (_, ks) => [0, 1].map((j) => k.let(`mko${ks}_${j}`, p.wordAt(kWord(ks, j)))));
  const fa = k.privateArray('mPa', 'u32', 4), fb = k.privateArray('mB', 'u32', 2);
  const sAcc = k.privateArray('mS', 'f32', 4);
  const perD = Math.ceil(D / 8 / NW);
  const oAcc = Array.from({ length: perD }, (_, j) => {
    const a = k.privateArray(`mO${j}`, 'f32', 4);
    for (let i = 0; i < 4; i++) a.set(i, 0);
    return a;
  });
  /** This warp's j-th head_dim column tile (clamped: every warp runs the same mmas). */
  const dTile = (j: number) => min(warp.mul(perD).add(j), k.u32(D / 8 - 1));
  const dTileOk = (j: number) => warp.mul(perD).add(j).lt(D / 8);
  const NT = KT / 8, perS = Math.ceil(NT / NW);
  const halfOf = (word: Val<'u32'>, hi: Val<'bool'>) => {
    const h = k.let('mh', k.unpack2x16float(word));
    return k.select(hi, h.y, h.x);
  };
  return {
    scores() {
      for (let j = 0; j < perS; j++) {
        const nt = k.let(`mnt${j}`, warp.add(j * NW));
        const base = k.let(`mkb${j}`, min(nt, k.u32(NT - 1)).mul(8).add(g).mul(L.stride));
        for (let i = 0; i < 4; i++) sAcc.set(i, 0);
        for (let ks = 0; ks < D / 16; ks++) {
          // B[kk][n] = K[position n][pair kk / 2 of the k-step]: words of the lane's position g.
          fb.set(0, p.kS.at(base.add(kOff[ks]![0]!)) as Val<'u32'>);
          fb.set(1, p.kS.at(base.add(kOff[ks]![1]!)) as Val<'u32'>);
          k.mma(sAcc, qF[ks]!, fb, sAcc);
        }
        k.if(nt.lt(NT), () => {
          for (let i = 0; i < 4; i++) {
            const r = i >> 1 ? rHi : rLo;
            inRows(i >> 1, () => p.sS.set(p.scoreRow(r).add(nt.mul(8)).add(t.mul(2)).add(i & 1), sAcc.at(i).mul(p.scaleLog2)));
          }
        });
      }
    },
    pv() {
      const vWord = Array.from({ length: perD }, (_, j) => k.let(`mvw${j}`, p.wordAt(dTile(j).mul(4).add(g.shr(1)))));
      const vHi = k.let('mvHi', g.band(1).eq(1));
      for (let nb = 0; nb < NB; nb++) {
        // Per row: the block's positions [from, to) and rescale (1 where the row has none).
        const rowState = (r: Val<'u32'>, ok: Val<'bool'>, tag: string) => {
          const slot = k.let(`ms${tag}${nb}`, min(r, k.u32(R - 1)).add(nb * R));
          const from = k.let(`mf${tag}${nb}`, k.select(ok, p.rowA.at(slot), k.u32(0)));
          const to = k.let(`mt${tag}${nb}`, k.select(ok, p.rowB.at(slot), k.u32(0)));
          const alpha = k.let(`ma${tag}${nb}`, k.select(from.lt(to), p.alphaS.at(slot), k.f32(1)));
          const sBase = k.let(`msb${tag}${nb}`, p.scoreRow(min(r, k.u32(R - 1))).add(nb * BS));
          const pAt = (pp: Val<'u32'>) => k.select(pp.ge(from).and(pp.lt(to)), p.sS.at(sBase.add(pp)), k.f32(0));
          return { alpha, pAt };
        };
        const lo = rowState(rLo, okLo, 'Lo'), hi = rowState(rHi, okHi, 'Hi');
        const c0 = k.let(`mc${nb}`, t.mul(2)), c8 = k.let(`mc8${nb}`, c0.add(8));
        fa.set(0, pair(lo.pAt(c0), lo.pAt(c0.add(1))));
        fa.set(1, pair(hi.pAt(c0), hi.pAt(c0.add(1))));
        fa.set(2, pair(lo.pAt(c8), lo.pAt(c8.add(1))));
        fa.set(3, pair(hi.pAt(c8), hi.pAt(c8.add(1))));
        // B[kk][n] = V[position kk][d n]: positions 2t, 2t + 1 (and + 8) of the lane's column g.
        const vRow = (pp: Val<'u32'>) => k.let('mvr', pp.add(nb * BS).mul(L.stride));
        const r0 = vRow(c0), r1 = vRow(c0.add(1)), r8 = vRow(c8), r9 = vRow(c8.add(1));
        oAcc.forEach((acc, j) => {
          const v = (row: Val<'u32'>) => halfOf(p.vS.at(row.add(vWord[j]!)) as Val<'u32'>, vHi);
          fb.set(0, pair(v(r0), v(r1)));
          fb.set(1, pair(v(r8), v(r9)));
          for (let i = 0; i < 4; i++) acc.set(i, acc.at(i).mul(i >> 1 ? hi.alpha : lo.alpha));
          k.mma(acc, fa, fb, acc);
        });
      }
    },
    outputs(write) {
      // Through xS (free after the last step's barrier), so that the stores to global
      // memory are row-contiguous as on the scalar path: C rows g on banks {0, 1, 8, 9, …} apart.
      const OS = outStride(D);
      const oRow = (r: Val<'u32'>) => r.mul(OS).add(r.shr(1).band(1)).add(r.shr(2).band(1).mul(8));
      oAcc.forEach((acc, j) => {
        k.if(dTileOk(j), () => {
          for (let i = 0; i < 4; i++) {
            inRows(i >> 1, () => {
              const d = k.let(`mod${j}_${i}`, dTile(j).mul(8).add(t.mul(2)).add(i & 1));
              p.xS.set(oRow(i >> 1 ? rHi : rLo).add(d), k.bitcast('u32', acc.at(i)) as Val<'u32' | 'f32'>);
            });
          }
        });
      });
      k.barrier();
      for (let j = 0; j < Math.ceil((R * D) / W); j++) {
        const e = k.let(`moe${j}`, lid.add(j * W));
        const body = () => {
          const r = k.let('mor', e.div(D)), d = k.let('mocol', e.rem(D));
          write(r, d, k.bitcast('f32', p.xS.at(oRow(r).add(d))));
        };
        if ((j + 1) * W <= R * D) body(); else k.if(e.lt(R * D), body);
      }
    },
  };
}
