// Model loading: safetensors (validation, sharding, lazy reads), HF config → ModelSpec,
// tokenizers, llama2.c checkpoints and AutoAWQ GEMM checkpoints.

import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  SafetensorsFile, openSafetensors, encodeSafetensors, readFloat32, readInt32, readFloat16Bits,
  f16ToF32, f32ToF16, toFloat32, memoryStore, bufferSource, type MemoryTensor, type ByteSource,
} from '../src/io/safetensors.js';
import { parseHfConfig, loadHfConfig, validateWeights } from '../src/io/hfConfig.js';
import { HfTokenizer, Llama2cTokenizer, IncrementalDecoder, checkTokenizerVocab } from '../src/io/tokenizer.js';
import { parseLlama2c, loadLlama2c } from '../src/io/llama2c.js';
import { AWQ_ORDER, loadAwqLayers, dequantizeAwq, isAwqCheckpoint } from '../src/io/awq.js';
import { openModel } from '../src/io/index.js';
import { ropeInvFreq, type ModelSpec } from '../src/model/spec.js';
import { rng, freshSeed, randomF32 } from './util.js';

const MODELS = path.resolve(import.meta.dirname, '../models');
const SHARED = path.resolve(import.meta.dirname, '../../shared/models');
let tmp = '';
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-io-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function writeTmp(name: string, bytes: Uint8Array | string): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, bytes);
  return p;
}

/** A safetensors file from a raw header object and data section. */
function rawSafetensors(header: unknown, data: Uint8Array, headerLenOverride?: number): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLenOverride ?? json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function f16Bits(values: Float32Array): Uint16Array {
  return Uint16Array.from(values, (v) => f32ToF16(v));
}

describe('safetensors', () => {
  const r = rng(freshSeed('io safetensors'));
  const a = randomF32(12, r);
  const h = randomF32(6, r);
  const ints = Int32Array.from({ length: 5 }, () => Math.floor(r() * 2 ** 31) - 2 ** 30);
  const bfBits = Uint16Array.from(randomF32(4, r), (v) => new Uint32Array(new Float32Array([v]).buffer)[0]! >>> 16);
  const tensors = new Map<string, MemoryTensor>([
    ['a', { dtype: 'F32', shape: [3, 4], data: a }],
    ['h', { dtype: 'F16', shape: [6], data: f16Bits(h) }],
    ['i', { dtype: 'I32', shape: [5, 1], data: ints }],
    ['b', { dtype: 'BF16', shape: [2, 2], data: bfBits }],
  ]);

  it('reads F32, F16, BF16 and I32 tensors from a file', () => {
    const file = writeTmp('ok.safetensors', encodeSafetensors(tensors, { format: 'pt' }));
    const st = SafetensorsFile.open(file);
    expect(st.names().sort()).toEqual(['a', 'b', 'h', 'i']);
    expect(st.metadata).toEqual({ format: 'pt' });
    expect(st.info('a').shape).toEqual([3, 4]);
    expect(Array.from(readFloat32(st, 'a'))).toEqual(Array.from(a));
    const hf = readFloat32(st, 'h');
    h.forEach((v, i) => expect(Math.abs(hf[i]! - v)).toBeLessThanOrEqual(Math.abs(v) * 2 ** -11 + 2 ** -24));
    expect(Array.from(readFloat16Bits(st, 'h'))).toEqual(Array.from(f16Bits(h)));
    expect(Array.from(readInt32(st, 'i'))).toEqual(Array.from(ints));
    const bf = readFloat32(st, 'b');
    bfBits.forEach((bits, i) => expect(new Uint32Array(new Float32Array([bf[i]!]).buffer)[0]).toBe((bits << 16) >>> 0));
    expect(() => readInt32(st, 'a')).toThrow(/tensor 'a' is F32, expected I32/);
    st.close();
  });

  it('reads only the header and the requested tensor', () => {
    const bytes = encodeSafetensors(tensors);
    let read = 0;
    const inner = bufferSource('counted', bytes);
    const counting: ByteSource = { ...inner, read: (o, n) => ((read += n), inner.read(o, n)) };
    const st = SafetensorsFile.fromSource(counting);
    const headerBytes = read;
    expect(headerBytes).toBe(bytes.length - (48 + 12 + 20 + 8)); // everything but the data section
    readFloat32(st, 'h');
    expect(read - headerBytes).toBe(12);
  });

  it('opens sharded checkpoints through model.safetensors.index.json', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'sharded-'));
    const [t1, t2] = [new Map([...tensors].slice(0, 2)), new Map([...tensors].slice(2))];
    fs.writeFileSync(path.join(dir, 'model-00001-of-00002.safetensors'), encodeSafetensors(t1));
    fs.writeFileSync(path.join(dir, 'model-00002-of-00002.safetensors'), encodeSafetensors(t2));
    const weightMap: Record<string, string> = {};
    for (const n of t1.keys()) weightMap[n] = 'model-00001-of-00002.safetensors';
    for (const n of t2.keys()) weightMap[n] = 'model-00002-of-00002.safetensors';
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const st = openSafetensors(dir);
    expect(st.names().sort()).toEqual(['a', 'b', 'h', 'i']);
    expect(Array.from(readInt32(st, 'i'))).toEqual(Array.from(ints));
    expect(Array.from(readFloat32(st, 'a'))).toEqual(Array.from(a));
    expect(() => st.info('zzz')).toThrow(/index\.json: no tensor named 'zzz'/);
    st.close();

    weightMap.ghost = 'model-00001-of-00002.safetensors';
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    expect(() => openSafetensors(dir)).toThrow(/maps tensor 'ghost' to model-00001-of-00002\.safetensors, which has no such tensor/);
    delete weightMap.ghost;
    weightMap.a = 'model-00003-of-00002.safetensors';
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    expect(() => openSafetensors(dir)).toThrow(/shard 'model-00003-of-00002\.safetensors' \(for tensor 'a'\) does not exist/);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"weight_map": ');
    expect(() => openSafetensors(dir)).toThrow(/index\.json: not a readable JSON index/);
  });

  const data16 = new Uint8Array(16);
  const corrupt: [string, Uint8Array, RegExp][] = [
    ['too-short', new Uint8Array(5), /too-short\.safetensors: 5 bytes, too short/],
    ['header-past-end', rawSafetensors({}, data16, 4096), /header-past-end\.safetensors: header length 4096 runs past the end of the file/],
    ['bad-json', rawSafetensors('{"x": {"dtype": "F32",', data16), /bad-json\.safetensors: safetensors header is not valid JSON/],
    ['not-object', rawSafetensors('[1,2]', data16), /not-object\.safetensors: safetensors header must be a JSON object/],
    ['outside', rawSafetensors({ w: { dtype: 'F32', shape: [8], data_offsets: [0, 32] } }, data16),
      /outside\.safetensors: tensor 'w': data_offsets \[0, 32\] lie outside the data section \(16 bytes\)/],
    ['reversed', rawSafetensors({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, data16), /tensor 'w': data_offsets \[8, 4\] lie outside/],
    ['overlap', rawSafetensors({
      w1: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
      w2: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
    }, data16), /overlap\.safetensors: tensors 'w1' and 'w2' overlap/],
    ['unknown-dtype', rawSafetensors({ w: { dtype: 'F13', shape: [4], data_offsets: [0, 16] } }, data16),
      /unknown-dtype\.safetensors: tensor 'w': unknown dtype 'F13'/],
    ['size-mismatch', rawSafetensors({ w: { dtype: 'F16', shape: [2, 3], data_offsets: [0, 16] } }, data16),
      /size-mismatch\.safetensors: tensor 'w': shape \[2, 3\] × F16 is 12 bytes but data_offsets span 16/],
    ['bad-shape', rawSafetensors({ w: { dtype: 'F32', shape: [-4], data_offsets: [0, 16] } }, data16), /tensor 'w': shape must be an array of non-negative integers/],
    ['no-offsets', rawSafetensors({ w: { dtype: 'F32', shape: [4] } }, data16), /tensor 'w': data_offsets must be \[begin, end\]/],
  ];
  for (const [name, bytes, message] of corrupt) {
    it(`rejects a corrupt file: ${name}`, () => {
      const file = writeTmp(`${name}.safetensors`, bytes);
      expect(() => SafetensorsFile.open(file)).toThrow(message);
    });
  }

  it('opens files holding other dtypes but refuses to read those tensors, by name', () => {
    const file = writeTmp('i64.safetensors', rawSafetensors({
      pos: { dtype: 'I64', shape: [2], data_offsets: [0, 16] },
    }, data16));
    const st = SafetensorsFile.open(file);
    expect(st.info('pos').dtype).toBe('I64');
    expect(() => readInt32(st, 'pos')).toThrow(/i64\.safetensors: tensor 'pos' has dtype I64, which Kiln does not load \(supported: F32, F16, BF16, I32\)/);
    expect(() => readFloat32(st, 'pos')).toThrow(/dtype I64/);
    expect(() => st.bytes('missing')).toThrow(/i64\.safetensors: no tensor named 'missing'/);
    st.close();
  });

  it('converts every f16 value exactly and rounds f32 → f16 to nearest even', () => {
    for (let hbits = 0; hbits < 65536; hbits++) {
      const v = f16ToF32(hbits);
      if (Number.isNaN(v)) continue;
      expect(f32ToF16(v)).toBe(hbits);
    }
    const all = new Uint16Array(65536).map((_, i) => i);
    const conv = toFloat32('F16', new Uint8Array(all.buffer));
    for (let i = 0; i < 65536; i += 97) expect(Object.is(conv[i], Math.fround(f16ToF32(i))) || Number.isNaN(conv[i]!)).toBe(true);
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie → even (up)
    expect(f32ToF16(70000)).toBe(0x7c00);
    expect(f32ToF16(2 ** -25)).toBe(0); // half of the smallest subnormal: tie → 0
    expect(f32ToF16(1.5 * 2 ** -25)).toBe(1);
  });
});

const brownConfig = (): Record<string, unknown> => JSON.parse(fs.readFileSync(path.join(MODELS, 'brown-target/config.json'), 'utf8'));

describe('hfConfig', () => {
  it('parses the brown models into a ModelSpec', () => {
    const t = loadHfConfig(path.join(MODELS, 'brown-target'));
    expect(t).toMatchObject({
      arch: 'llama', vocabSize: 2048, hidden: 256, layers: 6, heads: 8, kvHeads: 4, headDim: 32, ffn: 768,
      rmsNormEps: 1e-5, ropeTheta: 10000, ropeLayout: 'rotate-half', ropeScaling: null, maxPositions: 512,
      tieEmbeddings: false, qkvBias: false, bosId: 2047, eosIds: [2047], quantization: null, slidingWindow: null,
    });
    const d = loadHfConfig(path.join(MODELS, 'brown-draft'));
    expect(d).toMatchObject({ hidden: 128, layers: 2, heads: 4, kvHeads: 2, headDim: 32, ffn: 384, tieEmbeddings: true });
  });

  it('parses Llama 3 rope scaling, Mistral, Qwen2 and SmolLM-style configs', () => {
    const llama3 = parseHfConfig({
      architectures: ['LlamaForCausalLM'], hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
      num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 131072,
      rms_norm_eps: 1e-5, rope_theta: 500000, bos_token_id: 128000, eos_token_id: [128001, 128008, 128009],
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    expect(llama3).toMatchObject({ headDim: 128, kvHeads: 8, eosIds: [128001, 128008, 128009], bosId: 128000 });
    expect(llama3.ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });
    // Wavelengths below 8192/4 keep their frequency, above 8192/1 are slowed 8×, in between blend.
    const inv = ropeInvFreq(llama3), plain = ropeInvFreq({ ...llama3, ropeScaling: null });
    let kept = 0, slowed = 0, blended = 0;
    for (let i = 0; i < 64; i++) {
      const wl = (2 * Math.PI) / plain[i]!;
      if (wl < 2048) kept += Number(inv[i] === plain[i]);
      else if (wl > 8192) slowed += Number(Math.abs(inv[i]! * 8 - plain[i]!) < 1e-18);
      else blended += Number(inv[i]! < plain[i]! && inv[i]! > plain[i]! / 8);
    }
    expect(kept + slowed + blended).toBe(64);
    expect(kept > 0 && slowed > 0 && blended > 0).toBe(true);

    const mistral = parseHfConfig({
      architectures: ['MistralForCausalLM'], hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
      num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 32000, max_position_embeddings: 32768,
      rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 4096, bos_token_id: 1, eos_token_id: 2,
    });
    expect(mistral).toMatchObject({ arch: 'mistral', slidingWindow: 4096, qkvBias: false });
    const qwen = parseHfConfig({
      architectures: ['Qwen2ForCausalLM'], hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24,
      num_attention_heads: 14, num_key_value_heads: 2, vocab_size: 151936, max_position_embeddings: 32768,
      rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true, use_sliding_window: false, sliding_window: 32768,
      bos_token_id: 151643, eos_token_id: 151645,
    }, { generationConfig: { bos_token_id: 151643, eos_token_id: [151645, 151643] } });
    expect(qwen).toMatchObject({ arch: 'qwen2', qkvBias: true, headDim: 64, ropeTheta: 1e6, tieEmbeddings: true, slidingWindow: null, eosIds: [151645, 151643] });
    const smol = parseHfConfig({
      architectures: ['LlamaForCausalLM'], hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30,
      num_attention_heads: 9, num_key_value_heads: 3, vocab_size: 49152, max_position_embeddings: 2048,
      rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2,
    });
    expect(smol).toMatchObject({ headDim: 64, tieEmbeddings: true, kvHeads: 3 });
  });

  it('parses an AutoAWQ quantization_config', () => {
    const cfg = { ...brownConfig(), quantization_config: { quant_method: 'awq', bits: 4, group_size: 128, zero_point: true, version: 'GEMM', modules_to_not_convert: null } };
    expect(parseHfConfig(cfg).quantization).toEqual({ method: 'awq', version: 'gemm', bits: 4, groupSize: 128, zeroPoint: true, modulesNotConverted: [] });
  });

  const bad: [string, (c: Record<string, unknown>) => void, RegExp][] = [
    ['unsupported architecture', (c) => (c.architectures = ['GPTNeoXForCausalLM']), /config\.json: field 'architectures' is \["GPTNeoXForCausalLM"\]; Kiln supports LlamaForCausalLM/],
    ['missing hidden_size', (c) => delete c.hidden_size, /config\.json: field 'hidden_size' is missing/],
    ['non-integer layers', (c) => (c.num_hidden_layers = '6'), /field 'num_hidden_layers' must be an integer/],
    ['heads not dividing kv heads', (c) => (c.num_key_value_heads = 3), /heads \(8\) must be a multiple of kvHeads \(3\)/],
    ['unknown rope type', (c) => (c.rope_scaling = { rope_type: 'yarn', factor: 4 }), /field 'rope_scaling\.rope_type' is 'yarn'/],
    ['llama3 rope without factors', (c) => (c.rope_scaling = { rope_type: 'llama3', factor: 8 }), /field 'rope_scaling\.low_freq_factor' is missing/],
    ['gptq', (c) => (c.quantization_config = { quant_method: 'gptq', bits: 4, group_size: 128 }), /field 'quantization_config\.quant_method' is 'gptq'/],
    ['awq gemv', (c) => (c.quantization_config = { quant_method: 'awq', bits: 4, group_size: 128, version: 'gemv', zero_point: true }), /'quantization_config\.version' is 'gemv'/],
    ['awq 8-bit', (c) => (c.quantization_config = { quant_method: 'awq', bits: 8, group_size: 128, version: 'gemm', zero_point: true }), /'quantization_config\.bits' is 8/],
    ['awq group not dividing K', (c) => (c.quantization_config = { quant_method: 'awq', bits: 4, group_size: 96, version: 'gemm', zero_point: true }), /group_size 96 does not divide model\.layers\.0\.self_attn\.q_proj input size 256/],
    ['gelu', (c) => (c.hidden_act = 'gelu'), /field 'hidden_act' is 'gelu'/],
    ['attention bias on llama', (c) => (c.attention_bias = true), /field 'attention_bias' is true/],
    ['eos outside vocab', (c) => (c.eos_token_id = 4096), /special token id 4096 is outside the vocabulary/],
  ];
  for (const [what, edit, message] of bad) {
    it(`rejects a config: ${what}`, () => {
      const c = brownConfig();
      edit(c);
      expect(() => parseHfConfig(c)).toThrow(message);
    });
  }

  it('validates weights against the spec, naming the tensor and the expected shape', () => {
    const spec = loadHfConfig(path.join(MODELS, 'brown-draft'));
    const st = openSafetensors(path.join(MODELS, 'brown-draft'));
    expect(() => validateWeights(spec, st)).not.toThrow();
    const tensors = new Map<string, MemoryTensor>(st.names().map((n) => [n, { dtype: 'F16', shape: st.info(n).shape, data: readFloat16Bits(st, n) }]));
    st.close();
    const missing = new Map(tensors);
    missing.delete('model.layers.1.mlp.up_proj.weight');
    expect(() => validateWeights(spec, memoryStore('draft', missing))).toThrow(/draft: missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight' \(expected shape \[384, 128\]\)/);
    const wrong = new Map(tensors);
    wrong.set('model.layers.0.self_attn.k_proj.weight', { dtype: 'F16', shape: [128, 64], data: new Uint16Array(128 * 64) });
    expect(() => validateWeights(spec, memoryStore('draft', wrong))).toThrow(/tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[128, 64\], expected \[64, 128\]/);
    // An untied spec needs lm_head.weight.
    expect(() => validateWeights({ ...spec, tieEmbeddings: false }, memoryStore('draft', tensors))).toThrow(/missing tensor 'lm_head\.weight' \(expected shape \[2048, 128\]\)/);
  });

  it('openModel opens a HF directory with its tokenizer', () => {
    const m = openModel(path.join(MODELS, 'brown-target'));
    expect(m.format).toBe('hf');
    expect(m.tokenizer?.vocabSize).toBe(2048);
    expect(readFloat32(m.weights, 'lm_head.weight').length).toBe(2048 * 256);
    m.weights.close();
    expect(() => openModel(path.join(tmp, 'nope'))).toThrow(/no such file or directory/);
  });
});

describe('tokenizer', () => {
  let tok: HfTokenizer;
  beforeAll(() => {
    tok = HfTokenizer.fromDir(path.join(MODELS, 'brown-target'));
  });

  it('encodes with BOS from the post-processor and decodes back', () => {
    expect(tok.encode('The jury said that')).toEqual([2047, 473, 502, 1146, 548, 323]);
    expect(tok.encode('The jury said that', { addSpecialTokens: false })).toEqual([473, 502, 1146, 548, 323]);
    expect(tok.bosId).toBe(2047);
    expect(tok.eosId).toBe(2047);
    expect(tok.isSpecial(2047)).toBe(true);
    expect(tok.decode([2047, 473, 502], { skipSpecialTokens: true })).toBe('The j');
    const text = 'The grand jury, 1961. Ça coûte 5€ — “quoted” ✓ 日本語\nnext line';
    expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
  });

  it('streams text without breaking multi-byte characters', () => {
    const text = ' the jury “said” ✓ 日本語 — fin.\n';
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(text.length / 2); // byte fallback actually happens
    const dec = tok.streamer({ context: tok.encode('The') });
    let out = '';
    for (const id of ids) {
      const piece = dec.push(id);
      expect(piece).not.toContain('\uFFFD');
      out += piece;
    }
    out += dec.flush();
    expect(out).toBe(text);
    // An incomplete character at the end comes out on flush.
    const d2 = new IncrementalDecoder(tok);
    const partial = tok.encode('✓', { addSpecialTokens: false });
    expect(partial.length).toBe(3);
    expect(d2.push(...partial.slice(0, 2))).toBe('');
    expect(d2.flush()).toBe('\uFFFD');
  });

  it('renders chat templates from tokenizer_config.json', () => {
    const json = JSON.parse(fs.readFileSync(path.join(MODELS, 'brown-target/tokenizer.json'), 'utf8'));
    const cfg = {
      bos_token: '<|endoftext|>', eos_token: { content: '<|endoftext|>' },
      chat_template: "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
    };
    const t = new HfTokenizer(json, cfg);
    const msgs = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
    expect(t.applyChatTemplate(msgs)).toBe('<|endoftext|>system: Be brief.\nuser: Hi\nassistant:');
    expect(t.applyChatTemplate(msgs, { addGenerationPrompt: false })).toBe('<|endoftext|>system: Be brief.\nuser: Hi\n');
    const named = new HfTokenizer(json, { chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D{{ messages|length }}' }] });
    expect(named.applyChatTemplate(msgs)).toBe('D2');
    expect(() => tok.applyChatTemplate(msgs)).toThrow(/has no chat_template/);
    expect(() => new HfTokenizer(json, { chat_template: '{% for %}' }).applyChatTemplate(msgs)).toThrow(/chat_template does not parse/);
  });

  it('checks the tokenizer vocabulary fits the model', () => {
    const spec = loadHfConfig(path.join(MODELS, 'brown-target'));
    expect(() => checkTokenizerVocab(tok, spec)).not.toThrow();
    expect(() => checkTokenizerVocab(tok, { ...spec, vocabSize: 2000 })).toThrow(/tokenizer\.json: the tokenizer has 2048 ids but the model's vocab_size is 2000/);
  });

  it('reads a llama2.c tokenizer.bin, encodes by merge scores and decodes byte tokens', () => {
    const pieces: [string | Uint8Array, number][] = [['<unk>', 0], ['\n<s>\n', 0], ['\n</s>\n', 0]];
    for (let b = 0; b < 256; b++) pieces.push([`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 0]);
    const extra: [string, number][] = [[' ', -1], ['a', -2], ['b', -3], ['c', -4], ['ab', -5], [' ab', -6], ['bc', -7], [' c', -8], ['abc', -20]];
    pieces.push(...extra);
    const enc = new TextEncoder();
    const parts: number[] = [];
    const dv = (n: number, f: boolean): number[] => {
      const b = new DataView(new ArrayBuffer(4));
      if (f) b.setFloat32(0, n, true); else b.setInt32(0, n, true);
      return [...new Uint8Array(b.buffer)];
    };
    parts.push(...dv(6, false));
    for (const [p, score] of pieces) {
      const bytes = typeof p === 'string' ? enc.encode(p) : p;
      parts.push(...dv(score, true), ...dv(bytes.length, false), ...bytes);
    }
    const file = writeTmp('tokenizer.bin', Uint8Array.from(parts));
    const t = Llama2cTokenizer.load(file, pieces.length);
    expect(t.vocabSize).toBe(268);
    expect(t.maxTokenLength).toBe(6);
    const id = (s: string): number => pieces.findIndex(([p]) => p === s);
    // ' abc' → ' ','a','b','c' → 'ab' (-5 beats 'bc' -7) → ' ab' (-6) → ' ab','c' (no ' abc')
    expect(t.encode('abc')).toEqual([1, id(' ab'), id('c')]);
    // 'é' is not a piece: byte fallback 0xC3, 0xA9 → ids + 3
    expect(t.encode('é c', { bos: false, eos: true })).toEqual([id(' '), 0xc3 + 3, 0xa9 + 3, id(' c'), 2]);
    expect(t.decode([1, id(' ab'), id('c'), 0xc3 + 3, 0xa9 + 3])).toBe('\n<s>\nabcé');
    expect(t.decode([1, id(' ab'), id(' c')], { skipSpecialTokens: true })).toBe('ab c');
    expect(Llama2cTokenizer.load(file).vocabSize).toBe(268);
    const cut = writeTmp('tokenizer-cut.bin', Uint8Array.from(parts.slice(0, parts.length - 2)));
    expect(() => Llama2cTokenizer.load(cut, pieces.length)).toThrow(/tokenizer-cut\.bin: truncated at token 267/);
    expect(() => Llama2cTokenizer.load(file, 200)).toThrow(/bytes left after 200 tokens/);
  });
});

describe('llama2.c checkpoints', () => {
  function checkpoint(dim: number, hid: number, L: number, heads: number, kvHeads: number, vocab: number, seq: number, shared: boolean, seed: number) {
    const head = dim / heads, kv = kvHeads * head;
    const n = vocab * dim + L * (dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hid * dim) + dim + seq * head + (shared ? 0 : vocab * dim);
    const floats = randomF32(n, rng(seed));
    const bytes = new Uint8Array(28 + 4 * n);
    const dv = new DataView(bytes.buffer);
    [dim, hid, L, heads, kvHeads, shared ? vocab : -vocab, seq].forEach((v, i) => dv.setInt32(4 * i, v, true));
    bytes.set(new Uint8Array(floats.buffer), 28);
    return { bytes, floats, kv };
  }

  it('maps the tensors to HF names in llama2.c order (shared and separate classifier)', () => {
    const seed = freshSeed('io llama2c');
    const [dim, hid, L, heads, kvh, V, seq] = [16, 24, 2, 4, 2, 10, 8];
    for (const shared of [true, false]) {
      const { bytes, floats, kv } = checkpoint(dim, hid, L, heads, kvh, V, seq, shared, seed);
      const { spec, weights } = parseLlama2c(bytes, 'tiny.bin');
      expect(spec).toMatchObject({ hidden: 16, ffn: 24, layers: 2, heads: 4, kvHeads: 2, headDim: 4, vocabSize: 10, maxPositions: 8, ropeLayout: 'interleaved', rmsNormEps: 1e-5, tieEmbeddings: shared });
      // Walk the file order independently.
      let at = 0;
      const take = (n: number): number[] => Array.from(floats.subarray(at, (at += n)));
      const got = (name: string): number[] => Array.from(readFloat32(weights, name));
      expect(got('model.embed_tokens.weight')).toEqual(take(V * dim));
      const blocks: [string, number][] = [['input_layernorm', dim], ['self_attn.q_proj', dim * dim], ['self_attn.k_proj', kv * dim], ['self_attn.v_proj', kv * dim],
        ['self_attn.o_proj', dim * dim], ['post_attention_layernorm', dim], ['mlp.gate_proj', hid * dim], ['mlp.down_proj', dim * hid], ['mlp.up_proj', hid * dim]];
      for (const [name, size] of blocks) for (let l = 0; l < L; l++) expect(got(`model.layers.${l}.${name}.weight`)).toEqual(take(size));
      expect(got('model.norm.weight')).toEqual(take(dim));
      take(seq * (dim / heads));
      if (!shared) expect(got('lm_head.weight')).toEqual(take(V * dim));
      expect(at).toBe(floats.length);
      expect(weights.info('model.layers.1.mlp.down_proj.weight').shape).toEqual([dim, hid]);
      expect(() => validateWeights(spec, weights)).not.toThrow();
    }
  });

  it('rejects truncated, oversized and newer-format files', () => {
    const { bytes } = checkpoint(16, 24, 1, 4, 4, 10, 8, true, 1);
    expect(() => parseLlama2c(bytes.subarray(0, bytes.length - 4), 'cut.bin')).toThrow(/cut\.bin: truncated: the header \(dim 16, hidden_dim 24, n_layers 1, n_heads 4, n_kv_heads 4, vocab 10, seq_len 8\) needs \d+ bytes, the file has \d+/);
    expect(() => parseLlama2c(bytes.subarray(0, 20), 'tiny.bin')).toThrow(/tiny\.bin: truncated: 20 bytes/);
    const longer = new Uint8Array(bytes.length + 8);
    longer.set(bytes);
    expect(() => parseLlama2c(longer, 'long.bin')).toThrow(/long\.bin: 8 bytes beyond/);
    const v1 = bytes.slice();
    new DataView(v1.buffer).setUint32(0, 0x616b3432, true);
    expect(() => parseLlama2c(v1, 'v1.bin')).toThrow(/v1\.bin: llama2\.c version-\d+ export/);
    const zero = bytes.slice();
    new DataView(zero.buffer).setInt32(12, 0, true);
    expect(() => parseLlama2c(zero, 'z.bin')).toThrow(/z\.bin: header field n_heads is 0/);
  });

  it.skipIf(!fs.existsSync(`${SHARED}/stories260K/stories260K.bin`))('reads stories260K', () => {
    const { spec, weights } = loadLlama2c(`${SHARED}/stories260K/stories260K.bin`);
    expect(spec).toMatchObject({ hidden: 64, ffn: 172, layers: 5, heads: 8, kvHeads: 4, headDim: 8, vocabSize: 512, maxPositions: 512, tieEmbeddings: true });
    expect(() => validateWeights(spec, weights)).not.toThrow();
  });
});

describe('AutoAWQ GEMM checkpoints', () => {
  const spec: ModelSpec = {
    ...parseHfConfig({ ...brownConfig(), hidden_size: 64, intermediate_size: 96, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, vocab_size: 48, bos_token_id: 0, eos_token_id: 0 }),
    quantization: { method: 'awq', version: 'gemm', bits: 4, groupSize: 32, zeroPoint: true, modulesNotConverted: [] },
  };

  /** Packs [rows, N] 4-bit values the AutoAWQ way (written independently of src/io/awq.ts). */
  function pack(values: Uint8Array, rows: number, N: number): Int32Array {
    const order = [0, 2, 4, 6, 1, 3, 5, 7];
    const out = new Int32Array(rows * (N / 8));
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < N / 8; c++) {
        let word = 0;
        for (let i = 0; i < 8; i++) word |= values[r * N + 8 * c + order[i]!]! << (4 * i);
        out[r * (N / 8) + c] = word;
      }
    }
    return out;
  }

  function awqTensors(seed: number) {
    const r = rng(seed);
    const tensors = new Map<string, MemoryTensor>();
    const dense = new Map<string, Float32Array>();
    const g = 32;
    const lin = (name: string, K: number, N: number): void => {
      const q = Uint8Array.from({ length: K * N }, () => Math.floor(r() * 16));
      const z = Uint8Array.from({ length: (K / g) * N }, () => Math.floor(r() * 16));
      const s = f16Bits(randomF32((K / g) * N, r, 0.001, 0.02));
      tensors.set(`${name}.qweight`, { dtype: 'I32', shape: [K, N / 8], data: pack(q, K, N) });
      tensors.set(`${name}.qzeros`, { dtype: 'I32', shape: [K / g, N / 8], data: pack(z, K / g, N) });
      tensors.set(`${name}.scales`, { dtype: 'F16', shape: [K / g, N], data: s });
      const w = new Float32Array(N * K); // HF layout [N, K]
      for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) {
        const gi = Math.floor(k / g) * N + n;
        w[n * K + k] = (q[k * N + n]! - z[gi]!) * f16ToF32(s[gi]!);
      }
      dense.set(name, w);
    };
    const p = 'model.layers.0';
    lin(`${p}.self_attn.q_proj`, 64, 64);
    lin(`${p}.self_attn.k_proj`, 64, 32);
    lin(`${p}.self_attn.v_proj`, 64, 32);
    lin(`${p}.self_attn.o_proj`, 64, 64);
    lin(`${p}.mlp.gate_proj`, 64, 96);
    lin(`${p}.mlp.up_proj`, 64, 96);
    lin(`${p}.mlp.down_proj`, 96, 64);
    const vec = (n: number): MemoryTensor => ({ dtype: 'F16', shape: [n], data: f16Bits(randomF32(n, r, 0.5, 1.5)) });
    tensors.set('model.embed_tokens.weight', { dtype: 'F16', shape: [48, 64], data: f16Bits(randomF32(48 * 64, r)) });
    tensors.set(`${p}.input_layernorm.weight`, vec(64));
    tensors.set(`${p}.post_attention_layernorm.weight`, vec(64));
    tensors.set('model.norm.weight', vec(64));
    tensors.set('lm_head.weight', { dtype: 'F16', shape: [48, 64], data: f16Bits(randomF32(48 * 64, r)) });
    return { tensors, dense };
  }

  it('loads and validates every quantized layer; dequantization matches (q − z)·s', () => {
    const { tensors, dense } = awqTensors(freshSeed('io awq'));
    const file = writeTmp('awq.safetensors', encodeSafetensors(tensors));
    const st = SafetensorsFile.open(file);
    expect(isAwqCheckpoint(st)).toBe(true);
    expect(() => validateWeights(spec, st)).not.toThrow();
    const layers = loadAwqLayers(spec, st);
    expect(layers.size).toBe(7);
    const down = layers.get('model.layers.0.mlp.down_proj')!;
    expect([down.K, down.N, down.groupSize, down.qweight.length, down.qzeros.length, down.scales.length]).toEqual([96, 64, 32, 96 * 8, 3 * 8, 3 * 64]);
    for (const [name, lin] of layers) expect(Array.from(dequantizeAwq(lin))).toEqual(Array.from(dense.get(name)!));
    expect(AWQ_ORDER).toEqual([0, 2, 4, 6, 1, 3, 5, 7]);
    st.close();
    // Dense spec over an AWQ file: say so.
    expect(() => validateWeights({ ...spec, quantization: null }, st)).toThrow(/holds AWQ tensors \(\*\.qweight\) but config\.json has no quantization_config/);
  });

  it('names the tensor and expected shape when an AWQ layer is malformed', () => {
    const { tensors } = awqTensors(7);
    const edit = (name: string, t: MemoryTensor | null): Map<string, MemoryTensor> => {
      const m = new Map(tensors);
      if (t) m.set(name, t); else m.delete(name);
      return m;
    };
    const q = 'model.layers.0.self_attn.k_proj';
    expect(() => validateWeights(spec, memoryStore('awq', edit(`${q}.qweight`, { dtype: 'I32', shape: [32, 8], data: new Int32Array(256) }))))
      .toThrow(/awq: AWQ tensor 'model\.layers\.0\.self_attn\.k_proj\.qweight' has shape \[32, 8\], expected \[64, 4\] I32 \(K=64, N\/8=4\)/);
    expect(() => validateWeights(spec, memoryStore('awq', edit(`${q}.qzeros`, null))))
      .toThrow(/missing AWQ tensor 'model\.layers\.0\.self_attn\.k_proj\.qzeros', expected \[2, 4\] I32/);
    expect(() => validateWeights(spec, memoryStore('awq', edit(`${q}.scales`, { dtype: 'F32', shape: [2, 32], data: new Float32Array(64) }))))
      .toThrow(/AWQ tensor 'model\.layers\.0\.self_attn\.k_proj\.scales' has dtype F32, expected \[2, 32\] F16/);
    const quantHead = edit('lm_head.qweight', { dtype: 'I32', shape: [64, 6], data: new Int32Array(384) });
    expect(() => validateWeights(spec, memoryStore('awq', quantHead))).toThrow(/lm_head is quantized/);
  });
});
