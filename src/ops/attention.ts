// Host side of paged attention and KV append: turns the scheduler's ragged batch description
// into the op's metadata (tiles, block tables, slot mapping, sizes), validates it — block tables
// outside the cache, positions beyond the context limit, overlapping or missing rows — with an
// error naming the sequence and field before anything is launched, and queues the ops.
import { pagedAttention } from '../../codegen/kernels/pagedAttention.js';
import { type AttentionConfig, type AttentionSizes, TILE_WORDS, rowChunkSize } from '../../codegen/kernels/pagedAttentionConfig.js';
import type { attentionRows } from '../../codegen/kernels/attentionRows.js';
import { kvAppend } from '../../codegen/kernels/kvAppend.js';
import type { Device, DeviceBuffer, HostArray } from '../backend/device.js';
import { uploadScratch } from '../backend/scratch.js';

/** One sequence of a ragged batch. */
export interface RaggedSequence {
  /** Row in q (and out) of the sequence's first new token. */
  qStart: number;
  /** New tokens (≥ 1): a prefill chunk, one decode token, or k + 1 tokens to verify. */
  qLen: number;
  /** Tokens already in the cache before the new ones (the first new token's position). */
  ctxLen: number;
  /** Physical block of each logical block of the sequence. */
  blockTable: ArrayLike<number>;
}

export interface AttentionBatch {
  /** Rows of q and out. */
  numTokens: number;
  seqs: RaggedSequence[];
  /** Sliding window in positions: a token sees itself and the window − 1 before it. 0 = none. */
  window?: number;
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
}

export interface CacheGeometry {
  numBlocks: number;
  numKvHeads: number;
  /** Columns of the block-table matrix: the context limit is maxBlocksPerSeq · blockSize. */
  maxBlocksPerSeq: number;
}

export interface PreparedAttention {
  tiles: Uint32Array;
  blockTables: Uint32Array;
  sizes: AttentionSizes;
}

export class AttentionInputError extends Error {}

function int(v: number, what: string, min = 0): void {
  if (!Number.isInteger(v) || v < min) throw new AttentionInputError(`${what} = ${v} must be an integer ≥ ${min}`);
}

/**
 * Workgroups a lone sequence's decode should spread over on `dev` (PagedAttentionParams.targetCtas):
 * two per multiprocessor on a GPU that reports them, 0 (fixed chunks) elsewhere.
 */
export function attentionTargetCtas(dev: Pick<Device, 'profile'>): number {
  return dev.profile.software ? 0 : 2 * (dev.profile.multiprocessors ?? 0);
}

/**
 * What tiling the batch needs from an attention op's config: pagedAttention's AttentionConfig,
 * or attentionRows' (whose one chunk spans any context).
 */
export type AttentionTiling = Pick<AttentionConfig, 'headDim' | 'groupSize' | 'blockSize' | 'tileTokens' | 'chunkSize' | 'kvTile' | 'targetCtas'>;

/** Validate the batch against the cache and build the op's metadata. */
export function prepareAttention(c: AttentionTiling, batch: AttentionBatch, cache: CacheGeometry): PreparedAttention {
  const { blockSize: BS, tileTokens: TQ } = c;
  int(batch.numTokens, 'attention: numTokens', 1);
  int(cache.numBlocks, 'attention: cache numBlocks', 1);
  int(cache.numKvHeads, 'attention: cache numKvHeads', 1);
  int(cache.maxBlocksPerSeq, 'attention: cache maxBlocksPerSeq', 1);
  if (!batch.seqs.length) throw new AttentionInputError('attention: the batch has no sequences');
  const window = batch.window ?? 0;
  int(window, 'attention: window');
  const scale = batch.scale ?? 1 / Math.sqrt(c.headDim);
  if (!(scale > 0) || !Number.isFinite(scale)) throw new AttentionInputError(`attention: scale = ${scale} must be positive and finite`);
  const H = cache.numKvHeads * c.groupSize;
  const limit = cache.maxBlocksPerSeq * BS;
  const owner = new Int32Array(batch.numTokens).fill(-1);
  const blockTables = new Uint32Array(batch.seqs.length * cache.maxBlocksPerSeq);
  const tiles: number[] = [];
  let partRows = 0, maxTileChunks = 1;
  batch.seqs.forEach((s, si) => {
    const what = `attention: sequence ${si}`;
    int(s.qLen, `${what}: qLen`, 1);
    int(s.qStart, `${what}: qStart`);
    int(s.ctxLen, `${what}: ctxLen`);
    if (s.qStart + s.qLen > batch.numTokens) {
      throw new AttentionInputError(`${what}: rows [${s.qStart}, ${s.qStart + s.qLen}) run past numTokens = ${batch.numTokens}`);
    }
    const end = s.ctxLen + s.qLen;
    if (end > limit) {
      throw new AttentionInputError(`${what}: positions up to ${end - 1} are beyond the context limit ${limit} (maxBlocksPerSeq ${cache.maxBlocksPerSeq} × blockSize ${BS})`);
    }
    const blocks = Math.ceil(end / BS);
    if (s.blockTable.length < blocks) {
      throw new AttentionInputError(`${what}: blockTable has ${s.blockTable.length} entries, positions up to ${end - 1} need ${blocks}`);
    }
    for (let j = 0; j < blocks; j++) {
      const b = s.blockTable[j]!;
      if (!Number.isInteger(b) || b < 0 || b >= cache.numBlocks) {
        throw new AttentionInputError(`${what}: blockTable[${j}] = ${b} points outside the cache (numBlocks = ${cache.numBlocks})`);
      }
      blockTables[si * cache.maxBlocksPerSeq + j] = b;
    }
    for (let r = s.qStart; r < s.qStart + s.qLen; r++) {
      if (owner[r]! >= 0) throw new AttentionInputError(`${what}: q row ${r} is also claimed by sequence ${owner[r]}`);
      owner[r] = si;
    }
    // Tiles of ≤ TQ consecutive tokens that share a chunk length (it depends on the position).
    for (let j0 = 0; j0 < s.qLen;) {
      const pos0 = s.ctxLen + j0, C = rowChunkSize(c, pos0 + 1, cache.numKvHeads);
      let n = 1;
      while (n < TQ && j0 + n < s.qLen && rowChunkSize(c, pos0 + n + 1, cache.numKvHeads) === C) n++;
      const lo = window > 0 && pos0 + 1 > window ? pos0 + 1 - window : 0;
      const cLo = Math.floor(lo / C), cHi = Math.floor((pos0 + n - 1) / C);
      const chunks = cHi - cLo + 1;
      tiles.push(si, s.qStart + j0, n, pos0, chunks > 1 ? partRows : 0, chunks, cLo, C);
      if (chunks > 1) partRows += n * H * chunks;
      maxTileChunks = Math.max(maxTileChunks, chunks);
      j0 += n;
    }
  });
  const numTiles = tiles.length / TILE_WORDS;
  if (numTiles > 65535) throw new AttentionInputError(`attention: ${numTiles} query tiles exceed one launch's 65535 workgroups; split the batch`);
  return {
    tiles: Uint32Array.from(tiles),
    blockTables,
    sizes: {
      numTokens: batch.numTokens, numSeqs: batch.seqs.length, numKvHeads: cache.numKvHeads, numBlocks: cache.numBlocks,
      maxBlocksPerSeq: cache.maxBlocksPerSeq, numTiles, maxTileChunks, partRows, window, scale,
    },
  };
}

/** Cache slot of every new token (block · blockSize + offset), −1 for rows no sequence owns. */
export function slotMapping(batch: Pick<AttentionBatch, 'numTokens' | 'seqs'>, blockSize: number): Int32Array {
  const slots = new Int32Array(batch.numTokens).fill(-1);
  batch.seqs.forEach((s, si) => {
    for (let j = 0; j < s.qLen; j++) {
      const pos = s.ctxLen + j;
      const b = s.blockTable[Math.floor(pos / blockSize)];
      if (b === undefined) throw new AttentionInputError(`kvAppend: sequence ${si} has no block for position ${pos}`);
      slots[s.qStart + j] = b * blockSize + (pos % blockSize);
    }
  });
  return slots;
}

/** Every slot must be −1 (skip) or inside the cache, and no slot written twice. */
export function checkSlots(slots: Int32Array, numBlocks: number, blockSize: number): void {
  const seen = new Map<number, number>();
  slots.forEach((s, t) => {
    if (s === -1) return;
    if (!Number.isInteger(s) || s < 0 || s >= numBlocks * blockSize) {
      throw new AttentionInputError(`kvAppend: slots[${t}] = ${s} is outside the cache (${numBlocks} blocks × ${blockSize} slots)`);
    }
    const prev = seen.get(s);
    if (prev !== undefined) throw new AttentionInputError(`kvAppend: slots[${t}] = ${s} is also written by token ${prev}`);
    seen.set(s, t);
  });
}

/** Either attention op: they share bindings, sizes and the tiles prepareAttention builds from their config. */
type PagedAttentionOp = ReturnType<typeof pagedAttention> | ReturnType<typeof attentionRows>;
type KvAppendOp = ReturnType<typeof kvAppend>;

/** Metadata uploads reuse per-device scratch buffers (grown 2× to settle quickly). */
function metaBuffer<T extends 'u32' | 'i32'>(dev: Device, name: string, t: T, data: HostArray<T>): DeviceBuffer<T> {
  return uploadScratch(dev, `attention.${name}`, t, data, 2);
}

/** Validate, upload the metadata and queue the attention op. */
export function runPagedAttention(dev: Device, o: PagedAttentionOp, bufs: {
  q: DeviceBuffer<'f32'>; kCache: DeviceBuffer<'f32' | 'u32'>; vCache: DeviceBuffer<'f32' | 'u32'>; out: DeviceBuffer<'f32'>;
}, batch: AttentionBatch, cache: CacheGeometry): PreparedAttention {
  const prep = prepareAttention(o.config, batch, cache);
  const heads = batch.numTokens * cache.numKvHeads * o.config.groupSize * o.config.headDim;
  for (const [name, b] of [['q', bufs.q], ['out', bufs.out]] as const) {
    if (b.length < heads) throw new AttentionInputError(`attention: ${name} has ${b.length} elements, the batch needs ${heads}`);
  }
  const cacheWords = cache.numBlocks * o.config.blockSize * cache.numKvHeads * o.config.headDim / (o.config.kvDtype === 'f16' ? 2 : 1);
  for (const [name, b] of [['kCache', bufs.kCache], ['vCache', bufs.vCache]] as const) {
    if (b.length < cacheWords) throw new AttentionInputError(`attention: ${name} has ${b.length} elements, the cache geometry needs ${cacheWords}`);
  }
  const tiles = metaBuffer(dev, 'tiles', 'u32', prep.tiles);
  const blockTables = metaBuffer(dev, 'blockTables', 'u32', prep.blockTables);
  dev.run(o, { ...bufs, tiles, blockTables }, prep.sizes);
  return prep;
}

/** Validate the slot mapping and queue the KV append. */
export function runKvAppend(dev: Device, o: KvAppendOp, bufs: {
  kNew: DeviceBuffer<'f32'>; vNew: DeviceBuffer<'f32'>; kCache: DeviceBuffer<'f32' | 'u32'>; vCache: DeviceBuffer<'f32' | 'u32'>;
}, slots: Int32Array, geometry: { numKvHeads: number; numBlocks: number; blockSize: number; headDim: number }): void {
  checkSlots(slots, geometry.numBlocks, geometry.blockSize);
  const need = slots.length * geometry.numKvHeads * geometry.headDim;
  for (const [name, b] of [['kNew', bufs.kNew], ['vNew', bufs.vNew]] as const) {
    if (b.length < need) throw new AttentionInputError(`kvAppend: ${name} has ${b.length} elements, ${slots.length} tokens need ${need}`);
  }
  const slotBuf = metaBuffer(dev, 'slots', 'i32', slots);
  dev.run(o, { ...bufs, slots: slotBuf }, { numTokens: slots.length, numKvHeads: geometry.numKvHeads, numBlocks: geometry.numBlocks });
}
