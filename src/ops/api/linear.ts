// Linear layers on tensors: weights uploaded once in the kernels' layout (AutoAWQ INT4 exactly as
// stored, or dense f32/f16), then `linear(device, weights, x)` → y = x·W (+ bias, + residual).
import { denseLinear, type DenseWeightDtype, denseWeightLayout } from '../../../codegen/kernels/denseMatmul.js';
import { int4Linear, int4WeightLayout } from '../../../codegen/kernels/int4Matmul.js';
import type { WeightLayout } from '../../../codegen/kernels/weightLayout.js';
import type { LinearChoiceInput, LinearOp } from '../../../codegen/kernels/linearOp.js';
import type { Device, DeviceBuffer } from '../../backend/device.js';
import type { AwqTensors } from '../../quant/awq.js';
import { linearHints, runLinear, uploadDense, uploadInt4 } from '../linear.js';
import { expectTensor, Tensor } from '../tensor.js';
import { PerDevice } from './cache.js';

/** INT4 weights in the AutoAWQ GEMM layout (qweight [K, N/8], qzeros [K/g, N/8], f16 scales [K/g, N] in pairs). */
export interface AwqWeights {
  kind: 'int4';
  K: number;
  N: number;
  groupSize: number;
  /** How qweight lies in device memory (the device's choice: 'strips' on the cpu device). */
  layout: WeightLayout;
  qweight: DeviceBuffer<'u32'>;
  qzeros: DeviceBuffer<'u32'>;
  scales: DeviceBuffer<'u32'>;
}

/** Dense weights [K, N] input-major: f32, or f16 packed two per u32 word [K, N/2]. */
export interface DenseWeights {
  kind: 'dense';
  K: number;
  N: number;
  dtype: DenseWeightDtype;
  /** How w lies in device memory (the device's choice: 'strips' on the cpu device). */
  layout: WeightLayout;
  w: DeviceBuffer<'f32'> | DeviceBuffer<'u32'>;
}

export type LinearWeights = AwqWeights | DenseWeights;

/**
 * Upload a dense weight. `weight` is [K, N] (layout 'KN', the default: y = x·W) or torch's
 * nn.Linear [N, K] ('NK'); stored as `dtype` (f16 rounds to half).
 */
export function denseWeights(device: Device, w: { weight: ArrayLike<number>; K: number; N: number; dtype?: DenseWeightDtype; layout?: 'KN' | 'NK'; label?: string }): DenseWeights {
  const dtype = w.dtype ?? 'f32';
  const layout = denseWeightLayout(dtype, w.N, linearHints(device).weightLayout);
  const buf = uploadDense(device, w.weight, w.K, w.N, dtype, w.layout ?? 'KN', w.label ?? 'dense', layout);
  return { kind: 'dense', K: w.K, N: w.N, dtype, layout, w: buf };
}

/** Upload AutoAWQ GEMM tensors exactly as a checkpoint stores them (scales: f16 bits). */
export function awqWeights(device: Device, t: AwqTensors & { label?: string }): AwqWeights {
  const layout = int4WeightLayout(t.N, linearHints(device).weightLayout);
  const up = uploadInt4(device, t, t.label ?? 'awq', layout);
  return { kind: 'int4', K: up.K, N: up.N, groupSize: up.groupSize, layout, qweight: up.qweight, qzeros: up.qzeros, scales: up.scales };
}

/** Free the device buffers of uploaded weights. */
export function freeLinearWeights(device: Device, w: LinearWeights): void {
  if (w.kind === 'int4') for (const b of [w.qweight, w.qzeros, w.scales]) device.free(b);
  else device.free(w.w);
}

export interface LinearOptions {
  /** + bias[n]: f32 [N]. */
  bias?: Tensor;
  /** + residual[m, n] after the product: f32 [M, N]. */
  residual?: Tensor;
  /** A variant choice (split-K, GEMV schedule, GEMM tiles), e.g. from `kiln tune`. */
  choice?: LinearChoiceInput;
}

const ops = new PerDevice<LinearOp>();

/** The op for these weights on this device (built once: kernels compile once per device). */
function linearOpFor(device: Device, w: LinearWeights, o: LinearOptions): LinearOp {
  const epi = { bias: !!o.bias, residual: !!o.residual };
  return ops.get(device, [w.kind, w.K, w.N, w.kind === 'int4' ? w.groupSize : w.dtype, w.layout, epi, o.choice ?? null], () => {
    const hints = linearHints(device);
    const choice = o.choice ?? hints.choice;
    const base = { K: w.K, N: w.N, caps: hints.caps, parallelism: hints.parallelism, deviceClass: hints.deviceClass, weightLayout: w.layout, ...(choice ? { choice } : {}), ...epi };
    return w.kind === 'int4' ? int4Linear({ ...base, groupSize: w.groupSize }) : denseLinear({ ...base, weight: w.dtype });
  });
}

/** y = x·W (+ bias) (+ residual) for x f32 [M, K]: a new f32 [M, N] tensor. */
export function linear(device: Device, w: LinearWeights, x: Tensor, o: LinearOptions = {}): Tensor<'f32'> {
  const what = `linear (K = ${w.K}, N = ${w.N})`;
  const xs = expectTensor(what, 'x', x, 'f32', [null, w.K], '[M, K]');
  const M = xs.shape[0] ?? 0;
  const bias = o.bias && expectTensor(what, 'bias', o.bias, 'f32', [w.N], '[N]');
  const residual = o.residual && expectTensor(what, 'residual', o.residual, 'f32', [M, w.N], '[M, N]');
  const op = linearOpFor(device, w, o);
  const out = device.alloc('f32', [M, w.N], 'linear.out');
  const bindings: Record<string, DeviceBuffer> = w.kind === 'int4'
    ? { x: xs.buffer, qweight: w.qweight, qzeros: w.qzeros, scales: w.scales, out }
    : { x: xs.buffer, w: w.w, out };
  if (bias) bindings.bias = bias.buffer;
  if (residual) bindings.residual = residual.buffer;
  try {
    runLinear(device, op, bindings, M);
  } catch (e) {
    device.free(out);
    throw e;
  }
  return new Tensor(device, out);
}
