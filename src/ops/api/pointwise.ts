// RMSNorm and RoPE on tensors, each a new output tensor; inputs are checked against the op's
// shapes (naming the tensor) before anything is launched.
import { defaultRmsNormWorkgroup, rmsNorm as rmsNormKernel } from '../../../codegen/kernels/rmsNorm.js';
import { type RopeFrequencies, rope as ropeKernel, ropeTable } from '../../../codegen/kernels/rope.js';
import type { Device } from '../../backend/device.js';
import { expectTensor, type Tensor, tensor, TensorShapeError } from '../tensor.js';

/**
 * out = x / rms(x) · weight per row, for x f32 [M, D] and weight f32 [D]. With `residual` (f32
 * [M, D]) the residual stream is updated in place first (residual += x) and its sum normalised.
 */
export function rmsNorm(device: Device, x: Tensor, weight: Tensor, o: { eps?: number; residual?: Tensor } = {}): Tensor<'f32'> {
  const xs = expectTensor('rmsNorm', 'x', x, 'f32', [null, null], '[M, D]');
  const [M = 0, D = 0] = xs.shape;
  const w = expectTensor('rmsNorm', 'weight', weight, 'f32', [D], '[D]');
  const residual = o.residual && expectTensor('rmsNorm', 'residual', o.residual, 'f32', [M, D], '[M, D]');
  const eps = o.eps ?? 1e-5;
  if (!(eps > 0) || !Number.isFinite(eps)) throw new TensorShapeError(`rmsNorm: eps = ${eps} must be positive and finite`);
  const out = tensor(device, 'f32', [M, D], undefined, 'rmsNorm.out');
  const k = rmsNormKernel({ fused: !!residual, workgroupSize: defaultRmsNormWorkgroup(D, device.caps), caps: device.caps });
  device.launch(k, { x: xs.buffer, w: w.buffer, out: out.buffer, ...(residual ? { residual: residual.buffer } : {}) }, { M, D, eps });
  return out;
}

export interface RopeOptions {
  /** Position of each token (row of q and k): u32, below 2^24. */
  positions: readonly number[];
  /** rope_theta (default 10000). */
  theta?: number;
  /** 'halves' (Llama/HF: pair i with i + D/2, the default) or 'interleaved' (pairs 2i, 2i + 1). */
  layout?: 'halves' | 'interleaved';
  /** Llama-3 frequency scaling or linear interpolation, as in the model's config. */
  scaling?: RopeFrequencies['scaling'];
  linearFactor?: number;
}

/** Rotary embeddings of q f32 [T, Hq, D] and k f32 [T, Hk, D] at their tokens' positions: new q and k. */
export function rope(device: Device, q: Tensor, k: Tensor, o: RopeOptions): { q: Tensor<'f32'>; k: Tensor<'f32'> } {
  const qs = expectTensor('rope', 'q', q, 'f32', [null, null, null], '[T, Hq, D]');
  const [T = 0, Hq = 0, D = 0] = qs.shape;
  const ks = expectTensor('rope', 'k', k, 'f32', [T, null, D], '[T, Hk, D]');
  const Hk = ks.shape[1] ?? 0;
  if (o.positions.length !== T) throw new TensorShapeError(`rope: ${o.positions.length} positions for ${T} tokens`);
  o.positions.forEach((p, i) => {
    if (!Number.isInteger(p) || p < 0 || p >= 1 << 24) throw new TensorShapeError(`rope: positions[${i}] = ${p} is not an integer in [0, 2^24)`);
  });
  const maxPos = Math.max(0, ...o.positions) + 1;
  // cos/sin computed in float64 on the host (rope.ts says why), for positions 0..maxPos − 1.
  const table = tensor(device, 'f32', [maxPos, D / 2, 2], ropeTable({
    headDim: D, theta: o.theta ?? 10000,
    ...(o.scaling ? { scaling: o.scaling } : {}), ...(o.linearFactor !== undefined ? { linearFactor: o.linearFactor } : {}),
  }, maxPos), 'rope.table');
  const pos = tensor(device, 'u32', [T], Uint32Array.from(o.positions), 'rope.positions');
  const qOut = tensor(device, 'f32', [T, Hq, D], undefined, 'rope.q');
  const kOut = tensor(device, 'f32', [T, Hk, D], undefined, 'rope.k');
  const kern = ropeKernel({ layout: o.layout ?? 'halves', inPlace: false, caps: device.caps });
  device.launch(kern, { q: qs.buffer, k: ks.buffer, qOut: qOut.buffer, kOut: kOut.buffer, pos: pos.buffer, table: table.buffer }, { T, Hq, Hk, D, maxPos });
  // Launches are ordered with later frees: the inputs stay valid for the queued launch.
  table.free();
  pos.free();
  return { q: qOut, k: kOut };
}
