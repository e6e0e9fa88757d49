// Expressions for the WebAssembly emitter: every IR expression as stack code computing what the
// JavaScript executor computes, bit for bit — native f32 arithmetic (IEEE, no implicit FMA: what
// Math.fround after each JS operation gives), f16 as f32 rounded through its bits after each
// operation, wrapping i32/u32, WGSL integer division, and the JS reference's f64 Math calls for
// exp, log, sin, cos, tanh and pow (imported). A vector is computed one component at a time
// (ex(e, c)); expressions are pure, so a component used twice is computed twice.
import type { BinOp, Expr, KernelIR, MathFn, UnOp } from '../dsl/ir.js';
import { roundToF16 } from '../dsl/f16.js';
import { type DType, type Scalar, elemOf, widthOf } from '../dsl/types.js';
import { forEachExpr } from '../dsl/walk.js';
import type { FnBuilder, Op, ValType } from './wasm-encode.js';
import { FN, WASM_MATH, type WasmMath } from './wasm-helpers.js';
import { expandLanes, expandNibblePair, expandNibbleValues, expandSub2x16float } from './legalize.js';

export const XYZW = 'xyzw';
/** Scalars live in wasm as f32 (f32, f16) or i32 (i32, u32, bool). */
export const vt = (s: Scalar): ValType => (s === 'f32' || s === 'f16' ? 'f32' : 'i32');

/** A private array: `scalar` ones (constant indices only) are one local per element. */
export interface WasmPriv { t: Scalar; length: number; scalar: boolean; locals: number[]; offset: number }

export abstract class WasmExpressions {
  protected f!: FnBuilder;
  protected readonly wg: [number, number, number];
  protected readonly n: number;
  protected readonly sg: number;
  protected readonly vars = new Map<string, DType>();
  protected readonly varLocals = new Map<string, number[]>();
  protected readonly privs = new Map<string, WasmPriv>();
  protected readonly bufIndex = new Map<string, number>();
  protected bufBase: number[] = [];
  protected uniLocal = new Map<string, number>();
  protected sharedOffset = new Map<string, number>();
  /** Per-invocation locals: the local index, its coordinates, global ids, the workgroup id. */
  protected L = { li: 0, lx: 0, ly: 0, lz: 0, gx: 0, gy: 0, gz: 0, wgX: 0, wgY: 0, wgZ: 0, scratch: 0, ngx: 0, ngy: 0, ngz: 0, f16: 0 };
  /**
   * Scalars that feed several components (an unpacked word, a splat), computed once per statement
   * into a local: by node. Entries made inside a conditional arm are dropped when it closes.
   */
  private shared = new Map<Expr, number>();
  private armKeys: Expr[][] = [];

  /**
   * fma as the host's f32x4.relaxed_madd (relaxed SIMD), which the caller found to be fused,
   * i.e. correctly rounded; otherwise through the exact helper (wasm-helpers.ts fmaHelper).
   */
  protected readonly fusedMadd: boolean;

  constructor(protected readonly ir: KernelIR, subgroupSize: number, fusedMadd = false) {
    this.fusedMadd = fusedMadd;
    this.wg = ir.workgroupSize;
    this.n = this.wg[0] * this.wg[1] * this.wg[2];
    this.sg = subgroupSize;
    ir.buffers.forEach((b, i) => this.bufIndex.set(b.name, i));
  }

  protected fail(msg: string): never {
    throw new Error(`kernel '${this.ir.name}' (WebAssembly emitter): ${msg}`);
  }

  /** The locals of a variable (one per component), created on first use. */
  protected varOf(name: string): number[] {
    let l = this.varLocals.get(name);
    if (!l) {
      const t = this.vars.get(name) ?? this.fail(`unknown variable '${name}'`);
      l = Array.from({ length: widthOf(t) }, () => this.f.local(vt(elemOf(t))));
      this.varLocals.set(name, l);
    }
    return l;
  }

  protected f16round(): void { this.f.call(FN.f2h); this.h2f(); }
  /** f16 bits on the stack → f32: the JS executor's own table (in memory at L.f16), so NaNs match too. */
  protected h2f(): void { this.f.i32(2).op('i32.shl').get(this.L.f16).op('i32.add').mem('f32.load'); }

  /** A new statement: nothing computed so far is reused. */
  protected newStatement(): void { this.shared.clear(); this.armKeys = []; }
  private openArm(): void { this.armKeys.push([]); }
  private closeArm(): void { for (const k of this.armKeys.pop() ?? []) this.shared.delete(k); }
  /** Push scalar e, computed at most once per statement. */
  protected once(e: Expr): void {
    if (e.k === 'const' || e.k === 'var' || e.k === 'uniform' || e.k === 'builtin') return this.ex(e, 0);
    const l = this.shared.get(e);
    if (l !== undefined) { this.f.get(l); return; }
    const t = this.f.local(vt(elemOf(e.t)));
    this.ex(e, 0);
    this.f.tee(t);
    this.shared.set(e, t);
    this.armKeys[this.armKeys.length - 1]?.push(e);
  }
  /** Round the f32 on the stack to t's precision (f16: through its bits; f32: already). */
  protected round(t: Scalar): void { if (t === 'f16') this.f16round(); }

  protected lit(s: Scalar, v: number | boolean): void {
    const x = Number(v);
    switch (s) {
      case 'bool': this.f.i32(v ? 1 : 0); return;
      case 'f32': this.f.f32(x); return;
      case 'f16': this.f.f32(roundToF16(x)); return;
      case 'i32': this.f.i32(x | 0); return;
      case 'u32': this.f.i32(x >>> 0); return;
    }
  }

  protected hasLoad(e: Expr): boolean {
    let found = false;
    forEachExpr(e, (x) => { if (x.k === 'load') found = true; });
    return found;
  }

  /** Push component c of e. */
  protected ex(e: Expr, c = 0): void {
    const f = this.f;
    switch (e.k) {
      case 'const': this.lit(elemOf(e.t), e.v); return;
      case 'var': f.get(this.varOf(e.name)[c] ?? this.fail(`component ${c} of '${e.name}'`)); return;
      case 'uniform': f.get(this.uniLocal.get(e.name) ?? this.fail(`unknown uniform '${e.name}'`)); return;
      case 'builtin': return this.builtin(e.name, c);
      case 'load': return this.load(e, c);
      case 'bin': {
        const t = elemOf(e.a.t);
        this.ex(e.a, c); this.ex(e.b, c);
        return this.bin(e.op, t, e.b);
      }
      case 'un': this.ex(e.a, c); return this.un(e.op, elemOf(e.t));
      case 'call': return this.call(e.fn, e.args, c);
      case 'select': {
        const ta = vt(elemOf(e.t)), cc = widthOf(e.cond.t) === 1 ? 0 : c;
        if (this.hasLoad(e.a) || this.hasLoad(e.b)) {
          // Only the chosen arm runs (its loads may be out of bounds where it is not chosen).
          this.ex(e.cond, cc);
          f.if('sel', ta);
          this.openArm(); this.ex(e.a, c); this.closeArm();
          f.else();
          this.openArm(); this.ex(e.b, c); this.closeArm();
          f.end();
        } else {
          this.ex(e.a, c); this.ex(e.b, c); this.ex(e.cond, cc); f.op('select');
        }
        return;
      }
      case 'cast': this.ex(e.a, c); return this.cast(elemOf(e.a.t), elemOf(e.t));
      case 'bitcast': return this.bitcast(e.a, e.t, c);
      case 'pack2x16float':
        this.ex(e.a, 0); f.call(FN.f2h);
        this.ex(e.a, 1); f.call(FN.f2h).i32(16).op('i32.shl').op('i32.or');
        return;
      case 'unpack2x16float':
        this.once(e.a);
        if (c === 0) f.i32(65535).op('i32.and'); else f.i32(16).op('i32.shr_u');
        this.h2f();
        return;
      case 'nibblePairF16': return this.ex(expandNibblePair(e), c);
      case 'nibblePairValues': return this.ex(expandNibbleValues(e), c);
      case 'sub2x16float': return this.ex(expandSub2x16float(e), c);
      case 'vec': {
        if (e.args.length === 1 && widthOf(e.args[0]!.t) === 1) return this.once(e.args[0]!);
        let k = c;
        for (const a of e.args) {
          const w = widthOf(a.t);
          if (k < w) return this.ex(a, k);
          k -= w;
        }
        return this.fail(`${e.t} built from too few components`);
      }
      case 'swizzle': return this.ex(e.a, XYZW.indexOf(e.comps[c] ?? this.fail(`swizzle .${e.comps} has no component ${c}`)));
      case 'subgroup': return this.fail('subgroup operation left inside an expression');
      // One expression per component already: nothing is lifted for wasm.
      case 'lanes': return this.ex(expandLanes(e), c);
      case 'intrinsic': return this.fail(`target function ${e.name} (legalized for another target)`);
    }
  }

  private builtin(name: Extract<Expr, { k: 'builtin' }>['name'], c: number): void {
    const L = this.L, f = this.f;
    switch (name) {
      case 'globalId': f.get([L.gx, L.gy, L.gz][c]!); return;
      case 'localId': f.get([L.lx, L.ly, L.lz][c]!); return;
      case 'workgroupId': f.get([L.wgX, L.wgY, L.wgZ][c]!); return;
      case 'numWorkgroups': f.get([L.ngx, L.ngy, L.ngz][c]!); return;
      case 'localIndex': f.get(L.li); return;
      case 'subgroupInvocationId': f.get(L.li).i32(this.sg - 1).op('i32.and'); return;
      case 'subgroupSize': f.i32(this.sg); return;
    }
  }

  protected bin(op: BinOp, t: Scalar, b: Expr): void {
    const f = this.f;
    const float = t === 'f32' || t === 'f16';
    const CMP: Partial<Record<BinOp, [Op, Op, Op]>> = {
      lt: ['f32.lt', 'i32.lt_s', 'i32.lt_u'], le: ['f32.le', 'i32.le_s', 'i32.le_u'], gt: ['f32.gt', 'i32.gt_s', 'i32.gt_u'],
      ge: ['f32.ge', 'i32.ge_s', 'i32.ge_u'], eq: ['f32.eq', 'i32.eq', 'i32.eq'], ne: ['f32.ne', 'i32.ne', 'i32.ne'],
    };
    const cmp = CMP[op];
    if (cmp) { f.op(float ? cmp[0] : t === 'u32' ? cmp[2] : cmp[1]); return; }
    if (op === 'and' || op === 'or') { f.op(op === 'and' ? 'i32.and' : 'i32.or'); return; }
    if (float) {
      if (op === 'rem') {
        // JS: Math.fround(a % b), fmod exact in f64. Through locals: both operands are on the stack.
        const y = f.local('f32'), x = f.local('f32');
        f.set(y).set(x).get(x).op('f64.promote_f32').get(y).op('f64.promote_f32').call(WASM_MATH.indexOf('fmod')).op('f32.demote_f64');
      } else {
        const o = ({ add: 'f32.add', sub: 'f32.sub', mul: 'f32.mul', div: 'f32.div' } as const)[op as 'add'];
        if (!o) this.fail(`'${op}' on ${t}`);
        f.op(o);
      }
      return this.round(t);
    }
    const u = t === 'u32';
    const constDiv = b.k === 'const' && Number(b.v) !== 0 && (u || (Number(b.v) | 0) !== -1);
    switch (op) {
      case 'add': f.op('i32.add'); return;
      case 'sub': f.op('i32.sub'); return;
      case 'mul': f.op('i32.mul'); return;
      case 'div': if (constDiv) f.op(u ? 'i32.div_u' : 'i32.div_s'); else this.divide(u, false); return;
      case 'rem': if (constDiv) f.op(u ? 'i32.rem_u' : 'i32.rem_s'); else this.divide(u, true); return;
      case 'band': f.op('i32.and'); return;
      case 'bor': f.op('i32.or'); return;
      case 'bxor': f.op('i32.xor'); return;
      case 'shl': f.op('i32.shl'); return;
      case 'shr': f.op(u ? 'i32.shr_u' : 'i32.shr_s'); return;
      default: this.fail(`'${op}' on ${t}`);
    }
  }

  /**
   * a / b or a % b (both on the stack) as WGSL defines them, without traps and without a call:
   * x / 0 = x, x % 0 = 0, INT_MIN / -1 = INT_MIN (0 - a), x % -1 = 0 (wasm's rem_s already).
   */
  private divide(u: boolean, rem: boolean): void {
    const f = this.f, b = f.local('i32'), a = f.local('i32');
    f.set(b).set(a);
    if (rem) { f.get(a).i32(1).get(b).get(b).op('i32.eqz').op('select').op(u ? 'i32.rem_u' : 'i32.rem_s'); return; }
    if (u) {
      f.get(a).get(a).i32(1).get(b).get(b).op('i32.eqz').op('select').op('i32.div_u').get(b).op('i32.eqz').op('select');
      return;
    }
    // Divisor 0 or -1 → 1, then fix those two cases up: b == 0 gives a, b == -1 gives 0 - a.
    const r = f.local('i32');
    f.get(a).get(a).i32(1).get(b).get(b).op('i32.eqz').get(b).i32(-1).op('i32.eq').op('i32.or').op('select').op('i32.div_s');
    f.get(b).op('i32.eqz').op('select').set(r);
    f.i32(0).get(a).op('i32.sub').get(r).get(b).i32(-1).op('i32.eq').op('select');
  }

  protected un(op: UnOp, t: Scalar): void {
    const f = this.f;
    switch (op) {
      case 'not': f.op('i32.eqz'); return;
      case 'neg':
        if (t === 'f32' || t === 'f16') f.op('f32.neg');
        else { const x = f.local('i32'); f.set(x).i32(0).get(x).op('i32.sub'); }
        return;
      case 'bnot': f.i32(-1).op('i32.xor'); return;
    }
  }

  /** min/max of the two i32 values on the stack (signed or unsigned). */
  private intMinMax(max: boolean, u: boolean): void {
    const f = this.f, b = f.local('i32'), a = f.local('i32');
    f.set(b).set(a).get(a).get(b).get(a).get(b).op(max ? (u ? 'i32.gt_u' : 'i32.gt_s') : (u ? 'i32.lt_u' : 'i32.lt_s')).op('select');
  }

  private fmaTemps?: { a: number; b: number; c: number; p: number; s: number; q: number; r: number };
  /**
   * Correctly rounded fma without a fused multiply-add: s = a·b + c in f64 (the product is exact)
   * rounded to f32, which is right unless s lies exactly halfway between two f32 values (its 29
   * bits below f32 precision are 1000…0) or the result is not a normal f32 (the halfway points sit
   * elsewhere there). In those cases s is still right when it is exact (TwoSum's error term is 0:
   * the common case, with low-precision weights); otherwise the exact helper (wasm-helpers.ts).
   */
  protected exactFma(pushArgs: () => void): void {
    const f = this.f;
    const t = (this.fmaTemps ??= {
      a: f.local('f32'), b: f.local('f32'), c: f.local('f32'), p: f.local('f64'), s: f.local('f64'), q: f.local('f64'), r: f.local('f32'),
    });
    pushArgs();
    f.set(t.c).set(t.b).set(t.a);
    f.get(t.a).op('f64.promote_f32').get(t.b).op('f64.promote_f32').op('f64.mul').tee(t.p).get(t.c).op('f64.promote_f32').op('f64.add').tee(t.s);
    f.op('f32.demote_f64').set(t.r);
    f.get(t.s).op('i64.reinterpret_f64').op('i32.wrap_i64').i32(0x1fffffff).op('i32.and').i32(0x10000000).op('i32.eq');
    f.get(t.r).op('f32.abs').f32(2 ** -126).op('f32.le').get(t.s).f64(0).op('f64.ne').op('i32.and').op('i32.or');
    f.if('fmaHalfway', 'f32');
    // TwoSum: q = s − p, e = (p − (s − q)) + (c − q).
    f.get(t.s).get(t.p).op('f64.sub').set(t.q);
    f.get(t.p).get(t.s).get(t.q).op('f64.sub').op('f64.sub').get(t.c).op('f64.promote_f32').get(t.q).op('f64.sub').op('f64.add').f64(0).op('f64.eq');
    f.if('fmaExactSum', 'f32').get(t.r).else().get(t.a).get(t.b).get(t.c).call(FN.fma).end();
    f.else().get(t.r).end();
  }

  protected call(fn: MathFn, args: Expr[], c: number): void {
    const f = this.f, t = elemOf(args[0]!.t);
    const float = t === 'f32' || t === 'f16';
    const arg = (i: number, comp = c) => this.ex(args[i]!, comp);
    const math = (name: WasmMath) => f.call(WASM_MATH.indexOf(name));
    switch (fn) {
      case 'exp': arg(0); f.call(FN.exp); return this.round(t); // Math.exp(x)'s bits (wasm-helpers.ts)
      case 'log': case 'log2': case 'sin': case 'cos': case 'tanh':
        arg(0); f.op('f64.promote_f32'); math(fn); f.op('f32.demote_f64'); return this.round(t);
      case 'exp2': arg(0); f.call(FN.exp2); return this.round(t); // Math.pow(2, x)'s bits (wasm-helpers.ts)
      case 'pow': arg(0); f.op('f64.promote_f32'); arg(1); f.op('f64.promote_f32'); math('pow'); f.op('f32.demote_f64'); return this.round(t);
      case 'sqrt': arg(0); f.op('f32.sqrt'); return this.round(t);
      case 'inverseSqrt': f.f64(1); arg(0); f.op('f64.promote_f32').op('f64.sqrt').op('f64.div').op('f32.demote_f64'); return this.round(t);
      case 'fma': // correctly rounded, as the JS executor's $fmaPC
        if (this.fusedMadd) {
          arg(0); f.simd('f32x4.splat'); arg(1); f.simd('f32x4.splat'); arg(2); f.simd('f32x4.splat');
          f.simd('f32x4.relaxed_madd').simd('f32x4.extract_lane', 0);
        } else this.exactFma(() => { arg(0); arg(1); arg(2); });
        return this.round(t);
      case 'abs':
        arg(0);
        if (float) f.op('f32.abs');
        else if (t === 'i32') { const x = f.local('i32'); f.set(x).i32(0).get(x).op('i32.sub').get(x).get(x).i32(0).op('i32.lt_s').op('select'); }
        return;
      case 'floor': arg(0); f.op('f32.floor'); return;
      case 'ceil': arg(0); f.op('f32.ceil'); return;
      case 'round': arg(0); f.op('f32.nearest'); return;
      case 'min': case 'max':
        arg(0); arg(1);
        if (float) f.op(fn === 'min' ? 'f32.min' : 'f32.max'); else this.intMinMax(fn === 'max', t === 'u32');
        return;
      case 'clamp':
        arg(0); arg(1);
        if (float) f.op('f32.max'); else this.intMinMax(true, t === 'u32');
        arg(2);
        if (float) f.op('f32.min'); else this.intMinMax(false, t === 'u32');
        return;
      case 'dot': {
        const w = widthOf(args[0]!.t);
        for (let i = 0; i < w; i++) {
          arg(0, i); arg(1, i); f.op('f32.mul'); this.round(t);
          if (i > 0) { f.op('f32.add'); this.round(t); }
        }
        return;
      }
    }
  }

  protected cast(from: Scalar, to: Scalar): void {
    const f = this.f;
    if (from === to) return;
    const ff = from === 'f32' || from === 'f16';
    if (to === 'bool') { if (ff) f.f32(0).op('f32.ne'); else f.i32(0).op('i32.ne'); return; }
    if (from === 'bool') { if (to === 'f32' || to === 'f16') f.op('f32.convert_i32_u'); return; }
    switch (to) {
      case 'f32': if (!ff) f.op(from === 'u32' ? 'f32.convert_i32_u' : 'f32.convert_i32_s'); return;
      case 'f16': if (!ff) f.op(from === 'u32' ? 'f32.convert_i32_u' : 'f32.convert_i32_s'); this.f16round(); return;
      case 'i32': if (ff) f.pre('i32.trunc_sat_f32_s'); return;
      case 'u32': if (ff) f.pre('i32.trunc_sat_f32_u'); return;
    }
  }

  /** Bits move through 32-bit words; f16 pairs pack the low half first. */
  protected bitcast(a: Expr, to: DType, c: number): void {
    const f = this.f;
    const fe = elemOf(a.t), te = elemOf(to);
    if (a.t === to) return this.ex(a, c);
    const word = (w: number) => {
      if (fe === 'f16') {
        this.ex(a, 2 * w); f.call(FN.f2h);
        this.ex(a, 2 * w + 1); f.call(FN.f2h).i32(16).op('i32.shl').op('i32.or');
      } else {
        if (widthOf(a.t) === 1) this.once(a); else this.ex(a, w);
        if (fe === 'f32') f.op('i32.reinterpret_f32');
      }
    };
    if (te === 'f16') {
      word(c >> 1);
      if (c & 1) f.i32(16).op('i32.shr_u'); else f.i32(65535).op('i32.and');
      this.h2f();
      return;
    }
    word(c);
    if (te === 'f32') f.op('f32.reinterpret_i32');
  }

  // ---- memory --------------------------------------------------------------------------------
  protected buf(name: string) {
    const i = this.bufIndex.get(name) ?? this.fail(`unknown storage buffer '${name}'`);
    return { i, decl: this.ir.buffers[i]! };
  }
  protected priv(name: string): WasmPriv { return this.privs.get(name) ?? this.fail(`unknown private array '${name}'`); }

  /**
   * `index` as (the rest, a constant ≥ 0 added to it): the constant goes into the access's static
   * offset (the memarg), so accesses at i, i + 1, … share one address computation. In bounds the
   * address is the same (the element's byte address is at least the constant's).
   */
  protected splitIndex(index: Expr): [Expr, number] {
    if (index.k === 'bin' && index.op === 'add' && (index.t === 'u32' || index.t === 'i32')) {
      const small = (e: Expr) => e.k === 'const' && typeof e.v === 'number' && e.v > 0 && e.v < 2 ** 20;
      if (small(index.b)) { const [e, c] = this.splitIndex(index.a); return [e, c + Number((index.b as { v: number }).v)]; }
      if (small(index.a)) { const [e, c] = this.splitIndex(index.b); return [e, c + Number((index.a as { v: number }).v)]; }
    }
    return [index, 0];
  }

  /**
   * Push the address of element `index` of a storage buffer (times its vector width, scratch
   * arrays); returns the static offset to access it at.
   */
  protected storageAddr(name: string, index: Expr): { op: 'f32' | 'i32' | 'f16'; offset: number } {
    const { i, decl } = this.buf(name);
    const f = this.f;
    const [base, c] = this.splitIndex(index);
    f.get(this.bufBase[i]!);
    this.ex(base, 0);
    const bytes = (decl.t === 'f16' ? 2 : 4) * decl.vec;
    if (bytes > 1) f.i32(Math.log2(bytes)).op('i32.shl');
    f.op('i32.add');
    return { op: decl.t === 'f16' ? 'f16' : decl.t === 'f32' ? 'f32' : 'i32', offset: c * bytes };
  }
  protected workgroupAddr(name: string, index: Expr): number {
    const off = this.sharedOffset.get(name) ?? this.fail(`unknown workgroup array '${name}'`);
    const [base, c] = this.splitIndex(index);
    this.f.get(this.L.scratch);
    this.ex(base, 0);
    this.f.i32(2).op('i32.shl').op('i32.add');
    return off + 4 * c;
  }
  /** A non-scalar private array: its element's address (pbase: this invocation's base when spilled). */
  protected privateAddr(p: WasmPriv, index: Expr, spilled: boolean): number {
    const [base, c] = this.splitIndex(index);
    this.f.get(this.L.scratch);
    if (spilled) this.f.get(this.L.li).i32(p.length * 4).op('i32.mul').op('i32.add');
    this.ex(base, 0);
    this.f.i32(2).op('i32.shl').op('i32.add');
    return p.offset + 4 * c;
  }

  protected abstract isSpilled(name: string): boolean;

  protected load(e: Extract<Expr, { k: 'load' }>, c: number): void {
    const f = this.f;
    if (e.space === 'storage') {
      const { decl } = this.buf(e.name);
      const { op, offset } = this.storageAddr(e.name, e.index);
      if (op === 'f16') { f.mem('i32.load16_u', offset); this.h2f(); }
      else f.mem(op === 'f32' ? 'f32.load' : 'i32.load', offset + (decl.vec > 1 ? c * 4 : 0));
      return;
    }
    const t = elemOf(e.t);
    if (e.space === 'workgroup') { const off = this.workgroupAddr(e.name, e.index); f.mem(vt(t) === 'f32' ? 'f32.load' : 'i32.load', off); return; }
    const p = this.priv(e.name);
    if (p.scalar) {
      if (e.index.k !== 'const') this.fail(`private array '${e.name}' indexed by a non-constant`);
      f.get(p.locals[Number(e.index.v)] ?? this.fail(`private array '${e.name}' index ${e.index.v} out of range`));
      return;
    }
    const off = this.privateAddr(p, e.index, this.isSpilled(e.name));
    f.mem(vt(p.t) === 'f32' ? 'f32.load' : 'i32.load', off);
  }
}
