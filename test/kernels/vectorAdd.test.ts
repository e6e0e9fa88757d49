// out = a + b: the smallest end-to-end check of a backend (upload, launch, read back).
import { expect, it } from 'vitest';
import { vectorAdd } from '../../codegen/kernels/vectorAdd.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, rng } from '../util.js';
import { Buffers } from './buffers.js';

forEachBackend('vectorAdd', (dev) => {
  for (const n of [1, 1000, 100_003]) {
    it(`n = ${n} (exact f32 sums)`, async () => {
      const r = rng(freshSeed(`vectorAdd n=${n}`));
      const a = randomF32(n, r), b = randomF32(n, r);
      const bufs = new Buffers(dev);
      try {
        const out = bufs.output('f32', n, 'out');
        dev.launch(vectorAdd({ caps: dev.caps }), { a: bufs.input('f32', a, 'a'), b: bufs.input('f32', b, 'b'), out }, { n });
        const got = await bufs.read(out);
        // f32 addition is correctly rounded, so the f64 sum rounded to f32 is the one right answer.
        let wrong = 0;
        for (let i = 0; i < n; i++) if (got[i] !== Math.fround(a[i]! + b[i]!)) wrong++;
        expect(wrong).toBe(0);
      } finally { bufs.free(); }
    });
  }
});
