// The native addon (cuda/host, built by scripts/build-addon.mjs) and its TypeScript face. Loading
// it never touches the GPU; the driver is dlopen'ed on the first driverStatus() or CudaContext.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface DriverStatus { ok: boolean; reason?: string; driverVersion: number; deviceCount: number }
export interface NvrtcStatus { ok: boolean; reason?: string; path?: string; version?: [number, number]; archs?: number[] }
export interface NvrtcResult { ok: boolean; log: string; error?: string; image?: Uint8Array }

export interface CudaDeviceInfo {
  name: string;
  totalMem: number;
  driverVersion: number;
  ccMajor: number;
  ccMinor: number;
  multiprocessors: number;
  warpSize: number;
  maxThreadsPerBlock: number;
  maxSharedPerBlock: number;
  maxSharedPerBlockOptin: number;
  maxGrid: [number, number, number];
  clockKHz: number;
  memoryClockKHz: number;
  memoryBusWidthBits: number;
  l2Bytes: number;
}
export interface CudaFunctionInfo { numRegs: number; localBytes: number; sharedBytes: number; maxThreadsPerBlock: number }

/** One device's context and stream (cuda/host/context.cc). Every copy, launch and graph replay is
 *  queued on the one stream, in call order. Handles are bigints; stale ones throw. */
export interface NativeContext {
  info(): CudaDeviceInfo;
  memInfo(): { free: number; total: number };
  /** `zero`: queue a zero fill (skipped inside a graph capture). */
  alloc(bytes: number, zero: boolean): bigint;
  free(ptr: bigint): void;
  write(ptr: bigint, byteOffset: number, data: ArrayBufferView): void;
  memset(ptr: bigint, byteOffset: number, value: number, bytes: number): void;
  copy(dst: bigint, dstOffset: number, src: bigint, srcOffset: number, bytes: number): void;
  /** Copies after all queued work; resolves off the main thread's back. */
  read(ptr: bigint, byteOffset: number, bytes: number): Promise<ArrayBuffer>;
  sync(): Promise<void>;
  syncNow(): void;
  loadModule(image: Uint8Array): bigint;
  unloadModule(module: bigint): void;
  getFunction(module: bigint, name: string): bigint;
  functionInfo(fn: bigint): CudaFunctionInfo;
  launch(fn: bigint, gx: number, gy: number, gz: number, bx: number, by: number, bz: number, sharedBytes: number,
    pointers: BigUint64Array, uniforms?: Uint8Array): void;
  beginCapture(): void;
  endCapture(): bigint;
  abortCapture(): void;
  launchGraph(graph: bigint): void;
  destroyGraph(graph: bigint): void;
  /** Milliseconds of each of `reps` replays by timing events, each after a memset of `flushBytes` at `flush` (0: none); blocks. */
  timeGraph(graph: bigint, reps: number, flush: bigint, flushBytes: number): number[];
  destroy(): void;
}

export interface KilnCudaAddon {
  driverStatus(): DriverStatus;
  nvrtcLoad(candidates: string[]): NvrtcStatus;
  nvrtcCompile(source: string, name: string, options: string[], cubin: boolean): NvrtcResult;
  CudaContext: new (ordinal: number) => NativeContext;
}

/** Where the addon is looked for: $KILN_CUDA_ADDON, else the node-gyp output under cuda/host. */
export function addonPath(): string {
  return process.env.KILN_CUDA_ADDON ?? fileURLToPath(new URL('../../../cuda/host/build/Release/kiln_cuda.node', import.meta.url));
}

/** Loads the addon at `path` (uncached), or says why it cannot (not built, or built for another
 *  platform). */
export function loadAddonFrom(path: string): { addon: KilnCudaAddon } | { reason: string } {
  if (!existsSync(path)) return { reason: `native addon not built: ${path} is missing (run \`node scripts/build-addon.mjs\` in the package directory)` };
  try {
    return { addon: createRequire(import.meta.url)(path) as KilnCudaAddon };
  } catch (e) {
    return { reason: `native addon ${path} failed to load: ${(e as Error).message}` };
  }
}

let loaded: { addon: KilnCudaAddon } | { reason: string } | undefined;

/** The addon at addonPath(), loaded once per process. */
export function loadAddon(): { addon: KilnCudaAddon } | { reason: string } {
  return (loaded ??= loadAddonFrom(addonPath()));
}
