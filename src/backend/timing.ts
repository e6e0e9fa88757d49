// Timing launches on any device: warm up (compiles), then the fastest of `samples` runs of
// `reps` back-to-back launches with one sync each, per launch, in ms. Used by `kiln tune` and
// the benchmarks.
import type { Device } from './device.js';

export async function timeLaunches(dev: Device, launch: () => void, o: { reps: number; samples: number }): Promise<number> {
  launch();
  await dev.sync();
  let best = Infinity;
  for (let s = 0; s < o.samples; s++) {
    const t = performance.now();
    for (let r = 0; r < o.reps; r++) launch();
    await dev.sync();
    best = Math.min(best, (performance.now() - t) / o.reps);
  }
  return best;
}
