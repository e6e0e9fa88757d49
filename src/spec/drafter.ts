// Drafters for speculative decoding: something cheap proposes the next k tokens of a sequence,
// the target verifies all k + 1 positions in one pass, and the acceptance rule keeps exactly the
// target's distribution (Leviathan et al. 2023; Chen et al. 2023). A drafter sees the tokens the
// target has committed and proposes; the engine tells it how many it kept.
import type { DeviceBuffer } from '../backend/device.js';
import type { RowSampling } from '../engine/runner.js';

export interface DraftRequest {
  id: number;
  /** The sequence's committed tokens (prompt + output); the last one is not yet in the target's KV. */
  tokens: readonly number[];
  /** Tokens to propose at most. */
  k: number;
  sampling: RowSampling;
}

export interface DraftResult {
  /** Per request, in order: the proposed tokens (at most its k; may be none). */
  tokens: number[][];
  /**
   * The draft distributions q on the device, [requests, maxK, vocab]: row (i, j) is request i's
   * distribution for its draft j, after the request's sampling transforms. null: every proposal
   * is deterministic (q is one at the proposed token).
   */
  probs: DeviceBuffer<'f32'> | null;
  maxK: number;
}

export interface Drafter {
  /** 'ngram' or 'draft-model'. */
  readonly kind: string;
  propose(reqs: readonly DraftRequest[]): Promise<DraftResult>;
  /** The sequence now has `length` committed tokens: forget draft state past them. */
  rollback(id: number, length: number): void;
  /** The sequence ended or was preempted: free its draft state. */
  release(id: number): void;
  close(): Promise<void>;
}

export class DrafterError extends Error {}
