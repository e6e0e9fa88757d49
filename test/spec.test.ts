// Speculative decoding in the engine (brown-target verified, brown-draft or n-gram drafting) on
// every backend present: greedy output with speculation is identical to greedy output without,
// for k = 1…8, batches of 1, 4 and 16, both drafters, and under preemption; KV accounting is exact
// after rejections; abort during speculation frees target and draft blocks; a drafter of another
// vocabulary is refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { createEngine, type EngineOptions, type EngineRequest, EngineError } from '../src/engine.js';
import { type LLM, loadModel } from '../src/llm.js';
import { AdaptiveK } from '../src/engine/speculation.js';
import { ngramLookup } from '../src/spec/ngram.js';
import type { DraftModelDrafter } from '../src/spec/draftModel.js';
import { forEachBackend } from './backends.js';
import { brownDir, heldoutIds } from './runtimeGolden.js';
import { freshSeed, rng } from './util.js';

describe('n-gram lookup', () => {
  it('proposes what followed the latest earlier match of the longest suffix', () => {
    expect(ngramLookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 3, 3, 1)).toEqual([7, 5, 1]);
    expect(ngramLookup([4, 5, 6, 4, 5], 4, 3, 1)).toEqual([6, 4, 5]);
    expect(ngramLookup([1, 2, 3], 2, 3, 1)).toEqual([]);
    expect(ngramLookup([8, 1, 8], 5, 3, 1)).toEqual([1, 8]);
  });
});

describe('adaptive k', () => {
  it('expected tokens per step follow (1 − α^{k+1}) / (1 − α)', () => {
    expect(AdaptiveK.expected(0.5, 0)).toBeCloseTo(1, 12);
    expect(AdaptiveK.expected(0.5, 3)).toBeCloseTo(1.875, 12);
    expect(AdaptiveK.expected(1, 4)).toBe(5);
  });

  it('speculates deeply when drafts are accepted and cheap, switches off when they are not, and probes again', () => {
    const a = new AdaptiveK(8, true);
    a.draftCost = 0.05; a.verifyCost = 0.05;
    for (let i = 0; i < 20; i++) a.observe(1, 8, 8);
    expect(a.k(1)).toBeGreaterThanOrEqual(6);
    a.draftCost = 0.6;
    for (let i = 0; i < 30; i++) a.observe(2, 4, 0);
    const ks = Array.from({ length: 16 }, () => a.k(2));
    expect(ks.filter((k) => k === 0).length).toBe(14);
    expect(ks.filter((k) => k === 1).length).toBe(2);
    expect(new AdaptiveK(3, false).k(9)).toBe(3);
  });
});

async function ids(h: AsyncIterable<{ tokenId: number }>): Promise<number[]> {
  const out: number[] = [];
  for await (const t of h) if (t.tokenId >= 0) out.push(t.tokenId);
  return out;
}

forEachBackend('speculative decoding', (dev: Device) => {
  let target: LLM, draft: LLM;
  let reqs: EngineRequest[];
  let plain: number[][];
  beforeAll(async () => {
    target = await loadModel(brownDir('target'), { device: dev, engine: { maxSeqs: 16 } });
    draft = await loadModel(brownDir('draft'), { device: dev, engine: { maxSeqs: 1, kvBlocks: 1 } });
    const r = rng(freshSeed('spec workload'));
    const text = heldoutIds(target);
    reqs = Array.from({ length: 16 }, () => {
      const start = Math.floor(r() * 20000);
      return { prompt: text.slice(start, start + 4 + Math.floor(r() * 20)), temperature: 0, maxTokens: 5 + Math.floor(r() * 5), stopTokenIds: [] };
    });
    plain = await Promise.all(reqs.map((q) => ids(target.engine.generate(q))));
  });
  afterAll(async () => { await draft?.close(); await target?.close(); });

  async function speculate(drafter: 'ngram' | 'model', k: number, batch: number, extra: EngineOptions = {}) {
    const e = createEngine(target, { maxSeqs: batch, ...extra, speculative: { drafter: drafter === 'ngram' ? 'ngram' : draft, k, adaptive: false, maxBatch: 16, maxVerifyRows: 1024 } });
    try {
      // One at a time is slow: batch-1 runs take a quarter of the requests.
      const some = batch === 1 ? reqs.slice(0, 4) : reqs;
      const outs = await Promise.all(some.map((q) => ids(e.generate(q))));
      outs.forEach((o, i) => expect(o, `${drafter} k=${k} batch ${batch}: request ${i}`).toEqual(plain[i]));
      const s = e.stats();
      expect(s.kvBlocks.used, 'target blocks held after the run').toBe(0);
      // A draft model always drafts; n-gram lookup only where the text repeats (checked over its runs).
      if (drafter === 'model') expect(s.speculation!.drafted).toBeGreaterThan(0);
      return s;
    } finally {
      await e.close();
    }
  }

  // k = 1…8 and batches of 1, 4 and 16 are each covered, split between the two drafters.
  it('greedy with a draft model is identical to greedy without: k = 1, 3, 5, 7; batches of 16, 4, 1', async () => {
    let accepted = 0;
    for (const [k, batch] of [[1, 16], [3, 4], [5, 1], [7, 16]] as const) accepted += (await speculate('model', k, batch)).speculation!.accepted;
    expect(accepted, 'the draft model is a good drafter for this text: some drafts must be accepted').toBeGreaterThan(0);
  });

  it('greedy with n-gram drafting is identical to greedy without: k = 2, 4, 6, 8; batches of 4, 16, 1', async () => {
    let drafted = 0;
    for (const [k, batch] of [[2, 4], [4, 16], [6, 1], [8, 4]] as const) drafted += (await speculate('ngram', k, batch)).speculation!.drafted;
    expect(drafted, 'greedy brown text repeats itself: n-gram lookup must have drafted').toBeGreaterThan(0);
  });

  it('under preemption, with adaptive k, both drafters: identical, and the draft pool is emptied too', async () => {
    // 14-token prompts and 10 new tokens: four requests fill a 4-block pool at admission, and the
    // first to reach position 16 (sooner with drafts) needs a fifth block, so preemption is certain.
    const text = heldoutIds(target);
    const long = Array.from({ length: 6 }, (_, i) => ({ prompt: text.slice(3000 + i * 50, 3014 + i * 50), temperature: 0, maxTokens: 10, stopTokenIds: [] }));
    const want = await Promise.all(long.map((q) => ids(target.engine.generate(q))));
    for (const d of [draft, 'ngram'] as const) {
      const e = createEngine(target, { maxSeqs: 8, kvBlocks: 4, speculative: { drafter: d, k: 4 } });
      try {
        const outs = await Promise.all(long.map((q) => ids(e.generate(q))));
        outs.forEach((o, i) => expect(o, `request ${i}`).toEqual(want[i]));
        expect(e.stats().preemptions, 'the pool was meant to force preemption').toBeGreaterThan(0);
        expect(e.stats().kvBlocks.used).toBe(0);
        const drafter = (e as unknown as { speculator: { drafter: DraftModelDrafter } }).speculator.drafter;
        if (d !== 'ngram') expect(drafter.blocks.stats().used, 'draft blocks held after the run').toBe(0);
      } finally {
        await e.close();
      }
    }
  });

  it('abort during speculation frees target and draft blocks; stop strings and EOS end mid-run', async () => {
    const e = createEngine(target, { maxSeqs: 4, speculative: { drafter: draft, k: 6, adaptive: false } });
    try {
      const h = e.generate({ ...reqs[0]!, maxTokens: 200 });
      let n = 0;
      for await (const t of h) { void t; if (++n >= 5) break; }
      expect((await h.result()).finishReason).toBe('abort');
      // EOS inside an accepted run: the request stops exactly where plain decoding stops.
      // Every request generates at least 5 tokens: the 4th is past the first verify step.
      const stopAt = plain[3]![3]!;
      const o = await ids(e.generate({ ...reqs[3]!, stopTokenIds: [stopAt] }));
      expect(o).toEqual(plain[3]!.slice(0, plain[3]!.indexOf(stopAt)));
      expect(e.stats().kvBlocks.used).toBe(0);
      const drafter = (e as unknown as { speculator: { drafter: DraftModelDrafter } }).speculator.drafter;
      expect(drafter.blocks.stats().used).toBe(0);
    } finally {
      await e.close();
    }
  });

  it('refuses a drafter of another vocabulary, or on another device', async () => {
    const other = { ...draft, spec: { ...draft.spec, vocabSize: 4096 }, source: 'other-model' };
    expect(() => createEngine(target, { speculative: { drafter: other as unknown as LLM } })).toThrow(/other-model has a vocabulary of 4096 tokens, the target .* 2048: a draft model must share the target's tokenizer/);
    expect(() => createEngine(target, { speculative: { drafter: 'ngram', k: 0 } })).toThrow(EngineError);
  });
}, { cpuExecutors: 'default' });
