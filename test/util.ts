// Shared helpers for kernel tests: seeded random inputs, poisoning, norm-wise error.

/** mulberry32: small, fast, seeded. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A fresh seed per run, printed so a failure can be replayed with KILN_SEED. */
export function freshSeed(label: string): number {
  const seed = process.env.KILN_SEED ? Number(process.env.KILN_SEED) : (Math.random() * 2 ** 31) >>> 0;
  console.log(`[seed] ${label}: ${seed}`);
  return seed;
}

export function randomF32(n: number, r: () => number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * r();
  return a;
}

/** ‖out − ref‖₂ / ‖ref‖₂. */
export function relErr(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new Error(`length ${out.length} vs reference ${ref.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = out[i]! - ref[i]!;
    num += d * d;
    den += ref[i]! * ref[i]!;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export const POISON_F32 = Number.NaN;
export const POISON_U32 = 0xdeadbeef;
