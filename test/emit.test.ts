// The WGSL and CUDA emitters: totality over the IR, determinism, headers, exact literals,
// precedence, identifier hygiene, WGSL validity (Dawn, compatibility mode) and `kiln codegen`.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { check, generate, write } from '../codegen/cli.js';
import type { AtomicOp, BinOp, Builtin, Expr, KernelIR, LegalizedKind, MathFn, Stmt, SubgroupOp, UnOp } from '../codegen/dsl/ir.js';
import { BASELINE_CAPS, CUDA_CAPS, isVec } from '../codegen/dsl/types.js';
import { f16round, floatText } from '../codegen/emit/clike.js';
import { walk } from '../codegen/dsl/walk.js';
import { emitCUDA, emitWGSL } from '../codegen/emit/index.js';
import { FAMILIES } from '../codegen/kernels/index.js';
import { allKinds, awkwardNames } from './fixtures/allKinds.js';
import { lastArrivalSum } from './fixtures/lastArrival.js';
import { mmaTile } from './fixtures/mmaTile.js';
import { freshSeed, rng } from './util.js';

// ---- the whole IR, as values; adding a kind to ir.ts without listing it here fails tsc ----------
const EXPR_KINDS = ['const', 'var', 'uniform', 'builtin', 'load', 'bin', 'un', 'call', 'select', 'cast', 'bitcast',
  'pack2x16float', 'unpack2x16float', 'nibblePairF16', 'nibblePairValues', 'sub2x16float', 'vec', 'swizzle', 'subgroup'] as const;
const STMT_KINDS = ['let', 'assign', 'store', 'privateArray', 'if', 'for', 'while', 'break', 'continue', 'return',
  'barrier', 'fence', 'atomic', 'mma'] as const;
const BIN_OPS = ['add', 'sub', 'mul', 'div', 'rem', 'lt', 'le', 'gt', 'ge', 'eq', 'ne', 'and', 'or', 'band', 'bor',
  'bxor', 'shl', 'shr'] as const;
const UN_OPS = ['neg', 'not', 'bnot'] as const;
const MATH_FNS = ['exp', 'exp2', 'log', 'log2', 'sqrt', 'inverseSqrt', 'abs', 'floor', 'ceil', 'round', 'sin', 'cos',
  'tanh', 'min', 'max', 'clamp', 'fma', 'pow', 'dot'] as const;
const BUILTIN_NAMES = ['globalId', 'localId', 'workgroupId', 'numWorkgroups', 'localIndex', 'subgroupInvocationId',
  'subgroupSize'] as const;
const ATOMIC_OPS = ['add', 'max', 'min', 'exchange', 'compareExchange', 'load', 'store'] as const;
const SUBGROUP_OPS = ['shuffleXor', 'add', 'max', 'min', 'broadcast'] as const;
type Exhaustive<All, Listed> = [Exclude<All, Listed>] extends [never] ? true : never;
const listsAreExhaustive: [
  Exhaustive<Exclude<Expr['k'], LegalizedKind>, (typeof EXPR_KINDS)[number]>, Exhaustive<Stmt['k'], (typeof STMT_KINDS)[number]>,
  Exhaustive<BinOp, (typeof BIN_OPS)[number]>, Exhaustive<UnOp, (typeof UN_OPS)[number]>,
  Exhaustive<MathFn, (typeof MATH_FNS)[number]>, Exhaustive<Builtin, (typeof BUILTIN_NAMES)[number]>,
  Exhaustive<AtomicOp, (typeof ATOMIC_OPS)[number]>, Exhaustive<SubgroupOp, (typeof SUBGROUP_OPS)[number]>,
] = [true, true, true, true, true, true, true, true];

function usage(ir: KernelIR): Set<string> {
  const seen = new Set<string>();
  walk(ir.body, (s) => {
    seen.add(`stmt:${s.k}`);
    if (s.k === 'atomic') seen.add(`atomic:${s.op}:${s.space}`);
    if (s.k === 'store') seen.add(`store:${s.space}${isVec(s.value.t) ? ':vector' : ''}`);
  }, (e) => {
    seen.add(`expr:${e.k}`);
    if (e.k === 'bin') seen.add(`bin:${e.op}`);
    if (e.k === 'un') seen.add(`un:${e.op}`);
    if (e.k === 'call') seen.add(`call:${e.fn}`);
    if (e.k === 'builtin') seen.add(`builtin:${e.name}`);
    if (e.k === 'subgroup') seen.add(`subgroup:${e.op}`);
    if (e.k === 'load') seen.add(`load:${e.space}${isVec(e.t) ? ':vector' : ''}`);
  });
  return seen;
}

const full = allKinds(CUDA_CAPS).ir; // f16 and subgroups
const baseline = allKinds(BASELINE_CAPS).ir; // what compatibility mode can run
// The device-scope fence exists only where caps.deviceFence (not WGSL): a kernel of its own.
const fenced = lastArrivalSum(CUDA_CAPS).ir;
// The tensor-core MMA node: a kernel of its own (test/kernels/mma.test.ts runs it).
const mma = mmaTile(CUDA_CAPS).ir;

describe('emitters cover the whole IR', () => {
  it('the all-kinds fixture uses every expression, statement, operator, function, builtin and atomic', () => {
    expect(listsAreExhaustive.every(Boolean)).toBe(true);
    const seen = new Set([...usage(full), ...usage(fenced), ...usage(mma)]);
    const want = [
      ...EXPR_KINDS.map((k) => `expr:${k}`), ...STMT_KINDS.map((k) => `stmt:${k}`), ...BIN_OPS.map((o) => `bin:${o}`),
      ...UN_OPS.map((o) => `un:${o}`), ...MATH_FNS.map((f) => `call:${f}`), ...BUILTIN_NAMES.map((b) => `builtin:${b}`),
      ...ATOMIC_OPS.map((o) => `atomic:${o}:storage`), ...SUBGROUP_OPS.map((o) => `subgroup:${o}`),
      'atomic:add:workgroup', 'atomic:load:workgroup', 'atomic:store:workgroup',
      'load:storage', 'load:workgroup', 'load:private', 'store:storage', 'store:workgroup', 'store:private',
      'load:storage:vector', 'store:storage:vector',
    ];
    expect(want.filter((w) => !seen.has(w))).toEqual([]);
  });

  // What each construct looks like in each target (one example per line of the fixture).
  const WGSL_EXPECT = [
    'enable f16;', 'enable subgroups;', 'var<storage, read_write> counts: array<atomic<u32>>;',
    'var<uniform> u: allKinds_Uniforms;', 'var<workgroup> hist: array<atomic<u32>, 16>;', '@workgroup_size(8, 4, 2)',
    '@builtin(subgroup_invocation_id) subgroupInvocationId: u32', 'var pa: array<f32, 4>;', 'workgroupBarrier();',
    'for (var j: u32 = 0u; j < 4u; j = j + 1u) {', 'for (var back: i32 = -4i; back < u.bias + 2i; back = back + 3i) {',
    'while (steps < 10u) {', 'continue;', 'break;', 'return;', '} else if (acc < -100.0f) {', 'i32(-2147483648)',
    'select(-acc, acc, ', 'pack2x16float(vec2<f32>(xv, acc))', 'unpack2x16float(bits)', 'bitcast<u32>(xv)',
    'vec4<f32>(xv)', 'v4.zy', '(mixed + v4).wzx.y', 'atomicCompareExchangeWeak(&counts[counts_index], 0u, counts_value)',
    'atomicAdd(&counts[0u], 1u);', '_ = atomicLoad(&counts[10u]);', 'atomicStore(&counts[11u], i);',
    'atomicLoad(&counts[12u])', 'atomicStore(&counts[13u], bits);', 'subgroupShuffleXor(s, 1u)', 'subgroupBroadcast(s, 0u)',
    'var<storage, read> quads: array<vec4<u32>>;', 'var<storage, read_write> pairs: array<vec2<f32>>;',
    'let quad: vec4<u32> = quads[ic];', 'pairs[ic] = pairs[ic] + vec2<f32>(acc, xv);',
    'hv * 0.1h', 'inverseSqrt(abs(xv) + 1.0f)', '16777216.0f', '1e-45f', '3.4e38f', '!((mixed < v4) & ((v4 >= splat) | (v4 != splat)))',
  ];
  const CUDA_EXPECT = [
    '#include <cuda_fp16.h>', 'extern "C" __global__ void __launch_bounds__(64) allKinds(', 'const f32* __restrict__ x,',
    'u32* __restrict__ counts,', 'const allKinds_Uniforms u) {', '__shared__ u32 hist[16];',
    'const u32 localIndex = threadIdx.x + 8u * threadIdx.y + 32u * threadIdx.z;',
    'const vec3<u32> globalId = {blockIdx.x * 8u + threadIdx.x, blockIdx.y * 4u + threadIdx.y, blockIdx.z * 2u + threadIdx.z};',
    'f32 pa[4] = {};', '__syncthreads();', 'for (u32 j = 0u; j < 4u; j += 1u) {', '(-2147483647 - 1)', 'fmodf(xv, 1.5f)',
    'rintf(xv)', 'rsqrtf(fabsf(xv) + 1.0f)', 'fminf(fmaxf(xv, -0.25f), 0.25f)', '? acc : -acc', 'i >> (li % 32u)',
    'atomicCAS(&counts[ic % 4u + 4u], 0u, i + 1u)', 'atomicExch(&counts[3u], i)', '(void)atomicLoad(&counts[10u]);',
    '__shfl_xor_sync(0xffffffffu, s, 1u)', '__shfl_sync(0xffffffffu, s, 0u)', 'subgroupAdd(acc)',
    '__float2half_rn(expf(__half2float(hv)))', 'hv * __half(0.1f)', 'bitcast<u32>(vec2<f16>{hv, hsum})',
    'swizzle<2, 1>(v4)', 'vcat(v2, xv, acc)', 'splat4(xv)', 'dot(mixed, v4)', 'vmap([](f32 a, f32 b) { return fmodf(a, b); }',
    'KILN_VEC_BINARY(&&)', 'const uint4* __restrict__ quads,', 'float2* __restrict__ pairs,',
    '__device__ inline vec4<u32> fromNative(uint4 v) { return {v.x, v.y, v.z, v.w}; }',
    '__device__ inline float2 toNative(vec2<f32> v) { return {v.x, v.y}; }',
    'const vec4<u32> quad = fromNative(quads[ic]);', 'pairs[ic] = toNative(fromNative(pairs[ic]) + vec2<f32>{acc, xv});', 'const u32 subgroupInvocationId = (threadIdx.x + 8u * threadIdx.y + 32u * threadIdx.z) % 32u;',
  ];
  it('WGSL prints each construct as expected', () => {
    const text = emitWGSL(full);
    expect(WGSL_EXPECT.filter((s) => !text.includes(s))).toEqual([]);
  });
  it('CUDA prints each construct as expected', () => {
    const text = emitCUDA(full);
    expect(CUDA_EXPECT.filter((s) => !text.includes(s))).toEqual([]);
  });
  it('the last-arrival ticket is a fence, an atomic add and a reset on CUDA; WGSL and fenceless caps refuse it', () => {
    const text = emitCUDA(fenced);
    expect(text).toMatch(/__threadfence\(\);\s*\n\s*const u32 \w+ = atomicAdd\(&tickets\[/);
    expect(text).toMatch(/if \(\w+_last\) \{\s*\n\s*__threadfence\(\);\s*\n\s*atomicStore\(&tickets\[/);
    expect(() => emitWGSL(fenced)).toThrow(/WGSL has no device-scope fence/);
    expect(() => lastArrivalSum(BASELINE_CAPS)).toThrow(/no device-scope fence \(caps.deviceFence\)/);
  });
  it('baseline WGSL enables nothing and CUDA emits only the prelude parts it uses', () => {
    const code = (text: string) => text.split('\n').filter((l) => !l.startsWith('//')).join('\n');
    expect(code(emitWGSL(baseline))).not.toMatch(/enable|subgroup|f16/);
    const va = FAMILIES.find((f) => f.family === 'vectorAdd')!.variants(CUDA_CAPS)[0]!.kernel.ir;
    expect(code(emitCUDA(va))).not.toMatch(/vmap|vcat|swizzle|KILN_VEC|bitcast|subgroupAdd|atomicLoad|Native/);
  });
});

describe('emitters are deterministic and document each file', () => {
  it('the same kernel, built twice, emits identical text', () => {
    const again = allKinds(CUDA_CAPS).ir;
    expect(emitWGSL(again)).toBe(emitWGSL(full));
    expect(emitCUDA(again)).toBe(emitCUDA(full));
    expect(emitCUDA(full)).toBe(emitCUDA(full));
  });
  const variants = (caps: typeof BASELINE_CAPS) => FAMILIES.flatMap((f) => f.variants(caps));
  it.each([['wgsl', BASELINE_CAPS, emitWGSL], ['cuda', CUDA_CAPS, emitCUDA]] as const)('%s headers name kernel, params, bindings, uniforms, workgroup and launch', (target, caps, emit) => {
    for (const { kernel } of variants(caps)) {
      const ir = kernel.ir;
      const text = emit(ir);
      const header = text.split('\n').filter((l) => l.startsWith('//')).join('\n');
      expect(header).toContain(`// kernel: ${ir.name}`);
      expect(header).toContain(`// params: ${JSON.stringify(ir.params)}`);
      expect(header).toContain(`// workgroup size: ${ir.workgroupSize.join(' x ')}`);
      expect(header).toContain(`// launch: ${ir.gridDoc || '(grid not documented)'} workgroups`);
      ir.buffers.forEach((b, i) => expect(header).toContain(`//   ${i}: ${b.name} `));
      for (const u of ir.uniforms) expect(header).toMatch(new RegExp(`${u.name}: ${u.t} @\\d+`));
      if (target === 'cuda') expect(header).toContain(`// CUDA ABI: extern "C" ${ir.name}(`);
      if (target === 'wgsl') expect(text).toContain(`fn ${ir.name}(`);
    }
  });
});

describe('literals are exact', () => {
  it('f32 literals are the shortest decimal that reads back as the same f32', () => {
    const r = rng(freshSeed('emit f32 literals'));
    const buf = new Float32Array(1), bits = new Uint32Array(buf.buffer);
    for (let n = 0; n < 20000; n++) {
      bits[0] = (r() * 2 ** 32) >>> 0;
      const v = buf[0]!;
      if (!Number.isFinite(v)) continue;
      const s = floatText(v, Math.fround, 'test');
      expect(Object.is(Math.fround(Number(s)), v), `${v} printed as ${s}`).toBe(true);
      const digits = s.replace(/^-/, '').replace(/e.*$/, '').replace('.', '').replace(/^0+/, '').replace(/0+$/, '').length;
      if (digits > 1) expect(Math.fround(Number(Math.abs(v).toPrecision(digits - 1)))).not.toBe(Math.abs(v));
    }
    expect(floatText(Math.fround(0.1), Math.fround, 't')).toBe('0.1');
    expect(floatText(100, Math.fround, 't')).toBe('100.0');
    expect(floatText(-0, Math.fround, 't')).toBe('-0.0');
    expect(floatText(Math.fround(1e-45), Math.fround, 't')).toBe('1e-45');
    expect(floatText(Math.fround(16777217), Math.fround, 't')).toBe('16777216.0');
    expect(() => floatText(Math.fround(1e39), Math.fround, 'kernel k')).toThrow(/kernel k: Infinity/);
  });
  it('f16 rounding is to nearest, ties to even, and f16 literals read back exactly', () => {
    expect(f16round(0.1)).toBe(0.0999755859375);
    expect(f16round(65504)).toBe(65504);
    expect(f16round(65520)).toBe(Infinity);
    expect(f16round(2049)).toBe(2048); // tie → even
    expect(f16round(2051)).toBe(2052); // tie → even
    expect(f16round(2 ** -25)).toBe(0); // half the smallest subnormal, a tie → 0
    expect(f16round(3 * 2 ** -25)).toBe(2 ** -23);
    for (let m = 1; m < 0x7c00; m += 7) { // every 7th finite positive binary16
      const e = m >> 10, f = m & 0x3ff;
      const v = e === 0 ? f * 2 ** -24 : (1 + f / 1024) * 2 ** (e - 15);
      expect(f16round(v)).toBe(v);
      expect(f16round(Number(floatText(v, f16round, 't')))).toBe(v);
    }
  });
});

// ---- precedence: print random expression trees, parse them back with C's grammar ---------------
type Tree = { k: 'leaf'; s: string } | { k: 'op'; op: string; args: Tree[] };
function gen(r: () => number, t: 'u32' | 'bool', depth: number): Expr {
  const v = (name: string): Expr => ({ k: 'var', t: 'u32', name });
  if (depth === 0) {
    const leaf = v('abc'[Math.floor(r() * 3)]!);
    return t === 'u32' ? leaf : { k: 'bin', t: 'bool', op: 'lt', a: leaf, b: v('c') };
  }
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)]!;
  if (t === 'bool') {
    const op = pick(['lt', 'le', 'gt', 'ge', 'eq', 'ne', 'and', 'or', 'not'] as const);
    if (op === 'not') return { k: 'un', t: 'bool', op: 'not', a: gen(r, 'bool', depth - 1) };
    const ct = op === 'and' || op === 'or' ? 'bool' : 'u32';
    return { k: 'bin', t: 'bool', op, a: gen(r, ct, depth - 1), b: gen(r, ct, depth - 1) };
  }
  const op = pick(['add', 'sub', 'mul', 'div', 'rem', 'band', 'bor', 'bxor', 'shl', 'shr', 'bnot', 'select'] as const);
  if (op === 'bnot') return { k: 'un', t: 'u32', op: 'bnot', a: gen(r, 'u32', depth - 1) };
  if (op === 'select') return { k: 'select', t: 'u32', cond: gen(r, 'bool', depth - 1), a: gen(r, 'u32', depth - 1), b: gen(r, 'u32', depth - 1) };
  // Shift amounts are literals (below 32), so CUDA adds no mask and the trees compare directly.
  const b: Expr = op === 'shl' || op === 'shr' ? { k: 'const', t: 'u32', v: 1 + Math.floor(r() * 31) } : gen(r, 'u32', depth - 1);
  return { k: 'bin', t: 'u32', op, a: gen(r, 'u32', depth - 1), b };
}
const SYM: Record<string, string> = { add: '+', sub: '-', mul: '*', div: '/', rem: '%', lt: '<', le: '<=', gt: '>', ge: '>=', eq: '==', ne: '!=', and: '&&', or: '||', band: '&', bor: '|', bxor: '^', shl: '<<', shr: '>>' };
function treeOf(e: Expr, target: 'wgsl' | 'cuda'): Tree {
  switch (e.k) {
    case 'var': return { k: 'leaf', s: e.name };
    case 'const': return { k: 'leaf', s: `${e.v as number}u` };
    case 'bin': return { k: 'op', op: SYM[e.op]!, args: [treeOf(e.a, target), treeOf(e.b, target)] };
    case 'un': return { k: 'op', op: e.op === 'not' ? '!' : '~', args: [treeOf(e.a, target)] };
    case 'select': return target === 'wgsl'
      ? { k: 'op', op: 'select()', args: [treeOf(e.b, target), treeOf(e.a, target), treeOf(e.cond, target)] }
      : { k: 'op', op: '?:', args: [treeOf(e.cond, target), treeOf(e.a, target), treeOf(e.b, target)] };
    default: throw new Error(`unexpected ${e.k}`);
  }
}
/** A precedence-climbing parser with C's operator table (the stricter WGSL grammar is a subset). */
function parseC(text: string): Tree {
  const toks = text.match(/\d+u|[A-Za-z_]\w*|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%<>&|^!~?:(),]/g)!;
  let i = 0;
  const PREC: Record<string, number> = { '||': 4, '&&': 5, '|': 6, '^': 7, '&': 8, '==': 9, '!=': 9, '<': 10, '<=': 10, '>': 10, '>=': 10, '<<': 11, '>>': 11, '+': 12, '-': 12, '*': 13, '/': 13, '%': 13 };
  const eat = (t: string) => { if (toks[i] !== t) throw new Error(`expected ${t} at ${toks.slice(i).join(' ')}`); i++; };
  const primary = (): Tree => {
    const t = toks[i++]!;
    if (t === '(') { const e = expr(); eat(')'); return e; }
    if (t === '!' || t === '~') return { k: 'op', op: t, args: [primary()] };
    if (toks[i] === '(') {
      i++;
      const args = [expr()];
      while (toks[i] === ',') { i++; args.push(expr()); }
      eat(')');
      return { k: 'op', op: `${t}()`, args };
    }
    return { k: 'leaf', s: t };
  };
  const binary = (min: number): Tree => {
    let lhs = primary();
    for (let op = toks[i]; op && PREC[op] !== undefined && PREC[op]! >= min; op = toks[i]) {
      i++;
      lhs = { k: 'op', op, args: [lhs, binary(PREC[op]! + 1)] };
    }
    return lhs;
  };
  const expr = (): Tree => {
    const c = binary(4);
    if (toks[i] !== '?') return c;
    i++;
    const a = expr();
    eat(':');
    return { k: 'op', op: '?:', args: [c, a, expr()] };
  };
  const t = expr();
  if (i !== toks.length) throw new Error(`trailing tokens in ${text}`);
  return t;
}
function randomExprKernel(seed: number): { ir: KernelIR; exprs: Expr[] } {
  const r = rng(seed);
  const exprs = Array.from({ length: 60 }, (_, n) => gen(r, n % 3 === 0 ? 'bool' : 'u32', 1 + (n % 5)));
  const init = (name: string, i: number): Stmt => ({ k: 'let', name, t: 'u32', mutable: false, init: { k: 'bin', t: 'u32', op: 'add', a: { k: 'builtin', t: 'u32', name: 'localIndex' }, b: { k: 'const', t: 'u32', v: i + 1 } } });
  const body: Stmt[] = [init('a', 0), init('b', 1), init('c', 2), ...exprs.map((e, n): Stmt => ({ k: 'let', name: `r${n}`, t: e.t, init: e, mutable: false }))];
  const ir: KernelIR = { name: 'precedence', params: {}, caps: BASELINE_CAPS, workgroupSize: [1, 1, 1], buffers: [], uniforms: [], shared: [], body, usesF16: false, usesSubgroups: false, gridDoc: '1' };
  return { ir, exprs };
}
const precedenceSeed = freshSeed('emit precedence');

describe('expressions print with the right precedence', () => {
  const { ir, exprs } = randomExprKernel(precedenceSeed);
  it.each(['wgsl', 'cuda'] as const)('%s: random trees parse back to themselves', (target) => {
    const text = target === 'wgsl' ? emitWGSL(ir) : emitCUDA(ir);
    exprs.forEach((e, n) => {
      const line = text.split('\n').find((l) => new RegExp(`\\br${n}(:| =)`).test(l))!;
      const printed = line.slice(line.indexOf('= ') + 2, -1);
      expect(parseC(printed), printed).toEqual(treeOf(e, target));
    });
  });
  it('the round trip notices a missing parenthesis', () => {
    expect(parseC('a + b * c')).not.toEqual(parseC('(a + b) * c'));
    expect(parseC('a & b == c')).toEqual(parseC('a & (b == c)'));
  });
});

describe('identifiers', () => {
  it('names that are target keywords, emitter names or the kernel name get a suffix', () => {
    const w = emitWGSL(awkwardNames(BASELINE_CAPS).ir), c = emitCUDA(awkwardNames(CUDA_CAPS).ir);
    expect(w).toContain('var<storage, read> type_: array<f32>;');
    expect(w).toContain('var<uniform> u_1: awkwardNames_Uniforms;');
    expect(w).toContain('@builtin(global_invocation_id) globalId_1: vec3<u32>');
    expect(w).toContain('let dot_: f32 = and * u_1.module_;');
    expect(w).toContain('awkwardNames_[globalId] =');
    expect(c).toContain('const f32 and_ = type[min(globalId, u_1.u - 1u)];');
    expect(c).toContain('for (u32 xor_ = 0u; xor_ < 3u; xor_ += 1u) {');
    expect(c).toContain('u32* __restrict__ awkwardNames_,');
  });
  it('a kernel named like a keyword is refused', () => {
    const ir = { ...awkwardNames(BASELINE_CAPS).ir, name: 'loop' };
    expect(() => emitWGSL(ir)).toThrow(/kernel 'loop'/);
  });
});

// ---- WGSL validity: every generated shader compiles in Dawn's compatibility mode ----------------
/** `instance` must stay referenced while the device is used: Dawn crashes if it is collected. */
interface Dawn { instance: GPU; device: GPUDevice; description: string }
async function openDawn(): Promise<Dawn | string> {
  try {
    process.env.EGL_PLATFORM ??= 'surfaceless';
    const { create, globals } = await import('webgpu');
    Object.assign(globalThis, globals);
    const gpu = create(['backend=opengles']);
    const adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' });
    if (!adapter) return 'no WebGPU adapter (Dawn on OpenGL ES found none)';
    const limits = adapter.limits as unknown as Record<string, number>;
    const requiredLimits: Record<string, number> = {};
    for (const k of ['maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup',
      'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupSizeZ']) requiredLimits[k] = limits[k]!;
    const device = await adapter.requestDevice({ requiredLimits });
    return { instance: gpu, device, description: `${adapter.info.device || adapter.info.description || 'adapter'}` };
  } catch (e) {
    return `webgpu package unusable here: ${(e as Error).message}`;
  }
}
const dawn = await openDawn();

async function wgslErrors(d: Dawn, code: string, entryPoint: string): Promise<string[]> {
  const module = d.device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === 'error').map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
  if (errors.length) return errors;
  d.device.pushErrorScope('validation');
  d.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint } });
  const err = await d.device.popErrorScope();
  return err ? [err.message] : [];
}

const shaderCases = (): [string, string, string][] => [
  ...[...generate('wgsl')].map(([file, text]): [string, string, string] => [file, text, text.match(/^fn (\w+)\(/m)![1]!]),
  ['allKinds (baseline caps)', emitWGSL(baseline), 'allKinds'],
  ['awkwardNames', emitWGSL(awkwardNames(BASELINE_CAPS).ir), 'awkwardNames'],
  ['random precedence trees', emitWGSL(randomExprKernel(precedenceSeed).ir), 'precedence'],
];
if (typeof dawn === 'string') {
  describe.skip(`WGSL compiles in Dawn [skipped — ${dawn}]`, () => {});
} else {
  describe(`WGSL compiles in Dawn (${dawn.description}, compatibility mode)`, () => {
    afterAll(() => dawn.device.destroy());
    it.each(shaderCases())('%s', async (_name, text, entry) => {
      expect(await wgslErrors(dawn, text, entry)).toEqual([]);
    });
    it('a broken shader is reported (the check can fail)', async () => {
      const broken = emitWGSL(baseline).replace('workgroupBarrier();', 'workgroupBarrier()');
      expect((await wgslErrors(dawn, broken, 'allKinds')).length).toBeGreaterThan(0);
    });
  });
}

// ---- kiln codegen ----------------------------------------------------------------------------------
describe('kiln codegen', () => {
  let dir = '';
  beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'kiln-codegen-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const opts = { targets: ['wgsl', 'cuda'] as ('wgsl' | 'cuda')[] };

  it('writes one file per variant and --check finds stale, missing and extra files', () => {
    const { written } = write(opts, dir);
    const names = FAMILIES.flatMap((f) => f.variants(BASELINE_CAPS).map((v) => `${v.label}.wgsl`));
    for (const n of names) expect(written).toContain(join(dir, n));
    expect(check(opts, dir)).toEqual({ stale: [], missing: [], extra: [] });
    const [first, second] = names;
    writeFileSync(join(dir, first!), readFileSync(join(dir, first!), 'utf8').replace('// kernel:', '// kernel (edited):'));
    unlinkSync(join(dir, second!));
    writeFileSync(join(dir, 'retired.cu'), '// a kernel nobody generates any more\n');
    expect(check(opts, dir)).toEqual({ stale: [join(dir, first!)], missing: [join(dir, second!)], extra: [join(dir, 'retired.cu')] });
  });

  it('the command exits 1 on a stale file and names it; --kernel and --params select and specialise', () => {
    const run = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'bin/kiln.mjs', 'codegen', ...args], { encoding: 'utf8' });
    const sub = join(dir, 'cli');
    expect(run('--out', sub, '--kernel', 'vectorAdd').status).toBe(0);
    expect(existsSync(join(sub, 'vectorAdd.wgsl')) && existsSync(join(sub, 'vectorAdd.cu'))).toBe(true);
    expect(run('--check', '--out', sub, '--kernel', 'vectorAdd').status).toBe(0);
    writeFileSync(join(sub, 'vectorAdd.cu'), 'stale\n');
    const stale = run('--check', '--out', sub, '--kernel', 'vectorAdd');
    expect(stale.status).toBe(1);
    expect(stale.stderr).toMatch(/stale: .*vectorAdd\.cu/);
    const custom = run('--out', sub, '--target', 'wgsl', '--kernel', 'vectorAdd', '--params', '{"workgroupSize":64}');
    expect(custom.status, custom.stderr).toBe(0);
    expect(readFileSync(join(sub, 'vectorAdd-workgroupSize64.wgsl'), 'utf8')).toContain('@workgroup_size(64, 1, 1)');
    const typo = run('--out', sub, '--kernel', 'vectorAdd', '--params', '{"workgroupSise":64}');
    expect(typo.status).toBe(1);
    expect(typo.stderr).toContain("'workgroupSise' is not a parameter of kernel family 'vectorAdd'");
    expect(run('--kernel', 'noSuchKernel').stderr).toContain("no kernel family or variant named 'noSuchKernel'");
  });

  it('the committed shaders/ and cuda/ match the kernel registry (run `npm run codegen` if not)', () => {
    expect(check(opts)).toEqual({ stale: [], missing: [], extra: [] });
  });
});
