// `kiln quantize`: a Hugging Face Llama-family checkpoint (f32/f16/bf16, sharded or not) →
// an AutoAWQ GEMM checkpoint (version "gemm", 4 bits, zero points), by RTN INT4 quantization or
// from AWQ's results (quantize.ts computes those and passes them in as `precomputed`).
// What AutoAWQ writes, and so what this writes:
//   every decoder linear (q/k/v/o, gate/up/down): <prefix>.qweight I32 [K, N/8],
//     <prefix>.qzeros I32 [K/g, N/8], <prefix>.scales F16 [K/g, N] (+ <prefix>.bias F16 [N])
//   embeddings, norms, lm_head: unquantized, F16
//   config.json: the source's, with torch_dtype float16 and quantization_config added
//   tokenizer and generation files: copied unchanged
// The safetensors file is streamed tensor by tensor (its header is known from the spec up front),
// so a model is never held in memory whole; it is written under a temporary name and renamed,
// and config.json is written last, so a failed run never leaves a loadable half checkpoint.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openModel } from '../io/index.js';
import { readFloat16Bits, readFloat32, type TensorStore } from '../io/safetensors.js';
import { expectedDenseWeights, layerLinears, type LinearSpec, type ModelSpec } from '../model/spec.js';
import { AWQ_GROUP_SIZES, type AwqTensors } from './awq.js';
import { f32ArrayToF16 } from './f16.js';
import { quantizeRtnInt4 } from './rtn.js';

export type QuantizeMethod = 'rtn' | 'awq';
export const QUANTIZE_METHODS: readonly QuantizeMethod[] = ['awq', 'rtn'];

/** Tensors computed elsewhere (AWQ): quantized linears by prefix, changed dense tensors by name. */
export interface PrecomputedTensors {
  linears: Map<string, AwqTensors>;
  dense: Map<string, Float32Array>;
}

export interface QuantizeOptions {
  /** Group size along K (default 128): one of the sizes the INT4 kernels take. */
  groupSize?: number;
  /** 'rtn' (round to nearest); 'awq' needs `precomputed` (quantize() in quantize.ts makes it). */
  method?: string;
  precomputed?: PrecomputedTensors;
  /** Write into a non-empty output directory (replacing its checkpoint files). */
  force?: boolean;
  /** Called after each output tensor is written. */
  onProgress?: (done: number, total: number) => void;
}

export interface QuantizeResult {
  outDir: string;
  groupSize: number;
  /** Linear layers written in the AWQ layout. */
  quantizedLinears: number;
  /** Bytes of the source checkpoint's tensors. */
  bytesBefore: number;
  /** Bytes of the model.safetensors written. */
  bytesAfter: number;
  ms: number;
  /** Tokenizer / generation files copied next to the checkpoint. */
  copiedFiles: string[];
  /** Source tensors the model does not use (e.g. rotary inv_freq buffers), not written. */
  droppedTensors: string[];
}

/** Files a Hugging Face model directory carries besides config.json and the weights. */
const COPIED_FILES = [
  'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
  'tokenizer.model', 'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json',
];
export const WEIGHTS_FILE = 'model.safetensors';

/** One tensor of the output: its header entry and how to produce its bytes when its turn comes. */
interface PlannedTensor {
  name: string;
  dtype: 'I32' | 'F16';
  shape: number[];
  produce: () => Int32Array | Uint16Array;
}

/** Quantize `modelDir` into `outDir` as an AutoAWQ GEMM checkpoint. */
export function writeAwqCheckpoint(modelDir: string, outDir: string, opts: QuantizeOptions = {}): QuantizeResult {
  const t0 = performance.now();
  const { g, config } = checkQuantizeArgs(modelDir, opts);
  if (opts.method === 'awq' && !opts.precomputed) throw new Error("quantize: method 'awq' needs its search results: call quantize() (src/quant/quantize.ts)");
  const model = openModel(modelDir);
  try {
    const { spec, weights: store } = model;
    checkDims(spec, g);
    const created = prepareOutDir(modelDir, outDir, opts.force ?? false);
    const plan = planTensors(spec, store, g, opts.precomputed);
    const written = new Set(plan.map((t) => t.name.replace(/\.(qweight|qzeros|scales)$/, '.weight')));
    const droppedTensors = store.names().filter((n) => !written.has(n));
    const bytesBefore = store.names().reduce((s, n) => s + store.info(n).byteLength, 0);

    const finalPath = path.join(outDir, WEIGHTS_FILE);
    const partial = `${finalPath}.partial`;
    try {
      streamSafetensors(partial, plan, opts.onProgress);
      fs.renameSync(partial, finalPath);
    } catch (e) {
      // A directory made for this run goes with it; one that was there keeps everything else.
      if (created) fs.rmSync(outDir, { recursive: true, force: true });
      else fs.rmSync(partial, { force: true });
      throw e;
    }
    const copiedFiles = COPIED_FILES.filter((f) => fs.existsSync(path.join(modelDir, f)));
    for (const f of copiedFiles) fs.copyFileSync(path.join(modelDir, f), path.join(outDir, f));
    fs.writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(awqConfigJson(config, g), null, 2) + '\n');
    return {
      outDir, groupSize: g, quantizedLinears: spec.layers * 7, bytesBefore, bytesAfter: fs.statSync(finalPath).size,
      ms: performance.now() - t0, copiedFiles, droppedTensors,
    };
  } finally {
    model.weights.close();
  }
}

/** Checks method, group size and source before any work; returns the group size and config.json. */
export function checkQuantizeArgs(modelDir: string, opts: Pick<QuantizeOptions, 'method' | 'groupSize'>): { g: number; config: Record<string, unknown> } {
  const method = opts.method ?? 'rtn';
  if (!(QUANTIZE_METHODS as readonly string[]).includes(method)) {
    throw new Error(`quantize: method '${method}' is not available (--method: ${QUANTIZE_METHODS.join(', ')}; rtn is round-to-nearest INT4)`);
  }
  const g = opts.groupSize ?? 128;
  if (!AWQ_GROUP_SIZES.includes(g)) {
    throw new Error(`quantize: group size ${g} (--group-size) is not one of ${AWQ_GROUP_SIZES.join(', ')}, the sizes the INT4 kernels take`);
  }
  if (!fs.existsSync(modelDir) || !fs.statSync(modelDir).isDirectory()) {
    throw new Error(`quantize: ${modelDir} is not a model directory (expected config.json + *.safetensors)`);
  }
  const config = readConfig(modelDir);
  const existing = config.quantization_config as { quant_method?: unknown } | undefined;
  if (existing !== undefined && existing !== null) {
    throw new Error(`quantize: ${modelDir} is already quantized (config.json has quantization_config, quant_method '${String(existing.quant_method)}'); quantize the original f16/f32/bf16 model`);
  }
  return { g, config };
}

function readConfig(dir: string): Record<string, unknown> {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new Error(`quantize: ${dir} has no config.json`);
  let v: unknown;
  try {
    v = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${file}: must be a JSON object`);
  return v as Record<string, unknown>;
}

/** The source config with the AutoAWQ quantization_config; the weights are now f16. */
function awqConfigJson(config: Record<string, unknown>, groupSize: number): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config, torch_dtype: 'float16' };
  if ('dtype' in out) out.dtype = 'float16'; // transformers ≥ 5 spells it dtype
  out.quantization_config = {
    quant_method: 'awq', version: 'gemm', bits: 4, group_size: groupSize, zero_point: true, modules_to_not_convert: null,
  };
  return out;
}

/**
 * The output directory must not be the source, and must be new or empty unless `force`; with
 * `force`, checkpoint files that would shadow the new one (an index, other shards) are removed.
 * Returns whether it made the directory.
 */
/** The output directory checks of prepareOutDir, without touching anything (run before a long search). */
export function checkOutDir(modelDir: string, outDir: string, force: boolean): void {
  if (!fs.existsSync(outDir)) return;
  if (!fs.statSync(outDir).isDirectory()) throw new Error(`quantize: output ${outDir} exists and is not a directory`);
  if (fs.realpathSync(outDir) === fs.realpathSync(modelDir)) {
    throw new Error(`quantize: the output directory ${outDir} is the model directory; choose another --out`);
  }
  const entries = fs.readdirSync(outDir);
  if (entries.length && !force) {
    throw new Error(`quantize: output directory ${outDir} exists and is not empty (${entries.length} entries); pass --force to write into it`);
  }
}

function prepareOutDir(modelDir: string, outDir: string, force: boolean): boolean {
  checkOutDir(modelDir, outDir, force);
  if (fs.existsSync(outDir)) {
    const entries = fs.readdirSync(outDir);
    for (const f of entries) {
      if (f.endsWith('.safetensors') || f === 'model.safetensors.index.json') fs.rmSync(path.join(outDir, f));
    }
    return false;
  }
  fs.mkdirSync(outDir, { recursive: true });
  return true;
}

/** Every decoder linear must split into whole groups along K and whole words along N. */
function checkDims(spec: ModelSpec, g: number): void {
  for (let l = 0; l < spec.layers; l++) {
    for (const lin of layerLinears(spec, l)) {
      if (lin.K % g) {
        throw new Error(`quantize: ${lin.name} has input size K = ${lin.K} (weight [N = ${lin.N}, K = ${lin.K}]), not a multiple of the group size ${g}; choose a --group-size that divides it`);
      }
      if (lin.N % 8) {
        throw new Error(`quantize: ${lin.name} has output size N = ${lin.N} (weight [N = ${lin.N}, K = ${lin.K}]), not a multiple of 8 (8 columns per packed int32 word)`);
      }
    }
  }
}

/** The output tensors in file order: per layer, its dense tensors and its quantized linears. */
function planTensors(spec: ModelSpec, store: TensorStore, g: number, pre?: PrecomputedTensors): PlannedTensor[] {
  const linears = new Map<string, LinearSpec>();
  for (let l = 0; l < spec.layers; l++) for (const lin of layerLinears(spec, l)) linears.set(`${lin.name}.weight`, lin);
  const plan: PlannedTensor[] = [];
  for (const w of expectedDenseWeights(spec)) {
    const lin = linears.get(w.name);
    if (!lin) {
      const changed = pre?.dense.get(w.name);
      plan.push({ name: w.name, dtype: 'F16', shape: w.shape, produce: () => (changed ? checkedHalf(changed, w.name) : halfBits(store, w.name)) });
      continue;
    }
    const { K, N } = lin;
    const given = pre?.linears.get(lin.name);
    if (pre && !given) throw new Error(`quantize: no AWQ result for ${lin.name}`);
    if (given && (given.K !== K || given.N !== N || given.groupSize !== g)) {
      throw new Error(`quantize: the AWQ result for ${lin.name} is K=${given.K}, N=${given.N}, g=${given.groupSize}; expected K=${K}, N=${N}, g=${g}`);
    }
    // The three tensors of one layer come from one quantization, made when the first is due.
    let q: ReturnType<typeof quantizeRtnInt4> | null = null;
    const quantized = () => (q ??= given ?? quantizeLinear(store, lin, g));
    plan.push({ name: `${lin.name}.qweight`, dtype: 'I32', shape: [K, N / 8], produce: () => quantized().qweight });
    plan.push({ name: `${lin.name}.qzeros`, dtype: 'I32', shape: [K / g, N / 8], produce: () => quantized().qzeros });
    plan.push({ name: `${lin.name}.scales`, dtype: 'F16', shape: [K / g, N], produce: () => { const s = quantized().scales; q = null; return s; } });
  }
  return plan;
}

function quantizeLinear(store: TensorStore, lin: LinearSpec, g: number) {
  try {
    return quantizeRtnInt4(readFloat32(store, `${lin.name}.weight`), lin.K, lin.N, g, 'NK');
  } catch (e) {
    throw new Error(`quantize: ${lin.name}.weight: ${(e as Error).message}`);
  }
}

/** A dense tensor as f16 bits: F16 copied bit for bit, F32/BF16 rounded to nearest. */
function halfBits(store: TensorStore, name: string): Uint16Array {
  if (store.info(name).dtype === 'F16') return readFloat16Bits(store, name);
  return checkedHalf(readFloat32(store, name), name);
}

/** f16 bits of f, refusing values that overflow. */
function checkedHalf(f: Float32Array, name: string): Uint16Array {
  const h = f32ArrayToF16(f);
  for (let i = 0; i < h.length; i++) {
    // 0x7c00 after masking the sign: ±Inf. A finite value that became one does not fit in f16.
    if ((h[i]! & 0x7fff) === 0x7c00 && Number.isFinite(f[i]!)) {
      throw new Error(`quantize: tensor '${name}' element ${i} = ${f[i]} overflows f16 (largest finite half is 65504)`);
    }
  }
  return h;
}

/** safetensors header: 8-byte length, JSON padded with spaces to keep the data 8-byte aligned. */
function headerBytes(plan: PlannedTensor[]): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const t of plan) {
    const bytes = t.shape.reduce((a, d) => a * d, 1) * (t.dtype === 'I32' ? 4 : 2);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil((8 + json.length) / 8) * 8 - 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

function streamSafetensors(file: string, plan: PlannedTensor[], onProgress?: (done: number, total: number) => void): void {
  const fd = fs.openSync(file, 'w');
  try {
    writeAll(fd, headerBytes(plan));
    plan.forEach((t, i) => {
      const data = t.produce();
      // The header is already written: a tensor of another size would corrupt every offset after it.
      if (data.length !== t.shape.reduce((a, d) => a * d, 1)) throw new Error(`quantize: tensor '${t.name}' has ${data.length} elements, expected [${t.shape.join(', ')}]`);
      writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      onProgress?.(i + 1, plan.length);
    });
  } finally {
    fs.closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let at = 0;
  while (at < bytes.length) at += fs.writeSync(fd, bytes, at, bytes.length - at);
}

export function humanBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(2)} MiB`;
  return `${(n / 2 ** 10).toFixed(1)} KiB`;
}
