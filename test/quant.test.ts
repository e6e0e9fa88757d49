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
          const range = Math.max(...col) - Math.min(...col);
          const s = f16BitsToF32(t.scales[grp * N + n]!);
          // Half a step, plus what the f16 rounding of s took off the grid's 15 steps, plus the
          // f16 rounding of the weight itself (AutoAWQ quantizes a half-precision layer), plus the
          // f16 rounding of w / s (a quotient of up to 16 steps, relative error 2^-11: 16 · 2^-11
          // of a step can tip a round; seed 1658947223 at g=32 needed more than 1e-3).
          const bound = s / 2 + Math.max(0, range - 15 * s) + 16 * 2 ** -11 * s;
          for (let i = 0; i < g; i++) {
            const k = grp * g + i;
            expect(Math.abs(W[k * N + n]! - w[k * N + n]!)).toBeLessThanOrEqual(bound + Math.abs(w[k * N + n]!) * 2 ** -11);
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
  it('a group that does not straddle 0 is clipped as AutoAWQ clips it (zero point 0 or 15, no widening)', () => {
    // All positive: zero = clamp(−round(min/s), 0, 15) = 0, so the grid starts at 0 and the top of
    // the group clips to 15·s; all negative: zero = 15, the grid ends at 0.
    const pos = Float32Array.from({ length: 32 * 8 }, (_, i) => 0.5 + (i % 7) / 6);
    const tp = quantizeRtnInt4(pos, 32, 8, 32, 'KN');
    expect(Array.from(unpackAwqRows(tp.qzeros, 1, 8))).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(Math.max(...dequantizeAwq(tp))).toBeCloseTo(15 * f16BitsToF32(tp.scales[0]!), 12);
    const neg = Float32Array.from(pos, (v) => -v);
    expect(Array.from(unpackAwqRows(quantizeRtnInt4(neg, 32, 8, 32, 'KN').qzeros, 1, 8))).toEqual([15, 15, 15, 15, 15, 15, 15, 15]);
  });
  it('refuses a wrong-sized or non-finite weight', () => {
    expect(() => quantizeRtnInt4(new Float32Array(10), 32, 8, 32, 'KN')).toThrow(/10 elements, expected K·N = 32·8/);
    const w = new Float32Array(32 * 8);
    w[9] = Number.NaN;
    expect(() => quantizeRtnInt4(w, 32, 8, 32, 'KN')).toThrow(/\[k=1, n=1\] is NaN/);
  });
});

// An independent model of AutoAWQ's half-precision rule (written from the rule, not from rtn.ts):
// f16 rounding by arithmetic on the value's binade instead of bit manipulation.
function toHalf(x: number): number {
  const f = Math.fround(x); // PyTorch computes a half op in f32 first
  if (f === 0 || !Number.isFinite(f)) return f;
  const a = Math.abs(f);
  const e = Math.max(Math.floor(Math.log2(a)), -14); // subnormals share the 2^-24 spacing
  let ulp = 2 ** (e - 10);
  if (a / ulp >= 2048) ulp *= 2; // log2 rounded the exponent down across a power of two
  const r = a / ulp, fl = Math.floor(r);
  const n = r - fl > 0.5 || (r - fl === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  const v = n * ulp;
  return Math.sign(f) * (v > 65504 ? Infinity : v);
}
function roundEven(x: number): number {
  const fl = Math.floor(x);
  return x - fl > 0.5 || (x - fl === 0.5 && Math.abs(fl % 2) === 1) ? fl + 1 : fl;
}
/** AutoAWQ pseudo_quantize_tensor on one group of halves: codes, zero and scale. */
function autoAwqGroup(w: number[]): { q: number[]; zero: number; scale: number } {
  const range = Math.max(toHalf(Math.max(...w) - Math.min(...w)), toHalf(1e-5));
  const scale = toHalf(range / 15);
  const zero = Math.min(15, Math.max(0, -roundEven(toHalf(Math.min(...w) / scale))));
  return { q: w.map((v) => Math.min(15, Math.max(0, roundEven(toHalf(v / scale)) + zero))), zero, scale };
}

describe("RTN INT4 equals AutoAWQ's half-precision rule", () => {
  it('on random weights with planted ties (quotients that become k + ½ only in f16)', () => {
    const seed = freshSeed('rtn autoawq ties');
    const r = rng(seed);
    const [K, N, g] = [128, 64, 32];
    const w = new Float32Array(K * N); // [N, K], as checkpoints store it
    for (let i = 0; i < w.length; i++) w[i] = toHalf((r() * 2 - 1) * (0.02 + 0.2 * r()));
    // Plant ties: in each group, after its range is fixed by two pinned extremes, set a few weights
    // to f16 values v whose f16(v / scale) is exactly k + ½.
    let planted = 0, f16Only = 0;
    for (let n = 0; n < N; n++) {
      for (let grp = 0; grp < K / g; grp++) {
        const base = n * K + grp * g;
        w[base] = toHalf(-0.1 - 0.05 * r());
        w[base + 1] = toHalf(0.1 + 0.05 * r());
        const { scale } = autoAwqGroup(Array.from(w.subarray(base, base + g)));
        for (let j = 2; j < 8; j++) {
          const k = Math.floor(r() * 12) - 6;
          const target = toHalf((k + 0.5) * scale);
          // Walk a few f16 steps around the target for a value whose quotient rounds to k + ½.
          for (let d = -3; d <= 3; d++) {
            const v = toHalf(target + d * 2 ** (Math.floor(Math.log2(Math.abs(target) || 1e-8)) - 10));
            if (Math.abs(v) > 0.1 || toHalf(v / scale) !== k + 0.5) continue;
            w[base + j] = v;
            planted++;
            if (v / scale !== k + 0.5) f16Only++;
            break;
          }
        }
      }
    }
    console.log(`[rtn] planted ${planted} ties, ${f16Only} of them only in f16 (seed ${seed})`);
    expect(planted).toBeGreaterThan(N);
    expect(f16Only).toBeGreaterThan(0);
    const t = quantizeRtnInt4(w, K, N, g, 'NK');
    const q = unpackAwqRows(t.qweight, K, N), z = unpackAwqRows(t.qzeros, K / g, N);
    let diff = 0, first = '';
    for (let n = 0; n < N; n++) {
      for (let grp = 0; grp < K / g; grp++) {
        const ref = autoAwqGroup(Array.from(w.subarray(n * K + grp * g, n * K + (grp + 1) * g)));
        const bad = (what: string) => { if (!diff++) first = `n=${n} group ${grp}: ${what}`; };
        if (f16BitsToF32(t.scales[grp * N + n]!) !== ref.scale) bad(`scale ${f16BitsToF32(t.scales[grp * N + n]!)} vs ${ref.scale}`);
        if (z[grp * N + n] !== ref.zero) bad(`zero ${z[grp * N + n]} vs ${ref.zero}`);
        ref.q.forEach((v, i) => { if (q[(grp * g + i) * N + n] !== v) bad(`q[${i}] ${q[(grp * g + i) * N + n]} vs ${v}`); });
      }
    }
    expect(first || 'none').toBe('none');
    expect(diff).toBe(0);
  });

  it('the independent f16 rounding agrees with f32ToF16Bits on random and edge values', () => {
    const r = rng(freshSeed('toHalf'));
    const xs = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519, 2 ** -24, 3 * 2 ** -26, 2 ** -14, 6.1e-5, 1e-5];
    for (let i = 0; i < 2000; i++) xs.push((r() * 2 - 1) * 10 ** (r() * 8 - 6));
    for (const x of xs) expect(toHalf(x), `x = ${x}`).toBe(f16BitsToF32(f32ToF16Bits(x)));
  });
});
