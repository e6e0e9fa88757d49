// The CPU device: kernels compiled to WebAssembly by codegen/emit/wasm.ts (the default executor)
// or to JavaScript by codegen/emit/js.ts (the reference, with checking and profiling modes),
// workgroups spread over worker threads, buffers in shared memory (one WebAssembly.Memory for the
// wasm executor, a SharedArrayBuffer each for js). Launches run in order, one after another;
// errors and checking-mode findings reject the next sync() or read() and leave the device usable.
import type { Kernel } from '../../../codegen/dsl/builder.js';
import { byteSize, type Caps, type StorageType } from '../../../codegen/dsl/types.js';
import type { KernelIR } from '../../../codegen/dsl/ir.js';
import { emitJS, emitProfiledJS, type ProfileSite } from '../../../codegen/emit/js.js';
import { KEEP_NAMES_SHIM } from '../../../codegen/emit/js-helpers.js';
import { emitWasm, wasmMathImports } from '../../../codegen/emit/wasm.js';
import { makeF16 } from '../../../codegen/dsl/f16.js';
import { WasmHeap } from './heap.js';
import { hostFusedMadd, preferOptimizedWasm, Wasm, type WasmModule } from './wasm-api.js';
import { BackendBuffer, BaseDevice, checkCopy, hostArray } from '../base.js';
import type { Device, DeviceBuffer, DeviceGraph, DeviceProfile, HostArray } from '../device.js';
import type { DeviceOptions } from '../index.js';
import { platform } from '../../platform/index.js';
import { type ListenOptions, WorkerPool } from './pool.js';
import { barriersBetween } from './graph.js';
import { executeGraph, executeJob, type GraphStep, type JobReply, type WasmJob, type WorkerKernel } from './worker.js';

export const CPU_CAPS: Caps = {
  f16: true,
  subgroups: true,
  subgroupSize: 32,
  maxWorkgroupStorage: 65536,
  maxStorageBuffers: 32,
  maxInvocationsPerWorkgroup: 1024,
  deviceFence: true,
};

/** Checking mode found problems in a launch: out-of-bounds accesses, races, divergent barriers. */
export class KernelCheckError extends Error {
  constructor(readonly kernel: string, readonly findings: string[], readonly count: number) {
    const shown = findings.slice(0, 8);
    const more = count > shown.length ? `\n  … ${count - shown.length} more` : '';
    super(`kernel '${kernel}': checking found ${count} problem${count === 1 ? '' : 's'}:\n  ${shown.join('\n  ')}${more}`);
    this.name = 'KernelCheckError';
  }
}
/** A kernel threw while running (an emitter bug, or an out-of-bounds atomic outside checking mode). */
export class KernelRunError extends Error {
  constructor(readonly kernel: string, detail: string) {
    super(`kernel '${kernel}' failed on the cpu device ${detail}`);
    this.name = 'KernelRunError';
  }
}

class CpuBuffer extends BackendBuffer {
  /** sab: the shared memory holding it, from byte `offset` (0 for the js executor's own buffers). */
  constructor(dtype: StorageType, length: number, label: string, bytes: number, readonly sab: SharedArrayBuffer, readonly offset = 0) {
    super(dtype, length, label, bytes);
  }
  bytesView(): Uint8Array { return new Uint8Array(this.sab, this.offset, this.bytes); }
}

/** The Math functions wasm kernels import, as a function body a thread runs (the JS executor's own). */
const WASM_IMPORTS = `${KEEP_NAMES_SHIM}\nreturn (${wasmMathImports.toString()})();`;
/** Bytes of the launch argument block (bindings' offsets and uniforms, 4 bytes each). */
const ARG_BYTES = 4096;

/** A content key for module bytes (the platform hashes text). */
function bytesKey(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return `wasm:${platform.contentKey(s)}`;
}

/** One static load/store site's counts over a launch (profiling mode). */
export interface SiteProfile {
  site: string; space: 'global' | 'shared'; kind: 'load' | 'store';
  /** The access as the kernel wrote it: `array[index]`. */
  access: string;
  /** Bytes one invocation moves per execution (element size × vector width). */
  bytesPerLane: number;
  /** Warp requests: one per warp (32 consecutive local indices) and instance with a lane active. */
  requests: number;
  /** Global: 32-byte sectors touched, and the minimum for the bytes requested (0 for shared sites). */
  sectors: number; ideal_sectors: number;
  /** Shared: wavefronts, and the conflict-free minimum (0 for global sites). */
  wavefronts: number; ideal_wavefronts: number;
  /** Distinct bytes the requests asked for (summed over requests). */
  bytes: number;
}
/** A launch seen by a profiling-mode device: its kernel, grid and per-site memory-access counts. */
export interface LaunchProfile {
  kernel: string; ir: KernelIR; grid: [number, number, number]; sites: SiteProfile[];
  /** Sector traffic (32 × sectors of every global site): bytes between L2 and the SMs. */
  sectorBytes: number;
  /** Distinct 32-byte sectors of each buffer the launch touched, × 32: its DRAM footprint. */
  dramBytes: number;
  /** That footprint per binding (by its key), for the bindings the launch touched. */
  bufferBytes: Record<string, number>;
}

interface Compiled {
  name: string; key: string; source: string; invocations: number;
  ir: KernelIR;
  /** Profiling mode: the sites the source's `$pf` calls number. */
  sites?: ProfileSite[];
  /** Measured nanoseconds per workgroup (moving average), to decide where the next launch runs. */
  nsPerWorkgroup?: number;
  /** The wasm executor: the compiled module and what a launch of it needs. */
  wasm?: { module: WasmModule; scratchBytes: number; argWords: number };
  /** Whether it has run once (its first time is not measured). */
  ran?: boolean;
}
/** Launches expected to finish faster than a round trip to the workers run on the main thread. */
const INLINE_NS = 100_000;
/** In a replayed step, launches expected to take less than this run whole on one worker (no barrier around them). */
const SOLO_NS = 20_000;

/** An A/B switch from the environment: `fallback` when unset, else one of `allowed`, else an error naming it. */
function envChoice<T extends string>(name: string, fallback: T, allowed: readonly [T, T]): T {
  const v = platform.env(name) ?? fallback;
  if (!(allowed as readonly string[]).includes(v)) throw new Error(`cpu device: ${name} must be '${allowed[0]}' or '${allowed[1]}', not '${v}'`);
  return v as T;
}

/**
 * How workers wait for the next replayed step (pool.ts): on a shared word, spinning
 * KILN_CPU_SPIN_US µs then sleeping up to KILN_CPU_LISTEN_MS ms, before falling back to messages.
 * No spin by default: with a worker per core, spinning workers take the cores the host needs to
 * prepare the next step (measured 4× slower replays at 100 µs, bench/notes/cpu.md).
 * KILN_CPU_REPLAY=messages: one message per worker per step (the old path; for A/B timing).
 */
function listenOptions(): ListenOptions | null {
  const mode = envChoice('KILN_CPU_REPLAY', 'shared', ['shared', 'messages']);
  const num = (name: string, fallback: number) => {
    const v = platform.env(name), n = v === undefined ? fallback : Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`cpu device: ${name} must be a number ≥ 0, not '${v}'`);
    return n;
  };
  const spinUs = num('KILN_CPU_SPIN_US', 0), waitMs = num('KILN_CPU_LISTEN_MS', 50);
  return mode === 'shared' ? { spinUs, waitMs } : null;
}

class CpuDevice extends BaseDevice<CpuBuffer> {
  readonly kind = 'cpu' as const;
  readonly caps: Caps = { ...CPU_CAPS };
  readonly description: string;
  readonly profile: DeviceProfile;
  private readonly check: boolean;
  readonly profiling: boolean;
  /** Profiling mode: launches run since the last takeLaunchProfiles. */
  readonly launches: LaunchProfile[] = [];
  private readonly pool: WorkerPool | null;
  private readonly compiled = new WeakMap<Kernel, Compiled>();
  private readonly inlineKernels = new Map<string, WorkerKernel>();
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private error: Error | null = null;
  private destroyed = false;
  /** 'wasm': kernels run as WebAssembly over `heap`; 'js': as generated JavaScript. */
  readonly executor: 'wasm' | 'js';
  private readonly heap: WasmHeap | null;
  /** The wasm executor: each thread's scratch (slot 0: the main thread), their size, the argument block. */
  private scratch: number[] = [];
  private scratchSize = 0;
  private args = 0;
  private f16Table = 0;
  private readonly wasmSimd: boolean;
  private readonly convertWeights: boolean;
  /** wasm: fma as the host's fused f32x4.relaxed_madd (wasm-api.ts hostFusedMadd), else the exact helper. */
  private readonly fusedMadd: boolean;
  /** While captureGraph records: the launches dispatched so far. */
  private recording: { c: Compiled; bufs: CpuBuffer[]; uniforms: number[]; grid: [number, number, number] }[] | null = null;
  private graphs = 0;
  /** Captured graphs not yet destroyed, each with the buffers its launches use (free() refuses those). */
  private readonly liveGraphs = new Set<{ launches: number; buffers: Set<CpuBuffer> }>();
  private readonly inlineGraphs = new Map<number, GraphStep[]>();

  constructor(opts: DeviceOptions) {
    super();
    const workers = opts.workers ?? (platform.sharedMemory ? platform.cpuCount() : 0);
    if (!Number.isInteger(workers) || workers < 0) throw new Error(`cpu device: workers must be a whole number ≥ 0, not ${workers}`);
    if (workers > 0 && !platform.sharedMemory) throw new Error(`cpu device: workers = ${workers} needs SharedArrayBuffer, which this page lacks (it is not cross-origin isolated: serve it with COOP/COEP headers), so use workers: 0`);
    this.check = opts.check ?? platform.env('KILN_CHECK') === '1';
    this.profiling = !!opts.profile;
    const executor = opts.executor ?? platform.env('KILN_EXECUTOR') ?? (this.check || this.profiling || !platform.sharedMemory ? 'js' : 'wasm');
    if (executor !== 'wasm' && executor !== 'js') throw new Error(`cpu device: executor must be 'wasm' or 'js', not '${executor}'`);
    if (executor === 'wasm' && (this.check || this.profiling)) {
      throw new Error(`cpu device: ${this.check ? 'checking' : 'profiling'} mode runs on the js executor, not wasm (leave executor out or pass 'js')`);
    }
    if (executor === 'wasm' && !platform.sharedMemory) throw new Error(`cpu device: the wasm executor needs shared memory, which this page lacks (it is not cross-origin isolated): use executor 'js'`);
    this.executor = executor;
    this.heap = executor === 'wasm' ? new WasmHeap() : null;
    // Optimised code at compile time (wasm-api.ts says why); KILN_WASM_TIERING=dynamic leaves V8's
    // lazy tier-up on (compiles less up front; measured no faster on the kernel suites).
    const tiering = envChoice('KILN_WASM_TIERING', 'eager', ['eager', 'dynamic']);
    if (this.heap && tiering === 'eager') preferOptimizedWasm();
    // KILN_WASM_SIMD=0: scalar code only (the SIMD128 paths give the same bits; this is for A/B timing).
    this.wasmSimd = envChoice('KILN_WASM_SIMD', '1', ['0', '1']) === '1';
    // KILN_WASM_CONVERT=0: weight lanes unpacked one at a time (the vector conversions give the same bits; A/B timing).
    this.convertWeights = envChoice('KILN_WASM_CONVERT', '1', ['0', '1']) === '1';
    // KILN_WASM_FMA=exact: fma through the exact helper even where the host's multiply-add is fused
    // (same bits; for A/B timing and to test that path).
    const fma = envChoice('KILN_WASM_FMA', 'auto', ['auto', 'exact']);
    this.fusedMadd = !!this.heap && fma === 'auto' && hostFusedMadd();
    if (this.heap) {
      this.args = this.heap.alloc(ARG_BYTES, 'launch arguments');
      // wasm kernels convert f16 through the JS executor's own table (so results match bit for bit).
      this.f16Table = this.heap.alloc(4 * 65536, 'f16 table');
      new Float32Array(this.heap.sab, this.f16Table, 65536).set(makeF16().table);
    }
    // Profiled launches run on the main thread, where their counts are read (no worker replies).
    this.pool = workers > 0 && !this.profiling ? new WorkerPool(workers, listenOptions()) : null;
    const threads = this.pool ? `${workers} worker${workers === 1 ? '' : 's'}` : 'main thread';
    this.description = `cpu (${threads}, ${executor}${this.heap && !this.fusedMadd ? ', exact fma' : ''}${this.heap && this.fusedMadd && !this.wasmSimd ? ' without SIMD' : ''}${this.check ? ', checking' : ''}${this.profiling ? ', profiling' : ''})`;
    // ~16 workgroups of 64 per core keep the cores busy (measured with src/ops/tune.ts). Counted
    // per core, not per worker: split factors set reduction order, which must not follow `workers`.
    // KILN_WEIGHT_LAYOUT=rows: weights in checkpoint order (the strips give the same bits; A/B timing).
    const layout = envChoice('KILN_WEIGHT_LAYOUT', 'strips', ['rows', 'strips']);
    // KILN_CPU_GEMM=tiled: the tiled GEMM instead of the register one (same bits; A/B timing).
    const gemm = envChoice('KILN_CPU_GEMM', 'registers', ['registers', 'tiled']);
    this.profile = { software: true, deviceClass: 'cpu', vendor: 'cpu', parallelism: 1024 * platform.cpuCount(), weightLayout: layout, gemm };
  }

  protected usable(what: string): void {
    if (this.destroyed) throw new Error(`cpu device: cannot ${what}: the device was destroyed`);
  }

  protected allocBuffer(dtype: StorageType, length: number, label: string, bytes: number): CpuBuffer {
    if (!this.heap) return new CpuBuffer(dtype, length, label, bytes, platform.allocShared(bytes));
    const offset = this.heap.alloc(bytes, `buffer '${label}'`);
    return new CpuBuffer(dtype, length, label, bytes, this.heap.sab, offset);
  }

  private notRecording(what: string): void {
    if (this.recording) throw new Error(`cpu ${what} during graph capture: only launches are recorded (write before captureGraph/replay instead)`);
  }

  protected writeBuffer(b: CpuBuffer, data: HostArray<StorageType>, offset: number): void {
    this.notRecording(`write to '${b.label}'`);
    // Ordered with the queue: right away when idle, else after the launches queued before it.
    const into = new Uint8Array(b.sab, b.offset + offset * byteSize(b.dtype), data.byteLength);
    if (this.queued === 0) into.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    else {
      const copy = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
      this.enqueue(() => { into.set(copy); });
    }
  }

  protected async readBuffer<T extends StorageType>(b: CpuBuffer, dtype: T): Promise<HostArray<T>> {
    this.notRecording(`read of '${b.label}'`);
    await this.settle();
    if (b.freed) throw new Error(`cpu read: buffer '${b.label}' was freed`);
    // Into a plain ArrayBuffer: SharedArrayBuffer.slice makes a new shared allocation (mmap and
    // page faults), ~0.25 ms even for a decode step's 8 KB of logits.
    const bytes = b.length * byteSize(dtype), out = new ArrayBuffer(bytes);
    new Uint8Array(out).set(new Uint8Array(b.sab, b.offset, bytes));
    return hostArray(dtype, out, b.length);
  }

  /**
   * Refuses a buffer that a live graph (or the capture in progress) launches with: a replay would
   * read or write memory the heap has handed to another buffer. Scratch that grows is freed and
   * reallocated, so this also catches a regrow under a captured graph. Destroy the graph first.
   */
  override free(buf: DeviceBuffer): void {
    const b = this.own(buf, 'cpu free');
    const users = [...this.liveGraphs].filter((g) => g.buffers.has(b));
    if (users.length || this.recording?.some((l) => l.bufs.includes(b))) {
      const by = users.length ? `${users.length} live captured graph${users.length > 1 ? 's' : ''} (${users.map((g) => `${g.launches} launches`).join(', ')})` : 'the graph being captured';
      throw new Error(`cpu free of '${b.label}': the buffer is used by ${by}; destroy the graph before freeing or regrowing its buffers`);
    }
    super.free(buf);
  }

  protected freeBuffer(b: CpuBuffer): void {
    // js: the SharedArrayBuffer goes with its last reference. wasm: back to the heap once the
    // launches queued before the free have run.
    const heap = this.heap;
    if (heap) this.enqueue(() => heap.release(b.offset, b.bytes));
  }

  protected dispatch(kernel: Kernel, bufs: CpuBuffer[], uniforms: Record<string, number>, grid: [number, number, number]): void {
    const ir = kernel.ir;
    const u = ir.uniforms.map((d) => {
      const v = uniforms[d.key]!;
      return d.t === 'u32' ? v >>> 0 : d.t === 'i32' ? v | 0 : Math.fround(v);
    });
    const c = this.compile(kernel);
    if (this.recording) { this.recording.push({ c, bufs, uniforms: u, grid }); return; }
    this.enqueue(() => this.execute(c, bufs, u, grid));
  }

  /** Device-side copy, ordered with the queue like a launch. */
  copy<T extends StorageType>(dst: DeviceBuffer<T>, src: DeviceBuffer<T>): void {
    this.usable('copy');
    const d = this.own(dst, 'cpu copy'), s = this.own(src, 'cpu copy');
    checkCopy('cpu', d, s);
    this.notRecording(`copy to '${d.label}'`);
    this.enqueue(() => { d.bytesView().set(s.bytesView()); });
  }

  async sync(): Promise<void> {
    this.usable('sync');
    this.notRecording('sync');
    await this.settle();
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    await this.tail;
    this.destroyed = true;
    await this.pool?.destroy();
  }

  private compile(kernel: Kernel): Compiled {
    let c = this.compiled.get(kernel);
    if (!c && this.executor === 'wasm') {
      const w = emitWasm(kernel.ir, { simd: this.wasmSimd, fusedMadd: this.fusedMadd, convertWeights: this.convertWeights });
      const [x, y, z] = kernel.ir.workgroupSize;
      c = {
        name: kernel.ir.name, source: '', ir: kernel.ir, key: bytesKey(w.bytes), invocations: x * y * z,
        wasm: { module: new Wasm.Module(w.bytes), scratchBytes: w.scratchBytes, argWords: w.argWords },
      };
      this.compiled.set(kernel, c);
    }
    if (!c) {
      const p = this.profiling ? emitProfiledJS(kernel.ir, { check: this.check }) : undefined;
      const source = p?.source ?? emitJS(kernel.ir, { check: this.check });
      const [x, y, z] = kernel.ir.workgroupSize;
      c = { name: kernel.ir.name, source, ir: kernel.ir, key: platform.contentKey(source), invocations: x * y * z };
      if (p) c.sites = p.sites;
      this.compiled.set(kernel, c);
    }
    return c;
  }

  private enqueue(fn: () => Promise<void> | void): void {
    this.queued++;
    this.tail = this.tail.then(fn).catch((e: unknown) => {
      this.error ??= e instanceof Error ? e : new Error(String(e));
    }).finally(() => { this.queued--; });
  }

  /** Waits for the queue; reports (once) the first error since the last report. */
  private async settle(): Promise<void> {
    await this.tail;
    const e = this.error;
    if (e) {
      this.error = null;
      throw e;
    }
  }

  /** Read (and reset) the counts the inline run of a profiled launch left in its kernel's ctx. */
  private collectProfile(c: Compiled, grid: [number, number, number]): void {
    const counts = this.inlineKernels.get(c.key)?.ctx.profile;
    if (!counts) return; // it failed to compile: the launch reports that
    const T = counts.totals;
    const sites: SiteProfile[] = c.sites!.map((s, i) => ({
      site: s.site, access: s.access, space: s.space, kind: s.kind, bytesPerLane: s.bytes,
      requests: T[i * 6]!, sectors: T[i * 6 + 1]!, ideal_sectors: T[i * 6 + 2]!,
      wavefronts: T[i * 6 + 3]!, ideal_wavefronts: T[i * 6 + 4]!, bytes: T[i * 6 + 5]!,
    }));
    let footprint = 0;
    const bufferBytes: Record<string, number> = {};
    counts.seen.forEach((seen, b) => {
      if (!seen) return;
      let n = 0;
      for (let i = 0; i < seen.length; i++) n += seen[i]!;
      bufferBytes[c.ir.buffers[b]!.key] = 32 * n;
      footprint += n;
    });
    this.launches.push({
      kernel: c.name, ir: c.ir, grid: [...grid], sites,
      sectorBytes: 32 * sites.reduce((a, s) => a + s.sectors, 0), dramBytes: 32 * footprint, bufferBytes,
    });
    T.fill(0);
    counts.seen = [];
  }

  private measured(c: Compiled, ms: number, workgroups: number): void {
    // A wasm kernel's first run includes compiling its code (V8 compiles functions on first call):
    // not what later runs cost.
    if (c.wasm && !c.ran) { c.ran = true; return; }
    const ns = (ms * 1e6) / workgroups;
    c.nsPerWorkgroup = c.nsPerWorkgroup === undefined ? ns : 0.7 * c.nsPerWorkgroup + 0.3 * ns;
  }

  /** The wasm executor: scratch for every thread, this launch's arguments written to memory. */
  /** Every thread's scratch at least `bytes` (only between launches: it may move). */
  private ensureScratch(bytes: number): void {
    const heap = this.heap!;
    if (bytes <= this.scratchSize) return;
    for (const at of this.scratch) heap.release(at, this.scratchSize);
    this.scratchSize = Math.max(bytes, 2 * this.scratchSize, 1 << 16);
    this.scratch = Array.from({ length: (this.pool?.size ?? 0) + 1 }, () => heap.alloc(this.scratchSize, 'kernel scratch'));
  }

  private wasmLaunch(c: Compiled, bufs: CpuBuffer[], uniforms: number[]): WasmJob {
    this.ensureScratch(c.wasm!.scratchBytes);
    this.writeArgs(this.args, c, bufs, uniforms);
    return { memory: this.heap!.memory, module: c.wasm!.module, args: this.args, scratch: this.scratch, imports: WASM_IMPORTS };
  }

  /** A launch's argument block at `at`: binding offsets, uniforms, the f16 table. */
  private writeArgs(at: number, c: Compiled, bufs: CpuBuffer[], uniforms: number[]): void {
    const heap = this.heap!, w = c.wasm!;
    if (4 * w.argWords > ARG_BYTES) throw new Error(`kernel '${c.name}': ${w.argWords} bindings and uniforms exceed the cpu device's ${ARG_BYTES / 4}`);
    const I = heap.i32, F = heap.f32, w0 = at >> 2;
    for (let i = 0; i < bufs.length; i++) I[w0 + i] = bufs[i]!.offset;
    const us = c.ir.uniforms;
    for (let j = 0; j < us.length; j++) {
      const t = us[j]!.t;
      if (t === 'f32' || t === 'f16') F[w0 + bufs.length + j] = uniforms[j]!; else I[w0 + bufs.length + j] = uniforms[j]! | 0;
    }
    I[w0 + bufs.length + us.length] = this.f16Table;
  }

  /**
   * Records the launches `record` makes; replay() runs them again with the buffers and uniforms
   * they saw. wasm: laid out once in memory, replayed with one message per worker (graph.ts). js:
   * replay re-queues the recorded launches.
   */
  captureGraph(record: () => void): DeviceGraph {
    this.usable('capture a graph');
    if (this.recording) throw new Error('cpu captureGraph: a capture is already open');
    this.recording = [];
    let rec: NonNullable<typeof this.recording>;
    try {
      const r: unknown = record();
      if (r instanceof Promise) throw new Error('cpu captureGraph: the recording function must be synchronous');
    } finally {
      rec = this.recording;
      this.recording = null;
    }
    const launches = rec.filter((l) => l.grid[0] * l.grid[1] * l.grid[2] > 0);
    let destroyed = false;
    const users = { launches: launches.length, buffers: new Set(launches.flatMap((l) => l.bufs)) };
    this.liveGraphs.add(users);
    const live = (what: string) => {
      this.usable(`${what} a graph`);
      if (destroyed) throw new Error(`cpu graph: cannot ${what} it: it was destroyed`);
    };
    if (!this.heap) {
      return {
        launches: launches.length,
        replay: () => { live('replay'); for (const l of launches) this.enqueue(() => this.execute(l.c, l.bufs, l.uniforms, l.grid)); },
        destroy: () => { destroyed = true; this.liveGraphs.delete(users); },
      };
    }
    const heap = this.heap, id = ++this.graphs, P = this.pool?.size ?? 1;
    // Launches measured to take less than a barrier's worth run whole on one thread. Unmeasured
    // ones (a decode step's kernels are often captured before they ever ran timed) are shared:
    // a needless barrier costs ~2 µs, a wrong solo the whole launch on one thread while the others
    // wait — sized by invocations, a 2-workgroup GEMV walking K looked tiny (bench/notes/cpu.md).
    const solo = launches.map((l) => {
      const total = l.grid[0] * l.grid[1] * l.grid[2], est = l.c.nsPerWorkgroup;
      return total === 1 || (est !== undefined && est * total < SOLO_NS);
    });
    const barriers = barriersBetween(launches.map((l, i) => ({
      bindings: l.bufs.map((b, j) => ({ offset: b.offset, bytes: b.bytes, writes: l.c.ir.buffers[j]!.access === 'read_write' })),
      solo: solo[i]!,
    })));
    const steps: GraphStep[] = launches.map((l, i) => {
      const args = heap.alloc(4 * l.c.wasm!.argWords, 'graph arguments');
      this.writeArgs(args, l.c, l.bufs, l.uniforms);
      const total = l.grid[0] * l.grid[1] * l.grid[2];
      return { key: l.c.key, name: l.c.name, args, grid: [...l.grid], chunk: Math.max(1, Math.floor(total / (P * 8))), barrier: barriers[i]!, solo: solo[i]! };
    });
    const control = heap.alloc(4 * (2 * steps.length + 2), 'graph counters');
    const modules = new Map(launches.map((l) => [l.c.key, l.c.wasm!.module] as const));
    const scratchBytes = Math.max(0, ...launches.map((l) => l.c.wasm!.scratchBytes));
    const sent = new Set<unknown>();
    return {
      launches: launches.length,
      replay: () => {
        live('replay');
        this.enqueue(async () => {
          this.ensureScratch(scratchBytes);
          heap.i32.fill(0, control >> 2, (control >> 2) + 2 + 2 * steps.length);
          const graph = { id, memory: heap.memory, control, scratch: this.scratch };
          const replies = this.pool
            ? await this.pool.runGraph(graph, steps, modules, WASM_IMPORTS, sent)
            : [executeGraph({
              id: 0, slot: 0,
              graph: { ...graph, steps, imports: WASM_IMPORTS, modules: [...modules].map(([key, module]) => ({ key, module })) },
            }, this.inlineKernels, this.inlineGraphs)];
          const failed = replies.find((r) => r.error !== undefined);
          if (failed) throw new KernelRunError(`graph of ${steps.length} launches`, failed.error!);
        });
      },
      destroy: () => {
        if (destroyed) return;
        destroyed = true;
        this.liveGraphs.delete(users);
        this.enqueue(() => {
          steps.forEach((s, i) => heap.release(s.args, 4 * launches[i]!.c.wasm!.argWords));
          heap.release(control, 4 * (2 * steps.length + 2));
          this.inlineGraphs.delete(id);
        });
      },
    };
  }

  private async execute(c: Compiled, bufs: CpuBuffer[], uniforms: number[], grid: [number, number, number]): Promise<void> {
    const total = grid[0] * grid[1] * grid[2];
    if (total === 0) return;
    const workers = this.pool ? Math.min(this.pool.size, total) : 0;
    const job = {
      key: c.key, uniforms, grid,
      buffers: c.wasm ? [] : bufs.map((b) => ({ sab: b.sab, dtype: b.dtype, length: b.length })),
      counter: platform.allocShared(4),
      chunk: Math.max(1, Math.floor(total / Math.max(1, workers * 8))),
      ...(c.wasm ? { wasm: this.wasmLaunch(c, bufs, uniforms) } : {}),
    };
    // Small launches run here rather than pay a round trip to the workers: judged by the time
    // this kernel took per workgroup so far, or before any measurement, by its invocations.
    const est = c.nsPerWorkgroup;
    const inline = !this.pool || (est === undefined ? total * c.invocations <= 2048 : est * total < INLINE_NS);
    let replies: JobReply[];
    if (inline) {
      const t0 = performance.now();
      replies = [executeJob({ ...job, id: 0, source: c.source, slot: 0 }, this.inlineKernels)];
      this.measured(c, performance.now() - t0, total);
    } else {
      replies = await this.pool!.run(job, c.source, workers);
      this.measured(c, replies.reduce((s, r) => s + r.busyMs, 0), total);
    }
    if (c.sites) this.collectProfile(c, grid);
    const failed = replies.find((r) => r.error !== undefined);
    if (failed) throw new KernelRunError(c.name, failed.error!);
    const count = replies.reduce((s, r) => s + r.count, 0);
    if (count > 0) {
      const findings = [...new Set(replies.flatMap((r) => r.findings))];
      throw new KernelCheckError(c.name, findings, count);
    }
  }
}

/** Profiling mode: take (and clear) the launches the device has profiled; run them first (sync). */
export function takeLaunchProfiles(device: Device): LaunchProfile[] {
  if (!(device instanceof CpuDevice) || !device.profiling) {
    throw new Error(`takeLaunchProfiles: '${device.description}' is not a profiling cpu device (createDevice('cpu', { profile: true }))`);
  }
  return device.launches.splice(0);
}

export async function createCpuDevice(opts: DeviceOptions = {}): Promise<Device> {
  return new CpuDevice(opts);
}
