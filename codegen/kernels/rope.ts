// Rotary position embedding on q [T, Hq, D] and k [T, Hk, D] with per-token positions.
// Layouts: 'halves' — pairs (i, i + D/2), rotate-half, as Hugging Face Llama stores q/k;
// 'interleaved' — pairs (2i, 2i + 1), as llama2.c and Meta's checkpoints.
// Angles come from a cos/sin table [maxPositions, D/2, 2] computed on the host in float64
// (ropeTable: theta, Llama-3 scaling), as vLLM's cos_sin_cache: an f32 angle pos·θᵢ loses
// ~pos·2⁻²⁴ radians (≈ 6e-3 at 10⁵), and GPU sin/cos are poor on large arguments. A position
// outside the table writes NaN, so the mistake shows instead of rotating by a wrong angle.
import type { ArrayRef, Caps, KernelBuilder, Val } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';
import { capsKey, memoKernel, quietNaN } from './linearCommon.js';

export type RopeLayout = 'halves' | 'interleaved';

/** Llama-3 rope_scaling (rope_type "llama3"). */
export interface Llama3Scaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface RopeFrequencies {
  headDim: number;
  /** rope_theta (base). */
  theta: number;
  scaling?: Llama3Scaling;
  /** Linear position interpolation (rope_scaling type "linear"): every frequency ÷ factor. */
  linearFactor?: number;
}

/** θᵢ = theta^(−2i/D), i < D/2, with Llama-3 scaling applied, in float64. */
export function ropeInvFreq(f: RopeFrequencies): Float64Array {
  const { headDim: D, theta } = f;
  if (!Number.isInteger(D) || D < 2 || D % 2) throw new Error(`rope: headDim ${D} is not a positive even integer`);
  if (!(theta > 0)) throw new Error(`rope: theta ${theta} is not positive`);
  const inv = new Float64Array(D / 2);
  for (let i = 0; i < D / 2; i++) inv[i] = 1 / theta ** ((2 * i) / D);
  if (f.linearFactor !== undefined) {
    if (!(f.linearFactor > 0)) throw new Error(`rope: linear scaling factor ${f.linearFactor} is not positive`);
    for (let i = 0; i < inv.length; i++) inv[i] = inv[i]! / f.linearFactor;
  }
  const s = f.scaling;
  if (!s) return inv;
  const { factor, lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositionEmbeddings: old } = s;
  if (!(factor > 0) || !(lo > 0) || !(hi > lo) || !(old > 0)) {
    throw new Error(`rope: llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0; got ${JSON.stringify(s)}`);
  }
  const lowWavelen = old / lo, highWavelen = old / hi;
  for (let i = 0; i < inv.length; i++) {
    const wavelen = (2 * Math.PI) / inv[i]!;
    if (wavelen < highWavelen) continue; // high frequencies: unchanged
    if (wavelen > lowWavelen) { inv[i] = inv[i]! / factor; continue; } // low: scaled down
    const smooth = (old / wavelen - lo) / (hi - lo);
    inv[i] = (1 - smooth) * (inv[i]! / factor) + smooth * inv[i]!;
  }
  return inv;
}

/** cos/sin table [maxPositions, D/2, 2] (f32), angles pos·θᵢ evaluated in float64. */
export function ropeTable(f: RopeFrequencies, maxPositions: number): Float32Array {
  if (!Number.isInteger(maxPositions) || maxPositions < 1) throw new Error(`rope: maxPositions ${maxPositions} is not a positive integer`);
  const inv = ropeInvFreq(f);
  const half = inv.length;
  const t = new Float32Array(maxPositions * half * 2);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * inv[i]!;
      t[(p * half + i) * 2] = Math.cos(a);
      t[(p * half + i) * 2 + 1] = Math.sin(a);
    }
  }
  return t;
}

/**
 * cos and sin of pair i at position p from the table [maxPos, D/2, 2]; NaN for a position outside
 * the table, so the mistake shows instead of rotating by a wrong angle.
 */
export function ropeCosSin(kb: KernelBuilder, table: ArrayRef<'f32', boolean>, p: Val<'u32'>, i: Val<'u32'>,
  half: Val<'u32'>, maxPos: Val<'u32'>): [Val<'f32'>, Val<'f32'>] {
  const c = kb.var('c', 'f32', 0), s = kb.var('s', 'f32', 0);
  kb.if(p.lt(maxPos), () => {
    const at = kb.let('tab', p.mul(half).add(i).mul(2));
    c.set(table.at(at));
    s.set(table.at(at.add(1)));
  }, () => {
    const nan = kb.let('nan', quietNaN(kb));
    c.set(nan);
    s.set(nan);
  });
  return [c, s];
}

/** The elements (i0, i1) that rotation pair i of a head of 2·half joins: (i, i + half) or (2i, 2i + 1). */
export function ropePairElements(layout: RopeLayout, i: Val<'u32'>, half: Val<'u32'> | number): [Val<'u32'>, Val<'u32'>] {
  return layout === 'halves' ? [i, i.add(half)] : [i.mul(2), i.mul(2).add(1)];
}

/** The pair (x0, x1) rotated by the angle whose cosine and sine are c and s. */
export function ropeRotatePair(x0: Val<'f32'>, x1: Val<'f32'>, c: Val<'f32'>, s: Val<'f32'>): [Val<'f32'>, Val<'f32'>] {
  return [x0.mul(c).sub(x1.mul(s)), x1.mul(c).add(x0.mul(s))];
}

/** Names of the lets ropeRotatedElement makes (each kernel keeps its own); `second` unnamed: inline. */
export interface RopeElementNames { second?: string; i: string; y0: string; y1: string }

/**
 * Element e of a head of 2·half rotated to position p: the pair e belongs to, its two elements
 * (i0, i1) read by `load`, rotated with the table's angle, and e's half of the result. For kernels
 * that own single elements (the fused QKV finishes), where rope and ropeQkv own whole pairs.
 */
export function ropeRotatedElement(k: KernelBuilder, layout: RopeLayout, half: number, e: Val<'u32'>,
  load: (i0: Val<'u32'>, i1: Val<'u32'>) => [Val<'f32'>, Val<'f32'>],
  angle: { table: ArrayRef<'f32', boolean>; p: Val<'u32'>; maxPos: Val<'u32'> }, names: RopeElementNames): Val<'f32'> {
  const isSecond = layout === 'halves' ? e.ge(half) : e.rem(2).eq(1);
  const second = names.second === undefined ? isSecond : k.let(names.second, isSecond);
  const i = k.let(names.i, layout === 'halves' ? k.select(second, e.sub(half), e) : e.div(2));
  const [x0, x1] = load(...ropePairElements(layout, i, half));
  const [c, s] = ropeCosSin(k, angle.table, angle.p, i, k.u32(half), angle.maxPos);
  const [r0, r1] = ropeRotatePair(x0, x1, c, s);
  const y0 = k.let(names.y0, r0), y1 = k.let(names.y1, r1);
  return k.select(second, y1, y0);
}

export interface RopeParams {
  layout: RopeLayout;
  /** true: rotate q and k in place; false: write qOut and kOut. */
  inPlace?: boolean;
  workgroupSize?: number;
  caps?: Caps;
}

export const ROPE_WORKGROUP_SIZES: readonly number[] = [32, 64, 128, 256];

/**
 * Bindings: q f32 [T, Hq, D], k f32 [T, Hk, D], pos u32 [T], table f32 [maxPos, D/2, 2]
 * (+ qOut, kOut when not in place). Uniforms T, Hq, Hk, D, maxPos. One invocation per pair.
 */
export function rope(p: RopeParams) {
  const caps = p.caps ?? BASELINE_CAPS;
  const wg = p.workgroupSize ?? 64;
  const inPlace = p.inPlace ?? true;
  const layout = p.layout;
  if (layout !== 'halves' && layout !== 'interleaved') throw new Error(`rope: layout '${layout}' is not 'halves' or 'interleaved'`);
  const acc = inPlace ? 'read_write' as const : 'read' as const;
  return memoKernel(`rope/${layout}/${inPlace}/${wg}/${capsKey(caps)}`, () => kernel({
    name: `rope_${layout}${inPlace ? '' : '_out'}`,
    params: { layout, inPlace, workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      q: storage('f32', acc, { shape: '[T, Hq, D]' }),
      k: storage('f32', acc, { shape: '[T, Hk, D]' }),
      ...(inPlace ? {} : {
        qOut: storage('f32', 'read_write', { shape: '[T, Hq, D]' }),
        kOut: storage('f32', 'read_write', { shape: '[T, Hk, D]' }),
      }),
      pos: storage('u32', 'read', { shape: '[T]' }),
      table: storage('f32', 'read', { shape: '[maxPos, D]' }),
    },
    uniforms: { T: 'u32', Hq: 'u32', Hk: 'u32', D: 'u32', maxPos: 'u32' },
    grid: `[ceil((Hq + Hk) * D / ${2 * wg}), T]`,
    body(kb, b, { Hq, Hk, D, maxPos }) {
      const half = kb.let('half', D.div(2));
      const idx = kb.let('idx', kb.globalId.x);
      const t = kb.let('t', kb.workgroupId.y);
      const h = kb.let('h', idx.div(half));
      const i = kb.let('i', idx.rem(half));
      kb.if(h.ge(Hq.add(Hk)), () => kb.return());
      const [c, s] = ropeCosSin(kb, b.table, kb.let('p', b.pos.at(t)), i, half, maxPos);
      const [i0, i1] = ropePairElements(layout, i, half);
      type Ref = ArrayRef<'f32', true>;
      const rotate = (src: ArrayRef<'f32', boolean>, dst: Ref, head: Val<'u32'>, heads: Val<'u32'>) => {
        const base = kb.let('base', t.mul(heads).add(head).mul(D));
        const a0 = kb.let('a0', base.add(i0)), a1 = kb.let('a1', base.add(i1));
        const [y0, y1] = ropeRotatePair(kb.let('x0', src.at(a0)), kb.let('x1', src.at(a1)), c, s);
        dst.set(a0, y0);
        dst.set(a1, y1);
      };
      // With inPlace q and k are read_write and rotated where they are; otherwise into qOut, kOut.
      const bound = (ref: Ref | undefined, name: string): Ref => ref ?? kb.fail(`binding '${name}' is missing`);
      const qDst = inPlace ? b.q.writableRef() : bound(b.qOut?.writableRef(), 'qOut');
      const kDst = inPlace ? b.k.writableRef() : bound(b.kOut?.writableRef(), 'kOut');
      kb.if(h.lt(Hq), () => rotate(b.q, qDst, h, Hq), () => rotate(b.k, kDst, h.sub(Hq), Hk));
    },
  }));
}
