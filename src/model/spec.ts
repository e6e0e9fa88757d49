// ModelSpec: everything the forward pass needs to know about a Llama-family model, whatever file
// it came from (HF config.json, a llama2.c header). Weight names follow Hugging Face.

import { ropeInvFreq as kernelRopeInvFreq, type RopeFrequencies } from '../../codegen/kernels/rope.js';

export type Architecture = 'llama' | 'mistral' | 'qwen2';

/** 'rotate-half' (HF): pairs (i, i + headDim/2). 'interleaved' (llama2.c, Meta): pairs (2i, 2i+1). */
export type RopeLayout = 'rotate-half' | 'interleaved';

export type RopeScaling =
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  | { type: 'linear'; factor: number };

/** AutoAWQ GEMM quantization (config.json → quantization_config). */
export interface AwqConfig {
  method: 'awq';
  version: 'gemm';
  bits: 4;
  groupSize: number;
  zeroPoint: true;
  /** Module names AutoAWQ left in full precision (e.g. 'lm_head'). */
  modulesNotConverted: string[];
}

export interface ModelSpec {
  arch: Architecture;
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** intermediate_size of the SwiGLU FFN. */
  ffn: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeLayout: RopeLayout;
  ropeScaling: RopeScaling | null;
  maxPositions: number;
  /** Each query attends to at most this many most recent positions (itself included); null: all. */
  slidingWindow: number | null;
  /** lm_head shares model.embed_tokens.weight. */
  tieEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2). */
  qkvBias: boolean;
  bosId: number | null;
  eosIds: number[];
  quantization: AwqConfig | null;
}

/** One linear layer y = x Wᵀ (+ b): HF stores W as [N, K] = [out, in]. */
export interface LinearSpec {
  /** Prefix, e.g. 'model.layers.0.self_attn.q_proj'; tensors are `${name}.weight` etc. */
  name: string;
  /** Input features. */
  K: number;
  /** Output features. */
  N: number;
  bias: boolean;
}

export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head';

export function layerPrefix(layer: number): string {
  return `model.layers.${layer}`;
}

/** The linear layers of one decoder layer, in forward order. */
export function layerLinears(spec: ModelSpec, layer: number): LinearSpec[] {
  const p = layerPrefix(layer);
  const q = spec.heads * spec.headDim, kv = spec.kvHeads * spec.headDim;
  return [
    { name: `${p}.self_attn.q_proj`, K: spec.hidden, N: q, bias: spec.qkvBias },
    { name: `${p}.self_attn.k_proj`, K: spec.hidden, N: kv, bias: spec.qkvBias },
    { name: `${p}.self_attn.v_proj`, K: spec.hidden, N: kv, bias: spec.qkvBias },
    { name: `${p}.self_attn.o_proj`, K: q, N: spec.hidden, bias: false },
    { name: `${p}.mlp.gate_proj`, K: spec.hidden, N: spec.ffn, bias: false },
    { name: `${p}.mlp.up_proj`, K: spec.hidden, N: spec.ffn, bias: false },
    { name: `${p}.mlp.down_proj`, K: spec.ffn, N: spec.hidden, bias: false },
  ];
}

/** Every linear layer of the decoder (not the classifier). */
export function allLinears(spec: ModelSpec): LinearSpec[] {
  const out: LinearSpec[] = [];
  for (let l = 0; l < spec.layers; l++) out.push(...layerLinears(spec, l));
  return out;
}

/** The classifier as a linear layer; absent from the checkpoint when tied. */
export function lmHeadLinear(spec: ModelSpec): LinearSpec {
  return { name: LM_HEAD, K: spec.hidden, N: spec.vocabSize, bias: false };
}

export interface WeightSpec {
  name: string;
  shape: number[];
}

/** The tensors a dense (unquantized) checkpoint must contain, with their shapes. */
export function expectedDenseWeights(spec: ModelSpec): WeightSpec[] {
  const out: WeightSpec[] = [{ name: EMBED, shape: [spec.vocabSize, spec.hidden] }];
  for (let l = 0; l < spec.layers; l++) {
    const p = layerPrefix(l);
    out.push({ name: `${p}.input_layernorm.weight`, shape: [spec.hidden] });
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [spec.hidden] });
    for (const lin of layerLinears(spec, l)) {
      out.push({ name: `${lin.name}.weight`, shape: [lin.N, lin.K] });
      if (lin.bias) out.push({ name: `${lin.name}.bias`, shape: [lin.N] });
    }
  }
  out.push({ name: FINAL_NORM, shape: [spec.hidden] });
  if (!spec.tieEmbeddings) out.push({ name: `${LM_HEAD}.weight`, shape: [spec.vocabSize, spec.hidden] });
  return out;
}

/** Checks internal consistency; `source` names where the spec came from. */
export function validateSpec(spec: ModelSpec, source: string): void {
  const positive: (keyof ModelSpec)[] = ['vocabSize', 'hidden', 'layers', 'heads', 'kvHeads', 'headDim', 'ffn', 'maxPositions'];
  for (const k of positive) {
    const v = spec[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new Error(`${source}: ${k} must be a positive integer, got ${String(v)}`);
  }
  if (spec.heads % spec.kvHeads !== 0) throw new Error(`${source}: heads (${spec.heads}) must be a multiple of kvHeads (${spec.kvHeads})`);
  if (spec.headDim % 2 !== 0) throw new Error(`${source}: headDim (${spec.headDim}) must be even for RoPE`);
  if (!(spec.rmsNormEps > 0)) throw new Error(`${source}: rmsNormEps must be positive, got ${spec.rmsNormEps}`);
  if (!(spec.ropeTheta > 0)) throw new Error(`${source}: ropeTheta must be positive, got ${spec.ropeTheta}`);
  if (spec.slidingWindow !== null && !(spec.slidingWindow > 0)) throw new Error(`${source}: slidingWindow must be positive or null`);
  for (const id of [spec.bosId, ...spec.eosIds]) {
    if (id !== null && !(Number.isInteger(id) && id >= 0 && id < spec.vocabSize)) {
      throw new Error(`${source}: special token id ${id} is outside the vocabulary (size ${spec.vocabSize})`);
    }
  }
  const q = spec.quantization;
  if (q) {
    for (const lin of allLinears(spec)) {
      if (lin.K % q.groupSize !== 0) throw new Error(`${source}: AWQ group_size ${q.groupSize} does not divide ${lin.name} input size ${lin.K}`);
      if (lin.N % 8 !== 0) throw new Error(`${source}: AWQ needs ${lin.name} output size ${lin.N} to be a multiple of 8`);
    }
  }
}

/** RoPE frequencies θᵢ (i < headDim/2) with the spec's scaling: the kernels' rope.ts computes them. */
export function ropeInvFreq(spec: Pick<ModelSpec, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float64Array {
  return kernelRopeInvFreq(ropeFrequencies(spec));
}

/** The spec's RoPE settings in the form codegen/kernels/rope.ts takes (ropeInvFreq, ropeTable). */
export function ropeFrequencies(spec: Pick<ModelSpec, 'headDim' | 'ropeTheta' | 'ropeScaling'>): RopeFrequencies {
  const s = spec.ropeScaling;
  return {
    headDim: spec.headDim,
    theta: spec.ropeTheta,
    linearFactor: s?.type === 'linear' ? s.factor : undefined,
    scaling: s?.type === 'llama3'
      ? { factor: s.factor, lowFreqFactor: s.lowFreqFactor, highFreqFactor: s.highFreqFactor, originalMaxPositionEmbeddings: s.originalMaxPositions }
      : undefined,
  };
}

/** Indices of the two elements (within a head) that RoPE pair i rotates. */
export function ropePair(layout: RopeLayout, headDim: number, i: number): [number, number] {
  return layout === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + headDim / 2];
}
