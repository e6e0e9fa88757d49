// Bad input through the public API (loadModel / generate / logits): broken files, configs that
// disagree with the weights, impossible options, out-of-range token ids, prompts longer than the
// context and invalid sampling parameters. Each gives a clear error naming the file, tensor or
// field; the process goes on, the model (when one was loaded) stays usable, and nothing leaks: the
// KV blocks all come back, and the device's bytes in use return to where they were.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { type GenerateOptions, type LLM, type LoadOptions, loadModel } from '../src/llm.js';
import { forEachBackend } from './backends.js';
import { brown, BROWN_PROMPT, brownDir, HELDOUT, haveStories, heldoutIds, STORIES_BIN } from './runtimeGolden.js';

const GREEDY_IDS = brown.draft.greedy_ids_fp32.slice(brown.draft.prompt_ids.length);

// ---------------------------------------------------------------------------------------------
// Broken copies of brown-draft, made once per file in a temporary directory.

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-badinput-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

/** A copy of brown-draft named `name`, changed by `edit` (which gets the copy's directory). */
function brokenCopy(name: string, edit: (dir: string) => void): string {
  const dir = path.join(tmpRoot, name);
  fs.cpSync(brownDir('draft'), dir, { recursive: true });
  edit(dir);
  return dir;
}

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;

/** Rewrites model.safetensors with an edited header (the data section is kept as it is). */
function editHeader(dir: string, edit: (h: Header) => void): void {
  const file = path.join(dir, 'model.safetensors');
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Header;
  edit(header);
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, bytes.subarray(8 + n)]));
}

function editJson(file: string, edit: (j: Record<string, unknown>) => void): void {
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(j);
  fs.writeFileSync(file, JSON.stringify(j, null, 2));
}

const ST = 'model.safetensors';
const T_DOWN1 = 'model.layers.1.mlp.down_proj.weight';
const T_NORM0 = 'model.layers.0.input_layernorm.weight';

/** Broken models: what is wrong, and what the error must say. */
const BROKEN: { name: string; make: () => string; error: RegExp }[] = [
  { name: 'a missing model directory', make: () => path.join(tmpRoot, 'no-such-model'), error: /no-such-model: no such file or directory/ },
  { name: 'a file that is not a model', make: () => brokenCopy('not-a-model', () => {}) + '/config.json', error: /config\.json: expected a model directory/ },
  { name: 'a directory without weights', make: () => brokenCopy('no-weights', (d) => fs.rmSync(path.join(d, ST))), error: /contains neither model\.safetensors nor model\.safetensors\.index\.json/ },
  { name: 'a directory without config.json', make: () => brokenCopy('no-config', (d) => fs.rmSync(path.join(d, 'config.json'))), error: /no-config: no config\.json/ },
  {
    name: 'a truncated safetensors file', error: /model\.safetensors.*lie outside the data section/,
    make: () => brokenCopy('truncated', (d) => { const f = path.join(d, ST); fs.truncateSync(f, fs.statSync(f).size - 1000); }),
  },
  {
    name: 'a safetensors header length past the end of the file', error: /model\.safetensors: header length 1000000000 runs past the end of the file/,
    make: () => brokenCopy('header-past-end', (d) => { const f = path.join(d, ST); const b = fs.readFileSync(f); b.writeBigUInt64LE(1_000_000_000n); fs.writeFileSync(f, b); }),
  },
  {
    name: 'a safetensors file too short for its header length', error: /model\.safetensors: 5 bytes, too short/,
    make: () => brokenCopy('tiny', (d) => fs.writeFileSync(path.join(d, ST), Buffer.from([1, 2, 3, 4, 5]))),
  },
  {
    name: 'a safetensors header that is not JSON', error: /model\.safetensors: safetensors header is not valid JSON/,
    make: () => brokenCopy('header-garbage', (d) => { const f = path.join(d, ST); const b = fs.readFileSync(f); b[8] = 0x7e; fs.writeFileSync(f, b); }),
  },
  {
    name: 'an unknown dtype', error: new RegExp(`${T_NORM0.replace(/\./g, '\\.')}.*unknown dtype 'Q16'`),
    make: () => brokenCopy('bad-dtype', (d) => editHeader(d, (h) => { (h[T_NORM0] as { dtype: string }).dtype = 'Q16'; })),
  },
  {
    name: 'a shape that disagrees with the byte length', error: new RegExp(`${T_NORM0.replace(/\./g, '\\.')}.*shape \\[64\\] × F16 is 128 bytes but data_offsets span 256`),
    make: () => brokenCopy('bad-shape', (d) => editHeader(d, (h) => { (h[T_NORM0] as { shape: number[] }).shape = [64]; })),
  },
  {
    name: 'overlapping tensors', error: /model\.safetensors: tensors '.*' and '.*' overlap in the data section/,
    make: () => brokenCopy('overlap', (d) => editHeader(d, (h) => {
      const norm1 = h['model.layers.1.input_layernorm.weight'] as { data_offsets: [number, number] };
      norm1.data_offsets = [...(h[T_NORM0] as { data_offsets: [number, number] }).data_offsets];
    })),
  },
  {
    name: 'a tensor missing from the weights', error: new RegExp(`model\\.safetensors: missing tensor '${T_DOWN1.replace(/\./g, '\\.')}' \\(expected shape \\[128, 384\\]\\)`),
    make: () => brokenCopy('missing-tensor', (d) => editHeader(d, (h) => { delete h[T_DOWN1]; })),
  },
  {
    name: 'config.json that is not JSON', error: /config\.json: cannot read JSON/,
    make: () => brokenCopy('config-garbage', (d) => fs.writeFileSync(path.join(d, 'config.json'), '{"hidden_size": 128,')),
  },
  {
    name: 'config.json without hidden_size', error: /config-no-hidden\/config\.json: field 'hidden_size' is missing/,
    make: () => brokenCopy('config-no-hidden', (d) => editJson(path.join(d, 'config.json'), (j) => { delete j.hidden_size; })),
  },
  {
    name: 'an FFN width in config.json that the weights do not have', error: /tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[384, 128\], expected \[512, 128\]/,
    make: () => brokenCopy('config-ffn', (d) => editJson(path.join(d, 'config.json'), (j) => { j.intermediate_size = 512; })),
  },
  {
    name: 'more layers in config.json than in the weights', error: /missing tensor 'model\.layers\.2\./,
    make: () => brokenCopy('config-layers', (d) => editJson(path.join(d, 'config.json'), (j) => { j.num_hidden_layers = 3; })),
  },
  {
    name: 'an unsupported architecture', error: /gpt2\/config\.json: field 'architectures' is \["GPT2LMHeadModel"\]; Kiln supports .*LlamaForCausalLM/,
    make: () => brokenCopy('gpt2', (d) => editJson(path.join(d, 'config.json'), (j) => { j.architectures = ['GPT2LMHeadModel']; j.model_type = 'gpt2'; })),
  },
  {
    name: "a tokenizer with more ids than the model's vocab", error: /tokenizer\.json: the tokenizer has 2049 ids but the model's vocab_size is 2048/,
    make: () => brokenCopy('tokenizer-big', (d) => editJson(path.join(d, 'tokenizer.json'), (j) => {
      (j.added_tokens as unknown[]).push({ id: 2048, content: '<|extra|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    })),
  },
  {
    name: 'a tokenizer.json that is not JSON', error: /tokenizer\.json: cannot read JSON/,
    make: () => brokenCopy('tokenizer-garbage', (d) => fs.writeFileSync(path.join(d, 'tokenizer.json'), 'not json')),
  },
  ...(haveStories ? [{
    name: 'a truncated llama2.c checkpoint', error: /stories-truncated\.bin: truncated: the header .* needs \d+ bytes, the file has 100000/,
    make: () => { const f = path.join(tmpRoot, 'stories-truncated.bin'); fs.writeFileSync(f, fs.readFileSync(STORIES_BIN).subarray(0, 100000)); return f; },
  }] : []),
];

/** Load options that cannot work, on a good model. */
const BAD_OPTIONS: { name: string; model: () => string; opts: LoadOptions; error: RegExp }[] = [
  { name: 'INT4 with a group size not in the kernel set', model: () => brownDir('draft'), opts: { quant: 'int4-rtn', groupSize: 100 }, error: /group size 100 is not one of 32, 64, 128/ },
  { name: 'a group size that is not a positive integer', model: () => brownDir('draft'), opts: { quant: 'int4-rtn', groupSize: 0 }, error: /groupSize = 0 must be a positive integer/ },
  ...(haveStories ? [
    { name: "INT4 g=128 on stories260K (dim 64)", model: () => STORIES_BIN, opts: { quant: 'int4-rtn' as const, groupSize: 128 }, error: /group size 128 does not divide hidden_size = 64/ },
    { name: "INT4 g=32 on stories260K (FFN 172)", model: () => STORIES_BIN, opts: { quant: 'int4-rtn' as const, groupSize: 32 }, error: /group size 32 does not divide intermediate_size = 172/ },
  ] : []),
  { name: 'an unknown quant', model: () => brownDir('draft'), opts: { quant: 'int8' as never }, error: /quant 'int8' is not one of none, f32, f16, int4-rtn/ },
  { name: 'an unknown KV dtype', model: () => brownDir('draft'), opts: { kvDtype: 'f8' as never }, error: /kvDtype 'f8' is not f32 or f16/ },
  { name: 'zero KV blocks', model: () => brownDir('draft'), opts: { numBlocks: 0 }, error: /numBlocks = 0 must be a positive integer/ },
  { name: 'a fractional maxBatchTokens', model: () => brownDir('draft'), opts: { maxBatchTokens: 2.5 }, error: /maxBatchTokens = 2\.5 must be a positive integer/ },
  { name: 'an unknown device kind', model: () => brownDir('draft'), opts: { device: 'tpu' as never }, error: /unknown device 'tpu'/ },
];

/** Sampling parameters that must be refused before any work, naming the parameter. */
const BAD_SAMPLING: [GenerateOptions, RegExp][] = [
  [{ temperature: -0.5 }, /temperature = -0\.5 must be ≥ 0/],
  [{ temperature: Number.NaN }, /temperature = NaN/],
  [{ temperature: Number.POSITIVE_INFINITY }, /temperature = Infinity/],
  [{ topP: 0 }, /topP = 0 must be in \(0, 1\]/],
  [{ topP: 1.5 }, /topP = 1\.5 must be in \(0, 1\]/],
  [{ minP: -0.1 }, /minP = -0\.1 must be in \[0, 1\]/],
  [{ minP: 2 }, /minP = 2 must be in \[0, 1\]/],
  [{ topK: -1 }, /topK = -1 must be a non-negative integer/],
  [{ topK: 2.5 }, /topK = 2\.5 must be a non-negative integer/],
  [{ seed: -1 }, /seed = -1 must be an integer in \[0, 2\^32\)/],
  [{ seed: 2 ** 32 }, /seed = 4294967296 must be an integer/],
  [{ maxTokens: 0 }, /maxTokens = 0 must be a positive integer/],
  [{ maxTokens: 1.5 }, /maxTokens = 1\.5 must be a positive integer/],
  [{ stop: [''] }, /stop must be a list of non-empty strings/],
  [{ stop: 'abc' as never }, /stop must be a list of non-empty strings/],
];

forEachBackend('runtime bad input', (dev: Device) => {
  /** Bytes in use once the device's per-op scratch buffers exist (they are kept per device). */
  let baseline = 0;
  beforeAll(async () => {
    const warm = await loadModel(brownDir('draft'), { device: dev });
    await warm.logits(heldoutIds(warm).slice(0, 300));
    await warm.complete(BROWN_PROMPT, { temperature: 0, maxTokens: 2 });
    await warm.close();
    baseline = dev.bytesInUse;
  });

  describe('loadModel refuses broken models and frees everything', () => {
    for (const b of BROKEN) {
      it(b.name, async () => {
        const dir = b.make();
        await expect(loadModel(dir, { device: dev })).rejects.toThrow(b.error);
        expect(dev.bytesInUse).toBe(baseline);
      });
    }
    for (const b of BAD_OPTIONS) {
      it(b.name, async () => {
        await expect(loadModel(b.model(), { device: dev, ...b.opts })).rejects.toThrow(b.error);
        expect(dev.bytesInUse).toBe(baseline);
      });
    }
    it('a load cancelled part way through the weights (onProgress throws)', async () => {
      let calls = 0;
      const onProgress = (done: number) => { calls++; if (done === 2) throw new Error('load cancelled'); };
      await expect(loadModel(brownDir('draft'), { device: dev, onProgress })).rejects.toThrow('load cancelled');
      expect(calls).toBe(2);
      expect(dev.bytesInUse).toBe(baseline);
    });
  });

  describe('a loaded model refuses bad requests and stays usable', () => {
    let llm: LLM;
    beforeAll(async () => { llm = await loadModel(brownDir('draft'), { device: dev }); });

    /** The request fails with `error`, frees its blocks, and the model still generates. */
    async function refuses(run: () => Promise<unknown>, error: RegExp): Promise<void> {
      await expect(run()).rejects.toThrow(error);
      expect(llm.engine.blocks.freeBlocks).toBe(llm.engine.blocks.numBlocks);
    }
    const complete = (prompt: string | readonly number[], opts: GenerateOptions = {}) => () => llm.complete(prompt, { temperature: 0, ...opts });

    it('token ids out of range', async () => {
      await refuses(complete([2047, 5, 2048]), /prompt token 2 = 2048 is outside the vocabulary \(0\.\.2047\)/);
      await refuses(complete([-1]), /prompt token 0 = -1 is outside the vocabulary/);
      await refuses(complete([2047, 1.5]), /prompt token 1 = 1\.5 is outside the vocabulary/);
      await refuses(() => llm.logits([2047, 99999]), /prompt token 1 = 99999 is outside the vocabulary/);
      await refuses(complete([]), /the prompt has no tokens/);
      await refuses(() => llm.logits([]), /logits: no token ids/);
    });

    it('a prompt longer than the context; the longest prompt that fits gets one token', async () => {
      const ids = heldoutIds(llm);
      const ctx = llm.spec.maxPositions;
      expect(ctx).toBe(512);
      await refuses(complete(ids.slice(0, ctx)), /the prompt has 512 tokens; the model's context is 512/);
      await refuses(() => llm.logits(ids.slice(0, ctx + 1)), /logits: 513 tokens exceed the context of 512/);
      // A text prompt too long once tokenized.
      await refuses(complete(fs.readFileSync(HELDOUT, 'utf8').slice(0, 20000)), /the prompt has \d+ tokens; the model's context is 512/);
      const out: number[] = [];
      const h = llm.generate(ids.slice(0, ctx - 1), { temperature: 0, maxTokens: 10, stopTokenIds: [] });
      for await (const t of h) if (t.tokenId >= 0) out.push(t.tokenId);
      expect(out.length).toBe(1);
      expect(await h.result()).toMatchObject({ finishReason: 'length', usage: { generatedTokens: 1 } });
      expect(llm.engine.blocks.freeBlocks).toBe(llm.engine.blocks.numBlocks);
    });

    it('invalid sampling parameters, each named', async () => {
      for (const [opts, error] of BAD_SAMPLING) await refuses(() => llm.complete(BROWN_PROMPT, opts), error);
    });

    it('still generates the greedy continuation after all of that; close() gives every byte back', async () => {
      expect(await llm.complete(BROWN_PROMPT, { temperature: 0, maxTokens: 4 })).toBe(llm.decode(GREEDY_IDS.slice(0, 4)));
      await llm.close();
      expect(dev.bytesInUse).toBe(baseline);
      await llm.close(); // twice is harmless
      await expect(llm.complete(BROWN_PROMPT, { maxTokens: 1 })).rejects.toThrow(/brown-draft: the model was closed/);
      await expect(llm.logits([2047])).rejects.toThrow(/the model was closed/);
    });
  });

  describe.skipIf(!haveStories)('a model without a tokenizer', () => {
    it('refuses a text prompt, naming the checkpoint; token ids work', async () => {
      const llm = await loadModel(STORIES_BIN, { device: dev, quant: 'f32' });
      try {
        await expect(llm.complete('Once upon a time')).rejects.toThrow(/stories260K\.bin has no tokenizer\.json: pass token ids/);
        expect(llm.engine.blocks.freeBlocks).toBe(llm.engine.blocks.numBlocks);
        const out: number[] = [];
        for await (const t of llm.generate([1], { temperature: 0, maxTokens: 3, stopTokenIds: [] })) out.push(t.tokenId);
        expect(out.length).toBe(3);
      } finally {
        await llm.close();
      }
    });
  });
}, { cpuExecutors: 'default' });
