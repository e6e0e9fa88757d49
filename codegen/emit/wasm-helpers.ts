// The functions every WebAssembly kernel module carries besides its `run`: f32 → f16 bits (the
// bit-exact port of codegen/dsl/f16.ts makeF16's; f16 → f32 reads makeF16's table in memory) and
// "is any invocation of this mask active". And the Math functions a module imports, so that exp,
// log, sin, cos, tanh and pow give the bits the JavaScript executor's Math calls give.
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
  return { run: base, f2h: base + 1, any: base + 2 };
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

/** The helper functions, in FN order after run. */
export function helperFunctions(): FnBuilder[] {
  return [f2h(), any()];
}
