// Host side of sampling and token acceptance: per-request parameters → the ops' row tables, with
// validation before launch (temperature < 0, top-p outside (0, 1], k larger than the allocated
// draft slots, draft ids outside the vocabulary, probabilities that are NaN or do not sum to ~1),
// each error naming the request and field. Validation lives here, not in the kernels, where it
// would cost every token.
import { type rejectionSampler, type greedyAcceptance } from '../../codegen/kernels/acceptance.js';
import { STREAM_SAMPLE } from '../../codegen/kernels/random.js';
import type { sampling } from '../../codegen/kernels/sampling.js';
import type { Device, DeviceBuffer, HostArray } from '../backend/device.js';
import { uploadScratch } from '../backend/scratch.js';

export class SamplingInputError extends Error {}

/** One row's sampling transforms and its random key. */
export interface SamplingRequest {
  /** 0 = greedy (argmax); otherwise logits are divided by it. */
  temperature: number;
  /** Keep the k most likely tokens (ties at the k-th value all stay); 0 or absent = off. */
  topK?: number;
  /** Keep the smallest most-likely set with mass ≥ topP, in (0, 1]; 1 or absent = off. */
  topP?: number;
  /** Keep tokens with p ≥ minP · max p, in [0, 1]; 0 or absent = off. */
  minP?: number;
  /** The request's seed (u32). */
  seed: number;
  /** Position of the token being sampled (u32): with the seed, it alone keys the draw. */
  position: number;
  /** Random stream (random.ts): STREAM_SAMPLE by default, STREAM_DRAFT for drafters. */
  stream?: number;
}

const isU32 = (v: number) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

/** The sampling op's rowParams / rowInfo tables and its `filters` size. */
export function samplingRows(reqs: SamplingRequest[], vocab: number): { rowParams: Float32Array; rowInfo: Uint32Array; filters: number } {
  if (!reqs.length) throw new SamplingInputError('sampling: no rows');
  if (!Number.isInteger(vocab) || vocab < 1) throw new SamplingInputError(`sampling: vocab = ${vocab} must be a positive integer`);
  const rowParams = new Float32Array(reqs.length * 4);
  const rowInfo = new Uint32Array(reqs.length * 4);
  let filters = 0;
  reqs.forEach((r, i) => {
    const what = `sampling: row ${i}`;
    const { temperature: t, topK = 0, topP = 1, minP = 0, stream = STREAM_SAMPLE } = r;
    if (!(t >= 0) || !Number.isFinite(t)) throw new SamplingInputError(`${what}: temperature = ${t} must be ≥ 0 and finite`);
    if (t > 0 && !Number.isFinite(Math.fround(1 / t))) throw new SamplingInputError(`${what}: temperature = ${t} is too small (1/temperature overflows f32)`);
    if (!(topP > 0 && topP <= 1)) throw new SamplingInputError(`${what}: topP = ${topP} must be in (0, 1]`);
    if (!(minP >= 0 && minP <= 1)) throw new SamplingInputError(`${what}: minP = ${minP} must be in [0, 1]`);
    if (!isU32(topK)) throw new SamplingInputError(`${what}: topK = ${topK} must be a non-negative integer`);
    if (!isU32(r.seed)) throw new SamplingInputError(`${what}: seed = ${r.seed} must be a u32`);
    if (!isU32(r.position)) throw new SamplingInputError(`${what}: position = ${r.position} must be a u32`);
    if (!isU32(stream)) throw new SamplingInputError(`${what}: stream = ${stream} must be a u32`);
    rowParams.set([t === 0 ? 0 : 1 / t, topP, minP, 0], i * 4);
    rowInfo.set([topK >= vocab ? 0 : topK, r.seed, r.position, stream], i * 4);
    if (t > 0 && ((topK > 0 && topK < vocab) || topP < 1 || minP > 0)) filters = 1;
  });
  return { rowParams, rowInfo, filters };
}

/** Each of `rows` rows of `vocab` probabilities: finite, ≥ 0, summing to 1 within `tol`. */
export function checkProbabilities(name: string, probs: Float32Array, rows: number, vocab: number, tol = 1e-3): void {
  if (probs.length < rows * vocab) throw new SamplingInputError(`${name}: ${probs.length} values, ${rows} rows of ${vocab} need ${rows * vocab}`);
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    for (let i = r * vocab; i < (r + 1) * vocab; i++) {
      const v = probs[i]!;
      if (!(v >= 0) || !Number.isFinite(v)) throw new SamplingInputError(`${name}: row ${r}, token ${i - r * vocab} has probability ${v}`);
      sum += v;
    }
    if (Math.abs(sum - 1) > tol) throw new SamplingInputError(`${name}: row ${r} sums to ${sum}, not 1 (±${tol})`);
  }
}

/** One sequence's drafts for acceptance. */
export interface DraftSequence {
  /** The k draft tokens (k ≤ maxK; may differ between sequences). */
  draftTokens: ArrayLike<number>;
  seed: number;
  /** Position of the first draft token. */
  position: number;
}

/** The acceptance ops' draftTokens [seqs, maxK] and seqInfo [seqs, 4] tables. */
export function acceptanceRows(seqs: DraftSequence[], maxK: number, vocab: number): { draftTokens: Uint32Array; seqInfo: Uint32Array } {
  if (!seqs.length) throw new SamplingInputError('acceptance: no sequences');
  if (!Number.isInteger(maxK) || maxK < 1) throw new SamplingInputError(`acceptance: maxK = ${maxK} must be a positive integer`);
  const draftTokens = new Uint32Array(seqs.length * maxK);
  const seqInfo = new Uint32Array(seqs.length * 4);
  seqs.forEach((s, i) => {
    const what = `acceptance: sequence ${i}`;
    const k = s.draftTokens.length;
    if (k > maxK) throw new SamplingInputError(`${what}: ${k} draft tokens exceed the ${maxK} allocated draft slots`);
    for (let j = 0; j < k; j++) {
      const x = s.draftTokens[j]!;
      if (!Number.isInteger(x) || x < 0 || x >= vocab) throw new SamplingInputError(`${what}: draft token ${j} = ${x} is outside the vocabulary of ${vocab}`);
      draftTokens[i * maxK + j] = x;
    }
    if (!isU32(s.seed)) throw new SamplingInputError(`${what}: seed = ${s.seed} must be a u32`);
    if (!isU32(s.position) || s.position + maxK > 0xffffffff) throw new SamplingInputError(`${what}: position = ${s.position} must be a u32 with room for the drafts`);
    seqInfo.set([k, s.seed, s.position, 0], i * 4);
  });
  return { draftTokens, seqInfo };
}

function upload<T extends 'u32' | 'f32'>(dev: Device, name: string, t: T, data: HostArray<T>): DeviceBuffer<T> {
  return uploadScratch(dev, `sampling.${name}`, t, data);
}

/** Validate the requests and queue the sampling op: probs [rows, V] and tokens [rows] out. */
export function runSampling(dev: Device, o: ReturnType<typeof sampling>, bufs: {
  logits: DeviceBuffer<'f32'>; probs: DeviceBuffer<'f32'>; tokens: DeviceBuffer<'u32'>;
}, reqs: SamplingRequest[], vocab: number): void {
  const { rowParams, rowInfo, filters } = samplingRows(reqs, vocab);
  const rows = reqs.length;
  // Buffer lengths: the op's binding shapes ([rows, vocab], [rows]), checked by dev.run.
  dev.run(o, {
    ...bufs, rowParams: upload(dev, 'rowParams', 'f32', rowParams), rowInfo: upload(dev, 'rowInfo', 'u32', rowInfo),
  }, { rows, vocab, filters });
}

type Probs = DeviceBuffer<'f32'> | Float32Array;
function probsBuffer(dev: Device, name: string, p: Probs, rowsOf: (k: number) => number, seqs: DraftSequence[], maxK: number, vocab: number): DeviceBuffer<'f32'> {
  const total = seqs.length * rowsOf(maxK) * vocab;
  if (!(p instanceof Float32Array)) return p; // its length: the op's binding shape, checked by dev.run
  if (p.length < total) throw new SamplingInputError(`acceptance: ${name} has ${p.length} values, needs ${total}`);
  // Only the rows each sequence uses must be distributions; padding rows are never read.
  seqs.forEach((s, i) => {
    const used = rowsOf(s.draftTokens.length);
    checkProbabilities(`acceptance: ${name} of sequence ${i}`, p.subarray(i * rowsOf(maxK) * vocab, (i * rowsOf(maxK) + used) * vocab), used, vocab);
  });
  return upload(dev, name, 'f32', p);
}

/**
 * Validate and queue rejection sampling. draftProbs [seqs, maxK, V] and targetProbs [seqs,
 * maxK + 1, V] may be host arrays (checked: finite, ≥ 0, rows summing to ~1, then uploaded) or
 * device buffers (as the sampling op wrote them: not read back). Outputs: accepted [seqs],
 * tokens [seqs, maxK + 1] (accepted drafts, the extra token, then 0xffffffff).
 */
export function runRejectionSampler(dev: Device, o: ReturnType<typeof rejectionSampler>, io: {
  draftProbs: Probs; targetProbs: Probs; accepted: DeviceBuffer<'u32'>; tokens: DeviceBuffer<'u32'>;
}, seqs: DraftSequence[], maxK: number, vocab: number): void {
  const { draftTokens, seqInfo } = acceptanceRows(seqs, maxK, vocab);
  const draftProbs = probsBuffer(dev, 'draftProbs', io.draftProbs, (k) => k, seqs, maxK, vocab);
  const targetProbs = probsBuffer(dev, 'targetProbs', io.targetProbs, (k) => k + 1, seqs, maxK, vocab);
  dev.run(o, {
    draftTokens: upload(dev, 'draftTokens', 'u32', draftTokens), draftProbs, targetProbs,
    seqInfo: upload(dev, 'seqInfo', 'u32', seqInfo), accepted: io.accepted, tokens: io.tokens,
  }, { seqs: seqs.length, vocab, maxK });
}

/** Validate and queue greedy acceptance on targetScores [seqs, maxK + 1, V] (device-resident). */
export function runGreedyAcceptance(dev: Device, o: ReturnType<typeof greedyAcceptance>, io: {
  targetScores: DeviceBuffer<'f32'>; accepted: DeviceBuffer<'u32'>; tokens: DeviceBuffer<'u32'>;
}, seqs: DraftSequence[], maxK: number, vocab: number): void {
  const { draftTokens, seqInfo } = acceptanceRows(seqs, maxK, vocab);
  dev.run(o, {
    draftTokens: upload(dev, 'draftTokens', 'u32', draftTokens), targetScores: io.targetScores,
    seqInfo: upload(dev, 'seqInfo', 'u32', seqInfo), accepted: io.accepted, tokens: io.tokens,
  }, { seqs: seqs.length, vocab, maxK });
}
