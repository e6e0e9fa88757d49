// INT4 linear layer (AutoAWQ layout, W = (q − z)·s, group size g) on the tensor-core MMA node
// (k.mma, m16n8k16 f16 × f16 → f32): the linear op's path on devices with tensor cores for
// M = 1..MMA_MAX_ROWS. Rows are padded to 16 (rows past M are zeros, never stored), so a row's
// arithmetic never depends on the batch: results are batch-invariant.
//
// Numerics (per output [m, n]): activations are rounded to f16 on load (as tensor cores take them);
// B holds q − z, an integer in [−15, 15] and so exact in f16, built by the magic number (nibbles to
// bits 0–3 / 16–19, nibblePairF16, minus the (1024 + z) pair by sub2x16float: LOP3 + HSUB2 on CUDA).
// Per group of g rows, from +0,
//   a_grp = mma over k in steps of 16 of f16(x[m, k])·(q − z)[k, n]      (f32 accumulate)
//   acc   = fma(a_grp, s[grp, n], acc)                                     groups in order
// so the weights enter exactly and the scale once per group (as the GEMV's applyGroup does).
// Then the linear op's shared epilogue (linearCommon: bias, SiLU(gate)·up, residual, f32/f16 out).
//
// Workgroup: split × COL_WARPS (4) warps. Each column warp has TILES = 2 tiles of 16 rows × 8
// columns (with gateUp as many again for the up columns N + c, through their own accumulators):
// 16 rows × 64 columns per workgroup. Split-K inside the workgroup: the `split` warp sets take
// groups split_i, split_i + split, … (each its own sum, in order), then split set 0 adds the others'
// sums in order 1, 2, … through workgroup memory — fixed by K, g, the epilogue and the device
// (int4MmaSplit), never M, so rows stay batch-invariant; it gives N/16 · split warps (Llama-3-8B
// 4096² on CUDA, split 8: 2048, 15.5 per SM on 132 SMs).
// Fused ops (fusedLinear.ts) add an RMSNorm prologue, the embedding gather and RoPE + KV append
// (mmaFusion.ts); the norm's reduction and the split sums share one workgroup array (mmaCommon.ts).
// Per `steps` mma steps (int4MmaSteps: 64 of K where g and workgroup memory allow) each split set
// stages its 16·steps × 8 qweight words (per half) in workgroup memory between two barriers, one
// vec4<u32> load per invocation where N is a multiple of 32 (4 consecutive words of a row: a warp
// reads 16 whole rows of 32 bytes, one sector each), else `steps` word loads; then builds the B
// fragments from there (a lane's B column sits in one word: reading it from global memory
// directly costs 4 sectors per 16 useful bytes).
// Needs K a multiple of g (g ≥ 16) and N a multiple of 8 (AutoAWQ packs 8 columns per word).
import type { ArrayRef, Caps, Val } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { MMA_SCRATCH_WORDS } from '../emit/mma.js';
import type { Int4Dequant } from './int4Matmul.js';
import {
  capsKey, type Epilogue, epilogueBindings, epilogueRefs, epilogueTag, memoKernel, type WeightSource,
} from './linearCommon.js';
import { COL_WARPS, MMA_COLS, MMA_SET, mmaScratch, mmaStoreTiles, mmaSumScratch, mmaSumSets, TILES } from './mmaCommon.js';
import { type MmaFusion, mmaFusionBindings, mmaFusionParams, mmaFusionTag, mmaFusionUniforms, mmaNormScratch, mmaRopeAppend, mmaXSource } from './mmaFusion.js';

export { MMA_MAX_ROWS } from './mmaCommon.js';
/** Output columns per workgroup; its qweight words per row; invocations per split set. */
const COLS = MMA_COLS, WORDS = COLS / 8, SET = MMA_SET;
export const INT4_MMA_SPLITS: readonly number[] = [1, 2, 4, 8];

/**
 * The split-K for K and group size g: the largest of 4, 2, 1 dividing the group count — or 8 where
 * it divides, the device has tensor cores and 1024-invocation workgroups, and the epilogue is not
 * gate/up (its 4 tiles a warp would need 56 KB of workgroup memory for the sums): Llama-3-8B's
 * N = 4096 layers then launch 15.5 warps per SM instead of 7.8. A function of K, g, the epilogue and
 * the device, never of M.
 */
export function int4MmaSplit(K: number, g: number, e?: Epilogue, caps?: Caps): number {
  const wide = !!caps?.tensorCores && caps.maxInvocationsPerWorkgroup >= 8 * SET && !!e && !e.gateUp;
  return [...(wide ? [8] : []), 4, 2, 1].find((s) => (K / g) % s === 0)!;
}

/**
 * Mma steps (16 of K each) staged per barrier pair: the largest of 4, 2, 1 dividing g/16 whose
 * qweight tiles fit the device's workgroup memory beside `otherWords` (the scratch, and on devices
 * without tensor cores the emulation's fragment exchange). Only the staging changes with it, never
 * the arithmetic or its order: bits are the same for every value.
 */
export function int4MmaSteps(g: number, S: number, halves: number, otherWords: number, caps: Caps, maxSteps = 4): number {
  const fits = (T: number) => (halves * 16 * T * WORDS * S + otherWords + 64) * 4 <= caps.maxWorkgroupStorage;
  return [4, 2, 1].find((T) => T <= maxSteps && (g / 16) % T === 0 && fits(T)) ?? 1;
}

/** The group size when `src` is the AutoAWQ INT4 source this kernel reads, else undefined. */
export function int4MmaGroupSize(src: WeightSource): number | undefined {
  if (!src.group || !('qweight' in src.bindings && 'qzeros' in src.bindings && 'scales' in src.bindings)) return undefined;
  return src.group.size;
}

/** Why the MMA kernel cannot run these sizes, or undefined when it can. */
export function int4MmaUnfit(K: number, N: number, g: number): string | undefined {
  if (g % 16) return `group size ${g} is not a multiple of 16 (one mma step)`;
  if (K % g) return `K = ${K} is not a multiple of the group size ${g}`;
  if (N % 8) return `N = ${N} is not a multiple of 8 (one mma tile)`;
  return undefined;
}

export interface Int4MmaParams {
  groupSize: number;
  epilogue: Epilogue;
  /** Split-K warp sets (1, 2, 4 or 8); the group count K / g must be a multiple (int4MmaSplit). */
  split?: number;
  /** Launches folded in (mmaFusion.ts): embedding gather, RMSNorm prologue, RoPE + KV append. */
  fusion?: MmaFusion;
  /** Stage qweight with one vec4<u32> load per invocation (needs N a multiple of 32; int4MmaFor). */
  vec4?: boolean;
  /**
   * B fragments by the magic number (default: nibblePairF16, one f16 pair subtraction) or by
   * 'convert' (int → f32, − z, pack): the same f16 values, so the same bits (kept for that test).
   */
  dequant?: Int4Dequant;
  /** Mma steps staged per barrier pair (1, 2 or 4, dividing g/16); default int4MmaSteps. */
  steps?: number;
  caps?: Caps;
}

export function int4MmaKernel(p: Int4MmaParams) {
  const g = p.groupSize, e = p.epilogue, caps = p.caps ?? BASELINE_CAPS;
  const S = p.split ?? 1;
  const f = p.fusion ?? {};
  const ft = mmaFusionTag(f);
  const v4 = !!p.vec4, magic = (p.dequant ?? 'magic') === 'magic';
  if (!Number.isInteger(g) || g < 16 || g % 16) throw new Error(`int4Mma: group size ${g} is not a positive multiple of 16`);
  if (!INT4_MMA_SPLITS.includes(S)) throw new Error(`int4Mma: split ${S} is not one of ${INT4_MMA_SPLITS.join(', ')}`);
  if (f.rope && !caps.deviceFence) throw new Error('int4Mma: the RoPE epilogue needs caps.deviceFence (the last workgroup of a head finishes it)');
  const halves = e.gateUp ? 2 : 1;
  // A normed or gathered x at 1024 invocations (64 registers a thread): 2 steps, as nvcc's
  // unrolled 4 spill there (ptxas sm_90a: 152 B with vec4 staging; bench/notes/int4.md).
  const tight = SET * S >= 1024 && !!(f.norm || f.gather);
  const scratchWords = Math.max(0, mmaNormScratch(f), mmaSumScratch(TILES * halves, S));
  const T = p.steps ?? int4MmaSteps(g, S, halves, scratchWords + (caps.tensorCores ? 0 : MMA_SCRATCH_WORDS * SET * S), caps, tight ? 2 : 4);
  return memoKernel(`int4Mma/${g}/${S}/${v4 ? 'v4' : 'v1'}/${T}/${magic ? '' : 'cvt'}/${epilogueTag(e)}/${ft}/${capsKey(caps)}`, () => kernel({
    name: `int4Mma_g${g}_s${S}${v4 ? '_v4' : ''}${magic ? '' : '_cvt'}_${epilogueTag(e)}${ft ? `_${ft}` : ''}`,
    params: { groupSize: g, split: S, vec4: v4, steps: T, dequant: magic ? 'magic' : 'convert', ...e, ...mmaFusionParams(f) },
    caps,
    workgroupSize: SET * S,
    bindings: {
      // Pairs along k (one 8-byte load per A word; K is even).
      x: storage('f32', 'read', { shape: '[M, K]', vec: 2 }),
      qweight: storage('u32', 'read', { shape: '[K, Nw / 8]', ...(v4 ? { vec: 4 } : {}) }),
      qzeros: storage('u32', 'read', { shape: `[K / ${g}, Nw / 8]` }),
      scales: storage('u32', 'read', { shape: `[K / ${g}, Nw / 2]` }),
      ...epilogueBindings(e),
      ...mmaFusionBindings(f),
    },
    uniforms: { M: 'u32', K: 'u32', N: 'u32', Nw: 'u32', ...mmaFusionUniforms(f) },
    grid: `[ceil(N / ${COLS}), ceil(M / 16)]`,
    body(k, refs, uniforms) {
      const { M, K, N, Nw } = uniforms;
      const { qweight, qzeros, scales } = refs;
      const epi = epilogueRefs(k, refs);
      const lid = k.let('lid', k.localIndex);
      const lane = k.let('lane', lid.band(31)), warp = k.let('warp', lid.shr(5).band(COL_WARPS - 1));
      const set = k.let('set', lid.shr(5).div(COL_WARPS)), sl = k.let('sl', lid.band(SET - 1));
      const gq = k.let('gq', lane.shr(2)), t = k.let('t', lane.band(3));
      const row0 = k.let('row0', k.workgroupId.y.mul(16));
      const wgCol = k.let('wgCol', k.workgroupId.x.mul(COLS));
      const wordCols = k.let('wordCols', Nw.div(8));
      const scratch = mmaScratch(k, [mmaNormScratch(f), mmaSumScratch(TILES * halves, S)]);
      if (![1, 2, 4].includes(T) || (g / 16) % T) k.fail(`int4Mma: steps ${T} is not 1, 2 or 4 dividing g/16 = ${g / 16}`);
      const stageWords = 16 * T * WORDS;
      const sq = Array.from({ length: halves }, (_, h) => k.shared(`sq${h}`, 'u32', stageWords * S));
      const sqSet = k.let('sqSet', set.mul(stageWords));
      // Word w of staged row r sits at r·8 + (w ^ ((r >> 2) & 3)): the B reads (rows 2t + c for
      // t = 0..3, one word) hit 4 banks, and the staging stores (a warp: 16 rows × 2 quads, or 4
      // rows × 8 words) 32 (unswizzled, rows r and r + 4 share banks: 2- and 4-way conflicts).
      const swz = (r: Val<'u32'>) => r.shr(2).band(3);
      const sqAt = (r: Val<'u32'>, w: Val<'u32'>) => sqSet.add(r.mul(WORDS)).add(w.bxor(swz(r)));
      const wordsN = k.let('wordsN', N.div(8));
      /** Stages rows k0 .. k0 + 16·T of this set's columns (zero past N). */
      const stage = (k0: Val<'u32'>) => {
        if (v4) {
          // Invocation sl < 32·T loads words 4q..4q+3 (q = sl & 1) of row sl >> 1: whole quads, as N % 32 == 0.
          const qweight4 = qweight as unknown as ArrayRef<'vec4<u32>', false>;
          const body = () => {
            const vRow = k.let('vRow', sl.shr(1)), vWord = k.let('vWord', sl.band(1).mul(4));
            const vCol = k.let('vCol', wgCol.shr(3).add(vWord)), vOk = k.let('vOk', vCol.lt(wordsN));
            for (let h = 0; h < halves; h++) {
              const at = k.let(`vAt${h}`, k0.add(vRow).mul(wordCols.div(4)).add((h ? vCol.add(wordsN) : vCol).div(4)));
              const v = k.let(`vq${h}`, qweight4.at(k.select(vOk, at, k.u32(0))));
              for (let j = 0; j < 4; j++) sq[h]!.set(sqAt(vRow, vWord.add(j)), k.select(vOk, v.at(j) as Val<'u32'>, k.u32(0)));
            }
          };
          if (T === 4) body(); else k.if(sl.lt(32 * T), body);
          return;
        }
        // One word per invocation per 16 rows: word sl & 7 of rows 16i + (sl >> 3).
        const sWord = k.let('sWord', sl.band(WORDS - 1)), sCol = k.let('sCol', wgCol.shr(3).add(sWord));
        const sOk = k.let('sOk', sCol.lt(wordsN));
        for (let i = 0; i < T; i++) {
          const r = k.let(`sRow${i}`, sl.shr(3).add(16 * i));
          for (let h = 0; h < halves; h++) {
            const w = h ? sCol.add(wordsN) : sCol;
            sq[h]!.set(sqAt(r, sWord), k.select(sOk, qweight.at(k0.add(r).mul(wordCols).add(k.select(sOk, w, k.u32(0)))), k.u32(0)));
          }
        }
      };
      // Column offset j of a word sits in nibble (j >> 1) | ((j & 1) << 2) (AutoAWQ's order).
      const nibShift = k.let('nibShift', gq.shr(1).bor(gq.band(1).shl(2)).mul(4));
      const nib = (word: Val<'u32'>) => word.shr(nibShift).band(15);
      const fa = k.privateArray('fa', 'u32', 4);
      const fb = k.privateArray('fb', 'u32', 2);
      const tiles = Array.from({ length: TILES * halves }, (_, i) => ({
        j: i % TILES, h: Math.floor(i / TILES),
        grp: k.privateArray(`ga${i}`, 'f32', 4), acc: k.privateArray(`acc${i}`, 'f32', 4),
      }));
      for (const tl of tiles) for (let i = 0; i < 4; i++) tl.acc.set(i, 0);
      /** Tile j's first output column; this lane's B column is it + gq (word tileWord). */
      const tileCol = Array.from({ length: TILES }, (_, j) => k.let(`tc${j}`, wgCol.add(warp.mul(8 * TILES)).add(8 * j)));
      const tileOk = tileCol.map((c, j) => k.let(`tok${j}`, c.lt(N)));
      const tileWord = Array.from({ length: TILES }, (_, j) => k.let(`tw${j}`, warp.mul(TILES).add(j)));
      const rLo = k.let('rLo', row0.add(gq)), rHi = k.let('rHi', rLo.add(8));
      const okLo = k.let('okLo', rLo.lt(M)), okHi = k.let('okHi', rHi.lt(M));
      // x (gathered, normed where fused; zeros on padding rows), rounded to f16 pairs.
      const xSrc = mmaXSource(k, f, refs, { row0, rLo, rHi, okLo, okHi, M, K, wg: SET * S, lid }, uniforms, scratch);
      const xPair = (hi: boolean, kk: Val<'u32'>, tag: string) => k.pack2x16float(xSrc(hi, kk, tag));
      k.for('gi', k.u32(0), K.div(g * S), (gi) => {
        const grp = k.let('grp', gi.mul(S).add(set));
        // This lane's zero points (its B column of each tile) and scales (its C columns 2t, 2t + 1).
        const zs = tiles.map((tl, i) => {
          const c = k.let(`zc${i}`, k.select(tileOk[tl.j]!, tileCol[tl.j]!, k.u32(0)).add(tl.h ? N : k.u32(0)));
          // The zero point as the f16 pair (1024 + z, 1024 + z): what the B pairs subtract.
          const zn = k.let(`zn${i}`, nib(qzeros.at(grp.mul(wordCols).add(c.shr(3)))));
          const z = k.let(`z${i}`, magic ? k.nibblePairF16(zn.bor(zn.shl(16))) : zn);
          const sc = k.let(`sc${i}`, k.unpack2x16float(scales.at(grp.mul(Nw.div(2)).add(c.add(t.mul(2)).shr(1)))));
          return { z, sc };
        });
        for (const tl of tiles) for (let i = 0; i < 4; i++) tl.grp.set(i, 0);
        const kBase = k.let('kBase', grp.mul(g));
        k.for('kk', k.u32(0), k.u32(g), (kk) => {
          const kStage = k.let('kStage', kBase.add(kk));
          stage(kStage);
          k.barrier();
          k.for('st', k.u32(0), k.u32(T), (st) => {
            const rb = k.let('rb', st.mul(16));
            const ka = k.let('ka', kStage.add(rb).add(t.mul(2))), kb = k.let('kb', ka.add(8));
            fa.set(0, xPair(false, ka, '0'));
            fa.set(1, xPair(true, ka, '1'));
            fa.set(2, xPair(false, kb, '2'));
            fa.set(3, xPair(true, kb, '3'));
            tiles.forEach((tl, i) => {
              /**
               * (q − z) at staged rows r, r + 1 of this lane's B column as an f16 pair, by the magic
               * number: the two nibbles to bits 0–3 and 16–19 (what a PRMT/LOP3 does), 1024 + q as f16
               * (nibblePairF16), minus 1024 + z in one f16 pair subtraction — exact, q − z ∈ [−15, 15].
               */
              const word = (rr: Val<'u32'>) => sq[tl.h]!.at(sqAt(rr, tileWord[tl.j]!)).shr(nibShift);
              const bPair = (r: Val<'u32'>) => {
                if (magic) return k.sub2x16float(k.nibblePairF16(word(r).band(15).bor(word(r.add(1)).shl(16))), zs[i]!.z);
                const q = (rr: Val<'u32'>) => k.f32(word(rr).band(15)).sub(k.f32(zs[i]!.z));
                return k.pack2x16float(k.vec('vec2<f32>', q(r), q(r.add(1))));
              };
              const r0 = k.let(`br${i}`, rb.add(t.mul(2)));
              fb.set(0, bPair(r0));
              fb.set(1, bPair(r0.add(8)));
              k.mma(tl.grp, fa, fb, tl.grp);
            });
          });
          k.barrier(); // the tiles are read before the next ones are staged
        }, 16 * T);
        tiles.forEach((tl, i) => {
          const sc = zs[i]!.sc;
          for (let c = 0; c < 4; c++) tl.acc.set(c, k.call<'f32'>('fma', [tl.grp.at(c), c & 1 ? sc.y : sc.x, tl.acc.at(c)]));
        });
      });
      mmaSumSets(k, tiles.map((tl) => tl.acc), S, set, sl, scratch);
      mmaStoreTiles(k, e, epi, N, { rLo, rHi, okLo, okHi, t, mine: k.let('mine', set.eq(0)) }, tileCol.map((col, j) => ({
        col, ok: tileOk[j]!, gate: tiles[j]!.acc, ...(e.gateUp ? { up: tiles[TILES + j]!.acc } : {}),
      })));
      if (f.rope) mmaRopeAppend(k, f.rope, refs, { row0, M, K, wg: SET * S, lid, N, wgCol, cols: COLS }, uniforms);
    },
  }));
}

/** The kernel for a linear op's source, or undefined when the source is not INT4 AutoAWQ. */
export function int4MmaFor(src: WeightSource, K: number, N: number, e: Epilogue, caps: Caps, fusion?: MmaFusion) {
  const g = int4MmaGroupSize(src);
  return g === undefined ? undefined : int4MmaKernel({
    groupSize: g, split: int4MmaSplit(K, g, e, caps), epilogue: e, caps, vec4: N % 32 === 0, ...(fusion ? { fusion } : {}),
  });
}
