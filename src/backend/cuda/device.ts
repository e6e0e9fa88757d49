// The CUDA Device: buffers are device allocations, launches go onto one stream in call order, and
// kernels compile on first launch (emitCUDA → NVRTC or nvcc → module), cached per device by Kernel
// object and by source text. A forward pass can be captured once into a CUDA graph and replayed.
import type { Kernel } from '../../../codegen/dsl/builder.js';
import type { KernelIR } from '../../../codegen/dsl/ir.js';
import { byteSize, type Caps, type StorageType } from '../../../codegen/dsl/types.js';
import { emitCUDA } from '../../../codegen/emit/cuda.js';
import { BackendBuffer, BaseDevice, checkCopy, hostArray } from '../base.js';
import type { DeviceBuffer, DeviceGraph, DeviceProfile, HostArray } from '../device.js';
import type { CudaDeviceInfo, CudaFunctionInfo, NativeContext } from './addon.js';
import type { CudaCompiler } from './compile.js';
import { checkGeometry, cudaCaps, fillPointers, packUniformsInto, uniformStructBytes } from './marshal.js';

class CudaBuffer extends BackendBuffer {
  constructor(dtype: StorageType, length: number, label: string, bytes: number, readonly ptr: bigint) {
    super(dtype, length, label, bytes);
  }
}

/** A compiled kernel, with argument storage reused across launches (the driver copies arguments
 *  when a launch is queued, so refilling them for the next launch is safe). */
interface CompiledKernel {
  fn: bigint;
  info: CudaFunctionInfo;
  pointers: BigUint64Array;
  uniforms: Uint8Array | undefined;
  uniformView: DataView | undefined;
  /** Threads per block this function can launch with (registers may allow fewer than 1024). */
  maxThreads: number;
}

/** A captured sequence of launches; replay() queues all of them with one driver call. The launches
 *  keep the buffers and uniform values they were captured with: what changes per replay must live
 *  in device buffers that are written before replay(). Those buffers cannot be freed (or regrown,
 *  which frees) while the graph lives: the device refuses, naming the buffer. */
export class CudaGraph implements DeviceGraph {
  private destroyed = false;
  constructor(private readonly dev: CudaDevice, private readonly handle: bigint, readonly launches: number,
    /** @internal The buffers its launches use (CudaDevice.free refuses them). */
    readonly buffers: ReadonlySet<object>) {}
  replay(): void {
    if (this.destroyed) throw new Error('CudaGraph.replay: the graph was destroyed');
    this.dev.native('replay a graph').launchGraph(this.handle);
  }
  /**
   * Milliseconds of each of `reps` replays, by CUDA events around each one (kernel time, not the
   * host's). With `flush`, the whole buffer is overwritten before each replay: size it past the L2
   * (≥ 2 × 50 MB on H100/H200) and every replay reads its inputs from DRAM, as a decode step does.
   * Waits for the replays (blocking): for benchmarks.
   */
  time(reps: number, flush?: DeviceBuffer): number[] {
    if (this.destroyed) throw new Error('CudaGraph.time: the graph was destroyed');
    return this.dev.timeGraphReplays(this.handle, reps, flush);
  }
  /** Frees the graph; a replay still running finishes first. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.dev.forgetGraph(this);
    this.dev.native('destroy a graph').destroyGraph(this.handle);
  }
}

export class CudaDevice extends BaseDevice<CudaBuffer> {
  readonly kind = 'cuda' as const;
  readonly description: string;
  readonly caps: Caps;
  readonly profile: DeviceProfile;
  readonly info: CudaDeviceInfo;
  private byKernel = new WeakMap<Kernel, CompiledKernel>();
  private bySource = new Map<string, CompiledKernel>();
  private modules: bigint[] = [];
  private graphs = new Set<CudaGraph>();
  private capture: { launches: number; deferredFrees: CudaBuffer[]; buffers: Set<object> } | undefined;
  private ctx: NativeContext | undefined;

  constructor(ctx: NativeContext, readonly compiler: CudaCompiler) {
    super();
    this.ctx = ctx;
    this.info = ctx.info();
    this.caps = cudaCaps(this.info);
    // Tens of thousands of threads in flight fill a GPU's SMs.
    this.profile = { software: false, deviceClass: 'gpu', vendor: 'nvidia', parallelism: 65536, multiprocessors: this.info.multiprocessors };
    const gib = (this.info.totalMem / 2 ** 30).toFixed(0);
    const driver = `${Math.floor(this.info.driverVersion / 1000)}.${(this.info.driverVersion % 1000) / 10}`;
    this.description = `${this.info.name} (sm_${this.info.ccMajor}${this.info.ccMinor}, ${gib} GiB, ${this.info.multiprocessors} SMs) ` +
      `via CUDA driver ${driver}, kernels by ${compiler.description}`;
  }

  /** The native context, or an error saying what was attempted after destroy(). */
  native(what: string): NativeContext {
    if (!this.ctx) throw new Error(`cuda device: cannot ${what}: the device was destroyed`);
    return this.ctx;
  }

  protected usable(what: string): void { this.native(what); }

  /** Free and total device memory as the driver sees it (all processes). */
  memInfo(): { free: number; total: number } { return this.native('query memory').memInfo(); }

  protected allocBuffer(dtype: StorageType, length: number, label: string, bytes: number): CudaBuffer {
    // Never 0 bytes (the driver refuses); whole 4-byte words so u32-packed f16 tails stay inside.
    return new CudaBuffer(dtype, length, label, bytes, this.native(`allocate '${label}'`).alloc(bytes, true));
  }

  protected writeBuffer(b: CudaBuffer, data: HostArray<StorageType>, offset: number): void {
    if (this.capture) throw new Error(`cuda write to '${b.label}' during graph capture: write before captureGraph/replay instead`);
    this.native('write').write(b.ptr, offset * byteSize(b.dtype), data);
  }

  protected async readBuffer<T extends StorageType>(b: CudaBuffer, dtype: T): Promise<HostArray<T>> {
    if (this.capture) throw new Error(`cuda read of '${b.label}' during graph capture`);
    const bytes = await this.native('read').read(b.ptr, 0, b.length * byteSize(dtype));
    return hostArray(dtype, bytes, b.length);
  }

  /**
   * Refuses a buffer that a live graph (or the capture in progress) launches with: a replay would
   * read or write freed memory. Scratch that grows is freed and reallocated, so this also catches
   * a regrow under a captured graph. Destroy the graph first.
   */
  override free(buf: DeviceBuffer): void {
    const b = this.own(buf, 'cuda free');
    const users = [...this.graphs].filter((g) => g.buffers.has(b));
    if (users.length || this.capture?.buffers.has(b)) {
      const by = users.length ? `${users.length} live captured graph${users.length > 1 ? 's' : ''} (${users.map((g) => `${g.launches} launches`).join(', ')})` : 'the graph being captured';
      throw new Error(`cuda free of '${b.label}': the buffer is used by ${by}; destroy the graph before freeing or regrowing its buffers`);
    }
    super.free(buf);
  }

  protected freeBuffer(b: CudaBuffer): void {
    // Freeing synchronizes, which a capture forbids: release it once the capture ends.
    if (this.capture) this.capture.deferredFrees.push(b);
    else this.native('free').free(b.ptr);
  }

  /** Device-to-device copy of a whole buffer (same dtype and length), queued in order. */
  copy<T extends StorageType>(dst: DeviceBuffer<T>, src: DeviceBuffer<T>): void {
    const d = this.own(dst, 'cuda copy'), s = this.own(src, 'cuda copy');
    checkCopy('cuda', d, s);
    this.native('copy').copy(d.ptr, 0, s.ptr, 0, s.length * byteSize(s.dtype));
    if (this.capture) this.capture.buffers.add(d).add(s);
  }

  private compiled(kernel: Kernel): CompiledKernel {
    const hit = this.byKernel.get(kernel);
    if (hit) return hit;
    const ir: KernelIR = kernel.ir;
    const source = emitCUDA(ir);
    let ck = this.bySource.get(source);
    if (!ck) {
      const ctx = this.native(`compile '${ir.name}'`);
      const { image } = this.compiler.compile(source, ir.name, [this.info.ccMajor, this.info.ccMinor]);
      const mod = this.load(ctx, image);
      this.modules.push(mod);
      const fn = ctx.getFunction(mod, ir.name); // the emitter's entry point: extern "C", the kernel's name
      const info = ctx.functionInfo(fn);
      const hasUniforms = ir.uniforms.length > 0;
      const uniforms = hasUniforms ? new Uint8Array(uniformStructBytes(ir)) : undefined;
      ck = {
        fn, info, pointers: new BigUint64Array(ir.buffers.length), uniforms,
        uniformView: uniforms && new DataView(uniforms.buffer),
        maxThreads: Math.min(info.maxThreadsPerBlock, this.info.maxThreadsPerBlock),
      };
      this.bySource.set(source, ck);
    }
    this.byKernel.set(kernel, ck);
    return ck;
  }

  /** Loads a module image; a failure from a compiler newer than the driver says so. */
  private load(ctx: NativeContext, image: Uint8Array): bigint {
    try {
      return ctx.loadModule(image);
    } catch (e) {
      const [major, minor] = this.compiler.version;
      const driver = this.info.driverVersion;
      if (major * 1000 + minor * 10 <= driver) throw e;
      throw new Error(`${(e as Error).message}\n(kernels come from ${this.compiler.description}, newer than the driver's CUDA ` +
        `${Math.floor(driver / 1000)}.${(driver % 1000) / 10}: point KILN_NVRTC, KILN_NVCC or CUDA_HOME at a toolkit no newer than the driver)`);
    }
  }

  /** Registers, spills and shared memory of a kernel as compiled for this device. */
  functionInfo(kernel: Kernel): CudaFunctionInfo { return this.compiled(kernel).info; }

  protected dispatch(kernel: Kernel, bufs: CudaBuffer[], uniforms: Record<string, number>, grid: [number, number, number]): void {
    const ir = kernel.ir;
    const ck = this.compiled(kernel);
    if (!checkGeometry(ir.name, grid, ir.workgroupSize, this.info.maxGrid, ck.maxThreads)) return;
    fillPointers(ir, (_key, i) => bufs[i]!.ptr, ck.pointers);
    if (ck.uniformView) packUniformsInto(ir, uniforms, ck.uniformView);
    const [bx, by, bz] = ir.workgroupSize;
    this.native(`launch '${ir.name}'`).launch(ck.fn, grid[0], grid[1], grid[2], bx, by, bz, 0, ck.pointers, ck.uniforms);
    if (this.capture) {
      this.capture.launches++;
      for (const b of bufs) this.capture.buffers.add(b);
    }
  }

  async sync(): Promise<void> {
    if (this.capture) throw new Error('cuda sync during graph capture');
    await this.native('sync').sync();
  }

  /**
   * Captures the launches `record` queues (directly or through run()) into a CUDA graph instead
   * of running them. `record` must be synchronous and may not write, read or sync; it may launch
   * and allocate (kernels compile and scratch buffers appear on first use — buffers allocated
   * during a capture start uninitialized). Run the pass once uncaptured first when it should
   * also execute now. Replaying the graph later re-runs every captured launch with the buffers
   * and uniform values it saw here.
   */
  captureGraph(record: () => void): CudaGraph {
    const ctx = this.native('capture a graph');
    if (this.capture) throw new Error('cuda captureGraph: a capture is already open');
    ctx.beginCapture();
    const capture = (this.capture = { launches: 0, deferredFrees: [] as CudaBuffer[], buffers: new Set<object>() });
    let handle: bigint;
    try {
      const r: unknown = record();
      if (r instanceof Promise) throw new Error('cuda captureGraph: the recording function must be synchronous');
      handle = ctx.endCapture();
    } catch (e) {
      ctx.abortCapture();
      throw e;
    } finally {
      this.capture = undefined;
      for (const b of capture.deferredFrees) ctx.free(b.ptr);
    }
    const graph = new CudaGraph(this, handle, capture.launches, capture.buffers);
    this.graphs.add(graph);
    return graph;
  }

  /** @internal CudaGraph.time: the replays' event timings, each after a flush of `flush`. */
  timeGraphReplays(handle: bigint, reps: number, flush?: DeviceBuffer): number[] {
    if (!Number.isInteger(reps) || reps < 1) throw new Error(`CudaGraph.time: reps = ${reps} must be a positive integer`);
    const b = flush ? this.own(flush, 'CudaGraph.time flush') : undefined;
    if (b && this.graphs.size && [...this.graphs].some((g) => g.buffers.has(b))) {
      throw new Error(`CudaGraph.time: the flush buffer '${b.label}' is used by a captured graph; flush with a buffer of its own`);
    }
    return this.native('time a graph').timeGraph(handle, reps, b?.ptr ?? 0n, b?.bytes ?? 0);
  }

  /** @internal CudaGraph.destroy bookkeeping. */
  forgetGraph(g: CudaGraph): void { this.graphs.delete(g); }

  async destroy(): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    try {
      await ctx.sync();
    } finally {
      for (const g of [...this.graphs]) g.destroy();
      this.releaseAll();
      this.ctx = undefined;
      ctx.destroy(); // frees allocations, modules and graphs on the native side
    }
  }
}
