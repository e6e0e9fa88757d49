// A pool of workers that run launches (worker threads in Node, Web Workers in browsers: see
// src/platform). Each worker compiles a kernel's source once (cached by its hash) and takes
// workgroups from a shared counter until none are left, so uneven workgroups balance themselves.
// Workers do not hold the host while idle: an idle pool never keeps Node alive.
//
// Replays of a recorded step go by message the first time a worker sees the graph; after each
// replay the worker listens on a shared word for a while (worker.ts lingerForReplays), and the
// next replay, claimed on that word with a compare-exchange, starts without a message; its end
// comes back through another word the host awaits (Atomics.waitAsync). A worker that stopped
// listening, a new graph and a failed replay's error all go by message as before.
import { platform, type PlatformWorker } from '../../platform/index.js';
import type { WasmModule } from './wasm-api.js';
import { type GraphMessage, type GraphStep, type JobMessage, type JobReply, LISTEN_WORDS as L, WORKER_SOURCE } from './worker.js';

interface PoolWorker {
  worker: PlatformWorker;
  /** Kernel keys this worker has compiled. */
  known: Set<string>;
  pending: Map<number, { resolve(r: JobReply): void }>;
  /** First word of its block in the control memory (LISTEN_WORDS). */
  base: number;
}

/** How workers wait for the next replay between steps: spin, then sleep on the word; null: messages only. */
export interface ListenOptions { spinUs: number; waitMs: number }

/** Atomics.waitAsync (ES2024; Node 20 has it, the project's lib types stop at ES2022). */
type WaitAsync = (a: Int32Array, i: number, v: number) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

export class WorkerPool {
  private workers: PoolWorker[] = [];
  private nextId = 1;
  private closed = false;
  /** The workers' blocks of control words (LISTEN_WORDS); null when replays go by message only. */
  private readonly control: Int32Array | null;
  /** Replays handed to workers through their words and by message (one each per worker). */
  readonly replays = { byWord: 0, byMessage: 0 };

  constructor(readonly size: number, private readonly listen: ListenOptions | null = null) {
    this.control = listen && waitAsync ? new Int32Array(platform.allocShared(4 * L.stride * size)) : null;
  }

  private spawn(): PoolWorker {
    const pending = new Map<number, { resolve(r: JobReply): void }>();
    // A block no live worker uses (a failed worker's is free again).
    const used = new Set(this.workers.map((w) => w.base));
    let base = 0;
    while (used.has(base)) base += L.stride;
    this.control?.fill(0, base, base + L.stride);
    const fail = (why: string) => {
      const i = this.workers.indexOf(pw);
      if (i >= 0) this.workers.splice(i, 1); // replaced on the next launch
      for (const [id, p] of pending) p.resolve({ id, findings: [], count: 0, error: why, busyMs: 0 });
      pending.clear();
      if (this.control) Atomics.notify(this.control, base + L.done); // its awaitDone loops see that
    };
    const worker = platform.startWorker(WORKER_SOURCE, {
      message: (m) => this.settle(pw, m as JobReply),
      error: fail,
    });
    const pw: PoolWorker = { worker, known: new Set(), pending, base };
    return pw;
  }

  private settle(pw: PoolWorker, r: JobReply): void {
    const p = pw.pending.get(r.id);
    pw.pending.delete(r.id);
    if (pw.pending.size === 0) pw.worker.hold(false);
    p?.resolve(r);
  }

  /** Sends a worker listening for replays back to its messages, before posting it one. */
  private recall(pw: PoolWorker): void {
    const c = this.control;
    if (c && Atomics.compareExchange(c, pw.base + L.state, 1, 0) === 1) Atomics.notify(c, pw.base + L.state);
  }

  /** Run one launch on `n` workers (they share job.counter); one reply per worker. */
  run(job: Omit<JobMessage, 'id' | 'source'>, source: string, n: number): Promise<JobReply[]> {
    if (this.closed) throw new Error('the worker pool was shut down');
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    const use = this.workers.slice(0, Math.max(1, Math.min(n, this.workers.length)));
    return Promise.all(use.map((pw, i) => new Promise<JobReply>((resolve) => {
      const id = this.nextId++;
      const msg: JobMessage = { ...job, id, slot: i + 1 };
      if (!pw.known.has(job.key)) {
        msg.source = source;
        pw.known.add(job.key);
      } else if (msg.wasm) {
        msg.wasm = { ...msg.wasm, module: undefined, imports: undefined };
      }
      pw.pending.set(id, { resolve });
      pw.worker.hold(true);
      this.recall(pw);
      pw.worker.post(msg);
    })));
  }

  /**
   * Replay a recorded step on every worker: through its control words where it is listening and
   * has the graph, else by message — with, the first time, the steps and the modules it has not
   * instantiated.
   */
  runGraph(graph: Omit<GraphMessage['graph'], 'modules' | 'imports' | 'steps'>, steps: GraphStep[],
    modules: Map<string, WasmModule>, imports: string, sent: Set<unknown>): Promise<JobReply[]> {
    if (this.closed) throw new Error('the worker pool was shut down');
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    const use = this.workers;
    return Promise.all(use.map((pw, i) => new Promise<JobReply>((resolve) => {
      const id = this.nextId++;
      pw.pending.set(id, { resolve });
      pw.worker.hold(true);
      if (sent.has(pw) && this.claim(pw, id, graph, i + 1)) {
        this.replays.byWord++;
        return;
      }
      this.replays.byMessage++;
      const msg: GraphMessage = { id, slot: i + 1, graph: { ...graph } };
      if (this.control && this.listen) msg.listen = { control: this.control.buffer as SharedArrayBuffer, base: pw.base, ...this.listen };
      if (!sent.has(pw)) {
        sent.add(pw);
        msg.graph.steps = steps;
        msg.graph.imports = imports;
        msg.graph.modules = [...modules].filter(([key]) => !pw.known.has(key)).map(([key, module]) => ({ key, module }));
        for (const key of modules.keys()) pw.known.add(key);
      }
      this.recall(pw);
      pw.worker.post(msg);
    })));
  }

  /** Hands a replay to a listening worker through its words; false if it is not listening. */
  private claim(pw: PoolWorker, id: number, graph: { id: number; scratch: number[] }, slot: number): boolean {
    const c = this.control, b = pw.base;
    if (!c) return false;
    // Written before the claim (a seq-cst compare-exchange), read by the worker after it.
    Atomics.store(c, b + L.graph, graph.id);
    Atomics.store(c, b + L.job, id);
    Atomics.store(c, b + L.scratch, graph.scratch[slot] ?? 0);
    Atomics.store(c, b + L.slot, slot);
    if (Atomics.compareExchange(c, b + L.state, 1, 2) !== 1) return false;
    Atomics.notify(c, b + L.state);
    void this.awaitDone(pw, id);
    return true;
  }

  /** Settles a claimed replay when the worker writes its id to `done` (its error, if any, comes by message). */
  private async awaitDone(pw: PoolWorker, id: number): Promise<void> {
    const c = this.control!, at = pw.base + L.done;
    for (;;) {
      if (!pw.pending.has(id)) return; // the worker died (fail settled it)
      const v = Atomics.load(c, at);
      if (v === id) {
        if (Atomics.load(c, pw.base + L.failed) === 0) this.settle(pw, { id, findings: [], count: 0, busyMs: Atomics.load(c, pw.base + L.busyUs) / 1000 });
        return;
      }
      const r = waitAsync!(c, at, v);
      if (r.async) await r.value;
    }
  }

  async destroy(): Promise<void> {
    this.closed = true;
    const ws = this.workers;
    this.workers = [];
    for (const pw of ws) this.recall(pw);
    await Promise.all(ws.map((pw) => pw.worker.terminate()));
  }
}
