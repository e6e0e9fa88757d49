// The kernel library's registry: every family and the default variants `kiln codegen` emits
// into shaders/ (WGSL, baseline caps) and cuda/ (CUDA_CAPS). Labels are file names: unique, stable.
import type { Kernel } from '../dsl/builder.js';
import type { Caps } from '../dsl/types.js';
import { vectorAdd } from './vectorAdd.js';

export interface KernelVariant { label: string; kernel: Kernel<any, any> }
export interface KernelFamily {
  family: string;
  /** The default variants for a device with these capabilities. */
  variants(caps: Caps): KernelVariant[];
}

export const FAMILIES: KernelFamily[] = [
  { family: 'vectorAdd', variants: (caps) => [{ label: 'vectorAdd', kernel: vectorAdd({ caps }) }] },
];
