// Embedding gather: out[t, :] = table[ids[t], :] as f32, from an f32 table [V, D] or an f16 table
// packed two per u32 word [V, D/2]. An id ≥ V writes NaN (the host checks ids before upload; this
// makes a miss visible rather than reading another row).
import type { Caps } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, memoKernel, quietNaN } from './linearCommon.js';

export interface EmbeddingParams {
  table: 'f32' | 'f16';
  workgroupSize?: number;
  caps?: Caps;
}

export const EMBEDDING_WORKGROUP_SIZES: readonly number[] = [64, 128, 256];

/** Bindings: ids u32 [T], table f32 [V, D] | u32 [V, D/2], out f32 [T, D]. Uniforms T, V, D (even for f16). */
export function embedding(p: EmbeddingParams) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 64;
  const f16 = p.table === 'f16';
  if (p.table !== 'f32' && p.table !== 'f16') throw new Error(`embedding: table dtype '${p.table}' is not f32 or f16`);
  const per = f16 ? 2 : 1; // columns per invocation: one packed word, written by its one reader
  return memoKernel(`embedding/${p.table}/${wg}/${capsKey(caps)}`, () => kernel({
    name: `embedding_${p.table}`,
    params: { table: p.table, workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      ids: storage('u32', 'read', { shape: '[T]' }),
      table: f16
        ? storage('u32', 'read', { shape: '[V, D / 2]' })
        : storage('f32', 'read', { shape: '[V, D]' }),
      out: storage('f32', 'read_write', { shape: '[T, D]' }),
    },
    uniforms: { T: 'u32', V: 'u32', D: 'u32' },
    grid: `[ceil(D / ${per * wg}), T]`,
    body(k, { ids, table, out }, { V, D }) {
      const j = k.let('j', k.globalId.x.mul(per));
      const t = k.let('t', k.workgroupId.y);
      k.if(j.ge(D), () => k.return());
      const id = k.let('id', ids.at(t));
      const dst = k.let('dst', t.mul(D).add(j));
      const nan = k.let('nan', quietNaN(k));
      if (f16) {
        const v = k.var('v', 'vec2<f32>', 0);
        k.if(id.lt(V), () => v.set(k.unpack2x16float(table.typed('u32').at(id.mul(D).add(j).div(2)))),
          () => v.set(k.vec('vec2<f32>', nan, nan)));
        out.set(dst, v.x);
        out.set(dst.add(1), v.y);
      } else {
        const v = k.var('v', 'f32', 0);
        k.if(id.lt(V), () => v.set(table.typed('f32').at(id.mul(D).add(j))), () => v.set(nan));
        out.set(dst, v);
      }
    },
  }));
}
