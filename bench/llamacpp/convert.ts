// A Hugging Face Llama checkpoint (config.json, F16/F32/BF16 safetensors, a byte-level BPE
// tokenizer.json) as a GGUF F16 file llama.cpp loads as architecture "llama": 2-D weights in F16,
// norms in F32 (as llama.cpp's own converter stores 1-D tensors).
import fs from 'node:fs';
import path from 'node:path';
import { openModel, readFloat32 } from '../../src/io/index.js';
import { f32ToF16Bits } from '../../src/quant/f16.js';
import { EMBED, FINAL_NORM, LM_HEAD, layerPrefix, type ModelSpec } from '../../src/model/spec.js';
import type { TensorStore } from '../../src/io/safetensors.js';
import { encodeGguf, gguf, type GgufTensor, type GgufValue } from './gguf.js';

/** GGUF's llama.file_type for "mostly F16". */
const FILE_TYPE_MOSTLY_F16 = 1;
/** tokenizer.ggml.token_type values. */
const TOKEN_NORMAL = 1, TOKEN_CONTROL = 3;

/**
 * Rows of a Q or K projection ([heads × headDim, in], row-major) reordered from Hugging Face's
 * rotate-half RoPE layout to llama.cpp's interleaved one. HF rotates the pair (i, i + headDim/2)
 * of each head by angle θ_i; llama.cpp's "llama" architecture rotates (2i, 2i + 1) by θ_i. So HF
 * row h·headDim + j·headDim/2 + i (j = 0, 1) goes to row h·headDim + 2i + j: the same pairs meet
 * with the same angles, and q·k is unchanged because q and k are permuted alike.
 */
export function interleaveRopeRows<T extends Uint16Array | Float32Array>(w: T, heads: number, headDim: number, cols: number): T {
  if (w.length !== heads * headDim * cols) throw new Error(`interleaveRopeRows: ${w.length} elements is not ${heads} heads × ${headDim} × ${cols}`);
  if (headDim % 2 !== 0) throw new Error(`interleaveRopeRows: head dim ${headDim} is odd`);
  const out = new (w.constructor as { new (n: number): T })(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const from = (h * headDim + j * half + i) * cols, to = (h * headDim + 2 * i + j) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

function f16Bytes(store: TensorStore, name: string): Uint16Array {
  const info = store.info(name);
  if (info.dtype === 'F16') {
    const b = store.bytes(name);
    return new Uint16Array(b.slice().buffer); // a copy: aligned, and ours to permute
  }
  const f = readFloat32(store, name);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = f32ToF16Bits(f[i]!);
  return out;
}

const asBytes = (a: Uint16Array | Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
}

/** tokenizer.ggml.* for a byte-level BPE tokenizer.json (GPT-2 style, what llama.cpp calls "gpt2"). */
export function tokenizerMetadata(tokenizerPath: string, spec: ModelSpec): [string, GgufValue][] {
  const tj = JSON.parse(fs.readFileSync(tokenizerPath, 'utf8')) as TokenizerJson;
  if (tj.model?.type !== 'BPE' || !tj.model.vocab || !tj.model.merges) throw new Error(`${tokenizerPath}: expected a BPE model with vocab and merges`);
  const tokens = new Array<string | undefined>(spec.vocabSize);
  const types = new Int32Array(spec.vocabSize).fill(TOKEN_NORMAL);
  const put = (id: number, s: string) => {
    if (!Number.isInteger(id) || id < 0 || id >= spec.vocabSize) throw new Error(`${tokenizerPath}: token '${s}' has id ${id}, outside the model's vocab_size ${spec.vocabSize}`);
    tokens[id] = s;
  };
  for (const [s, id] of Object.entries(tj.model.vocab)) put(id, s);
  for (const t of tj.added_tokens ?? []) { put(t.id, t.content); if (t.special) types[t.id] = TOKEN_CONTROL; }
  // Ids the tokenizer never produces (a vocab padded for the embedding) still need an entry.
  const filled = tokens.map((s, i) => s ?? `[PAD${i}]`);
  const merges = tj.model.merges.map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));
  const meta: [string, GgufValue][] = [
    ['tokenizer.ggml.model', gguf.string('gpt2')],
    ['tokenizer.ggml.pre', gguf.string('gpt-2')],
    ['tokenizer.ggml.tokens', gguf.strings(filled)],
    ['tokenizer.ggml.token_type', gguf.i32s(types)],
    ['tokenizer.ggml.merges', gguf.strings(merges)],
  ];
  if (spec.bosId !== null) meta.push(['tokenizer.ggml.bos_token_id', gguf.u32(spec.bosId)], ['tokenizer.ggml.add_bos_token', gguf.bool(true)]);
  if (spec.eosIds.length > 0) meta.push(['tokenizer.ggml.eos_token_id', gguf.u32(spec.eosIds[0]!)]);
  return meta;
}

/** The GGUF bytes of a Hugging Face Llama directory. */
export function convertHfLlama(dir: string): Uint8Array {
  const model = openModel(dir);
  try {
    const { spec, weights: store } = model;
    if (spec.arch !== 'llama') throw new Error(`${dir}: architecture ${spec.arch}; this converter writes llama only`);
    if (spec.quantization) throw new Error(`${dir}: AWQ checkpoints are not converted (F16/F32/BF16 only)`);
    if (spec.qkvBias) throw new Error(`${dir}: q/k/v biases are not converted`);
    if (spec.ropeScaling) throw new Error(`${dir}: rope_scaling is not converted`);
    const tokenizerPath = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(tokenizerPath)) throw new Error(`${dir}: no tokenizer.json (the GGUF needs its vocabulary)`);
    const a = 'llama';
    const meta: [string, GgufValue][] = [
      ['general.architecture', gguf.string(a)],
      ['general.name', gguf.string(path.basename(path.resolve(dir)))],
      ['general.file_type', gguf.u32(FILE_TYPE_MOSTLY_F16)],
      [`${a}.vocab_size`, gguf.u32(spec.vocabSize)],
      [`${a}.context_length`, gguf.u32(spec.maxPositions)],
      [`${a}.embedding_length`, gguf.u32(spec.hidden)],
      [`${a}.block_count`, gguf.u32(spec.layers)],
      [`${a}.feed_forward_length`, gguf.u32(spec.ffn)],
      [`${a}.rope.dimension_count`, gguf.u32(spec.headDim)],
      [`${a}.rope.freq_base`, gguf.f32(spec.ropeTheta)],
      [`${a}.attention.head_count`, gguf.u32(spec.heads)],
      [`${a}.attention.head_count_kv`, gguf.u32(spec.kvHeads)],
      [`${a}.attention.key_length`, gguf.u32(spec.headDim)],
      [`${a}.attention.value_length`, gguf.u32(spec.headDim)],
      [`${a}.attention.layer_norm_rms_epsilon`, gguf.f32(spec.rmsNormEps)],
      ...tokenizerMetadata(tokenizerPath, spec),
    ];
    const tensors: GgufTensor[] = [];
    const matrix = (name: string, hf: string, rows: number, cols: number, rope?: { heads: number }) => {
      let w = f16Bytes(store, hf);
      if (w.length !== rows * cols) throw new Error(`${store.source}: tensor '${hf}' has ${w.length} elements, expected [${rows}, ${cols}]`);
      // A checkpoint already in the interleaved layout (llama2.c-style) needs no reordering.
      if (rope && spec.ropeLayout === 'rotate-half') w = interleaveRopeRows(w, rope.heads, spec.headDim, cols);
      tensors.push({ name, dims: [cols, rows], type: 'F16', data: asBytes(w) });
    };
    const norm = (name: string, hf: string) => {
      const w = readFloat32(store, hf);
      tensors.push({ name, dims: [w.length], type: 'F32', data: asBytes(Float32Array.from(w)) });
    };
    matrix('token_embd.weight', EMBED, spec.vocabSize, spec.hidden);
    norm('output_norm.weight', FINAL_NORM);
    // Tied: llama.cpp falls back to token_embd when output.weight is absent.
    if (!spec.tieEmbeddings) matrix('output.weight', `${LM_HEAD}.weight`, spec.vocabSize, spec.hidden);
    const q = spec.heads * spec.headDim, kv = spec.kvHeads * spec.headDim;
    for (let l = 0; l < spec.layers; l++) {
      const p = layerPrefix(l), b = `blk.${l}`;
      norm(`${b}.attn_norm.weight`, `${p}.input_layernorm.weight`);
      matrix(`${b}.attn_q.weight`, `${p}.self_attn.q_proj.weight`, q, spec.hidden, { heads: spec.heads });
      matrix(`${b}.attn_k.weight`, `${p}.self_attn.k_proj.weight`, kv, spec.hidden, { heads: spec.kvHeads });
      matrix(`${b}.attn_v.weight`, `${p}.self_attn.v_proj.weight`, kv, spec.hidden);
      matrix(`${b}.attn_output.weight`, `${p}.self_attn.o_proj.weight`, spec.hidden, q);
      norm(`${b}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`);
      matrix(`${b}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`, spec.ffn, spec.hidden);
      matrix(`${b}.ffn_up.weight`, `${p}.mlp.up_proj.weight`, spec.ffn, spec.hidden);
      matrix(`${b}.ffn_down.weight`, `${p}.mlp.down_proj.weight`, spec.hidden, spec.ffn);
    }
    return encodeGguf(meta, tensors);
  } finally {
    model.weights.close();
  }
}
