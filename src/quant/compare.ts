// `kiln eval compare`: how far a (quantized) model's next-token distributions are from a
// reference's, teacher-forced on the same windows as `kiln eval ppl` (no context per window):
// mean KL(reference ‖ model) per prediction, top-1 agreement, and both perplexities.
import type { LLM } from '../llm.js';

export interface CompareResult {
  /** Mean over predictions of Σ_v p_ref(v) · (log p_ref(v) − log p_model(v)), in nats. */
  kl: number;
  /** Fraction of predictions whose argmax agrees. */
  top1: number;
  pplModel: number;
  pplReference: number;
  predictions: number;
  windows: number;
  ms: number;
}

/** log-softmax of row r of logits [rows, V], in float64. */
function logSoftmax(logits: Float32Array, r: number, V: number, out: Float64Array): void {
  let m = -Infinity;
  for (let j = 0; j < V; j++) m = Math.max(m, logits[r * V + j]!);
  let s = 0;
  for (let j = 0; j < V; j++) s += Math.exp(logits[r * V + j]! - m);
  const lse = m + Math.log(s);
  for (let j = 0; j < V; j++) out[j] = logits[r * V + j]! - lse;
}

export async function compareModels(
  model: LLM, reference: LLM, ids: readonly number[],
  opts: { window?: number; maxWindows?: number; onWindow?: (done: number, total: number) => void } = {},
): Promise<CompareResult> {
  const W = opts.window ?? 256, V = model.spec.vocabSize;
  if (reference.spec.vocabSize !== V) throw new Error(`eval compare: the model's vocabulary (${V}) and the reference's (${reference.spec.vocabSize}) differ`);
  if (!Number.isInteger(W) || W < 1) throw new Error(`eval compare: window ${W} must be a positive integer`);
  for (const m of [model, reference]) if (W > m.spec.maxPositions) throw new Error(`eval compare: window ${W} exceeds ${m.source}'s context of ${m.spec.maxPositions}`);
  const starts: number[] = [];
  for (let i = 0; i + W + 1 <= ids.length; i += W) starts.push(i);
  const windows = Math.min(starts.length, opts.maxWindows ?? Infinity);
  if (!windows) throw new Error(`eval compare: the text has ${ids.length} tokens, fewer than one window of ${W} + 1`);
  const t0 = performance.now();
  const lp = new Float64Array(V), lq = new Float64Array(V);
  let kl = 0, agree = 0, nllP = 0, nllQ = 0, n = 0;
  for (let w = 0; w < windows; w++) {
    const i = starts[w]!, chunk = ids.slice(i, i + W);
    const q = await model.logits(chunk), p = await reference.logits(chunk);
    for (let r = 0; r < W; r++) {
      logSoftmax(p, r, V, lp);
      logSoftmax(q, r, V, lq);
      let d = 0, ap = 0, aq = 0;
      for (let j = 0; j < V; j++) {
        d += Math.exp(lp[j]!) * (lp[j]! - lq[j]!);
        if (lp[j]! > lp[ap]!) ap = j;
        if (lq[j]! > lq[aq]!) aq = j;
      }
      kl += d;
      if (ap === aq) agree++;
      const target = ids[i + r + 1]!;
      nllP -= lp[target]!;
      nllQ -= lq[target]!;
      n++;
    }
    opts.onWindow?.(w + 1, windows);
  }
  return { kl: kl / n, top1: agree / n, pplModel: Math.exp(nllQ / n), pplReference: Math.exp(nllP / n), predictions: n, windows, ms: performance.now() - t0 };
}
