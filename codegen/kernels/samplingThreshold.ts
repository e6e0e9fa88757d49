// The sampling op's threshold search (top-k, top-p, min-p) over rows of probabilities [rows, V]:
// a radix select on the f32 bits of e ≥ 0 (they order like the values). `samplingThresholdPass`
// splits it across the vocabulary in 17 launches (the default); `samplingThreshold` runs one
// workgroup per row and is the reference it matches bit for bit: both sum in the same order.
import { kernel, max, storage } from '../dsl/index.js';
import type { Val } from '../dsl/index.js';
import type { Segments } from './sampling.js';


/**
 * One workgroup per row finds the keep-threshold τ over the keys (f32 bits of e ≥ 0, ordered
 * like the values): top-k by radix select on counts, then top-p on the top-k survivors by radix
 * select on sums, then min-p (e ≥ minP, since e is 1 at the max). Entries with key ≥ τ are kept
 * (ties at a threshold all stay). 8 passes of 4 bits each per filter. rowInfo[row] = (topK,
 * seed, position, stream); topK 0 = off; topP 1 = off; minP 0 = off. The reference for the
 * split search (`samplingThresholdPass`, the default), selectable with threshold: 'single'.
 */
export function samplingThreshold(g: Segments) {
  const wg = g.wg;
  return kernel({
    name: 'samplingThreshold', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: wg,
    bindings: {
      probs: storage('f32', 'read', { shape: '[rows, vocab]' }),
      rowParams: storage('f32', 'read', { shape: '[rows, 4]' }),
      rowInfo: storage('u32', 'read', { shape: '[rows, 4]' }),
      threshold: storage('u32', 'read_write', { shape: '[rows]' }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32' },
    grid: '[rows]',
    body(k, { probs, rowParams, rowInfo, threshold }, { vocab, segments: nseg }) {
      const hist = k.shared('hist', 'f32', 16 * wg);
      const digitTotal = k.shared('digitTotal', 'f32', 16);
      const state = k.shared('state', 'u32', 1);   // the key prefix found so far
      const stateF = k.shared('stateF', 'f32', 3); // top-k: k left; top-p: mass above, target
      const lid = k.let('lid', k.localIndex);
      const row = k.let('row', k.workgroupId.x);
      const rowBase = k.let('rowBase', row.mul(vocab));
      const greedy = k.let('greedy', rowParams.at(row.mul(4)).eq(0));
      const topK = k.let('topK', rowInfo.at(row.mul(4)));
      const topP = k.let('topP', rowParams.at(row.mul(4).add(1)));
      const minP = k.let('minP', rowParams.at(row.mul(4).add(2)));

      // One pass: histogram (count or mass) of the next 4-bit digit among keys matching the
      // prefix on the higher bits and ≥ floor. The sums run in the split search's order (per
      // invocation over its strided items of a segment, then invocations, then segments), so both
      // searches round alike and keep the same sets bit for bit.
      const pass = (shift: Val<'u32'>, floorKey: Val<'u32'> | undefined, mass: boolean) => {
        const prefix = k.let('prefix', state.at(0));
        const high = k.let('high', k.u32(0xfffffff0).shl(shift));
        k.if(lid.lt(16), () => digitTotal.set(lid, 0));
        k.for('sg', k.u32(0), nseg, (sg) => {
          // Each invocation counts into its own column of hist (no private array: no stack).
          for (let d = 0; d < 16; d++) hist.set(lid.add(d * wg), 0);
          for (let j = 0; j < g.items; j++) {
            const i = k.let(`i${j}`, sg.mul(g.seg).add(lid).add(j * wg));
            k.if(i.lt(vocab), () => {
              const e = k.let(`e${j}`, probs.at(rowBase.add(i)));
              const key = k.let(`key${j}`, k.bitcast('u32', e));
              const match = key.band(high).eq(prefix);
              k.if(floorKey ? match.and(key.ge(floorKey)) : match, () => {
                const d = k.let(`d${j}`, key.shr(shift).band(15));
                const at = k.let(`at${j}`, lid.add(d.mul(wg)));
                hist.set(at, hist.at(at).add(mass ? e : k.f32(1)));
              });
            });
          }
          k.barrier();
          k.if(lid.lt(16), () => {
            const t = k.var('t', 'f32', 0);
            k.for('j', k.u32(0), k.u32(wg), (j) => t.set(t.add(hist.at(lid.mul(wg).add(j)))));
            digitTotal.set(lid, digitTotal.at(lid).add(t));
          });
          k.barrier();
        });
      };
      const setPrefix = (shift: Val<'u32'>, digit: Val<'u32'>) => state.set(0, state.at(0).bor(digit.shl(shift)));

      // top-k: the k-th largest key.
      k.if(lid.eq(0), () => { state.set(0, 0); stateF.set(0, k.f32(topK)); });
      k.barrier();
      const useK = k.let('useK', greedy.not().and(topK.gt(0)).and(topK.lt(vocab)));
      k.if(useK, () => {
        k.for('pk', k.u32(0), k.u32(8), (pk) => {
          const shift = k.let('shiftK', k.u32(28).sub(pk.mul(4)));
          pass(shift, undefined, false);
          k.if(lid.eq(0), () => {
            const cum = k.var('cum', 'f32', 0);
            const digit = k.var('digit', 'u32', 0);
            const done = k.var('done', 'bool', false);
            for (let d = 15; d >= 0; d--) {
              k.if(done.not(), () => {
                const c = k.let('c', digitTotal.at(d));
                cum.set(cum.add(c));
                k.if(cum.ge(stateF.at(0)), () => { digit.set(d); stateF.set(0, stateF.at(0).sub(cum.sub(c))); k.assign(done, true); });
              });
            }
            setPrefix(shift, digit);
          });
          k.barrier();
        });
      });
      const tauK = k.let('tauK', k.select(useK, state.at(0), k.u32(0)));
      k.barrier();

      // top-p over the top-k survivors: the largest τ with Σ_{key ≥ τ} e ≥ topP · Σ_{key ≥ τK} e.
      k.if(lid.eq(0), () => { state.set(0, 0); stateF.set(1, 0); });
      k.barrier();
      const useP = k.let('useP', greedy.not().and(topP.lt(1)));
      k.if(useP, () => {
        k.for('pp', k.u32(0), k.u32(8), (pp) => {
          const shift = k.let('shiftP', k.u32(28).sub(pp.mul(4)));
          pass(shift, tauK, true);
          k.if(lid.eq(0), () => {
            k.if(pp.eq(0), () => { // the mass of all survivors, summed in the order used below
              const z = k.var('z', 'f32', 0);
              for (let d = 15; d >= 0; d--) z.set(z.add(digitTotal.at(d)));
              stateF.set(2, topP.mul(z));
            });
            const above = k.var('above', stateF.at(1));
            const digit = k.var('digitP', 'u32', 0); // no digit reaches: keep the whole region
            const done = k.var('doneP', 'bool', false);
            for (let d = 15; d >= 0; d--) {
              k.if(done.not(), () => {
                const next = k.let('next', above.add(digitTotal.at(d)));
                k.if(next.ge(stateF.at(2)), () => { digit.set(d); k.assign(done, true); }, () => above.set(next));
              });
            }
            stateF.set(1, above);
            setPrefix(shift, digit);
          });
          k.barrier();
        });
      });
      k.if(lid.eq(0), () => {
        const tauP = k.select(useP, state.at(0), k.u32(0));
        const tauM = k.select(greedy, k.u32(0), k.bitcast('u32', minP));
        threshold.set(row, max(max(tauK, tauP), tauM));
      });
    },
  });
}

/** Launches of the split threshold search: 8 top-k passes, 8 top-p passes, one last merge. */
export const THRESHOLD_PASSES = 16;
/** Per-row state slots of the split search (one per launch, so no launch reads what it writes). */
export const SLOTS = THRESHOLD_PASSES + 1;

/**
 * The threshold search of `samplingThreshold`, split across the vocabulary: launch `pass`
 * (0..16) runs over (segment, row). Its first 16 invocations total the previous pass's digit
 * histogram over the segments in segment order (so sums depend only on the row), invocation 0
 * applies the same digit choice as `samplingThreshold` and segment 0 records the row's state;
 * then (pass < 16) every segment histograms its share of the keys for the next 4-bit digit into
 * partOut. Launch 16 (one workgroup per row) only merges and writes threshold[row]. Counts (top-k)
 * are exact; top-p masses are summed per invocation over its strided items, then over
 * invocations, then over segments, the order `samplingThreshold` uses too: both keep the same
 * sets bit for bit (any other order moves τ in ~0.4 % of top-p rows, where the mass reaches
 * topP·Σ within f32 rounding).
 */
export function samplingThresholdPass(g: Segments) {
  return kernel({
    name: 'samplingThresholdPass', params: { workgroupSize: g.wg, items: g.items }, caps: g.caps, workgroupSize: g.wg,
    bindings: {
      probs: storage('f32', 'read', { shape: '[rows, vocab]' }),
      rowParams: storage('f32', 'read', { shape: '[rows, 4]' }),
      rowInfo: storage('u32', 'read', { shape: '[rows, 4]' }),
      partIn: storage('f32', 'read', { shape: '[rows, segments, 16]' }),
      partOut: storage('f32', 'read_write', { shape: '[rows, segments, 16]' }),
      stateU: storage('u32', 'read_write', { shape: `[rows, ${SLOTS}, 2]` }),
      stateF: storage('f32', 'read_write', { shape: `[rows, ${SLOTS}, 4]` }),
      threshold: storage('u32', 'read_write', { shape: '[rows]' }),
    },
    uniforms: { rows: 'u32', vocab: 'u32', segments: 'u32', pass: 'u32' },
    grid: ({ rows, segments: s, pass }) => [pass >= THRESHOLD_PASSES ? 1 : s, rows], gridDoc: 'segments (1 for the last pass) x rows',
    body(k, { probs, rowParams, rowInfo, partIn, partOut, stateU, stateF, threshold }, { vocab, segments: nseg, pass }) {
      const hist = k.shared('hist', 'f32', 16 * g.wg);
      const digitTotal = k.shared('digitTotal', 'f32', 16);
      const shU = k.shared('shU', 'u32', 2); // key prefix, τK for the histogram
      const lid = k.let('lid', k.localIndex);
      const seg = k.let('seg', k.workgroupId.x), row = k.let('row', k.workgroupId.y);
      const rowBase = k.let('rowBase', row.mul(vocab));
      const greedy = k.let('greedy', rowParams.at(row.mul(4)).eq(0));
      const topK = k.let('topK', rowInfo.at(row.mul(4)));
      const topP = k.let('topP', rowParams.at(row.mul(4).add(1)));
      const minP = k.let('minP', rowParams.at(row.mul(4).add(2)));
      const useK = k.let('useK', greedy.not().and(topK.gt(0)).and(topK.lt(vocab)));
      const useP = k.let('useP', greedy.not().and(topP.lt(1)));
      // The pass just histogrammed (prev) and the one about to run: which filter, which digit.
      const prev = k.let('prev', max(pass, 1).sub(1));
      const prevActive = k.let('prevActive', pass.gt(0).and(k.select(prev.lt(8), useK, useP)));
      const active = k.let('active', pass.lt(THRESHOLD_PASSES).and(k.select(pass.lt(8), useK, useP)));

      // Merge: digit d's total over the segments, in segment order.
      k.if(prevActive.and(lid.lt(16)), () => {
        const t = k.var('t', 'f32', 0);
        k.for('s', k.u32(0), nseg, (s) => t.set(t.add(partIn.at(row.mul(nseg).add(s).mul(16).add(lid)))));
        digitTotal.set(lid, t);
      });
      k.barrier();
      k.if(lid.eq(0), () => {
        const prefix = k.var('prefix', 'u32', 0), tauK = k.var('tauK', 'u32', 0);
        const kLeft = k.var('kLeft', 'f32', 0), above = k.var('above', 'f32', 0), target = k.var('target', 'f32', 0);
        kLeft.set(k.f32(topK));
        k.if(pass.gt(0), () => {
          const at = k.let('at', row.mul(SLOTS).add(prev));
          prefix.set(stateU.at(at.mul(2))); tauK.set(stateU.at(at.mul(2).add(1)));
          kLeft.set(stateF.at(at.mul(4))); above.set(stateF.at(at.mul(4).add(1))); target.set(stateF.at(at.mul(4).add(2)));
        });
        const shift = k.let('shift', k.u32(28).sub(prev.band(7).mul(4)));
        // The digit choices of samplingThreshold, step for step.
        k.if(prevActive.and(prev.lt(8)), () => {
          const cum = k.var('cum', 'f32', 0);
          const digit = k.var('digit', 'u32', 0);
          const done = k.var('done', 'bool', false);
          for (let d = 15; d >= 0; d--) {
            k.if(done.not(), () => {
              const c = k.let('c', digitTotal.at(d));
              cum.set(cum.add(c));
              k.if(cum.ge(kLeft), () => { digit.set(d); kLeft.set(kLeft.sub(cum.sub(c))); k.assign(done, true); });
            });
          }
          prefix.set(prefix.bor(digit.shl(shift)));
        });
        k.if(prevActive.and(prev.ge(8)), () => {
          k.if(prev.eq(8), () => { // the mass of all survivors, summed in the order used below
            const z = k.var('z', 'f32', 0);
            for (let d = 15; d >= 0; d--) z.set(z.add(digitTotal.at(d)));
            target.set(topP.mul(z));
          });
          const digit = k.var('digitP', 'u32', 0); // no digit reaches: keep the whole region
          const done = k.var('doneP', 'bool', false);
          for (let d = 15; d >= 0; d--) {
            k.if(done.not(), () => {
              const next = k.let('next', above.add(digitTotal.at(d)));
              k.if(next.ge(target), () => { digit.set(d); k.assign(done, true); }, () => above.set(next));
            });
          }
          prefix.set(prefix.bor(digit.shl(shift)));
        });
        k.if(pass.eq(8), () => { // top-k done: its threshold, and a fresh prefix for top-p
          tauK.set(k.select(useK, prefix, k.u32(0)));
          prefix.set(0);
        });
        shU.set(0, prefix); shU.set(1, tauK);
        k.if(seg.eq(0).and(pass.lt(THRESHOLD_PASSES)), () => {
          const at = k.let('slot', row.mul(SLOTS).add(pass));
          stateU.set(at.mul(2), prefix); stateU.set(at.mul(2).add(1), tauK);
          stateF.set(at.mul(4), kLeft); stateF.set(at.mul(4).add(1), above); stateF.set(at.mul(4).add(2), target);
        });
        k.if(pass.ge(THRESHOLD_PASSES), () => {
          const tauP = k.select(useP, prefix, k.u32(0));
          const tauM = k.select(greedy, k.u32(0), k.bitcast('u32', minP));
          threshold.set(row, max(max(tauK, tauP), tauM));
        });
      });
      k.barrier();

      // Histogram of this segment: the next digit among keys matching the prefix (top-p: and ≥ τK).
      k.if(active, () => {
        const prefix = k.let('hPrefix', shU.at(0));
        const floorKey = k.let('floorKey', k.select(pass.lt(8), k.u32(0), shU.at(1)));
        const shift = k.let('hShift', k.u32(28).sub(pass.band(7).mul(4)));
        const high = k.let('high', k.u32(0xfffffff0).shl(shift));
        const mass = k.let('mass', pass.ge(8));
        const bins = k.privateArray('bins', 'f32', 16);
        for (let d = 0; d < 16; d++) bins.set(d, 0);
        for (let j = 0; j < g.items; j++) {
          const i = k.let(`i${j}`, seg.mul(g.seg).add(lid).add(j * g.wg));
          k.if(i.lt(vocab), () => {
            const e = k.let(`e${j}`, probs.at(rowBase.add(i)));
            const key = k.let(`key${j}`, k.bitcast('u32', e));
            k.if(key.band(high).eq(prefix).and(key.ge(floorKey)), () => {
              const d = k.let(`d${j}`, key.shr(shift).band(15));
              bins.set(d, bins.at(d).add(k.select(mass, e, k.f32(1))));
            });
          });
        }
        for (let d = 0; d < 16; d++) hist.set(lid.add(d * g.wg), bins.at(d));
      });
      k.barrier();
      k.if(active.and(lid.lt(16)), () => {
        const t = k.var('h', 'f32', 0);
        k.for('j', k.u32(0), k.u32(g.wg), (j) => t.set(t.add(hist.at(lid.mul(g.wg).add(j)))));
        partOut.set(row.mul(nseg).add(seg).mul(16).add(lid), t);
      });
    },
  });
}
