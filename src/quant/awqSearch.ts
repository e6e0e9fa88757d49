// AWQ's two searches (Lin et al., MLSys 2024), as AutoAWQ runs them, on calibration statistics.
//
// Scale search, per group of linears sharing an input X: weights are scaled by s per input
// channel and quantized, inputs scaled by 1/s, so the group computes X·diag(1/s)·Q(diag(s)·W).
// For α on a grid, s = x_mean^α / w_mean^(1−α) (AutoAWQ's duo scaling; s = x_mean^α as the
// paper's option), normalised by √(max s · min s); the α whose output error is smallest wins.
// Clipping search, per linear: each (output channel, group) range is shrunk to
// [−m·(1 − i/20), m·(1 − i/20)] (m the group's max |w|, i < 10) and the shrink with the smallest
// quantized output error is kept. q and k are not clipped (their errors pass through softmax).
//
// Weights are [N, K] (HF layout: one output channel's K inputs contiguous) and hold f16 values;
// every weight op rounds to f16, as AutoAWQ computes on a half-precision layer. Errors are
// ‖X·ΔW‖² = Σ_n ΔW_nᵀ (XᵀX) ΔW_n from the Gram matrix (calibrate.ts): exact, not a sample.
import type { GroupStats } from './calibrate.js';
import { f16BitsToF32 } from './f16.js';
import { h, quantizeGroupF16 } from './rtn.js';

export interface ScaleSearchOptions {
  groupSize: number;
  /** α on i/grid for i < grid (default 20, AutoAWQ's n_grid). */
  grid?: number;
  /** AutoAWQ's duo scaling (default); false: the paper's s = x_mean^α. */
  duo?: boolean;
  /**
   * Channels that must share one scale (o_proj under grouped-query attention: its input channel
   * h·hd + d comes from v channel ⌊h/group⌋·hd + d, where 1/s is folded): tie[k] is channel k's
   * class, classes 0..C−1. Default: every channel its own.
   */
  tie?: Int32Array;
  /** Keep s = 1 (plain RTN) when no α beats it (default true; AutoAWQ always takes an α). */
  keepUnscaled?: boolean;
  /** Scores a candidate instead of the group's own output error (awqModules.ts: the block's output). */
  moduleLoss?: (s: Float32Array) => number;
}

export interface ScaleSearchResult {
  /** The chosen α (NaN when no α beat s = 1, see keepUnscaled). */
  alpha: number;
  /** Per input channel (f32 values). */
  scales: Float32Array;
  /** Per class of `tie` (= scales when untied). */
  classScales: Float32Array;
  /** Mean squared output error per α on the grid; losses[0] is α = 0. */
  losses: number[];
  loss: number;
  /** The error with no scaling (s = 1): plain RTN. */
  unscaled: number;
}

/** A linear's weight [N, K] as f16 values. */
export interface HalfWeight {
  w: Float32Array;
  N: number;
  K: number;
}

/** Pseudo-quantizes one row of K values (groups of g) into `out`: f16((q − z)·s), AutoAWQ's w. */
export function pseudoQuantizeRow(row: ArrayLike<number>, off: number, K: number, g: number, out: Float64Array, codes: Uint8Array): void {
  for (let k0 = 0; k0 < K; k0 += g) {
    const { scaleBits, zero } = quantizeGroupF16(row, off + k0, 1, g, codes, 0, 1);
    const s = f16BitsToF32(scaleBits);
    for (let i = 0; i < g; i++) out[k0 + i] = h((codes[i]! - zero) * s);
  }
}

/** dᵀ·H·d for symmetric H [K, K] (H's stride `ld`, starting at `at`), over d[0..n). */
export function quadForm(H: Float64Array, at: number, ld: number, d: Float64Array, n: number): number {
  let total = 0;
  for (let i = 0; i < n; i++) {
    const di = d[i]!;
    if (di === 0) continue;
    const row = at + i * ld;
    let acc = 0;
    for (let j = i + 1; j < n; j++) acc += H[row + j]! * d[j]!;
    total += di * (H[row + i]! * di + 2 * acc);
  }
  return total;
}

/** Mean |w| of each input channel after normalising each (row, group) by its max |w|. */
function weightMean(ws: HalfWeight[], K: number, g: number): Float64Array {
  const mean = new Float64Array(K);
  let rows = 0;
  for (const { w, N } of ws) {
    for (let n = 0; n < N; n++) {
      for (let k0 = 0; k0 < K; k0 += g) {
        let m = 0;
        for (let i = 0; i < g; i++) m = Math.max(m, Math.abs(w[n * K + k0 + i]!));
        for (let i = 0; i < g; i++) mean[k0 + i]! += Math.abs(w[n * K + k0 + i]!) / (m + 1e-6);
      }
    }
    rows += N;
  }
  for (let k = 0; k < K; k++) mean[k]! /= rows;
  return mean;
}

/** Σ_r d_rᵀ·H·d_r for 4 vectors d[r·K ..] at once (each H cell is loaded once for all four). */
function quadForm4(H: Float64Array, K: number, d: Float64Array): number {
  let t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (let i = 0; i < K; i++) {
    const a = d[i]!, b = d[K + i]!, c = d[2 * K + i]!, e = d[3 * K + i]!, row = i * K;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let j = i + 1; j < K; j++) {
      const hij = H[row + j]!;
      s0 += hij * d[j]!; s1 += hij * d[K + j]!; s2 += hij * d[2 * K + j]!; s3 += hij * d[3 * K + j]!;
    }
    const hii = H[row + i]!;
    t0 += a * (hii * a + 2 * s0); t1 += b * (hii * b + 2 * s1); t2 += c * (hii * c + 2 * s2); t3 += e * (hii * e + 2 * s3);
  }
  return t0 + t1 + t2 + t3;
}

/** Mean squared output error of the group with weights scaled by s, quantized, scaled back. */
export function scaledLoss(ws: HalfWeight[], st: GroupStats, s: Float32Array, g: number): number {
  const K = st.K;
  const scaled = new Float32Array(K), dq = new Float64Array(K), d = new Float64Array(4 * K), codes = new Uint8Array(g);
  let total = 0, rows = 0, filled = 0;
  for (const { w, N } of ws) {
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) scaled[k] = h(w[n * K + k]! * s[k]!);
      pseudoQuantizeRow(scaled, 0, K, g, dq, codes);
      const at = filled * K;
      for (let k = 0; k < K; k++) d[at + k] = h(dq[k]! / s[k]!) - w[n * K + k]!;
      if (++filled === 4) { total += quadForm4(st.gram, K, d); filled = 0; }
    }
    rows += N;
  }
  for (let r = 0; r < filled; r++) total += quadForm(st.gram, 0, K, d.subarray(r * K, (r + 1) * K), K);
  return total / (rows * Math.max(1, st.tokens));
}

/** The grid search over α for one group of linears that share the input described by `st`. */
export function searchScales(ws: HalfWeight[], st: GroupStats, opts: ScaleSearchOptions): ScaleSearchResult {
  const K = st.K, g = opts.groupSize, grid = opts.grid ?? 20, duo = opts.duo ?? true;
  for (const x of ws) if (x.K !== K || x.w.length !== x.N * K) throw new Error(`awq: a linear of the group is [${x.N}, ${x.K}] but the group's input has ${K} channels`);
  if (K % g) throw new Error(`awq: group size ${g} does not divide the input size ${K}`);
  if (!(Number.isInteger(grid) && grid >= 1)) throw new Error(`awq: grid ${grid} must be a positive integer`);
  if (st.tokens < 1) throw new Error('awq: no calibration tokens');
  const tie = opts.tie ?? Int32Array.from({ length: K }, (_, k) => k);
  const C = tie.reduce((m, c) => Math.max(m, c + 1), 0);
  // Per-class means of the activation and weight statistics.
  const xMean = new Float64Array(C), wMean = new Float64Array(C), count = new Float64Array(C);
  const wm = weightMean(ws, K, g);
  for (let k = 0; k < K; k++) {
    const c = tie[k]!;
    xMean[c]! += st.absSum[k]! / st.tokens;
    wMean[c]! += wm[k]!;
    count[c]!++;
  }
  for (let c = 0; c < C; c++) { xMean[c]! /= count[c]!; wMean[c]! /= count[c]!; }

  const losses: number[] = [];
  let best = Infinity, bestAlpha = 0, bestClass = new Float32Array(C).fill(1);
  for (let i = 0; i < grid; i++) {
    const alpha = i / grid;
    const cls = new Float32Array(C);
    let mx = 0, mn = Infinity;
    for (let c = 0; c < C; c++) {
      const v = duo ? xMean[c]! ** alpha / (wMean[c]! ** (1 - alpha) + 1e-4) : xMean[c]! ** alpha;
      cls[c] = Math.max(v, 1e-4);
    }
    for (let c = 0; c < C; c++) { mx = Math.max(mx, cls[c]!); mn = Math.min(mn, cls[c]!); }
    const norm = Math.sqrt(mx * mn);
    for (let c = 0; c < C; c++) {
      const v = cls[c]! / norm;
      cls[c] = Number.isFinite(v) && v > 0 ? v : 1; // AutoAWQ's guard against overflowing scales
    }
    const s = Float32Array.from(tie, (c) => cls[c]!);
    const loss = opts.moduleLoss ? opts.moduleLoss(s) : scaledLoss(ws, st, s, g);
    losses.push(loss);
    if (loss < best) { best = loss; bestAlpha = alpha; bestClass = cls; }
  }
  const ones = new Float32Array(K).fill(1);
  const unscaled = opts.moduleLoss ? opts.moduleLoss(ones) : scaledLoss(ws, st, ones, g);
  // AutoAWQ's duo grid has no s = 1 point (α = 0 gives 1/w_mean): keep RTN's s = 1 when no α
  // beats it, so a group is never scaled into more calibration error than plain RTN.
  if ((opts.keepUnscaled ?? true) && unscaled < best) { best = unscaled; bestAlpha = NaN; bestClass = new Float32Array(C).fill(1); }
  return { alpha: bestAlpha, scales: Float32Array.from(tie, (c) => bestClass[c]!), classScales: bestClass, losses, loss: best, unscaled };
}

/** The Gram matrix of the inputs once they are divided by s: H_ij / (s_i s_j). */
export function scaleGram(st: GroupStats, s: Float32Array): GroupStats {
  const K = st.K, gram = new Float64Array(K * K), absSum = new Float64Array(K);
  for (let i = 0; i < K; i++) {
    absSum[i] = st.absSum[i]! / s[i]!;
    for (let j = 0; j < K; j++) gram[i * K + j] = st.gram[i * K + j]! / (s[i]! * s[j]!);
  }
  return { K, tokens: st.tokens, absSum, gram };
}

export interface ClipResult {
  /** Per (row, group): the kept range [lo, hi], [N, K/g] each. */
  lo: Float32Array;
  hi: Float32Array;
  /** Mean squared output error of the linear before and after clipping. */
  lossBefore: number;
  lossAfter: number;
}

/**
 * The clipping search on one linear, in place: each (row, group) is clamped to a range that
 * quantizes with less output error. First AutoAWQ's symmetric shrink, [−m', m'] with
 * m' = f16(m·(1 − i/grid)), i < maxShrink·grid, m the group's max |w|; then, with `asymmetric`,
 * each end alone on the same grid, min·(1 − i/grid) and max·(1 − j/grid) (with a zero point the
 * ends need not shrink together; on the brown models it fit the calibration set better and the
 * held-out text worse, so it is off by default). AutoAWQ scores each group alone (the
 * diagonal block of XᵀX); here each candidate is scored with the rest of its row as already
 * chosen (the full quadratic form, one pass over the groups), so errors that add up across groups
 * count too.
 */
export function searchClip(lin: HalfWeight, st: GroupStats, g: number, opts: { grid?: number; maxShrink?: number; asymmetric?: boolean } = {}): ClipResult {
  const { w, N, K } = lin, grid = opts.grid ?? 20, steps = Math.max(1, Math.round((opts.maxShrink ?? 0.5) * grid));
  const asym = opts.asymmetric ?? false;
  if (st.K !== K) throw new Error(`awq clip: weight has ${K} inputs, statistics ${st.K}`);
  const H = st.gram, G = K / g, lo = new Float32Array(N * G), hi = new Float32Array(N * G);
  const clamped = new Float32Array(g), dq = new Float64Array(g), delta = new Float64Array(g), cand = new Float64Array(g), codes = new Uint8Array(g);
  const d = new Float64Array(K), e = new Float64Array(K);
  let before = 0, after = 0;
  /** The quantization error vector of group [off, off + g) clamped to [a, b], into `out`. */
  const errorOf = (off: number, a: number, b: number, out: Float64Array) => {
    for (let i = 0; i < g; i++) clamped[i] = Math.min(b, Math.max(a, w[off + i]!));
    pseudoQuantizeRow(clamped, 0, g, g, dq, codes);
    for (let i = 0; i < g; i++) out[i] = dq[i]! - w[off + i]!;
  };
  for (let n = 0; n < N; n++) {
    const row = n * K;
    for (let gi = 0; gi < G; gi++) errorOf(row + gi * g, -Infinity, Infinity, d.subarray(gi * g, (gi + 1) * g));
    // e = H·d, kept current as groups change.
    for (let i = 0; i < K; i++) { let acc = 0; for (let j = 0; j < K; j++) acc += H[i * K + j]! * d[j]!; e[i] = acc; }
    let err = 0;
    for (let i = 0; i < K; i++) err += d[i]! * e[i]!;
    before += err;
    for (let gi = 0; gi < G; gi++) {
      const o = gi * g, off = row + o;
      let mn = Infinity, mx = -Infinity;
      for (let i = 0; i < g; i++) { mn = Math.min(mn, w[off + i]!); mx = Math.max(mx, w[off + i]!); }
      const m = Math.max(Math.abs(mn), Math.abs(mx));
      let bestA = -Infinity, bestB = Infinity, bestDelta = 0;
      // Δerr = 2·δᵀ(H·d)_g + δᵀ·H_gg·δ for δ = the candidate's errors − the current ones.
      const tryRange = (a: number, b: number) => {
        if (!(a < b)) return;
        errorOf(off, a, b, cand);
        let lin = 0;
        for (let i = 0; i < g; i++) { delta[i] = cand[i]! - d[o + i]!; lin += delta[i]! * e[o + i]!; }
        const dd = 2 * lin + quadForm(H, o * K + o, K, delta, g);
        if (dd < bestDelta) { bestDelta = dd; bestA = a; bestB = b; }
      };
      for (let step = 1; step < steps; step++) { const mv = h(m * (1 - step / grid)); tryRange(-mv, mv); }
      if (asym) {
        const a0 = Math.max(bestA, mn);
        for (let step = 1; step < steps; step++) tryRange(a0, h(mx * (1 - step / grid)));
        const b1 = Math.min(bestB, mx);
        for (let step = 1; step < steps; step++) tryRange(h(mn * (1 - step / grid)), b1);
      }
      if (bestDelta < 0) {
        errorOf(off, bestA, bestB, cand);
        for (let i = 0; i < g; i++) delta[i] = cand[i]! - d[o + i]!;
        for (let i = 0; i < K; i++) { let acc = 0; for (let j = 0; j < g; j++) acc += H[i * K + o + j]! * delta[j]!; e[i] = e[i]! + acc; }
        for (let i = 0; i < g; i++) d[o + i] = cand[i]!;
        err += bestDelta;
        for (let i = 0; i < g; i++) w[off + i] = Math.min(bestB, Math.max(bestA, w[off + i]!));
      }
      lo[n * G + gi] = Math.max(bestA, mn);
      hi[n * G + gi] = Math.min(bestB, mx);
    }
    after += err;
  }
  const denom = N * Math.max(1, st.tokens);
  return { lo, hi, lossBefore: before / denom, lossAfter: after / denom };
}
