// Row copy between f32 matrices of one width: dst[dstRows[r], :] = src[srcRows[r], :]. Lays out
// rows that one op wrote where another op reads them — a speculative step's draft and target
// probabilities, written by the sampling op in batch order, go to the acceptance op's
// [sequence, draft position] layout — without a round trip to the host. One invocation per
// element; rows never overlap in dst (the host checks), so no two invocations write one word.
import type { Caps } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, memoKernel } from './linearCommon.js';

export interface CopyRowsParams {
  workgroupSize?: number;
  caps?: Caps;
}

/**
 * Bindings: src f32 [srcRowCount, D], srcRows u32 [R], dstRows u32 [R], dst f32 [dstRowCount, D].
 * Uniforms R (rows to copy), D (row width), srcRowCount, dstRowCount (bounds: a row index past
 * them copies nothing).
 */
export function copyRows(p: CopyRowsParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 256;
  return memoKernel(`copyRows/${wg}/${capsKey(caps)}`, () => kernel({
    name: 'copyRows',
    params: { workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      src: storage('f32', 'read', { shape: '[srcRowCount, D]' }),
      srcRows: storage('u32', 'read', { shape: '[R]' }),
      dstRows: storage('u32', 'read', { shape: '[R]' }),
      dst: storage('f32', 'read_write', { shape: '[dstRowCount, D]' }),
    },
    uniforms: { R: 'u32', D: 'u32', srcRowCount: 'u32', dstRowCount: 'u32' },
    grid: `[ceil(D / ${wg}), R]`,
    body(k, { src, srcRows, dstRows, dst }, { D, srcRowCount, dstRowCount }) {
      const j = k.let('j', k.globalId.x);
      const r = k.let('r', k.workgroupId.y);
      const from = k.let('from', srcRows.at(r));
      const to = k.let('to', dstRows.at(r));
      k.if(j.lt(D).and(from.lt(srcRowCount)).and(to.lt(dstRowCount)), () => {
        dst.set(to.mul(D).add(j), src.at(from.mul(D).add(j)));
      });
    },
  }));
}
