// The public single-model API: load a model onto a device, then generate. One request at a time
// goes through the same paged KV cache, ragged forward and sampling kernels the batching engine
// uses; every request's blocks are freed when it ends, however it ends.
import { fileURLToPath } from 'node:url';
import { sampling } from '../codegen/kernels/sampling.js';
import type { BackendKind, Device, DeviceBuffer } from './backend/device.js';
import { createDevice } from './backend/index.js';
import { type LoadedModel, openModel } from './io/index.js';
import type { ChatMessage, HfTokenizer } from './io/tokenizer.js';
import { BlockManager } from './kv/blockManager.js';
import { LlamaForward } from './model/forward.js';
import type { ModelSpec } from './model/spec.js';
import { freeWeights, type ModelWeights, type WeightFormat, uploadWeights } from './model/weights.js';
import { runSampling, type SamplingRequest } from './ops/sampling.js';
import { readTuneCache } from './tune.js';

/** The model a fresh clone runs with no --model: brown-target, shipped in models/. */
export const DEFAULT_MODEL = fileURLToPath(new URL('../models/brown-target', import.meta.url));

export type Quant = 'none' | 'f32' | 'f16' | 'int4-rtn';

export interface LoadOptions {
  /** A device, or which kind to create ('auto': cuda, else webgpu on a real GPU, else cpu). */
  device?: BackendKind | 'auto' | Device;
  /** Weight storage: 'none' keeps the checkpoint's precision (f16 stays f16; AWQ stays INT4). */
  quant?: Quant;
  /** INT4 group size for int4-rtn (default 128). */
  groupSize?: number;
  kvDtype?: 'f32' | 'f16';
  /** KV cache blocks of 16 tokens (default: room for 4 full contexts). */
  numBlocks?: number;
  /** Tokens per forward pass: prefill is chunked to this (default 256). */
  maxBatchTokens?: number;
  /** Variant cache written by `kiln tune` (default: its default path; false: ignore it). */
  tuneCache?: string | false;
  onProgress?: (done: number, total: number) => void;
}

export interface GenerateOptions {
  /** New tokens at most (default 128; never past the context). */
  maxTokens?: number;
  /** 0 = greedy (default 0.8). */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** Seed of the counter-based sampler: same seed, same prompt → same tokens (default random). */
  seed?: number;
  /** Generation ends before any of these strings; they are not part of the output. */
  stop?: string[];
  /** Token ids that end generation (default: the model's EOS ids). */
  stopTokenIds?: number[];
}

export interface GeneratedToken {
  /** The token, or −1 for a last chunk of text held back (stop strings, an unfinished character). */
  id: number;
  /** Text this token completes (may be '' mid-character or while a stop string could be starting). */
  text: string;
}

export interface GenerationStats {
  promptTokens: number;
  cachedTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  finishReason: 'stop' | 'length' | 'eos';
}

export class GenerationError extends Error {}

let nextSeq = 0;

export class LLM {
  /** Statistics of the last finished generation. */
  lastStats: GenerationStats | null = null;
  private readonly sampler;
  private readonly tokensBuf: DeviceBuffer<'u32'>;
  private probsBuf: DeviceBuffer<'f32'>;
  private closed = false;

  constructor(
    readonly device: Device,
    readonly spec: ModelSpec,
    readonly tokenizer: HfTokenizer | null,
    readonly weights: ModelWeights,
    readonly forwardPass: LlamaForward,
    readonly blocks: BlockManager,
    private readonly ownsDevice: boolean,
    readonly source: string,
  ) {
    this.sampler = sampling({ caps: device.caps });
    this.tokensBuf = device.alloc('u32', 1, 'sampledToken');
    this.probsBuf = device.alloc('f32', spec.vocabSize, 'sampledProbs');
  }

  encode(text: string): number[] {
    if (!this.tokenizer) throw new GenerationError(`${this.source} has no tokenizer.json: pass token ids instead of text`);
    return this.tokenizer.encode(text);
  }

  decode(ids: readonly number[]): string {
    return this.tokenizer ? this.tokenizer.decode([...ids]) : '';
  }

  /** Stream new tokens for a prompt (text, or token ids for models without a tokenizer). */
  async *generate(prompt: string | readonly number[], opts: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
    if (this.closed) throw new GenerationError(`${this.source}: the model was closed`);
    const ids = typeof prompt === 'string' ? this.encode(prompt) : [...prompt];
    const o = this.checkOptions(ids, opts);
    const seq = nextSeq++;
    const blocks = this.blocks, fw = this.forwardPass;
    const stats: GenerationStats = { promptTokens: ids.length, cachedTokens: 0, generatedTokens: 0, prefillMs: 0, decodeMs: 0, finishReason: 'length' };
    const streamer = this.tokenizer?.streamer({ context: ids });
    const stops = o.stop;
    let held = '';
    let failed = false;
    try {
      // Prefill: cached prefix blocks are reused; the rest goes in chunks of maxBatchTokens.
      let t0 = performance.now();
      let done = blocks.addSequence(seq, ids);
      stats.cachedTokens = done;
      let next = -1;
      while (done < ids.length) {
        const chunk = ids.slice(done, done + fw.maxBatchTokens);
        const last = done + chunk.length === ids.length;
        const slots = blocks.append(seq, chunk);
        fw.enqueue([{ tokens: chunk, ctxLen: done, blockTable: blocks.blockTable(seq), slots, logits: last ? 'last' : 'none' }]);
        if (last) next = await this.sample(o, ids.length);
        done += chunk.length;
      }
      stats.prefillMs = performance.now() - t0;
      t0 = performance.now();
      for (let n = 0; ; n++) {
        const pos = ids.length + n;
        if (o.stopTokenIds.includes(next)) { stats.finishReason = 'eos'; break; }
        stats.generatedTokens++;
        let text = streamer ? streamer.push(next) : '';
        if (stops.length) {
          held += text;
          const hit = firstStop(held, stops);
          if (hit >= 0) {
            yield { id: next, text: held.slice(0, hit) };
            stats.finishReason = 'stop';
            break;
          }
          // Hold back any tail that could still become a stop string.
          const keep = stopPrefixTail(held, stops);
          text = held.slice(0, held.length - keep);
          held = held.slice(held.length - keep);
        }
        yield { id: next, text };
        if (n + 1 >= o.maxTokens || pos + 1 >= this.spec.maxPositions) { stats.finishReason = 'length'; break; }
        const slots = blocks.append(seq, [next]);
        // Fixed-shape decode step: on CUDA a replayed graph (LlamaForward.decodeStep).
        fw.decodeStep([{ tokens: [next], ctxLen: pos, blockTable: blocks.blockTable(seq), slots, logits: 'last' }]);
        next = await this.sample(o, pos + 1);
      }
      stats.decodeMs = performance.now() - t0;
      if (stats.finishReason !== 'stop') {
        const rest = held + (streamer?.flush() ?? '');
        if (rest) yield { id: -1, text: rest };
      }
      this.lastStats = stats;
    } catch (e) {
      failed = true;
      throw e;
    } finally {
      // After an error a pass may not have written the KV of blocks already in the prefix cache:
      // drop them. An early `break` by the consumer ends here without an error; its KV is whole.
      if (blocks.has(seq)) blocks.free(seq, { dropCached: failed });
    }
  }

  /**
   * Token ids of a conversation rendered by the model's chat template (tokenizer_config.json or
   * chat_template.jinja), ending with the assistant's turn opened. The template writes the special
   * tokens itself, so none are added on encoding.
   */
  chatIds(messages: readonly ChatMessage[]): number[] {
    if (!this.tokenizer) throw new GenerationError(`${this.source} has no tokenizer.json, so no chat template`);
    if (!this.tokenizer.chatTemplate) throw new GenerationError(`${this.source}: the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)`);
    return this.tokenizer.encode(this.tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
  }

  /** Stream the assistant's reply to a conversation (see chatIds). */
  chat(messages: readonly ChatMessage[], opts: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
    return this.generate(this.chatIds(messages), opts);
  }

  /** The whole completion as one string. */
  async complete(prompt: string | readonly number[], opts: GenerateOptions = {}): Promise<string> {
    let out = '';
    for await (const t of this.generate(prompt, opts)) out += t.text;
    return out;
  }

  /**
   * Teacher-forced logits for every position of `ids` ([ids.length, vocab]), in chunks, through a
   * temporary sequence (freed afterwards).
   */
  async logits(ids: readonly number[]): Promise<Float32Array> {
    if (this.closed) throw new GenerationError(`${this.source}: the model was closed`);
    if (!ids.length) throw new GenerationError('logits: no token ids');
    if (ids.length > this.spec.maxPositions) throw new GenerationError(`logits: ${ids.length} tokens exceed the context of ${this.spec.maxPositions}`);
    this.checkIds(ids);
    const seq = nextSeq++;
    const V = this.spec.vocabSize, fw = this.forwardPass;
    const out = new Float32Array(ids.length * V);
    try {
      this.blocks.addSequence(seq);
      for (let done = 0; done < ids.length;) {
        const chunk = ids.slice(done, done + fw.maxBatchTokens);
        const slots = this.blocks.append(seq, chunk);
        const r = await fw.forward([{ tokens: chunk, ctxLen: done, blockTable: this.blocks.blockTable(seq), slots, logits: 'all' }]);
        out.set(r.logits, done * V);
        done += chunk.length;
      }
    } finally {
      this.blocks.free(seq);
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.forwardPass.destroy();
    freeWeights(this.device, this.weights);
    this.device.free(this.tokensBuf);
    this.device.free(this.probsBuf);
    if (this.ownsDevice) await this.device.destroy();
  }

  private async sample(o: Required<Pick<GenerateOptions, 'temperature' | 'topK' | 'topP' | 'minP' | 'seed'>>, position: number): Promise<number> {
    const req: SamplingRequest = { temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP, seed: o.seed, position };
    runSampling(this.device, this.sampler, { logits: this.forwardPass.logitsBuffer, probs: this.probsBuf, tokens: this.tokensBuf }, [req], this.spec.vocabSize);
    const t = await this.device.read(this.tokensBuf);
    return t[0]!;
  }

  private checkIds(ids: readonly number[]): void {
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocabSize) {
        throw new GenerationError(`prompt token ${i} = ${id} is outside the vocabulary (0..${this.spec.vocabSize - 1})`);
      }
    });
  }

  private checkOptions(ids: number[], opts: GenerateOptions) {
    if (!ids.length) throw new GenerationError('the prompt has no tokens');
    this.checkIds(ids);
    if (ids.length >= this.spec.maxPositions) {
      throw new GenerationError(`the prompt has ${ids.length} tokens; the model's context is ${this.spec.maxPositions}, leaving no room to generate`);
    }
    const maxTokens = opts.maxTokens ?? 128;
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new GenerationError(`maxTokens = ${maxTokens} must be a positive integer`);
    const temperature = opts.temperature ?? 0.8;
    if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new GenerationError(`temperature = ${temperature} must be ≥ 0`);
    const topP = opts.topP ?? 1;
    if (!(topP > 0 && topP <= 1)) throw new GenerationError(`topP = ${topP} must be in (0, 1]`);
    const minP = opts.minP ?? 0;
    if (!(minP >= 0 && minP <= 1)) throw new GenerationError(`minP = ${minP} must be in [0, 1]`);
    const topK = opts.topK ?? 0;
    if (!Number.isInteger(topK) || topK < 0) throw new GenerationError(`topK = ${topK} must be a non-negative integer`);
    const seed = opts.seed ?? ((Math.random() * 2 ** 32) >>> 0);
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new GenerationError(`seed = ${seed} must be an integer in [0, 2^32)`);
    const stop = opts.stop ?? [];
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || !s.length)) throw new GenerationError('stop must be a list of non-empty strings');
    const stopTokenIds = opts.stopTokenIds ?? this.spec.eosIds;
    return { maxTokens, temperature, topP, minP, topK, seed, stop, stopTokenIds };
  }
}

/** Index of the earliest stop string in `text`, or −1. */
function firstStop(text: string, stops: readonly string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest tail of `text` that is a proper prefix of some stop string. */
function stopPrefixTail(text: string, stops: readonly string[]): number {
  let keep = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(s.slice(0, n))) { keep = n; break; }
    }
  }
  return keep;
}

/** Load a model (HF directory, AWQ checkpoint or llama2.c .bin) onto a device. */
export async function loadModel(path: string = DEFAULT_MODEL, opts: LoadOptions = {}): Promise<LLM> {
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
  let fw: LlamaForward | null = null;
  try {
    files = openModel(path);
    const spec = files.spec;
    const tuneCache = opts.tuneCache === false ? undefined : readTuneCache(opts.tuneCache);
    weights = uploadWeights(device, spec, files.weights, { format, groupSize: opts.groupSize, tuneCache, onProgress: opts.onProgress });
    const blockSize = 16;
    const numBlocks = opts.numBlocks ?? Math.ceil(spec.maxPositions / blockSize) * 4 + 1;
    fw = new LlamaForward(device, spec, weights, { numBlocks, blockSize, kvDtype: opts.kvDtype, maxBatchTokens: opts.maxBatchTokens, tuneCache });
    return new LLM(device, spec, files.tokenizer, weights, fw, new BlockManager(numBlocks, { blockSize }), owns, files.source);
  } catch (e) {
    // A passed-in device outlives the failed load: give back everything allocated on it.
    fw?.destroy();
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
