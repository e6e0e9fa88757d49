// Sum or max of a large f32 array, as one op: each workgroup reduces a contiguous chunk to one
// partial, and the pass repeats over the partials until one value is left (no workgroup ever
// waits on another). Inside a workgroup the reduction uses subgroup operations where the device
// has them and their size is known at build time, otherwise a shared-memory tree.
// `workgroupReduce` is the macro other kernels (softmax) reuse.
import { kernel, max, min, op, storage } from '../dsl/index.js';
import type { ArrayRef, Caps, KernelBuilder, Plan, Val } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';

export type ReduceKind = 'sum' | 'max';

function combine(kind: ReduceKind, a: Val<'f32'>, b: Val<'f32'>): Val<'f32'> {
  return kind === 'sum' ? a.add(b) : max(a, b);
}

/** Whether a kernel may take the subgroup path: asked for, present, and of known size. */
export function useSubgroupPath(k: KernelBuilder, wanted: boolean | undefined): boolean {
  if (wanted === false) return false;
  // Reading caps.subgroups is what allows the subgroup builtins in this kernel.
  return k.caps.subgroups && k.caps.subgroupSize > 0;
}

/** Length of the shared scratch array `workgroupReduce` needs. */
export function reduceScratchLength(workgroupSize: number, subgroupSize: number): number {
  return subgroupSize > 0 ? Math.max(1, Math.ceil(workgroupSize / subgroupSize)) : workgroupSize;
}

/**
 * Reduce `v` over the workgroup; every invocation gets the result. Every invocation must call it
 * (it contains barriers). `scratch` (length `reduceScratchLength`) is free again on return.
 * For 'sum', invocations without data pass 0; for 'max', a copy of any real element (max needs
 * no identity, so -Infinity never has to be written as a literal).
 */
export function workgroupReduce(k: KernelBuilder, kind: ReduceKind, v: Val<'f32'>, scratch: ArrayRef<'f32', true>,
  workgroupSize: number, subgroups: boolean, tag = 'red'): Val<'f32'> {
  const wg = workgroupSize;
  const lid = k.localIndex;
  if (subgroups) {
    const S = k.caps.subgroupSize;
    if (scratch.length! < reduceScratchLength(wg, S)) throw new Error(`${tag}: scratch too short for subgroup reduction`);
    let cur = v, count = wg, round = 0;
    for (;;) {
      // Bound to a let at top level: subgroup operations must run in uniform control flow.
      const r = k.let(`${tag}Sg${round}`, kind === 'sum' ? k.subgroupAdd(cur) : k.subgroupMax(cur));
      if (wg <= S) return r; // one subgroup holds the whole workgroup
      const next = Math.ceil(count / S);
      // Subgroups are consecutive runs of S local indices; lane 0 of each publishes its value.
      const lane0 = k.subgroupInvocationId.eq(0);
      if (next === 1) {
        k.if(lid.eq(0), () => scratch.set(0, r));
        k.barrier();
        const all = k.let(`${tag}All`, scratch.at(0));
        k.barrier();
        return all;
      }
      k.if(count < wg ? lane0.and(lid.lt(count)) : lane0, () => scratch.set(lid.div(S), r));
      k.barrier();
      const src = scratch.at(min(lid, next - 1));
      cur = k.let(`${tag}R${round}`, kind === 'sum' ? k.select(lid.lt(next), src, 0) : src);
      k.barrier();
      count = next;
      round++;
    }
  }
  if (wg & (wg - 1)) throw new Error(`${tag}: the shared-memory tree needs a power-of-two workgroup, not ${wg}`);
  if (scratch.length! < wg) throw new Error(`${tag}: scratch of ${scratch.length} is shorter than the workgroup ${wg}`);
  scratch.set(lid, v);
  k.barrier();
  for (let s = wg >> 1; s >= 1; s >>= 1) {
    k.if(lid.lt(s), () => scratch.set(lid, combine(kind, scratch.at(lid), scratch.at(lid.add(s)))));
    k.barrier();
  }
  const all = k.let(`${tag}All`, scratch.at(0));
  k.barrier();
  return all;
}

export interface ReduceParams {
  kind: ReduceKind;
  workgroupSize?: number;
  /** Elements each invocation folds before the workgroup reduction. */
  itemsPerThread?: number;
  /** false forces the shared-memory tree even where subgroups exist. */
  subgroups?: boolean;
  caps?: Caps;
}

/** One pass: out[g] = reduce(x[g·chunk .. (g+1)·chunk) ∩ [0, n)). */
export function reducePass(p: ReduceParams) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 256;
  const items = p.itemsPerThread ?? 8;
  const chunk = wg * items;
  const kind = p.kind;
  const subgroupSize = p.subgroups !== false && caps.subgroups ? caps.subgroupSize : 0;
  return kernel({
    name: kind === 'sum' ? 'reduceSum' : 'reduceMax',
    params: { kind, workgroupSize: wg, itemsPerThread: items, path: subgroupSize > 0 ? `subgroup${subgroupSize}` : 'shared' },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[n]' }),
      out: storage('f32', 'read_write', { shape: `[ceil(n / ${chunk})]` }),
    },
    uniforms: { n: 'u32' },
    grid: `[ceil(n / ${chunk})]`,
    body(k, { x, out }, { n }) {
      const sg = useSubgroupPath(k, p.subgroups);
      const scratch = k.shared('scratch', 'f32', reduceScratchLength(wg, sg ? subgroupSize : 0));
      const lid = k.let('lid', k.localIndex);
      const base = k.let('base', k.workgroupId.x.mul(chunk));
      const last = k.let('last', n.sub(1));
      // Strided over the chunk so neighbouring invocations read neighbouring words. Indices past
      // the end are clamped to the last element: harmless for max, masked to 0 for sum.
      const item = (j: number) => {
        const i = k.let(`i${j}`, base.add(lid).add(j * wg));
        const v = x.at(min(i, last));
        return kind === 'sum' ? k.select(i.lt(n), v, 0) : v;
      };
      const acc = k.var('acc', item(0));
      for (let j = 1; j < items; j++) acc.set(combine(kind, acc, item(j)));
      const total = workgroupReduce(k, kind, acc, scratch, wg, sg);
      k.if(lid.eq(0), () => out.set(k.workgroupId.x, total));
    },
  });
}

/** Reduce x[0..n) to out[0]. Sizes: { n } with n ≥ 1. */
export function reduce(p: ReduceParams) {
  const pass = reducePass(p);
  const chunk = (p.workgroupSize ?? 256) * (p.itemsPerThread ?? 8);
  const name = p.kind === 'sum' ? 'reduceSum' : 'reduceMax';
  const o = op(name, {
    x: storage('f32', 'read', { shape: '[n]' }),
    out: storage('f32', 'read_write', { shape: '[1]' }),
  }, ({ n }: { n: number }): Plan => {
    if (!Number.isInteger(n) || n < 1) throw new Error(`op '${name}': size n = ${n} must be a positive integer`);
    const steps: Plan['steps'] = [];
    const temps: Plan['temps'] = {};
    // Ping-pong between two partial buffers until one value is left; the last pass writes `out`.
    let src = 'x', len = n, level = 0;
    for (;;) {
      const parts = Math.ceil(len / chunk);
      const dst = parts === 1 ? 'out' : `partials${level % 2}`;
      if (parts > 1) temps[dst] = { t: 'f32', length: Math.max(temps[dst]?.length ?? 0, parts) };
      steps.push({ kernel: pass, bind: { x: src, out: dst }, uniforms: { n: len } });
      if (parts === 1) break;
      src = dst; len = parts; level++;
    }
    return { temps, steps };
  });
  return Object.assign(o, { kernels: [pass] });
}
