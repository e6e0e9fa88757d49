// Device selection. `auto`: cuda if available, else webgpu on a real GPU, else cpu
// (webgpu on llvmpipe only when asked for by name).
import { type BackendKind, BackendUnavailableError, type Device } from './device.js';

export * from './device.js';

export interface DeviceOptions {
  /** cpu: worker threads (default: all cores). */
  workers?: number;
  /**
   * cpu: what runs the kernels — 'wasm' (generated WebAssembly, the default) or 'js' (generated
   * JavaScript: the reference, and the only one with checking and profiling modes).
   */
  executor?: 'wasm' | 'js';
  /** cpu: report out-of-bounds accesses and shared-memory races (also env KILN_CHECK=1). */
  check?: boolean;
  /** cpu: profiling mode — a GPU memory-access model per launch (see takeLaunchProfiles in cpu/index.ts). */
  profile?: boolean;
  /** webgpu: accept a software adapter (llvmpipe). Default true when webgpu is asked for by name. */
  allowSoftware?: boolean;
}

export async function createDevice(kind: BackendKind | 'auto' = 'auto', opts: DeviceOptions = {}): Promise<Device> {
  if (kind === 'cpu') return (await import('./cpu/index.js')).createCpuDevice(opts);
  if (kind === 'webgpu') return (await import('./webgpu/index.js')).createWebGPUDevice({ allowSoftware: true, ...opts });
  if (kind === 'cuda') return (await import('./cuda/index.js')).createCudaDevice(opts);
  if (kind !== 'auto') throw new Error(`unknown device '${kind}': use cpu, webgpu, cuda or auto`);
  for (const k of ['cuda', 'webgpu'] as const) {
    try {
      return k === 'cuda'
        ? await (await import('./cuda/index.js')).createCudaDevice(opts)
        : await (await import('./webgpu/index.js')).createWebGPUDevice({ ...opts, allowSoftware: false });
    } catch (e) {
      if (!(e instanceof BackendUnavailableError)) throw e;
    }
  }
  return (await import('./cpu/index.js')).createCpuDevice(opts);
}
