// Random ragged attention batches shared by the pagedAttention and attentionRows tests: the case
// builder (random non-contiguous block tables, q rows out of sequence order), the float64
// reference, and sequence 0 cut out alone (the batch-invariance checks).
import { f16BitsToF32, f32ArrayToF16 } from '../../codegen/dsl/f16.js';
import type { RaggedSequence } from '../../src/ops/attention.js';
import { randomF32 } from '../util.js';

export const BS = 16;

export interface Shape { headDim: number; group: number; kvHeads: number; kvDtype: 'f32' | 'f16'; window?: number }
export interface Case {
  shape: Shape; seqs: RaggedSequence[]; numTokens: number; numBlocks: number; maxBlocksPerSeq: number;
  /** Per sequence: K and V at every position [pos][kvHead][d] (context and new tokens). */
  k: Float32Array[]; v: Float32Array[]; q: Float32Array;
}
export type CaseSpec = { qLen: number; ctxLen: number }[];

export interface CaseOptions {
  /** Blocks beyond those the sequences need (default 7). */
  spareBlocks?: number;
  /** K/V as an f16 cache holds them (f16-rounded for f16 KV), so the reference reads the cache's values. */
  kvAsCached?: boolean;
}

const roundF16 = (a: Float32Array) => Float32Array.from(f32ArrayToF16(a), f16BitsToF32);

export function makeCase(r: () => number, shape: Shape, spec: CaseSpec, { spareBlocks = 7, kvAsCached = false }: CaseOptions = {}): Case {
  const rowKV = shape.kvHeads * shape.headDim, H = shape.kvHeads * shape.group;
  const needs = spec.map((s) => Math.ceil((s.ctxLen + s.qLen) / BS));
  const numBlocks = needs.reduce((a, b) => a + b, 0) + spareBlocks;
  const perm = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = numBlocks - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [perm[i], perm[j]] = [perm[j]!, perm[i]!]; }
  const order = spec.map((_, i) => i).sort(() => r() - 0.5); // q rows not in sequence order
  const qStart = new Array<number>(spec.length);
  let row = 0, used = 0;
  for (const i of order) { qStart[i] = row; row += spec[i]!.qLen; }
  const seqs = spec.map((s, i) => {
    const table = perm.slice(used, used + needs[i]!);
    used += needs[i]!;
    return { qStart: qStart[i]!, qLen: s.qLen, ctxLen: s.ctxLen, blockTable: table };
  });
  const kv = (n: number) => (kvAsCached && shape.kvDtype === 'f16' ? roundF16(randomF32(n, r)) : randomF32(n, r));
  return {
    shape, seqs, numTokens: row, numBlocks, maxBlocksPerSeq: Math.max(...needs) + 1,
    k: spec.map((s) => kv((s.ctxLen + s.qLen) * rowKV)), v: spec.map((s) => kv((s.ctxLen + s.qLen) * rowKV)),
    q: randomF32(row * H * shape.headDim, r),
  };
}

export function reference(c: Case): Float64Array {
  const { headDim: D, group: G, kvHeads: KVH, window = 0 } = c.shape;
  const H = KVH * G, scale = 1 / Math.sqrt(D);
  const out = new Float64Array(c.numTokens * H * D);
  c.seqs.forEach((s, si) => {
    for (let j = 0; j < s.qLen; j++) {
      const end = s.ctxLen + j + 1, lo = window > 0 ? Math.max(0, end - window) : 0;
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / G), qo = ((s.qStart + j) * H + h) * D;
        const sc: number[] = [];
        for (let p = lo; p < end; p++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += c.q[qo + d]! * c.k[si]![(p * KVH + kvh) * D + d]!;
          sc.push(dot * scale);
        }
        const m = Math.max(...sc), w = sc.map((x) => Math.exp(x - m)), z = w.reduce((a, b) => a + b, 0);
        for (let p = lo; p < end; p++) {
          for (let d = 0; d < D; d++) out[qo + d]! += (w[p - lo]! / z) * c.v[si]![(p * KVH + kvh) * D + d]!;
        }
      }
    }
  });
  return out;
}

const outRowLen = (c: Case) => c.shape.kvHeads * c.shape.group * c.shape.headDim;

/** The bits of sequence 0's output rows from..from + n (default: all of them). */
export function seq0RowBits(c: Case, out: Float32Array, from = 0, n = c.seqs[0]!.qLen): Uint32Array {
  const rowLen = outRowLen(c), at = c.seqs[0]!.qStart + from;
  return new Uint32Array(out.slice(at * rowLen, (at + n) * rowLen).buffer);
}

/** Sequence 0 alone: its q rows qFrom..qFrom + qLen after the context and rows before qFrom; the same K/V and block table. */
export function seq0Alone(c: Case, qFrom: number, qLen: number): Case {
  const s = c.seqs[0]!, rowLen = outRowLen(c), kvLen = (s.ctxLen + qFrom + qLen) * c.shape.kvHeads * c.shape.headDim;
  return {
    ...c, numTokens: qLen, q: c.q.slice((s.qStart + qFrom) * rowLen, (s.qStart + qFrom + qLen) * rowLen),
    seqs: [{ ...s, qStart: 0, qLen, ctxLen: s.ctxLen + qFrom }], k: [c.k[0]!.slice(0, kvLen)], v: [c.v[0]!.slice(0, kvLen)],
  };
}
