// The GEMM shaped for a CPU: no workgroup memory and no barriers. An invocation owns `rows` rows ×
// a block of weight units, walks all of K reading its weights straight from memory (one
// sequential stream per unit in the 'strips' layout) and keeps its rows × columns sums in
// registers (staged f16: a few rows at a time over each chunk of unpacked weights), folding
// segments in the canonical order of linearCommon.ts — so its rows have the
// GEMV + finish path's bits and the tiled GEMM's (linearGemm.ts). On a GPU the tiled GEMM's
// staging shares each weight among a workgroup; on a CPU a workgroup is a loop on one core, and
// staging costs stores, loads and barriers that each split the loop (bench/notes/cpu.md).
import { kernel, storage } from '../dsl/index.js';
import type { ArrayRef, Caps, Val, Var } from '../dsl/index.js';
import {
  accumulateGroups, capsKey, checkGemvVariant, type Epilogue, epilogueBindings, epilogueRefs, epilogueTag, memoKernel,
  storeBlockRow, type WeightSource,
} from './linearCommon.js';

export interface GemmRowsVariant {
  /** Rows of x per invocation. */
  rows: number;
  /** Invocations per workgroup (each a column block). */
  workgroupSize: number;
  /** Weight units per invocation (with gateUp: this many gate units and the matching up units). */
  units: number;
  /** Units loaded together as one vector (as GemvVariant.vec). */
  vec?: 1 | 2 | 4;
  /**
   * Stage the invocation's weights `chunk` k rows at a time, unpacked to f32 in a private buffer,
   * and run the rows over each chunk in register blocks of `block` rows (dense weights only): each
   * weight is unpacked once per `rows` rows while only block × columns sums are live.
   */
  staged?: { chunk: number; block: number };
}

/**
 * The cpu device's default (bench/notes/cpu.md "Register GEMM", gemm-tiles at 16 and 128 rows):
 * f16 16 rows × 8 columns, staged 64 k at a time and run in blocks of 4 rows (8 f32x4 sums live:
 * 0.76–0.89x the unstaged 16-row block; blocks of 8 rows spill, 1.3–2.1x), INT4 8 rows × 32
 * columns unstaged (16 rows: 1.7–2.6x slower — the group sums no longer fit), f32 8 rows × 8.
 */
export function cpuGemmRows(weights: 'f32' | 'f16' | 'int4'): GemmRowsVariant {
  if (weights === 'f16') return { rows: 16, units: 4, vec: 4, workgroupSize: 16, staged: { chunk: 64, block: 4 } };
  if (weights === 'int4') return { rows: 8, units: 4, vec: 4, workgroupSize: 16 };
  return { rows: 8, units: 8, workgroupSize: 16 };
}

/** r<rows>u<units>v<vec>w<workgroup>[c<chunk>b<block>]: how tuners and `bench gemm-tiles` name a variant. */
export function gemmRowsName(v: GemmRowsVariant): string {
  return `r${v.rows}u${v.units}v${v.vec ?? 1}w${v.workgroupSize}${v.staged ? `c${v.staged.chunk}b${v.staged.block}` : ''}`;
}

/** Register GEMM variants a tuner races on the cpu device (those that cannot run for a source are skipped). */
export const GEMM_ROWS_SPACE: GemmRowsVariant[] = [
  { rows: 16, units: 4, vec: 4, workgroupSize: 16, staged: { chunk: 64, block: 4 } },
  { rows: 16, units: 8, vec: 4, workgroupSize: 16, staged: { chunk: 64, block: 2 } },
  { rows: 16, units: 4, vec: 4, workgroupSize: 4, staged: { chunk: 128, block: 4 } },
  { rows: 16, units: 4, vec: 4, workgroupSize: 16 },
  { rows: 8, units: 4, vec: 4, workgroupSize: 16 },
  { rows: 8, units: 2, vec: 2, workgroupSize: 16 },
  { rows: 8, units: 1, workgroupSize: 16 },
  { rows: 4, units: 4, vec: 4, workgroupSize: 16 },
];

/** Throws naming the variant and what is wrong when it cannot run for this source and epilogue. */
export function checkGemmRowsVariant(what: string, v: GemmRowsVariant, src: WeightSource, e: Epilogue, caps: Caps): void {
  const bad = (why: string) => new Error(`${what}: GEMM rows variant ${JSON.stringify(v)} ${why}`);
  if (!Number.isInteger(v.rows) || v.rows < 1 || v.rows > 32) throw bad(`has rows = ${v.rows}, not 1..32`);
  checkGemvVariant(what, { workgroupSize: v.workgroupSize, units: v.units, ...(v.vec ? { vec: v.vec } : {}) }, src, 0, caps);
  const cols = v.units * src.cols; // output columns per invocation
  if (e.out === 'f16' && cols % 2) throw bad(`gives ${cols} output columns per invocation; f16 output needs pairs`);
  if (v.staged) {
    const { chunk, block } = v.staged;
    if (src.group) throw bad(`stages weights, which grouped source '${src.tag}' does not support`);
    if (!Number.isInteger(chunk) || chunk < 1 || chunk > 256) throw bad(`has staged.chunk = ${chunk}, not 1..256`);
    if (!Number.isInteger(block) || block < 1 || v.rows % block) throw bad(`has staged.block = ${block}, not a divisor of rows = ${v.rows}`);
  }
}

/** Throws where the variant (as fitGemmRows adapts it) cannot run a layer of N output columns. */
export function checkGemmRowsLayer(what: string, v: GemmRowsVariant, src: WeightSource, e: Epilogue, N: number): void {
  const C = src.cols * (v.vec ?? 1);
  if (e.gateUp && N % C) throw new Error(`${what}: GEMM rows variant ${JSON.stringify(v)}: with gateUp N = ${N} must be a multiple of ${C} (the up half starts on a whole unit)`);
}

/**
 * The variant this layer runs: `v` where the source has a vector form and its vector loads fit the
 * layer's rows (Nw a multiple of a
 * vector's columns; with gateUp also N, so the up half starts on a whole unit), else the same with
 * scalar loads. Same bits either way.
 */
export function fitGemmRows(v: GemmRowsVariant, src: WeightSource, e: Epilogue, N: number, Nw: number): GemmRowsVariant {
  const w = v.vec ?? 1, cols = src.cols * w;
  if (w === 1 || (src.vectorized && Nw % cols === 0 && (!e.gateUp || N % cols === 0))) return v;
  const { vec: _, ...scalar } = v;
  return scalar;
}

/**
 * y[M, N] for any M: invocation (column block, row block) accumulates rows × units·cols sums over
 * all of K in registers (with gateUp, the gate block and the matching up block) and applies the
 * epilogue. Segments of segLen fold into the total as the GEMV's finish adds its partials.
 */
export function gemmRowsKernel(baseSrc: WeightSource, e: Epilogue, v: GemmRowsVariant, caps: Caps) {
  checkGemmRowsVariant(`gemmRows_${baseSrc.tag}`, v, baseSrc, e, caps);
  const { rows, workgroupSize: wg } = v;
  const w = v.vec ?? 1;
  const src = w > 1 ? baseSrc.vectorized!(w as 2 | 4) : baseSrc;
  const units = v.units / w, C = src.cols, B = units * C; // B: columns per block (per half with gateUp)
  const halves = e.gateUp ? 2 : 1;
  const stTag = v.staged ? `_c${v.staged.chunk}b${v.staged.block}` : '';
  const key = `gemmRows/${src.tag}/${epilogueTag(e)}/${rows}/${wg}/${units}${stTag}/${capsKey(caps)}`;
  return memoKernel(key, () => kernel({
    name: `gemmRows_${src.tag}_${epilogueTag(e)}_r${rows}${stTag}`,
    params: { source: baseSrc.tag, ...e, ...v },
    caps,
    workgroupSize: wg,
    bindings: {
      x: storage('f32', 'read', { shape: '[M, K]' }),
      ...src.bindings,
      ...epilogueBindings(e),
    },
    uniforms: { M: 'u32', K: 'u32', N: 'u32', Nw: 'u32', segLen: 'u32' },
    grid: `[ceil(N / ${wg * B}), ceil(M / ${rows})]`,
    body(k, b, { M, K, N, Nw, segLen }) {
      const refs: Record<string, ArrayRef<any, boolean>> = b;
      const epi = epilogueRefs(k, refs);
      const x = refs.x as ArrayRef<'f32', false>;
      const u = { K, Nw };
      // Units of one half (the output's columns); the up half's unit j is nHalf + the gate's.
      const nHalf = k.let('nHalf', N.add(C - 1).div(C));
      const u0 = k.let('u0', k.globalId.x.mul(units));
      k.if(u0.ge(nHalf), () => k.return());
      // Units past the end (when units ∤ nHalf) read the last unit and are not stored.
      const gateUnits = Array.from({ length: units }, (_, j) =>
        j ? k.let(`unit${j}`, k.call<'u32'>('min', [u0.add(j), nHalf.sub(1)])) : u0);
      const unitIdx = halves === 2 ? [...gateUnits, ...gateUnits.map((g, j) => k.let(`upUnit${j}`, g.add(nHalf)))] : gateUnits;
      const row0 = k.let('row0', k.workgroupId.y.mul(rows));
      // Rows past M read row M − 1 and are not stored.
      const xRow = Array.from({ length: rows }, (_, r) =>
        k.let(`xr${r}`, k.call<'u32'>('min', [r ? row0.add(r) : row0, M.sub(1)]).mul(K)));
      const vars = (tag: string) => Array.from({ length: rows }, (_, r) =>
        unitIdx.map((_, j) => Array.from({ length: C }, (_, c) => k.var(`${tag}${r}_${j}_${c}`, 'f32', 0))));
      const tot = vars('tot'), acc = vars('acc');
      /** For each k in [from, to): fma(x[r, k], w, dst[r][j][c]) in k order; sx[r] += x[r, k] when given. */
      const accumulate = (from: Val<'u32'>, to: Val<'u32'>, dst: Var<'f32'>[][][], sx?: Var<'f32'>[]) => {
        k.for('kk', from, to, (kk) => {
          const row = k.let('wrow', src.row(k, u, kk));
          const wv = unitIdx.map((unit, j) => src.values(k, refs, row, unit, `${j}`, u).map((val, c) => k.let(`w${j}_${c}`, val)));
          for (let r = 0; r < rows; r++) {
            const xv = k.let(`x${r}`, x.at(xRow[r]!.add(kk)));
            if (sx) sx[r]!.set(sx[r]!.add(xv));
            for (let j = 0; j < unitIdx.length; j++) {
              for (let c = 0; c < C; c++) dst[r]![j]![c]!.set(k.call('fma', [xv, wv[j]![c]!, dst[r]![j]![c]!]));
            }
          }
        });
      };
      const grp = src.group;
      const bsum = grp ? vars('b') : [];
      const sx = grp ? Array.from({ length: rows }, (_, r) => k.var(`sx${r}`, 'f32', 0)) : [];
      const st = v.staged;
      const NB = unitIdx.length * C; // weight columns per invocation
      const wbuf = st ? k.privateArray('wbuf', 'f32', st.chunk * NB) : undefined;
      /** Staged: unpack the chunk's weights once, then each block of rows over the chunk, in k order. */
      const accumulateStaged = (from: Val<'u32'>, to: Val<'u32'>) => {
        k.for('c0', from, to, (c0) => {
          const cLen = k.let('cLen', k.call<'u32'>('min', [k.u32(st!.chunk), to.sub(c0)]));
          k.for('ck', k.u32(0), cLen, (ck) => {
            const row = k.let('srow', src.row(k, u, c0.add(ck)));
            const at = k.let('sat', ck.mul(NB));
            unitIdx.forEach((unit, j) => src.values(k, refs, row, unit, `s${j}`, u).forEach((val, c) => wbuf!.set(at.add(j * C + c), val)));
          });
          for (let r0 = 0; r0 < rows; r0 += st!.block) {
            k.for('kk', k.u32(0), cLen, (kk) => {
              const at = k.let('wat', kk.mul(NB));
              const wv = unitIdx.map((_, j) => Array.from({ length: C }, (_, c) => k.let(`w${j}_${c}`, wbuf!.at(at.add(j * C + c)))));
              const xk = k.let('xk', c0.add(kk));
              for (let r = r0; r < r0 + st!.block; r++) {
                const xv = k.let(`x${r}`, x.at(xRow[r]!.add(xk)));
                for (let j = 0; j < unitIdx.length; j++) {
                  for (let c = 0; c < C; c++) acc[r]![j]![c]!.set(k.call('fma', [xv, wv[j]![c]!, acc[r]![j]![c]!]));
                }
              }
            });
          }
        }, st!.chunk);
      };
      k.for('s0', k.u32(0), K, (s0) => {
        const sEnd = k.let('sEnd', k.call<'u32'>('min', [s0.add(segLen), K]));
        if (st) accumulateStaged(s0, sEnd);
        else if (!grp) accumulate(s0, sEnd, acc);
        else accumulateGroups(k, grp, refs, u, unitIdx, C, s0, sEnd, { acc, bsum, sx }, accumulate);
        // The segment into the total (the finish's t = t + acc_s), and a fresh segment.
        for (let r = 0; r < rows; r++) {
          for (let j = 0; j < unitIdx.length; j++) {
            for (let c = 0; c < C; c++) {
              tot[r]![j]![c]!.set(tot[r]![j]![c]!.add(acc[r]![j]![c]!));
              acc[r]![j]![c]!.set(0);
            }
          }
        }
      }, segLen);

      // Epilogue: column n0 + i of the block is (unit i / C, lane i % C); the up value is the same
      // position in the up units.
      const n0 = k.let('n0', u0.mul(C));
      for (let r = 0; r < rows; r++) {
        const m = k.let(`m${r}`, r ? row0.add(r) : row0);
        k.if(m.lt(M), () => storeBlockRow(k, e, epi, N, m, n0, B, r,
          (col) => tot[r]![Math.floor(col / C)]![col % C]!, (col) => tot[r]![units + Math.floor(col / C)]![col % C]!));
      }
    },
  }));
}
