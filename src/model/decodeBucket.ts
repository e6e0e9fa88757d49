// Fixed-shape decode steps. A decode step of n single-token sequences is padded to a bucket of B
// rows (1, 2, 4, 8, …, the largest allowed) and its attention metadata laid out so that every
// launch parameter — grids, uniforms, buffer sizes — follows from B and the model alone, never
// from context lengths or n. The launch sequence of a bucket is then the same step after step, so
// a device with graph capture (CUDA) records it once and replays it; what changes per step (token
// ids, positions, slots, block tables, tiles) lives in device buffers written before each step.
//
// Padding rows: token id 0 at position 0, KV slot −1 (kvAppend skips it, so the cache is never
// written), a block-table row of zeros and a one-token, one-chunk tile: the row attends to
// position 0 of block 0 — a read of some sequence's (or never-written, zeroed) KV, finite either
// way — and its output is never returned. Reading a block in use is harmless, so no block is
// reserved. Every row's arithmetic depends only on its own data (batch invariance), so the real
// rows are bit-identical to the unpadded pass.
//
// Attention: a tile's chunk count depends on its context length, so the grid's chunk dimension is
// set to the most chunks any decode token can have (maxRowChunks); workgroups
// past a tile's own chunk count exit at once. Each tile gets a fixed region of the partials
// (tile · numHeads · maxChunks rows), so partRows is a constant upper bound too.
import { TILE_WORDS, maxRowChunks } from '../../codegen/kernels/pagedAttentionConfig.js';
import type { AttentionConfig, AttentionSizes } from '../../codegen/kernels/pagedAttentionConfig.js';
import type { PreparedAttention } from '../ops/attention.js';

/** Bucket sizes for decode steps of at most `maxRows` sequences: powers of two, then maxRows. */
export function decodeBuckets(maxRows: number): number[] {
  if (!Number.isInteger(maxRows) || maxRows < 1) throw new Error(`decode buckets: maxRows = ${maxRows} must be a positive integer`);
  const out: number[] = [];
  for (let b = 1; b < maxRows; b *= 2) out.push(b);
  out.push(maxRows);
  return out;
}

/** The smallest bucket holding n sequences. */
export function pickBucket(n: number, buckets: readonly number[]): number {
  if (!Number.isInteger(n) || n < 1) throw new Error(`decode step: ${n} sequences; need at least one`);
  const b = buckets.find((x) => x >= n);
  if (b === undefined) throw new Error(`decode step: ${n} sequences exceed the largest bucket (${buckets[buckets.length - 1]})`);
  return b;
}

/** The most split-KV chunks one decode token can span in a context of maxPositions (chunk lengths per rowChunkSize). */
export function maxDecodeChunks(maxPositions: number, chunking: Pick<AttentionConfig, 'chunkSize' | 'kvTile' | 'targetCtas'>, numKvHeads: number): number {
  return maxRowChunks(chunking, maxPositions, numKvHeads);
}

export interface DecodeGeometry {
  numKvHeads: number;
  /** Query heads (numKvHeads · groupSize). */
  numHeads: number;
  numBlocks: number;
  maxBlocksPerSeq: number;
  /** maxDecodeChunks(maxPositions, attention config, numKvHeads). */
  maxChunks: number;
  window: number;
  scale: number;
}

/** Attention sizes of a decode bucket: functions of B and the geometry only. */
export function decodeAttentionSizes(B: number, g: DecodeGeometry): AttentionSizes {
  return {
    numTokens: B, numSeqs: B, numKvHeads: g.numKvHeads, numBlocks: g.numBlocks, maxBlocksPerSeq: g.maxBlocksPerSeq,
    numTiles: B, maxTileChunks: g.maxChunks, partRows: g.maxChunks > 1 ? decodePartRows(B, g) : 0,
    window: g.window, scale: g.scale,
  };
}

/** Rows of attention partials a bucket of B may use (each tile owns numHeads · maxChunks). */
export function decodePartRows(B: number, g: Pick<DecodeGeometry, 'numHeads' | 'maxChunks'>): number {
  return B * g.numHeads * g.maxChunks;
}

/**
 * Lay out the metadata `prepareAttention` built for n single-token sequences (rows 0..n−1, one
 * tile each) as a bucket of B: real tiles keep their words except the partials base, which
 * becomes the tile's fixed region; padding tiles and block-table rows are appended.
 */
export function padDecodeMetadata(prep: PreparedAttention, B: number, g: DecodeGeometry): { tiles: Uint32Array; blockTables: Uint32Array } {
  const n = prep.sizes.numSeqs;
  if (n > B) throw new Error(`decode step: ${n} sequences do not fit a bucket of ${B}`);
  if (prep.sizes.numTiles !== n || prep.sizes.numTokens !== n) {
    throw new Error(`decode step: expected one token and one tile per sequence, got ${prep.sizes.numTokens} tokens and ${prep.sizes.numTiles} tiles for ${n} sequences`);
  }
  const tiles = new Uint32Array(B * TILE_WORDS);
  const region = g.numHeads * g.maxChunks;
  for (let i = 0; i < B; i++) {
    const w = i * TILE_WORDS;
    if (i < n) {
      tiles.set(prep.tiles.subarray(w, w + TILE_WORDS), w);
      const chunks = tiles[w + 5]!;
      if (tiles[w]! !== i || tiles[w + 1]! !== i || tiles[w + 2]! !== 1) throw new Error(`decode step: tile ${i} is not sequence ${i}'s single token`);
      if (chunks > g.maxChunks) throw new Error(`decode step: sequence ${i} spans ${chunks} KV chunks, more than the ${g.maxChunks} the bucket is sized for`);
    } else {
      // seq i, q row i, one token at position 0, one chunk from chunk 0 (of any positive length: 1).
      tiles.set([i, i, 1, 0, 0, 1, 0, 1], w);
    }
    tiles[w + 4] = i * region;
  }
  const blockTables = new Uint32Array(B * g.maxBlocksPerSeq);
  blockTables.set(prep.blockTables.subarray(0, n * g.maxBlocksPerSeq));
  return { tiles, blockTables };
}
