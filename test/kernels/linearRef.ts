// Shared by the INT4 and dense linear tests: random inputs, the float64 reference of the whole
// layer (matmul + epilogue), and running a LinearOp with poisoned outputs.
import type { LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import type { LinearOp } from '../../codegen/kernels/linearOp.js';
import type { Device, DeviceBuffer } from '../../src/backend/device.js';
import { type LinearBindings, runLinear } from '../../src/ops/linear.js';
import { type AwqTensors } from '../../src/quant/awq.js';
import { f16BitsToF32, f32ToF16Bits } from '../../src/quant/f16.js';
import { randomF32 } from '../util.js';
import { Buffers } from './buffers.js';

/** Random AutoAWQ tensors: full-range int32 words (negative ones included), random f16 scales. */
export function randomAwq(K: number, N: number, groupSize: number, r: () => number): AwqTensors {
  const word = () => (Math.floor(r() * 2 ** 32) | 0);
  const qweight = Int32Array.from({ length: (K * N) / 8 }, word);
  const qzeros = Int32Array.from({ length: ((K / groupSize) * N) / 8 }, word);
  // Scales spread over two octaves with random mantissas, as real layers have them.
  const scales = Uint16Array.from({ length: (K / groupSize) * N }, () => f32ToF16Bits((0.002 + 0.006 * r()) * (r() < 0.5 ? 1 : 2)));
  return { K, N, groupSize, qweight, qzeros, scales };
}

/** y = epilogue(x·W) in float64; W [K, Nw] row-major, x [M, K]. */
export function linearRef(x: Float32Array, W: ArrayLike<number>, M: number, K: number, N: number, e: LinearEpilogue,
  bias?: Float32Array, residual?: Float32Array): Float64Array {
  const Nw = e.gateUp ? 2 * N : N;
  const acc = new Float64Array(M * Nw);
  for (let m = 0; m < M; m++) {
    for (let k = 0; k < K; k++) {
      const a = x[m * K + k]!;
      if (a === 0) continue;
      const row = k * Nw, dst = m * Nw;
      for (let n = 0; n < Nw; n++) acc[dst + n]! += a * W[row + n]!;
    }
  }
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let g = acc[m * Nw + n]! + (bias ? bias[n]! : 0);
      if (e.gateUp) {
        const u = acc[m * Nw + N + n]! + (bias ? bias[N + n]! : 0);
        g = (g / (1 + Math.exp(-g))) * u;
      }
      y[m * N + n] = g + (residual ? residual[m * N + n]! : 0);
    }
  }
  return y;
}

export interface LinearInputs {
  x: Float32Array;
  bias?: Float32Array;
  residual?: Float32Array;
}

export function randomInputs(M: number, K: number, N: number, e: LinearEpilogue, r: () => number): LinearInputs {
  return {
    x: randomF32(M * K, r),
    bias: e.bias ? randomF32((e.gateUp ? 2 : 1) * N, r, -0.5, 0.5) : undefined,
    residual: e.residual ? randomF32(M * N, r) : undefined,
  };
}

/** Output as f32 values and as raw bits (for bit-exact comparisons). */
export interface LinearResult { values: Float32Array; bits: Uint32Array }

/**
 * Run `op` for M rows with the given weights (already on the device); out is poisoned first.
 * Returns the output decoded to f32 (f16 output: unpacked) and its raw words.
 */
export async function runOp(dev: Device, op: LinearOp, weights: Record<string, DeviceBuffer>, inp: LinearInputs, M: number): Promise<LinearResult> {
  const bufs = new Buffers(dev);
  try {
    const N = op.N;
    const b: LinearBindings = { ...weights, x: bufs.input('f32', inp.x.subarray(0, M * op.K), 'x') };
    if (inp.bias) b.bias = bufs.input('f32', inp.bias, 'bias');
    if (inp.residual) b.residual = bufs.input('f32', inp.residual.subarray(0, M * N), 'residual');
    const f16 = op.epilogue.out === 'f16';
    const out = f16 ? bufs.output('u32', (M * N) / 2, 'out') : bufs.output('f32', M * N, 'out');
    b.out = out;
    runLinear(dev, op, b, M);
    const raw = await bufs.read(out);
    if (f16) {
      const words = raw as Uint32Array;
      const values = new Float32Array(M * N);
      for (let i = 0; i < M * N; i++) values[i] = f16BitsToF32((words[i >> 1]! >>> ((i & 1) * 16)) & 0xffff);
      return { values, bits: Uint32Array.from(words) };
    }
    const values = Float32Array.from(raw as Float32Array);
    return { values, bits: new Uint32Array(values.buffer.slice(0)) };
  } finally { bufs.free(); }
}

/** Bits of rows [r0, r0 + rows) of a result with `wordsPerRow` words per row. */
export function rowBits(res: LinearResult, r0: number, rows: number, wordsPerRow: number): Uint32Array {
  return res.bits.slice(r0 * wordsPerRow, (r0 + rows) * wordsPerRow);
}

/** Index of the first differing word, or -1. */
export function firstDiff(a: Uint32Array, b: Uint32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}
