// The builder API: kernels are TypeScript functions that call it to produce a KernelIR.
// Types are checked twice: by TypeScript (Val<T> carries its dtype) and here at build time, so
// JavaScript callers and dynamic dtypes get an error naming the kernel and the expression.
import type {
  Access, AtomicOp, BinOp, Builtin, BufferDecl, Expr, KernelIR, MathFn, SharedDecl, Space, Stmt,
  SubgroupOp, UniformDecl,
} from './ir.js';
import { dims } from './dims.js';
import { show } from './show.js';
import {
  BASELINE_CAPS, type Caps, type DType, type Scalar, type StorageType, type Vec, VEC_WIDTHS, type VecWidth,
  elemOf, isBool, isFloat, isInt, isStorageType, isVec, vecOf, widthOf, withElem,
} from './types.js';

// ---- type-level helpers -------------------------------------------------------------------
export type ElemOf<T extends DType> = T extends `vec${number}<${infer S extends Scalar}>` ? S : T;
export type BoolOf<T extends DType> = T extends `vec${infer N extends 2 | 3 | 4}<${string}>` ? Vec<'bool', N> : 'bool';
type IndexVal = Val<'u32'> | Val<'i32'> | number;
type Operand<T extends DType> = Val<T> | number;

export class KernelError extends Error {}

// ---- values ---------------------------------------------------------------------------------
/** A typed expression. Methods build new expressions; nothing is evaluated. */
export class Val<T extends DType = DType> {
  constructor(readonly e: Expr, readonly kb: KernelBuilder) {}
  get t(): T { return this.e.t as T; }

  add(b: Operand<T>): Val<T> { return this.kb.bin('add', this, b); }
  sub(b: Operand<T>): Val<T> { return this.kb.bin('sub', this, b); }
  mul(b: Operand<T>): Val<T> { return this.kb.bin('mul', this, b); }
  div(b: Operand<T>): Val<T> { return this.kb.bin('div', this, b); }
  rem(b: Operand<T>): Val<T> { return this.kb.bin('rem', this, b); }
  lt(b: Operand<T>): Val<BoolOf<T>> { return this.kb.bin('lt', this, b); }
  le(b: Operand<T>): Val<BoolOf<T>> { return this.kb.bin('le', this, b); }
  gt(b: Operand<T>): Val<BoolOf<T>> { return this.kb.bin('gt', this, b); }
  ge(b: Operand<T>): Val<BoolOf<T>> { return this.kb.bin('ge', this, b); }
  eq(b: Operand<T>): Val<BoolOf<T>> { return this.kb.bin('eq', this, b); }
  ne(b: Operand<T>): Val<BoolOf<T>> { return this.kb.bin('ne', this, b); }
  and(b: Val<T> | boolean): Val<T> { return this.kb.bin('and', this, b); }
  or(b: Val<T> | boolean): Val<T> { return this.kb.bin('or', this, b); }
  band(b: Operand<T>): Val<T> { return this.kb.bin('band', this, b); }
  bor(b: Operand<T>): Val<T> { return this.kb.bin('bor', this, b); }
  bxor(b: Operand<T>): Val<T> { return this.kb.bin('bxor', this, b); }
  /** Shift left; the amount is a u32 (as in WGSL). */
  shl(b: Val<'u32'> | number): Val<T> { return this.kb.shift('shl', this, b); }
  shr(b: Val<'u32'> | number): Val<T> { return this.kb.shift('shr', this, b); }
  neg(): Val<T> { return this.kb.unary('neg', this); }
  not(): Val<T> { return this.kb.unary('not', this); }
  bnot(): Val<T> { return this.kb.unary('bnot', this); }

  get x(): Val<ElemOf<T>> { return this.kb.swizzle(this, 'x') as Val<ElemOf<T>>; }
  get y(): Val<ElemOf<T>> { return this.kb.swizzle(this, 'y') as Val<ElemOf<T>>; }
  get z(): Val<ElemOf<T>> { return this.kb.swizzle(this, 'z') as Val<ElemOf<T>>; }
  get w(): Val<ElemOf<T>> { return this.kb.swizzle(this, 'w') as Val<ElemOf<T>>; }
  /** Component i of a vector (compile-time index). */
  at(i: number): Val<ElemOf<T>> { return this.kb.swizzle(this, 'xyzw'[i] ?? '?') as Val<ElemOf<T>>; }
  swizzle<R extends DType>(comps: string): Val<R> { return this.kb.swizzle(this, comps) as Val<R>; }
  toString(): string { return show(this.e); }
}

/** A mutable local variable. */
export class Var<T extends DType = DType> extends Val<T> {
  constructor(readonly name: string, t: T, kb: KernelBuilder) { super({ k: 'var', t, name }, kb); }
  set(v: Operand<T>): void { this.kb.assign(this, v); }
}

/**
 * A storage buffer, workgroup array or private array. T is its element type: a scalar, or vecW<S>
 * for a storage binding declared with a vector width (at/set then move whole vectors).
 */
export class ArrayRef<T extends DType, W extends boolean = true> {
  constructor(readonly name: string, readonly t: T, readonly space: Space, readonly writable: W,
    readonly atomic: boolean, readonly length: number | undefined, readonly kb: KernelBuilder) {}
  at(i: IndexVal): Val<T> { return this.kb.load(this, i); }
  set(this: ArrayRef<T, true>, i: IndexVal, v: Operand<T>): void { this.kb.store(this, i, v); }
  /**
   * The same array seen with element type `t`, checked when the kernel is built: for a binding
   * whose type follows a parameter (an f32 or packed-f16 u32 cache, table or output).
   */
  typed<S extends DType>(t: S): ArrayRef<S, W> {
    const held: DType = this.t;
    if (held !== t) this.kb.fail(`array '${this.name}' holds ${held}, not ${t}`);
    return new ArrayRef<S, W>(this.name, t, this.space, this.writable, this.atomic, this.length, this.kb);
  }
  /** The same array as writable, checked when the kernel is built: for a binding whose access follows a parameter. */
  writableRef(): ArrayRef<T, true> {
    if (!this.writable) this.kb.fail(`array '${this.name}' is read-only`);
    return new ArrayRef(this.name, this.t, this.space, true, this.atomic, this.length, this.kb);
  }
}

// ---- kernel specifications ------------------------------------------------------------------
export interface BindingSpec<T extends StorageType = StorageType, A extends Access = Access, V extends VecWidth = VecWidth> {
  t: T;
  access: A;
  atomic?: boolean;
  /**
   * Vector width W (default 1; 2 or 4 for f32, i32, u32, not atomic): the kernel reads and writes
   * vecW<T> elements, element i being scalars [W·i, W·i + W) of the host's scalar buffer, whose
   * length must be a multiple of W.
   */
  vec?: V;
  /**
   * The binding's shape in scalars (whatever the vector width) as text over the uniforms, e.g.
   * '[M, K]' or '[K, Nw / 8]' (codegen/dsl/dims.ts): launch validation reads it, and so do the
   * generated files' headers and the errors. Declare it with storage(…, { shape }). A binding
   * without one (an op's tensor whose size the op checks itself) is not length-checked at launch.
   */
  shape?: string;
}
type StorageOpts = { atomic?: boolean; shape?: string };
export function storage<T extends StorageType, A extends Access>(
  t: T, access: A, opts?: StorageOpts & { vec?: 1 },
): BindingSpec<T, A, 1>;
export function storage<T extends StorageType, A extends Access, V extends VecWidth>(
  t: T, access: A, opts: StorageOpts & { vec: V },
): BindingSpec<T, A, V>;
export function storage<T extends StorageType, A extends Access>(
  t: T, access: A, opts: StorageOpts & { vec?: VecWidth },
): BindingSpec<T, A>;
export function storage(t: StorageType, access: Access, opts: StorageOpts & { vec?: VecWidth } = {}): BindingSpec {
  if (opts.shape === undefined) return { t, access, ...opts };
  return { t, access, ...opts, shape: dims(opts.shape).text }; // parsed now: a malformed shape fails where it is declared
}
/** The element type kernel code sees for a binding: T, or vecW<T> for a vector binding. */
export type BindingElem<S> = S extends BindingSpec<infer T extends StorageType, Access, infer V>
  ? [V] extends [2] ? Vec<T, 2> : [V] extends [4] ? Vec<T, 4> : T
  : never;
export type Bindings = Record<string, BindingSpec>;
export type Uniforms = Record<string, Scalar>;
export type BufRefs<B extends Bindings> = {
  [K in keyof B]: ArrayRef<BindingElem<B[K]>, B[K]['access'] extends 'read_write' ? true : false>;
};
export type UniformVals<U extends Uniforms> = { [K in keyof U]: Val<U[K]> };
export type UniformValues<U extends Uniforms> = { [K in keyof U]: number };
export type Grid = number | [number, number?, number?];

export interface KernelSpec<B extends Bindings, U extends Uniforms> {
  name: string;
  params?: Record<string, unknown>;
  caps?: Caps;
  workgroupSize: number | [number, number?, number?];
  bindings: B;
  uniforms: U;
  /**
   * Workgroups to launch: up to three dimensions as text over the uniforms, like a binding's
   * shape ('[ceil(N / 64), ceil(M / 32)]'), stated once for launches and headers alike; or, for a
   * grid the text cannot say, a function of the uniform values with its `gridDoc`.
   */
  grid: string | ((u: UniformValues<U>) => Grid);
  /** How a grid function follows from the sizes, for generated-file headers (derived from a text grid). */
  gridDoc?: string;
  /**
   * Workgroups per multiprocessor the kernel is meant to run at (a register budget hint: CUDA's
   * second `__launch_bounds__` argument; other targets ignore it). Without it ptxas picks a
   * register count of its own, and may spill below what the occupancy needs.
   */
  minWorkgroupsPerSM?: number;
  body: (k: KernelBuilder, b: BufRefs<B>, u: UniformVals<U>) => void;
}

/** A built kernel: its IR plus what the runtime needs to launch it. */
export interface Kernel<B extends Bindings = Bindings, U extends Uniforms = Uniforms> {
  readonly ir: KernelIR;
  readonly bindings: B;
  readonly uniforms: U;
  grid(u: UniformValues<U>): [number, number, number];
}

const RESERVED = new Set(('var let const fn if else for while loop break continue return switch case default ' +
  'struct true false bool f32 f16 i32 u32 int float half unsigned signed char void auto static ' +
  'inout function private workgroup uniform storage read write read_write array atomic ' +
  'enable new delete this class do goto long short double register volatile extern inline ' +
  'typeof instanceof yield await async with export import super throw try catch finally ' +
  'vec2 vec3 vec4 ptr sampler texture override alias bitcast select min max abs exp log sqrt ' +
  'Math undefined null NaN Infinity arguments eval interface package protected public ' +
  'threadIdx blockIdx blockDim gridDim warpSize main').split(' '));

function toGrid(g: Grid): [number, number, number] {
  const a = typeof g === 'number' ? [g] : g;
  return [a[0] ?? 1, a[1] ?? 1, a[2] ?? 1];
}

/** Build a kernel from its specification; throws KernelError naming kernel and expression. */
export function kernel<B extends Bindings, U extends Uniforms>(spec: KernelSpec<B, U>): Kernel<B, U> {
  const kb = new KernelBuilder(spec.name, spec.caps ?? BASELINE_CAPS);
  const wg = toGrid(spec.workgroupSize);
  const invocations = wg[0] * wg[1] * wg[2];
  if (!wg.every((d) => Number.isInteger(d) && d >= 1)) kb.fail(`workgroup size ${wg.join('x')} is not positive integers`);
  if (invocations > kb.caps.maxInvocationsPerWorkgroup) {
    kb.fail(`workgroup of ${invocations} invocations exceeds the device limit ${kb.caps.maxInvocationsPerWorkgroup}`);
  }
  const refs = {} as Record<string, ArrayRef<DType, boolean>>;
  const buffers: BufferDecl[] = [];
  for (const [name, b] of Object.entries(spec.bindings)) {
    if (!isStorageType(b.t)) kb.fail(`binding '${name}' has element type '${b.t}', not one of f32, f16, i32, u32`);
    if (b.access !== 'read' && b.access !== 'read_write') kb.fail(`binding '${name}' has access '${b.access}'`);
    if (b.atomic && b.t !== 'u32' && b.t !== 'i32') kb.fail(`atomic binding '${name}' must be u32 or i32`);
    if (b.t === 'f16' && !kb.caps.f16) kb.fail(`binding '${name}' is f16 but the device has no f16 storage: pass f16 data packed in u32`);
    const vec = b.vec ?? 1;
    if (!VEC_WIDTHS.includes(vec)) kb.fail(`binding '${name}' has vector width ${String(vec)}, not 1, 2 or 4`);
    if (vec > 1 && b.t === 'f16') kb.fail(`binding '${name}' is f16 with vector width ${vec}: vector bindings hold f32, i32 or u32 (f16 pairs travel as u32 words)`);
    if (vec > 1 && b.atomic) kb.fail(`atomic binding '${name}' cannot have vector width ${vec}`);
    if (b.shape) {
      const unknown = dims(b.shape).names.filter((u) => !(u in spec.uniforms));
      if (unknown.length) kb.fail(`binding '${name}' has shape ${b.shape}, but ${unknown.map((u) => `'${u}'`).join(', ')} is not a uniform`);
    }
    const n = kb.declare(name);
    buffers.push({ key: name, name: n, t: b.t, access: b.access, atomic: !!b.atomic, vec, ...(b.shape ? { shape: b.shape } : {}) });
    refs[name] = new ArrayRef(n, vecOf(b.t, vec), 'storage', b.access === 'read_write', !!b.atomic, undefined, kb);
  }
  if (buffers.length > kb.caps.maxStorageBuffers) {
    kb.fail(`${buffers.length} storage buffers exceed the device limit ${kb.caps.maxStorageBuffers}`);
  }
  const uniforms: UniformDecl[] = [];
  const uvals = {} as Record<string, Val>;
  for (const [name, t] of Object.entries(spec.uniforms)) {
    if (t !== 'u32' && t !== 'i32' && t !== 'f32') kb.fail(`uniform '${name}' has type '${t}'; uniforms are u32, i32 or f32`);
    const n = kb.declare(name);
    uniforms.push({ key: name, name: n, t });
    uvals[name] = new Val({ k: 'uniform', t, name: n }, kb);
  }
  let grid: (u: UniformValues<U>) => [number, number, number];
  let gridDoc = spec.gridDoc ?? '';
  const gridSpec = spec.grid;
  if (typeof gridSpec === 'string') {
    const g = dims(gridSpec);
    const unknown = g.names.filter((u) => !(u in spec.uniforms));
    if (unknown.length) kb.fail(`grid ${g.text} uses ${unknown.map((u) => `'${u}'`).join(', ')}, not a uniform`);
    if (g.parts.length < 1 || g.parts.length > 3) kb.fail(`grid ${g.text} has ${g.parts.length} dimensions, not 1 to 3`);
    grid = (u) => { const d = g.eval(u); return [d[0] ?? 1, d[1] ?? 1, d[2] ?? 1]; };
    gridDoc ||= g.parts.join(' x ');
  } else {
    grid = (u) => toGrid(gridSpec(u));
  }
  spec.body(kb, refs as BufRefs<B>, uvals as UniformVals<U>);
  if (kb.usesMma && invocations % 32) kb.fail(`mma needs whole warps: a workgroup of ${invocations} invocations is not a multiple of 32`);
  // Targets without tensor cores trade mma fragments through workgroup memory (MMA_SCRATCH_WORDS per
  // invocation); with them (CUDA: mma.sync from registers) the fragments take none.
  const sharedBytes = kb.sharedDecls.reduce((s, d) => s + d.length * 4, 0) + (kb.usesMma && !kb.caps.tensorCores ? invocations * 6 * 4 : 0);
  if (sharedBytes > kb.caps.maxWorkgroupStorage) {
    kb.fail(`workgroup arrays take ${sharedBytes} bytes, over the device limit ${kb.caps.maxWorkgroupStorage}`);
  }
  const minWg = spec.minWorkgroupsPerSM;
  if (minWg !== undefined && (!Number.isInteger(minWg) || minWg < 1 || minWg > 32)) kb.fail(`minWorkgroupsPerSM ${minWg} is not an integer in 1..32`);
  const ir: KernelIR = {
    ...(minWg !== undefined ? { minWorkgroupsPerSM: minWg } : {}),
    name: spec.name, params: spec.params ?? {}, caps: kb.caps, workgroupSize: wg, buffers, uniforms,
    shared: kb.sharedDecls, body: kb.root, usesF16: kb.usesF16 || buffers.some((b) => b.t === 'f16'),
    usesSubgroups: kb.usesSubgroups, gridDoc,
  };
  return {
    ir, bindings: spec.bindings, uniforms: spec.uniforms,
    grid,
  };
}

export class KernelBuilder {
  readonly root: Stmt[] = [];
  private stack: Stmt[][] = [this.root];
  private names = new Set<string>();
  private loopDepth = 0;
  readonly sharedDecls: SharedDecl[] = [];
  usesF16 = false;
  usesSubgroups = false;
  /** Whether the body has an mma (targets without tensor cores then need workgroup scratch). */
  usesMma = false;
  private subgroupsChecked = false;
  private readonly rawCaps: Caps;

  constructor(readonly kernelName: string, caps: Caps) {
    this.rawCaps = caps;
  }

  /** Device capabilities; reading `subgroups` is what allows subgroup operations. */
  get caps(): Caps {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    return new Proxy(this.rawCaps, {
      get(target, p) {
        if (p === 'subgroups') self.subgroupsChecked = true;
        return target[p as keyof Caps];
      },
    });
  }

  fail(msg: string, e?: Expr | Val): never {
    const where = e ? ` in \`${show(e instanceof Val ? e.e : e)}\`` : '';
    throw new KernelError(`kernel '${this.kernelName}': ${msg}${where}`);
  }

  /** Reserve a readable, unique identifier. */
  declare(name: string): string {
    if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(name)) this.fail(`'${name}' is not a valid identifier`);
    let n = RESERVED.has(name) || name.startsWith('__') ? `${name}_` : name;
    if (this.names.has(n)) {
      let i = 1;
      while (this.names.has(`${n}_${i}`)) i++;
      n = `${n}_${i}`;
    }
    this.names.add(n);
    return n;
  }

  private emit(s: Stmt): void { this.stack[this.stack.length - 1]!.push(s); }
  private block(fn: () => void): Stmt[] {
    const list: Stmt[] = [];
    this.stack.push(list);
    try { fn(); } finally { this.stack.pop(); }
    return list;
  }
  private own(v: Val): Expr {
    if (v.kb !== this) this.fail(`value \`${show(v.e)}\` belongs to kernel '${v.kb.kernelName}'`);
    return v.e;
  }
  private note(t: DType): void { if (elemOf(t) === 'f16') this.usesF16 = true; }

  /** Coerce a JS literal to type t (the other operand's type). */
  lit(v: number | boolean, t: DType): Expr {
    const s = elemOf(t);
    if (typeof v === 'boolean') {
      if (s !== 'bool') this.fail(`boolean literal ${v} used where ${t} is expected`);
      return { k: 'const', t: s, v };
    }
    if (s === 'bool') this.fail(`number ${v} used where bool is expected`);
    if ((s === 'i32' || s === 'u32') && !Number.isInteger(v)) this.fail(`literal ${v} is not an integer but ${s} is expected`);
    if (s === 'u32' && (v < 0 || v > 0xffffffff)) this.fail(`literal ${v} is out of range for u32`);
    if (s === 'i32' && (v < -0x80000000 || v > 0x7fffffff)) this.fail(`literal ${v} is out of range for i32`);
    if (!Number.isFinite(v)) this.fail(`literal ${v} is not finite`);
    const c: Expr = { k: 'const', t: s, v };
    return isVec(t) ? { k: 'vec', t, args: [c] } : c;
  }
  private operand(v: Val | number | boolean, t: DType): Expr {
    return v instanceof Val ? this.own(v) : this.lit(v, t);
  }
  private index(i: IndexVal, what: string): Expr {
    if (typeof i === 'number') {
      if (!Number.isInteger(i) || i < 0) this.fail(`index ${i} into '${what}' is not a non-negative integer`);
      return { k: 'const', t: 'u32', v: i };
    }
    const e = this.own(i);
    if (e.t !== 'u32' && e.t !== 'i32') this.fail(`index into '${what}' must be u32 or i32, not ${e.t}`, e);
    return e;
  }

  // ---- expressions ----
  bin<R extends DType>(op: BinOp, a: Val, b: Val | number | boolean): Val<R> {
    const ea = this.own(a);
    const eb = this.operand(b, ea.t);
    const probe: Expr = { k: 'bin', t: ea.t, op, a: ea, b: eb };
    if (ea.t !== eb.t) this.fail(`'${op}' mixes ${ea.t} and ${eb.t} without a cast`, probe);
    const t = ea.t;
    let rt: DType = t;
    if (op === 'lt' || op === 'le' || op === 'gt' || op === 'ge') {
      if (isBool(t)) this.fail(`'${op}' needs numbers, not ${t}`, probe);
      rt = withElem(t, 'bool');
    } else if (op === 'eq' || op === 'ne') rt = withElem(t, 'bool');
    else if (op === 'and' || op === 'or') { if (!isBool(t)) this.fail(`'${op}' needs bool operands, not ${t}`, probe); }
    else if (op === 'band' || op === 'bor' || op === 'bxor') { if (!isInt(t)) this.fail(`'${op}' needs i32 or u32 operands, not ${t}`, probe); }
    else if (isBool(t)) this.fail(`'${op}' needs numbers, not ${t}`, probe);
    this.note(t);
    return new Val({ k: 'bin', t: rt, op, a: ea, b: eb }, this);
  }
  shift<T extends DType>(op: 'shl' | 'shr', a: Val<T>, b: Val<'u32'> | number): Val<T> {
    const ea = this.own(a);
    const eb = this.operand(b, withElem(ea.t, 'u32'));
    const probe: Expr = { k: 'bin', t: ea.t, op, a: ea, b: eb };
    if (!isInt(ea.t)) this.fail(`'${op}' needs an integer, not ${ea.t}`, probe);
    if (elemOf(eb.t) !== 'u32' || widthOf(eb.t) !== widthOf(ea.t)) this.fail(`shift amount must be u32, not ${eb.t}`, probe);
    if (eb.k === 'const' && (eb.v as number) >= 32) this.fail(`shift by ${eb.v} is not below 32`, probe);
    return new Val(probe, this);
  }
  unary<T extends DType>(op: 'neg' | 'not' | 'bnot', a: Val<T>): Val<T> {
    const e = this.own(a);
    const probe: Expr = { k: 'un', t: e.t, op, a: e };
    if (op === 'neg' && (isBool(e.t) || elemOf(e.t) === 'u32')) this.fail(`cannot negate ${e.t}`, probe);
    if (op === 'not' && !isBool(e.t)) this.fail(`'not' needs bool, not ${e.t}`, probe);
    if (op === 'bnot' && !isInt(e.t)) this.fail(`'bnot' needs an integer, not ${e.t}`, probe);
    return new Val(probe, this);
  }
  swizzle(a: Val, comps: string): Val {
    const e = this.own(a);
    if (!isVec(e.t)) this.fail(`swizzle .${comps} on scalar ${e.t}`, e);
    const n = widthOf(e.t);
    if (!/^[xyzw]{1,4}$/.test(comps) || [...comps].some((c) => 'xyzw'.indexOf(c) >= n)) {
      this.fail(`swizzle .${comps} is not valid for ${e.t}`, e);
    }
    return new Val({ k: 'swizzle', t: vecOf(elemOf(e.t), comps.length), a: e, comps }, this);
  }
  call<R extends DType>(fn: MathFn, args: (Val | number)[]): Val<R> {
    const ARITY: Record<MathFn, number> = {
      exp: 1, exp2: 1, log: 1, log2: 1, sqrt: 1, inverseSqrt: 1, abs: 1, floor: 1, ceil: 1, round: 1,
      sin: 1, cos: 1, tanh: 1, min: 2, max: 2, clamp: 3, fma: 3, pow: 2, dot: 2,
    };
    if (args.length !== ARITY[fn]) this.fail(`${fn} takes ${ARITY[fn]} arguments, got ${args.length}`);
    const first = args.find((x): x is Val => x instanceof Val);
    if (!first) this.fail(`${fn} needs at least one typed argument`);
    const t = this.own(first).t;
    const es = args.map((x) => this.operand(x, t));
    const probe: Expr = { k: 'call', t, fn, args: es };
    for (const e of es) if (e.t !== t) this.fail(`${fn} mixes ${t} and ${e.t} without a cast`, probe);
    const intOk = fn === 'abs' || fn === 'min' || fn === 'max' || fn === 'clamp';
    if (isBool(t) || (!isFloat(t) && !intOk)) this.fail(`${fn} is not defined for ${t}`, probe);
    if (fn === 'dot') {
      if (!isVec(t)) this.fail(`dot needs vectors, not ${t}`, probe);
      return new Val({ ...probe, t: elemOf(t) }, this);
    }
    this.note(t);
    return new Val(probe, this);
  }
  select<T extends DType>(cond: Val<BoolOf<T>> | Val<'bool'>, a: Operand<T> | boolean, b: Operand<T> | boolean): Val<T> {
    const c = this.own(cond);
    const ref = a instanceof Val ? a : b instanceof Val ? b : undefined;
    if (!ref) this.fail('select needs at least one typed branch');
    const t = this.own(ref).t;
    const ea = this.operand(a, t), eb = this.operand(b, t);
    const probe: Expr = { k: 'select', t, cond: c, a: ea, b: eb };
    if (ea.t !== eb.t) this.fail(`select branches are ${ea.t} and ${eb.t}`, probe);
    if (c.t !== 'bool' && c.t !== withElem(t, 'bool')) this.fail(`select condition is ${c.t}, not bool`, probe);
    return new Val(probe, this);
  }
  /** Value conversion (f32(u), u32(f), ...), or a literal of type t. */
  cast<T extends DType>(t: T, a: Val | number | boolean): Val<T> {
    this.note(t);
    if (!(a instanceof Val)) return new Val(this.lit(a, t), this);
    const e = this.own(a);
    if (widthOf(e.t) !== widthOf(t)) this.fail(`cannot cast ${e.t} to ${t}: widths differ`, e);
    if (e.t === t) return a as Val<T>;
    return new Val({ k: 'cast', t, a: e }, this);
  }
  bitcast<T extends DType>(t: T, a: Val): Val<T> {
    const e = this.own(a);
    const bits = (x: DType) => widthOf(x) * (elemOf(x) === 'f16' ? 16 : 32);
    if (isBool(t) || isBool(e.t) || bits(t) !== bits(e.t)) this.fail(`cannot bitcast ${e.t} to ${t}`, e);
    return new Val({ k: 'bitcast', t, a: e }, this);
  }
  vec<T extends Vec>(t: T, ...args: (Val | number | boolean)[]): Val<T> {
    const s = elemOf(t);
    const es = args.map((x) => this.operand(x, s));
    const probe: Expr = { k: 'vec', t, args: es };
    const total = es.reduce((n, e) => n + widthOf(e.t), 0);
    if (es.some((e) => elemOf(e.t) !== s)) this.fail(`${t} built from ${es.map((e) => e.t).join(', ')}`, probe);
    if (!(total === widthOf(t) || (es.length === 1 && total === 1))) this.fail(`${t} needs ${widthOf(t)} components, got ${total}`, probe);
    this.note(t);
    return new Val(probe, this);
  }
  pack2x16float(v: Val<'vec2<f32>'>): Val<'u32'> {
    const e = this.own(v);
    if (e.t !== 'vec2<f32>') this.fail(`pack2x16float needs vec2<f32>, not ${e.t}`, e);
    return new Val({ k: 'pack2x16float', t: 'u32', a: e }, this);
  }
  unpack2x16float(v: Val<'u32'>): Val<'vec2<f32>'> {
    const e = this.own(v);
    if (e.t !== 'u32') this.fail(`unpack2x16float needs u32, not ${e.t}`, e);
    return new Val({ k: 'unpack2x16float', t: 'vec2<f32>', a: e }, this);
  }
  /** INT4 magic-number dequant of the nibbles at bits 0–3 and 16–19: two f16 of value 1024 + q, as unpack2x16float reads them. */
  nibblePairF16(word: Val<'u32'>): Val<'u32'> {
    const e = this.own(word);
    if (e.t !== 'u32') this.fail(`nibblePairF16 needs u32, not ${e.t}`, e);
    return new Val({ k: 'nibblePairF16', t: 'u32', a: e }, this);
  }
  /** The values q (0..15, as f32) of the same nibble pair: x from bits 0–3, y from bits 16–19 (nibblePairF16 − 1024, exact). */
  nibblePairValues(word: Val<'u32'>): Val<'vec2<f32>'> {
    const e = this.own(word);
    if (e.t !== 'u32') this.fail(`nibblePairValues needs u32, not ${e.t}`, e);
    return new Val({ k: 'nibblePairValues', t: 'vec2<f32>', a: e }, this);
  }
  /** a − b on two packed f16 pairs (x in the low half), each half rounded once to f16 (CUDA: HSUB2). */
  sub2x16float(a: Val<'u32'>, b: Val<'u32'>): Val<'u32'> {
    const ea = this.own(a), eb = this.own(b);
    for (const e of [ea, eb]) if (e.t !== 'u32') this.fail(`sub2x16float needs u32 pairs, not ${e.t}`, e);
    return new Val({ k: 'sub2x16float', t: 'u32', a: ea, b: eb }, this);
  }
  f32(a: Val | number): Val<'f32'> { return this.cast('f32', a); }
  f16(a: Val | number): Val<'f16'> { return this.cast('f16', a); }
  i32(a: Val | number): Val<'i32'> { return this.cast('i32', a); }
  u32(a: Val | number): Val<'u32'> { return this.cast('u32', a); }
  bool(a: Val | boolean): Val<'bool'> { return this.cast('bool', a); }

  private builtin<T extends DType>(name: Builtin, t: T): Val<T> { return new Val({ k: 'builtin', t, name }, this); }
  get globalId(): Val<'vec3<u32>'> { return this.builtin('globalId', 'vec3<u32>'); }
  get localId(): Val<'vec3<u32>'> { return this.builtin('localId', 'vec3<u32>'); }
  get workgroupId(): Val<'vec3<u32>'> { return this.builtin('workgroupId', 'vec3<u32>'); }
  get numWorkgroups(): Val<'vec3<u32>'> { return this.builtin('numWorkgroups', 'vec3<u32>'); }
  /** Flat index of the invocation in its workgroup. */
  get localIndex(): Val<'u32'> { return this.builtin('localIndex', 'u32'); }
  get subgroupInvocationId(): Val<'u32'> { this.needSubgroups('subgroupInvocationId'); return this.builtin('subgroupInvocationId', 'u32'); }
  get subgroupSize(): Val<'u32'> { this.needSubgroups('subgroupSize'); return this.builtin('subgroupSize', 'u32'); }

  // ---- subgroups ----
  private needSubgroups(what: string): void {
    if (!this.subgroupsChecked) this.fail(`${what} used without checking k.caps.subgroups; provide a shared-memory fallback`);
    if (!this.rawCaps.subgroups) this.fail(`${what} used but the device has no subgroup operations`);
    this.usesSubgroups = true;
  }
  private subgroup<T extends DType>(op: SubgroupOp, a: Val<T>, b?: Val<'u32'> | number): Val<T> {
    this.needSubgroups(`subgroup ${op}`);
    const e = this.own(a);
    if (isBool(e.t) || isVec(e.t)) this.fail(`subgroup ${op} needs a numeric scalar, not ${e.t}`, e);
    const eb = b === undefined ? undefined : this.operand(b, 'u32');
    if (eb && eb.t !== 'u32') this.fail(`subgroup ${op} lane must be u32`, eb);
    return new Val({ k: 'subgroup', t: e.t, op, a: e, b: eb }, this);
  }
  subgroupAdd<T extends DType>(a: Val<T>): Val<T> { return this.subgroup('add', a); }
  subgroupMax<T extends DType>(a: Val<T>): Val<T> { return this.subgroup('max', a); }
  subgroupMin<T extends DType>(a: Val<T>): Val<T> { return this.subgroup('min', a); }
  subgroupShuffleXor<T extends DType>(a: Val<T>, mask: Val<'u32'> | number): Val<T> { return this.subgroup('shuffleXor', a, mask); }
  /** Value of `a` in lane `lane` (a compile-time constant, as WGSL requires). */
  subgroupBroadcast<T extends DType>(a: Val<T>, lane: number): Val<T> { return this.subgroup('broadcast', a, lane); }

  // ---- memory ----
  load<T extends DType>(ref: ArrayRef<T, boolean>, i: IndexVal): Val<T> {
    if (ref.kb !== this) this.fail(`array '${ref.name}' belongs to kernel '${ref.kb.kernelName}'`);
    const index = this.index(i, ref.name);
    if (index.k === 'const' && ref.length !== undefined && (index.v as number) >= ref.length) {
      this.fail(`constant index ${index.v} is outside '${ref.name}' of length ${ref.length}`);
    }
    this.note(ref.t);
    return new Val({ k: 'load', t: ref.t, space: ref.space, name: ref.name, index }, this);
  }
  store<T extends DType>(ref: ArrayRef<T, boolean>, i: IndexVal, v: Val | number | boolean): void {
    if (ref.kb !== this) this.fail(`array '${ref.name}' belongs to kernel '${ref.kb.kernelName}'`);
    const index = this.index(i, ref.name);
    const value = this.operand(v, ref.t);
    if (!ref.writable) this.fail(`store to read-only buffer '${ref.name}'`, { k: 'load', t: ref.t, space: ref.space, name: ref.name, index });
    if (value.t !== ref.t) this.fail(`store of ${value.t} into ${ref.t} array '${ref.name}'`, value);
    this.emit({ k: 'store', space: ref.space, name: ref.name, index, value });
  }
  /** A workgroup (shared) array of `length` 4-byte elements. */
  shared<T extends 'f32' | 'i32' | 'u32'>(name: string, t: T, length: number, opts: { atomic?: boolean } = {}): ArrayRef<T, true> {
    if (this.stack.length !== 1) this.fail(`workgroup array '${name}' must be declared at the top of the kernel`);
    if (!Number.isInteger(length) || length < 1) this.fail(`workgroup array '${name}' has length ${length}`);
    if (opts.atomic && t === 'f32') this.fail(`atomic workgroup array '${name}' must be u32 or i32`);
    const n = this.declare(name);
    this.sharedDecls.push({ name: n, t, length, atomic: !!opts.atomic });
    return new ArrayRef(n, t, 'workgroup', true, !!opts.atomic, length, this);
  }
  /**
   * One warp-wide tensor-core product d = a·b + c: m16n8k16, f16 × f16 → f32, operands in CUDA's
   * fragment layout (codegen/emit/mma.ts documents it and the accumulation order). Per invocation:
   * a private u32[4] (8 f16 of A, two per word, low half first), b u32[2] (4 f16 of B), c and d
   * f32[4] (d may be c). Every invocation of the workgroup must reach it together (uniform control
   * flow; the workgroup a whole number of warps): targets without tensor cores trade fragments
   * through workgroup memory between barriers.
   */
  mma(d: ArrayRef<'f32', true>, a: ArrayRef<'u32', boolean>, b: ArrayRef<'u32', boolean>, c: ArrayRef<'f32', boolean>): void {
    const want = [[d, 'd', 'f32', 4], [a, 'a', 'u32', 4], [b, 'b', 'u32', 2], [c, 'c', 'f32', 4]] as const;
    for (const [ref, role, t, n] of want) {
      if (ref.kb !== this) this.fail(`mma: array '${ref.name}' belongs to kernel '${ref.kb.kernelName}'`);
      if (ref.space !== 'private' || ref.t !== t || ref.length !== n) {
        this.fail(`mma: operand ${role} '${ref.name}' must be a private ${t}[${n}] (a ${ref.space} ${ref.t}[${ref.length ?? '?'}])`);
      }
    }
    this.usesMma = true;
    this.emit({ k: 'mma', shape: 'm16n8k16', d: d.name, a: a.name, b: b.name, c: c.name });
  }
  /** A per-invocation array (registers when indexed with constants). */
  privateArray<T extends 'f32' | 'i32' | 'u32'>(name: string, t: T, length: number): ArrayRef<T, true> {
    if (!Number.isInteger(length) || length < 1) this.fail(`private array '${name}' has length ${length}`);
    const n = this.declare(name);
    this.emit({ k: 'privateArray', name: n, t, length });
    return new ArrayRef(n, t, 'private', true, false, length, this);
  }

  // ---- statements ----
  /** An immutable local. */
  let<T extends DType>(name: string, v: Val<T>): Val<T> {
    const e = this.own(v);
    const n = this.declare(name);
    this.emit({ k: 'let', name: n, t: e.t, init: e, mutable: false });
    return new Val({ k: 'var', t: e.t, name: n }, this);
  }
  /** A mutable local, initialised from a value, or a literal of a given type. */
  var<T extends DType>(name: string, v: Val<T>): Var<T>;
  var<T extends DType>(name: string, t: T, init: number | boolean): Var<T>;
  var<T extends DType>(name: string, v: Val<T> | T, init?: number | boolean): Var<T> {
    const e = v instanceof Val ? this.own(v) : this.lit(init ?? 0, v);
    this.note(e.t);
    const n = this.declare(name);
    this.emit({ k: 'let', name: n, t: e.t, init: e, mutable: true });
    return new Var(n, e.t as T, this);
  }
  assign<T extends DType>(target: Var<T>, v: Val<T> | number | boolean): void {
    const value = this.operand(v, target.t);
    if (value.t !== target.t) this.fail(`assigning ${value.t} to ${target.t} variable '${target.name}'`, value);
    this.emit({ k: 'assign', name: target.name, value });
  }
  if(cond: Val<'bool'>, then: () => void, otherwise?: () => void): void {
    const c = this.own(cond);
    if (c.t !== 'bool') this.fail(`if condition is ${c.t}, not bool`, c);
    const t = this.block(then);
    const e = otherwise ? this.block(otherwise) : [];
    this.emit({ k: 'if', cond: c, then: t, else: e });
  }
  /** for (name = from; name < to; name += step). The counter's type follows `from`/`to`. */
  for<T extends 'i32' | 'u32'>(name: string, from: Val<T> | number, to: Val<T> | number,
    body: (i: Val<T>) => void, step: Val<T> | number = 1): void {
    const ref = [from, to, step].find((x): x is Val<T> => x instanceof Val);
    const t = (ref ? this.own(ref).t : 'u32') as T;
    if (t !== 'i32' && t !== 'u32') this.fail(`loop '${name}' counter must be i32 or u32, not ${t}`);
    const ef = this.operand(from, t), et = this.operand(to, t), es = this.operand(step, t);
    for (const e of [ef, et, es]) if (e.t !== t) this.fail(`loop '${name}' mixes ${t} and ${e.t}`, e);
    if (es.k === 'const' && (es.v as number) <= 0) this.fail(`loop '${name}' step ${es.v} is not positive`);
    const n = this.declare(name);
    this.loopDepth++;
    const b = this.block(() => body(new Val<T>({ k: 'var', t, name: n }, this)));
    this.loopDepth--;
    this.emit({ k: 'for', name: n, t, from: ef, to: et, step: es, body: b });
  }
  while(cond: Val<'bool'>, body: () => void): void {
    const c = this.own(cond);
    if (c.t !== 'bool') this.fail(`while condition is ${c.t}, not bool`, c);
    this.loopDepth++;
    const b = this.block(body);
    this.loopDepth--;
    this.emit({ k: 'while', cond: c, body: b });
  }
  break(): void { if (!this.loopDepth) this.fail('break outside a loop'); this.emit({ k: 'break' }); }
  continue(): void { if (!this.loopDepth) this.fail('continue outside a loop'); this.emit({ k: 'continue' }); }
  return(): void { this.emit({ k: 'return' }); }
  /** Workgroup barrier: memory and execution. Must be reached by every invocation of the workgroup. */
  barrier(): void { this.emit({ k: 'barrier' }); }
  /** Device-scope memory fence (needs caps.deviceFence; WGSL has none). */
  deviceFence(): void {
    if (!this.caps.deviceFence) this.fail('deviceFence: this device has no device-scope fence (caps.deviceFence); plan a second launch instead');
    this.emit({ k: 'fence' });
  }
  /**
   * The "last arrival" ticket: fence this invocation's earlier global writes, then count it in
   * `counter[i]`; true for the one invocation that arrives `count`-th, which then sees every
   * counted invocation's writes and resets the counter to 0 for the next launch. Nobody waits.
   * The counter buffer (u32, atomic) must start at 0.
   */
  lastArrival(counter: ArrayRef<'u32', true>, i: IndexVal, count: Val<'u32'> | number): Val<'bool'> {
    this.deviceFence();
    const old = this.atomicAdd(counter, i, 1);
    const last = this.let(`${counter.name}_last`, old.add(1).eq(typeof count === 'number' ? this.u32(count) : count));
    this.if(last, () => {
      this.deviceFence();
      this.atomicStore(counter, i, 0);
    });
    return last;
  }

  // ---- atomics (return the old value) ----
  private atomic(op: AtomicOp, ref: ArrayRef<'u32' | 'i32', boolean>, i: IndexVal, v?: Val | number, cmp?: Val | number): Val<'u32' | 'i32'> {
    if (ref.kb !== this) this.fail(`array '${ref.name}' belongs to kernel '${ref.kb.kernelName}'`);
    if (ref.space === 'private' || !ref.atomic) this.fail(`atomic ${op} on '${ref.name}', which is not declared atomic`);
    if (op !== 'load' && !ref.writable) this.fail(`atomic ${op} on read-only buffer '${ref.name}'`);
    const index = this.index(i, ref.name);
    const value = v === undefined ? this.lit(0, ref.t) : this.operand(v, ref.t);
    if (value.t !== ref.t) this.fail(`atomic ${op} of ${value.t} on ${ref.t} array '${ref.name}'`, value);
    const compare = cmp === undefined ? undefined : this.operand(cmp, ref.t);
    if (compare && compare.t !== ref.t) this.fail(`atomic ${op} compare value is ${compare.t}`, compare);
    const result = op === 'store' ? undefined : this.declare(`${ref.name}_old`);
    this.emit({ k: 'atomic', op, space: ref.space as 'storage' | 'workgroup', name: ref.name, t: ref.t, index, value, compare, result });
    return new Val({ k: 'var', t: ref.t, name: result ?? '' }, this);
  }
  atomicAdd<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal, v: Val<T> | number): Val<T> { return this.atomic('add', r, i, v) as Val<T>; }
  atomicMax<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal, v: Val<T> | number): Val<T> { return this.atomic('max', r, i, v) as Val<T>; }
  atomicMin<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal, v: Val<T> | number): Val<T> { return this.atomic('min', r, i, v) as Val<T>; }
  atomicExchange<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal, v: Val<T> | number): Val<T> { return this.atomic('exchange', r, i, v) as Val<T>; }
  /** Compare-and-swap: stores `v` where the cell equals `cmp`; returns the old value. */
  atomicCompareExchange<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal, cmp: Val<T> | number, v: Val<T> | number): Val<T> {
    return this.atomic('compareExchange', r, i, v, cmp) as Val<T>;
  }
  atomicLoad<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal): Val<T> { return this.atomic('load', r, i) as Val<T>; }
  atomicStore<T extends 'u32' | 'i32'>(r: ArrayRef<T, boolean>, i: IndexVal, v: Val<T> | number): void { this.atomic('store', r, i, v); }
}

// ---- free functions over values (the math library) -----------------------------------------
type F<T extends DType> = Val<T>;
export const exp = <T extends DType>(a: F<T>): F<T> => a.kb.call('exp', [a]);
export const exp2 = <T extends DType>(a: F<T>): F<T> => a.kb.call('exp2', [a]);
export const log = <T extends DType>(a: F<T>): F<T> => a.kb.call('log', [a]);
export const log2 = <T extends DType>(a: F<T>): F<T> => a.kb.call('log2', [a]);
export const sqrt = <T extends DType>(a: F<T>): F<T> => a.kb.call('sqrt', [a]);
export const inverseSqrt = <T extends DType>(a: F<T>): F<T> => a.kb.call('inverseSqrt', [a]);
export const abs = <T extends DType>(a: F<T>): F<T> => a.kb.call('abs', [a]);
export const floor = <T extends DType>(a: F<T>): F<T> => a.kb.call('floor', [a]);
export const ceil = <T extends DType>(a: F<T>): F<T> => a.kb.call('ceil', [a]);
export const round = <T extends DType>(a: F<T>): F<T> => a.kb.call('round', [a]);
export const sin = <T extends DType>(a: F<T>): F<T> => a.kb.call('sin', [a]);
export const cos = <T extends DType>(a: F<T>): F<T> => a.kb.call('cos', [a]);
export const tanh = <T extends DType>(a: F<T>): F<T> => a.kb.call('tanh', [a]);
export const min = <T extends DType>(a: F<T>, b: F<T> | number): F<T> => a.kb.call('min', [a, b]);
export const max = <T extends DType>(a: F<T>, b: F<T> | number): F<T> => a.kb.call('max', [a, b]);
export const pow = <T extends DType>(a: F<T>, b: F<T> | number): F<T> => a.kb.call('pow', [a, b]);
export const clamp = <T extends DType>(a: F<T>, lo: F<T> | number, hi: F<T> | number): F<T> => a.kb.call('clamp', [a, lo, hi]);
/** a * b + c. */
export const fma = <T extends DType>(a: F<T>, b: F<T> | number, c: F<T> | number): F<T> => a.kb.call('fma', [a, b, c]);
export const dot = <T extends Vec>(a: F<T>, b: F<T>): F<ElemOf<T>> => a.kb.call('dot', [a, b]);
