// Speculative decoding inside the engine's step. Before a step the drafter proposes up to k
// tokens for each decoding sequence; the scheduler plans them as k + 1 query tokens of the same
// ragged forward as everyone else's prefills and decodes; after it, acceptance decides per
// sequence — greedy requests by comparing each draft with the target's argmax (which the sampling
// launch already computed), sampled requests by the rejection-sampling kernel on the target's and
// the drafter's transformed distributions — and the rejected drafts' KV is rolled back.
import { rejectionSampler } from '../../codegen/kernels/acceptance.js';
import { copyRows } from '../../codegen/kernels/copyRows.js';
import { GEMV_MAX_ROWS } from '../../codegen/kernels/linearOp.js';
import { NO_TOKEN } from '../../codegen/kernels/sampling.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import { scratchBuffer } from '../backend/scratch.js';
import { type DraftSequence, runRejectionSampler } from '../ops/sampling.js';
import type { DraftRequest, DraftResult, Drafter } from '../spec/drafter.js';
import type { RowSampling } from './runner.js';

export interface SpeculationOptions {
  /** A draft model (an LLM of the same vocabulary on the same device) or 'ngram' (prompt lookup). */
  drafter: 'ngram' | Drafter | { readonly spec: { vocabSize: number } };
  /** Drafts per step at most (default 4). */
  k?: number;
  /** Choose k per sequence from its acceptance rate (default true). */
  adaptive?: boolean;
  /** Speculate only while at most this many sequences decode in a step (default 8). */
  maxBatch?: number;
  /**
   * Rows a step's decodes and drafts may add up to (default: 8 on software devices — the linear
   * layers' GEMV path, past which a CPU step costs several times more — else unbounded).
   */
  maxVerifyRows?: number;
}

/** Per-sequence k from its measured acceptance rate and the draft/verify cost ratio. */
export class AdaptiveK {
  private readonly seqs = new Map<number, { rate: number; idle: number }>();
  /** Cost of one drafted token relative to one target step (EMA of measurements). */
  draftCost = 0.1;
  /** Extra cost of one more verified token relative to one target step (EMA of measurements). */
  verifyCost = 0.25;

  constructor(readonly maxK: number, readonly adaptive: boolean) {}

  /** Expected tokens a step emits with k drafts at acceptance rate α: (1 − α^{k+1}) / (1 − α). */
  static expected(alpha: number, k: number): number {
    return alpha >= 1 ? k + 1 : (1 - alpha ** (k + 1)) / (1 - alpha);
  }

  k(id: number): number {
    if (!this.adaptive) return this.maxK;
    const s = this.seqs.get(id) ?? { rate: 0.6, idle: 0 };
    let best = 0, bestGain = 1;
    for (let k = 1; k <= this.maxK; k++) {
      // Tokens per unit of time: a verify of k + 1 rows costs about one step plus the drafts.
      const gain = AdaptiveK.expected(s.rate, k) / (1 + (this.draftCost + this.verifyCost) * k);
      if (gain > bestGain * 1.02) { best = k; bestGain = gain; }
    }
    if (best === 0) {
      // Switched off: probe again now and then, in case the text became predictable.
      s.idle++;
      this.seqs.set(id, s);
      return s.idle % 8 === 0 ? 1 : 0;
    }
    return best;
  }

  observe(id: number, drafted: number, accepted: number): void {
    if (!drafted) return;
    const s = this.seqs.get(id) ?? { rate: 0.6, idle: 0 };
    // Per-draft acceptance: the first rejection ends a run, so accepted/drafted underestimates α
    // when a run ends early; (accepted)/(accepted + 1) is its maximum-likelihood estimate per step.
    const obs = accepted >= drafted ? 1 : accepted / (accepted + 1);
    s.rate = 0.8 * s.rate + 0.2 * Math.min(obs, 0.98);
    this.seqs.set(id, s);
  }

  forget(id: number): void { this.seqs.delete(id); }
}

/** One speculating sequence of a step after verification. */
export interface Verified {
  id: number;
  /** Tokens to commit: the accepted drafts, then the target's own token. */
  tokens: number[];
  accepted: number;
  drafted: number;
  /** A target row was not finite. */
  failed: boolean;
}

export class Speculator {
  readonly policy: AdaptiveK;
  readonly maxBatch: number;
  private readonly sampler;
  private readonly copy;
  private readonly accepted: DeviceBuffer<'u32'>;
  private readonly tokens: DeviceBuffer<'u32'>;
  /** This step's proposals: id → index in the drafter's result and the drafts. */
  private current: { result: DraftResult; byId: Map<number, { idx: number; drafts: number[] }> } | null = null;
  totals = { drafted: 0, accepted: 0, verifies: 0, draftMs: 0, stepMs: 0 };
  /** The drafter's last failure (that step went without speculation). */
  lastError: string | null = null;

  readonly maxVerifyRows: number;

  constructor(readonly dev: Device, readonly drafter: Drafter, readonly vocab: number, readonly maxSeqs: number,
    o: { k: number; adaptive: boolean; maxBatch: number; maxVerifyRows?: number }) {
    this.policy = new AdaptiveK(o.k, o.adaptive);
    this.maxBatch = o.maxBatch;
    this.maxVerifyRows = o.maxVerifyRows ?? (dev.profile.software ? GEMV_MAX_ROWS : Number.MAX_SAFE_INTEGER);
    this.sampler = rejectionSampler({ caps: dev.caps });
    this.copy = copyRows({ caps: dev.caps });
    this.accepted = dev.alloc('u32', maxSeqs, 'spec.accepted');
    this.tokens = dev.alloc('u32', maxSeqs * (o.k + 1), 'spec.tokens');
  }

  /**
   * Propose drafts for the decoding sequences `cands` (oldest first), each with its own k
   * (adaptive, capped by what it may still generate). Returns the drafts per id.
   */
  async propose(cands: { id: number; tokens: readonly number[]; remaining: number; sampling: RowSampling }[]): Promise<Map<number, number[]>> {
    this.current = null;
    const out = new Map<number, number[]>();
    if (!cands.length || cands.length > this.maxBatch) return out;
    const reqs: DraftRequest[] = [];
    // Every decode brings one row; drafts share what is left of maxVerifyRows, oldest first.
    let rows = this.maxVerifyRows - cands.length;
    for (const c of cands) {
      // Drafts past the token limit are wasted, not wrong: the step stops at the limit.
      const k = Math.min(this.policy.k(c.id), c.remaining, Math.max(0, rows));
      if (k > 0) { reqs.push({ id: c.id, tokens: c.tokens, k, sampling: c.sampling }); rows -= k; }
    }
    if (!reqs.length) return out;
    const t0 = performance.now();
    const result = await this.drafter.propose(reqs);
    const ms = performance.now() - t0;
    this.totals.draftMs += ms;
    // Cost of one drafted token (each draft position is one batched step of the drafter).
    const positions = Math.max(1, ...result.tokens.map((t) => t.length));
    this.draftMsPerPosition = this.draftMsPerPosition < 0 ? ms / positions : 0.8 * this.draftMsPerPosition + 0.2 * (ms / positions);
    this.updateCost();
    const byId = new Map<number, { idx: number; drafts: number[] }>();
    reqs.forEach((r, idx) => {
      const d = result.tokens[idx]!.slice(0, r.k);
      if (d.length) { byId.set(r.id, { idx, drafts: d }); out.set(r.id, d); }
    });
    this.current = { result, byId };
    return out;
  }

  private draftMsPerPosition = -1;
  private stepMsAvg = -1;

  /**
   * A target step of `extra` verified drafts took `ms`: steps without drafts set the plain step
   * time, steps with them the cost per extra token; with the drafter's cost per position they set
   * the policy's ratios.
   */
  observeStep(ms: number, extra: number): void {
    this.totals.stepMs += ms;
    if (extra === 0) this.stepMsAvg = this.stepMsAvg < 0 ? ms : 0.8 * this.stepMsAvg + 0.2 * ms;
    else if (this.stepMsAvg < 0) this.stepMsAvg = ms / (1 + this.policy.verifyCost * extra);
    else {
      const per = Math.max(0, (ms - this.stepMsAvg) / extra) / this.stepMsAvg;
      this.policy.verifyCost = 0.8 * this.policy.verifyCost + 0.2 * Math.min(per, 2);
    }
    this.updateCost();
  }

  private updateCost(): void {
    if (this.draftMsPerPosition >= 0 && this.stepMsAvg > 0) this.policy.draftCost = Math.min(4, this.draftMsPerPosition / this.stepMsAvg);
  }

  /** Drafts of `id` proposed this step (0 if none). */
  drafted(id: number): number { return this.current?.byId.get(id)?.drafts.length ?? 0; }

  /**
   * Decide every speculating sequence of the step. `rows`: the target's sampled token per row
   * and each sequence's first row index; the target's distributions are in `probs` (batch rows).
   */
  async verify(seqs: { id: number; firstRow: number; rowTokens: number[]; sampling: RowSampling; position: number }[],
    probs: DeviceBuffer<'f32'>, probRows: number): Promise<Verified[]> {
    const cur = this.current;
    if (!cur || !seqs.length) return [];
    const out: Verified[] = [];
    const sampled: (typeof seqs[number] & { drafts: number[]; idx: number })[] = [];
    for (const s of seqs) {
      const d = cur.byId.get(s.id);
      if (!d) continue;
      const k = d.drafts.length;
      if (s.rowTokens.slice(0, k + 1).some((t) => t === NO_TOKEN)) { out.push({ id: s.id, tokens: [], accepted: 0, drafted: k, failed: true }); continue; }
      if (s.sampling.temperature === 0) {
        // Greedy: accept while the draft is the target's argmax; then the target's own token.
        let a = 0;
        while (a < k && d.drafts[a] === s.rowTokens[a]) a++;
        out.push({ id: s.id, tokens: [...d.drafts.slice(0, a), s.rowTokens[a]!], accepted: a, drafted: k, failed: false });
      } else sampled.push({ ...s, drafts: d.drafts, idx: d.idx });
    }
    if (sampled.length) out.push(...await this.rejection(sampled, cur.result, probs, probRows));
    for (const v of out) {
      this.totals.drafted += v.drafted;
      this.totals.accepted += v.accepted;
      this.totals.verifies++;
      this.policy.observe(v.id, v.drafted, v.accepted);
    }
    return out;
  }

  /** Rejection sampling on the device for the sampled sequences. */
  private async rejection(seqs: { id: number; firstRow: number; drafts: number[]; idx: number; sampling: RowSampling; position: number }[],
    draft: DraftResult, probs: DeviceBuffer<'f32'>, probRows: number): Promise<Verified[]> {
    const dev = this.dev, V = this.vocab, n = seqs.length;
    const maxK = Math.max(...seqs.map((s) => s.drafts.length));
    // The target's rows, from batch order to [sequence, k + 1].
    const target = scratchBuffer(dev, 'spec.targetProbs', 'f32', this.maxSeqs * (this.policy.maxK + 1) * V);
    const src: number[] = [], dst: number[] = [];
    seqs.forEach((s, i) => { for (let a = 0; a <= s.drafts.length; a++) { src.push(s.firstRow + a); dst.push(i * (maxK + 1) + a); } });
    this.copyRowsOf('target', probs, probRows, src, dst, target, n * (maxK + 1));
    // The drafter's rows, from its order to [sequence, maxK]; one-hot where it gave none.
    let draftProbs: DeviceBuffer<'f32'> | Float32Array;
    if (draft.probs) {
      const q = scratchBuffer(dev, 'spec.draftProbs', 'f32', this.maxSeqs * this.policy.maxK * V);
      const qs: number[] = [], qd: number[] = [];
      seqs.forEach((s, i) => { for (let j = 0; j < s.drafts.length; j++) { qs.push(s.idx * draft.maxK + j); qd.push(i * maxK + j); } });
      this.copyRowsOf('draft', draft.probs, draft.probs.length / V, qs, qd, q, n * maxK);
      draftProbs = q;
    } else {
      const q = new Float32Array(n * maxK * V);
      seqs.forEach((s, i) => s.drafts.forEach((x, j) => { q[(i * maxK + j) * V + x] = 1; }));
      draftProbs = q;
    }
    const dseqs: DraftSequence[] = seqs.map((s) => ({ draftTokens: s.drafts, seed: s.sampling.seed, position: s.position }));
    runRejectionSampler(dev, this.sampler, { draftProbs, targetProbs: target, accepted: this.accepted, tokens: this.tokens }, dseqs, maxK, V);
    // One read: a row is the a accepted drafts, the extra token, then NO_TOKEN, so it gives a too.
    const toks = await dev.read(this.tokens);
    return seqs.map((s, i) => {
      const all = Array.from(toks.subarray(i * (maxK + 1), i * (maxK + 1) + s.drafts.length + 1));
      const end = all.indexOf(NO_TOKEN);
      const row = end < 0 ? all : all.slice(0, end);
      // An extra token that is NO_TOKEN itself (non-finite row) leaves the row one short.
      const failed = row.length === 0 || row.slice(0, -1).some((t, j) => t !== s.drafts[j]);
      return { id: s.id, tokens: row, accepted: row.length - 1, drafted: s.drafts.length, failed };
    });
  }

  private copyRowsOf(tag: string, src: DeviceBuffer<'f32'>, srcRowCount: number, from: number[], to: number[], dst: DeviceBuffer<'f32'>, dstRowCount: number): void {
    if (!from.length) return;
    // Row tables sized for the largest step at once, so they never regrow under queued launches.
    const most = this.maxSeqs * (this.policy.maxK + 1);
    const a = scratchBuffer(this.dev, `spec.${tag}From`, 'u32', most), b = scratchBuffer(this.dev, `spec.${tag}To`, 'u32', most);
    this.dev.write(a, Uint32Array.from(from));
    this.dev.write(b, Uint32Array.from(to));
    this.dev.launch(this.copy, { src, srcRows: a, dstRows: b, dst }, { R: from.length, D: this.vocab, srcRowCount, dstRowCount });
  }

  /** The sequence ended or was preempted. */
  release(id: number): void {
    this.drafter.release(id);
    this.policy.forget(id);
  }

  async close(): Promise<void> {
    await this.drafter.close();
    this.dev.free(this.accepted);
    this.dev.free(this.tokens);
  }
}
