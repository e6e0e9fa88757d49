// The one Device interface every backend implements. Launch arguments are typed by the kernel's
// own binding and uniform declarations, so a wrong binding name or dtype is a compile-time error.
import type { BindingSpec, Bindings, Kernel, Uniforms, UniformValues } from '../../codegen/dsl/builder.js';
import type { Op } from '../../codegen/dsl/plan.js';
import type { Caps, StorageType } from '../../codegen/dsl/types.js';
import type { DeviceClass, VendorClass } from '../../codegen/kernels/deviceProfile.js';
import type { WeightLayout } from '../../codegen/kernels/weightLayout.js';

export type BackendKind = 'cpu' | 'webgpu' | 'cuda';

/** Host-side array for a storage type; f16 travels as its raw bits. */
export type HostArray<T extends StorageType> =
  T extends 'f32' ? Float32Array : T extends 'i32' ? Int32Array : T extends 'u32' ? Uint32Array : Uint16Array;

export interface DeviceBuffer<T extends StorageType = StorageType> {
  readonly dtype: T;
  /** Elements (not bytes). */
  readonly length: number;
  readonly label: string;
  /** The shape it was allocated with (its product is `length`); [length] when allocated by length. */
  readonly shape: readonly number[];
}

/** What the runtime should assume about a device beyond its kernel capabilities; each backend computes it. */
export interface DeviceProfile {
  /** Runs kernels on CPU cores (the CPU executor, a software rasteriser such as llvmpipe). */
  software: boolean;
  /** What runs the kernels: the CPU executor, a software rasteriser or a hardware GPU (software: not 'gpu'). */
  deviceClass: DeviceClass;
  /** The GPU's maker, where the API says. */
  vendor: VendorClass;
  /** Invocations the device wants in flight to be busy (sets default split factors). */
  parallelism: number;
  /** Multiprocessors (SMs) of a GPU, where the backend knows them: split-KV attention fills them. */
  multiprocessors?: number;
  /**
   * How linear weights should lie in its memory (codegen/kernels/linearCommon.ts WeightLayout):
   * 'strips' on the cpu device, where one invocation streams its columns down K; else 'rows'.
   */
  weightLayout?: WeightLayout;
  /**
   * The GEMM for more rows than the GEMV takes (src/ops/linear.ts linearHints): 'registers' (the
   * cpu device: linearGemmRows.ts, no workgroup memory) or 'tiled' (linearGemm.ts, the default).
   */
  gemm?: 'registers' | 'tiled';
}

/** A recorded sequence of launches (graphCapture): replay() queues all of them again with one call. */
export interface DeviceGraph {
  /** Launches recorded. */
  readonly launches: number;
  replay(): void;
  /** Device milliseconds of each of `reps` replays (CUDA events), each after overwriting `flush` (an L2 flush). */
  time?(reps: number, flush?: DeviceBuffer): number[];
  destroy(): void;
}

export type BoundBuffers<B extends Record<string, BindingSpec>> = { [K in keyof B]: DeviceBuffer<B[K]['t']> };

export interface Device {
  readonly kind: BackendKind;
  /** What it runs on, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) via Dawn/OpenGL ES". */
  readonly description: string;
  readonly caps: Caps;
  readonly profile: DeviceProfile;
  /** A buffer of `size` elements, or of a shape's elements (then carried as its `shape`); zeroed. */
  alloc<T extends StorageType>(dtype: T, size: number | readonly number[], label?: string): DeviceBuffer<T>;
  write<T extends StorageType>(buf: DeviceBuffer<T>, data: HostArray<T>, offset?: number): void;
  /** Waits for all queued work, then copies the buffer back. */
  read<T extends StorageType>(buf: DeviceBuffer<T>): Promise<HostArray<T>>;
  free(buf: DeviceBuffer): void;
  /** Queue one kernel launch; validated before any device work. */
  launch<B extends Bindings, U extends Uniforms>(kernel: Kernel<B, U>, bindings: BoundBuffers<B>, uniforms: UniformValues<U>): void;
  /** Queue every launch of a multi-launch op. */
  run<B extends Record<string, BindingSpec>, S extends Record<string, number>>(op: Op<B, S>, bindings: BoundBuffers<B>, sizes: S): void;
  /** Resolves when all queued work has finished. */
  sync(): Promise<void>;
  readonly bytesInUse: number;
  destroy(): Promise<void>;
  // Optional capabilities: present only on devices that have them, so callers test for the method.
  /**
   * Records the launches `record` queues (synchronously; no write, read or sync inside) into a
   * graph instead of running them; replaying re-runs them with the buffers and uniforms they saw.
   */
  captureGraph?(record: () => void): DeviceGraph;
  /** Device-side copy of a whole buffer into another of the same dtype and length, ordered with launches. */
  copy?<T extends StorageType>(dst: DeviceBuffer<T>, src: DeviceBuffer<T>): void;
}

export class LaunchError extends Error {}
export class BackendUnavailableError extends Error {
  constructor(readonly backend: BackendKind, readonly reason: string) {
    super(`${backend} backend not available: ${reason}`);
  }
}
