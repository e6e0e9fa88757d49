// Weights are scanned for NaN and ±Inf once at load: one bad value makes every logit NaN, and a
// model that loads but only ever fails is worse than a clear error naming the tensor.
import type { TensorStore } from './safetensors.js';

export class NonFiniteWeightError extends Error {}

/** Exponent bits all ones: NaN or ±Inf (by bits, so the check reads each value once). */
function firstNonFinite(dtype: string, bytes: Uint8Array): number {
  if (dtype === 'F32') {
    const n = bytes.byteLength >> 2;
    const w = bytes.byteOffset % 4 === 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, n) : new Uint32Array(bytes.slice().buffer, 0, n);
    for (let i = 0; i < n; i++) if ((w[i]! & 0x7f800000) === 0x7f800000) return i;
    return -1;
  }
  if (dtype === 'F16' || dtype === 'BF16') {
    const mask = dtype === 'F16' ? 0x7c00 : 0x7f80;
    const n = bytes.byteLength >> 1;
    const h = bytes.byteOffset % 2 === 0 ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint16Array(bytes.slice().buffer, 0, n);
    for (let i = 0; i < n; i++) if ((h[i]! & mask) === mask) return i;
    return -1;
  }
  return -1; // integer tensors (AWQ qweight/qzeros) hold no floats
}

/** Throws NonFiniteWeightError naming the first tensor and index holding NaN or ±Inf. */
export function checkFiniteWeights(store: TensorStore): void {
  for (const name of store.names()) {
    const info = store.info(name);
    const i = firstNonFinite(info.dtype, store.bytes(name));
    if (i >= 0) {
      const at = info.shape.length > 1 ? ` [${unravel(i, info.shape).join(', ')}]` : '';
      throw new NonFiniteWeightError(`${info.source}: tensor '${name}' holds a non-finite value (NaN or ±Inf) at index ${i}${at}; load with allowNonFinite: true to load it anyway`);
    }
  }
}

function unravel(i: number, shape: readonly number[]): number[] {
  const out: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) { out.unshift(i % shape[d]!); i = Math.floor(i / shape[d]!); }
  return out;
}
