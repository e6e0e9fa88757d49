// Held-out perplexity, by the rule brown-models.json states: the tokenizer's ids for the whole
// text (one BOS), non-overlapping windows of `window` predictions, each window starting with no
// context; perplexity = exp(mean negative log-likelihood).
import type { LLM } from './llm.js';

export interface PerplexityResult {
  perplexity: number;
  predictions: number;
  windows: number;
  ms: number;
}

export async function windowedPerplexity(
  llm: LLM, ids: readonly number[], opts: { window?: number; maxWindows?: number; onWindow?: (done: number, total: number) => void } = {},
): Promise<PerplexityResult> {
  const W = opts.window ?? 256;
  if (!Number.isInteger(W) || W < 1) throw new Error(`perplexity: window ${W} must be a positive integer`);
  if (W > llm.spec.maxPositions) throw new Error(`perplexity: window ${W} exceeds the model's context of ${llm.spec.maxPositions}`);
  const starts: number[] = [];
  for (let i = 0; i + W + 1 <= ids.length; i += W) starts.push(i);
  const windows = Math.min(starts.length, opts.maxWindows ?? Infinity);
  if (!windows) throw new Error(`perplexity: the text has ${ids.length} tokens, fewer than one window of ${W} + 1`);
  const V = llm.spec.vocabSize;
  const t0 = performance.now();
  let nll = 0, n = 0;
  for (let w = 0; w < windows; w++) {
    const i = starts[w]!;
    const logits = await llm.logits(ids.slice(i, i + W));
    for (let r = 0; r < W; r++) {
      nll -= logProb(logits, r * V, V, ids[i + r + 1]!);
      n++;
    }
    opts.onWindow?.(w + 1, windows);
  }
  return { perplexity: Math.exp(nll / n), predictions: n, windows, ms: performance.now() - t0 };
}

/** log softmax(row)[target], in float64. */
function logProb(logits: Float32Array, off: number, V: number, target: number): number {
  let m = -Infinity;
  for (let j = 0; j < V; j++) m = Math.max(m, logits[off + j]!);
  let s = 0;
  for (let j = 0; j < V; j++) s += Math.exp(logits[off + j]! - m);
  return logits[off + target]! - m - Math.log(s);
}
