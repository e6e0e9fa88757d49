// Shared by the runtime tests: the golden files in ../shared/models, read once, and the
// row-wise comparisons the issue asks for (norm-wise error per logits row; argmax agreement
// wherever the reference's top-two margin exceeds a tolerance).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { LLM } from '../src/llm.js';
import { relErr } from './util.js';

/** ../shared beside the checkout (CI clones the project next to it). */
export const SHARED_ROOT = path.resolve(import.meta.dirname, '../../shared');
export const SHARED = `${SHARED_ROOT}/models`;
export const MODELS = path.resolve(import.meta.dirname, '../models');
export const STORIES_DIR = `${SHARED}/stories260K`;
export const STORIES_BIN = `${STORIES_DIR}/stories260K.bin`;
export const HELDOUT = `${SHARED_ROOT}/data/brown-heldout.txt`;
export const haveStories = fs.existsSync(STORIES_BIN) && fs.existsSync(`${STORIES_DIR}/golden.json`);

export type BrownName = 'target' | 'draft';
export interface BrownGolden {
  prompt_ids: number[];
  greedy_ids_fp32: number[];
  greedy_text_fp32: string;
  last_logits_fp32_first16: number[];
  logits_file: string;
  logits_shape: [number, number];
  heldout_ppl_first_2048_fp32: number;
}
export const BROWN_PROMPT = 'The jury said that';
export const brown = JSON.parse(fs.readFileSync(`${SHARED}/brown-models.json`, 'utf8')) as Record<BrownName, BrownGolden>;
export const brownDir = (which: BrownName): string => path.join(MODELS, `brown-${which}`);

export interface StoriesCase { prompt: number[]; steps: number; tokens: number[]; logits_file?: string; logits_shape?: [number, number] }
export function storiesGolden(): { cases: StoriesCase[] } {
  return JSON.parse(fs.readFileSync(`${STORIES_DIR}/golden.json`, 'utf8')) as { cases: StoriesCase[] };
}

export function readF32File(file: string): Float32Array {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

export function brownLogits(which: BrownName): Float32Array {
  const g = brown[which];
  const ref = readF32File(`${SHARED}/${g.logits_file}`);
  if (ref.length !== g.logits_shape[0] * g.logits_shape[1]) throw new Error(`${g.logits_file}: ${ref.length} floats, expected ${g.logits_shape.join(' × ')}`);
  return ref;
}

/** Norm-wise error of each row of width V. */
export function rowErrors(out: Float32Array, ref: Float32Array, V: number): number[] {
  if (out.length !== ref.length) throw new Error(`logits: ${out.length} values vs reference ${ref.length}`);
  const errs: number[] = [];
  for (let r = 0; r * V < ref.length; r++) errs.push(relErr(out.subarray(r * V, (r + 1) * V), ref.subarray(r * V, (r + 1) * V)));
  return errs;
}

export function argmax(a: ArrayLike<number>, from = 0, n = a.length): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (a[from + i]! > a[from + best]!) best = i;
  return best;
}

/**
 * Rows where the reference's top-two margin exceeds `margin` (absolute logits) must have the same
 * argmax. Returns how many rows were checked and which disagreed.
 */
export function argmaxAgreement(out: Float32Array, ref: Float32Array, V: number, margin: number): { checked: number; rows: number; mismatches: string[] } {
  const mismatches: string[] = [];
  let checked = 0;
  const rows = ref.length / V;
  for (let r = 0; r < rows; r++) {
    const top = argmax(ref, r * V, V);
    let second = -Infinity;
    for (let i = 0; i < V; i++) if (i !== top && ref[r * V + i]! > second) second = ref[r * V + i]!;
    if (ref[r * V + top]! - second <= margin) continue;
    checked++;
    const got = argmax(out, r * V, V);
    if (got !== top) mismatches.push(`row ${r}: argmax ${got}, reference ${top} (margin ${(ref[r * V + top]! - second).toFixed(3)})`);
  }
  return { checked, rows, mismatches };
}

/** log softmax(row)[target] in float64. */
export function logProb(logits: Float32Array, off: number, V: number, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < V; i++) max = Math.max(max, logits[off + i]!);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp(logits[off + i]! - max);
  return logits[off + target]! - max - Math.log(sum);
}

let heldoutCache: number[] | null = null;
/** brown-heldout.txt through the model's tokenizer (one BOS, added by the tokenizer). */
export function heldoutIds(llm: LLM): number[] {
  heldoutCache ??= llm.encode(fs.readFileSync(HELDOUT, 'utf8'));
  return heldoutCache;
}

/**
 * `_eval_rule` of brown-models.json: windows of 256 predictions at i = 0, 256, …, each fed with
 * no earlier context (teacher-forced through llm.logits); perplexity = exp(mean NLL).
 */
export async function heldoutPerplexity(llm: LLM, windows: number, window = 256): Promise<{ perplexity: number; predictions: number }> {
  const ids = heldoutIds(llm);
  const V = llm.spec.vocabSize;
  let nll = 0, predictions = 0;
  for (let w = 0, i = 0; w < windows && i + window + 1 <= ids.length; w++, i += window) {
    const logits = await llm.logits(ids.slice(i, i + window));
    for (let r = 0; r < window; r++) nll -= logProb(logits, r * V, V, ids[i + r + 1]!);
    predictions += window;
  }
  return { perplexity: Math.exp(nll / predictions), predictions };
}

/** Wall-clock seconds of `fn`, logged with a label. */
export async function timed<T>(label: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const r = await fn();
  console.log(`[time] ${label}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return r;
}
