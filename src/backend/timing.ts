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

/**
 * Per-launch milliseconds of `launch` measured on the device where it can (a device whose graphs
 * have event timings: CUDA): `launches` calls captured into one graph, `reps` replays each after
 * overwriting a `flushBytes` scratch buffer — an L2 flush, so every replay reads its weights from
 * DRAM as a decode step does (give ≥ 2 × the L2) — the median replay over `launches`. Elsewhere:
 * timeLaunches with `samples` (host time, back to back, caches warm). `source` says which ran.
 */
export async function timeOnDevice(dev: Device, launch: () => void,
  o: { launches: number; reps: number; samples: number; flushBytes?: number }): Promise<{ ms: number; source: 'events' | 'host' }> {
  launch();
  await dev.sync();
  const graph = dev.captureGraph?.(() => { for (let i = 0; i < o.launches; i++) launch(); });
  if (graph?.time) {
    const flush = o.flushBytes ? dev.alloc('u32', Math.ceil(o.flushBytes / 4), 'timing.l2Flush') : undefined;
    try {
      const t = graph.time(o.reps, flush).sort((a, b) => a - b);
      return { ms: t[Math.floor(t.length / 2)]! / o.launches, source: 'events' };
    } finally {
      graph.destroy();
      if (flush) dev.free(flush);
    }
  }
  graph?.destroy();
  return { ms: await timeLaunches(dev, launch, { reps: o.launches, samples: o.samples }), source: 'host' };
}
