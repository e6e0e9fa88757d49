// Continuous-batching scheduler (Orca's iteration-level scheduling over vLLM's paged KV cache).
// Pure logic: it owns the block manager's bookkeeping and never touches a device. Each step it
// admits work under a token budget and a sequence cap — running decodes first, then running
// prefills, then waiting requests in chunks — and emits a plan the model runner executes as one
// ragged forward. Out of blocks, it preempts the most recently admitted running request by
// recompute: its blocks are freed and it goes back to the head of the queue with the tokens it
// has generated, so its next prefill covers prompt + output. No request is ever dropped: one
// that cannot fit even in an empty pool is refused when it is added.
import { BlockManager, OutOfBlocksError } from '../kv/blockManager.js';

export type SchedulingMode = 'continuous' | 'static';

export interface SchedulerOptions {
  /** Tokens one step may compute (the forward's activation rows). */
  maxBatchedTokens: number;
  /** Sequences one step may carry. */
  maxSeqs: number;
  /** Most prompt tokens one sequence computes per step. */
  chunkSize: number;
  /** The model's context: no sequence grows past it. */
  maxPositions: number;
  /** 'static': fixed batches of staticBatchSize, each run until all its members finish. */
  scheduling?: SchedulingMode;
  staticBatchSize?: number;
  /** Requests waiting at most; one more is refused at once (default: unbounded). */
  maxWaiting?: number;
}

export class SchedulerError extends Error {}
/** The request can never run: it does not fit the KV pool even alone. */
export class AdmissionError extends SchedulerError {}
/** The waiting queue is full (maxWaiting): try again later. */
export class QueueFullError extends SchedulerError {}

export interface SchedRequest {
  id: number;
  prompt: readonly number[];
  /** Generated tokens at most: with the prompt, what the pool must be able to hold. */
  maxTokens: number;
  /** Larger runs first among waiting requests (default 0); FCFS within a priority. */
  priority?: number;
}

/** One sequence's part of a step. */
export interface ScheduledSeq {
  id: number;
  /** Tokens whose KV this step computes (their ids). */
  tokens: number[];
  /** Tokens already in the sequence's KV cache. */
  ctxLen: number;
  blockTable: number[];
  slots: number[];
  /** The chunk reaches the end of the known tokens: its last row's logits give the next token. */
  sample: boolean;
  /** Whether it is a decode (the prompt is computed) or a prefill chunk. */
  phase: 'decode' | 'prefill';
}

export interface StepPlan {
  seqs: ScheduledSeq[];
  numTokens: number;
  /** Requests preempted while planning this step (their blocks are already freed). */
  preempted: number[];
  /** Every sequence brings exactly one token and samples: a fixed-shape decode step. */
  decodeOnly: boolean;
}

type State = 'waiting' | 'running';

interface Seq {
  id: number;
  tokens: number[];
  promptLen: number;
  maxTokens: number;
  priority: number;
  arrival: number;
  /** Admission order while running (preemption takes the largest); −1 while waiting. */
  admitted: number;
  /** Tokens whose KV is in the cache. */
  computed: number;
  /** Leading tokens the prefix cache supplied at the last admission. */
  cached: number;
  /** Prompt tokens the prefix cache supplied at the first admission. */
  promptCached: number;
  preemptions: number;
  state: State;
  /** Tokens the next step must bring beyond `tokens` (speculative drafts), set by the engine. */
  extra: number[];
}

export interface SchedulerStats {
  running: number;
  waiting: number;
  /** Requests waiting to be recomputed after a preemption. */
  preempted: number;
  /** Preemptions so far. */
  preemptions: number;
  blocks: { used: number; cached: number; free: number; total: number };
}

/** Only the last known token is left to compute (plus any drafts): a decode. */
const isDecode = (s: Seq) => s.tokens.length - s.computed === 1;

export class Scheduler {
  readonly blocks: BlockManager;
  readonly mode: SchedulingMode;
  readonly opts: Required<Omit<SchedulerOptions, 'scheduling'>>;
  private readonly seqs = new Map<number, Seq>();
  /** Running, in admission order. */
  private running: Seq[] = [];
  private waiting: Seq[] = [];
  /** Preempted requests, served before anything waiting (by arrival). */
  private preemptedQ: Seq[] = [];
  private arrivals = 0;
  private admissions = 0;
  private preemptionCount = 0;

  constructor(blocks: BlockManager, opts: SchedulerOptions) {
    this.blocks = blocks;
    this.mode = opts.scheduling ?? 'continuous';
    if (this.mode !== 'continuous' && this.mode !== 'static') throw new SchedulerError(`scheduling '${String(opts.scheduling)}' is not 'continuous' or 'static'`);
    this.opts = {
      maxBatchedTokens: opts.maxBatchedTokens, maxSeqs: opts.maxSeqs, chunkSize: opts.chunkSize,
      maxPositions: opts.maxPositions, staticBatchSize: opts.staticBatchSize ?? 8, maxWaiting: opts.maxWaiting ?? Infinity,
    };
    for (const name of ['maxBatchedTokens', 'maxSeqs', 'chunkSize', 'maxPositions', 'staticBatchSize'] as const) {
      const v = this.opts[name];
      if (!Number.isInteger(v) || v < 1) throw new SchedulerError(`${name} = ${v} must be a positive integer`);
    }
    const mw = this.opts.maxWaiting;
    if (mw !== Infinity && (!Number.isInteger(mw) || mw < 0)) throw new SchedulerError(`maxWaiting = ${mw} must be a non-negative integer`);
    if (this.mode === 'static' && this.opts.staticBatchSize > this.opts.maxSeqs) {
      throw new SchedulerError(`staticBatchSize = ${this.opts.staticBatchSize} exceeds maxSeqs = ${this.opts.maxSeqs}`);
    }
  }

  /** Blocks a request of this many tokens needs at its longest. */
  private blocksFor(tokens: number): number { return Math.ceil(tokens / this.blocks.blockSize); }

  /** Queue a request. Throws AdmissionError if it can never fit, QueueFullError at maxWaiting. */
  add(r: SchedRequest): void {
    if (this.seqs.has(r.id)) throw new SchedulerError(`request ${r.id} is already scheduled`);
    if (!r.prompt.length) throw new AdmissionError(`request ${r.id}: the prompt has no tokens`);
    const longest = Math.min(r.prompt.length + r.maxTokens, this.opts.maxPositions);
    const need = this.blocksFor(longest);
    if (need > this.blocks.numBlocks) {
      throw new AdmissionError(`request ${r.id}: ${longest} tokens (prompt ${r.prompt.length} + up to ${r.maxTokens} generated) need ${need} KV blocks of ${this.blocks.blockSize}, but the pool has ${this.blocks.numBlocks}: raise kvMemory / kvBlocks or lower maxTokens`);
    }
    if (this.waiting.length + this.preemptedQ.length >= this.opts.maxWaiting) {
      throw new QueueFullError(`the queue is full (maxWaiting = ${this.opts.maxWaiting} requests waiting)`);
    }
    const s: Seq = {
      id: r.id, tokens: [...r.prompt], promptLen: r.prompt.length, maxTokens: r.maxTokens, priority: r.priority ?? 0,
      arrival: this.arrivals++, admitted: -1, computed: 0, cached: 0, promptCached: -1, preemptions: 0, state: 'waiting', extra: [],
    };
    this.seqs.set(r.id, s);
    // Larger priority first, then arrival (stable insertion keeps FCFS within a priority).
    let i = this.waiting.length;
    while (i > 0 && this.waiting[i - 1]!.priority < s.priority) i--;
    this.waiting.splice(i, 0, s);
  }

  has(id: number): boolean { return this.seqs.has(id); }
  get hasWork(): boolean { return this.running.length + this.waiting.length + this.preemptedQ.length > 0; }
  isRunning(id: number): boolean { return this.seqs.get(id)?.state === 'running'; }
  tokens(id: number): readonly number[] { return this.get(id).tokens; }
  /** Prompt tokens served from the prefix cache at the request's first admission. */
  cachedPromptTokens(id: number): number { return Math.max(0, this.get(id).promptCached); }
  preemptionsOf(id: number): number { return this.get(id).preemptions; }

  /** Speculative drafts the next step computes after the sequence's last token (engine-set). */
  setDrafts(id: number, drafts: readonly number[]): void { this.get(id).extra = [...drafts]; }
  drafts(id: number): readonly number[] { return this.get(id).extra; }

  /** Running sequences whose next step is a decode (one known token left), oldest first. */
  decodeCandidates(): number[] {
    return this.running.filter((s) => isDecode(s)).map((s) => s.id);
  }

  /** Remove a request (finished, aborted or failed) and free its blocks. `dropCached`: its full
   *  blocks leave the prefix cache too (after a failed pass their KV may be unwritten). */
  remove(id: number, opts: { dropCached?: boolean } = {}): void {
    const s = this.seqs.get(id);
    if (!s) return;
    if (this.blocks.has(id)) this.blocks.free(id, opts);
    this.seqs.delete(id);
    this.running = this.running.filter((x) => x !== s);
    this.waiting = this.waiting.filter((x) => x !== s);
    this.preemptedQ = this.preemptedQ.filter((x) => x !== s);
  }

  /** Plan the next step. Empty when there is no work (or none fits: never while work is running). */
  schedule(): StepPlan {
    const o = this.opts;
    let budget = o.maxBatchedTokens;
    const out: ScheduledSeq[] = [];
    const preempted: number[] = [];
    const planned = new Set<Seq>();

    // Allocate slots for `s`'s next `n` tokens, preempting the most recently admitted running
    // request not yet planned this step until they fit. Returns null if `s` itself was preempted.
    const allocate = (s: Seq, toks: number[], speculative: number): number[] | null => {
      for (;;) {
        try {
          return this.blocks.append(s.id, toks, { speculative });
        } catch (e) {
          if (!(e instanceof OutOfBlocksError)) throw e;
          const victim = [...this.running].reverse().find((x) => !planned.has(x));
          if (!victim || victim === s) {
            this.preempt(s);
            preempted.push(s.id);
            return null;
          }
          this.preempt(victim);
          preempted.push(victim.id);
        }
      }
    };
    const plan = (s: Seq, n: number) => {
      const toks = [...s.tokens, ...s.extra].slice(s.computed, s.computed + n);
      const ctxLen = s.computed;
      const slots = allocate(s, toks, Math.max(0, ctxLen + toks.length - s.tokens.length));
      if (!slots) return false;
      planned.add(s);
      const known = s.tokens.length + s.extra.length;
      out.push({
        id: s.id, tokens: toks, ctxLen, blockTable: this.blocks.blockTable(s.id), slots,
        sample: ctxLen + toks.length === known, phase: isDecode(s) ? 'decode' : 'prefill',
      });
      budget -= toks.length;
      return true;
    };

    // 1. Running decodes: all of a decode's tokens (1, or 1 + drafts) or none.
    for (const s of [...this.running]) {
      if (out.length >= o.maxSeqs) break;
      if (s.state !== 'running' || !isDecode(s)) continue;
      const n = s.tokens.length + s.extra.length - s.computed;
      if (n <= 0 || n > budget) continue;
      plan(s, n);
    }
    // 2. Running prefills (a chunk each; after a preemption the prompt and the output so far).
    for (const s of [...this.running]) {
      if (out.length >= o.maxSeqs || budget <= 0) break;
      if (s.state !== 'running' || planned.has(s) || isDecode(s)) continue;
      const n = Math.min(s.tokens.length - s.computed, o.chunkSize, budget);
      if (n > 0) plan(s, n);
    }
    // 3. Admissions: preempted requests first, then the waiting queue.
    if (this.mode === 'continuous') {
      while (out.length < o.maxSeqs && this.running.length < o.maxSeqs && budget > 0) {
        const s = this.preemptedQ[0] ?? this.waiting[0];
        if (!s) break;
        if (!this.admit(s)) break;
        const n = Math.min(s.tokens.length - s.computed, o.chunkSize, budget);
        if (!plan(s, n)) break;
      }
    } else if (this.running.length === 0 && out.length === 0) {
      // Static: the whole batch forms at once; its prefills run in the steps that follow.
      const cap = Math.min(o.maxSeqs, o.staticBatchSize);
      while (this.running.length < cap) {
        const s = this.preemptedQ[0] ?? this.waiting[0];
        if (!s || !this.admit(s)) break;
      }
      for (const s of [...this.running]) {
        if (out.length >= o.maxSeqs || budget <= 0) break;
        const n = Math.min(s.tokens.length - s.computed, o.chunkSize, budget);
        if (n > 0 && !planned.has(s)) plan(s, n);
      }
    }
    const decodeOnly = out.length > 0 && out.every((q) => q.tokens.length === 1 && q.sample);
    return { seqs: out, numTokens: o.maxBatchedTokens - budget, preempted, decodeOnly };
  }

  /**
   * After the runner executed a plan: the planned tokens' KV is computed. Drafts that were part
   * of it stay pending until `accept` (speculation) or are cleared.
   */
  commit(plan: StepPlan): void {
    for (const q of plan.seqs) {
      const s = this.seqs.get(q.id);
      if (s?.state !== 'running') continue;
      s.computed = q.ctxLen + q.tokens.length;
    }
  }

  /**
   * Append sampled tokens (a decode's next token, or a speculative step's accepted drafts plus
   * the bonus). Drafts are cleared; KV beyond the accepted tokens is rolled back, freeing blocks
   * past the new length.
   */
  append(id: number, newTokens: readonly number[], acceptedDrafts = 0): void {
    const s = this.get(id);
    if (acceptedDrafts > s.extra.length) throw new SchedulerError(`request ${id}: ${acceptedDrafts} accepted drafts of ${s.extra.length}`);
    // KV valid: the tokens before the drafts plus the accepted drafts.
    const validKv = Math.min(s.computed, s.tokens.length + acceptedDrafts);
    const hadDrafts = s.extra.length > 0;
    s.extra = [];
    s.tokens.push(...newTokens);
    if (hadDrafts && this.blocks.has(id) && this.blocks.length(id) > validKv) {
      const { copy } = this.blocks.truncate(id, validKv);
      s.computed = validKv;
      // Blocks holding drafts are never in the prefix cache, so none is shared when cut.
      if (copy) throw new SchedulerError(`request ${id}: rolling back drafts needed a copy of shared block ${copy.src}`);
    }
  }

  /** Requests in each queue, preemptions so far and the block pool. */
  stats(): SchedulerStats {
    const b = this.blocks.stats();
    return {
      running: this.running.length, waiting: this.waiting.length, preempted: this.preemptedQ.length,
      preemptions: this.preemptionCount, blocks: b,
    };
  }

  /** Ids in each state (tests, the engine's close). */
  ids(): { running: number[]; waiting: number[]; preempted: number[] } {
    return { running: this.running.map((s) => s.id), waiting: this.waiting.map((s) => s.id), preempted: this.preemptedQ.map((s) => s.id) };
  }

  private admit(s: Seq): boolean {
    const cached = this.blocks.addSequence(s.id, s.tokens);
    // The chunk after the cached prefix must fit now; otherwise wait for blocks to free up.
    const n = Math.min(s.tokens.length - cached, this.opts.chunkSize);
    if (this.blocks.blocksNeeded(s.id, n) > this.blocks.freeBlocks) {
      this.blocks.free(s.id);
      return false;
    }
    s.computed = cached;
    s.cached = cached;
    if (s.promptCached < 0) s.promptCached = Math.min(cached, s.promptLen);
    s.state = 'running';
    s.admitted = this.admissions++;
    this.waiting = this.waiting.filter((x) => x !== s);
    this.preemptedQ = this.preemptedQ.filter((x) => x !== s);
    this.running.push(s);
    return true;
  }

  private preempt(s: Seq): void {
    // Its KV up to `computed` was written by finished passes, so its full blocks may stay cached.
    if (this.blocks.has(s.id)) this.blocks.free(s.id);
    s.state = 'waiting';
    s.admitted = -1;
    s.computed = 0;
    s.extra = [];
    s.preemptions++;
    this.preemptionCount++;
    this.running = this.running.filter((x) => x !== s);
    let i = this.preemptedQ.length;
    while (i > 0 && this.preemptedQ[i - 1]!.arrival > s.arrival) i--;
    this.preemptedQ.splice(i, 0, s);
  }

  private get(id: number): Seq {
    const s = this.seqs.get(id);
    if (!s) throw new SchedulerError(`unknown request ${id}`);
    return s;
  }
}
