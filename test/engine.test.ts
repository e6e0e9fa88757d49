// The continuous-batching engine on a real model (brown-draft), on every backend present:
// a request's greedy and seeded tokens are identical whether it runs alone or beside 1, 7 or 31
// others of other lengths, with any chunk size, with or without prefix caching, under
// preemption, and in static batches; aborts, signals and close() free every block; a failing
// request leaves the others alone; 200 requests through a tiny pool all complete.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { type EngineOptions, type EngineRequest, QueueFullError, type RequestHandle, type RequestResult, createEngine } from '../src/engine.js';
import { encodeSafetensors, type MemoryTensor, openSafetensors, readFloat16Bits } from '../src/io/safetensors.js';
import { type LLM, loadModel } from '../src/llm.js';
import { forEachBackend } from './backends.js';
import { brownDir, heldoutIds } from './runtimeGolden.js';
import { freshSeed, rng } from './util.js';

interface Outcome { ids: number[]; text: string; result: RequestResult }

async function drain(h: RequestHandle): Promise<Outcome> {
  const ids: number[] = [];
  let text = '';
  for await (const t of h) { if (t.tokenId >= 0) ids.push(t.tokenId); text += t.text; }
  return { ids, text, result: await h.result() };
}

/** A workload: prompts of 3–60 tokens cut from held-out text (some sharing a 40-token prefix),
 *  4–14 new tokens, half greedy and half seeded with filters. */
function workload(llm: LLM, n: number, seed: number): EngineRequest[] {
  const r = rng(seed);
  const text = heldoutIds(llm);
  const shared = text.slice(5000, 5040);
  return Array.from({ length: n }, (_, i) => {
    const start = Math.floor(r() * 20000);
    const own = text.slice(start, start + 3 + Math.floor(r() * 40));
    const prompt = i % 3 === 0 ? [...shared, ...own.slice(0, 8)] : own;
    const greedy = i % 2 === 0;
    return {
      prompt, maxTokens: 4 + Math.floor(r() * 11), stopTokenIds: [],
      ...(greedy ? { temperature: 0 } : { temperature: 0.9, topK: 40, topP: 0.95, seed: 1000 + i }),
    };
  });
}

forEachBackend('engine', (dev: Device) => {
  let llm: LLM;
  let reqs: EngineRequest[];
  /** Each request's tokens when it runs alone. */
  let alone: number[][];
  beforeAll(async () => {
    llm = await loadModel(brownDir('draft'), { device: dev, engine: { maxSeqs: 1, kvBlocks: 64 } });
    reqs = workload(llm, 32, freshSeed('engine workload'));
    alone = [];
    for (const q of reqs) alone.push((await drain(llm.engine.generate(q))).ids);
  });
  afterAll(async () => { await llm?.close(); });

  /** Run requests `idx` of the workload together on a fresh engine; check each against alone. */
  async function together(idx: number[], opts: EngineOptions, label: string) {
    const e = createEngine(llm, opts);
    try {
      const hs = idx.map((i) => e.generate(reqs[i]!));
      const outs = await Promise.all(hs.map(drain));
      outs.forEach((o, j) => expect(o.ids, `${label}: request ${idx[j]}`).toEqual(alone[idx[j]!]));
      const b = e.stats().kvBlocks;
      expect(b.used, `${label}: blocks held after the run`).toBe(0);
      expect(b.used + b.cached + b.free).toBe(b.total);
      return e.stats();
    } finally {
      await e.close();
    }
  }

  it('each request alone gives the same tokens as loadModel-style single generation', () => {
    expect(alone.every((ids, i) => ids.length === reqs[i]!.maxTokens)).toBe(true);
  });

  it('with 1 and 7 others of other lengths, and in a static batch', async () => {
    await together([0, 1], { maxSeqs: 2 }, 'pair');
    await together([5, 2], { maxSeqs: 2, chunkSize: 5 }, 'pair, chunked');
    await together([0, 1, 2, 3, 4, 5, 6, 7], { maxSeqs: 8, chunkSize: 16 }, 'eight');
    await together([8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], { scheduling: 'static', staticBatchSize: 4, maxSeqs: 8 }, 'static batches');
  });

  it('with 31 others, any chunk size, prefix caching on and off', async () => {
    const all = reqs.map((_, i) => i);
    const on = await together(all, { maxSeqs: 32, chunkSize: 7, maxBatchedTokens: 96 }, 'all 32, chunks of 7, prefix cache');
    expect(on.prefixCacheHitRate, 'shared 40-token prefixes must hit the cache').toBeGreaterThan(0);
    const off = await together(all, { maxSeqs: 16, chunkSize: 64, prefixCaching: false }, 'all 32, prefix cache off');
    expect(off.prefixCacheHitRate).toBe(0);
    expect(on.meanBatchSize).toBeGreaterThan(4);
  });

  it('under preemption: a pool so small that requests are recomputed', async () => {
    // 12 blocks = 192 positions: two or three requests at a time.
    // Prefix caching off: shared prefixes would otherwise let the 48-token prompts fit together.
    const s = await together(reqs.map((_, i) => i).slice(0, 20), { maxSeqs: 8, kvBlocks: 12, chunkSize: 16, prefixCaching: false }, 'tiny pool');
    expect(s.preemptions, 'the pool was meant to force preemption').toBeGreaterThan(0);
  });

  it('abort() and an AbortSignal end requests mid-stream and free their blocks; the others finish', async () => {
    const e = createEngine(llm, { maxSeqs: 4 });
    try {
      const ctrl = new AbortController();
      const long = { prompt: reqs[1]!.prompt, temperature: 0, maxTokens: 60, stopTokenIds: [] };
      const a = e.generate(long);
      const b = e.generate({ ...long, signal: ctrl.signal });
      const c = e.generate(reqs[2]!);
      let seen = 0;
      const got: number[] = [];
      for await (const t of a) { got.push(t.tokenId); if (++seen === 3) e.abort(a.requestId); }
      let seenB = 0;
      for await (const t of b) { void t; if (++seenB === 2) ctrl.abort(); }
      const ra = await a.result(), rb = await b.result(), oc = await drain(c);
      expect(ra.finishReason).toBe('abort');
      expect(rb.finishReason).toBe('abort');
      expect(ra.usage.generatedTokens).toBeLessThan(60);
      expect(oc.ids).toEqual(alone[2]);
      expect(oc.result.finishReason).toBe('length');
      expect(e.stats().kvBlocks.used).toBe(0);
      expect(e.stats().requests.aborted).toBe(2);
      // A signal aborted before the request starts: it ends at once.
      const pre = new AbortController();
      pre.abort();
      expect((await drain(e.generate({ ...long, signal: pre.signal }))).result.finishReason).toBe('abort');
      expect(e.stats().kvBlocks.used).toBe(0);
    } finally {
      await e.close();
    }
  });

  it('close() with requests in flight: every iterator ends with abort, every byte is given back', async () => {
    const before = dev.bytesInUse;
    const e = createEngine(llm, { maxSeqs: 4, kvBlocks: 64 });
    const hs = [0, 1, 2, 3, 4].map((i) => e.generate({ ...reqs[i]!, maxTokens: 200 - reqs[i]!.prompt.length - 1 }));
    const first = await hs[0]!.next();
    expect(first.done).toBe(false);
    await e.close();
    const outs = await Promise.all(hs.map(drain));
    for (const o of outs) expect(o.result.finishReason).toBe('abort');
    expect(dev.bytesInUse).toBe(before);
    expect(() => e.generate(reqs[0]!)).toThrow(/the engine was closed/);
  });

  it('bad requests are refused at once and leave the others unaffected; a full queue refuses with QueueFullError', async () => {
    const e = createEngine(llm, { maxSeqs: 2, maxWaiting: 2 });
    try {
      const ok = e.generate(reqs[0]!);
      expect(() => e.generate({ ...reqs[1]!, stop: [''] })).toThrow(/stop must be a list of non-empty strings/);
      expect(() => e.generate({ ...reqs[1]!, topP: 2 })).toThrow(/topP = 2 must be in \(0, 1\]/);
      expect(() => e.generate({ ...reqs[1]!, logprobs: 50 })).toThrow(/logprobs = 50/);
      e.generate(reqs[2]!);
      e.generate(reqs[3]!);
      expect(() => e.generate(reqs[4]!)).toThrow(QueueFullError);
      expect((await drain(ok)).ids).toEqual(alone[0]);
    } finally {
      await e.close();
    }
  });

  it('logprobs: the sampled token and the top alternatives, as log-softmax of the logits', async () => {
    const q = { prompt: reqs[3]!.prompt, temperature: 0, maxTokens: 3, logprobs: 5, stopTokenIds: [] };
    const h = llm.engine.generate(q);
    const toks = [];
    for await (const t of h) toks.push(t);
    const ids = toks.map((t) => t.tokenId);
    const logits = await llm.logits([...(q.prompt as number[]), ...ids.slice(0, 2)]);
    const V = llm.spec.vocabSize;
    toks.forEach((t, i) => {
      const row = logits.subarray((q.prompt.length - 1 + i) * V, (q.prompt.length + i) * V);
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
      expect(t.logprob!).toBeCloseTo(row[t.tokenId]! - lse, 4);
      expect(t.topLogprobs!.length).toBe(5);
      expect(t.topLogprobs![0]!.tokenId).toBe(t.tokenId); // greedy: the top one
      for (let j = 1; j < 5; j++) expect(t.topLogprobs![j]!.logprob).toBeLessThanOrEqual(t.topLogprobs![j - 1]!.logprob);
    });
  });

  it('200 requests sharing prefixes through a tiny pool: all complete, blocks add up after every step', async () => {
    const r = rng(freshSeed('engine pressure'));
    const text = heldoutIds(llm);
    const prefixes = [text.slice(100, 140), text.slice(900, 920), text.slice(3000, 3033)];
    let steps = 0;
    const e = createEngine(llm, {
      maxSeqs: 16, kvBlocks: 10, chunkSize: 32, maxBatchedTokens: 64,
      onStep: ({ stats }) => {
        steps++;
        const b = stats.kvBlocks;
        if (b.used + b.cached + b.free !== b.total) throw new Error(`step ${steps}: ${JSON.stringify(b)}`);
      },
    });
    try {
      const hs = Array.from({ length: 200 }, (_, i) => {
        const p = prefixes[i % 3]!;
        const own = text.slice(10000 + i * 7, 10000 + i * 7 + 1 + Math.floor(r() * 6));
        return e.generate({ prompt: [...p, ...own], maxTokens: 1 + Math.floor(r() * 4), temperature: 0.8, seed: i, stopTokenIds: [] });
      });
      const rs = await Promise.all(hs.map((h) => h.result()));
      for (const x of rs) expect(x.finishReason).toBe('length');
      const s = e.stats();
      expect(s.requests.finished).toBe(200);
      expect(s.kvBlocks.used).toBe(0);
      expect(s.prefixCacheHitRate).toBeGreaterThan(0.3);
      expect(steps).toBe(s.steps);
    } finally {
      await e.close();
    }
  });
}, { cpuExecutors: 'default' });

describe('non-finite weights', () => {
  let dir: string;
  beforeAll(() => {
    // brown-target (its lm_head is not tied to the embeddings) with one embedding row, token 77,
    // set to NaN: only sequences containing token 77 see it.
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-nan-'));
    const src = brownDir('target');
    for (const f of fs.readdirSync(src).filter((x) => x !== 'model.safetensors')) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    const st = openSafetensors(src);
    const tensors = new Map<string, MemoryTensor>();
    for (const name of st.names()) {
      const info = st.info(name);
      const data = readFloat16Bits(st, name).slice();
      if (name === 'model.embed_tokens.weight') data.fill(0x7e00, 77 * info.shape[1]!, 78 * info.shape[1]!);
      tensors.set(name, { dtype: 'F16', shape: info.shape, data });
    }
    st.close();
    fs.writeFileSync(path.join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  });
  afterAll(() => { fs.rmSync(dir, { recursive: true, force: true }); });

  it('are refused at load, naming the tensor and index', async () => {
    await expect(loadModel(dir, { device: 'cpu' })).rejects.toThrow(/tensor 'model\.embed_tokens\.weight' holds a non-finite value \(NaN or ±Inf\) at index \d+ \[77, 0\]; load with allowNonFinite/);
  });

  it('allowNonFinite: a request whose logits are NaN ends with an error; the others go on', async () => {
    const llm = await loadModel(dir, { device: 'cpu', allowNonFinite: true, engine: { maxSeqs: 4 } });
    try {
      const good = llm.generate([2047, 10, 11, 12], { temperature: 0, maxTokens: 6, stopTokenIds: [] });
      const bad = llm.generate([2047, 10, 77, 12], { temperature: 0.7, seed: 3, maxTokens: 6, stopTokenIds: [] });
      const badGreedy = llm.generate([2047, 77], { temperature: 0, maxTokens: 6 });
      const [g, b, bg] = await Promise.all([drain(good), drain(bad), drain(badGreedy)]);
      expect(b.result.finishReason).toBe('error');
      expect(b.result.error).toMatch(/the logits of position 3 are not finite \(NaN or \+Inf\)/);
      expect(b.ids).toEqual([]);
      expect(bg.result.finishReason).toBe('error');
      expect(g.result.finishReason).toBe('length');
      expect(g.ids.length).toBe(6);
      await expect(llm.complete([2047, 77], { maxTokens: 2 })).rejects.toThrow(/not finite/);
      expect(llm.engine.stats().kvBlocks.used).toBe(0);
    } finally {
      await llm.close();
    }
  });
});
