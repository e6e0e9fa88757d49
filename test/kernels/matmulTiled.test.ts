// Tiled f32 matmul against a float64 reference, at shapes that are and are not tile multiples,
// under two tilings; plus launches that must be refused before any device work.
import { describe, expect, it } from 'vitest';
import {
  MATMUL_TILED_SPACE, type MatmulTiledParams, matmulTiled, matmulTiledDefaults, matmulTiledLabel,
} from '../../codegen/kernels/matmulTiled.js';
import { LaunchError } from '../../src/backend/device.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, relErr, rng } from '../util.js';
import { Buffers } from './buffers.js';

function matmulRef(A: Float32Array, B: Float32Array, M: number, N: number, K: number): Float64Array {
  const C = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let kk = 0; kk < K; kk++) {
      const a = A[i * K + kk]!;
      for (let j = 0; j < N; j++) C[i * N + j]! += a * B[kk * N + j]!;
    }
  }
  return C;
}

const TILINGS: MatmulTiledParams[] = [
  {}, // the device default
  { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 }, // the default for small problems
  { tileM: 32, tileN: 32, tileK: 8, blockM: 2, blockN: 2 },
  { tileM: 16, tileN: 32, tileK: 16, blockM: 1, blockN: 4 },
];
const SHAPES: [number, number, number][] = [[1, 1, 1], [17, 33, 65], [64, 64, 64], [100, 37, 129]];

forEachBackend('matmulTiled', (dev) => {
  for (const tiling of TILINGS) {
    const kernel = matmulTiled({ ...tiling, caps: dev.caps });
    const label = matmulTiledLabel({ ...matmulTiledDefaults(dev.caps), ...tiling });
    for (const [M, N, K] of SHAPES) {
      it(`${label}: ${M}x${N}x${K}`, async () => {
        const r = rng(freshSeed(`matmul ${label} ${M}x${N}x${K}`));
        const A = randomF32(M * K, r), B = randomF32(K * N, r);
        const bufs = new Buffers(dev);
        try {
          const C = bufs.output('f32', M * N, 'C');
          dev.launch(kernel, { A: bufs.input('f32', A, 'A'), B: bufs.input('f32', B, 'B'), C }, { M, N, K });
          const err = relErr(await bufs.read(C), matmulRef(A, B, M, N, K));
          expect(err).toBeLessThan(2e-6); // measured 2.1e-7 (max measured on cpu, cpu-js and llvmpipe; bound ≤ 10×; re-derive with test/measure)
        } finally { bufs.free(); }
      });
    }
  }

  // Every variant `kiln tune` may pick, at one shape that is a multiple of no tile.
  for (const tiling of MATMUL_TILED_SPACE) {
    const label = matmulTiledLabel(tiling);
    it(`${label}: 37x45x29`, async () => {
      const [M, N, K] = [37, 45, 29];
      const r = rng(freshSeed(`matmul ${label} ${M}x${N}x${K}`));
      const A = randomF32(M * K, r), B = randomF32(K * N, r);
      const bufs = new Buffers(dev);
      try {
        const C = bufs.output('f32', M * N, 'C');
        dev.launch(matmulTiled({ ...tiling, caps: dev.caps }), { A: bufs.input('f32', A, 'A'), B: bufs.input('f32', B, 'B'), C }, { M, N, K });
        expect(relErr(await bufs.read(C), matmulRef(A, B, M, N, K))).toBeLessThan(1e-6); // measured 1.1e-7
      } finally { bufs.free(); }
    });
  }

  it('refuses a too-small buffer before any device work', async () => {
    const [M, N, K] = [20, 24, 28];
    const r = rng(freshSeed('matmul bad input'));
    const bufs = new Buffers(dev);
    try {
      const A = bufs.input('f32', randomF32(M * K - 1, r), 'A_short');
      const B = bufs.input('f32', randomF32(K * N, r), 'B');
      const C = bufs.output('f32', M * N, 'C');
      expect(() => dev.launch(matmulTiled({ caps: dev.caps }), { A, B, C }, { M, N, K })).toThrow(LaunchError);
      expect(() => dev.launch(matmulTiled({ caps: dev.caps }), { A, B, C }, { M, N, K })).toThrow(/'A'.*needs 560/);
      // Nothing ran: C still holds its poison.
      const out = await bufs.read(C);
      expect(out.every((v) => Number.isNaN(v))).toBe(true);
    } finally { bufs.free(); }
  });
});

describe('matmulTiled parameters', () => {
  it('rejects a tile that is not a multiple of the register block, naming both', () => {
    expect(() => matmulTiled({ tileM: 30, blockM: 4 })).toThrow(/tileM 30 is not a multiple of blockM 4/);
  });
  it('rejects a workgroup over the device limit', () => {
    expect(() => matmulTiled({ tileM: 64, tileN: 64, blockM: 2, blockN: 2 })).toThrow(/1024 invocations exceeds/);
  });
  it('rejects shared tiles over the device limit', () => {
    expect(() => matmulTiled({ tileM: 64, tileN: 64, tileK: 64, blockM: 4, blockN: 4 })).toThrow(/32768 bytes/);
  });
});
