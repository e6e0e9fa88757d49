// timeOnDevice: CUDA events over a captured graph where the device's graphs can time themselves
// (a stand-in device here: the CUDA path itself is covered on the fake driver in
// test/cuda-backend.test.ts), host timing elsewhere.
import { afterAll, describe, expect, it } from 'vitest';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { createCpuDevice } from '../src/backend/cpu/index.js';
import type { DeviceBuffer, DeviceGraph } from '../src/backend/device.js';
import { timeOnDevice } from '../src/backend/timing.js';

const dev = await createCpuDevice();
afterAll(() => dev.destroy());

describe('timeOnDevice', () => {
  const n = 1024;
  const a = dev.alloc('f32', n, 'a'), b = dev.alloc('f32', n, 'b'), out = dev.alloc('f32', n, 'out');
  const k = vectorAdd({ caps: dev.caps });
  const launch = () => dev.launch(k, { a, b, out }, { n });

  it('times on the host where graphs have no event timings', async () => {
    const r = await timeOnDevice(dev, launch, { launches: 3, reps: 2, samples: 2 });
    expect(r.source).toBe('host');
    expect(r.ms).toBeGreaterThan(0);
  });

  it('with timed graphs: captures `launches` launches, flushes before each replay, reports the median per launch', async () => {
    const seen: { reps: number; flush?: DeviceBuffer }[] = [];
    let calls = 0, recorded = 0, destroyed = false;
    const counted = () => { calls++; launch(); };
    // A device whose graphs time themselves: the recording runs (and is counted), time() answers.
    const timed = Object.assign(Object.create(dev) as typeof dev, {
      captureGraph(record: () => void): DeviceGraph {
        const before = calls;
        record();
        recorded = calls - before;
        return {
          launches: recorded,
          replay() {},
          time(reps: number, flush?: DeviceBuffer) { seen.push({ reps, flush }); return [9, 3, 6].slice(0, reps); },
          destroy() { destroyed = true; },
        };
      },
    });
    const r = await timeOnDevice(timed, counted, { launches: 4, reps: 3, samples: 1, flushBytes: 4096 });
    expect(recorded).toBe(4);
    expect(r).toEqual({ ms: 6 / 4, source: 'events' });
    expect(seen).toHaveLength(1);
    expect(seen[0]!.reps).toBe(3);
    expect(seen[0]!.flush?.length).toBe(1024); // 4096 bytes of u32
    expect(destroyed).toBe(true);
  });
});
