// Sum and max of a large f32 array (one multi-launch op), on the shared-memory tree path and,
// where the device has subgroups of known size, on the subgroup path too.
import { expect, it } from 'vitest';
import { type ReduceKind, reduce } from '../../codegen/kernels/reduce.js';
import type { Device } from '../../src/backend/device.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';

const SIZES = [1, 1000, (1 << 18) + 7];

async function runReduce(dev: Device, kind: ReduceKind, subgroups: boolean, x: Float32Array): Promise<number> {
  const bufs = new Buffers(dev);
  try {
    const out = bufs.output('f32', 1, 'out');
    dev.run(reduce({ kind, subgroups, caps: dev.caps }), { x: bufs.input('f32', x, 'x'), out }, { n: x.length });
    return (await bufs.read(out))[0]!;
  } finally { bufs.free(); }
}

forEachBackend('reduce', (dev) => {
  const paths = dev.caps.subgroups && dev.caps.subgroupSize > 0 ? [false, true] : [false];
  for (const subgroups of paths) {
    const path = subgroups ? `subgroup(${dev.caps.subgroupSize})` : 'shared tree';
    for (const n of SIZES) {
      it(`sum, ${path}, n = ${n}: real values within 5e-7`, async () => {
        const r = rng(freshSeed(`reduce sum ${path} n=${n}`));
        // Positive mean keeps the sum well away from 0, so the norm-wise error is meaningful.
        const x = randomF32(n, r, -0.5, 1);
        let ref = 0;
        for (const v of x) ref += v;
        expect(relErr([await runReduce(dev, 'sum', subgroups, x)], [ref])).toBeLessThan(5e-7); // measured 2.1e-8 and 5.5e-8 in two runs (max measured on cpu, cpu-js and llvmpipe; bound ≤ 10×; re-derive with test/measure)
      });
      it(`sum, ${path}, n = ${n}: integer values exactly (no element dropped or doubled)`, async () => {
        const r = rng(freshSeed(`reduce sum-int ${path} n=${n}`));
        // Every partial sum stays below 2^24, so f32 adds them exactly in any order.
        const x = new Float32Array(n).map(() => Math.floor(r() * 17) - 8);
        if (n > 1) x[n - 1] = 8; // a non-zero last element: a dropped tail shows
        let ref = 0;
        for (const v of x) ref += v;
        expect(await runReduce(dev, 'sum', subgroups, x)).toBe(ref);
      });
      it(`max, ${path}, n = ${n}: exact, all-negative input, maximum anywhere incl. the ends`, async () => {
        const r = rng(freshSeed(`reduce max ${path} n=${n}`));
        const x = randomF32(n, r, -3, -1);
        for (const at of new Set([Math.floor(r() * n), 0, n - 1])) {
          const y = x.slice();
          y[at] = -0.5 - r() * 0.25;
          let ref = -Infinity;
          for (const v of y) ref = Math.max(ref, v);
          expect(await runReduce(dev, 'max', subgroups, y)).toBe(ref);
        }
      });
    }
  }
});
