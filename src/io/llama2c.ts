// llama2.c checkpoints (the legacy .bin export read by run.c):
//   7 little-endian int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//   (vocab_size < 0 means the classifier is stored separately, at the end), then float32:
//   token embedding [vocab, dim]; rms_att [L, dim]; wq [L, dim, dim]; wk [L, kv, dim];
//   wv [L, kv, dim]; wo [L, dim, dim]; rms_ffn [L, dim]; w1 [L, hidden, dim]; w2 [L, dim, hidden];
//   w3 [L, hidden, dim]; rms_final [dim]; two legacy RoPE tables [seq_len, head/2]; wcls [vocab, dim].
// Matrices are [out, in] as in Hugging Face, so tensors take HF names (w1 = gate, w3 = up,
// w2 = down). q/k keep Meta's row order, hence RoPE on interleaved pairs.

import { platform } from '../platform/index.js';
import type { ModelSpec } from '../model/spec.js';
import { validateSpec, layerPrefix, EMBED, FINAL_NORM } from '../model/spec.js';
import { memoryStore, type MemoryTensor, type TensorStore } from './safetensors.js';

const HEADER_INTS = 7;
/** Newer llama2.c exports (version 1, 2) start with this magic; Kiln reads the legacy format. */
const MAGIC_AK42 = 0x616b3432;

export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
}

export interface Llama2cCheckpoint {
  spec: ModelSpec;
  header: Llama2cHeader;
  /** float32 tensors under Hugging Face names. */
  weights: TensorStore;
}

function parseHeader(bytes: Uint8Array, source: string): Llama2cHeader {
  if (bytes.byteLength < HEADER_INTS * 4) {
    throw new Error(`${source}: truncated: ${bytes.byteLength} bytes, shorter than the 28-byte llama2.c header`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_INTS * 4);
  const ints = Array.from({ length: HEADER_INTS }, (_, i) => dv.getInt32(4 * i, true));
  if (ints[0] === MAGIC_AK42) {
    throw new Error(`${source}: llama2.c version-${ints[1]} export (magic 'ak42'); Kiln reads the legacy format (export.py --version 0)`);
  }
  const [dim, hiddenDim, layers, heads, kvHeads, vocab, seqLen] = ints as [number, number, number, number, number, number, number];
  const names = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'];
  [dim, hiddenDim, layers, heads, kvHeads, Math.abs(vocab), seqLen].forEach((v, i) => {
    if (!(v > 0)) throw new Error(`${source}: header field ${names[i]} is ${ints[i]}; expected a positive value`);
  });
  if (dim % heads !== 0) throw new Error(`${source}: header dim ${dim} is not a multiple of n_heads ${heads}`);
  return { dim, hiddenDim, layers, heads, kvHeads, vocabSize: Math.abs(vocab), seqLen, sharedClassifier: vocab > 0 };
}

/** Converts a header to a ModelSpec (llama2.c fixes eps 1e-5, theta 10000, interleaved RoPE). */
export function llama2cSpec(h: Llama2cHeader, source = 'llama2.c checkpoint'): ModelSpec {
  const spec: ModelSpec = {
    arch: 'llama',
    vocabSize: h.vocabSize,
    hidden: h.dim,
    layers: h.layers,
    heads: h.heads,
    kvHeads: h.kvHeads,
    headDim: h.dim / h.heads,
    ffn: h.hiddenDim,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeLayout: 'interleaved',
    ropeScaling: null,
    maxPositions: h.seqLen,
    slidingWindow: null,
    tieEmbeddings: h.sharedClassifier,
    qkvBias: false,
    // Llama 2 sentencepiece ids. run.c ends a sample when BOS (1) comes up, so it stops too.
    bosId: 1,
    eosIds: h.vocabSize > 2 ? [1, 2] : [],
    quantization: null,
  };
  validateSpec(spec, source);
  return spec;
}

/** Parses a llama2.c checkpoint held in memory. */
export function parseLlama2c(bytes: Uint8Array, source = 'llama2.c checkpoint'): Llama2cCheckpoint {
  const h = parseHeader(bytes, source);
  const spec = llama2cSpec(h, source);
  const { dim, hiddenDim: hid, layers: L, vocabSize: V } = h;
  const headDim = dim / h.heads;
  const kv = h.kvHeads * headDim;
  // [name or null (skipped), per-layer?, rows, cols] in file order
  const plan: [string | null, boolean, number, number][] = [
    [EMBED, false, V, dim],
    ['input_layernorm.weight', true, 1, dim],
    ['self_attn.q_proj.weight', true, dim, dim],
    ['self_attn.k_proj.weight', true, kv, dim],
    ['self_attn.v_proj.weight', true, kv, dim],
    ['self_attn.o_proj.weight', true, dim, dim],
    ['post_attention_layernorm.weight', true, 1, dim],
    ['mlp.gate_proj.weight', true, hid, dim],
    ['mlp.down_proj.weight', true, dim, hid],
    ['mlp.up_proj.weight', true, hid, dim],
    [FINAL_NORM, false, 1, dim],
    [null, false, h.seqLen, headDim / 2],
    [null, false, h.seqLen, headDim / 2],
  ];
  if (!h.sharedClassifier) plan.push(['lm_head.weight', false, V, dim]);

  let floats = 0;
  for (const [, perLayer, r, c] of plan) floats += (perLayer ? L : 1) * r * c;
  const expected = HEADER_INTS * 4 + floats * 4;
  const hdr = `dim ${dim}, hidden_dim ${hid}, n_layers ${L}, n_heads ${h.heads}, n_kv_heads ${h.kvHeads}, vocab ${V}${h.sharedClassifier ? '' : ' (separate classifier)'}, seq_len ${h.seqLen}`;
  if (bytes.byteLength < expected) {
    throw new Error(`${source}: truncated: the header (${hdr}) needs ${expected} bytes, the file has ${bytes.byteLength}`);
  }
  if (bytes.byteLength > expected) {
    throw new Error(`${source}: ${bytes.byteLength - expected} bytes beyond the ${expected} the header (${hdr}) accounts for; wrong header or not a legacy llama2.c file`);
  }
  const body = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  const all = new Float32Array(body.buffer, body.byteOffset + HEADER_INTS * 4, floats);

  const tensors = new Map<string, MemoryTensor>();
  let at = 0;
  for (const [name, perLayer, r, c] of plan) {
    const size = r * c;
    for (let l = 0; l < (perLayer ? L : 1); l++) {
      if (name !== null) {
        const full = perLayer ? `${layerPrefix(l)}.${name}` : name;
        tensors.set(full, { dtype: 'F32', shape: r === 1 ? [c] : [r, c], data: all.subarray(at, at + size) });
      }
      at += size;
    }
  }
  return { spec, header: h, weights: memoryStore(source, tensors) };
}

/** Reads a llama2.c checkpoint file. */
export function loadLlama2c(filePath: string): Llama2cCheckpoint {
  const b = platform.files.readBytes(filePath);
  return parseLlama2c(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), filePath);
}
