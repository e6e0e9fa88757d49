// The serving engine: many concurrent requests over one model, by iteration-level scheduling
// (Orca) over a paged KV cache (vLLM). A loop runs steps while there is work: the scheduler
// plans a step (src/sched), the runner executes it as one ragged forward plus one sampling launch
// (src/engine/runner.ts), and the sampled tokens go to each request's stream. Requests join and
// leave at step boundaries; aborts, closes and errors take effect there too, and every request's
// blocks are freed however it ends. One code path serves one request and many: LLM.generate is a
// thin wrapper over an engine.
import { NO_TOKEN } from '../codegen/kernels/sampling.js';
import type { Device } from './backend/device.js';
import { type EngineToken, type FinishReason, RequestHandle, type RequestResult } from './engine/requestHandle.js';
import { ModelRunner, type RowSampling, type SampledRow } from './engine/runner.js';
import { type SpeculationOptions, Speculator } from './engine/speculation.js';
import { TextStream } from './engine/textStream.js';
import type { HfTokenizer } from './io/tokenizer.js';
import { BlockManager } from './kv/blockManager.js';
import { LlamaForward } from './model/forward.js';
import type { ModelSpec } from './model/spec.js';
import type { ModelWeights } from './model/weights.js';
import { platform } from './platform/index.js';
import { Scheduler, type SchedulingMode, type StepPlan } from './sched/scheduler.js';
import { DraftModelDrafter } from './spec/draftModel.js';
import type { Drafter } from './spec/drafter.js';
import { NgramDrafter } from './spec/ngram.js';

export type { EngineToken, FinishReason, RequestResult } from './engine/requestHandle.js';
export { RequestHandle } from './engine/requestHandle.js';
export { AdmissionError, QueueFullError } from './sched/scheduler.js';
export type { SpeculationOptions } from './engine/speculation.js';

/** Bad input to the engine: an option, a request field, or use after close. */
export class EngineError extends Error {}

/** What an engine needs of a loaded model (an LLM is one). */
export interface EngineModel {
  readonly device: Device;
  readonly spec: ModelSpec;
  readonly weights: ModelWeights;
  readonly tokenizer: HfTokenizer | null;
  readonly source: string;
  /** Defaults for options not given (loadModel's kvDtype, numBlocks, maxBatchTokens, tune cache). */
  readonly engineDefaults?: EngineOptions;
}

export interface EngineOptions {
  /** Tokens one step computes at most (activation rows; default 256). */
  maxBatchedTokens?: number;
  /** Sequences one step carries at most (default 64; 8 on software devices). */
  maxSeqs?: number;
  /** KV cache size in bytes (default: room for maxSeqs full contexts, capped by the memory available). */
  kvMemory?: number;
  /** KV cache size in blocks of 16 tokens (instead of kvMemory). */
  kvBlocks?: number;
  kvDtype?: 'f32' | 'f16';
  /** Prompt tokens one sequence computes per step (default maxBatchedTokens). */
  chunkSize?: number;
  scheduling?: SchedulingMode;
  /** Requests per batch with scheduling 'static' (default 8). */
  staticBatchSize?: number;
  /** Share KV blocks of identical prompt prefixes (default true). */
  prefixCaching?: boolean;
  /** Requests waiting at most; beyond it generate() throws QueueFullError (default unbounded). */
  maxWaiting?: number;
  /** Replay decode steps as device graphs where the device can (default true). */
  decodeGraphs?: boolean;
  /** Variant cache contents (`kiln tune`). */
  tuneCache?: Record<string, Record<string, unknown>>;
  /** Called after every step with what ran and the engine's stats (metrics, tests). */
  onStep?: (step: StepInfo) => void;
  /** Speculative decoding: a drafter proposes, the target verifies in the same batched step. */
  speculative?: SpeculationOptions;
}

/** One executed step, as onStep sees it. */
export interface StepInfo {
  /** Sequences, tokens computed, tokens generated, whether it was a fixed-shape decode step. */
  seqs: number;
  tokens: number;
  generated: number;
  decodeOnly: boolean;
  ms: number;
  stats: EngineStats;
}

export interface EngineRequest {
  /** Text, or token ids (for models without a tokenizer). */
  prompt: string | readonly number[];
  /** New tokens at most (default 128; never past the context). */
  maxTokens?: number;
  /** 0 = greedy (default 0.8). */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** Counter-based sampling seed: the same seed and prompt give the same tokens in any batch. */
  seed?: number;
  /** Generation ends before any of these strings; they are not part of the output. */
  stop?: string[];
  /** Token ids that end generation (default: the model's EOS ids). */
  stopTokenIds?: number[];
  /** Return each token's log-probability and this many top alternatives (0–20; default 0). */
  logprobs?: number;
  /** Larger runs first among waiting requests (default 0). */
  priority?: number;
  signal?: AbortSignal;
}

export interface EngineStats {
  running: number;
  waiting: number;
  /** Requests waiting to be recomputed after a preemption, and preemptions so far. */
  preempted: number;
  preemptions: number;
  kvBlocks: { used: number; cached: number; free: number; total: number };
  /** Prompt tokens served from the prefix cache / prompt tokens, over finished requests. */
  prefixCacheHitRate: number;
  /** Generated tokens per second over the last 10 s. */
  tokensPerSecond: number;
  /** Sequences per step, over all steps. */
  meanBatchSize: number;
  steps: number;
  requests: { finished: number; aborted: number; failed: number };
  /** With speculative decoding: drafts proposed and accepted, verify steps, the drafter's share of step time. */
  speculation?: { drafted: number; accepted: number; acceptRate: number; acceptedPerStep: number; drafterShare: number };
}

interface Live {
  id: number;
  handle: RequestHandle;
  sampling: RowSampling;
  stopIds: ReadonlySet<number>;
  text: TextStream;
  maxTokens: number;
  promptLen: number;
  generated: number;
  submitted: number;
  firstScheduled: number;
  firstToken: number;
  spec: { drafted: number; accepted: number; steps: number };
  unlisten?: () => void;
}

const BLOCK_SIZE = 16;
const STATS_WINDOW_MS = 10_000;

/** Bytes of KV cache one token takes (all layers, K and V). */
export function kvBytesPerToken(spec: ModelSpec, kvDtype: 'f32' | 'f16'): number {
  return spec.layers * 2 * spec.kvHeads * spec.headDim * (kvDtype === 'f16' ? 2 : 4);
}

/** The KV memory to use when none is given: enough for maxSeqs full contexts, within a budget. */
export function defaultKvMemory(dev: Device, need: number): number {
  // cpu: a quarter of the free memory. GPUs: a fixed budget (the Device interface reports no
  // free memory); pass kvMemory to use more.
  const budget = dev.kind === 'cpu' ? platform.freeMemory() / 4 : dev.kind === 'cuda' ? 8 * 2 ** 30 : 2 ** 30;
  return Math.min(need, budget);
}

function positiveInt(name: string, v: number | undefined): void {
  if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new EngineError(`${name} = ${v} must be a positive integer`);
}

let nextRequestId = 1;

function isEngineModel(x: unknown): x is EngineModel {
  return typeof x === 'object' && x !== null && 'spec' in x && 'weights' in x && 'device' in x;
}

function specStats(t: Speculator['totals']): NonNullable<EngineStats['speculation']> {
  return {
    drafted: t.drafted, accepted: t.accepted, acceptRate: t.drafted ? t.accepted / t.drafted : 0,
    acceptedPerStep: t.verifies ? t.accepted / t.verifies : 0, drafterShare: t.stepMs + t.draftMs ? t.draftMs / (t.stepMs + t.draftMs) : 0,
  };
}

export class Engine {
  readonly device: Device;
  readonly spec: ModelSpec;
  readonly options: Readonly<Required<Pick<EngineOptions, 'maxBatchedTokens' | 'maxSeqs' | 'chunkSize' | 'scheduling' | 'staticBatchSize' | 'prefixCaching' | 'kvDtype'>> & { kvBlocks: number; kvMemory: number }>;
  readonly forward: LlamaForward;
  private readonly sched: Scheduler;
  private readonly runner!: ModelRunner;
  private readonly live = new Map<number, Live>();
  private readonly pendingAborts = new Set<number>();
  private readonly tasks: (() => Promise<void>)[] = [];
  private looping = false;
  private loopDone: Promise<void> = Promise.resolve();
  private closed = false;
  private destroyed = false;
  private readonly onStep: EngineOptions['onStep'];
  private readonly speculator: Speculator | null = null;
  private readonly window: { t: number; tokens: number }[] = [];
  private totals = { steps: 0, seqs: 0, finished: 0, aborted: 0, failed: 0, promptTokens: 0, cachedTokens: 0 };

  constructor(readonly model: EngineModel, opts: EngineOptions = {}) {
    const d = { ...model.engineDefaults, ...opts };
    const spec = model.spec;
    for (const name of ['maxBatchedTokens', 'maxSeqs', 'kvBlocks', 'chunkSize', 'staticBatchSize'] as const) positiveInt(name, d[name]);
    if (d.maxWaiting !== undefined && (!Number.isInteger(d.maxWaiting) || d.maxWaiting < 0)) throw new EngineError(`maxWaiting = ${d.maxWaiting} must be a non-negative integer`);
    const kvDtype = d.kvDtype ?? 'f32';
    if (kvDtype !== 'f32' && kvDtype !== 'f16') throw new EngineError(`kvDtype '${String(kvDtype)}' is not f32 or f16`);
    if (d.kvMemory !== undefined && !(Number.isFinite(d.kvMemory) && d.kvMemory > 0)) throw new EngineError(`kvMemory = ${d.kvMemory} must be a positive number of bytes`);
    if (opts.kvMemory !== undefined && opts.kvBlocks !== undefined) throw new EngineError('give kvMemory or kvBlocks, not both');
    const maxBatchedTokens = d.maxBatchedTokens ?? 256;
    // Software devices (the CPU executor, llvmpipe): past 8 rows a step leaves the linear layers'
    // GEMV path and costs about what its rows cost, so more sequences per step buy no throughput
    // (bench/notes/engine.md); GPUs read the weights once per step whatever the batch.
    const maxSeqs = d.maxSeqs ?? (model.device.profile.software ? 8 : 64);
    const perBlock = kvBytesPerToken(spec, kvDtype) * BLOCK_SIZE;
    const ctxBlocks = Math.ceil(spec.maxPositions / BLOCK_SIZE);
    const kvBlocks = opts.kvBlocks ?? (opts.kvMemory !== undefined ? Math.floor(opts.kvMemory / perBlock)
      : d.kvBlocks ?? Math.floor((d.kvMemory ?? defaultKvMemory(model.device, ctxBlocks * maxSeqs * perBlock)) / perBlock));
    if (kvBlocks < 1) throw new EngineError(`kvMemory = ${d.kvMemory} bytes holds no KV block (one block of ${BLOCK_SIZE} tokens takes ${perBlock} bytes)`);
    const kvMemory = kvBlocks * perBlock;
    // Each layer's K (and V) cache is one buffer: refuse sizes no device can allocate, naming the option.
    const perLayer = kvMemory / spec.layers / 2;
    if (!Number.isSafeInteger(kvMemory) || perLayer > 2 ** 40) {
      throw new EngineError(`${opts.kvBlocks !== undefined || d.kvBlocks !== undefined ? `kvBlocks = ${kvBlocks}` : `kvMemory = ${kvMemory}`} needs ${kvMemory} bytes of KV cache (${perLayer} per layer buffer): too large to allocate`);
    }
    this.options = {
      maxBatchedTokens, maxSeqs, chunkSize: d.chunkSize ?? maxBatchedTokens, scheduling: d.scheduling ?? 'continuous',
      staticBatchSize: d.staticBatchSize ?? 8, prefixCaching: d.prefixCaching ?? true, kvDtype, kvBlocks, kvMemory,
    };
    this.device = model.device;
    this.spec = spec;
    this.onStep = d.onStep;
    const blocks = new BlockManager(kvBlocks, { blockSize: BLOCK_SIZE, prefixCaching: this.options.prefixCaching });
    this.sched = new Scheduler(blocks, {
      maxBatchedTokens, maxSeqs, chunkSize: this.options.chunkSize, maxPositions: spec.maxPositions,
      scheduling: this.options.scheduling, staticBatchSize: this.options.staticBatchSize, maxWaiting: d.maxWaiting,
    });
    try {
      this.forward = new LlamaForward(model.device, spec, model.weights, {
        numBlocks: kvBlocks, blockSize: BLOCK_SIZE, kvDtype, maxBatchTokens: maxBatchedTokens, maxSeqs,
        decodeGraphs: d.decodeGraphs, tuneCache: d.tuneCache,
      });
    } catch (e) {
      if (e instanceof RangeError || /alloc|memory|too large/i.test((e as Error).message)) {
        throw new EngineError(`could not allocate the KV cache: ${kvBlocks} blocks (kvMemory ${kvMemory} bytes) on ${model.device.kind}: ${(e as Error).message}`, { cause: e });
      }
      throw e;
    }
    try {
      const sp = d.speculative;
      this.runner = new ModelRunner(model.device, this.forward, spec.vocabSize, sp ? Math.max(maxSeqs, maxBatchedTokens) : maxSeqs);
      if (sp) this.speculator = this.makeSpeculator(sp, kvBlocks);
    } catch (e) {
      this.runner?.destroy();
      this.forward.destroy();
      throw e;
    }
  }

  private makeSpeculator(sp: SpeculationOptions, kvBlocks: number): Speculator {
    const k = sp.k ?? 4, maxBatch = sp.maxBatch ?? 8;
    if (!Number.isInteger(k) || k < 1 || k > 16) throw new EngineError(`speculative.k = ${k} must be an integer in [1, 16]`);
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new EngineError(`speculative.maxBatch = ${maxBatch} must be a positive integer`);
    const o = this.options;
    let drafter: Drafter;
    if (sp.drafter === 'ngram') drafter = new NgramDrafter();
    else if (typeof (sp.drafter as Drafter).propose === 'function') drafter = sp.drafter as Drafter;
    else if (isEngineModel(sp.drafter)) {
      const dm = sp.drafter;
      if (dm.spec.vocabSize !== this.spec.vocabSize) {
        throw new EngineError(`speculative.drafter ${dm.source} has a vocabulary of ${dm.spec.vocabSize} tokens, the target ${this.model.source} ${this.spec.vocabSize}: a draft model must share the target's tokenizer`);
      }
      const a = this.model.tokenizer, b = dm.tokenizer;
      if (a && b && (a.encode('The jury said that it was, in fact, 1961.').join() !== b.encode('The jury said that it was, in fact, 1961.').join())) {
        throw new EngineError(`speculative.drafter ${dm.source} tokenizes text differently from ${this.model.source}: a draft model must share the target's tokenizer`);
      }
      if (dm.device !== this.device) throw new EngineError(`speculative.drafter ${dm.source} is on another device: load it with { device: target.device }`);
      const slack = Math.min(o.maxSeqs, maxBatch) * (Math.ceil(k / 16) + 1);
      drafter = new DraftModelDrafter(dm, { kvBlocks: kvBlocks + slack, maxSeqs: Math.min(o.maxSeqs, maxBatch), maxK: k, maxBatchedTokens: o.maxBatchedTokens, kvDtype: o.kvDtype });
    } else throw new EngineError(`speculative.drafter must be 'ngram', a loaded draft model or a Drafter`);
    if (sp.maxVerifyRows !== undefined && (!Number.isInteger(sp.maxVerifyRows) || sp.maxVerifyRows < 2)) throw new EngineError(`speculative.maxVerifyRows = ${sp.maxVerifyRows} must be an integer ≥ 2`);
    return new Speculator(this.device, drafter, this.spec.vocabSize, Math.min(o.maxSeqs, maxBatch), { k, adaptive: sp.adaptive ?? true, maxBatch, maxVerifyRows: sp.maxVerifyRows });
  }

  /** Start a request; iterate the handle for its tokens, or await handle.result(). */
  generate(req: EngineRequest): RequestHandle {
    if (this.closed) throw new EngineError(`${this.model.source}: the engine was closed`);
    const ids = this.promptIds(req.prompt);
    const o = this.checkRequest(ids, req);
    const id = nextRequestId++;
    const handle = new RequestHandle(id, (rid) => this.abort(rid));
    const maxTokens = Math.min(o.maxTokens, this.spec.maxPositions - ids.length);
    // Admission errors (too long for the pool, queue full) throw here, before anything is held.
    this.sched.add({ id, prompt: ids, maxTokens, priority: o.priority });
    const l: Live = {
      id, handle, sampling: o.sampling, stopIds: new Set(o.stopTokenIds), text: new TextStream(this.model.tokenizer, ids, o.stop),
      maxTokens, promptLen: ids.length, generated: 0, submitted: performance.now(), firstScheduled: -1, firstToken: -1,
      spec: { drafted: 0, accepted: 0, steps: 0 },
    };
    this.live.set(id, l);
    if (req.signal) {
      const sig = req.signal;
      const onAbort = () => this.abort(id);
      if (sig.aborted) this.pendingAborts.add(id);
      else {
        sig.addEventListener('abort', onAbort, { once: true });
        l.unlisten = () => sig.removeEventListener('abort', onAbort);
      }
    }
    this.kick();
    return handle;
  }

  /** End a request (finishReason 'abort'); its blocks are freed at the next step boundary. */
  abort(requestId: number): void {
    if (!this.live.has(requestId)) return;
    this.pendingAborts.add(requestId);
    this.kick();
  }

  /**
   * Teacher-forced logits for every position of `ids` ([ids.length, vocab]), computed between
   * steps through a temporary sequence of the engine's KV pool (freed afterwards).
   */
  logits(ids: readonly number[]): Promise<Float32Array> {
    if (this.closed) return Promise.reject(new EngineError(`${this.model.source}: the engine was closed`));
    if (!ids.length) return Promise.reject(new EngineError('logits: no token ids'));
    if (ids.length > this.spec.maxPositions) return Promise.reject(new EngineError(`logits: ${ids.length} tokens exceed the context of ${this.spec.maxPositions}`));
    try { this.checkIds(ids); } catch (e) { return Promise.reject(e); }
    return this.exclusive(async () => {
      const V = this.spec.vocabSize, fw = this.forward, blocks = this.sched.blocks;
      const seq = -nextRequestId++;
      const out = new Float32Array(ids.length * V);
      blocks.addSequence(seq);
      let ok = false;
      try {
        for (let done = 0; done < ids.length;) {
          const chunk = ids.slice(done, done + fw.maxBatchTokens);
          const slots = blocks.append(seq, chunk);
          const r = await fw.forward([{ tokens: chunk, ctxLen: done, blockTable: blocks.blockTable(seq), slots, logits: 'all' }]);
          out.set(r.logits, done * V);
          done += chunk.length;
        }
        ok = true;
      } finally {
        blocks.free(seq, { dropCached: !ok });
      }
      return out;
    });
  }

  stats(): EngineStats {
    const s = this.sched.stats();
    const now = performance.now();
    while (this.window.length && now - this.window[0]!.t > STATS_WINDOW_MS) this.window.shift();
    const toks = this.window.reduce((n, w) => n + w.tokens, 0);
    const span = this.window.length ? Math.max(1, now - this.window[0]!.t) : 1;
    const t = this.totals;
    return {
      running: s.running, waiting: s.waiting, preempted: s.preempted, preemptions: s.preemptions, kvBlocks: s.blocks,
      prefixCacheHitRate: t.promptTokens ? t.cachedTokens / t.promptTokens : 0,
      tokensPerSecond: this.window.length ? (toks * 1000) / span : 0,
      meanBatchSize: t.steps ? t.seqs / t.steps : 0, steps: t.steps,
      requests: { finished: t.finished, aborted: t.aborted, failed: t.failed },
      ...(this.speculator ? { speculation: specStats(this.speculator.totals) } : {}),
    };
  }

  /** Abort every request still in flight (their iterators end with 'abort') and free the engine. */
  async close(): Promise<void> {
    if (this.closed) { await this.loopDone; return; }
    this.closed = true;
    for (const id of this.live.keys()) this.pendingAborts.add(id);
    this.kick();
    await this.loopDone;
    this.applyAborts();
    if (!this.destroyed) {
      this.destroyed = true;
      this.runner.destroy();
      this.forward.destroy();
      await this.speculator?.close();
    }
  }

  get isClosed(): boolean { return this.closed; }

  /** The KV block manager (read it for accounting; the scheduler owns its changes). */
  get blocks(): BlockManager { return this.sched.blocks; }

  // ---- the loop -------------------------------------------------------------------------------

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    this.loopDone = this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        this.applyAborts();
        const task = this.tasks.shift();
        if (task) { await task(); continue; }
        if (!this.sched.hasWork) {
          // Synchronously, so a request added after this point starts a new loop.
          this.looping = false;
          return;
        }
        const drafted = this.speculator ? await this.proposeDrafts() : null;
        const plan = this.sched.schedule();
        for (const id of plan.preempted) this.speculator?.release(id);
        if (drafted) {
          // Drafts of a sequence the step did not take are dropped (it drafts again next time).
          const planned = new Set(plan.seqs.map((q) => q.id));
          for (const id of drafted) if (!planned.has(id) && this.sched.has(id)) this.sched.setDrafts(id, []);
        }
        if (!plan.seqs.length) {
          // Nothing fits now (cannot happen while requests run, see the scheduler): wait a tick.
          await new Promise((r) => setTimeout(r, 1));
          continue;
        }
        await this.execute(plan);
      }
    } catch (e) {
      // A bug, not a request's fault: fail everything rather than hang.
      for (const id of [...this.live.keys()]) this.finish(id, 'error', `engine loop failed: ${(e as Error).message}`, true);
      this.looping = false;
    }
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.tasks.push(() => fn().then(resolve, reject));
      this.kick();
    });
  }

  private async execute(plan: StepPlan): Promise<void> {
    const t0 = performance.now();
    for (const q of plan.seqs) {
      const l = this.live.get(q.id);
      if (l && l.firstScheduled < 0) l.firstScheduled = t0;
    }
    let rows: SampledRow[];
    const verify = (id: number) => (this.speculator && this.sched.has(id) ? this.sched.drafts(id).length : 0);
    const spec: { id: number; firstRow: number; rowTokens: number[]; sampling: RowSampling; position: number }[] = [];
    let tokens = 0;
    try {
      rows = await this.runner.step(plan.seqs, (id) => this.live.get(id)!.sampling, plan.decodeOnly, verify);
      this.sched.commit(plan);
      // Rows come in batch order: one per sampling sequence, k + 1 per speculating one.
      let r = 0;
      const plain: SampledRow[] = [];
      for (const q of plan.seqs) {
        if (!q.sample) continue;
        const k = verify(q.id);
        if (k === 0) plain.push(rows[r]!);
        else spec.push({ id: q.id, firstRow: r, rowTokens: rows.slice(r, r + k + 1).map((x) => x.token), sampling: this.live.get(q.id)!.sampling, position: q.ctxLen + 1 });
        r += k + 1;
      }
      const verified = spec.length ? await this.speculator!.verify(spec, this.runner.probsBuffer, this.runner.maxRows) : [];
      for (const x of plain) tokens += this.emit(x);
      for (const v of verified) tokens += this.emitVerified(v);
    } catch (e) {
      // The pass may have left KV unwritten: its requests fail and their cached blocks go.
      for (const q of plan.seqs) this.finish(q.id, 'error', `step failed: ${(e as Error).message}`, true);
      return;
    }
    const now = performance.now();
    this.totals.steps++;
    this.totals.seqs += plan.seqs.length;
    this.window.push({ t: now, tokens });
    this.speculator?.observeStep(now - t0, spec.reduce((n, x) => n + x.rowTokens.length - 1, 0));
    this.onStep?.({ seqs: plan.seqs.length, tokens: plan.numTokens, generated: tokens, decodeOnly: plan.decodeOnly, ms: now - t0, stats: this.stats() });
  }

  /** Deliver one sampled token to its request; returns the tokens generated (0 or 1). */
  private emit(r: SampledRow): number {
    const l = this.live.get(r.id);
    if (!l || this.pendingAborts.has(r.id)) return 0;
    if (r.token === NO_TOKEN) {
      this.finish(r.id, 'error', `the logits of position ${r.position - 1} are not finite (NaN or +Inf): no token can be sampled`, false);
      return 0;
    }
    const [n, done] = this.deliver(l, r.token, r);
    if (!done) this.sched.append(r.id, [r.token]);
    return n;
  }

  /** Deliver a speculative step's tokens: accepted drafts, then the target's own token. */
  private emitVerified(v: { id: number; tokens: number[]; accepted: number; drafted: number; failed: boolean }): number {
    const l = this.live.get(v.id);
    if (!l || this.pendingAborts.has(v.id)) return 0;
    l.spec.drafted += v.drafted;
    l.spec.accepted += v.accepted;
    l.spec.steps++;
    if (v.failed) {
      this.finish(v.id, 'error', 'the logits of a verified position are not finite (NaN or +Inf): no token can be sampled', false);
      return 0;
    }
    let n = 0;
    for (const t of v.tokens) {
      const [k, done] = this.deliver(l, t);
      n += k;
      if (done) return n; // EOS, a stop string or the token limit inside the accepted run
    }
    // Keep the accepted drafts' KV, roll back the rest (target and draft).
    this.sched.append(v.id, v.tokens, v.accepted);
    this.speculator!.drafter.rollback(v.id, this.sched.tokens(v.id).length - 1);
    return n;
  }

  /** One token to its request's stream; returns [tokens generated, whether the request ended]. */
  private deliver(l: Live, token: number, lp?: SampledRow): [number, boolean] {
    if (l.firstToken < 0) l.firstToken = performance.now();
    if (l.stopIds.has(token)) { this.finish(l.id, 'eos'); return [0, true]; }
    l.generated++;
    const text = l.text.push(token);
    const tok: EngineToken = { tokenId: token, text };
    if (lp?.logprob !== undefined) { tok.logprob = lp.logprob; tok.topLogprobs = lp.topLogprobs; }
    l.handle.push(tok);
    if (l.text.stopped) { this.finish(l.id, 'stop'); return [1, true]; }
    if (l.generated >= l.maxTokens) { this.finish(l.id, 'length'); return [1, true]; }
    return [1, false];
  }

  /** Ask the drafter for every decoding sequence's drafts; returns the ids that got some. */
  private async proposeDrafts(): Promise<number[]> {
    const cands = this.sched.decodeCandidates().flatMap((id) => {
      const l = this.live.get(id);
      // Requests that want logprobs do not speculate (their rows would need the drafts' log-probabilities).
      if (!l || this.pendingAborts.has(id) || l.sampling.logprobs > 0) return [];
      return [{ id, tokens: this.sched.tokens(id), remaining: l.maxTokens - l.generated, sampling: l.sampling }];
    });
    let drafts: Map<number, number[]>;
    try {
      drafts = await this.speculator!.propose(cands);
    } catch (e) {
      // A failing drafter costs the step its speculation, not the requests their output.
      this.speculator!.lastError = (e as Error).message;
      return [];
    }
    for (const [id, d] of drafts) if (this.sched.has(id)) this.sched.setDrafts(id, d);
    return [...drafts.keys()];
  }

  private applyAborts(): void {
    for (const id of [...this.pendingAborts]) this.finish(id, 'abort');
    this.pendingAborts.clear();
  }

  private finish(id: number, reason: FinishReason, error?: string, dropCached = false): void {
    const l = this.live.get(id);
    if (!l) return;
    const cached = this.sched.has(id) ? this.sched.cachedPromptTokens(id) : 0;
    const preemptions = this.sched.has(id) ? this.sched.preemptionsOf(id) : 0;
    this.sched.remove(id, { dropCached });
    this.speculator?.release(id);
    this.live.delete(id);
    this.pendingAborts.delete(id);
    l.unlisten?.();
    if (reason !== 'stop' && reason !== 'error') {
      const rest = l.text.flush();
      if (rest) l.handle.push({ tokenId: -1, text: rest });
    }
    const now = performance.now();
    const t = this.totals;
    if (reason === 'abort') t.aborted++;
    else if (reason === 'error') t.failed++;
    else t.finished++;
    if (l.firstScheduled >= 0) { t.promptTokens += l.promptLen; t.cachedTokens += cached; }
    const result: RequestResult = {
      requestId: id, finishReason: reason, ...(error ? { error } : {}),
      usage: { promptTokens: l.promptLen, cachedTokens: cached, generatedTokens: l.generated },
      timings: {
        queuedMs: (l.firstScheduled >= 0 ? l.firstScheduled : now) - l.submitted,
        ttftMs: l.firstToken >= 0 ? l.firstToken - l.submitted : -1,
        totalMs: now - l.submitted,
        prefillMs: l.firstScheduled >= 0 && l.firstToken >= 0 ? l.firstToken - l.firstScheduled : 0,
        decodeMs: l.firstToken >= 0 ? now - l.firstToken : 0,
      },
      preemptions,
      ...(this.speculator ? { speculation: { ...l.spec } } : {}),
    };
    l.handle.end(result);
  }

  // ---- request validation ---------------------------------------------------------------------

  private promptIds(prompt: string | readonly number[]): number[] {
    if (typeof prompt === 'string') {
      const tok = this.model.tokenizer;
      if (!tok) throw new EngineError(`${this.model.source} has no tokenizer.json: pass token ids instead of text`);
      return tok.encode(prompt);
    }
    if (!Array.isArray(prompt) && !ArrayBuffer.isView(prompt)) throw new EngineError('prompt must be a string or an array of token ids');
    return [...prompt];
  }

  private checkIds(ids: readonly number[]): void {
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocabSize) {
        throw new EngineError(`prompt token ${i} = ${id} is outside the vocabulary (0..${this.spec.vocabSize - 1})`);
      }
    });
  }

  private checkRequest(ids: number[], r: EngineRequest) {
    if (!ids.length) throw new EngineError('the prompt has no tokens');
    this.checkIds(ids);
    if (ids.length >= this.spec.maxPositions) {
      throw new EngineError(`the prompt has ${ids.length} tokens; the model's context is ${this.spec.maxPositions}, leaving no room to generate`);
    }
    const maxTokens = r.maxTokens ?? 128;
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new EngineError(`maxTokens = ${maxTokens} must be a positive integer`);
    const temperature = r.temperature ?? 0.8;
    if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new EngineError(`temperature = ${temperature} must be ≥ 0 and finite`);
    if (temperature > 0 && !Number.isFinite(Math.fround(1 / temperature))) throw new EngineError(`temperature = ${temperature} is too small (1/temperature overflows f32)`);
    const topP = r.topP ?? 1;
    if (!(topP > 0 && topP <= 1)) throw new EngineError(`topP = ${topP} must be in (0, 1]`);
    const minP = r.minP ?? 0;
    if (!(minP >= 0 && minP <= 1)) throw new EngineError(`minP = ${minP} must be in [0, 1]`);
    const topK = r.topK ?? 0;
    if (!Number.isInteger(topK) || topK < 0) throw new EngineError(`topK = ${topK} must be a non-negative integer`);
    const seed = r.seed ?? ((Math.random() * 2 ** 32) >>> 0);
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new EngineError(`seed = ${seed} must be an integer in [0, 2^32)`);
    const stop = r.stop ?? [];
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || !s.length)) throw new EngineError('stop must be a list of non-empty strings');
    if (stop.length && !this.model.tokenizer) throw new EngineError(`${this.model.source} has no tokenizer.json, so stop strings cannot be matched: use stopTokenIds`);
    const stopTokenIds = r.stopTokenIds ?? this.spec.eosIds;
    if (!Array.isArray(stopTokenIds) || stopTokenIds.some((t) => !Number.isInteger(t) || t < 0)) throw new EngineError('stopTokenIds must be a list of token ids');
    const logprobs = r.logprobs ?? 0;
    if (!Number.isInteger(logprobs) || logprobs < 0 || logprobs > 20) throw new EngineError(`logprobs = ${logprobs} must be an integer in [0, 20]`);
    const priority = r.priority ?? 0;
    if (!Number.isFinite(priority)) throw new EngineError(`priority = ${priority} must be a finite number`);
    return { maxTokens, stop, stopTokenIds, priority, sampling: { temperature, topK, topP, minP, seed, logprobs } };
  }
}

/** An engine over a loaded model, with its own KV pool and activations (weights are shared). */
export function createEngine(model: EngineModel & { registerEngine?(e: Engine): void }, opts: EngineOptions = {}): Engine {
  const e = new Engine(model, opts);
  model.registerEngine?.(e);
  return e;
}
