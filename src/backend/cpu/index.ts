// The CPU device: kernels compiled to JavaScript by codegen/emit/js.ts, workgroups spread over
// worker threads, buffers in SharedArrayBuffers. Launches run in order, one after another; errors
// and checking-mode findings reject the next sync() or read() and leave the device usable.
import { createHash } from 'node:crypto';
import os from 'node:os';
import type { BindingSpec, Bindings, Kernel, Uniforms, UniformValues } from '../../../codegen/dsl/builder.js';
import type { Op } from '../../../codegen/dsl/plan.js';
import type { Caps, StorageType } from '../../../codegen/dsl/types.js';
import { emitJS } from '../../../codegen/emit/js.js';
import {
  type BoundBuffers, type Device, type DeviceBuffer, type HostArray, LaunchError,
} from '../device.js';
import type { DeviceOptions } from '../index.js';
import { runPlan } from '../plan.js';
import { validateLaunch } from '../validate.js';
import { WorkerPool } from './pool.js';
import { EXECUTE_SOURCE, type JobMessage, type JobReply } from './worker.js';

export const CPU_CAPS: Caps = {
  f16: true,
  subgroups: true,
  subgroupSize: 32,
  maxWorkgroupStorage: 65536,
  maxStorageBuffers: 32,
  maxInvocationsPerWorkgroup: 1024,
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

const CTOR = { f32: Float32Array, f16: Uint16Array, i32: Int32Array, u32: Uint32Array } as const;

class CpuBuffer<T extends StorageType = StorageType> implements DeviceBuffer<T> {
  freed = false;
  readonly view: HostArray<T>;
  constructor(readonly owner: CpuDevice, readonly dtype: T, readonly length: number, readonly label: string,
    readonly sab: SharedArrayBuffer) {
    const ctor = CTOR[dtype] as unknown as new (b: ArrayBufferLike, offset: number, length: number) => HostArray<T>;
    this.view = new ctor(sab, 0, length);
  }
}

interface Compiled {
  name: string; key: string; source: string; invocations: number;
  /** Measured nanoseconds per workgroup (moving average), to decide where the next launch runs. */
  nsPerWorkgroup?: number;
}
/** Launches expected to finish faster than a round trip to the workers run on the main thread. */
const INLINE_NS = 100_000;

/** Runs small launches on the main thread with the same code the workers run. */
const executeInline = new Function(`${EXECUTE_SOURCE}\nreturn executeJob;`)() as
  (job: JobMessage, kernels: Map<string, unknown>) => JobReply;

class CpuDevice implements Device {
  readonly kind = 'cpu' as const;
  readonly caps: Caps = { ...CPU_CAPS };
  readonly description: string;
  private readonly check: boolean;
  private readonly pool: WorkerPool | null;
  private readonly compiled = new WeakMap<Kernel, Compiled>();
  private readonly inlineKernels = new Map<string, unknown>();
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private error: Error | null = null;
  private inUse = 0;
  private destroyed = false;
  private labels = 0;

  constructor(opts: DeviceOptions) {
    const workers = opts.workers ?? os.availableParallelism();
    if (!Number.isInteger(workers) || workers < 0) throw new Error(`cpu device: workers must be a whole number ≥ 0, not ${workers}`);
    this.check = opts.check ?? process.env.KILN_CHECK === '1';
    this.pool = workers > 0 ? new WorkerPool(workers) : null;
    const threads = workers > 0 ? `${workers} worker${workers === 1 ? '' : 's'}` : 'main thread';
    this.description = `cpu (${threads}${this.check ? ', checking' : ''})`;
  }

  get bytesInUse(): number { return this.inUse; }

  private alive(): void {
    if (this.destroyed) throw new Error('the cpu device was destroyed');
  }

  alloc<T extends StorageType>(dtype: T, length: number, label?: string): DeviceBuffer<T> {
    this.alive();
    if (!(dtype in CTOR)) throw new Error(`alloc: dtype '${dtype}' is not one of f32, f16, i32, u32`);
    if (!Number.isInteger(length) || length < 0) throw new Error(`alloc: length of '${label ?? dtype}' must be a whole number, not ${length}`);
    const bytes = Math.max(4, Math.ceil((length * (dtype === 'f16' ? 2 : 4)) / 4) * 4);
    const buf = new CpuBuffer(this, dtype, length, label ?? `${dtype}[${length}]#${++this.labels}`, new SharedArrayBuffer(bytes));
    this.inUse += bytes;
    return buf;
  }

  private own(buf: DeviceBuffer | undefined, what: string): CpuBuffer {
    if (!(buf instanceof CpuBuffer) || buf.owner !== this) throw new LaunchError(`${what}: buffer '${buf?.label}' does not belong to this cpu device`);
    if (buf.freed) throw new LaunchError(`${what}: buffer '${buf.label}' was freed`);
    return buf;
  }

  write<T extends StorageType>(buf: DeviceBuffer<T>, data: HostArray<T>, offset = 0): void {
    this.alive();
    const b = this.own(buf, 'write');
    const ctor = CTOR[b.dtype];
    if (!(data instanceof ctor)) {
      throw new Error(`write to '${b.label}' (${b.dtype}): expected a ${ctor.name}, got ${(data as object)?.constructor?.name ?? typeof data}`);
    }
    if (!Number.isInteger(offset) || offset < 0 || offset + data.length > b.length) {
      throw new Error(`write to '${b.label}': ${data.length} elements at offset ${offset} do not fit in its ${b.length}`);
    }
    // Ordered with the queue: right away when idle, else after the launches queued before it.
    if (this.queued === 0) (b.view as Float32Array).set(data as unknown as Float32Array, offset);
    else {
      const copy = data.slice();
      this.enqueue(() => { (b.view as Float32Array).set(copy as unknown as Float32Array, offset); });
    }
  }

  async read<T extends StorageType>(buf: DeviceBuffer<T>): Promise<HostArray<T>> {
    this.alive();
    const b = this.own(buf, 'read') as unknown as CpuBuffer<T>;
    await this.settle();
    if (b.freed) throw new Error(`read: buffer '${b.label}' was freed`);
    return b.view.slice() as HostArray<T>;
  }

  free(buf: DeviceBuffer): void {
    const b = this.own(buf, 'free');
    b.freed = true;
    this.inUse -= b.sab.byteLength;
  }

  launch<B extends Bindings, U extends Uniforms>(kernel: Kernel<B, U>, bindings: BoundBuffers<B>, uniforms: UniformValues<U>): void {
    this.alive();
    const bound = bindings as Record<string, DeviceBuffer | undefined>;
    validateLaunch(kernel as unknown as Kernel, bound, uniforms as Record<string, number>);
    const ir = kernel.ir;
    const bufs = ir.buffers.map((d) => this.own(bound[d.key], `kernel '${ir.name}': binding '${d.key}'`));
    const u = ir.uniforms.map((d) => {
      const v = (uniforms as Record<string, number>)[d.key]!;
      return d.t === 'u32' ? v >>> 0 : d.t === 'i32' ? v | 0 : Math.fround(v);
    });
    const grid = kernel.grid(uniforms);
    const c = this.compile(kernel as unknown as Kernel);
    this.enqueue(() => this.execute(c, bufs, u, grid));
  }

  run<B extends Record<string, BindingSpec>, S extends Record<string, number>>(op: Op<B, S>, bindings: BoundBuffers<B>, sizes: S): void {
    this.alive();
    runPlan(this, op, bindings as Record<string, DeviceBuffer>, sizes);
  }

  async sync(): Promise<void> {
    this.alive();
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
    if (!c) {
      const source = emitJS(kernel.ir, { check: this.check });
      const [x, y, z] = kernel.ir.workgroupSize;
      c = { name: kernel.ir.name, source, key: createHash('sha1').update(source).digest('hex').slice(0, 20), invocations: x * y * z };
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

  private measured(c: Compiled, ms: number, workgroups: number): void {
    const ns = (ms * 1e6) / workgroups;
    c.nsPerWorkgroup = c.nsPerWorkgroup === undefined ? ns : 0.7 * c.nsPerWorkgroup + 0.3 * ns;
  }

  private async execute(c: Compiled, bufs: CpuBuffer[], uniforms: number[], grid: [number, number, number]): Promise<void> {
    const total = grid[0] * grid[1] * grid[2];
    if (total === 0) return;
    const workers = this.pool ? Math.min(this.pool.size, total) : 0;
    const job = {
      key: c.key, uniforms, grid,
      buffers: bufs.map((b) => ({ sab: b.sab, dtype: b.dtype, length: b.length })),
      counter: new SharedArrayBuffer(4),
      chunk: Math.max(1, Math.floor(total / Math.max(1, workers * 8))),
    };
    // Small launches run here rather than pay a round trip to the workers: judged by the time
    // this kernel took per workgroup so far, or before any measurement, by its invocations.
    const est = c.nsPerWorkgroup;
    const inline = !this.pool || (est === undefined ? total * c.invocations <= 2048 : est * total < INLINE_NS);
    let replies: JobReply[];
    if (inline) {
      const t0 = performance.now();
      replies = [executeInline({ ...job, id: 0, source: c.source }, this.inlineKernels)];
      this.measured(c, performance.now() - t0, total);
    } else {
      replies = await this.pool!.run(job, c.source, workers);
      this.measured(c, replies.reduce((s, r) => s + r.busyMs, 0), total);
    }
    const failed = replies.find((r) => r.error !== undefined);
    if (failed) throw new KernelRunError(c.name, failed.error!);
    const count = replies.reduce((s, r) => s + r.count, 0);
    if (count > 0) {
      const findings = [...new Set(replies.flatMap((r) => r.findings))];
      throw new KernelCheckError(c.name, findings, count);
    }
  }
}

export async function createCpuDevice(opts: DeviceOptions = {}): Promise<Device> {
  return new CpuDevice(opts);
}
