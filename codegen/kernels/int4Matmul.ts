// W4A16 linear layer reading the AutoAWQ GEMM layout exactly as checkpoints store it:
//   qweight [K, Nw/8] words (int32 on disk, bound as u32: the same bits), nibble i of word (k, c)
//     holds column 8c + [0,2,4,6,1,3,5,7][i];
//   qzeros [K/g, Nw/8] words, same interleave;
//   scales f16 [K/g, Nw], packed two per u32 word (even column in the low half);
//   W[k, n] = (q − z) · s.
// Activations f32 [M, K]; accumulation f32, with the zero point and scale applied once per group
// (see linearCommon: Σ_group (Σ x·q − z·Σ x)·s). Entry point: int4Linear(config) → LinearOp.
import type { ArrayRef, Caps, KernelBuilder, Val } from '../dsl/index.js';
import { storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import {
  defaultSegmentLength, fullEpilogue, type GemvVariant, K_GRANULE, type LinearEpilogue, parallelismOf, type WeightSource,
} from './linearCommon.js';
import type { GemmVariant } from './linearGemm.js';
import { cpuGemmRows } from './linearGemmRows.js';
import { layoutTag, rowIndex, stripsFit, unitIndex, type WeightLayout } from './weightLayout.js';
import { type DeviceClass, aheadOfTimeClass } from './deviceProfile.js';
import { GEMV_MAX_ROWS, type LinearChoice, type LinearChoiceInput, type LinearOp, linearOp } from './linearOp.js';

export const INT4_GROUP_SIZES: readonly number[] = [32, 64, 128];
/** Nibble holding column offset j of a word: the inverse of AutoAWQ's order [0,2,4,6,1,3,5,7]. */
const NIBBLE_OF_COLUMN: readonly number[] = [0, 4, 1, 5, 2, 6, 3, 7];

/**
 * How a nibble becomes a number. 'convert': shift, mask, integer → float per nibble. 'magic' (the
 * Marlin / FasterTransformer trick): one and/or per nibble pair makes two f16 of value 1024 + q —
 * bits 0x6400 | q, exact since f16 has 10 mantissa bits — then 1024 is subtracted (exact); the DSL's
 * nibblePairValues (CUDA: one LOP3 and one HSUB2 per pair):
 * nibbles i and i + 4 of a word (bits 4i and 4i + 16) are columns 2i and 2i + 1 in AutoAWQ's
 * order, so each pair is two adjacent columns. Plain bit operations on every target, no integer →
 * float conversion; the same values, so the same bits downstream.
 */
export type Int4Dequant = 'convert' | 'magic';

/** The 8 values of a packed word, by column offset, as f32. */
function unpackNibbles(k: KernelBuilder, word: Val<'u32'>, dequant: Int4Dequant = 'convert'): Val<'f32'>[] {
  if (dequant === 'magic') {
    return [0, 1, 2, 3].flatMap((i) => {
      const pair = k.let(`nv${i}`, k.nibblePairValues(i ? word.shr(4 * i) : word));
      return [pair.x, pair.y];
    });
  }
  return NIBBLE_OF_COLUMN.map((nib) => {
    const sh = nib * 4;
    const bits = sh === 0 ? word.band(15) : sh === 28 ? word.shr(28) : word.shr(sh).band(15);
    return k.f32(bits);
  });
}

/** The 8 scales of one word column: 4 packed words from rowBase. */
function unpackScales(k: KernelBuilder, scales: ArrayRef<'u32', boolean>, rowBase: Val<'u32'>, tag: string): Val<'f32'>[] {
  const s: Val<'f32'>[] = [];
  for (let p = 0; p < 4; p++) {
    const pair = k.let(`sp${tag}_${p}`, k.unpack2x16float(scales.at(p ? rowBase.add(p) : rowBase)));
    s.push(pair.x, pair.y);
  }
  return s;
}

// Shapes in u32 words: 8 nibbles per qweight/qzeros word, two f16 scales per word.
const QWEIGHT = '[K, Nw / 8]';
const qzerosShape = (g: number) => `[K / ${g}, Nw / 8]`;
const scalesShape = (g: number) => `[K / ${g}, Nw / 2]`;

/** The AutoAWQ tensors as stored, read a word at a time (the scalar and nibble-pair sources). */
function int4WordBindings(g: number) {
  return {
    qweight: storage('u32', 'read', { shape: QWEIGHT }),
    qzeros: storage('u32', 'read', { shape: qzerosShape(g) }),
    scales: storage('u32', 'read', { shape: scalesShape(g) }),
  };
}

/** The AutoAWQ source; `dequant` per Int4Dequant (tag int4g{g}, or int4g{g}m for 'magic'). */
export function int4Source(groupSize: number, dequant: Int4Dequant = 'convert', layout: WeightLayout = 'rows'): WeightSource {
  const g = groupSize;
  const unpack = (k: KernelBuilder, word: Val<'u32'>) => unpackNibbles(k, word, dequant);
  return {
    tag: `int4g${g}${dequant === 'magic' ? 'm' : ''}${layoutTag(layout)}`,
    cols: 8,
    granule: g,
    layout,
    bindings: int4WordBindings(g),
    vectorized: (width) => int4VectorSource(g, width, dequant, layout),
    narrowed: () => int4PairSource(g, dequant, layout),
    row: (k, u, kk) => rowIndex(layout, kk, () => u.Nw.div(8), 1),
    values(k, refs, row, unit, tag, u) {
      const qw = k.let(`qw${tag}`, (refs.qweight as ArrayRef<'u32', false>).at(unitIndex(layout, u, row, unit, 1)));
      return unpack(k, qw);
    },
    group: {
      size: g,
      params(k, refs, u, grp, unit, tag) {
        const zw = k.let(`zw${tag}`, (refs.qzeros as ArrayRef<'u32', false>).at(grp.mul(u.Nw.div(8)).add(unit)));
        const z = unpack(k, zw).map((v, j) => k.let(`z${tag}_${j}`, v));
        const sBase = k.let(`sb${tag}`, grp.mul(u.Nw.div(2)).add(unit.mul(4)));
        const s = unpackScales(k, refs.scales as ArrayRef<'u32', false>, sBase, tag).map((v, j) => k.let(`s${tag}_${j}`, v));
        return { z, s };
      },
    },
  };
}

/** The two values of nibble pair `pair` (nibbles pair and pair + 4: columns 2·pair, 2·pair + 1) of a word. */
function unpackPair(k: KernelBuilder, word: Val<'u32'>, pair: Val<'u32'>, dequant: Int4Dequant): Val<'f32'>[] {
  if (dequant === 'magic') {
    const v = k.let('nv', k.nibblePairValues(word.shr(pair.mul(4))));
    return [v.x, v.y];
  }
  const bits = k.let('nib', word.shr(pair.mul(4)).band(0x000f000f));
  return [k.f32(bits.band(15)), k.f32(bits.shr(16))];
}

/**
 * The INT4 source in units of one nibble pair (2 adjacent columns, a quarter word): unit u is pair
 * u & 3 of word u >> 2; its two scales are one f16 pair, so a warp's scale loads are lane-
 * contiguous words. Four invocations share each weight word (one sector per warp request).
 */
function int4PairSource(g: number, dequant: Int4Dequant, layout: WeightLayout): WeightSource {
  return {
    tag: `int4g${g}${dequant === 'magic' ? 'm' : ''}p${layoutTag(layout)}`,
    cols: 2,
    granule: g,
    layout,
    bindings: int4WordBindings(g),
    row: (_k, u, kk) => rowIndex(layout, kk, () => u.Nw.div(8), 1),
    values(k, refs, row, unit, tag, u) {
      const qw = k.let(`qw${tag}`, (refs.qweight as ArrayRef<'u32', false>).at(unitIndex(layout, u, row, unit.shr(2), 1)));
      return unpackPair(k, qw, unit.band(3), dequant);
    },
    group: {
      size: g,
      params(k, refs, u, grp, unit, tag) {
        const zw = k.let(`zw${tag}`, (refs.qzeros as ArrayRef<'u32', false>).at(grp.mul(u.Nw.div(8)).add(unit.shr(2))));
        const z = unpackPair(k, zw, unit.band(3), dequant).map((v, j) => k.let(`z${tag}_${j}`, v));
        const sp = k.let(`sp${tag}`, k.unpack2x16float((refs.scales as ArrayRef<'u32', false>).at(grp.mul(u.Nw.div(2)).add(unit))));
        return { z, s: [k.let(`s${tag}_0`, sp.x), k.let(`s${tag}_1`, sp.y)] };
      },
    },
  };
}

/**
 * The INT4 source read `w` words at a time: a unit is w consecutive words (8w columns) of a row,
 * one vecW<u32> load of qweight per row and of qzeros per group; the unit's 4w scale words are w
 * vec4<u32> loads (scales are always read as vec4: a row of Nw/2 words holds Nw/8 of them).
 * Columns come out in the scalar source's order (word j of the unit → columns 8j..8j+7).
 */
function int4VectorSource(g: number, w: 2 | 4, dequant: Int4Dequant, layout: WeightLayout): WeightSource {
  const words = (k: KernelBuilder, v: Val<'vec2<u32>'> | Val<'vec4<u32>'>) =>
    Array.from({ length: w }, (_, j) => unpackNibbles(k, v.at(j) as Val<'u32'>, dequant)).flat();
  return {
    tag: `int4g${g}${dequant === 'magic' ? 'm' : ''}v${w}${layoutTag(layout)}`,
    cols: 8 * w,
    granule: g,
    layout,
    bindings: {
      qweight: storage('u32', 'read', { vec: w, shape: QWEIGHT }),
      qzeros: storage('u32', 'read', { vec: w, shape: qzerosShape(g) }),
      scales: storage('u32', 'read', { vec: 4, shape: scalesShape(g) }),
    },
    row: (k, u, kk) => rowIndex(layout, kk, () => u.Nw.div(8 * w), w),
    values(k, refs, row, unit, tag, u) {
      const qw = k.let(`qw${tag}`, (refs.qweight as ArrayRef<'vec4<u32>', false>).at(unitIndex(layout, u, row, unit, w)));
      return words(k, qw);
    },
    group: {
      size: g,
      params(k, refs, u, grp, unit, tag) {
        const zw = k.let(`zw${tag}`, (refs.qzeros as ArrayRef<'vec4<u32>', false>).at(grp.mul(u.Nw.div(8 * w)).add(unit)));
        const z = words(k, zw).map((v, j) => k.let(`z${tag}_${j}`, v));
        const scales = refs.scales as ArrayRef<'vec4<u32>', false>;
        const sBase = k.let(`sb${tag}`, grp.mul(u.Nw.div(8)).add(unit.mul(w)));
        const s: Val<'f32'>[] = [];
        for (let p = 0; p < w; p++) {
          const quad = k.let(`sq${tag}_${p}`, scales.at(p ? sBase.add(p) : sBase));
          for (let h = 0; h < 4; h++) {
            const pair = k.let(`sp${tag}_${p}_${h}`, k.unpack2x16float(quad.at(h)));
            s.push(pair.x, pair.y);
          }
        }
        return { z, s: s.map((v, j) => k.let(`s${tag}_${j}`, v)) };
      },
    },
  };
}

export interface Int4LinearConfig extends LinearEpilogue {
  /** Input features (rows of the weight). */
  K: number;
  /** Output features (with gateUp: of each half; the weight has 2N columns). */
  N: number;
  groupSize: number;
  caps?: Caps;
  /** Variant choice (e.g. from the tune cache); missing parts use defaultInt4Choice. */
  choice?: LinearChoiceInput;
  /** Invocations the device wants in flight (default split-K); guessed from caps if absent. */
  parallelism?: number;
  /** What runs the kernels (Device.profile.deviceClass; default GEMV schedule); aheadOfTimeClass(caps) if absent. */
  deviceClass?: DeviceClass;
  /** qweight's layout: 'strips' where rows cut into whole strips (int4WeightLayout), else 'rows'; default 'rows'. */
  weightLayout?: WeightLayout;
}

/** The qweight layout an INT4 op with this config uses: 'strips' only where asked and the rows fit. */
export function int4WeightLayout(Nw: number, asked: WeightLayout = 'rows'): WeightLayout {
  return asked === 'strips' && stripsFit(Nw / 8) ? 'strips' : 'rows';
}

/** Throws naming the parameter when the configuration cannot be an AWQ GEMM layer. */
export function checkInt4Config(c: Int4LinearConfig): void {
  const what = 'int4Linear';
  if (!Number.isInteger(c.K) || c.K < 1) throw new Error(`${what}: K = ${c.K} is not a positive integer`);
  if (!Number.isInteger(c.N) || c.N < 1) throw new Error(`${what}: N = ${c.N} is not a positive integer`);
  if (!INT4_GROUP_SIZES.includes(c.groupSize)) throw new Error(`${what}: groupSize ${c.groupSize} is not one of ${INT4_GROUP_SIZES.join(', ')}`);
  if (c.K % c.groupSize) throw new Error(`${what}: K = ${c.K} is not a multiple of groupSize ${c.groupSize} (qzeros/scales have K/g rows)`);
  if (c.N % 8) throw new Error(`${what}: N = ${c.N} is not a multiple of 8 (qweight packs 8 columns per int32: [K, N/8])`);
}

// ---- variants ---------------------------------------------------------------------------------

/**
 * GEMV schedules: invocations per workgroup × words (8 columns each) per invocation, scalar
 * loads, or one vector load of all the words (vec 2: 8-byte, vec 4: 16-byte loads; these need
 * N/8 a multiple of vec: see gemvVariantFits); and, for the smaller workgroups, k unrolled.
 */
export const INT4_GEMV_SPACE: GemvVariant[] = [32, 64, 128, 256].flatMap((workgroupSize) => [
  ...[1, 2, 4].map((units) => ({ workgroupSize, units })),
  { workgroupSize, units: 2, vec: 2 as const },
  { workgroupSize, units: 4, vec: 4 as const },
  // Nibble pairs (2 columns) per invocation: 4× the invocations, for GPUs short of warps.
  { workgroupSize, units: 1, narrow: true },
  ...(workgroupSize >= 128 ? [{ workgroupSize, units: 1, narrow: true, unrollK: 8 as const }] : []),
  ...(workgroupSize <= 64 ? [
    { workgroupSize, units: 1, unrollK: 2 as const },
    { workgroupSize, units: 2, vec: 2 as const, unrollK: 2 as const },
    { workgroupSize, units: 2, vec: 2 as const, unrollK: 4 as const },
    { workgroupSize, units: 4, vec: 4 as const, unrollK: 4 as const },
    { workgroupSize, units: 1, unrollK: 8 as const },
    { workgroupSize, units: 2, vec: 2 as const, unrollK: 8 as const },
    { workgroupSize, units: 4, vec: 4 as const, unrollK: 8 as const },
  ] : []),
]);

/** GEMM tilings (tileN a multiple of 16 so gate/up halves hold whole words). */
export const INT4_GEMM_SPACE: GemmVariant[] = [
  { tileM: 32, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
  { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 },
  { tileM: 64, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
  { tileM: 32, tileN: 32, tileK: 32, blockM: 2, blockN: 4 },
  { tileM: 16, tileN: 64, tileK: 32, blockM: 2, blockN: 4 },
  { tileM: 64, tileN: 128, tileK: 32, blockM: 4, blockN: 8 },
  { tileM: 128, tileN: 128, tileK: 16, blockM: 8, blockN: 8 },
];

/** Split-K candidates as segment lengths: whole groups, 1..64 segments. */
export function int4SegmentSpace(K: number, groupSize: number): number[] {
  const groups = K / groupSize;
  const out = new Set<number>();
  for (const split of [1, 2, 4, 8, 16, 32, 64]) {
    if (split > groups) break;
    const len = groupSize * Math.ceil(groups / split);
    if (len % K_GRANULE === 0) out.add(len);
  }
  return [...out];
}

/**
 * Default GEMV schedule for M rows, where the row length allows (measurements and the H200
 * reasoning: bench/notes/int4.md). Vector loads: 16-byte (4 words per invocation) for M ≤ 2 and
 * 8-byte (2 words) for M ≤ 4 — with 2 accumulators per column and row, more would spill
 * registers (nvcc, sm_90a) — then one word. Devices that want GPU-scale parallelism also unroll
 * k by 8: a decode GEMV's time there is about (segment rows / rows in flight) × memory latency,
 * and nvcc keeps the 8 loads together without spilling (≤ 244 registers). The CPU executor, whose
 * caps look like a GPU's but whose host hint (linearHints) asks for far less, does not unroll (it
 * costs it 5–25 %). Software rasterisers (llvmpipe): 8-byte loads and k unrolled by 4 (M ≤ 4)
 * or 2, 1.2–1.65× faster than one word per invocation on llvmpipe.
 */
export function defaultInt4Gemv(M: number, Nw: number, caps: Caps, parallelism = parallelismOf(caps),
  deviceClass: DeviceClass = aheadOfTimeClass(caps)): GemvVariant {
  const v4 = Nw % 32 === 0, v2 = Nw % 16 === 0;
  if (deviceClass === 'software-gpu') return v2 ? { workgroupSize: 64, units: 2, vec: 2, unrollK: M <= 4 ? 4 : 2 } : { workgroupSize: 64, units: 1 };
  const k = parallelism >= 65536 ? { unrollK: 8 as const } : {};
  // GPUs, every GEMV row count: one nibble pair per invocation in 256-invocation workgroups —
  // Llama-3-8B's 4096² layer then launches 15.5 warps per SM (one word per invocation: 3.9; four:
  // 0.97), the scale loads are lane-contiguous words, and registers stay low (ptxas, M = 8: 80
  // against 254 for one word per invocation). Same per-column arithmetic, so the same bits.
  if (deviceClass === 'gpu' && parallelism >= 65536) return { workgroupSize: 256, units: 1, narrow: true, unrollK: 8 };
  if (M <= 2 && v4) return { workgroupSize: 32, units: 4, vec: 4, ...k };
  if (M <= 4 && v2) return { workgroupSize: 64, units: 2, vec: 2, ...k };
  return { workgroupSize: 64, units: 1, ...k };
}

/** Default variants for a shape and device: big tiles where the device allows. */
export function defaultInt4Choice(K: number, Nw: number, groupSize: number, caps: Caps, parallelism?: number,
  deviceClass?: DeviceClass): LinearChoice {
  const big = caps.maxWorkgroupStorage >= 32 * 1024 && caps.maxInvocationsPerWorkgroup >= 256;
  const gemv = Array.from({ length: GEMV_MAX_ROWS }, (_, i) => defaultInt4Gemv(i + 1, Nw, caps, parallelism, deviceClass));
  return {
    // Split-K as for one word (8 columns) per invocation, whatever the schedule: numerics stay
    // what they were before vector loads, and the same for every M.
    segLen: defaultSegmentLength(K, Nw, 8, groupSize, caps, parallelism),
    gemv,
    gemm: big ? { tileM: 64, tileN: 128, tileK: 32, blockM: 4, blockN: 8 } : { tileM: 32, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
    ...(deviceClass === 'cpu' ? { gemmRows: cpuGemmRows('int4') } : {}),
    finishWorkgroupSize: 64,
  };
}

/**
 * y[M, N] = x[M, K] · dequant(W) with the fused epilogue; GEMV (split-K + finish) for
 * M ≤ GEMV_MAX_ROWS, tiled GEMM above, bit-identical per row either way.
 * Bindings: x f32 [M, K], qweight u32 [K, Nw/8], qzeros u32 [K/g, Nw/8], scales u32 [K/g, Nw/2],
 * bias f32 [Nw] (optional), residual f32 [M, N] (optional), out f32 [M, N] | u32 [M, N/2].
 */
export function int4Linear(c: Int4LinearConfig): LinearOp {
  checkInt4Config(c);
  const e = fullEpilogue(c);
  if (e.out === 'f16' && c.N % 2) throw new Error(`int4Linear: N = ${c.N} must be even for f16 output`);
  const g = c.groupSize, caps = c.caps ?? BASELINE_CAPS;
  return linearOp({
    name: 'int4Linear',
    K: c.K,
    N: c.N,
    epilogue: e,
    caps,
    // GPUs take the magic-number dequant (no integer → float conversions); the CPU executor and
    // software rasterisers keep shift / convert, cheaper there (f16 unpacking is a table lookup).
    source: int4Source(g, (c.deviceClass ?? aheadOfTimeClass(caps)) === 'gpu' ? 'magic' : 'convert',
      int4WeightLayout(c.gateUp ? 2 * c.N : c.N, c.weightLayout)),
    defaults: (K, Nw, caps, par, cls) => defaultInt4Choice(K, Nw, g, caps, par, cls),
    choice: c.choice,
    parallelism: c.parallelism,
    deviceClass: c.deviceClass,
  });
}
