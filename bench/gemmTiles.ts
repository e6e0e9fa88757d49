// `npm run bench -- gemm-tiles`: the linear layers' tiled GEMM (M > GEMV_MAX_ROWS) with several
// tilings on one device, side by side: every tiling is timed in each round (interleaved, so
// machine noise hits them alike), best of the rounds, and each row's time relative to the first
// tiling. For choosing a device's default tile (src/ops/linear.ts linearHints): the GEMM computes
// whole tiles, so its cost steps with ceil(M / tileM).
//
//   npm run bench -- gemm-tiles [--device cpu] [--shapes 256x1536,768x256] [--ms 9,16,64]
//     [--tiles 16x32x32/4x8,32x32x32/2x4,r4u4v1w16] (tiled: tileM x tileN x tileK / blockM x blockN;
//     register GEMM, linearGemmRows.ts: r rows u units v vec w workgroup size [c chunk b block: staged
//     weights, dense only]; first = baseline)
//     [--rounds 3] [--group 128]
import { denseLinear, denseWeightLayout } from '../codegen/kernels/denseMatmul.js';
import { int4Linear, int4WeightLayout } from '../codegen/kernels/int4Matmul.js';
import type { GemmVariant } from '../codegen/kernels/linearGemm.js';
import { type GemmRowsVariant, gemmRowsName } from '../codegen/kernels/linearGemmRows.js';
import { GEMV_MAX_ROWS } from '../codegen/kernels/linearOp.js';
import type { BackendKind, DeviceBuffer } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { timeOnDevice } from '../src/backend/timing.js';
import { linearHints, uploadDense, uploadInt4 } from '../src/ops/linear.js';
import { randomF32, randomWords } from './common.js';

interface Options { device: BackendKind; shapes: [number, number][]; ms: number[]; tiles: Tile[]; rounds: number; group: number }

type Tile = { gemm: GemmVariant } | { gemmRows: GemmRowsVariant };

function parseTile(s: string): Tile {
  const r = /^r(\d+)u(\d+)v([124])w(\d+)(?:c(\d+)b(\d+))?$/.exec(s);
  if (r) {
    const [rows, units, vec, workgroupSize, chunk, block] = r.slice(1).map(Number) as [number, number, 1 | 2 | 4, number, number, number];
    return { gemmRows: { rows, units, workgroupSize, ...(vec > 1 ? { vec } : {}), ...(chunk ? { staged: { chunk, block } } : {}) } };
  }
  const m = /^(\d+)x(\d+)x(\d+)\/(\d+)x(\d+)$/.exec(s);
  if (!m) throw new Error(`gemm-tiles --tiles: '${s}' is neither tileMxtileNxtileK/blockMxblockN (e.g. 16x32x32/4x8) nor r<rows>u<units>v<vec>w<workgroup> (e.g. r4u4v1w16)`);
  const [tileM, tileN, tileK, blockM, blockN] = m.slice(1).map(Number) as [number, number, number, number, number];
  return { gemm: { tileM, tileN, tileK, blockM, blockN } };
}

function parse(args: string[]): Options {
  const o: Options = {
    device: 'cpu', shapes: [[256, 1536], [768, 256]], ms: [9, 16, 64],
    tiles: ['16x32x32/4x8', '32x32x32/2x4'].map(parseTile), rounds: 3, group: 128,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const v = () => { const x = args[++i]; if (x === undefined) throw new Error(`gemm-tiles: ${a} needs a value`); return x; };
    const ints = (x: string) => x.split(',').map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 1) throw new Error(`gemm-tiles ${a}: '${s}' is not a positive integer`);
      return n;
    });
    if (a === '--device') o.device = v() as BackendKind;
    else if (a === '--shapes') o.shapes = v().split(',').map((s) => { const [K, N] = ints(s.replace('x', ',')); return [K!, N!]; });
    else if (a === '--ms') o.ms = ints(v());
    else if (a === '--tiles') o.tiles = v().split(',').map(parseTile);
    else if (a === '--rounds') o.rounds = ints(v())[0]!;
    else if (a === '--group') o.group = ints(v())[0]!;
    else throw new Error(`gemm-tiles: unknown option '${a}' (see the header of bench/gemmTiles.ts)`);
  }
  const small = o.ms.filter((m) => m <= GEMV_MAX_ROWS);
  if (small.length) throw new Error(`gemm-tiles --ms: ${small.join(', ')} run the GEMV (M ≤ ${GEMV_MAX_ROWS}), not the GEMM`);
  return o;
}

const tileName = (t: Tile) => {
  if ('gemmRows' in t) return gemmRowsName(t.gemmRows);
  const v = t.gemm;
  return `${v.tileM}x${v.tileN}x${v.tileK}/${v.blockM}x${v.blockN}`;
};

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const dev = await createDevice(o.device);
  const hints = linearHints(dev);
  const g = o.group;
  console.log(`gemm-tiles on ${dev.description}: ms per launch, best of ${o.rounds} interleaved rounds; (×) = time / ${tileName(o.tiles[0]!)}\n`);
  console.log(`| K × N | M | weights | ${o.tiles.map(tileName).join(' | ')} |`);
  console.log(`|---|---:|---|${o.tiles.map(() => '---:').join('|')}|`);
  try {
    for (const [K, N] of o.shapes) {
      const q = uploadInt4(dev, {
        K, N, groupSize: g, qweight: randomWords((K * N) / 8, 1), qzeros: randomWords(((K / g) * N) / 8, 2),
        scales: Uint16Array.from({ length: (K / g) * N }, (_, i) => 0x1c00 + (i % 512)),
      }, 'int4', int4WeightLayout(N, hints.weightLayout));
      const wf = uploadDense(dev, randomF32(K * N, 4, 0.05), K, N, 'f16', 'KN', 'f16', denseWeightLayout('f16', N, hints.weightLayout));
      const layers: [string, (tile: Tile) => ReturnType<typeof denseLinear>, Record<string, DeviceBuffer>][] = [
        ['f16', (tile) => denseLinear({ K, N, weight: 'f16', ...hints, choice: { ...tile } }), { w: wf }],
        [`int4 g${g}`, (tile) => int4Linear({ K, N, groupSize: g, ...hints, choice: { ...tile } }), { qweight: q.qweight, qzeros: q.qzeros, scales: q.scales }],
      ];
      for (const M of o.ms) {
        const x = dev.alloc('f32', M * K, 'x'), y = dev.alloc('f32', M * N, 'y');
        dev.write(x, randomF32(M * K, 5, 1));
        for (const [name, build, weights] of layers) {
          const best = o.tiles.map(() => Infinity);
          for (let r = 0; r < o.rounds; r++) {
            for (const [i, tile] of o.tiles.entries()) {
              let op: ReturnType<typeof build>;
              try { op = build(tile); } catch { continue; } // not for these weights (e.g. staged INT4): '—'
              const { ms } = await timeOnDevice(dev, () => dev.run(op, { ...weights, x, out: y } as never, { M }),
                { launches: 4, reps: 3, samples: 3, flushBytes: 0 });
              best[i] = Math.min(best[i]!, ms);
            }
          }
          console.log(`| ${K} × ${N} | ${M} | ${name} | ${best.map((t) => (t === Infinity ? '—' : `${t.toFixed(2)} (${(t / best[0]!).toFixed(2)}×)`)).join(' | ')} |`);
        }
        dev.free(x); dev.free(y);
      }
      dev.free(q.qweight); dev.free(q.qzeros); dev.free(q.scales); dev.free(wf);
    }
  } finally {
    await dev.destroy();
  }
}
