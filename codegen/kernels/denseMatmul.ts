// Dense linear layer, the unquantized baseline, with the INT4 layer's interface and epilogues:
// weight [K, Nw] (input-major, as the INT4 layout; loaders transpose torch's [N, K] once) in f32,
// or f16 packed two per u32 word [K, Nw/2] (even column in the low half).
// Entry point: denseLinear(config) → LinearOp (GEMV for M ≤ 8, tiled GEMM above).
import type { ArrayRef, Caps, Val } from '../dsl/index.js';
import { storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import {
  defaultSegmentLength, fullEpilogue, type GemvVariant, K_GRANULE, type LinearEpilogue, type WeightSource,
} from './linearCommon.js';
import type { GemmVariant } from './linearGemm.js';
import { cpuGemmRows } from './linearGemmRows.js';
import { layoutTag, rowIndex, stripsFit, unitIndex, type WeightLayout } from './weightLayout.js';
import type { DeviceClass } from './deviceProfile.js';
import { GEMV_MAX_ROWS, type LinearChoice, type LinearChoiceInput, type LinearOp, linearOp } from './linearOp.js';

export type DenseWeightDtype = 'f32' | 'f16';

export function denseSource(dtype: DenseWeightDtype, layout: WeightLayout = 'rows'): WeightSource {
  const lt = layoutTag(layout);
  if (dtype === 'f32') {
    return {
      tag: `f32${lt}`,
      cols: 1,
      granule: K_GRANULE,
      layout,
      bindings: { w: storage('f32', 'read', { shape: '[K, Nw]' }) },
      row: (k, u, kk) => rowIndex(layout, kk, () => u.Nw, 1),
      values: (k, refs, row, unit, _tag, u) => [(refs.w as ArrayRef<'f32', false>).at(unitIndex(layout, u, row, unit, 1))],
    };
  }
  return {
    tag: `f16${lt}`,
    cols: 2,
    granule: K_GRANULE,
    layout,
    bindings: { w: storage('u32', 'read', { shape: '[K, Nw / 2]' }) },
    row: (k, u, kk) => rowIndex(layout, kk, () => u.Nw.div(2), 1),
    values(k, refs, row, unit, tag, u) {
      const pair = k.let(`wp${tag}`, k.unpack2x16float((refs.w as ArrayRef<'u32', false>).at(unitIndex(layout, u, row, unit, 1))));
      return [pair.x, pair.y];
    },
    vectorized: (width) => denseF16VectorSource(width, layout),
  };
}

/**
 * The f16 source read `w` words (2w columns) of a row with one 8- or 16-byte load; columns come
 * out in the scalar source's order (word j → columns 2j, 2j + 1), so the GEMV's arithmetic and
 * bits are those of the scalar source. Rows must hold whole vectors (Nw a multiple of 2w).
 */
function denseF16VectorSource(w: 2 | 4, layout: WeightLayout): WeightSource {
  return {
    tag: `f16v${w}${layoutTag(layout)}`,
    cols: 2 * w,
    granule: K_GRANULE,
    layout,
    bindings: { w: storage('u32', 'read', { vec: w, shape: '[K, Nw / 2]' }) },
    row: (_k, u, kk) => rowIndex(layout, kk, () => u.Nw.div(2 * w), w),
    values(k, refs, row, unit, tag, u) {
      const words = k.let(`wq${tag}`, (refs.w as ArrayRef<'vec4<u32>', false>).at(unitIndex(layout, u, row, unit, w)));
      return Array.from({ length: w }, (_, j) => {
        const pair = k.let(`wp${tag}_${j}`, k.unpack2x16float(words.at(j) as Val<'u32'>));
        return [pair.x, pair.y];
      }).flat();
    },
  };
}

export interface DenseLinearConfig extends LinearEpilogue {
  K: number;
  /** Output features (with gateUp: of each half; the weight has 2N columns). */
  N: number;
  weight: DenseWeightDtype;
  caps?: Caps;
  choice?: LinearChoiceInput;
  /** Invocations the device wants in flight (default split-K); guessed from caps if absent. */
  parallelism?: number;
  /** What runs the kernels (Device.profile.deviceClass); the dense defaults do not depend on it yet. */
  deviceClass?: DeviceClass;
  /** 'strips' where rows cut into whole strips (denseWeightLayout), else 'rows'; default 'rows'. */
  weightLayout?: WeightLayout;
}

/** The layout a dense op with this config uses: 'strips' only where asked and the rows fit. */
export function denseWeightLayout(weight: DenseWeightDtype, Nw: number, asked: WeightLayout = 'rows'): WeightLayout {
  return asked === 'strips' && stripsFit(weight === 'f32' ? Nw : Nw / 2) ? 'strips' : 'rows';
}

export function checkDenseConfig(c: DenseLinearConfig): void {
  const what = 'denseLinear';
  if (!Number.isInteger(c.K) || c.K < 1) throw new Error(`${what}: K = ${c.K} is not a positive integer`);
  if (!Number.isInteger(c.N) || c.N < 1) throw new Error(`${what}: N = ${c.N} is not a positive integer`);
  if (c.weight !== 'f32' && c.weight !== 'f16') throw new Error(`${what}: weight dtype '${c.weight}' is not f32 or f16`);
  if (c.weight === 'f16' && c.N % 2) throw new Error(`${what}: N = ${c.N} must be even for f16 weights (two columns per u32 word: [K, N/2])`);
  if (c.out === 'f16' && c.N % 2) throw new Error(`${what}: N = ${c.N} must be even for f16 output`);
}

// ---- variants ---------------------------------------------------------------------------------

/** GEMV schedules: units are columns (f32) or column pairs (f16) per invocation. */
export function denseGemvSpace(dtype: DenseWeightDtype): GemvVariant[] {
  const units = dtype === 'f32' ? [2, 4, 8] : [1, 2, 4];
  return [32, 64, 128, 256].flatMap((workgroupSize) => units.map((u) => ({ workgroupSize, units: u })));
}

export const DENSE_GEMM_SPACE: GemmVariant[] = [
  { tileM: 32, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
  { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 },
  { tileM: 64, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
  { tileM: 32, tileN: 32, tileK: 32, blockM: 2, blockN: 4 },
  { tileM: 64, tileN: 128, tileK: 32, blockM: 4, blockN: 8 },
  { tileM: 128, tileN: 128, tileK: 16, blockM: 8, blockN: 8 },
];

export function denseSegmentSpace(K: number): number[] {
  const granules = Math.ceil(K / K_GRANULE);
  const out = new Set<number>();
  for (const split of [1, 2, 4, 8, 16, 32, 64]) {
    if (split > granules) break;
    out.add(K_GRANULE * Math.ceil(granules / split));
  }
  return [...out];
}

export function defaultDenseChoice(K: number, Nw: number, dtype: DenseWeightDtype, caps: Caps, parallelism?: number,
  deviceClass?: DeviceClass): LinearChoice {
  const big = caps.maxWorkgroupStorage >= 32 * 1024 && caps.maxInvocationsPerWorkgroup >= 256;
  // 8 columns per invocation, as the INT4 GEMV (one word), so the two compare like for like. f16:
  // one 16-byte load per row where rows hold whole vec4s (Nw % 8 = 0: every Llama width, lm_head
  // 128256 too), else two 8-byte ones (Nw % 4 = 0), else 4-byte words — never a clamped tail.
  const f16Vec = Nw % 8 === 0 ? { vec: 4 as const } : Nw % 4 === 0 ? { vec: 2 as const } : {};
  const gemv: GemvVariant = { workgroupSize: 64, units: dtype === 'f32' ? 8 : 4, ...(dtype === 'f16' ? f16Vec : {}) };
  return {
    segLen: defaultSegmentLength(K, Nw, 8, K_GRANULE, caps, parallelism),
    gemv: Array.from({ length: GEMV_MAX_ROWS }, () => gemv),
    gemm: big ? { tileM: 64, tileN: 128, tileK: 32, blockM: 4, blockN: 8 } : { tileM: 32, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
    ...(deviceClass === 'cpu' ? { gemmRows: cpuGemmRows(dtype) } : {}),
    finishWorkgroupSize: 64,
  };
}

/**
 * y[M, N] = x[M, K] · W with the fused epilogue. Bindings: x f32 [M, K], w f32 [K, Nw] or
 * u32 [K, Nw/2] (f16 pairs), bias f32 [Nw], residual f32 [M, N], out f32 [M, N] | u32 [M, N/2].
 */
export function denseLinear(c: DenseLinearConfig): LinearOp {
  checkDenseConfig(c);
  const e = fullEpilogue(c);
  const dtype = c.weight;
  return linearOp({
    name: 'denseLinear',
    K: c.K,
    N: c.N,
    epilogue: e,
    caps: c.caps ?? BASELINE_CAPS,
    source: denseSource(dtype, denseWeightLayout(dtype, c.gateUp ? 2 * c.N : c.N, c.weightLayout)),
    defaults: (K, Nw, caps, par, cls) => defaultDenseChoice(K, Nw, dtype, caps, par, cls),
    choice: c.choice,
    parallelism: c.parallelism,
    deviceClass: c.deviceClass,
  });
}
