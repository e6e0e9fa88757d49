// PLACEHOLDER until the CPU executor lands (helper B replaces this file).
import { BackendUnavailableError, type Device } from '../device.js';
import type { DeviceOptions } from '../index.js';
export async function createCudaDevice(_opts: DeviceOptions = {}): Promise<Device> {
  throw new BackendUnavailableError('cuda', 'not built yet');
}
