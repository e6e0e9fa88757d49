// kiln/browser: the runtime in a web page. Models come by URL (a folder holding config.json,
// tokenizer.json and safetensors) or as File objects; they run on WebGPU (navigator.gpu) or on the
// CPU executor — in Web Workers over SharedArrayBuffer when the page is cross-origin isolated,
// else on the main thread. The LLM it returns is Node's: generate / complete / chat / logits and
// its engine.
import type { Device } from '../backend/device.js';
import { isSoftware } from '../backend/webgpu/adapter.js';
import { type LLM, type LoadOptions, loadOpenedModel } from '../llm.js';
import { platform } from '../platform/index.js';
import { type DownloadProgress, fetchModel, type ModelSource } from './fetchModel.js';

export { LLM, GenerationError, type GenerateOptions, type GeneratedToken } from '../llm.js';
export { createEngine, Engine, EngineError, RequestHandle, type EngineOptions, type EngineRequest, type EngineStats, type RequestResult } from '../engine.js';
export type { ChatMessage } from '../io/tokenizer.js';
export type { Device } from '../backend/device.js';
export { fetchModel, type DownloadProgress, type FetchOptions, type FileLike, type ModelSource } from './fetchModel.js';

export type BrowserDevice = 'webgpu' | 'cpu' | 'auto';

export interface BrowserLoadOptions extends Omit<LoadOptions, 'device' | 'tuneCache' | 'onProgress'> {
  /** 'auto' (default): WebGPU on a hardware adapter, else cpu; 'webgpu' takes a software adapter too. */
  device?: BrowserDevice | Device;
  /** Bytes downloaded per file (model.safetensors streams; total from Content-Length). */
  onDownload?: (p: DownloadProgress) => void;
  /** Tensors uploaded to the device so far, of all. */
  onUpload?: (done: number, total: number) => void;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

/** Whether the cpu device gets Web Workers here (SharedArrayBuffer needs cross-origin isolation). */
export const cpuWorkersAvailable = (): boolean => platform.sharedMemory;

/**
 * 'auto' → webgpu on a hardware adapter, else cpu — as createDevice('auto') in Node: a software
 * adapter (SwiftShader) decodes several times slower than the cpu device (bench/notes/browser.md),
 * so it is used only when asked for by name.
 */
async function pickDevice(kind: BrowserDevice): Promise<'webgpu' | 'cpu'> {
  if (kind === 'webgpu' || kind === 'cpu') return kind;
  if (kind !== 'auto') throw new Error(`device '${String(kind)}' is not webgpu, cpu or auto`);
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu) return 'cpu';
  try {
    const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    return adapter && !isSoftware(adapter) ? 'webgpu' : 'cpu';
  } catch {
    return 'cpu';
  }
}

/**
 * Loads a model in the page: `loadModel('/model/', { device: 'webgpu' })`, or the files of a
 * model folder from an <input type="file" multiple>.
 */
export async function loadModel(source: ModelSource, opts: BrowserLoadOptions = {}): Promise<LLM> {
  const { onDownload, onUpload, fetch, device, ...rest } = opts;
  // Files first: a bad URL fails before any device is opened.
  const files = await fetchModel(source, { onDownload, allowUnusedTensors: opts.allowUnusedTensors, fetch });
  let chosen: Device | 'webgpu' | 'cpu';
  try {
    chosen = typeof device === 'object' ? device : await pickDevice(device ?? 'auto');
  } catch (e) {
    files.weights.close();
    throw e;
  }
  // loadOpenedModel creates a device named by kind (and closes it with the model); a passed one stays the caller's.
  return loadOpenedModel(() => files, { ...rest, device: chosen, tuneCache: false, onProgress: onUpload });
}
