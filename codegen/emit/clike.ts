// The shared base of the C-style emitters (WGSL, CUDA): precedence-safe expression printing,
// statements and indentation, identifier hygiene, exact literals and the file header. A target
// supplies types, literals and the handful of constructs that differ (see the abstract hooks).
import type { BinOp, Builtin, BufferDecl, Expr, KernelIR, Stmt } from '../dsl/ir.js';
import { type DType, type Scalar, vecOf } from '../dsl/types.js';
import { f16round } from '../dsl/f16.js';
import { show } from '../dsl/show.js';
import { walk } from '../dsl/walk.js';
import { expandNibblePair, expandNibbleValues, expandSub2x16float } from './legalize.js';

export { f16round };

// ---- printed expressions and precedence ------------------------------------------------------
/** Binding strength, C order: a child printed weaker than its context gets parentheses. */
export const P = { ternary: 3, or: 4, and: 5, bor: 6, bxor: 7, band: 8, eq: 9, rel: 10, shift: 11, add: 12, mul: 13, unary: 14, atom: 15 } as const;

/** A printed expression: its text, how tightly it binds and, for infix forms, its operator. */
export interface Code { s: string; prec: number; op?: BinOp }
export const atom = (s: string): Code => ({ s, prec: P.atom });

export const BIN: Record<BinOp, { sym: string; prec: number }> = {
  add: { sym: '+', prec: P.add }, sub: { sym: '-', prec: P.add },
  mul: { sym: '*', prec: P.mul }, div: { sym: '/', prec: P.mul }, rem: { sym: '%', prec: P.mul },
  lt: { sym: '<', prec: P.rel }, le: { sym: '<=', prec: P.rel }, gt: { sym: '>', prec: P.rel }, ge: { sym: '>=', prec: P.rel },
  eq: { sym: '==', prec: P.eq }, ne: { sym: '!=', prec: P.eq },
  and: { sym: '&&', prec: P.and }, or: { sym: '||', prec: P.or },
  band: { sym: '&', prec: P.band }, bor: { sym: '|', prec: P.bor }, bxor: { sym: '^', prec: P.bxor },
  shl: { sym: '<<', prec: P.shift }, shr: { sym: '>>', prec: P.shift },
};
type OpClass = 'arith' | 'cmp' | 'shift' | 'bit' | 'logic';
function opClass(op: BinOp): OpClass {
  const p = BIN[op].prec;
  if (p >= P.add) return 'arith';
  if (p === P.shift) return 'shift';
  if (p === P.rel || p === P.eq) return 'cmp';
  return op === 'and' || op === 'or' ? 'logic' : 'bit';
}

/** Whether child `c` of infix `parent` needs parentheses. Stricter than C: WGSL forbids mixing
 *  bitwise, shift, comparison and logical operators without them, and C compilers warn. */
function needsParens(parent: BinOp, right: boolean, c: Code): boolean {
  if (c.prec >= P.unary) return false;
  if (!c.op) return true; // a conditional expression
  const pc = opClass(parent), cc = opClass(c.op);
  switch (pc) {
    case 'arith': return cc !== 'arith' || c.prec < BIN[parent].prec || (right && c.prec === BIN[parent].prec);
    case 'cmp': return cc !== 'arith';
    case 'shift': return true;
    case 'bit': return right || c.op !== parent;
    case 'logic': return !(cc === 'arith' || cc === 'cmp' || (!right && c.op === parent));
  }
}
const paren = (c: Code) => `(${c.s})`;
export function infix(op: BinOp, a: Code, b: Code, sym = BIN[op].sym): Code {
  const sa = needsParens(op, false, a) ? paren(a) : a.s;
  const sb = needsParens(op, true, b) ? paren(b) : b.s;
  return { s: `${sa} ${sym} ${sb}`, prec: BIN[op].prec, op };
}
export function prefix(sym: string, a: Code): Code {
  return { s: sym + (a.prec < P.atom ? paren(a) : a.s), prec: P.unary };
}
/** a.member, a[index] and the like: the operand must be an atom. */
export function postfix(a: Code, suffix: string): Code {
  return atom((a.prec < P.atom ? paren(a) : a.s) + suffix);
}
export function ternary(c: Code, a: Code, b: Code): Code {
  const w = (x: Code) => (x.prec <= P.ternary ? paren(x) : x.s);
  return { s: `${w(c)} ? ${w(a)} : ${w(b)}`, prec: P.ternary };
}
export const callCode = (fn: string, args: Code[]): Code => atom(`${fn}(${args.map((a) => a.s).join(', ')})`);

// ---- exact float literals ----------------------------------------------------------------------
const f64 = new Float64Array(1);
const bits64 = new BigUint64Array(f64.buffer);
function nextDouble(x: number, up: boolean): number { // x > 0
  f64[0] = x;
  bits64[0] = bits64[0]! + (up ? 1n : -1n);
  return f64[0];
}
/** Whether the decimal text `s` (positive, as toPrecision writes it) is exactly the double `d`. */
function isExactly(s: string, d: number): boolean {
  const [mantissa = '', exponent = '0'] = s.split('e');
  const [whole = '', fraction = ''] = mantissa.split('.');
  const k = Number(exponent) - fraction.length; // s = D * 10^k
  f64[0] = d;
  const biased = Number((bits64[0]! >> 52n) & 0x7ffn);
  const m = (bits64[0]! & ((1n << 52n) - 1n)) | (biased ? 1n << 52n : 0n);
  const e = (biased || 1) - 1075; // d = m * 2^e
  let lhs = BigInt(whole + fraction), rhs = m;
  if (k >= 0) lhs *= 10n ** BigInt(k); else rhs *= 10n ** BigInt(-k);
  if (e >= 0) rhs *= 2n ** BigInt(e); else lhs *= 2n ** BigInt(-e);
  return lhs === rhs;
}
/**
 * The shortest decimal text a compiler reads back as exactly `v` in the format `round` rounds to.
 * A candidate whose double value lies exactly on a midpoint of the format, without being that
 * decimal exactly, is skipped: this check's double rounding could disagree with the compiler's.
 */
/** Largest finite value of the format `round` rounds to (f16: 65504; f32: FLT_MAX). */
function maxFinite(round: (x: number) => number): number {
  return Number.isFinite(round(65520)) ? 3.4028234663852886e38 : 65504;
}

export function floatText(v: number, round: (x: number) => number, what: string): string {
  if (!Number.isFinite(v)) throw new Error(`${what}: ${v} is not a finite number`);
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const sign = v < 0 ? '-' : '';
  const a = Math.abs(v);
  for (let p = 1; p <= 17; p++) {
    const s = a.toPrecision(p);
    const d = Number(s);
    // Digits above the format's largest finite value are rejected by WGSL even when they round to it.
    const pastMax = d > maxFinite(round);
    if (!pastMax && round(d) === a && (isExactly(s, d) || round(nextDouble(d, true)) === round(nextDouble(d, false)))) {
      // String(d) prints the same digits, positionally where that is short (100, not 1e+2).
      const t = String(d).replace('e+', 'e');
      return sign + (/[.e]/.test(t) ? t : `${t}.0`);
    }
  }
  throw new Error(`${what}: no decimal form found for ${v}`);
}

/** Every identifier the kernel declares, in declaration order. */
export function declaredNames(ir: KernelIR): string[] {
  const names = [...ir.buffers.map((b) => b.name), ...ir.uniforms.map((u) => u.name), ...ir.shared.map((s) => s.name)];
  walk(ir.body, (s) => {
    if (s.k === 'let' || s.k === 'for' || s.k === 'privateArray') names.push(s.name);
    if (s.k === 'atomic' && s.result) names.push(s.result);
  }, () => {});
  return names;
}
export const BUILTINS: Builtin[] = ['globalId', 'localId', 'workgroupId', 'numWorkgroups', 'localIndex', 'subgroupInvocationId', 'subgroupSize'];

// ---- the emitter base ---------------------------------------------------------------------------------
type Of<K extends Expr['k']> = Extract<Expr, { k: K }>;
type StmtOf<K extends Stmt['k']> = Extract<Stmt, { k: K }>;

export abstract class CLikeEmitter {
  private readonly lines: string[] = [];
  private depth = 1;
  private readonly names = new Map<string, string>();
  private readonly taken = new Set<string>();
  /** IR names some expression reads (an atomic's old value nobody reads is not declared). */
  protected readonly readNames = new Set<string>();
  /** Builtins the body reads, each with its target identifier. */
  protected readonly builtins = new Map<Builtin, string>();

  constructor(protected readonly ir: KernelIR, private readonly reserved: ReadonlySet<string>) {
    if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(ir.name) || reserved.has(ir.name)) {
      throw new Error(`kernel '${ir.name}': the kernel name is not usable as an entry point name`);
    }
    const declared = declaredNames(ir);
    for (const n of [ir.name, ...declared]) this.taken.add(n);
    // Names the target reserves (keywords, functions the emitted code calls) get a suffix.
    for (const n of declared) if (reserved.has(n) || n === ir.name) this.names.set(n, this.fresh(`${n}_`));
    walk(ir.body, () => {}, (e) => { if (e.k === 'var') this.readNames.add(e.name); });
  }

  /** A new identifier, free in both the kernel and the target. */
  protected fresh(base: string): string {
    let n = base;
    for (let i = 1; this.taken.has(n) || this.reserved.has(n); i++) n = base.endsWith('_') ? `${base}${i}` : `${base}_${i}`;
    this.taken.add(n);
    return n;
  }
  protected id(name: string): string { return this.names.get(name) ?? name; }
  protected builtinName(b: Builtin): string {
    let n = this.builtins.get(b);
    if (!n) this.builtins.set(b, (n = this.fresh(b)));
    return n;
  }

  // ---- target hooks ----
  abstract type(t: DType): string;
  abstract literal(v: number | boolean, t: Scalar): Code;
  /** `let`/`var` (or `const T`/`T`) without the semicolon; `name` is already a target identifier. */
  abstract decl(name: string, t: DType, init: string, mutable: boolean): string;
  abstract uniform(name: string): Code;
  abstract builtin(b: Builtin): Code;
  abstract load(e: Of<'load'>): Code;
  abstract call(e: Of<'call'>): Code;
  abstract select(e: Of<'select'>): Code;
  abstract cast(e: Of<'cast'>): Code;
  abstract bitcast(e: Of<'bitcast'>): Code;
  abstract vec(e: Of<'vec'>): Code;
  abstract swizzle(e: Of<'swizzle'>): Code;
  abstract subgroup(e: Of<'subgroup'>): Code;
  abstract forHead(s: StmtOf<'for'>): string;
  abstract store(s: StmtOf<'store'>): void;
  abstract privateArray(s: StmtOf<'privateArray'>): void;
  abstract barrier(): string;
  abstract fence(): string;
  /** A warp-wide tensor-core product (targets without one lower it first: emit/mma.ts). */
  protected mma(s: StmtOf<'mma'>): void { throw new Error(`kernel '${this.ir.name}': mma reached an emitter that does not lower it (emit/mma.ts lowerMma)`); }
  abstract atomic(s: StmtOf<'atomic'>): void;
  binary(e: Of<'bin'>): Code { return infix(e.op, this.code(e.a), this.code(e.b)); }
  unary(e: Of<'un'>): Code { return prefix(e.op === 'neg' ? '-' : e.op === 'not' ? '!' : '~', this.code(e.a)); }
  pack(e: Of<'pack2x16float'> | Of<'unpack2x16float'>): Code { return callCode(e.k, [this.code(e.a)]); }
  /** The magic-number nibble pair; plain and/or unless the target has a better instruction (CUDA: LOP3). */
  nibblePair(e: Of<'nibblePairF16'>): Code { return this.code(expandNibblePair(e)); }
  /** The nibble pair's values; the portable form unless the target has f16 pair arithmetic (CUDA: HSUB2). */
  nibbleValues(e: Of<'nibblePairValues'>): Code { return this.code(expandNibbleValues(e)); }
  /** The f16 pair difference; the portable form unless the target has f16 pair arithmetic (CUDA: HSUB2). */
  sub2x16(e: Of<'sub2x16float'>): Code { return this.code(expandSub2x16float(e)); }

  // ---- expressions ----
  expr(e: Expr): string { return this.code(e).s; }
  code(e: Expr): Code {
    switch (e.k) {
      case 'const': return this.literal(e.v, e.t as Scalar);
      case 'var': return atom(this.id(e.name));
      case 'uniform': return this.uniform(e.name);
      case 'builtin': return this.builtin(e.name);
      case 'load': return this.load(e);
      case 'bin': return this.binary(e);
      case 'un': return this.unary(e);
      case 'call': return this.call(e);
      case 'select': return this.select(e);
      case 'cast': return this.cast(e);
      case 'bitcast': return this.bitcast(e);
      case 'pack2x16float': case 'unpack2x16float': return this.pack(e);
      case 'nibblePairF16': return this.nibblePair(e);
      case 'nibblePairValues': return this.nibbleValues(e);
      case 'sub2x16float': return this.sub2x16(e);
      case 'vec': return this.vec(e);
      case 'swizzle': return this.swizzle(e);
      case 'subgroup': return this.subgroup(e);
      case 'lanes': return this.lanes(e);
      case 'intrinsic': return callCode(e.name, e.args.map((a) => this.code(a)));
    }
  }
  /** A lifted vector operation: only targets whose legalization lifts vectors print one. */
  lanes(e: Of<'lanes'>): Code { throw new Error(`kernel '${this.ir.name}': this target has no lifted vector operations (${show(e)})`); }
  protected index(name: string, index: Expr): string { return `${this.id(name)}[${this.expr(index)}]`; }
  /** Evaluate `e` once into a new local when it is more than a name or a literal. */
  protected hoist(e: Expr, base: string): Expr {
    if (e.k === 'const' || e.k === 'var' || e.k === 'uniform') return e;
    const name = this.fresh(base);
    this.line(`${this.decl(name, e.t, this.expr(e), false)};`);
    return { k: 'var', t: e.t, name };
  }

  // ---- statements ----
  protected line(s: string): void { this.lines.push('  '.repeat(this.depth) + s); }
  protected block(head: string, body: Stmt[]): void {
    this.line(`${head} {`);
    this.indented(body);
    this.line('}');
  }
  protected stmts(list: Stmt[]): void { for (const s of list) this.stmt(s); }
  protected stmt(s: Stmt): void {
    switch (s.k) {
      case 'let': this.line(`${this.decl(this.id(s.name), s.t, this.expr(s.init), s.mutable)};`); break;
      case 'assign': this.line(`${this.id(s.name)} = ${this.expr(s.value)};`); break;
      case 'store': this.store(s); break;
      case 'privateArray': this.privateArray(s); break;
      case 'if': this.ifChain(s); break;
      case 'for': this.block(this.forHead(s), s.body); break;
      case 'while': this.block(`while (${this.expr(s.cond)})`, s.body); break;
      case 'break': case 'continue': case 'return': this.line(`${s.k};`); break;
      case 'barrier': this.line(this.barrier()); break;
      case 'fence': this.line(this.fence()); break;
      case 'mma': this.mma(s); break;
      case 'atomic': this.atomic(s); break;
    }
  }
  private ifChain(s: StmtOf<'if'>): void {
    this.line(`if (${this.expr(s.cond)}) {`);
    for (let cur = s; ;) {
      this.indented(cur.then);
      const next = cur.else.length === 1 && cur.else[0]!.k === 'if' ? cur.else[0] : undefined;
      if (next) {
        this.line(`} else if (${this.expr(next.cond)}) {`);
        cur = next;
        continue;
      }
      if (cur.else.length) {
        this.line('} else {');
        this.indented(cur.else);
      }
      this.line('}');
      return;
    }
  }
  protected indented(body: Stmt[]): void {
    this.depth++;
    this.stmts(body);
    this.depth--;
  }

  /** The kernel body, indented one level. */
  protected bodyLines(): string[] {
    this.stmts(this.ir.body);
    return this.lines;
  }

  /** The header comment every generated file starts with. */
  protected header(extra: string[]): string {
    const ir = this.ir;
    const [x, y, z] = ir.workgroupSize;
    const lines = [
      `Generated by \`kiln codegen\` from the kernel library (codegen/kernels). Do not edit.`,
      `kernel: ${ir.name}`,
      `params: ${JSON.stringify(ir.params, (_k, v: unknown) => (typeof v === 'function' || typeof v === 'bigint' ? String(v) : v))}`,
      `caps: ${Object.entries(ir.caps).map(([k, v]) => `${k}=${String(v)}`).join(' ')}`,
      `workgroup size: ${x} x ${y} x ${z} (${x * y * z} invocations)`,
      `launch: ${ir.gridDoc || '(grid not documented)'} workgroups`,
      `bindings:`,
      ...ir.buffers.map((b, i) => `  ${i}: ${b.name} ${b.atomic ? `atomic<${b.t}>` : bufferElem(b)}[] ${b.access}${b.shape ? `, shape ${b.shape}` : ''}${b.key !== b.name ? ` (binding key '${b.key}')` : ''}`),
      ...(ir.uniforms.length
        ? [`uniforms: ${ir.uniforms.map((u, i) => `${u.name}: ${u.t} @${4 * i}`).join(', ')}`,
          `  (4-byte scalars in this order; WGSL: one uniform block at binding ${ir.buffers.length}, padded to ${uniformBytes(ir)} bytes)`]
        : []),
      ...(ir.shared.length ? [`workgroup arrays: ${ir.shared.map((s) => `${s.name}: ${s.atomic ? `atomic<${s.t}>` : s.t}[${s.length}]`).join(', ')}`] : []),
      ...extra,
    ];
    return lines.map((l) => `// ${l}`.trimEnd()).join('\n');
  }
}

/** A buffer's element type in the kernel: its scalar, or vecW<scalar> for a vector binding. */
export function bufferElem(b: BufferDecl): DType {
  return vecOf(b.t, b.vec);
}

/** Bytes of the uniform block: 4 per scalar, in declaration order, padded to 16. */
export function uniformBytes(ir: KernelIR): number {
  return Math.ceil((4 * ir.uniforms.length) / 16) * 16;
}
