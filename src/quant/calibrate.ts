// AWQ calibration on the runtime's own kernels: the FP model runs over N calibration sequences
// one decoder layer at a time (rmsNorm, dense linears, ropeQkv, kvAppend, pagedAttention — the
// launches of LlamaForward.launchAll for one layer), and for each group of linears that share an
// input (q/k/v; o; gate/up; down) we keep what the scale and clipping searches need:
//   absSum[k]  Σ_t |x[t, k]|             (the per-channel mean |x| AWQ's scales start from)
//   gram[i, j] Σ_t x[t, i]·x[t, j]       (XᵀX)
// The searches minimise ‖X·ΔW‖², which is Σ_n ΔW_nᵀ (XᵀX) ΔW_n: the Gram matrix carries exactly
// what the inputs themselves would, in K² numbers instead of T·K, and each candidate's loss costs
// K²·N instead of T·K·N. Memory stays at the FP weights plus one layer's activations.
import { kvAppend } from '../../codegen/kernels/kvAppend.js';
import { pagedAttention } from '../../codegen/kernels/pagedAttention.js';
import type { AttentionSizes } from '../../codegen/kernels/pagedAttentionConfig.js';
import { defaultRmsNormWorkgroup, rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import { ropeTable } from '../../codegen/kernels/rope.js';
import { ropeQkv } from '../../codegen/kernels/ropeQkv.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import { checkSlots, prepareAttention } from '../ops/attention.js';
import { runLinear } from '../ops/linear.js';
import { type ModelSpec, ropeFrequencies } from '../model/spec.js';
import type { DeviceLinear, ModelWeights } from '../model/weights.js';

/** Input statistics of one group of linears that read the same activations. */
export interface GroupStats {
  /** Input channels. */
  K: number;
  /** Rows (tokens) accumulated. */
  tokens: number;
  /** Σ_t |x[t, k]|, [K]. */
  absSum: Float64Array;
  /** Σ_t x[t, i]·x[t, j], [K, K] (both triangles filled by `finish`). */
  gram: Float64Array;
  /**
   * The inputs of the first few whole sequences, [sampleRows, K] (LayerCalibrator's
   * sampleSeqs): the module-output losses of the scale search run the block on them.
   */
  sample?: Float32Array;
  sampleRows?: number;
}

export interface LayerStats {
  qkv: GroupStats;
  o: GroupStats;
  gateUp: GroupStats;
  down: GroupStats;
}

export function newGroupStats(K: number): GroupStats {
  return { K, tokens: 0, absSum: new Float64Array(K), gram: new Float64Array(K * K) };
}

/** Adds rows x [T, K] to the statistics (upper triangle of the Gram matrix; see finishGroupStats). */
export function accumulate(st: GroupStats, x: Float32Array, T: number): void {
  const { K, absSum, gram } = st;
  if (x.length < T * K) throw new Error(`calibration: ${x.length} values for ${T} rows of ${K}`);
  for (let t = 0; t < T; t++) for (let k = 0; k < K; k++) absSum[k]! += Math.abs(x[t * K + k]!);
  // Rows in chunks, transposed, so that each Gram cell is one contiguous dot product per chunk
  // (loaded and stored once per chunk), four cells sharing each load of column i.
  const R = 64, xt = new Float64Array(K * R);
  for (let t0 = 0; t0 < T; t0 += R) {
    const r = Math.min(R, T - t0);
    for (let t = 0; t < r; t++) for (let k = 0; k < K; k++) xt[k * R + t] = x[(t0 + t) * K + k]!;
    for (let i = 0; i < K; i++) {
      const a = i * R, row = i * K;
      let j = i;
      for (; j + 4 <= K; j += 4) {
        const b0 = j * R, b1 = b0 + R, b2 = b1 + R, b3 = b2 + R;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (let t = 0; t < r; t++) {
          const v = xt[a + t]!;
          s0 += v * xt[b0 + t]!; s1 += v * xt[b1 + t]!; s2 += v * xt[b2 + t]!; s3 += v * xt[b3 + t]!;
        }
        gram[row + j]! += s0; gram[row + j + 1]! += s1; gram[row + j + 2]! += s2; gram[row + j + 3]! += s3;
      }
      for (; j < K; j++) {
        const b0 = j * R;
        let s0 = 0;
        for (let t = 0; t < r; t++) s0 += xt[a + t]! * xt[b0 + t]!;
        gram[row + j]! += s0;
      }
    }
  }
  st.tokens += T;
}

function keepSample(st: GroupStats, x: Float32Array, rows: number): void {
  if (rows <= 0) return;
  st.sample = x.slice(0, rows * st.K);
  st.sampleRows = rows;
}

/** Mirrors the upper triangle into the lower one. */
export function finishGroupStats(st: GroupStats): GroupStats {
  const { K, gram } = st;
  for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) gram[i * K + j] = gram[j * K + i]!;
  return st;
}

/**
 * Runs one decoder layer at a time over calibration sequences on a device, with the FP weights
 * `weights` (f32 or f16 dense, uploaded by uploadWeights).
 */
export class LayerCalibrator {
  private readonly ops;
  private readonly bufs: Record<string, DeviceBuffer<'f32'>> = {};
  private readonly kCache: DeviceBuffer<'f32'>;
  private readonly vCache: DeviceBuffer<'f32'>;
  private readonly slots: DeviceBuffer<'i32'>;
  private readonly pos: DeviceBuffer<'u32'>;
  private readonly rope: DeviceBuffer<'f32'>;
  private readonly blockTables: DeviceBuffer<'u32'>;
  private readonly tiles: DeviceBuffer<'u32'>;
  private readonly blocksPerSeq: number;
  private readonly numBlocks: number;
  /** Sequences per pass. */
  readonly seqsPerPass: number;
  private readonly allocated: DeviceBuffer[] = [];
  private readonly attn;
  private readonly attnSizes: AttentionSizes;

  /**
   * sampleSeqs: whole sequences whose q/k/v and gate/up inputs are kept (GroupStats.sample) for
   * the module-output losses; they are the first pass's, so at most seqsPerPass.
   */
  constructor(readonly dev: Device, readonly spec: ModelSpec, readonly weights: ModelWeights, readonly seqLen: number, maxPassTokens = 1024, readonly sampleSeqs = 0) {
    const s = spec, caps = dev.caps, BS = 16;
    if (seqLen > s.maxPositions) throw new Error(`calibration: sequence length ${seqLen} exceeds the model's context of ${s.maxPositions}`);
    this.seqsPerPass = Math.max(1, Math.floor(maxPassTokens / seqLen));
    const T = this.seqsPerPass * seqLen;
    this.blocksPerSeq = Math.ceil(seqLen / BS);
    this.numBlocks = this.seqsPerPass * this.blocksPerSeq;
    this.ops = {
      norm: rmsNorm({ caps, workgroupSize: defaultRmsNormWorkgroup(s.hidden, caps) }),
      rope: ropeQkv({ layout: s.ropeLayout === 'interleaved' ? 'interleaved' : 'halves', caps }),
      append: kvAppend({ headDim: s.headDim, kvDtype: 'f32', blockSize: BS, caps }),
    };
    this.attn = pagedAttention({ headDim: s.headDim, groupSize: s.heads / s.kvHeads, kvDtype: 'f32', blockSize: BS, caps });
    const alloc = <D extends 'f32' | 'u32' | 'i32'>(dtype: D, n: number, label: string): DeviceBuffer<D> => {
      const b = dev.alloc(dtype, n, `calib.${label}`);
      this.allocated.push(b);
      return b;
    };
    try {
      const qDim = s.heads * s.headDim, kvDim = s.kvHeads * s.headDim;
      for (const [name, n] of [['x', T * s.hidden], ['x2', T * s.hidden], ['h', T * s.hidden], ['qkv', T * (qDim + 2 * kvDim)],
        ['q', T * qDim], ['k', T * kvDim], ['v', T * kvDim], ['attn', T * qDim], ['ffn', T * s.ffn]] as const) {
        this.bufs[name] = alloc('f32', n, name);
      }
      this.kCache = alloc('f32', this.numBlocks * BS * kvDim, 'kCache');
      this.vCache = alloc('f32', this.numBlocks * BS * kvDim, 'vCache');
      this.slots = alloc('i32', T, 'slots');
      this.pos = alloc('u32', T, 'positions');
      const table = ropeTable(ropeFrequencies(s), seqLen);
      this.rope = alloc('f32', table.length, 'ropeTable');
      dev.write(this.rope, table);
      // Every pass has the same layout (seqsPerPass sequences of seqLen), so its metadata is fixed.
      const meta = prepareAttention(this.attn.config, {
        numTokens: T,
        seqs: Array.from({ length: this.seqsPerPass }, (_, i) => ({
          qStart: i * seqLen, qLen: seqLen, ctxLen: 0, blockTable: Array.from({ length: this.blocksPerSeq }, (_, b) => i * this.blocksPerSeq + b),
        })),
        scale: 1 / Math.sqrt(s.headDim),
        window: s.slidingWindow ?? 0,
      }, { numBlocks: this.numBlocks, numKvHeads: s.kvHeads, maxBlocksPerSeq: this.blocksPerSeq });
      this.attnSizes = meta.sizes;
      this.blockTables = alloc('u32', meta.blockTables.length, 'blockTables');
      this.tiles = alloc('u32', meta.tiles.length, 'tiles');
      dev.write(this.blockTables, meta.blockTables);
      dev.write(this.tiles, meta.tiles);
      const slots = new Int32Array(T), pos = new Uint32Array(T);
      for (let i = 0; i < this.seqsPerPass; i++) {
        for (let j = 0; j < seqLen; j++) {
          slots[i * seqLen + j] = (i * this.blocksPerSeq + Math.floor(j / BS)) * BS + (j % BS);
          pos[i * seqLen + j] = j;
        }
      }
      checkSlots(slots, this.numBlocks, BS);
      dev.write(this.slots, slots);
      dev.write(this.pos, pos);
    } catch (e) {
      this.destroy();
      throw e;
    }
  }

  /**
   * Layer `l` over the hidden states `hidden` [S·seqLen, hidden] (S sequences): returns the
   * statistics of its four input groups and the layer's output (the next layer's input).
   */
  async runLayer(l: number, hidden: Float32Array): Promise<{ stats: LayerStats; out: Float32Array }> {
    const s = this.spec, dev = this.dev, b = this.bufs, w = this.weights.layers[l]!, D = s.hidden, L = this.seqLen;
    const S = hidden.length / (L * D);
    if (!Number.isInteger(S)) throw new Error(`calibration: ${hidden.length} hidden values are not whole sequences of ${L}×${D}`);
    const stats: LayerStats = {
      qkv: newGroupStats(D), o: newGroupStats(s.heads * s.headDim), gateUp: newGroupStats(D), down: newGroupStats(s.ffn),
    };
    const out = new Float32Array(hidden.length);
    for (let first = 0; first < S; first += this.seqsPerPass) {
      // The last pass may carry fewer sequences: pad it by repeating them and count only the real rows.
      const n = Math.min(this.seqsPerPass, S - first), T = this.seqsPerPass * L, real = n * L;
      const x = new Float32Array(T * D);
      for (let i = 0; i < this.seqsPerPass; i++) x.set(hidden.subarray((first + (i % n)) * L * D, (first + (i % n) + 1) * L * D), i * L * D);
      dev.write(b.x!, x);
      this.norm(b.x!, w.attnNorm, b.h!, T);
      const h1 = await dev.read(b.h!);
      accumulate(stats.qkv, h1, real);
      if (first === 0) keepSample(stats.qkv, h1, Math.min(this.sampleSeqs, n) * L);
      this.linear(w.qkv, b.h!, b.qkv!, T);
      dev.launch(this.ops.rope, { qkv: b.qkv!, pos: this.pos, table: this.rope, q: b.q!, k: b.k!, v: b.v! },
        { T, Hq: s.heads, Hk: s.kvHeads, D: s.headDim, maxPos: L });
      dev.run(this.ops.append, { kNew: b.k!, vNew: b.v!, slots: this.slots, kCache: this.kCache, vCache: this.vCache },
        { numTokens: T, numKvHeads: s.kvHeads, numBlocks: this.numBlocks });
      dev.run(this.attn, { q: b.q!, kCache: this.kCache, vCache: this.vCache, blockTables: this.blockTables, tiles: this.tiles, out: b.attn! }, this.attnSizes);
      accumulate(stats.o, await dev.read(b.attn!), real);
      this.linear(w.o, b.attn!, b.x2!, T, b.x!);
      this.norm(b.x2!, w.ffnNorm, b.h!, T);
      const h2 = await dev.read(b.h!);
      accumulate(stats.gateUp, h2, real);
      if (first === 0) keepSample(stats.gateUp, h2, Math.min(this.sampleSeqs, n) * L);
      this.linear(w.gateUp, b.h!, b.ffn!, T);
      accumulate(stats.down, await dev.read(b.ffn!), real);
      this.linear(w.down, b.ffn!, b.x!, T, b.x2!);
      out.set((await dev.read(b.x!)).subarray(0, real * D), first * L * D);
    }
    for (const g of Object.values(stats)) finishGroupStats(g);
    return { stats, out };
  }

  destroy(): void {
    for (const buf of this.allocated) this.dev.free(buf);
    this.allocated.length = 0;
  }

  private norm(x: DeviceBuffer<'f32'>, w: DeviceBuffer<'f32'>, out: DeviceBuffer<'f32'>, M: number): void {
    this.dev.launch(this.ops.norm, { x, w, out }, { M, D: this.spec.hidden, eps: this.spec.rmsNormEps });
  }

  private linear(lin: DeviceLinear, x: DeviceBuffer<'f32'>, out: DeviceBuffer<'f32'>, M: number, residual?: DeviceBuffer<'f32'>): void {
    runLinear(this.dev, lin.op, { x, ...lin.weights, out, ...(residual ? { residual } : {}) }, M);
  }
}

/**
 * Calibration token sequences: the text's ids cut into `samples` consecutive blocks of `seqLen`
 * (as AutoAWQ cuts its calibration set). The text must hold them all.
 */
export function calibrationSequences(ids: readonly number[], samples: number, seqLen: number, source: string): number[][] {
  for (const [name, v] of [['samples', samples], ['seq-len', seqLen]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`quantize: --${name} ${v} must be a positive integer`);
  }
  if (ids.length < samples * seqLen) {
    throw new Error(`quantize: the calibration text ${source} has ${ids.length} tokens, fewer than --samples ${samples} × --seq-len ${seqLen} = ${samples * seqLen}; give a longer --calib file or fewer samples`);
  }
  return Array.from({ length: samples }, (_, i) => ids.slice(i * seqLen, (i + 1) * seqLen));
}
