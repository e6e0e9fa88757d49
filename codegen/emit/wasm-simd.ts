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

/**
 * One packed pair of accumulators and its updates in the loop body: each step is two adjacent
 * statements `acc[0] = fma(x[0], w[0], acc[0])`, `acc[1] = fma(x[1], w[1], acc[1])` (a body
 * unrolled over k updates each accumulator several times).
 */
export interface FmaPair {
  acc: [string, string];
  steps: { at: [number, number]; x: [Expr, Expr]; w: [Expr, Expr] }[];
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
 * Accumulator pairs of a `for` body: accumulators mentioned in the loop (bounds and body) only by
 * their own `acc = fma(x, w, acc)` statements, each of those adjacent to one of its partner's
 * (always the same partner), so that the pair can live packed from before the loop to after it.
 * A loop that can `return` out of its middle is left alone (the pair would not be unpacked).
 */
export function fmaPairs(loop: Extract<XStmt, { k: 'for' }>, isF32: (name: string) => boolean): FmaPair[] {
  const body = loop.body, memo = new Map<object, Set<string>>();
  if (hasReturn(body)) return [];
  const cands = body.map((s) => fmaAccumulate(s, isF32));
  // Statements (and bounds) mentioning each name, and each candidate accumulator's own statements.
  const mentions = new Map<string, number>(), own = new Map<string, number>();
  for (const part of [loop.from, loop.to, loop.step, ...body]) for (const n of namesIn(part, memo)) mentions.set(n, (mentions.get(n) ?? 0) + 1);
  for (const c of cands) if (c) own.set(c.acc, (own.get(c.acc) ?? 0) + 1);
  const alone = (acc: string) => mentions.get(acc) === own.get(acc);
  const partner = new Map<string, string | null>(); // null: cannot be packed
  const steps: [number, number][] = [];
  for (let i = 0; i + 1 < body.length; i++) {
    const a = cands[i], b = cands[i + 1];
    if (!a || !b || a.acc === b.acc || !alone(a.acc) || !alone(b.acc)) continue;
    for (const [p, q] of [[a.acc, b.acc], [b.acc, a.acc]] as const) {
      partner.set(p, partner.has(p) && partner.get(p) !== q ? null : q);
    }
    steps.push([i, i + 1]);
    i++;
  }
  // Keep pairs whose every statement is in one of their steps.
  const counted = new Map<string, number>();
  for (const [i] of steps) counted.set(cands[i]!.acc, (counted.get(cands[i]!.acc) ?? 0) + 1);
  const pairs = new Map<string, FmaPair>();
  for (const [i, j] of steps) {
    const a = cands[i]!, b = cands[j]!;
    if (partner.get(a.acc) !== b.acc || partner.get(b.acc) !== a.acc) continue;
    if (counted.get(a.acc) !== own.get(a.acc) || own.get(a.acc) !== own.get(b.acc)) continue;
    let p = pairs.get(a.acc);
    if (!p) pairs.set(a.acc, (p = { acc: [a.acc, b.acc], steps: [] }));
    p.steps.push({ at: [i, j], x: [a.x, b.x], w: [a.w, b.w] });
  }
  return [...pairs.values()];
}

function hasReturn(ss: XStmt[]): boolean {
  return ss.some((s) => s.k === 'return'
    || (s.k === 'if' && (hasReturn(s.then) || hasReturn(s.else)))
    || ((s.k === 'for' || s.k === 'while') && hasReturn(s.body))
    || (s.k === '$loop' && (hasReturn(s.pre) || hasReturn(s.body) || hasReturn(s.post))));
}

// ---- emission ------------------------------------------------------------------------------

/** The emitter's parts the packing uses: its function, scalar expressions, statements. */
export interface PackHost {
  f: FnBuilder;
  /** Push scalar expression e. */
  ex(e: Expr): void;
  /** The local of a scalar variable. */
  local(name: string): number;
  stmt(s: XStmt): void;
  newStatement(): void;
}
export interface Packed { pair: FmaPair; v: number }

/** The loop's packable pairs, each loaded into a v128 local (f64x2) before the loop. */
export function packAccumulators(h: PackHost, loop: Extract<XStmt, { k: 'for' }>, isF32: (name: string) => boolean): Packed[] {
  return fmaPairs(loop, isF32).map((pair) => {
    const v = h.f.local('v128');
    const [a, b] = pair.acc.map((n) => h.local(n)) as [number, number];
    h.f.get(a).op('f64.promote_f32').simd('f64x2.splat').get(b).op('f64.promote_f32').simd('f64x2.replace_lane', 1).set(v);
    return { pair, v };
  });
}

/** f64x2 of two f32 expressions (one splat when both are the same variable). */
function f64Pair(h: PackHost, [a, b]: [Expr, Expr]): void {
  h.ex(a); h.f.simd('f32x4.splat');
  if (!(a.k === 'var' && b.k === 'var' && a.name === b.name)) { h.ex(b); h.f.simd('f32x4.replace_lane', 1); }
  h.f.simd('f64x2.promote_low_f32x4');
}

/** The loop body, each packed step's two statements as one f64x2 multiply-add rounded to f32. */
export function packedLoopBody(h: PackHost, body: XStmt[], packed: Packed[]): void {
  const steps = new Map(packed.flatMap(({ pair, v }) => pair.steps.map((st) => [st.at[0], { st, v }] as const)));
  for (let i = 0; i < body.length; i++) {
    const p = steps.get(i);
    if (!p) { h.stmt(body[i]!); continue; }
    h.newStatement();
    f64Pair(h, p.st.x);
    f64Pair(h, p.st.w);
    h.f.simd('f64x2.mul').get(p.v).simd('f64x2.add').simd('f32x4.demote_f64x2_zero').simd('f64x2.promote_low_f32x4').set(p.v);
    i++; // the step's second statement
  }
}

/** After the loop: each pair back into its two f32 variables (exact: the lanes hold f32 values). */
export function unpackAccumulators(h: PackHost, packed: Packed[]): void {
  for (const { pair, v } of packed) {
    pair.acc.forEach((n, lane) => { h.f.get(v).simd('f64x2.extract_lane', lane).op('f32.demote_f64').set(h.local(n)); });
  }
}
