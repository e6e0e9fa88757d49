// Module-output losses for AWQ's scale search, as AutoAWQ scores q/k/v and gate/up: not the
// linears' own outputs but the output of the block they feed — self-attention (RoPE, causal
// softmax, o_proj) for q/k/v, the SwiGLU MLP (down_proj) for gate/up — with the group's weights
// quantized and the rest in full precision. Run on the host over a sample of whole calibration
// sequences (GroupStats.sample), since a nonlinearity leaves no Gram-matrix shortcut.
import { linear } from '../model/reference.js';
import { ropeInvFreq, ropePair, type ModelSpec } from '../model/spec.js';
import { type HalfWeight, pseudoQuantizeRow } from './awqSearch.js';
import { h } from './rtn.js';

/** W scaled by s per input channel, quantized (AutoAWQ's rule), scaled back: [N, K]. */
export function effectiveWeight(x: HalfWeight, s: Float32Array, g: number): Float32Array {
  const { w, N, K } = x;
  const out = new Float32Array(N * K), row = new Float32Array(K), dq = new Float64Array(K), codes = new Uint8Array(g);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) row[k] = h(w[n * K + k]! * s[k]!);
    pseudoQuantizeRow(row, 0, K, g, dq, codes);
    for (let k = 0; k < K; k++) out[n * K + k] = h(dq[k]! / s[k]!);
  }
  return out;
}

/** The SwiGLU MLP on rows x [T, D]: down(SiLU(x·gateᵀ) ⊙ x·upᵀ). */
export function mlpBlock(x: Float32Array, T: number, D: number, F: number, gate: Float32Array, up: Float32Array, down: Float32Array): Float32Array {
  const a = linear(x, T, D, gate, F), u = linear(x, T, D, up, F);
  for (let i = 0; i < a.length; i++) a[i] = (a[i]! / (1 + Math.exp(-a[i]!))) * u[i]!;
  return linear(a, T, F, down, D);
}

export interface AttentionWeights {
  q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array;
  qBias: Float32Array | null; kBias: Float32Array | null; vBias: Float32Array | null;
}

/** Self-attention (+ o_proj) over S = T / L whole sequences of L rows each, positions 0..L−1. */
export function attentionBlock(spec: ModelSpec, x: Float32Array, T: number, L: number, w: AttentionWeights): Float32Array {
  const D = spec.hidden, hd = spec.headDim, H = spec.heads, Hk = spec.kvHeads, group = H / Hk;
  const qDim = H * hd, kvDim = Hk * hd;
  const q = linear(x, T, D, w.q, qDim, w.qBias), k = linear(x, T, D, w.k, kvDim, w.kBias), v = linear(x, T, D, w.v, kvDim, w.vBias);
  const inv = ropeInvFreq(spec);
  for (let t = 0; t < T; t++) {
    const pos = t % L;
    for (let i = 0; i < hd / 2; i++) {
      const c = Math.cos(pos * inv[i]!), sn = Math.sin(pos * inv[i]!);
      const [a, b] = ropePair(spec.ropeLayout, hd, i);
      for (const [buf, heads, dim] of [[q, H, qDim], [k, Hk, kvDim]] as const) {
        for (let hh = 0; hh < heads; hh++) {
          const base = t * dim + hh * hd, x0 = buf[base + a]!, x1 = buf[base + b]!;
          buf[base + a] = x0 * c - x1 * sn;
          buf[base + b] = x0 * sn + x1 * c;
        }
      }
    }
  }
  const att = new Float32Array(T * qDim), scores = new Float64Array(L), scale = 1 / Math.sqrt(hd);
  for (let s0 = 0; s0 < T; s0 += L) {
    for (let p = 0; p < L; p++) {
      const first = spec.slidingWindow === null ? 0 : Math.max(0, p - spec.slidingWindow + 1);
      for (let hh = 0; hh < H; hh++) {
        const qo = (s0 + p) * qDim + hh * hd, ko = Math.floor(hh / group) * hd;
        let max = -Infinity;
        for (let j = first; j <= p; j++) {
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += q[qo + i]! * k[(s0 + j) * kvDim + ko + i]!;
          scores[j] = dot * scale;
          if (scores[j]! > max) max = scores[j]!;
        }
        let sum = 0;
        for (let j = first; j <= p; j++) { scores[j] = Math.exp(scores[j]! - max); sum += scores[j]!; }
        for (let i = 0; i < hd; i++) {
          let acc = 0;
          for (let j = first; j <= p; j++) acc += scores[j]! * v[(s0 + j) * kvDim + ko + i]!;
          att[qo + i] = acc / sum;
        }
      }
    }
  }
  return linear(att, T, qDim, w.o, D);
}

function mse(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) { const d = a[i]! - b[i]!; s += d * d; }
  return s / a.length;
}

/** Loss of q/k/v scaled by s and quantized, through attention and the FP o_proj. */
export function attentionLoss(spec: ModelSpec, x: Float32Array, T: number, L: number, q: HalfWeight, k: HalfWeight, v: HalfWeight, o: HalfWeight,
  bias: { q: Float32Array | null; k: Float32Array | null; v: Float32Array | null }, g: number): (s: Float32Array) => number {
  const fp = attentionBlock(spec, x, T, L, { q: q.w, k: k.w, v: v.w, o: o.w, qBias: bias.q, kBias: bias.k, vBias: bias.v });
  return (s) => mse(attentionBlock(spec, x, T, L, {
    q: effectiveWeight(q, s, g), k: effectiveWeight(k, s, g), v: effectiveWeight(v, s, g), o: o.w, qBias: bias.q, kBias: bias.k, vBias: bias.v,
  }), fp);
}

/** Loss of gate/up scaled by s and quantized, through the MLP with the FP down_proj. */
export function mlpLoss(x: Float32Array, T: number, gate: HalfWeight, up: HalfWeight, down: HalfWeight, g: number): (s: Float32Array) => number {
  const D = gate.K, F = gate.N;
  const fp = mlpBlock(x, T, D, F, gate.w, up.w, down.w);
  return (s) => mse(mlpBlock(x, T, D, F, effectiveWeight(gate, s, g), effectiveWeight(up, s, g), down.w), fp);
}
