// The functions every WebAssembly kernel module carries besides its `run`: f32 → f16 bits (the
// bit-exact port of codegen/dsl/f16.ts makeF16's; f16 → f32 reads makeF16's table in memory) and
// "is any invocation of this mask active". And the Math functions a module imports, so that exp,
// log, sin, cos, tanh and pow give the bits the JavaScript executor's Math calls give — exp2 is
// computed here instead (exp2Helper), checked against Math.pow over every f32 input it computes.
import { FnBuilder, type ImportFn } from './wasm-encode.js';

/** Imported f64 functions, in import order (their function indices). */
export const WASM_MATH = ['exp', 'log', 'log2', 'sin', 'cos', 'tanh', 'pow', 'fmod'] as const;
export type WasmMath = (typeof WASM_MATH)[number];
export const MATH_IMPORTS: ImportFn[] = WASM_MATH.map((n) => ({
  module: 'm', name: n, params: n === 'pow' || n === 'fmod' ? ['f64', 'f64'] : ['f64'], results: ['f64'],
}));

/** Function indices: imports first, then run, then the helpers below. */
export const FN = (() => {
  const base = WASM_MATH.length;
  return { run: base, f2h: base + 1, any: base + 2, exp2: base + 3, exp: base + 4, fma: base + 5 };
})();

/**
 * The import object a worker instantiates a kernel with. Self-contained (its text is sent to
 * worker threads): the same Math functions the JavaScript executor calls, and JS's % for f32 rem.
 */
export function wasmMathImports(): Record<string, (...a: number[]) => number> {
  return {
    exp: Math.exp, log: Math.log, log2: Math.log2, sin: Math.sin, cos: Math.cos, tanh: Math.tanh,
    pow: Math.pow, fmod: (a: number, b: number) => a % b,
  };
}

/** f32 value → f16 bits, round to nearest even; overflow → ±Inf, NaN → quiet NaN (makeF16.bits). */
function f2h(): FnBuilder {
  const f = new FnBuilder(['f32'], ['i32']);
  const u = f.local('i32'), sign = f.local('i32'), e = f.local('i32'), m = f.local('i32'), he = f.local('i32');
  const full = f.local('i32'), shift = f.local('i32'), rem = f.local('i32'), half = f.local('i32'), k = f.local('i32');
  f.get(0).op('i32.reinterpret_f32').set(u);
  f.get(u).i32(16).op('i32.shr_u').i32(0x8000).op('i32.and').set(sign);
  f.get(u).i32(23).op('i32.shr_u').i32(0xff).op('i32.and').set(e);
  f.get(u).i32(0x7fffff).op('i32.and').set(m);
  f.get(e).i32(0xff).op('i32.eq').if('nan');
  f.get(sign).i32(0x7c00).op('i32.or').i32(0x200).i32(0).get(m).op('i32.ne').op('i32.mul').op('i32.or').op('return');
  f.end();
  f.get(e).i32(112).op('i32.sub').set(he);
  f.get(he).i32(31).op('i32.ge_s').if('ovf');
  f.get(sign).i32(0x7c00).op('i32.or').op('return');
  f.end();
  f.get(he).i32(0).op('i32.le_s').if('subn');
  f.get(he).i32(-10).op('i32.lt_s').if('zero');
  f.get(sign).op('return');
  f.end();
  f.get(m).i32(0x800000).op('i32.or').set(full);
  f.i32(14).get(he).op('i32.sub').set(shift);
  f.get(full).i32(1).get(shift).op('i32.shl').i32(1).op('i32.sub').op('i32.and').set(rem);
  f.i32(1).get(shift).i32(1).op('i32.sub').op('i32.shl').set(half);
  f.get(full).get(shift).op('i32.shr_u').set(k);
  // k += rem > half || (rem == half && k odd)
  f.get(k);
  f.get(rem).get(half).op('i32.gt_u');
  f.get(rem).get(half).op('i32.eq').get(k).i32(1).op('i32.and').op('i32.and');
  f.op('i32.or').op('i32.add').set(k);
  f.get(sign).get(k).op('i32.or').op('return');
  f.end();
  f.get(sign).get(he).i32(10).op('i32.shl').op('i32.or').get(m).i32(13).op('i32.shr_u').op('i32.or').set(k);
  f.get(m).i32(0x1fff).op('i32.and').set(rem);
  f.get(k);
  f.get(rem).i32(0x1000).op('i32.gt_u');
  f.get(rem).i32(0x1000).op('i32.eq').get(k).i32(1).op('i32.and').op('i32.and');
  f.op('i32.or').op('i32.add');
  return f;
}

/** any(ptr, n): whether any of the n mask bytes at ptr is non-zero. */
function any(): FnBuilder {
  const f = new FnBuilder(['i32', 'i32'], ['i32']);
  const i = f.local('i32');
  f.block('done').loop('scan');
  f.get(i).get(1).op('i32.ge_u').brIf('done');
  f.get(0).get(i).op('i32.add').mem('i32.load8_u').if('hit').i32(1).op('return').end();
  f.get(i).i32(1).op('i32.add').set(i).br('scan');
  f.end().end();
  f.i32(0);
  return f;
}

/**
 * exp2(x) for f32 x with the bits of the JS executor's Math.fround(Math.pow(2, x)), without
 * leaving wasm in nearly every case (the imported call is ~50 ns: most of an attention kernel's
 * time). For −126 < x < 127.5: n = nearest(x), f = x − n (exact, |f| ≤ ½), 2^f by its Taylor
 * series to degree 12 in f64 (relative error < 2^−50 with the evaluation's roundings; Estrin's
 * scheme since 2026-12-07 05:45, 17 → 10 ns a call), times 2^n (exact);
 * the f32 rounding of that is the f32 rounding of the exact 2^x unless 2^x lies within 2^−40 of
 * a rounding boundary (an f32 midpoint), and there — about one input in 65,000 — and outside the
 * range it calls Math.pow as before. Checked against Math.fround(Math.pow(2, x)) for every f32 x
 * in the range (`npm run check:exp`, scripts/check-exp.ts: all 2,247,819,264 identical, 2026-12-07,
 * with Horner's scheme and again with Estrin's: exp2 and exp together 4,485,349,376 inputs)
 * and on samples in test/cpu-wasm.test.ts.
 */
export function exp2Helper(): FnBuilder {
  return powerOfTwoHelper('exp2');
}

/**
 * exp(x) for f32 x with the bits of Math.fround(Math.exp(x)), as exp2Helper: for −87 < x < 88,
 * t = x·log2 e in f64 (its rounding moves the result by < 2^−46 relative), then 2^t as there, with
 * the same guard band and Math.exp outside it and the range. Checked for every f32 x of the range
 * (`npm run check:exp`: all 2,237,530,112 identical, 2026-12-07).
 */
export function expHelper(): FnBuilder {
  return powerOfTwoHelper('exp');
}

/** 2^x (exp2) or e^x (exp) of an f32: the shared body of exp2Helper and expHelper. */
function powerOfTwoHelper(kind: 'exp2' | 'exp'): FnBuilder {
  const f = new FnBuilder(['f32'], ['f32']);
  const n = f.local('f64'), p = f.local('f64'), d = f.local('f64'), t = f.local('f64');
  const [lo, hi] = kind === 'exp2' ? [-126, 127.5] : [-87, 88];
  const slow = () => {
    if (kind === 'exp2') f.f64(2).get(0).op('f64.promote_f32').call(WASM_MATH.indexOf('pow'));
    else f.get(0).op('f64.promote_f32').call(WASM_MATH.indexOf('exp'));
    f.op('f32.demote_f64').op('return');
  };
  // Outside (lo, hi) (NaN included: both comparisons false) take Math's function.
  f.get(0).f32(lo).op('f32.gt').get(0).f32(hi).op('f32.lt').op('i32.and').op('i32.eqz').if('range');
  slow();
  f.end();
  f.get(0).op('f64.promote_f32');
  if (kind === 'exp') f.f64(Math.LOG2E).op('f64.mul');
  f.set(t);
  f.get(t).op('f64.nearest').set(n);
  f.get(t).get(n).op('f64.sub').set(d);
  // Σ (ln 2)^k / k! · d^k, k = 0 … 12, by Estrin's scheme: pairs c_k + c_{k+1}·d, combined with
  // d², d⁴, d⁸ — a dependency chain of ~8 operations instead of Horner's 24 (the helper's latency
  // was most of its 17 ns), with rounding errors of the same few f64 ulps, far inside the guard band.
  const c = Array.from({ length: 13 }, (_, k) => { let v = 1; for (let i = 1; i <= k; i++) v = (v * Math.LN2) / i; return v; });
  const d2 = f.local('f64'), d4 = f.local('f64'), d8 = f.local('f64');
  f.get(d).get(d).op('f64.mul').tee(d2).get(d2).op('f64.mul').tee(d4).get(d4).op('f64.mul').set(d8);
  const pair = (k: number) => { f.f64(c[k + 1]!).get(d).op('f64.mul').f64(c[k]!).op('f64.add'); };
  const quad = (k: number) => { pair(k); pair(k + 2); f.get(d2).op('f64.mul').op('f64.add'); }; // c_k..c_{k+3}
  quad(0); quad(4); f.get(d4).op('f64.mul').op('f64.add'); // c_0..c_7
  quad(8); f.f64(c[12]!).get(d4).op('f64.mul').op('f64.add'); // c_8..c_12
  f.get(d8).op('f64.mul').op('f64.add');
  // × 2^n, n in [−126, 127]: an f32 power of two, exact.
  f.get(n).op('f32.demote_f64').pre('i32.trunc_sat_f32_s').i32(127).op('i32.add').i32(23).op('i32.shl').op('f32.reinterpret_i32').op('f64.promote_f32').op('f64.mul').set(p);
  // The 29 bits f32 rounding drops: within 2^12 of the midpoint 2^28, take Math's function.
  f.get(p).op('i64.reinterpret_f64').op('i32.wrap_i64').i32(0x1fffffff).op('i32.and').i32(0x10000000 - 0x1000).op('i32.sub').i32(0x2000).op('i32.lt_u').if('near');
  slow();
  f.end();
  f.get(p).op('f32.demote_f64');
  return f;
}

/**
 * fma(a, b, c) of f32 values correctly rounded (one rounding), as the JavaScript executor's $fmaPC
 * (js-helpers.ts says why it is exact), for hosts whose relaxed multiply-add is not fused: a * b
 * is exact in f64; s = a * b + c is rounded to f32 unless it lies exactly halfway between two f32
 * values, where TwoSum's error term picks the side.
 */
function fmaHelper(): FnBuilder {
  const f = new FnBuilder(['f32', 'f32', 'f32'], ['f32']);
  const p = f.local('f64'), s = f.local('f64'), rd = f.local('f64'), o = f.local('f64'), q = f.local('f64'), e = f.local('f64');
  const r = f.local('f32');
  f.get(0).op('f64.promote_f32').get(1).op('f64.promote_f32').op('f64.mul').set(p);
  f.get(p).get(2).op('f64.promote_f32').op('f64.add').set(s);
  f.get(s).op('f32.demote_f64').set(r);
  f.get(r).op('f64.promote_f32').tee(rd);
  // Exact in f32 (infinities too), or NaN: r.
  f.get(s).op('f64.eq').get(s).get(s).op('f64.ne').op('i32.or').if('exact');
  f.get(r).op('return');
  f.end();
  f.get(r).op('f32.abs').f32(Infinity).op('f32.eq').if('big');
  // Past the largest f32: halfway only at ±(2^128 − 2^103), the other side ±(2^128 − 2^104).
  f.get(s).op('f64.abs').f64(3.4028235677973366e38).op('f64.ne').if('notHalf');
  f.get(r).op('return');
  f.end();
  f.f64(3.4028234663852886e38).get(s).op('f64.copysign').set(o);
  f.else();
  f.get(rd).get(s).get(rd).op('f64.sub').f64(2).op('f64.mul').op('f64.add').tee(o);
  f.get(o).op('f32.demote_f64').op('f64.promote_f32').op('f64.ne').if('notHalf');
  f.get(r).op('return');
  f.end();
  f.end();
  // Halfway: the exact sum is s + e (TwoSum).
  f.get(s).get(p).op('f64.sub').set(q);
  f.get(p).get(s).get(q).op('f64.sub').op('f64.sub').get(2).op('f64.promote_f32').get(q).op('f64.sub').op('f64.add').set(e);
  f.get(e).f64(0).op('f64.eq').if('tie');
  f.get(r).op('return');
  f.end();
  f.get(rd).get(o).op('f64.max').get(rd).get(o).op('f64.min').get(e).f64(0).op('f64.gt').op('select').op('f32.demote_f64');
  return f;
}

/** The helper functions, in FN order after run. */
export function helperFunctions(): FnBuilder[] {
  return [f2h(), any(), exp2Helper(), expHelper(), fmaHelper()];
}
