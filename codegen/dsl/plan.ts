// Ops that need several launches (split-K then reduce, a multi-pass scan) are one entry point
// returning a plan. No launch waits on another workgroup: ordering comes from launch order.
import type { BindingSpec, Kernel } from './builder.js';
import type { StorageType } from './types.js';

export interface PlanStep {
  kernel: Kernel<any, any>;
  /** kernel binding name → op binding name or temp name. */
  bind: Record<string, string>;
  uniforms: Record<string, number>;
}
export interface Plan {
  /** Scratch buffers the op needs, allocated (and cached) by the device. */
  temps: Record<string, { t: StorageType; length: number }>;
  steps: PlanStep[];
}
export interface Op<B extends Record<string, BindingSpec> = Record<string, BindingSpec>, S extends Record<string, number> = Record<string, number>> {
  readonly name: string;
  readonly bindings: B;
  /** Sizes fixed when the op was built (a linear layer's K, N, Nw), which binding shapes may use
   *  beside the sizes each run passes. */
  readonly fixedSizes?: Readonly<Record<string, number>>;
  /** The launches for these problem sizes. */
  plan(sizes: S): Plan;
}

export function op<B extends Record<string, BindingSpec>, S extends Record<string, number>>(
  name: string, bindings: B, plan: (sizes: S) => Plan,
): Op<B, S> {
  return { name, bindings, plan };
}
