// `kiln quantize`: RTN INT4 → AutoAWQ GEMM checkpoints. brown-draft is quantized once (g = 64);
// the result must (a) open as an AWQ checkpoint, (b) load straight into the INT4 kernels with
// logits bit-identical to RTN at load time on every backend (same weights → same bits), and
// (c) hold the AutoAWQ layout, checked by an unpacker written here from the format's definition.
// A small synthetic Qwen2 (f32, q/k/v biases, an unused tensor) covers f32 sources and biases.
// Then the errors: each names the option, layer or directory at fault, and writes nothing.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { openModel } from '../src/io/index.js';
import { encodeSafetensors, type MemoryTensor, openSafetensors, readFloat32, type TensorStore } from '../src/io/safetensors.js';
import { loadModel } from '../src/llm.js';
import { dequantizeAwq } from '../src/quant/awq.js';
import { f16BitsToF32, f32ToF16Bits } from '../src/quant/f16.js';
import { quantizeRtnInt4 } from '../src/quant/rtn.js';
import { quantizeCommand } from '../src/quant/quantize.js';
import { writeAwqCheckpoint } from '../src/quant/writeAwq.js';
import { parseArgs } from '../src/util/args.js';
import { forEachBackend } from './backends.js';
import { freshSeed, randomF32, rng } from './util.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const DRAFT = path.join(ROOT, 'models/brown-draft');
const G = 64;
const TEXT = 'The jury said that the city had been given a new plan for the election, and the mayor agreed.';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-quantize-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const tmp = (name: string) => path.join(tmpRoot, name);

const OUT = tmp('draft-awq-g64');
let quantizeMs = 0;
beforeAll(() => {
  const t0 = performance.now();
  writeAwqCheckpoint(DRAFT, OUT, { groupSize: G });
  quantizeMs = performance.now() - t0;
});

/** AutoAWQ's pack order: nibble i (bits 4i..4i+3) of a word holds column 8c + ORDER[i]. */
const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

/** Unpacks an int32 [rows, N/8] tensor read as raw little-endian bytes into 4-bit values [rows, N]. */
function unpackNibbles(bytes: Uint8Array, rows: number, N: number): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Uint8Array(rows * N);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < N / 8; c++) {
      const word = view.getUint32((r * (N / 8) + c) * 4, true);
      for (let i = 0; i < 8; i++) out[r * N + 8 * c + ORDER[i]!] = (word >>> (4 * i)) & 15;
    }
  }
  return out;
}

/** W [K, N] from the file's qweight/qzeros/scales: (q − z) · s per group of G rows. */
function dequantizeFromFile(store: TensorStore, prefix: string, K: number, N: number, g: number): Float64Array {
  const q = unpackNibbles(store.bytes(`${prefix}.qweight`), K, N);
  const z = unpackNibbles(store.bytes(`${prefix}.qzeros`), K / g, N);
  const sb = store.bytes(`${prefix}.scales`);
  const sv = new DataView(sb.buffer, sb.byteOffset, sb.byteLength);
  const w = new Float64Array(K * N);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const grp = Math.floor(k / g);
      w[k * N + n] = (q[k * N + n]! - z[grp * N + n]!) * f16BitsToF32(sv.getUint16((grp * N + n) * 2, true));
    }
  }
  return w;
}

/** Elements that differ, and the first of them (a readable failure on arrays of thousands). */
function mismatches(a: ArrayLike<number>, b: ArrayLike<number>): string {
  if (a.length !== b.length) return `lengths ${a.length} vs ${b.length}`;
  let count = 0, first = -1;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) { count++; if (first < 0) first = i; }
  return count ? `${count} of ${a.length} differ, first [${first}]: ${a[first]} vs ${b[first]}` : 'none';
}

function shapeOf(store: TensorStore, name: string): string {
  const i = store.info(name);
  return `${i.dtype} [${i.shape.join(', ')}]`;
}

describe('kiln quantize: brown-draft → AutoAWQ GEMM g=64', () => {
  it('(a) parses as an AWQ checkpoint; config.json keeps its fields; tokenizer files are copied', () => {
    console.log(`[quantize] brown-draft g=${G} in ${quantizeMs.toFixed(0)} ms`);
    const m = openModel(OUT);
    try {
      expect(m.spec.quantization).toEqual({ method: 'awq', version: 'gemm', bits: 4, groupSize: G, zeroPoint: true, modulesNotConverted: [] });
      expect(m.tokenizer).not.toBeNull();
      const src = openModel(DRAFT);
      try {
        expect({ ...m.spec, quantization: null }).toEqual(src.spec);
      } finally {
        src.weights.close();
      }
    } finally {
      m.weights.close();
    }
    const cfg = JSON.parse(fs.readFileSync(path.join(OUT, 'config.json'), 'utf8')) as Record<string, unknown>;
    const srcCfg = JSON.parse(fs.readFileSync(path.join(DRAFT, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.quantization_config).toEqual({ quant_method: 'awq', version: 'gemm', bits: 4, group_size: G, zero_point: true, modules_to_not_convert: null });
    for (const [k, v] of Object.entries(srcCfg)) expect(cfg[k], `config.json field '${k}'`).toEqual(k === 'torch_dtype' ? 'float16' : v);
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect(fs.readFileSync(path.join(OUT, f)).equals(fs.readFileSync(path.join(DRAFT, f))), f).toBe(true);
    }
  });

  it('(c) holds the AutoAWQ GEMM layout: shapes, dtypes, and weights within half a step of the source', () => {
    const out = openSafetensors(OUT), src = openSafetensors(DRAFT);
    try {
      const m = openModel(DRAFT);
      const spec = m.spec;
      m.weights.close();
      // Every decoder linear: qweight/qzeros/scales and no dense weight; the rest stays F16, bit for bit.
      for (let l = 0; l < spec.layers; l++) {
        for (const [name, K, N] of [
          ['self_attn.q_proj', spec.hidden, spec.heads * spec.headDim], ['self_attn.k_proj', spec.hidden, spec.kvHeads * spec.headDim],
          ['self_attn.v_proj', spec.hidden, spec.kvHeads * spec.headDim], ['self_attn.o_proj', spec.heads * spec.headDim, spec.hidden],
          ['mlp.gate_proj', spec.hidden, spec.ffn], ['mlp.up_proj', spec.hidden, spec.ffn], ['mlp.down_proj', spec.ffn, spec.hidden],
        ] as const) {
          const p = `model.layers.${l}.${name}`;
          expect(shapeOf(out, `${p}.qweight`)).toBe(`I32 [${K}, ${N / 8}]`);
          expect(shapeOf(out, `${p}.qzeros`)).toBe(`I32 [${K / G}, ${N / 8}]`);
          expect(shapeOf(out, `${p}.scales`)).toBe(`F16 [${K / G}, ${N}]`);
          expect(out.has(`${p}.weight`)).toBe(false);
        }
      }
      const dense = src.names().filter((n) => !/_proj\.weight$/.test(n));
      expect(dense.length).toBe(2 * spec.layers + 2); // norms, final norm, (tied) embeddings
      for (const n of dense) {
        expect(shapeOf(out, n)).toBe(shapeOf(src, n));
        expect(Buffer.from(out.bytes(n)).equals(Buffer.from(src.bytes(n))), n).toBe(true);
      }
      expect(out.names().length).toBe(dense.length + 3 * 7 * spec.layers);

      // One known weight, unpacked here from the format's definition.
      const p = 'model.layers.1.mlp.down_proj', K = spec.ffn, N = spec.hidden;
      const fromFile = dequantizeFromFile(out, p, K, N, G);
      const w = readFloat32(src, `${p}.weight`); // HF [N, K]
      // RTN's reconstruction: the same (q − z)·s products, so equal exactly.
      expect(mismatches(fromFile, dequantizeAwq(quantizeRtnInt4(w, K, N, G, 'NK')))).toBe('none');
      // Against the source: at most half a quantization step (+ the f16 rounding of the step) off.
      const sb = out.bytes(`${p}.scales`), sv = new DataView(sb.buffer, sb.byteOffset, sb.byteLength);
      let worst = 0, spread = 0;
      for (let k = 0; k < K; k++) {
        for (let n = 0; n < N; n++) {
          const s = f16BitsToF32(sv.getUint16((Math.floor(k / G) * N + n) * 2, true));
          const err = Math.abs(fromFile[k * N + n]! - w[n * K + k]!);
          worst = Math.max(worst, err / s);
          spread = Math.max(spread, Math.abs(w[n * K + k]!));
        }
      }
      console.log(`[quantize] ${p}: worst error ${worst.toFixed(3)} steps (|w| up to ${spread.toFixed(3)})`);
      expect(worst).toBeLessThanOrEqual(0.51);
    } finally {
      out.close();
      src.close();
    }
  });

  it('the CLI writes the same bytes and reports sizes and time', async () => {
    const cliOut = tmp('draft-cli');
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), 'quantize', '--method', 'rtn', '--model', DRAFT, '--out', cliOut, '--group-size', String(G)], { cwd: ROOT });
    expect(stdout).toMatch(/AutoAWQ GEMM, 4-bit, group size 64, 14 linear layers/);
    expect(stdout).toMatch(/size [\d.]+ MiB → [\d.]+ KiB \([\d.]+× smaller\) in [\d.]+ s/);
    for (const f of fs.readdirSync(OUT)) expect(fs.readFileSync(path.join(cliOut, f)).equals(fs.readFileSync(path.join(OUT, f))), f).toBe(true);
  });
});

forEachBackend('kiln quantize: the AWQ checkpoint loads into the INT4 kernels', (dev: Device) => {
  it('(b) logits are bit-identical to RTN at load time (same group size, same device)', async () => {
    const awq = await loadModel(OUT, { device: dev });
    const rtn = await loadModel(DRAFT, { device: dev, quant: 'int4-rtn', groupSize: G });
    try {
      expect([awq.weights.format, awq.weights.groupSize]).toEqual(['int4', G]);
      expect([rtn.weights.format, rtn.weights.groupSize]).toEqual(['int4', G]);
      const ids = awq.encode(TEXT);
      expect(ids).toEqual(rtn.encode(TEXT));
      const a = await awq.logits(ids), b = await rtn.logits(ids);
      expect(a.length).toBe(ids.length * awq.spec.vocabSize);
      expect(a.every(Number.isFinite)).toBe(true);
      // Bit patterns, so −0 vs 0 or two NaNs would count too.
      expect(mismatches(new Uint32Array(a.buffer, a.byteOffset, a.length), new Uint32Array(b.buffer, b.byteOffset, b.length))).toBe('none');
    } finally {
      await awq.close();
      await rtn.close();
    }
  });
}, { cpuExecutors: 'default' });

// ---------------------------------------------------------------------------------------------
// A synthetic Qwen2 in f32: q/k/v biases, intermediate size 96 (32 divides it, 64 does not), and a
// tensor the model does not use.

const SYN = tmp('syn-qwen2');
const SYN_SPEC = { hidden: 64, ffn: 96, heads: 2, kvHeads: 1, headDim: 32, vocab: 64 };

function writeSynthetic(dir: string, edit?: (values: Map<string, Float32Array>) => void): Map<string, Float32Array> {
  const seed = freshSeed('quantize synthetic qwen2');
  const r = rng(seed);
  const { hidden: H, ffn: F, heads, kvHeads, headDim: D, vocab: V } = SYN_SPEC;
  const shapes: [string, number[]][] = [
    ['model.embed_tokens.weight', [V, H]], ['lm_head.weight', [V, H]], ['model.norm.weight', [H]],
    ['model.layers.0.input_layernorm.weight', [H]], ['model.layers.0.post_attention_layernorm.weight', [H]],
    ['model.layers.0.self_attn.q_proj.weight', [heads * D, H]], ['model.layers.0.self_attn.q_proj.bias', [heads * D]],
    ['model.layers.0.self_attn.k_proj.weight', [kvHeads * D, H]], ['model.layers.0.self_attn.k_proj.bias', [kvHeads * D]],
    ['model.layers.0.self_attn.v_proj.weight', [kvHeads * D, H]], ['model.layers.0.self_attn.v_proj.bias', [kvHeads * D]],
    ['model.layers.0.self_attn.o_proj.weight', [H, heads * D]],
    ['model.layers.0.mlp.gate_proj.weight', [F, H]], ['model.layers.0.mlp.up_proj.weight', [F, H]], ['model.layers.0.mlp.down_proj.weight', [H, F]],
    ['model.layers.0.self_attn.rotary_emb.inv_freq', [D / 2]],
  ];
  const values = new Map<string, Float32Array>();
  const tensors = new Map<string, MemoryTensor>();
  for (const [name, shape] of shapes) {
    const data = randomF32(shape.reduce((a, d) => a * d, 1), r, -0.2, 0.2);
    values.set(name, data);
    tensors.set(name, { dtype: 'F32', shape, data });
  }
  edit?.(values);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', hidden_size: H, intermediate_size: F, num_hidden_layers: 1,
    num_attention_heads: heads, num_key_value_heads: kvHeads, head_dim: D, vocab_size: V, max_position_embeddings: 128,
    rms_norm_eps: 1e-6, rope_theta: 1e6, tie_word_embeddings: false, torch_dtype: 'float32', custom_field: [1, 'two'],
  }));
  return values;
}

describe('kiln quantize: f32 sources, biases, unused tensors (synthetic Qwen2)', () => {
  let values: Map<string, Float32Array>;
  beforeAll(() => { values = writeSynthetic(SYN); });

  it('rounds dense tensors and biases to f16, quantizes the linears, drops what the model does not use', () => {
    const out = tmp('syn-awq-g32');
    const r = writeAwqCheckpoint(SYN, out, { groupSize: 32 });
    expect(r.droppedTensors).toEqual(['model.layers.0.self_attn.rotary_emb.inv_freq']);
    expect(r.copiedFiles).toEqual([]);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect([cfg.torch_dtype, cfg.custom_field, cfg.rope_theta]).toEqual(['float16', [1, 'two'], 1e6]);
    const m = openModel(out); // validates every tensor against the spec, biases included
    try {
      const st = m.weights;
      expect(m.spec.quantization?.groupSize).toBe(32);
      for (const n of ['model.embed_tokens.weight', 'lm_head.weight', 'model.norm.weight', 'model.layers.0.self_attn.k_proj.bias']) {
        expect(st.info(n).dtype).toBe('F16');
        const want = Array.from(values.get(n)!, (v) => f16BitsToF32(f32ToF16Bits(v)));
        expect(mismatches(readFloat32(st, n), want), n).toBe('none');
      }
      const down = 'model.layers.0.mlp.down_proj';
      const fromFile = dequantizeFromFile(st, down, SYN_SPEC.ffn, SYN_SPEC.hidden, 32);
      expect(mismatches(fromFile, dequantizeAwq(quantizeRtnInt4(values.get(`${down}.weight`)!, SYN_SPEC.ffn, SYN_SPEC.hidden, 32, 'NK')))).toBe('none');
      expect(st.has('model.layers.0.self_attn.rotary_emb.inv_freq')).toBe(false);
    } finally {
      m.weights.close();
    }
  });

  it('an f32 value beyond f16 range names the tensor and leaves no checkpoint behind', () => {
    const src = tmp('syn-overflow');
    writeSynthetic(src, (v) => { v.get('model.norm.weight')![5] = 1e6; });
    const out = tmp('syn-overflow-awq');
    expect(() => writeAwqCheckpoint(src, out, { groupSize: 32 })).toThrow(/tensor 'model\.norm\.weight' element 5 = 1000000 overflows f16/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('a group size that does not divide a layer names the layer and its dims, and writes nothing', () => {
    const out = tmp('syn-awq-g64');
    expect(() => writeAwqCheckpoint(SYN, out, { groupSize: 64 })).toThrow(
      /model\.layers\.0\.mlp\.down_proj has input size K = 96 \(weight \[N = 64, K = 96\]\), not a multiple of the group size 64; choose a --group-size/);
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe('kiln quantize: errors', () => {
  const run = (...argv: string[]) => quantizeCommand(parseArgs(['--method', 'rtn', ...argv], ['force']), undefined, () => {});

  it('a non-empty output directory needs --force; --force replaces the checkpoint there', async () => {
    const out = tmp('busy');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'model.safetensors.index.json'), '{"weight_map": {}}');
    fs.writeFileSync(path.join(out, 'notes.txt'), 'keep me');
    await expect(run('--model', DRAFT, '--out', out, '--group-size', '64')).rejects.toThrow(/output directory .*busy exists and is not empty \(2 entries\); pass --force/);
    expect(fs.existsSync(path.join(out, 'model.safetensors'))).toBe(false);
    await run('--model', DRAFT, '--out', out, '--group-size', '64', '--force');
    // A stale index would shadow model.safetensors when loading: --force removes it.
    expect(fs.existsSync(path.join(out, 'model.safetensors.index.json'))).toBe(false);
    expect(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8')).toBe('keep me');
    expect(fs.readFileSync(path.join(out, 'model.safetensors')).equals(fs.readFileSync(path.join(OUT, 'model.safetensors')))).toBe(true);
  });

  it('an already quantized model is refused', async () => {
    await expect(run('--model', OUT, '--out', tmp('twice'))).rejects.toThrow(/is already quantized \(config\.json has quantization_config, quant_method 'awq'\)/);
    expect(fs.existsSync(tmp('twice'))).toBe(false);
  });

  it('options: --method, --group-size, --model, --out, unknown options, the model directory as output', async () => {
    await expect(run('--model', DRAFT, '--out', tmp('m'), '--method', 'gptq')).rejects.toThrow(/method 'gptq' is not available \(--method: awq, rtn/);
    await expect(run('--model', DRAFT, '--out', tmp('g'), '--group-size', '100')).rejects.toThrow(/group size 100 \(--group-size\) is not one of 32, 64, 128/);
    await expect(run('--out', tmp('x'))).rejects.toThrow(/--model DIR/);
    await expect(run('--model', DRAFT)).rejects.toThrow(/--out DIR/);
    await expect(run('--model', DRAFT, '--out', tmp('y'), '--bits', '3')).rejects.toThrow(/unknown option --bits/);
    await expect(run('--model', tmp('nothing-here'), '--out', tmp('z'))).rejects.toThrow(/nothing-here is not a model directory/);
    await expect(run('--model', DRAFT, '--out', DRAFT, '--force')).rejects.toThrow(/is the model directory; choose another --out/);
    for (const d of ['m', 'g', 'x', 'y', 'z']) expect(fs.existsSync(tmp(d)), d).toBe(false);
    expect(fs.existsSync(path.join(DRAFT, 'model.safetensors.partial'))).toBe(false);
  });
});
