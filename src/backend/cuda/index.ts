// The CUDA backend. Needs, at run time only: the native addon (cuda/host, built at install when a
// C++ compiler exists), an NVIDIA driver (libcuda.so.1) with a device, and a CUDA compiler (libnvrtc,
// or nvcc). Whatever is missing becomes a BackendUnavailableError with the reason, never a crash.
//
// Environment: KILN_CUDA_DEVICE (ordinal, default 0), KILN_CUDA_ADDON (addon path),
// KILN_CUDA_COMPILER (nvrtc | nvcc), KILN_NVRTC (libnvrtc path), KILN_NVCC (nvcc path),
// KILN_CUDA_CACHE (compiled-module cache directory), CUDA_HOME / CUDA_PATH (toolkit root).
import { BackendUnavailableError, type Device } from '../device.js';
import type { DeviceOptions } from '../index.js';
import { loadAddon } from './addon.js';
import { selectCompiler } from './compile.js';
import { CudaDevice } from './device.js';

export { CudaDevice, CudaGraph } from './device.js';
export type { CudaDeviceInfo, CudaFunctionInfo } from './addon.js';
export { CudaCompileError } from './compile.js';

/** Whether this process can use CUDA, and if not, why. Cheap after the first call. */
export function cudaAvailability(): { ok: true } | { ok: false; reason: string } {
  const a = loadAddon();
  if ('reason' in a) return { ok: false, reason: a.reason };
  const st = a.addon.driverStatus();
  return st.ok ? { ok: true } : { ok: false, reason: st.reason ?? 'CUDA driver unavailable' };
}

export async function createCudaDevice(_opts: DeviceOptions = {}): Promise<Device & CudaDevice> {
  const a = loadAddon();
  if ('reason' in a) throw new BackendUnavailableError('cuda', a.reason);
  const st = a.addon.driverStatus();
  if (!st.ok) throw new BackendUnavailableError('cuda', st.reason ?? 'CUDA driver unavailable');
  const ordinal = Number(process.env.KILN_CUDA_DEVICE ?? 0);
  if (!Number.isInteger(ordinal) || ordinal < 0 || ordinal >= st.deviceCount) {
    throw new BackendUnavailableError('cuda', `KILN_CUDA_DEVICE=${process.env.KILN_CUDA_DEVICE}: ${st.deviceCount} device(s) present`);
  }
  const compiler = selectCompiler(a.addon, process.env, st.driverVersion);
  if ('reason' in compiler) throw new BackendUnavailableError('cuda', compiler.reason);
  return new CudaDevice(new a.addon.CudaContext(ordinal), compiler);
}
