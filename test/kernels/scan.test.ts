// Exclusive prefix sum (multi-launch op: block scans, a recursive scan of block sums, offsets
// added back): f32 against a float64 reference, u32 exactly (wrapping mod 2^32).
import { expect, it } from 'vitest';
import { scan } from '../../codegen/kernels/scan.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';

const SIZES = [1, 1000, 300_000];

forEachBackend('scan', (dev) => {
  const scanF32 = scan({ t: 'f32', caps: dev.caps });
  const scanU32 = scan({ t: 'u32', caps: dev.caps });
  // A small block forces three levels of recursion even at a test-sized n.
  const scanSmallBlocks = scan({ t: 'u32', workgroupSize: 16, itemsPerThread: 2, caps: dev.caps });

  for (const n of SIZES) {
    it(`f32, n = ${n}: norm-wise error < 2.5e-6`, async () => {
      const r = rng(freshSeed(`scan f32 n=${n}`));
      const x = randomF32(n, r);
      const ref = new Float64Array(n);
      for (let i = 1; i < n; i++) ref[i] = ref[i - 1]! + x[i - 1]!;
      const bufs = new Buffers(dev);
      try {
        const out = bufs.output('f32', n, 'out');
        dev.run(scanF32, { x: bufs.input('f32', x, 'x'), out }, { n });
        const got = await bufs.read(out);
        expect(got[0]).toBe(0);
        expect(relErr(got, ref)).toBeLessThan(2.5e-6); // measured 3.0e-7 (max measured on cpu, cpu-js and llvmpipe; bound ≤ 10×; re-derive with test/measure)
      } finally { bufs.free(); }
    });
  }

  for (const [label, op] of [['u32', scanU32], ['u32, 32-element blocks', scanSmallBlocks]] as const) {
    for (const n of SIZES) {
      it(`${label}, n = ${n}: exact`, async () => {
        const r = rng(freshSeed(`scan ${label} n=${n}`));
        const x = new Uint32Array(n).map(() => (r() * 2 ** 32) >>> 0);
        const bufs = new Buffers(dev);
        try {
          const out = bufs.output('u32', n, 'out');
          dev.run(op, { x: bufs.input('u32', x, 'x'), out }, { n });
          const got = await bufs.read(out);
          let run = 0, firstWrong = -1;
          for (let i = 0; i < n && firstWrong < 0; i++) {
            if (got[i] !== run) firstWrong = i;
            run = (run + x[i]!) >>> 0;
          }
          expect(firstWrong).toBe(-1);
        } finally { bufs.free(); }
      });
    }
  }
});
