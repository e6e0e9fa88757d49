// KernelIR → WGSL, valid in WebGPU compatibility mode (no f16 or subgroups unless the kernel
// uses them). The IR's type names and math function names are WGSL's own.
import type { Builtin, Expr, KernelIR, Stmt } from '../dsl/ir.js';
import type { DType, Scalar } from '../dsl/types.js';
import { WGSL_TARGET, legalize } from './legalize.js';
import { lowerMma } from './mma.js';
import { BUILTINS, CLikeEmitter, bufferElem, type Code, P, atom, callCode, f16round, floatText, infix, postfix } from './clike.js';

type Of<K extends Expr['k']> = Extract<Expr, { k: K }>;
type StmtOf<K extends Stmt['k']> = Extract<Stmt, { k: K }>;

const RESERVED = new Set((
  // keywords and reserved words
  'alias break case const const_assert continue continuing default diagnostic discard else enable false fn for ' +
  'if let loop override requires return struct switch true var while NULL Self abstract active alignas alignof as ' +
  'asm asm_fragment async attribute auto await become binding_array cast catch class co_await co_return co_yield ' +
  'coherent column_major common compile compile_fragment concept const_cast consteval constexpr constinit crate ' +
  'debugger decltype delete demote demote_to_helper do dynamic_cast enum explicit export extends extern external ' +
  'fallthrough filter final finally friend from fxgroup get goto groupshared highp impl implements import inline ' +
  'instanceof interface layout lowp macro macro_rules match mediump meta mod module move mut mutable namespace new ' +
  'nil noexcept noinline nointerpolation non_coherent noncoherent noperspective null nullptr of operator package ' +
  'packoffset partition pass patch pixelfragment precise precision premerge priv protected pub public readonly ref ' +
  'regardless register reinterpret_cast require resource restrict self set shared sizeof smooth snorm static ' +
  'static_assert static_cast std subroutine super target template this thread_local throw trait try type typedef ' +
  'typeid typename typeof union unless unorm unsafe unsized use using varying virtual volatile wgsl where with ' +
  'writeonly yield ' +
  // predeclared names the generated code uses
  'f32 f16 i32 u32 bool vec2 vec3 vec4 array atomic ptr storage uniform workgroup function private read read_write ' +
  'select bitcast exp exp2 log log2 sqrt inverseSqrt abs floor ceil round sin cos tanh min max clamp fma pow dot ' +
  'pack2x16float unpack2x16float atomicAdd atomicMax atomicMin atomicExchange atomicCompareExchangeWeak atomicLoad ' +
  'atomicStore workgroupBarrier subgroupAdd subgroupMax subgroupMin subgroupShuffleXor subgroupBroadcast'
).split(' '));

const BUILTIN_ATTR: Record<Builtin, [string, DType]> = {
  globalId: ['global_invocation_id', 'vec3<u32>'], localId: ['local_invocation_id', 'vec3<u32>'],
  workgroupId: ['workgroup_id', 'vec3<u32>'], numWorkgroups: ['num_workgroups', 'vec3<u32>'],
  localIndex: ['local_invocation_index', 'u32'], subgroupInvocationId: ['subgroup_invocation_id', 'u32'],
  subgroupSize: ['subgroup_size', 'u32'],
};
const ATOMIC_FN = { add: 'atomicAdd', max: 'atomicMax', min: 'atomicMin', exchange: 'atomicExchange' } as const;
const SUBGROUP_FN = { shuffleXor: 'subgroupShuffleXor', add: 'subgroupAdd', max: 'subgroupMax', min: 'subgroupMin', broadcast: 'subgroupBroadcast' } as const;

class WgslEmitter extends CLikeEmitter {
  private readonly uniformVar: string;
  private readonly uniformStruct: string;

  constructor(ir: KernelIR) {
    super(ir, RESERVED);
    this.uniformVar = ir.uniforms.length ? this.fresh('u') : '';
    this.uniformStruct = ir.uniforms.length ? this.fresh(`${ir.name}_Uniforms`) : '';
  }

  type(t: DType): string { return t; }
  literal(v: number | boolean, t: Scalar): Code {
    const what = `kernel '${this.ir.name}': ${t} literal`;
    let s: string;
    switch (t) {
      case 'bool': return atom(String(v));
      case 'u32': return atom(`${v as number}u`);
      case 'i32': if (v === -0x80000000) return atom('i32(-2147483648)'); s = `${v as number}i`; break;
      case 'f32': s = `${floatText(Math.fround(v as number), Math.fround, what)}f`; break;
      case 'f16': s = `${floatText(f16round(v as number), f16round, what)}h`; break;
    }
    return s.startsWith('-') ? { s, prec: P.unary } : atom(s);
  }
  decl(name: string, t: DType, init: string, mutable: boolean): string {
    return `${mutable ? 'var' : 'let'} ${name}: ${t} = ${init}`;
  }
  uniform(name: string): Code { return atom(`${this.uniformVar}.${this.id(name)}`); }
  builtin(b: Builtin): Code { return atom(this.builtinName(b)); }

  /** Whether `name` is declared with an atomic type here (atomics may not be read-only in WGSL). */
  private atomicArray(space: string, name: string): boolean {
    if (space === 'workgroup') return this.ir.shared.some((s) => s.name === name && s.atomic);
    return space === 'storage' && this.ir.buffers.some((b) => b.name === name && b.atomic && b.access === 'read_write');
  }
  load(e: Of<'load'>): Code {
    const ref = this.index(e.name, e.index);
    return this.atomicArray(e.space, e.name) ? atom(`atomicLoad(&${ref})`) : atom(ref);
  }
  call(e: Of<'call'>): Code { return callCode(e.fn, e.args.map((a) => this.code(a))); }
  select(e: Of<'select'>): Code { return callCode('select', [this.code(e.b), this.code(e.a), this.code(e.cond)]); }
  cast(e: Of<'cast'>): Code { return callCode(e.t, [this.code(e.a)]); }
  bitcast(e: Of<'bitcast'>): Code {
    // WGSL evaluates a bitcast of a literal at shader-creation time and rejects NaN/Inf results
    // (kernels use NaN as a visible poison): route literals through a runtime `let`.
    if (e.a.k === 'const') {
      const name = this.fresh('bits');
      this.line(`${this.decl(name, e.a.t, this.code(e.a).s, false)};`);
      return callCode(`bitcast<${e.t}>`, [atom(name)]);
    }
    return callCode(`bitcast<${e.t}>`, [this.code(e.a)]);
  }
  vec(e: Of<'vec'>): Code { return callCode(e.t, e.args.map((a) => this.code(a))); }
  swizzle(e: Of<'swizzle'>): Code { return postfix(this.code(e.a), `.${e.comps}`); }
  subgroup(e: Of<'subgroup'>): Code {
    return callCode(SUBGROUP_FN[e.op], [e.a, ...(e.b ? [e.b] : [])].map((x) => this.code(x)));
  }

  forHead(s: StmtOf<'for'>): string {
    const i: Expr = { k: 'var', t: s.t, name: s.name };
    const cond = infix('lt', this.code(i), this.code(s.to)).s;
    const next = infix('add', this.code(i), this.code(s.step)).s;
    return `for (var ${this.id(s.name)}: ${s.t} = ${this.expr(s.from)}; ${cond}; ${this.id(s.name)} = ${next})`;
  }
  store(s: StmtOf<'store'>): void {
    const ref = this.index(s.name, s.index);
    this.line(this.atomicArray(s.space, s.name) ? `atomicStore(&${ref}, ${this.expr(s.value)});` : `${ref} = ${this.expr(s.value)};`);
  }
  privateArray(s: StmtOf<'privateArray'>): void { this.line(`var ${this.id(s.name)}: array<${s.t}, ${s.length}>;`); }
  barrier(): string { return 'workgroupBarrier();'; }
  fence(): string { throw new Error(`kernel '${this.ir.name}': WGSL has no device-scope fence (the kernel was built for caps with deviceFence)`); }

  atomic(s: StmtOf<'atomic'>): void {
    const keep = s.result !== undefined && this.readNames.has(s.result);
    const result = keep ? `let ${this.id(s.result!)}: ${s.t} = ` : '';
    if (!this.atomicArray(s.space, s.name)) { // a read-only buffer: only loads reach here
      if (keep) this.line(`${result}${this.index(s.name, s.index)};`);
      return;
    }
    if (s.op === 'compareExchange') return this.compareExchange(s, keep);
    const ref = `&${this.index(s.name, s.index)}`;
    if (s.op === 'load') this.line(keep ? `${result}atomicLoad(${ref});` : `_ = atomicLoad(${ref});`);
    else if (s.op === 'store') this.line(`atomicStore(${ref}, ${this.expr(s.value)});`);
    else this.line(`${result}${ATOMIC_FN[s.op]}(${ref}, ${this.expr(s.value)});`);
  }
  /** WGSL only has the weak form, which may fail spuriously; retry those to give the IR's strong CAS. */
  private compareExchange(s: StmtOf<'atomic'>, keep: boolean): void {
    const index = this.hoist(s.index, `${s.name}_index`);
    const value = this.hoist(s.value, `${s.name}_value`);
    const compare = this.expr(this.hoist(s.compare!, `${s.name}_compare`));
    const r = this.fresh(`${s.name}_cas`);
    if (keep) this.line(`var ${this.id(s.result!)}: ${s.t};`);
    this.line('loop {');
    this.line(`  let ${r} = atomicCompareExchangeWeak(&${this.index(s.name, index)}, ${compare}, ${this.expr(value)});`);
    this.line(`  if (${r}.exchanged || ${r}.old_value != ${compare}) {`);
    if (keep) this.line(`    ${this.id(s.result!)} = ${r}.old_value;`);
    this.line('    break;');
    this.line('  }');
    this.line('}');
  }

  emit(): string {
    const ir = this.ir;
    const body = this.bodyLines();
    const out: string[] = [this.header([]), ''];
    if (ir.usesF16) out.push('enable f16;');
    if (ir.usesSubgroups) out.push('enable subgroups;');
    if (ir.usesF16 || ir.usesSubgroups) out.push('');
    ir.buffers.forEach((b, i) => {
      const atomic = b.atomic && b.access === 'read_write';
      out.push(`@group(0) @binding(${i}) var<storage, ${b.access}> ${this.id(b.name)}: array<${atomic ? `atomic<${b.t}>` : bufferElem(b)}>;`);
    });
    if (ir.uniforms.length) {
      out.push('', `struct ${this.uniformStruct} {`, ...ir.uniforms.map((u) => `  ${this.id(u.name)}: ${u.t},`), '}');
      out.push(`@group(0) @binding(${ir.buffers.length}) var<uniform> ${this.uniformVar}: ${this.uniformStruct};`);
    }
    if (ir.shared.length) out.push('');
    for (const s of ir.shared) out.push(`var<workgroup> ${this.id(s.name)}: array<${s.atomic ? `atomic<${s.t}>` : s.t}, ${s.length}>;`);
    const params = BUILTINS.filter((b) => this.builtins.has(b))
      .map((b) => `@builtin(${BUILTIN_ATTR[b][0]}) ${this.builtins.get(b)!}: ${BUILTIN_ATTR[b][1]}`);
    const [x, y, z] = ir.workgroupSize;
    out.push('', `@compute @workgroup_size(${x}, ${y}, ${z})`);
    out.push(params.length > 2 ? `fn ${ir.name}(\n${params.map((p) => `  ${p},`).join('\n')}\n) {` : `fn ${ir.name}(${params.join(', ')}) {`);
    out.push(...body, '}', '');
    return out.join('\n');
  }
}

/** WGSL source for one kernel; the entry point is named after the kernel. */
export function emitWGSL(ir: KernelIR): string {
  return new WgslEmitter(legalize(lowerMma(ir), WGSL_TARGET)).emit();
}
