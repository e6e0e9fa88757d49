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
  defaultSegmentLength, fullEpilogue, type GemmVariant, type GemvVariant, K_GRANULE, type LinearEpilogue,
  type WeightSource,
} from './linearCommon.js';
import { GEMV_MAX_ROWS, type LinearChoice, type LinearChoiceInput, type LinearOp, linearOp, ts } from './linearOp.js';

export const INT4_GROUP_SIZES: readonly number[] = [32, 64, 128];
/** Nibble holding column offset j of a word: the inverse of AutoAWQ's order [0,2,4,6,1,3,5,7]. */
const NIBBLE_OF_COLUMN: readonly number[] = [0, 4, 1, 5, 2, 6, 3, 7];

/** The 8 values of a packed word, by column offset, as f32. */
function unpackNibbles(k: KernelBuilder, word: Val<'u32'>): Val<'f32'>[] {
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

export function int4Source(groupSize: number): WeightSource {
  const g = groupSize;
  return {
    tag: `int4g${g}`,
    cols: 8,
    granule: g,
    bindings: {
      qweight: storage('u32', 'read', { len: (u) => (u.K! * u.Nw!) / 8 }),
      qzeros: storage('u32', 'read', { len: (u) => ((u.K! / g) * u.Nw!) / 8 }),
      scales: storage('u32', 'read', { len: (u) => ((u.K! / g) * u.Nw!) / 2 }),
    },
    row: (k, u, kk) => kk.mul(u.Nw.div(8)),
    values(k, refs, row, unit, tag) {
      const qw = k.let(`qw${tag}`, (refs.qweight as ArrayRef<'u32', false>).at(row.add(unit)));
      return unpackNibbles(k, qw);
    },
    group: {
      size: g,
      params(k, refs, u, grp, unit, tag) {
        const zw = k.let(`zw${tag}`, (refs.qzeros as ArrayRef<'u32', false>).at(grp.mul(u.Nw.div(8)).add(unit)));
        const z = unpackNibbles(k, zw).map((v, j) => k.let(`z${tag}_${j}`, v));
        const sBase = k.let(`sb${tag}`, grp.mul(u.Nw.div(2)).add(unit.mul(4)));
        const s = unpackScales(k, refs.scales as ArrayRef<'u32', false>, sBase, tag).map((v, j) => k.let(`s${tag}_${j}`, v));
        return { z, s };
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

/** GEMV schedules: invocations per workgroup × words (8 columns each) per invocation. */
export const INT4_GEMV_SPACE: GemvVariant[] = [32, 64, 128, 256].flatMap((workgroupSize) =>
  [1, 2, 4].map((units) => ({ workgroupSize, units })));

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

/** Default variants for a shape and device: big tiles where the device allows. */
export function defaultInt4Choice(K: number, Nw: number, groupSize: number, caps: Caps, parallelism?: number): LinearChoice {
  const big = caps.maxWorkgroupStorage >= 32 * 1024 && caps.maxInvocationsPerWorkgroup >= 256;
  const gemv: GemvVariant = { workgroupSize: 64, units: 1 };
  return {
    segLen: defaultSegmentLength(K, Nw, 8 * gemv.units, groupSize, caps, parallelism),
    gemv: Array.from({ length: GEMV_MAX_ROWS }, () => gemv),
    gemm: big ? { tileM: 64, tileN: 128, tileK: 32, blockM: 4, blockN: 8 } : { tileM: 32, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
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
  const g = c.groupSize;
  return linearOp({
    name: 'int4Linear',
    K: c.K,
    N: c.N,
    epilogue: e,
    caps: c.caps ?? BASELINE_CAPS,
    source: int4Source(g),
    weightTensors: (K, Nw) => ({
      qweight: ts('u32', [K, Nw / 8], e.gateUp ? '[K, 2N/8]' : '[K, N/8]'),
      qzeros: ts('u32', [K / g, Nw / 8], e.gateUp ? '[K/g, 2N/8]' : '[K/g, N/8]'),
      scales: ts('u32', [K / g, Nw / 2], e.gateUp ? '[K/g, 2N/2] (f16 pairs)' : '[K/g, N/2] (f16 pairs)'),
    }),
    defaults: (K, Nw, caps, par) => defaultInt4Choice(K, Nw, g, caps, par),
    choice: c.choice,
    parallelism: c.parallelism,
  });
}
