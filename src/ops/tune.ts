// Timing kernel variants on a device, for `kiln tune` (src/tune.ts owns the CLI and the cache
// file): tuneFamily(dev, family, shape) times a family's parameter space at a shape and returns the
// winner, which the runtime passes back as `choice` (linear layers) or kernel parameters.
//
// Linear layers: the split-K segment length fixes the reduction order, so it is tuned once per
// (K, N) — at M = 1, where decoding spends its time — and kept for every M (batch invariance);
// GEMV schedules are then tuned per row count and the GEMM tiling at the largest M, none of which
// change results. Cache keys therefore hold the device, family and the weight's shape, never M.
import { denseGemvSpace, denseLinear, DENSE_GEMM_SPACE, denseSegmentSpace, type DenseWeightDtype, denseWeightLayout } from '../../codegen/kernels/denseMatmul.js';
import { embedding } from '../../codegen/kernels/embedding.js';
import { int4Linear, INT4_GEMM_SPACE, INT4_GEMV_SPACE, int4SegmentSpace, int4WeightLayout } from '../../codegen/kernels/int4Matmul.js';
import { type GemvVariant, gemvVariantFits } from '../../codegen/kernels/linearCommon.js';
import { checkGemmVariant, type GemmVariant } from '../../codegen/kernels/linearGemm.js';
import { checkGemmRowsVariant, GEMM_ROWS_SPACE, gemmRowsName } from '../../codegen/kernels/linearGemmRows.js';
import { GEMV_MAX_ROWS, type LinearChoiceInput, type LinearOp } from '../../codegen/kernels/linearOp.js';
import { argmaxRows, siluMul } from '../../codegen/kernels/pointwise.js';
import { OP_FAMILIES, type OpFamily, type OpFamilyName, tuneSizes } from '../../codegen/kernels/registry.js';
import { rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import { rope, ropeTable } from '../../codegen/kernels/rope.js';
import type { Kernel } from '../../codegen/dsl/builder.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import { timeLaunches } from '../backend/timing.js';
import { quantizeRtnInt4 } from '../quant/rtn.js';
import { linearHints, uploadDense, uploadInt4 } from './linear.js';

export type TuneShape = Record<string, number | string>;
export interface TuneOptions {
  /** Launches per timing sample (queued back to back, one sync). */
  reps?: number;
  /** Timing samples per variant; the fastest counts. */
  samples?: number;
  log?: (line: string) => void;
}
export interface VariantTiming { variant: string; ms: number | null; error?: string }
export interface TuneResult {
  family: string;
  device: string;
  /** The cache key: device, family and the shape fields the choice depends on. */
  key: string;
  shape: TuneShape;
  /** LinearChoiceInput for linear families, kernel parameters for the others. */
  winner: Record<string, unknown>;
  timings: VariantTiming[];
}

/** How a family is tuned; what it takes (sizes, key fields, workgroup sizes) is its registry entry (OP_FAMILIES). */
type Tuner = (dev: Device, shape: TuneShape, o: Required<TuneOptions>, workgroupSizes: readonly number[]) =>
  Promise<{ winner: Record<string, unknown>; timings: VariantTiming[] }>;

// ---- timing -----------------------------------------------------------------------------------

const timeIt = (dev: Device, launch: () => void, o: Required<TuneOptions>) => timeLaunches(dev, launch, o);

/** Time each candidate; failures (invalid on this device) are recorded, not thrown. */
async function race<V>(dev: Device, what: string, candidates: V[], name: (v: V) => string,
  launchFor: (v: V) => () => void, o: Required<TuneOptions>, timings: VariantTiming[]): Promise<V> {
  let best: V | undefined, bestMs = Infinity;
  for (const v of candidates) {
    const variant = `${what} ${name(v)}`;
    try {
      const ms = await timeIt(dev, launchFor(v), o);
      timings.push({ variant, ms });
      o.log(`  ${variant}: ${ms.toFixed(3)} ms`);
      if (ms < bestMs) { bestMs = ms; best = v; }
    } catch (e) {
      timings.push({ variant, ms: null, error: (e as Error).message.split('\n')[0] });
      o.log(`  ${variant}: skipped (${(e as Error).message.split('\n')[0]})`);
    }
  }
  if (best === undefined) throw new Error(`tune ${what}: no variant ran on ${dev.description}`);
  return best;
}

function randomData(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = lo + (hi - lo) * (((t ^ (t >>> 14)) >>> 0) / 4294967296);
  }
  return out;
}

class Scratch {
  private bufs: DeviceBuffer[] = [];
  constructor(readonly dev: Device) {}
  f32(n: number, seed: number, lo = -1, hi = 1): DeviceBuffer<'f32'> {
    const b = this.dev.alloc('f32', n, 'tune');
    this.dev.write(b, randomData(n, seed, lo, hi));
    this.bufs.push(b);
    return b;
  }
  u32(data: Uint32Array): DeviceBuffer<'u32'> {
    const b = this.dev.alloc('u32', data.length, 'tune');
    this.dev.write(b, data);
    this.bufs.push(b);
    return b;
  }
  own<B extends DeviceBuffer>(b: B): B { this.bufs.push(b); return b; }
  free(): void { for (const b of this.bufs) this.dev.free(b); this.bufs = []; }
}

// ---- linear layers ----------------------------------------------------------------------------

function parseMs(v: number | string): number[] {
  const ms = String(v).split(',').map(Number);
  if (ms.some((m) => !Number.isInteger(m) || m < 1)) throw new Error(`tune: M must be positive integers, got '${v}'`);
  return ms;
}

async function tuneLinear(dev: Device, shape: TuneShape, o: Required<TuneOptions>, kind: 'int4' | 'dense') {
  const K = Number(shape.K), N = Number(shape.N), g = Number(shape.groupSize);
  const dtype = String(shape.weight) as DenseWeightDtype;
  const Ms = parseMs(shape.M!);
  const hints = linearHints(dev);
  const scratch = new Scratch(dev);
  const timings: VariantTiming[] = [];
  try {
    let weights: Record<string, DeviceBuffer>;
    if (kind === 'int4') {
      const w = uploadInt4(dev, quantizeRtnInt4(randomData(K * N, 1, -0.05, 0.05), K, N, g, 'KN'), 'tune', int4WeightLayout(N, hints.weightLayout));
      weights = { qweight: scratch.own(w.qweight), qzeros: scratch.own(w.qzeros), scales: scratch.own(w.scales) };
    } else {
      weights = { w: scratch.own(uploadDense(dev, randomData(K * N, 1, -0.05, 0.05), K, N, dtype, 'KN', 'tune', denseWeightLayout(dtype, N, hints.weightLayout))) };
    }
    const maxM = Math.max(...Ms);
    const x = scratch.f32(maxM * K, 2), out = scratch.f32(maxM * N, 3);
    // The GEMV / GEMM variants are what is raced: the MMA path (CUDA's default at M <= 64, no
    // variants of its own yet) is off here, or every race would time the same MMA kernel.
    const make = (c: LinearChoiceInput): LinearOp => {
      const choice = { mmaMaxRows: 0, ...c };
      return kind === 'int4' ? int4Linear({ K, N, groupSize: g, ...hints, choice }) : denseLinear({ K, N, weight: dtype, ...hints, choice });
    };
    const launcher = (choice: LinearChoiceInput, M: number) => {
      const op = make(choice);
      return () => dev.run(op, { ...weights, x, out }, { M });
    };
    const base = make({});
    // 1. Split-K (numerics: one per (K, N)), at M = 1.
    const segs = kind === 'int4' ? int4SegmentSpace(K, g) : denseSegmentSpace(K);
    const segLen = await race(dev, 'M=1 segLen', segs, String, (s) => launcher({ segLen: s }, 1), o, timings);
    // 2. GEMV schedule per row count asked for (the others take the nearest tuned one).
    const space = kind === 'int4' ? INT4_GEMV_SPACE : denseGemvSpace(dtype);
    const gemvFor = new Map<number, GemvVariant>();
    for (const M of Ms.filter((m) => m <= GEMV_MAX_ROWS)) {
      gemvFor.set(M, await race(dev, `M=${M} gemv`, space.filter((v) => gemvVariantFits(v, base.source, base.Nw, dev.caps)),
        (v) => `${v.workgroupSize}x${v.units}${v.vec && v.vec > 1 ? `v${v.vec}` : ''}${v.unrollK && v.unrollK > 1 ? `k${v.unrollK}` : ''}`, (v) => launcher({ segLen, gemv: v }, M), o, timings));
    }
    const gemv = Array.from({ length: GEMV_MAX_ROWS }, (_, i) => {
      const tuned = [...gemvFor.keys()].sort((a, b) => Math.abs(a - (i + 1)) - Math.abs(b - (i + 1)))[0];
      return tuned === undefined ? base.choice.gemv[i]! : gemvFor.get(tuned)!;
    });
    // 3. GEMM at the largest M above the GEMV range: the register GEMM's blocks where the device
    // runs it by default (cpu), else the tiled GEMM's tiling.
    let gemm: GemmVariant = base.choice.gemm;
    const big = Ms.filter((m) => m > GEMV_MAX_ROWS);
    if (big.length && base.choice.gemmRows) {
      const M = Math.max(...big);
      const valid = GEMM_ROWS_SPACE.filter((v) => {
        try { checkGemmRowsVariant('tune', v, base.source, base.epilogue, dev.caps); return true; } catch { return false; }
      });
      const gemmRows = await race(dev, `M=${M} gemmRows`, valid, gemmRowsName, (v) => launcher({ segLen, gemmRows: v }, M), o, timings);
      return { winner: { segLen, gemv, gemmRows } as Record<string, unknown>, timings };
    }
    if (big.length) {
      const M = Math.max(...big);
      const valid = (kind === 'int4' ? INT4_GEMM_SPACE : DENSE_GEMM_SPACE).filter((v) => {
        try { checkGemmVariant('tune', v, base.source, base.epilogue, dev.caps); return true; } catch { return false; }
      });
      gemm = await race(dev, `M=${M} gemm`, valid, (v) => `${v.tileM}x${v.tileN}x${v.tileK}/${v.blockM}x${v.blockN}`,
        (v) => launcher({ segLen, gemm: v }, M), o, timings);
    }
    const winner: LinearChoiceInput = { segLen, gemv, gemm };
    return { winner: winner as Record<string, unknown>, timings };
  } finally { scratch.free(); }
}

// ---- pointwise --------------------------------------------------------------------------------

async function tuneWorkgroup(dev: Device, sizes: readonly number[], build: (wg: number) => Kernel<any, any>,
  bind: (s: Scratch) => { bindings: Record<string, DeviceBuffer>; uniforms: Record<string, number> }, o: Required<TuneOptions>) {
  const scratch = new Scratch(dev);
  const timings: VariantTiming[] = [];
  try {
    const { bindings, uniforms } = bind(scratch);
    const wg = await race(dev, 'workgroupSize', sizes.filter((s) => s <= dev.caps.maxInvocationsPerWorkgroup), String,
      (s) => { const kern = build(s); return () => dev.launch(kern, bindings, uniforms); }, o, timings);
    return { winner: { workgroupSize: wg }, timings };
  } finally { scratch.free(); }
}

const TUNERS: { [F in OpFamilyName]?: Tuner } = {
  int4Linear: (dev, s, o) => tuneLinear(dev, s, o, 'int4'),
  denseLinear: (dev, s, o) => tuneLinear(dev, s, o, 'dense'),
  rmsNorm: (dev, s, o, sizes) => tuneWorkgroup(dev, sizes, (wg) => rmsNorm({ fused: !!Number(s.fused), workgroupSize: wg, caps: dev.caps }), (sc) => {
      const M = Number(s.M), D = Number(s.D);
      const b: Record<string, DeviceBuffer> = { x: sc.f32(M * D, 1), w: sc.f32(D, 2), out: sc.f32(M * D, 3) };
      if (Number(s.fused)) b.residual = sc.f32(M * D, 4);
      return { bindings: b, uniforms: { M, D, eps: 1e-5 } };
    }, o),
  rope: (dev, s, o, sizes) => tuneWorkgroup(dev, sizes, (wg) => rope({ layout: s.layout as 'halves', workgroupSize: wg, caps: dev.caps }), (sc) => {
      const [T, Hq, Hk, D] = [Number(s.T), Number(s.Hq), Number(s.Hk), Number(s.D)];
      const maxPos = 4096;
      const tb = sc.own(dev.alloc('f32', maxPos * D, 'tune.table'));
      dev.write(tb, ropeTable({ headDim: D, theta: 10000 }, maxPos));
      return {
        bindings: { q: sc.f32(T * Hq * D, 1), k: sc.f32(T * Hk * D, 2), pos: sc.u32(Uint32Array.from({ length: T }, (_, i) => i * 37)), table: tb },
        uniforms: { T, Hq, Hk, D, maxPos },
      };
    }, o),
  embedding: (dev, s, o, sizes) => tuneWorkgroup(dev, sizes, (wg) => embedding({ table: s.table as 'f16', workgroupSize: wg, caps: dev.caps }), (sc) => {
      const [T, V, D] = [Number(s.T), Number(s.V), Number(s.D)];
      const table = s.table === 'f16' ? sc.u32(new Uint32Array((V * D) / 2).fill(0x3c003c00)) : sc.f32(V * D, 1);
      return { bindings: { ids: sc.u32(Uint32Array.from({ length: T }, (_, i) => (i * 7919) % V)), table, out: sc.f32(T * D, 2) }, uniforms: { T, V, D } };
    }, o),
  siluMul: (dev, s, o, sizes) => tuneWorkgroup(dev, sizes, (wg) => siluMul({ workgroupSize: wg, caps: dev.caps }), (sc) => {
      const n = Number(s.n);
      return { bindings: { gate: sc.f32(n, 1), up: sc.f32(n, 2), out: sc.f32(n, 3) }, uniforms: { n } };
    }, o),
  argmaxRows: (dev, s, o, sizes) => tuneWorkgroup(dev, sizes, (wg) => argmaxRows({ workgroupSize: wg, caps: dev.caps }), (sc) => {
      const [M, N] = [Number(s.M), Number(s.N)];
      return { bindings: { x: sc.f32(M * N, 1), out: sc.u32(new Uint32Array(M)) }, uniforms: { M, N } };
    }, o),
};

/** Families `kiln tune` accepts, with the shape fields each needs. */
export function tunableFamilies(): { family: string; required: string[]; defaults: TuneShape }[] {
  return tunableNames().map((family) => {
    const f = OP_FAMILIES[family];
    return { family, required: [...(f.tune?.required ?? [])], defaults: tuneSizes(f) };
  });
}
const tunableNames = () => (Object.keys(OP_FAMILIES) as OpFamilyName[]).filter((f) => TUNERS[f] && OP_FAMILIES[f].tune);

interface Tunable { tune: Tuner; required: readonly string[]; keyFields: readonly string[]; defaults: TuneShape; workgroupSizes: readonly number[] }
function fullShape(family: string, shape: TuneShape): { t: Tunable; shape: TuneShape } {
  const f = (OP_FAMILIES as Readonly<Record<string, OpFamily | undefined>>)[family], tuner = TUNERS[family as OpFamilyName];
  if (!f?.tune || !tuner) throw new Error(`tune: unknown kernel family '${family}'; tunable: ${tunableNames().join(', ')}`);
  const t: Tunable = { tune: tuner, ...f.tune, defaults: tuneSizes(f), workgroupSizes: f.tune.workgroupSizes ?? [] };
  for (const r of t.required) {
    if (shape[r] === undefined) throw new Error(`tune ${family}: shape needs '${r}' (required: ${t.required.join(', ')})`);
  }
  for (const k of Object.keys(shape)) {
    if (!t.required.includes(k) && !(k in t.defaults)) {
      throw new Error(`tune ${family}: unknown shape field '${k}' (fields: ${[...t.required, ...Object.keys(t.defaults)].join(', ')})`);
    }
  }
  return { t, shape: { ...t.defaults, ...shape } };
}

/** The cache key for a family at a shape on a device (the runtime looks choices up by it). */
export function tuneCacheKey(device: string, family: string, shape: TuneShape): string {
  const { t, shape: s } = fullShape(family, shape);
  return `${device}|${family}|${t.keyFields.map((f) => `${f}=${s[f]}`).join(',')}`;
}

/** Time every variant of `family` at `shape` on `dev`; the winner is what the cache stores. */
export async function tuneFamily(dev: Device, family: string, shape: TuneShape, opts: TuneOptions = {}): Promise<TuneResult> {
  const { t, shape: s } = fullShape(family, shape);
  const o: Required<TuneOptions> = { reps: opts.reps ?? 5, samples: opts.samples ?? 3, log: opts.log ?? (() => {}) };
  o.log(`tune ${family} ${JSON.stringify(s)} on ${dev.description}`);
  const { winner, timings } = await t.tune(dev, s, o, t.workgroupSizes);
  return { family, device: dev.description, key: tuneCacheKey(dev.description, family, s), shape: s, winner, timings };
}

/**
 * The runtime's side: the cached winner for a family and shape on this device, or undefined
 * (callers then use the defaults). For linear families pass it as `choice`.
 */
export function cachedChoice(cache: Record<string, unknown>, dev: Device, family: string, shape: TuneShape): Record<string, unknown> | undefined {
  const hit = cache[tuneCacheKey(dev.description, family, shape)];
  return hit && typeof hit === 'object' ? hit as Record<string, unknown> : undefined;
}
