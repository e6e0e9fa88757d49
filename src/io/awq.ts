// AutoAWQ GEMM checkpoints: per quantized linear layer (y = x·W, W is [K, N] = [in, out])
//   qweight int32 [K, N/8]   nibble i of word (k, c) holds q[k, 8c + AWQ_ORDER[i]]
//   qzeros  int32 [K/g, N/8] zero points, interleaved the same way
//   scales  f16   [K/g, N]
//   W[k, n] = (q[k, n] − z[⌊k/g⌋, n]) · s[⌊k/g⌋, n]
// This module loads and validates them; kernels consume them unchanged.

import type { AwqConfig, LinearSpec, ModelSpec } from '../model/spec.js';
import { type AwqTensors, dequantizeAwq as dequantizeAwqKN } from '../quant/awq.js';
import { allLinears } from '../model/spec.js';
import { readFloat16Bits, readFloat32, readInt32, toFloat32, type TensorStore } from './safetensors.js';

export { AWQ_ORDER } from '../quant/awq.js';

/** One layer's AutoAWQ tensors (quant/awq.ts AwqTensors) with its name and optional bias. */
export interface AwqLinear extends AwqTensors {
  /** Layer prefix, e.g. 'model.layers.0.self_attn.q_proj'. */
  name: string;
  /** [N] or null. */
  bias: Float32Array | null;
}

/** True if any tensor is an AWQ packed weight. */
export function isAwqCheckpoint(store: TensorStore): boolean {
  return store.names().some((n) => n.endsWith('.qweight'));
}

/** AutoAWQ skips modules whose name contains any entry of modules_to_not_convert. */
export function isAwqQuantized(cfg: AwqConfig, linearName: string): boolean {
  return !cfg.modulesNotConverted.some((m) => linearName.includes(m));
}

function expectTensor(store: TensorStore, name: string, dtype: string, shape: readonly number[], formula: string): void {
  const want = `[${shape.join(', ')}] ${dtype} (${formula})`;
  if (!store.has(name)) throw new Error(`${store.source}: missing AWQ tensor '${name}', expected ${want}`);
  const info = store.info(name);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${store.source}: AWQ tensor '${name}' has shape [${info.shape.join(', ')}], expected ${want}`);
  }
  if (info.dtype !== dtype) throw new Error(`${store.source}: AWQ tensor '${name}' has dtype ${info.dtype}, expected ${want}`);
}

/** Checks one linear layer's qweight/qzeros/scales (and bias) shapes and dtypes. */
export function validateAwqLinear(store: TensorStore, lin: LinearSpec, groupSize: number): void {
  const { name, K, N } = lin;
  if (K % groupSize !== 0) throw new Error(`${store.source}: '${name}' input size ${K} is not a multiple of group_size ${groupSize}`);
  if (N % 8 !== 0) throw new Error(`${store.source}: '${name}' output size ${N} is not a multiple of 8`);
  const G = K / groupSize;
  expectTensor(store, `${name}.qweight`, 'I32', [K, N / 8], `K=${K}, N/8=${N / 8}`);
  expectTensor(store, `${name}.qzeros`, 'I32', [G, N / 8], `K/g=${G}, N/8=${N / 8}`);
  expectTensor(store, `${name}.scales`, 'F16', [G, N], `K/g=${G}, N=${N}`);
  if (lin.bias) {
    const b = `${name}.bias`;
    if (!store.has(b)) throw new Error(`${store.source}: missing tensor '${b}', expected [${N}]`);
    const info = store.info(b);
    if (info.shape.length !== 1 || info.shape[0] !== N) throw new Error(`${store.source}: tensor '${b}' has shape [${info.shape.join(', ')}], expected [${N}]`);
  }
}

/** Validates and reads one quantized linear layer. */
export function loadAwqLinear(store: TensorStore, lin: LinearSpec, groupSize: number): AwqLinear {
  validateAwqLinear(store, lin, groupSize);
  return {
    name: lin.name,
    K: lin.K,
    N: lin.N,
    groupSize,
    qweight: readInt32(store, `${lin.name}.qweight`),
    qzeros: readInt32(store, `${lin.name}.qzeros`),
    scales: readFloat16Bits(store, `${lin.name}.scales`),
    bias: lin.bias ? readFloat32(store, `${lin.name}.bias`) : null,
  };
}

/** Every quantized decoder linear layer of an AWQ spec, keyed by layer prefix. */
export function loadAwqLayers(spec: ModelSpec, store: TensorStore): Map<string, AwqLinear> {
  const cfg = spec.quantization;
  if (!cfg) throw new Error(`${store.source}: the model spec has no AWQ quantization_config`);
  const out = new Map<string, AwqLinear>();
  for (const lin of allLinears(spec)) {
    if (isAwqQuantized(cfg, lin.name)) out.set(lin.name, loadAwqLinear(store, lin, cfg.groupSize));
  }
  return out;
}

/** Dequantizes to a dense float32 weight in HF layout [N, K] (out × in), for reference use. */
export function dequantizeAwq(lin: AwqLinear): Float32Array {
  const { K, N } = lin;
  const kn = dequantizeAwqKN(lin);
  const out = new Float32Array(N * K);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) out[n * K + k] = kn[k * N + n]!;
  return out;
}
