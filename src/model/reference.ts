// The reference Llama forward pass: plain TypeScript, float32 storage, float64 accumulation,
// written top to bottom in the manner of llama2.c's run.c. It is the oracle the kernel-based
// runtime is tested against, so it favours clarity; the only concession to speed is computing
// four token rows per weight row in `linear`, which leaves every dot product's order unchanged
// (a row's result never depends on how many rows are fed together).

import type { ModelSpec } from './spec.js';
import { EMBED, FINAL_NORM, LM_HEAD, layerLinears, layerPrefix, ropeInvFreq, ropePair } from './spec.js';
import { readFloat32, type TensorStore } from '../io/safetensors.js';
import { dequantizeAwq, isAwqQuantized, loadAwqLinear } from '../io/awq.js';

export interface LayerWeights {
  attnNorm: Float32Array;
  /** Linear weights in HF layout [out, in]. */
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  qBias: Float32Array | null;
  kBias: Float32Array | null;
  vBias: Float32Array | null;
  ffnNorm: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

export interface ReferenceWeights {
  /** [vocab, hidden] */
  embed: Float32Array;
  layers: LayerWeights[];
  norm: Float32Array;
  /** [vocab, hidden]; the embedding itself when tied. */
  lmHead: Float32Array;
}

/** Reads every weight as float32 (F16/BF16 upcast, AWQ layers dequantized). */
export function loadReferenceWeights(spec: ModelSpec, store: TensorStore): ReferenceWeights {
  const f32 = (name: string): Float32Array => readFloat32(store, name);
  const linear = (name: string, K: number, N: number, bias: boolean): Float32Array => {
    const q = spec.quantization;
    if (q && isAwqQuantized(q, name)) return dequantizeAwq(loadAwqLinear(store, { name, K, N, bias }, q.groupSize));
    return f32(`${name}.weight`);
  };
  const layers: LayerWeights[] = [];
  for (let l = 0; l < spec.layers; l++) {
    const p = layerPrefix(l);
    const [q, k, v, o, gate, up, down] = layerLinears(spec, l).map((lin) => linear(lin.name, lin.K, lin.N, lin.bias)) as [
      Float32Array, Float32Array, Float32Array, Float32Array, Float32Array, Float32Array, Float32Array,
    ];
    const bias = (name: string): Float32Array | null => (spec.qkvBias ? f32(`${p}.self_attn.${name}.bias`) : null);
    layers.push({
      attnNorm: f32(`${p}.input_layernorm.weight`),
      q, k, v, o,
      qBias: bias('q_proj'),
      kBias: bias('k_proj'),
      vBias: bias('v_proj'),
      ffnNorm: f32(`${p}.post_attention_layernorm.weight`),
      gate, up, down,
    });
  }
  const embed = f32(EMBED);
  return { embed, layers, norm: f32(FINAL_NORM), lmHead: spec.tieEmbeddings ? embed : f32(`${LM_HEAD}.weight`) };
}

/** Keys (after RoPE) and values of every position fed so far, per layer. */
export class KvCache {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  /** Positions filled. */
  length = 0;

  constructor(spec: ModelSpec, readonly capacity: number) {
    const kvDim = spec.kvHeads * spec.headDim;
    this.keys = Array.from({ length: spec.layers }, () => new Float32Array(capacity * kvDim));
    this.values = Array.from({ length: spec.layers }, () => new Float32Array(capacity * kvDim));
  }

  /** Forgets positions from `length` on (speculative rollback). */
  truncate(length: number): void {
    if (length < 0 || length > this.length) throw new Error(`KvCache.truncate: ${length} is outside 0..${this.length}`);
    this.length = length;
  }
}

/** out[t, n] = Σ_k x[t, k]·w[n, k] (+ bias[n]) for T rows; w is [N, K]. */
export function linear(x: Float32Array, T: number, K: number, w: Float32Array, N: number, bias: Float32Array | null = null): Float32Array {
  const out = new Float32Array(T * N);
  let t = 0;
  for (; t + 4 <= T; t += 4) {
    const x0 = t * K, x1 = x0 + K, x2 = x1 + K, x3 = x2 + K;
    for (let n = 0; n < N; n++) {
      const w0 = n * K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const wk = w[w0 + k]!;
        s0 += x[x0 + k]! * wk;
        s1 += x[x1 + k]! * wk;
        s2 += x[x2 + k]! * wk;
        s3 += x[x3 + k]! * wk;
      }
      const b = bias ? bias[n]! : 0;
      out[t * N + n] = s0 + b;
      out[(t + 1) * N + n] = s1 + b;
      out[(t + 2) * N + n] = s2 + b;
      out[(t + 3) * N + n] = s3 + b;
    }
  }
  for (; t < T; t++) {
    const x0 = t * K;
    for (let n = 0; n < N; n++) {
      const w0 = n * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += x[x0 + k]! * w[w0 + k]!;
      out[t * N + n] = s + (bias ? bias[n]! : 0);
    }
  }
  return out;
}

/** RMSNorm of each of T rows: x / sqrt(mean(x²) + eps) · weight. */
export function rmsNorm(x: Float32Array, T: number, D: number, weight: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(T * D);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[t * D + i]! * x[t * D + i]!;
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) out[t * D + i] = x[t * D + i]! * inv * weight[i]!;
  }
  return out;
}

export class ReferenceModel {
  private readonly invFreq: Float64Array;

  constructor(readonly spec: ModelSpec, readonly weights: ReferenceWeights) {
    this.invFreq = ropeInvFreq(spec);
  }

  static fromStore(spec: ModelSpec, store: TensorStore): ReferenceModel {
    return new ReferenceModel(spec, loadReferenceWeights(spec, store));
  }

  newCache(capacity = this.spec.maxPositions): KvCache {
    return new KvCache(this.spec, capacity);
  }

  /** Rotates each head of row `row` (heads × headDim) by position `pos`. */
  private rope(v: Float32Array, row: number, heads: number, pos: number): void {
    const { headDim, ropeLayout } = this.spec;
    for (let i = 0; i < headDim / 2; i++) {
      const angle = pos * this.invFreq[i]!;
      const c = Math.cos(angle), s = Math.sin(angle);
      const [a, b] = ropePair(ropeLayout, headDim, i);
      for (let h = 0; h < heads; h++) {
        const base = row + h * headDim;
        const x0 = v[base + a]!, x1 = v[base + b]!;
        v[base + a] = x0 * c - x1 * s;
        v[base + b] = x0 * s + x1 * c;
      }
    }
  }

  /**
   * Feeds `tokens` at positions cache.length, cache.length+1, … and appends them to the cache.
   * Returns logits [rows, vocab]: every fed token's row ('all'), the last one's ('last'), or none.
   */
  forward(tokens: readonly number[], cache: KvCache, opts: { logits?: 'all' | 'last' | 'none' } = {}): Float32Array {
    const s = this.spec, w = this.weights;
    const T = tokens.length, H = s.hidden, hd = s.headDim;
    const qDim = s.heads * hd, kvDim = s.kvHeads * hd, group = s.heads / s.kvHeads;
    const start = cache.length;
    if (T === 0) throw new Error('forward: no tokens');
    if (start + T > cache.capacity) throw new Error(`forward: ${start + T} positions exceed the KV cache capacity ${cache.capacity}`);

    // Token embedding.
    const x = new Float32Array(T * H);
    tokens.forEach((id, t) => {
      if (!(Number.isInteger(id) && id >= 0 && id < s.vocabSize)) throw new Error(`forward: token ${id} at position ${start + t} is outside the vocabulary (${s.vocabSize})`);
      x.set(w.embed.subarray(id * H, (id + 1) * H), t * H);
    });

    const scale = 1 / Math.sqrt(hd);
    const scores = new Float64Array(start + T);
    for (const [l, lw] of w.layers.entries()) {
      // Attention block.
      const xn = rmsNorm(x, T, H, lw.attnNorm, s.rmsNormEps);
      const q = linear(xn, T, H, lw.q, qDim, lw.qBias);
      const k = linear(xn, T, H, lw.k, kvDim, lw.kBias);
      const v = linear(xn, T, H, lw.v, kvDim, lw.vBias);
      for (let t = 0; t < T; t++) {
        this.rope(q, t * qDim, s.heads, start + t);
        this.rope(k, t * kvDim, s.kvHeads, start + t);
      }
      const keys = cache.keys[l], values = cache.values[l];
      if (!keys || !values) throw new Error(`reference forward: no KV cache for layer ${l}`);
      keys.set(k, start * kvDim);
      values.set(v, start * kvDim);

      const att = new Float32Array(T * qDim);
      for (let t = 0; t < T; t++) {
        const pos = start + t;
        const first = s.slidingWindow === null ? 0 : Math.max(0, pos - s.slidingWindow + 1);
        for (let h = 0; h < s.heads; h++) {
          const qo = t * qDim + h * hd, kvo = Math.floor(h / group) * hd;
          let max = -Infinity;
          for (let j = first; j <= pos; j++) {
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[qo + i]! * keys[j * kvDim + kvo + i]!;
            scores[j] = dot * scale;
            if (scores[j]! > max) max = scores[j]!;
          }
          let sum = 0;
          for (let j = first; j <= pos; j++) {
            scores[j] = Math.exp(scores[j]! - max);
            sum += scores[j]!;
          }
          for (let i = 0; i < hd; i++) {
            let acc = 0;
            for (let j = first; j <= pos; j++) acc += scores[j]! * values[j * kvDim + kvo + i]!;
            att[qo + i] = acc / sum;
          }
        }
      }
      const attOut = linear(att, T, qDim, lw.o, H);
      for (let i = 0; i < T * H; i++) x[i] = x[i]! + attOut[i]!;

      // SwiGLU feed-forward block.
      const xf = rmsNorm(x, T, H, lw.ffnNorm, s.rmsNormEps);
      const gate = linear(xf, T, H, lw.gate, s.ffn);
      const up = linear(xf, T, H, lw.up, s.ffn);
      for (let i = 0; i < T * s.ffn; i++) {
        const g = gate[i]!;
        gate[i] = (g / (1 + Math.exp(-g))) * up[i]!;
      }
      const down = linear(gate, T, s.ffn, lw.down, H);
      for (let i = 0; i < T * H; i++) x[i] = x[i]! + down[i]!;
    }
    cache.length = start + T;

    const mode = opts.logits ?? 'all';
    if (mode === 'none') return new Float32Array(0);
    const rows = mode === 'all' ? x : x.subarray((T - 1) * H);
    const R = mode === 'all' ? T : 1;
    return linear(rmsNorm(rows, R, H, w.norm, s.rmsNormEps), R, H, w.lmHead, s.vocabSize);
  }
}

export function argmax(logits: ArrayLike<number>, offset = 0, n = logits.length - offset): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (logits[offset + i]! > logits[offset + best]!) best = i;
  return best;
}

/** log softmax(row)[id], in float64. */
export function logProb(logits: ArrayLike<number>, offset: number, n: number, id: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[offset + i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[offset + i]! - max);
  return logits[offset + id]! - max - Math.log(sum);
}

/**
 * Greedy decoding: feeds the prompt, then appends the argmax token until `maxNew` tokens or a
 * stop id would be emitted (the stop id is not appended). Returns prompt + generated ids.
 */
export function greedyGenerate(model: ReferenceModel, prompt: readonly number[], maxNew: number, stopIds: readonly number[] = []): number[] {
  const cache = model.newCache(Math.min(model.spec.maxPositions, prompt.length + maxNew));
  const V = model.spec.vocabSize;
  const out = [...prompt];
  let logits = model.forward(prompt, cache, { logits: 'last' });
  for (let i = 0; i < maxNew; i++) {
    const next = argmax(logits, 0, V);
    if (stopIds.includes(next)) break;
    out.push(next);
    if (i + 1 < maxNew) logits = model.forward([next], cache, { logits: 'last' });
  }
  return out;
}

export interface PerplexityResult {
  perplexity: number;
  /** Mean negative log-likelihood per predicted token. */
  nll: number;
  predictions: number;
  windows: number;
}

/**
 * Perplexity over non-overlapping windows, each starting with no context: window w feeds
 * ids[i .. i+window) (i = w·window) and scores the predictions of ids[i+1 .. i+window].
 */
export function windowedPerplexity(model: ReferenceModel, ids: readonly number[], window: number, maxWindows = Infinity): PerplexityResult {
  const V = model.spec.vocabSize;
  let nll = 0, predictions = 0, windows = 0;
  for (let i = 0; i + window + 1 <= ids.length && windows < maxWindows; i += window, windows++) {
    const logits = model.forward(ids.slice(i, i + window), model.newCache(window), { logits: 'all' });
    for (let r = 0; r < window; r++) nll -= logProb(logits, r * V, V, ids[i + r + 1]!);
    predictions += window;
  }
  if (predictions === 0) throw new Error(`windowedPerplexity: ${ids.length} ids are too few for one window of ${window}`);
  return { perplexity: Math.exp(nll / predictions), nll: nll / predictions, predictions, windows };
}
