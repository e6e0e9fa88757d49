// WebAssembly emitter for the CPU executor's fast path: one module per kernel variant whose
// `run(start, end, nwgX, nwgY, nwgZ, args, scratch)` runs workgroups [start, end) of a launch
// (linear ids, x fastest) over the imported shared memory every buffer lives in.
//
// Same program shape as the JavaScript emitter (js.ts), from the same lowering (js-lower.ts): a
// kernel without sync points is one loop over its invocations; one with barriers or subgroup
// operations is cut into regions under workgroup-level control over per-invocation masks, with
// locals that live across regions spilled to per-invocation arrays. What JS keeps in typed arrays
// of its own (workgroup memory, masks, spills, private arrays indexed at run time, subgroup
// operands) lives in `scratch`, a block of the shared memory that belongs to the calling thread.
// `args` holds the launch: each binding's byte offset, then each uniform (i32 / u32 / f32 bits),
// then the offset of the f16 → f32 table (65536 f32: the JS executor's, codegen/dsl/f16.ts).
// The results equal the JavaScript executor's bit for bit (wasm-expr.ts says how).
import type { Expr, KernelIR } from '../dsl/ir.js';
import { lowerMma } from './mma.js';
import { type DType, type Scalar, elemOf, widthOf } from '../dsl/types.js';
import { FnBuilder, encodeModule } from './wasm-encode.js';
import { WasmExpressions, vt } from './wasm-expr.js';
import { loopOperands, type PackHost, packAccumulators, packedLoopBody, unpackAccumulators } from './wasm-simd.js';
import { FN, MATH_IMPORTS, helperFunctions } from './wasm-helpers.js';
import {
  type Region, SubgroupHoister, type Wg, type WgCtx, WorkgroupLowering, type XStmt, collectLoweredDecls, isSync, regionUse, regionsOf,
} from './js-lower.js';

export { wasmMathImports, WASM_MATH } from './wasm-helpers.js';

export interface WasmKernel {
  /** The module's bytes (imports env.memory, shared, and m.<Math function>). */
  bytes: Uint8Array;
  /** Bytes of scratch one thread needs for this kernel (16-aligned). */
  scratchBytes: number;
  /** 32-bit words of a launch's argument block: one per binding, one per uniform, then the f16 table's offset. */
  argWords: number;
  /** fma accumulator groups the module carries in f32x4 registers through their loops (wasm-simd.ts). */
  simdGroups: number;
  /** Distinct operands those loops load straight from workgroup memory as vectors (wasm-simd.ts). */
  vectorOperands: number;
}

export interface WasmEmitOptions {
  /** Emulated subgroup size (default: the kernel's caps.subgroupSize, else 32), as the JS emitter. */
  subgroupSize?: number;
  /**
   * The host's f32x4.relaxed_madd is fused (src/backend/cpu/wasm-api.ts hostFusedMadd): fma uses
   * it, and fma accumulators are packed (wasm-simd.ts). Default false: fma through the exact
   * helper, no relaxed-SIMD instruction in the module. Same bits either way.
   */
  fusedMadd?: boolean;
  /** Carry accumulator groups in f32x4 registers (wasm-simd.ts; default true; fma ones only with fusedMadd): same bits either way. */
  simd?: boolean;
  /** Packed steps convert f16 and INT4 weight lanes four at a time (wasm-convert.ts; default true): same bits either way. */
  convertWeights?: boolean;
}

/** The WebAssembly module for `ir` (see the file header for its interface). */
export function emitWasm(ir: KernelIR, opts: WasmEmitOptions = {}): WasmKernel {
  return new WasmEmitter(lowerMma(ir), opts).emit(); // mma: the emulation emit/mma.ts defines
}

interface RegionCtx {
  multi: boolean;
  ctx: WgCtx;
  /** Labels of the plain (per-invocation) loops around, innermost last. */
  loops: { brk: string; cont: string }[];
  blocks: number;
  available: Set<string>;
  written: Set<string>;
}

class WasmEmitter extends WasmExpressions {
  private readonly body: XStmt[];
  private spilled = new Set<string>();
  private scratchTop = 0;
  private readonly maskOffset = new Map<string, number>();
  private readonly spillOffset = new Map<string, number>();
  /** Immutable lets emitted so far, by name (kernel-unique): their initialisers (wasm-simd.ts). */
  private readonly lets = new Map<string, Expr>();
  private readonly sgOffset = new Map<number, { v: number; l: number }>();
  private sgTmp = -1;
  private labels = 0;
  private rc!: RegionCtx;
  private usesLocalId = false;
  private usesGlobalId = false;
  /** Accumulator groups carried in f32x4 registers (wasm-simd.ts), for the module's report. */
  private packedGroups = 0;
  private vectorOperands = 0;
  private readonly simd: boolean;
  private readonly convertWeights: boolean;

  constructor(ir: KernelIR, opts: WasmEmitOptions) {
    const sg = opts.subgroupSize ?? (ir.caps.subgroupSize > 0 ? ir.caps.subgroupSize : 32);
    super(ir, sg, opts.fusedMadd ?? false);
    this.simd = opts.simd ?? true;
    this.convertWeights = opts.convertWeights ?? true;
    if (!(sg >= 1 && sg <= 128 && (sg & (sg - 1)) === 0)) this.fail(`emulated subgroup size ${sg} is not a power of two up to 128`);
    this.body = new SubgroupHoister().stmts(ir.body);
    this.collectDecls(this.body);
  }

  private alloc(bytes: number): number {
    const at = this.scratchTop;
    this.scratchTop += Math.ceil(bytes / 16) * 16;
    return at;
  }
  private label(what: string): string { return `${what}${++this.labels}`; }
  private readonly isLocal = (name: string): boolean => this.vars.has(name) || this.privs.has(name);
  protected isSpilled(name: string): boolean { return this.spilled.has(name); }

  private collectDecls(list: XStmt[]): void {
    const d = collectLoweredDecls(list, (x) => {
      if (x.k === 'builtin') {
        if (x.name === 'localId') this.usesLocalId = true;
        if (x.name === 'globalId') this.usesGlobalId = true;
      }
    });
    for (const [name, t] of d.vars) this.vars.set(name, t);
    for (const a of d.privateArrays) this.privs.set(a.name, { t: a.t, length: a.length, scalar: a.scalar, locals: [], offset: -1 });
  }

  // ---- per-invocation statements ----------------------------------------------------------------
  private declare(name: string): void {
    if (!this.spilled.has(name)) return;
    if (this.rc.blocks > 0) this.fail(`'${name}' is declared inside a block but used after a barrier outside it`);
    this.rc.available.add(name);
  }

  private stmts(list: XStmt[]): void { for (const s of list) this.stmt(s); }

  /** Push every component of e, then set the locals last to first: reads see the old values. */
  private setVar(name: string, e: Expr): void {
    const locals = this.varOf(name);
    for (let c = 0; c < locals.length; c++) this.ex(e, c);
    for (let c = locals.length - 1; c >= 0; c--) this.f.set(locals[c]!);
  }

  private stmt(s: XStmt): void {
    const f = this.f;
    this.newStatement();
    switch (s.k) {
      case 'let':
        this.setVar(s.name, s.init); this.declare(s.name);
        if (!s.mutable) this.lets.set(s.name, s.init);
        return;
      case 'assign': this.setVar(s.name, s.value); return;
      case 'store': return this.store(s);
      case 'privateArray': {
        const p = this.priv(s.name);
        if (p.scalar) {
          if (!p.locals.length) p.locals = Array.from({ length: p.length }, () => f.local(vt(p.t)));
          for (const l of p.locals) { if (vt(p.t) === 'f32') f.f32(0); else f.i32(0); f.set(l); }
        } else {
          f.get(this.L.scratch).i32(p.offset).op('i32.add');
          if (this.spilled.has(s.name)) f.get(this.L.li).i32(p.length * 4).op('i32.mul').op('i32.add');
          f.i32(0).i32(p.length * 4).fill();
        }
        this.declare(s.name);
        return;
      }
      case 'if':
        this.ex(s.cond, 0);
        f.if(this.label('if'));
        this.block(s.then);
        if (s.else.length) { f.else(); this.block(s.else); }
        f.end();
        return;
      case 'for': {
        const [v] = this.varOf(s.name) as [number];
        this.ex(s.from, 0); f.set(v);
        const packed = this.simd ? packAccumulators(this.packHost(), s, {
          isF32: (n) => this.vars.get(n) === 'f32',
          isScalarPrivate: (n) => { const p = this.privs.get(n); return !!p && p.scalar && p.t === 'f32' && !this.spilled.has(n); },
          fusedMadd: this.fusedMadd,
        }) : [];
        this.packedGroups += packed.length;
        const ops = this.simd ? loopOperands(this.packHost(), s.body, packed) : null;
        const brk = this.label('brk'), top = this.label('top'), cont = this.label('cont');
        f.block(brk).loop(top);
        this.newStatement();
        f.get(v); this.ex(s.to, 0); f.op(s.t === 'u32' ? 'i32.ge_u' : 'i32.ge_s').brIf(brk);
        f.block(cont);
        if (ops && (packed.length || ops.stores.size)) {
          this.rc.loops.push({ brk, cont });
          this.rc.blocks++;
          this.vectorOperands += packedLoopBody(this.packHost(), s.body, packed, ops);
          this.rc.blocks--;
          this.rc.loops.pop();
        } else this.loopBody(s.body, brk, cont);
        f.end();
        this.newStatement();
        f.get(v); this.ex(s.step, 0); f.op('i32.add').set(v);
        f.br(top).end().end();
        unpackAccumulators(this.packHost(), packed);
        return;
      }
      case 'while': {
        const brk = this.label('brk'), top = this.label('top'), cont = this.label('cont');
        f.block(brk).loop(top);
        this.ex(s.cond, 0); f.op('i32.eqz').brIf(brk);
        f.block(cont);
        this.loopBody(s.body, brk, cont);
        f.end().br(top).end().end();
        return;
      }
      case 'break': case 'continue': {
        const loop = this.rc.loops[this.rc.loops.length - 1];
        if (loop) f.br(s.k === 'break' ? loop.brk : loop.cont);
        else this.exit(s.k);
        return;
      }
      case 'return': this.exit('return'); return;
      case 'atomic': this.atomic(s); return;
      // As in the JS executor: wasm atomics are sequentially consistent, so plain writes before an
      // atomic operation are seen by a thread whose atomic operation reads its result; the fence
      // itself emits nothing (an atomic.fence cost 4.5 % of a decode step: x86 mfence).
      case 'fence': return;
      case 'barrier': case '$sg': case '$loop':
        return this.fail(`${s.k} in a per-invocation region`);
    }
  }
  /** What the SIMD128 accumulator packing (wasm-simd.ts) emits through. */
  private packHost(): PackHost {
    return {
      f: this.f, ex: (e) => this.ex(e, 0), local: (n) => this.accLocal(n), stmt: (st) => this.stmt(st), newStatement: () => this.newStatement(),
      workgroupAddr: (name, index) => this.workgroupAddr(name, index), lets: this.lets,
      privateInMemory: (name) => { const p = this.privs.get(name); return !!p && !p.scalar; },
      privateAddr: (name, index) => this.privateAddr(this.priv(name), index, this.spilled.has(name)),
      exactFma: (push) => this.exactFma(push),
      storageInfo: (name) => {
        const i = this.bufIndex.get(name);
        const d = i === undefined ? undefined : this.ir.buffers[i];
        return d && { t: d.t, vec: d.vec, readOnly: d.access === 'read' && !d.atomic };
      },
      storageAddr: (name, index) => this.storageAddr(name, index).offset,
      h2f: () => this.h2f(), convertWeights: this.convertWeights,
    };
  }

  /** The local of a packed accumulator: a variable, or a scalar private array's element (wasm-simd.ts privateKey). */
  private accLocal(key: string): number {
    const hash = key.lastIndexOf('#');
    if (hash < 0 || this.vars.has(key)) return this.varOf(key)[0]!;
    const p = this.priv(key.slice(0, hash));
    return p.locals[Number(key.slice(hash + 1))] ?? this.fail(`private array element '${key}' has no local`);
  }

  private block(body: XStmt[]): void {
    this.rc.blocks++;
    this.stmts(body);
    this.rc.blocks--;
  }
  private loopBody(body: XStmt[], brk: string, cont: string): void {
    this.rc.loops.push({ brk, cont });
    this.block(body);
    this.rc.loops.pop();
  }

  private store(s: Extract<XStmt, { k: 'store' }>): void {
    const f = this.f;
    if (s.space === 'storage') {
      const { decl } = this.buf(s.name);
      if (decl.vec > 1) {
        // Every component is read before any is written (the value may read the same element).
        const t = vt(decl.t as Scalar);
        const vals = Array.from({ length: decl.vec }, () => f.local(t));
        for (let c = 0; c < decl.vec; c++) { this.ex(s.value, c); f.set(vals[c]!); }
        const addr = f.local('i32');
        const { offset } = this.storageAddr(s.name, s.index); f.set(addr);
        for (let c = 0; c < decl.vec; c++) f.get(addr).get(vals[c]!).mem(t === 'f32' ? 'f32.store' : 'i32.store', offset + c * 4);
        return;
      }
      const { op, offset } = this.storageAddr(s.name, s.index);
      this.ex(s.value, 0);
      if (op === 'f16') f.call(FN.f2h).mem('i32.store16', offset);
      else f.mem(op === 'f32' ? 'f32.store' : 'i32.store', offset);
      return;
    }
    if (s.space === 'workgroup') {
      const off = this.workgroupAddr(s.name, s.index);
      this.ex(s.value, 0);
      f.mem(vt(elemOf(s.value.t)) === 'f32' ? 'f32.store' : 'i32.store', off);
      return;
    }
    const p = this.priv(s.name);
    if (p.scalar) {
      if (s.index.k !== 'const') this.fail(`private array '${s.name}' indexed by a non-constant`);
      this.ex(s.value, 0);
      f.set(p.locals[Number(s.index.v)] ?? this.fail(`private array '${s.name}' index ${s.index.v} out of range`));
      return;
    }
    const off = this.privateAddr(p, s.index, this.spilled.has(s.name));
    this.ex(s.value, 0);
    f.mem(vt(p.t) === 'f32' ? 'f32.store' : 'i32.store', off);
  }

  private atomic(s: Extract<XStmt, { k: 'atomic' }>): void {
    const f = this.f, u = s.t === 'u32';
    const addr = f.local('i32'), old = f.local('i32');
    let off = 0;
    if (s.space === 'storage') off = this.storageAddr(s.name, s.index).offset;
    else off = this.workgroupAddr(s.name, s.index);
    f.set(addr);
    switch (s.op) {
      case 'add': f.get(addr); this.ex(s.value, 0); f.mem('i32.atomic.rmw.add', off).set(old); break;
      case 'exchange': f.get(addr); this.ex(s.value, 0); f.mem('i32.atomic.rmw.xchg', off).set(old); break;
      case 'load': f.get(addr).mem('i32.atomic.load', off).set(old); break;
      case 'store': { // JS: Atomics.store returns the value stored
        f.get(addr); this.ex(s.value, 0); f.tee(old).mem('i32.atomic.store', off);
        break;
      }
      case 'compareExchange':
        if (!s.compare) this.fail('compareExchange without a compare value');
        f.get(addr); this.ex(s.compare, 0); this.ex(s.value, 0); f.mem('i32.atomic.rmw.cmpxchg', off).set(old);
        break;
      case 'max': case 'min': {
        // Compare-and-swap loop, as the JS executor's $atomicMax/$atomicMin; the old value results.
        const v = f.local('i32'), done = this.label('amx'), again = this.label('amxl');
        this.ex(s.value, 0); f.set(v);
        f.block(done).loop(again);
        f.get(addr).mem('i32.atomic.load', off).set(old);
        f.get(old).get(v).op(s.op === 'max' ? (u ? 'i32.ge_u' : 'i32.ge_s') : (u ? 'i32.le_u' : 'i32.le_s')).brIf(done);
        f.get(addr).get(old).get(v).mem('i32.atomic.rmw.cmpxchg', off).get(old).op('i32.eq').brIf(done);
        f.br(again).end().end();
        break;
      }
    }
    if (s.result) { f.get(old).set(this.varOf(s.result)[0]!); this.declare(s.result); }
  }

  /** Leave the region for this invocation: it returns, or breaks/continues a workgroup-level loop. */
  private exit(kind: 'return' | 'break' | 'continue'): void {
    const { ctx, multi } = this.rc;
    let from = 0;
    if (kind !== 'return') {
      if (!ctx.loop) this.fail(`${kind} outside a loop`);
      from = kind === 'break' ? ctx.loop.lIdx : ctx.loop.iIdx;
      for (const v of this.rc.written) if (this.rc.available.has(v)) this.storeSpill(v);
    }
    if (multi) for (const m of ctx.masks.slice(from)) this.maskAt(m).i32(0).mem('i32.store8', this.maskOffset.get(m)!);
    this.f.br('next');
  }

  // ---- spills, masks --------------------------------------------------------------------------------
  /** Push scratch + li · size (the invocation's slot of a per-invocation array). */
  private slot(size: number): FnBuilder {
    this.f.get(this.L.scratch).get(this.L.li);
    if (size > 1) this.f.i32(size).op('i32.mul');
    return this.f.op('i32.add');
  }
  private maskAt(m: string): FnBuilder { this.mask(m); return this.slot(1); }
  private mask(m: string): number {
    let off = this.maskOffset.get(m);
    if (off === undefined) { off = this.alloc(this.n); this.maskOffset.set(m, off); }
    return off;
  }
  private loadSpill(name: string): void {
    const p = this.privs.get(name), f = this.f;
    if (p) {
      if (!p.scalar) return;
      if (!p.locals.length) p.locals = Array.from({ length: p.length }, () => f.local(vt(p.t)));
      p.locals.forEach((l, i) => { this.slot(p.length * 4).mem(vt(p.t) === 'f32' ? 'f32.load' : 'i32.load', this.spillOffset.get(name)! + 4 * i).set(l); });
      return;
    }
    const t = this.vars.get(name)!;
    this.varOf(name).forEach((l, c) => { this.slot(4 * widthOf(t)).mem(vt(elemOf(t)) === 'f32' ? 'f32.load' : 'i32.load', this.spillOffset.get(name)! + 4 * c).set(l); });
  }
  private storeSpill(name: string): void {
    const p = this.privs.get(name), f = this.f;
    if (p) {
      if (!p.scalar) return;
      p.locals.forEach((l, i) => { this.slot(p.length * 4).get(l).mem(vt(p.t) === 'f32' ? 'f32.store' : 'i32.store', this.spillOffset.get(name)! + 4 * i); });
      return;
    }
    const t = this.vars.get(name)!;
    this.varOf(name).forEach((l, c) => { this.slot(4 * widthOf(t)).get(l).mem(vt(elemOf(t)) === 'f32' ? 'f32.store' : 'i32.store', this.spillOffset.get(name)! + 4 * c); });
    void f;
  }
  private layoutSpills(): void {
    for (const name of this.spilled) {
      const p = this.privs.get(name);
      if (p) { const off = this.alloc(this.n * p.length * 4); this.spillOffset.set(name, off); if (!p.scalar) p.offset = off; continue; }
      this.spillOffset.set(name, this.alloc(this.n * 4 * widthOf(this.vars.get(name) as DType)));
    }
    for (const [name, p] of this.privs) if (!p.scalar && !this.spilled.has(name)) p.offset = this.alloc(p.length * 4);
  }

  // ---- regions and the workgroup program -------------------------------------------------------------
  private emitRegion(r: Region, multi: boolean): void {
    const f = this.f, L = this.L;
    for (const p of r.pre) {
      // The JS lowering's pre lines are mask clears: `$mN.fill(0);`
      for (const m of p.match(/\$m\d+/g) ?? []) f.get(L.scratch).i32(this.mask(m)).op('i32.add').i32(0).i32(this.n).fill();
    }
    const use = r.use ?? regionUse(r.items, this.isLocal);
    const spilledHere = [...use.refs].filter((v) => this.spilled.has(v));
    this.rc = {
      multi, ctx: r.ctx, loops: [], blocks: 0,
      available: new Set(spilledHere.filter((v) => !use.declTop.has(v))),
      written: new Set(spilledHere.filter((v) => use.written.has(v))),
    };
    const top = this.label('inv');
    f.i32(0).set(L.li);
    f.loop(top).block('next');
    if (multi) {
      const m = r.ctx.masks[r.ctx.masks.length - 1]!;
      this.maskAt(m).mem('i32.load8_u', this.mask(m)).op('i32.eqz').brIf('next');
    }
    this.invocationIds();
    for (const v of spilledHere) if (!use.declTop.has(v)) this.loadSpill(v);
    for (const it of r.items) {
      this.newStatement();
      switch (it.k) {
        case 'stmt': this.stmt(it.s); break;
        case 'cond':
          this.ex(it.cond, 0);
          f.if(this.label('c'));
          this.maskAt(it.then).i32(1).mem('i32.store8', this.mask(it.then));
          if (it.else) { f.else(); this.maskAt(it.else).i32(1).mem('i32.store8', this.mask(it.else)); }
          f.end();
          break;
        case 'loopCond':
          this.ex(it.cond, 0);
          f.op('i32.eqz').if(this.label('lc'));
          this.maskAt(it.mask).i32(0).mem('i32.store8', this.mask(it.mask));
          f.end();
          break;
        case 'deposit': {
          const o = this.sgSlots(it.id, !!it.sg.b);
          this.slot(4); this.ex(it.sg.a, 0); f.mem(vt(it.sg.t) === 'f32' ? 'f32.store' : 'i32.store', o.v);
          if (it.sg.b) { this.slot(4); this.ex(it.sg.b, 0); f.mem('i32.store', o.l); }
          break;
        }
      }
    }
    for (const v of spilledHere) if (use.written.has(v)) this.storeSpill(v);
    f.end(); // next
    f.get(L.li).i32(1).op('i32.add').tee(L.li).i32(this.n).op('i32.lt_u').brIf(top);
    f.end();
  }

  private sgSlots(id: number, lanes: boolean): { v: number; l: number } {
    let o = this.sgOffset.get(id);
    if (!o) { o = { v: this.alloc(this.n * 4), l: lanes ? this.alloc(this.n * 4) : -1 }; this.sgOffset.set(id, o); }
    return o;
  }

  /** localId / globalId of invocation li, where the kernel reads them. */
  private invocationIds(): void {
    const f = this.f, L = this.L, [X, Y, Z] = this.wg;
    if (!this.usesLocalId && !this.usesGlobalId) return;
    if (Y * Z === 1) f.get(L.li).set(L.lx); else f.get(L.li).i32(X).op('i32.rem_u').set(L.lx);
    if (Y === 1) f.i32(0).set(L.ly);
    else { f.get(L.li).i32(X).op('i32.div_u'); if (Z !== 1) f.i32(Y).op('i32.rem_u'); f.set(L.ly); }
    if (Z === 1) f.i32(0).set(L.lz); else f.get(L.li).i32(X * Y).op('i32.div_u').set(L.lz);
    if (this.usesGlobalId) {
      const g = (wgl: number, n: number, l: number, out: number) => {
        if (n === 1) f.get(wgl).set(out); else f.get(wgl).i32(n).op('i32.mul').get(l).op('i32.add').set(out);
      };
      g(L.wgX, X, L.lx, L.gx); g(L.wgY, Y, L.ly, L.gy); g(L.wgZ, Z, L.lz, L.gz);
    }
  }

  private anyOf(m: string): void { this.f.get(this.L.scratch).i32(this.mask(m)).op('i32.add').i32(this.n).call(FN.any); }
  private copyMask(dst: string, src: string): void {
    const f = this.f, L = this.L;
    f.get(L.scratch).i32(this.mask(dst)).op('i32.add').get(L.scratch).i32(this.mask(src)).op('i32.add').i32(this.n).copy();
  }

  private emitWg(nodes: Wg[]): void {
    const f = this.f;
    for (const n of nodes) {
      switch (n.k) {
        case 'region': this.emitRegion(n.r, true); break;
        case 'barrier': break; // regions already run one after another
        case 'sg': this.emitSubgroup(n); break;
        case 'if':
          this.anyOf(n.t); f.if(this.label('wif')); this.emitWg(n.then); f.end();
          if (n.e) { this.anyOf(n.e); f.if(this.label('wel')); this.emitWg(n.else); f.end(); }
          break;
        case 'loop': {
          const brk = this.label('wbrk'), top = this.label('wtop');
          this.copyMask(n.l, n.parent);
          f.block(brk).loop(top);
          this.emitWg(n.pre);
          this.anyOf(n.l); f.op('i32.eqz').brIf(brk);
          this.copyMask(n.i, n.l);
          this.emitWg(n.body);
          this.emitWg(n.post);
          f.br(top).end().end();
          break;
        }
      }
    }
  }

  /**
   * A subgroup operation over the deposited operands, as the JS executor's $sgReduce/$sgShuffle:
   * reductions follow the shuffle-xor butterfly with inactive lanes at the identity.
   */
  private emitSubgroup(n: Extract<Wg, { k: 'sg' }>): void {
    const f = this.f, L = this.L, { sg, id } = n, N = this.n, S = this.sg;
    const mask = n.ctx.masks[n.ctx.masks.length - 1]!, mOff = this.mask(mask);
    const o = this.sgSlots(id, !!sg.b), dst = this.spillOffset.get(sg.name)!;
    const t = sg.t, ty = vt(t), load = ty === 'f32' ? 'f32.load' : 'i32.load', store = ty === 'f32' ? 'f32.store' : 'i32.store';
    const i = f.local('i32'), b = f.local('i32'), l = f.local('i32');
    const at = (local: number, size: number) => { f.get(L.scratch).get(local); if (size > 1) f.i32(size).op('i32.mul'); f.op('i32.add'); };
    if (sg.op === 'shuffleXor' || sg.op === 'broadcast') {
      const lane = f.local('i32'), from = f.local('i32'), top = this.label('shf');
      f.i32(0).set(i).loop(top).block('shnext');
      at(i, 1); f.mem('i32.load8_u', mOff).op('i32.eqz').brIf('shnext');
      f.get(i).get(i).i32(S - 1).op('i32.and').op('i32.sub').set(b);
      at(i, 4); f.mem('i32.load', o.l);
      if (sg.op === 'shuffleXor') f.get(i).get(b).op('i32.sub').op('i32.xor');
      f.set(lane);
      f.get(b).get(lane).op('i32.add').set(from);
      // dst[i] = src[from] when the lane is in the subgroup and exists, else src[i]
      at(i, 4);
      f.get(lane).i32(S).op('i32.lt_u').get(from).i32(N).op('i32.lt_u').op('i32.and');
      f.if(this.label('inr'), ty); at(from, 4); f.mem(load, o.v); f.else(); at(i, 4); f.mem(load, o.v); f.end();
      f.mem(store, dst);
      f.end().get(i).i32(1).op('i32.add').tee(i).i32(N).op('i32.lt_u').brIf(top).end();
      return;
    }
    if (this.sgTmp < 0) this.sgTmp = this.alloc(128 * 4);
    const T = this.sgTmp, anyL = f.local('i32'), off = f.local('i32'), r = f.local(ty);
    const identity = () => {
      if (sg.op === 'add') { if (ty === 'f32') f.f32(0); else f.i32(0); return; }
      const max = sg.op === 'max';
      if (ty === 'f32') f.f32(max ? -Infinity : Infinity);
      else if (t === 'u32') f.i32(max ? 0 : -1);
      else f.i32(max ? -2147483648 : 2147483647);
    };
    const combine = () => {
      if (sg.op === 'add') { f.op(ty === 'f32' ? 'f32.add' : 'i32.add'); this.round(t); return; }
      const max = sg.op === 'max';
      if (ty === 'f32') { f.op(max ? 'f32.max' : 'f32.min'); return; }
      const y = f.local('i32'), x = f.local('i32');
      f.set(y).set(x).get(x).get(y).get(x).get(y)
        .op(max ? (t === 'u32' ? 'i32.gt_u' : 'i32.gt_s') : (t === 'u32' ? 'i32.lt_u' : 'i32.lt_s')).op('select');
    };
    const tmpAt = (local: number) => { f.get(L.scratch).get(local).i32(4).op('i32.mul').op('i32.add'); };
    const blocks = this.label('sgb'), lanesL = this.label('sgl'), offL = this.label('sgo'), pairL = this.label('sgp'), outL = this.label('sgw');
    f.i32(0).set(b).loop(blocks);
    f.block('sgnext');
    // Gather: tmp[l] = active ? src[b + l] : identity
    f.i32(0).set(anyL).i32(0).set(l).loop(lanesL);
    f.get(b).get(l).op('i32.add').set(i);
    tmpAt(l);
    f.get(i).i32(N).op('i32.lt_u');
    f.if(this.label('in'), 'i32'); at(i, 1); f.mem('i32.load8_u', mOff).i32(0).op('i32.ne'); f.else(); f.i32(0); f.end();
    f.if(this.label('act'), ty); at(i, 4); f.mem(load, o.v); f.i32(1).set(anyL); f.else(); identity(); f.end();
    f.mem(store, T);
    f.get(l).i32(1).op('i32.add').tee(l).i32(S).op('i32.lt_u').brIf(lanesL).end();
    f.get(anyL).op('i32.eqz').brIf('sgnext');
    // Butterfly: for off = S/2 .. 1: tmp[l] = tmp[l] op tmp[l + off], l < off
    if (S > 1) {
      f.i32(S >> 1).set(off).loop(offL);
      f.i32(0).set(l).loop(pairL);
      tmpAt(l); tmpAt(l); f.mem(load, T); f.get(l).get(off).op('i32.add').set(i); tmpAt(i); f.mem(load, T); combine(); f.mem(store, T);
      f.get(l).i32(1).op('i32.add').tee(l).get(off).op('i32.lt_u').brIf(pairL).end();
      f.get(off).i32(1).op('i32.shr_u').tee(off).brIf(offL).end();
    }
    f.get(L.scratch).mem(load, T).set(r);
    // Write the result to the active lanes of the subgroup.
    f.get(b).set(i).block('sgwd').loop(outL);
    f.get(i).get(b).i32(S).op('i32.add').op('i32.ge_u').get(i).i32(N).op('i32.ge_u').op('i32.or').brIf('sgwd');
    at(i, 1); f.mem('i32.load8_u', mOff).if(this.label('wa')); at(i, 4); f.get(r).mem(store, dst); f.end();
    f.get(i).i32(1).op('i32.add').set(i).br(outL).end().end();
    f.end(); // sgnext
    f.get(b).i32(S).op('i32.add').tee(b).i32(N).op('i32.lt_u').brIf(blocks).end();
  }

  emit(): WasmKernel {
    const ir = this.ir;
    // run(start, end, nwgX, nwgY, nwgZ, args, scratch)
    const f = (this.f = new FnBuilder(['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'], []));
    const L = this.L;
    L.ngx = 2; L.ngy = 3; L.ngz = 4; L.scratch = 6;
    for (const k of ['li', 'lx', 'ly', 'lz', 'gx', 'gy', 'gz', 'wgX', 'wgY', 'wgZ'] as const) L[k] = f.local('i32');
    const w = f.local('i32');
    this.bufBase = ir.buffers.map(() => f.local('i32'));
    ir.uniforms.forEach((u) => this.uniLocal.set(u.name, f.local(vt(u.t))));
    const nb = ir.buffers.length;
    this.bufBase.forEach((l, i) => f.get(5).mem('i32.load', 4 * i).set(l));
    ir.uniforms.forEach((u, j) => f.get(5).mem(vt(u.t) === 'f32' ? 'f32.load' : 'i32.load', 4 * (nb + j)).set(this.uniLocal.get(u.name)!));
    L.f16 = f.local('i32');
    f.get(5).mem('i32.load', 4 * (nb + ir.uniforms.length)).set(L.f16);

    // Workgroup memory first in scratch: zeroed per workgroup in one fill.
    for (const s of ir.shared) this.sharedOffset.set(s.name, this.alloc(s.length * 4));
    const sharedBytes = this.scratchTop;
    const multi = this.body.some(isSync);
    let root: Wg[] = [];
    if (multi) {
      let masks = 0;
      const lowering = new WorkgroupLowering(() => `$m${++masks}`, (m) => this.fail(m));
      root = lowering.lower(this.body);
      const count = new Map<string, number>();
      for (const r of regionsOf(root)) {
        r.use = regionUse(r.items, this.isLocal);
        for (const v of r.use.refs) count.set(v, (count.get(v) ?? 0) + 1);
      }
      this.spilled = new Set([...count].filter(([, c]) => c > 1).map(([v]) => v));
      for (const v of lowering.forcedSpill) this.spilled.add(v);
      this.mask('$alive');
    }
    this.layoutSpills();

    f.get(0).set(w);
    f.block('wgdone').loop('wg');
    f.get(w).get(1).op('i32.ge_u').brIf('wgdone');
    // x = w % nx, r = w / nx, y = r % ny, z = r / ny
    f.get(w).get(2).op('i32.rem_u').set(L.wgX);
    f.get(w).get(2).op('i32.div_u').tee(L.wgZ).get(3).op('i32.rem_u').set(L.wgY);
    f.get(L.wgZ).get(3).op('i32.div_u').set(L.wgZ);
    if (sharedBytes > 0) f.get(L.scratch).i32(0).i32(sharedBytes).fill();
    if (multi) {
      f.get(L.scratch).i32(this.mask('$alive')).op('i32.add').i32(1).i32(this.n).fill();
      this.emitWg(root);
    } else {
      this.emitRegion({ ctx: { masks: [] }, pre: [], items: this.body.map((s) => ({ k: 'stmt', s })) }, false);
    }
    f.get(w).i32(1).op('i32.add').set(w).br('wg');
    f.end().end();

    const fns = [f, ...helperFunctions()];
    const bytes = encodeModule(MATH_IMPORTS, fns, { run: FN.run });
    return { bytes, scratchBytes: Math.max(16, this.scratchTop), argWords: nb + ir.uniforms.length + 1, simdGroups: this.packedGroups, vectorOperands: this.vectorOperands };
  }
}
