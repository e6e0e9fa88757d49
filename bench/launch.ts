// `npm run bench -- launch`: what one launch costs the cpu device beyond its work, per executor:
// N launches of a one-workgroup kernel (vectorAdd, 64 elements) queued one by one, against the
// same N recorded once (captureGraph) and replayed — as a dependent chain (a barrier between
// every two launches) and as independent launches (no barrier). Reported per launch: the time of
// a whole sequence ÷ N, median of the samples, and the kernel's own time measured alone.
//
//   npm run bench -- launch [--launches 64] [--samples 15] [--workers N] [--executors wasm,js]
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { createCpuDevice } from '../src/backend/cpu/index.js';
import type { Device, DeviceBuffer } from '../src/backend/device.js';

interface Options { launches: number; samples: number; workers: number | undefined; executors: ('wasm' | 'js')[] }

function parse(args: string[]): Options {
  const o: Options = { launches: 64, samples: 15, workers: undefined, executors: ['wasm', 'js'] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--launches') o.launches = Number(v());
    else if (a === '--samples') o.samples = Number(v());
    else if (a === '--workers') o.workers = Number(v());
    else if (a === '--executors') o.executors = v().split(',') as Options['executors'];
    else throw new Error(`bench launch: unknown option ${a}`);
  }
  if (!(o.launches >= 1 && o.samples >= 1)) throw new Error('bench launch: --launches and --samples must be at least 1');
  return o;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timeIt(dev: Device, samples: number, fn: () => void): Promise<number> {
  fn();
  await dev.sync(); // warm: compile, instantiate, send modules
  const t: number[] = [];
  for (let s = 0; s < samples; s++) {
    const t0 = performance.now();
    fn();
    await dev.sync();
    t.push(performance.now() - t0);
  }
  return median(t);
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const n = 64, N = o.launches;
  console.log(`${N} launches of vectorAdd (${n} elements, 1 workgroup) per sequence; µs per launch, median of ${o.samples}\n`);
  console.log('| executor | device | kernel alone | queued one by one | replayed, dependent chain | replayed, independent |');
  console.log('|---|---|---:|---:|---:|---:|');
  for (const executor of o.executors) {
    const dev = await createCpuDevice({ executor, ...(o.workers !== undefined ? { workers: o.workers } : {}) });
    const add = vectorAdd({ caps: dev.caps });
    const bufs: DeviceBuffer<'f32'>[] = Array.from({ length: N + 2 }, (_, i) => dev.alloc('f32', n, `v${i}`));
    for (const b of bufs) dev.write(b, new Float32Array(n).fill(1));
    try {
      // Chain: v[i+2] = v[i+1] + v[i]; independent: v[i+2] = v[0] + v[1].
      const chain = () => { for (let i = 0; i < N; i++) dev.launch(add, { a: bufs[i + 1]!, b: bufs[i]!, out: bufs[i + 2]! }, { n }); };
      const independent = () => { for (let i = 0; i < N; i++) dev.launch(add, { a: bufs[0]!, b: bufs[1]!, out: bufs[i + 2]! }, { n }); };
      const alone = await timeIt(dev, o.samples, () => dev.launch(add, { a: bufs[0]!, b: bufs[1]!, out: bufs[2]! }, { n }));
      const queued = await timeIt(dev, o.samples, chain);
      const gChain = dev.captureGraph!(chain), gIndep = dev.captureGraph!(independent);
      const replayChain = await timeIt(dev, o.samples, () => gChain.replay());
      const replayIndep = await timeIt(dev, o.samples, () => gIndep.replay());
      gChain.destroy();
      gIndep.destroy();
      const us = (ms: number) => ((ms * 1000) / N).toFixed(1);
      console.log(`| ${executor} | ${dev.description} | ${(alone * 1000).toFixed(1)} | ${us(queued)} | ${us(replayChain)} | ${us(replayIndep)} |`);
    } finally {
      for (const b of bufs) dev.free(b);
      await dev.destroy();
    }
  }
}
