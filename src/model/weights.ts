// Device weights for the Llama forward: every linear layer in the kernels' input-major layout
// ([K, N]), fused where the weights allow (q|k|v side by side; gate|up side by side), stored as
// f32, f16 (packed pairs) or INT4 (AutoAWQ GEMM words, from an AWQ checkpoint or quantized by
// RTN at load time). Embeddings and lm_head stay unquantized, as in AutoAWQ.
import { denseLinear } from '../../codegen/kernels/denseMatmul.js';
import { int4Linear } from '../../codegen/kernels/int4Matmul.js';
import type { LinearEpilogue } from '../../codegen/kernels/linearCommon.js';
import { toWeightLayout } from '../../codegen/kernels/weightLayout.js';
import type { LinearOp } from '../../codegen/kernels/linearOp.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import { dequantizeAwq, isAwqQuantized, loadAwqLinear } from '../io/awq.js';
import { readFloat16Bits, readFloat32, type TensorStore } from '../io/safetensors.js';
import { linearHints, uploadDense } from '../ops/linear.js';
import { cachedChoice } from '../ops/tune.js';
import { type AwqTensors, AWQ_GROUP_SIZES } from '../quant/awq.js';
import { packF16Pairs } from '../quant/f16.js';
import { quantizeRtnInt4 } from '../quant/rtn.js';
import { EMBED, FINAL_NORM, LM_HEAD, type LinearSpec, layerLinears, layerPrefix, type ModelSpec } from './spec.js';

/** How the decoder's linear layers are stored on the device. */
export type WeightFormat = 'f32' | 'f16' | 'int4';

export interface WeightOptions {
  /** Default: 'int4' for AWQ checkpoints, else 'f16' when the file holds 16-bit weights, else 'f32'. */
  format?: WeightFormat;
  /** INT4 group size for RTN quantization at load time (must divide every input dim). Default 128. */
  groupSize?: number;
  /** Variant cache (`kiln tune`, src/tune.ts readTuneCache): tuned choices per (device, K, N). */
  tuneCache?: Record<string, Record<string, unknown>>;
  /** Called after each tensor group is on the device (loading progress). */
  onProgress?: (done: number, total: number) => void;
}

/** A linear layer's weight tensors as its op binds them: INT4 (AutoAWQ words, f16 scales in pairs) or dense. */
export type LinearWeightTensors =
  | { qweight: DeviceBuffer<'u32'>; qzeros: DeviceBuffer<'u32'>; scales: DeviceBuffer<'u32'>; bias?: DeviceBuffer<'f32'> }
  | { w: DeviceBuffer<'f32'> | DeviceBuffer<'u32'>; bias?: DeviceBuffer<'f32'> };

/** One linear layer on the device: its op (shape, epilogue, variant) and its weight buffers. */
export interface DeviceLinear {
  op: LinearOp;
  weights: LinearWeightTensors;
}

export interface LayerWeights {
  attnNorm: DeviceBuffer<'f32'>;
  ffnNorm: DeviceBuffer<'f32'>;
  /** x → [q | k | v] (+ bias). */
  qkv: DeviceLinear;
  /** attn → x + attn·Wo. */
  o: DeviceLinear;
  /** h → SiLU(h·Wg) · (h·Wu). */
  gateUp: DeviceLinear;
  /** f → x + f·Wd. */
  down: DeviceLinear;
}

export interface ModelWeights {
  format: WeightFormat;
  groupSize: number | null;
  /** Token embeddings [V, D]: f32, or f16 packed two per u32 word. */
  embed: { dtype: 'f32'; table: DeviceBuffer<'f32'> } | { dtype: 'f16'; table: DeviceBuffer<'u32'> };
  layers: LayerWeights[];
  finalNorm: DeviceBuffer<'f32'>;
  lmHead: DeviceLinear;
  /** Bytes of weights a decode step reads (all linear layers + lm_head). */
  bytesPerToken: number;
  buffers: DeviceBuffer[];
}

function isHalf(store: TensorStore, name: string): boolean {
  const d = store.info(name).dtype;
  return d === 'F16' || d === 'BF16';
}

export function defaultFormat(spec: ModelSpec, store: TensorStore): WeightFormat {
  if (spec.quantization) return 'int4';
  return isHalf(store, EMBED) ? 'f16' : 'f32';
}

/** Upload a model's weights in the layout the kernels read. */
export function uploadWeights(dev: Device, spec: ModelSpec, store: TensorStore, opts: WeightOptions = {}): ModelWeights {
  const format = opts.format ?? defaultFormat(spec, store);
  const awq = spec.quantization;
  const g = awq ? awq.groupSize : (opts.groupSize ?? 128);
  if (format === 'int4') {
    if (!AWQ_GROUP_SIZES.includes(g)) throw new Error(`int4: group size ${g} is not one of ${AWQ_GROUP_SIZES.join(', ')}`);
    for (const [what, K] of [['hidden_size', spec.hidden], ['intermediate_size', spec.ffn], ['heads·head_dim', spec.heads * spec.headDim]] as const) {
      if (K % g) throw new Error(`int4: group size ${g} does not divide ${what} = ${K}; choose a group size that divides every input dim (--group-size)`);
    }
  } else if (awq) {
    throw new Error(`${store.source}: an AWQ checkpoint loads as int4, not ${format}`);
  }
  const buffers: DeviceBuffer[] = [];
  // Device hints (parallelism, CPU tiling) and, when `kiln tune` measured this shape, its winner.
  const hints = linearHints(dev);
  const tuned = (family: string, shape: Record<string, number | string>) => {
    const choice = opts.tuneCache && cachedChoice(opts.tuneCache, dev, family, shape);
    return choice ? { choice } : {};
  };
  const total = spec.layers + 2;
  let bytesPerToken = 0;

  const upF32 = (data: Float32Array, label: string): DeviceBuffer<'f32'> => {
    const b = dev.alloc('f32', data.length, label);
    dev.write(b, data);
    buffers.push(b);
    return b;
  };
  const upU32 = (data: Uint32Array, label: string): DeviceBuffer<'u32'> => {
    const b = dev.alloc('u32', data.length, label);
    dev.write(b, data);
    buffers.push(b);
    return b;
  };

  /** Linear layers `parts` fused side by side along N, with the epilogue given. */
  const linear = (parts: LinearSpec[], epi: LinearEpilogue, label: string, fmt: WeightFormat = format): DeviceLinear => {
    // quantization_config.modules_to_not_convert: AutoAWQ left these linears dense. A fused group
    // holding one runs dense: f16 when all its parts are dense halves, else f32 (the quantized
    // parts dequantize exactly: a 4-bit integer times an f16 scale fits an f32).
    const fromAwq = (p: LinearSpec) => !!awq && fmt === 'int4' && isAwqQuantized(awq, p.name);
    const kept = awq && fmt === 'int4' ? parts.filter((p) => !fromAwq(p)) : [];
    const quantizedParts = new Set(parts.filter(fromAwq));
    if (kept.length) fmt = kept.length === parts.length && kept.every((p) => isHalf(store, `${p.name}.weight`)) ? 'f16' : 'f32';
    const K = parts[0]!.K;
    const N = parts.reduce((s, p) => s + p.N, 0);
    const outN = epi.gateUp ? N / 2 : N;
    let weights: LinearWeightTensors;
    let op: LinearOp;
    if (fmt === 'int4') {
      const t = concatAwq(parts.map((p) => (awq ? loadAwqLinear(store, p, g) : quantizeRtnInt4(readFloat32(store, `${p.name}.weight`), K, p.N, g, 'NK'))));
      op = int4Linear({ K, N: outN, groupSize: g, ...hints, ...tuned('int4Linear', { K, N, groupSize: g }), ...epi });
      weights = {
        qweight: upU32(toWeightLayout(op.source.layout, new Uint32Array(t.qweight.buffer, t.qweight.byteOffset, t.qweight.length), K, N / 8), `${label}.qweight`),
        qzeros: upU32(new Uint32Array(t.qzeros.buffer, t.qzeros.byteOffset, t.qzeros.length), `${label}.qzeros`),
        scales: upU32(packF16Pairs(t.scales), `${label}.scales`),
      };
    } else {
      // HF stores [N, K]: stacking parts along N is concatenation; uploadDense transposes it to
      // [K, N] and lays it out as the op reads it (no copy beyond that one transpose).
      const nk = new Float32Array(N * K);
      let off = 0;
      for (const p of parts) {
        nk.set(quantizedParts.has(p) ? dequantizeAwq(loadAwqLinear(store, p, g)) : readFloat32(store, `${p.name}.weight`), off);
        off += p.N * K;
      }
      op = denseLinear({ K, N: outN, weight: fmt, ...hints, ...tuned('denseLinear', { K, N, weight: fmt }), ...epi });
      const w = uploadDense(dev, nk, K, N, fmt, 'NK', label, op.source.layout);
      buffers.push(w);
      weights = { w };
    }
    if (epi.bias) {
      const b = new Float32Array(N);
      let off = 0;
      for (const p of parts) { b.set(readFloat32(store, `${p.name}.bias`), off); off += p.N; }
      weights.bias = upF32(b, `${label}.bias`);
    }
    bytesPerToken += Object.entries(weights).reduce((s, [, buf]) => s + buf.length * 4, 0);
    return { op, weights };
  };

  // A tensor that fails to read or quantize part way must not strand what is already uploaded.
  try {
    const embedDtype: 'f32' | 'f16' = format !== 'f32' && isHalf(store, EMBED) ? 'f16' : 'f32';
    const embed: ModelWeights['embed'] = embedDtype === 'f16'
      ? { table: upU32(packF16Pairs(readFloat16Bits(store, EMBED)), 'embed'), dtype: 'f16' }
      : { table: upF32(readFloat32(store, EMBED), 'embed'), dtype: 'f32' };
    opts.onProgress?.(1, total);

    const layers: LayerWeights[] = [];
    for (let l = 0; l < spec.layers; l++) {
      const [q, k, v, o, gate, up, down] = layerLinears(spec, l) as [LinearSpec, LinearSpec, LinearSpec, LinearSpec, LinearSpec, LinearSpec, LinearSpec];
      const p = layerPrefix(l);
      layers.push({
        attnNorm: upF32(readFloat32(store, `${p}.input_layernorm.weight`), `L${l}.attnNorm`),
        ffnNorm: upF32(readFloat32(store, `${p}.post_attention_layernorm.weight`), `L${l}.ffnNorm`),
        qkv: linear([q, k, v], { bias: spec.qkvBias }, `L${l}.qkv`),
        o: linear([o], { residual: true }, `L${l}.o`),
        gateUp: linear([gate, up], { gateUp: true }, `L${l}.gateUp`),
        down: linear([down], { residual: true }, `L${l}.down`),
      });
      opts.onProgress?.(l + 2, total);
    }
    const finalNorm = upF32(readFloat32(store, FINAL_NORM), 'finalNorm');
    const headName = spec.tieEmbeddings ? EMBED.replace(/\.weight$/, '') : LM_HEAD;
    const lmHead = linear([{ name: headName, K: spec.hidden, N: spec.vocabSize, bias: false }], {}, 'lmHead', embedDtype);
    opts.onProgress?.(total, total);
    return { format, groupSize: format === 'int4' ? g : null, embed, layers, finalNorm, lmHead, bytesPerToken, buffers };
  } catch (e) {
    for (const b of buffers) dev.free(b);
    throw e;
  }
}

export function freeWeights(dev: Device, w: ModelWeights): void {
  for (const b of w.buffers) dev.free(b);
  w.buffers.length = 0;
}

/** AWQ layers with the same K and group size, side by side along N (each N a multiple of 8). */
export function concatAwq(parts: AwqTensors[]): AwqTensors {
  if (parts.length === 1) return parts[0]!;
  const { K, groupSize: g } = parts[0]!;
  for (const p of parts) {
    if (p.K !== K || p.groupSize !== g) throw new Error(`concatAwq: layers differ in K or group size (${K}/${g} vs ${p.K}/${p.groupSize})`);
  }
  const N = parts.reduce((s, p) => s + p.N, 0);
  const side = <T extends Int32Array | Uint16Array>(pick: (p: AwqTensors) => T, rows: number, per: number, out: T): T => {
    let col = 0;
    for (const p of parts) {
      const w = p.N / per, src = pick(p);
      for (let r = 0; r < rows; r++) out.set(src.subarray(r * w, (r + 1) * w), r * (N / per) + col);
      col += w;
    }
    return out;
  };
  return {
    K, N, groupSize: g,
    qweight: side((p) => p.qweight, K, 8, new Int32Array((K * N) / 8)),
    qzeros: side((p) => p.qzeros, K / g, 8, new Int32Array(((K / g) * N) / 8)),
    scales: side((p) => p.scales, K / g, 1, new Uint16Array((K / g) * N)),
  };
}

