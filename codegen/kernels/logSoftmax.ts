// Log-probabilities over rows of logits, vocabulary split across workgroups (for logprobs and
// perplexity): per segment its max and Σ exp(x − max), then every segment merges the row's
// partials in order and writes x − log Σ exp.
import { exp, kernel, log, max, op, storage } from '../dsl/index.js';
import type { Plan } from '../dsl/index.js';
import {
  checkSizes, type SegmentParams, segmentCount, segments, segmentScan, workgroupArgmax, workgroupScan,
} from './sampling.js';

const ROWS = '[rows, vocab]';
const PARTS = '[rows, segments]';

/**
 * out[row, i] = x[row, i] − log Σ_j exp(x[row, j]) (log-probabilities). Per segment: its max
 * and Σ exp(x − max); then every segment merges the row's partials in order and writes.
 * Sizes: rows, vocab.
 */
export function logSoftmax(p: SegmentParams = {}) {
  const g = segments(p);
  const kSeg = kernel({
    name: 'logSoftmaxSegment', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      x: storage('f32', 'read', { shape: ROWS }),
      partMax: storage('f32', 'read_write', { shape: PARTS }),
      partSum: storage('f32', 'read_write', { shape: PARTS }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[segments, rows]',
    body(k, { x, partMax, partSum }, { vocab, segments: nseg }) {
      const sv = k.shared('sv', 'f32', g.wg), si = k.shared('si', 'u32', g.wg);
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      const [best, arg] = segmentScan(k, g, seg, vocab, (i) => x.at(rowBase.add(i)));
      const [segMax] = workgroupArgmax(k, best, arg, sv, si, g.wg, 'am', false);
      const sum = k.var('sum', 'f32', 0);
      for (let j = 0; j < g.items; j++) {
        const i = k.let(`j${j}`, seg.mul(g.seg).add(k.localIndex).add(j * g.wg));
        k.if(i.lt(vocab), () => sum.set(sum.add(exp(x.at(rowBase.add(i)).sub(segMax)))));
      }
      const [, total] = workgroupScan(k, sum, sv, k.shared('sb', 'f32', g.wg), g.wg, 'sum', 'total');
      k.if(k.localIndex.eq(0), () => {
        partMax.set(row.mul(nseg).add(seg), segMax);
        partSum.set(row.mul(nseg).add(seg), total);
      });
    },
  });
  const kApply = kernel({
    name: 'logSoftmaxApply', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      x: storage('f32', 'read', { shape: ROWS }),
      partMax: storage('f32', 'read', { shape: PARTS }),
      partSum: storage('f32', 'read', { shape: PARTS }),
      out: storage('f32', 'read_write', { shape: ROWS }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[segments, rows]',
    body(k, { x, partMax, partSum, out }, { vocab, segments: nseg }) {
      const lseShared = k.shared('lse', 'f32', 1);
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      k.if(k.localIndex.eq(0), () => {
        const base = k.let('base', row.mul(nseg));
        const m = k.var('m', partMax.at(base));
        k.for('s', k.u32(1), nseg, (s) => m.set(max(m, partMax.at(base.add(s)))));
        const z = k.var('z', 'f32', 0);
        k.for('s', k.u32(0), nseg, (s) => {
          const ms = k.let('ms', partMax.at(base.add(s)));
          z.set(z.add(partSum.at(base.add(s)).mul(k.select(ms.eq(m), k.f32(1), exp(ms.sub(m))))));
        });
        lseShared.set(0, m.add(log(z)));
      });
      k.barrier();
      const lse = k.let('lseRow', lseShared.at(0));
      for (let j = 0; j < g.items; j++) {
        const i = k.let(`i${j}`, seg.mul(g.seg).add(k.localIndex).add(j * g.wg));
        k.if(i.lt(vocab), () => out.set(rowBase.add(i), x.at(rowBase.add(i)).sub(lse)));
      }
    },
  });
  const o = op('logSoftmax', { x: storage('f32', 'read', { shape: '[rows, vocab]' }), out: storage('f32', 'read_write', { shape: '[rows, vocab]' }) },
    (s: { rows: number; vocab: number }): Plan => {
      checkSizes('logSoftmax', s, ['rows', 'vocab']);
      const u = { rows: s.rows, vocab: s.vocab, segments: segmentCount(g, s.vocab) };
      const n = s.rows * u.segments;
      return {
        temps: { partMax: { t: 'f32', length: n }, partSum: { t: 'f32', length: n } },
        steps: [
          { kernel: kSeg, bind: { x: 'x', partMax: 'partMax', partSum: 'partSum' }, uniforms: u },
          { kernel: kApply, bind: { x: 'x', partMax: 'partMax', partSum: 'partSum', out: 'out' }, uniforms: u },
        ],
      };
    });
  return Object.assign(o, { kernels: [kSeg, kApply], segments: g });
}
