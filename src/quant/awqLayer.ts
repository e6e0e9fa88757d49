// AWQ on one decoder layer: read its weights, search the four groups' scales on the FP weights
// (AutoAWQ searches every group before applying any), fold them into the model, search the
// clipping, and quantize. Folding keeps the FP function: the preceding op absorbs 1/s —
//   q/k/v   input_layernorm weight ÷ s        gate/up  post_attention_layernorm weight ÷ s
//   o       v_proj output rows (and bias) ÷ s  down     up_proj output rows ÷ s
// For o under grouped-query attention, one v channel feeds the same channel of every query head
// of its group, so those o inputs share a scale (awqSearch.ts `tie`); AutoAWQ instead skips o
// when the head layout differs, which for the brown models would leave o unscaled.
import { readFloat32, type TensorStore } from '../io/safetensors.js';
import { layerLinears, layerPrefix, type ModelSpec } from '../model/spec.js';
import type { AwqTensors } from './awq.js';
import type { GroupStats, LayerStats } from './calibrate.js';
import { type HalfWeight, scaleGram, searchClip, searchScales, type ScaleSearchResult } from './awqSearch.js';
import { attentionLoss, mlpLoss } from './awqModules.js';
import { h, quantizeRtnInt4 } from './rtn.js';

export type Rounding = (v: number) => number;

/** One layer's weights, [N, K] linears, with the names they have in the checkpoint. */
export interface LayerFp {
  ln1: Float32Array;
  ln2: Float32Array;
  q: HalfWeight; k: HalfWeight; v: HalfWeight; o: HalfWeight;
  gate: HalfWeight; up: HalfWeight; down: HalfWeight;
  /** q/k/v biases (Qwen2); v's takes v's 1/s too. */
  qBias: Float32Array | null;
  kBias: Float32Array | null;
  vBias: Float32Array | null;
}

export interface LayerScales {
  qkv: Float32Array;
  /** Per o input channel, and per v channel (the classes of the tie). */
  o: Float32Array;
  oClass: Float32Array;
  gateUp: Float32Array;
  down: Float32Array;
}

export interface AwqOptions {
  groupSize: number;
  /** α grid points (default 20). */
  grid?: number;
  /** Duo scaling (default true). */
  duo?: boolean;
  /** Run the clipping search (default true). */
  clip?: boolean;
  /**
   * Score q/k/v and gate/up by the output of the block they feed (attention, MLP) on the kept
   * input sample, as AutoAWQ does (used when true and the statistics carry a sample); default:
   * by the group's own output error over all calibration tokens (Gram matrix: faster, and on the
   * brown models as good).
   */
  moduleLoss?: boolean;
  /** Tokens per calibration sequence (the attention loss needs whole sequences). */
  seqLen?: number;
}

/** What one layer contributes to the checkpoint, and how the searches went. */
export interface LayerResult {
  /** Quantized linears by prefix ('model.layers.0.self_attn.q_proj'). */
  linears: Map<string, AwqTensors>;
  /** Dense tensors the folding changed (norm weights, v bias), by tensor name. */
  dense: Map<string, Float32Array>;
  alphas: { qkv: number; o: number; gateUp: number; down: number };
  /** Mean squared output error of each group: unscaled (RTN) and with the chosen scales. */
  loss: { group: string; rtn: number; awq: number }[];
}

/** Channel k of o's input (head ⌊k/hd⌋, dim k mod hd) → the v channel it reads. */
export function oTie(spec: ModelSpec): Int32Array {
  const hd = spec.headDim, group = spec.heads / spec.kvHeads;
  return Int32Array.from({ length: spec.heads * hd }, (_, k) => Math.floor(Math.floor(k / hd) / group) * hd + (k % hd));
}

/** Reads layer l's weights, each value passed through `round` (f16 for AutoAWQ's half layer). */
export function readLayer(spec: ModelSpec, store: TensorStore, l: number, round: Rounding = h): LayerFp {
  const p = layerPrefix(l);
  const rd = (name: string) => readFloat32(store, name).map(round);
  const [q, k, v, o, gate, up, down] = layerLinears(spec, l).map((lin) => ({ w: rd(`${lin.name}.weight`), N: lin.N, K: lin.K }));
  return {
    ln1: rd(`${p}.input_layernorm.weight`), ln2: rd(`${p}.post_attention_layernorm.weight`),
    q: q!, k: k!, v: v!, o: o!, gate: gate!, up: up!, down: down!,
    qBias: spec.qkvBias ? rd(`${p}.self_attn.q_proj.bias`) : null,
    kBias: spec.qkvBias ? rd(`${p}.self_attn.k_proj.bias`) : null,
    vBias: spec.qkvBias ? rd(`${p}.self_attn.v_proj.bias`) : null,
  };
}

function scaleColumns(x: HalfWeight, s: Float32Array, round: Rounding): void {
  const { w, N, K } = x;
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) w[n * K + k] = round(w[n * K + k]! * s[k]!);
}

function divideRows(x: HalfWeight, s: Float32Array, round: Rounding): void {
  const { w, N, K } = x;
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) w[n * K + k] = round(w[n * K + k]! / s[n]!);
}

/** Folds the scales into the layer in place, in AutoAWQ's order; the FP function is unchanged. */
export function foldScales(L: LayerFp, s: LayerScales, round: Rounding = h): void {
  for (let i = 0; i < L.ln1.length; i++) L.ln1[i] = round(L.ln1[i]! / s.qkv[i]!);
  for (const x of [L.q, L.k, L.v]) scaleColumns(x, s.qkv, round);
  divideRows(L.v, s.oClass, round);
  if (L.vBias) for (let i = 0; i < L.vBias.length; i++) L.vBias[i] = round(L.vBias[i]! / s.oClass[i]!);
  scaleColumns(L.o, s.o, round);
  for (let i = 0; i < L.ln2.length; i++) L.ln2[i] = round(L.ln2[i]! / s.gateUp[i]!);
  for (const x of [L.gate, L.up]) scaleColumns(x, s.gateUp, round);
  divideRows(L.up, s.down, round);
  scaleColumns(L.down, s.down, round);
}

/** The whole AWQ recipe on layer l with its calibration statistics. */
export function quantizeLayerAwq(spec: ModelSpec, l: number, L: LayerFp, stats: LayerStats, opts: AwqOptions): LayerResult {
  const g = opts.groupSize, search = { groupSize: g, grid: opts.grid, duo: opts.duo };
  const tie = oTie(spec);
  const useModule = (opts.moduleLoss ?? false) && !!stats.qkv.sample && !!stats.gateUp.sample && !!opts.seqLen;
  const attnLoss = useModule
    ? attentionLoss(spec, stats.qkv.sample!, stats.qkv.sampleRows!, opts.seqLen!, L.q, L.k, L.v, L.o, { q: L.qBias, k: L.kBias, v: L.vBias }, g)
    : undefined;
  const ffnLoss = useModule ? mlpLoss(stats.gateUp.sample!, stats.gateUp.sampleRows!, L.gate, L.up, L.down, g) : undefined;
  const r: Record<'qkv' | 'o' | 'gateUp' | 'down', ScaleSearchResult> = {
    qkv: searchScales([L.q, L.k, L.v], stats.qkv, { ...search, moduleLoss: attnLoss }),
    o: searchScales([L.o], stats.o, { ...search, tie }),
    gateUp: searchScales([L.gate, L.up], stats.gateUp, { ...search, moduleLoss: ffnLoss }),
    down: searchScales([L.down], stats.down, search),
  };
  foldScales(L, { qkv: r.qkv.scales, o: r.o.scales, oClass: r.o.classScales, gateUp: r.gateUp.scales, down: r.down.scales });
  if (opts.clip ?? true) {
    // The inputs the scaled weights see are X/s: their Gram matrix is H_ij/(s_i s_j).
    const scaled = (st: GroupStats, s: Float32Array) => scaleGram(st, s);
    const hQkv = scaled(stats.qkv, r.qkv.scales), hGu = scaled(stats.gateUp, r.gateUp.scales);
    searchClip(L.v, hQkv, g);
    searchClip(L.o, scaled(stats.o, r.o.scales), g);
    searchClip(L.gate, hGu, g);
    searchClip(L.up, hGu, g);
    searchClip(L.down, scaled(stats.down, r.down.scales), g);
  }
  const linears = new Map<string, AwqTensors>();
  const names = layerLinears(spec, l).map((x) => x.name);
  [L.q, L.k, L.v, L.o, L.gate, L.up, L.down].forEach((x, i) => linears.set(names[i]!, quantizeRtnInt4(x.w, x.K, x.N, g, 'NK')));
  const p = layerPrefix(l);
  const dense = new Map<string, Float32Array>([[`${p}.input_layernorm.weight`, L.ln1], [`${p}.post_attention_layernorm.weight`, L.ln2]]);
  if (L.vBias) dense.set(`${p}.self_attn.v_proj.bias`, L.vBias);
  return {
    linears, dense,
    alphas: { qkv: r.qkv.alpha, o: r.o.alpha, gateUp: r.gateUp.alpha, down: r.down.alpha },
    loss: (['qkv', 'o', 'gateUp', 'down'] as const).map((k) => ({ group: k, rtn: r[k].unscaled, awq: r[k].loss })),
  };
}
