// Ragged paged attention for the CPU executor: the op interface of pagedAttention.ts (bindings q,
// kCache, vCache, blockTables, tiles, out; AttentionSizes; the same cache layouts, f32 or f16
// packed in u32 words), built for a machine that runs invocations one after another.
//
// On the CPU executor every barrier region loops over all of a workgroup's invocations, so
// pagedAttention's shared-memory staging, per-warp softmax and split-KV merge cost more than the
// arithmetic. Here one workgroup takes a (tile, KV head) and one invocation a token of the tile
// for one or more query heads of the GQA group (headsPerInvocation: they share each K/V load);
// each row (token × head) walks its positions [window start, own position] in order, one cache
// block at a time, with an online softmax and its head_dim accumulators in private memory
// (locals on the CPU executor). No workgroup memory, no barriers,
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
import { attentionOpBindings, checkAttentionSizes } from './attentionOp.js';
import { type AttentionSizes, TILE_WORDS } from './pagedAttentionConfig.js';

const F32_MAX = 3.4028234663852886e38;
/** Positions scored together (lanes of the CPU executor's vectors). */
const QUAD = [0, 1, 2, 3] as const;

export interface AttentionRowsParams {
  headDim: number;
  /** numHeads / numKvHeads, 1..8. */
  groupSize: number;
  /** KV cache element type; 'f16' travels packed in u32 words. Default 'f32'. */
  kvDtype?: 'f32' | 'f16';
  /** Tokens per cache block (default 16). */
  blockSize?: number;
  /** Query tokens per workgroup (default ⌊16 / groupSize⌋, at least 1). */
  tileTokens?: number;
  /**
   * Query heads of the group one invocation takes (a divisor of groupSize; default the largest
   * with headsPerInvocation · headDim ≤ 64): they share each K/V load and f16 unpack, and their
   * dot products are independent chains. Results do not depend on it.
   */
  headsPerInvocation?: number;
  caps?: Caps;
}

/**
 * What prepareAttention needs (src/ops/attention.ts AttentionTiling) plus the kernel's shape. The
 * chunk is one whole context: a row never has more than one chunk, so there is nothing to merge.
 */
export interface AttentionRowsConfig {
  headDim: number; groupSize: number; kvDtype: 'f32' | 'f16'; blockSize: number;
  /** A multiple of blockSize just under 2^31: beyond any context, and it fits the tile's u32 chunk word. */
  chunkSize: number;
  /** Fixed chunks (no targetCtas shrinking); kvTile = blockSize only so rowChunkSize can run. */
  kvTile: number; targetCtas: 0;
  tileTokens: number; rows: number; headsPerInvocation: number; workgroupSize: number; caps: Caps;
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
  const hpi = p.headsPerInvocation ?? Math.max(...Array.from({ length: G }, (_, j) => j + 1).filter((n) => G % n === 0 && (n === 1 || n * D <= 64)));
  if (!Number.isInteger(hpi) || hpi < 1 || G % hpi) throw new Error(`attentionRows: headsPerInvocation ${hpi} does not divide groupSize ${G}`);
  const tileTokens = p.tileTokens ?? Math.max(1, Math.floor(16 / G));
  const rows = tileTokens * G, wg = rows / hpi;
  if (!Number.isInteger(tileTokens) || tileTokens < 1 || wg > caps.maxInvocationsPerWorkgroup) {
    throw new Error(`attentionRows: tileTokens ${tileTokens} must be a positive integer whose ${wg} invocations fit the device's ${caps.maxInvocationsPerWorkgroup}`);
  }
  return {
    headDim: D, groupSize: G, kvDtype, blockSize: BS, chunkSize: BS * Math.floor(2 ** 31 / BS), kvTile: BS, targetCtas: 0,
    tileTokens, rows, headsPerInvocation: hpi, workgroupSize: wg, caps,
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

/** One workgroup per (tile, KV head), one invocation per token × headsPerInvocation heads; see the file comment. */
export function attentionRowsKernel(c: AttentionRowsConfig) {
  const { headDim: D, groupSize: G, blockSize: BS, headsPerInvocation: HI } = c;
  const f16 = c.kvDtype === 'f16';
  const P = f16 ? D / 2 : D; // words per (position, KV head)
  const GI = G / HI; // invocations per token
  const wordT = f16 ? 'u32' : 'f32';
  const cacheShape = `[numBlocks, ${BS}, numKvHeads, ${P}]`;
  const headsShape = `[numTokens, numKvHeads * ${G}, ${D}]`;
  const heads = Array.from({ length: HI }, (_, j) => j);
  return kernel({
    name: 'attentionRows',
    params: { headDim: D, groupSize: G, kvDtype: c.kvDtype, blockSize: BS, tileTokens: c.tileTokens, headsPerInvocation: HI },
    caps: c.caps,
    workgroupSize: c.workgroupSize,
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
      // Tile words (pagedAttentionConfig.ts TILE_WORDS): seq, first q row, token count, first position; the chunk words are unused.
      const seq = k.let('seq', b.tiles.at(tileBase)), qRow0 = k.let('qRow0', b.tiles.at(tileBase.add(1)));
      const nTok = k.let('nTok', b.tiles.at(tileBase.add(2))), pos0 = k.let('pos0', b.tiles.at(tileBase.add(3)));
      const i = k.let('i', GI > 1 ? lid.div(GI) : lid);
      k.if(i.ge(nTok), () => k.return());
      const kvh = k.let('kvh', k.workgroupId.y);
      const H = k.let('numHeads', u.numKvHeads.mul(G));
      // Row of head j: q/out elements from qBase + j·D (the invocation's heads are adjacent).
      const firstHead = GI > 1 ? kvh.mul(G).add(lid.rem(GI).mul(HI)) : kvh.mul(G);
      const qBase = k.let('qBase', qRow0.add(i).mul(H).add(firstHead).mul(D));
      const kvEnd = k.let('kvEnd', pos0.add(i).add(1));
      const lo = k.let('lo', k.select(u.window.gt(0).and(kvEnd.gt(u.window)), kvEnd.sub(u.window), k.u32(0)));
      const tableRow = k.let('tableRow', seq.mul(u.maxBlocksPerSeq));

      // Constant indices only ([head j][d] at j·D + d): these live in locals (registers) on every target.
      const qv = k.privateArray('qv', 'f32', HI * D), acc = k.privateArray('acc', 'f32', HI * D), pvSum = k.privateArray('pvSum', 'f32', HI * D);
      for (let e = 0; e < HI * D; e++) { qv.set(e, b.q.at(qBase.add(e))); acc.set(e, 0); }
      // Per head, the block's scores, then its exp2(s − mNew), by position in the block: [j][position] at j·BS + position.
      const probs = k.privateArray('probs', 'f32', HI * BS);
      const m = heads.map((j) => k.var(`m${j}`, 'f32', -F32_MAX)), l = heads.map((j) => k.var(`l${j}`, 'f32', 0));
      const dots = heads.map((j) => QUAD.map((q) => k.var(`dot${j}_${q}`, 'f32', 0)));

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
      const slot = (j: number, pos: Val<'u32'>) => (j ? pos.add(j * BS) : pos);

      k.for('bt', lo.div(BS).mul(BS), kvEnd, (bt) => {
        const blk = k.let('blk', b.blockTables.at(tableRow.add(bt.div(BS))));
        const from = k.let('from', max(bt, lo).sub(bt)), to = k.let('to', min(bt.add(BS), kvEnd).sub(bt));
        const rowAt = (pos: Val<'u32'>, tag = '') => k.let(`rowAt${tag}`, blk.mul(BS).add(pos).mul(u.numKvHeads).add(kvh).mul(P));
        // Scores, base 2: s = (q · k) · scale · log2 e, summed over head_dim in order — four
        // positions at a time, each its own sum (the CPU executor carries a head's four in one
        // vector: same bits); positions at or past `to` read position to − 1 and are dropped.
        const mx = heads.map((j) => k.var(`mx${j}`, 'f32', -F32_MAX));
        k.for('pq', from, to, (p0) => {
          const rows = QUAD.map((q) => rowAt(min(q ? p0.add(q) : p0, to.sub(1)), `${q}`));
          dots.flat().forEach((v) => v.set(0));
          k.for('dw', k.u32(0), k.u32(P), (w) => {
            // Element d of each position's row: f16 words unpacked in pairs (d = 2w, 2w + 1).
            const kd = QUAD.map((q) => {
              const word = b.kCache.at(rows[q]!.add(w));
              if (!f16) return [k.let(`kq${q}`, word as Val<'f32'>)];
              const h = k.let(`kh${q}`, k.unpack2x16float(word as Val<'u32'>));
              return [k.let(`kq${q}_0`, h.x), k.let(`kq${q}_1`, h.y)];
            });
            for (let e = 0; e < (f16 ? 2 : 1); e++) {
              const d = f16 ? w.mul(2).add(e) : w;
              heads.forEach((j) => {
                const qd = k.let(`qd${j}_${e}`, qv.at(j ? d.add(j * D) : d));
                QUAD.forEach((q) => dots[j]![q]!.set(dots[j]![q]!.add(qd.mul(kd[q]![e]!))));
              });
            }
          });
          QUAD.forEach((q) => {
            const pos = q ? p0.add(q) : p0;
            k.if(pos.lt(to), () => heads.forEach((j) => {
              const s = k.let(`s${j}_${q}`, dots[j]![q]!.mul(u.scaleLog2));
              probs.set(slot(j, pos), s);
              mx[j]!.set(max(mx[j]!, s));
            }));
          });
        }, 4);
        const alpha = heads.map((j) => {
          const mNew = k.let(`mNew${j}`, max(m[j]!, mx[j]!));
          const a = k.let(`alpha${j}`, k.select(mNew.eq(m[j]!), k.f32(1), exp2(m[j]!.sub(mNew))));
          k.for('pos', from, to, (pos) => probs.set(slot(j, pos), exp2(probs.at(slot(j, pos)).sub(mNew))));
          const lanes = Array.from({ length: BS }, (_, p) => k.let(`lane${p}`, k.select(to.gt(p).and(from.le(p)), probs.at(j * BS + p), k.f32(0))));
          l[j]!.set(l[j]!.mul(a).add(blockSum(k, lanes)));
          m[j]!.set(mNew);
          return a;
        });
        // acc = acc · alpha + Σ_pos p · v, the sum in position order.
        for (let e = 0; e < HI * D; e++) pvSum.set(e, 0);
        k.for('pos', from, to, (pos) => {
          const p = heads.map((j) => k.let(`p${j}`, probs.at(slot(j, pos))));
          // Head by head, d in order: each head's sums are adjacent statements over adjacent v
          // (the CPU executor packs four of them into one vector multiply and add; same bits).
          const vd: Val<'f32'>[] = [];
          elements(b.vCache, rowAt(pos), (d, v) => { vd[d] = v; });
          heads.forEach((j) => { for (let d = 0; d < D; d++) pvSum.set(j * D + d, pvSum.at(j * D + d).add(p[j]!.mul(vd[d]!))); });
        });
        heads.forEach((j) => { for (let d = 0; d < D; d++) acc.set(j * D + d, acc.at(j * D + d).mul(alpha[j]!).add(pvSum.at(j * D + d))); });
      }, BS);
      heads.forEach((j) => { for (let d = 0; d < D; d++) b.out.set(qBase.add(j * D + d), acc.at(j * D + d).div(l[j]!)); });
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
  const o = op('attentionRows', attentionOpBindings(c.kvDtype), (s: AttentionSizes): Plan => {
    checkAttentionSizes('attentionRows', s, ['numTokens', 'numSeqs', 'numKvHeads', 'numBlocks', 'maxBlocksPerSeq', 'numTiles']);
    if (s.maxTileChunks !== 1) throw new Error(`op 'attentionRows': maxTileChunks = ${s.maxTileChunks}; tiles must come from prepareAttention with this op's config (one chunk per row)`);
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
