// Loaders that refuse what they cannot trust, and AutoAWQ checkpoints with modules left in f16.
// Each case is built the way a user would meet it: brown-draft (2 layers, tied embeddings) and
// brown-target with one field of config.json or tokenizer.json changed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HfTokenizer } from '../src/io/tokenizer.js';
import { openModel } from '../src/io/index.js';
import { encodeSafetensors, type LoadableDtype, type MemoryTensor, openSafetensors } from '../src/io/safetensors.js';
import { loadModel } from '../src/llm.js';
import { ReferenceModel } from '../src/model/reference.js';
import { writeAwqCheckpoint } from '../src/quant/writeAwq.js';
import { relErr } from './util.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const DRAFT = path.join(ROOT, 'models/brown-draft');
const TARGET = path.join(ROOT, 'models/brown-target');
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-loaders-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

/** A copy of a model directory with config.json (and other JSON files) edited. */
function variant(src: string, name: string, edit: (files: Record<string, Record<string, unknown>>) => void): string {
  const dir = path.join(tmpRoot, name);
  fs.cpSync(src, dir, { recursive: true });
  const files: Record<string, Record<string, unknown>> = {};
  for (const f of ['config.json', 'tokenizer.json']) files[f] = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as Record<string, unknown>;
  edit(files);
  for (const [f, v] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), JSON.stringify(v));
  return dir;
}

describe('tensors the config does not account for', () => {
  it('num_hidden_layers too small: refused, listing the dropped layer; allowUnusedTensors loads anyway', async () => {
    const dir = variant(DRAFT, 'one-layer', (f) => { f['config.json']!.num_hidden_layers = 1; });
    expect(() => openModel(dir)).toThrow(/9 tensors not used by the model config\.json describes: model\.layers\.1\.input_layernorm\.weight, .*\(config\.json says num_hidden_layers = 1 but the checkpoint has layers up to 1\); fix config\.json, or load anyway with allowUnusedTensors/);
    await expect(loadModel(dir, { device: 'cpu' })).rejects.toThrow(/not used by the model/);
    const llm = await loadModel(dir, { device: 'cpu', allowUnusedTensors: true });
    expect(llm.spec.layers).toBe(1);
    await llm.close();
  });

  it('tie_word_embeddings on a model that ships lm_head.weight: refused, naming it', () => {
    const dir = variant(TARGET, 'tied', (f) => { f['config.json']!.tie_word_embeddings = true; });
    expect(() => openModel(dir)).toThrow(/1 tensor not used by the model config\.json describes: lm_head\.weight \(config\.json says tie_word_embeddings = true but the checkpoint ships its own lm_head\.weight\)/);
  });
});

describe('tokenizers that do not fit the model or the text', () => {
  /** tokenizer.json keeping only ids below `keep` (and the merges among them), plus BOS/EOS. */
  const truncate = (keep: number) => (f: Record<string, Record<string, unknown>>) => {
    const model = f['tokenizer.json']!.model as { vocab: Record<string, number>; merges: (string | string[])[] };
    model.vocab = Object.fromEntries(Object.entries(model.vocab).filter(([, id]) => id < keep));
    const has = (t: string) => t in model.vocab;
    model.merges = model.merges.filter((m) => {
      const [a, b] = typeof m === 'string' ? m.split(' ') : m;
      return has(a!) && has(b!) && has(a! + b!);
    });
  };

  it('a tokenizer far smaller than vocab_size is refused at load', () => {
    const dir = variant(DRAFT, 'small-vocab', truncate(1000));
    expect(() => openModel(dir)).toThrow(/the tokenizer has \d+ ids but the model's vocab_size is 2048 \(\d+ ids it can never produce\)/);
  });

  it('a vocabulary that does not cover the text is refused when encoding, naming the lost characters', () => {
    const dir = variant(DRAFT, 'no-letters', truncate(60));
    const tok = HfTokenizer.fromDir(dir);
    expect(() => tok.encode('The jury said that')).toThrow(/vocabulary does not cover the text: \d+ ids give back \d+ of its 15 non-space characters .*characters lost: "T"/);
    // The real tokenizer covers both data files and arbitrary Unicode (byte-level BPE).
    const real = HfTokenizer.fromDir(DRAFT);
    expect(real.decode(real.encode('The jury said that ☃ é'), { skipSpecialTokens: true })).toBe('The jury said that ☃ é');
  });
});

describe('sizes that cannot be allocated', () => {
  it('max_position_embeddings 2^53 names the field and the bytes', () => {
    const dir = path.join(tmpRoot, 'huge-context');
    fs.cpSync(DRAFT, dir, { recursive: true });
    const cfg = fs.readFileSync(path.join(dir, 'config.json'), 'utf8').replace(/"max_position_embeddings": \d+/, '"max_position_embeddings": 9007199254740992');
    fs.writeFileSync(path.join(dir, 'config.json'), cfg);
    expect(() => openModel(dir)).toThrow(/field 'max_position_embeddings' is 9007199254740992: its RoPE table \(positions × head_dim 32 × 4 bytes\) would need 1152921504606847000 bytes, more than one buffer can hold/);
  });
});

describe('AutoAWQ checkpoint with modules_to_not_convert', () => {
  it('loads those linears dense and matches its float64 reference', async () => {
    const awq = path.join(tmpRoot, 'draft-rtn');
    writeAwqCheckpoint(DRAFT, awq, { groupSize: 64 });
    // Replace layer 0's q_proj (in the fused q|k|v) and layer 1's down_proj with the source's f16.
    const skip = ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj'];
    const out = openSafetensors(awq), src = openSafetensors(DRAFT);
    const tensors = new Map<string, MemoryTensor>();
    const copy = (st: typeof out, name: string) => {
      const info = st.info(name), bytes = st.bytes(name).slice();
      const data = info.dtype === 'I32' ? new Int32Array(bytes.buffer) : info.dtype === 'F32' ? new Float32Array(bytes.buffer) : new Uint16Array(bytes.buffer);
      tensors.set(name, { dtype: info.dtype as LoadableDtype, shape: info.shape, data });
    };
    for (const n of out.names()) if (!skip.some((s) => n.startsWith(`${s}.`))) copy(out, n);
    for (const s of skip) copy(src, `${s}.weight`);
    out.close(); src.close();
    fs.writeFileSync(path.join(awq, 'model.safetensors'), encodeSafetensors(tensors));
    const cfgPath = path.join(awq, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8')) as { quantization_config: Record<string, unknown> };
    cfg.quantization_config.modules_to_not_convert = ['layers.0.self_attn.q_proj', 'layers.1.mlp.down_proj'];
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));

    const m = openModel(awq);
    const llm = await loadModel(awq, { device: 'cpu' });
    try {
      const L = llm.weights.layers;
      // Dense where a part was kept: q|k|v in f32 (k, v dequantized exactly), down in f16.
      expect(['qkv', 'o', 'gateUp', 'down'].map((k) => Object.keys(L[0]![k as 'qkv'].weights).sort().join('+'))).toEqual(['w', 'qweight+qzeros+scales', 'qweight+qzeros+scales', 'qweight+qzeros+scales']);
      expect(Object.keys(L[1]!.down.weights)).toEqual(['w']);
      expect(Object.keys(L[1]!.qkv.weights).sort()).toEqual(['qweight', 'qzeros', 'scales']);
      const ids = llm.encode('The jury said that the city had been given a new plan.');
      const ref = ReferenceModel.fromStore(m.spec, m.weights);
      const want = ref.forward(ids, ref.newCache(ids.length));
      const got = await llm.logits(ids);
      const V = m.spec.vocabSize;
      for (let t = 0; t < ids.length; t++) expect(relErr(got.subarray(t * V, (t + 1) * V), want.subarray(t * V, (t + 1) * V))).toBeLessThan(1e-4);
    } finally {
      await llm.close();
      m.weights.close();
    }
  });
});
