// The public shape of a linear layer op (INT4 or dense): one Op that picks the GEMV path
// (M ≤ GEMV_MAX_ROWS: partials + finish) or the tiled GEMM by M, its tensors' expected shapes
// for host-side validation, and the variant choice (numerics fixed per (K, N); schedules free).
import type { BindingSpec, Caps, Op, Plan, StorageType } from '../dsl/index.js';
import { dims, op, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import type { DeviceClass } from './deviceProfile.js';
import {
  checkGemvVariant, checkSegmentLength, type Epilogue, epilogueBindings, epilogueTag, type GemvVariant, gemvKernel,
  linearFinishKernel, segmentCount, type WeightSource,
} from './linearCommon.js';
import { checkGemmVariant, type GemmVariant, gemmKernel } from './linearGemm.js';
import { checkGemmRowsLayer, checkGemmRowsVariant, fitGemmRows, type GemmRowsVariant, gemmRowsKernel } from './linearGemmRows.js';
import { MMA_MAX_ROWS } from './mmaCommon.js';
import { mmaKernelFor, mmaUnfit } from './mmaLinear.js';

/** Decode and speculative verification run the GEMV path up to this many rows. */
export const GEMV_MAX_ROWS = 8;

/**
 * A variant choice. `segLen` fixes the reduction order, so it must be the same for every M on a
 * device (it may depend on K, N and the device only): tuners choose it once per (K, N). The GEMV
 * schedule (per row count) and the GEMM tiling change speed, never results.
 */
export interface LinearChoice {
  segLen: number;
  /** Index M − 1 for M = 1..GEMV_MAX_ROWS. */
  gemv: GemvVariant[];
  gemm: GemmVariant;
  /**
   * Where set, M > GEMV_MAX_ROWS runs the register GEMM (linearGemmRows.ts: no workgroup memory,
   * for CPUs) instead of the tiled one; same bits either way.
   */
  gemmRows?: GemmRowsVariant;
  finishWorkgroupSize: number;
  /**
   * M up to which the tensor-core MMA path runs (int4Mma.ts, the dense f16 one in mmaMatmul.ts;
   * 0: never). Absent: MMA_MAX_ROWS (64) where caps.tensorCores (CUDA) and the source has an MMA
   * kernel (INT4, dense f16, 'rows' layout), else 0 — the fused ops (fusedLinear.ts) take the same
   * kernel, so a row's bits do not change with the batch from 1 to 64 rows (past 64: the tiled
   * GEMM, f32 x: other bits). Setting it (<= MMA_MAX_ROWS, where the source has an MMA kernel)
   * forces the path anywhere (k.mma is emulated off CUDA); 0 turns it off.
   */
  mmaMaxRows?: number;
}
export interface LinearChoiceInput {
  segLen?: number;
  /** One variant for every row count, or one per row count (index M − 1). */
  gemv?: GemvVariant | GemvVariant[];
  gemm?: GemmVariant;
  /** null: the tiled GEMM even where the device's default is the register one. */
  gemmRows?: GemmRowsVariant | null;
  finishWorkgroupSize?: number;
  mmaMaxRows?: number;
}

/** A tensor the op binds, for given sizes: read from its binding's declared shape (the kernels' own). */
export interface TensorShape {
  dtype: StorageType;
  shape: number[];
  /** The shape in symbols, as the binding declares it, e.g. "[K, Nw / 8]" (u32 words). */
  formula: string;
  /** Elements the buffer must hold (packed f16: words). */
  elements: number;
}

export interface LinearOp extends Op<Record<string, BindingSpec>, { M: number }> {
  readonly K: number;
  /** Output columns. */
  readonly N: number;
  /** Weight columns: 2N with gateUp, else N. */
  readonly Nw: number;
  readonly epilogue: Epilogue;
  readonly choice: LinearChoice;
  readonly source: WeightSource;
  /** The device capabilities its kernels are built for. */
  readonly caps: Caps;
  /** M up to which plan() runs the tensor-core MMA kernel (0: never); see LinearChoice.mmaMaxRows. */
  readonly mmaRows: number;
  /** What runs the kernels, where the caller said (fused ops pick CPU-executor schedules by it). */
  readonly deviceClass?: DeviceClass;
  /** Every binding's expected dtype and shape for M rows (from the bindings' shapes, sizes M, K, N, Nw). */
  tensors(M: number): Record<string, TensorShape>;
  /** Bytes the op must move for M rows: weights once, activations, output (bandwidth floors). */
  bytesMoved(M: number): number;
}

export interface LinearOpSpec {
  name: string;
  K: number;
  N: number;
  epilogue: Epilogue;
  caps?: Caps;
  source: WeightSource;
  defaults: (K: number, Nw: number, caps: Caps, parallelism?: number, deviceClass?: DeviceClass) => LinearChoice;
  choice?: LinearChoiceInput;
  /** Invocations the device wants in flight (sets the default split-K); from caps if absent. */
  parallelism?: number;
  /** What runs the kernels (sets the default GEMV schedule); aheadOfTimeClass(caps) if absent. */
  deviceClass?: DeviceClass;
}

export function resolveChoice(defaults: LinearChoice, c: LinearChoiceInput = {}): LinearChoice {
  const gemv = c.gemv === undefined ? defaults.gemv
    : Array.isArray(c.gemv) ? defaults.gemv.map((d, i) => (c.gemv as GemvVariant[])[i] ?? d)
    : defaults.gemv.map(() => c.gemv as GemvVariant);
  return {
    segLen: c.segLen ?? defaults.segLen,
    gemv,
    gemm: c.gemm ?? defaults.gemm,
    ...(c.gemmRows !== null && (c.gemmRows ?? defaults.gemmRows) ? { gemmRows: c.gemmRows ?? defaults.gemmRows } : {}),
    finishWorkgroupSize: c.finishWorkgroupSize ?? defaults.finishWorkgroupSize,
    ...(c.mmaMaxRows ?? defaults.mmaMaxRows) !== undefined ? { mmaMaxRows: c.mmaMaxRows ?? defaults.mmaMaxRows } : {},
  };
}

/** Rows the MMA path takes for this op (see LinearChoice.mmaMaxRows); a forced misfit throws. */
function mmaRowsOf(name: string, K: number, N: number, src: WeightSource, caps: Caps, forced: number | undefined): number {
  const unfit = mmaUnfit(src, K, N);
  // Default: every M up to MMA_MAX_ROWS where the device has tensor cores and the source a kernel.
  if (forced === undefined) return caps.tensorCores && !unfit ? MMA_MAX_ROWS : 0;
  if (!Number.isInteger(forced) || forced < 0 || forced > MMA_MAX_ROWS) {
    throw new Error(`${name}: choice.mmaMaxRows = ${forced} is not an integer in 0..${MMA_MAX_ROWS}`);
  }
  if (forced > 0 && unfit) throw new Error(`${name}: choice.mmaMaxRows = ${forced} but ${unfit}`);
  if (forced > 0 && src.layout !== 'rows') throw new Error(`${name}: choice.mmaMaxRows = ${forced} but the MMA kernel reads weights in the 'rows' layout, not '${src.layout}' (weightLayout)`);
  return forced;
}

/** A binding's tensor for these sizes, from its declared shape. */
function tensorOf(op: string, name: string, b: BindingSpec, sizes: Record<string, number>): TensorShape {
  if (!b.shape) throw new Error(`${op}: binding '${name}' declares no shape`);
  const d = dims(b.shape);
  const shape = d.eval(sizes);
  return { dtype: b.t, shape, formula: d.text, elements: shape.reduce((a, c) => a * c, 1) };
}

export function linearOp(spec: LinearOpSpec): LinearOp {
  const { name, K, N, epilogue: e, source: src } = spec;
  const caps = spec.caps ?? BASELINE_CAPS;
  const Nw = e.gateUp ? 2 * N : N;
  const resolved = resolveChoice(spec.defaults(K, Nw, caps, spec.parallelism, spec.deviceClass), spec.choice);
  const choice = resolved.gemmRows ? { ...resolved, gemmRows: fitGemmRows(resolved.gemmRows, src, e, N, Nw) } : resolved;
  checkSegmentLength(name, K, choice.segLen, src.granule);
  if (choice.gemv.length !== GEMV_MAX_ROWS) throw new Error(`${name}: choice.gemv needs ${GEMV_MAX_ROWS} variants (M = 1..${GEMV_MAX_ROWS})`);
  for (const v of choice.gemv) checkGemvVariant(name, v, src, Nw, caps);
  checkGemmVariant(name, choice.gemm, src, e, caps);
  if (choice.gemmRows) {
    checkGemmRowsVariant(name, choice.gemmRows, src, e, caps);
    checkGemmRowsLayer(name, choice.gemmRows, src, e, N);
  }
  const S = segmentCount(K, choice.segLen);
  const mmaRows = mmaRowsOf(name, K, N, src, caps, choice.mmaMaxRows);
  const weightNames = Object.keys(src.bindings);
  const bindings: Record<string, BindingSpec> = {
    x: storage('f32', 'read', { shape: '[M, K]' }),
    ...src.bindings,
    ...epilogueBindings(e),
  };
  const passThrough = (names: string[]) => Object.fromEntries(names.map((n) => [n, n]));
  const epiNames = Object.keys(epilogueBindings(e));

  const plan = ({ M }: { M: number }): Plan => {
    if (!Number.isInteger(M) || M < 1) throw new Error(`${name}: M = ${M} is not a positive integer`);
    // Tensor cores: one launch for every M up to mmaRows, rows padded to 16 (batch-invariant).
    if (M <= mmaRows) {
      const mma = mmaKernelFor(src, K, N, e, caps);
      return {
        temps: {},
        steps: [{ kernel: mma, bind: passThrough(['x', ...weightNames, ...epiNames]), uniforms: { M, K, N, Nw } }],
      };
    }
    if (M <= GEMV_MAX_ROWS) {
      const gemv = gemvKernel(src, M, choice.gemv[M - 1]!, caps);
      const finish = linearFinishKernel({ epilogue: e, workgroupSize: choice.finishWorkgroupSize, caps });
      return {
        // Sized for the largest GEMV so the device's scratch (cached per op) never grows between
        // launches already queued: decode (M = 1) and verify (M ≤ 8) share one buffer.
        temps: { part: { t: 'f32', length: S * GEMV_MAX_ROWS * Nw } },
        steps: [
          { kernel: gemv, bind: { ...passThrough(['x', ...weightNames]), part: 'part' }, uniforms: { K, Nw, segLen: choice.segLen } },
          { kernel: finish, bind: { part: 'part', ...passThrough(epiNames) }, uniforms: { M, N, S } },
        ],
      };
    }
    const gemm = gemmKernelFor(src, e, choice, caps);
    return {
      temps: {},
      steps: [{ kernel: gemm, bind: passThrough(['x', ...weightNames, ...epiNames]), uniforms: { M, K, N, Nw, segLen: choice.segLen } }],
    };
  };
  const tensors = (M: number): Record<string, TensorShape> =>
    Object.fromEntries(Object.entries(bindings).map(([b, s]) => [b, tensorOf(name, b, s, { M, K, N, Nw })]));
  const bytesMoved = (M: number): number => {
    let bytes = 0;
    for (const [, t] of Object.entries(tensors(M))) bytes += t.elements * 4;
    return bytes;
  };
  const base = op(`${name}_K${K}_N${N}_${src.tag}_${epilogueTag(e)}`, bindings, plan);
  return { ...base, fixedSizes: { K, N, Nw }, K, N, Nw, epilogue: e, choice, source: src, caps, mmaRows, tensors, bytesMoved, ...(spec.deviceClass ? { deviceClass: spec.deviceClass } : {}) };
}

/** The kernel for M > GEMV_MAX_ROWS rows: the register GEMM where the choice has one, else the tiled. */
export function gemmKernelFor(src: WeightSource, e: Epilogue, choice: LinearChoice, caps: Caps) {
  return choice.gemmRows ? gemmRowsKernel(src, e, choice.gemmRows, caps) : gemmKernel(src, e, choice.gemm, caps);
}
