// Ragged paged attention: one op for prefill chunks, single-token decodes and speculative
// verification in the same batch.
//
// KV cache, per layer: K and V each [numBlocks, blockSize, numKvHeads, headDim], f32, or f16
// packed in u32 words (two consecutive head_dim elements per word, low half first: the same
// bytes as an f16 array) — one path valid everywhere, WebGPU compatibility mode included.
//
// The ragged batch (built and validated on the host by src/ops/attention.ts): each sequence
// brings qLen ≥ 1 new query tokens, rows [qStart, qStart + qLen) of q [numTokens, numHeads,
// headDim], with ctxLen tokens already cached before them and a row of blockTables [numSeqs,
// maxBlocksPerSeq]. New token j sits at position ctxLen + j and attends to cached positions
// < ctxLen + j + 1 (its own K/V, and those of the tokens before it, are appended by kvAppend
// BEFORE this op runs), or only the last `window` of them when window > 0. out has q's shape.
// GQA: numHeads = groupSize · numKvHeads; query head h reads KV head h / groupSize.
//
// Work: the host cuts each sequence's tokens into tiles of ≤ tileTokens consecutive tokens and
// lists them in `tiles` (u32 × 8 each: seq, first q row, token count, position of the first
// token, partial base, chunk count, first chunk, chunk length). One workgroup per (tile, KV head,
// chunk): its rows are the tile's tokens × the group's query heads. The KV range is cut into
// chunks at fixed multiples of the tile's chunk length (split-KV, flash-decoding; the length
// follows from the rows' own positions, rowChunkSize, so a lone long decode still fills the GPU);
// a row whose range lies in one chunk writes its output directly, others write (max, sum, acc)
// partials that a second launch merges in chunk order. Within a chunk, KV is staged kvTile
// positions (1..4 cache blocks, 16-byte loads where head_dim allows; K and V by the same loads
// into two tiles where memory allows) per barrier step, kept in the cache's format (f16 stays
// packed), in rows padded and skewed so that no shared-memory access has a bank conflict
// (sharedLayout.ts). Each row folds them in one cache block at a time with an online softmax in
// f32 (base 2; the scale is folded with log2 e): the same f32 operations whatever kvTile, the
// load width and the tile layout are.
//
// Determinism: every row's arithmetic — the chunks and tiles it visits, the order of every sum,
// the direct-or-merged choice — follows from its own position and window alone. Tile partners,
// the batch, and how a prefill was chunked never enter, so a sequence's rows are bit-identical
// whatever else is in the batch.
//
// The parameters, their defaults (rows, kvTile, the staging layout) and the tiling contract
// (TILE_WORDS, rowChunkSize, AttentionSizes) are in pagedAttentionConfig.ts; the kernels here.
import { exp2, kernel, max, min, op, storage } from '../dsl/index.js';
import type { ArrayRef, DType, KernelBuilder, Plan, Val } from '../dsl/index.js';
import type { KernelFamily } from './index.js';
import { kvAppendKernel } from './kvAppend.js';
import { kvPipeline } from './kvPipeline.js';
import { mmaAttention, mmaExchangeWords } from './attentionMma.js';
import { attentionOpBindings, checkAttentionSizes } from './attentionOp.js';
import { type AttentionConfig, type AttentionSizes, attentionConfig, kvWords, type PagedAttentionParams, TILE_WORDS } from './pagedAttentionConfig.js';
import { num, oneOf, optionalBool, optionalNums } from './params.js';
import { rowOffset } from './sharedLayout.js';

const F32_MAX = 3.4028234663852886e38;

const headsShape = (c: AttentionConfig) => `[numTokens, numKvHeads * ${c.groupSize}, ${c.headDim}]`;
const cacheShape = (c: AttentionConfig) => `[numBlocks, ${c.blockSize}, numKvHeads, ${c.kvDtype === 'f16' ? c.headDim / 2 : c.headDim}]`;

interface TileView {
  seq: Val<'u32'>; qRow0: Val<'u32'>; nTok: Val<'u32'>; pos0: Val<'u32'>; partBase: Val<'u32'>;
  tileChunks: Val<'u32'>; cLo: Val<'u32'>; chunkLen: Val<'u32'>;
}
function tileView(k: KernelBuilder, tiles: ArrayRef<'u32', boolean>, tile: Val<'u32'>, omit: (keyof TileView)[] = []): TileView {
  const base = k.let('tileBase', tile.mul(TILE_WORDS));
  const names = ['seq', 'qRow0', 'nTok', 'pos0', 'partBase', 'tileChunks', 'cLo', 'chunkLen'] as const;
  const view = {} as TileView;
  // Words a kernel never reads get no local (an unused local is a compiler warning).
  names.forEach((name, i) => { if (!omit.includes(name)) view[name] = k.let(name, tiles.at(base.add(i))); });
  return view;
}
/** First attended position for a query whose KV range ends (exclusive) at kvEnd. */
function windowStart(k: KernelBuilder, kvEnd: Val<'u32'>, window: Val<'u32'>): Val<'u32'> {
  return k.select(window.gt(0).and(kvEnd.gt(window)), kvEnd.sub(window), k.u32(0));
}

/** Pass 1: per (tile, KV head, chunk), online softmax over the chunk's KV tiles. */
export function attentionPartial(c: AttentionConfig) {
  const { headDim: D, groupSize: G, blockSize: BS, rows: R, workgroupSize: W, kvTile: KT, subBlocks: NB, kvLayout: L, qStride: QS, scoreStride: SS } = c;
  const f16 = c.kvDtype === 'f16';
  const npt = Math.ceil((R * D) / W);
  // K/V words per load: a vec4 (4 f32, or 4 u32 = 8 f16) or one scalar word.
  const vw = c.vecLoads ? 4 : 1;
  const P = kvWords(D, f16);
  const wordT = f16 ? 'u32' : 'f32';
  return kernel({
    name: 'attentionPartial',
    params: {
      headDim: D, groupSize: G, kvDtype: c.kvDtype, blockSize: BS, chunkSize: c.chunkSize, tileTokens: c.tileTokens, workgroupSize: W,
      kvTile: KT, vecLoads: c.vecLoads, prefetch: c.prefetch, ...(c.mma ? { mma: true } : {}),
    },
    caps: c.caps,
    workgroupSize: W,
    // Two workgroups per SM, what the split-KV grid gives a decode: a register budget ptxas keeps
    // without spilling (left to itself it chose 80 registers and spilled the per-warp softmax).
    ...(c.warpSoftmax ? { minWorkgroupsPerSM: 2 } : {}),
    bindings: {
      q: storage('f32', 'read', { shape: headsShape(c) }),
      kCache: storage(f16 ? 'u32' : 'f32', 'read', { vec: vw, shape: cacheShape(c) }),
      vCache: storage(f16 ? 'u32' : 'f32', 'read', { vec: vw, shape: cacheShape(c) }),
      blockTables: storage('u32', 'read', { shape: '[numSeqs, maxBlocksPerSeq]' }),
      tiles: storage('u32', 'read', { shape: `[numTiles, ${TILE_WORDS}]` }),
      partAcc: storage('f32', 'read_write', { shape: `[partRows, ${D}]` }),
      partMl: storage('f32', 'read_write', { shape: '[partRows, 2]' }),
      out: storage('f32', 'read_write', { shape: headsShape(c) }),
      // Where the device has a fence, the last chunk of a (tile, KV head) to finish merges it.
      ...(c.caps.deviceFence ? { tickets: storage('u32', 'read_write', { atomic: true, shape: '[numTiles, numKvHeads]' }) } : {}),
    },
    uniforms: {
      numTokens: 'u32', numSeqs: 'u32', numKvHeads: 'u32', numBlocks: 'u32', maxBlocksPerSeq: 'u32',
      numTiles: 'u32', maxTileChunks: 'u32', partRows: 'u32', window: 'u32', scaleLog2: 'f32',
    },
    grid: '[numTiles, numKvHeads, maxTileChunks]',
    body(k, b, u) {
      // The MMA path reads q straight into A fragments: no q tile.
      const qS = c.mma ? undefined : k.shared('qTile', 'f32', R * QS);
      // K/V stay in the cache's format (f16 pairs packed in u32 words), padded per kvLayout.
      const kS = k.shared(c.splitKv ? 'kTile' : 'kvTile', wordT, KT * L.stride);
      const vS = c.splitKv ? k.shared('vTile', wordT, KT * L.stride) : kS;
      const sS = k.shared('scores', 'f32', R * SS);
      // Score row r's first word. The MMA path's fragments (lane 4g + t: row g, words 2t, 2t + 1)
      // need rows 0..7 on banks {0, 1, 8, 9, 16, 17, 24, 25} apart (SS ≡ 16 mod 32 gives 0, 16):
      // rows shifted by bits 1 and 2 of r, within the row padding.
      const scoreRow = (r: Val<'u32'>) => (c.mma ? r.mul(SS).add(r.shr(1).band(1)).add(r.shr(2).band(1).mul(8)) : r.mul(SS));
      const mS = k.shared('rowMax', 'f32', R), lS = k.shared('rowSum', 'f32', R);
      // Per cache block of the step and row (block-major: a warp's rows are consecutive words): the
      // softmax rescale and the positions folded in.
      const alphaS = k.shared('rowScale', 'f32', R * NB);
      const rowA = k.shared('rowFrom', 'u32', R * NB), rowB = k.shared('rowTo', 'u32', R * NB);
      const lid = k.let('lid', k.localIndex);
      const kvh = k.let('kvh', k.workgroupId.y), z = k.let('z', k.workgroupId.z);
      const t = tileView(k, b.tiles, k.workgroupId.x);
      k.if(z.ge(t.tileChunks), () => k.return());
      const chunk = k.let('chunk', t.cLo.add(z));
      const H = k.let('numHeads', u.numKvHeads.mul(G));
      const hiAll = k.let('hiAll', t.pos0.add(t.nTok));
      const loAll = k.let('loAll', windowStart(k, t.pos0.add(1), u.window));
      const tFrom = k.let('tFrom', max(chunk.mul(t.chunkLen), loAll).div(BS).mul(BS));
      const tTo = k.let('tTo', min(chunk.mul(t.chunkLen).add(t.chunkLen), hiAll));
      // Row r = token i of the tile × query head g of the group.
      const row = (r: Val<'u32'>) => {
        const i = k.let('ri', r.div(G));
        // Locals on first use, in the caller's scope (an unused local is a compiler warning).
        let kvEnd: Val<'u32'> | undefined, lo: Val<'u32'> | undefined;
        return {
          i, g: r.rem(G), valid: i.lt(t.nTok),
          get kvEnd() { return (kvEnd ??= k.let('rEnd', t.pos0.add(i).add(1))); },
          get lo() { return (lo ??= k.let('rLo', windowStart(k, this.kvEnd, u.window))); },
        };
      };
      /** Word offset of word `w` (runtime) within a staged row: each 32-word segment skewed. */
      const wordAt = (w: Val<'u32'>) => (L.skew ? w.add(w.shr(5).mul(L.skew)) : w);

      /** Element d of q for tile row r (clamped to the tile's tokens; callers zero invalid rows). */
      const qAt = (r: ReturnType<typeof row>, d: Val<'u32'>) => b.q.at(k.let('qi', t.qRow0.add(min(r.i, t.nTok.sub(1))).mul(H).add(kvh.mul(G)).add(r.g).mul(D).add(d)));
      if (qS) {
        k.for('e', lid, k.u32(R * D), (e) => {
          const r = row(e.div(D));
          qS.set(e.div(D).mul(QS).add(e.rem(D)), k.select(r.valid, qAt(r, e.rem(D)), k.f32(0)));
        }, W);
      }
      k.if(lid.lt(R), () => { mS.set(lid, -F32_MAX); lS.set(lid, 0); });
      // The scalar path's accumulators: element lid + j·W of the rows (the MMA path keeps its own).
      const acc = c.mma ? undefined : k.privateArray('acc', 'f32', npt);
      if (acc) for (let j = 0; j < npt; j++) acc.set(j, 0);
      const xWords = c.mma ? mmaExchangeWords(D) : 0;
      const mm = c.mma ? mmaAttention(k, {
        c, lid, kS, vS, xS: KT * L.stride >= xWords ? kS : k.shared('exchange', wordT, xWords), sS, alphaS, rowA, rowB, scaleLog2: u.scaleLog2, wordAt, scoreRow,
        rowLive: (r) => r.lt(R).and(r.div(G).lt(t.nTok)),
        qAt: (r, ok, d) => k.select(ok, qAt(row(min(r, k.u32(R - 1))), d), k.f32(0)),
      }) : undefined;
      // Per-warp softmax (c.warpSoftmax): half-warp h of warp w takes row 2w + h (+ 2·warps per
      // pass); its running max and sum live in every lane of the half, across steps.
      const warpSm = c.warpSoftmax && k.caps.subgroups;
      const passes = Math.ceil(R / (2 * (W / 32)));
      // Nothing of it lives through the staging loads (ptxas spilled when the running max and sum
      // stayed in registers across steps): each step the half's first lane reads them from
      // workgroup memory and the half shares them by shuffles; that lane writes them back.
      const sm = warpSm ? Array.from({ length: passes }, (_, ps) => ps) : undefined;
      const smRow = (ps: number) => {
        const rr = k.let(`smRow${ps}`, lid.shr(5).mul(2).add(lid.band(31).shr(4)).add(ps * 2 * (W / 32)));
        return { ok: k.let(`smOk${ps}`, rr.lt(R)), rc: k.let(`smRc${ps}`, min(rr, k.u32(R - 1))), p16: k.let(`smPos${ps}`, lid.band(15)) };
      };
      k.barrier();

      // Stage KT positions from tb of K and/or V into their tiles (zero outside [loAll, min(hiAll,
      // tTo))), a batch of loads issued before their stores; each load's block-table lookup and
      // address serve both caches. Positions past tTo read a clamped, valid address: their
      // block-table entry may not exist.
      const perPos = P / vw; // loads per position
      const total = KT * perPos, perInv = Math.ceil(total / W);
      // At most 4 vector loads (16 words) per cache in flight per invocation: 8 made ptxas spill at head_dim 128.
      const inFlight = 16 / vw;
      const stage = (pairs: [ArrayRef<DType, boolean>, ArrayRef<'u32' | 'f32', true>][], tb: Val<'u32'>, vHi: Val<'u32'>) => {
        for (let j0 = 0; j0 < perInv; j0 += inFlight) {
          const loads: { tt: Val<'u32'>; w: Val<'u32'>; ok: Val<'bool'>; v: Val[] }[] = [];
          for (let j = j0; j < Math.min(perInv, j0 + inFlight); j++) {
            const e = k.let(`le${j}`, (j + 1) * W <= total ? lid.add(j * W) : min(lid.add(j * W), k.u32(total - 1)));
            const tt = k.let(`lt${j}`, e.div(perPos)), w = k.let(`lw${j}`, e.rem(perPos));
            const pos = k.let(`lp${j}`, tb.add(tt));
            const ok = k.let(`lok${j}`, pos.ge(loAll).and(pos.lt(vHi)));
            const posC = k.let(`lc${j}`, min(pos, tTo.sub(1)));
            const blk = k.let(`lb${j}`, b.blockTables.at(t.seq.mul(u.maxBlocksPerSeq).add(posC.div(BS))));
            const at = k.let(`la${j}`, blk.mul(BS).add(posC.rem(BS)).mul(u.numKvHeads).add(kvh).mul(perPos).add(w));
            loads.push({ tt, w, ok, v: pairs.map(([cache], ci) => k.let(`l${'kv'[ci]}${j}`, cache.at(at))) });
          }
          loads.forEach(({ tt, w, ok, v }, i) => {
            const j = j0 + i;
            const store = () => {
              const base = k.let('kvAt', tt.mul(L.stride).add(wordAt(w.mul(vw))));
              pairs.forEach(([, dst], ci) => {
                for (let q = 0; q < vw; q++) {
                  const word = vw > 1 ? v[ci]!.at(q) : v[ci]!;
                  dst.set(q ? base.add(q) : base, k.select(ok, word as Val<'u32' | 'f32'>, f16 ? k.u32(0) : k.f32(0)));
                }
              });
            };
            if ((j + 1) * W <= total) store(); else k.if(lid.add(j * W).lt(total), store);
          });
        }
      };
      const pipe = c.prefetch ? kvPipeline(k, {
        c, W, vw, perPos, total, lid, tFrom, tTo, hiAll, loAll, wordAt, kS, vS,
        kCache: b.kCache, vCache: b.vCache, blockTable: (pos) => b.blockTables.at(t.seq.mul(u.maxBlocksPerSeq).add(pos.div(BS))),
        cacheRow: (blk, pos) => blk.mul(BS).add(pos.rem(BS)).mul(u.numKvHeads).add(kvh),
      }) : undefined;

      k.for('tb', tFrom, tTo, (tb) => {
        const vHi = k.let('vHi', min(min(tb.add(KT), hiAll), tTo));
        const scores = () => {
          if (mm) return mm.scores();
          const qRows = qS!;
          // Scores, base 2: s = (q · k) · scale · log2 e, summed over head_dim in order.
          k.for('e', lid, k.u32(R * KT), (e) => {
            const r = row(e.div(KT));
            const pos = k.let('spos', tb.add(e.rem(KT)));
            k.if(r.valid.and(pos.ge(r.lo)).and(pos.lt(r.kvEnd)).and(pos.lt(tTo)), () => {
              const qBase = k.let('qBase', e.div(KT).mul(QS)), kBase = k.let('kBase', e.rem(KT).mul(L.stride));
              const dot = k.var('dot', 'f32', 0);
              // A constant trip count: nvcc unrolls it and folds the skew into each offset.
              k.for('c', k.u32(0), k.u32(P), (cw) => {
                const word = kS.at(kBase.add(wordAt(cw)));
                if (f16) {
                  const h = k.let('kh', k.unpack2x16float(word as Val<'u32'>));
                  const qi = k.let('qw', qBase.add(cw.mul(2)));
                  dot.set(dot.add(qRows.at(qi).mul(h.x)));
                  dot.set(dot.add(qRows.at(qi.add(1)).mul(h.y)));
                } else {
                  dot.set(dot.add(qRows.at(qBase.add(cw)).mul(word as Val<'f32'>)));
                }
              });
              sS.set(e.div(KT).mul(SS).add(e.rem(KT)), dot.mul(u.scaleLog2));
            });
          }, W);
        };
        const softmax = () => {
          // Online softmax, one cache block at a time (the same f32 operations whatever KT is), over
          // the row's positions in the block: per warp (lanes = positions) or one invocation per row.
          if (sm) {
            const half = (v: Val<'f32'>, op: 'max' | 'add') => {
              let x = v;
              for (const m of [8, 4, 2, 1]) {
                const o = k.subgroupShuffleXor(x, m);
                x = k.let(`sm${op}${m}`, op === 'max' ? max(x, o) : x.add(o));
              }
              return x;
            };
            sm.forEach((ps) => {
              const { ok, rc, p16 } = smRow(ps);
              const r = row(rc);
              const first = k.let('wfirst', p16.eq(0));
              // The row's max and sum so far, read by the half's first lane and shared (max of the
              // max with −F32_MAX and sum of the sum with zeros: exact). Halves past the rows
              // (clamped to the last) read nothing: that row's own half writes it meanwhile.
              const m = k.var('wm', 'f32', -F32_MAX), l = k.var('wl', 'f32', 0);
              k.if(first.and(ok), () => { m.set(mS.at(rc)); l.set(lS.at(rc)); });
              m.set(half(m, 'max'));
              l.set(half(l, 'add'));
              // A loop, not unrolled: the shuffles' live values stay few (ptxas spilled when unrolled).
              k.for('wnb', k.u32(0), k.u32(NB), (nb) => {
                const bt = k.let('wbt', tb.add(nb.mul(BS)));
                const a = k.let('wa', max(bt, r.lo)), e = k.let('wEnd', min(min(bt.add(BS), r.kvEnd), tTo));
                const pos = k.let('wpos', bt.add(p16));
                const live = k.let('wlive', ok.and(r.valid).and(pos.ge(a)).and(pos.lt(e)));
                const at = k.let('wat', scoreRow(rc).add(nb.mul(BS)).add(p16));
                const s = k.var('ws', 'f32', -F32_MAX);
                k.if(live, () => s.set(sS.at(at)));
                const mNew = k.let('wmNew', max(m, half(s, 'max')));
                const alpha = k.let('walpha', k.select(mNew.eq(m), k.f32(1), exp2(m.sub(mNew))));
                const pv = k.var('wpv', 'f32', 0);
                k.if(live, () => { pv.set(exp2(s.sub(mNew))); sS.set(at, pv); });
                // Every lane of the half holds the same sum (x + y = y + x at each butterfly step).
                l.set(l.mul(alpha).add(half(pv, 'add')));
                m.set(mNew);
                k.if(first.and(ok), () => {
                  const slot = k.let('wslot', rc.add(nb.mul(R)));
                  const any = k.let('wany', r.valid.and(a.lt(e)));
                  alphaS.set(slot, alpha);
                  rowA.set(slot, k.select(any, a.sub(bt), k.u32(0)));
                  rowB.set(slot, k.select(any, e.sub(bt), k.u32(0)));
                });
              });
              k.if(first.and(ok), () => { mS.set(rc, m); lS.set(rc, l); });
            });
          } else k.if(lid.lt(R), () => {
            const r = row(lid);
            for (let nb = 0; nb < NB; nb++) {
              const slot = k.let(`slot${nb}`, nb ? lid.add(nb * R) : lid);
              const bt = k.let(`bt${nb}`, nb ? tb.add(nb * BS) : tb);
              const a = k.let('a', max(bt, r.lo)), e = k.let('bEnd', min(min(bt.add(BS), r.kvEnd), tTo));
              k.if(r.valid.and(a.lt(e)), () => {
                const sBase = k.let('sBase', scoreRow(lid).add(nb * BS));
                const from = k.let('from', a.sub(bt)), to = k.let('to', e.sub(bt));
                const mx = k.var('mx', 'f32', -F32_MAX);
                k.for('p', from, to, (p) => mx.set(max(mx, sS.at(sBase.add(p)))));
                const mOld = k.let('mOld', mS.at(lid));
                const mNew = k.let('mNew', max(mOld, mx));
                const alpha = k.let('alpha', k.select(mNew.eq(mOld), k.f32(1), exp2(mOld.sub(mNew))));
                const sum = k.var('psum', 'f32', 0);
                k.for('p', from, to, (p) => {
                  const pv = k.let('pv', exp2(sS.at(sBase.add(p)).sub(mNew)));
                  sS.set(sBase.add(p), pv);
                  sum.set(sum.add(pv));
                });
                lS.set(lid, lS.at(lid).mul(alpha).add(sum));
                mS.set(lid, mNew);
                alphaS.set(slot, alpha);
                rowA.set(slot, from);
                rowB.set(slot, to);
              }, () => { rowA.set(slot, 0); rowB.set(slot, 0); });
            }
          });
        };
        const pv = () => {
          if (mm) return mm.pv();
          // Per cache block in order: acc = acc · alpha + Σ_t p_t · v_t over the row's positions.
          for (let j = 0; j < npt; j++) {
            const e = k.let(`pe${j}`, lid.add(j * W));
            const body = () => {
              const r = k.let('pr', e.div(D)), d = k.let('pd', e.rem(D));
              const vOff = k.let('pvo', wordAt(f16 ? d.shr(1) : d));
              const hi = f16 ? k.let('phi', d.band(1).eq(1)) : undefined;
              for (let nb = 0; nb < NB; nb++) {
                const slot = k.let(`ps${nb}`, nb ? r.add(nb * R) : r);
                const a = k.let('pa', rowA.at(slot)), bEnd = k.let('pb', rowB.at(slot));
                k.if(a.lt(bEnd), () => {
                  const s = k.var('pvs', 'f32', 0);
                  const sBase = k.let('psb', r.mul(SS).add(nb * BS)), vBase = k.let('pvb', nb ? vOff.add(nb * BS * L.stride) : vOff);
                  k.for('tt', a, bEnd, (tt) => {
                    const word = vS.at(tt.mul(L.stride).add(vBase));
                    let v: Val<'f32'>;
                    if (hi) {
                      const h = k.let('vh', k.unpack2x16float(word as Val<'u32'>));
                      v = k.select(hi, h.y, h.x);
                    } else v = word as Val<'f32'>;
                    s.set(s.add(sS.at(sBase.add(tt)).mul(v)));
                  });
                  acc!.set(j, acc!.at(j).mul(alphaS.at(slot)).add(s));
                });
              }
            };
            if ((j + 1) * W <= R * D) body(); else k.if(e.lt(R * D), body);
          }
        };
        if (pipe) pipe.step(tb, vHi, scores, softmax, pv);
        else {
          stage(c.splitKv ? [[b.kCache, kS], [b.vCache, vS]] : [[b.kCache, kS]], tb, vHi);
          k.barrier();
          scores();
          k.barrier();
          softmax();
          k.barrier();
          if (!c.splitKv) {
            stage([[b.vCache, vS]], tb, vHi);
            k.barrier();
          }
          pv();
          k.barrier();
        }
      }, KT);

      // Rows whose whole range is this one chunk finish here; the others leave partials.
      const rowChunks = (r: ReturnType<typeof row>) => ({
        first: k.let('cFirst', r.lo.div(t.chunkLen)), last: k.let('cLast', r.kvEnd.sub(1).div(t.chunkLen)),
      });
      // Partials chunk-major within the tile's region: a workgroup's rows are adjacent (coalesced).
      const partRow = (r: ReturnType<typeof row>) => t.partBase.add(z.mul(t.nTok.mul(H))).add(r.i.mul(H).add(kvh.mul(G)).add(r.g));
      /** Tile row rr's element d: the output where its range is this chunk alone, else a partial. */
      const writeOut = (rr: Val<'u32'>, d: Val<'u32'>, v: Val<'f32'>) => {
        const r = row(rr);
        const rc = rowChunks(r);
        k.if(r.valid.and(chunk.ge(rc.first)).and(chunk.le(rc.last)), () => {
          k.if(rc.first.eq(rc.last), () => {
            const oi = t.qRow0.add(r.i).mul(H).add(kvh.mul(G)).add(r.g).mul(D).add(d);
            b.out.set(oi, v.div(lS.at(rr)));
          }, () => b.partAcc.set(partRow(r).mul(D).add(d), v));
        });
      };
      if (mm) mm.outputs(writeOut);
      else {
        for (let j = 0; j < npt; j++) {
          const e = k.let(`oe${j}`, lid.add(j * W));
          const body = () => writeOut(e.div(D), e.rem(D), acc!.at(j));
          if ((j + 1) * W <= R * D) body(); else k.if(e.lt(R * D), body);
        }
      }
      k.if(lid.lt(R), () => {
        const r = row(lid);
        const rc = rowChunks(r);
        k.if(r.valid.and(chunk.ge(rc.first)).and(chunk.le(rc.last)).and(rc.first.ne(rc.last)), () => {
          b.partMl.set(partRow(r).mul(2), mS.at(lid));
          b.partMl.set(partRow(r).mul(2).add(1), lS.at(lid));
        });
      });
      if (b.tickets) {
        // Last-arrival merge (the merge kernel's arithmetic): every invocation fences its partials,
        // invocation 0 takes the (tile, KV head)'s ticket, and the last of its chunks merges.
        const tickets = b.tickets.writableRef();
        const lastS = rowA; // free after the KV loop: its first word carries the verdict
        k.if(t.tileChunks.gt(1), () => {
          k.deviceFence();
          k.barrier();
          k.if(lid.eq(0), () => {
            const last = k.lastArrival(tickets, k.workgroupId.x.mul(u.numKvHeads).add(kvh), t.tileChunks);
            lastS.set(0, k.select(last, k.u32(1), k.u32(0)));
          });
          k.barrier();
          k.if(lastS.at(0).eq(1), () => {
            k.for('mg', k.u32(0), k.u32(G), (g) => mergeHead(k, D, b, t, k.let('mh', kvh.mul(G).add(g)), H, u.window, lid, W));
          });
        });
      }
    },
  });
}

/** Pass 2: per (tile, query head), merge each multi-chunk row's partials in chunk order. */
export function attentionMerge(c: AttentionConfig) {
  const { headDim: D, chunkSize: C } = c;
  const W = 64;
  return kernel({
    name: 'attentionMerge',
    params: { headDim: D, groupSize: c.groupSize, chunkSize: C, workgroupSize: W },
    caps: c.caps,
    workgroupSize: W,
    bindings: {
      tiles: storage('u32', 'read', { shape: `[numTiles, ${TILE_WORDS}]` }),
      partAcc: storage('f32', 'read', { shape: `[partRows, ${D}]` }),
      partMl: storage('f32', 'read', { shape: '[partRows, 2]' }),
      out: storage('f32', 'read_write', { shape: headsShape(c) }),
    },
    uniforms: { numTokens: 'u32', numKvHeads: 'u32', numTiles: 'u32', partRows: 'u32', window: 'u32' },
    grid: `[numTiles, numKvHeads * ${c.groupSize}]`,
    body(k, b, u) {
      const t = tileView(k, b.tiles, k.workgroupId.x, ['seq']);
      const h = k.let('h', k.workgroupId.y);
      const H = k.let('numHeads', u.numKvHeads.mul(c.groupSize));
      k.if(t.tileChunks.gt(1), () => mergeHead(k, D, b, t, h, H, u.window, k.localIndex, W));
    },
  });
}

/**
 * Query head h's multi-chunk rows of a tile: the partials of its chunks merged in chunk order,
 * elements from `from` in steps of `step` (the merge kernel, or the last chunk's workgroup).
 */
function mergeHead(k: KernelBuilder, D: number,
  b: { partAcc: ArrayRef<'f32', boolean>; partMl: ArrayRef<'f32', boolean>; out: ArrayRef<'f32', true> },
  t: TileView, h: Val<'u32'>, H: Val<'u32'>, window: Val<'u32'>, from: Val<'u32'>, step: number): void {
  k.for('e', from, t.nTok.mul(D), (e) => {
    const i = k.let('i', e.div(D)), d = k.let('d', e.rem(D));
    const kvEnd = k.let('kvEnd', t.pos0.add(i).add(1));
    const first = k.let('cFirst', windowStart(k, kvEnd, window).div(t.chunkLen)), last = k.let('cLast', kvEnd.sub(1).div(t.chunkLen));
    k.if(first.ne(last), () => {
      const base = k.let('base', t.partBase.add(i.mul(H).add(h)));
      const slot = (ch: Val<'u32'>) => base.add(ch.sub(t.cLo).mul(t.nTok.mul(H)));
      const m = k.var('m', 'f32', -F32_MAX);
      k.for('c', first, last.add(1), (ch) => m.set(max(m, b.partMl.at(slot(ch).mul(2)))));
      const l = k.var('l', 'f32', 0), a = k.var('accSum', 'f32', 0);
      k.for('c', first, last.add(1), (ch) => {
        const mc = k.let('mc', b.partMl.at(slot(ch).mul(2)));
        const w = k.let('w', k.select(mc.eq(m), k.f32(1), exp2(mc.sub(m))));
        l.set(l.add(b.partMl.at(slot(ch).mul(2).add(1)).mul(w)));
        a.set(a.add(b.partAcc.at(slot(ch).mul(D).add(d)).mul(w)));
      });
      b.out.set(t.qRow0.add(i).mul(H).add(h).mul(D).add(d), a.div(l));
    });
  }, step);
}


/**
 * The op. Bindings: q, kCache, vCache, blockTables (u32), tiles (u32), out. Sizes: AttentionSizes,
 * as src/ops/attention.ts `prepareAttention` computes them from the batch description.
 */
export function pagedAttention(p: PagedAttentionParams) {
  const c = attentionConfig(p);
  const partial = attentionPartial(c), merge = attentionMerge(c);
  const o = op('pagedAttention', attentionOpBindings(c.kvDtype), (s: AttentionSizes): Plan => {
    checkAttentionSizes('pagedAttention', s, ['numTokens', 'numSeqs', 'numKvHeads', 'numBlocks', 'maxBlocksPerSeq', 'numTiles', 'maxTileChunks']);
    if (!Number.isInteger(s.partRows) || s.partRows < 0) throw new Error(`op 'pagedAttention': size partRows = ${s.partRows} must be a non-negative integer`);
    const partRows = Math.max(1, s.partRows);
    const uni = { ...s, partRows, scaleLog2: s.scale * Math.LOG2E };
    const fold = !!c.caps.deviceFence; // the merge runs in the partial kernel's last arrivals
    const steps: Plan['steps'] = [{
      kernel: partial,
      bind: {
        q: 'q', kCache: 'kCache', vCache: 'vCache', blockTables: 'blockTables', tiles: 'tiles', partAcc: 'partAcc', partMl: 'partMl', out: 'out',
        ...(fold ? { tickets: 'tickets' } : {}),
      },
      uniforms: {
        numTokens: s.numTokens, numSeqs: s.numSeqs, numKvHeads: s.numKvHeads, numBlocks: s.numBlocks, maxBlocksPerSeq: s.maxBlocksPerSeq,
        numTiles: s.numTiles, maxTileChunks: s.maxTileChunks, partRows, window: s.window, scaleLog2: uni.scaleLog2,
      },
    }];
    if (s.maxTileChunks > 1 && !fold) {
      steps.push({
        kernel: merge,
        bind: { tiles: 'tiles', partAcc: 'partAcc', partMl: 'partMl', out: 'out' },
        uniforms: { numTokens: s.numTokens, numKvHeads: s.numKvHeads, numTiles: s.numTiles, partRows, window: s.window },
      });
    }
    const temps: Plan['temps'] = { partAcc: { t: 'f32', length: partRows * c.headDim }, partMl: { t: 'f32', length: partRows * 2 } };
    if (fold) temps.tickets = { t: 'u32', length: s.numTiles * s.numKvHeads };
    return { temps, steps };
  });
  return Object.assign(o, { kernels: [partial, merge], config: c });
}

// ---- registry entries (codegen/kernels/index.ts) -----------------------------------------------
/** Llama-3-8B-like heads (head_dim 128, GQA 4:1) with f32 and f16 KV; build() takes any params. */
export const ATTENTION_FAMILIES: KernelFamily[] = [
  {
    family: 'pagedAttention',
    variants: (caps) => (['f32', 'f16'] as const).flatMap((kvDtype) => {
      const [partial, merge] = pagedAttention({ headDim: 128, groupSize: 4, kvDtype, caps }).kernels;
      const out = [{ label: `attentionPartial_d128_g4_${kvDtype}`, kernel: partial! }];
      return kvDtype === 'f32' ? [...out, { label: 'attentionMerge_d128_g4', kernel: merge! }] : out;
    }),
    build: (p, caps) => pagedAttention({
      headDim: num(p, 'headDim'), groupSize: num(p, 'groupSize'), kvDtype: oneOf(p, 'kvDtype', ['f32', 'f16'], 'f32'),
      ...optionalNums(p, ['blockSize', 'chunkSize', 'tileTokens', 'kvTile', 'workgroupSize']), vecLoads: optionalBool(p, 'vecLoads'), prefetch: optionalBool(p, 'prefetch'), mma: optionalBool(p, 'mma'), caps,
    }).kernels[0]!,
  },
  {
    family: 'kvAppend',
    variants: (caps) => (['f32', 'f16'] as const).map((kvDtype) => ({ label: `kvAppend_d128_${kvDtype}`, kernel: kvAppendKernel({ headDim: 128, kvDtype, caps }) })),
    build: (p, caps) => kvAppendKernel({
      headDim: num(p, 'headDim'), kvDtype: oneOf(p, 'kvDtype', ['f32', 'f16'], 'f32'), ...optionalNums(p, ['blockSize', 'workgroupSize']), caps,
    }),
  },
];
