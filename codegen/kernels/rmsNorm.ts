// RMSNorm over the rows of x [M, D]: y = x · rsqrt(mean(x²) + eps) · w (f32 in and out).
// Fused variant: residual += x, then y = RMSNorm(residual) — the residual stream update and the
// next layer's norm in one pass. One workgroup per row; the sum of squares is reduced in a fixed
// tree (it depends on D and the workgroup size only, never on M: batch invariant).
import type { Caps } from '../dsl/index.js';
import { inverseSqrt, kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, memoKernel } from './linearCommon.js';

export interface RmsNormParams {
  /** residual += x and normalise the sum (residual is read and written). */
  fused?: boolean;
  /** Power of two. */
  workgroupSize?: number;
  caps?: Caps;
}

export const RMSNORM_WORKGROUP_SIZES: readonly number[] = [32, 64, 128, 256];

/** Default: enough invocations to cover the row a few elements each, capped by the device. */
export function defaultRmsNormWorkgroup(D: number, caps: Caps = BASELINE_CAPS): number {
  let wg = 32;
  while (wg < 256 && wg * 4 < D && wg * 2 <= caps.maxInvocationsPerWorkgroup) wg *= 2;
  return wg;
}

/** Bindings: x f32 [M, D], w f32 [D], out f32 [M, D] (+ residual f32 [M, D] when fused). Uniforms M, D, eps. */
export function rmsNorm(p: RmsNormParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 128;
  const fused = !!p.fused;
  if (!Number.isInteger(Math.log2(wg)) || wg > caps.maxInvocationsPerWorkgroup) {
    throw new Error(`rmsNorm: workgroupSize ${wg} is not a power of two within the device limit ${caps.maxInvocationsPerWorkgroup}`);
  }
  return memoKernel(`rmsNorm/${fused}/${wg}/${capsKey(caps)}`, () => kernel({
    name: fused ? 'rmsNormResidual' : 'rmsNorm',
    params: { fused, workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[M, D]' }),
      ...(fused ? { residual: storage('f32', 'read_write', { shape: '[M, D]' }) } : {}),
      w: storage('f32', 'read', { shape: '[D]' }),
      out: storage('f32', 'read_write', { shape: '[M, D]' }),
    },
    uniforms: { M: 'u32', D: 'u32', eps: 'f32' },
    grid: '[M]', // one workgroup per row
    body(k, b, { D, eps }) {
      const { x, w, out } = b;
      const residual = b.residual?.writableRef();
      const red = k.shared('red', 'f32', wg);
      const lid = k.let('lid', k.localIndex);
      const base = k.let('base', k.workgroupId.x.mul(D));
      const ss = k.var('ss', 'f32', 0);
      k.for('i', lid, D, (i) => {
        const at = k.let('at', base.add(i));
        let v = x.at(at);
        if (residual) {
          v = k.let('sum', residual.at(at).add(v));
          residual.set(at, v);
        } else v = k.let('v', v);
        ss.set(k.call('fma', [v, v, ss]));
      }, wg);
      red.set(lid, ss);
      k.barrier();
      for (let s = wg / 2; s >= 1; s /= 2) {
        k.if(lid.lt(s), () => red.set(lid, red.at(lid).add(red.at(lid.add(s)))));
        k.barrier();
      }
      const inv = k.let('inv', inverseSqrt(red.at(0).div(k.f32(D)).add(eps)));
      k.for('j', lid, D, (j) => {
        const at = k.let('at2', base.add(j));
        const v = residual ? residual.at(at) : x.at(at);
        out.set(at, v.mul(inv).mul(w.at(j)));
      }, wg);
    },
  }));
}
