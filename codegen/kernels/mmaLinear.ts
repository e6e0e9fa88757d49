// Which tensor-core MMA kernel runs a linear op's weight source: int4Mma.ts for the AutoAWQ INT4
// source, the dense f16 kernel (mmaMatmul.ts) for f16 weights; others (dense f32, the 'strips'
// layout) have none.
import type { Caps } from '../dsl/index.js';
import { int4MmaFor, int4MmaGroupSize, int4MmaUnfit } from './int4Mma.js';
import type { Epilogue, WeightSource } from './linearCommon.js';
import type { MmaFusion } from './mmaFusion.js';
import { denseMmaFor, denseMmaUnfit, isDenseF16Rows } from './mmaMatmul.js';

/** Why `src` has no MMA kernel for these sizes, or undefined when it has one. */
export function mmaUnfit(src: WeightSource, K: number, N: number): string | undefined {
  if (src.layout !== 'rows') return `the MMA kernel reads weights in the 'rows' layout, not '${src.layout}' (weightLayout)`;
  const g = int4MmaGroupSize(src);
  if (g !== undefined) return int4MmaUnfit(K, N, g);
  if (isDenseF16Rows(src)) return denseMmaUnfit(K, N);
  return `the ${src.tag} source has no MMA kernel`;
}

/** The MMA kernel for a source (check mmaUnfit first), with the fusions asked. N picks int4Mma's staging loads. */
export function mmaKernelFor(src: WeightSource, K: number, N: number, e: Epilogue, caps: Caps, fusion?: MmaFusion) {
  const kern = int4MmaFor(src, K, N, e, caps, fusion) ?? denseMmaFor(src, K, e, caps, fusion);
  if (!kern) throw new Error(`mma: ${mmaUnfit(src, K, N) ?? `no MMA kernel for the ${src.tag} source`}`);
  return kern;
}
