// Buffer plumbing shared by the kernel tests: inputs uploaded, outputs poisoned, all freed at once.
import type { StorageType } from '../../codegen/dsl/types.js';
import type { Device, DeviceBuffer, HostArray } from '../../src/backend/device.js';
import { POISON_F32, POISON_U32, relErr } from '../util.js';

export class Buffers {
  private owned: DeviceBuffer[] = [];
  constructor(readonly dev: Device) {}

  input<T extends StorageType>(dtype: T, data: HostArray<T>, label: string): DeviceBuffer<T> {
    const b = this.dev.alloc(dtype, data.length, label);
    this.owned.push(b);
    this.dev.write(b, data);
    return b;
  }

  /** An output buffer filled with NaN (f32) or 0xdeadbeef (u32/i32), so unwritten elements show. */
  output<T extends 'f32' | 'u32' | 'i32'>(dtype: T, length: number, label: string): DeviceBuffer<T> {
    const b = this.dev.alloc(dtype, length, label);
    this.owned.push(b);
    this.poison(b);
    return b;
  }

  poison<T extends 'f32' | 'u32' | 'i32'>(b: DeviceBuffer<T>): void {
    const fill = b.dtype === 'f32' ? new Float32Array(b.length).fill(POISON_F32)
      : b.dtype === 'u32' ? new Uint32Array(b.length).fill(POISON_U32) : new Int32Array(b.length).fill(POISON_U32 | 0);
    this.dev.write(b, fill as HostArray<T>);
  }

  read<T extends StorageType>(b: DeviceBuffer<T>): Promise<HostArray<T>> { return this.dev.read(b); }

  /** Free `b` with the others (a buffer allocated elsewhere, e.g. uploaded weights). */
  adopt<T extends StorageType>(b: DeviceBuffer<T>): DeviceBuffer<T> {
    this.owned.push(b);
    return b;
  }

  free(): void {
    for (const b of this.owned) this.dev.free(b);
    this.owned = [];
  }
}

/** Largest norm-wise error over the rows of a [rows, cols] output. */
export function maxRowErr(out: ArrayLike<number>, ref: ArrayLike<number>, rows: number, cols: number): number {
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    const o = Array.prototype.slice.call(out, r * cols, (r + 1) * cols) as number[];
    const f = Array.prototype.slice.call(ref, r * cols, (r + 1) * cols) as number[];
    worst = Math.max(worst, relErr(o, f));
  }
  return worst;
}
