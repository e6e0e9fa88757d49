// JavaScript emitter for the CPU executor: the source of one function that runs a whole workgroup
// (every invocation) with GPU semantics — f32/f16 rounded after every op, wrapping 32-bit integers,
// exact barriers and emulated subgroups.
//
// A kernel without barriers or subgroup operations becomes one loop over its invocations. A kernel
// with them is cut at each sync point into regions: per-invocation loops that run one after another,
// so every invocation reaches a barrier before any passes it. Control flow that contains sync points
// runs once for the workgroup over per-invocation masks (SIMT style: a loop repeats while any
// invocation is still in it); locals that live across regions are kept in per-invocation typed
// arrays ("spilled") and copied into plain locals inside each region, so hot loops stay scalar.
//
// Generated source: `new Function(source)()` returns make(ctx); make(ctx) allocates the kernel's
// state and returns run(wgX, wgY, wgZ, nwgX, nwgY, nwgZ, buffers, uniforms), which runs one
// workgroup. buffers are typed arrays in binding order (f16 as Uint16Array bits); uniforms are
// numbers in declaration order. In checking mode ctx collects findings: { findings: string[],
// keys: Set<string>, count: number, limit: number }.
import type { BinOp, Builtin, Expr, KernelIR, MathFn, Stmt, SubgroupOp, UnOp } from '../dsl/ir.js';
import { type DType, type Scalar, elemOf, isVec, widthOf } from '../dsl/types.js';
import { CHECK_RUNTIME, helperSource } from './js-runtime.js';

export interface JsEmitOptions {
  /** Report out-of-bounds accesses, shared-memory races and divergent barriers into ctx. */
  check?: boolean;
  /** Emulated subgroup size (default: the kernel's caps.subgroupSize, else 32). */
  subgroupSize?: number;
}

/** Source text of the workgroup function for `ir` (see the file header for how to call it). */
export function emitJS(ir: KernelIR, opts: JsEmitOptions = {}): string {
  return new JsEmitter(ir, opts).emit();
}

// Host-side f16 conversion, the same code the kernels run.
const F16 = new Function(`${helperSource(['f16'])}\nreturn { $f16bits, $f16r, $F16 };`)() as {
  $f16bits(x: number): number; $f16r(x: number): number; $F16: Float32Array;
};
/** f32 value → f16 bits, round to nearest even. */
export const f32ToF16Bits = (x: number): number => F16.$f16bits(x);
/** f16 bits → value. */
export const f16BitsToF32 = (h: number): number => F16.$F16[h & 0xffff]!;

// ---- lowered statements: subgroup operations hoisted to statement level ------------------------
type SgStmt = { k: '$sg'; name: string; t: Scalar; op: SubgroupOp; a: Expr; b?: Expr };
type XStmt =
  | Exclude<Stmt, { k: 'if' | 'for' | 'while' }>
  | { k: 'if'; cond: Expr; then: XStmt[]; else: XStmt[] }
  | { k: 'for'; name: string; t: 'i32' | 'u32'; from: Expr; to: Expr; step: Expr; body: XStmt[] }
  | { k: 'while'; cond: Expr; body: XStmt[] }
  // A loop whose condition or step needed hoisted statements: pre; if (!cond) break; body; post.
  | { k: '$loop'; pre: XStmt[]; cond: Expr; body: XStmt[]; post: XStmt[] }
  | SgStmt;

function mapExpr(e: Expr, f: (x: Expr) => Expr): Expr {
  switch (e.k) {
    case 'const': case 'var': case 'uniform': case 'builtin': return e;
    case 'load': return { ...e, index: f(e.index) };
    case 'bin': return { ...e, a: f(e.a), b: f(e.b) };
    case 'un': case 'cast': case 'bitcast': case 'swizzle': return { ...e, a: f(e.a) };
    case 'pack2x16float': return { ...e, a: f(e.a) };
    case 'unpack2x16float': return { ...e, a: f(e.a) };
    case 'call': return { ...e, args: e.args.map(f) };
    case 'vec': return { ...e, args: e.args.map(f) };
    case 'select': return { ...e, cond: f(e.cond), a: f(e.a), b: f(e.b) };
    case 'subgroup': return { ...e, a: f(e.a), b: e.b && f(e.b) };
  }
}
function forEachExpr(e: Expr, f: (x: Expr) => void): void {
  f(e);
  mapExpr(e, (x) => { forEachExpr(x, f); return x; });
}

/** Moves every subgroup operation into a `$sg` statement of its own (a sync point). */
class SubgroupHoister {
  private n = 0;
  expr(e: Expr, out: XStmt[]): Expr {
    const inner = mapExpr(e, (x) => this.expr(x, out));
    if (inner.k !== 'subgroup') return inner;
    const name = `$sg${++this.n}`;
    out.push({ k: '$sg', name, t: inner.t as Scalar, op: inner.op, a: inner.a, b: inner.b });
    return { k: 'var', t: inner.t, name };
  }
  stmts(list: Stmt[]): XStmt[] {
    const out: XStmt[] = [];
    for (const s of list) this.stmt(s, out);
    return out;
  }
  private stmt(s: Stmt, out: XStmt[]): void {
    switch (s.k) {
      case 'let': out.push({ ...s, init: this.expr(s.init, out) }); return;
      case 'assign': out.push({ ...s, value: this.expr(s.value, out) }); return;
      case 'store': out.push({ ...s, index: this.expr(s.index, out), value: this.expr(s.value, out) }); return;
      case 'atomic': {
        const index = this.expr(s.index, out), value = this.expr(s.value, out);
        out.push({ ...s, index, value, compare: s.compare && this.expr(s.compare, out) });
        return;
      }
      case 'if': {
        const cond = this.expr(s.cond, out);
        out.push({ k: 'if', cond, then: this.stmts(s.then), else: this.stmts(s.else) });
        return;
      }
      case 'for': {
        const from = this.expr(s.from, out);
        const pre: XStmt[] = [], post: XStmt[] = [];
        const to = this.expr(s.to, pre), step = this.expr(s.step, post);
        const body = this.stmts(s.body);
        if (!pre.length && !post.length) { out.push({ ...s, from, body }); return; }
        const v: Expr = { k: 'var', t: s.t, name: s.name };
        out.push({ k: 'let', name: s.name, t: s.t, init: from, mutable: true });
        post.push({ k: 'assign', name: s.name, value: { k: 'bin', t: s.t, op: 'add', a: v, b: step } });
        out.push({ k: '$loop', pre, cond: { k: 'bin', t: 'bool', op: 'lt', a: v, b: to }, body, post });
        return;
      }
      case 'while': {
        const pre: XStmt[] = [];
        const cond = this.expr(s.cond, pre);
        const body = this.stmts(s.body);
        out.push(pre.length ? { k: '$loop', pre, cond, body, post: [] } : { k: 'while', cond, body });
        return;
      }
      default: out.push(s);
    }
  }
}

function isSync(s: XStmt): boolean {
  switch (s.k) {
    case 'barrier': case '$sg': return true;
    case 'if': return s.then.some(isSync) || s.else.some(isSync);
    case 'for': case 'while': return s.body.some(isSync);
    case '$loop': return s.pre.some(isSync) || s.body.some(isSync) || s.post.some(isSync);
    default: return false;
  }
}

// ---- workgroup-level program ---------------------------------------------------------------------
/** Masks enclosing a point (root first) and, inside a workgroup-level loop, which are its masks. */
interface WgCtx { masks: string[]; loop?: { lIdx: number; iIdx: number } }
type Item =
  | { k: 'stmt'; s: XStmt }
  | { k: 'cond'; cond: Expr; then: string; else?: string }
  | { k: 'loopCond'; cond: Expr; mask: string }
  | { k: 'deposit'; sg: SgStmt; id: number };
interface RegionUse { refs: Set<string>; written: Set<string>; declTop: Set<string> }
interface Region { ctx: WgCtx; pre: string[]; items: Item[]; use?: RegionUse }
type Wg =
  | { k: 'region'; r: Region }
  | { k: 'barrier'; ctx: WgCtx; id: number }
  | { k: 'sg'; sg: SgStmt; id: number; ctx: WgCtx }
  | { k: 'if'; t: string; e?: string; then: Wg[]; else: Wg[] }
  | { k: 'loop'; l: string; i: string; parent: string; pre: Wg[]; body: Wg[]; post: Wg[] };

// ---- identifiers and literals --------------------------------------------------------------------
// Names the builder lets through that JavaScript (or the globals generated code uses) would not.
const JS_AVOID = new Set(('in of debugger enum implements let static yield await arguments eval Atomics Math ' +
  'Float32Array Float64Array Int32Array Uint32Array Uint16Array Uint8Array Object Array Number Error String ' +
  'Boolean Symbol globalThis Infinity NaN undefined').split(' '));
const jsId = (name: string): string => (JS_AVOID.has(name) ? `${name}$` : name);
const XYZW = 'xyzw';
const SIMPLE = /^(?:[$A-Za-z_][$\w]*|\d[\d.e+-]*|\(-[\d.e+-]+\)|true|false|Infinity|\(-Infinity\))$/;
const INT_LITERAL = /^\(?-?\d+\)?$/;

/** x without one pair of enclosing parentheses, where a statement supplies its own. */
function bare(x: string): string {
  if (!x.startsWith('(') || !x.endsWith(')')) return x;
  let depth = 0;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === '(') depth++;
    else if (x[i] === ')' && --depth === 0 && i < x.length - 1) return x;
  }
  return x.slice(1, -1);
}

function num(v: number): string {
  if (Object.is(v, -0)) return '(-0)';
  return v < 0 ? `(${v})` : String(v);
}
const SPILL_ARRAY: Record<Scalar, string> = { f32: 'Float32Array', f16: 'Float32Array', i32: 'Int32Array', u32: 'Uint32Array', bool: 'Uint8Array' };
const SHARED_ARRAY: Record<string, string> = { f32: 'Float32Array', i32: 'Int32Array', u32: 'Uint32Array' };
const KIND: Record<string, number> = { f32: 0, f16: 1, i32: 2, u32: 3 };

interface PrivInfo { name: string; js: string; t: Scalar; length: number; scalar: boolean; id: number }
interface RegionCtx {
  multi: boolean;
  ctx: WgCtx;
  plainLoops: number;
  blocks: number;
  /** Spilled names whose locals are in scope here (loaded at entry or declared so far). */
  available: Set<string>;
  /** Spilled names this region writes: stored back at its end and at exits to the workgroup level. */
  written: Set<string>;
}

class JsEmitter {
  private readonly check: boolean;
  private readonly sg: number;
  private readonly wg: [number, number, number];
  private readonly n: number;
  private readonly body: XStmt[];
  private readonly vars = new Map<string, DType>();
  private readonly privs = new Map<string, PrivInfo>();
  private readonly bufs = new Map<string, { id: number; js: string; t: string }>();
  private readonly shared = new Map<string, { id: number; js: string }>();
  private readonly helpers = new Set<string>();
  private readonly state: string[] = [];
  private spilled = new Set<string>();
  private sink: string[] | null = null;
  private temps = 0;
  private masks = 0;
  private barriers = 0;
  private sgOps = 0;
  private builtins = new Set<Builtin>();
  private rc!: RegionCtx;
  // lowering state
  private out: Wg[] = [];
  private cur: Region | null = null;
  private readonly forcedSpill = new Set<string>();

  constructor(private readonly ir: KernelIR, opts: JsEmitOptions) {
    this.check = !!opts.check;
    this.sg = opts.subgroupSize ?? (ir.caps.subgroupSize > 0 ? ir.caps.subgroupSize : 32);
    if (!(this.sg >= 1 && this.sg <= 128 && (this.sg & (this.sg - 1)) === 0)) {
      throw new Error(`kernel '${ir.name}': emulated subgroup size ${this.sg} is not a power of two up to 128`);
    }
    this.wg = ir.workgroupSize;
    this.n = this.wg[0] * this.wg[1] * this.wg[2];
    this.body = new SubgroupHoister().stmts(ir.body);
    ir.buffers.forEach((b, id) => this.bufs.set(b.name, { id, js: jsId(b.name), t: b.t }));
    ir.shared.forEach((s, id) => this.shared.set(s.name, { id, js: jsId(s.name) }));
    this.collectDecls(this.body);
  }

  private fail(msg: string): never {
    throw new Error(`kernel '${this.ir.name}' (JS emitter): ${msg}`);
  }

  // ---- declarations --------------------------------------------------------------------------
  private collectDecls(list: XStmt[]): void {
    const nonConst = new Set<string>();
    const visitExpr = (e: Expr) => forEachExpr(e, (x) => {
      if (x.k === 'load' && x.space === 'private' && x.index.k !== 'const') nonConst.add(x.name);
    });
    const visit = (ss: XStmt[]) => {
      for (const s of ss) {
        switch (s.k) {
          case 'let': this.vars.set(s.name, s.t); visitExpr(s.init); break;
          case 'assign': visitExpr(s.value); break;
          case 'store':
            visitExpr(s.index); visitExpr(s.value);
            if (s.space === 'private' && s.index.k !== 'const') nonConst.add(s.name);
            break;
          case 'privateArray':
            this.privs.set(s.name, { name: s.name, js: jsId(s.name), t: s.t, length: s.length, scalar: true, id: this.privs.size });
            break;
          case 'if': visitExpr(s.cond); visit(s.then); visit(s.else); break;
          case 'for': this.vars.set(s.name, s.t); visitExpr(s.from); visitExpr(s.to); visitExpr(s.step); visit(s.body); break;
          case 'while': visitExpr(s.cond); visit(s.body); break;
          case '$loop': visit(s.pre); visitExpr(s.cond); visit(s.body); visit(s.post); break;
          case '$sg': this.vars.set(s.name, s.t); visitExpr(s.a); if (s.b) visitExpr(s.b); break;
          case 'atomic':
            if (s.result) this.vars.set(s.result, s.t);
            visitExpr(s.index); visitExpr(s.value); if (s.compare) visitExpr(s.compare);
            break;
          default: break;
        }
      }
    };
    visit(list);
    // Private arrays indexed only by constants become one local per element.
    for (const [name, p] of this.privs) p.scalar = !nonConst.has(name) && p.length <= 256;
  }

  /** Mark a runtime helper as used; returns `fn`, the function to call. */
  private h(helper: string, fn = ''): string { this.helpers.add(helper); return fn; }

  private mask(): string {
    const m = `$m${++this.masks}`;
    this.state.push(`const ${m} = new Uint8Array(${this.n});`);
    return m;
  }

  // ---- expressions ---------------------------------------------------------------------------
  /** Component expressions of e (one for a scalar). */
  private ex(e: Expr): string[] {
    switch (e.k) {
      case 'const': return new Array<string>(widthOf(e.t)).fill(this.lit(elemOf(e.t), e.v));
      case 'var': {
        const id = jsId(e.name);
        return isVec(e.t) ? [...XYZW.slice(0, widthOf(e.t))].map((c) => `${id}$${c}`) : [id];
      }
      case 'uniform': return [jsId(e.name)];
      case 'builtin': return this.builtin(e.name);
      case 'load': return [this.load(e)];
      case 'bin': {
        const a = this.ex(e.a), b = this.ex(e.b), t = elemOf(e.a.t);
        return a.map((x, i) => this.binS(e.op, t, x, b[i]!));
      }
      case 'un': return this.ex(e.a).map((x) => this.unS(e.op, elemOf(e.t), x));
      case 'call': return this.call(e.fn, e.args);
      case 'select': {
        let c = this.ex(e.cond);
        const a = this.ex(e.a), b = this.ex(e.b);
        if (c.length === 1 && a.length > 1) c = this.materialize(c);
        return a.map((x, i) => `(${c[c.length === 1 ? 0 : i]} ? ${x} : ${b[i]})`);
      }
      case 'cast': {
        const from = elemOf(e.a.t), to = elemOf(e.t);
        return this.ex(e.a).map((x) => this.castS(from, to, x));
      }
      case 'bitcast': return this.bitcast(e.a, e.t);
      case 'pack2x16float': {
        const [x, y] = this.ex(e.a);
        this.h('f16');
        return [`(($f16bits(${x}) | ($f16bits(${y}) << 16)) >>> 0)`];
      }
      case 'unpack2x16float': {
        const [u] = this.materialize(this.ex(e.a));
        this.h('f16');
        return [`$F16[${u} & 65535]`, `$F16[${u} >>> 16]`];
      }
      case 'vec': {
        const parts = e.args.flatMap((a) => this.ex(a));
        const w = widthOf(e.t);
        if (parts.length === 1 && w > 1) return new Array<string>(w).fill(this.materialize(parts)[0]!);
        if (parts.length !== w) this.fail(`${e.t} built from ${parts.length} components`);
        return parts;
      }
      case 'swizzle': {
        let a = this.ex(e.a);
        if (new Set(e.comps).size < e.comps.length) a = this.materialize(a);
        return [...e.comps].map((c) => a[XYZW.indexOf(c)]!);
      }
      case 'subgroup': return this.fail('subgroup operation left inside an expression');
    }
  }
  private sc(e: Expr): string { return this.ex(e)[0]!; }

  /** Components bound to temporaries (in the current statement's prelude) unless trivial. */
  private materialize(comps: string[]): string[] {
    return comps.map((c) => {
      if (SIMPLE.test(c)) return c;
      if (!this.sink) this.fail('no place for a temporary');
      const t = `$t${++this.temps}`;
      this.sink.push(`const ${t} = ${bare(c)};`);
      return t;
    });
  }

  private lit(s: Scalar, v: number | boolean): string {
    if (s === 'bool') return String(!!v);
    const x = Number(v);
    switch (s) {
      case 'f32': return num(Math.fround(x));
      case 'f16': return num(F16.$f16r(x));
      case 'i32': return num(x | 0);
      case 'u32': return num(x >>> 0);
    }
  }

  private builtin(name: Builtin): string[] {
    this.builtins.add(name);
    switch (name) {
      case 'globalId': return ['$gx', '$gy', '$gz'];
      case 'localId': return ['$lx', '$ly', '$lz'];
      case 'workgroupId': return ['$wgX', '$wgY', '$wgZ'];
      case 'numWorkgroups': return ['$nwgX', '$nwgY', '$nwgZ'];
      case 'localIndex': return ['$li'];
      case 'subgroupInvocationId': return ['$sgLane'];
      case 'subgroupSize': return [String(this.sg)];
    }
  }

  private round(t: Scalar, x: string): string {
    if (t === 'f16') return `${this.h('f16', '$f16r')}(${x})`;
    return `Math.fround(${x})`;
  }

  private binS(op: BinOp, t: Scalar, a: string, b: string): string {
    const CMP: Partial<Record<BinOp, string>> = { lt: '<', le: '<=', gt: '>', ge: '>=', eq: '===', ne: '!==', and: '&&', or: '||' };
    const cmp = CMP[op];
    if (cmp) return `(${a} ${cmp} ${b})`;
    const constDivisor = INT_LITERAL.test(b) && Number(b.replace(/[()]/g, '')) !== 0;
    if (t === 'f32' || t === 'f16') {
      const sym = { add: '+', sub: '-', mul: '*', div: '/', rem: '%' }[op as 'add'];
      if (!sym) this.fail(`'${op}' on ${t}`);
      return this.round(t, `${a} ${sym} ${b}`);
    }
    if (t === 'i32') {
      switch (op) {
        case 'add': return `((${a} + ${b}) | 0)`;
        case 'sub': return `((${a} - ${b}) | 0)`;
        case 'mul': return `Math.imul(${a}, ${b})`;
        case 'div': return constDivisor ? `((${a} / ${b}) | 0)` : `${this.h('idiv', '$idiv')}(${a}, ${b})`;
        case 'rem': return constDivisor ? `((${a} % ${b}) | 0)` : `${this.h('idiv', '$irem')}(${a}, ${b})`;
        case 'band': return `(${a} & ${b})`;
        case 'bor': return `(${a} | ${b})`;
        case 'bxor': return `(${a} ^ ${b})`;
        case 'shl': return `(${a} << ${b})`;
        case 'shr': return `(${a} >> ${b})`;
        default: break;
      }
    } else if (t === 'u32') {
      switch (op) {
        case 'add': return `((${a} + ${b}) >>> 0)`;
        case 'sub': return `((${a} - ${b}) >>> 0)`;
        case 'mul': return `(Math.imul(${a}, ${b}) >>> 0)`;
        case 'div': return constDivisor ? `((${a} / ${b}) >>> 0)` : `${this.h('idiv', '$udiv')}(${a}, ${b})`;
        case 'rem': return constDivisor ? `(${a} % ${b})` : `${this.h('idiv', '$urem')}(${a}, ${b})`;
        case 'band': return `((${a} & ${b}) >>> 0)`;
        case 'bor': return `((${a} | ${b}) >>> 0)`;
        case 'bxor': return `((${a} ^ ${b}) >>> 0)`;
        case 'shl': return `((${a} << ${b}) >>> 0)`;
        case 'shr': return `(${a} >>> ${b})`;
        default: break;
      }
    }
    return this.fail(`'${op}' on ${t}`);
  }

  private unS(op: UnOp, t: Scalar, a: string): string {
    switch (op) {
      case 'not': return `(!${a})`;
      case 'neg': return t === 'i32' ? `((-${a}) | 0)` : `(-${a})`;
      case 'bnot': return t === 'u32' ? `((~${a}) >>> 0)` : `(~${a})`;
    }
  }

  private call(fn: MathFn, args: Expr[]): string[] {
    const t = elemOf(args[0]!.t);
    const as = args.map((a) => this.ex(a));
    if (fn === 'dot') {
      const [a, b] = as as [string[], string[]];
      let acc = this.round(t, `${a[0]} * ${b[0]}`);
      for (let i = 1; i < a.length; i++) acc = this.round(t, `${acc} + ${this.round(t, `${a[i]} * ${b[i]}`)}`);
      return [acc];
    }
    return as[0]!.map((_, i) => this.callS(fn, t, as.map((a) => a[i]!)));
  }

  private callS(fn: MathFn, t: Scalar, [a, b, c]: string[]): string {
    const float = t === 'f32' || t === 'f16';
    switch (fn) {
      case 'exp': case 'log': case 'log2': case 'sqrt': case 'sin': case 'cos': case 'tanh':
        return this.round(t, `Math.${fn}(${a})`);
      case 'exp2': return this.round(t, `Math.pow(2, ${a})`);
      case 'inverseSqrt': return this.round(t, `1 / Math.sqrt(${a})`);
      case 'pow': return this.round(t, `Math.pow(${a}, ${b})`);
      case 'fma': return this.round(t, `${a} * ${b} + ${c}`);
      case 'abs': return float ? `Math.abs(${a})` : t === 'i32' ? `(Math.abs(${a}) | 0)` : a!;
      case 'floor': case 'ceil': return `Math.${fn}(${a})`;
      case 'round': return `${this.h('roundEven', '$roundEven')}(${a})`;
      case 'min': case 'max': return `Math.${fn}(${a}, ${b})`;
      case 'clamp': return `Math.min(Math.max(${a}, ${b}), ${c})`;
      case 'dot': return this.fail('dot of scalars');
    }
  }

  private castS(from: Scalar, to: Scalar, x: string): string {
    if (from === to) return x;
    if (to === 'bool') return `(${x} !== 0)`;
    if (from === 'bool') return `(${x} ? 1 : 0)`;
    switch (to) {
      case 'f32': return from === 'f16' ? x : `Math.fround(${x})`;
      case 'f16': return this.round('f16', x);
      case 'i32': return from === 'u32' ? `(${x} | 0)` : `${this.h('f2i', '$f2i')}(${x})`;
      case 'u32': return from === 'i32' ? `(${x} >>> 0)` : `${this.h('f2i', '$f2u')}(${x})`;
    }
  }

  private bitcast(a: Expr, to: DType): string[] {
    const src = this.ex(a);
    if (a.t === to) return src;
    const fe = elemOf(a.t), te = elemOf(to);
    this.h('bits');
    // Through 32-bit words, as u32 numbers; f16 pairs pack low half first.
    let words: string[];
    if (fe === 'f16') {
      this.h('f16');
      words = [];
      for (let i = 0; i < src.length; i += 2) words.push(`(($f16bits(${src[i]}) | ($f16bits(${src[i + 1]}) << 16)) >>> 0)`);
    } else {
      words = src.map((x) => (fe === 'f32' ? `$f32bits(${x})` : fe === 'i32' ? `(${x} >>> 0)` : x));
    }
    if (te === 'f16') {
      this.h('f16');
      return this.materialize(words).flatMap((w) => [`$F16[${w} & 65535]`, `$F16[${w} >>> 16]`]);
    }
    return words.map((w) => (te === 'f32' ? `$bitsf32(${w})` : te === 'i32' ? `(${w} | 0)` : w));
  }

  // ---- memory --------------------------------------------------------------------------------
  private buf(name: string) { return this.bufs.get(name) ?? this.fail(`unknown storage buffer '${name}'`); }
  private sh(name: string) { return this.shared.get(name) ?? this.fail(`unknown workgroup array '${name}'`); }
  private priv(name: string) { return this.privs.get(name) ?? this.fail(`unknown private array '${name}'`); }

  /** `array[index]` for a load (kind 0) or store (kind 1), checked in checking mode. */
  private ref(space: 'storage' | 'workgroup' | 'private', name: string, index: Expr, kind: 0 | 1): string {
    const idx = space === 'private' && this.priv(name).scalar ? '' : this.sc(index);
    if (space === 'storage') {
      const b = this.buf(name);
      return `${b.js}[${this.check ? `$ckS(${b.id}, ${b.js}, ${idx}, $li, ${kind})` : idx}]`;
    }
    if (space === 'workgroup') {
      const s = this.sh(name);
      return `${s.js}[${this.check ? `$ckW(${s.id}, ${idx}, $li, ${kind})` : idx}]`;
    }
    const p = this.priv(name);
    if (p.scalar) {
      if (index.k !== 'const') this.fail(`private array '${name}' indexed by a non-constant`);
      return `${p.js}$${Number(index.v)}`;
    }
    const i = this.check ? `$ckP(${p.id}, ${idx}, $li, ${kind})` : idx;
    return this.spilled.has(name) ? `${p.js}$p[${p.js}$b + ${i}]` : `${p.js}[${i}]`;
  }

  private load(e: Extract<Expr, { k: 'load' }>): string {
    const r = this.ref(e.space, e.name, e.index, 0);
    if (e.space === 'storage' && this.buf(e.name).t === 'f16') return `${this.h('f16', '$F16')}[${r}]`;
    return r;
  }

  // ---- statements inside a region (per invocation) --------------------------------------------
  /** Compile one statement's expressions with a prelude for temporaries, then its lines. */
  private withPrelude(out: string[], ind: string, fn: () => string[]): void {
    const saved = this.sink;
    const pre: string[] = [];
    this.sink = pre;
    const lines = fn();
    this.sink = saved;
    for (const l of pre) out.push(ind + l);
    for (const l of lines) out.push(ind + l);
  }
  /** A scalar expression evaluated in place (loop conditions): temporaries go in an IIFE. */
  private inPlace(e: Expr): string {
    const saved = this.sink;
    const pre: string[] = [];
    this.sink = pre;
    const x = this.sc(e);
    this.sink = saved;
    return pre.length ? `(() => { ${pre.join(' ')} return ${x}; })()` : x;
  }

  private declare(name: string): void {
    if (!this.spilled.has(name)) return;
    if (this.rc.blocks > 0) this.fail(`'${name}' is declared inside a block but used after a barrier outside it`);
    this.rc.available.add(name);
  }

  private stmts(list: XStmt[], out: string[], ind: string): void {
    for (const s of list) this.stmt(s, out, ind);
  }

  private block(body: XStmt[], out: string[], ind: string, loop: boolean): void {
    this.rc.blocks++;
    if (loop) this.rc.plainLoops++;
    this.stmts(body, out, ind);
    this.rc.blocks--;
    if (loop) this.rc.plainLoops--;
  }

  private stmt(s: XStmt, out: string[], ind: string): void {
    switch (s.k) {
      case 'let': {
        this.withPrelude(out, ind, () => {
          const c = this.ex(s.init), kw = s.mutable ? 'let' : 'const', id = jsId(s.name);
          if (c.length === 1) return [`${kw} ${id} = ${bare(c[0]!)};`];
          return [`${kw} ${c.map((x, i) => `${id}$${XYZW[i]} = ${bare(x)}`).join(', ')};`];
        });
        this.declare(s.name);
        return;
      }
      case 'assign':
        this.withPrelude(out, ind, () => {
          const id = jsId(s.name);
          let c = this.ex(s.value);
          if (c.length === 1) return [`${id} = ${bare(c[0]!)};`];
          if (c.some((x) => x.includes(`${id}$`))) { // e.g. v = v.yx: read every component first
            c = c.map((x) => { const t = `$t${++this.temps}`; this.sink!.push(`const ${t} = ${bare(x)};`); return t; });
          }
          return c.map((x, i) => `${id}$${XYZW[i]} = ${bare(x)};`);
        });
        return;
      case 'store':
        this.withPrelude(out, ind, () => {
          const target = this.ref(s.space, s.name, s.index, 1);
          const v = this.sc(s.value);
          const f16 = s.space === 'storage' && this.buf(s.name).t === 'f16';
          return [`${target} = ${f16 ? `${this.h('f16', '$f16bits')}(${v})` : bare(v)};`];
        });
        return;
      case 'privateArray': {
        const p = this.priv(s.name);
        if (p.scalar) {
          const names = Array.from({ length: p.length }, (_, i) => `${p.js}$${i} = 0`);
          out.push(`${ind}let ${names.join(', ')};`);
        } else if (this.spilled.has(s.name)) {
          out.push(`${ind}${p.js}$p.fill(0, ${p.js}$b, ${p.js}$b + ${p.length});`);
        } else {
          out.push(`${ind}${p.js}.fill(0);`);
        }
        this.declare(s.name);
        return;
      }
      case 'if': {
        this.withPrelude(out, ind, () => [`if (${bare(this.sc(s.cond))}) {`]);
        this.block(s.then, out, ind + '  ', false);
        if (s.else.length) {
          out.push(`${ind}} else {`);
          this.block(s.else, out, ind + '  ', false);
        }
        out.push(`${ind}}`);
        return;
      }
      case 'for': {
        const id = jsId(s.name);
        const wrap = s.t === 'u32' ? '>>> 0' : '| 0';
        this.withPrelude(out, ind, () => {
          const from = this.sc(s.from);
          return [`for (let ${id} = ${bare(from)}; ${id} < ${this.inPlace(s.to)}; ${id} = (${id} + ${this.inPlace(s.step)}) ${wrap}) {`];
        });
        this.block(s.body, out, ind + '  ', true);
        out.push(`${ind}}`);
        return;
      }
      case 'while':
        out.push(`${ind}while (${bare(this.inPlace(s.cond))}) {`);
        this.block(s.body, out, ind + '  ', true);
        out.push(`${ind}}`);
        return;
      case 'break': case 'continue':
        if (this.rc.plainLoops > 0) out.push(`${ind}${s.k};`);
        else this.exit(s.k, out, ind);
        return;
      case 'return': this.exit('return', out, ind); return;
      case 'atomic': this.atomic(s, out, ind); return;
      case 'barrier': case '$sg': case '$loop':
        return this.fail(`${s.k} in a per-invocation region`);
    }
  }

  /** Leave the region for this invocation: return (it stops), or break/continue a workgroup-level loop. */
  private exit(kind: 'return' | 'break' | 'continue', out: string[], ind: string): void {
    const { ctx, multi } = this.rc;
    let from = 0;
    if (kind !== 'return') {
      if (!ctx.loop) this.fail(`${kind} outside a loop`);
      from = kind === 'break' ? ctx.loop.lIdx : ctx.loop.iIdx;
      for (const v of this.rc.written) if (this.rc.available.has(v)) out.push(...this.storeLines(v).map((l) => ind + l));
    }
    if (multi) out.push(`${ind}${ctx.masks.slice(from).map((m) => `${m}[$li] = 0;`).join(' ')}`);
    out.push(`${ind}continue $inv; // ${kind}`);
  }

  private atomic(s: Extract<XStmt, { k: 'atomic' }>, out: string[], ind: string): void {
    this.withPrelude(out, ind, () => {
      const arr = s.space === 'storage' ? this.buf(s.name).js : this.sh(s.name).js;
      let i = this.sc(s.index);
      if (this.check) {
        i = s.space === 'storage' ? `$ckS(${this.buf(s.name).id}, ${arr}, ${i}, $li, 2)` : `$ckW(${this.sh(s.name).id}, ${i}, $li, 2)`;
        i = this.materialize([i])[0]!;
      }
      const v = this.sc(s.value);
      let call: string;
      switch (s.op) {
        case 'add': case 'exchange': case 'load': case 'store':
          call = s.op === 'load' ? `Atomics.load(${arr}, ${i})` : `Atomics.${s.op}(${arr}, ${i}, ${v})`;
          break;
        case 'max': case 'min':
          this.h('atomicMinMax');
          call = `$atomic${s.op === 'max' ? 'Max' : 'Min'}(${arr}, ${i}, ${v})`;
          break;
        case 'compareExchange':
          if (!s.compare) this.fail('compareExchange without a compare value');
          call = `Atomics.compareExchange(${arr}, ${i}, ${this.sc(s.compare)}, ${v})`;
          break;
      }
      if (this.check) call = `(${i} < 0 ? 0 : ${call})`;
      return [s.result ? `const ${jsId(s.result)} = ${call};` : `${call};`];
    });
    if (s.result) this.declare(s.result);
  }

  // ---- lowering to the workgroup level --------------------------------------------------------
  private addItem(ctx: WgCtx, it: Item): Region {
    if (!this.cur || this.cur.ctx !== ctx) {
      this.cur = { ctx, pre: [], items: [] };
      this.out.push({ k: 'region', r: this.cur });
    }
    this.cur.items.push(it);
    return this.cur;
  }
  private sub(fn: () => void): Wg[] {
    const saved = this.out;
    this.out = [];
    this.cur = null;
    fn();
    const r = this.out;
    this.out = saved;
    this.cur = null;
    return r;
  }

  private lowerSeq(list: XStmt[], ctx: WgCtx): void {
    for (const s of list) {
      if (!isSync(s)) { this.addItem(ctx, { k: 'stmt', s }); continue; }
      switch (s.k) {
        case 'barrier':
          this.cur = null;
          this.out.push({ k: 'barrier', ctx, id: ++this.barriers });
          break;
        case '$sg': {
          const id = ++this.sgOps;
          this.addItem(ctx, { k: 'deposit', sg: s, id });
          this.cur = null;
          this.forcedSpill.add(s.name);
          this.out.push({ k: 'sg', sg: s, id, ctx });
          break;
        }
        case 'if': {
          const t = this.mask(), e = s.else.length ? this.mask() : undefined;
          this.addItem(ctx, { k: 'cond', cond: s.cond, then: t, else: e }).pre.push(`${t}.fill(0);${e ? ` ${e}.fill(0);` : ''}`);
          this.cur = null;
          const then = this.sub(() => this.lowerSeq(s.then, { ...ctx, masks: [...ctx.masks, t] }));
          const els = e ? this.sub(() => this.lowerSeq(s.else, { ...ctx, masks: [...ctx.masks, e] })) : [];
          this.out.push({ k: 'if', t, e, then, else: els });
          break;
        }
        case 'for': {
          const v: Expr = { k: 'var', t: s.t, name: s.name };
          this.addItem(ctx, { k: 'stmt', s: { k: 'let', name: s.name, t: s.t, init: s.from, mutable: true } });
          this.lowerLoop(ctx, [], { k: 'bin', t: 'bool', op: 'lt', a: v, b: s.to }, s.body,
            [{ k: 'assign', name: s.name, value: { k: 'bin', t: s.t, op: 'add', a: v, b: s.step } }]);
          break;
        }
        case 'while': this.lowerLoop(ctx, [], s.cond, s.body, []); break;
        case '$loop': this.lowerLoop(ctx, s.pre, s.cond, s.body, s.post); break;
        default: this.fail(`unexpected sync statement ${s.k}`);
      }
    }
  }

  private lowerLoop(ctx: WgCtx, pre: XStmt[], cond: Expr, body: XStmt[], post: XStmt[]): void {
    this.cur = null;
    const l = this.mask(), i = this.mask(), n = ctx.masks.length;
    const lctx: WgCtx = { masks: [...ctx.masks, l], loop: ctx.loop };
    const preWg = this.sub(() => {
      this.lowerSeq(pre, lctx);
      this.addItem(lctx, { k: 'loopCond', cond, mask: l });
    });
    const bodyWg = this.sub(() => this.lowerSeq(body, { masks: [...ctx.masks, l, i], loop: { lIdx: n, iIdx: n + 1 } }));
    const postWg = this.sub(() => this.lowerSeq(post, lctx));
    this.out.push({ k: 'loop', l, i, parent: ctx.masks[n - 1]!, pre: preWg, body: bodyWg, post: postWg });
  }

  // ---- which locals live across regions ---------------------------------------------------------
  private regionUse(items: Item[]): RegionUse {
    const u: RegionUse = { refs: new Set(), written: new Set(), declTop: new Set() };
    const ref = (n: string) => { if (this.vars.has(n) || this.privs.has(n)) u.refs.add(n); };
    const expr = (e: Expr) => forEachExpr(e, (x) => {
      if (x.k === 'var') ref(x.name);
      else if (x.k === 'load' && x.space === 'private') ref(x.name);
    });
    const decl = (n: string, depth: number) => { ref(n); u.written.add(n); if (depth === 0) u.declTop.add(n); };
    const stmt = (s: XStmt, d: number): void => {
      switch (s.k) {
        case 'let': expr(s.init); decl(s.name, d); break;
        case 'assign': expr(s.value); ref(s.name); u.written.add(s.name); break;
        case 'store': expr(s.index); expr(s.value); if (s.space === 'private') { ref(s.name); u.written.add(s.name); } break;
        case 'privateArray': decl(s.name, d); break;
        case 'if': expr(s.cond); s.then.forEach((x) => stmt(x, d + 1)); s.else.forEach((x) => stmt(x, d + 1)); break;
        case 'for': expr(s.from); expr(s.to); expr(s.step); decl(s.name, d + 1); s.body.forEach((x) => stmt(x, d + 1)); break;
        case 'while': expr(s.cond); s.body.forEach((x) => stmt(x, d + 1)); break;
        case 'atomic': expr(s.index); expr(s.value); if (s.compare) expr(s.compare); if (s.result) decl(s.result, d); break;
        default: break;
      }
    };
    for (const it of items) {
      if (it.k === 'stmt') stmt(it.s, 0);
      else if (it.k === 'deposit') { expr(it.sg.a); if (it.sg.b) expr(it.sg.b); }
      else expr(it.cond);
    }
    return u;
  }

  private regions(nodes: Wg[], acc: Region[] = []): Region[] {
    for (const n of nodes) {
      if (n.k === 'region') acc.push(n.r);
      else if (n.k === 'if') { this.regions(n.then, acc); this.regions(n.else, acc); }
      else if (n.k === 'loop') { this.regions(n.pre, acc); this.regions(n.body, acc); this.regions(n.post, acc); }
    }
    return acc;
  }

  /** Per-invocation storage for spilled names: scalar components, or WG × length for private arrays. */
  private spillState(): void {
    for (const name of this.spilled) {
      const p = this.privs.get(name);
      if (p) {
        this.state.push(p.scalar
          ? `const ${p.js}$s = new ${SPILL_ARRAY[p.t]}(${this.n * p.length});`
          : `const ${p.js}$p = new ${SPILL_ARRAY[p.t]}(${this.n * p.length});`);
        continue;
      }
      const t = this.vars.get(name)!;
      for (const c of this.comps(name, t)) this.state.push(`const ${c}$s = new ${SPILL_ARRAY[elemOf(t)]}(${this.n});`);
    }
    for (const p of this.privs.values()) {
      if (!p.scalar && !this.spilled.has(p.name)) {
        this.state.push(`const ${p.js} = new ${SPILL_ARRAY[p.t]}(${p.length});`);
      }
    }
  }
  private comps(name: string, t: DType): string[] {
    const id = jsId(name);
    return isVec(t) ? [...XYZW.slice(0, widthOf(t))].map((c) => `${id}$${c}`) : [id];
  }
  private loadLines(name: string, written: boolean): string[] {
    const p = this.privs.get(name);
    if (p) {
      const base = `const ${p.js}$b = $li * ${p.length};`;
      if (!p.scalar) return [base];
      return [base, `let ${Array.from({ length: p.length }, (_, i) => `${p.js}$${i} = ${p.js}$s[${p.js}$b + ${i}]`).join(', ')};`];
    }
    const t = this.vars.get(name)!;
    const kw = written ? 'let' : 'const';
    return this.comps(name, t).map((c) => `${kw} ${c} = ${c}$s[$li]${elemOf(t) === 'bool' ? ' !== 0' : ''};`);
  }
  private storeLines(name: string): string[] {
    const p = this.privs.get(name);
    if (p) return p.scalar ? [Array.from({ length: p.length }, (_, i) => `${p.js}$s[${p.js}$b + ${i}] = ${p.js}$${i};`).join(' ')] : [];
    return this.comps(name, this.vars.get(name)!).map((c) => `${c}$s[$li] = ${c};`);
  }

  // ---- emission -----------------------------------------------------------------------------------
  private emitRegion(r: Region, multi: boolean, out: string[], ind: string): void {
    for (const p of r.pre) out.push(ind + p);
    const use = r.use ?? this.regionUse(r.items);
    const spilledHere = [...use.refs].filter((v) => this.spilled.has(v));
    this.rc = {
      multi, ctx: r.ctx, plainLoops: 0, blocks: 0,
      available: new Set(spilledHere.filter((v) => !use.declTop.has(v))),
      written: new Set(spilledHere.filter((v) => use.written.has(v))),
    };
    // Private arrays declared in this region need their base before the declaration.
    const loads: string[] = [];
    for (const v of spilledHere) {
      if (!use.declTop.has(v)) loads.push(...this.loadLines(v, use.written.has(v)));
      else if (this.privs.has(v)) loads.push(`const ${this.privs.get(v)!.js}$b = $li * ${this.privs.get(v)!.length};`);
    }
    this.builtins = new Set();
    const inner = ind + '  ';
    const body: string[] = [];
    for (const it of r.items) {
      switch (it.k) {
        case 'stmt': this.stmt(it.s, body, inner); break;
        case 'cond':
          this.withPrelude(body, inner, () => [it.else
            ? `if (${this.sc(it.cond)}) ${it.then}[$li] = 1; else ${it.else}[$li] = 1;`
            : `if (${this.sc(it.cond)}) ${it.then}[$li] = 1;`]);
          break;
        case 'loopCond':
          this.withPrelude(body, inner, () => [`if (!${this.sc(it.cond)}) ${it.mask}[$li] = 0;`]);
          break;
        case 'deposit':
          this.withPrelude(body, inner, () => [`$sgv${it.id}[$li] = ${this.sc(it.sg.a)};`,
            ...(it.sg.b ? [`$sgl${it.id}[$li] = ${this.sc(it.sg.b)};`] : [])]);
          break;
      }
    }
    out.push(`${ind}$inv: for (let $li = 0; $li < ${this.n}; $li++) {`);
    if (multi) out.push(`${inner}if (${r.ctx.masks[r.ctx.masks.length - 1]}[$li] === 0) continue;`);
    for (const l of this.builtinLines()) out.push(inner + l);
    for (const l of loads) out.push(inner + l);
    out.push(...body);
    for (const v of spilledHere) if (use.written.has(v)) for (const l of this.storeLines(v)) out.push(inner + l);
    out.push(`${ind}}`);
  }

  private builtinLines(): string[] {
    const b = this.builtins, [X, Y, Z] = this.wg;
    const lines: string[] = [];
    if (b.has('localId') || b.has('globalId')) {
      const lx = Y * Z === 1 ? '$li' : `$li % ${X}`;
      const ly = Y === 1 ? '0' : Z === 1 ? `($li / ${X}) | 0` : `(($li / ${X}) | 0) % ${Y}`;
      const lz = Z === 1 ? '0' : `($li / ${X * Y}) | 0`;
      lines.push(`const $lx = ${lx}, $ly = ${ly}, $lz = ${lz};`);
    }
    if (b.has('globalId')) {
      const g = (w: string, n: number, l: string) => (n === 1 ? w : `${w} * ${n} + ${l}`);
      lines.push(`const $gx = ${g('$wgX', X, '$lx')}, $gy = ${g('$wgY', Y, '$ly')}, $gz = ${g('$wgZ', Z, '$lz')};`);
    }
    if (b.has('subgroupInvocationId')) lines.push(`const $sgLane = $li & ${this.sg - 1};`);
    return lines;
  }

  private emitWg(nodes: Wg[], out: string[], ind: string): void {
    for (const n of nodes) {
      switch (n.k) {
        case 'region': this.emitRegion(n.r, true, out, ind); break;
        case 'barrier':
          if (this.check) out.push(`${ind}$ckBarrier(${n.id}, ${n.ctx.masks[n.ctx.masks.length - 1]}, $alive); $epoch++; // workgroup barrier`);
          else out.push(`${ind}// workgroup barrier`);
          break;
        case 'sg': this.emitSubgroup(n, out, ind); break;
        case 'if':
          out.push(`${ind}if ($any(${n.t})) {`);
          this.emitWg(n.then, out, ind + '  ');
          out.push(`${ind}}`);
          if (n.e) {
            out.push(`${ind}if ($any(${n.e})) {`);
            this.emitWg(n.else, out, ind + '  ');
            out.push(`${ind}}`);
          }
          break;
        case 'loop':
          out.push(`${ind}${n.l}.set(${n.parent});`, `${ind}for (;;) {`);
          this.emitWg(n.pre, out, ind + '  ');
          out.push(`${ind}  if (!$any(${n.l})) break;`, `${ind}  ${n.i}.set(${n.l});`);
          this.emitWg(n.body, out, ind + '  ');
          this.emitWg(n.post, out, ind + '  ');
          out.push(`${ind}}`);
          break;
      }
    }
  }

  private emitSubgroup(n: Extract<Wg, { k: 'sg' }>, out: string[], ind: string): void {
    const { sg, id } = n;
    const mask = n.ctx.masks[n.ctx.masks.length - 1]!;
    this.h('subgroup');
    this.state.push(`const $sgv${id} = new Float64Array(${this.n});`);
    if (sg.b) this.state.push(`const $sgl${id} = new Uint32Array(${this.n});`);
    const dst = `${jsId(sg.name)}$s`;
    if (this.check) out.push(`${ind}$ckSubgroup(${id}, ${mask}, $alive, ${this.sg});`);
    if (sg.op === 'shuffleXor' || sg.op === 'broadcast') {
      out.push(`${ind}$sgShuffle(${sg.op === 'shuffleXor'}, $sgv${id}, $sgl${id}, ${dst}, ${mask}, ${this.n}, ${this.sg}, ${this.check ? `$ckShuffle(${id})` : 'null'}); // subgroup ${sg.op}`);
    } else {
      const op = { add: 0, max: 1, min: 2 }[sg.op];
      out.push(`${ind}$sgReduce(${op}, ${KIND[sg.t]}, $sgv${id}, ${dst}, ${mask}, ${this.n}, ${this.sg}); // subgroup ${sg.op}`);
    }
  }

  emit(): string {
    const ir = this.ir;
    const multi = this.body.some(isSync);
    const code: string[] = [];
    const ind = '    ';
    if (multi) {
      this.h('workgroup');
      this.lowerSeq(this.body, { masks: ['$alive'] });
      const root = this.out;
      const regions = this.regions(root);
      const count = new Map<string, number>();
      for (const r of regions) {
        r.use = this.regionUse(r.items);
        for (const v of r.use.refs) count.set(v, (count.get(v) ?? 0) + 1);
      }
      this.spilled = new Set([...count].filter(([, c]) => c > 1).map(([v]) => v));
      for (const v of this.forcedSpill) this.spilled.add(v);
      this.state.push(`const $alive = new Uint8Array(${this.n});`);
      code.push(`${ind}$alive.fill(1);`);
      this.emitWg(root, code, ind);
    } else {
      this.emitRegion({ ctx: { masks: [] }, pre: [], items: this.body.map((s) => ({ k: 'stmt', s })) }, false, code, ind);
    }
    this.spillState();

    const fnName = jsId(ir.name.replace(/[^A-Za-z0-9_]/g, '_').replace(/^(?=\d)/, '_'));
    const lines: string[] = [...this.header(), '"use strict";'];
    const helpers = helperSource(this.helpers);
    if (helpers) lines.push(helpers);
    lines.push('return function make($ctx) {');
    if (this.check) lines.push(...this.checkState().map((l) => '  ' + l));
    for (const s of ir.shared) {
      lines.push(`  const ${jsId(s.name)} = new ${SHARED_ARRAY[s.t]}(${s.length}); // workgroup memory`);
    }
    lines.push(...this.state.map((l) => '  ' + l));
    lines.push(`  return function ${fnName}($wgX, $wgY, $wgZ, $nwgX, $nwgY, $nwgZ, $buffers, $uniforms) {`);
    if (ir.buffers.length) lines.push(`    const ${ir.buffers.map((b, i) => `${jsId(b.name)} = $buffers[${i}]`).join(', ')};`);
    if (ir.uniforms.length) lines.push(`    const ${ir.uniforms.map((u, i) => `${jsId(u.name)} = $uniforms[${i}]`).join(', ')};`);
    if (this.check) lines.push(`    $wid = '(' + $wgX + ',' + $wgY + ',' + $wgZ + ')'; $epoch++;`);
    for (const s of ir.shared) lines.push(`    ${jsId(s.name)}.fill(0);`);
    lines.push(...code, '  };', '};', '');
    return lines.join('\n');
  }

  private checkState(): string[] {
    const [X, Y, Z] = this.wg;
    const describe = Y * Z === 1
      ? `'invocation ' + li`
      : `'invocation ' + li + ' (localId ' + (li % ${X}) + ',' + (((li / ${X}) | 0) % ${Y}) + ',' + ((li / ${X * Y}) | 0) + ')'`;
    const q = (s: string) => JSON.stringify(s);
    const privs = [...this.privs.entries()].sort((a, b) => a[1].id - b[1].id);
    return [
      `let $wid = '', $epoch = 0;`,
      `function $describe(li) { return ${describe}; }`,
      `const $BUF = [${this.ir.buffers.map((b) => q(b.key)).join(', ')}];`,
      `const $SH = [${this.ir.shared.map((s) => q(s.name)).join(', ')}], $SH_LEN = [${this.ir.shared.map((s) => s.length).join(', ')}];`,
      `const $SH_TRACK = [${this.ir.shared.map((s) => `new Int32Array(${s.length * 7})`).join(', ')}];`,
      `const $PRIV = [${privs.map(([n]) => q(n)).join(', ')}], $PRIV_LEN = [${privs.map(([, p]) => p.length).join(', ')}];`,
      ...CHECK_RUNTIME.split('\n'),
    ];
  }

  private header(): string[] {
    const ir = this.ir;
    const [X, Y, Z] = this.wg;
    return [
      `// Kernel '${ir.name}' for the Kiln CPU executor (generated by codegen/emit/js.ts; do not edit).`,
      `// params: ${JSON.stringify(ir.params)}`,
      `// workgroup: ${X}x${Y}x${Z} (${this.n} invocations); grid: ${ir.gridDoc || '(see the kernel)'}`,
      `// bindings: ${ir.buffers.map((b) => `${b.key}: ${b.t} ${b.access}${b.atomic ? ' atomic' : ''}`).join(', ') || 'none'}`,
      `// uniforms: ${ir.uniforms.map((u) => `${u.key}: ${u.t}`).join(', ') || 'none'}`,
      `// checking: ${this.check ? 'on' : 'off'}; subgroup size ${this.sg}`,
    ];
  }
}
