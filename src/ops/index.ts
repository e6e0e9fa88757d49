// `kiln/ops`: run one kernel family on your own tensors. Upload typed tensors and weights (AutoAWQ
// tensors exactly as stored, or dense), call an op on a device, `await t.read()` the result.
export { createDevice } from '../backend/index.js';
export type { Device, DeviceBuffer, HostArray } from '../backend/device.js';
export { Tensor, tensor, TensorShapeError, type TensorData } from './tensor.js';
export {
  awqWeights, denseWeights, freeLinearWeights, linear,
  type AwqWeights, type DenseWeights, type LinearOptions, type LinearWeights,
} from './api/linear.js';
export { rmsNorm, rope, type RopeOptions } from './api/pointwise.js';
export { appendKv, pagedAttention, type AttentionOptions, type KvCacheTensors } from './api/attention.js';
export { accept, acceptGreedy, sample, type Acceptance } from './api/sampling.js';
export type { RaggedSequence } from './attention.js';
export { AttentionInputError } from './attention.js';
export { LinearShapeError } from './linear.js';
export { SamplingInputError, type DraftSequence, type SamplingRequest } from './sampling.js';
// Host-side helpers: AutoAWQ packing, RTN quantization, IEEE half conversion.
export {
  AWQ_GROUP_SIZES, AWQ_ORDER, type AwqTensors, checkAwqShape, dequantizeAwq, packAwqRows, unpackAwqRows,
} from '../quant/awq.js';
export { quantizeRtnInt4, type WeightLayout } from '../quant/rtn.js';
export { f16BitsToF32, f32ArrayToF16, f32ToF16Bits, packF16Pairs, unpackF16Pairs } from '../quant/f16.js';
