// Prompt-lookup drafting (n-gram): find the most recent earlier occurrence of the sequence's last
// n tokens (n = maxN down to minN) in its own prompt and output, and propose the tokens that
// followed it. No model and no device work; proposals are deterministic (q one-hot), so the
// rejection rule accepts draft x with probability p(x).
import type { DraftRequest, DraftResult, Drafter } from './drafter.js';

export interface NgramOptions {
  /** Longest suffix to match (default 3). */
  maxN?: number;
  /** Shortest suffix to match (default 1). */
  minN?: number;
}

export class NgramDrafter implements Drafter {
  readonly kind = 'ngram';
  private readonly maxN: number;
  private readonly minN: number;

  constructor(o: NgramOptions = {}) {
    this.maxN = o.maxN ?? 3;
    this.minN = o.minN ?? 1;
    if (!Number.isInteger(this.minN) || this.minN < 1 || !Number.isInteger(this.maxN) || this.maxN < this.minN) {
      throw new Error(`ngram drafter: need 1 ≤ minN ≤ maxN, got minN = ${this.minN}, maxN = ${this.maxN}`);
    }
  }

  async propose(reqs: readonly DraftRequest[]): Promise<DraftResult> {
    const maxK = Math.max(1, ...reqs.map((r) => r.k));
    return { tokens: reqs.map((r) => ngramLookup(r.tokens, r.k, this.maxN, this.minN)), probs: null, maxK };
  }

  rollback(): void {}
  release(): void {}
  async close(): Promise<void> {}
}

/** Up to k tokens that followed the latest earlier match of the longest matching suffix. */
export function ngramLookup(tokens: readonly number[], k: number, maxN: number, minN: number): number[] {
  const L = tokens.length;
  for (let n = Math.min(maxN, L - 1); n >= minN; n--) {
    // Latest start i < L − n with tokens[i .. i+n) equal to the last n tokens.
    for (let i = L - n - 1; i >= 0; i--) {
      let match = true;
      for (let j = 0; j < n; j++) if (tokens[i + j] !== tokens[L - n + j]) { match = false; break; }
      if (!match) continue;
      const out = tokens.slice(i + n, Math.min(L, i + n + k));
      if (out.length) return [...out];
    }
  }
  return [];
}
