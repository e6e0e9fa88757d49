// Kiln's public API.
export { loadModel, LLM, DEFAULT_MODEL, GenerationError } from './llm.js';
export type { LoadOptions, GenerateOptions, GeneratedToken, Quant } from './llm.js';
export { createEngine, Engine, EngineError, RequestHandle, AdmissionError, QueueFullError, kvBytesPerToken } from './engine.js';
export type { EngineOptions, EngineRequest, EngineStats, EngineToken, EngineModel, FinishReason, RequestResult } from './engine.js';
export { Scheduler } from './sched/scheduler.js';
export type { SchedulerOptions, StepPlan, ScheduledSeq } from './sched/scheduler.js';
export { NonFiniteWeightError } from './io/finite.js';
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
