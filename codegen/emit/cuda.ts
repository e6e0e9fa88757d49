// KernelIR → one self-contained CUDA C++ file. Names and types follow WGSL (f32, u32, vec4<f32>,
// bitcast, dot) through a small prelude, of which only the parts the kernel needs are emitted.
// ABI: extern "C" kernel(buffers in declaration order as pointers, const for read; then the
// uniforms as one struct of 4-byte scalars passed by value, omitted when there are none).
import type { BufferDecl, Builtin, Expr, KernelIR, MathFn, Stmt } from '../dsl/ir.js';
import { type DType, type Scalar, type VecStorageType, elemOf, isVec, widthOf } from '../dsl/types.js';
import { CUDA_TARGET, legalize } from './legalize.js';
import { BIN, BUILTINS, CLikeEmitter, type Code, P, atom, callCode, f16round, floatText, infix, postfix, ternary } from './clike.js';

type Of<K extends Expr['k']> = Extract<Expr, { k: K }>;
type StmtOf<K extends Stmt['k']> = Extract<Stmt, { k: K }>;

const vecFor = (n: number, T: string, body: (c: string) => string) =>
  `template <typename T> __device__ inline vec${n}<${T}> ${body('xyzw'.slice(0, n))}`;

/** Prelude parts, emitted in this order when used. */
const PRELUDE = {
  base: `#include <cuda_fp16.h>

typedef float f32;
typedef __half f16;
typedef int i32;
typedef unsigned int u32;
template <typename T> struct vec2 { T x, y; };
template <typename T> struct vec3 { T x, y, z; };
template <typename T> struct vec4 { T x, y, z, w; };`,
  native: '', // built from the vector bindings, see nativeConversions()
  arith: '', // built from the operators used, see vectorOperators()
  vmap: `// vmap(f, a, b...): f applied to each component (all arguments have the same width).
${[2, 3, 4].map((n) => `template <typename F, typename T, typename... R>
__device__ inline auto vmap(F f, vec${n}<T> a, vec${n}<R>... r) -> vec${n}<decltype(f(a.x, r.x...))> {
  return {${[...'xyzw'.slice(0, n)].map((c) => `f(a.${c}, r.${c}...)`).join(', ')}};
}`).join('\n')}`,
  splat: [2, 3, 4].map((n) => vecFor(n, 'T', () => `splat${n}(T s) { return {${Array(n).fill('s').join(', ')}}; }`)).join('\n'),
  vcat: `// Vector constructors from smaller vectors and scalars.
template <typename T> __device__ inline vec3<T> vcat(vec2<T> a, T b) { return {a.x, a.y, b}; }
template <typename T> __device__ inline vec3<T> vcat(T a, vec2<T> b) { return {a, b.x, b.y}; }
template <typename T> __device__ inline vec4<T> vcat(vec2<T> a, T b, T c) { return {a.x, a.y, b, c}; }
template <typename T> __device__ inline vec4<T> vcat(T a, vec2<T> b, T c) { return {a, b.x, b.y, c}; }
template <typename T> __device__ inline vec4<T> vcat(T a, T b, vec2<T> c) { return {a, b, c.x, c.y}; }
template <typename T> __device__ inline vec4<T> vcat(vec2<T> a, vec2<T> b) { return {a.x, a.y, b.x, b.y}; }
template <typename T> __device__ inline vec4<T> vcat(vec3<T> a, T b) { return {a.x, a.y, a.z, b}; }
template <typename T> __device__ inline vec4<T> vcat(T a, vec3<T> b) { return {a, b.x, b.y, b.z}; }`,
  swizzle: `// swizzle<1, 0>(v) is WGSL's v.yx.
template <int I, typename V> __device__ inline auto comp(V v) {
  if constexpr (I == 0) return v.x; else if constexpr (I == 1) return v.y; else if constexpr (I == 2) return v.z; else return v.w;
}
template <int I, int J, typename V> __device__ inline auto swizzle(V v) -> vec2<decltype(v.x)> { return {comp<I>(v), comp<J>(v)}; }
template <int I, int J, int K, typename V> __device__ inline auto swizzle(V v) -> vec3<decltype(v.x)> { return {comp<I>(v), comp<J>(v), comp<K>(v)}; }
template <int I, int J, int K, int L, typename V> __device__ inline auto swizzle(V v) -> vec4<decltype(v.x)> { return {comp<I>(v), comp<J>(v), comp<K>(v), comp<L>(v)}; }`,
  dot: [2, 3, 4].map((n) => `template <typename T> __device__ inline T dot(vec${n}<T> a, vec${n}<T> b) { return ${[...'xyzw'.slice(0, n)].map((c) => `a.${c} * b.${c}`).join(' + ')}; }`).join('\n'),
  bitcast: `template <typename To, typename From> __device__ inline To bitcast(From x) {
  static_assert(sizeof(To) == sizeof(From), "bitcast needs equal sizes");
  To r;
  __builtin_memcpy(&r, &x, sizeof(To));
  return r;
}`,
  pack: `// x in the low 16 bits, as WGSL.
__device__ inline u32 pack2x16float(vec2<f32> v) {
  return u32(__half_as_ushort(__float2half_rn(v.x))) | (u32(__half_as_ushort(__float2half_rn(v.y))) << 16);
}
__device__ inline vec2<f32> unpack2x16float(u32 p) {
  return {__half2float(__ushort_as_half((unsigned short)(p & 0xffffu))), __half2float(__ushort_as_half((unsigned short)(p >> 16)))};
}`,
  nibblePair: `// INT4 magic-number dequant: nibbles 0 and 4 of w as two f16 of value 1024 + q, in one LOP3
// ((w & 0x000F000F) | 0x64006400: truth table 0xEA = (a & b) | c).
__device__ inline u32 nibblePairF16(u32 w) {
  u32 r;
  asm("lop3.b32 %0, %1, 0x000f000f, 0x64006400, 0xea;" : "=r"(r) : "r"(w));
  return r;
}`,
  nibbleValues: `// The pair's values q: (1024 + q) − 1024 in one HSUB2 on the f16 pair (exact), then to f32.
__device__ inline vec2<f32> nibblePairValues(u32 w) {
  u32 bits = nibblePairF16(w);
  __half2 pair;
  __builtin_memcpy(&pair, &bits, sizeof(pair));
  const float2 q = __half22float2(__hsub2(pair, __halves2half2(__ushort_as_half((unsigned short)0x6400), __ushort_as_half((unsigned short)0x6400))));
  return {q.x, q.y};
}`,
  sub2x16: `// a − b on two packed f16 pairs in one HSUB2 (x in the low half, as pack2x16float).
__device__ inline u32 sub2x16float(u32 a, u32 b) {
  __half2 x, y;
  __builtin_memcpy(&x, &a, sizeof(x));
  __builtin_memcpy(&y, &b, sizeof(y));
  const __half2 d = __hsub2(x, y);
  u32 r;
  __builtin_memcpy(&r, &d, sizeof(r));
  return r;
}`,
  atomicAccess: `// Relaxed atomic load and store of one 32-bit word (volatile: never cached or merged).
template <typename T> __device__ inline T atomicLoad(const T* p) { return *(const volatile T*)p; }
template <typename T> __device__ inline void atomicStore(T* p, T v) { *(volatile T*)p = v; }`,
  subgroup: `// Subgroup reductions over the 32 lanes of a warp: xor butterfly, every lane gets the result.
__device__ inline f32 maxOf(f32 a, f32 b) { return fmaxf(a, b); }
__device__ inline f32 minOf(f32 a, f32 b) { return fminf(a, b); }
template <typename T> __device__ inline T maxOf(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ inline T minOf(T a, T b) { return a < b ? a : b; }
template <typename T> __device__ inline T subgroupAdd(T x) {
  for (int lanes = 16; lanes > 0; lanes >>= 1) x = x + __shfl_xor_sync(0xffffffffu, x, lanes);
  return x;
}
template <typename T> __device__ inline T subgroupMax(T x) {
  for (int lanes = 16; lanes > 0; lanes >>= 1) x = maxOf(x, __shfl_xor_sync(0xffffffffu, x, lanes));
  return x;
}
template <typename T> __device__ inline T subgroupMin(T x) {
  for (int lanes = 16; lanes > 0; lanes >>= 1) x = minOf(x, __shfl_xor_sync(0xffffffffu, x, lanes));
  return x;
}`,
};
type Part = keyof typeof PRELUDE;

/** CUDA's own vector type for a vector binding: its loads and stores are 8 or 16 bytes wide. */
const NATIVE: Record<VecStorageType, string> = { f32: 'float', i32: 'int', u32: 'uint' };
const nativeType = (b: BufferDecl) => `${NATIVE[b.t as VecStorageType]}${b.vec}`;
/** fromNative/toNative between CUDA's vector types and the prelude's vecN<T>, for the bindings' types. */
function nativeConversions(used: Set<BufferDecl>): string {
  const lines = ['// A vector binding is a pointer to CUDA\'s vector type (one 8- or 16-byte load or store per element).'];
  for (const key of new Set([...used].map((b) => `${b.vec}:${b.t}`))) {
    const [w, t] = key.split(':') as [string, VecStorageType];
    const n = Number(w), native = `${NATIVE[t]}${n}`, vec = `vec${n}<${t}>`;
    const comps = [...'xyzw'.slice(0, n)].map((c) => `v.${c}`).join(', ');
    lines.push(`__device__ inline ${vec} fromNative(${native} v) { return {${comps}}; }`);
    lines.push(`__device__ inline ${native} toNative(${vec} v) { return {${comps}}; }`);
  }
  return lines.join('\n');
}

const VEC_BINARY = ['+', '-', '*', '/', '<', '<=', '>', '>=', '==', '!=', '&&', '||', '&', '|', '^'];
const VEC_UNARY = ['-', '!', '~'];
/** Component-wise vector operators, only those used (defined through two macros). */
function vectorOperators(binary: Set<string>, unary: Set<string>): string {
  const comps = (n: number) => [...'xyzw'.slice(0, n)];
  const lines = ['// Component-wise vector operators; other vector operations go through vmap.'];
  if (binary.size) {
    lines.push('#define KILN_VEC_BINARY(OP) \\', [2, 3, 4].map((n) => `  template <typename T> __device__ inline auto operator OP(vec${n}<T> a, vec${n}<T> b) -> vec${n}<decltype(a.x OP b.x)> { return {${comps(n).map((c) => `a.${c} OP b.${c}`).join(', ')}}; }`).join(' \\\n'));
    lines.push(VEC_BINARY.filter((o) => binary.has(o)).map((o) => `KILN_VEC_BINARY(${o})`).join(' '), '#undef KILN_VEC_BINARY');
  }
  if (unary.size) {
    lines.push('#define KILN_VEC_UNARY(OP) \\', [2, 3, 4].map((n) => `  template <typename T> __device__ inline auto operator OP(vec${n}<T> a) -> vec${n}<decltype(OP a.x)> { return {${comps(n).map((c) => `OP a.${c}`).join(', ')}}; }`).join(' \\\n'));
    lines.push(VEC_UNARY.filter((o) => unary.has(o)).map((o) => `KILN_VEC_UNARY(${o})`).join(' '), '#undef KILN_VEC_UNARY');
  }
  return lines.join('\n');
}

const RESERVED = new Set((
  'alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t class ' +
  'compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield decltype ' +
  'default delete do double dynamic_cast else enum explicit export extern false float for friend goto if inline int ' +
  'long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public register ' +
  'reinterpret_cast requires return short signed sizeof static static_assert static_cast struct switch template ' +
  'this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t ' +
  'while xor xor_eq restrict threadIdx blockIdx blockDim gridDim warpSize ' +
  'f32 f16 i32 u32 vec2 vec3 vec4 vmap splat2 splat3 splat4 vcat comp swizzle dot bitcast pack2x16float ' +
  'unpack2x16float nibblePairF16 nibblePairValues sub2x16float atomicLoad atomicStore maxOf minOf subgroupAdd subgroupMax subgroupMin fromNative toNative ' +
  'float2 float4 int2 int4 uint2 uint4 ' +
  'expf exp2f logf log2f sqrtf rsqrtf fabsf floorf ceilf rintf sinf cosf tanhf fminf fmaxf fmaf powf fmodf min ' +
  'max abs atomicAdd atomicMax atomicMin atomicExch atomicCAS'
).split(' '));

const F32_FN: Record<Exclude<MathFn, 'clamp' | 'dot'>, string> = {
  exp: 'expf', exp2: 'exp2f', log: 'logf', log2: 'log2f', sqrt: 'sqrtf', inverseSqrt: 'rsqrtf', abs: 'fabsf',
  floor: 'floorf', ceil: 'ceilf', round: 'rintf', // rint: half to even, as WGSL's round
  sin: 'sinf', cos: 'cosf', tanh: 'tanhf', min: 'fminf', max: 'fmaxf', fma: 'fmaf', pow: 'powf',
};
const ATOMIC_FN = { add: 'atomicAdd', max: 'atomicMax', min: 'atomicMin', exchange: 'atomicExch' } as const;
const TYPE: Record<Scalar, string> = { f32: 'f32', f16: 'f16', i32: 'i32', u32: 'u32', bool: 'bool' };

class CudaEmitter extends CLikeEmitter {
  private readonly used = new Set<Part>(['base']);
  private readonly vecBinary = new Set<string>();
  private readonly vecUnary = new Set<string>();
  /** Vector bindings the body loads or stores (their conversions go into the prelude). */
  private readonly nativeUsed = new Set<BufferDecl>();
  private readonly uniformParam: string;
  private readonly uniformStruct: string;

  constructor(ir: KernelIR) {
    super(ir, RESERVED);
    const threads = ir.workgroupSize.reduce((a, b) => a * b, 1);
    if (ir.usesSubgroups && threads % 32 !== 0) {
      // Warp shuffles with a full mask need all 32 lanes of every warp.
      throw new Error(`kernel '${ir.name}': subgroup operations need a workgroup of a multiple of 32 invocations on CUDA, not ${threads}`);
    }
    this.uniformParam = ir.uniforms.length ? this.fresh('u') : '';
    this.uniformStruct = ir.uniforms.length ? this.fresh(`${ir.name}_Uniforms`) : '';
  }
  private need(p: Part): void { this.used.add(p); }

  type(t: DType): string { return isVec(t) ? `vec${widthOf(t)}<${TYPE[elemOf(t)]}>` : TYPE[t as Scalar]; }
  literal(v: number | boolean, t: Scalar): Code {
    const what = `kernel '${this.ir.name}': ${t} literal`;
    let s: string;
    switch (t) {
      case 'bool': return atom(String(v));
      case 'u32': return atom(`${v as number}u`);
      case 'i32': if (v === -0x80000000) return atom('(-2147483647 - 1)'); s = String(v); break;
      case 'f32': s = `${floatText(Math.fround(v as number), Math.fround, what)}f`; break;
      case 'f16': return atom(`__half(${floatText(f16round(v as number), f16round, what)}f)`);
    }
    return s.startsWith('-') ? { s, prec: P.unary } : atom(s);
  }
  decl(name: string, t: DType, init: string, mutable: boolean): string {
    return `${mutable ? '' : 'const '}${this.type(t)} ${name} = ${init}`;
  }
  uniform(name: string): Code { return atom(`${this.uniformParam}.${this.id(name)}`); }
  builtin(b: Builtin): Code { return atom(this.builtinName(b)); }

  private atomicArray(space: string, name: string): boolean {
    if (space === 'workgroup') return this.ir.shared.some((s) => s.name === name && s.atomic);
    return space === 'storage' && this.ir.buffers.some((b) => b.name === name && b.atomic && b.access === 'read_write');
  }
  /** The vector binding `name` refers to in `space`, if it is one. */
  private vectorBuffer(space: string, name: string): BufferDecl | undefined {
    const b = space === 'storage' ? this.ir.buffers.find((d) => d.name === name) : undefined;
    if (b && b.vec > 1) { this.need('native'); this.nativeUsed.add(b); return b; }
    return undefined;
  }
  load(e: Of<'load'>): Code {
    const ref = this.index(e.name, e.index);
    if (this.vectorBuffer(e.space, e.name)) return callCode('fromNative', [atom(ref)]);
    if (!this.atomicArray(e.space, e.name)) return atom(ref);
    this.need('atomicAccess');
    return atom(`atomicLoad(&${ref})`);
  }

  /** A lifted vector operation (legalize.ts): vmap([](f32 a, f32 b) { ... }, x, y). */
  override lanes(e: Of<'lanes'>): Code {
    this.need('vmap');
    const lambda = `[](${e.params.map((p) => `${TYPE[p.t]} ${p.name}`).join(', ')}) { return ${this.expr(e.body)}; }`;
    return callCode('vmap', [atom(lambda), ...e.args.map((a) => this.code(a))]);
  }

  override binary(e: Of<'bin'>): Code {
    if (isVec(e.a.t)) {
      // The prelude's vector operators (legalization lifted %, shifts and the rest).
      this.need('arith');
      this.vecBinary.add(BIN[e.op].sym);
    }
    return super.binary(e);
  }
  override unary(e: Of<'un'>): Code {
    const c = super.unary(e);
    if (isVec(e.t)) { this.need('arith'); this.vecUnary.add(c.s[0]!); }
    return c;
  }

  /** f32 math function `fn` at type t; f16 computes in f32 and rounds back. */
  private floatCall(t: Scalar, fn: string, args: Expr[]): Code {
    const cs = args.map((a) => this.code(a));
    if (t !== 'f16') return callCode(fn, cs);
    return callCode('__float2half_rn', [callCode(fn, cs.map((c) => callCode('__half2float', [c])))]);
  }
  call(e: Of<'call'>): Code {
    if (e.fn === 'dot') { this.need('dot'); return callCode('dot', e.args.map((a) => this.code(a))); }
    const t = e.t as Scalar;
    const float = t === 'f32' || t === 'f16';
    if (e.fn === 'clamp') {
      const [x, lo, hi] = e.args as [Expr, Expr, Expr];
      const [mn, mx] = float ? ['fminf', 'fmaxf'] : ['min', 'max'];
      if (t !== 'f16') return callCode(mn, [callCode(mx, [this.code(x), this.code(lo)]), this.code(hi)]);
      const h = (a: Expr) => callCode('__half2float', [this.code(a)]);
      return callCode('__float2half_rn', [callCode(mn, [callCode(mx, [h(x), h(lo)]), h(hi)])]);
    }
    if (float) return this.floatCall(t, F32_FN[e.fn], e.args);
    if (e.fn === 'abs') return t === 'u32' ? this.code(e.args[0]!) : callCode('abs', [this.code(e.args[0]!)]);
    return callCode(e.fn, e.args.map((a) => this.code(a))); // min, max on integers
  }
  select(e: Of<'select'>): Code {
    return ternary(this.code(e.cond), this.code(e.a), this.code(e.b));
  }
  cast(e: Of<'cast'>): Code {
    const to = e.t as Scalar, from = e.a.t as Scalar;
    const a = this.code(e.a);
    if (from === 'f16') {
      const f = callCode('__half2float', [a]);
      return to === 'i32' ? callCode('__half2int_rz', [a]) : to === 'u32' ? callCode('__half2uint_rz', [a])
        : to === 'f32' ? f : callCode('bool', [f]);
    }
    if (to === 'f16') {
      return from === 'i32' ? callCode('__int2half_rn', [a]) : from === 'u32' ? callCode('__uint2half_rn', [a])
        : callCode('__float2half_rn', [from === 'f32' ? a : callCode('f32', [a])]);
    }
    return callCode(TYPE[to], [a]);
  }
  bitcast(e: Of<'bitcast'>): Code { this.need('bitcast'); return callCode(`bitcast<${this.type(e.t)}>`, [this.code(e.a)]); }
  override pack(e: Of<'pack2x16float'> | Of<'unpack2x16float'>): Code { this.need('pack'); return super.pack(e); }
  override nibblePair(e: Of<'nibblePairF16'>): Code { this.need('nibblePair'); return callCode('nibblePairF16', [this.code(e.a)]); }
  override sub2x16(e: Of<'sub2x16float'>): Code { this.need('sub2x16'); return callCode('sub2x16float', [this.code(e.a), this.code(e.b)]); }
  override nibbleValues(e: Of<'nibblePairValues'>): Code {
    this.need('nibblePair'); this.need('nibbleValues');
    return callCode('nibblePairValues', [this.code(e.a)]);
  }
  vec(e: Of<'vec'>): Code {
    const n = widthOf(e.t);
    const args = e.args.map((a) => this.code(a));
    if (e.args.length === 1 && e.args[0]!.t === e.t) return args[0]!;
    if (e.args.length === 1) {
      if (e.args[0]!.k === 'const') return atom(`${this.type(e.t)}{${Array(n).fill(args[0]!.s).join(', ')}}`);
      this.need('splat');
      return callCode(`splat${n}`, args);
    }
    if (e.args.length === n) return atom(`${this.type(e.t)}{${args.map((a) => a.s).join(', ')}}`);
    this.need('vcat');
    return callCode('vcat', args);
  }
  swizzle(e: Of<'swizzle'>): Code {
    if (e.comps.length === 1) return postfix(this.code(e.a), `.${e.comps}`);
    this.need('swizzle');
    return callCode(`swizzle<${[...e.comps].map((c) => 'xyzw'.indexOf(c)).join(', ')}>`, [this.code(e.a)]);
  }
  subgroup(e: Of<'subgroup'>): Code {
    const a = this.code(e.a);
    switch (e.op) {
      case 'shuffleXor': return callCode('__shfl_xor_sync', [atom('0xffffffffu'), a, this.code(e.b!)]);
      case 'broadcast': return callCode('__shfl_sync', [atom('0xffffffffu'), a, this.code(e.b!)]);
      case 'add': this.need('subgroup'); return callCode('subgroupAdd', [a]);
      case 'max': this.need('subgroup'); return callCode('subgroupMax', [a]);
      case 'min': this.need('subgroup'); return callCode('subgroupMin', [a]);
    }
  }

  forHead(s: StmtOf<'for'>): string {
    const i = this.id(s.name);
    const cond = infix('lt', atom(i), this.code(s.to)).s;
    return `for (${s.t} ${i} = ${this.expr(s.from)}; ${cond}; ${i} += ${this.expr(s.step)})`;
  }
  store(s: StmtOf<'store'>): void {
    const ref = this.index(s.name, s.index);
    if (this.vectorBuffer(s.space, s.name)) return this.line(`${ref} = toNative(${this.expr(s.value)});`);
    if (!this.atomicArray(s.space, s.name)) return this.line(`${ref} = ${this.expr(s.value)};`);
    this.need('atomicAccess');
    this.line(`atomicStore(&${ref}, ${this.expr(s.value)});`);
  }
  privateArray(s: StmtOf<'privateArray'>): void { this.line(`${s.t} ${this.id(s.name)}[${s.length}] = {}; // zeroed, as in WGSL`); }
  barrier(): string { return '__syncthreads();'; }
  fence(): string { return '__threadfence();'; }
  protected override mma(s: StmtOf<'mma'>): void {
    const [d, a, b, c] = [s.d, s.a, s.b, s.c].map((n) => this.id(n));
    this.line('asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"');
    this.line(`  : ${[0, 1, 2, 3].map((i) => `"=f"(${d}[${i}])`).join(', ')}`);
    this.line(`  : ${[0, 1, 2, 3].map((i) => `"r"(${a}[${i}])`).join(', ')}, "r"(${b}[0]), "r"(${b}[1]), ${[0, 1, 2, 3].map((i) => `"f"(${c}[${i}])`).join(', ')});`);
  }

  atomic(s: StmtOf<'atomic'>): void {
    const keep = s.result !== undefined && this.readNames.has(s.result);
    const result = keep ? `const ${s.t} ${this.id(s.result!)} = ` : '';
    if (!this.atomicArray(s.space, s.name)) { // a read-only buffer: only loads reach here
      if (keep) this.line(`${result}${this.index(s.name, s.index)};`);
      return;
    }
    const ref = `&${this.index(s.name, s.index)}`;
    const v = this.expr(s.value);
    switch (s.op) {
      case 'load': this.need('atomicAccess'); this.line(keep ? `${result}atomicLoad(${ref});` : `(void)atomicLoad(${ref});`); break;
      case 'store': this.need('atomicAccess'); this.line(`atomicStore(${ref}, ${v});`); break;
      case 'compareExchange': this.line(`${result}atomicCAS(${ref}, ${this.expr(s.compare!)}, ${v});`); break;
      default: this.line(`${result}${ATOMIC_FN[s.op]}(${ref}, ${v});`);
    }
  }

  /** The CUDA expression for a builtin, from the compile-time workgroup size. */
  private builtinValue(b: Builtin): string {
    const wg = this.ir.workgroupSize;
    const dims = ['x', 'y', 'z'] as const;
    const terms: string[] = [];
    let stride = 1;
    dims.forEach((d, i) => { if (wg[i]! > 1) terms.push(stride === 1 ? `threadIdx.${d}` : `${stride}u * threadIdx.${d}`); stride *= wg[i]!; });
    const linear = terms.join(' + ') || '0u';
    const v3 = (f: (d: 'x' | 'y' | 'z', i: number) => string) => `{${dims.map(f).join(', ')}}`;
    switch (b) {
      case 'globalId': return v3((d, i) => (wg[i] === 1 ? `blockIdx.${d}` : `blockIdx.${d} * ${wg[i]}u + threadIdx.${d}`));
      case 'localId': return v3((d, i) => (wg[i] === 1 ? '0u' : `threadIdx.${d}`));
      case 'workgroupId': return v3((d) => `blockIdx.${d}`);
      case 'numWorkgroups': return v3((d) => `gridDim.${d}`);
      case 'localIndex': return linear;
      case 'subgroupInvocationId': return terms.length > 1 ? `(${linear}) % 32u` : `${linear} % 32u`; // warps are formed from the linear index
      case 'subgroupSize': return '32u';
    }
  }

  emit(): string {
    const ir = this.ir;
    const body = this.bodyLines();
    const threads = ir.workgroupSize.reduce((a, b) => a * b, 1);
    const pointee = (b: BufferDecl) => (b.vec > 1 ? nativeType(b) : TYPE[b.t]);
    const params = ir.buffers.map((b) => `${b.access === 'read' ? 'const ' : ''}${pointee(b)}* __restrict__ ${this.id(b.name)}`);
    if (ir.uniforms.length) params.push(`const ${this.uniformStruct} ${this.uniformParam}`);
    const abi = [
      `CUDA ABI: extern "C" ${ir.name}(${[...ir.buffers.map((b) => `${b.access === 'read' ? 'const ' : ''}${pointee(b)}* ${b.name}`),
        ...(ir.uniforms.length ? [`${this.uniformStruct} ${this.uniformParam} (by value)`] : [])].join(', ')})`,
      ...(ir.uniforms.length
        ? [`  ${this.uniformStruct}: the uniforms above, ${4 * ir.uniforms.length} bytes, no padding`]
        : []),
      `  blockDim = ${ir.workgroupSize.join(' x ')}, gridDim = the launch above, no dynamic shared memory`,
    ];
    const out = [this.header(abi), ''];
    for (const p of Object.keys(PRELUDE) as Part[]) {
      if (!this.used.has(p)) continue;
      out.push(p === 'arith' ? vectorOperators(this.vecBinary, this.vecUnary) : p === 'native' ? nativeConversions(this.nativeUsed) : PRELUDE[p], '');
    }
    if (ir.uniforms.length) out.push(`struct ${this.uniformStruct} {`, ...ir.uniforms.map((u) => `  ${TYPE[u.t]} ${this.id(u.name)};`), '};', '');
    const bounds = ir.minWorkgroupsPerSM ? `${threads}, ${ir.minWorkgroupsPerSM}` : `${threads}`;
    const head = `extern "C" __global__ void __launch_bounds__(${bounds}) ${ir.name}`;
    out.push(params.length ? `${head}(\n${params.map((p) => `    ${p}`).join(',\n')}) {` : `${head}() {`);
    for (const s of ir.shared) out.push(`  __shared__ ${TYPE[s.t]} ${this.id(s.name)}[${s.length}];`);
    for (const b of BUILTINS) {
      const n = this.builtins.get(b);
      if (n) out.push(`  const ${b === 'localIndex' || b === 'subgroupInvocationId' || b === 'subgroupSize' ? 'u32' : 'vec3<u32>'} ${n} = ${this.builtinValue(b)};`);
    }
    out.push(...body, '}', '');
    return out.join('\n');
  }
}

/** CUDA C++ source for one kernel (see the ABI above and in the file header). */
export function emitCUDA(ir: KernelIR): string {
  return new CudaEmitter(legalize(ir, CUDA_TARGET)).emit();
}
