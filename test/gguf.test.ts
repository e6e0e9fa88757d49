// The GGUF writer behind `npm run bench -- llamacpp`: brown-draft converted, read back with the
// tiny reader, and checked against the safetensors it came from — metadata, tensor shapes and
// bytes, and the Q/K row reordering judged by what it must preserve: attention scores under
// Hugging Face's rotate-half RoPE equal those under llama.cpp's interleaved RoPE.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { convertHfLlama } from '../bench/llamacpp/convert.js';
import { encodeGguf, gguf, GGUF_ALIGNMENT } from '../bench/llamacpp/gguf.js';
import { readGguf, type GgufFile } from '../bench/llamacpp/ggufRead.js';
import { openModel, readFloat32, type LoadedModel } from '../src/io/index.js';
import { f16BitsToF32 } from '../src/quant/f16.js';
import { freshSeed, rng } from './util.js';

const DRAFT = path.resolve(import.meta.dirname, '../models/brown-draft');

describe('GGUF conversion of brown-draft', () => {
  const file = readGguf(convertHfLlama(DRAFT), 'brown-draft.gguf');
  const model: LoadedModel = openModel(DRAFT);
  const { spec, weights } = model;
  const f16 = (f: GgufFile, name: string) => { const b = f.bytes(name); return Array.from(new Uint16Array(b.slice().buffer), f16BitsToF32); };

  it('writes llama hyperparameters and the byte-level BPE vocabulary', () => {
    const m = file.metadata;
    expect(file.version).toBe(3);
    expect(m.get('general.architecture')).toBe('llama');
    expect(m.get('general.file_type')).toBe(1);
    for (const [k, v] of [['block_count', 2], ['embedding_length', 128], ['feed_forward_length', 384], ['context_length', 512],
      ['attention.head_count', 4], ['attention.head_count_kv', 2], ['rope.dimension_count', 32], ['rope.freq_base', 10000]] as const) {
      expect(m.get(`llama.${k}`), k).toBe(v);
    }
    expect(m.get('llama.attention.layer_norm_rms_epsilon')).toBe(Math.fround(1e-5));
    const tj = JSON.parse(fs.readFileSync(path.join(DRAFT, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number>; merges: (string | string[])[] } };
    const tokens = m.get('tokenizer.ggml.tokens') as string[], types = m.get('tokenizer.ggml.token_type') as number[];
    expect(m.get('tokenizer.ggml.model')).toBe('gpt2');
    expect(tokens).toHaveLength(2048);
    for (const [s, id] of Object.entries(tj.model.vocab)) if (tokens[id] !== s) throw new Error(`token ${id}: '${tokens[id]}', tokenizer.json says '${s}'`);
    expect([tokens[2047], types[2047], types[300]]).toEqual(['<|endoftext|>', 3, 1]);
    expect((m.get('tokenizer.ggml.merges') as string[]).slice(0, 3)).toEqual(tj.model.merges.slice(0, 3).map((x) => (typeof x === 'string' ? x : x.join(' '))));
    expect((m.get('tokenizer.ggml.merges') as string[]).length).toBe(tj.model.merges.length);
    expect([m.get('tokenizer.ggml.bos_token_id'), m.get('tokenizer.ggml.eos_token_id')]).toEqual([2047, 2047]);
  });

  it('lays out every tensor aligned, with ggml dims and the checkpoint bytes', () => {
    // Tied classifier: no output.weight (llama.cpp reuses token_embd); 9 tensors per layer.
    expect(file.tensors.size).toBe(2 + 9 * spec.layers);
    expect(file.tensors.has('output.weight')).toBe(false);
    for (const t of file.tensors.values()) expect((t.fileOffset - file.dataStart) % GGUF_ALIGNMENT, t.name).toBe(0);
    expect(file.dataStart % GGUF_ALIGNMENT).toBe(0);
    const embd = file.tensors.get('token_embd.weight')!;
    expect([embd.dims, embd.type]).toEqual([[128, 2048], 'F16']);
    expect(Buffer.from(file.bytes('token_embd.weight')).equals(Buffer.from(weights.bytes('model.embed_tokens.weight')))).toBe(true);
    const v = file.tensors.get('blk.1.attn_v.weight')!;
    expect(v.dims).toEqual([128, 64]);
    expect(Buffer.from(file.bytes(v.name)).equals(Buffer.from(weights.bytes('model.layers.1.self_attn.v_proj.weight')))).toBe(true);
    const down = file.tensors.get('blk.0.ffn_down.weight')!;
    expect(down.dims).toEqual([384, 128]);
    const norm = file.tensors.get('blk.1.ffn_norm.weight')!;
    expect([norm.dims, norm.type]).toEqual([[128], 'F32']);
    expect(Array.from(new Float32Array(file.bytes(norm.name).slice().buffer))).toEqual(Array.from(readFloat32(weights, 'model.layers.1.post_attention_layernorm.weight')));
  });

  it('reorders Q and K rows so interleaved RoPE gives rotate-half RoPE\'s attention scores', () => {
    const r = rng(freshSeed('gguf rope'));
    const layer = 1, hd = spec.headDim, group = spec.heads / spec.kvHeads;
    const hfQ = Array.from(readFloat32(weights, `model.layers.${layer}.self_attn.q_proj.weight`));
    const hfK = Array.from(readFloat32(weights, `model.layers.${layer}.self_attn.k_proj.weight`));
    const gQ = f16(file, `blk.${layer}.attn_q.weight`), gK = f16(file, `blk.${layer}.attn_k.weight`);
    const matvec = (w: number[], x: number[], rows: number) => Array.from({ length: rows }, (_, i) => x.reduce((s, xj, j) => s + w[i * x.length + j]! * xj, 0));
    const angle = (pos: number, i: number) => pos * spec.ropeTheta ** ((-2 * i) / hd);
    // Rotate-half pairs (i, i + hd/2); interleaved pairs (2i, 2i + 1); both by angle θ_i.
    const rope = (v: number[], pos: number, pair: (i: number) => [number, number]) => {
      const out = v.slice();
      for (let h = 0; h < v.length / hd; h++) {
        for (let i = 0; i < hd / 2; i++) {
          const [a, b] = pair(i).map((x) => h * hd + x) as [number, number], c = Math.cos(angle(pos, i)), s = Math.sin(angle(pos, i));
          out[a] = v[a]! * c - v[b]! * s;
          out[b] = v[a]! * s + v[b]! * c;
        }
      }
      return out;
    };
    const scores = (q: number[], k: number[]) => Array.from({ length: spec.heads }, (_, h) => {
      let s = 0;
      for (let d = 0; d < hd; d++) s += q[h * hd + d]! * k[Math.floor(h / group) * hd + d]!;
      return s;
    });
    for (const [pq, pk] of [[7, 3], [200, 41]] as const) {
      const xq = Array.from({ length: spec.hidden }, () => r() * 2 - 1), xk = Array.from({ length: spec.hidden }, () => r() * 2 - 1);
      const rows = [spec.heads * hd, spec.kvHeads * hd] as const;
      const halfPair = (i: number): [number, number] => [i, i + hd / 2], interPair = (i: number): [number, number] => [2 * i, 2 * i + 1];
      const want = scores(rope(matvec(hfQ, xq, rows[0]), pq, halfPair), rope(matvec(hfK, xk, rows[1]), pk, halfPair));
      const got = scores(rope(matvec(gQ, xq, rows[0]), pq, interPair), rope(matvec(gK, xk, rows[1]), pk, interPair));
      for (let h = 0; h < spec.heads; h++) expect(Math.abs(got[h]! - want[h]!), `head ${h}, positions ${pq}/${pk}`).toBeLessThan(1e-9 * (1 + Math.abs(want[h]!)));
      // Not trivially equal: the unreordered rows under interleaved RoPE give other scores.
      const wrong = scores(rope(matvec(hfQ, xq, rows[0]), pq, interPair), rope(matvec(hfK, xk, rows[1]), pk, interPair));
      expect(Math.max(...wrong.map((w, h) => Math.abs(w - want[h]!)))).toBeGreaterThan(1e-3);
    }
  });

  it('refuses data that does not match a tensor\'s dims, naming it', () => {
    expect(() => encodeGguf([['general.architecture', gguf.string('llama')]], [{ name: 'blk.0.attn_q.weight', dims: [4, 2], type: 'F16', data: new Uint8Array(10) }]))
      .toThrow(/blk\.0\.attn_q\.weight.*16 bytes.*10/);
    expect(() => encodeGguf([['a', gguf.u32(-1)]], [])).toThrow(/'a' = -1 is not a u32/);
  });
});
