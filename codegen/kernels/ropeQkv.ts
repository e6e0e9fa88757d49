// Split a fused QKV projection and rotate q and k: qkv [T, (Hq + 2·Hk)·D] (each row q heads, then
// k heads, then v heads, as the fused linear writes them) → q [T, Hq, D], k [T, Hk, D] rotated
// by their token's position, v [T, Hk, D] copied. The same rotation as rope.ts (cos/sin table
// from ropeTable, both pair layouts), so the forward needs no separate split launch.
import type { Caps } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, memoKernel } from './linearCommon.js';
import { ropeCosSin, type RopeLayout, ropePairElements, ropeRotatePair } from './rope.js';

export interface RopeQkvParams {
  layout: RopeLayout;
  workgroupSize?: number;
  caps?: Caps;
}

/**
 * Bindings: qkv f32 [T, (Hq+2Hk)·D], pos u32 [T], table f32 [maxPos, D/2, 2], q, k, v (outputs).
 * Uniforms T, Hq, Hk, D, maxPos. One invocation per (token, head, pair).
 */
export function ropeQkv(p: RopeQkvParams) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 64;
  const layout = p.layout;
  if (layout !== 'halves' && layout !== 'interleaved') throw new Error(`ropeQkv: layout '${layout}' is not 'halves' or 'interleaved'`);
  return memoKernel(`ropeQkv/${layout}/${wg}/${capsKey(caps)}`, () => kernel({
    name: `ropeQkv_${layout}`,
    params: { layout, workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      qkv: storage('f32', 'read', { shape: '[T, Hq + 2 * Hk, D]' }),
      pos: storage('u32', 'read', { shape: '[T]' }),
      table: storage('f32', 'read', { shape: '[maxPos, D]' }),
      q: storage('f32', 'read_write', { shape: '[T, Hq, D]' }),
      k: storage('f32', 'read_write', { shape: '[T, Hk, D]' }),
      v: storage('f32', 'read_write', { shape: '[T, Hk, D]' }),
    },
    uniforms: { T: 'u32', Hq: 'u32', Hk: 'u32', D: 'u32', maxPos: 'u32' },
    grid: `[ceil((Hq + 2 * Hk) * D / ${2 * wg}), T]`,
    body(kb, b, { Hq, Hk, D, maxPos }) {
      const half = kb.let('half', D.div(2));
      const idx = kb.let('idx', kb.globalId.x);
      const t = kb.let('t', kb.workgroupId.y);
      const h = kb.let('h', idx.div(half));
      const i = kb.let('i', idx.rem(half));
      const heads = kb.let('heads', Hq.add(Hk).add(Hk));
      kb.if(h.ge(heads), () => kb.return());
      const [i0, i1] = ropePairElements(layout, i, half);
      const src = kb.let('src', t.mul(heads).add(h).mul(D));
      const x0 = kb.let('x0', b.qkv.at(src.add(i0))), x1 = kb.let('x1', b.qkv.at(src.add(i1)));
      kb.if(h.ge(Hq.add(Hk)), () => {
        const dst = kb.let('vDst', t.mul(Hk).add(h.sub(Hq).sub(Hk)).mul(D));
        b.v.set(dst.add(i0), x0);
        b.v.set(dst.add(i1), x1);
        kb.return();
      });
      const [c, s] = ropeCosSin(kb, b.table, kb.let('p', b.pos.at(t)), i, half, maxPos);
      const [r0, r1] = ropeRotatePair(x0, x1, c, s);
      const y0 = kb.let('y0', r0), y1 = kb.let('y1', r1);
      kb.if(h.lt(Hq), () => {
        const dst = kb.let('qDst', t.mul(Hq).add(h).mul(D));
        b.q.set(dst.add(i0), y0);
        b.q.set(dst.add(i1), y1);
      }, () => {
        const dst = kb.let('kDst', t.mul(Hk).add(h.sub(Hq)).mul(D));
        b.k.set(dst.add(i0), y0);
        b.k.set(dst.add(i1), y1);
      });
    },
  }));
}
