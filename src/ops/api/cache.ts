// Ops built once per device and parameters: a backend compiles each kernel object once, so
// rebuilding an op per call would recompile it per call.
import type { Device } from '../../backend/device.js';

export class PerDevice<T> {
  private readonly byDevice = new WeakMap<Device, Map<string, T>>();
  /** The value `make` built for (device, params) the first time it was asked for. */
  get(device: Device, params: unknown, make: () => T): T {
    let m = this.byDevice.get(device);
    if (!m) this.byDevice.set(device, (m = new Map()));
    const key = JSON.stringify(params);
    let v = m.get(key);
    if (v === undefined) m.set(key, (v = make()));
    return v;
  }
}
