// Sampling over rows of logits [rows, V]: temperature, top-k, top-p, min-p, seeded sampling,
// argmax and log-softmax. The vocabulary is cut into segments of `wg·items` entries, one
// workgroup per (segment, row), so V up to 256k spreads over many workgroups; per-segment
// partials are merged in segment order by the next launch, never by waiting on another
// workgroup.
//
// Exactness rules that the acceptance kernels share (see `segmentSearch`):
// - a draw uses u from (seed, position, stream) (random.ts), never anything about the batch;
// - sampling from weights w compares u·Σw against prefix sums instead of normalising, so the
//   only roundings are IEEE adds and one multiply, identical on every backend;
// - a token of zero weight (masked) can never be drawn.
import { exp, kernel, max, min, op, storage } from '../dsl/index.js';
import type { ArrayRef, Caps, KernelBuilder, Plan, Val, Var } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { randomUniform } from './random.js';
import { SLOTS, THRESHOLD_PASSES, samplingThreshold, samplingThresholdPass } from './samplingThreshold.js';

export { samplingThreshold, samplingThresholdPass, THRESHOLD_PASSES } from './samplingThreshold.js';

/** "No index" in argmax partials and token outputs. */
export const NO_TOKEN = 0xffffffff;
/** Largest finite f32: the starting value where −∞ would be needed (literals must be finite). */
export const F32_MAX = 3.4028234663852886e38;

export interface SegmentParams {
  /** Invocations per workgroup: a power of two. */
  workgroupSize?: number;
  /** Consecutive vocabulary entries each invocation owns; segment = workgroupSize · items. */
  items?: number;
  caps?: Caps;
}
export interface Segments {
  wg: number; items: number; seg: number; caps: Caps;
  /** loadWeights/segmentSearch ownership in chunks of `chunk` entries: invocation t owns entries
   *  chunk·(⌊j/chunk⌋·wg + t) + j mod chunk of its segment (1: t + j·wg; 4: one 16-byte vector per
   *  chunk), so neighbouring invocations read neighbouring words. Absent: [t·items, (t+1)·items). */
  chunk?: 1 | 4;
}
export function segments(p: SegmentParams): Segments {
  const wg = p.workgroupSize ?? 256, items = p.items ?? 16;
  if (!Number.isInteger(wg) || wg < 1 || wg & (wg - 1)) throw new Error(`sampling: workgroupSize ${wg} is not a power of two`);
  if (!Number.isInteger(items) || items < 1) throw new Error(`sampling: items ${items} is not a positive integer`);
  return { wg, items, seg: wg * items, caps: p.caps ?? BASELINE_CAPS };
}
export const segmentCount = (g: Segments, vocab: number) => Math.ceil(vocab / g.seg);

// ---- workgroup macros -------------------------------------------------------------------------
/** (v, i) beats (a, ai): larger value, ties to the lower index; NO_TOKEN loses to anything. */
export function beats(k: KernelBuilder, v: Val<'f32'>, i: Val<'u32'>, a: Val<'f32'>, ai: Val<'u32'>): Val<'bool'> {
  return i.ne(NO_TOKEN).and(ai.eq(NO_TOKEN).or(v.gt(a)).or(v.eq(a).and(i.lt(ai))));
}

/**
 * This invocation's best (value, first index) over its strided items of segment `seg` of one row
 * (`at(i)` reads element i of the row): neighbouring invocations read neighbouring words.
 */
export function segmentScan(k: KernelBuilder, g: Segments, seg: Val<'u32'>, vocab: Val<'u32'>,
  at: (i: Val<'u32'>) => Val<'f32'>): [Var<'f32'>, Var<'u32'>] {
  const best = k.var('best', 'f32', -F32_MAX);
  const arg = k.var('arg', 'u32', NO_TOKEN);
  for (let j = 0; j < g.items; j++) {
    const i = k.let(`i${j}`, seg.mul(g.seg).add(k.localIndex).add(j * g.wg));
    k.if(i.lt(vocab), () => {
      const v = k.let(`v${j}`, at(i));
      k.if(beats(k, v, i, best, arg), () => { best.set(v); arg.set(i); });
    });
  }
  return [best, arg];
}

/** Argmax over the workgroup (shared tree; the rule is order-free, so any tree gives the same
 *  pair). Every invocation must call it; all get the winner. */
export function workgroupArgmax(k: KernelBuilder, v: Val<'f32'>, i: Val<'u32'>, sv: ArrayRef<'f32', true>,
  si: ArrayRef<'u32', true>, wg: number, tag: string, wantIndex = true): [Val<'f32'>, Val<'u32'>] {
  const lid = k.localIndex;
  sv.set(lid, v);
  si.set(lid, i);
  k.barrier();
  for (let s = wg >> 1; s >= 1; s >>= 1) {
    k.if(lid.lt(s), () => {
      const bv = k.let(`${tag}V${s}`, sv.at(lid.add(s)));
      const bi = k.let(`${tag}I${s}`, si.at(lid.add(s)));
      k.if(beats(k, bv, bi, sv.at(lid), si.at(lid)), () => { sv.set(lid, bv); si.set(lid, bi); });
    });
    k.barrier();
  }
  const rv = k.let(`${tag}Best`, sv.at(0));
  const ri = wantIndex ? k.let(`${tag}Arg`, si.at(0)) : i;
  k.barrier();
  return [rv, ri];
}

/** Inclusive prefix sums of one value per invocation (Hillis–Steele in a fixed pattern, so the
 *  roundings are the same in every launch). Returns [exclusive prefix, segment total]. */
export function workgroupScan(k: KernelBuilder, v: Val<'f32'>, a: ArrayRef<'f32', true>, b: ArrayRef<'f32', true>,
  wg: number, tag: string, want: 'excl' | 'total' | 'both' = 'both'): [Val<'f32'>, Val<'f32'>] {
  const lid = k.localIndex;
  a.set(lid, v);
  k.barrier();
  let src = a, dst = b;
  for (let off = 1; off < wg; off <<= 1) {
    const s = src, d = dst;
    k.if(lid.ge(off), () => d.set(lid, s.at(lid).add(s.at(lid.sub(off)))), () => d.set(lid, s.at(lid)));
    k.barrier();
    [src, dst] = [dst, src];
  }
  // Only what the caller uses becomes a local (an unused local is a compiler warning).
  const zero = k.f32(0);
  const excl = want === 'total' ? zero : k.let(`${tag}Excl`, k.select(lid.gt(0), src.at(max(lid, 1).sub(1)), zero));
  const total = want === 'excl' ? zero : k.let(`${tag}Total`, src.at(wg - 1));
  k.barrier();
  return [excl, total];
}

/** Offset of an invocation's j-th entry from its first (chunked ownership: see Segments.chunk). */
export function ownedOffset(g: Segments, j: number): number {
  if (!g.chunk) return j;
  return g.chunk * Math.floor(j / g.chunk) * g.wg + (j % g.chunk);
}

/** Segment-local weights: invocation t owns entries [t·items, (t+1)·items) of the segment (or in
 *  chunks, g.chunk), held in registers, summed in j order. `weight(i, inRange)` gives the
 *  weight of vocabulary entry i (0 outside V). */
export function loadWeights(k: KernelBuilder, g: Segments, segBase: Val<'u32'>, vocab: Val<'u32'>,
  weight: (i: Val<'u32'>, inRange: Val<'bool'>) => Val<'f32'>, tag: string, keep?: true,
  active?: Val<'bool'>): { w: ArrayRef<'f32', true>; first: Val<'u32'>; sum: Val<'f32'> };
export function loadWeights(k: KernelBuilder, g: Segments, segBase: Val<'u32'>, vocab: Val<'u32'>,
  weight: (i: Val<'u32'>, inRange: Val<'bool'>) => Val<'f32'>, tag: string, keep: false,
  active?: Val<'bool'>): { w: null; first: Val<'u32'>; sum: Val<'f32'> };
export function loadWeights(k: KernelBuilder, g: Segments, segBase: Val<'u32'>, vocab: Val<'u32'>,
  weight: (i: Val<'u32'>, inRange: Val<'bool'>) => Val<'f32'>, tag: string, keep = true,
  active?: Val<'bool'>): { w: ArrayRef<'f32', true> | null; first: Val<'u32'>; sum: Val<'f32'> } {
  // keep = false: only the sum is wanted, the weights are not held. active: where false, nothing
  // is read and every weight is 0 (a workgroup whose result will not be used saves the traffic).
  const w = keep ? k.privateArray(`${tag}W`, 'f32', g.items) : null;
  const first = k.let(`${tag}First`, segBase.add(k.localIndex.mul(g.chunk ?? g.items)));
  const sum = k.var(`${tag}Sum`, 'f32', 0);
  for (let j = 0; j < g.items; j++) {
    const i = k.let(`${tag}I${j}`, first.add(ownedOffset(g, j)));
    let x: Val<'f32'>;
    if (active) {
      const v = k.var(`${tag}X${j}`, 'f32', 0);
      k.if(active, () => v.set(weight(i, i.lt(vocab))));
      x = v;
    } else x = k.let(`${tag}X${j}`, weight(i, i.lt(vocab)));
    w?.set(j, x);
    sum.set(sum.add(x)); // sequential within the invocation: part of the fixed order
  }
  return { w, first, sum };
}

/**
 * Pick the entry of this segment where the running sum of weights first exceeds `target`.
 * The running sum at entry i is fl(segOffset + fl(excl + r_i)), r_i the invocation's own running
 * sum: monotone, and ending at the segment total, so exactly one segment (segOffset ≤ target <
 * segOffset + total) holds the crossing. Only entries of positive weight qualify; a rounding
 * corner case without any falls back to the last positive entry. Returns the chosen index (valid
 * in the one segment whose caller knows it holds the crossing). Chunked ownership: "first" and
 * "last" are in the summation order (t, j), so the atomics compare ranks t·items + j, mapped back to
 * the entry at the end.
 */
export function segmentSearch(k: KernelBuilder, g: Segments, ws: { w: ArrayRef<'f32', true>; first: Val<'u32'> },
  excl: Val<'f32'>, segOffset: Val<'f32'>, target: Val<'f32'>, cand: ArrayRef<'u32', true>, tag: string): Val<'u32'> {
  const lid = k.localIndex;
  k.if(lid.eq(0), () => { k.atomicStore(cand, 0, NO_TOKEN); k.atomicStore(cand, 1, 0); });
  k.barrier();
  const run = k.var(`${tag}Run`, 'f32', 0);
  const found = k.var(`${tag}Found`, 'bool', false);
  for (let j = 0; j < g.items; j++) {
    const x = k.let(`${tag}W${j}`, ws.w.at(j));
    run.set(run.add(x));
    const pos = k.let(`${tag}Pos${j}`, x.gt(0));
    const i = g.chunk ? lid.mul(g.items).add(j) : ws.first.add(j);
    k.if(pos.and(found.not()).and(segOffset.add(excl.add(run)).gt(target)), () => {
      k.atomicMin(cand, 0, i);
      k.assign(found, true);
    });
    k.if(pos, () => { k.atomicMax(cand, 1, i.add(1)); });
  }
  k.barrier();
  const c = k.let(`${tag}Cand`, k.atomicLoad(cand, 0));
  const last = k.let(`${tag}Last`, k.atomicLoad(cand, 1));
  k.barrier();
  const pick = k.select(c.ne(NO_TOKEN), c, max(last, 1).sub(1));
  if (!g.chunk) return k.let(`${tag}Pick`, pick);
  const rank = k.let(`${tag}Rank`, pick);
  if (g.chunk === 1) return k.let(`${tag}Pick`, ws.first.sub(lid).add(rank.rem(g.items).mul(g.wg)).add(rank.div(g.items)));
  const j = k.let(`${tag}J`, rank.rem(g.items));
  const chunkIndex = j.div(g.chunk).mul(g.wg).add(rank.div(g.items));
  return k.let(`${tag}Pick`, ws.first.sub(lid.mul(g.chunk)).add(chunkIndex.mul(g.chunk)).add(j.rem(g.chunk)));
}

/** Thread 0 sums partials [base, base + n) in order; returns [sum of the first `upTo`, total]. */
export function mergeSums(k: KernelBuilder, part: ArrayRef<'f32', boolean>, base: Val<'u32'>, n: Val<'u32'>,
  upTo: Val<'u32'>, tag: string): [Val<'f32'>, Val<'f32'>] {
  const before = k.var(`${tag}Before`, 'f32', 0);
  const total = k.var(`${tag}Total`, 'f32', 0);
  k.for(`${tag}S`, k.u32(0), n, (s) => {
    k.if(s.eq(upTo), () => before.set(total));
    total.set(total.add(part.at(base.add(s))));
  });
  return [before, total];
}

/**
 * x is NaN or +Inf, by its bits (WGSL may assume floats are finite, so no x != x). −Inf stays
 * legal: it masks a token (probability 0).
 */
export function nanOrPosInf(k: KernelBuilder, x: Val<'f32'>): Val<'bool'> {
  const bits = k.bitcast('u32', x);
  return bits.band(0x7fffffff).ge(0x7f800000).and(bits.ne(0xff800000));
}

// ---- kernels ----------------------------------------------------------------------------------

/** Per (segment, row): max and first argmax of x. */
export function segmentArgmax(g: Segments) {
  return kernel({
    name: 'segmentArgmax', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[rows, vocab]' }),
      partMax: storage('f32', 'read_write', { shape: '[rows, segments]' }),
      partArg: storage('u32', 'read_write', { shape: '[rows, segments]' }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[segments, rows]',
    body(k, { x, partMax, partArg }, { vocab, segments: nseg }) {
      const sv = k.shared('sv', 'f32', g.wg), si = k.shared('si', 'u32', g.wg);
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      const [best, arg] = segmentScan(k, g, seg, vocab, (i) => x.at(rowBase.add(i)));
      const [bv, bi] = workgroupArgmax(k, best, arg, sv, si, g.wg, 'am');
      k.if(k.localIndex.eq(0), () => {
        partMax.set(row.mul(nseg).add(seg), bv);
        partArg.set(row.mul(nseg).add(seg), bi);
      });
    },
  });
}

/** Thread-0 merge of a row's argmax partials, in segment order. */
function mergeArgmax(k: KernelBuilder, partMax: ArrayRef<'f32', boolean>, partArg: ArrayRef<'u32', boolean>,
  base: Val<'u32'>, n: Val<'u32'>): [Val<'f32'>, Val<'u32'>] {
  const best = k.var('mBest', 'f32', -F32_MAX);
  const arg = k.var('mArg', 'u32', NO_TOKEN);
  k.for('ms', k.u32(0), n, (s) => {
    const v = k.let('mv', partMax.at(base.add(s))), i = k.let('mi', partArg.at(base.add(s)));
    k.if(beats(k, v, i, best, arg), () => { best.set(v); arg.set(i); });
  });
  return [best, arg];
}

/** tokens[row] = argmax over the row's partials. One invocation per row. */
export function argmaxMerge(g: Segments) {
  const wg = 64;
  return kernel({
    name: 'argmaxMerge', params: {}, caps: g.caps, workgroupSize: wg,
    bindings: {
      partMax: storage('f32', 'read', { shape: '[rows, segments]' }),
      partArg: storage('u32', 'read', { shape: '[rows, segments]' }),
      tokens: storage('u32', 'read_write', { shape: '[rows]' }),
    },
    uniforms: { rows: 'u32', segments: 'u32' },
    grid: `[ceil(rows / ${wg})]`,
    body(k, { partMax, partArg, tokens }, { rows, segments: nseg }) {
      const row = k.let('row', k.globalId.x);
      k.if(row.lt(rows), () => {
        const [, arg] = mergeArgmax(k, partMax, partArg, row.mul(nseg), nseg);
        tokens.set(row, arg);
      });
    },
  });
}

/**
 * Per (segment, row): e_i = exp((x_i − max)·invT) into `probs` (unnormalised; exactly 1 at the
 * maximum), or a one-hot at the argmax for greedy rows (invT = 0), and the segment's sum.
 * rowParams[row] = (invTemperature, topP, minP, 0).
 */
export function samplingExp(g: Segments) {
  return kernel({
    name: 'samplingExp', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      logits: storage('f32', 'read', { shape: '[rows, vocab]' }),
      rowParams: storage('f32', 'read', { shape: '[rows, 4]' }),
      partMax: storage('f32', 'read', { shape: '[rows, segments]' }),
      partArg: storage('u32', 'read', { shape: '[rows, segments]' }),
      probs: storage('f32', 'read_write', { shape: '[rows, vocab]' }),
      partSum: storage('f32', 'read_write', { shape: '[rows, segments]' }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[segments, rows]',
    body(k, { logits, rowParams, partMax, partArg, probs, partSum }, { vocab, segments: nseg }) {
      const sa = k.shared('scanA', 'f32', g.wg), sb = k.shared('scanB', 'f32', g.wg);
      const shM = k.shared('rowMax', 'f32', 1), shA = k.shared('rowArg', 'u32', 1);
      const badFlag = k.shared('nonFinite', 'u32', 1, { atomic: true });
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      k.if(k.localIndex.eq(0), () => {
        const [m, a] = mergeArgmax(k, partMax, partArg, row.mul(nseg), nseg);
        shM.set(0, m);
        shA.set(0, a);
        k.atomicStore(badFlag, 0, 0);
      });
      k.barrier();
      const invT = k.let('invT', rowParams.at(row.mul(4)));
      const greedy = k.let('greedy', invT.eq(0));
      const top = k.let('top', shM.at(0).mul(invT));
      const arg = k.let('arg', shA.at(0));
      const bad = k.var('bad', 'bool', false);
      const ws = loadWeights(k, g, seg.mul(g.seg), vocab, (i, ok) => {
        const x = k.let('x', logits.at(rowBase.add(min(i, vocab.sub(1)))));
        k.if(ok.and(nanOrPosInf(k, x)), () => k.assign(bad, true));
        const s = k.let('s', x.mul(invT));
        const e = k.select(greedy, k.select(i.eq(arg), k.f32(1), 0), k.select(s.eq(top), k.f32(1), exp(s.sub(top))));
        return k.select(ok, e, 0);
      }, 'e');
      for (let j = 0; j < g.items; j++) {
        const i = ws.first.add(j);
        k.if(i.lt(vocab), () => probs.set(rowBase.add(i), ws.w.at(j)));
      }
      k.if(bad, () => { k.atomicMax(badFlag, 0, 1); });
      const [, total] = workgroupScan(k, ws.sum, sa, sb, g.wg, 'sum', 'total');
      // A NaN or +Inf logit marks the segment's sum −1 (sums of weights are never negative).
      k.if(k.localIndex.eq(0), () => partSum.set(row.mul(nseg).add(seg), k.select(k.atomicLoad(badFlag, 0).ne(0), k.f32(-1), total)));
    },
  });
}

/** Zero the entries below the row's threshold (in place) and re-sum each segment. */
export function samplingMask(g: Segments) {
  return kernel({
    name: 'samplingMask', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      probs: storage('f32', 'read_write', { shape: '[rows, vocab]' }),
      threshold: storage('u32', 'read', { shape: '[rows]' }),
      partSum: storage('f32', 'read_write', { shape: '[rows, segments]' }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[segments, rows]',
    body(k, { probs, threshold, partSum }, { vocab, segments: nseg }) {
      const sa = k.shared('scanA', 'f32', g.wg), sb = k.shared('scanB', 'f32', g.wg);
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      const tau = k.let('tau', threshold.at(row));
      const flagged = k.let('flagged', partSum.at(row.mul(nseg).add(seg)).lt(0));
      const ws = loadWeights(k, g, seg.mul(g.seg), vocab, (i, ok) => {
        const e = k.let('e', probs.at(rowBase.add(min(i, vocab.sub(1)))));
        return k.select(ok.and(k.bitcast('u32', e).ge(tau)), e, 0);
      }, 'm');
      for (let j = 0; j < g.items; j++) {
        const i = ws.first.add(j);
        k.if(i.lt(vocab), () => probs.set(rowBase.add(i), ws.w.at(j)));
      }
      const [, total] = workgroupScan(k, ws.sum, sa, sb, g.wg, 'sum', 'total');
      // The non-finite mark of samplingExp survives the re-sum.
      k.if(k.localIndex.eq(0), () => partSum.set(row.mul(nseg).add(seg), k.select(flagged, k.f32(-1), total)));
    },
  });
}

/** Draw the row's token from the kept weights with u(seed, position, stream), then normalise. */
export function samplingDraw(g: Segments) {
  return kernel({
    name: 'samplingDraw', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      probs: storage('f32', 'read_write', { shape: '[rows, vocab]' }),
      partSum: storage('f32', 'read', { shape: '[rows, segments]' }),
      rowInfo: storage('u32', 'read', { shape: '[rows, 4]' }),
      tokens: storage('u32', 'read_write', { shape: '[rows]' }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[segments, rows]',
    body(k, { probs, partSum, rowInfo, tokens }, { vocab, segments: nseg }) {
      const sa = k.shared('scanA', 'f32', g.wg), sb = k.shared('scanB', 'f32', g.wg);
      const shared = k.shared('rowState', 'f32', 4); // segment offset, total, target, row not finite
      const cand = k.shared('cand', 'u32', 2, { atomic: true });
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      k.if(k.localIndex.eq(0), () => {
        const [before, total] = mergeSums(k, partSum, row.mul(nseg), nseg, seg, 'z');
        const u = randomUniform(k, rowInfo.at(row.mul(4).add(1)), rowInfo.at(row.mul(4).add(2)), rowInfo.at(row.mul(4).add(3)));
        const flagged = k.var('flagged', 'f32', 0);
        k.for('fs', k.u32(0), nseg, (s) => k.if(partSum.at(row.mul(nseg).add(s)).lt(0), () => flagged.set(1)));
        shared.set(0, before);
        shared.set(1, total);
        shared.set(2, u.mul(total));
        shared.set(3, flagged);
      });
      k.barrier();
      const off = k.let('off', shared.at(0)), total = k.let('total', shared.at(1)), target = k.let('target', shared.at(2));
      const rowBad = k.let('rowBad', shared.at(3).gt(0));
      const ws = loadWeights(k, g, seg.mul(g.seg), vocab,
        (i, ok) => k.select(ok, probs.at(rowBase.add(min(i, vocab.sub(1)))), k.f32(0)), 'd');
      const [excl] = workgroupScan(k, ws.sum, sa, sb, g.wg, 'sum', 'excl');
      const pick = segmentSearch(k, g, ws, excl, off, target, cand, 'find');
      const mine = k.let('mine', rowBad.not().and(off.le(target)).and(target.lt(off.add(partSum.at(row.mul(nseg).add(seg))))));
      k.if(k.localIndex.eq(0).and(mine), () => tokens.set(row, pick));
      // A row with a NaN or +Inf logit draws nothing: NO_TOKEN tells the host, no logits read back.
      k.if(k.localIndex.eq(0).and(seg.eq(0)).and(rowBad), () => tokens.set(row, NO_TOKEN));
      for (let j = 0; j < g.items; j++) {
        const i = ws.first.add(j);
        k.if(i.lt(vocab), () => probs.set(rowBase.add(i), ws.w.at(j).div(total)));
      }
    },
  });
}

// ---- ops --------------------------------------------------------------------------------------
export function checkSizes(name: string, s: Record<string, number>, keys: string[]): void {
  for (const key of keys) {
    const v = s[key];
    if (!Number.isInteger(v) || v! < 1) throw new Error(`op '${name}': size ${key} = ${v} must be a positive integer`);
  }
}

/**
 * Logits → transformed probabilities and one sampled token per row.
 * Bindings: logits [rows, V]; rowParams f32 [rows, 4] = (1/temperature or 0 for greedy, topP,
 * minP, 0); rowInfo u32 [rows, 4] = (topK or 0, seed, position, stream); probs [rows, V] out
 * (masked entries exactly 0; one-hot for greedy rows); tokens [rows] out.
 * Sizes: rows, vocab, filters (1 when any row uses top-k, top-p or min-p, else 0 and the
 * threshold launches are skipped). src/ops/sampling.ts builds rowParams/rowInfo and validates.
 */
export function sampling(p: SegmentParams & {
  /** 'split' (default): the search over (segment, row) in 17 launches; 'single': one workgroup per row. */
  threshold?: 'split' | 'single';
  /** Invocations per workgroup of the threshold search (default min(128, workgroupSize)): its
   *  16·size-float histogram must fit workgroup memory. The segments stay the same. */
  thresholdWorkgroupSize?: number;
} = {}) {
  const g = segments(p);
  const twg = p.thresholdWorkgroupSize ?? Math.min(128, g.wg);
  if (!Number.isInteger(twg) || twg < 16 || twg & (twg - 1) || twg > g.seg) throw new Error(`sampling: thresholdWorkgroupSize ${twg} must be a power of two in [16, ${g.seg}]`);
  const tg: Segments = { ...g, wg: twg, items: g.seg / twg };
  const split = (p.threshold ?? 'split') === 'split';
  if (p.threshold !== undefined && p.threshold !== 'split' && p.threshold !== 'single') throw new Error(`sampling: threshold '${p.threshold}' is not 'split' or 'single'`);
  const kMax = segmentArgmax(g), kExp = samplingExp(g);
  const kPass = samplingThresholdPass(tg), kSingle = samplingThreshold(tg);
  const kMask = samplingMask(g), kDraw = samplingDraw(g);
  const o = op('sampling', {
    logits: storage('f32', 'read', { shape: '[rows, vocab]' }),
    rowParams: storage('f32', 'read', { shape: '[rows, 4]' }),
    rowInfo: storage('u32', 'read', { shape: '[rows, 4]' }),
    probs: storage('f32', 'read_write', { shape: '[rows, vocab]' }),
    tokens: storage('u32', 'read_write', { shape: '[rows]' }),
  }, (s: { rows: number; vocab: number; filters: number }): Plan => {
    checkSizes('sampling', s, ['rows', 'vocab']);
    const nseg = segmentCount(g, s.vocab);
    const u = { rows: s.rows, vocab: s.vocab, segments: nseg };
    const steps: Plan['steps'] = [
      { kernel: kMax, bind: { x: 'logits', partMax: 'partMax', partArg: 'partArg' }, uniforms: u },
      { kernel: kExp, bind: { logits: 'logits', rowParams: 'rowParams', partMax: 'partMax', partArg: 'partArg', probs: 'probs', partSum: 'partSum' }, uniforms: u },
    ];
    if (s.filters) {
      if (split) {
        // Partials alternate between two buffers: a launch reads the previous one's, writes its own.
        for (let pass = 0; pass <= THRESHOLD_PASSES; pass++) {
          const [pin, pout] = pass % 2 ? ['histA', 'histB'] : ['histB', 'histA'];
          steps.push({
            kernel: kPass, uniforms: { ...u, pass },
            bind: { probs: 'probs', rowParams: 'rowParams', rowInfo: 'rowInfo', partIn: pin, partOut: pout, stateU: 'stateU', stateF: 'stateF', threshold: 'threshold' },
          });
        }
      } else steps.push({ kernel: kSingle, bind: { probs: 'probs', rowParams: 'rowParams', rowInfo: 'rowInfo', threshold: 'threshold' }, uniforms: u });
      steps.push({ kernel: kMask, bind: { probs: 'probs', threshold: 'threshold', partSum: 'partSum' }, uniforms: u });
    }
    steps.push({ kernel: kDraw, bind: { probs: 'probs', partSum: 'partSum', rowInfo: 'rowInfo', tokens: 'tokens' }, uniforms: u });
    const n = s.rows * nseg;
    const temps: Plan['temps'] = { partMax: { t: 'f32', length: n }, partArg: { t: 'u32', length: n }, partSum: { t: 'f32', length: n }, threshold: { t: 'u32', length: s.rows } };
    if (s.filters && split) Object.assign(temps, {
      histA: { t: 'f32', length: n * 16 }, histB: { t: 'f32', length: n * 16 },
      stateU: { t: 'u32', length: s.rows * SLOTS * 2 }, stateF: { t: 'f32', length: s.rows * SLOTS * 4 },
    });
    return { temps, steps };
  });
  // Both threshold searches are listed, so codegen emits (and the CUDA test compiles) both.
  return Object.assign(o, { kernels: [kMax, kExp, kPass, kSingle, kMask, kDraw], segments: g });
}

/** tokens[row] = argmax of x[row, :], ties to the lowest index. Sizes: rows, vocab. */
export function argmax(p: SegmentParams = {}) {
  const g = segments(p);
  const kMax = segmentArgmax(g), kMerge = argmaxMerge(g);
  const o = op('argmax', { x: storage('f32', 'read', { shape: '[rows, vocab]' }), tokens: storage('u32', 'read_write', { shape: '[rows]' }) },
    (s: { rows: number; vocab: number }): Plan => {
      checkSizes('argmax', s, ['rows', 'vocab']);
      const u = { rows: s.rows, vocab: s.vocab, segments: segmentCount(g, s.vocab) };
      const n = s.rows * u.segments;
      return {
        temps: { partMax: { t: 'f32', length: n }, partArg: { t: 'u32', length: n } },
        steps: [
          { kernel: kMax, bind: { x: 'x', partMax: 'partMax', partArg: 'partArg' }, uniforms: u },
          { kernel: kMerge, bind: { partMax: 'partMax', partArg: 'partArg', tokens: 'tokens' }, uniforms: { rows: s.rows, segments: u.segments } },
        ],
      };
    });
  return Object.assign(o, { kernels: [kMax, kMerge], segments: g });
}
