// The last-arrival ticket (KernelBuilder.lastArrival): a split sum whose last workgroup to arrive
// finishes it, on every backend with a device-scope fence. The sum must be exact in the fixed
// slice order (so no partial was missed or read early), and every ticket back at 0 afterwards.
import { expect, it } from 'vitest';
import { forEachBackend } from '../backends.js';
import { lastArrivalSum } from '../fixtures/lastArrival.js';
import { freshSeed, randomF32, rng } from '../util.js';
import { Buffers } from './buffers.js';

forEachBackend('lastArrival', (dev) => {
  const W = 64, slices = 96, groups = 24;
  it.skipIf(!dev.caps.deviceFence)(`${groups} sums of ${slices} slices, finished by the last slice to arrive, twice`, async () => {
    const r = rng(freshSeed('lastArrival'));
    const kern = lastArrivalSum(dev.caps, W);
    const bufs = new Buffers(dev);
    try {
      const x = randomF32(groups * slices * W, r);
      // The reference: each slice summed in order, then the slices in order, in f32.
      const want = new Float32Array(groups);
      for (let g = 0; g < groups; g++) {
        let t = 0;
        for (let s = 0; s < slices; s++) {
          let p = 0;
          for (let i = 0; i < W; i++) p = Math.fround(p + x[(g * slices + s) * W + i]!);
          t = Math.fround(t + p);
        }
        want[g] = t;
      }
      const xb = bufs.input('f32', x, 'x');
      const part = bufs.output('f32', groups * slices, 'part');
      const tickets = bufs.input('u32', new Uint32Array(groups), 'tickets');
      const out = bufs.output('f32', groups, 'out');
      // The second launch relies on the first having reset every ticket.
      for (let run = 0; run < 2; run++) {
        bufs.poison(out);
        bufs.poison(part);
        dev.launch(kern, { x: xb, part, tickets, out }, { slices, groups });
        expect([...await bufs.read(out)], `run ${run}`).toEqual([...want]);
        expect([...await bufs.read(tickets)].every((v) => v === 0), `run ${run}: tickets reset`).toBe(true);
      }
    } finally { bufs.free(); }
  });
});
