// IEEE binary16, the one implementation: host code (weights, scales, tests), the emitters' literal
// rounding and the CPU executor's runtime (which runs makeF16's own text, see emit/js-runtime.ts)
// all convert through this file, so they cannot disagree.

/** Conversions between f32 values and f16 bits; the table holds every f16 bit pattern's value. */
export interface F16Conversions {
  /** f32 value (x is rounded to f32 first) → f16 bits, round to nearest even; overflow → ±Inf, NaN → quiet NaN. */
  bits(x: number): number;
  /** f16 bits → value (exact). */
  value(h: number): number;
  table: Float32Array;
}

/**
 * Builds the conversions. Self-contained (only locals and globals): the CPU executor's generated
 * kernels embed its text, `(${makeF16})()`, so it must not reach anything in this module.
 */
export function makeF16(): F16Conversions {
  const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const e = (h >>> 10) & 31, m = h & 1023;
    const v = e === 0 ? m * 5.9604644775390625e-8 : e === 31 ? (m === 0 ? Infinity : NaN) : (1024 + m) * Math.pow(2, e - 25);
    table[h] = h & 0x8000 ? -v : v;
  }
  const bits = (x: number): number => {
    f32[0] = x;
    const u = u32[0] ?? 0;
    const sign = (u >>> 16) & 0x8000, e = (u >>> 23) & 0xff, m = u & 0x7fffff;
    if (e === 0xff) return sign | 0x7c00 | (m !== 0 ? 0x200 : 0);
    const he = e - 112;
    if (he >= 31) return sign | 0x7c00;
    if (he <= 0) {
      // Subnormal half (or zero): shift the full significand, round to nearest even.
      if (he < -10) return sign;
      const full = m | 0x800000, shift = 14 - he;
      const rem = full & ((1 << shift) - 1), half = 1 << (shift - 1);
      let k = full >>> shift;
      if (rem > half || (rem === half && (k & 1) === 1)) k++;
      return sign | k;
    }
    let h = sign | (he << 10) | (m >>> 13);
    const rem = m & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // may carry into the exponent: correct
    return h;
  };
  return { bits, value: (h: number) => table[h & 0xffff] ?? NaN, table };
}

const F16 = makeF16();

/** float → half bits, round to nearest even (through f32); overflow → ±Inf, NaN → quiet NaN. */
export const f32ToF16Bits = (v: number): number => F16.bits(v);
/** Half bits → float (exact). */
export const f16BitsToF32 = (h: number): number => F16.value(h);
/** Round a float to the nearest half (through f32) and back. */
export const roundToF16 = (v: number): number => F16.value(F16.bits(v));

/**
 * Round a double straight to the nearest binary16, ties to even, with no f32 step in between
 * (the emitters' literals: a compiler reads the decimal text as a double). Math.f16round is not in Node 20.
 */
export function f16round(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  if (a >= 65520) return Math.sign(x) * Infinity;
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  const q = 2 ** (Math.max(e, -14) - 10); // spacing of binary16 values near a
  const r = a / q, fl = Math.floor(r), frac = r - fl;
  const n = frac > 0.5 || (frac === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  return Math.sign(x) * n * q;
}

export function f32ArrayToF16(a: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = F16.bits(a[i] ?? NaN);
  return out;
}

/**
 * Two halves per word, element 2j in the low 16 bits of word j (unpack2x16float's .x). An odd
 * count leaves the last high half zero. Little-endian hosts could view the bytes directly; this
 * copies so it works on any host and any alignment.
 */
export function packF16Pairs(h: Uint16Array): Uint32Array {
  const out = new Uint32Array(Math.ceil(h.length / 2));
  for (let j = 0; j < out.length; j++) out[j] = ((h[2 * j] ?? 0) | ((h[2 * j + 1] ?? 0) << 16)) >>> 0;
  return out;
}

export function unpackF16Pairs(w: Uint32Array, length = w.length * 2): Uint16Array {
  const out = new Uint16Array(length);
  for (let i = 0; i < length; i++) out[i] = ((w[i >> 1] ?? 0) >>> ((i & 1) * 16)) & 0xffff;
  return out;
}
