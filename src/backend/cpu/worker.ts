// What a worker thread runs, as plain JavaScript source: workers start with `new Worker(code,
// { eval: true })`, so they need neither tsx nor a file next to a bundle. The main thread evaluates
// the same `executeJob` to run small launches inline.

/** Message for one launch on one worker (or inline). */
export interface JobMessage {
  id: number;
  /** Cache key of the kernel's generated source (its hash). */
  key: string;
  /** The generated source, sent the first time a worker sees `key`. */
  source?: string;
  buffers: { sab: SharedArrayBuffer; dtype: 'f32' | 'f16' | 'i32' | 'u32'; length: number }[];
  uniforms: number[];
  grid: [number, number, number];
  /** Int32 next-workgroup counter shared by every worker of the launch. */
  counter: SharedArrayBuffer;
  /** Workgroups taken from the counter at a time. */
  chunk: number;
}
export interface JobReply {
  id: number;
  /** Checking-mode findings (distinct messages, first few) and how many problems in all. */
  findings: string[];
  count: number;
  /** Set when the kernel threw. */
  error?: string;
  /** Milliseconds spent running workgroups. */
  busyMs: number;
}

/** `executeJob(job, kernels)`: compile (once per key), then run workgroups until the counter runs out. */
export const EXECUTE_SOURCE = String.raw`
function executeJob(job, kernels) {
  let k = kernels.get(job.key);
  if (!k) {
    if (typeof job.source !== 'string') throw new Error('kernel source was not sent to this worker');
    const ctx = { findings: [], keys: new Set(), count: 0, limit: 20 };
    try {
      k = { ctx, run: new Function(job.source)()(ctx) };
    } catch (e) {
      // An emitter bug: remembered, so every launch of this kernel reports it.
      k = { ctx, compileError: 'while compiling its JavaScript: ' + (e instanceof Error ? e.message : String(e)) };
    }
    kernels.set(job.key, k);
  }
  if (k.compileError) return { id: job.id, findings: [], count: 0, error: k.compileError, busyMs: 0 };
  const CTOR = { f32: Float32Array, f16: Uint16Array, i32: Int32Array, u32: Uint32Array };
  const bufs = job.buffers.map((b) => new CTOR[b.dtype](b.sab, 0, b.length));
  const gx = job.grid[0], gy = job.grid[1], gz = job.grid[2], total = gx * gy * gz;
  const counter = new Int32Array(job.counter);
  const run = k.run, uniforms = job.uniforms, chunk = job.chunk;
  let error;
  let w = -1;
  const t0 = performance.now();
  try {
    for (;;) {
      const start = Atomics.add(counter, 0, chunk);
      if (start >= total) break;
      const end = Math.min(total, start + chunk);
      for (w = start; w < end; w++) {
        const x = w % gx, r = (w - x) / gx, y = r % gy, z = (r - y) / gy;
        run(x, y, z, gx, gy, gz, bufs, uniforms);
      }
    }
  } catch (e) {
    // Stop the other workers of this launch early.
    Atomics.store(counter, 0, total);
    const x = w % gx, r = (w - x) / gx;
    error = 'in workgroup (' + x + ',' + (r % gy) + ',' + Math.floor(r / gy) + '): ' + (e instanceof Error ? e.message : String(e));
  }
  const reply = { id: job.id, findings: k.ctx.findings, count: k.ctx.count, error, busyMs: performance.now() - t0 };
  k.ctx.findings = [];
  k.ctx.keys = new Set();
  k.ctx.count = 0;
  return reply;
}
`;

export const WORKER_SOURCE = `${EXECUTE_SOURCE}
import('node:worker_threads').then(({ parentPort }) => {
  const kernels = new Map();
  parentPort.on('message', (job) => {
    let reply;
    try {
      reply = executeJob(job, kernels);
    } catch (e) {
      reply = { id: job.id, findings: [], count: 0, error: e instanceof Error ? e.message : String(e), busyMs: 0 };
    }
    parentPort.postMessage(reply);
  });
});
`;
