// Round-to-nearest INT4 quantization with a zero point per group, as AutoAWQ's
// pseudo_quantize_tensor does it (AWQ without the activation-aware scale search): per group of g
// inputs of one output column, s = (max − min)/15, z = clamp(−round(min/s), 0, 15),
// q = clamp(round(w/s) + z, 0, 15). The scale is rounded to f16 first (it is stored as f16), so
// q and z are chosen for the scale the kernels will actually use.
import { type AwqTensors, checkAwqShape, packAwqRows } from './awq.js';
import { f16BitsToF32, f32ToF16Bits } from './f16.js';

export type WeightLayout =
  /** [K, N]: input-major, as AutoAWQ packs and the kernels read. */
  | 'KN'
  /** [N, K]: output-major, as torch.nn.Linear (and Hugging Face checkpoints) store weights. */
  | 'NK';

/** Smallest scale: keeps a constant group (max = min) finite, as AutoAWQ's clamp(min=1e-5). */
const MIN_RANGE = 1e-5;

/** Quantize W (either layout) to AutoAWQ GEMM tensors with group size g along K. */
export function quantizeRtnInt4(w: ArrayLike<number>, K: number, N: number, groupSize: number, layout: WeightLayout): AwqTensors {
  checkAwqShape(K, N, groupSize, 'quantizeRtnInt4');
  if (w.length !== K * N) throw new Error(`quantizeRtnInt4: weight has ${w.length} elements, expected K·N = ${K}·${N}`);
  const at = layout === 'KN' ? (k: number, n: number) => w[k * N + n]! : (k: number, n: number) => w[n * K + k]!;
  const G = K / groupSize;
  const q = new Uint8Array(K * N);
  const z = new Uint8Array(G * N);
  const scales = new Uint16Array(G * N);
  for (let g = 0; g < G; g++) {
    for (let n = 0; n < N; n++) {
      let lo = Infinity, hi = -Infinity;
      for (let k = g * groupSize; k < (g + 1) * groupSize; k++) {
        const v = at(k, n);
        if (!Number.isFinite(v)) throw new Error(`quantizeRtnInt4: weight [k=${k}, n=${n}] is ${v}`);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      // The grid always holds 0 (q = z), so a group that does not straddle 0 is widened to reach
      // it; AutoAWQ would clip such a group instead (real weight groups straddle 0: same result).
      lo = Math.min(lo, 0);
      hi = Math.max(hi, 0);
      // MIN_RANGE / 15 is above f16's smallest subnormal, so the scale never rounds to 0.
      const sBits = f32ToF16Bits(Math.max(hi - lo, MIN_RANGE) / 15);
      const s = f16BitsToF32(sBits);
      scales[g * N + n] = sBits;
      const zero = clamp(-roundHalfEven(lo / s), 0, 15);
      z[g * N + n] = zero;
      for (let k = g * groupSize; k < (g + 1) * groupSize; k++) {
        q[k * N + n] = clamp(roundHalfEven(at(k, n) / s) + zero, 0, 15);
      }
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
