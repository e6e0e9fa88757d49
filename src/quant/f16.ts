// IEEE binary16 on the host: conversion both ways and packing two halves per u32 word, the form
// in which f16 data reaches every kernel (WebGPU compatibility mode has no f16 buffers).

const f32Buf = new Float32Array(1);
const u32Buf = new Uint32Array(f32Buf.buffer);

/** float → half bits, round to nearest even; overflow → ±Inf, NaN → quiet NaN. */
export function f32ToF16Bits(v: number): number {
  f32Buf[0] = v;
  const x = u32Buf[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): shift the full significand, round to nearest even.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // may carry into the exponent: correct
  return sign | h;
}

/** Half bits → float (exact). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? Number.NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Round a float to the nearest half and back. */
export function roundToF16(v: number): number {
  return f16BitsToF32(f32ToF16Bits(v));
}

export function f32ArrayToF16(a: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f32ToF16Bits(a[i]!);
  return out;
}

/**
 * Two halves per word, element 2j in the low 16 bits of word j (unpack2x16float's .x). An odd
 * count leaves the last high half zero. Little-endian hosts could view the bytes directly; this
 * copies so it works on any host and any alignment.
 */
export function packF16Pairs(h: Uint16Array): Uint32Array {
  const out = new Uint32Array(Math.ceil(h.length / 2));
  for (let j = 0; j < out.length; j++) out[j] = (h[2 * j]! | ((h[2 * j + 1] ?? 0) << 16)) >>> 0;
  return out;
}

export function unpackF16Pairs(w: Uint32Array, length = w.length * 2): Uint16Array {
  const out = new Uint16Array(length);
  for (let i = 0; i < length; i++) out[i] = (w[i >> 1]! >>> ((i & 1) * 16)) & 0xffff;
  return out;
}
