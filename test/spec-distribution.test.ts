// Speculative sampling keeps the target's distribution at the engine level (brown-draft as the
// target — the smallest real model keeps 2 × 1400 requests cheap — on cpu:
// the rule is the same code on every backend, and the acceptance kernel's own losslessness runs on
// all of them in test/kernels/acceptance.test.ts).
//
// Each request samples T1 after a fixed 17-token prefix P (temperature 1, top-k 16; its first 16
// tokens come from the prefix cache after the first request), then one
// speculative step decides T2: a drafter proposes x0(T1), the target's most likely token after
// P + T1, with q one-hot, so the kernel accepts iff u·1 ≤ p(x0). The statistic is the number of
// requests whose T2 is x0: under the exact rule its mean is Σ p_s and its variance Σ p_s(1 − p_s)
// (p_s = p(x0 | P, T1_s), float64 from the target's logits); z² is χ²(1). N is chosen so that a
// rule accepting when u·q ≤ 1.1·p is rejected with probability ≥ 0.99 at a false-alarm rate of
// 0.001 (checked from this run's p_s), and that rule, applied to the same uniforms, is rejected.
import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STREAM_ACCEPT, randomUniformRef } from '../codegen/kernels/random.js';
import { createEngine } from '../src/engine.js';
import { type LLM, loadModel } from '../src/llm.js';
import type { DraftRequest, DraftResult, Drafter } from '../src/spec/drafter.js';
import { brownDir, HELDOUT } from './runtimeGolden.js';

const N = 1400;
const TOPK = 16;
const CHI2_1_999 = 10.828; // χ²(1) at 0.999
const Z_POWER = 3.291 + 2.326; // two-sided 0.001 plus one-sided 0.99 power

/** Top-k probabilities at temperature 1, in float64. */
function topK(row: Float32Array): Map<number, number> {
  const idx = [...row.keys()].sort((a, b) => row[b]! - row[a]! || a - b).slice(0, TOPK);
  const m = row[idx[0]!]!;
  const e = idx.map((i) => Math.exp(row[i]! - m));
  const s = e.reduce((a, b) => a + b, 0);
  return new Map(idx.map((i, j) => [i, e[j]! / s]));
}

/** Proposes x0(T1) with q one-hot: one draft per sequence. */
class FixedDrafter implements Drafter {
  readonly kind = 'fixed';
  constructor(private readonly x0: Map<number, number>) {}
  async propose(reqs: readonly DraftRequest[]): Promise<DraftResult> {
    return { tokens: reqs.map((r) => [this.x0.get(r.tokens[r.tokens.length - 1]!)!]), probs: null, maxK: 1 };
  }
  rollback(): void {}
  release(): void {}
  async close(): Promise<void> {}
}

describe('speculative sampling keeps the target distribution (engine, brown-draft)', () => {
  let llm: LLM;
  let P: number[];
  const x0 = new Map<number, number>(), pX0 = new Map<number, number>();
  beforeAll(async () => {
    llm = await loadModel(brownDir('draft'), { device: 'cpu', engine: { maxSeqs: 64 } });
    // A prefix where x0 is likely (p ≈ 0.67 on average): few requests give the test its power.
    P = llm.encode(fs.readFileSync(HELDOUT, 'utf8')).slice(18439, 18456);
    const first = topK((await llm.logits(P)).subarray((P.length - 1) * 2048, P.length * 2048));
    for (const t1 of first.keys()) {
      const next = topK((await llm.logits([...P, t1])).subarray(P.length * 2048));
      const [best, p] = [...next.entries()].reduce((a, b) => (b[1] > a[1] ? b : a));
      x0.set(t1, best);
      pX0.set(t1, p);
    }
  });
  afterAll(async () => { await llm?.close(); });

  async function sample(spec: boolean): Promise<{ t1: number; t2: number }[]> {
    const e = spec ? createEngine(llm, { maxSeqs: 64, speculative: { drafter: new FixedDrafter(x0), k: 1, adaptive: false, maxBatch: 64, maxVerifyRows: 1024 } }) : llm.engine;
    try {
      const hs = Array.from({ length: N }, (_, s) => e.generate({ prompt: P, maxTokens: 2, temperature: 1, topK: TOPK, seed: s + 1, stopTokenIds: [] }));
      const out = [];
      for (const h of hs) {
        const ids: number[] = [];
        for await (const t of h) ids.push(t.tokenId);
        out.push({ t1: ids[0]!, t2: ids[1]! });
      }
      if (spec) expect(e.stats().speculation!.drafted).toBe(N);
      return out;
    } finally {
      if (spec) await e.close();
    }
  }

  it(`${N} seeded requests with and without speculation: χ² passes for both, fails for u·q ≤ 1.1·p`, async () => {
    const [withSpec, without] = [await sample(true), await sample(false)];
    const zz = (hits: number, ps: number[]) => {
      const mu = ps.reduce((a, b) => a + b, 0), v = ps.reduce((a, p) => a + p * (1 - p), 0);
      return (hits - mu) ** 2 / v;
    };
    // T1 is drawn the same way in both runs (same seed, position and stream).
    expect(withSpec.map((r) => r.t1)).toEqual(without.map((r) => r.t1));
    const ps = withSpec.map((r) => pX0.get(r.t1)!);
    // This run's power against the 1.1 rule: its mean shift over the standard deviation.
    const shift = ps.reduce((a, p) => a + Math.min(1, 1.1 * p) - p, 0);
    const sd = Math.sqrt(ps.reduce((a, p) => a + p * (1 - p), 0));
    expect(shift / sd, 'N too small for power 0.99 against the 1.1 rule at α = 0.001').toBeGreaterThan(Z_POWER);

    const hits = withSpec.filter((r) => r.t2 === x0.get(r.t1)).length;
    const hitsPlain = without.filter((r) => r.t2 === x0.get(r.t1)).length;
    const u = withSpec.map((_, s) => randomUniformRef(s + 1, P.length + 1, STREAM_ACCEPT));
    // The kernel accepted exactly where u < p (f32 p against the float64 reference: ties aside).
    const agree = withSpec.filter((r, s) => (r.t2 === x0.get(r.t1)) === (u[s]! < ps[s]!)).length;
    expect(agree).toBeGreaterThanOrEqual(N - 2);
    const hitsBiased = u.filter((x, s) => x < 1.1 * ps[s]!).length;
    const [zSpec, zPlain, zBiased] = [zz(hits, ps), zz(hitsPlain, ps), zz(hitsBiased, ps)];
    const tv = (a: { t2: number }[], b: { t2: number }[]) => {
      const c = new Map<number, number>();
      for (const r of a) c.set(r.t2, (c.get(r.t2) ?? 0) + 1 / N);
      for (const r of b) c.set(r.t2, (c.get(r.t2) ?? 0) - 1 / N);
      return [...c.values()].reduce((s, v) => s + Math.abs(v), 0) / 2;
    };
    console.log(`spec χ² ${zSpec.toFixed(2)}, plain χ² ${zPlain.toFixed(2)}, 1.1-rule χ² ${zBiased.toFixed(2)} (critical ${CHI2_1_999}); `
      + `expected hits ${ps.reduce((a, b) => a + b, 0).toFixed(1)}, spec ${hits}, plain ${hitsPlain}, 1.1-rule ${hitsBiased}; TV(spec, plain) ${tv(withSpec, without).toFixed(4)}`);
    expect(zSpec).toBeLessThan(CHI2_1_999);
    expect(zPlain).toBeLessThan(CHI2_1_999);
    expect(zBiased).toBeGreaterThan(CHI2_1_999);
  }, 300_000); // ~20 s on a quiet 2-core box; a shared one can be many times slower
});
