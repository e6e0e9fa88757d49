// What runs the kernels, beyond the caps (which say what a kernel may use): each backend computes
// it for its device (src/backend: Device.profile) and default variant choosers read it, so a
// chooser never guesses the hardware from a capability or from a device's description.
import type { Caps } from '../dsl/types.js';

/**
 * 'cpu': the CPU executor (emitted JavaScript/WebAssembly on worker threads);
 * 'software-gpu': a software rasteriser behind a GPU API (Mesa llvmpipe/lavapipe, SwiftShader, WARP);
 * 'gpu': a hardware GPU.
 */
export type DeviceClass = 'cpu' | 'software-gpu' | 'gpu';
export const DEVICE_CLASSES: readonly DeviceClass[] = ['cpu', 'software-gpu', 'gpu'];

/** The GPU's maker, where the API says ('software' for a rasteriser, 'cpu' for the executor). */
export type VendorClass = 'nvidia' | 'amd' | 'intel' | 'apple' | 'arm' | 'qualcomm' | 'software' | 'cpu' | 'unknown';

const VENDORS: [RegExp, VendorClass][] = [
  [/nvidia/i, 'nvidia'], [/\bamd\b|\bati\b|advanced micro/i, 'amd'], [/intel/i, 'intel'], [/apple/i, 'apple'],
  [/\barm\b|mali/i, 'arm'], [/qualcomm|adreno/i, 'qualcomm'],
];
/** The vendor class of an API's vendor field (WebGPU GPUAdapterInfo.vendor: 'nvidia', 'amd', 'intel'…). */
export function vendorClass(vendor: string | undefined): VendorClass {
  for (const [re, v] of VENDORS) if (vendor && re.test(vendor)) return v;
  return 'unknown';
}

/**
 * The device `kiln codegen` generates for when no device is at hand: CUDA caps (subgroups, 1024
 * invocations) are a GPU; the baseline caps are WebGPU compatibility mode, whose committed shaders
 * are chosen for, and measured on, CI's llvmpipe.
 */
export function aheadOfTimeClass(caps: Caps): DeviceClass {
  return caps.subgroups && caps.maxInvocationsPerWorkgroup >= 1024 ? 'gpu' : 'software-gpu';
}
