// The one walker over the kernel IR that emitters and lowering passes share: the shape of every
// expression node (mapExpr rebuilds a node from its mapped children; every other traversal is
// built on it) and of every statement.
import type { Expr, Stmt } from './ir.js';

/** The node with each direct child replaced by f(child); leaves come back as they are. */
export function mapExpr(e: Expr, f: (x: Expr) => Expr): Expr {
  switch (e.k) {
    case 'const': case 'var': case 'uniform': case 'builtin': return e;
    case 'load': return { ...e, index: f(e.index) };
    case 'bin': return { ...e, a: f(e.a), b: f(e.b) };
    case 'un': case 'cast': case 'bitcast': case 'swizzle': return { ...e, a: f(e.a) };
    case 'pack2x16float': return { ...e, a: f(e.a) };
    case 'unpack2x16float': return { ...e, a: f(e.a) };
    case 'nibblePairF16': case 'nibblePairValues': return { ...e, a: f(e.a) };
    case 'sub2x16float': return { ...e, a: f(e.a), b: f(e.b) };
    case 'call': return { ...e, args: e.args.map(f) };
    case 'vec': return { ...e, args: e.args.map(f) };
    case 'select': return { ...e, cond: f(e.cond), a: f(e.a), b: f(e.b) };
    case 'subgroup': return { ...e, a: f(e.a), ...(e.b ? { b: f(e.b) } : {}) };
    case 'lanes': return { ...e, args: e.args.map(f) }; // the body is its own scope, over the lane parameters
    case 'intrinsic': return { ...e, args: e.args.map(f) };
  }
}

/** Direct children of an expression, in evaluation order. */
export function exprChildren(e: Expr): Expr[] {
  const out: Expr[] = [];
  mapExpr(e, (x) => { out.push(x); return x; });
  return out;
}

/** Every node of an expression tree, parents before children. */
export function forEachExpr(e: Expr, f: (x: Expr) => void): void {
  f(e);
  for (const c of exprChildren(e)) forEachExpr(c, f);
}

/** The expressions a statement evaluates itself (not those of nested blocks). */
export function stmtExprs(s: Stmt): Expr[] {
  switch (s.k) {
    case 'let': return [s.init];
    case 'assign': return [s.value];
    case 'store': return [s.index, s.value];
    case 'if': return [s.cond];
    case 'for': return [s.from, s.to, s.step];
    case 'while': return [s.cond];
    case 'atomic': return s.compare ? [s.index, s.value, s.compare] : [s.index, s.value];
    case 'privateArray': case 'break': case 'continue': case 'return': case 'barrier': case 'fence': case 'mma': return [];
  }
}

/** Nested statement blocks of a statement. */
export function stmtBlocks(s: Stmt): Stmt[][] {
  return s.k === 'if' ? [s.then, s.else] : s.k === 'for' || s.k === 'while' ? [s.body] : [];
}

/** Visit every statement and every expression node of a body, in order. */
export function walk(body: Stmt[], onStmt: (s: Stmt) => void, onExpr: (e: Expr) => void): void {
  for (const s of body) {
    onStmt(s);
    for (const e of stmtExprs(s)) forEachExpr(e, onExpr);
    for (const b of stmtBlocks(s)) walk(b, onStmt, onExpr);
  }
}
