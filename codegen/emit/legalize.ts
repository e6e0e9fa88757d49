// Target legalization: IR → IR passes that rewrite what a target cannot say as the kernel wrote it,
// so that each printer prints the legalized IR node for node. Parameterised by target
// (LegalizeTarget): CUDA, WGSL and any new emitter (WebAssembly) pick the rewrites they need.
//   - shift amounts masked to 0..31: WGSL (and JS, and wasm) shift by the amount mod 32; in C a
//     shift by 32 or more is undefined;
//   - float remainder as a call (C's % takes integers only), f16 computed in f32 and rounded back;
//   - vector operations the target has no vector form for, lifted to a `lanes` node: the scalar
//     operation over each component (CUDA prints it as vmap with a lambda; expandLanes turns it
//     into one expression per component for a target without vectors);
//   - logical && / || on bool vectors as bitwise & / | (WGSL's && and || take scalars).
// The rewritten nodes keep the kernel's names, so generated code reads as before.
import type { Expr, KernelIR, Stmt } from '../dsl/ir.js';
import { type Scalar, elemOf, isVec, widthOf } from '../dsl/types.js';
import { mapExpr } from '../dsl/walk.js';

type Of<K extends Expr['k']> = Extract<Expr, { k: K }>;

export interface LegalizeTarget {
  /** For errors: 'CUDA', 'WGSL', … */
  name: string;
  /** Mask a shift amount with & 31 unless it is visibly below 32. */
  maskShiftAmounts?: boolean;
  /** Float % becomes a call to this f32 function (f16 operands converted to f32 and back). */
  floatRemainder?: string;
  /** Vector operations to lift to `lanes` (the scalar operation per component). */
  liftVector?: (e: Expr) => boolean;
  /** && and || on bool vectors become & and |. */
  vectorLogicAsBitwise?: boolean;
}

/** CUDA C++: C shift and % rules; the prelude's vector types have arithmetic, comparison and
 *  bitwise operators, dot, swizzles and constructors, but no %, shifts, math functions, casts or
 *  select: those are lifted. */
export const CUDA_TARGET: LegalizeTarget = {
  name: 'CUDA',
  maskShiftAmounts: true,
  floatRemainder: 'fmodf',
  liftVector: (e) => isVec(e.t) && (
    (e.k === 'bin' && (e.op === 'rem' || e.op === 'shl' || e.op === 'shr'))
    || (e.k === 'call' && e.fn !== 'dot')
    || (e.k === 'select' && isVec(e.cond.t))
    || e.k === 'cast'),
};

/** WGSL: shifts, %, vectors are native; only vector && / || need rewriting. */
export const WGSL_TARGET: LegalizeTarget = { name: 'WGSL', vectorLogicAsBitwise: true };

/** Lane parameter names of a `lanes` node's scalar body, in argument order. */
const LANE_NAMES = ['a', 'b', 'c'];

/** Whether a shift amount is visibly below 32 (a constant, x & c with c < 32, x % c with c ≤ 32). */
function below32(e: Expr): boolean {
  if (e.k === 'const') return true;
  return e.k === 'bin' && e.b.k === 'const' && ((e.op === 'band' && (e.b.v as number) < 32) || (e.op === 'rem' && (e.b.v as number) <= 32));
}

/** The kernel with its body legalized for `target`. */
export function legalize(ir: KernelIR, target: LegalizeTarget): KernelIR {
  return { ...ir, body: legalizeStmts(ir.body, target) };
}

export function legalizeStmts(body: Stmt[], target: LegalizeTarget): Stmt[] {
  const ex = (e: Expr) => legalizeExpr(e, target);
  const stmt = (s: Stmt): Stmt => {
    switch (s.k) {
      case 'let': return { ...s, init: ex(s.init) };
      case 'assign': return { ...s, value: ex(s.value) };
      case 'store': return { ...s, index: ex(s.index), value: ex(s.value) };
      case 'if': return { ...s, cond: ex(s.cond), then: s.then.map(stmt), else: s.else.map(stmt) };
      case 'for': return { ...s, from: ex(s.from), to: ex(s.to), step: ex(s.step), body: s.body.map(stmt) };
      case 'while': return { ...s, cond: ex(s.cond), body: s.body.map(stmt) };
      case 'atomic': return { ...s, index: ex(s.index), value: ex(s.value), ...(s.compare ? { compare: ex(s.compare) } : {}) };
      default: return s; // no expressions, no nested blocks
    }
  };
  return body.map(stmt);
}

/** One expression, children first. */
export function legalizeExpr(e: Expr, target: LegalizeTarget): Expr {
  const x = mapExpr(e, (c) => legalizeExpr(c, target));
  if (target.liftVector?.(x)) return lift(x, target);
  switch (x.k) {
    case 'bin': {
      if ((x.op === 'shl' || x.op === 'shr') && target.maskShiftAmounts && !below32(x.b)) {
        return { ...x, b: { k: 'bin', t: 'u32', op: 'band', a: x.b, b: { k: 'const', t: 'u32', v: 31 } } };
      }
      if (x.op === 'rem' && target.floatRemainder && (x.t === 'f32' || x.t === 'f16')) return floatCall(x.t, target.floatRemainder, [x.a, x.b]);
      if ((x.op === 'and' || x.op === 'or') && target.vectorLogicAsBitwise && isVec(x.t)) return { ...x, op: x.op === 'and' ? 'band' : 'bor' };
      return x;
    }
    default: return x;
  }
}

/** fn at f32; an f16 operation converts its operands to f32 and rounds the result back. */
function floatCall(t: 'f32' | 'f16', fn: string, args: Expr[]): Expr {
  if (t === 'f32') return { k: 'intrinsic', t, name: fn, args };
  const call: Expr = { k: 'intrinsic', t: 'f32', name: fn, args: args.map((a): Expr => ({ k: 'cast', t: 'f32', a })) };
  return { k: 'cast', t: 'f16', a: call };
}

/** The vector operation x as its scalar form over each component; the scalar form is legalized too. */
function lift(x: Expr, target: LegalizeTarget): Of<'lanes'> {
  const args = x.k === 'bin' ? [x.a, x.b] : x.k === 'select' ? [x.cond, x.a, x.b] : x.k === 'call' ? x.args
    : x.k === 'cast' ? [x.a] : null;
  if (!args || args.length > LANE_NAMES.length) throw new Error(`${target.name} legalization: cannot lift a vector ${x.k}`);
  const params = args.map((a, i) => ({ name: LANE_NAMES[i]!, t: elemOf(a.t) }));
  const v = params.map((p): Expr => ({ k: 'var', t: p.t, name: p.name }));
  const t = elemOf(x.t);
  const scalar: Expr = x.k === 'bin' ? { ...x, t, a: v[0]!, b: v[1]! }
    : x.k === 'select' ? { ...x, t, cond: v[0]!, a: v[1]!, b: v[2]! }
      : x.k === 'call' ? { ...x, t, args: v }
        : { ...(x as Of<'cast'>), t, a: v[0]! };
  return { k: 'lanes', t: x.t, params, args, body: legalizeExpr(scalar, target) };
}

/** A `lanes` node as one expression per component (for a target without vector values): each
 *  lane parameter becomes that component of its argument. */
export function expandLanes(e: Of<'lanes'>): Expr {
  const n = widthOf(e.t);
  const comps = Array.from({ length: n }, (_, i) => {
    const bind = new Map(e.params.map((p, j): [string, Expr] => {
      const arg = e.args[j]!;
      return [p.name, isVec(arg.t) ? { k: 'swizzle', t: elemOf(arg.t) as Scalar, a: arg, comps: 'xyzw'[i]! } : arg];
    }));
    const sub = (x: Expr): Expr => (x.k === 'var' && bind.has(x.name) ? bind.get(x.name)! : mapExpr(x, sub));
    return sub(e.body);
  });
  return { k: 'vec', t: e.t, args: comps };
}

/** The magic-number nibble pair as plain bit operations: (a & 0x000F000F) | 0x64006400. */
export function expandNibblePair(e: Of<'nibblePairF16'>): Expr {
  const u32 = (v: number): Expr => ({ k: 'const', t: 'u32', v });
  return { k: 'bin', t: 'u32', op: 'bor', a: { k: 'bin', t: 'u32', op: 'band', a: e.a, b: u32(0x000f000f) }, b: u32(0x64006400) };
}

/** The f16 pair difference in portable operations: pack2x16float(unpack2x16float(a) − unpack2x16float(b)). */
export function expandSub2x16float(e: Of<'sub2x16float'>): Expr {
  const un = (x: Expr): Expr => ({ k: 'unpack2x16float', t: 'vec2<f32>', a: x });
  return { k: 'pack2x16float', t: 'u32', a: { k: 'bin', t: 'vec2<f32>', op: 'sub', a: un(e.a), b: un(e.b) } };
}

/** The nibble pair's values in plain operations: unpack2x16float(nibblePairF16(a)) − 1024 (exact). */
export function expandNibbleValues(e: Of<'nibblePairValues'>): Expr {
  const unpacked: Expr = { k: 'unpack2x16float', t: 'vec2<f32>', a: { k: 'nibblePairF16', t: 'u32', a: e.a } };
  return { k: 'bin', t: 'vec2<f32>', op: 'sub', a: unpacked, b: { k: 'vec', t: 'vec2<f32>', args: [{ k: 'const', t: 'f32', v: 1024 }] } };
}
