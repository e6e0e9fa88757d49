// Per-device scratch buffers cached by key: op temps, per-batch metadata, sampling tables.
// A buffer is reallocated only when it must grow. Device writes and launches are ordered, so
// rewriting a scratch buffer for the next call never changes what an earlier launch reads.
import type { StorageType } from '../../codegen/dsl/types.js';
import type { Device, DeviceBuffer, HostArray } from './device.js';

const registry = new WeakMap<Device, Map<string, DeviceBuffer>>();

/** The buffer cached under `key`, holding at least `length` elements (grown by `growth`× when too small). */
export function scratchBuffer<T extends StorageType>(dev: Device, key: string, t: T, length: number, growth = 1): DeviceBuffer<T> {
  let m = registry.get(dev);
  if (!m) registry.set(dev, (m = new Map()));
  const k = `${key}/${t}`;
  let buf = m.get(k) as DeviceBuffer<T> | undefined;
  if (!buf || buf.length < length) {
    if (buf) dev.free(buf);
    buf = dev.alloc(t, Math.max(1, Math.ceil(length * growth)), key);
    m.set(k, buf);
  }
  return buf;
}

/** A scratch buffer holding `data` (written now, ordered with queued launches). */
export function uploadScratch<T extends StorageType>(dev: Device, key: string, t: T, data: HostArray<T>, growth = 1): DeviceBuffer<T> {
  const buf = scratchBuffer(dev, key, t, data.length, growth);
  dev.write(buf, data);
  return buf;
}
