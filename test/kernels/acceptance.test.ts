// Token acceptance for speculative decoding. Rejection sampling: statistically lossless over 2·10^5
// trials (emitted tokens distributed as the target, the accepted count as expected), and the same
// statistic shown to catch a deliberately biased rule; with fixed seeds, bit-identical to an exact
// JS mirror of the kernel's f32 arithmetic — hence identical on every backend, also compared
// directly. Greedy acceptance equals a JS reference exactly.
import { describe, expect, it } from 'vitest';
import { greedyAcceptance, rejectionSampler } from '../../codegen/kernels/acceptance.js';
import { STREAM_ACCEPT, STREAM_SAMPLE, randomUniformRef } from '../../codegen/kernels/random.js';
import { NO_TOKEN } from '../../codegen/kernels/sampling.js';
import type { Device } from '../../src/backend/device.js';
import { type DraftSequence, SamplingInputError, acceptanceRows, checkProbabilities, runGreedyAcceptance, runRejectionSampler } from '../../src/ops/sampling.js';
import { availableDevices, forEachBackend } from '../backends.js';
import { freshSeed, rng } from '../util.js';
import { Buffers } from './buffers.js';

const f = Math.fround;

/** A random distribution over V tokens with about `zeros` of them masked to exactly 0. */
function randomDist(V: number, r: () => number, zeros = 0.2): Float32Array {
  const w: number[] = Array.from({ length: V }, () => (r() < zeros ? 0 : (-Math.log(1 - r())) ** 1.5));
  if (!w.some((x) => x > 0)) w[0] = 1;
  const z = w.reduce((s, x) => s + x, 0);
  return Float32Array.from(w, (x) => x / z);
}
function draw(p: ArrayLike<number>, u: number): number {
  let acc = 0, last = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i]! > 0) last = i;
    acc += p[i]!;
    if (u < acc && p[i]! > 0) return i;
  }
  return last;
}
/** A draft distribution half-way between p and another: acceptances common, but q ≠ p. */
const mixture = (p: Float32Array, o: Float32Array) => Float32Array.from(p, (v, i) => 0.5 * v + 0.5 * o[i]!);
const tv = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
  return s / 2;
};

// ---- exact mirror of acceptResidualSums + acceptDraw ------------------------------------------
interface Geometry { wg: number; items: number; seg: number }
/** Invocation t's j-th entry of a segment: chunks of 4 (16-byte loads) where V % 4 == 0, else t + j·wg. */
const owned = (g: Geometry, chunk: number, t: number, j: number) => chunk * (Math.floor(j / chunk) * g.wg + t) + (j % chunk);
const chunkFor = (g: Geometry, V: number) => (V % 4 === 0 && g.items % 4 === 0 ? 4 : 1);
function segmentTotals(w: Float32Array, g: Geometry, chunk: number): { threadSums: number[][]; totals: number[] } {
  const threadSums: number[][] = [], totals: number[] = [];
  for (let base = 0; base < w.length; base += g.seg) {
    const ts = Array.from({ length: g.wg }, (_, t) => {
      let s = 0;
      for (let j = 0; j < g.items; j++) s = f(s + (w[base + owned(g, chunk, t, j)] ?? 0));
      return s;
    });
    let cur = ts.slice(); // Hillis–Steele, as workgroupScan
    for (let off = 1; off < g.wg; off <<= 1) cur = cur.map((v, i) => (i >= off ? f(v + cur[i - off]!) : v));
    threadSums.push(cur);
    totals.push(cur[g.wg - 1]!);
  }
  return { threadSums, totals };
}
function mirrorAccept(g: Geometry, seq: { k: number; seed: number; pos: number; drafts: number[] }, q: Float32Array[], p: Float32Array[]) {
  let a = seq.k;
  for (let i = 0; i < seq.k; i++) {
    const x = seq.drafts[i]!;
    if (!(f(randomUniformRef(seq.seed, seq.pos + i, STREAM_ACCEPT) * q[i]![x]!) < p[i]![x]!)) { a = i; break; }
  }
  const V = p[0]!.length;
  const resid = Float32Array.from(p[a]!, (v, i) => (a < seq.k ? Math.max(f(v - q[a]![i]!), 0) : v));
  const chunk = chunkFor(g, V);
  let w: Float32Array = resid, seg = segmentTotals(resid, g, chunk);
  let total = seg.totals.reduce((s, v) => f(s + v), 0);
  if (!(total > 0)) { w = p[a]!; seg = segmentTotals(w, g, chunk); total = seg.totals.reduce((s, v) => f(s + v), 0); }
  const target = f(randomUniformRef(seq.seed, seq.pos + a, STREAM_SAMPLE) * total);
  let off = 0;
  for (let s = 0; s < seg.totals.length; s++) {
    const next = f(off + seg.totals[s]!);
    if (off <= target && target < next) {
      let cand = -1, last = -1;
      for (let t = 0; t < g.wg; t++) {
        const excl = t > 0 ? seg.threadSums[s]![t - 1]! : 0;
        let run = 0;
        for (let j = 0; j < g.items; j++) {
          const i = s * g.seg + owned(g, chunk, t, j);
          const x = i < V ? w[i]! : 0;
          run = f(run + x);
          if (x > 0 && cand < 0 && f(off + f(excl + run)) > target) cand = i;
          if (x > 0) last = i;
        }
      }
      return { a, token: cand >= 0 ? cand : last };
    }
    off = next;
  }
  throw new Error('mirror: no segment holds the target');
}

interface Batch { seqs: DraftSequence[]; q: Float32Array; p: Float32Array; maxK: number; V: number }
function randomBatch(r: () => number, nSeq: number, maxK: number, V: number): Batch {
  const q = new Float32Array(nSeq * maxK * V), p = new Float32Array(nSeq * (maxK + 1) * V);
  const seqs: DraftSequence[] = [];
  for (let s = 0; s < nSeq; s++) {
    const k = Math.floor(r() * (maxK + 1));
    const drafts: number[] = [];
    for (let i = 0; i <= maxK; i++) {
      const pi = randomDist(V, r);
      // Half the sequences draft from a q close to p (long acceptances), half from an unrelated q.
      const qi = s % 2 ? randomDist(V, r) : Float32Array.from(pi, (v) => v);
      p.set(pi, (s * (maxK + 1) + i) * V);
      if (i < maxK) {
        q.set(qi, (s * maxK + i) * V);
        if (i < k) drafts.push(draw(qi, r()));
      }
    }
    seqs.push({ draftTokens: drafts, seed: (r() * 2 ** 32) >>> 0, position: Math.floor(r() * 100000) });
  }
  return { seqs, q, p, maxK, V };
}
function mirrorBatch(g: Geometry, b: Batch) {
  return b.seqs.map((s, i) => mirrorAccept(g,
    { k: s.draftTokens.length, seed: s.seed, pos: s.position, drafts: Array.from(s.draftTokens) },
    Array.from({ length: b.maxK }, (_, j) => b.q.subarray((i * b.maxK + j) * b.V, (i * b.maxK + j + 1) * b.V)),
    Array.from({ length: b.maxK + 1 }, (_, j) => b.p.subarray((i * (b.maxK + 1) + j) * b.V, (i * (b.maxK + 1) + j + 1) * b.V))));
}
async function runBatch(dev: Device, o: ReturnType<typeof rejectionSampler>, b: Batch) {
  const bufs = new Buffers(dev);
  try {
    const accepted = bufs.output('u32', b.seqs.length, 'accepted');
    const tokens = bufs.output('u32', b.seqs.length * (b.maxK + 1), 'tokens');
    runRejectionSampler(dev, o, { draftProbs: b.q, targetProbs: b.p, accepted, tokens }, b.seqs, b.maxK, b.V);
    return { accepted: await bufs.read(accepted), tokens: await bufs.read(tokens) };
  } finally { bufs.free(); }
}

const SMALL = { workgroupSize: 32, items: 4 };
// V % 4 == 0: 16-byte chunks per invocation; 1002: single words (the other ownership order).
const CONFIGS = [['small segments', SMALL, 1000], ['default segments', {}, 5000], ['small segments, words', SMALL, 1002]] as const;

// ---- the losslessness statistic ---------------------------------------------------------------
// Power: the subtlest wrong rule below (a rejection resampled from p instead of the residual)
// moves the emitted distribution by TV ≈ 0.08 from p; a correct sampler's TV at n trials is about
// Σ √(p(1 − p) / 2πn) (0.0046 at V = 50, n = 2·10^5), and the test allows 3× that (0.014), so the
// wrong rule fails by 5× and a correct one passes by 3×. 10^6 trials bought nothing more.
const TRIALS = 200_000;
const K = 3;
interface Emitted { first: Float64Array; acceptedSum: number; acceptedSq: number; n: number }
/** TV a correct sampler shows between n draws from p and p itself (its expectation, for large n). */
const tvNoise = (p: ArrayLike<number>, n: number) => Array.from(p).reduce((a, v) => a + Math.sqrt(v * (1 - v) / (2 * Math.PI * n)), 0);
/** Whether emitted first tokens look like p: TV within 3x sampling noise and at least 20x closer to p than to q. */
function lossless(e: Emitted, p0: Float32Array, q0: Float32Array): { ok: boolean; tvP: number; tvQ: number; limit: number } {
  const emp = e.first.map((c) => c / e.n);
  const tvP = tv(emp, p0), tvQ = tv(emp, q0), limit = 3 * tvNoise(p0, e.n);
  return { ok: tvP < limit && tvQ >= 20 * tvP, tvP, tvQ, limit };
}
/** E[a] and its standard deviation when position i accepts with probability β_i independently. */
function acceptedMoments(p: Float32Array[], q: Float32Array[]): { mean: number; sd: number } {
  const beta = q.map((qi, i) => qi.reduce((s, v, x) => s + Math.min(v, p[i]![x]!), 0));
  let reach = 1, mean = 0, sq = 0;
  for (let j = 1; j <= beta.length; j++) { reach *= beta[j - 1]!; mean += reach; sq += (2 * j - 1) * reach; }
  return { mean, sd: Math.sqrt(sq - mean * mean) };
}

forEachBackend('token acceptance', (dev) => {
  for (const [label, params, V] of CONFIGS) {
    it(`rejection sampling, ${label}, V = ${V}, k ≤ 4: bit-identical to the exact JS mirror`, async () => {
      const r = rng(freshSeed(`acceptance mirror ${label}`));
      const b = randomBatch(r, 96, 4, V);
      const got = await runBatch(dev, rejectionSampler({ ...params, caps: dev.caps }), b);
      const want = mirrorBatch(rejectionSampler(params).segments, b);
      let accepts = 0;
      b.seqs.forEach((s, i) => {
        const row = Array.from(got.tokens.subarray(i * (b.maxK + 1), (i + 1) * (b.maxK + 1)));
        const a = want[i]!.a;
        accepts += a;
        expect(got.accepted[i], `sequence ${i}: accepted`).toBe(a);
        expect(row, `sequence ${i}: tokens`).toEqual([...Array.from(s.draftTokens).slice(0, a), want[i]!.token, ...new Array(b.maxK - a).fill(NO_TOKEN)]);
      });
      expect(accepts).toBeGreaterThan(20); // the batch exercises acceptance as well as rejection
    });
  }

  // One launch (the last segment of a sequence to arrive draws for it) where the device has a
  // fence: the same tokens as the two launches and the mirror, twice (the second run relies on the
  // first leaving every ticket at 0). V = 4000 at small segments is 32 segments = the workgroup
  // size, the most one launch takes; 4100 (33) falls back to two launches.
  it.skipIf(!dev.caps.deviceFence)(`rejection sampling in one launch: bit-identical to two launches and the mirror, twice${dev.caps.deviceFence ? '' : ' (skipped: needs a device-scope fence, caps.deviceFence)'}`, async () => {
    const r = rng(freshSeed('acceptance one launch'));
    for (const [params, V, launches] of [[SMALL, 4000, 1], [SMALL, 1002, 1], [{}, 5000, 1], [SMALL, 4100, 2]] as const) {
      const one = rejectionSampler({ ...params, caps: dev.caps }), two = rejectionSampler({ ...params, caps: dev.caps, oneLaunch: false });
      const sizes = { seqs: 48, vocab: V, maxK: 4 };
      expect(one.plan(sizes).steps.length, `V = ${V}: launches`).toBe(launches);
      expect(two.plan(sizes).steps.length).toBe(2);
      for (let run = 0; run < 2; run++) {
        const b = randomBatch(r, sizes.seqs, sizes.maxK, V);
        const want = mirrorBatch(one.segments, b);
        const [got1, got2] = [await runBatch(dev, one, b), await runBatch(dev, two, b)];
        expect(got1.accepted, `V = ${V}, run ${run}: accepted, one launch vs two`).toEqual(got2.accepted);
        expect(got1.tokens, `V = ${V}, run ${run}: tokens, one launch vs two`).toEqual(got2.tokens);
        b.seqs.forEach((s, i) => {
          const a = want[i]!.a;
          expect(Array.from(got1.tokens.subarray(i * (b.maxK + 1), (i + 1) * (b.maxK + 1))), `V = ${V}, run ${run}, sequence ${i}`)
            .toEqual([...Array.from(s.draftTokens).slice(0, a), want[i]!.token, ...new Array(b.maxK - a).fill(NO_TOKEN)]);
        });
      }
    }
  });

  // The rule is strict (u·q < p): a token the target gives p = 0 is never accepted — not where the
  // draft's own q is 0 too (u·0 ≤ 0 would always accept it), nor where u happens to be 0.
  it('a draft token with target probability 0 is never accepted, whatever its draft probability', async () => {
    const V = 8, maxK = 1, x = 3, nSeq = 32;
    const q = new Float32Array(nSeq * maxK * V), pr = new Float32Array(nSeq * (maxK + 1) * V);
    const seqs: DraftSequence[] = [];
    for (let s = 0; s < nSeq; s++) {
      // Half one-hot on x (an n-gram drafter's q), half with q(x) = 0.
      for (let v = 0; v < V; v++) q[s * V + v] = s % 2 ? (v === x ? 1 : 0) : (v === x ? 0 : 1 / 7);
      for (let j = 0; j <= maxK; j++) for (let v = 0; v < V; v++) pr[(s * 2 + j) * V + v] = v === x ? 0 : 1 / 7;
      seqs.push({ draftTokens: [x], seed: 1000 + s, position: 7 * s });
    }
    const got = await runBatch(dev, rejectionSampler({ ...SMALL, caps: dev.caps }), { seqs, q, p: pr, maxK, V });
    expect(Array.from(got.accepted)).toEqual(new Array(nSeq).fill(0));
    for (let s = 0; s < nSeq; s++) expect(got.tokens[s * 2], `sequence ${s}: the token drawn instead`).not.toBe(x);
  });

  for (const V of [10, 50]) it(`rejection sampling is lossless: ${TRIALS} trials, V = ${V}, k = ${K}; the accepted count as expected`, async () => {
    const r = rng(20231113 + V); // fixed: a statistical test with a wide margin
    const B = 20_000, launches = TRIALS / B;
    const p = Array.from({ length: K + 1 }, () => randomDist(V, r));
    const q = p.slice(0, K).map((pi) => mixture(pi, randomDist(V, r)));
    const o = rejectionSampler({ workgroupSize: 16, items: 4, caps: dev.caps });
    const bufs = new Buffers(dev);
    try {
      const qAll = new Float32Array(B * K * V), pAll = new Float32Array(B * (K + 1) * V);
      for (let s = 0; s < B; s++) {
        q.forEach((qi, i) => qAll.set(qi, (s * K + i) * V));
        p.forEach((pi, i) => pAll.set(pi, (s * (K + 1) + i) * V));
      }
      const draftProbs = bufs.input('f32', qAll, 'q'), targetProbs = bufs.input('f32', pAll, 'p');
      const draftTokens = bufs.output('u32', B * K, 'drafts'), seqInfo = bufs.output('u32', B * 4, 'seqInfo');
      const accepted = bufs.output('u32', B, 'accepted'), tokens = bufs.output('u32', B * (K + 1), 'tokens');
      const e: Emitted = { first: new Float64Array(V), acceptedSum: 0, acceptedSq: 0, n: 0 };
      const later = Array.from({ length: K }, () => new Float64Array(V)); // token at position j ≥ 1, when emitted
      const drafts = new Uint32Array(B * K), info = new Uint32Array(B * 4);
      for (let l = 0; l < launches; l++) {
        for (let s = 0; s < B; s++) {
          for (let i = 0; i < K; i++) drafts[s * K + i] = draw(q[i]!, r());
          info.set([K, 777 + l, s * 16, 0], s * 4); // fixed seed per launch, distinct positions
        }
        dev.write(draftTokens, drafts);
        dev.write(seqInfo, info);
        dev.run(o, { draftTokens, draftProbs, targetProbs, seqInfo, accepted, tokens }, { seqs: B, vocab: V, maxK: K });
        const [acc, tok] = [await dev.read(accepted), await dev.read(tokens)];
        for (let s = 0; s < B; s++) {
          e.first[tok[s * (K + 1)]!]!++;
          for (let j = 1; j <= acc[s]!; j++) later[j - 1]![tok[s * (K + 1) + j]!]!++;
          e.acceptedSum += acc[s]!;
          e.acceptedSq += acc[s]! ** 2;
          e.n++;
        }
      }
      const res = lossless(e, p[0]!, q[0]!);
      console.log(`lossless: TV(emitted, p) = ${res.tvP.toFixed(4)} (limit ${res.limit.toFixed(4)}), TV(emitted, q) = ${res.tvQ.toFixed(4)}`);
      expect(res.tvP).toBeLessThan(res.limit);
      expect(res.tvQ).toBeGreaterThanOrEqual(20 * res.tvP);
      const m = acceptedMoments(p, q);
      const mean = e.acceptedSum / e.n;
      console.log(`accepted: mean ${mean.toFixed(4)}, expected ${m.mean.toFixed(4)} ± ${(m.sd / Math.sqrt(e.n)).toFixed(4)}`);
      expect(Math.abs(mean - m.mean)).toBeLessThan(5 * m.sd / Math.sqrt(e.n));
      // Later positions, on fewer trials: within 3x the TV a correct sampler shows at that count.
      later.forEach((c, j) => {
        const n = c.reduce((a, b) => a + b, 0);
        const noise = tvNoise(p[j + 1]!, n);
        expect(tv(c.map((x) => x / n), p[j + 1]!), `position ${j + 1} (${n} tokens)`).toBeLessThan(3 * noise);
      });
    } finally { bufs.free(); }
  }, 600_000);

  it('greedy acceptance equals the JS reference exactly (ties to the lowest index, k varies)', async () => {
    const r = rng(freshSeed('greedy acceptance'));
    for (const [label, params, V] of CONFIGS) {
      const nSeq = 64, maxK = 5;
      const scores = new Float32Array(nSeq * (maxK + 1) * V).map(() => Math.floor(r() * 200) / 8); // many ties
      const argmaxOf = (row: number) => {
        let best = 0;
        for (let i = 1; i < V; i++) if (scores[row * V + i]! > scores[row * V + best]!) best = i;
        return best;
      };
      const seqs: DraftSequence[] = Array.from({ length: nSeq }, (_, s) => {
        const k = Math.floor(r() * (maxK + 1)), agree = Math.floor(r() * (k + 1));
        const d = Array.from({ length: k }, (_, i) => (i < agree ? argmaxOf(s * (maxK + 1) + i) : Math.floor(r() * V)));
        return { draftTokens: d, seed: 0, position: 0 };
      });
      const bufs = new Buffers(dev);
      try {
        const accepted = bufs.output('u32', nSeq, 'accepted'), tokens = bufs.output('u32', nSeq * (maxK + 1), 'tokens');
        runGreedyAcceptance(dev, greedyAcceptance({ ...params, caps: dev.caps }),
          { targetScores: bufs.input('f32', scores, 'scores'), accepted, tokens }, seqs, maxK, V);
        const [acc, tok] = [await bufs.read(accepted), await bufs.read(tokens)];
        seqs.forEach((s, i) => {
          const want: number[] = [];
          let a = s.draftTokens.length;
          for (let j = 0; j <= s.draftTokens.length; j++) {
            const am = argmaxOf(i * (maxK + 1) + j);
            want.push(am);
            if (j === s.draftTokens.length || s.draftTokens[j] !== am) { a = j; break; }
          }
          expect(acc[i], `${label}: sequence ${i} accepted`).toBe(a);
          expect(Array.from(tok.subarray(i * (maxK + 1), (i + 1) * (maxK + 1))), `${label}: sequence ${i}`)
            .toEqual([...want, ...new Array(maxK - a).fill(NO_TOKEN)]);
        });
      } finally { bufs.free(); }
    }
  });
});

describe('token acceptance across backends', () => {
  const devs = availableDevices();
  it.skipIf(devs.length < 2)(`fixed seeds give identical tokens on every backend present (${devs.map((d) => d.kind).join(', ')})`, async () => {
    const r = rng(freshSeed('acceptance cross-backend'));
    const b = randomBatch(r, 200, 4, 3000);
    const results = await Promise.all(devs.map((d) => runBatch(d, rejectionSampler({ caps: d.caps }), b)));
    for (const res of results.slice(1)) {
      expect(res.accepted).toEqual(results[0]!.accepted);
      expect(res.tokens).toEqual(results[0]!.tokens);
    }
  });
});

describe('the losslessness statistic can fail', () => {
  it('detects a biased rule (rejection draws from p_a, not the residual) and "always accept"', () => {
    const r = rng(20231113);
    const V = 50;
    const p = randomDist(V, r), q = mixture(p, randomDist(V, r));
    const simulate = (rule: 'correct' | 'resample-from-p' | 'always-accept'): Emitted => {
      const e: Emitted = { first: new Float64Array(V), acceptedSum: 0, acceptedSq: 0, n: TRIALS };
      const resid = Float64Array.from(p, (v, i) => Math.max(v - q[i]!, 0));
      const rz = resid.reduce((s, v) => s + v, 0);
      for (let t = 0; t < TRIALS; t++) {
        const x = draw(q, r());
        const ok = rule === 'always-accept' || r() * q[x]! < p[x]!;
        e.first[ok ? x : rule === 'correct' ? draw(resid.map((v) => v / rz), r()) : draw(p, r())]!++;
      }
      return e;
    };
    expect(lossless(simulate('correct'), p, q).ok).toBe(true);
    for (const rule of ['resample-from-p', 'always-accept'] as const) {
      const res = lossless(simulate(rule), p, q);
      console.log(`${rule}: TV(emitted, p) = ${res.tvP.toFixed(4)}, TV(emitted, q) = ${res.tvQ.toFixed(4)}`);
      expect(res.ok, rule).toBe(false);
    }
  });
});

describe('acceptance input validation', () => {
  const seq = (d: number[]) => ({ draftTokens: d, seed: 1, position: 5 });
  it('rejects k above the allocated draft slots, draft ids outside the vocabulary, bad probabilities', () => {
    expect(() => acceptanceRows([seq([1, 2]), seq([1, 2, 3, 4])], 3, 10)).toThrow(/sequence 1: 4 draft tokens exceed the 3 allocated draft slots/);
    expect(() => acceptanceRows([seq([10])], 3, 10)).toThrow(/draft token 0 = 10 is outside the vocabulary/);
    expect(() => checkProbabilities('q', Float32Array.of(0.5, Number.NaN), 1, 2)).toThrow(/row 0, token 1 has probability NaN/);
    expect(() => checkProbabilities('q', Float32Array.of(0.5, 0.4), 1, 2)).toThrow(/row 0 sums to 0.9/);
    expect(() => checkProbabilities('q', Float32Array.of(1.5, -0.5), 1, 2)).toThrow(SamplingInputError);
    expect(() => checkProbabilities('q', Float32Array.of(0.25, 0.75), 1, 2)).not.toThrow();
  });
});
