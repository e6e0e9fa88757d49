// Token acceptance for speculative decoding, per sequence of a batch, each with its own number k
// of draft tokens (padded to maxK).
//
// Rejection sampling (Leviathan et al. 2023; Chen et al. 2023): draft token x_i (drawn from q_i)
// is accepted when u_i·q_i(x_i) < p_i(x_i) — the comparison min(1, p/q) > u without a division,
// so it rounds the same on every backend. Strict: u = 0 happens (u = n·2⁻²⁴), and a token the
// target gives p = 0 must never be accepted; p ≥ q still always accepts (u < 1). a = the first rejected index (k if none). One more
// token follows: drawn from max(0, p_a − q_a) at a rejection (never normalised: u·Σ is compared
// with prefix sums), or from p_k (the bonus) when all k were accepted. Emitted tokens are then
// distributed exactly as the target's. u_i comes from (seed, position + i, STREAM_ACCEPT); the
// extra token's from (seed, position + a, STREAM_SAMPLE) — a sequence's result never depends on
// the batch.
//
// Greedy acceptance (temperature 0): accept while x_i = argmax p_i; emit argmax p_a at the first
// mismatch, or argmax p_k when all match (ties to the lowest index).
//
// Both work on p and q as the request's sampling transforms left them (sampling.ts), so masked
// tokens have probability 0 and can be neither accepted (u·q ≤ 0 only if q = 0, which a draft
// from q never has) nor drawn.
//
// Layouts: draftTokens u32 [seqs, maxK]; draftProbs f32 [seqs, maxK, V]; targetProbs f32
// [seqs, maxK + 1, V]; seqInfo u32 [seqs, 4] = (k, seed, position of draft 0, 0); outputs
// accepted u32 [seqs] = a and tokens u32 [seqs, maxK + 1] = the a accepted drafts, the extra
// token, then NO_TOKEN. Launch: vocabulary segments × sequences, two passes.
import { kernel, max, min, op, storage } from '../dsl/index.js';
import type { ArrayRef, DType, Kernel, KernelBuilder, Plan, Val } from '../dsl/index.js';
import type { KernelFamily } from './index.js';
import { copyRows } from './copyRows.js';
import { logSoftmax } from './logSoftmax.js';
import { STREAM_ACCEPT, STREAM_SAMPLE, randomUniform } from './random.js';
import {
  NO_TOKEN, type SegmentParams, type Segments, argmax, beats, loadWeights, mergeSums, sampling, segmentCount,
  segmentScan, segmentSearch, segments, workgroupArgmax, workgroupScan, F32_MAX,
} from './sampling.js';

const UNIFORMS = { seqs: 'u32', vocab: 'u32', maxK: 'u32', segments: 'u32' } as const;

/** Lanes between the invocations that handle one item each (a draft, an output slot): one per
 *  32-lane warp, so each such load is a request of its own (the memory model's warps). */
const warpLanes = (wg: number) => Math.min(32, wg);

interface SeqView {
  seq: Val<'u32'>; kSeq: Val<'u32'>; seed: Val<'u32'>; pos: Val<'u32'>;
}
function seqView(k: KernelBuilder, seqInfo: ArrayRef<'u32', boolean>, seq: Val<'u32'>): SeqView {
  return {
    seq,
    kSeq: k.let('kSeq', seqInfo.at(seq.mul(4))),
    seed: k.let('seed', seqInfo.at(seq.mul(4).add(1))),
    pos: k.let('pos', seqInfo.at(seq.mul(4).add(2))),
  };
}

/** Entry i of a probability buffer, however the kernel binds it. */
type Gather = (i: Val<'u32'>) => Val<'f32'>;
/** The kernel's view of draftProbs / targetProbs: f32 words, or 16-byte vectors (chunks of 4). */
function probs(k: KernelBuilder, g: Segments, b: { draftProbs: ArrayRef<DType, boolean>; targetProbs: ArrayRef<DType, boolean> }) {
  if (g.chunk !== 4) {
    const q = b.draftProbs.typed('f32'), p = b.targetProbs.typed('f32');
    return { scalar: { draftProbs: q, targetProbs: p }, vec: null, gather: { draftProbs: (i: Val<'u32'>) => q.at(i), targetProbs: (i: Val<'u32'>) => p.at(i) } };
  }
  const q4 = b.draftProbs.typed('vec4<f32>'), p4 = b.targetProbs.typed('vec4<f32>');
  // A gather at a random entry: its vector, then the component (one 16-byte load, one sector).
  const at = (r: ArrayRef<'vec4<f32>', boolean>) => (i: Val<'u32'>) => {
    const v = r.at(i.div(4)), c = i.rem(4);
    return k.select(c.eq(0), v.x, k.select(c.eq(1), v.y, k.select(c.eq(2), v.z, v.w)));
  };
  return { scalar: null, vec: { draftProbs4: q4, targetProbs4: p4 }, gather: { draftProbs: at(q4), targetProbs: at(p4) } };
}

/** The accepted count a = the first rejected draft (k if none). Drafts are tested in parallel —
 *  two dependent loads each, not 2k in a row — and the first rejection is an atomic min. Every
 *  launch that needs a recomputes it with this same code, so all agree. Draft i is tested by the
 *  first lane of warp i (warpLanes apart): its gathers at random tokens are one sector per request,
 *  not one per draft in a shared request. */
function acceptedCount(k: KernelBuilder, s: SeqView, b: { draftTokens: ArrayRef<'u32', boolean>; draftProbs: Gather; targetProbs: Gather },
  vocab: Val<'u32'>, maxK: Val<'u32'>, wg: number): Val<'u32'> {
  const first = k.shared('firstRejected', 'u32', 1, { atomic: true });
  k.if(k.localIndex.eq(0), () => k.atomicStore(first, 0, s.kSeq));
  k.barrier();
  const apart = warpLanes(wg);
  k.if(k.localIndex.rem(apart).eq(0), () => k.for('i', k.localIndex.div(apart), s.kSeq, (i) => {
    const x = k.let('x', min(b.draftTokens.at(s.seq.mul(maxK).add(i)), vocab.sub(1)));
    const u = randomUniform(k, s.seed, s.pos.add(i), STREAM_ACCEPT, 'acc');
    const qx = k.let('qx', b.draftProbs(s.seq.mul(maxK).add(i).mul(vocab).add(x)));
    const px = k.let('px', b.targetProbs(s.seq.mul(maxK.add(1)).add(i).mul(vocab).add(x)));
    k.if(u.mul(qx).lt(px).not(), () => { k.atomicMin(first, 0, i); });
  }, wg / apart));
  k.barrier();
  return k.let('accepted', k.atomicLoad(first, 0));
}

/** Weights of the extra token: the residual max(0, p_a − q_a) after a rejection, p_k after none;
 *  `useP` forces p_a (the fallback when the residual sums to 0 in f32). */
function extraWeight(k: KernelBuilder, b: { draftProbs: ArrayRef<'f32', boolean>; targetProbs: ArrayRef<'f32', boolean> },
  s: SeqView, a: Val<'u32'>, vocab: Val<'u32'>, maxK: Val<'u32'>, useP: Val<'bool'> | boolean) {
  const pRow = k.let('pRow', s.seq.mul(maxK.add(1)).add(a).mul(vocab));
  // p_a alone needs neither the rejection flag nor q's row (no unused locals: compiler warnings).
  const rq = useP === true ? undefined : {
    rejected: k.let('rejected', a.lt(s.kSeq)),
    qRow: k.let('qRow', s.seq.mul(maxK).add(min(a, maxK.sub(1))).mul(vocab)),
  };
  return (i: Val<'u32'>, ok: Val<'bool'>): Val<'f32'> => {
    const c = k.let('col', min(i, vocab.sub(1)));
    const pv = k.let('pv', b.targetProbs.at(pRow.add(c)));
    if (!rq) return k.select(ok, pv, k.f32(0));
    const resid = max(pv.sub(b.draftProbs.at(rq.qRow.add(c))), 0);
    const useResid = useP === false ? rq.rejected : rq.rejected.and((useP as Val<'bool'>).not());
    return k.select(ok, k.select(useResid, resid, pv), k.f32(0));
  };
}

/**
 * This invocation's sums of both candidate weightings of the extra token over its entries of the
 * segment — the residual max(0, p_a − q_a) (p_k after no rejection) and p_a — from one read of p_a
 * and q_a. Entries and order as loadWeights with g.interleaved (t + j·wg, j ascending), so the
 * sums are bit-identical to what acceptDraw's loadWeights sums.
 */
function bothSums(k: KernelBuilder, g: Segments, b: { draftProbs: ArrayRef<'f32', boolean>; targetProbs: ArrayRef<'f32', boolean> },
  s: SeqView, a: Val<'u32'>, segBase: Val<'u32'>, vocab: Val<'u32'>, maxK: Val<'u32'>): { resid: Val<'f32'>; target: Val<'f32'> } {
  const pRow = k.let('pRow', s.seq.mul(maxK.add(1)).add(a).mul(vocab));
  const qRow = k.let('qRow', s.seq.mul(maxK).add(min(a, maxK.sub(1))).mul(vocab));
  const rejected = k.let('rejected', a.lt(s.kSeq));
  const first = k.let('first', segBase.add(k.localIndex));
  const resid = k.var('rSum', 'f32', 0), target = k.var('tSum', 'f32', 0);
  for (let j = 0; j < g.items; j++) {
    const i = k.let(`i${j}`, first.add(j * g.wg));
    const ok = k.let(`ok${j}`, i.lt(vocab));
    const c = k.let(`col${j}`, min(i, vocab.sub(1)));
    const pv = k.let(`pv${j}`, b.targetProbs.at(pRow.add(c)));
    const qv = k.let(`qv${j}`, b.draftProbs.at(qRow.add(c)));
    resid.set(resid.add(k.select(ok, k.select(rejected, max(pv.sub(qv), 0), pv), k.f32(0))));
    target.set(target.add(k.select(ok, pv, k.f32(0))));
  }
  return { resid, target };
}

type Vec4Probs = { draftProbs4: ArrayRef<'vec4<f32>', boolean>; targetProbs4: ArrayRef<'vec4<f32>', boolean> };

/** Rows of p_a and q_a in 16-byte vectors, and this invocation's first entry (chunks of 4: Segments.chunk). */
function vecRows(k: KernelBuilder, s: SeqView, a: Val<'u32'>, segBase: Val<'u32'>, vocab: Val<'u32'>, maxK: Val<'u32'>, tag: string) {
  return {
    pRow4: k.let(`${tag}PRow4`, s.seq.mul(maxK.add(1)).add(a).mul(vocab).div(4)),
    qRow4: k.let(`${tag}QRow4`, s.seq.mul(maxK).add(min(a, maxK.sub(1))).mul(vocab).div(4)),
    first: k.let(`${tag}First`, segBase.add(k.localIndex.mul(4))),
  };
}
/** The weight of one entry from its p and q (the residual unless useResid is false), 0 outside V. */
const entryWeight = (k: KernelBuilder, ok: Val<'bool'>, useResid: Val<'bool'>, pv: Val<'f32'>, qv: Val<'f32'>) =>
  k.select(ok, k.select(useResid, max(pv.sub(qv), 0), pv), k.f32(0));

/** bothSums with 16-byte loads: invocation t owns the chunks j·wg + t (entries 4·chunk .. + 3),
 *  summed in the order loadWeights4 sums them. vocab % 4 == 0, so a chunk is wholly in or out. */
function bothSums4(k: KernelBuilder, g: Segments, b: Vec4Probs, s: SeqView, a: Val<'u32'>, segBase: Val<'u32'>,
  vocab: Val<'u32'>, maxK: Val<'u32'>): { resid: Val<'f32'>; target: Val<'f32'> } {
  const { pRow4, qRow4, first } = vecRows(k, s, a, segBase, vocab, maxK, 'v');
  const rejected = k.let('rejected', a.lt(s.kSeq));
  const resid = k.var('rSum', 'f32', 0), target = k.var('tSum', 'f32', 0);
  for (let c = 0; c < g.items / 4; c++) {
    const i = k.let(`i${c}`, first.add(4 * c * g.wg));
    const ok = k.let(`ok${c}`, i.lt(vocab));
    const col4 = k.let(`col${c}`, min(i, vocab.sub(4)).div(4));
    const p4 = k.let(`p${c}`, b.targetProbs4.at(pRow4.add(col4)));
    const q4 = k.let(`q${c}`, b.draftProbs4.at(qRow4.add(col4)));
    for (let l = 0; l < 4; l++) {
      resid.set(resid.add(entryWeight(k, ok, rejected, p4.at(l), q4.at(l))));
      target.set(target.add(k.select(ok, p4.at(l), k.f32(0))));
    }
  }
  return { resid, target };
}

/** loadWeights for acceptDraw with 16-byte loads (Segments.chunk = 4): the extra token's weights
 *  (residual, or p_a where useP), only read where `active`. */
function loadWeights4(k: KernelBuilder, g: Segments, b: Vec4Probs, s: SeqView, a: Val<'u32'>, segBase: Val<'u32'>,
  vocab: Val<'u32'>, maxK: Val<'u32'>, useP: Val<'bool'>, active: Val<'bool'>) {
  const { pRow4, qRow4, first } = vecRows(k, s, a, segBase, vocab, maxK, 'w');
  const useResid = k.let('useResid', a.lt(s.kSeq).and(useP.not()));
  const w = k.privateArray('wW', 'f32', g.items);
  const sum = k.var('wSum', 'f32', 0);
  for (let c = 0; c < g.items / 4; c++) {
    const i = k.let(`wI${c}`, first.add(4 * c * g.wg));
    const ok = k.let(`wOk${c}`, i.lt(vocab));
    const col4 = k.let(`wCol${c}`, min(i, vocab.sub(4)).div(4));
    const p4 = k.var(`wP${c}`, 'vec4<f32>', 0), q4 = k.var(`wQ${c}`, 'vec4<f32>', 0);
    k.if(active, () => { p4.set(b.targetProbs4.at(pRow4.add(col4))); q4.set(b.draftProbs4.at(qRow4.add(col4))); });
    for (let l = 0; l < 4; l++) {
      const x = k.let(`wX${4 * c + l}`, entryWeight(k, ok, useResid, p4.at(l), q4.at(l)));
      w.set(4 * c + l, x);
      sum.set(sum.add(x));
    }
  }
  return { w, first, sum };
}

type AcceptBindings = {
  draftTokens: ArrayRef<'u32', boolean>; draftProbs: ArrayRef<DType, boolean>; targetProbs: ArrayRef<DType, boolean>;
  seqInfo: ArrayRef<'u32', boolean>;
};
/** The bindings both passes (and the one-launch kernel) share. */
function acceptBindings(g: Segments) {
  return {
    draftTokens: storage('u32', 'read', { shape: '[seqs, maxK]' }),
    // Chunks of 4 (vocab % 4 == 0): the rows as 16-byte vectors.
    draftProbs: storage('f32', 'read', { shape: '[seqs, maxK, vocab]', vec: g.chunk === 4 ? 4 : 1 }),
    targetProbs: storage('f32', 'read', { shape: '[seqs, maxK + 1, vocab]', vec: g.chunk === 4 ? 4 : 1 }),
    seqInfo: storage('u32', 'read', { shape: '[seqs, 4]' }),
  };
}

/** Pass 1's bindings (its outputs: the accepted count, token slots and per-segment sums), which
 *  the one-launch kernel has too. */
function passOneBindings(g: Segments) {
  return {
    ...acceptBindings(g),
    accepted: storage('u32', 'read_write', { shape: '[seqs]' }),
    tokens: storage('u32', 'read_write', { shape: '[seqs, maxK + 1]' }),
    partResid: storage('f32', 'read_write', { shape: '[seqs, segments]' }),
    partTarget: storage('f32', 'read_write', { shape: '[seqs, segments]' }),
  };
}

/** Pass 1's work in a (segment, sequence) workgroup: a, the segment's two sums into partResid /
 *  partTarget, and (segment 0) accepted and the token slots — the accepted drafts, NO_TOKEN from a on. */
function residualSums(k: KernelBuilder, g: Segments, b: AcceptBindings & {
  accepted: ArrayRef<'u32', true>; tokens: ArrayRef<'u32', true>; partResid: ArrayRef<'f32', true>; partTarget: ArrayRef<'f32', true>;
}, u: { vocab: Val<'u32'>; maxK: Val<'u32'>; segments: Val<'u32'> }, sa: ArrayRef<'f32', true>, sb: ArrayRef<'f32', true>) {
  const { vocab, maxK, segments: nseg } = u;
  const seg = k.let('seg', k.workgroupId.x);
  const s = seqView(k, b.seqInfo, k.let('seq', k.workgroupId.y));
  const pr = probs(k, g, b);
  const a = acceptedCount(k, s, { draftTokens: b.draftTokens, ...pr.gather }, vocab, maxK, g.wg);
  const segBase = k.let('segBase', seg.mul(g.seg));
  const sums = pr.vec ? bothSums4(k, g, pr.vec, s, a, segBase, vocab, maxK) : bothSums(k, g, pr.scalar, s, a, segBase, vocab, maxK);
  const [, totalR] = workgroupScan(k, sums.resid, sa, sb, g.wg, 'sumR', 'total');
  const [, totalT] = workgroupScan(k, sums.target, sa, sb, g.wg, 'sumT', 'total');
  const lid = k.localIndex;
  k.if(lid.eq(0), () => {
    b.partResid.set(s.seq.mul(nseg).add(seg), totalR);
    b.partTarget.set(s.seq.mul(nseg).add(seg), totalT);
  });
  k.if(seg.eq(0), () => {
    k.if(lid.eq(0), () => b.accepted.set(s.seq, a));
    const apart = warpLanes(g.wg);
    k.if(lid.rem(apart).eq(0), () => k.for('t', lid.div(apart), maxK.add(1), (t) => {
      const d = k.let('d', b.draftTokens.at(s.seq.mul(maxK).add(min(t, maxK.sub(1)))));
      b.tokens.set(s.seq.mul(maxK.add(1)).add(t), k.select(t.lt(a), d, k.u32(NO_TOKEN)));
    }, g.wg / apart));
  });
  return { s, pr, a, seg };
}

/** Where the extra token is drawn, as every invocation reads it from workgroup memory: the
 *  segment's offset in the CDF, the target u·Σ and whether p_a stands in for a residual summing to 0. */
interface DrawState { off: Val<'f32'>; target: Val<'f32'>; useP: Val<'bool'> }

/** The draw inside segment `seg` of sequence s, by the whole workgroup: where `mine` (the segment
 *  holds the target), read p_a and q_a again, scan and search, and write token slot a. */
function drawInSegment(k: KernelBuilder, g: Segments, pr: ReturnType<typeof probs>, b: { tokens: ArrayRef<'u32', true> },
  s: SeqView, a: Val<'u32'>, seg: Val<'u32'>, st: DrawState, mine: Val<'bool'>, vocab: Val<'u32'>, maxK: Val<'u32'>,
  sh: { sa: ArrayRef<'f32', true>; sb: ArrayRef<'f32', true>; cand: ArrayRef<'u32', true> }): void {
  const { sa, sb, cand } = sh;
  const ws = pr.vec ? loadWeights4(k, g, pr.vec, s, a, seg.mul(g.seg), vocab, maxK, st.useP, mine)
    : loadWeights(k, g, seg.mul(g.seg), vocab, extraWeight(k, pr.scalar!, s, a, vocab, maxK, st.useP), 'w', true, mine);
  const [excl] = workgroupScan(k, ws.sum, sa, sb, g.wg, 'sum', 'excl');
  const pick = segmentSearch(k, g, ws, excl, st.off, st.target, cand, 'find');
  k.if(k.localIndex.eq(0).and(mine), () => b.tokens.set(s.seq.mul(maxK.add(1)).add(a), pick));
}

/** Pass 1: accepted count and drafts out; per-segment sums of the extra token's weights. */
export function acceptResidualSums(g: Segments) {
  return kernel({
    name: g.chunk === 4 ? 'acceptResidualSums4' : 'acceptResidualSums', params: { workgroupSize: g.wg, items: g.items, chunk: g.chunk ?? g.items },
    caps: g.caps, workgroupSize: g.wg,
    bindings: {
      ...passOneBindings(g),
    },
    uniforms: UNIFORMS,
    grid: '[segments, seqs]',
    body(k, b, u) {
      const sa = k.shared('scanA', 'f32', g.wg), sb = k.shared('scanB', 'f32', g.wg);
      residualSums(k, g, b, u, sa, sb);
    },
  });
}

/** Pass 2: draw the extra token with u(seed, position + a, STREAM_SAMPLE). */
export function acceptDraw(g: Segments) {
  return kernel({
    name: g.chunk === 4 ? 'acceptDraw4' : 'acceptDraw', params: { workgroupSize: g.wg, items: g.items, chunk: g.chunk ?? g.items },
    caps: g.caps, workgroupSize: g.wg,
    bindings: {
      ...acceptBindings(g),
      partResid: storage('f32', 'read', { shape: '[seqs, segments]' }),
      partTarget: storage('f32', 'read', { shape: '[seqs, segments]' }),
      tokens: storage('u32', 'read_write', { shape: '[seqs, maxK + 1]' }),
    },
    uniforms: UNIFORMS,
    grid: '[segments, seqs]',
    body(k, b, { vocab, maxK, segments: nseg }) {
      const sa = k.shared('scanA', 'f32', g.wg), sb = k.shared('scanB', 'f32', g.wg);
      const rowState = k.shared('rowState', 'f32', 4); // offset, target, segment weight, use p_a
      const cand = k.shared('cand', 'u32', 2, { atomic: true });
      const seg = k.let('seg', k.workgroupId.x);
      const s = seqView(k, b.seqInfo, k.let('seq', k.workgroupId.y));
      const pr = probs(k, g, b);
      const a = acceptedCount(k, s, { draftTokens: b.draftTokens, ...pr.gather }, vocab, maxK, g.wg);
      k.if(k.localIndex.eq(0), () => {
        const base = k.let('base', s.seq.mul(nseg));
        const [beforeR, totalR] = mergeSums(k, b.partResid, base, nseg, seg, 'zr');
        const [beforeT, totalT] = mergeSums(k, b.partTarget, base, nseg, seg, 'zt');
        const useP = k.let('useP', totalR.gt(0).not());
        const u = randomUniform(k, s.seed, s.pos.add(a), STREAM_SAMPLE, 'draw');
        rowState.set(0, k.select(useP, beforeT, beforeR));
        rowState.set(1, u.mul(k.select(useP, totalT, totalR)));
        rowState.set(2, k.select(useP, b.partTarget.at(base.add(seg)), b.partResid.at(base.add(seg))));
        rowState.set(3, k.select(useP, k.f32(1), 0));
      });
      k.barrier();
      const off = k.let('off', rowState.at(0)), target = k.let('target', rowState.at(1));
      // Only the segment holding the target reads p_a and q_a again.
      const mine = k.let('mine', off.le(target).and(target.lt(off.add(rowState.at(2)))));
      const st: DrawState = { off, target, useP: k.let('usePAll', rowState.at(3).gt(0)) };
      drawInSegment(k, g, pr, b, s, a, seg, st, mine, vocab, maxK, { sa, sb, cand });
    },
  });
}

/**
 * Both passes in one launch, on devices with a device-scope fence (caps.deviceFence): every
 * workgroup does pass 1's work, then takes its sequence's ticket; the last of the sequence's
 * segments to arrive merges the partial sums and draws the extra token (pass 2's arithmetic, in
 * the same order: the results are bit-identical to the two launches). It holds the sequence's
 * partials in workgroup memory, so it needs segments ≤ wg (V ≤ wg·seg: 1M entries at the default
 * geometry); the plan keeps two launches beyond that. The merge is thread 0's sequential sum (the
 * order both plans and the test's mirror use) over workgroup memory, filled by one parallel load.
 * tickets u32 [seqs] start at 0 and are left at 0.
 */
export function acceptSumsDraw(g: Segments) {
  return kernel({
    name: g.chunk === 4 ? 'acceptSumsDraw4' : 'acceptSumsDraw', params: { workgroupSize: g.wg, items: g.items, chunk: g.chunk ?? g.items },
    caps: g.caps, workgroupSize: g.wg,
    bindings: {
      ...passOneBindings(g),
      tickets: storage('u32', 'read_write', { atomic: true, shape: '[seqs]' }),
    },
    uniforms: UNIFORMS,
    grid: '[segments, seqs]',
    body(k, b, un) {
      const { vocab, maxK, segments: nseg } = un;
      const sa = k.shared('scanA', 'f32', g.wg), sb = k.shared('scanB', 'f32', g.wg);
      const rowState = k.shared('rowState', 'f32', 3); // offset, target, use p_a
      const verdict = k.shared('verdict', 'u32', 2); // last to arrive; the segment holding the target
      const cand = k.shared('cand', 'u32', 2, { atomic: true });
      const { s, pr, a, seg } = residualSums(k, g, b, un, sa, sb);
      const lid = k.localIndex;
      // Writes fenced before invocation 0 takes the ticket: its own partials by lastArrival's fence,
      // segment 0's token slots (other lanes) here. Other segments skip a fence per invocation.
      k.if(seg.eq(0), () => k.deviceFence());
      k.barrier();
      k.if(lid.eq(0), () => {
        const last = k.lastArrival(b.tickets, s.seq, nseg);
        verdict.set(0, k.select(last, k.u32(1), k.u32(0)));
      });
      k.barrier();
      k.if(verdict.at(0).eq(1), () => {
        // The sequence's partials into workgroup memory (one load each, in parallel).
        const base = k.let('base', s.seq.mul(nseg));
        k.if(lid.lt(nseg), () => {
          sa.set(lid, b.partResid.at(base.add(lid)));
          sb.set(lid, b.partTarget.at(base.add(lid)));
        });
        k.barrier();
        k.if(lid.eq(0), () => {
          // The totals in segment order (mergeSums' order), then the segment whose CDF interval
          // [before, before + weight) holds the target — the test pass 2 makes in each segment.
          const totalR = k.var('totalR', 'f32', 0), totalT = k.var('totalT', 'f32', 0);
          k.for('zs', k.u32(0), nseg, (z) => { totalR.set(totalR.add(sa.at(z))); totalT.set(totalT.add(sb.at(z))); });
          const useP = k.let('useP', totalR.gt(0).not());
          const uni = randomUniform(k, s.seed, s.pos.add(a), STREAM_SAMPLE, 'draw');
          const target = k.let('drawTarget', uni.mul(k.select(useP, totalT, totalR)));
          const before = k.var('before', 'f32', 0);
          const hit = k.var('hit', nseg), hitOff = k.var('hitOff', 'f32', 0);
          k.for('hs', k.u32(0), nseg, (z) => {
            const w = k.let('segW', k.select(useP, sb.at(z), sa.at(z)));
            const next = k.let('next', before.add(w));
            k.if(before.le(target).and(target.lt(next)), () => { hit.set(z); hitOff.set(before); k.break(); });
            before.set(next);
          });
          rowState.set(0, hitOff);
          rowState.set(1, target);
          rowState.set(2, k.select(useP, k.f32(1), 0));
          verdict.set(1, hit);
        });
        k.barrier();
        const st: DrawState = { off: k.let('off', rowState.at(0)), target: k.let('target', rowState.at(1)), useP: k.let('usePAll', rowState.at(2).gt(0)) };
        const hitSeg = k.let('hitSeg', verdict.at(1));
        drawInSegment(k, g, pr, b, s, a, hitSeg, st, k.let('mine', hitSeg.lt(nseg)), vocab, maxK, { sa, sb, cand });
      });
    },
  });
}

/** Greedy pass 1: per segment, the argmax of each of the sequence's k + 1 target rows. */
export function greedyArgmaxSegments(g: Segments) {
  return kernel({
    name: 'greedyArgmaxSegments', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      targetScores: storage('f32', 'read', { shape: '[seqs, maxK + 1, vocab]' }),
      seqInfo: storage('u32', 'read', { shape: '[seqs, 4]' }),
      partMax: storage('f32', 'read_write', { shape: '[seqs, maxK + 1, segments]' }),
      partArg: storage('u32', 'read_write', { shape: '[seqs, maxK + 1, segments]' }),
    },
    uniforms: UNIFORMS,
    grid: '[segments, seqs]',
    body(k, { targetScores, seqInfo, partMax, partArg }, { vocab, maxK, segments: nseg }) {
      const sv = k.shared('sv', 'f32', g.wg), si = k.shared('si', 'u32', g.wg);
      const seg = k.let('seg', k.workgroupId.x), seq = k.let('seq', k.workgroupId.y);
      const kSeq = k.let('kSeq', seqInfo.at(seq.mul(4)));
      k.for('r', k.u32(0), kSeq.add(1), (r) => {
        const row = k.let('row', seq.mul(maxK.add(1)).add(r));
        const [best, arg] = segmentScan(k, g, seg, vocab, (i) => targetScores.at(row.mul(vocab).add(i)));
        const [bv, bi] = workgroupArgmax(k, best, arg, sv, si, g.wg, 'am');
        k.if(k.localIndex.eq(0), () => {
          partMax.set(row.mul(nseg).add(seg), bv);
          partArg.set(row.mul(nseg).add(seg), bi);
        });
      });
    },
  });
}

/** Greedy pass 2: one invocation per sequence walks its drafts against the merged argmaxes. */
export function greedyAccept(g: Segments) {
  const wg = 64;
  return kernel({
    name: 'greedyAccept', params: {}, caps: g.caps, workgroupSize: wg,
    bindings: {
      draftTokens: storage('u32', 'read', { shape: '[seqs, maxK]' }),
      seqInfo: storage('u32', 'read', { shape: '[seqs, 4]' }),
      partMax: storage('f32', 'read', { shape: '[seqs, maxK + 1, segments]' }),
      partArg: storage('u32', 'read', { shape: '[seqs, maxK + 1, segments]' }),
      accepted: storage('u32', 'read_write', { shape: '[seqs]' }),
      tokens: storage('u32', 'read_write', { shape: '[seqs, maxK + 1]' }),
    },
    uniforms: UNIFORMS,
    grid: `[ceil(seqs / ${wg})]`,
    body(k, { draftTokens, seqInfo, partMax, partArg, accepted, tokens }, { seqs, maxK, segments: nseg }) {
      const seq = k.let('seq', k.globalId.x);
      k.if(seq.lt(seqs), () => {
        const kSeq = k.let('kSeq', seqInfo.at(seq.mul(4)));
        const out = k.let('out', seq.mul(maxK.add(1)));
        const a = k.var('a', kSeq);
        k.for('r', k.u32(0), kSeq.add(1), (r) => {
          const base = k.let('base', seq.mul(maxK.add(1)).add(r).mul(nseg));
          const best = k.var('best', 'f32', -F32_MAX);
          const arg = k.var('arg', 'u32', NO_TOKEN);
          k.for('s', k.u32(0), nseg, (s) => {
            const v = k.let('v', partMax.at(base.add(s))), i = k.let('i', partArg.at(base.add(s)));
            k.if(beats(k, v, i, best, arg), () => { best.set(v); arg.set(i); });
          });
          tokens.set(out.add(r), arg);
          k.if(r.ge(kSeq).or(draftTokens.at(seq.mul(maxK).add(min(r, maxK.sub(1)))).ne(arg)), () => { a.set(r); k.break(); });
        });
        accepted.set(seq, a);
        k.for('t', a.add(1), maxK.add(1), (t) => tokens.set(out.add(t), NO_TOKEN));
      });
    },
  });
}

function checkSizes(name: string, s: { seqs: number; vocab: number; maxK: number }): void {
  for (const key of ['seqs', 'vocab', 'maxK'] as const) {
    if (!Number.isInteger(s[key]) || s[key] < 1) throw new Error(`op '${name}': size ${key} = ${s[key]} must be a positive integer`);
  }
}

/** Rejection sampling. Sizes: seqs, vocab, maxK (≥ 1; the allocated draft slots per sequence).
 *  src/ops/sampling.ts validates inputs (k ≤ maxK, probabilities) before launching. One launch
 *  (acceptSumsDraw) where the device has a device-scope fence and segments ≤ workgroup size, two
 *  otherwise; `oneLaunch: false` forces the two (the test compares both plans). */
export function rejectionSampler(p: SegmentParams & { oneLaunch?: boolean } = {}) {
  // Lane-contiguous ownership: 16-byte vectors where every row starts on one (vocab % 4 == 0 and
  // whole chunks per invocation), else single words. The two orders differ, each exact.
  const g: Segments = { ...segments(p), chunk: 1 };
  const g4: Segments | null = g.items % 4 === 0 ? { ...g, chunk: 4 } : null;
  const k1 = acceptResidualSums(g), k2 = acceptDraw(g);
  const k14 = g4 && acceptResidualSums(g4), k24 = g4 && acceptDraw(g4);
  const fold = (p.oneLaunch ?? true) && !!g.caps.deviceFence;
  const kf = fold ? acceptSumsDraw(g) : null, kf4 = fold && g4 ? acceptSumsDraw(g4) : null;
  const o = op('rejectionSampler', {
    draftTokens: storage('u32', 'read', { shape: '[seqs, maxK]' }),
    draftProbs: storage('f32', 'read', { shape: '[seqs, maxK, vocab]' }),
    targetProbs: storage('f32', 'read', { shape: '[seqs, maxK + 1, vocab]' }),
    seqInfo: storage('u32', 'read', { shape: '[seqs, 4]' }),
    accepted: storage('u32', 'read_write', { shape: '[seqs]' }),
    tokens: storage('u32', 'read_write', { shape: '[seqs, maxK + 1]' }),
  }, (s: { seqs: number; vocab: number; maxK: number }): Plan => {
    checkSizes('rejectionSampler', s);
    const u = { ...s, segments: segmentCount(g, s.vocab) };
    const n = s.seqs * u.segments;
    const common = { draftTokens: 'draftTokens', draftProbs: 'draftProbs', targetProbs: 'targetProbs', seqInfo: 'seqInfo', partResid: 'partResid', partTarget: 'partTarget' };
    const vec = !!g4 && s.vocab % 4 === 0;
    const temps: Plan['temps'] = { partResid: { t: 'f32', length: n }, partTarget: { t: 'f32', length: n } };
    // The last arrival holds a sequence's partials in workgroup memory: one launch up to wg segments.
    const one = vec ? kf4 : kf;
    if (one && u.segments <= g.wg) {
      temps.tickets = { t: 'u32', length: s.seqs };
      return { temps, steps: [{ kernel: one, bind: { ...common, accepted: 'accepted', tokens: 'tokens', tickets: 'tickets' }, uniforms: u }] };
    }
    return {
      temps,
      steps: [
        { kernel: vec ? k14! : k1, bind: { ...common, accepted: 'accepted', tokens: 'tokens' }, uniforms: u },
        { kernel: vec ? k24! : k2, bind: { ...common, tokens: 'tokens' }, uniforms: u },
      ],
    };
  });
  const kernels = [k1, k2, ...(k14 && k24 ? [k14, k24] : []), ...(kf ? [kf] : []), ...(kf4 ? [kf4] : [])];
  return Object.assign(o, { kernels, segments: g });
}

/** Greedy acceptance on the target's scores (logits or probabilities; only their order counts).
 *  Same layouts and sizes as `rejectionSampler`, without draft probabilities. */
export function greedyAcceptance(p: SegmentParams = {}) {
  const g = segments(p);
  const k1 = greedyArgmaxSegments(g), k2 = greedyAccept(g);
  const o = op('greedyAcceptance', {
    draftTokens: storage('u32', 'read', { shape: '[seqs, maxK]' }),
    targetScores: storage('f32', 'read', { shape: '[seqs, maxK + 1, vocab]' }),
    seqInfo: storage('u32', 'read', { shape: '[seqs, 4]' }),
    accepted: storage('u32', 'read_write', { shape: '[seqs]' }),
    tokens: storage('u32', 'read_write', { shape: '[seqs, maxK + 1]' }),
  }, (s: { seqs: number; vocab: number; maxK: number }): Plan => {
    checkSizes('greedyAcceptance', s);
    const u = { ...s, segments: segmentCount(g, s.vocab) };
    const n = s.seqs * (s.maxK + 1) * u.segments;
    return {
      temps: { partMax: { t: 'f32', length: n }, partArg: { t: 'u32', length: n } },
      steps: [
        { kernel: k1, bind: { targetScores: 'targetScores', seqInfo: 'seqInfo', partMax: 'partMax', partArg: 'partArg' }, uniforms: u },
        { kernel: k2, bind: { draftTokens: 'draftTokens', seqInfo: 'seqInfo', partMax: 'partMax', partArg: 'partArg', accepted: 'accepted', tokens: 'tokens' }, uniforms: u },
      ],
    };
  });
  return Object.assign(o, { kernels: [k1, k2], segments: g });
}

// ---- registry entries (codegen/kernels/index.ts) -----------------------------------------------
const labelled = (kernels: Kernel<any, any>[]) => kernels.map((kernel) => ({ label: kernel.ir.name, kernel }));
/** Sampling (with argmax and log-softmax) and acceptance, at the default segment geometry. */
export const SAMPLING_FAMILIES: KernelFamily[] = [
  {
    family: 'sampling',
    variants: (caps) => labelled([...sampling({ caps }).kernels, argmax({ caps }).kernels[1]!, ...logSoftmax({ caps }).kernels]),
  },
  {
    family: 'acceptance',
    variants: (caps) => labelled([...rejectionSampler({ caps }).kernels, ...greedyAcceptance({ caps }).kernels, copyRows({ caps })]),
  },
];
