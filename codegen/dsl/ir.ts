// The kernel IR: what the builder produces and every emitter consumes. Plain data, no methods,
// so emitters are total functions over these unions.
import type { Caps, DType, Scalar, StorageType, VecWidth } from './types.js';

export type Space = 'storage' | 'workgroup' | 'private';
export type Access = 'read' | 'read_write';

export type BinOp =
  | 'add' | 'sub' | 'mul' | 'div' | 'rem'
  | 'lt' | 'le' | 'gt' | 'ge' | 'eq' | 'ne'
  | 'and' | 'or'                     // logical, bool
  | 'band' | 'bor' | 'bxor' | 'shl' | 'shr'; // bitwise, integers
export type UnOp = 'neg' | 'not' | 'bnot';
export type MathFn =
  | 'exp' | 'exp2' | 'log' | 'log2' | 'sqrt' | 'inverseSqrt' | 'abs' | 'floor' | 'ceil' | 'round'
  | 'sin' | 'cos' | 'tanh' | 'min' | 'max' | 'clamp' | 'fma' | 'pow' | 'dot';
export type Builtin = 'globalId' | 'localId' | 'workgroupId' | 'numWorkgroups' | 'localIndex'
  | 'subgroupInvocationId' | 'subgroupSize';
export type SubgroupOp = 'shuffleXor' | 'add' | 'max' | 'min' | 'broadcast';
export type AtomicOp = 'add' | 'max' | 'min' | 'exchange' | 'compareExchange' | 'load' | 'store';

export type Expr =
  | { k: 'const'; t: DType; v: number | boolean }
  | { k: 'var'; t: DType; name: string }
  | { k: 'uniform'; t: Scalar; name: string }
  | { k: 'builtin'; t: DType; name: Builtin }
  | { k: 'load'; t: DType; space: Space; name: string; index: Expr } // t: vecW<T> for a vector binding
  | { k: 'bin'; t: DType; op: BinOp; a: Expr; b: Expr }
  | { k: 'un'; t: DType; op: UnOp; a: Expr }
  | { k: 'call'; t: DType; fn: MathFn; args: Expr[] }
  | { k: 'select'; t: DType; cond: Expr; a: Expr; b: Expr } // cond ? a : b
  | { k: 'cast'; t: DType; a: Expr }
  | { k: 'bitcast'; t: DType; a: Expr }
  | { k: 'pack2x16float'; t: 'u32'; a: Expr }          // vec2<f32> -> u32 (x in low half)
  | { k: 'unpack2x16float'; t: 'vec2<f32>'; a: Expr }  // u32 -> vec2<f32>
  /**
   * INT4 magic-number dequant: the nibbles at bits 0–3 and 16–19 of `a` as the bits of two f16 of
   * value 1024 + q, `(a & 0x000F000F) | 0x64006400` (x in the low half, as unpack2x16float reads
   * it). One LOP3 on CUDA; plain and/or elsewhere (legalize.ts expandNibblePair).
   */
  | { k: 'nibblePairF16'; t: 'u32'; a: Expr }
  /**
   * The values q of the same nibble pair, (x, y) = (bits 0–3, bits 16–19): the magic pair minus
   * 1024, exact. CUDA: LOP3, one HSUB2 on the f16 pair, two conversions; elsewhere
   * unpack2x16float(nibblePairF16(a)) − 1024 (legalize.ts expandNibbleValues).
   */
  | { k: 'nibblePairValues'; t: 'vec2<f32>'; a: Expr }
  /**
   * The f16 pair difference a − b of two packed pairs (unpack2x16float's layout: x in the low
   * half), each half rounded once to f16. CUDA: one HSUB2; elsewhere
   * pack2x16float(unpack2x16float(a) − unpack2x16float(b)) (legalize.ts expandSub2x16float: the
   * f32 difference of two f16 rounds to the same f16, as 24 ≥ 2·11 + 2 bits make double rounding
   * harmless). The INT4 MMA kernel's (1024 + q) − (1024 + z).
   */
  | { k: 'sub2x16float'; t: 'u32'; a: Expr; b: Expr }
  | { k: 'vec'; t: DType; args: Expr[] }
  | { k: 'swizzle'; t: DType; a: Expr; comps: string } // comps over 'xyzw'
  | { k: 'subgroup'; t: DType; op: SubgroupOp; a: Expr; b?: Expr }
  // Made only by target legalization (codegen/emit/legalize.ts), never by the builder:
  /** The scalar `body`, over `params`, applied to each component of `args` (vectors of t's width). */
  | { k: 'lanes'; t: DType; params: { name: string; t: Scalar }[]; args: Expr[]; body: Expr }
  /** A call to a function of the target by its name (C's fmodf). */
  | { k: 'intrinsic'; t: DType; name: string; args: Expr[] };
/** Expression kinds only legalization makes. */
export type LegalizedKind = 'lanes' | 'intrinsic';

export type Stmt =
  | { k: 'let'; name: string; t: DType; init: Expr; mutable: boolean }
  | { k: 'assign'; name: string; value: Expr }
  | { k: 'store'; space: Space; name: string; index: Expr; value: Expr }
  | { k: 'privateArray'; name: string; t: Scalar; length: number }
  | { k: 'if'; cond: Expr; then: Stmt[]; else: Stmt[] }
  | { k: 'for'; name: string; t: 'i32' | 'u32'; from: Expr; to: Expr; step: Expr; body: Stmt[] }
  | { k: 'while'; cond: Expr; body: Stmt[] }
  | { k: 'break' } | { k: 'continue' } | { k: 'return' }
  | { k: 'barrier' }
  /** Device-scope memory fence: this invocation's earlier global writes are visible device-wide before its later ones. */
  | { k: 'fence' }
  /**
   * Warp-wide tensor-core product d = a·b + c (m16n8k16, f16 × f16 → f32) over private arrays in
   * CUDA's fragment layout: a u32[4], b u32[2] (f16 pairs), c and d f32[4]. codegen/emit/mma.ts.
   */
  | { k: 'mma'; shape: 'm16n8k16'; d: string; a: string; b: string; c: string }
  | {
      k: 'atomic'; op: AtomicOp; space: 'storage' | 'workgroup'; name: string; t: 'i32' | 'u32';
      index: Expr; value: Expr; compare?: Expr; result?: string; // result: a new immutable let with the old value
    };

export interface BufferDecl {
  /** Binding name as the launch passes it; `name` is the identifier in generated code. */
  key: string;
  name: string; t: StorageType; access: Access; atomic: boolean;
  /** Vector width W: loads and stores of this buffer move vecW<t> (element i = scalars [W·i, W·i + W)). */
  vec: VecWidth;
  /** Its shape in scalars over the uniforms ('[M, K]'), when the kernel declares one. */
  shape?: string;
}
export interface UniformDecl { key: string; name: string; t: Scalar }
export interface SharedDecl { name: string; t: Scalar; length: number; atomic: boolean }

export interface KernelIR {
  name: string;
  /** Compile-time parameters the kernel was specialized with (goes into headers and cache keys). */
  params: Record<string, unknown>;
  caps: Caps;
  workgroupSize: [number, number, number];
  buffers: BufferDecl[];
  uniforms: UniformDecl[];
  shared: SharedDecl[];
  body: Stmt[];
  /** Whether the body uses f16 arithmetic or f16 buffers (WGSL `enable f16`). */
  usesF16: boolean;
  usesSubgroups: boolean;
  /** Workgroups per multiprocessor the kernel is built for (CUDA __launch_bounds__'s second argument). */
  minWorkgroupsPerSM?: number;
  /** Human-readable launch geometry for headers, e.g. "ceil(n / 256) x 1 x 1". */
  gridDoc: string;
}
