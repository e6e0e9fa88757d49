// Where the WebAssembly emitter uses SIMD128: accumulators of a loop that only ever take
// `acc = fma(x, w, acc)` are carried two to a v128 (f64x2) through the loop.
//
// Why this and why f64x2: the JS reference computes fma(a, b, c) as Math.fround(a * b + c) in f64
// (the product of two f32 is exact there, the sum is rounded to f64, then to f32). f32x4 cannot
// give those bits; f64x2 can, lane by lane: f64x2.mul, f64x2.add, then f32x4.demote_f64x2_zero
// (round to f32) and f64x2.promote_low_f32x4 back, exactly the scalar promote / mul / add /
// demote. Carrying the pair in one register through the loop is what saves work: the scalar code
// promotes and demotes every accumulator every iteration, the packed code does it once per pair.
// GEMV partial sums (dense f16, INT4 group sums) are such accumulators: 8 per invocation.
import type { Expr } from '../dsl/ir.js';
import type { XStmt } from './js-lower.js';
import type { FnBuilder } from './wasm-encode.js';

/** One packed pair: statement indices in the loop body and the two `fma` assignments' parts. */
export interface FmaPair {
  at: [number, number];
  acc: [string, string];
  x: [Expr, Expr];
  w: [Expr, Expr];
}

/** Every variable name an IR node mentions (read, assigned, declared), memoised by node. */
function namesIn(node: unknown, memo: Map<object, Set<string>>): Set<string> {
  if (node === null || typeof node !== 'object') return EMPTY;
  const hit = memo.get(node);
  if (hit) return hit;
  const out = new Set<string>();
  const o = node as Record<string, unknown>;
  if (typeof o.k === 'string' && typeof o.name === 'string' && ['var', 'assign', 'let', 'for', '$sg', 'privateArray'].includes(o.k)) out.add(o.name);
  if (o.k === 'atomic' && typeof o.result === 'string') out.add(o.result);
  for (const v of Array.isArray(node) ? node : Object.values(o)) for (const n of namesIn(v, memo)) out.add(n);
  memo.set(node, out);
  return out;
}
const EMPTY = new Set<string>();

/** `name = fma(x, w, name)` over f32 with x and w plain variables other than `name`: its parts. */
function fmaAccumulate(s: XStmt, isF32: (name: string) => boolean): { acc: string; x: Expr; w: Expr } | null {
  if (s.k !== 'assign' || !isF32(s.name)) return null;
  const v = s.value;
  if (v.k !== 'call' || v.fn !== 'fma' || v.t !== 'f32' || v.args.length !== 3) return null;
  const [x, w, a] = v.args as [Expr, Expr, Expr];
  const plain = (e: Expr) => e.k === 'var' && e.t === 'f32' && e.name !== s.name;
  if (a.k !== 'var' || a.name !== s.name || !plain(x) || !plain(w)) return null;
  return { acc: s.name, x, w };
}

/**
 * Pairs of adjacent `acc = fma(x, w, acc)` statements at the top of a `for` body whose
 * accumulators appear nowhere else in the loop (not in its bounds, its other statements, nor as
 * the other's x or w), so they can live packed from before the loop to after it. A loop that can
 * `return` out of its middle is left alone (the accumulators would not be unpacked).
 */
export function fmaPairs(loop: Extract<XStmt, { k: 'for' }>, isF32: (name: string) => boolean): FmaPair[] {
  const body = loop.body, memo = new Map<object, Set<string>>();
  if (hasReturn(body)) return [];
  const cands = body.map((s) => fmaAccumulate(s, isF32));
  // How many statements (and bounds) mention each name; a candidate's own statement mentions it once.
  const mentions = new Map<string, number>();
  for (const part of [loop.from, loop.to, loop.step, ...body]) for (const n of namesIn(part, memo)) mentions.set(n, (mentions.get(n) ?? 0) + 1);
  const ok = (i: number) => {
    const c = cands[i];
    return !!c && mentions.get(c.acc) === 1;
  };
  const pairs: FmaPair[] = [];
  for (let i = 0; i + 1 < body.length; i++) {
    if (!ok(i) || !ok(i + 1)) continue;
    const a = cands[i]!, b = cands[i + 1]!;
    // The second's operands are read one statement early: the first must not be one of them.
    if ([b.x, b.w].some((e) => e.k === 'var' && e.name === a.acc)) continue;
    pairs.push({ at: [i, i + 1], acc: [a.acc, b.acc], x: [a.x, b.x], w: [a.w, b.w] });
    i++;
  }
  return pairs;
}

function hasReturn(ss: XStmt[]): boolean {
  return ss.some((s) => s.k === 'return'
    || (s.k === 'if' && (hasReturn(s.then) || hasReturn(s.else)))
    || ((s.k === 'for' || s.k === 'while') && hasReturn(s.body))
    || (s.k === '$loop' && (hasReturn(s.pre) || hasReturn(s.body) || hasReturn(s.post))));
}

/**
 * Where a pair's two weights come from: `p = unpack2x16float(q.c)` with `w0 = p.x`, `w1 = p.y`,
 * and q a vec4<u32> let of the loop body — then all four words of q are converted from f16 at
 * once (f16x8ToF32 below) and the pair takes its word's two values, with no table lookups.
 */
export interface HalfSource { q: string; word: number }

export function halfSource(pair: FmaPair, lets: Map<string, Expr>): HalfSource | null {
  const comp = (e: Expr, want: string) => {
    if (e.k !== 'var') return null;
    const init = lets.get(e.name);
    return init?.k === 'swizzle' && init.comps === want && init.a.k === 'var' ? init.a.name : null;
  };
  const p = comp(pair.w[0], 'x');
  if (!p || comp(pair.w[1], 'y') !== p) return null;
  const unpack = lets.get(p);
  if (unpack?.k !== 'unpack2x16float' || unpack.a.k !== 'swizzle' || unpack.a.comps.length !== 1 || unpack.a.a.k !== 'var') return null;
  const q = unpack.a.a;
  if (q.t !== 'vec4<u32>' || !lets.has(q.name)) return null;
  return { q: q.name, word: 'xyzw'.indexOf(unpack.a.comps) };
}

/**
 * Statements of the loop body that need not run once the pairs are packed: each pair's second
 * statement, and lets nothing left reads (the scalar f16 lookups a converted pair replaced).
 * `uses[i]`: the names packed pair i still reads (its x, and its w or its q).
 */
export function skippedStatements(body: XStmt[], pairs: FmaPair[], uses: string[][], bounds: Expr[]): Set<number> {
  const memo = new Map<object, Set<string>>();
  const skip = new Set(pairs.map((p) => p.at[1]));
  const replaced = new Map(pairs.map((p, i) => [p.at[0], uses[i]!] as const));
  for (let changed = true; changed;) {
    changed = false;
    const read = new Set<string>();
    for (const b of bounds) for (const n of namesIn(b, memo)) read.add(n);
    body.forEach((s, i) => {
      if (skip.has(i)) return;
      const names = replaced.get(i) ?? (s.k === 'let' ? namesIn(s.init, memo) : namesIn(s, memo));
      for (const n of names) read.add(n);
    });
    body.forEach((s, i) => {
      if (!skip.has(i) && s.k === 'let' && !s.mutable && !read.has(s.name)) { skip.add(i); changed = true; }
    });
  }
  return skip;
}

/** The loop body's immutable lets (name → init); a name declared twice is left out. */
export function bodyLets(body: XStmt[]): Map<string, Expr> {
  const out = new Map<string, Expr>(), twice = new Set<string>();
  for (const s of body) {
    if (s.k !== 'let') continue;
    if (out.has(s.name) || s.mutable) twice.add(s.name);
    out.set(s.name, s.init);
  }
  for (const n of twice) out.delete(n);
  return out;
}

/**
 * i32x4 of four f16 bit patterns (0..65535) on the stack → f32x4 of their values, with the bits
 * of makeF16's table (codegen/dsl/f16.ts) for every input: the magnitude shifted into an f32's
 * place and scaled by 2^112 is exact for normals and subnormals alike; ±Inf and NaN (the table
 * holds the quiet NaN 0x7fc00000, signed) are selected in; then the sign. `h`: a v128 local.
 */
export function f16x4ToF32(f: FnBuilder, h: number): void {
  const k = (v: number) => f.v128([v, v, v, v]);
  f.set(h);
  f.get(h); k(0x8000); f.simd('v128.and').i32(16).simd('i32x4.shl'); // sign
  f.get(h); k(0x7fff); f.simd('v128.and').set(h); // h: magnitude
  k(0x7f800000); f.get(h); k(0x7c00); f.simd('i32x4.gt_s'); k(0x400000); f.simd('v128.and').simd('v128.or'); // ±Inf / NaN
  f.get(h).i32(13).simd('i32x4.shl'); k(0x77800000); f.simd('f32x4.mul'); // finite: exact
  f.get(h); k(0x7bff); f.simd('i32x4.gt_s'); // exponent all ones
  f.simd('v128.bitselect').simd('v128.or');
}
