// Row-wise, numerically stable softmax over x[rows, cols] (row-major): one workgroup per row.
// Three sweeps over the row, each invocation striding by the workgroup size (so cols may exceed
// it): the row max, then Σ exp(x − max), then y = exp(x − max) / Σ. Subtracting the max keeps
// every exp ≤ 1, so large-magnitude inputs neither overflow nor lose the sum.
import { exp, kernel, max, min, storage } from '../dsl/index.js';
import type { Caps } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { reduceScratchLength, useSubgroupPath, workgroupReduce } from './reduce.js';

export interface SoftmaxParams {
  workgroupSize?: number;
  /** false forces the shared-memory reduction even where subgroups exist. */
  subgroups?: boolean;
  caps?: Caps;
}

export function softmax(p: SoftmaxParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 256;
  const subgroupSize = p.subgroups !== false && caps.subgroups ? caps.subgroupSize : 0;
  return kernel({
    name: 'softmax',
    params: { workgroupSize: wg, path: subgroupSize > 0 ? `subgroup${subgroupSize}` : 'shared' },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[rows, cols]' }),
      y: storage('f32', 'read_write', { shape: '[rows, cols]' }),
    },
    uniforms: { rows: 'u32', cols: 'u32' },
    // An empty row has no softmax: launch nothing rather than read x[-1].
    grid: '[min(cols, 1) * rows]', // no workgroups for empty rows
    body(k, { x, y }, { cols }) {
      const sg = useSubgroupPath(k, p.subgroups);
      const scratch = k.shared('scratch', 'f32', reduceScratchLength(wg, sg ? subgroupSize : 0));
      const lid = k.let('lid', k.localIndex);
      const rowStart = k.let('rowStart', k.workgroupId.x.mul(cols));

      // Start from a real element (even invocations past the row's end) so max needs no -Infinity.
      const localMax = k.var('localMax', x.at(rowStart.add(min(lid, cols.sub(1)))));
      k.for('c', lid, cols, (c) => localMax.set(max(localMax, x.at(rowStart.add(c)))), wg);
      const rowMax = workgroupReduce(k, 'max', localMax, scratch, wg, sg, 'rowMax');

      const localSum = k.var('localSum', 'f32', 0);
      k.for('c', lid, cols, (c) => localSum.set(localSum.add(exp(x.at(rowStart.add(c)).sub(rowMax)))), wg);
      const rowSum = workgroupReduce(k, 'sum', localSum, scratch, wg, sg, 'rowSum');

      k.for('c', lid, cols, (c) => {
        const i = k.let('i', rowStart.add(c));
        y.set(i, exp(x.at(i).sub(rowMax)).div(rowSum));
      }, wg);
    },
  });
}
