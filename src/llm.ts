// The public single-model API: load a model onto a device, then generate. Every request goes
// through the model's engine (src/engine.ts): the same paged KV cache, ragged forward and
// sampling kernels for one request as for many; every request's blocks are freed when it ends,
// however it ends.
import type { BackendKind, Device } from './backend/device.js';
import { createDevice } from './backend/index.js';
import { createEngine, type Engine, EngineError, type EngineModel, type EngineOptions, type EngineRequest, type EngineToken, type RequestHandle } from './engine.js';
import { checkFiniteWeights } from './io/finite.js';
import { type LoadedModel, openModel } from './io/index.js';
import type { ChatMessage, HfTokenizer } from './io/tokenizer.js';
import type { ModelSpec } from './model/spec.js';
import { freeWeights, type ModelWeights, type WeightFormat, uploadWeights } from './model/weights.js';
import { platform } from './platform/index.js';
import { readTuneCache } from './tuneCache.js';

/** The model a fresh clone runs with no --model: brown-target, shipped in models/. */
export const DEFAULT_MODEL = platform.resolvePackagePath('../models/brown-target', import.meta.url);

export type Quant = 'none' | 'f32' | 'f16' | 'int4-rtn';

export interface LoadOptions {
  /** A device, or which kind to create ('auto': cuda, else webgpu on a real GPU, else cpu). */
  device?: BackendKind | 'auto' | Device;
  /** Weight storage: 'none' keeps the checkpoint's precision (f16 stays f16; AWQ stays INT4). */
  quant?: Quant;
  /** INT4 group size for int4-rtn (default 128). */
  groupSize?: number;
  kvDtype?: 'f32' | 'f16';
  /** KV cache blocks of 16 tokens (the engine's kvBlocks; default: sized by kvMemory). */
  numBlocks?: number;
  /** Tokens per forward pass: prefill is chunked to this (the engine's maxBatchedTokens; default 256). */
  maxBatchTokens?: number;
  /** The model's engine: sequences per step, KV memory, scheduling, … (see EngineOptions). */
  engine?: EngineOptions;
  /** Load weights holding NaN or ±Inf (default: refuse, naming the tensor and index). */
  allowNonFinite?: boolean;
  /** Load a checkpoint holding tensors its config.json does not account for (default: refuse, listing them). */
  allowUnusedTensors?: boolean;
  /** Variant cache written by `kiln tune` (default: its default path; false: ignore it). */
  tuneCache?: string | false;
  onProgress?: (done: number, total: number) => void;
}

/** Per-request options of LLM.generate / complete / chat: the engine's request fields. */
export type GenerateOptions = Omit<EngineRequest, 'prompt'>;
export type GeneratedToken = EngineToken;

/** Bad input or a failed generation (the engine's EngineError). */
export const GenerationError = EngineError;
export type GenerationError = EngineError;

/**
 * A loaded model: weights on a device, a tokenizer, and one engine that serves every request
 * made through generate / complete / chat / logits — one code path for one request and many.
 * createEngine(llm, options) makes further engines over the same weights.
 */
export class LLM implements EngineModel {
  private readonly engines = new Set<Engine>();
  private mainEngine: Engine | null = null;
  private closed = false;

  constructor(
    readonly device: Device,
    readonly spec: ModelSpec,
    readonly tokenizer: HfTokenizer | null,
    readonly weights: ModelWeights,
    private readonly ownsDevice: boolean,
    readonly source: string,
    readonly engineDefaults: EngineOptions = {},
  ) {}

  /** The model's engine (created at load). */
  get engine(): Engine {
    if (this.closed) throw new EngineError(`${this.source}: the model was closed`);
    if (!this.mainEngine) this.mainEngine = createEngine(this);
    return this.mainEngine;
  }

  /** Engines made over this model are closed with it. */
  registerEngine(e: Engine): void {
    if (this.closed) throw new EngineError(`${this.source}: the model was closed`);
    this.engines.add(e);
  }

  encode(text: string): number[] {
    if (!this.tokenizer) throw new EngineError(`${this.source} has no tokenizer.json: pass token ids instead of text`);
    return this.tokenizer.encode(text);
  }

  decode(ids: readonly number[]): string {
    return this.tokenizer ? this.tokenizer.decode([...ids]) : '';
  }

  /** Stream new tokens for a prompt (text, or token ids for models without a tokenizer). */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): RequestHandle {
    return this.engine.generate({ ...opts, prompt });
  }

  /**
   * Token ids of a conversation rendered by the model's chat template (tokenizer_config.json or
   * chat_template.jinja), ending with the assistant's turn opened. The template writes the special
   * tokens itself, so none are added on encoding.
   */
  chatIds(messages: readonly ChatMessage[]): number[] {
    if (!this.tokenizer) throw new EngineError(`${this.source} has no tokenizer.json, so no chat template`);
    if (!this.tokenizer.chatTemplate) throw new EngineError(`${this.source}: the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)`);
    return this.tokenizer.encode(this.tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
  }

  /** Stream the assistant's reply to a conversation (see chatIds). */
  chat(messages: readonly ChatMessage[], opts: GenerateOptions = {}): RequestHandle {
    return this.generate(this.chatIds(messages), opts);
  }

  /** The whole completion as one string (rejects if the request failed). */
  async complete(prompt: string | readonly number[], opts: GenerateOptions = {}): Promise<string> {
    const h = this.generate(prompt, opts);
    let out = '';
    for await (const t of h) out += t.text;
    const r = await h.result();
    if (r.finishReason === 'error') throw new EngineError(r.error ?? 'generation failed');
    return out;
  }

  /** Teacher-forced logits for every position of `ids` ([ids.length, vocab]). */
  async logits(ids: readonly number[]): Promise<Float32Array> {
    return this.engine.logits(ids);
  }

  /** Abort what is in flight (iterators end with finishReason 'abort'), free everything. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const all = [...this.engines];
    this.engines.clear();
    this.mainEngine = null;
    await Promise.all(all.map((e) => e.close()));
    freeWeights(this.device, this.weights);
    if (this.ownsDevice) await this.device.destroy();
  }
}

/** Load a model (HF directory, AWQ checkpoint or llama2.c .bin) onto a device. */
export async function loadModel(path: string = DEFAULT_MODEL, opts: LoadOptions = {}): Promise<LLM> {
  return loadOpenedModel(() => openModel(path, { allowUnusedTensors: opts.allowUnusedTensors }), opts);
}

/** loadModel over a model opened another way (the browser build opens fetched files). */
export async function loadOpenedModel(open: () => LoadedModel | Promise<LoadedModel>, opts: LoadOptions = {}): Promise<LLM> {
  // Options first: nothing is created or allocated for a load that cannot succeed.
  const format = quantFormat(opts.quant ?? 'none');
  for (const name of ['numBlocks', 'maxBatchTokens', 'groupSize'] as const) {
    const v = opts[name];
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new GenerationError(`${name} = ${v} must be a positive integer`);
  }
  if (opts.kvDtype !== undefined && opts.kvDtype !== 'f32' && opts.kvDtype !== 'f16') throw new GenerationError(`kvDtype '${String(opts.kvDtype)}' is not f32 or f16`);
  const owns = typeof opts.device !== 'object';
  const device = typeof opts.device === 'object' ? opts.device : await createDevice(opts.device ?? 'auto');
  let files: LoadedModel | null = null;
  let weights: ModelWeights | null = null;
  let llm: LLM | null = null;
  try {
    files = await open();
    const spec = files.spec;
    if (!opts.allowNonFinite) checkFiniteWeights(files.weights);
    const tuneCache = opts.tuneCache === false ? undefined : readTuneCache(opts.tuneCache);
    weights = uploadWeights(device, spec, files.weights, { format, groupSize: opts.groupSize, tuneCache, onProgress: opts.onProgress });
    const defaults: EngineOptions = {
      kvDtype: opts.kvDtype, tuneCache,
      ...(opts.numBlocks !== undefined ? { kvBlocks: opts.numBlocks } : {}),
      ...(opts.maxBatchTokens !== undefined ? { maxBatchedTokens: opts.maxBatchTokens } : {}),
      ...opts.engine,
    };
    llm = new LLM(device, spec, files.tokenizer, weights, owns, files.source, defaults);
    // The engine now: its KV pool and kernels are ready (and a size that cannot be had fails) at load.
    void llm.engine;
    return llm;
  } catch (e) {
    // A passed-in device outlives the failed load: give back everything allocated on it.
    if (llm) { await llm.close(); throw e; }
    if (weights) freeWeights(device, weights);
    if (owns) await device.destroy();
    throw e;
  } finally {
    files?.weights.close();
  }
}

function quantFormat(q: Quant): WeightFormat | undefined {
  switch (q) {
    case 'none': return undefined;
    case 'f32': return 'f32';
    case 'f16': return 'f16';
    case 'int4-rtn': return 'int4';
    default: throw new GenerationError(`quant '${String(q)}' is not one of none, f32, f16, int4-rtn`);
  }
}
