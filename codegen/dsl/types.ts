// Value types of the kernel DSL. f16 is a storage format everywhere; f16 arithmetic only where the
// device has it (see Caps.f16). Vectors hold 2..4 scalars of one type.

export type Scalar = 'f32' | 'f16' | 'i32' | 'u32' | 'bool';
export type VecN = 2 | 3 | 4;
export type Vec<S extends Scalar = Scalar, N extends VecN = VecN> = `vec${N}<${S}>`;
export type DType = Scalar | Vec;
/** Element types a storage buffer holds on the host side (one scalar per element). */
export type StorageType = 'f32' | 'f16' | 'i32' | 'u32';
/**
 * Vector width a storage binding may declare: the kernel then sees element i as a vector of the
 * scalars [W·i, W·i + W) (8- and 16-byte loads and stores); the host buffer stays scalar.
 */
export type VecWidth = 1 | 2 | 4;
/** Scalar types a vector binding may hold (not f16, whose pairs travel as u32 words). */
export type VecStorageType = 'f32' | 'i32' | 'u32';
export const VEC_WIDTHS: readonly VecWidth[] = [1, 2, 4];
export type IntType = 'i32' | 'u32';
export type FloatType = 'f32' | 'f16';
export type NumType = IntType | FloatType;

export const SCALARS: readonly Scalar[] = ['f32', 'f16', 'i32', 'u32', 'bool'];

export function isVec(t: DType): t is Vec {
  return t.startsWith('vec');
}
/** Scalar component type of t. */
export function elemOf(t: DType): Scalar {
  return (isVec(t) ? t.slice(5, -1) : t) as Scalar;
}
/** Number of components (1 for scalars). */
export function widthOf(t: DType): number {
  return isVec(t) ? Number(t[3]) : 1;
}
export function vecOf<S extends Scalar>(s: S, n: number): DType {
  if (n === 1) return s;
  if (n < 2 || n > 4) throw new Error(`vector width ${n} is not 2, 3 or 4`);
  return `vec${n as VecN}<${s}>`;
}
/** Same shape as t, with component type s (used for comparisons → bool, casts). */
export function withElem(t: DType, s: Scalar): DType {
  return vecOf(s, widthOf(t));
}
export const isFloat = (t: DType) => elemOf(t) === 'f32' || elemOf(t) === 'f16';
export const isInt = (t: DType) => elemOf(t) === 'i32' || elemOf(t) === 'u32';
export const isBool = (t: DType) => elemOf(t) === 'bool';
export function isStorageType(t: string): t is StorageType {
  return t === 'f32' || t === 'f16' || t === 'i32' || t === 'u32';
}
/** Bytes per storage element. */
export function byteSize(t: StorageType): number {
  return t === 'f16' ? 2 : 4;
}

/** What a device can do; kernels read this while they are built. */
export interface Caps {
  /** f16 arithmetic and f16 storage buffers (WGSL `enable f16`; CUDA always). */
  f16: boolean;
  /** Subgroup (warp) operations: shuffle-xor, reduce, broadcast. */
  subgroups: boolean;
  /** Subgroup size the kernel may assume when `subgroups` (CUDA 32). 0 when unknown. */
  subgroupSize: number;
  /** Workgroup (shared) memory in bytes. */
  maxWorkgroupStorage: number;
  /** Storage buffers one kernel may bind. */
  maxStorageBuffers: number;
  maxInvocationsPerWorkgroup: number;
  /**
   * A device-scope memory fence (CUDA `__threadfence`; the CPU executor's Atomics are sequentially
   * consistent): lets the last workgroup to arrive finish a split reduction (KernelBuilder.lastArrival).
   * WGSL has none, so WebGPU ops keep a second launch. Absent means no.
   */
  deviceFence?: boolean;
  /**
   * Tensor cores that run k.mma natively (CUDA sm_80+: mma.sync m16n8k16). Every target runs k.mma
   * (others through the emulation in codegen/emit/mma.ts); this says it is fast, so ops choose MMA
   * paths by it (the linear op at M ≤ 64). Absent means no.
   */
  tensorCores?: boolean;
}

/** The baseline every backend meets: WebGPU compatibility mode on llvmpipe. */
export const BASELINE_CAPS: Caps = {
  f16: false,
  subgroups: false,
  subgroupSize: 0,
  maxWorkgroupStorage: 16384,
  maxStorageBuffers: 8,
  maxInvocationsPerWorkgroup: 256,
};

/** NVIDIA sm_90 (H100/H200): what generated CUDA may assume. */
export const CUDA_CAPS: Caps = {
  f16: true,
  subgroups: true,
  subgroupSize: 32,
  maxWorkgroupStorage: 48 * 1024,
  maxStorageBuffers: 64,
  maxInvocationsPerWorkgroup: 1024,
  deviceFence: true,
  tensorCores: true,
};
