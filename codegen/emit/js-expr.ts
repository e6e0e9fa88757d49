// Expressions for the JS emitter: every IR expression as JavaScript that computes what a GPU
// computes — f32/f16 rounded after each operation, i32 wrapping (|0, Math.imul), u32 (>>> 0),
// WGSL integer division — and memory references, bounds-checked in checking mode. A vector is
// compiled to one expression per component, so vector code stays scalar; so are the elements of
// vector bindings (element i of a vecW binding is scalars W·i .. W·i + W − 1 of its typed array).
import type { BinOp, Builtin, Expr, KernelIR, MathFn, UnOp } from '../dsl/ir.js';
import { type DType, type Scalar, byteSize, elemOf, isVec, widthOf } from '../dsl/types.js';
import { f16BitsToF32, f32ToF16Bits, roundToF16 } from '../dsl/f16.js';
import { show } from '../dsl/show.js';
import { expandLanes, expandNibblePair, expandNibbleValues, expandSub2x16float } from './legalize.js';

export interface JsEmitOptions {
  /** Report out-of-bounds accesses, shared-memory races and divergent barriers into ctx. */
  check?: boolean;
  /** Emulated subgroup size (default: the kernel's caps.subgroupSize, else 32). */
  subgroupSize?: number;
  /**
   * Profiling mode: every storage and workgroup-array access reports its index to the memory-access
   * model (js-helpers.ts PROFILING), which puts per-site sector and wavefront counts in ctx.profile.
   */
  profile?: boolean;
}

/** A static load/store site of a profiled kernel, in the order the emitter met them. */
export interface ProfileSite {
  /** `array#n`: the n-th site (1-based) on that storage buffer or workgroup array. */
  site: string;
  /** The access as the kernel wrote it, `array[index]` (shortened): which line of the kernel it is. */
  access: string;
  space: 'global' | 'shared';
  /** Atomics count as stores (a read-modify-write of the same bytes). */
  kind: 'load' | 'store';
  /** Bytes one invocation moves: element size × vector width. */
  bytes: number;
  /** Binding index (global) or workgroup-array index (shared). */
  array: number;
}

// Host-side f16 conversion: the same code the kernels run (codegen/dsl/f16.ts).
export { f16BitsToF32, f32ToF16Bits };

// ---- identifiers and literals --------------------------------------------------------------------
// Names the builder lets through that JavaScript (or the globals generated code uses) would not.
const JS_AVOID = new Set(('in of debugger enum implements let static yield await arguments eval Atomics Math ' +
  'Float32Array Float64Array Int32Array Uint32Array Uint16Array Uint8Array Object Array Number Error String ' +
  'Boolean Symbol globalThis Infinity NaN undefined').split(' '));
export const jsId = (name: string): string => (JS_AVOID.has(name) ? `${name}$` : name);
export const XYZW = 'xyzw';
const SIMPLE = /^(?:[$A-Za-z_][$\w]*|\d[\d.e+-]*|\(-[\d.e+-]+\)|true|false|Infinity|\(-Infinity\))$/;
const INT_LITERAL = /^\(?-?\d+\)?$/;

/** x without one pair of enclosing parentheses, where a statement supplies its own. */
export function bare(x: string): string {
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
export const SPILL_ARRAY: Record<Scalar, string> = { f32: 'Float32Array', f16: 'Float32Array', i32: 'Int32Array', u32: 'Uint32Array', bool: 'Uint8Array' };
export const SHARED_ARRAY: Record<string, string> = { f32: 'Float32Array', i32: 'Int32Array', u32: 'Uint32Array' };
export const KIND: Record<string, number> = { f32: 0, f16: 1, i32: 2, u32: 3 };

/** A private array: `scalar` ones (constant indices only) become one local per element. */
export interface PrivInfo { name: string; js: string; t: Scalar; length: number; scalar: boolean; id: number }

export abstract class JsExpressions {
  protected readonly check: boolean;
  protected readonly profile: boolean;
  /** Profiling mode: the sites instrumented so far (their ids index this list). */
  readonly sites: ProfileSite[] = [];
  protected readonly sg: number;
  protected readonly wg: [number, number, number];
  /** Invocations per workgroup. */
  protected readonly n: number;
  protected readonly vars = new Map<string, DType>();
  protected readonly privs = new Map<string, PrivInfo>();
  protected readonly bufs = new Map<string, { id: number; js: string; t: string; vec: number }>();
  protected readonly shared = new Map<string, { id: number; js: string }>();
  protected readonly helpers = new Set<string>();
  /** Locals kept per invocation across regions (private arrays among them). */
  protected spilled = new Set<string>();
  /** Where temporaries of the statement being compiled go. */
  protected sink: string[] | null = null;
  protected temps = 0;
  // What the region being compiled uses.
  protected builtins = new Set<Builtin>();
  protected usedBufs = new Set<string>();
  protected usedUnis = new Set<string>();

  constructor(protected readonly ir: KernelIR, opts: JsEmitOptions) {
    this.check = !!opts.check;
    this.profile = !!opts.profile;
    this.sg = opts.subgroupSize ?? (ir.caps.subgroupSize > 0 ? ir.caps.subgroupSize : 32);
    if (!(this.sg >= 1 && this.sg <= 128 && (this.sg & (this.sg - 1)) === 0)) {
      throw new Error(`kernel '${ir.name}': emulated subgroup size ${this.sg} is not a power of two up to 128`);
    }
    this.wg = ir.workgroupSize;
    this.n = this.wg[0] * this.wg[1] * this.wg[2];
    ir.buffers.forEach((b, id) => this.bufs.set(b.name, { id, js: jsId(b.name), t: b.t, vec: b.vec }));
    ir.shared.forEach((s, id) => this.shared.set(s.name, { id, js: jsId(s.name) }));
  }

  protected fail(msg: string): never {
    throw new Error(`kernel '${this.ir.name}' (JS emitter): ${msg}`);
  }

  /** Mark a runtime helper as used; returns `fn`, the function to call. */
  protected h(helper: string, fn = ''): string { this.helpers.add(helper); return fn; }

  // ---- expressions ---------------------------------------------------------------------------
  /** Component expressions of e (one for a scalar). */
  protected ex(e: Expr): string[] {
    switch (e.k) {
      case 'const': return new Array<string>(widthOf(e.t)).fill(this.lit(elemOf(e.t), e.v));
      case 'var': {
        const id = jsId(e.name);
        return isVec(e.t) ? [...XYZW.slice(0, widthOf(e.t))].map((c) => `${id}$${c}`) : [id];
      }
      case 'uniform': this.usedUnis.add(e.name); return [jsId(e.name)];
      case 'builtin': return this.builtin(e.name);
      case 'load': {
        const w = e.space === 'storage' ? this.buf(e.name).vec : 1;
        return w > 1 ? this.vectorRefs(e.name, e.index, 0) : [this.load(e)];
      }
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
      case 'nibblePairF16': return this.ex(expandNibblePair(e));
      case 'nibblePairValues': return this.ex(expandNibbleValues(e));
      case 'sub2x16float': return this.ex(expandSub2x16float(e));
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
      // Vectors are already one expression per component here; nothing is lifted for JS.
      case 'lanes': return this.ex(expandLanes(e));
      case 'intrinsic': return this.fail(`target function ${e.name} (legalized for another target)`);
    }
  }
  protected sc(e: Expr): string { return this.ex(e)[0]!; }

  /** Components bound to temporaries (in the current statement's prelude) unless trivial. */
  protected materialize(comps: string[]): string[] {
    return comps.map((c) => {
      if (SIMPLE.test(c)) return c;
      if (!this.sink) this.fail('no place for a temporary');
      const t = `$t${++this.temps}`;
      this.sink.push(`const ${t} = ${bare(c)};`);
      return t;
    });
  }

  protected lit(s: Scalar, v: number | boolean): string {
    if (s === 'bool') return String(!!v);
    const x = Number(v);
    switch (s) {
      case 'f32': return num(Math.fround(x));
      case 'f16': return num(roundToF16(x));
      case 'i32': return num(x | 0);
      case 'u32': return num(x >>> 0);
    }
  }

  protected builtin(name: Builtin): string[] {
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

  protected round(t: Scalar, x: string): string {
    if (t === 'f16') return `${this.h('f16', '$f16r')}(${x})`;
    return `Math.fround(${x})`;
  }

  protected binS(op: BinOp, t: Scalar, a: string, b: string): string {
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

  protected unS(op: UnOp, t: Scalar, a: string): string {
    switch (op) {
      case 'not': return `(!${a})`;
      case 'neg': return t === 'i32' ? `((-${a}) | 0)` : `(-${a})`;
      case 'bnot': return t === 'u32' ? `((~${a}) >>> 0)` : `(~${a})`;
    }
  }

  protected call(fn: MathFn, args: Expr[]): string[] {
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

  protected callS(fn: MathFn, t: Scalar, [a, b, c]: string[]): string {
    const float = t === 'f32' || t === 'f16';
    switch (fn) {
      case 'exp': case 'log': case 'log2': case 'sqrt': case 'sin': case 'cos': case 'tanh':
        return this.round(t, `Math.${fn}(${a})`);
      case 'exp2': return this.round(t, `Math.pow(2, ${a})`);
      case 'inverseSqrt': return this.round(t, `1 / Math.sqrt(${a})`);
      case 'pow': return this.round(t, `Math.pow(${a}, ${b})`);
      case 'fma': {
        // Correctly rounded (js-helpers.ts $fmaPC), inline but for halfway sums that are inexact:
        // s = p + c rounded once is right unless it is exactly halfway between two f32 values, i.e.
        // unless the f32 value on its far side (2s − r) is an f32 too, and then still right when
        // the sum was exact (TwoSum's error is 0, common with low-precision weights). Temporaries
        // are per nesting depth: an fma in an argument finishes before this one sets its own.
        const depth = 1 + Math.max(-1, ...[a, b, c].flatMap((x) => [...x!.matchAll(/\$fs(\d+)/g)].map((m) => Number(m[1]))));
        const [fs, fr, fo, fp, fc] = ['s', 'r', 'o', 'p', 'c'].map((n) => `$f${n}${depth}`);
        const fma = `((${fr} = Math.fround(${fs} = (${fp} = ${a} * ${b}) + (${fc} = ${c}))) === ${fs}`
          + ` || Math.fround(${fo} = 2 * ${fs} - ${fr}) !== ${fo}`
          + ` || ((${fo} = ${fs} - ${fp}), ${fp} - (${fs} - ${fo}) + (${fc} - ${fo})) === 0 ? ${fr} : ${this.h('fmaf', '$fmaPC')}(${fp}, ${fc}))`;
        return t === 'f16' ? this.round(t, fma) : fma;
      }
      case 'abs': return float ? `Math.abs(${a})` : t === 'i32' ? `(Math.abs(${a}) | 0)` : a!;
      case 'floor': case 'ceil': return `Math.${fn}(${a})`;
      case 'round': return `${this.h('roundEven', '$roundEven')}(${a})`;
      case 'min': case 'max': return `Math.${fn}(${a}, ${b})`;
      case 'clamp': return `Math.min(Math.max(${a}, ${b}), ${c})`;
      case 'dot': return this.fail('dot of scalars');
    }
  }

  protected castS(from: Scalar, to: Scalar, x: string): string {
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

  protected bitcast(a: Expr, to: DType): string[] {
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
  protected buf(name: string) {
    this.usedBufs.add(name);
    return this.bufs.get(name) ?? this.fail(`unknown storage buffer '${name}'`);
  }
  protected sh(name: string) { return this.shared.get(name) ?? this.fail(`unknown workgroup array '${name}'`); }
  protected priv(name: string) { return this.privs.get(name) ?? this.fail(`unknown private array '${name}'`); }

  /**
   * In profiling mode, `index` wrapped so that the memory-access model sees it (a new static site);
   * otherwise `index` itself. kind: 0 load, 1 store, 2 atomic.
   */
  protected profiled(space: 'storage' | 'workgroup', name: string, index: string, kind: 0 | 1 | 2, at: Expr): string {
    if (!this.profile) return index;
    const nth = this.sites.filter((x) => x.site.startsWith(`${name}#`)).length + 1;
    const b = space === 'storage' ? this.buf(name) : undefined;
    const shown = show(at);
    this.sites.push({
      site: `${name}#${nth}${kind === 2 ? ' (atomic)' : ''}`,
      access: `${name}[${shown.length > 60 ? `${shown.slice(0, 59)}…` : shown}]`, space: b ? 'global' : 'shared', kind: kind === 0 ? 'load' : 'store',
      bytes: b ? byteSize(b.t as 'f32') * b.vec : 4, array: b ? b.id : this.sh(name).id,
    });
    return `$pf(${this.sites.length - 1}, ${index}, $li)`;
  }

  /** `array[index]` for a load (kind 0) or store (kind 1), checked in checking mode. */
  protected ref(space: 'storage' | 'workgroup' | 'private', name: string, index: Expr, kind: 0 | 1): string {
    const idx = space === 'private' && this.priv(name).scalar ? '' : this.sc(index);
    if (space === 'storage') {
      const b = this.buf(name);
      return `${b.js}[${this.profiled(space, name, this.check ? `$ckS(${b.id}, ${b.js}, ${idx}, $li, ${kind})` : idx, kind, index)}]`;
    }
    if (space === 'workgroup') {
      const s = this.sh(name);
      return `${s.js}[${this.profiled(space, name, this.check ? `$ckW(${s.id}, ${idx}, $li, ${kind})` : idx, kind, index)}]`;
    }
    const p = this.priv(name);
    if (p.scalar) {
      if (index.k !== 'const') this.fail(`private array '${name}' indexed by a non-constant`);
      return `${p.js}$${Number(index.v)}`;
    }
    const i = this.check ? `$ckP(${p.id}, ${idx}, $li, ${kind})` : idx;
    return this.spilled.has(name) ? `${p.js}$p[${p.js}$b + ${i}]` : `${p.js}[${i}]`;
  }

  /**
   * The W scalar references of element `index` of vector binding `name` (load kind 0, store 1):
   * arr[W·i + c], each checked in checking mode.
   */
  protected vectorRefs(name: string, index: Expr, kind: 0 | 1): string[] {
    const b = this.buf(name);
    // One request per element (W·size bytes per lane): the model sees the element index once.
    const [i] = this.materialize([this.profiled('storage', name, this.sc(index), kind, index)]);
    return Array.from({ length: b.vec }, (_, c) => {
      const idx = `${i} * ${b.vec}${c ? ` + ${c}` : ''}`;
      return `${b.js}[${this.check ? `$ckS(${b.id}, ${b.js}, ${idx}, $li, ${kind})` : idx}]`;
    });
  }

  protected load(e: Extract<Expr, { k: 'load' }>): string {
    const r = this.ref(e.space, e.name, e.index, 0);
    if (e.space === 'storage' && this.buf(e.name).t === 'f16') return `${this.h('f16', '$F16')}[${r}]`;
    return r;
  }
}
