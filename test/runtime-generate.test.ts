// The generation API on a real model (brown-draft): stopping at EOS and at stop strings (the stop
// string never reaches the caller, and text that could start one is held back across tokens),
// seeded sampling, the prefix cache, and exact freeing of KV blocks however a generation ends.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { type GeneratedToken, type GenerateOptions, type LLM, loadModel } from '../src/llm.js';
import { OutOfBlocksError } from '../src/kv/blockManager.js';
import { AdmissionError, type RequestResult } from '../src/engine.js';
import { forEachBackend } from './backends.js';
import { brown, BROWN_PROMPT, brownDir, heldoutIds } from './runtimeGolden.js';

const golden = brown.draft;
/** The greedy continuation of BROWN_PROMPT: " he had been a little fighting, and he had been a…" */
const GREEDY_IDS = golden.greedy_ids_fp32.slice(golden.prompt_ids.length);
const GREEDY_TEXT = golden.greedy_text_fp32.slice(BROWN_PROMPT.length);

/** The result of the last collect(). */
let last: RequestResult;
async function collect(llm: LLM, prompt: string | readonly number[], opts: GenerateOptions): Promise<GeneratedToken[]> {
  const out: GeneratedToken[] = [];
  const h = llm.generate(prompt, opts);
  for await (const t of h) out.push(t);
  last = await h.result();
  return out;
}
const textOf = (ts: GeneratedToken[]): string => ts.map((t) => t.text).join('');
const idsOf = (ts: GeneratedToken[]): number[] => ts.filter((t) => t.tokenId >= 0).map((t) => t.tokenId);

forEachBackend('runtime generation', (dev: Device) => {
  let llm: LLM;
  beforeAll(async () => { llm = await loadModel(brownDir('draft'), { device: dev }); });
  afterAll(async () => { await llm?.close(); });
  const allFree = () => expect(llm.engine.blocks.freeBlocks).toBe(llm.engine.blocks.numBlocks);

  describe('stopping', () => {
    it('stops at a stop token id without emitting it', async () => {
      // The 4th greedy token ends generation: 3 tokens come out.
      const ts = await collect(llm, BROWN_PROMPT, { temperature: 0, maxTokens: 24, stopTokenIds: [GREEDY_IDS[3]!] });
      expect(idsOf(ts)).toEqual(GREEDY_IDS.slice(0, 3));
      expect(textOf(ts)).toBe(' he had been');
      expect(last).toMatchObject({ finishReason: 'eos', usage: { generatedTokens: 3 } });
      allFree();
    });

    it("stops at the model's own EOS by default (seeded samples that end a document)", async () => {
      // Sampling at temperature 1 reaches <|endoftext|> within a few dozen tokens for some seeds.
      const eos = llm.spec.eosIds;
      expect(eos).toEqual([2047]);
      let found: { seed: number; ids: number[] } | null = null;
      for (let seed = 1; seed <= 12 && !found; seed++) {
        const ts = await collect(llm, 'The', { temperature: 1, seed, maxTokens: 80 });
        if (last.finishReason === 'eos') found = { seed, ids: idsOf(ts) };
        else expect(last.finishReason).toBe('length');
      }
      expect(found, 'no seed in 1..12 reached EOS within 80 tokens').not.toBeNull();
      expect(found!.ids).not.toContain(2047);
      // Without stop ids the same seed goes on past the EOS, which is the next token.
      const on = idsOf(await collect(llm, 'The', { temperature: 1, seed: found!.seed, maxTokens: found!.ids.length + 3, stopTokenIds: [] }));
      expect(on.slice(0, found!.ids.length + 1)).toEqual([...found!.ids, 2047]);
      allFree();
    });

    it('stops before a stop string spanning several tokens; the string is not in the output', async () => {
      // " little" " f" "ight" "ing": "fighting" spans three tokens.
      const ts = await collect(llm, BROWN_PROMPT, { temperature: 0, maxTokens: 24, stop: ['fighting'] });
      expect(textOf(ts)).toBe(' he had been a little ');
      expect(idsOf(ts)).toEqual(GREEDY_IDS.slice(0, 8)); // up to and including "ing"
      expect(last).toMatchObject({ finishReason: 'stop', usage: { generatedTokens: 8 } });
      // Nothing of the stop string was ever yielded, not even its first letters.
      let seen = '';
      for (const t of ts) { seen += t.text; expect(seen.endsWith('f')).toBe(false); }
      allFree();
    });

    it('a stop string starting and ending mid-token cuts the text exactly', async () => {
      const ts = await collect(llm, BROWN_PROMPT, { temperature: 0, maxTokens: 24, stop: ['ting, and he'] });
      expect(textOf(ts)).toBe(' he had been a little figh');
    });

    it('the earliest of several stop strings wins; one inside the first token gives empty output', async () => {
      expect(textOf(await collect(llm, BROWN_PROMPT, { temperature: 0, maxTokens: 24, stop: [' and', 'had been'] }))).toBe(' he ');
      expect(textOf(await collect(llm, BROWN_PROMPT, { temperature: 0, maxTokens: 24, stop: ['he'] }))).toBe(' ');
      expect(last).toMatchObject({ finishReason: 'stop', usage: { generatedTokens: 1 } });
    });

    it('text that only looks like the start of a stop string is held back, then released unchanged', async () => {
      // "been a" recurs and is a prefix of "been a big", which never occurs: every chunk is
      // eventually released, the last one (the held tail " been a" at the end) with id −1.
      const ts = await collect(llm, BROWN_PROMPT, { temperature: 0, maxTokens: 24, stop: ['been a big'] });
      expect(textOf(ts)).toBe(GREEDY_TEXT);
      expect(idsOf(ts)).toEqual(GREEDY_IDS);
      expect(ts.at(-1)).toEqual({ tokenId: -1, text: 'been a' });
      expect(last).toMatchObject({ finishReason: 'length', usage: { generatedTokens: 24 } });
      // " been" could start the stop string: only its space comes out until " a" and " little" follow.
      expect(ts.slice(2, 5).map((t) => t.text)).toEqual([' ', '', 'been a little']);
      // complete() returns the same string.
      expect(await llm.complete(BROWN_PROMPT, { temperature: 0, maxTokens: 24, stop: ['been a big'] })).toBe(GREEDY_TEXT);
      allFree();
    });
  });

  describe('seeded sampling', () => {
    it('the same seed gives the same tokens; different seeds give different ones', async () => {
      const opts = { temperature: 1, maxTokens: 24, stopTokenIds: [] };
      const a = await collect(llm, BROWN_PROMPT, { ...opts, seed: 7 });
      const b = await collect(llm, BROWN_PROMPT, { ...opts, seed: 7 });
      expect(b).toEqual(a);
      const others = await Promise.all([8, 9].map(async (seed) => idsOf(await collect(llm, BROWN_PROMPT, { ...opts, seed }))));
      // 24 tokens at temperature 1: two seeds agreeing throughout would be astronomically unlikely.
      for (const o of others) expect(o).not.toEqual(idsOf(a));
      expect(idsOf(a)).not.toEqual(GREEDY_IDS);
      const filtered = { temperature: 0.9, topK: 40, topP: 0.9, minP: 0.02, maxTokens: 24, seed: 123456789 };
      expect(await collect(llm, BROWN_PROMPT, filtered)).toEqual(await collect(llm, BROWN_PROMPT, filtered));
    });

    it('filters that leave one candidate make sampling greedy whatever the seed', async () => {
      for (const f of [{ topK: 1 }, { topP: 1e-6 }, { minP: 1 }]) {
        const ts = await collect(llm, BROWN_PROMPT, { temperature: 1.5, seed: 99, maxTokens: 12, ...f });
        expect(idsOf(ts), JSON.stringify(f)).toEqual(GREEDY_IDS.slice(0, 12));
      }
    });
  });

  describe('KV blocks', () => {
    it('a repeated prompt reuses its cached full blocks and generates the same tokens', async () => {
      const prompt = heldoutIds(llm).slice(1000, 1040);
      const first = idsOf(await collect(llm, prompt, { temperature: 0, maxTokens: 8 }));
      expect(last.usage.cachedTokens).toBe(0);
      const again = idsOf(await collect(llm, prompt, { temperature: 0, maxTokens: 8 }));
      expect(last.usage.cachedTokens).toBe(32);
      expect(again).toEqual(first);
      // The same continuation teacher-forced, without the cache.
      const full = [...prompt, ...first];
      const logits = await llm.logits(full);
      const V = llm.spec.vocabSize;
      first.forEach((id, i) => {
        const row = logits.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V);
        expect(row.indexOf(Math.max(...row))).toBe(id);
      });
      allFree();
    });

    it('are all freed after an early break, a consumer error, return() and a request nobody reads', async () => {
      let n = 0;
      for await (const t of llm.generate(BROWN_PROMPT, { temperature: 0, maxTokens: 24 })) {
        expect(t.tokenId).toBe(GREEDY_IDS[n]);
        if (++n === 3) {
          expect(llm.engine.blocks.freeBlocks).toBeLessThan(llm.engine.blocks.numBlocks);
          break;
        }
      }
      allFree();
      await expect((async () => {
        for await (const t of llm.generate(BROWN_PROMPT, { temperature: 0, maxTokens: 24 })) if (t.tokenId === GREEDY_IDS[4]) throw new Error('consumer failed');
      })()).rejects.toThrow('consumer failed');
      allFree();
      const g = llm.generate(BROWN_PROMPT, { temperature: 0, maxTokens: 24 });
      expect((await g.next()).value).toEqual({ tokenId: GREEDY_IDS[0], text: ' he' });
      await g.return(undefined);
      allFree();
      // A request runs whether or not its tokens are read (as in a server); it frees when it ends.
      const unread = llm.generate(BROWN_PROMPT, { temperature: 0, maxTokens: 5 });
      expect(await unread.result()).toMatchObject({ finishReason: 'length', usage: { generatedTokens: 5 } });
      allFree();
      const tokens: number[] = [];
      for await (const t of unread) tokens.push(t.tokenId);
      expect(tokens.filter((x) => x >= 0)).toEqual(GREEDY_IDS.slice(0, 5));
    });

    it('a request that could never fit the KV pool is refused at admission; the model stays usable', async () => {
      const small = await loadModel(brownDir('draft'), { device: dev, numBlocks: 2 });
      try {
        // 2 blocks hold 32 positions: the 6-token prompt plus up to 100 generated tokens cannot fit.
        await expect((async () => { for await (const t of small.generate(BROWN_PROMPT, { temperature: 0, maxTokens: 100, stopTokenIds: [] })) void t; })())
          .rejects.toThrow(AdmissionError);
        await expect(small.complete(BROWN_PROMPT, { maxTokens: 100 })).rejects.toThrow(/106 tokens \(prompt 6 \+ up to 100 generated\) need 7 KV blocks of 16, but the pool has 2/);
        expect(small.engine.blocks.freeBlocks).toBe(2);
        await expect(small.logits(heldoutIds(small).slice(0, 40))).rejects.toThrow(OutOfBlocksError);
        expect(small.engine.blocks.freeBlocks).toBe(2);
        // 26 tokens fit beside the prompt: exactly the pool.
        expect(idsOf(await collect(small, BROWN_PROMPT, { temperature: 0, maxTokens: 26, stopTokenIds: [] })).slice(0, 5)).toEqual(GREEDY_IDS.slice(0, 5));
        expect(last.finishReason).toBe('length');
        expect(small.engine.blocks.freeBlocks).toBe(2);
      } finally {
        await small.close();
      }
    });
  });
}, { cpuExecutors: 'default' });
