// Round-to-nearest INT4 quantization with a zero point per group, bit for bit as AutoAWQ's
// pseudo_quantize_tensor computes it on a half-precision layer. PyTorch evaluates each half op in
// f32 and rounds the result to f16, so every step below is rounded to f16 in turn:
//   max, min of the group (f16 already; no widening to include 0)
//   scale = f16(f16(max − min).clamp(min = 1e-5) / 15)
//   zero  = clamp(−round(f16(min / scale)), 0, 15)
//   q     = clamp(round(f16(w / scale)) + zero, 0, 15)        round: halves to even (torch.round)
// Rounding w/scale to f16 before rounding to an integer is what makes some codes differ from a
// float64 computation: a quotient just below k + ½ can become exactly k + ½ in f16 and go to even.
// A group that does not straddle 0 gets zero = 0 or 15 and is clipped, as AutoAWQ clips it.
import { type AwqTensors, checkAwqShape, packAwqRows } from './awq.js';
import { f16BitsToF32, f32ToF16Bits } from './f16.js';

export type WeightLayout =
  /** [K, N]: input-major, as AutoAWQ packs and the kernels read. */
  | 'KN'
  /** [N, K]: output-major, as torch.nn.Linear (and Hugging Face checkpoints) store weights. */
  | 'NK';

/** AutoAWQ's clamp(min=1e-5) on the range, as the half it becomes. */
const MIN_RANGE = f16BitsToF32(f32ToF16Bits(1e-5));

/** Round to f16 and back, as a half tensor stores an op's f32 result. */
export function h(v: number): number {
  return f16BitsToF32(f32ToF16Bits(Math.fround(v)));
}

/**
 * One group of f16 values w[off + i·stride] (i < g), AutoAWQ's rule: writes the codes to
 * codes[codeOff + i·codeStride] and returns the scale's f16 bits and the zero point.
 */
export function quantizeGroupF16(
  w: ArrayLike<number>, off: number, stride: number, g: number,
  codes: Uint8Array, codeOff: number, codeStride: number,
): { scaleBits: number; zero: number } {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < g; i++) {
    const v = w[off + i * stride]!;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  let range = h(hi - lo);
  if (range < 1e-5) range = MIN_RANGE;
  const scaleBits = f32ToF16Bits(Math.fround(range / 15));
  const s = f16BitsToF32(scaleBits);
  const zero = clamp(-roundHalfEven(h(lo / s)), 0, 15);
  for (let i = 0; i < g; i++) codes[codeOff + i * codeStride] = clamp(roundHalfEven(h(w[off + i * stride]! / s)) + zero, 0, 15);
  return { scaleBits, zero };
}

/** Quantize W (either layout) to AutoAWQ GEMM tensors with group size g along K. */
export function quantizeRtnInt4(w: ArrayLike<number>, K: number, N: number, groupSize: number, layout: WeightLayout): AwqTensors {
  checkAwqShape(K, N, groupSize, 'quantizeRtnInt4');
  if (w.length !== K * N) throw new Error(`quantizeRtnInt4: weight has ${w.length} elements, expected K·N = ${K}·${N}`);
  // AutoAWQ quantizes a half-precision layer: f32/bf16 sources are rounded to f16 first.
  const half = new Float32Array(K * N);
  for (let i = 0; i < half.length; i++) {
    const v = w[i]!;
    if (!Number.isFinite(v)) {
      const [k, n] = layout === 'KN' ? [Math.floor(i / N), i % N] : [i % K, Math.floor(i / K)];
      throw new Error(`quantizeRtnInt4: weight [k=${k}, n=${n}] is ${v}`);
    }
    half[i] = h(v);
  }
  const G = K / groupSize;
  const q = new Uint8Array(K * N);
  const z = new Uint8Array(G * N);
  const scales = new Uint16Array(G * N);
  // Element (k, n) sits at k·kStride + n·nStride in either layout.
  const [kStride, nStride] = layout === 'KN' ? [N, 1] : [1, K];
  for (let g = 0; g < G; g++) {
    for (let n = 0; n < N; n++) {
      const r = quantizeGroupF16(half, g * groupSize * kStride + n * nStride, kStride, groupSize, q, g * groupSize * N + n, N);
      scales[g * N + n] = r.scaleBits;
      z[g * N + n] = r.zero;
    }
  }
  return { K, N, groupSize, qweight: packAwqRows(q, K, N), qzeros: packAwqRows(z, G, N), scales };
}

/** torch.round: halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}
