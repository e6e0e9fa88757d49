// Elementwise and row-wise helpers of the transformer: SiLU(gate)·up, residual add, argmax over
// rows, and f16 <-> f32 conversion (f16 as packed u32 words, each word written by one invocation).
// Elementwise kernels index a flat range spread over a 2-D grid (WebGPU caps a grid dimension at
// 65535 workgroups).
import type { Caps, KernelBuilder, Val } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, memoKernel, silu } from './linearCommon.js';

export const POINTWISE_WORKGROUP_SIZES: readonly number[] = [64, 128, 256];
const MAX_GRID = 65535;

/** ceil(n / perGroup) workgroups (at least 1) spread over x, then y: launches and headers read this one text. */
function flatGrid(perGroup: number): string {
  const groups = `max(1, ceil(n / ${perGroup}))`;
  return `[min(${groups}, ${MAX_GRID}), ceil(${groups} / ${MAX_GRID})]`;
}
function flatIndex(k: KernelBuilder, wg: number): Val<'u32'> {
  return k.let('gi', k.workgroupId.y.mul(k.numWorkgroups.x).add(k.workgroupId.x).mul(wg).add(k.localIndex));
}

export interface PointwiseParams { workgroupSize?: number; caps?: Caps }

/** out[i] = SiLU(gate[i]) · up[i], the same arithmetic as the fused gate/up epilogue. Uniform n. */
export function siluMul(p: PointwiseParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS, wg = p.workgroupSize ?? 256;
  return memoKernel(`siluMul/${wg}/${capsKey(caps)}`, () => kernel({
    name: 'siluMul',
    params: { workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      gate: storage('f32', 'read', { shape: '[n]' }),
      up: storage('f32', 'read', { shape: '[n]' }),
      out: storage('f32', 'read_write', { shape: '[n]' }),
    },
    uniforms: { n: 'u32' },
    grid: flatGrid(wg),
    body(k, { gate, up, out }, { n }) {
      const i = flatIndex(k, wg);
      k.if(i.lt(n), () => out.set(i, silu(k, gate.at(i)).mul(up.at(i))));
    },
  }));
}

/** Residual add: out[i] = a[i] + b[i], or in place a[i] += b[i]. Uniform n. */
export function residualAdd(p: PointwiseParams & { inPlace?: boolean } = {}) {
  const caps = p.caps ?? BASELINE_CAPS, wg = p.workgroupSize ?? 256, inPlace = !!p.inPlace;
  const len = { shape: '[n]' };
  return memoKernel(`residualAdd/${inPlace}/${wg}/${capsKey(caps)}`, () => kernel({
    name: inPlace ? 'residualAddInPlace' : 'residualAdd',
    params: { workgroupSize: wg, inPlace },
    caps,
    workgroupSize: wg,
    bindings: {
      a: storage('f32', inPlace ? 'read_write' : 'read', len),
      b: storage('f32', 'read', len),
      ...(inPlace ? {} : { out: storage('f32', 'read_write', len) }),
    },
    uniforms: { n: 'u32' },
    grid: flatGrid(wg),
    body(k, refs, { n }) {
      // In place, a is read_write and takes the sum; otherwise out does.
      const dst = inPlace ? refs.a.writableRef() : refs.out?.writableRef() ?? k.fail("binding 'out' is missing");
      const i = flatIndex(k, wg);
      k.if(i.lt(n), () => dst.set(i, refs.a.at(i).add(refs.b.at(i))));
    },
  }));
}

/**
 * Index of the largest value of each row of x [M, N] (ties → the lowest index). One workgroup per
 * row: strided scan, then a fixed tree over (value, index) pairs. NaN inputs: unspecified.
 * Bindings: x f32 [M, N], out u32 [M]. Uniforms M, N.
 */
export function argmaxRows(p: PointwiseParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS, wg = p.workgroupSize ?? 256;
  if (!Number.isInteger(Math.log2(wg))) throw new Error(`argmaxRows: workgroupSize ${wg} is not a power of two`);
  const NONE = 0xffffffff;
  return memoKernel(`argmax/${wg}/${capsKey(caps)}`, () => kernel({
    name: 'argmaxRows',
    params: { workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[M, N]' }),
      out: storage('u32', 'read_write', { shape: '[M]' }),
    },
    uniforms: { M: 'u32', N: 'u32' },
    grid: '[M]', // one workgroup per row
    body(k, { x, out }, { N }) {
      const vals = k.shared('vals', 'f32', wg);
      const idxs = k.shared('idxs', 'u32', wg);
      const lid = k.let('lid', k.localIndex);
      const base = k.let('base', k.workgroupId.x.mul(N));
      const best = k.var('best', 'f32', 0);
      const bi = k.var('bi', 'u32', NONE);
      // Increasing i: a later equal value never replaces an earlier one.
      k.for('i', lid, N, (i) => {
        const v = k.let('v', x.at(base.add(i)));
        k.if(bi.eq(NONE).or(v.gt(best)), () => { best.set(v); bi.set(i); });
      }, wg);
      vals.set(lid, best);
      idxs.set(lid, bi);
      k.barrier();
      for (let s = wg / 2; s >= 1; s /= 2) {
        k.if(lid.lt(s), () => {
          const ia = k.let('ia', idxs.at(lid)), ib = k.let('ib', idxs.at(lid.add(s)));
          const va = k.let('va', vals.at(lid)), vb = k.let('vb', vals.at(lid.add(s)));
          const takeB = ib.ne(NONE).and(ia.eq(NONE).or(vb.gt(va)).or(vb.eq(va).and(ib.lt(ia))));
          k.if(takeB, () => { vals.set(lid, vb); idxs.set(lid, ib); });
        });
        k.barrier();
      }
      k.if(lid.eq(0), () => out.set(k.workgroupId.x, idxs.at(0)));
    },
  }));
}

/** f32 [n] → f16 words [ceil(n/2)] (round to nearest even where the device does; odd n: high half 0). */
export function f32ToF16(p: PointwiseParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS, wg = p.workgroupSize ?? 256;
  return memoKernel(`f32ToF16/${wg}/${capsKey(caps)}`, () => kernel({
    name: 'f32ToF16',
    params: { workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[n]' }),
      out: storage('u32', 'read_write', { shape: `[ceil(n / 2)]` }),
    },
    uniforms: { n: 'u32' },
    grid: flatGrid(2 * wg),
    body(k, { x, out }, { n }) {
      const w = flatIndex(k, wg);
      const i = k.let('i', w.mul(2));
      k.if(i.lt(n), () => {
        const hi = k.var('hi', 'f32', 0);
        k.if(i.add(1).lt(n), () => hi.set(x.at(i.add(1))));
        out.set(w, k.pack2x16float(k.vec('vec2<f32>', x.at(i), hi)));
      });
    },
  }));
}

/** f16 words [ceil(n/2)] → f32 [n] (exact). */
export function f16ToF32(p: PointwiseParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS, wg = p.workgroupSize ?? 256;
  return memoKernel(`f16ToF32/${wg}/${capsKey(caps)}`, () => kernel({
    name: 'f16ToF32',
    params: { workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('u32', 'read', { shape: `[ceil(n / 2)]` }),
      out: storage('f32', 'read_write', { shape: '[n]' }),
    },
    uniforms: { n: 'u32' },
    grid: flatGrid(2 * wg),
    body(k, { x, out }, { n }) {
      const w = flatIndex(k, wg);
      const i = k.let('i', w.mul(2));
      k.if(i.lt(n), () => {
        const v = k.let('v', k.unpack2x16float(x.at(w)));
        out.set(i, v.x);
        k.if(i.add(1).lt(n), () => out.set(i.add(1), v.y));
      });
    },
  }));
}
