// Sampling and speculative acceptance on tensors: per-row requests are validated on the host
// (src/ops/sampling.ts) and the kernels write token tensors, read back with `await t.read()`.
import { greedyAcceptance, rejectionSampler } from '../../../codegen/kernels/acceptance.js';
import { sampling } from '../../../codegen/kernels/sampling.js';
import type { Device } from '../../backend/device.js';
import {
  type DraftSequence, runGreedyAcceptance, runRejectionSampler, runSampling, type SamplingRequest,
} from '../sampling.js';
import { PerDevice } from './cache.js';
import { expectTensor, type Tensor, tensor, TensorShapeError } from '../tensor.js';

const samplers = new PerDevice<ReturnType<typeof sampling>>();
const rejecters = new PerDevice<ReturnType<typeof rejectionSampler>>();
const greedy = new PerDevice<ReturnType<typeof greedyAcceptance>>();

/**
 * One token per row of logits f32 [rows, vocab]: requests[i] is row i's temperature (0: argmax),
 * top-k/top-p/min-p, seed and position. Returns the tokens (u32 [rows]) and the distributions
 * they were drawn from (f32 [rows, vocab], after the filters).
 */
export function sample(device: Device, logits: Tensor, requests: readonly SamplingRequest[]): { tokens: Tensor<'u32'>; probs: Tensor<'f32'> } {
  const l = expectTensor('sample', 'logits', logits, 'f32', [requests.length, null], `[rows = ${requests.length}, vocab]`);
  const vocab = l.shape[1] ?? 0;
  const tokens = tensor(device, 'u32', [requests.length], undefined, 'sample.tokens');
  const probs = tensor(device, 'f32', [requests.length, vocab], undefined, 'sample.probs');
  try {
    runSampling(device, samplers.get(device, null, () => sampling({ caps: device.caps })), { logits: l.buffer, probs: probs.buffer, tokens: tokens.buffer }, [...requests], vocab);
  } catch (e) {
    tokens.free();
    probs.free();
    throw e;
  }
  return { tokens, probs };
}

export interface Acceptance {
  /** Drafts accepted per sequence, u32 [seqs]. */
  accepted: Tensor<'u32'>;
  /** Per sequence: the accepted drafts, then one more token, then 0xffffffff: u32 [seqs, maxK + 1]. */
  tokens: Tensor<'u32'>;
}

function outputs(device: Device, seqs: number, maxK: number): Acceptance {
  return {
    accepted: tensor(device, 'u32', [seqs], undefined, 'accept.accepted'),
    tokens: tensor(device, 'u32', [seqs, maxK + 1], undefined, 'accept.tokens'),
  };
}

/**
 * Speculative rejection sampling (lossless): for each sequence's drafts, draft probabilities f32
 * [seqs, maxK, vocab] and target probabilities f32 [seqs, maxK + 1, vocab].
 */
export function accept(device: Device, seqs: readonly DraftSequence[], draftProbs: Tensor, targetProbs: Tensor): Acceptance {
  const d = expectTensor('accept', 'draftProbs', draftProbs, 'f32', [seqs.length, null, null], `[seqs = ${seqs.length}, maxK, vocab]`);
  const [, maxK = 0, vocab = 0] = d.shape;
  if (maxK < 1) throw new TensorShapeError('accept: draftProbs has no draft positions (maxK = 0)');
  const t = expectTensor('accept', 'targetProbs', targetProbs, 'f32', [seqs.length, maxK + 1, vocab], `[seqs, maxK + 1 = ${maxK + 1}, vocab = ${vocab}]`);
  const out = outputs(device, seqs.length, maxK);
  try {
    runRejectionSampler(device, rejecters.get(device, null, () => rejectionSampler({ caps: device.caps })), {
      draftProbs: d.buffer, targetProbs: t.buffer, accepted: out.accepted.buffer, tokens: out.tokens.buffer,
    }, [...seqs], maxK, vocab);
  } catch (e) {
    out.accepted.free();
    out.tokens.free();
    throw e;
  }
  return out;
}

/** Greedy acceptance: drafts accepted while they equal the argmax of the target's scores f32 [seqs, maxK + 1, vocab]. */
export function acceptGreedy(device: Device, seqs: readonly DraftSequence[], targetScores: Tensor): Acceptance {
  const s = expectTensor('acceptGreedy', 'targetScores', targetScores, 'f32', [seqs.length, null, null], `[seqs = ${seqs.length}, maxK + 1, vocab]`);
  const [, rows = 0, vocab = 0] = s.shape;
  if (rows < 2) throw new TensorShapeError(`acceptGreedy: targetScores has ${rows} rows per sequence; maxK + 1 ≥ 2`);
  const out = outputs(device, seqs.length, rows - 1);
  try {
    runGreedyAcceptance(device, greedy.get(device, null, () => greedyAcceptance({ caps: device.caps })), { targetScores: s.buffer, accepted: out.accepted.buffer, tokens: out.tokens.buffer }, [...seqs], rows - 1, vocab);
  } catch (e) {
    out.accepted.free();
    out.tokens.free();
    throw e;
  }
  return out;
}
