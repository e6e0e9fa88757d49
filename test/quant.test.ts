// Host-side quantization: f16 conversion, the AutoAWQ packing (nibble interleave), the float64
// dequantize reference, and RTN INT4 quantization's error bound.
import { describe, expect, it } from 'vitest';
import { AWQ_ORDER, checkAwqShape, dequantizeAwq, packAwqRows, unpackAwqRows } from '../src/quant/awq.js';
import { f16BitsToF32, f32ToF16Bits, packF16Pairs, unpackF16Pairs } from '../src/quant/f16.js';
import { quantizeRtnInt4 } from '../src/quant/rtn.js';
import { freshSeed, randomF32, rng } from './util.js';

describe('f16', () => {
  it('every finite half survives half → float → half', () => {
    for (let h = 0; h < 65536; h++) {
      const exp = (h >> 10) & 0x1f;
      if (exp === 0x1f) continue;
      expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
    }
  });
  it('rounds to nearest, ties to even, overflow to infinity, tiny to zero', () => {
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie → even (1.0)
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie → even (1 + 2^-9)
    expect(f32ToF16Bits(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(-1e9)).toBe(0xfc00);
    expect(f32ToF16Bits(2 ** -25)).toBe(0); // half of the smallest subnormal: tie → 0
    expect(f32ToF16Bits(3 * 2 ** -26)).toBe(1); // above it → smallest subnormal
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(Number.NaN)))).toBe(true);
  });
  it('packs two halves per word, even element in the low half', () => {
    const h = Uint16Array.from([0x1111, 0x2222, 0x3333]);
    const w = packF16Pairs(h);
    expect(Array.from(w)).toEqual([0x22221111, 0x00003333]);
    expect(Array.from(unpackF16Pairs(w, 3))).toEqual([0x1111, 0x2222, 0x3333]);
  });
});

describe('AutoAWQ packing', () => {
  it('nibble i of word c holds column 8c + [0,2,4,6,1,3,5,7][i]', () => {
    expect(AWQ_ORDER).toEqual([0, 2, 4, 6, 1, 3, 5, 7]);
    // Column j holds value j + 1: nibbles read 1,3,5,7,2,4,6,8 from the low end.
    const words = packAwqRows([1, 2, 3, 4, 5, 6, 7, 8], 1, 8);
    expect(words[0]! >>> 0).toBe(0x86427531);
    // Values ≥ 8 in the top nibble make the int32 negative: still the same bits.
    const neg = packAwqRows([0, 0, 0, 0, 0, 0, 0, 15], 1, 8);
    expect(neg[0]).toBe(-268435456); // 0xf0000000
    expect(Array.from(unpackAwqRows(neg, 1, 8))).toEqual([0, 0, 0, 0, 0, 0, 0, 15]);
  });
  it('unpack inverts pack on random values', () => {
    const r = rng(freshSeed('awq pack'));
    const [rows, N] = [5, 64];
    const q = Uint8Array.from({ length: rows * N }, () => Math.floor(r() * 16));
    expect(Array.from(unpackAwqRows(packAwqRows(q, rows, N), rows, N))).toEqual(Array.from(q));
  });
  it('refuses bad shapes and values', () => {
    expect(() => checkAwqShape(100, 32, 32)).toThrow(/K = 100 is not a multiple of the group size 32/);
    expect(() => checkAwqShape(128, 12, 32)).toThrow(/N = 12 is not a multiple of 8/);
    expect(() => checkAwqShape(128, 16, 16)).toThrow(/group size 16 is not one of 32, 64, 128/);
    expect(() => packAwqRows([16, 0, 0, 0, 0, 0, 0, 0], 1, 8)).toThrow(/value 16 at \[0, 0\]/);
  });
  it('dequantize: W[k, n] = (q − z) · s with the group of k', () => {
    const [K, N, g] = [64, 8, 32];
    const q = Array.from({ length: K * N }, (_, i) => i % 16);
    const z = Array.from({ length: 2 * N }, (_, i) => (i * 3) % 16);
    const s = Uint16Array.from({ length: 2 * N }, (_, i) => f32ToF16Bits(0.5 + i / 16));
    const W = dequantizeAwq({ K, N, groupSize: g, qweight: packAwqRows(q, K, N), qzeros: packAwqRows(z, 2, N), scales: s });
    for (const [k, n] of [[0, 0], [31, 7], [32, 3], [63, 5]] as const) {
      const grp = Math.floor(k / g);
      expect(W[k * N + n]).toBe((q[k * N + n]! - z[grp * N + n]!) * f16BitsToF32(s[grp * N + n]!));
    }
  });
});

describe('RTN INT4', () => {
  for (const g of [32, 64, 128]) {
    it(`g=${g}: every weight within half a step of its group's grid`, () => {
      const [K, N] = [256, 24];
      const r = rng(freshSeed(`rtn g=${g}`));
      const w = randomF32(K * N, r, -0.1, 0.1);
      const t = quantizeRtnInt4(w, K, N, g, 'KN');
      const W = dequantizeAwq(t);
      for (let grp = 0; grp < K / g; grp++) {
        for (let n = 0; n < N; n++) {
          const col = Array.from({ length: g }, (_, i) => w[(grp * g + i) * N + n]!);
          const range = Math.max(...col, 0) - Math.min(...col, 0);
          const s = f16BitsToF32(t.scales[grp * N + n]!);
          // Half a step, plus what the f16 rounding of s took off the grid's 15 steps.
          const bound = s / 2 + Math.max(0, range - 15 * s) + 1e-7;
          for (let i = 0; i < g; i++) {
            const k = grp * g + i;
            expect(Math.abs(W[k * N + n]! - w[k * N + n]!)).toBeLessThanOrEqual(bound);
          }
        }
      }
    });
  }
  it("torch's [N, K] layout quantizes like its transpose", () => {
    const [K, N, g] = [64, 16, 32];
    const r = rng(freshSeed('rtn NK'));
    const kn = randomF32(K * N, r);
    const nk = new Float32Array(K * N);
    for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) nk[n * K + k] = kn[k * N + n]!;
    expect(quantizeRtnInt4(nk, K, N, g, 'NK')).toEqual(quantizeRtnInt4(kn, K, N, g, 'KN'));
  });
  it('a group that does not straddle 0 (constant, all positive, all negative) is not clipped', () => {
    for (const [lo, hi] of [[0.25, 0.25], [0.5, 1.5], [-3, -2]] as const) {
      const w = Float32Array.from({ length: 32 * 8 }, (_, i) => lo + ((hi - lo) * (i % 7)) / 6);
      const t = quantizeRtnInt4(w, 32, 8, 32, 'KN');
      const step = Math.max(Math.abs(lo), Math.abs(hi)) / 15;
      const W = dequantizeAwq(t);
      expect(W.every((v, i) => Math.abs(v - w[i]!) <= step / 2 + 1e-3 * step)).toBe(true);
    }
  });
  it('refuses a wrong-sized or non-finite weight', () => {
    expect(() => quantizeRtnInt4(new Float32Array(10), 32, 8, 32, 'KN')).toThrow(/10 elements, expected K·N = 32·8/);
    const w = new Float32Array(32 * 8);
    w[9] = Number.NaN;
    expect(() => quantizeRtnInt4(w, 32, 8, 32, 'KN')).toThrow(/\[k=1, n=1\] is NaN/);
  });
});
