// Hugging Face config.json (+ generation_config.json) → ModelSpec, for the Llama family:
// LlamaForCausalLM (Llama 2/3, SmolLM), MistralForCausalLM, Qwen2ForCausalLM.
// Also checks a checkpoint's tensors against the spec (names, shapes, dtypes).

import { platform } from '../platform/index.js';
import {
  allLinears, expectedDenseWeights, validateSpec, lmHeadLinear, LM_HEAD,
  type Architecture, type AwqConfig, type ModelSpec, type RopeScaling,
} from '../model/spec.js';
import { LOADABLE_DTYPES, type TensorStore } from './safetensors.js';
import { validateAwqLinear, isAwqQuantized } from './awq.js';

const ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};
const MODEL_TYPES: Readonly<Record<string, Architecture>> = { llama: 'llama', mistral: 'mistral', qwen2: 'qwen2' };

type Json = Record<string, unknown>;

/** Field access with errors that name the file and the field. */
class Fields {
  constructor(readonly obj: Json, readonly source: string, readonly prefix = '') {}
  private where(field: string): string {
    return `${this.source}: field '${this.prefix}${field}'`;
  }
  has(field: string): boolean {
    return this.obj[field] !== undefined && this.obj[field] !== null;
  }
  int(field: string, fallback?: number): number {
    const v = this.obj[field];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new Error(`${this.where(field)} is missing`);
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new Error(`${this.where(field)} must be an integer, got ${JSON.stringify(v)}`);
    return v;
  }
  num(field: string, fallback?: number): number {
    const v = this.obj[field];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new Error(`${this.where(field)} is missing`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${this.where(field)} must be a number, got ${JSON.stringify(v)}`);
    return v;
  }
  bool(field: string, fallback: boolean): boolean {
    const v = this.obj[field];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') throw new Error(`${this.where(field)} must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }
  str(field: string): string | undefined {
    const v = this.obj[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw new Error(`${this.where(field)} must be a string, got ${JSON.stringify(v)}`);
    return v;
  }
  /** A token id or list of ids (eos_token_id may be either). */
  ids(field: string): number[] | undefined {
    const v = this.obj[field];
    if (v === undefined || v === null) return undefined;
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => Number.isSafeInteger(x) && x >= 0)) throw new Error(`${this.where(field)} must be a token id or a list of ids, got ${JSON.stringify(v)}`);
    return list as number[];
  }
  object(field: string): Fields | undefined {
    const v = this.obj[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) throw new Error(`${this.where(field)} must be an object`);
    return new Fields(v as Json, this.source, `${this.prefix}${field}.`);
  }
  fail(field: string, message: string): never {
    throw new Error(`${this.where(field)} ${message}`);
  }
}

function architectureOf(cfg: Fields): Architecture {
  const archs = cfg.obj.architectures;
  if (Array.isArray(archs) && archs.length > 0) {
    const name = String(archs[0]);
    const arch = ARCHITECTURES[name];
    if (!arch) cfg.fail('architectures', `is ${JSON.stringify(archs)}; Kiln supports ${Object.keys(ARCHITECTURES).join(', ')}`);
    return arch;
  }
  const type = cfg.str('model_type');
  if (type === undefined) cfg.fail('architectures', 'is missing (and so is model_type)');
  const arch = MODEL_TYPES[type];
  if (!arch) cfg.fail('model_type', `is '${type}'; Kiln supports ${Object.keys(MODEL_TYPES).join(', ')}`);
  return arch;
}

function parseRopeScaling(rs: Fields | undefined): RopeScaling | null {
  if (!rs) return null;
  const type = rs.str('rope_type') ?? rs.str('type');
  if (type === undefined || type === 'default') return null;
  if (type === 'linear') return { type: 'linear', factor: rs.num('factor') };
  if (type === 'llama3') {
    const s: RopeScaling = {
      type: 'llama3',
      factor: rs.num('factor'),
      lowFreqFactor: rs.num('low_freq_factor'),
      highFreqFactor: rs.num('high_freq_factor'),
      originalMaxPositions: rs.int('original_max_position_embeddings'),
    };
    if (!(s.highFreqFactor > s.lowFreqFactor)) rs.fail('high_freq_factor', 'must exceed low_freq_factor');
    return s;
  }
  return rs.fail('rope_type', `is '${type}'; Kiln supports llama3, linear, default`);
}

function parseQuantization(q: Fields | undefined): AwqConfig | null {
  if (!q) return null;
  const method = q.str('quant_method');
  if (method !== 'awq') q.fail('quant_method', `is '${method}'; Kiln loads only AutoAWQ ('awq') checkpoints`);
  const version = (q.str('version') ?? 'gemm').toLowerCase();
  if (version !== 'gemm') q.fail('version', `is '${version}'; Kiln loads the AutoAWQ GEMM layout ('gemm')`);
  const bits = q.int('bits', q.int('w_bit', -1));
  if (bits !== 4) q.fail('bits', `is ${bits}; Kiln supports 4-bit AWQ`);
  const groupSize = q.int('group_size', q.int('q_group_size', -1));
  if (groupSize <= 0) q.fail('group_size', `must be a positive integer, got ${groupSize}`);
  if (!q.bool('zero_point', true)) q.fail('zero_point', 'is false; the AutoAWQ GEMM layout Kiln loads has zero points');
  const skip = q.obj.modules_to_not_convert;
  if (skip !== undefined && skip !== null && !(Array.isArray(skip) && skip.every((s) => typeof s === 'string'))) {
    q.fail('modules_to_not_convert', 'must be a list of module names');
  }
  return { method: 'awq', version: 'gemm', bits: 4, groupSize, zeroPoint: true, modulesNotConverted: (skip as string[] | null) ?? [] };
}

/** Largest buffer the runtime allocates in one piece (a JS typed array's limit: 4 GiB). */
export const MAX_BUFFER_BYTES = 2 ** 32;

/**
 * max_position_embeddings, refused when the per-position tables (RoPE cos/sin: positions ×
 * head_dim × 4 bytes) could not be allocated, naming the bytes, rather than failing later with a
 * raw RangeError. Read as a number first so that 2^53 gets this message too.
 */
function maxPositions(cfg: Fields, headDim: number): number {
  const v = cfg.num('max_position_embeddings', 2048);
  if (!Number.isInteger(v) || v < 1) cfg.fail('max_position_embeddings', `must be a positive integer, got ${v}`);
  const bytes = v * headDim * 4;
  if (bytes > MAX_BUFFER_BYTES) {
    cfg.fail('max_position_embeddings', `is ${v}: its RoPE table (positions × head_dim ${headDim} × 4 bytes) would need ${bytes} bytes, more than one buffer can hold (${MAX_BUFFER_BYTES})`);
  }
  return v;
}

export interface ParseOptions {
  /** Parsed generation_config.json; its bos/eos ids take precedence over config.json's. */
  generationConfig?: unknown;
  /** Names the config in error messages. */
  source?: string;
}

/** Parses a parsed config.json object into a ModelSpec. */
export function parseHfConfig(config: unknown, opts: ParseOptions = {}): ModelSpec {
  const source = opts.source ?? 'config.json';
  if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new Error(`${source}: must be a JSON object`);
  const cfg = new Fields(config as Json, source);
  const arch = architectureOf(cfg);

  const hidden = cfg.int('hidden_size');
  const heads = cfg.int('num_attention_heads');
  const act = cfg.str('hidden_act') ?? 'silu';
  if (act !== 'silu') cfg.fail('hidden_act', `is '${act}'; the Llama family uses 'silu'`);
  if (arch === 'llama') {
    if (cfg.bool('attention_bias', false)) cfg.fail('attention_bias', 'is true; Kiln supports Llama without attention biases');
    if (cfg.bool('mlp_bias', false)) cfg.fail('mlp_bias', 'is true; Kiln supports Llama without MLP biases');
  }
  if (!cfg.has('head_dim') && hidden % heads !== 0) {
    cfg.fail('head_dim', `is missing and hidden_size ${hidden} is not a multiple of num_attention_heads ${heads}`);
  }
  const headDim = cfg.has('head_dim') ? cfg.int('head_dim') : hidden / heads;

  // transformers ≥ 5 moves rope settings into rope_parameters.
  const ropeParams = cfg.object('rope_parameters');
  const ropeTheta = ropeParams?.has('rope_theta') ? ropeParams.num('rope_theta') : cfg.num('rope_theta', 10000);
  const ropeScaling = parseRopeScaling(cfg.object('rope_scaling') ?? ropeParams);

  let slidingWindow: number | null = null;
  if (arch === 'mistral' && cfg.has('sliding_window')) slidingWindow = cfg.int('sliding_window');
  if (arch === 'qwen2' && cfg.bool('use_sliding_window', false)) {
    cfg.fail('use_sliding_window', 'is true; Kiln does not implement Qwen2 per-layer sliding windows');
  }

  const gen = opts.generationConfig === undefined ? undefined : new Fields((opts.generationConfig ?? {}) as Json, 'generation_config.json');
  const bos = gen?.ids('bos_token_id') ?? cfg.ids('bos_token_id');
  const eos = gen?.ids('eos_token_id') ?? cfg.ids('eos_token_id') ?? [];

  const spec: ModelSpec = {
    arch,
    vocabSize: cfg.int('vocab_size'),
    hidden,
    layers: cfg.int('num_hidden_layers'),
    heads,
    kvHeads: cfg.int('num_key_value_heads', heads),
    headDim,
    ffn: cfg.int('intermediate_size'),
    rmsNormEps: cfg.num('rms_norm_eps', 1e-6),
    ropeTheta,
    ropeLayout: 'rotate-half',
    ropeScaling,
    maxPositions: maxPositions(cfg, headDim),
    slidingWindow,
    tieEmbeddings: cfg.bool('tie_word_embeddings', false),
    qkvBias: arch === 'qwen2',
    bosId: bos?.[0] ?? null,
    eosIds: eos,
    quantization: parseQuantization(cfg.object('quantization_config')),
  };
  validateSpec(spec, source);
  return spec;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(platform.files.readText(file));
  } catch (e) {
    throw new Error(`${file}: cannot read JSON (${(e as Error).message})`);
  }
}

/** Reads dir/config.json and, if present, dir/generation_config.json. */
export function loadHfConfig(dir: string): ModelSpec {
  const configPath = platform.files.join(dir, 'config.json');
  if (!platform.files.exists(configPath)) throw new Error(`${dir}: no config.json`);
  const genPath = platform.files.join(dir, 'generation_config.json');
  const generationConfig = platform.files.exists(genPath) ? readJson(genPath) : undefined;
  return parseHfConfig(readJson(configPath), { generationConfig, source: configPath });
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/** Checks that a tensor exists, has the given shape and a loadable float dtype. */
export function checkTensor(store: TensorStore, name: string, shape: readonly number[]): void {
  if (!store.has(name)) throw new Error(`${store.source}: missing tensor '${name}' (expected shape ${shapeStr(shape)})`);
  const info = store.info(name);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${store.source}: tensor '${name}' has shape ${shapeStr(info.shape)}, expected ${shapeStr(shape)}`);
  }
  if (!(LOADABLE_DTYPES as readonly string[]).includes(info.dtype) || info.dtype === 'I32') {
    throw new Error(`${store.source}: tensor '${name}' has dtype ${info.dtype}, expected F32, F16 or BF16`);
  }
}

/**
 * Checks a checkpoint against the spec: every tensor the forward pass reads is present with the
 * right shape. For AWQ specs the decoder's linear layers are checked in the AutoAWQ GEMM layout.
 */
export function validateWeights(spec: ModelSpec, store: TensorStore, opts: { allowUnusedTensors?: boolean } = {}): void {
  const awq = spec.quantization;
  const quantizedLinears = new Set<string>();
  if (awq) {
    for (const lin of allLinears(spec)) {
      if (!isAwqQuantized(awq, lin.name)) continue;
      validateAwqLinear(store, lin, awq.groupSize);
      quantizedLinears.add(lin.name);
    }
  } else if (store.names().some((n) => n.endsWith('.qweight'))) {
    throw new Error(`${store.source}: holds AWQ tensors (*.qweight) but config.json has no quantization_config`);
  }
  // AutoAWQ never quantizes the classifier; make sure a quantized one is not silently ignored.
  if (!spec.tieEmbeddings && store.has(`${lmHeadLinear(spec).name}.qweight`)) {
    throw new Error(`${store.source}: lm_head is quantized (lm_head.qweight); Kiln keeps the classifier unquantized`);
  }
  const used = new Set<string>();
  for (const w of expectedDenseWeights(spec)) {
    const prefix = w.name.replace(/\.(weight|bias)$/, '');
    if (quantizedLinears.has(prefix)) {
      if (w.name.endsWith('.bias')) { checkTensor(store, w.name, w.shape); used.add(w.name); }
      for (const t of ['qweight', 'qzeros', 'scales']) used.add(`${prefix}.${t}`);
      continue;
    }
    checkTensor(store, w.name, w.shape);
    used.add(w.name);
  }
  if (!opts.allowUnusedTensors) checkUnused(spec, store, used);
}

/**
 * A tensor the config does not account for means the config and the checkpoint disagree (a
 * layer count too small silently drops layers; tie_word_embeddings ignores a shipped lm_head):
 * refuse, listing them. Rotary inv_freq buffers are derived from the config and may be skipped.
 */
function checkUnused(spec: ModelSpec, store: TensorStore, used: Set<string>): void {
  const unused = store.names().filter((n) => !used.has(n) && !n.endsWith('rotary_emb.inv_freq'));
  if (!unused.length) return;
  const hints: string[] = [];
  const layers = unused.map((n) => /^model\.layers\.(\d+)\./.exec(n)).filter((m) => m && Number(m[1]) >= spec.layers).map((m) => Number(m![1]));
  if (layers.length) hints.push(`config.json says num_hidden_layers = ${spec.layers} but the checkpoint has layers up to ${Math.max(...layers)}`);
  if (spec.tieEmbeddings && unused.includes(`${LM_HEAD}.weight`)) hints.push('config.json says tie_word_embeddings = true but the checkpoint ships its own lm_head.weight');
  const list = unused.length > 12 ? `${unused.slice(0, 12).join(', ')}, … (${unused.length} in all)` : unused.join(', ');
  throw new Error(`${store.source}: ${unused.length} tensor${unused.length > 1 ? 's' : ''} not used by the model config.json describes: ${list}`
    + `${hints.length ? ` (${hints.join('; ')})` : ''}; fix config.json, or load anyway with allowUnusedTensors`);
}
