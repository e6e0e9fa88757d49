// The WebGPU Device. Launches are recorded into the current pass (a list of commands) and encoded
// into one command encoder when the pass is flushed by sync() or read(): no readback inside a pass.
// Pipelines compile asynchronously from the first launch; a flush waits for the ones it needs.
import type { BindingSpec, Bindings, Kernel, Uniforms, UniformValues } from '../../../codegen/dsl/builder.js';
import type { KernelIR } from '../../../codegen/dsl/ir.js';
import type { Op } from '../../../codegen/dsl/plan.js';
import { byteSize, type Caps, type StorageType } from '../../../codegen/dsl/types.js';
import { type BoundBuffers, type Device, type DeviceBuffer, type HostArray, LaunchError } from '../device.js';
import { runPlan } from '../plan.js';
import { validateLaunch } from '../validate.js';
import type { OpenedDevice } from './adapter.js';
import { CHUNK_BYTES, PassUniforms, type UniformChunk, UniformPool } from './uniforms.js';

const STORAGE = 0x80, COPY_SRC = 0x04, COPY_DST = 0x08, MAP_READ = 0x01, COMPUTE = 0x4, MAP_MODE_READ = 0x1;
const HOST_ARRAYS = { f32: Float32Array, i32: Int32Array, u32: Uint32Array, f16: Uint16Array } as const;
/** Bind groups kept per pipeline before the cache is dropped (keys contain buffer ids, never reused). */
const BIND_GROUP_CACHE = 512;
const STAGING_POOL_MAX_BYTES = 16 << 20;

class WebGPUBuffer<T extends StorageType = StorageType> implements DeviceBuffer<T> {
  freed = false;
  constructor(readonly dtype: T, readonly length: number, readonly label: string, readonly id: number,
    readonly gpu: GPUBuffer, readonly bytes: number, readonly owner: WebGPUDevice) {}
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
  | { k: 'write'; gpu: GPUBuffer; byteOffset: number; data: Uint8Array };

interface Pass { commands: Command[]; uniforms: PassUniforms; toDestroy: GPUBuffer[] }

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

export class WebGPUDevice implements Device {
  readonly kind = 'webgpu' as const;
  readonly description: string;
  readonly caps: Caps;
  readonly software: boolean;
  /** The device's limits (requested explicitly: the adapter's own) and the adapter's. */
  readonly limits: GPUSupportedLimits;
  readonly adapterLimits: GPUSupportedLimits;
  private readonly device: GPUDevice;
  /** Dawn's instance, referenced so it lives as long as the device; dropped on destroy. */
  private instance: GPU | undefined;
  private readonly pool: UniformPool;
  private pass: Pass;
  private readonly compiledByKernel = new WeakMap<Kernel<any, any>, Compiled>();
  private readonly compiledByText = new Map<string, Compiled>();
  private readonly live = new Set<WebGPUBuffer>();
  private readonly staging = new Map<number, GPUBuffer[]>();
  private patchHalf: Compiled | undefined;
  private nextId = 1;
  private bytes = 0;
  /** Passes taken for flushing but not yet submitted: writes must then queue behind them. */
  private unsubmitted = 0;
  private flushChain: Promise<void> = Promise.resolve();
  private lost: Error | undefined;
  private uncaptured: Error[] = [];
  private destroyed = false;

  constructor(opened: OpenedDevice, private readonly emit: EmitWGSL) {
    this.device = opened.device;
    this.limits = opened.device.limits;
    this.adapterLimits = opened.adapter.limits;
    this.instance = opened.instance;
    this.description = opened.description;
    this.caps = opened.caps;
    this.software = opened.software;
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

  /** Bytes of the buffers allocated and not freed (internal uniform and readback buffers excluded). */
  get bytesInUse(): number { return this.bytes; }
  /** Launches and writes recorded in the current pass, not yet submitted. */
  get queued(): number { return this.pass.commands.length; }

  private newPass(): Pass { return { commands: [], uniforms: new PassUniforms(this.pool), toDestroy: [] }; }

  private usable(): void {
    if (this.destroyed) throw new Error('webgpu device has been destroyed');
    if (this.lost) throw this.lost;
  }

  private own(buf: DeviceBuffer | undefined, what: string): WebGPUBuffer {
    if (!(buf instanceof WebGPUBuffer) || buf.owner !== this) {
      throw new LaunchError(`${what}: buffer '${buf?.label}' does not belong to this webgpu device`);
    }
    if (buf.freed) throw new LaunchError(`${what}: buffer '${buf.label}' has been freed`);
    return buf;
  }

  alloc<T extends StorageType>(dtype: T, length: number, label?: string): DeviceBuffer<T> {
    this.usable();
    const id = this.nextId++;
    const name = label ?? `buffer${id}`;
    if (!(dtype in HOST_ARRAYS)) throw new Error(`alloc '${name}': dtype '${dtype}' is not one of f32, f16, i32, u32`);
    if (!Number.isInteger(length) || length < 0) throw new Error(`alloc '${name}': length ${length} is not a non-negative integer`);
    // Whole 4-byte words, and at least 16 bytes: a vec4 binding needs one whole element even
    // when the buffer is empty (a non-empty one bound as vecW holds a multiple of W words).
    const bytes = Math.max(16, Math.ceil((length * byteSize(dtype)) / 4) * 4);
    const max = Math.min(this.limits.maxBufferSize, this.limits.maxStorageBufferBindingSize);
    if (bytes > max) throw new Error(`alloc '${name}': ${bytes} bytes exceed the device's largest storage buffer (${max} bytes)`);
    const gpu = this.device.createBuffer({ label: name, size: bytes, usage: STORAGE | COPY_SRC | COPY_DST });
    const buf = new WebGPUBuffer(dtype, length, name, id, gpu, bytes, this);
    this.live.add(buf);
    this.bytes += bytes;
    return buf;
  }

  free(buf: DeviceBuffer): void {
    const b = this.own(buf, 'free');
    b.freed = true;
    this.live.delete(b);
    this.bytes -= b.bytes;
    // Commands not yet submitted may still use it: destroy after the current pass is submitted.
    if (this.pass.commands.length || this.unsubmitted) this.pass.toDestroy.push(b.gpu);
    else b.gpu.destroy();
  }

  write<T extends StorageType>(buf: DeviceBuffer<T>, data: HostArray<T>, offset = 0): void {
    this.usable();
    const b = this.own(buf, 'write');
    const Host = HOST_ARRAYS[b.dtype];
    if (!(data instanceof Host)) {
      throw new Error(`write to '${b.label}' (${b.dtype}) needs a ${Host.name}, got ${(data as object)?.constructor?.name ?? typeof data}`);
    }
    if (!Number.isInteger(offset) || offset < 0 || offset + data.length > b.length) {
      throw new Error(`write to '${b.label}': ${data.length} elements at offset ${offset} do not fit its ${b.length} elements`);
    }
    if (data.length === 0) return;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (b.dtype !== 'f16') return this.enqueueWrite(b.gpu, offset * 4, bytes);
    // f16: whole u32 words go through writeBuffer; a half word shared with a neighbour is patched.
    const halves = data as Uint16Array;
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

  private enqueueWrite(gpu: GPUBuffer, byteOffset: number, data: Uint8Array): void {
    // queue.writeBuffer runs before anything not yet submitted: only write directly when nothing is pending.
    if (!this.pass.commands.length && !this.unsubmitted) this.device.queue.writeBuffer(gpu, byteOffset, data);
    else this.pass.commands.push({ k: 'write', gpu, byteOffset, data: data.slice() });
  }

  private patchWord(b: WebGPUBuffer, word: number, mask: number, value: number): void {
    this.patchHalf ??= this.compile('kiln_patch_half', PATCH_HALF_WGSL, ['read_write'], 3);
    this.record(this.patchHalf, [b], [1, 1, 1], (chunk, at) => { chunk.u32[at] = word; chunk.u32[at + 1] = mask; chunk.u32[at + 2] = value >>> 0; });
  }

  launch<B extends Bindings, U extends Uniforms>(kernel: Kernel<B, U>, bindings: BoundBuffers<B>, uniforms: UniformValues<U>): void {
    this.usable();
    validateLaunch(kernel, bindings, uniforms);
    const ir = kernel.ir;
    const what = `kernel '${ir.name}'`;
    const bufs = ir.buffers.map((d) => this.own(bindings[d.key], `${what}, binding '${d.key}'`));
    for (let i = 0; i < bufs.length; i++) {
      for (let j = i + 1; j < bufs.length; j++) {
        if (bufs[i] === bufs[j] && (ir.buffers[i]!.access === 'read_write' || ir.buffers[j]!.access === 'read_write')) {
          throw new LaunchError(`${what}: buffer '${bufs[i]!.label}' is bound to both '${ir.buffers[i]!.key}' and '${ir.buffers[j]!.key}', and one of them is written`);
        }
      }
    }
    const grid = kernel.grid(uniforms);
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
    if (c.uniformBytes) {
      ({ chunk, offset } = this.pass.uniforms.slot(c.uniformBytes));
      fill(chunk, offset / 4);
    }
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
    this.pass.commands.push({ k: 'dispatch', c, group, offset, grid });
  }

  run<B extends Record<string, BindingSpec>, S extends Record<string, number>>(op: Op<B, S>, bindings: BoundBuffers<B>, sizes: S): void {
    runPlan(this, op, bindings, sizes);
  }

  private compiledFor(kernel: Kernel<any, any>): Compiled {
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
    }
  }

  private takeUncaptured(): void {
    const e = this.uncaptured.shift();
    if (e) { this.uncaptured.length = 0; throw e; }
  }

  async sync(): Promise<void> {
    this.usable();
    await this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.takeUncaptured();
  }

  async read<T extends StorageType>(buf: DeviceBuffer<T>): Promise<HostArray<T>> {
    this.usable();
    const b = this.own(buf, 'read');
    const staging = this.takeStaging(b.bytes);
    let mapped = false;
    try {
      await this.flush((enc) => enc.copyBufferToBuffer(b.gpu, 0, staging, 0, b.bytes));
      await staging.mapAsync(MAP_MODE_READ, 0, b.bytes);
      mapped = true;
      const copy = staging.getMappedRange(0, b.bytes).slice(0);
      this.takeUncaptured();
      return new HOST_ARRAYS[b.dtype](copy, 0, b.length) as HostArray<T>;
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
    for (const b of this.live) { b.freed = true; b.gpu.destroy(); }
    this.live.clear();
    this.bytes = 0;
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
