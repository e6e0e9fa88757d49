// `npm run bench -- dsl`: the tiled f32 matmul from the DSL, C = A·B at n×n×n, in GFLOP/s on
// the CPU executor with 1 worker and with all workers, on WebGPU when present, next to a plain-JS
// i-k-j triple loop over Float32Array as the baseline. One run, side by side, with ratios.
//
// Options:
//   --sizes 256,512,1024   problem sizes (n for n×n×n)
//   --targets js,cpu1,cpuN,webgpu   what to measure
//   --runs 5               timed runs per cell (after ≥5 warm-up runs); fewer if --budget is short
//   --budget 20            seconds of timed runs per cell at most (warm-up: at most half as much again)
//   --workers N            workers for cpuN (default: all cores)
//   --tilings 64x64x16/4x4,32x32x32/2x2u   tilings to compare, u: K loop unrolled (default: the device default)
import os from 'node:os';
import { type MatmulTiledConfig, matmulTiled, matmulTiledDefaults, matmulTiledLabel } from '../codegen/kernels/matmulTiled.js';
import { BackendUnavailableError, type Device } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { randomF32, relErr, rng } from '../test/util.js';

interface Options {
  sizes: number[]; targets: string[]; runs: number; budget: number; workers: number; tilings: string[];
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    sizes: [256, 512, 1024], targets: ['js', 'cpu1', 'cpuN', 'webgpu'], runs: 5, budget: 20,
    workers: os.availableParallelism(), tilings: [],
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = args[i + 1];
    const need = () => { if (v === undefined) throw new Error(`${a} needs a value`); i++; return v; };
    if (a === '--sizes') o.sizes = need().split(',').map(Number);
    else if (a === '--targets') o.targets = need().split(',');
    else if (a === '--runs') o.runs = Number(need());
    else if (a === '--budget') o.budget = Number(need());
    else if (a === '--workers') o.workers = Number(need());
    else if (a === '--tilings') o.tilings = need().split(',');
    else throw new Error(`unknown option '${a}' (see the header of bench/dsl.ts)`);
  }
  // The JS loop is always measured: it is the baseline and the reference.
  if (!o.targets.includes('js')) o.targets.unshift('js');
  if (o.sizes.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--sizes must be positive integers: ${o.sizes}`);
  return o;
}

/** "64x64x16/4x4" → tile and register block sizes. */
function parseTiling(s: string): MatmulTiledConfig {
  const m = /^(\d+)x(\d+)x(\d+)\/(\d+)x(\d+)(u?)$/.exec(s);
  if (!m) throw new Error(`tiling '${s}' is not tileMxtileNxtileK/blockMxblockN[u], e.g. 64x64x16/4x4 (u: unroll K)`);
  const [tileM, tileN, tileK, blockM, blockN] = m.slice(1, 6).map(Number) as [number, number, number, number, number];
  return { tileM, tileN, tileK, blockM, blockN, unrollK: m[6] === 'u' };
}

/** The baseline: what a careful JS programmer writes without a kernel DSL. */
function matmulJs(A: Float32Array, B: Float32Array, C: Float32Array, n: number): void {
  C.fill(0);
  for (let i = 0; i < n; i++) {
    const ci = i * n;
    for (let k = 0; k < n; k++) {
      const a = A[ci + k]!, bk = k * n;
      for (let j = 0; j < n; j++) C[ci + j]! += a * B[bk + j]!;
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Warm up, then time up to `runs` runs within `budget` seconds: median wall seconds, and
 * median CPU seconds of this process (all its threads: workers, llvmpipe's), which other load on
 * the machine disturbs far less than wall time.
 */
async function time(run: () => Promise<void> | void, o: Options): Promise<{ s: number; cpuS: number; runs: number }> {
  // JIT tiers (V8 in the workers, llvmpipe's shader cache) need a few runs: warm up for at least
  // 5 runs and 0.5 s, or half the budget when single runs are long.
  let t = performance.now(), warm = 0, spent = 0;
  for (let i = 0; (i < 5 || spent < 0.5) && spent < o.budget / 2; i++) {
    await run();
    warm = (performance.now() - t) / 1000;
    spent += warm;
    t = performance.now();
  }
  const runs = Math.max(1, Math.min(o.runs, Math.floor(o.budget / Math.max(warm, 1e-6))));
  const ts: number[] = [], cs: number[] = [];
  for (let r = 0; r < runs; r++) {
    t = performance.now();
    const c = process.cpuUsage();
    await run();
    ts.push((performance.now() - t) / 1000);
    const d = process.cpuUsage(c);
    cs.push((d.user + d.system) / 1e6);
  }
  return { s: median(ts), cpuS: median(cs), runs };
}

/** gflops: by wall time; perCpuS: GFLOP per CPU-second of this process. */
interface Cell { gflops: number; perCpuS: number; err?: number; runs: number }

async function onDevice(dev: Device, tiling: MatmulTiledConfig, n: number, A: Float32Array, B: Float32Array,
  ref: Float32Array, o: Options): Promise<Cell> {
  const kernel = matmulTiled({ ...tiling, caps: dev.caps });
  const a = dev.alloc('f32', n * n, 'A'), b = dev.alloc('f32', n * n, 'B'), c = dev.alloc('f32', n * n, 'C');
  try {
    dev.write(a, A);
    dev.write(b, B);
    dev.write(c, new Float32Array(n * n).fill(Number.NaN));
    const { s, cpuS, runs } = await time(async () => {
      dev.launch(kernel, { A: a, B: b, C: c }, { M: n, N: n, K: n });
      await dev.sync();
    }, o);
    const err = relErr(await dev.read(c), ref);
    return { gflops: (2 * n ** 3) / s / 1e9, perCpuS: (2 * n ** 3) / cpuS / 1e9, err, runs };
  } finally {
    dev.free(a); dev.free(b); dev.free(c);
  }
}

async function openDevice(target: string, o: Options): Promise<Device | string> {
  try {
    if (target === 'cpu1') return await createDevice('cpu', { workers: 1 });
    if (target === 'cpuN') return await createDevice('cpu', { workers: o.workers });
    if (target === 'webgpu') return await createDevice('webgpu');
  } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    throw e;
  }
  throw new Error(`unknown target '${target}': use js, cpu1, cpuN, webgpu`);
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const devices = new Map<string, Device | string>();
  for (const t of o.targets) if (t !== 'js') devices.set(t, await openDevice(t, o));
  const label = (t: string) => (t === 'cpuN' ? `cpu×${o.workers}` : t === 'cpu1' ? 'cpu×1' : t);

  console.log(`# dsl: tiled f32 matmul, GFLOP/s by wall time [GFLOP per CPU-second of this process]`);
  console.log(`median of ≤${o.runs} runs after ≥5 warm-up runs, ≤${o.budget} s per cell; ratios by wall time`);
  console.log(`host: ${os.cpus()[0]?.model ?? '?'} × ${os.availableParallelism()}, node ${process.version}, load average ${os.loadavg()[0]!.toFixed(2)} (other processes skew every number)`);
  for (const [t, d] of devices) console.log(`${label(t)}: ${typeof d === 'string' ? `unavailable — ${d}` : d.description}`);
  console.log('');

  const rows: string[][] = [];
  const header = ['n', 'tiling', ...o.targets.map(label), 'vs js', ...(o.targets.includes('cpuN') && o.targets.includes('cpu1') ? ['cpu scaling'] : []), 'max rel err'];
  for (const n of o.sizes) {
    const r = rng(n);
    const A = randomF32(n * n, r), B = randomF32(n * n, r);
    const ref = new Float32Array(n * n);
    // The JS loop is both the baseline and the reference the kernels are checked against.
    const js = await time(() => matmulJs(A, B, ref, n), o);
    const jsGflops = (2 * n ** 3) / js.s / 1e9;
    const tilings = o.tilings.length ? o.tilings.map(parseTiling) : [undefined];
    for (const tilingArg of tilings) {
      const cells = new Map<string, Cell | string>();
      let tilingLabel = '';
      for (const t of o.targets) {
        if (t === 'js') { cells.set(t, { gflops: jsGflops, perCpuS: (2 * n ** 3) / js.cpuS / 1e9, runs: js.runs }); continue; }
        const d = devices.get(t)!;
        if (typeof d === 'string') { cells.set(t, 'n/a'); continue; }
        const tiling = tilingArg ?? matmulTiledDefaults(d.caps, { M: n, N: n });
        tilingLabel = matmulTiledLabel(tiling).replace('matmulTiled_', '');
        cells.set(t, await onDevice(d, tiling, n, A, B, ref, o));
      }
      const g = (t: string) => { const c = cells.get(t); return typeof c === 'object' ? c.gflops : undefined; };
      const fmt = (t: string) => { const c = cells.get(t); return typeof c === 'object' ? `${c.gflops.toFixed(2)} [${c.perCpuS.toFixed(2)}]` : c ?? '-'; };
      const ratios = o.targets.filter((t) => t !== 'js' && g(t) !== undefined).map((t) => `${label(t)} ${(g(t)! / jsGflops).toFixed(2)}×`);
      const scaling = g('cpuN') !== undefined && g('cpu1') !== undefined ? [`${(g('cpuN')! / g('cpu1')!).toFixed(2)}×`] : [];
      const errs = [...cells.values()].flatMap((c) => (typeof c === 'object' && c.err !== undefined ? [c.err] : []));
      rows.push([String(n), tilingLabel || '-', ...o.targets.map(fmt), ratios.join(', ') || '-',
        ...(header.includes('cpu scaling') ? [scaling[0] ?? '-'] : []), errs.length ? Math.max(...errs).toExponential(1) : '-']);
      printTable(header, rows);
    }
  }
  for (const d of devices.values()) if (typeof d !== 'string') await d.destroy();
}

let printed = 0;
/** Prints the markdown table so far (the header once, then rows as they are measured). */
function printTable(header: string[], rows: string[][]): void {
  if (printed === 0) {
    console.log(`| ${header.join(' | ')} |`);
    console.log(`|${header.map(() => '---').join('|')}|`);
  }
  for (; printed < rows.length; printed++) console.log(`| ${rows[printed]!.join(' | ')} |`);
}
