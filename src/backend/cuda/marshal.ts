// Pure launch marshalling for the CUDA backend: kernel arguments, the uniform struct, grid limits,
// the compile target and the capabilities a device reports. No addon, no device: unit-tested here.
//
// Kernel ABI (codegen/emit/cuda.ts): one device pointer per storage buffer, in ir.buffers order,
// then — only when the kernel has uniforms — one struct passed by value holding the uniform
// scalars, 4 bytes each, in ir.uniforms order (little-endian, as on every CUDA host and device).
import type { KernelIR } from '../../../codegen/dsl/ir.js';
import { CUDA_CAPS, type Caps } from '../../../codegen/dsl/types.js';
import { LaunchError } from '../device.js';

/** Bytes of the uniform struct: 4 per scalar, padded to 16 (the emitters' uniform block size;
 *  the driver reads only the struct's own size, so padding is never harmful). */
export function uniformStructBytes(ir: KernelIR): number {
  return Math.ceil((4 * ir.uniforms.length) / 16) * 16;
}

/** Writes the uniform values into `out` (at least uniformStructBytes long). Values are looked up by
 *  UniformDecl.key — the name the launch passes — not the emitted identifier. */
export function packUniformsInto(ir: KernelIR, values: Readonly<Record<string, number>>, out: DataView): void {
  if (out.byteLength < 4 * ir.uniforms.length) {
    throw new LaunchError(`kernel '${ir.name}': uniform block of ${out.byteLength} bytes is too small for ${ir.uniforms.length} uniforms`);
  }
  ir.uniforms.forEach((u, i) => {
    const v = values[u.key];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new LaunchError(`kernel '${ir.name}': uniform '${u.key}' (${u.t}) is ${v}`);
    switch (u.t) {
      case 'u32':
        if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new LaunchError(`kernel '${ir.name}': uniform '${u.key}' = ${v} is not a u32`);
        out.setUint32(4 * i, v, true);
        break;
      case 'i32':
        if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new LaunchError(`kernel '${ir.name}': uniform '${u.key}' = ${v} is not an i32`);
        out.setInt32(4 * i, v, true);
        break;
      case 'f32':
        out.setFloat32(4 * i, v, true);
        break;
      default:
        throw new LaunchError(`kernel '${ir.name}': uniform '${u.key}' has type ${u.t}; CUDA uniforms are u32, i32 or f32`);
    }
  });
}

/** A fresh uniform struct for these values, or undefined when the kernel has no uniforms. */
export function packUniforms(ir: KernelIR, values: Readonly<Record<string, number>>): Uint8Array | undefined {
  if (ir.uniforms.length === 0) return undefined;
  const bytes = new Uint8Array(uniformStructBytes(ir));
  packUniformsInto(ir, values, new DataView(bytes.buffer));
  return bytes;
}

/** Device pointers in ir.buffers order; `pointerOf` resolves the buffer bound to a key (index: its place in ir.buffers). */
export function fillPointers(ir: KernelIR, pointerOf: (key: string, index: number) => bigint, out: BigUint64Array): void {
  if (out.length !== ir.buffers.length) {
    throw new LaunchError(`kernel '${ir.name}': ${out.length} pointer slots for ${ir.buffers.length} buffers`);
  }
  ir.buffers.forEach((b, i) => { out[i] = pointerOf(b.key, i); });
}

/** Checks a grid and block against the device's limits; returns false for an empty grid (no launch). */
export function checkGeometry(
  name: string, grid: readonly number[], block: readonly number[], maxGrid: readonly number[], maxThreads: number,
): boolean {
  for (let i = 0; i < 3; i++) {
    const g = grid[i]!;
    if (!Number.isInteger(g) || g < 0) throw new LaunchError(`kernel '${name}': grid ${grid.join('x')} is not whole numbers`);
    if (g > maxGrid[i]!) throw new LaunchError(`kernel '${name}': grid ${grid.join('x')} exceeds the device limit ${maxGrid.join('x')} in ${'xyz'[i]}`);
  }
  const threads = block[0]! * block[1]! * block[2]!;
  if (threads > maxThreads) {
    throw new LaunchError(`kernel '${name}': ${threads} threads per block exceed the ${maxThreads} this kernel can launch with on this device`);
  }
  return grid[0]! > 0 && grid[1]! > 0 && grid[2]! > 0;
}

/** How to compile for a device: a cubin for its exact architecture when the compiler knows it,
 *  else PTX for the newest virtual architecture the compiler has that the device can run (the
 *  driver JIT-compiles it). `supported` lists sm numbers (e.g. 90 for sm_90); empty: unknown. */
export function chooseTarget(ccMajor: number, ccMinor: number, supported: readonly number[]): { arch: string; cubin: boolean } {
  const sm = ccMajor * 10 + ccMinor;
  if (supported.length === 0 || supported.includes(sm)) return { arch: `sm_${sm}`, cubin: true };
  // PTX for an older virtual architecture runs on any newer device.
  const older = supported.filter((a) => a <= sm).sort((a, b) => b - a);
  if (older.length === 0) {
    throw new Error(`the CUDA compiler supports ${supported.map((a) => `sm_${a}`).join(', ')}, none of which runs on this sm_${sm} device`);
  }
  return { arch: `compute_${older[0]}`, cubin: false };
}

/** The device facts that shape Caps, as the addon reports them. */
export interface CudaLimits {
  ccMajor: number;
  ccMinor: number;
  warpSize: number;
  maxThreadsPerBlock: number;
  maxSharedPerBlock: number;
}

/** CUDA_CAPS (what generated CUDA may assume) narrowed to what this device has. Static shared
 *  memory is capped at 48 KiB per block by CUDA itself, whatever the opt-in limit. */
export function cudaCaps(d: CudaLimits): Caps {
  return {
    ...CUDA_CAPS,
    f16: CUDA_CAPS.f16 && (d.ccMajor > 5 || (d.ccMajor === 5 && d.ccMinor >= 3)),
    subgroupSize: d.warpSize,
    maxInvocationsPerWorkgroup: Math.min(CUDA_CAPS.maxInvocationsPerWorkgroup, d.maxThreadsPerBlock),
    maxWorkgroupStorage: Math.min(CUDA_CAPS.maxWorkgroupStorage, d.maxSharedPerBlock),
    tensorCores: d.ccMajor >= 8, // mma.sync m16n8k16 with f32 accumulators: sm_80 and later
  };
}
