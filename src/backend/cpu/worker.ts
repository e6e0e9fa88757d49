// What a worker thread runs: workers start with `new Worker(code, { eval: true })`, so they need
// neither tsx nor a file next to a bundle; their code is executeJob's text. The main thread calls
// the same executeJob to run small launches inline.
import { KEEP_NAMES_SHIM } from '../../../codegen/emit/js-helpers.js';
import type { WasmMemory, WasmModule } from './wasm-api.js';

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
  /** The wasm executor's launch: its module runs over the shared memory (buffers unused then). */
  wasm?: WasmJob;
  /** Which thread of the launch this is (0 = the main thread): picks its scratch. */
  slot?: number;
}
/** A wasm launch: run(start, end, nwgX, nwgY, nwgZ, args, scratch) of codegen/emit/wasm.ts. */
export interface WasmJob {
  memory: WasmMemory;
  /** Sent the first time a thread sees the kernel's key. */
  module?: WasmModule;
  /** Byte offset of the launch's argument block. */
  args: number;
  /** Scratch byte offset per slot. */
  scratch: number[];
  /** A function body returning the Math imports (wasmMathImports' text), sent with the module. */
  imports?: string;
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

/** What a profiling-mode kernel accumulates (PROFILING in codegen/emit/js-helpers.ts). */
export interface KernelProfileCounts { totals: Float64Array; seen: (Uint8Array | undefined)[] }

/** A kernel as a worker holds it: compiled once per key (or the reason it did not compile). */
export interface WorkerKernel {
  ctx: { findings: string[]; keys: Set<string>; count: number; limit: number; profile?: KernelProfileCounts };
  run?: (x: number, y: number, z: number, gx: number, gy: number, gz: number, bufs: ArrayBufferView[], uniforms: number[]) => void;
  /** The wasm executor's entry: workgroups [start, end) (see codegen/emit/wasm.ts). */
  wasmRun?: (start: number, end: number, gx: number, gy: number, gz: number, args: number, scratch: number) => void;
  compileError?: string;
}

/**
 * Compile the job's kernel (once per key), then run workgroups until the counter runs out. A real
 * function, type-checked here: workers get its text (Function.prototype.toString), so it may use
 * only its arguments and globals.
 */
export function executeJob(job: JobMessage, kernels: Map<string, WorkerKernel>): JobReply {
  let k = kernels.get(job.key);
  const wasm = job.wasm;
  if (!k && wasm) {
    const ctx = { findings: [], keys: new Set<string>(), count: 0, limit: 20 };
    if (!wasm.module || typeof wasm.imports !== 'string') throw new Error('kernel module was not sent to this thread');
    try {
      const m = new Function(wasm.imports)() as Record<string, (...a: number[]) => number>;
      // A global lookup, not an import: this function's text runs in worker threads as it is.
      const W = globalThis.WebAssembly;
      const inst = new W.Instance(wasm.module, { env: { memory: wasm.memory }, m });
      k = { ctx, wasmRun: inst.exports.run as WorkerKernel['wasmRun'] };
    } catch (e) {
      k = { ctx, compileError: 'while instantiating its WebAssembly: ' + (e instanceof Error ? e.message : String(e)) };
    }
    kernels.set(job.key, k);
  }
  if (!k) {
    if (typeof job.source !== 'string') throw new Error('kernel source was not sent to this worker');
    const ctx = { findings: [], keys: new Set<string>(), count: 0, limit: 20 };
    try {
      k = { ctx, run: new Function(job.source)()(ctx) };
    } catch (e) {
      // An emitter bug: remembered, so every launch of this kernel reports it.
      k = { ctx, compileError: 'while compiling its JavaScript: ' + (e instanceof Error ? e.message : String(e)) };
    }
    kernels.set(job.key, k);
  }
  if (k.compileError !== undefined) return { id: job.id, findings: [], count: 0, error: k.compileError, busyMs: 0 };
  const wasmRun = k.wasmRun;
  if (wasm && wasmRun) {
    const [gx, gy, gz] = job.grid, total = gx * gy * gz, chunk = job.chunk;
    const counter = new Int32Array(job.counter);
    const scratch = wasm.scratch[job.slot ?? 0] ?? 0;
    const t0 = performance.now();
    let error: string | undefined;
    let at = -1;
    try {
      for (;;) {
        const start = Atomics.add(counter, 0, chunk);
        if (start >= total) break;
        at = start;
        wasmRun(start, Math.min(total, start + chunk), gx, gy, gz, wasm.args, scratch);
      }
    } catch (e) {
      Atomics.store(counter, 0, total);
      error = 'in workgroups from ' + at + ': ' + (e instanceof Error ? e.message : String(e));
    }
    return { id: job.id, findings: [], count: 0, busyMs: performance.now() - t0, ...(error !== undefined ? { error } : {}) };
  }
  const run = k.run;
  if (!run) return { id: job.id, findings: [], count: 0, error: 'no kernel', busyMs: 0 };
  const CTOR = { f32: Float32Array, f16: Uint16Array, i32: Int32Array, u32: Uint32Array };
  const bufs = job.buffers.map((b) => {
    const View: new (sab: SharedArrayBuffer, offset: number, length: number) => ArrayBufferView = CTOR[b.dtype];
    return new View(b.sab, 0, b.length);
  });
  const [gx, gy, gz] = job.grid, total = gx * gy * gz;
  const counter = new Int32Array(job.counter);
  const uniforms = job.uniforms, chunk = job.chunk;
  let error: string | undefined;
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
  const reply: JobReply = { id: job.id, findings: k.ctx.findings, count: k.ctx.count, busyMs: performance.now() - t0, ...(error !== undefined ? { error } : {}) };
  k.ctx.findings = [];
  k.ctx.keys = new Set();
  k.ctx.count = 0;
  return reply;
}

/** One launch of a recorded step (graph.ts): its kernel, argument block and grid. */
export interface GraphStep {
  key: string; name: string; args: number; grid: [number, number, number]; chunk: number;
  /** The next step depends on this one or earlier ones: wait until their workgroups are done. */
  barrier: boolean;
  /** Run whole by the first worker (slot 1, or the main thread alone); the others skip it. */
  solo: boolean;
}
/** A replay of a recorded step sequence, on one thread (`slot`: 0 the main thread alone, 1.. workers). */
export interface GraphMessage {
  id: number;
  graph: {
    id: number;
    memory: WasmMemory;
    /** Byte offset of the control words: [abort, unused, workgroups taken per step, done per step]. */
    control: number;
    scratch: number[];
    /** Sent the first time a thread replays this graph. */
    steps?: GraphStep[];
    /** Modules of the kernels this thread has not instantiated yet, and the Math imports' body. */
    modules?: { key: string; module: WasmModule }[];
    imports?: string;
  };
  slot: number;
  /** Where this thread listens for the next replay after replying (pool.ts; absent: it does not). */
  listen?: ListenAt;
}

/**
 * A thread's block of words in the pool's shared control memory (16 words apart, so each thread's
 * spinning reads its own cache line): the host signals a replay there instead of by message.
 * state: 0 away (messages only), 1 listening, 2 claimed (a replay of `graph` is waiting).
 */
export const LISTEN_WORDS = { state: 0, graph: 1, job: 2, scratch: 3, done: 4, failed: 5, busyUs: 6, slot: 7, stride: 16 } as const;
export interface ListenAt {
  control: SharedArrayBuffer;
  /** Index of this thread's first word (LISTEN_WORDS). */
  base: number;
  /** Spin this long on the state word after a replay, then sleep on it (Atomics.wait) for waitMs. */
  spinUs: number;
  waitMs: number;
}
/** A thread's listening state: its words, and what it needs of each graph to replay it unsent. */
export interface Listener {
  at: ListenAt;
  words: Int32Array;
  graphs: Map<number, { memory: WasmMemory; control: number }>;
  /**
   * Set by a replay that came by message and succeeded, which also marks the thread listening
   * before its reply is posted — else the host, quick to replay again, would find it not yet
   * listening and send a message it would not read until it stopped listening.
   */
  armed: boolean;
}

/**
 * After a replay (its thread marked listening, state 1, before its reply was posted): wait for the
 * next one on the shared state word instead of the message queue —
 * spin (spinUs), then sleep on the word (waitMs), then go back to messages (state 0, unless the
 * host claimed the word first). A replay that fails posts its reply (the error text) by message
 * and goes back to messages too. Self-contained: its text runs in worker threads (`replay` is
 * executeGraph, passed in so a bundler's renaming cannot break the text).
 */
export function lingerForReplays(post: (r: JobReply) => void, l: Listener, replay: (msg: GraphMessage) => JobReply): void {
  if (!l.armed) return;
  l.armed = false;
  // Word indices: LISTEN_WORDS (state 0, graph 1, job 2, scratch 3, done 4, failed 5, busyUs 6, slot 7).
  const w = l.words, b = l.at.base;
  let spinUntil = performance.now() + l.at.spinUs / 1000, waitUntil = spinUntil + l.at.waitMs;
  for (;;) {
    const state = Atomics.load(w, b);
    if (state === 2) {
      const id = Atomics.load(w, b + 2), gid = Atomics.load(w, b + 1), slot = Atomics.load(w, b + 7), g = l.graphs.get(gid);
      let reply: JobReply;
      try {
        if (!g) throw new Error('graph ' + gid + ' was not sent to this thread');
        const scratch: number[] = [];
        scratch[slot] = Atomics.load(w, b + 3);
        reply = replay({ id, slot, graph: { id: gid, memory: g.memory, control: g.control, scratch } });
      } catch (e) {
        reply = { id, findings: [], count: 0, error: e instanceof Error ? e.message : String(e), busyMs: 0 };
      }
      const failed = reply.error !== undefined;
      // The error's text goes by message, posted before `done` so the host has it when it looks.
      if (failed) post(reply);
      Atomics.store(w, b + 5, failed ? 1 : 0);
      Atomics.store(w, b + 6, Math.round(reply.busyMs * 1000));
      Atomics.store(w, b, failed ? 0 : 1);
      Atomics.store(w, b + 4, id);
      Atomics.notify(w, b + 4);
      if (failed) return;
      spinUntil = performance.now() + l.at.spinUs / 1000;
      waitUntil = spinUntil + l.at.waitMs;
      continue;
    }
    if (state !== 1) return; // sent back to messages by the host: one is coming
    const now = performance.now();
    if (now < spinUntil) continue;
    if (now < waitUntil) Atomics.wait(w, b, 1, waitUntil - now);
    else if (Atomics.compareExchange(w, b, 1, 0) === 1) return;
  }
}

/**
 * Replays a recorded step on this thread: for each launch, take workgroups from its counter until
 * none are left; where the next launch depends on earlier ones, wait until their workgroups are
 * done (counted per launch as they finish). Solo launches run on the first worker only. After an
 * error an abort word stops every thread from running or waiting. Self-contained (its text runs in
 * worker threads).
 */
export function executeGraph(msg: GraphMessage, kernels: Map<string, WorkerKernel>, graphs: Map<number, GraphStep[]>): JobReply {
  const g = msg.graph;
  if (g.modules?.length) {
    const W = globalThis.WebAssembly;
    const m = new Function(g.imports ?? '')() as Record<string, (...a: number[]) => number>;
    for (const { key, module } of g.modules) {
      if (kernels.has(key)) continue;
      const ctx = { findings: [], keys: new Set<string>(), count: 0, limit: 20 };
      try {
        kernels.set(key, { ctx, wasmRun: new W.Instance(module, { env: { memory: g.memory }, m }).exports.run as WorkerKernel['wasmRun'] });
      } catch (e) {
        kernels.set(key, { ctx, compileError: 'while instantiating its WebAssembly: ' + (e instanceof Error ? e.message : String(e)) });
      }
    }
  }
  if (g.steps) graphs.set(g.id, g.steps);
  const steps = graphs.get(g.id);
  if (!steps) return { id: msg.id, findings: [], count: 0, error: 'graph steps were not sent to this thread', busyMs: 0 };
  // Control words: [abort, unused, workgroups taken per step…, workgroups done per step…].
  const n = steps.length, ctl = new Int32Array(g.memory.buffer, g.control, 2 + 2 * n);
  const scratch = g.scratch[msg.slot] ?? 0;
  let error: string | undefined;
  let epoch = 0; // first step since the last dependency point
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const s = steps[i]!;
    const [gx, gy, gz] = s.grid, total = gx * gy * gz;
    if (Atomics.load(ctl, 0) === 0 && (!s.solo || msg.slot <= 1)) {
      const k = kernels.get(s.key), run = k?.wasmRun;
      let at = -1;
      try {
        if (!run) throw new Error(k?.compileError ?? `kernel ${s.key} was not sent to this thread`);
        for (;;) {
          const start = Atomics.add(ctl, 2 + i, s.chunk);
          if (start >= total) break;
          at = start;
          const end = Math.min(total, start + s.chunk);
          run(start, end, gx, gy, gz, s.args, scratch);
          if (Atomics.add(ctl, 2 + n + i, end - start) + end - start === total) Atomics.notify(ctl, 2 + n + i);
        }
      } catch (e) {
        error = 'kernel ' + s.name + ' (step ' + i + '), workgroups from ' + at + ': ' + (e instanceof Error ? e.message : String(e));
        Atomics.store(ctl, 0, 1); // nobody waits for work that will not be done
        for (let j = 0; j < n; j++) Atomics.notify(ctl, 2 + n + j);
      }
    }
    if (s.barrier) {
      // The next step depends on this epoch's: wait until their workgroups are done (not until
      // every thread arrives — a thread that is not running holds nothing up unless it holds work).
      for (let j = epoch; j <= i; j++) {
        const tj = steps[j]!.grid[0] * steps[j]!.grid[1] * steps[j]!.grid[2];
        let spins = 0;
        for (;;) {
          const done = Atomics.load(ctl, 2 + n + j);
          if (done >= tj || Atomics.load(ctl, 0) !== 0) break;
          if (++spins > 4000) Atomics.wait(ctl, 2 + n + j, done, 1);
        }
      }
      epoch = i + 1;
    }
  }
  return { id: msg.id, findings: [], count: 0, busyMs: performance.now() - t0, ...(error !== undefined ? { error } : {}) };
}

// The worker's program: executeJob's and executeGraph's own text (whatever names a bundler gave
// them) and the `handle(message)` the platform's worker calls per message (src/platform:
// worker_threads or Web Workers).
export const WORKER_SOURCE = `${KEEP_NAMES_SHIM}
const executeJob = (${executeJob.toString()});
const executeGraph = (${executeGraph.toString()});
const lingerForReplays = (${lingerForReplays.toString()});
const kernels = new Map(), graphs = new Map();
let listener = null;
function handle(job) {
  try {
    if (!job.graph) return executeJob(job, kernels);
    const reply = executeGraph(job, kernels, graphs);
    if (job.listen && reply.error === undefined) {
      // One pool, one block of words per worker (each message brings a new SharedArrayBuffer object for it).
      listener ??= { at: job.listen, words: new Int32Array(job.listen.control), graphs: new Map(), armed: false };
      listener.graphs.set(job.graph.id, { memory: job.graph.memory, control: job.graph.control });
      listener.armed = true;
      Atomics.store(listener.words, job.listen.base, 1);
    }
    return reply;
  } catch (e) {
    return { id: job.id, findings: [], count: 0, error: e instanceof Error ? e.message : String(e), busyMs: 0 };
  }
}
function linger(post) {
  if (listener) lingerForReplays(post, listener, (msg) => executeGraph(msg, kernels, graphs));
}
`;
