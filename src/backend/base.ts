// What every backend shares: argument validation of alloc/write/read/free/launch with one wording,
// ownership checks (a buffer of another device, or a freed one, is refused naming the buffer), byte
// accounting (whole 4-byte words per buffer on every backend) and multi-launch ops (`run`).
// A backend supplies only the device work: allocate, write, read, free and dispatch.
import type { BindingSpec, Bindings, Kernel, Uniforms, UniformValues } from '../../codegen/dsl/builder.js';
import type { Op } from '../../codegen/dsl/plan.js';
import { byteSize, type Caps, type StorageType } from '../../codegen/dsl/types.js';
import {
  type BackendKind, type BoundBuffers, type Device, type DeviceBuffer, type DeviceProfile, type HostArray, LaunchError,
} from './device.js';
import { runPlan } from './plan.js';
import { validateLaunch } from './validate.js';

/** The typed-array class of each storage type (f16 travels as its raw bits). */
export const HOST_ARRAYS = { f32: Float32Array, f16: Uint16Array, i32: Int32Array, u32: Uint32Array } as const;

/** A typed view of `buffer` holding `length` elements of `dtype`. */
export function hostArray<T extends StorageType>(dtype: T, buffer: ArrayBuffer | SharedArrayBuffer, length: number): HostArray<T> {
  const Host: new (b: ArrayBuffer | SharedArrayBuffer, offset: number, length: number) => HostArray<StorageType> = HOST_ARRAYS[dtype];
  // HostArray<T> is the class HOST_ARRAYS[T] constructs; TypeScript cannot follow a generic key
  // through the lookup, so this one assertion stands for that fact.
  return new Host(buffer, 0, length) as HostArray<T>;
}

/** Elements of a shape; throws naming `what` when a dimension is not a whole number. */
export function shapeElements(shape: readonly number[], what: string): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new Error(`${what}: shape [${shape.join(', ')}] has a dimension that is not a whole number`);
    n *= d;
  }
  return n;
}

/**
 * A backend's side of a buffer: what the base class keeps, plus (in subclasses) the memory. Callers
 * hold a plain DeviceBuffer handle; the device maps it back to this, so a handle of another device
 * can never reach a backend.
 */
export abstract class BackendBuffer {
  freed = false;
  constructor(readonly dtype: StorageType, readonly length: number, readonly label: string, readonly bytes: number) {}
}

export abstract class BaseDevice<Buf extends BackendBuffer> implements Device {
  abstract readonly kind: BackendKind;
  abstract readonly description: string;
  abstract readonly caps: Caps;
  abstract readonly profile: DeviceProfile;
  private inUse = 0;
  private labels = 0;
  /** Buffers this device allocated and has not freed: the ownership check and destroy() read it. */
  protected readonly live = new Set<Buf>();
  /** Every handle this device gave out (freed ones included), to its backend buffer. */
  private readonly handles = new WeakMap<DeviceBuffer, Buf>();
  /** The handle of each backend buffer (for backends that look buffers up the other way). */
  protected readonly handleOf = new WeakMap<Buf, DeviceBuffer>();

  /** Throws when the device can no longer be used (destroyed, lost); `what` names the call. */
  protected abstract usable(what: string): void;
  /** Device memory of `bytes` bytes for a new buffer (zeroed). */
  protected abstract allocBuffer(dtype: StorageType, length: number, label: string, bytes: number): Buf;
  protected abstract writeBuffer(buf: Buf, data: HostArray<StorageType>, offset: number): void;
  protected abstract readBuffer<T extends StorageType>(buf: Buf, dtype: T): Promise<HostArray<T>>;
  protected abstract freeBuffer(buf: Buf): void;
  /** Queue one validated launch; `bufs` follow kernel.ir.buffers. */
  protected abstract dispatch(kernel: Kernel, bufs: Buf[], uniforms: Record<string, number>, grid: [number, number, number]): void;
  abstract sync(): Promise<void>;
  abstract destroy(): Promise<void>;

  get bytesInUse(): number { return this.inUse; }

  /** Bytes a buffer of `length` elements takes: whole 4-byte words (u32-packed f16 tails stay inside), never 0. */
  protected allocationBytes(dtype: StorageType, length: number): number {
    return Math.max(4, Math.ceil((length * byteSize(dtype)) / 4) * 4);
  }

  alloc<T extends StorageType>(dtype: T, size: number | readonly number[], label?: string): DeviceBuffer<T> {
    const name = label ?? `${dtype}#${++this.labels}`;
    this.usable(`allocate '${name}'`);
    if (!(dtype in HOST_ARRAYS)) throw new Error(`${this.kind} alloc '${name}': dtype '${dtype}' is not one of f32, f16, i32, u32`);
    const shape = typeof size === 'number' ? [size] : [...size];
    const length = shapeElements(shape, `${this.kind} alloc '${name}'`);
    if (!Number.isSafeInteger(length)) throw new Error(`${this.kind} alloc '${name}': length ${length} is not a whole number of elements`);
    const buf = this.allocBuffer(dtype, length, name, this.allocationBytes(dtype, length));
    const handle: DeviceBuffer<T> = Object.freeze({ dtype, length, label: name, shape: Object.freeze(shape) });
    this.handles.set(handle, buf);
    this.handleOf.set(buf, handle);
    this.live.add(buf);
    this.inUse += buf.bytes;
    return handle;
  }

  /** The backend buffer behind a handle; refuses another device's buffer and a freed one. */
  protected own(buf: DeviceBuffer | undefined, what: string): Buf {
    const b = buf && this.handles.get(buf);
    if (!b) throw new LaunchError(`${what}: buffer '${buf?.label}' belongs to another device`);
    if (b.freed) throw new LaunchError(`${what}: buffer '${b.label}' was freed`);
    return b;
  }

  write<T extends StorageType>(buf: DeviceBuffer<T>, data: HostArray<T>, offset = 0): void {
    const what = `${this.kind} write to '${buf.label}'`;
    this.usable(`write to '${buf.label}'`);
    const b = this.own(buf, what);
    const Host = HOST_ARRAYS[b.dtype];
    if (!(data instanceof Host)) {
      throw new Error(`${what} (${b.dtype}): expected a ${Host.name}, got ${(data as object | null)?.constructor?.name ?? typeof data}`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > b.length) {
      throw new Error(`${what}: ${data.length} elements at offset ${offset} do not fit in its ${b.length}`);
    }
    this.writeBuffer(b, data, offset);
  }

  async read<T extends StorageType>(buf: DeviceBuffer<T>): Promise<HostArray<T>> {
    this.usable(`read '${buf.label}'`);
    return this.readBuffer(this.own(buf, `${this.kind} read`), buf.dtype);
  }

  free(buf: DeviceBuffer): void {
    const b = this.own(buf, `${this.kind} free`);
    b.freed = true;
    this.live.delete(b);
    this.inUse -= b.bytes;
    this.freeBuffer(b);
  }

  launch<B extends Bindings, U extends Uniforms>(kernel: Kernel<B, U>, bindings: BoundBuffers<B>, uniforms: UniformValues<U>): void {
    const k: Kernel = kernel;
    const name = k.ir.name;
    this.usable(`launch '${name}'`);
    const bound: Record<string, DeviceBuffer | undefined> = bindings;
    const values: Record<string, number> = uniforms;
    validateLaunch(k, bound, values);
    const bufs = k.ir.buffers.map((d) => this.own(bound[d.key], `kernel '${name}': binding '${d.key}'`));
    this.dispatch(k, bufs, values, k.grid(values));
  }

  run<B extends Record<string, BindingSpec>, S extends Record<string, number>>(op: Op<B, S>, bindings: BoundBuffers<B>, sizes: S): void {
    this.usable(`run '${op.name}'`);
    runPlan(this, op, bindings, sizes);
  }

  /** Marks every live buffer freed and zeroes the accounting (destroy()). */
  protected releaseAll(): void {
    for (const b of this.live) b.freed = true;
    this.live.clear();
    this.inUse = 0;
  }
}

/** A whole-buffer copy needs the same dtype and length on both sides. */
export function checkCopy(kind: BackendKind, dst: BackendBuffer, src: BackendBuffer): void {
  if (dst.dtype !== src.dtype || dst.length !== src.length) {
    throw new LaunchError(`${kind} copy: '${src.label}' (${src.dtype}[${src.length}]) does not match '${dst.label}' (${dst.dtype}[${dst.length}])`);
  }
}
