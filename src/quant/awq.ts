// The AutoAWQ GEMM layout (version "gemm"), as checkpoints store it. For y = x·W with W [K, N]
// (K inputs, N outputs) and group size g along K:
//   qweight int32 [K, N/8]   nibble i (bits 4i..4i+3) of word (k, c) holds q[k, 8c + AWQ_ORDER[i]]
//   qzeros  int32 [K/g, N/8] zero points z[k/g, n], interleaved the same way
//   scales  f16   [K/g, N]
//   W[k, n] = (q[k, n] − z[⌊k/g⌋, n]) · s[⌊k/g⌋, n]
// Words are bit patterns: as int32 they are often negative.
import { f16BitsToF32 } from './f16.js';

/** Column offset (within its group of 8) held by nibble i. */
export const AWQ_ORDER: readonly number[] = [0, 2, 4, 6, 1, 3, 5, 7];
/** Nibble that holds column offset j: the inverse of AWQ_ORDER. */
export const AWQ_NIBBLE_OF_COLUMN: readonly number[] = AWQ_ORDER.map((_, j) => AWQ_ORDER.indexOf(j));

export const AWQ_GROUP_SIZES: readonly number[] = [32, 64, 128];

export interface AwqTensors {
  K: number;
  N: number;
  groupSize: number;
  /** [K, N/8] */
  qweight: Int32Array;
  /** [K/g, N/8] */
  qzeros: Int32Array;
  /** [K/g, N], f16 bits. */
  scales: Uint16Array;
}

/** Throws naming the parameter when (K, N, g) cannot be an AWQ GEMM layer. */
export function checkAwqShape(K: number, N: number, groupSize: number, what = 'AWQ layer'): void {
  if (!Number.isInteger(K) || K < 1) throw new Error(`${what}: K = ${K} is not a positive integer`);
  if (!Number.isInteger(N) || N < 1) throw new Error(`${what}: N = ${N} is not a positive integer`);
  if (!AWQ_GROUP_SIZES.includes(groupSize)) throw new Error(`${what}: group size ${groupSize} is not one of ${AWQ_GROUP_SIZES.join(', ')}`);
  if (K % groupSize) throw new Error(`${what}: K = ${K} is not a multiple of the group size ${groupSize}`);
  if (N % 8) throw new Error(`${what}: N = ${N} is not a multiple of 8 (8 columns per packed int32 word)`);
}

/** Pack 4-bit values q [rows, N] (row-major, 0..15) into AutoAWQ words [rows, N/8]. */
export function packAwqRows(q: ArrayLike<number>, rows: number, N: number): Int32Array {
  if (N % 8) throw new Error(`packAwqRows: N = ${N} is not a multiple of 8`);
  if (q.length !== rows * N) throw new Error(`packAwqRows: ${q.length} values, expected rows·N = ${rows}·${N}`);
  const W = N / 8;
  const out = new Int32Array(rows * W);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < W; c++) {
      let word = 0;
      for (let i = 0; i < 8; i++) {
        const v = q[r * N + 8 * c + AWQ_ORDER[i]!]!;
        if (!Number.isInteger(v) || v < 0 || v > 15) throw new Error(`packAwqRows: value ${v} at [${r}, ${8 * c + AWQ_ORDER[i]!}] is not in 0..15`);
        word |= v << (4 * i);
      }
      out[r * W + c] = word;
    }
  }
  return out;
}

/** Unpack AutoAWQ words [rows, N/8] into 4-bit values [rows, N]. */
export function unpackAwqRows(words: Int32Array | Uint32Array, rows: number, N: number): Uint8Array {
  const W = N / 8;
  if (words.length !== rows * W) throw new Error(`unpackAwqRows: ${words.length} words, expected rows·N/8 = ${rows}·${W}`);
  const out = new Uint8Array(rows * N);
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < N; n++) {
      out[r * N + n] = (words[r * W + (n >> 3)]! >>> (4 * AWQ_NIBBLE_OF_COLUMN[n & 7]!)) & 0xf;
    }
  }
  return out;
}

/** W [K, N] in float64, the reference every INT4 kernel test compares against. */
export function dequantizeAwq(t: AwqTensors): Float64Array {
  const { K, N, groupSize } = t;
  // Any group size dividing K: the reference also serves checkpoints the kernels do not take.
  if (!(groupSize > 0 && K % groupSize === 0 && N % 8 === 0)) throw new Error(`dequantizeAwq: K = ${K} must be a multiple of the group size ${groupSize} and N = ${N} of 8`);
  const q = unpackAwqRows(t.qweight, K, N);
  const z = unpackAwqRows(t.qzeros, K / groupSize, N);
  const out = new Float64Array(K * N);
  for (let k = 0; k < K; k++) {
    const g = Math.floor(k / groupSize);
    for (let n = 0; n < N; n++) {
      out[k * N + n] = (q[k * N + n]! - z[g * N + n]!) * f16BitsToF32(t.scales[g * N + n]!);
    }
  }
  return out;
}
