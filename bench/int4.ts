// `npm run bench -- int4`: the W4A16 linear layer (AutoAWQ layout) against the dense f32 and f16
// layers on the same shapes, per backend: GEMV at M = 1, 4, 16 and GEMM at M = 512 for
// (K, N) = (4096, 4096), (4096, 14336), (14336, 4096) — Llama-3-8B's attention, gate/up and down
// projections. Time, effective GB/s over the bytes that must move (packed weights + scales + zeros
// + activations + output), GFLOP/s, and the speedup over the dense layers, next to a measured copy
// bandwidth (the roofline). One run, side by side: these machines are noisy.
//
// Software backends (cpu, llvmpipe) run the GEMM rows (M > 8) scaled down (K, N and M ÷ 4 by
// default): full size takes minutes per cell there. GEMV rows run at full size. A dense f32
// 14336×4096 weight (235 MB) is past llvmpipe's 128 MiB binding limit: that cell reads n/a.
//
// Options:
//   --backends cpu,webgpu,cuda   which devices (default: all; absent ones are listed as such)
//   --scale N                    divide K, N and M of GEMM rows by N on software backends (default 4)
//   --ms 1,4,16,512              rows
//   --shapes 4096x4096,4096x14336,14336x4096
//   --group 128                  INT4 group size
//   --reps 5 --samples 3         launches per timing sample (queued back to back), samples per cell
//   --no-dense                   INT4 only
// torch baselines on the H200 (cuBLAS fp16, torch's _weight_int4pack_mm) come from a separate
// Python script on the same shapes; see bench/notes/int4.md.
import os from 'node:os';
import { denseLinear, denseWeightLayout } from '../codegen/kernels/denseMatmul.js';
import { int4Linear, int4WeightLayout } from '../codegen/kernels/int4Matmul.js';
import { GEMV_MAX_ROWS, type LinearOp } from '../codegen/kernels/linearOp.js';
import { BackendUnavailableError, type BackendKind, type Device, type DeviceBuffer } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { linearHints, uploadDense, uploadInt4 } from '../src/ops/linear.js';
import { timeOnDevice } from '../src/backend/timing.js';
import { copyBandwidth, randomF32, randomWords } from './common.js';

interface Options {
  backends: BackendKind[]; scale: number; ms: number[]; shapes: [number, number][]; group: number;
  reps: number; samples: number; dense: boolean;
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    backends: ['cpu', 'webgpu', 'cuda'], scale: 4, ms: [1, 4, 16, 512],
    shapes: [[4096, 4096], [4096, 14336], [14336, 4096]], group: 128, reps: 5, samples: 3, dense: true,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const need = () => { const v = args[++i]; if (v === undefined) throw new Error(`${a} needs a value`); return v; };
    const ints = (v: string) => v.split(',').map((s) => { const n = Number(s); if (!Number.isInteger(n) || n < 1) throw new Error(`${a}: '${s}' is not a positive integer`); return n; });
    if (a === '--backends') o.backends = need().split(',') as BackendKind[];
    else if (a === '--scale') o.scale = ints(need())[0]!;
    else if (a === '--ms') o.ms = ints(need());
    else if (a === '--shapes') o.shapes = need().split(',').map((s) => { const [k, n] = ints(s.replace('x', ',')); return [k!, n!]; });
    else if (a === '--group') o.group = ints(need())[0]!;
    else if (a === '--reps') o.reps = ints(need())[0]!;
    else if (a === '--samples') o.samples = ints(need())[0]!;
    else if (a === '--no-dense') o.dense = false;
    else throw new Error(`unknown option '${a}' (see the header of bench/int4.ts)`);
  }
  for (const b of o.backends) if (!['cpu', 'webgpu', 'cuda'].includes(b)) throw new Error(`--backends: unknown backend '${b}'`);
  return o;
}

interface Layer { name: string; op: (M: number) => LinearOp; weights: Record<string, DeviceBuffer>; free(): void }

function layers(dev: Device, K: number, N: number, o: Options): Layer[] {
  const hints = linearHints(dev);
  const out: Layer[] = [];
  const g = o.group;
  const w4 = uploadInt4(dev, {
    K, N, groupSize: g, qweight: randomWords((K * N) / 8, 1), qzeros: randomWords(((K / g) * N) / 8, 2),
    scales: Uint16Array.from({ length: (K / g) * N }, (_, i) => 0x1c00 + (i % 512)), // ~0.004..0.008
  }, 'int4', int4WeightLayout(N, hints.weightLayout));
  const int4 = int4Linear({ K, N, groupSize: g, ...hints });
  out.push({ name: `int4 g${g}`, op: () => int4, weights: { qweight: w4.qweight, qzeros: w4.qzeros, scales: w4.scales }, free: () => { dev.free(w4.qweight); dev.free(w4.qzeros); dev.free(w4.scales); } });
  if (o.dense) {
    const maxBinding = dev.kind === 'webgpu' ? 128 * 2 ** 20 : Infinity;
    for (const dtype of ['f16', 'f32'] as const) {
      const bytes = K * N * (dtype === 'f32' ? 4 : 2);
      if (bytes > maxBinding) continue; // reported as n/a
      const data = randomF32(K * N, dtype === 'f32' ? 3 : 4, 0.05);
      const wb = uploadDense(dev, data, K, N, dtype, 'KN', dtype, denseWeightLayout(dtype, N, hints.weightLayout));
      const op = denseLinear({ K, N, weight: dtype, ...hints });
      out.push({ name: `dense ${dtype}`, op: () => op, weights: { w: wb }, free: () => dev.free(wb) });
    }
  }
  return out;
}

async function openDevice(kind: BackendKind): Promise<Device | string> {
  try { return await createDevice(kind); } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    return `failed to open: ${(e as Error).message.split('\n')[0]}`;
  }
}

const fmt = (v: number | undefined, digits = 2) => (v === undefined ? 'n/a' : v >= 100 ? v.toFixed(0) : v.toFixed(digits));

async function benchDevice(dev: Device, o: Options): Promise<void> {
  const software = dev.profile.software;
  const gemmScale = software ? o.scale : 1;
  const bw = await copyBandwidth(dev, software ? 4 << 20 : 64 << 20, o);
  console.log(`\n## ${dev.kind}: ${dev.description}`);
  console.log(`copy bandwidth (out = a + b): ${fmt(bw)} GB/s — the roofline for the GB/s column`);
  if (gemmScale > 1) console.log(`GEMM rows (M > ${GEMV_MAX_ROWS}) scaled down for a software device: K, N and M ÷ ${gemmScale} (--scale 1: full size)`);
  console.log('');
  const header = ['K', 'N', 'M', 'path', 'layer', 'ms', 'GB/s', '% of copy', 'GFLOP/s', 'int4 speedup'];
  console.log(`| ${header.join(' | ')} |`);
  console.log(`|${header.map(() => '---').join('|')}|`);
  const cells = o.shapes.flatMap(([K0, N0]) => o.ms.map((M0) => {
    const scale = M0 > GEMV_MAX_ROWS ? gemmScale : 1;
    return {
      K: Math.max(o.group, Math.round(K0 / scale / o.group) * o.group), N: Math.max(8, Math.round(N0 / scale / 8) * 8),
      M: scale > 1 ? Math.max(GEMV_MAX_ROWS + 1, Math.round(M0 / scale)) : M0,
    };
  }));
  // Cells grouped by (K, N), so each shape's weights are uploaded once.
  const shapes = [...new Set(cells.map((c) => `${c.K}x${c.N}`))].map((s) => s.split('x').map(Number) as [number, number]);
  for (const [K, N] of shapes) {
    const ls = layers(dev, K, N, o);
    try {
      for (const { M } of cells.filter((c) => c.K === K && c.N === N)) {
        const x = dev.alloc('f32', M * K, 'x'), y = dev.alloc('f32', M * N, 'y');
        dev.write(x, randomF32(M * K, 5, 1));
        const times = new Map<string, number>();
        const rows: [string, number, number][] = [];
        try {
          for (const l of ls) {
            const op = l.op(M);
            // On CUDA: CUDA events over a graph of `reps` launches, the L2 flushed before each replay.
            const { ms } = await timeOnDevice(dev, () => dev.run(op, { ...l.weights, x, out: y } as never, { M }),
              { launches: o.reps, reps: o.samples, samples: o.samples, flushBytes: software ? 0 : 256 << 20 });
            times.set(l.name, ms);
            rows.push([l.name, ms, op.bytesMoved(M)]);
          }
        } finally { dev.free(x); dev.free(y); }
        const int4 = times.get(`int4 g${o.group}`)!;
        for (const [name, ms, bytes] of rows) {
          const gbs = bytes / ms / 1e6;
          const speed = name.startsWith('int4')
            ? ['f16', 'f32'].map((d) => { const t = times.get(`dense ${d}`); return `vs ${d} ${t === undefined ? 'n/a' : `${(t / int4).toFixed(2)}×`}`; }).join(', ')
            : '';
          console.log(`| ${K} | ${N} | ${M} | ${M <= GEMV_MAX_ROWS ? 'gemv' : 'gemm'} | ${name} | ${fmt(ms, 3)} | ${fmt(gbs)} | ${fmt((100 * gbs) / bw, 1)} | ${fmt((2 * M * K * N) / ms / 1e6)} | ${speed} |`);
        }
        if (o.dense) {
          for (const d of ['f16', 'f32']) if (!times.has(`dense ${d}`)) console.log(`| ${K} | ${N} | ${M} | - | dense ${d} | n/a: weight over the 128 MiB binding limit | | | | |`);
        }
      }
    } finally { for (const l of ls) l.free(); }
  }
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  console.log(`# int4: W4A16 linear (AutoAWQ GEMM layout, g = ${o.group}) vs dense f16/f32, ${new Date().toISOString().slice(0, 10)}`);
  console.log(`host: ${os.cpus()[0]?.model ?? '?'} × ${os.availableParallelism()}, node ${process.version}, load average ${os.loadavg()[0]!.toFixed(2)}`);
  console.log(`timing: fastest of ${o.samples} samples of ${o.reps} back-to-back launches, after a warm-up; GB/s over packed weights + scales + zeros + x + y`);
  for (const kind of o.backends) {
    const dev = await openDevice(kind);
    if (typeof dev === 'string') { console.log(`\n## ${kind}: unavailable — ${dev}`); continue; }
    try { await benchDevice(dev, o); } finally { await dev.destroy(); }
  }
}
