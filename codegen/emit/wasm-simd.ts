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
import { forEachExpr } from '../dsl/walk.js';
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
  /** Push the address of a workgroup array's element; returns the static offset to load at. */
  workgroupAddr(name: string, index: Expr): number;
  /** Immutable lets emitted so far (before the loop): their initialisers, to compare indices. */
  lets: ReadonlyMap<string, Expr>;
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

// ---- operands straight from workgroup memory -----------------------------------------------
// A tiled GEMM's packed steps take x (one value for both lanes) and w (two adjacent columns) from
// lets that load a workgroup array. Loading the pair with one v128.load32_splat / load64_zero
// instead of two f32 loads and lane inserts moves the work from the shuffle port to the load
// ports (a GEMM-shaped wasm loop: 12.3 → 17.2 GFLOP/s; the tiled GEMM 1.10×, bench/notes/cpu.md); the same values, so
// the same bits. Conditions: the lets are immutable, in this loop body, read by packed steps only,
// the array is never stored to in the body, and the two indices are the same affine form but for
// a constant differing by one (lets resolved through their initialisers).

type Affine = { terms: string; c: number };
/** e as (its non-constant part, canonical; its constant), resolving immutable lets. */
function affine(e: Expr, lets: ReadonlyMap<string, Expr>, depth = 0): Affine {
  if (depth > 32) return { terms: JSON.stringify(e), c: 0 };
  if (e.k === 'const' && typeof e.v === 'number' && (e.t === 'u32' || e.t === 'i32')) return { terms: '', c: e.v };
  if (e.k === 'var') {
    const d = lets.get(e.name);
    return d ? affine(d, lets, depth + 1) : { terms: `v:${e.name}`, c: 0 };
  }
  if (e.k === 'bin' && e.op === 'add' && (e.t === 'u32' || e.t === 'i32')) {
    const a = affine(e.a, lets, depth + 1), b = affine(e.b, lets, depth + 1);
    return { terms: [a.terms, b.terms].filter(Boolean).sort().join(' + '), c: a.c + b.c };
  }
  const resolve = (x: Expr): unknown => (x.k === 'var' && lets.has(x.name) ? resolve(lets.get(x.name)!) : x.k === 'bin' ? { ...x, a: resolve(x.a), b: resolve(x.b) } : x);
  return { terms: JSON.stringify(resolve(e)), c: 0 };
}

interface OperandLoads {
  /** Let statements (body index) whose loads the packed steps take over: not emitted. */
  skip: Set<number>;
  /** Per step (body index of its first statement): how to push each operand pair. */
  x: Map<number, Operand>;
  w: Map<number, Operand>;
}
/** A vector operand: its array and index, and a key equal for equal loads within an iteration. */
interface Operand { name: string; index: Expr; key: string }

function operandLoads(body: XStmt[], packed: Packed[], outer: ReadonlyMap<string, Expr>): OperandLoads {
  const none: OperandLoads = { skip: new Set(), x: new Map(), w: new Map() };
  const lets = new Map(outer);
  const loadLet = new Map<string, { at: number; name: string; index: Expr }>();
  const stored = new Set<string>(), assigned = new Set<string>();
  const walk = (ss: XStmt[], top: boolean) => ss.forEach((s, i) => {
    if (s.k === 'store' && s.space === 'workgroup') stored.add(s.name);
    if (s.k === 'assign' || s.k === 'for') assigned.add(s.name);
    if (s.k === 'atomic') stored.add(s.name);
    if (top && s.k === 'let' && !s.mutable) {
      lets.set(s.name, s.init);
      if (s.init.k === 'load' && s.init.space === 'workgroup' && s.init.t === 'f32') loadLet.set(s.name, { at: i, name: s.init.name, index: s.init.index });
    }
    if (s.k === 'if') { walk(s.then, false); walk(s.else, false); }
    if (s.k === 'for' || s.k === 'while') walk(s.body, false);
    if (s.k === '$loop') { walk(s.pre, false); walk(s.body, false); walk(s.post, false); }
  });
  walk(body, true);
  if (!loadLet.size) return none;
  // An index read at the packed step must mean what it meant at its let: no variable it
  // depends on (through lets) may be assigned in the body.
  const dependsOnAssigned = (e: Expr, depth = 0): boolean => {
    if (depth > 32) return true;
    let hit = false;
    forEachExpr(e, (x) => {
      if (!hit && x.k === 'var') hit = assigned.has(x.name) || (lets.has(x.name) && dependsOnAssigned(lets.get(x.name)!, depth + 1));
    });
    return hit;
  };
  for (const [name, l] of [...loadLet]) if (dependsOnAssigned(l.index)) loadLet.delete(name);
  if (!loadLet.size) return none;
  // Reads of each variable anywhere in the body, and those the packed steps make.
  const reads = new Map<string, number>();
  const countReads = (node: unknown): void => {
    if (node === null || typeof node !== 'object') return;
    const o = node as Record<string, unknown>;
    if (o.k === 'var' && typeof o.name === 'string') reads.set(o.name, (reads.get(o.name) ?? 0) + 1);
    for (const v of Array.isArray(node) ? node : Object.values(o)) countReads(v);
  };
  countReads(body);
  const out: OperandLoads = { skip: new Set(), x: new Map(), w: new Map() };
  const varName = (e: Expr): string | undefined => (e.k === 'var' ? e.name : undefined);
  const claim = new Map<string, number>(); // let name → reads served by vector loads
  for (const { pair } of packed) {
    for (const st of pair.steps) {
      const [xa, xb] = st.x.map(varName) as [string | undefined, string | undefined];
      const [wa, wb] = st.w.map(varName) as [string | undefined, string | undefined];
      const la = xa !== undefined ? loadLet.get(xa) : undefined;
      if (la && xa !== undefined && xb === xa && !stored.has(la.name)) {
        const a = affine(la.index, lets);
        out.x.set(st.at[0], { name: la.name, index: la.index, key: `x ${la.name} ${a.terms} ${a.c}` });
        claim.set(xa, (claim.get(xa) ?? 0) + 2);
      }
      const wA = wa !== undefined ? loadLet.get(wa) : undefined, wB = wb !== undefined ? loadLet.get(wb) : undefined;
      if (wA && wB && wa !== undefined && wb !== undefined && wa !== wb && wA.name === wB.name && !stored.has(wA.name)) {
        const ia = affine(wA.index, lets), ib = affine(wB.index, lets);
        if (ia.terms === ib.terms && ib.c === ia.c + 1) {
          out.w.set(st.at[0], { name: wA.name, index: wA.index, key: `w ${wA.name} ${ia.terms} ${ia.c}` });
          for (const n of [wa, wb]) claim.set(n, (claim.get(n) ?? 0) + 1);
        }
      }
    }
  }
  // A let is not emitted when every read of it is a packed operand served by a vector load.
  for (const [name, n] of claim) if (reads.get(name) === n) out.skip.add(loadLet.get(name)!.at);
  return out;
}

/** Push an operand pair as f64x2: loaded at its first use in the iteration, then from its local. */
function vectorOperand(h: PackHost, o: Operand, load: 'v128.load32_splat' | 'v128.load64_zero', cache: Map<string, number>): void {
  const known = cache.get(o.key);
  if (known !== undefined) { h.f.get(known); return; }
  const v = h.f.local('v128');
  const off = h.workgroupAddr(o.name, o.index);
  h.f.simdMem(load, off, 2).simd('f64x2.promote_low_f32x4').tee(v);
  cache.set(o.key, v);
}

/**
 * The loop body, each packed step's two statements as one f64x2 multiply-add rounded to f32.
 * Returns how many distinct operand pairs it loads as vectors.
 */
export function packedLoopBody(h: PackHost, body: XStmt[], packed: Packed[]): number {
  const steps = new Map(packed.flatMap(({ pair, v }) => pair.steps.map((st) => [st.at[0], { st, v }] as const)));
  const ops = operandLoads(body, packed, h.lets);
  const cache = new Map<string, number>(); // operand key → v128 local, loaded at its first use this iteration
  for (let i = 0; i < body.length; i++) {
    if (ops.skip.has(i)) continue;
    const p = steps.get(i);
    if (!p) { h.stmt(body[i]!); continue; }
    h.newStatement();
    const vx = ops.x.get(i), vw = ops.w.get(i);
    if (vx) vectorOperand(h, vx, 'v128.load32_splat', cache);
    else f64Pair(h, p.st.x);
    if (vw) vectorOperand(h, vw, 'v128.load64_zero', cache);
    else f64Pair(h, p.st.w);
    h.f.simd('f64x2.mul').get(p.v).simd('f64x2.add').simd('f32x4.demote_f64x2_zero').simd('f64x2.promote_low_f32x4').set(p.v);
    i++; // the step's second statement
  }
  return cache.size;
}

/** After the loop: each pair back into its two f32 variables (exact: the lanes hold f32 values). */
export function unpackAccumulators(h: PackHost, packed: Packed[]): void {
  for (const { pair, v } of packed) {
    pair.acc.forEach((n, lane) => { h.f.get(v).simd('f64x2.extract_lane', lane).op('f32.demote_f64').set(h.local(n)); });
  }
}
