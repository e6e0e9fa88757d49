// The kernel library's registry: every family and the default variants `kiln codegen` emits
// into shaders/ (WGSL, baseline caps) and cuda/ (CUDA_CAPS). Labels are file names: unique, stable.
import type { Kernel } from '../dsl/builder.js';
import type { Caps } from '../dsl/types.js';
import { vectorAdd } from './vectorAdd.js';
import { matmulTiled } from './matmulTiled.js';
import { reduce } from './reduce.js';
import { scan } from './scan.js';
import { softmax } from './softmax.js';
import { TRANSFORMER_FAMILIES } from './transformerFamilies.js';
import { ATTENTION_FAMILIES } from './pagedAttention.js';
import { SAMPLING_FAMILIES } from './acceptance.js';
import { MMA_FAMILIES } from './mmaFamilies.js';

// Every kernel factory, by the names README's kernel-library table uses.
export { int4Linear } from './int4Matmul.js';
export { denseLinear } from './denseMatmul.js';
export type { LinearOp, LinearChoice, LinearChoiceInput } from './linearOp.js';
export { fusedLinear, type FusedLinearOp, type FusedLinearSpec, type RopeAppendEpilogue } from './fusedLinear.js';
export { pagedAttention } from './pagedAttention.js';
export type { PagedAttentionParams } from './pagedAttentionConfig.js';
export { kvAppend } from './kvAppend.js';
export { sampling, argmax } from './sampling.js';
export { logSoftmax } from './logSoftmax.js';
export { rejectionSampler, greedyAcceptance } from './acceptance.js';
export { rmsNorm } from './rmsNorm.js';
export { rope, ropeTable, type RopeFrequencies } from './rope.js';
export { ropeQkv } from './ropeQkv.js';
export { embedding } from './embedding.js';
export { siluMul, residualAdd, argmaxRows, f32ToF16, f16ToF32 } from './pointwise.js';
export { vectorAdd, matmulTiled, reduce, softmax, scan };
export { OP_FAMILIES, type OpFamily, type OpFamilyName } from './registry.js';

export interface KernelVariant { label: string; kernel: Kernel<any, any> }
export interface KernelFamily {
  family: string;
  /** The default variants for a device with these capabilities. */
  variants(caps: Caps): KernelVariant[];
  /** The family's kernel for custom compile-time parameters (`kiln codegen --kernel F --params JSON`). */
  build?(params: Record<string, unknown>, caps: Caps): Kernel<any, any>;
}

export const FAMILIES: KernelFamily[] = [
  { family: 'vectorAdd', variants: (caps) => [{ label: 'vectorAdd', kernel: vectorAdd({ caps }) }], build: (params, caps) => vectorAdd({ ...params, caps }) },
  { family: 'matmulTiled', variants: (caps) => [{ label: 'matmulTiled', kernel: matmulTiled({ caps }) }] },
  {
    family: 'reduce',
    variants: (caps) => (['sum', 'max'] as const).map((kind) => {
      const kernel = reduce({ kind, caps }).kernels[0]!;
      return { label: kernel.ir.name, kernel };
    }),
  },
  { family: 'softmax', variants: (caps) => [{ label: 'softmax', kernel: softmax({ caps }) }] },
  {
    family: 'scan',
    variants: (caps) => (['f32', 'u32'] as const).flatMap((t) => scan({ t, caps }).kernels.map((kernel) => ({ label: kernel.ir.name, kernel }))),
  },
  ...TRANSFORMER_FAMILIES,
  ...MMA_FAMILIES,
  ...ATTENTION_FAMILIES,
  ...SAMPLING_FAMILIES,
];
