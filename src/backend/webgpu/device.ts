// The WebGPU Device. Launches are recorded into the current pass (a list of commands) and encoded
// into one command encoder when the pass is flushed by sync() or read(): no readback inside a pass.
// Pipelines compile asynchronously from the first launch; a flush waits for the ones it needs.
// captureGraph records a launch sequence once — pipelines, bind groups, and uniforms in chunks the
// graph owns (uploaded once) — and replay() appends those commands to the current pass: no
// validation, planning, uniform packing or bind-group lookup per launch, one submit per step.
import type { Kernel } from '../../../codegen/dsl/builder.js';
import type { KernelIR } from '../../../codegen/dsl/ir.js';
import { byteSize, type Caps, type StorageType } from '../../../codegen/dsl/types.js';
import { BackendBuffer, BaseDevice, checkCopy, hostArray } from '../base.js';
import { type DeviceBuffer, type DeviceGraph, type DeviceProfile, type HostArray, LaunchError } from '../device.js';
import type { OpenedDevice } from './adapter.js';
import { CHUNK_BYTES, PassUniforms, type UniformChunk, UniformPool } from './uniforms.js';
import { platform } from '../../platform/index.js';

const STORAGE = 0x80, COPY_SRC = 0x04, COPY_DST = 0x08, MAP_READ = 0x01, COMPUTE = 0x4, MAP_MODE_READ = 0x1;
/** Bind groups kept per pipeline before the cache is dropped (keys contain buffer ids, never reused). */
const BIND_GROUP_CACHE = 512;
const STAGING_POOL_MAX_BYTES = 16 << 20;

class WebGPUBuffer extends BackendBuffer {
  constructor(dtype: StorageType, length: number, label: string, bytes: number, readonly id: number, readonly gpu: GPUBuffer) {
    super(dtype, length, label, bytes);
  }
}

/** A compiled kernel: explicit layout (so unused bindings stay bindable), pipeline once ready. */
interface Compiled {
  name: string;
  wgsl: string;
  layout: GPUBindGroupLayout;
  /** Bytes of the uniform struct (0: no uniforms). */
  uniformBytes: number;
  pipeline?: GPUComputePipeline;
  error?: Error;
  ready: Promise<void>;
  bindGroups: Map<string, GPUBindGroup>;
}

type Command =
  | { k: 'dispatch'; c: Compiled; group: GPUBindGroup; offset: number; grid: [number, number, number] }
  | { k: 'write'; gpu: GPUBuffer; byteOffset: number; data: Uint8Array }
  | { k: 'copy'; src: GPUBuffer; dst: GPUBuffer; bytes: number };

interface Pass { commands: Command[]; uniforms: PassUniforms; toDestroy: GPUBuffer[]; onSubmitted: (() => void)[] }

/** A launch sequence recorded once (WebGPUDevice.captureGraph) and appended to passes on replay. */
class WebGPUGraph implements DeviceGraph {
  private destroyed = false;
  constructor(private readonly owner: WebGPUDevice, readonly commands: Command[], readonly uniforms: PassUniforms,
    readonly buffers: Set<WebGPUBuffer>) {}
  get launches(): number { return this.commands.length; }
  replay(): void {
    if (this.destroyed) throw new Error('webgpu graph: replay after destroy');
    this.owner.replayGraph(this);
  }
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.owner.forgetGraph(this);
  }
}

// Sets one 16-bit half of a u32 word: f16 writes that start or end inside a word another
// element shares go through this, ordered with the launches around them.
const PATCH_HALF_WGSL = `struct Patch { word: u32, mask: u32, value: u32 }
@group(0) @binding(0) var<storage, read_write> dst: array<u32>;
@group(0) @binding(1) var<uniform> p: Patch;
@compute @workgroup_size(1) fn kiln_patch_half() {
  dst[p.word] = (dst[p.word] & ~p.mask) | (p.value & p.mask);
}
`;

export type EmitWGSL = (ir: KernelIR) => string;

export class WebGPUDevice extends BaseDevice<WebGPUBuffer> {
  readonly kind = 'webgpu' as const;
  readonly description: string;
  readonly caps: Caps;
  readonly software: boolean;
  readonly profile: DeviceProfile;
  /** The device's limits (requested explicitly: the adapter's own) and the adapter's. */
  readonly limits: GPUSupportedLimits;
  readonly adapterLimits: GPUSupportedLimits;
  private readonly device: GPUDevice;
  /** Dawn's instance, referenced so it lives as long as the device; dropped on destroy. */
  private instance: GPU | undefined;
  private readonly pool: UniformPool;
  private pass: Pass;
  private readonly compiledByKernel = new WeakMap<Kernel, Compiled>();
  private readonly compiledByText = new Map<string, Compiled>();
  private readonly staging = new Map<number, GPUBuffer[]>();
  private patchHalf: Compiled | undefined;
  private nextId = 1;
  /** Passes taken for flushing but not yet submitted: writes must then queue behind them. */
  private unsubmitted = 0;
  private flushChain: Promise<void> = Promise.resolve();
  private lost: Error | undefined;
  private uncaptured: Error[] = [];
  private destroyed = false;
  /** The capture in progress: launches go here instead of the pass. */
  private capture: { commands: Command[]; uniforms: PassUniforms; buffers: Set<WebGPUBuffer> } | undefined;
  private readonly graphs = new Set<WebGPUGraph>();

  constructor(opened: OpenedDevice, private readonly emit: EmitWGSL) {
    super();
    this.device = opened.device;
    this.limits = opened.device.limits;
    this.adapterLimits = opened.adapter.limits;
    this.instance = opened.instance;
    this.description = opened.description;
    this.caps = opened.caps;
    this.software = opened.software;
    // A software adapter runs workgroups on CPU cores (~16 of 64 invocations per core keep them busy).
    this.profile = { software: opened.software, deviceClass: opened.software ? 'software-gpu' : 'gpu', vendor: opened.vendor, parallelism: opened.software ? 1024 * platform.cpuCount() : 65536 };
    this.pool = new UniformPool(this.device, Math.max(16, this.limits.minUniformBufferOffsetAlignment));
    this.pass = this.newPass();
    this.device.lost.then((info) => {
      if (!this.destroyed) this.lost = new Error(`webgpu device on ${this.description} was lost (${info.reason}): ${info.message}`);
    }, () => {});
    this.device.addEventListener('uncapturederror', (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      if (this.uncaptured.length < 8) this.uncaptured.push(new Error(`webgpu ${e.constructor.name}: ${e.message}`));
    });
  }

  /** Launches and writes recorded in the current pass, not yet submitted. */
  get queued(): number { return this.pass.commands.length; }

  private newPass(): Pass { return { commands: [], uniforms: new PassUniforms(this.pool), toDestroy: [], onSubmitted: [] }; }

  protected usable(what = 'use it'): void {
    if (this.destroyed) throw new Error(`webgpu device: cannot ${what}: the device was destroyed`);
    if (this.lost) throw this.lost;
  }

  /** Whole 4-byte words, and at least 16 bytes: a vec4 binding needs one whole element even when
   *  the buffer is empty (a non-empty one bound as vecW holds a multiple of W words). */
  protected override allocationBytes(dtype: StorageType, length: number): number {
    return Math.max(16, Math.ceil((length * byteSize(dtype)) / 4) * 4);
  }

  protected allocBuffer(dtype: StorageType, length: number, label: string, bytes: number): WebGPUBuffer {
    const max = Math.min(this.limits.maxBufferSize, this.limits.maxStorageBufferBindingSize);
    if (bytes > max) throw new Error(`webgpu alloc '${label}': ${bytes} bytes exceed the device's largest storage buffer (${max} bytes)`);
    const gpu = this.device.createBuffer({ label, size: bytes, usage: STORAGE | COPY_SRC | COPY_DST });
    return new WebGPUBuffer(dtype, length, label, bytes, this.nextId++, gpu);
  }

  protected freeBuffer(b: WebGPUBuffer): void {
    // Commands not yet submitted may still use it: destroy after the current pass is submitted.
    if (this.pass.commands.length || this.unsubmitted) this.pass.toDestroy.push(b.gpu);
    else b.gpu.destroy();
  }

  protected writeBuffer(b: WebGPUBuffer, data: HostArray<StorageType>, offset: number): void {
    if (this.capture) throw new Error(`webgpu write to '${b.label}' during graph capture: write before captureGraph/replay instead`);
    if (data.length === 0) return;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (b.dtype !== 'f16' || !(data instanceof Uint16Array)) return this.enqueueWrite(b.gpu, offset * 4, bytes);
    // f16: whole u32 words go through writeBuffer; a half word shared with a neighbour is patched.
    const halves = data;
    let first = 0, last = halves.length; // [first, last) written as whole words
    if (offset % 2 === 1) {
      this.patchWord(b, (offset - 1) / 2, 0xffff0000, halves[0]! << 16);
      first = 1;
    }
    const end = offset + halves.length;
    if (end % 2 === 1 && last > first && end !== b.length) {
      this.patchWord(b, (end - 1) / 2, 0x0000ffff, halves[last - 1]!);
      last -= 1;
    }
    if (last <= first) return;
    const startByte = (offset + first) * 2;
    let chunk = bytes.subarray(first * 2, last * 2);
    if (chunk.length % 4) { // the buffer's last element: its word's other half is padding
      const padded = new Uint8Array(chunk.length + 2);
      padded.set(chunk);
      chunk = padded;
    }
    this.enqueueWrite(b.gpu, startByte, chunk);
  }

  /** Device-side copy of a whole buffer, recorded in the current pass. */
  copy<T extends StorageType>(dst: DeviceBuffer<T>, src: DeviceBuffer<T>): void {
    this.usable('copy');
    if (this.capture) throw new Error('webgpu copy during graph capture');
    const d = this.own(dst, 'webgpu copy'), s = this.own(src, 'webgpu copy');
    checkCopy('webgpu', d, s);
    this.pass.commands.push({ k: 'copy', src: s.gpu, dst: d.gpu, bytes: Math.min(s.bytes, d.bytes) });
  }

  private enqueueWrite(gpu: GPUBuffer, byteOffset: number, data: Uint8Array): void {
    // queue.writeBuffer runs before anything not yet submitted: only write directly when nothing is pending.
    if (!this.pass.commands.length && !this.unsubmitted) this.device.queue.writeBuffer(gpu, byteOffset, data);
    else this.pass.commands.push({ k: 'write', gpu, byteOffset, data: data.slice() });
  }

  private patchWord(b: WebGPUBuffer, word: number, mask: number, value: number): void {
    this.patchHalf ??= this.compile('kiln_patch_half', PATCH_HALF_WGSL, ['read_write'], 3);
    this.record(this.patchHalf, [b], [1, 1, 1], (chunk, at) => { chunk.u32[at] = word; chunk.u32[at + 1] = mask; chunk.u32[at + 2] = value >>> 0; });
  }

  protected dispatch(kernel: Kernel, bufs: WebGPUBuffer[], uniforms: Record<string, number>, grid: [number, number, number]): void {
    const ir = kernel.ir;
    const what = `kernel '${ir.name}'`;
    for (let i = 0; i < bufs.length; i++) {
      for (let j = i + 1; j < bufs.length; j++) {
        if (bufs[i] === bufs[j] && (ir.buffers[i]!.access === 'read_write' || ir.buffers[j]!.access === 'read_write')) {
          throw new LaunchError(`${what}: buffer '${bufs[i]!.label}' is bound to both '${ir.buffers[i]!.key}' and '${ir.buffers[j]!.key}', and one of them is written`);
        }
      }
    }
    const maxGrid = this.limits.maxComputeWorkgroupsPerDimension;
    if (grid.some((g) => g > maxGrid)) {
      throw new LaunchError(`${what}: grid ${grid.join('x')} exceeds the device's ${maxGrid} workgroups per dimension`);
    }
    const c = this.compiledFor(kernel);
    if (c.error) throw c.error;
    if (grid.some((g) => g === 0)) return;
    this.record(c, bufs, grid, (chunk, at) => {
      for (let i = 0; i < ir.uniforms.length; i++) {
        const u = ir.uniforms[i]!;
        const v = uniforms[u.key]!;
        if (u.t === 'f32') chunk.f32[at + i] = v;
        else if (u.t === 'i32') chunk.i32[at + i] = v;
        else chunk.u32[at + i] = v;
      }
    });
  }

  /** Queue one dispatch of a compiled pipeline; `fill` writes its uniforms at word index `at`. */
  private record(c: Compiled, bufs: WebGPUBuffer[], grid: [number, number, number],
    fill: (chunk: UniformChunk, at: number) => void): void {
    let chunk: UniformChunk | undefined;
    let offset = 0;
    const target = this.capture ?? this.pass;
    if (c.uniformBytes) {
      ({ chunk, offset } = target.uniforms.slot(c.uniformBytes));
      fill(chunk, offset / 4);
    }
    if (this.capture) for (const b of bufs) this.capture.buffers.add(b);
    let key = chunk ? `${chunk.id}` : '';
    for (const b of bufs) key += `,${b.id}`;
    let group = c.bindGroups.get(key);
    if (!group) {
      const entries: GPUBindGroupEntry[] = bufs.map((b, i) => ({ binding: i, resource: { buffer: b.gpu } }));
      if (chunk) entries.push({ binding: bufs.length, resource: { buffer: chunk.gpu, size: c.uniformBytes } });
      if (c.bindGroups.size >= BIND_GROUP_CACHE) c.bindGroups.clear();
      group = this.device.createBindGroup({ label: c.name, layout: c.layout, entries });
      c.bindGroups.set(key, group);
    }
    target.commands.push({ k: 'dispatch', c, group, offset, grid });
  }

  /**
   * Record the launches `record` queues (synchronously; no write, read, copy or sync inside) as a
   * graph instead of running them. The graph keeps its bind groups and its uniform data (uploaded
   * now); replay() appends its commands to the current pass.
   */
  captureGraph(record: () => void): DeviceGraph {
    this.usable('capture a graph');
    if (this.capture) throw new Error('webgpu captureGraph: a capture is already open');
    const capture = (this.capture = { commands: [] as Command[], uniforms: new PassUniforms(this.pool), buffers: new Set<WebGPUBuffer>() });
    try {
      const r: unknown = record();
      if (r instanceof Promise) throw new Error('webgpu captureGraph: the recording function must be synchronous');
    } catch (e) {
      capture.uniforms.release();
      throw e;
    } finally {
      this.capture = undefined;
    }
    // The graph's uniform chunks are its own from now on: written once, never handed out again
    // until it is destroyed (queue writes run before any later submit).
    capture.uniforms.upload(this.device.queue);
    const graph = new WebGPUGraph(this, capture.commands, capture.uniforms, capture.buffers);
    this.graphs.add(graph);
    return graph;
  }

  /** @internal WebGPUGraph.replay: its commands, in order, at the end of the current pass. */
  replayGraph(g: WebGPUGraph): void {
    this.usable('replay a graph');
    if (this.capture) throw new Error('webgpu graph replay during a capture');
    for (const b of g.buffers) if (b.freed) throw new LaunchError(`webgpu graph replay: buffer '${b.label}' was freed`);
    for (const cmd of g.commands) this.pass.commands.push(cmd);
  }

  /** @internal WebGPUGraph.destroy: its uniform chunks go back to the pool after the work queued so far. */
  forgetGraph(g: WebGPUGraph): void {
    if (!this.graphs.delete(g)) return;
    if (this.destroyed) return;
    // Passes already recorded may still hold its commands: release after they are submitted.
    const release = () => g.uniforms.release();
    if (this.pass.commands.length || this.unsubmitted) this.pass.onSubmitted.push(release);
    else release();
  }

  /** Refuses a buffer a live graph (or the capture in progress) launches with: destroy the graph first. */
  override free(buf: DeviceBuffer): void {
    const b = this.own(buf, 'webgpu free');
    const users = [...this.graphs].filter((g) => g.buffers.has(b)).length;
    if (users || this.capture?.buffers.has(b)) {
      throw new Error(`webgpu free of '${b.label}': the buffer is used by ${users ? `${users} live captured graph${users > 1 ? 's' : ''}` : 'the graph being captured'}; destroy the graph before freeing or regrowing its buffers`);
    }
    super.free(buf);
  }

  private compiledFor(kernel: Kernel): Compiled {
    let c = this.compiledByKernel.get(kernel);
    if (c) return c;
    const ir = kernel.ir;
    this.checkCaps(ir);
    const wgsl = this.emit(ir);
    c = this.compiledByText.get(wgsl);
    if (!c) {
      c = this.compile(ir.name, wgsl, ir.buffers.map((b) => b.access), ir.uniforms.length);
      this.compiledByText.set(wgsl, c);
    }
    this.compiledByKernel.set(kernel, c);
    return c;
  }

  /** A kernel built for more than this device has fails here, not deep inside Dawn. */
  private checkCaps(ir: KernelIR): void {
    const fail = (msg: string) => { throw new LaunchError(`kernel '${ir.name}': ${msg} on ${this.description}`); };
    const L = this.limits;
    const [x, y, z] = ir.workgroupSize;
    if (ir.usesF16 && !this.caps.f16) fail('uses f16 but the device has no shader-f16');
    if (ir.usesSubgroups && !this.caps.subgroups) fail('uses subgroup operations but the device has no subgroups');
    if (x > L.maxComputeWorkgroupSizeX || y > L.maxComputeWorkgroupSizeY || z > L.maxComputeWorkgroupSizeZ || x * y * z > L.maxComputeInvocationsPerWorkgroup) {
      fail(`workgroup ${x}x${y}x${z} exceeds the limits (${L.maxComputeWorkgroupSizeX}x${L.maxComputeWorkgroupSizeY}x${L.maxComputeWorkgroupSizeZ}, ${L.maxComputeInvocationsPerWorkgroup} invocations)`);
    }
    const shared = ir.shared.reduce((s, d) => s + d.length * 4, 0);
    if (shared > L.maxComputeWorkgroupStorageSize) fail(`workgroup arrays take ${shared} bytes, over ${L.maxComputeWorkgroupStorageSize}`);
    if (ir.buffers.length > L.maxStorageBuffersPerShaderStage) fail(`${ir.buffers.length} storage buffers exceed ${L.maxStorageBuffersPerShaderStage}`);
    if (ir.uniforms.length * 4 > CHUNK_BYTES) fail(`${ir.uniforms.length} uniforms do not fit one ${CHUNK_BYTES}-byte uniform block`);
  }

  private compile(name: string, wgsl: string, access: ('read' | 'read_write')[], uniformCount: number): Compiled {
    const uniformBytes = uniformCount ? Math.ceil((uniformCount * 4) / 16) * 16 : 0;
    const entries: GPUBindGroupLayoutEntry[] = access.map((a, i) => ({
      binding: i, visibility: COMPUTE, buffer: { type: a === 'read' ? 'read-only-storage' : 'storage' },
    }));
    if (uniformBytes) {
      entries.push({ binding: access.length, visibility: COMPUTE, buffer: { type: 'uniform', hasDynamicOffset: true, minBindingSize: uniformBytes } });
    }
    const dev = this.device;
    const layout = dev.createBindGroupLayout({ label: name, entries });
    dev.pushErrorScope('validation');
    const module = dev.createShaderModule({ label: name, code: wgsl });
    const moduleError = dev.popErrorScope();
    const c: Compiled = { name, wgsl, layout, uniformBytes, ready: Promise.resolve(), bindGroups: new Map() };
    c.ready = (async () => {
      try {
        if (await moduleError) throw new Error('shader module is invalid');
        c.pipeline = await dev.createComputePipelineAsync({
          label: name, layout: dev.createPipelineLayout({ label: name, bindGroupLayouts: [layout] }),
          compute: { module, entryPoint: name },
        });
      } catch (e) {
        let info: GPUCompilationInfo | undefined;
        try { info = await module.getCompilationInfo(); } catch { /* report what we have */ }
        c.error = compileError(name, wgsl, info, e);
      }
    })();
    return c;
  }

  /** Submit the current pass (plus `extra` commands at its end), after any passes before it. */
  private flush(extra?: (enc: GPUCommandEncoder) => void): Promise<void> {
    const pass = this.pass;
    this.pass = this.newPass();
    this.unsubmitted++;
    const done = this.flushChain.then(() => this.submit(pass, extra));
    this.flushChain = done.catch(() => {});
    return done;
  }

  private async submit(pass: Pass, extra?: (enc: GPUCommandEncoder) => void): Promise<void> {
    let submitted = false;
    let scopes: Promise<(GPUError | null)[]> = Promise.resolve([]);
    try {
      this.usable();
      const pending = new Set<Compiled>();
      for (const cmd of pass.commands) if (cmd.k === 'dispatch' && !cmd.c.pipeline) pending.add(cmd.c);
      for (const c of pending) await c.ready;
      for (const c of pending) if (c.error) throw c.error;
      this.usable();
      if (!pass.commands.length && !extra) return;
      const dev = this.device, queue = dev.queue;
      dev.pushErrorScope('out-of-memory');
      dev.pushErrorScope('validation');
      try {
        pass.uniforms.upload(queue);
        let enc = dev.createCommandEncoder({ label: 'kiln pass' });
        let cp: GPUComputePassEncoder | undefined;
        let current: GPUComputePipeline | undefined;
        for (const cmd of pass.commands) {
          if (cmd.k === 'dispatch') {
            if (!cp) { cp = enc.beginComputePass(); current = undefined; }
            if (current !== cmd.c.pipeline) cp.setPipeline((current = cmd.c.pipeline!));
            if (cmd.c.uniformBytes) cp.setBindGroup(0, cmd.group, [cmd.offset]);
            else cp.setBindGroup(0, cmd.group);
            cp.dispatchWorkgroups(cmd.grid[0], cmd.grid[1], cmd.grid[2]);
          } else if (cmd.k === 'copy') {
            cp?.end();
            cp = undefined;
            enc.copyBufferToBuffer(cmd.src, 0, cmd.dst, 0, cmd.bytes);
          } else {
            // A host write between launches: submit what precedes it so the write lands in order.
            cp?.end();
            cp = undefined;
            queue.submit([enc.finish()]);
            queue.writeBuffer(cmd.gpu, cmd.byteOffset, cmd.data);
            enc = dev.createCommandEncoder({ label: 'kiln pass' });
          }
        }
        cp?.end();
        extra?.(enc);
        queue.submit([enc.finish()]);
        submitted = true;
        this.unsubmitted--;
      } finally {
        // Pop both scopes whatever happened, so the device's scope stack stays balanced.
        scopes = Promise.all([dev.popErrorScope(), dev.popErrorScope()]);
      }
      const [validation, oom] = await scopes;
      const err = validation ?? oom;
      if (err) throw new Error(`webgpu ${err.constructor.name} while running a pass: ${err.message}`);
    } finally {
      if (!submitted) this.unsubmitted--;
      pass.uniforms.release();
      for (const g of pass.toDestroy) g.destroy();
      for (const f of pass.onSubmitted) f();
    }
  }

  private takeUncaptured(): void {
    const e = this.uncaptured.shift();
    if (e) { this.uncaptured.length = 0; throw e; }
  }

  async sync(): Promise<void> {
    this.usable();
    if (this.capture) throw new Error('webgpu sync during graph capture');
    await this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.takeUncaptured();
  }

  protected async readBuffer<T extends StorageType>(b: WebGPUBuffer, dtype: T): Promise<HostArray<T>> {
    if (this.capture) throw new Error(`webgpu read of '${b.label}' during graph capture`);
    const staging = this.takeStaging(b.bytes);
    let mapped = false;
    try {
      await this.flush((enc) => enc.copyBufferToBuffer(b.gpu, 0, staging, 0, b.bytes));
      await staging.mapAsync(MAP_MODE_READ, 0, b.bytes);
      mapped = true;
      const copy = staging.getMappedRange(0, b.bytes).slice(0);
      this.takeUncaptured();
      return hostArray(dtype, copy, b.length);
    } finally {
      if (mapped) staging.unmap();
      this.giveStaging(staging, b.bytes);
    }
  }

  private takeStaging(bytes: number): GPUBuffer {
    return this.staging.get(bytes)?.pop() ?? this.device.createBuffer({ label: 'kiln readback', size: bytes, usage: MAP_READ | COPY_DST });
  }
  private giveStaging(gpu: GPUBuffer, bytes: number): void {
    const list = this.staging.get(bytes) ?? [];
    if (this.destroyed || bytes > STAGING_POOL_MAX_BYTES || list.length >= 2 || gpu.mapState !== 'unmapped') { gpu.destroy(); return; }
    list.push(gpu);
    this.staging.set(bytes, list);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    await this.flushChain;
    try { if (!this.lost) await this.device.queue.onSubmittedWorkDone(); } catch { /* destroying anyway */ }
    this.destroyed = true;
    for (const b of this.live) b.gpu.destroy();
    this.releaseAll();
    for (const list of this.staging.values()) for (const g of list) g.destroy();
    this.staging.clear();
    for (const g of this.pass.toDestroy) g.destroy();
    this.pass = this.newPass();
    this.pool.destroy();
    this.compiledByText.clear();
    this.device.destroy();
    this.instance = undefined; // lets Dawn's instance go, so Node can exit
  }
}

/** "kernel 'x': WGSL does not compile" with each message and the source line it points at. */
function compileError(name: string, wgsl: string, info: GPUCompilationInfo | undefined, cause: unknown): Error {
  const lines = wgsl.split('\n');
  const out = [`kernel '${name}': WGSL does not compile`];
  for (const m of info?.messages ?? []) {
    if (m.type !== 'error') continue;
    out.push(`  ${m.lineNum}:${m.linePos}: error: ${m.message}`);
    const src = lines[m.lineNum - 1];
    if (src !== undefined) {
      out.push(`  ${String(m.lineNum).padStart(4)} | ${src}`);
      out.push(`       | ${' '.repeat(Math.max(0, m.linePos - 1))}^`);
    }
  }
  if (out.length === 1) out.push(`  ${cause instanceof Error ? cause.message : String(cause)}`);
  return new LaunchError(out.join('\n'));
}
