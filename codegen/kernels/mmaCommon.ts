// What the tensor-core MMA linear kernels (int4Mma.ts, and the dense f16 one in mmaMatmul.ts)
// share after their main loop: the in-workgroup split-K sum and the epilogue store from CUDA's C
// fragment layout. Both kernels use one geometry: COL_WARPS warps × TILES tiles of 16 rows × 8
// columns (with gateUp as many again for the up columns), split sets of them walking K.
import type { ArrayRef, KernelBuilder, Val } from '../dsl/index.js';
import { type Epilogue, type EpilogueRefs, epilogueValue, storeOutput } from './linearCommon.js';

/** The MMA path takes every M from 1 to this on devices with tensor cores (as Marlin pads to 16). */
export const MMA_MAX_ROWS = 64;
export const COL_WARPS = 4;
export const TILES = 2;
/** Output columns per workgroup; invocations per split set. */
export const MMA_COLS = 8 * TILES * COL_WARPS, MMA_SET = 32 * COL_WARPS;

/** Workgroup words mmaSumSets needs for `tiles` accumulators of 4 and split S. */
export function mmaSumScratch(tiles: number, S: number): number {
  return (S - 1) * 4 * tiles * MMA_SET;
}

/**
 * One workgroup scratch for the phases that need one in turn (the norm prologue's reduction,
 * then the split-K sum): the larger of their sizes, or undefined when neither needs any.
 */
export function mmaScratch(k: KernelBuilder, words: number[]): ArrayRef<'f32', true> | undefined {
  const n = Math.max(0, ...words);
  return n ? k.shared('red', 'f32', n) : undefined;
}

/**
 * Split sets 1.. hand their accumulators to set 0 (lane-contiguous: conflict-free), which adds
 * them in order 1, 2, … — an order fixed by the split alone, never by M.
 */
export function mmaSumSets(k: KernelBuilder, accs: ArrayRef<'f32', true>[], S: number, set: Val<'u32'>, sl: Val<'u32'>,
  red: ArrayRef<'f32', true> | undefined): void {
  if (S <= 1) return;
  const per = 4 * accs.length;
  if (!red) return k.fail('mmaSumSets: no scratch (mmaScratch with mmaSumScratch words)');
  const at = (s: Val<'u32'> | number, i: number, c: number) => (typeof s === 'number' ? k.u32(s) : s).sub(1).mul(per * MMA_SET).add((i * 4 + c) * MMA_SET).add(sl);
  k.if(set.gt(0), () => {
    accs.forEach((acc, i) => { for (let c = 0; c < 4; c++) red.set(at(set, i, c), acc.at(c)); });
  });
  k.barrier();
  k.if(set.eq(0), () => {
    for (let s2 = 1; s2 < S; s2++) {
      accs.forEach((acc, i) => { for (let c = 0; c < 4; c++) acc.set(c, acc.at(c).add(red.at(at(s2, i, c)))); });
    }
  });
}

export interface MmaStoreRows {
  rLo: Val<'u32'>;
  rHi: Val<'u32'>;
  okLo: Val<'bool'>;
  okHi: Val<'bool'>;
  /** The lane's thread in its group (lane & 3): C columns 2t, 2t + 1. */
  t: Val<'u32'>;
  /** Whether this invocation stores (split set 0). */
  mine: Val<'bool'>;
}

/**
 * The epilogue on each tile's finished sums and the store. C layout: [0], [1] = row g, columns
 * 2t, 2t + 1; [2], [3] = row g + 8. `tiles[j].up`: the matching up tile with gateUp.
 */
export function mmaStoreTiles(k: KernelBuilder, e: Epilogue, epi: EpilogueRefs, N: Val<'u32'>, rows: MmaStoreRows,
  tiles: { col: Val<'u32'>; ok: Val<'bool'>; gate: ArrayRef<'f32', true>; up?: ArrayRef<'f32', true> }[]): void {
  const { rLo, rHi, okLo, okHi, t, mine } = rows;
  tiles.forEach(({ col, ok: colOk, gate, up }, j) => {
    const n = k.let(`nOut${j}`, col.add(t.mul(2)));
    for (const [r, ok, i] of [[rLo, okLo, 0], [rHi, okHi, 2]] as const) {
      k.if(ok.and(colOk).and(mine), () => {
        const vals = [i, i + 1].map((c) => k.let(`v${j}_${c}`, epilogueValue(k, e, epi, N, r, n.add(c - i), gate.at(c), up?.at(c))));
        storeOutput(k, e, epi, N, r, n, vals);
      });
    }
  });
}
