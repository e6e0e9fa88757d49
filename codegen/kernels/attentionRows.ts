// Ragged paged attention for the CPU executor: the op interface of pagedAttention.ts (bindings q,
// kCache, vCache, blockTables, tiles, out; AttentionSizes; the same cache layouts, f32 or f16
// packed in u32 words), built for a machine that runs invocations one after another.
//
// On the CPU executor every barrier region loops over all of a workgroup's invocations, so
// pagedAttention's shared-memory staging, per-warp softmax and split-KV merge cost more than the
// arithmetic. Here one workgroup takes a (tile, KV head) and one invocation a row (a token of the
// tile × a query head of the GQA group); the row walks its positions [window start, own
// position] in order, one cache block at a time, with an online softmax and its head_dim
// accumulators in private memory (locals on the CPU executor). No workgroup memory, no barriers,
// no partials: the config's chunkSize is larger than any context, so prepareAttention gives every
// row a single chunk (partRows 0) and the partial/merge bindings of pagedAttention are not needed.
//
// Per row and cache block the f32 operations are pagedAttention's (scores summed over head_dim in
// order and scaled by scale · log2 e; the block's max; alpha = exp2(mOld − mNew); the block's sum
// of exp2(s − mNew) in the pairwise order of a butterfly over blockSize lanes — the order of its
// per-warp softmax on devices with 32-wide subgroups at blocks of 16; acc = acc · alpha + Σ p·v in
// position order; out = acc / l), so on such a device (the cpu device) a single-chunk row has the
// same bits under both kernels. A row's arithmetic follows from its own position and window
// alone: the tile, the batch, chunked prefill and decode vs prefill never enter.
import { exp2, kernel, max, min, op, storage } from '../dsl/index.js';
import type { ArrayRef, Caps, KernelBuilder, Plan, Val } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { type AttentionSizes, TILE_WORDS } from './pagedAttention.js';

const F32_MAX = 3.4028234663852886e38;

export interface AttentionRowsParams {
  headDim: number;
  /** numHeads / numKvHeads, 1..8. */
  groupSize: number;
  /** KV cache element type; 'f16' travels packed in u32 words. Default 'f32'. */
  kvDtype?: 'f32' | 'f16';
  /** Tokens per cache block (default 16). */
  blockSize?: number;
  /** Query tokens per workgroup (default ⌊16 / groupSize⌋, at least 1): one invocation per row. */
  tileTokens?: number;
  caps?: Caps;
}

/**
 * What prepareAttention needs (src/ops/attention.ts AttentionTiling) plus the kernel's shape. The
 * chunk is one whole context: a row never has more than one chunk, so there is nothing to merge.
 */
export interface AttentionRowsConfig {
  headDim: number; groupSize: number; kvDtype: 'f32' | 'f16'; blockSize: number;
  /** A multiple of blockSize above any position a u32 can hold in a tile word (≤ 2^31). */
  chunkSize: number;
  /** Fixed chunks (no targetCtas shrinking); kvTile = blockSize only so rowChunkSize can run. */
  kvTile: number; targetCtas: 0;
  tileTokens: number; rows: number; workgroupSize: number; caps: Caps;
}

export function attentionRowsConfig(p: AttentionRowsParams): AttentionRowsConfig {
  const caps = p.caps ?? BASELINE_CAPS;
  const D = p.headDim, G = p.groupSize, kvDtype = p.kvDtype ?? 'f32', BS = p.blockSize ?? 16;
  if (kvDtype !== 'f32' && kvDtype !== 'f16') throw new Error(`attentionRows: kvDtype '${kvDtype}' is not f32 or f16`);
  if (!Number.isInteger(D) || D < 1 || D > 256 || (kvDtype === 'f16' && D % 2)) {
    throw new Error(`attentionRows: headDim ${D} must be an integer in 1..256${kvDtype === 'f16' ? ', even for f16 KV' : ''}`);
  }
  if (!Number.isInteger(G) || G < 1 || G > 8) throw new Error(`attentionRows: groupSize ${G} is not an integer in 1..8`);
  if (!Number.isInteger(BS) || BS < 1 || BS > 64) throw new Error(`attentionRows: blockSize ${BS} is not in 1..64`);
  const tileTokens = p.tileTokens ?? Math.max(1, Math.floor(16 / G));
  const rows = tileTokens * G;
  if (!Number.isInteger(tileTokens) || tileTokens < 1 || rows > caps.maxInvocationsPerWorkgroup) {
    throw new Error(`attentionRows: tileTokens ${tileTokens} × group ${G} rows must be a positive integer count within ${caps.maxInvocationsPerWorkgroup} invocations`);
  }
  return {
    headDim: D, groupSize: G, kvDtype, blockSize: BS, chunkSize: BS * Math.floor(2 ** 31 / BS), kvTile: BS, targetCtas: 0,
    tileTokens, rows, workgroupSize: rows, caps,
  };
}

/**
 * The block's sum of lanes 0..n−1 (n a power of two) in the order lane 0 of a butterfly
 * (xor n/2, …, 1) computes it; sequential for other n. Lanes outside the row's range hold 0.
 */
function blockSum(k: KernelBuilder, lanes: Val<'f32'>[]): Val<'f32'> {
  const n = lanes.length;
  if (n & (n - 1)) return lanes.reduce((s, x) => s.add(x));
  let v = lanes;
  while (v.length > 1) {
    const half = v.length / 2;
    v = v.slice(0, half).map((x, i) => k.let(`bs${half}_${i}`, x.add(v[i + half]!)));
  }
  return v[0]!;
}

/** One workgroup per (tile, KV head), one invocation per row; see the file comment. */
export function attentionRowsKernel(c: AttentionRowsConfig) {
  const { headDim: D, groupSize: G, blockSize: BS, rows: R } = c;
  const f16 = c.kvDtype === 'f16';
  const P = f16 ? D / 2 : D; // words per (position, KV head)
  const wordT = f16 ? 'u32' : 'f32';
  const cacheShape = `[numBlocks, ${BS}, numKvHeads, ${P}]`;
  const headsShape = `[numTokens, numKvHeads * ${G}, ${D}]`;
  return kernel({
    name: 'attentionRows',
    params: { headDim: D, groupSize: G, kvDtype: c.kvDtype, blockSize: BS, tileTokens: c.tileTokens },
    caps: c.caps,
    workgroupSize: R,
    bindings: {
      q: storage('f32', 'read', { shape: headsShape }),
      kCache: storage(wordT, 'read', { shape: cacheShape }),
      vCache: storage(wordT, 'read', { shape: cacheShape }),
      blockTables: storage('u32', 'read', { shape: '[numSeqs, maxBlocksPerSeq]' }),
      tiles: storage('u32', 'read', { shape: `[numTiles, ${TILE_WORDS}]` }),
      out: storage('f32', 'read_write', { shape: headsShape }),
    },
    uniforms: {
      numTokens: 'u32', numSeqs: 'u32', numKvHeads: 'u32', numBlocks: 'u32', maxBlocksPerSeq: 'u32', numTiles: 'u32',
      window: 'u32', scaleLog2: 'f32',
    },
    grid: '[numTiles, numKvHeads]',
    body(k, b, u) {
      const lid = k.let('lid', k.localIndex);
      const tileBase = k.let('tileBase', k.workgroupId.x.mul(TILE_WORDS));
      // Tile words (pagedAttention.ts TILE_WORDS): seq, first q row, token count, first position; the chunk words are unused.
      const seq = k.let('seq', b.tiles.at(tileBase)), qRow0 = k.let('qRow0', b.tiles.at(tileBase.add(1)));
      const nTok = k.let('nTok', b.tiles.at(tileBase.add(2))), pos0 = k.let('pos0', b.tiles.at(tileBase.add(3)));
      const i = k.let('i', lid.div(G));
      k.if(i.ge(nTok), () => k.return());
      const kvh = k.let('kvh', k.workgroupId.y);
      const H = k.let('numHeads', u.numKvHeads.mul(G));
      const qBase = k.let('qBase', qRow0.add(i).mul(H).add(kvh.mul(G)).add(lid.rem(G)).mul(D));
      const kvEnd = k.let('kvEnd', pos0.add(i).add(1));
      const lo = k.let('lo', k.select(u.window.gt(0).and(kvEnd.gt(u.window)), kvEnd.sub(u.window), k.u32(0)));
      const tableRow = k.let('tableRow', seq.mul(u.maxBlocksPerSeq));

      // Constant indices only: these live in locals (registers) on every target.
      const qv = k.privateArray('qv', 'f32', D), acc = k.privateArray('acc', 'f32', D), pvSum = k.privateArray('pvSum', 'f32', D);
      for (let d = 0; d < D; d++) { qv.set(d, b.q.at(qBase.add(d))); acc.set(d, 0); }
      // The block's scores, then its exp2(s − mNew), by position in the block.
      const probs = k.privateArray('probs', 'f32', BS);
      const m = k.var('m', 'f32', -F32_MAX), l = k.var('l', 'f32', 0);

      /** Each f32 element d of a position's K or V row at word offset `at` (f16 words unpacked in pairs). */
      const elements = (cache: ArrayRef<'f32' | 'u32', boolean>, at: Val<'u32'>, use: (d: number, v: Val<'f32'>) => void) => {
        for (let w = 0; w < P; w++) {
          const word = cache.at(w ? at.add(w) : at);
          if (f16) {
            const h = k.let(`h${w}`, k.unpack2x16float(word as Val<'u32'>));
            use(2 * w, h.x);
            use(2 * w + 1, h.y);
          } else use(w, word as Val<'f32'>);
        }
      };

      k.for('bt', lo.div(BS).mul(BS), kvEnd, (bt) => {
        const blk = k.let('blk', b.blockTables.at(tableRow.add(bt.div(BS))));
        const from = k.let('from', max(bt, lo).sub(bt)), to = k.let('to', min(bt.add(BS), kvEnd).sub(bt));
        const rowAt = (j: Val<'u32'>) => k.let('rowAt', blk.mul(BS).add(j).mul(u.numKvHeads).add(kvh).mul(P));
        // Scores, base 2: s = (q · k) · scale · log2 e, summed over head_dim in order.
        const mx = k.var('mx', 'f32', -F32_MAX);
        k.for('j', from, to, (j) => {
          const dot = k.var('dot', 'f32', 0);
          elements(b.kCache, rowAt(j), (d, kd) => dot.set(dot.add(qv.at(d).mul(kd))));
          const s = k.let('s', dot.mul(u.scaleLog2));
          probs.set(j, s);
          mx.set(max(mx, s));
        });
        const mNew = k.let('mNew', max(m, mx));
        const alpha = k.let('alpha', k.select(mNew.eq(m), k.f32(1), exp2(m.sub(mNew))));
        k.for('j', from, to, (j) => probs.set(j, exp2(probs.at(j).sub(mNew))));
        const lanes = Array.from({ length: BS }, (_, j) => k.let(`lane${j}`, k.select(to.gt(j).and(from.le(j)), probs.at(j), k.f32(0))));
        l.set(l.mul(alpha).add(blockSum(k, lanes)));
        m.set(mNew);
        // acc = acc · alpha + Σ_j p_j · v_j, the sum in position order.
        for (let d = 0; d < D; d++) pvSum.set(d, 0);
        k.for('j', from, to, (j) => {
          const p = k.let('p', probs.at(j));
          elements(b.vCache, rowAt(j), (d, vd) => pvSum.set(d, pvSum.at(d).add(p.mul(vd))));
        });
        for (let d = 0; d < D; d++) acc.set(d, acc.at(d).mul(alpha).add(pvSum.at(d)));
      }, BS);
      for (let d = 0; d < D; d++) b.out.set(qBase.add(d), acc.at(d).div(l));
    },
  });
}

/**
 * The op. Bindings: q, kCache, vCache, blockTables (u32), tiles (u32), out (pagedAttention's
 * partAcc, partMl and tickets may be passed and are ignored). Sizes: AttentionSizes, from
 * src/ops/attention.ts `prepareAttention(config, …)`; every tile must have one chunk.
 */
export function attentionRows(p: AttentionRowsParams) {
  const c = attentionRowsConfig(p);
  const kern = attentionRowsKernel(c);
  const kvT = c.kvDtype === 'f16' ? 'u32' : 'f32';
  const o = op('attentionRows', {
    q: storage('f32', 'read'),
    kCache: storage(kvT, 'read'),
    vCache: storage(kvT, 'read'),
    blockTables: storage('u32', 'read'),
    tiles: storage('u32', 'read'),
    out: storage('f32', 'read_write'),
  }, (s: AttentionSizes): Plan => {
    for (const key of ['numTokens', 'numSeqs', 'numKvHeads', 'numBlocks', 'maxBlocksPerSeq', 'numTiles'] as const) {
      if (!Number.isInteger(s[key]) || s[key] < 1) throw new Error(`op 'attentionRows': size ${key} = ${s[key]} must be a positive integer`);
    }
    if (s.maxTileChunks !== 1) throw new Error(`op 'attentionRows': maxTileChunks = ${s.maxTileChunks}; tiles must come from prepareAttention with this op's config (one chunk per row)`);
    if (!Number.isInteger(s.window) || s.window < 0) throw new Error(`op 'attentionRows': window = ${s.window} must be a non-negative integer`);
    if (!(s.scale > 0) || !Number.isFinite(s.scale)) throw new Error(`op 'attentionRows': scale = ${s.scale} must be positive and finite`);
    return {
      temps: {},
      steps: [{
        kernel: kern,
        bind: { q: 'q', kCache: 'kCache', vCache: 'vCache', blockTables: 'blockTables', tiles: 'tiles', out: 'out' },
        uniforms: {
          numTokens: s.numTokens, numSeqs: s.numSeqs, numKvHeads: s.numKvHeads, numBlocks: s.numBlocks, maxBlocksPerSeq: s.maxBlocksPerSeq,
          numTiles: s.numTiles, window: s.window, scaleLog2: s.scale * Math.LOG2E,
        },
      }],
    };
  });
  return Object.assign(o, { kernels: [kern], config: c });
}
