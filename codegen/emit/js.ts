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
import type { Expr, KernelIR } from '../dsl/ir.js';
import { type DType, elemOf, isVec, widthOf } from '../dsl/types.js';
import {
  JsExpressions, type JsEmitOptions, KIND, type ProfileSite, SHARED_ARRAY, SPILL_ARRAY, XYZW, bare, jsId,
} from './js-expr.js';
import {
  type Region, SubgroupHoister, type Wg, type WgCtx, WorkgroupLowering, type XStmt, collectLoweredDecls, isSync, regionUse, regionsOf,
} from './js-lower.js';
import { CHECK_RUNTIME, PROFILE_RUNTIME, helperSource } from './js-runtime.js';
import { lowerMma } from './mma.js';

export type { JsEmitOptions, ProfileSite } from './js-expr.js';
export { f16BitsToF32, f32ToF16Bits } from './js-expr.js';

/** Source text of the workgroup function for `ir` (see the file header for how to call it). */
export function emitJS(ir: KernelIR, opts: JsEmitOptions = {}): string {
  return new JsEmitter(lowerMma(ir), opts).emit();
}

/**
 * emitJS in profiling mode, with the static sites its `$pf` calls number. make(ctx) sets
 * ctx.profile (see PROFILING in js-helpers.ts) and each workgroup adds its counts there.
 */
export function emitProfiledJS(ir: KernelIR, opts: JsEmitOptions = {}): { source: string; sites: ProfileSite[] } {
  const e = new JsEmitter(lowerMma(ir), { ...opts, profile: true });
  const source = e.emit();
  return { source, sites: e.sites };
}

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

class JsEmitter extends JsExpressions {
  private readonly body: XStmt[];
  private readonly state: string[] = [];
  private masks = 0;
  private regionCount = 0;
  /** Region functions, emitted inside make(). */
  private readonly fns: string[] = [];
  private rc!: RegionCtx;

  constructor(ir: KernelIR, opts: JsEmitOptions) {
    super(ir, opts);
    this.body = new SubgroupHoister().stmts(ir.body);
    this.collectDecls(this.body);
  }

  private readonly isLocal = (name: string): boolean => this.vars.has(name) || this.privs.has(name);

  private mask(): string {
    const m = `$m${++this.masks}`;
    this.state.push(`const ${m} = new Uint8Array(${this.n});`);
    return m;
  }

  // ---- declarations --------------------------------------------------------------------------
  private collectDecls(list: XStmt[]): void {
    const d = collectLoweredDecls(list);
    for (const [name, t] of d.vars) this.vars.set(name, t);
    // Private arrays indexed only by constants become one local per element (scalar).
    for (const a of d.privateArrays) this.privs.set(a.name, { name: a.name, js: jsId(a.name), t: a.t, length: a.length, scalar: a.scalar, id: this.privs.size });
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
          if (s.space === 'storage' && this.buf(s.name).vec > 1) {
            // Every component is read before any is written (the value may read the same element).
            const vals = this.materialize(this.ex(s.value));
            return this.vectorRefs(s.name, s.index, 1).map((target, c) => `${target} = ${bare(vals[c]!)};`);
          }
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
      // Atomics are sequentially consistent: plain writes before an Atomics operation are seen by
      // a thread whose Atomics operation reads its result, so the fence itself emits nothing.
      case 'fence': out.push(`${ind}// device-scope fence`); return;
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
      if (this.profile) i = this.materialize([this.profiled(s.space, s.name, i, 2, s.index)])[0]!;
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
  /**
   * A region becomes a function of its own (small functions optimise sooner and independently),
   * called from the workgroup-level code: one loop over the invocations active in its mask.
   */
  private emitRegion(r: Region, multi: boolean, out: string[], ind: string): void {
    for (const p of r.pre) out.push(ind + p);
    const use = r.use ?? regionUse(r.items, this.isLocal);
    const spilledHere = [...use.refs].filter((v) => this.spilled.has(v));
    this.rc = {
      multi, ctx: r.ctx, plainLoops: 0, blocks: 0,
      available: new Set(spilledHere.filter((v) => !use.declTop.has(v))),
      written: new Set(spilledHere.filter((v) => use.written.has(v))),
    };
    const loads: string[] = [];
    for (const v of spilledHere) {
      if (!use.declTop.has(v)) loads.push(...this.loadLines(v, use.written.has(v)));
      // Private arrays declared in this region need their base before the declaration.
      else if (this.privs.has(v)) loads.push(`const ${this.privs.get(v)!.js}$b = $li * ${this.privs.get(v)!.length};`);
    }
    this.builtins = new Set();
    this.usedBufs = new Set();
    this.usedUnis = new Set();
    const inner = '      ';
    const body: string[] = [];
    for (const it of r.items) {
      switch (it.k) {
        case 'stmt': this.stmt(it.s, body, inner); break;
        case 'cond':
          this.withPrelude(body, inner, () => [it.else
            ? `if (${bare(this.sc(it.cond))}) ${it.then}[$li] = 1; else ${it.else}[$li] = 1;`
            : `if (${bare(this.sc(it.cond))}) ${it.then}[$li] = 1;`]);
          break;
        case 'loopCond':
          this.withPrelude(body, inner, () => [`if (!${this.sc(it.cond)}) ${it.mask}[$li] = 0;`]);
          break;
        case 'deposit':
          this.withPrelude(body, inner, () => [`$sgv${it.id}[$li] = ${bare(this.sc(it.sg.a))};`,
            ...(it.sg.b ? [`$sgl${it.id}[$li] = ${bare(this.sc(it.sg.b))};`] : [])]);
          break;
      }
    }
    const name = `$region${++this.regionCount}`;
    const fn: string[] = [`  function ${name}() {`];
    const bufs = this.ir.buffers.flatMap((b, i) => (this.usedBufs.has(b.name) ? [`${jsId(b.name)} = $B[${i}]`] : []));
    const unis = this.ir.uniforms.flatMap((u, i) => (this.usedUnis.has(u.name) ? [`${jsId(u.name)} = $U[${i}]`] : []));
    if (bufs.length) fn.push(`    const ${bufs.join(', ')};`);
    if (unis.length) fn.push(`    const ${unis.join(', ')};`);
    const b = this.builtins;
    if (b.has('workgroupId') || b.has('globalId')) fn.push('    const $wgX = $WG[0], $wgY = $WG[1], $wgZ = $WG[2];');
    if (b.has('numWorkgroups')) fn.push('    const $nwgX = $WG[3], $nwgY = $WG[4], $nwgZ = $WG[5];');
    // fma's temporaries (js-expr.ts), per nesting depth: the f64 sum, it rounded, the f32 value
    // beyond it, the product, the addend.
    const fmaDepths = new Set(body.flatMap((l) => [...l.matchAll(/\$fs(\d+)/g)].map((m) => m[1]!)));
    for (const d of fmaDepths) fn.push(`    let $fs${d} = 0, $fr${d} = 0, $fo${d} = 0, $fp${d} = 0, $fc${d} = 0;`);
    fn.push(`    $inv: for (let $li = 0; $li < ${this.n}; $li++) {`);
    if (multi) fn.push(`${inner}if (${r.ctx.masks[r.ctx.masks.length - 1]}[$li] === 0) continue;`);
    for (const l of this.builtinLines()) fn.push(inner + l);
    for (const l of loads) fn.push(inner + l);
    fn.push(...body);
    for (const v of spilledHere) if (use.written.has(v)) for (const l of this.storeLines(v)) fn.push(inner + l);
    fn.push('    }', '  }');
    this.fns.push(...fn);
    out.push(`${ind}${name}();`);
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
          if (!this.check) { out.push(`${ind}// workgroup barrier`); break; }
          {
            // At the top level every invocation still running reaches it; inside masks, check.
            const m = n.ctx.masks[n.ctx.masks.length - 1]!;
            out.push(`${ind}${m === '$alive' ? '' : `$ckBarrier(${n.id}, ${m}, $alive); `}$epoch++; // workgroup barrier`);
          }
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
    if (this.check && mask !== '$alive') out.push(`${ind}$ckSubgroup(${id}, ${mask}, $alive, ${this.sg});`);
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
      const lowering = new WorkgroupLowering(() => this.mask(), (m) => this.fail(m));
      const root = lowering.lower(this.body);
      // A local referenced by two regions (or written at the workgroup level) is kept per invocation.
      const count = new Map<string, number>();
      for (const r of regionsOf(root)) {
        r.use = regionUse(r.items, this.isLocal);
        for (const v of r.use.refs) count.set(v, (count.get(v) ?? 0) + 1);
      }
      this.spilled = new Set([...count].filter(([, c]) => c > 1).map(([v]) => v));
      for (const v of lowering.forcedSpill) this.spilled.add(v);
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
    if (this.profile) lines.push(...this.profileState().map((l) => '  ' + l));
    for (const s of ir.shared) {
      lines.push(`  const ${jsId(s.name)} = new ${SHARED_ARRAY[s.t]}(${s.length}); // workgroup memory`);
    }
    lines.push(...this.state.map((l) => '  ' + l));
    lines.push('  // The running workgroup: its id and the grid size, the buffers and uniform values.');
    lines.push('  const $WG = new Uint32Array(6);', '  let $B = [], $U = [];');
    lines.push(...this.fns);
    lines.push(`  return function ${fnName}($wgX, $wgY, $wgZ, $nwgX, $nwgY, $nwgZ, $buffers, $uniforms) {`);
    lines.push('    $WG[0] = $wgX; $WG[1] = $wgY; $WG[2] = $wgZ; $WG[3] = $nwgX; $WG[4] = $nwgY; $WG[5] = $nwgZ;');
    lines.push('    $B = $buffers; $U = $uniforms;');
    if (this.check) lines.push(`    $wid = '(' + $wgX + ',' + $wgY + ',' + $wgZ + ')'; $epoch++;`);
    for (const s of ir.shared) lines.push(`    ${jsId(s.name)}.fill(0);`);
    lines.push(...code);
    if (this.profile) lines.push('    $pfFlush(); // the memory-access model counts this workgroup\'s requests');
    lines.push('  };', '};', '');
    return lines.join('\n');
  }

  /** Profiling state: per site its static facts, per-invocation instance counters and index log. */
  private profileState(): string[] {
    const n = this.n, S = this.sites.length;
    const facts = this.sites.map((s) => `[${s.space === 'global' ? 0 : 1}, ${s.bytes}, ${s.array}]`);
    return [
      `const $PF_N = ${n}, $PF_SITE = [${facts.join(', ')}];`,
      `const $PF_CNT = [${Array.from({ length: S }, () => `new Int32Array(${n})`).join(', ')}];`,
      `const $PF_LOG = [${Array.from({ length: S }, () => `new Float64Array(${n * 4}).fill(-1)`).join(', ')}];`,
      `const $PF_MAX = new Int32Array(${S}), $pfLanes = new Float64Array(32), $pfTmp = new Float64Array(128), $pfBanks = new Int32Array(32), $pfOut = new Float64Array(3);`,
      `const $pfp = $ctx.profile = { totals: new Float64Array(${S * 6}), seen: [] };`,
      ...PROFILE_RUNTIME.split('\n'),
    ];
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
    const lines = [
      `// Kernel '${ir.name}' for the Kiln CPU executor (generated by codegen/emit/js.ts; do not edit).`,
      `// params: ${JSON.stringify(ir.params)}`,
      `// workgroup: ${X}x${Y}x${Z} (${this.n} invocations); grid: ${ir.gridDoc || '(see the kernel)'}`,
      `// bindings: ${ir.buffers.map((b) => `${b.key}: ${b.vec > 1 ? `vec${b.vec}<${b.t}>` : b.t} ${b.access}${b.atomic ? ' atomic' : ''}`).join(', ') || 'none'}`,
      `// uniforms: ${ir.uniforms.map((u) => `${u.key}: ${u.t}`).join(', ') || 'none'}`,
      `// checking: ${this.check ? 'on' : 'off'}; subgroup size ${this.sg}${this.profile ? '; profiling: on' : ''}`,
    ];
    return lines.map((l) => l.replace(/[\r\n\u2028\u2029]+/g, ' '));
  }
}
