// The paged-attention op's configuration and the host-side tiling contract, apart from its kernels
// (pagedAttention.ts): the parameters and their validated defaults (tile rows, KV tile depth, the
// bank-conflict-free staging layout, the MMA path), the tile record's size, the split-KV chunk of
// a row (rowChunkSize: a function of the row's own position) and the sizes a launch takes.
// src/ops/attention.ts prepareAttention builds tiles and sizes from a batch with these.
import type { Caps } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { mmaExchangeWords } from './attentionMma.js';
import { type RowLayout, conflictFreeRows, rowOffset } from './sharedLayout.js';

/** The head sizes the issue names (and the tests sweep). */
export const HEAD_DIMS = [8, 16, 32, 64, 80, 96, 128] as const;
export const TILE_WORDS = 8;

export interface PagedAttentionParams {
  headDim: number;
  /** numHeads / numKvHeads, 1..8. */
  groupSize: number;
  /** KV cache element type; 'f16' travels packed in u32 words. Default 'f32'. */
  kvDtype?: 'f32' | 'f16';
  /** Tokens per cache block (default 16). */
  blockSize?: number;
  /** KV positions per split-KV chunk, a multiple of blockSize (default 512); the most a row's chunk may be. */
  chunkSize?: number;
  /**
   * Workgroups one sequence's single-token step should spread over (numKvHeads × its chunks), so a
   * lone long decode fills a GPU: 2 per multiprocessor. A row's chunk is then the largest of
   * chunkSize, chunkSize / 2, … (down to kvTile) that reaches it at the row's own context length
   * (rowChunkSize): a function of the row's position alone, never of the batch. 0 (default):
   * every chunk is chunkSize.
   */
  targetCtas?: number;
  /** Query tokens per workgroup (default: 16 / groupSize, fewer if workgroup memory is short). */
  tileTokens?: number;
  /**
   * KV positions staged per barrier step, a multiple of blockSize up to 64 (default: the deepest
   * of 64/32/16 that divides chunkSize and leaves room for the default rows). Each row still
   * folds its positions in one blockSize block at a time, so results do not depend on it.
   */
  kvTile?: number;
  /**
   * Read K/V with 16-byte loads (vec4<f32>, or vec4<u32> = 8 f16): needs headDim % 4 == 0 (f32)
   * or % 8 == 0 (f16). Default: whenever headDim allows. Results do not depend on it.
   */
  vecLoads?: boolean;
  /**
   * Double-buffer the K/V staging in registers (kvPipeline.ts): the next step's block-table lookups
   * and loads are issued before the current step's compute. Needs K and V in two tiles (splitKv);
   * default: whenever they are. Results do not depend on it.
   */
  prefetch?: boolean;
  /**
   * Scores and PV on the tensor-core MMA node (attentionMma.ts): rows padded to 16, Q and P rounded
   * to f16. Needs f16 KV, headDim % 16 == 0 and blocks of 16. Default: where the device has tensor
   * cores (caps.tensorCores) and the shape allows — per device, never per batch, so a row's bits do
   * not depend on what else runs.
   */
  mma?: boolean;
  workgroupSize?: number;
  caps?: Caps;
}

export interface AttentionConfig {
  headDim: number; groupSize: number; kvDtype: 'f32' | 'f16'; blockSize: number; chunkSize: number;
  tileTokens: number; rows: number; workgroupSize: number; caps: Caps;
  /** KV positions per barrier step (kvTile) and cache blocks in it (kvTile / blockSize). */
  kvTile: number; subBlocks: number; vecLoads: boolean;
  /** Workgroups a lone sequence should launch (0: fixed chunks); see PagedAttentionParams. */
  targetCtas: number;
  /**
   * Workgroup-memory layout of a staged K or V position (its words: f32, or f16 pairs kept packed
   * as in the cache), padded and skewed so that the staging stores, the score reads (lane =
   * position) and the PV reads (lane = head_dim element) are all free of bank conflicts.
   */
  kvLayout: RowLayout;
  /** K and V staged in two tiles by the same loads (workgroup memory allowing), else one tile, K then V. */
  splitKv: boolean;
  /** Next step's K/V loads issued into registers before this step's compute (kvPipeline.ts). */
  prefetch: boolean;
  /** Scores and PV by k.mma (attentionMma.ts); q then never goes through workgroup memory. */
  mma: boolean;
  /** Words between rows of the q tile and of the scores (odd: lanes walking a column hit every bank). */
  qStride: number; scoreStride: number;
  /**
   * Online softmax per warp, in registers: each half-warp takes one row, a lane per position of a
   * 16-position cache block, max and sum by subgroup shuffles (where the device has 32-wide
   * subgroups and blocks of 16); else one invocation per row. The row's running max and sum stay
   * in the lanes' registers across steps. Score rows are then 16 banks apart (stride ≡ 16 mod 32).
   */
  warpSoftmax: boolean;
}

/** Words per staged position: f32 elements, or f16 pairs. */
export const kvWords = (D: number, f16: boolean) => (f16 ? D / 2 : D);

const layoutMemo = new Map<string, RowLayout>();
/** The staging layout for kvTile positions (see AttentionConfig.kvLayout): searched once per shape. */
function kvRowLayout(D: number, f16: boolean, vw: number, KT: number, R: number, mma = false): RowLayout {
  const key = `${D}/${f16}/${vw}/${KT}/${R}/${mma}`;
  const known = layoutMemo.get(key);
  if (known) return known;
  const P = kvWords(D, f16), perPos = P / vw;
  const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);
  // Warps whose patterns differ: shifting a warp's first item by a whole row (perPos loads, KT
  // scores, D outputs) shifts every lane's address alike, so warps repeat with period n / gcd(n, 32).
  const warps = (items: number, period: number) => Math.min(Math.ceil(items / 32), period / gcd(period, 32));
  const lanes = (w0: number, items: number, at: (e: number) => number) => Array.from({ length: 32 }, (_, i) => (w0 + i < items ? at(w0 + i) : -1));
  const { stride, skew } = conflictFreeRows(P, function* (l) {
    // Staging stores: load e holds words [vw·(e % perPos), +vw) of position e / perPos; one store per word.
    for (let j = 0; j < warps(KT * perPos, perPos); j++) {
      for (let q = 0; q < vw; q++) yield lanes(32 * j, KT * perPos, (e) => Math.floor(e / perPos) * l.stride + rowOffset(l, (e % perPos) * vw + q));
    }
    if (mma) {
      // MMA fragments (lane = 4g + t; attentionMma.ts): K's B reads word ks + (P/8)·(t + 4j) of
      // position g (k-steps strided over head_dim); V's read word 4·tile + g/2 of positions 2t (+ 1).
      for (const ks of [0, P / 8 - 1]) {
        for (const j of [0, 1]) yield Array.from({ length: 32 }, (_, ln) => (ln >> 2) * l.stride + rowOffset(l, ks + (P / 8) * ((ln & 3) + 4 * j)));
      }
      for (let seg = 0; seg < P; seg += 32) {
        for (const dr of [0, 1]) yield Array.from({ length: 32 }, (_, ln) => (2 * (ln & 3) + dr) * l.stride + rowOffset(l, seg + (ln >> 3)));
      }
      return;
    }
    // Scores: invocation e takes position e % KT and walks its words (each word shifts all lanes alike).
    for (let j = 0; j < warps(R * KT, KT); j++) yield lanes(32 * j, R * KT, (e) => (e % KT) * l.stride);
    // PV: invocation e takes element e % D of one position.
    for (let j = 0; j < warps(R * D, D); j++) yield lanes(32 * j, R * D, (e) => rowOffset(l, f16 ? (e % D) >> 1 : e % D));
  });
  const layout = { stride, skew, words: P };
  layoutMemo.set(key, layout);
  return layout;
}

/** Validated parameters with defaults filled in. */
export function attentionConfig(p: PagedAttentionParams): AttentionConfig {
  const caps = p.caps ?? BASELINE_CAPS;
  const D = p.headDim, G = p.groupSize, kvDtype = p.kvDtype ?? 'f32';
  const BS = p.blockSize ?? 16, C = p.chunkSize ?? 512;
  if (kvDtype !== 'f32' && kvDtype !== 'f16') throw new Error(`pagedAttention: kvDtype '${kvDtype}' is not f32 or f16`);
  // Any head_dim works (HEAD_DIMS are the ones the tests sweep); f16 words hold element pairs.
  if (!Number.isInteger(D) || D < 1 || D > 256 || (kvDtype === 'f16' && D % 2)) {
    throw new Error(`pagedAttention: headDim ${D} must be an integer in 1..256${kvDtype === 'f16' ? ', even for f16 KV' : ''}`);
  }
  if (!Number.isInteger(G) || G < 1 || G > 8) throw new Error(`pagedAttention: groupSize ${G} is not an integer in 1..8`);
  if (!Number.isInteger(BS) || BS < 1 || BS > 64) throw new Error(`pagedAttention: blockSize ${BS} is not in 1..64`);
  if (!Number.isInteger(C) || C < BS || C % BS) throw new Error(`pagedAttention: chunkSize ${C} is not a positive multiple of blockSize ${BS}`);
  const targetCtas = p.targetCtas ?? 0;
  if (!Number.isInteger(targetCtas) || targetCtas < 0) throw new Error(`pagedAttention: targetCtas ${targetCtas} is not a non-negative integer`);
  const f16 = kvDtype === 'f16';
  const vecUnit = f16 ? 8 : 4;
  const vecLoads = p.vecLoads ?? D % vecUnit === 0;
  if (vecLoads && D % vecUnit) throw new Error(`pagedAttention: vecLoads needs headDim ${D} to be a multiple of ${vecUnit} for ${kvDtype} KV`);
  const vw = vecLoads ? 4 : 1;
  // Workgroup memory: q rows (R·(D+1)), one or two KV tiles (KT padded rows), scores (R·(KT+1)),
  // per row max and sum, and per row and cache block a scale and a range (3 words).
  const layouts = new Map<number, RowLayout>();
  const layoutFor = (KT: number) => {
    if (!layouts.has(KT)) layouts.set(KT, kvRowLayout(D, f16, vw, KT, 16));
    return layouts.get(KT)!;
  };
  const warpSoftmax = caps.subgroups && caps.subgroupSize === 32 && BS === 16;
  // Score row stride: odd for one invocation per row; 16 mod 32 for two half-warp rows at once.
  const scoreStride = (KT: number) => (warpSoftmax ? KT + 1 + ((16 - ((KT + 1) % 32)) + 32) % 32 : KT + 1);
  const mmaFits = f16 && D % 16 === 0 && BS === 16;
  const mma = p.mma ?? (!!caps.tensorCores && mmaFits);
  if (mma) {
    if (!mmaFits) throw new Error(`pagedAttention: the MMA path needs f16 KV, headDim a multiple of 16 and blocks of 16 (headDim ${D}, ${kvDtype} KV, blockSize ${BS})`);
    const tileTokens = p.tileTokens ?? Math.floor(16 / G), rows = tileTokens * G;
    if (!Number.isInteger(tileTokens) || tileTokens < 1 || rows > 16) throw new Error(`pagedAttention: tileTokens ${tileTokens} × group ${G} rows exceed the MMA's 16`);
    // Two KV tiles, the scores, per-row state, and the fragment scratch of targets without tensor cores.
    // Score rows ≡ 16 mod 32 words apart with ≥ 10 words of padding (see scoreRow in attentionPartial).
    const mmaScoreStride = (KT: number) => KT + 1 + ((16 - ((KT + 1) % 32)) + 32) % 32;
    const tile = (KT: number) => KT * kvRowLayout(D, f16, vw, KT, 16, true).stride;
    // q and the outputs pass through the K tile, or through an array of their own where it is smaller.
    const words = (KT: number, wg: number) => 2 * tile(KT) + (tile(KT) >= mmaExchangeWords(D) ? 0 : mmaExchangeWords(D)) + rows * mmaScoreStride(KT) + 2 * rows + 3 * rows * (KT / BS) + 6 * wg;
    const fitsWith = (KT: number, wg: number) => words(KT, wg) * 4 <= caps.maxWorkgroupStorage;
    const deepest = (wg: number) => p.kvTile ?? [64, 32, 16].find((n) => C % n === 0 && fitsWith(n, wg)) ?? BS;
    // Default: 8 warps (one 8-position score tile and two head_dim column tiles each; ptxas keeps
    // 128 registers for 2 workgroups per SM without spilling) unless that makes the KV step shallower.
    const wg = p.workgroupSize ?? (caps.maxInvocationsPerWorkgroup >= 256 && fitsWith(deepest(256), 256) && deepest(256) >= deepest(128) ? 256 : 128);
    if (!Number.isInteger(wg) || wg < 32 || wg % 32 || wg > caps.maxInvocationsPerWorkgroup) throw new Error(`pagedAttention: workgroupSize ${wg} is not whole warps (the MMA path)`);
    const fits = (KT: number) => fitsWith(KT, wg);
    const KT = deepest(wg);
    if (!Number.isInteger(KT) || KT < BS || KT % BS || KT > 64) throw new Error(`pagedAttention: kvTile ${KT} is not a multiple of blockSize ${BS} in ${BS}..64`);
    if (!fits(KT)) throw new Error(`pagedAttention: headDim ${D} with kvTile ${KT} does not fit ${caps.maxWorkgroupStorage} bytes of workgroup memory (the MMA path)`);
    return {
      headDim: D, groupSize: G, kvDtype, blockSize: BS, chunkSize: C, tileTokens, rows, workgroupSize: wg, caps, kvTile: KT, subBlocks: KT / BS, vecLoads,
      targetCtas, kvLayout: kvRowLayout(D, f16, vw, KT, 16, true), splitKv: true, prefetch: p.prefetch ?? true, mma: true, qStride: D + 1,
      scoreStride: mmaScoreStride(KT), warpSoftmax,
    };
  }
  const maxRowsFor = (KT: number, tiles = 1) =>
    Math.floor((Math.floor(caps.maxWorkgroupStorage / 4) - tiles * KT * layoutFor(KT).stride) / (D + 1 + scoreStride(KT) + 2 + 3 * (KT / BS)));
  // Default: about 16 rows (tokens × group). More rows share each KV tile among more queries
  // (prefill), but a decode tile has one token, so the rest would sit idle holding memory.
  const defaultTokens = (maxRows: number) => Math.max(1, Math.min(Math.floor(16 / G), Math.floor(maxRows / G)));
  // Default KV depth: as deep as keeps the rows the 1-block tile would have (and whole steps per chunk).
  const rowsAtOneBlock = defaultTokens(maxRowsFor(BS)) * G;
  const KT = p.kvTile ?? ([64, 32, 16].find((n) => n % BS === 0 && n >= BS && C % n === 0 && maxRowsFor(n) >= Math.max(G, p.tileTokens ? p.tileTokens * G : rowsAtOneBlock)) ?? BS);
  if (!Number.isInteger(KT) || KT < BS || KT % BS || KT > 64) throw new Error(`pagedAttention: kvTile ${KT} is not a multiple of blockSize ${BS} in ${BS}..64`);
  const maxRows = maxRowsFor(KT);
  if (maxRows < G) throw new Error(`pagedAttention: headDim ${D} with group ${G} and kvTile ${KT} does not fit ${caps.maxWorkgroupStorage} bytes of workgroup memory`);
  const tileTokens = p.tileTokens ?? defaultTokens(maxRows);
  if (!Number.isInteger(tileTokens) || tileTokens < 1 || tileTokens * G > maxRows) {
    throw new Error(`pagedAttention: tileTokens ${tileTokens} × group ${G} rows exceed the ${maxRows} rows workgroup memory holds (kvTile ${KT})`);
  }
  const rows = tileTokens * G;
  // About 8 accumulators per invocation at most: more made ptxas spill at head_dim 128.
  const wg = p.workgroupSize ?? Math.min(caps.maxInvocationsPerWorkgroup, rows * D >= 2048 ? 256 : rows * D >= 512 ? 128 : 64);
  // Two tiles (K and V loaded together, one barrier fewer per step) when they fit with these rows
  // and each invocation's share of a step stays within 4 vector loads per tile (registers).
  const splitKv = maxRowsFor(KT, 2) >= rows && Math.ceil((KT * kvWords(D, f16)) / vw / wg) <= 4;
  const prefetch = p.prefetch ?? splitKv;
  if (prefetch && !splitKv) throw new Error(`pagedAttention: prefetch needs K and V in two tiles, which headDim ${D} with ${rows} rows and kvTile ${KT} leaves no workgroup memory for`);
  return {
    headDim: D, groupSize: G, kvDtype, blockSize: BS, chunkSize: C, tileTokens, rows, workgroupSize: wg, caps, kvTile: KT, subBlocks: KT / BS, vecLoads,
    targetCtas, kvLayout: layoutFor(KT), splitKv, prefetch, mma: false, qStride: D + 1, scoreStride: scoreStride(KT), warpSoftmax: warpSoftmax && wg % 32 === 0,
  };
}

/**
 * Split-KV chunk of a row whose attended range ends (exclusive) at kvEnd: chunkSize halved while
 * numKvHeads × ⌈kvEnd / chunk⌉ stays under targetCtas and the half is still a multiple of kvTile.
 * Non-decreasing in kvEnd, and a function of the row's own position only (batch invariance).
 */
export function rowChunkSize(c: Pick<AttentionConfig, 'chunkSize' | 'kvTile' | 'targetCtas'>, kvEnd: number, numKvHeads: number): number {
  let C = c.chunkSize;
  while (c.targetCtas > 0 && numKvHeads * Math.ceil(kvEnd / C) < c.targetCtas && C % 2 === 0 && (C / 2) % c.kvTile === 0) C /= 2;
  return C;
}
/** The most chunks a single-token row at a position below maxPositions spans (grid and partial sizing). */
export function maxRowChunks(c: Pick<AttentionConfig, 'chunkSize' | 'kvTile' | 'targetCtas'>, maxPositions: number, numKvHeads: number): number {
  let most = 1;
  for (let n = 1; n <= maxPositions; n++) most = Math.max(most, Math.ceil(n / rowChunkSize(c, n, numKvHeads)));
  return most;
}

export type AttentionSizes = {
  numTokens: number; numSeqs: number; numKvHeads: number; numBlocks: number; maxBlocksPerSeq: number;
  numTiles: number; maxTileChunks: number; partRows: number;
  /** Sliding window in positions (0 = none). */
  window: number;
  /** Softmax scale, usually 1/√headDim. */
  scale: number;
};
