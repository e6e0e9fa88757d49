// Helpers every benchmark shares: launch timing, the copy-bandwidth roofline, seeded inputs, ragged attention batches.
import { residualAdd } from '../codegen/kernels/pointwise.js';
import type { Device } from '../src/backend/device.js';
import type { RaggedSequence } from '../src/ops/attention.js';
import { timeLaunches } from '../src/backend/timing.js';

export { timeLaunches };

/** Seeded uniform [0, 1) (an LCG: fast, and only needs to be repeatable). */
export function lcg(seed: number): () => number {
  let a = seed >>> 0;
  return () => { a = (Math.imul(a, 1664525) + 1013904223) >>> 0; return a / 4294967296; };
}

/** n random 32-bit words (packed INT4 weights, zero points): the same LCG's states. */
export function randomWords(n: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) { a = (Math.imul(a, 1664525) + 1013904223) >>> 0; out[i] = a | 0; }
  return out;
}

/** n values uniform in [−amp, amp). */
export function randomF32(n: number, seed: number, amp: number): Float32Array {
  const r = lcg(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * amp;
  return out;
}

/**
 * Measured memory bandwidth in GB/s: out = a + b over n f32 (3 × 4n bytes move), the roofline
 * memory-bound kernels are compared against.
 */
export async function copyBandwidth(dev: Device, n: number, o: { reps: number; samples: number }): Promise<number> {
  const a = dev.alloc('f32', n, 'bw.a'), b = dev.alloc('f32', n, 'bw.b'), c = dev.alloc('f32', n, 'bw.c');
  try {
    dev.write(a, randomF32(n, 1, 1));
    dev.write(b, randomF32(n, 2, 1));
    const kern = residualAdd({ caps: dev.caps });
    const ms = await timeLaunches(dev, () => dev.launch(kern, { a, b, out: c }, { n }), o);
    return (3 * n * 4) / ms / 1e6;
  } finally { dev.free(a); dev.free(b); dev.free(c); }
}

/** A ragged attention batch on a fresh cache: each sequence's q rows after the previous one's, its blocks the next unused ones in order. */
export function contiguousBatch(spec: { qLen: number; ctxLen: number }[], blockSize: number) {
  const blocksPer = spec.map((s) => Math.ceil((s.ctxLen + s.qLen) / blockSize));
  let next = 0, row = 0;
  const seqs: RaggedSequence[] = spec.map((s, i) => {
    const table = Array.from({ length: blocksPer[i]! }, () => next++);
    const seq = { qStart: row, qLen: s.qLen, ctxLen: s.ctxLen, blockTable: table };
    row += s.qLen;
    return seq;
  });
  return { seqs, numTokens: row, numBlocks: next, maxBlocksPerSeq: Math.max(...blocksPer) };
}
