// A pool of worker threads that run launches. Each worker compiles a kernel's source once (cached by
// its hash) and takes workgroups from a shared counter until none are left, so uneven workgroups
// balance themselves. Workers are unreferenced while idle: an idle pool never keeps Node alive.
import { Worker } from 'node:worker_threads';
import { type JobMessage, type JobReply, WORKER_SOURCE } from './worker.js';

interface PoolWorker {
  worker: Worker;
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
    // execArgv: [] so a worker never loads the parent's loaders (tsx, vitest): it runs plain JS.
    const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [] });
    worker.unref();
    const pw: PoolWorker = { worker, known: new Set(), pending: new Map() };
    worker.on('message', (r: JobReply) => {
      const p = pw.pending.get(r.id);
      pw.pending.delete(r.id);
      if (pw.pending.size === 0) worker.unref();
      p?.resolve(r);
    });
    const fail = (why: string) => {
      const i = this.workers.indexOf(pw);
      if (i >= 0) this.workers.splice(i, 1); // replaced on the next launch
      for (const [id, p] of pw.pending) p.resolve({ id, findings: [], count: 0, error: why, busyMs: 0 });
      pw.pending.clear();
    };
    worker.on('error', (e) => fail(`worker thread failed: ${e instanceof Error ? e.message : String(e)}`));
    worker.on('exit', (code) => fail(`worker thread exited (code ${code})`));
    return pw;
  }

  /** Run one launch on `n` workers (they share job.counter); one reply per worker. */
  run(job: Omit<JobMessage, 'id' | 'source'>, source: string, n: number): Promise<JobReply[]> {
    if (this.closed) throw new Error('the worker pool was shut down');
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    const use = this.workers.slice(0, Math.max(1, Math.min(n, this.workers.length)));
    return Promise.all(use.map((pw) => new Promise<JobReply>((resolve) => {
      const id = this.nextId++;
      const msg: JobMessage = { ...job, id };
      if (!pw.known.has(job.key)) {
        msg.source = source;
        pw.known.add(job.key);
      }
      pw.pending.set(id, { resolve });
      pw.worker.ref();
      pw.worker.postMessage(msg);
    })));
  }

  async destroy(): Promise<void> {
    this.closed = true;
    const ws = this.workers;
    this.workers = [];
    await Promise.all(ws.map((pw) => pw.worker.terminate()));
  }
}
