// Lowering for the JS emitter: subgroup operations hoisted to statements of their own, then the
// kernel body cut at its sync points (barriers, subgroup operations) into regions — runs of
// per-invocation statements — under workgroup-level control flow over invocation masks.
import type { Expr, Stmt, SubgroupOp } from '../dsl/ir.js';
import type { DType, Scalar } from '../dsl/types.js';
import { forEachExpr, mapExpr } from '../dsl/walk.js';

export type SgStmt = { k: '$sg'; name: string; t: Scalar; op: SubgroupOp; a: Expr; b?: Expr };
export type XStmt =
  | Exclude<Stmt, { k: 'if' | 'for' | 'while' }>
  | { k: 'if'; cond: Expr; then: XStmt[]; else: XStmt[] }
  | { k: 'for'; name: string; t: 'i32' | 'u32'; from: Expr; to: Expr; step: Expr; body: XStmt[] }
  | { k: 'while'; cond: Expr; body: XStmt[] }
  // A loop whose condition or step needed hoisted statements: pre; if (!cond) break; body; post.
  | { k: '$loop'; pre: XStmt[]; cond: Expr; body: XStmt[]; post: XStmt[] }
  | SgStmt;

/** Moves every subgroup operation into a `$sg` statement of its own (a sync point). */
export class SubgroupHoister {
  private n = 0;
  expr(e: Expr, out: XStmt[]): Expr {
    const inner = mapExpr(e, (x) => this.expr(x, out));
    if (inner.k !== 'subgroup') return inner;
    const name = `$sg${++this.n}`;
    out.push({ k: '$sg', name, t: inner.t as Scalar, op: inner.op, a: inner.a, b: inner.b });
    return { k: 'var', t: inner.t, name };
  }
  stmts(list: Stmt[]): XStmt[] {
    const out: XStmt[] = [];
    for (const s of list) this.stmt(s, out);
    return out;
  }
  private stmt(s: Stmt, out: XStmt[]): void {
    switch (s.k) {
      case 'let': out.push({ ...s, init: this.expr(s.init, out) }); return;
      case 'assign': out.push({ ...s, value: this.expr(s.value, out) }); return;
      case 'store': out.push({ ...s, index: this.expr(s.index, out), value: this.expr(s.value, out) }); return;
      case 'atomic': {
        const index = this.expr(s.index, out), value = this.expr(s.value, out);
        out.push({ ...s, index, value, compare: s.compare && this.expr(s.compare, out) });
        return;
      }
      case 'if': {
        const cond = this.expr(s.cond, out);
        out.push({ k: 'if', cond, then: this.stmts(s.then), else: this.stmts(s.else) });
        return;
      }
      case 'for': {
        const from = this.expr(s.from, out);
        const pre: XStmt[] = [], post: XStmt[] = [];
        const to = this.expr(s.to, pre), step = this.expr(s.step, post);
        const body = this.stmts(s.body);
        if (!pre.length && !post.length) { out.push({ ...s, from, body }); return; }
        const v: Expr = { k: 'var', t: s.t, name: s.name };
        out.push({ k: 'let', name: s.name, t: s.t, init: from, mutable: true });
        post.push({ k: 'assign', name: s.name, value: { k: 'bin', t: s.t, op: 'add', a: v, b: step } });
        out.push({ k: '$loop', pre, cond: { k: 'bin', t: 'bool', op: 'lt', a: v, b: to }, body, post });
        return;
      }
      case 'while': {
        const pre: XStmt[] = [];
        const cond = this.expr(s.cond, pre);
        const body = this.stmts(s.body);
        out.push(pre.length ? { k: '$loop', pre, cond, body, post: [] } : { k: 'while', cond, body });
        return;
      }
      default: out.push(s);
    }
  }
}

export function isSync(s: XStmt): boolean {
  switch (s.k) {
    case 'barrier': case '$sg': return true;
    case 'if': return s.then.some(isSync) || s.else.some(isSync);
    case 'for': case 'while': return s.body.some(isSync);
    case '$loop': return s.pre.some(isSync) || s.body.some(isSync) || s.post.some(isSync);
    default: return false;
  }
}

// ---- workgroup-level program ---------------------------------------------------------------------
/** Masks enclosing a point (root first) and, inside a workgroup-level loop, which are its masks. */
export interface WgCtx { masks: string[]; loop?: { lIdx: number; iIdx: number } }
export type Item =
  | { k: 'stmt'; s: XStmt }
  | { k: 'cond'; cond: Expr; then: string; else?: string }
  | { k: 'loopCond'; cond: Expr; mask: string }
  | { k: 'deposit'; sg: SgStmt; id: number };
export interface RegionUse { refs: Set<string>; written: Set<string>; declTop: Set<string> }
export interface Region { ctx: WgCtx; pre: string[]; items: Item[]; use?: RegionUse }
export type Wg =
  | { k: 'region'; r: Region }
  | { k: 'barrier'; ctx: WgCtx; id: number }
  | { k: 'sg'; sg: SgStmt; id: number; ctx: WgCtx }
  | { k: 'if'; t: string; e?: string; then: Wg[]; else: Wg[] }
  | { k: 'loop'; l: string; i: string; parent: string; pre: Wg[]; body: Wg[]; post: Wg[] };

/**
 * Builds the workgroup-level program. Each `if` with a sync point inside gets a then/else mask,
 * each such loop a loop mask (still in the loop) and an iteration mask (not yet `continue`d); a
 * region runs the invocations active in the innermost mask around it.
 */
export class WorkgroupLowering {
  barriers = 0;
  sgOps = 0;
  /** Subgroup results: written at the workgroup level, so always kept per invocation. */
  readonly forcedSpill = new Set<string>();
  private out: Wg[] = [];
  private cur: Region | null = null;

  constructor(private readonly newMask: () => string, private readonly fail: (msg: string) => never) {}

  /** The program for a kernel body; the root mask is `$alive` (invocations that have not returned). */
  lower(body: XStmt[]): Wg[] {
    this.lowerSeq(body, { masks: ['$alive'] });
    return this.out;
  }

  private addItem(ctx: WgCtx, it: Item): Region {
    if (!this.cur || this.cur.ctx !== ctx) {
      this.cur = { ctx, pre: [], items: [] };
      this.out.push({ k: 'region', r: this.cur });
    }
    this.cur.items.push(it);
    return this.cur;
  }
  private sub(fn: () => void): Wg[] {
    const saved = this.out;
    this.out = [];
    this.cur = null;
    fn();
    const r = this.out;
    this.out = saved;
    this.cur = null;
    return r;
  }

  private lowerSeq(list: XStmt[], ctx: WgCtx): void {
    for (const s of list) {
      if (!isSync(s)) { this.addItem(ctx, { k: 'stmt', s }); continue; }
      switch (s.k) {
        case 'barrier':
          this.cur = null;
          this.out.push({ k: 'barrier', ctx, id: ++this.barriers });
          break;
        case '$sg': {
          const id = ++this.sgOps;
          this.addItem(ctx, { k: 'deposit', sg: s, id });
          this.cur = null;
          this.forcedSpill.add(s.name);
          this.out.push({ k: 'sg', sg: s, id, ctx });
          break;
        }
        case 'if': {
          const t = this.newMask(), e = s.else.length ? this.newMask() : undefined;
          this.addItem(ctx, { k: 'cond', cond: s.cond, then: t, else: e }).pre.push(`${t}.fill(0);${e ? ` ${e}.fill(0);` : ''}`);
          this.cur = null;
          const then = this.sub(() => this.lowerSeq(s.then, { ...ctx, masks: [...ctx.masks, t] }));
          const els = e ? this.sub(() => this.lowerSeq(s.else, { ...ctx, masks: [...ctx.masks, e] })) : [];
          this.out.push({ k: 'if', t, e, then, else: els });
          break;
        }
        case 'for': {
          const v: Expr = { k: 'var', t: s.t, name: s.name };
          this.addItem(ctx, { k: 'stmt', s: { k: 'let', name: s.name, t: s.t, init: s.from, mutable: true } });
          this.lowerLoop(ctx, [], { k: 'bin', t: 'bool', op: 'lt', a: v, b: s.to }, s.body,
            [{ k: 'assign', name: s.name, value: { k: 'bin', t: s.t, op: 'add', a: v, b: s.step } }]);
          break;
        }
        case 'while': this.lowerLoop(ctx, [], s.cond, s.body, []); break;
        case '$loop': this.lowerLoop(ctx, s.pre, s.cond, s.body, s.post); break;
        default: this.fail(`unexpected sync statement ${s.k}`);
      }
    }
  }

  private lowerLoop(ctx: WgCtx, pre: XStmt[], cond: Expr, body: XStmt[], post: XStmt[]): void {
    this.cur = null;
    const l = this.newMask(), i = this.newMask(), n = ctx.masks.length;
    const lctx: WgCtx = { masks: [...ctx.masks, l], loop: ctx.loop };
    const preWg = this.sub(() => {
      this.lowerSeq(pre, lctx);
      this.addItem(lctx, { k: 'loopCond', cond, mask: l });
    });
    const bodyWg = this.sub(() => this.lowerSeq(body, { masks: [...ctx.masks, l, i], loop: { lIdx: n, iIdx: n + 1 } }));
    const postWg = this.sub(() => this.lowerSeq(post, lctx));
    this.out.push({ k: 'loop', l, i, parent: ctx.masks[n - 1]!, pre: preWg, body: bodyWg, post: postWg });
  }
}

/** Locals and private arrays a region touches: referenced, written, declared at its top level. */
export function regionUse(items: Item[], isLocal: (name: string) => boolean): RegionUse {
  const u: RegionUse = { refs: new Set(), written: new Set(), declTop: new Set() };
  const ref = (n: string) => { if (isLocal(n)) u.refs.add(n); };
  const expr = (e: Expr) => forEachExpr(e, (x) => {
    if (x.k === 'var') ref(x.name);
    else if (x.k === 'load' && x.space === 'private') ref(x.name);
  });
  const decl = (n: string, depth: number) => { ref(n); u.written.add(n); if (depth === 0) u.declTop.add(n); };
  const stmt = (s: XStmt, d: number): void => {
    switch (s.k) {
      case 'let': expr(s.init); decl(s.name, d); break;
      case 'assign': expr(s.value); ref(s.name); u.written.add(s.name); break;
      case 'store': expr(s.index); expr(s.value); if (s.space === 'private') { ref(s.name); u.written.add(s.name); } break;
      case 'privateArray': decl(s.name, d); break;
      case 'if': expr(s.cond); s.then.forEach((x) => stmt(x, d + 1)); s.else.forEach((x) => stmt(x, d + 1)); break;
      case 'for': expr(s.from); expr(s.to); expr(s.step); decl(s.name, d + 1); s.body.forEach((x) => stmt(x, d + 1)); break;
      case 'while': expr(s.cond); s.body.forEach((x) => stmt(x, d + 1)); break;
      case 'atomic': expr(s.index); expr(s.value); if (s.compare) expr(s.compare); if (s.result) decl(s.result, d); break;
      default: break;
    }
  };
  for (const it of items) {
    if (it.k === 'stmt') stmt(it.s, 0);
    else if (it.k === 'deposit') { expr(it.sg.a); if (it.sg.b) expr(it.sg.b); }
    else expr(it.cond);
  }
  return u;
}

/** Every region of a workgroup program, in order. */
export function regionsOf(nodes: Wg[], acc: Region[] = []): Region[] {
  for (const n of nodes) {
    if (n.k === 'region') acc.push(n.r);
    else if (n.k === 'if') { regionsOf(n.then, acc); regionsOf(n.else, acc); }
    else if (n.k === 'loop') { regionsOf(n.pre, acc); regionsOf(n.body, acc); regionsOf(n.post, acc); }
  }
  return acc;
}

/** What a lowered body declares: the JS and WebAssembly emitters size their locals from it. */
export interface LoweredDecls {
  /** Type of every let, loop counter, hoisted subgroup result and atomic result. */
  vars: Map<string, DType>;
  /** Private arrays in declaration order; `scalar` when indexed only by constants (and short),
   *  so that each element can be a local of its own. */
  privateArrays: { name: string; t: Scalar; length: number; scalar: boolean }[];
}

/** One walk over a lowered body for both CPU emitters; `onExpr` sees every expression too. */
export function collectLoweredDecls(list: XStmt[], onExpr?: (e: Expr) => void): LoweredDecls {
  const vars = new Map<string, DType>();
  const arrays: { name: string; t: Scalar; length: number }[] = [];
  const nonConst = new Set<string>();
  const visitExpr = (e: Expr) => forEachExpr(e, (x) => {
    if (x.k === 'load' && x.space === 'private' && x.index.k !== 'const') nonConst.add(x.name);
    onExpr?.(x);
  });
  const visit = (ss: XStmt[]) => {
    for (const s of ss) {
      switch (s.k) {
        case 'let': vars.set(s.name, s.t); visitExpr(s.init); break;
        case 'assign': visitExpr(s.value); break;
        case 'store':
          visitExpr(s.index); visitExpr(s.value);
          if (s.space === 'private' && s.index.k !== 'const') nonConst.add(s.name);
          break;
        case 'privateArray': arrays.push({ name: s.name, t: s.t, length: s.length }); break;
        case 'if': visitExpr(s.cond); visit(s.then); visit(s.else); break;
        case 'for': vars.set(s.name, s.t); visitExpr(s.from); visitExpr(s.to); visitExpr(s.step); visit(s.body); break;
        case 'while': visitExpr(s.cond); visit(s.body); break;
        case '$loop': visit(s.pre); visitExpr(s.cond); visit(s.body); visit(s.post); break;
        case '$sg': vars.set(s.name, s.t); visitExpr(s.a); if (s.b) visitExpr(s.b); break;
        case 'atomic':
          if (s.result) vars.set(s.result, s.t);
          visitExpr(s.index); visitExpr(s.value); if (s.compare) visitExpr(s.compare);
          break;
        default: break;
      }
    }
  };
  visit(list);
  return { vars, privateArrays: arrays.map((a) => ({ ...a, scalar: !nonConst.has(a.name) && a.length <= 256 })) };
}
