// Typed tensors of the public op layer (`kiln/ops`): a device buffer that knows its dtype and shape,
// uploaded from host data checked against that shape, read back with `await t.read()`.
import { byteSize, type StorageType } from '../../codegen/dsl/types.js';
import { HOST_ARRAYS, hostArray, shapeElements } from '../backend/base.js';
import type { Device, DeviceBuffer, HostArray } from '../backend/device.js';
import { f32ToF16Bits } from '../quant/f16.js';

export class TensorShapeError extends Error {}

export class Tensor<T extends StorageType = StorageType> {
  constructor(readonly device: Device, readonly buffer: DeviceBuffer<T>) {}
  get dtype(): T { return this.buffer.dtype; }
  get shape(): readonly number[] { return this.buffer.shape; }
  /** Elements (the product of the shape). */
  get length(): number { return this.buffer.length; }
  get label(): string { return this.buffer.label; }
  /** Waits for the work queued before it, then copies the data back (f16: raw bits). */
  read(): Promise<HostArray<T>> { return this.device.read(this.buffer); }
  free(): void { this.device.free(this.buffer); }
}

/** Host data for a dtype: its typed array, or plain numbers (f16 numbers are rounded to half). */
export type TensorData<T extends StorageType> = HostArray<T> | readonly number[];

/**
 * A tensor of `shape` on `device`, holding `data` (row-major; its length must be the shape's
 * product), or zeros when `data` is omitted.
 */
export function tensor<T extends StorageType>(device: Device, dtype: T, shape: readonly number[], data?: TensorData<T>, label = 'tensor'): Tensor<T> {
  if (!(dtype in HOST_ARRAYS)) throw new TensorShapeError(`tensor '${label}': dtype '${String(dtype)}' is not one of f32, f16, i32, u32`);
  const n = shapeElements(shape, `tensor '${label}'`);
  if (data !== undefined && data.length !== n) {
    throw new TensorShapeError(`tensor '${label}': data has ${data.length} elements, shape [${shape.join(', ')}] needs ${n}`);
  }
  const buf = device.alloc(dtype, shape, label);
  if (data !== undefined) {
    try {
      device.write(buf, hostData(dtype, data, label));
    } catch (e) {
      device.free(buf);
      throw e;
    }
  }
  return new Tensor(device, buf);
}

function hostData<T extends StorageType>(dtype: T, data: TensorData<T>, label: string): HostArray<T> {
  const Host = HOST_ARRAYS[dtype];
  if (data instanceof Host) return data;
  if (!Array.isArray(data)) {
    throw new TensorShapeError(`tensor '${label}' (${dtype}): data must be a ${Host.name} or an array of numbers, not a ${(data as object).constructor?.name}`);
  }
  const values: readonly number[] = data;
  values.forEach((v, i) => {
    if (typeof v !== 'number' || (dtype !== 'f32' && dtype !== 'f16' && !Number.isInteger(v))) {
      throw new TensorShapeError(`tensor '${label}' (${dtype}): element ${i} is ${String(v)}`);
    }
  });
  const out = hostArray(dtype, new ArrayBuffer(values.length * byteSize(dtype)), values.length);
  if (dtype === 'f16') values.forEach((v, i) => { out[i] = f32ToF16Bits(v); });
  else out.set(values);
  return out;
}

/** Throws naming the op and tensor unless `t` has `dtype` and a shape matching `dims` (null: any size). */
export function expectTensor<T extends StorageType>(op: string, name: string, t: Tensor, dtype: T, dims: readonly (number | null)[], symbols: string): Tensor<T> {
  const shape = t.shape;
  const ok = shape.length === dims.length && dims.every((d, i) => d === null || d === shape[i]);
  if (t.dtype !== dtype || !ok) {
    throw new TensorShapeError(`${op}: tensor '${name}' is ${t.dtype} [${shape.join(', ')}]; expected ${dtype} ${symbols}`);
  }
  const buf = t.buffer;
  if (!holds(buf, dtype)) throw new TensorShapeError(`${op}: tensor '${name}' is ${t.dtype}; expected ${dtype}`);
  return new Tensor(t.device, buf);
}

/** A buffer's dtype, as a type guard: the same handle, seen with its element type. */
export function holds<T extends StorageType>(buf: DeviceBuffer, dtype: T): buf is DeviceBuffer<T> {
  return buf.dtype === dtype;
}
