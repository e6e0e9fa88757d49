// A pool of workers that run launches (worker threads in Node, Web Workers in browsers: see
// src/platform). Each worker compiles a kernel's source once (cached by its hash) and takes
// workgroups from a shared counter until none are left, so uneven workgroups balance themselves.
// Workers do not hold the host while idle: an idle pool never keeps Node alive.
import { platform, type PlatformWorker } from '../../platform/index.js';
import type { WasmModule } from './wasm-api.js';
import { type GraphMessage, type GraphStep, type JobMessage, type JobReply, WORKER_SOURCE } from './worker.js';

interface PoolWorker {
  worker: PlatformWorker;
  /** Kernel keys this worker has compiled. */
  known: Set<string>;
  pending: Map<number, { resolve(r: JobReply): void }>;
}

export class WorkerPool {
  private workers: PoolWorker[] = [];
  private nextId = 1;
  private closed = false;

  constructor(readonly size: number) {}

  private spawn(): PoolWorker {
    const pending = new Map<number, { resolve(r: JobReply): void }>();
    const fail = (why: string) => {
      const i = this.workers.indexOf(pw);
      if (i >= 0) this.workers.splice(i, 1); // replaced on the next launch
      for (const [id, p] of pending) p.resolve({ id, findings: [], count: 0, error: why, busyMs: 0 });
      pending.clear();
    };
    const worker = platform.startWorker(WORKER_SOURCE, {
      message: (m) => {
        const r = m as JobReply;
        const p = pending.get(r.id);
        pending.delete(r.id);
        if (pending.size === 0) worker.hold(false);
        p?.resolve(r);
      },
      error: fail,
    });
    const pw: PoolWorker = { worker, known: new Set(), pending };
    return pw;
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
      pw.worker.post(msg);
    })));
  }

  /**
   * Replay a recorded step on every worker (one message each): each gets, the first time, the
   * steps and the modules it has not instantiated.
   */
  runGraph(graph: Omit<GraphMessage['graph'], 'modules' | 'imports' | 'steps'>, steps: GraphStep[],
    modules: Map<string, WasmModule>, imports: string, sent: Set<unknown>): Promise<JobReply[]> {
    if (this.closed) throw new Error('the worker pool was shut down');
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    const use = this.workers;
    return Promise.all(use.map((pw, i) => new Promise<JobReply>((resolve) => {
      const id = this.nextId++;
      const msg: GraphMessage = { id, slot: i + 1, graph: { ...graph } };
      if (!sent.has(pw)) {
        sent.add(pw);
        msg.graph.steps = steps;
        msg.graph.imports = imports;
        msg.graph.modules = [...modules].filter(([key]) => !pw.known.has(key)).map(([key, module]) => ({ key, module }));
        for (const key of modules.keys()) pw.known.add(key);
      }
      pw.pending.set(id, { resolve });
      pw.worker.hold(true);
      pw.worker.post(msg);
    })));
  }

  async destroy(): Promise<void> {
    this.closed = true;
    const ws = this.workers;
    this.workers = [];
    await Promise.all(ws.map((pw) => pw.worker.terminate()));
  }
}
