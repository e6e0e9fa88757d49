// What the INT4 and dense linear layers share: the canonical reduction order over K, the fused
// epilogue, the GEMV "finish" kernel (sum split-K partials, then epilogue) and the generic GEMV
// kernel, parameterised by where the weights come from (a WeightSource); the tiled GEMM that
// follows the same order is in linearGemm.ts.
//
// Canonical order (batch invariance, DESIGN.md "Determinism"). For output (m, n):
//   K is cut into segments [s·L, min((s+1)·L, K)), L = segLen (a multiple of 32 and of the group
//   size; it follows from K and N only, never from M). Within a segment, starting from +0:
//     acc = fma(x[m,k], w[k,n], acc)   for k in order (dense weights; INT4 refines this per
//                                      group, see applyGroup below)
//   Segments combine in order, starting from +0:  t = t + acc_s,  s = 0, 1, ...
//   Then the epilogue (epilogueValue) on t.
// The GEMV writes each acc_s to a partials buffer and the finish kernel sums them; the GEMM keeps
// acc_s in registers and folds it into t at each segment boundary. Both execute the same f32
// operations in the same order, so a row's bits do not depend on which path or which M ran it.
import { exp, kernel, storage } from '../dsl/index.js';
import type { ArrayRef, BindingSpec, Caps, Kernel, KernelBuilder, Val, Var } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import type { WeightLayout } from './weightLayout.js';
import { foldedFinish, fusionBindings, fusionParams, fusionTag, fusionUniforms, type GemvFusion, normPrologue, xLoader } from './linearFusion.js';

export type OutDtype = 'f32' | 'f16';

/** Fused epilogue of a linear layer y = x·W (+ bias) (→ SiLU(gate)·up) (+ residual). */
export interface LinearEpilogue {
  /** + bias[n], f32. With gateUp the bias covers both halves: [2N]. */
  bias?: boolean;
  /** + residual[m, n], f32 [M, N], after the activation. */
  residual?: boolean;
  /** Weight columns [0, N) are the gate, [N, 2N) the up projection; y = SiLU(gate)·up, N columns. */
  gateUp?: boolean;
  /** f32 [M, N], or f16 packed two per u32 word [M, N/2] (N even). */
  out?: OutDtype;
}
export type Epilogue = Required<LinearEpilogue>;
export function fullEpilogue(e: LinearEpilogue = {}): Epilogue {
  return { bias: !!e.bias, residual: !!e.residual, gateUp: !!e.gateUp, out: e.out ?? 'f32' };
}
export function epilogueTag(e: Epilogue): string {
  return [e.bias ? 'bias' : '', e.gateUp ? 'gateup' : '', e.residual ? 'res' : '', e.out].filter(Boolean).join('_');
}

/** Every segment length is a multiple of this; GEMM tiles (tileK) divide it. */
export const K_GRANULE = 32;

/** Number of K segments for a segment length. */
export function segmentCount(K: number, segLen: number): number {
  return Math.ceil(K / segLen);
}

/**
 * Default segment length: enough segments that the GEMV keeps `parallelism` invocations busy,
 * where the columns alone do not. Depends on K, the weight's column count and the device only.
 * `granule` is the group size for INT4 (segments hold whole groups), K_GRANULE for dense.
 */
export function defaultSegmentLength(K: number, weightCols: number, colsPerInvocation: number, granule: number,
  caps: Caps, parallelism = parallelismOf(caps)): number {
  const granules = Math.ceil(K / granule);
  const invocations = Math.max(1, Math.ceil(weightCols / colsPerInvocation));
  // Segments of at least 128 k: shorter ones and the partials traffic outweighs the gain.
  const maxSplit = Math.max(1, Math.floor(granules / Math.ceil(128 / granule)));
  const split = Math.min(maxSplit, Math.max(1, Math.ceil(parallelism / invocations)), 64);
  return granule * Math.ceil(granules / split);
}

/**
 * Invocations a device wants in flight, guessed from its caps when the caller gives no hint: big
 * for GPUs with subgroups, small otherwise. The CPU executor reports GPU-like caps, so hosts pass
 * the hint (src/ops/linear.ts: linearHints).
 */
export function parallelismOf(caps: Caps): number {
  return caps.subgroups && caps.maxInvocationsPerWorkgroup >= 1024 ? 65536 : 1024;
}

export function checkSegmentLength(what: string, K: number, segLen: number, granule: number): void {
  if (!Number.isInteger(segLen) || segLen < granule || segLen % granule || segLen % K_GRANULE) {
    throw new Error(`${what}: segment length ${segLen} is not a positive multiple of ${granule} and ${K_GRANULE}`);
  }
  if (segLen > Math.ceil(K / granule) * granule) {
    throw new Error(`${what}: segment length ${segLen} is longer than K = ${K} rounded up to ${granule}`);
  }
}

// ---- epilogue ---------------------------------------------------------------------------------

export function silu(k: KernelBuilder, v: Val<'f32'>): Val<'f32'> {
  return v.div(k.f32(1).add(exp(v.neg())));
}

export interface EpilogueRefs {
  bias?: ArrayRef<'f32', boolean>;
  residual?: ArrayRef<'f32', boolean>;
  out: ArrayRef<'f32', true> | ArrayRef<'u32', true>;
}

/** The epilogue's arrays among a kernel's bindings; a missing `out` fails the kernel build. */
export function epilogueRefs(k: KernelBuilder, refs: Record<string, ArrayRef<any, boolean>>): EpilogueRefs {
  const out = refs.out?.writableRef() ?? k.fail("binding 'out' is missing");
  return { out, ...(refs.bias ? { bias: refs.bias } : {}), ...(refs.residual ? { residual: refs.residual } : {}) };
}

/** Epilogue bindings (bias, residual, out) with their lengths in terms of the uniforms M, N. */
export function epilogueBindings(e: Epilogue): Record<string, BindingSpec> {
  const b: Record<string, BindingSpec> = {};
  if (e.bias) b.bias = storage('f32', 'read', { shape: `[${e.gateUp ? '2 * N' : 'N'}]` });
  if (e.residual) b.residual = storage('f32', 'read', { shape: '[M, N]' });
  b.out = e.out === 'f16'
    ? storage('u32', 'read_write', { shape: '[M, N / 2]' })
    : storage('f32', 'read_write', { shape: '[M, N]' });
  return b;
}

/** The epilogue on a finished sum: every path calls this, so its arithmetic is identical. */
export function epilogueValue(k: KernelBuilder, e: Epilogue, refs: EpilogueRefs, N: Val<'u32'>,
  m: Val<'u32'>, n: Val<'u32'>, gate: Val<'f32'>, up?: Val<'f32'>): Val<'f32'> {
  let t = gate;
  let u = up;
  if (e.bias) {
    t = t.add(refs.bias!.at(n));
    if (e.gateUp) u = u!.add(refs.bias!.at(N.add(n)));
  }
  if (e.gateUp) t = silu(k, t).mul(u!);
  if (e.residual) t = t.add(refs.residual!.at(m.mul(N).add(n)));
  return t;
}

/**
 * Store finished values of row m at columns n, n+1, ... (`vals.length` of them, n even for f16;
 * for f16 vals come in pairs and each pair is one word written by this invocation alone).
 */
export function storeOutput(k: KernelBuilder, e: Epilogue, refs: EpilogueRefs, N: Val<'u32'>,
  m: Val<'u32'>, n: Val<'u32'>, vals: Val<'f32'>[]): void {
  const base = k.let('obase', m.mul(N).add(n));
  if (e.out === 'f16') {
    const out = refs.out as ArrayRef<'u32', true>;
    for (let p = 0; p < vals.length; p += 2) {
      out.set(base.div(2).add(p / 2), k.pack2x16float(k.vec('vec2<f32>', vals[p]!, vals[p + 1]!)));
    }
  } else {
    const out = refs.out as ArrayRef<'f32', true>;
    vals.forEach((v, j) => out.set(j ? base.add(j) : base, v));
  }
}

/**
 * A GEMM's finished row block: columns n0 … n0 + cols − 1 of row m (m < M checked by the caller),
 * from the sums gate(j) (and with gateUp up(j)) of block column j, stored in pairs for f16 output
 * (one word each) or singly, each guarded on its own — the epilogue reads bias and residual at n,
 * so nothing is computed for columns past N. Lets are named by `row` and the column.
 */
export function storeBlockRow(k: KernelBuilder, e: Epilogue, refs: EpilogueRefs, N: Val<'u32'>, m: Val<'u32'>, n0: Val<'u32'>,
  cols: number, row: number, gate: (j: number) => Val<'f32'>, up: (j: number) => Val<'f32'>): void {
  const step = e.out === 'f16' ? 2 : 1;
  for (let j = 0; j < cols; j += step) {
    const n = k.let(`n${row}_${j}`, j ? n0.add(j) : n0);
    k.if(n.lt(N), () => {
      const vals: Val<'f32'>[] = [];
      for (let c = 0; c < step; c++) {
        const nc = c ? k.let(`n${row}_${j + c}`, n.add(c)) : n;
        vals.push(k.let(`v${row}_${j + c}`, epilogueValue(k, e, refs, N, m, nc, gate(j + c), e.gateUp ? up(j + c) : undefined)));
      }
      storeOutput(k, e, refs, N, m, n, vals);
    });
  }
}

// ---- finish: sum the GEMV's segment partials, then the epilogue -------------------------------

export interface FinishParams { epilogue: Epilogue; workgroupSize?: number; caps?: Caps }

const kernelCache = new Map<string, Kernel<any, any>>();
/** Build once per parameter set: ops re-plan per call, kernels stay the same objects. */
export function memoKernel<K extends Kernel<any, any>>(key: string, build: () => K): K {
  let kern = kernelCache.get(key);
  if (!kern) kernelCache.set(key, (kern = build()));
  return kern as K;
}
export function capsKey(caps: Caps): string {
  return JSON.stringify(caps);
}

/** A quiet NaN: what a kernel writes where a mistake must show (the WGSL emitter keeps it legal). */
export function quietNaN(k: KernelBuilder): Val<'f32'> {
  return k.bitcast('f32', k.u32(0x7fc00000));
}

export function linearFinishKernel(p: FinishParams) {
  const e = p.epilogue, caps = p.caps ?? BASELINE_CAPS, wg = p.workgroupSize ?? 64;
  const cols = e.out === 'f16' ? 2 : 1;
  return memoKernel(`finish/${epilogueTag(e)}/${wg}/${capsKey(caps)}`, () => kernel({
    name: `linearFinish_${epilogueTag(e)}`,
    params: { ...e, workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      part: storage('f32', 'read', { shape: `[S, M, ${e.gateUp ? '2 * N' : 'N'}]` }),
      ...epilogueBindings(e),
    },
    uniforms: { M: 'u32', N: 'u32', S: 'u32' },
    grid: `[ceil(N / ${cols * wg}), M]`,
    body(k, b, { M, N, S }) {
      const bound: Record<string, ArrayRef<any, boolean>> = b;
      const refs = epilogueRefs(k, bound);
      const part = bound.part ?? k.fail("binding 'part' is missing");
      const n0 = k.let('n0', k.globalId.x.mul(cols));
      const m = k.let('m', k.workgroupId.y);
      k.if(n0.ge(N), () => k.return());
      const Nw = k.let('Nw', e.gateUp ? N.mul(2) : N);
      const vals: Val<'f32'>[] = [];
      for (let c = 0; c < cols; c++) {
        const n = k.let(`n${c}`, c ? n0.add(c) : n0);
        const sum = (tag: string, col: Val<'u32'>) => {
          const t = k.var(tag, 'f32', 0);
          k.for(`s_${tag}`, k.u32(0), S, (s) => t.set(t.add(part.at(s.mul(M).add(m).mul(Nw).add(col)))));
          return t;
        };
        const g = sum(`t${c}`, n);
        const up = e.gateUp ? sum(`u${c}`, N.add(n)) : undefined;
        vals.push(k.let(`v${c}`, epilogueValue(k, e, refs, N, m, n, g, up)));
      }
      storeOutput(k, e, refs, N, m, n0, vals);
    },
  }));
}

// ---- weight sources ---------------------------------------------------------------------------

/**
 * Where a linear layer's weights come from. A "unit" is `cols` consecutive weight columns read
 * together (an INT4 word: 8; an f16 word: 2; an f32: 1); weight column = unit·cols + j.
 */
export interface WeightSource {
  /** Name fragment for kernels, e.g. 'int4g128', 'f16'. */
  tag: string;
  cols: number;
  /** Segments hold whole granules (the group size for INT4). */
  granule: number;
  /** Weight bindings, lengths in terms of uniforms K and Nw (weight columns). */
  bindings: Record<string, BindingSpec>;
  /** Where the weight matrix's rows lie in memory (WeightLayout); the other tensors are row-major. */
  layout: WeightLayout;
  /** Row kk's part of an element index, shared by every unit of the row (see unitIndex). */
  row(k: KernelBuilder, u: SourceUniforms, kk: Val<'u32'>): Val<'u32'>;
  /** The `cols` stored values of `unit` in a row (f32): dense weights, or INT4 codes q. */
  values(k: KernelBuilder, refs: Record<string, ArrayRef<any, boolean>>, row: Val<'u32'>, unit: Val<'u32'>, tag: string, u: SourceUniforms): Val<'f32'>[];
  /**
   * The same weights read `width` units at a time with vector loads (8- or 16-byte): a source
   * whose unit is `width` of these units (cols·width columns) and whose bindings are vector
   * bindings. Rows of Nw columns must hold whole vectors (Nw a multiple of cols·width).
   */
  vectorized?(width: 2 | 4): WeightSource;
  /**
   * The same weights in units of 2 columns (an INT4 nibble pair: a quarter word), so a GEMV can
   * spread a row over 4× the invocations (GemvVariant.narrow); same values, same order per column.
   */
  narrowed?(): WeightSource;
  /** Grouped affine weights (INT4): W[k, n] = (q − z)·s with z, s per `size` rows. */
  group?: {
    size: number;
    /** Zero points and scales of the `cols` columns of `unit` in group `grp`. */
    params(k: KernelBuilder, refs: Record<string, ArrayRef<any, boolean>>, u: SourceUniforms, grp: Val<'u32'>,
      unit: Val<'u32'>, tag: string): { z: Val<'f32'>[]; s: Val<'f32'>[] };
  };
}
export interface SourceUniforms { K: Val<'u32'>; Nw: Val<'u32'> }


/*
 * Grouped sources (INT4) refine the canonical order. Within a group of g rows, from +0:
 *   sx = sx + x[m,k]          b = fma(x[m,k], f32(q[k,n]), b)        for k in order
 * then the group enters the segment sum as  acc = fma(fma(−z, sx, b), s, acc).
 * That is Σ x·(q − z)·s with the zero point and scale applied once per group instead of per
 * weight: per weight only unpack, convert and one fma remain (on the CPU executor 2.5x faster than
 * dequantizing each weight, and faster than a dense f32 layer).
 */
export function applyGroup(k: KernelBuilder, acc: Var<'f32'>, b: Val<'f32'>, sx: Val<'f32'>, z: Val<'f32'>, s: Val<'f32'>): void {
  acc.set(k.call('fma', [k.call<'f32'>('fma', [z.neg(), sx, b]), s, acc]));
}

/**
 * A grouped source's k range [from, to) (whole groups) in that order: per group, sx and the group
 * sums b from +0 through `accumulate` (one row block's fmas), then each b into acc (applyGroup).
 * The GEMV and the register GEMM share it, so their rows have the same bits.
 */
export function accumulateGroups(k: KernelBuilder, grp: NonNullable<WeightSource['group']>, refs: Record<string, ArrayRef<any, boolean>>,
  u: SourceUniforms, units: Val<'u32'>[], C: number, from: Val<'u32'>, to: Val<'u32'>,
  v: { acc: Var<'f32'>[][][]; bsum: Var<'f32'>[][][]; sx: Var<'f32'>[] },
  accumulate: (from: Val<'u32'>, to: Val<'u32'>, dst: Var<'f32'>[][][], sx: Var<'f32'>[]) => void): void {
  const { acc, bsum, sx } = v;
  k.for('gk', from, to, (gk) => {
    const g = k.let('grp', gk.div(grp.size));
    const params = units.map((unit, j) => grp.params(k, refs, u, g, unit, `${j}`));
    for (let r = 0; r < sx.length; r++) {
      sx[r]!.set(0);
      bsum[r]!.forEach((cs) => cs.forEach((v_) => v_.set(0)));
    }
    accumulate(gk, gk.add(grp.size), bsum, sx);
    for (let r = 0; r < sx.length; r++) {
      for (let j = 0; j < units.length; j++) {
        for (let c = 0; c < C; c++) applyGroup(k, acc[r]![j]![c]!, bsum[r]![j]![c]!, sx[r]!, params[j]!.z[c]!, params[j]!.s[c]!);
      }
    }
  }, grp.size);
}

// ---- GEMV -------------------------------------------------------------------------------------

export interface GemvVariant {
  /** Invocations per workgroup. */
  workgroupSize: number;
  /** Weight units per invocation (columns per invocation = units · source.cols). */
  units: number;
  /**
   * Units loaded together as one vector (2 or 4; default 1): an INT4 invocation with units 4,
   * vec 4 reads its 4 words of a row with one 16-byte load. `units` must be a multiple of it,
   * the source have a vector form and weight rows hold whole vectors (see checkGemvVariant).
   */
  vec?: 1 | 2 | 4;
  /**
   * k rows per loop step (1, 2, 4 or 8; default 1): the step's weight loads are independent and
   * in one block, so a GPU keeps unrollK loads per invocation in flight. Grouped
   * sources only (a group's rows are a whole number of steps); the same operations in the same
   * order, so the same bits.
   */
  unrollK?: 1 | 2 | 4 | 8;
  /**
   * Run on the source's narrowed form (units of 2 columns; INT4 only): 4× the invocations of one
   * word per invocation, for GPUs whose grid would otherwise leave SMs short of warps. Not with vec.
   */
  narrow?: boolean;
}

/** Throws naming the variant and what is wrong when it cannot run for this source, Nw and device. */
export function checkGemvVariant(what: string, v: GemvVariant, src: WeightSource, Nw: number, caps: Caps): void {
  const bad = (why: string) => new Error(`${what}: GEMV variant ${JSON.stringify(v)} ${why}`);
  if (!Number.isInteger(v.units) || v.units < 1) throw bad(`has units = ${v.units}, not a positive integer`);
  if (!Number.isInteger(v.workgroupSize) || v.workgroupSize < 1 || v.workgroupSize > caps.maxInvocationsPerWorkgroup) {
    throw bad(`has workgroupSize ${v.workgroupSize}, not 1..${caps.maxInvocationsPerWorkgroup} on this device`);
  }
  const w = v.vec ?? 1;
  if (w !== 1 && w !== 2 && w !== 4) throw bad(`has vec = ${String(w)}, not 1, 2 or 4`);
  const un = v.unrollK ?? 1;
  if (un !== 1 && un !== 2 && un !== 4 && un !== 8) throw bad(`has unrollK = ${String(un)}, not 1, 2, 4 or 8`);
  if (un > 1 && !src.group) throw bad(`unrolls k but weight source '${src.tag}' has no groups (K need not be a multiple of ${un})`);
  if (un > 1 && src.group!.size % un) throw bad(`unrolls k by ${un}, which does not divide the group size ${src.group!.size}`);
  if (v.narrow && (w > 1 || !src.narrowed)) throw bad(w > 1 ? 'is narrow and loads vectors' : `is narrow but weight source '${src.tag}' has no narrowed form`);
  if (w === 1) return;
  if (v.units % w) throw bad(`loads ${w} units per vector but has units = ${v.units}, not a multiple of ${w}`);
  if (!src.vectorized) throw bad(`loads vectors but weight source '${src.tag}' has no vector form`);
  if (Nw % (src.cols * w)) {
    throw bad(`loads ${w} units per vector but a weight row holds ${Nw / src.cols} units of ${src.cols} columns (Nw = ${Nw}), not a multiple of ${w}`);
  }
}
/** Whether the variant can run here (tuners skip the others). */
export function gemvVariantFits(v: GemvVariant, src: WeightSource, Nw: number, caps: Caps): boolean {
  try { checkGemvVariant('gemv', v, src, Nw, caps); return true; } catch { return false; }
}

/**
 * Partials of M ≤ 8 rows: invocation (unit block, segment) keeps rows·units·cols accumulators in
 * registers, reads each weight once for all rows, and writes its segment's sums to `part`
 * [S, rows, Nw]. No barriers and no shared memory: on the CPU executor a workgroup is a plain loop.
 * With `vec`, the kernel runs on the source's vector form (a unit of vec words, one load), and
 * writes its partials as vec4<f32>: the same f32 operations per column, so the same bits.
 */
export function gemvKernel(baseSrc: WeightSource, rows: number, v: GemvVariant, caps: Caps, fusion: GemvFusion = {}) {
  const { workgroupSize: wg } = v;
  const w = v.vec ?? 1, unrollK = v.unrollK ?? 1;
  if (w > 1 || unrollK > 1 || v.narrow) checkGemvVariant(`gemv_${baseSrc.tag}`, v, baseSrc, 0, caps); // Nw is a launch uniform: checked by the op
  const src = w > 1 ? baseSrc.vectorized!(w as 2 | 4) : v.narrow ? baseSrc.narrowed!() : baseSrc;
  const units = v.units / w;
  const C = src.cols;
  // Whole vec4s of partials per unit: every unit starts at a multiple of C in a row of Nw.
  const partVec = w > 1 && C % 4 === 0;
  // Nibble-pair units: one vec2 of partials each (lane-contiguous stores).
  const partPair = !partVec && !!v.narrow && C === 2;
  const ftag = fusionTag(fusion); // linearFusion.ts: prologue/epilogue the GEMV takes over
  return memoKernel(`gemv/${src.tag}/${rows}/${wg}/${units}/${unrollK}/${ftag}/${capsKey(caps)}`, () => kernel({
    name: `gemv_${src.tag}_r${rows}${unrollK > 1 ? `_k${unrollK}` : ''}${ftag ? `_${ftag}` : ''}`,
    params: { source: baseSrc.tag, rows, workgroupSize: wg, units: v.units, ...(w > 1 ? { vec: w } : {}), ...(v.narrow ? { narrow: true } : {}), ...(unrollK > 1 ? { unrollK } : {}), ...fusionParams(fusion) },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: `[${rows}, K]` }),
      ...src.bindings,
      part: partVec || partPair
        ? storage('f32', 'read_write', { vec: partVec ? 4 : 2, shape: `[ceil(K / segLen), ${rows}, Nw]` })
        : storage('f32', 'read_write', { shape: `[ceil(K / segLen), ${rows}, Nw]` }),
      ...fusionBindings(fusion),
    },
    uniforms: { K: 'u32', Nw: 'u32', segLen: 'u32', ...fusionUniforms(fusion) },
    grid: `[ceil(Nw / ${C * units * wg}), ceil(K / segLen)]`, // units of C columns, `units` per invocation
    body(k, b, uniforms) {
      const { K, Nw, segLen } = uniforms;
      const refs: Record<string, ArrayRef<any, boolean>> = b;
      const u = { K, Nw };
      const load = xLoader(k, fusion, refs, rows, wg, K, uniforms); // x, or gathered from the embedding table
      const normed = normPrologue(k, fusion, refs, rows, wg, K, uniforms, load); // before any return: it has barriers
      const nUnits = k.let('nUnits', Nw.add(C - 1).div(C));
      const u0 = k.let('u0', k.globalId.x.mul(units));
      k.if(u0.ge(nUnits), () => k.return());
      const seg = k.let('seg', k.workgroupId.y);
      const kBeg = k.let('kBeg', seg.mul(segLen));
      const kEnd = k.let('kEnd', k.call<'u32'>('min', [kBeg.add(segLen), K]));
      // Units past the end (when units ∤ nUnits) read the last unit and are not stored.
      const unitIdx = Array.from({ length: units }, (_, j) =>
        j ? k.let(`unit${j}`, k.call<'u32'>('min', [u0.add(j), nUnits.sub(1)])) : u0);
      const vars = (tag: string) => Array.from({ length: rows }, (_, r) =>
        unitIdx.map((_, j) => Array.from({ length: C }, (_, c) => k.var(`${tag}${r}_${j}_${c}`, 'f32', 0))));
      const acc = vars('acc');
      /**
       * For each k in [from, to): fma(x[r, k], value, dst[r][j][c]); sx[r] += x[r, k] when given.
       * unrollK rows per step (to − from is a multiple of it): all their loads first, then their
       * fmas row by row, in k order.
       */
      const accumulate = (from: Val<'u32'>, to: Val<'u32'>, dst: Var<'f32'>[][][], sx?: Var<'f32'>[]) => {
        k.for('kk', from, to, (kk0) => {
          const tag = (i: number) => (unrollK > 1 ? `_${i}` : '');
          const step = Array.from({ length: unrollK }, (_, i) => {
            const kk = i ? k.let(`kk${i}`, kk0.add(i)) : kk0;
            const row = k.let(`wrow${tag(i)}`, src.row(k, u, kk));
            const w = unitIdx.map((unit, j) => src.values(k, refs, row, unit, `${j}${tag(i)}`, u).map((val, c) => k.let(`w${j}_${c}${tag(i)}`, val)));
            return { kk, w };
          });
          for (const [i, { kk, w }] of step.entries()) {
            for (let r = 0; r < rows; r++) {
              const xv = k.let(`x${r}${tag(i)}`, normed ? normed(r, kk, () => load(r, kk)) : load(r, kk));
              if (sx) sx[r]!.set(sx[r]!.add(xv));
              for (let j = 0; j < units; j++) {
                for (let c = 0; c < C; c++) dst[r]![j]![c]!.set(k.call('fma', [xv, w[j]![c]!, dst[r]![j]![c]!]));
              }
            }
          }
        }, unrollK);
      };
      const grp = src.group;
      if (!grp) accumulate(kBeg, kEnd, acc);
      else {
        const bsum = vars('b');
        const sx = Array.from({ length: rows }, (_, r) => k.var(`sx${r}`, 'f32', 0));
        accumulateGroups(k, grp, refs, u, unitIdx, C, kBeg, kEnd, { acc, bsum, sx }, accumulate);
      }
      for (let j = 0; j < units; j++) {
        const store = () => {
          for (let r = 0; r < rows; r++) {
            if (partVec) {
              const part = refs.part as ArrayRef<'vec4<f32>', true>;
              const base = k.let(`pbase${r}_${j}`, seg.mul(rows).add(r).mul(Nw.div(4)).add(u0.add(j).mul(C / 4)));
              for (let c = 0; c < C; c += 4) {
                part.set(c ? base.add(c / 4) : base, k.vec('vec4<f32>', ...acc[r]![j]!.slice(c, c + 4)));
              }
              continue;
            }
            if (partPair) {
              const part = refs.part as ArrayRef<'vec2<f32>', true>;
              part.set(k.let(`pbase${r}_${j}`, seg.mul(rows).add(r).mul(Nw.div(2)).add(u0.add(j))), k.vec('vec2<f32>', acc[r]![j]![0]!, acc[r]![j]![1]!));
              continue;
            }
            const part = refs.part as ArrayRef<'f32', true>;
            const base = k.let(`pbase${r}_${j}`, seg.mul(rows).add(r).mul(Nw).add(u0.add(j).mul(C)));
            // Dense f32 has C = 1; the others have Nw a multiple of C, so only whole units exist.
            for (let c = 0; c < C; c++) part.set(c ? base.add(c) : base, acc[r]![j]![c]!);
          }
        };
        if (j) k.if(u0.add(j).lt(nUnits), store);
        else store();
      }
      foldedFinish(k, fusion, refs, { rows, block: units * C, partVec, partPair, Nw }, uniforms);
    },
  }));
}
