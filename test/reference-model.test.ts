// The reference forward pass against outputs of other implementations (llama2.c run.c for
// stories260K; PyTorch for the brown models), plus properties on small synthetic models.

import { describe, it, expect, beforeAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openModel, type LoadedModel } from '../src/io/index.js';
import { memoryStore, encodeSafetensors, SafetensorsFile, f32ToF16, type MemoryTensor } from '../src/io/safetensors.js';
import { parseHfConfig } from '../src/io/hfConfig.js';
import { ReferenceModel, greedyGenerate, windowedPerplexity, argmax, linear } from '../src/model/reference.js';
import { expectedDenseWeights, type ModelSpec } from '../src/model/spec.js';
import { rng, freshSeed, randomF32, relErr } from './util.js';

const SHARED = path.resolve(import.meta.dirname, '../../shared/models');
const MODELS = path.resolve(import.meta.dirname, '../models');
const STORIES = `${SHARED}/stories260K`;
const HELDOUT = path.resolve(import.meta.dirname, '../../shared/data/brown-heldout.txt');

function readF32File(file: string): Float32Array {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** Largest per-row norm-wise error over `rows` rows of width V. */
function maxRowErr(out: Float32Array, ref: Float32Array, rows: number, V: number): number {
  let worst = 0;
  for (let p = 0; p < rows; p++) worst = Math.max(worst, relErr(out.subarray(p * V, (p + 1) * V), ref.subarray(p * V, (p + 1) * V)));
  return worst;
}

const haveStories = fs.existsSync(`${STORIES}/stories260K.bin`);
if (!haveStories) console.warn(`[skip] stories260K tests: ${STORIES}/stories260K.bin is absent`);

describe.skipIf(!haveStories)('stories260K (llama2.c golden outputs)', () => {
  let model: ReferenceModel;
  let golden: { cases: { prompt: number[]; steps: number; tokens: number[]; logits_file?: string; logits_shape?: [number, number] }[] };
  beforeAll(() => {
    const m = openModel(`${STORIES}/stories260K.bin`);
    model = ReferenceModel.fromStore(m.spec, m.weights);
    golden = JSON.parse(fs.readFileSync(`${STORIES}/golden.json`, 'utf8'));
  });

  it('reproduces run.c greedy continuations exactly', () => {
    expect(golden.cases.length).toBeGreaterThanOrEqual(2);
    for (const c of golden.cases) {
      // run.c feeds positions 0 .. steps-1, so the sequence holds at most steps + 1 ids; it stops
      // before emitting BOS (1).
      const out = greedyGenerate(model, c.prompt, c.steps - c.prompt.length + 1, [1]);
      expect(out).toEqual(c.tokens);
    }
  });

  it('matches run.c logits for every position of case 2 within 1e-4 per row', () => {
    const c = golden.cases[1]!;
    const [rows, V] = c.logits_shape!;
    const ref = readF32File(`${STORIES}/${c.logits_file}`);
    expect(ref.length).toBe(rows * V);
    const out = model.forward(c.tokens.slice(0, rows), model.newCache(), { logits: 'all' });
    const err = maxRowErr(out, ref, rows, V);
    console.log(`stories260K case 2: worst row error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-4);
  });
});

const brown = JSON.parse(fs.readFileSync(`${SHARED}/brown-models.json`, 'utf8')) as Record<string, {
  prompt_ids: number[]; greedy_ids_fp32: number[]; greedy_text_fp32: string; last_logits_fp32_first16: number[];
  logits_file: string; logits_shape: [number, number]; heldout_ppl_first_2048_fp32: number;
}>;

for (const which of ['target', 'draft'] as const) {
  describe(`brown-${which} (PyTorch fp32 outputs)`, () => {
    const golden = brown[which]!;
    let loaded: LoadedModel;
    let model: ReferenceModel;
    beforeAll(() => {
      loaded = openModel(path.join(MODELS, `brown-${which}`));
      model = ReferenceModel.fromStore(loaded.spec, loaded.weights);
    });

    it('tokenizes the prompt to the recorded ids', () => {
      expect(loaded.tokenizer!.encode('The jury said that')).toEqual(golden.prompt_ids);
    });

    it('greedy continuation equals greedy_ids_fp32', () => {
      const steps = golden.greedy_ids_fp32.length - golden.prompt_ids.length;
      const out = greedyGenerate(model, golden.prompt_ids, steps);
      expect(out).toEqual(golden.greedy_ids_fp32);
      expect(loaded.tokenizer!.decode(out, { skipSpecialTokens: true })).toBe(golden.greedy_text_fp32);
    });

    it('teacher-forced logits match within 1e-3 per row; last prompt row matches first16', () => {
      const [rows, V] = golden.logits_shape;
      const ref = readF32File(`${SHARED}/${golden.logits_file}`);
      const out = model.forward(golden.greedy_ids_fp32.slice(0, rows), model.newCache(), { logits: 'all' });
      const err = maxRowErr(out, ref, rows, V);
      console.log(`brown-${which}: worst row error ${err.toExponential(2)}`);
      // Measured 4.3e-7 (worst row) and 6.3e-6 (worst of the 16, absolute): bounds ≤ 10× (test/measure).
      expect(err).toBeLessThan(4e-6);
      const last = (golden.prompt_ids.length - 1) * V;
      golden.last_logits_fp32_first16.forEach((v, i) => expect(Math.abs(out[last + i]! - v)).toBeLessThan(6e-5));
    });

    // Measured within 2.4e-7 (relative) of PyTorch's perplexity.
    it('held-out perplexity over the first 2048 predictions within 2e-6 (relative)', () => {
      const ids = loaded.tokenizer!.encode(fs.readFileSync(HELDOUT, 'utf8'));
      expect(ids[0]).toBe(2047);
      expect(ids.slice(1).includes(2047)).toBe(false); // one BOS
      const t0 = performance.now();
      const r = windowedPerplexity(model, ids, 256, 8);
      console.log(`brown-${which}: ppl ${r.perplexity.toFixed(4)} (PyTorch ${golden.heldout_ppl_first_2048_fp32}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      expect(r.predictions).toBe(2048);
      expect(Math.abs(r.perplexity / golden.heldout_ppl_first_2048_fp32 - 1)).toBeLessThan(2e-6);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Synthetic models: properties the golden files do not pin down.

function tinySpec(over: Partial<ModelSpec> = {}): ModelSpec {
  return {
    arch: 'llama', vocabSize: 40, hidden: 32, layers: 2, heads: 4, kvHeads: 2, headDim: 8, ffn: 48,
    rmsNormEps: 1e-5, ropeTheta: 10000, ropeLayout: 'rotate-half', ropeScaling: null, maxPositions: 64,
    slidingWindow: null, tieEmbeddings: false, qkvBias: false, bosId: 0, eosIds: [], quantization: null, ...over,
  };
}

function randomWeights(spec: ModelSpec, r: () => number): Map<string, MemoryTensor> {
  const m = new Map<string, MemoryTensor>();
  for (const w of expectedDenseWeights(spec)) {
    const n = w.shape.reduce((a, d) => a * d, 1);
    const isNorm = w.name.endsWith('norm.weight');
    m.set(w.name, { dtype: 'F32', shape: w.shape, data: isNorm ? randomF32(n, r, 0.5, 1.5) : randomF32(n, r, -0.3, 0.3) });
  }
  return m;
}

function randomTokens(n: number, V: number, r: () => number): number[] {
  return Array.from({ length: n }, () => Math.floor(r() * V));
}

describe('reference forward properties', () => {
  it('logits do not depend on how tokens are chunked (bit-identical)', () => {
    const r = rng(freshSeed('reference chunking'));
    const spec = tinySpec();
    const model = ReferenceModel.fromStore(spec, memoryStore('tiny', randomWeights(spec, r)));
    const toks = randomTokens(11, spec.vocabSize, r);
    const all = model.forward(toks, model.newCache(), { logits: 'all' });
    const cache = model.newCache();
    const pieces = [toks.slice(0, 5), toks.slice(5, 6), toks.slice(6)];
    const chunked = pieces.flatMap((p) => Array.from(model.forward(p, cache, { logits: 'all' })));
    expect(chunked).toEqual(Array.from(all));
    // Speculative rollback: truncate and refeed.
    cache.truncate(6);
    expect(Array.from(model.forward(toks.slice(6), cache, { logits: 'all' }))).toEqual(Array.from(all.subarray(6 * spec.vocabSize)));
    expect(() => model.forward([spec.vocabSize], model.newCache())).toThrow(/token 40 at position 0 is outside the vocabulary/);
    expect(() => model.forward(toks, model.newCache(4))).toThrow(/exceed the KV cache capacity 4/);
  });

  it('interleaved RoPE on Meta-ordered q/k equals rotate-half on HF-permuted q/k', () => {
    // HF's conversion permutes each head's q/k rows so pair (2i, 2i+1) lands on (i, i + d/2).
    const r = rng(freshSeed('reference rope layouts'));
    const spec = tinySpec({ ropeLayout: 'interleaved', ropeTheta: 500 });
    const meta = randomWeights(spec, r);
    const hf = new Map(meta);
    const d = spec.hidden, hd = spec.headDim;
    const permute = (w: Float32Array, heads: number): Float32Array => {
      const out = new Float32Array(w.length);
      for (let h = 0; h < heads; h++) for (let i = 0; i < hd / 2; i++) {
        out.set(w.subarray((h * hd + 2 * i) * d, (h * hd + 2 * i + 1) * d), (h * hd + i) * d);
        out.set(w.subarray((h * hd + 2 * i + 1) * d, (h * hd + 2 * i + 2) * d), (h * hd + i + hd / 2) * d);
      }
      return out;
    };
    for (let l = 0; l < spec.layers; l++) {
      for (const [proj, heads] of [['q_proj', spec.heads], ['k_proj', spec.kvHeads]] as const) {
        const name = `model.layers.${l}.self_attn.${proj}.weight`;
        const t = meta.get(name)!;
        hf.set(name, { ...t, data: permute(t.data as Float32Array, heads) });
      }
    }
    const toks = randomTokens(9, spec.vocabSize, r);
    const a = ReferenceModel.fromStore(spec, memoryStore('meta', meta));
    const b = ReferenceModel.fromStore({ ...spec, ropeLayout: 'rotate-half' }, memoryStore('hf', hf));
    const la = a.forward(toks, a.newCache()), lb = b.forward(toks, b.newCache());
    expect(relErr(lb, la)).toBeLessThan(1e-12); // measured 0; float64, so a reordered sum could differ by ~1e-16
    // …and RoPE matters: without the permutation the layouts disagree.
    const c = ReferenceModel.fromStore({ ...spec, ropeLayout: 'rotate-half' }, memoryStore('meta', meta));
    expect(relErr(c.forward(toks, c.newCache()), la)).toBeGreaterThan(1e-3);
  });

  it('a sliding window of 1 makes each position see only itself', () => {
    // With one key the attention output is exactly that position's value (RoPE never touches v),
    // so every row equals a fresh single-token forward.
    const r = rng(freshSeed('reference sliding window'));
    const spec = tinySpec({ slidingWindow: 1 });
    const model = ReferenceModel.fromStore(spec, memoryStore('tiny', randomWeights(spec, r)));
    const toks = randomTokens(7, spec.vocabSize, r);
    const all = model.forward(toks, model.newCache());
    toks.forEach((t, p) => {
      const one = model.forward([t], model.newCache());
      expect(Array.from(all.subarray(p * spec.vocabSize, (p + 1) * spec.vocabSize))).toEqual(Array.from(one));
    });
    const wide = ReferenceModel.fromStore({ ...spec, slidingWindow: 64 }, memoryStore('tiny', randomWeights(spec, rng(1))));
    const full = ReferenceModel.fromStore({ ...spec, slidingWindow: null }, memoryStore('tiny', randomWeights(spec, rng(1))));
    expect(Array.from(wide.forward(toks, wide.newCache()))).toEqual(Array.from(full.forward(toks, full.newCache())));
  });

  it('Qwen2 q/k/v biases are applied where they belong', () => {
    const r = rng(freshSeed('reference qkv bias'));
    const spec = tinySpec({ arch: 'qwen2', qkvBias: true });
    const w = randomWeights(spec, r);
    const withBias = (keep: (name: string) => boolean): Map<string, MemoryTensor> => {
      const m = new Map(w);
      for (const [n, t] of w) if (n.endsWith('.bias') && !keep(n)) m.set(n, { ...t, data: new Float32Array(t.data.length) });
      return m;
    };
    const noBias = new Map([...w].filter(([n]) => !n.endsWith('.bias')));
    const plain = ReferenceModel.fromStore({ ...spec, arch: 'llama', qkvBias: false }, memoryStore('none', noBias));
    const run = (m: ReferenceModel, toks: number[]): number[] => Array.from(m.forward(toks, m.newCache()));
    const toks = randomTokens(6, spec.vocabSize, r);
    // Zero biases: identical to a model without them.
    const zero = ReferenceModel.fromStore(spec, memoryStore('zero', withBias(() => false)));
    expect(run(zero, toks)).toEqual(run(plain, toks));
    // q/k biases only move attention scores: with a single token (one key, weight 1) they change
    // nothing; over several tokens they do.
    const qk = ReferenceModel.fromStore(spec, memoryStore('qk', withBias((n) => !n.includes('v_proj'))));
    expect(run(qk, toks.slice(0, 1))).toEqual(run(plain, toks.slice(0, 1)));
    expect(relErr(run(qk, toks), run(plain, toks))).toBeGreaterThan(1e-4);
    // A v bias changes the value even for one token.
    const v = ReferenceModel.fromStore(spec, memoryStore('v', withBias((n) => n.includes('v_proj'))));
    expect(relErr(run(v, toks.slice(0, 1)), run(plain, toks.slice(0, 1)))).toBeGreaterThan(1e-4);
    // linear's bias is a plain per-column add.
    const x = randomF32(3 * 5, r), wt = randomF32(4 * 5, r), b = randomF32(4, r);
    const yb = linear(x, 3, 5, wt, 4, b), y = linear(x, 3, 5, wt, 4);
    yb.forEach((val, i) => expect(val).toBeCloseTo(y[i]! + b[i % 4]!, 5));
  });

  it('an AWQ checkpoint runs like its dequantized dense twin', () => {
    const r = rng(freshSeed('reference awq'));
    const g = 16;
    const spec = tinySpec({ quantization: { method: 'awq', version: 'gemm', bits: 4, groupSize: g, zeroPoint: true, modulesNotConverted: [] } });
    const dense = randomWeights({ ...spec, quantization: null }, r);
    const awq = new Map(dense);
    const order = [0, 2, 4, 6, 1, 3, 5, 7];
    for (const name of [...dense.keys()]) {
      if (!/_proj\.weight$/.test(name)) continue;
      const [N, K] = dense.get(name)!.shape as [number, number];
      const prefix = name.replace(/\.weight$/, '');
      const q = Uint8Array.from({ length: K * N }, () => Math.floor(r() * 16));
      const z = Uint8Array.from({ length: (K / g) * N }, () => Math.floor(r() * 16));
      const s = Uint16Array.from({ length: (K / g) * N }, () => f32ToF16(0.01 + 0.03 * r()));
      const pack = (vals: Uint8Array, rows: number): Int32Array => {
        const out = new Int32Array(rows * (N / 8));
        for (let i = 0; i < rows * (N / 8); i++) for (let j = 0; j < 8; j++) out[i] = out[i]! | (vals[Math.floor(i / (N / 8)) * N + (i % (N / 8)) * 8 + order[j]!]! << (4 * j));
        return out;
      };
      awq.delete(name);
      awq.set(`${prefix}.qweight`, { dtype: 'I32', shape: [K, N / 8], data: pack(q, K) });
      awq.set(`${prefix}.qzeros`, { dtype: 'I32', shape: [K / g, N / 8], data: pack(z, K / g) });
      awq.set(`${prefix}.scales`, { dtype: 'F16', shape: [K / g, N], data: s });
      const w = new Float32Array(N * K);
      const sf = Float32Array.from(s, halfToFloat);
      for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) w[n * K + k] = (q[k * N + n]! - z[Math.floor(k / g) * N + n]!) * sf[Math.floor(k / g) * N + n]!;
      dense.set(name, { dtype: 'F32', shape: [N, K], data: w });
    }
    // Through a real file, as a quantized checkpoint would arrive.
    const st = SafetensorsFile.fromBytes('awq.safetensors', encodeSafetensors(awq));
    const qm = ReferenceModel.fromStore(spec, st);
    const dm = ReferenceModel.fromStore({ ...spec, quantization: null }, memoryStore('dense', dense));
    const toks = randomTokens(8, spec.vocabSize, r);
    expect(Array.from(qm.forward(toks, qm.newCache()))).toEqual(Array.from(dm.forward(toks, dm.newCache())));
  });

  it('parses a config and runs a tied model (lm_head = embedding)', () => {
    const spec = parseHfConfig({
      architectures: ['LlamaForCausalLM'], hidden_size: 32, intermediate_size: 48, num_hidden_layers: 1, num_attention_heads: 4,
      num_key_value_heads: 4, vocab_size: 40, max_position_embeddings: 16, rms_norm_eps: 1e-5, tie_word_embeddings: true,
    });
    const r = rng(freshSeed('reference tied'));
    const w = randomWeights(spec, r);
    expect(w.has('lm_head.weight')).toBe(false);
    const model = ReferenceModel.fromStore(spec, memoryStore('tied', w));
    expect(model.weights.lmHead).toBe(model.weights.embed);
    const out = greedyGenerate(model, [3, 5], 6);
    expect(out.length).toBe(8);
    expect(out[2]).toBe(argmax(model.forward([3, 5], model.newCache(), { logits: 'last' })));
  });
});

function halfToFloat(h: number): number {
  const e = (h >> 10) & 0x1f, f = h & 0x3ff, s = h & 0x8000 ? -1 : 1;
  return e === 0 ? s * f * 2 ** -24 : s * (1 + f / 1024) * 2 ** (e - 15);
}
