// Kiln's public API.
export { loadModel, LLM, DEFAULT_MODEL, GenerationError } from './llm.js';
export type { LoadOptions, GenerateOptions, GeneratedToken, GenerationStats, Quant } from './llm.js';
export { createDevice } from './backend/index.js';
export type { DeviceOptions } from './backend/index.js';
export type { Device, DeviceBuffer, BackendKind, HostArray } from './backend/device.js';
export { BackendUnavailableError, LaunchError } from './backend/device.js';
export { LlamaForward } from './model/forward.js';
export type { SeqInput, ForwardResult, ForwardOptions } from './model/forward.js';
export { BlockManager, OutOfBlocksError } from './kv/blockManager.js';
export { windowedPerplexity } from './eval.js';
export { openModel } from './io/index.js';
export type { ModelSpec } from './model/spec.js';
