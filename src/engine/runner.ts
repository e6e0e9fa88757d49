// The model runner: executes one scheduler step on the device — one ragged forward (or a
// fixed-shape decode step when every sequence decodes one token), then one sampling launch for
// every row that needs a token, each row with its own request's parameters and random key
// (seed, position) — and reads back only the sampled ids (and log-probabilities where asked).
import { logSoftmax } from '../../codegen/kernels/logSoftmax.js';
import { NO_TOKEN, sampling } from '../../codegen/kernels/sampling.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import type { LlamaForward, SeqInput } from '../model/forward.js';
import { runSampling, type SamplingRequest } from '../ops/sampling.js';
import type { ScheduledSeq } from '../sched/scheduler.js';

/** Sampling parameters of one request. */
export interface RowSampling {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  seed: number;
  /** Top log-probabilities to return per token (0: none). */
  logprobs: number;
}

/** One sampled row: the token at `position` of its sequence. */
export interface SampledRow {
  id: number;
  position: number;
  /** NO_TOKEN when the row's logits were not finite. */
  token: number;
  logprob?: number;
  topLogprobs?: { tokenId: number; logprob: number }[];
}

export class ModelRunner {
  private readonly sampler;
  private readonly logSoftmaxOp;
  private readonly probs: DeviceBuffer<'f32'>;
  private readonly tokens: DeviceBuffer<'u32'>;
  private logprobBuf: DeviceBuffer<'f32'> | null = null;
  readonly maxRows: number;
  launchesPerStep = 0;

  constructor(readonly dev: Device, readonly fw: LlamaForward, readonly vocab: number, maxRows: number) {
    this.maxRows = maxRows;
    this.sampler = sampling({ caps: dev.caps });
    this.logSoftmaxOp = logSoftmax({ caps: dev.caps });
    this.probs = dev.alloc('f32', maxRows * vocab, 'engine.probs');
    try {
      this.tokens = dev.alloc('u32', maxRows, 'engine.sampled');
    } catch (e) {
      dev.free(this.probs);
      throw e;
    }
  }

  /**
   * Run the step's forward and sample a token for each sequence that reached the end of its
   * known tokens (`sample`): one row normally; for a speculative verify (`verify(id)` = k > 0
   * drafts among its tokens) its last k + 1 rows, each with its own draw at its own position.
   * Rows come back in batch order; `probs` then holds their transformed distributions.
   */
  async step(seqs: readonly ScheduledSeq[], params: (id: number) => RowSampling, decodeOnly: boolean,
    verify: (id: number) => number = () => 0): Promise<SampledRow[]> {
    const rows: { id: number; position: number; p: RowSampling }[] = [];
    const batch: SeqInput[] = seqs.map((q) => {
      const k = q.sample ? verify(q.id) : 0;
      if (q.sample) {
        const p = params(q.id);
        for (let a = k; a >= 0; a--) rows.push({ id: q.id, position: q.ctxLen + q.tokens.length - a, p });
      }
      if (k > 0 && k !== q.tokens.length - 1) throw new Error(`engine: request ${q.id} verifies ${k} drafts but brings ${q.tokens.length} tokens`);
      return { tokens: q.tokens, ctxLen: q.ctxLen, blockTable: q.blockTable, slots: q.slots, logits: k > 0 ? 'all' : q.sample ? 'last' : 'none' };
    });
    if (decodeOnly) this.fw.decodeStep(batch);
    else this.fw.enqueue(batch);
    if (!rows.length) { await this.dev.sync(); return []; }
    return this.sampleRows(this.fw.logitsBuffer, rows);
  }

  /** The transformed distributions of the last sampled rows ([rows, vocab]). */
  get probsBuffer(): DeviceBuffer<'f32'> { return this.probs; }

  /** Sample rows 0..n−1 of `logits` ([n, vocab]); one launch for all, one read back. */
  async sampleRows(logits: DeviceBuffer<'f32'>, rows: { id: number; position: number; p: RowSampling }[]): Promise<SampledRow[]> {
    if (rows.length > this.maxRows) throw new Error(`engine: ${rows.length} rows to sample exceed the ${this.maxRows} allocated`);
    const reqs: SamplingRequest[] = rows.map(({ p, position }) => ({
      temperature: p.temperature, topK: p.topK, topP: p.topP, minP: p.minP, seed: p.seed, position,
    }));
    runSampling(this.dev, this.sampler, { logits, probs: this.probs, tokens: this.tokens }, reqs, this.vocab);
    const wantLp = rows.some((r) => r.p.logprobs > 0);
    let lp: Float32Array | null = null;
    if (wantLp) {
      const n = rows.length * this.vocab;
      if (!this.logprobBuf || this.logprobBuf.length < n) {
        if (this.logprobBuf) this.dev.free(this.logprobBuf);
        this.logprobBuf = this.dev.alloc('f32', this.maxRows * this.vocab, 'engine.logprobs');
      }
      this.dev.run(this.logSoftmaxOp, { x: logits, out: this.logprobBuf }, { rows: rows.length, vocab: this.vocab });
    }
    const ids = await this.dev.read(this.tokens);
    if (wantLp) lp = await this.dev.read(this.logprobBuf!);
    return rows.map((r, i) => {
      const token = ids[i]!;
      const out: SampledRow = { id: r.id, position: r.position, token };
      if (lp && r.p.logprobs > 0 && token !== NO_TOKEN) {
        const row = lp.subarray(i * this.vocab, (i + 1) * this.vocab);
        out.logprob = row[token]!;
        out.topLogprobs = topN(row, r.p.logprobs);
      }
      return out;
    });
  }

  destroy(): void {
    this.dev.free(this.probs);
    this.dev.free(this.tokens);
    if (this.logprobBuf) this.dev.free(this.logprobBuf);
    this.logprobBuf = null;
  }
}

/** The n largest entries of a row, largest first (ties to the lower id). */
export function topN(row: Float32Array, n: number): { tokenId: number; logprob: number }[] {
  const best: { tokenId: number; logprob: number }[] = [];
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    let j: number;
    if (best.length < n) { best.push({ tokenId: i, logprob: v }); j = best.length - 1; } else if (v > best[n - 1]!.logprob) j = n - 1;
    else continue;
    while (j > 0 && best[j - 1]!.logprob < v) { best[j] = best[j - 1]!; j--; }
    best[j] = { tokenId: i, logprob: v };
  }
  return best;
}
