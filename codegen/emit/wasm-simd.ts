// Where the WebAssembly emitter uses SIMD128: accumulators of a loop that only ever take
// `acc = fma(x, w, acc)` or `acc = acc + x * w` are carried several to a v128 through the loop,
// each group's update one vector step with the scalar code's bits in every lane:
// - fma where the host's f32x4.relaxed_madd is fused (src/backend/cpu/wasm-api.ts hostFusedMadd):
//   four (or two) to an f32x4, one relaxed_madd per step. Exact because the reference `fma` is
//   the correctly rounded one (the JS executor's $fmaPC, CUDA's fmaf).
// - fma elsewhere ("fmaExact"): two to an f64x2; the f64 sum rounded to f32 except at the rare
//   lanes where that double-rounds (exactPairStep).
// - mul-then-add on every host: four to an f32x4, f32x4.mul then f32x4.add (IEEE, two roundings).
// GEMV partial sums (dense f16, INT4 group sums), the tiled GEMM's register block and attention's
// P·V sums are such accumulators.
import type { Expr } from '../dsl/ir.js';
import { forEachExpr } from '../dsl/walk.js';
import type { XStmt } from './js-lower.js';
import { type ConvertContext, type Converted, convertedLanes, emitConverted, type StorageInfo } from './wasm-convert.js';
import type { FnBuilder } from './wasm-encode.js';

/**
 * One packed group of two or four accumulators and its updates in the loop body: each step is
 * adjacent statements `acc[0] = fma(x[0], w[0], acc[0])`, `acc[1] = …`, one per accumulator in
 * lane order (a body unrolled over k updates each accumulator several times).
 */
export interface FmaGroup {
  acc: string[];
  kind: Kind;
  steps: { at: number[]; x: Expr[]; w: Expr[] }[];
}

/** Every variable name an IR node mentions (read, assigned, declared), memoised by node. */
function namesIn(node: unknown, memo: Map<object, Set<string>>): Set<string> {
  if (node === null || typeof node !== 'object') return EMPTY;
  const hit = memo.get(node);
  if (hit) return hit;
  const out = new Set<string>();
  const o = node as Record<string, unknown>;
  if (typeof o.k === 'string' && typeof o.name === 'string' && ['var', 'assign', 'let', 'for', '$sg', 'privateArray'].includes(o.k)) out.add(o.name);
  if (o.k === 'atomic' && typeof o.result === 'string') out.add(o.result);
  // A private array's element at a constant index counts as its own name (privateKey).
  if ((o.k === 'load' || o.k === 'store') && o.space === 'private' && typeof o.name === 'string') {
    const i = o.index as Expr;
    out.add(i.k === 'const' ? privateKey(o.name, Number(i.v)) : o.name);
  }
  for (const v of Array.isArray(node) ? node : Object.values(o)) for (const n of namesIn(v, memo)) out.add(n);
  memo.set(node, out);
  return out;
}
const EMPTY = new Set<string>();

/** An accumulator kept in a scalar private array's element (its local): `name#index`. */
export function privateKey(name: string, index: number): string { return `${name}#${index}`; }

/**
 * An accumulator update: `acc = fma(x, w, acc)` (x and w plain f32 variables other than acc), or
 * `acc = acc + x * w` (two roundings; x and w any expressions) where acc is an f32 variable or an
 * element of a scalar private array at a constant index.
 */
type Update = { acc: string; x: Expr; w: Expr; kind: Kind };
/**
 * fma: f32x4.relaxed_madd (the host's is fused); fmaExact: f64x2 pairs, the f64 sum rounded to f32
 * unless a lane is at an f32 halfway point (then that lane exactly, as scalar code); muladd:
 * f32x4.mul then f32x4.add (two roundings, as the scalar code).
 */
type Kind = 'fma' | 'fmaExact' | 'muladd';

function accumulate(s: XStmt, isF32: (name: string) => boolean, isScalarPrivate: (name: string) => boolean): Update | null {
  let acc: string, v: Expr, same: (e: Expr) => boolean;
  if (s.k === 'assign' && isF32(s.name)) {
    acc = s.name; v = s.value;
    same = (e) => e.k === 'var' && e.name === s.name;
  } else if (s.k === 'store' && s.space === 'private' && s.index.k === 'const' && isScalarPrivate(s.name) && s.value.t === 'f32') {
    const name = s.name, index = s.index.v;
    acc = privateKey(name, Number(index)); v = s.value;
    same = (e) => e.k === 'load' && e.space === 'private' && e.name === name && e.index.k === 'const' && e.index.v === index;
  } else return null;
  if (v.k === 'call' && v.fn === 'fma' && v.t === 'f32' && v.args.length === 3 && s.k === 'assign') {
    const [x, w, a] = v.args as [Expr, Expr, Expr];
    const plain = (e: Expr) => e.k === 'var' && e.t === 'f32' && !same(e);
    return same(a) && plain(x) && plain(w) ? { acc, x, w, kind: 'fma' } : null;
  }
  if (v.k === 'bin' && v.op === 'add' && v.t === 'f32' && same(v.a) && v.b.k === 'bin' && v.b.op === 'mul' && v.b.t === 'f32') {
    return { acc, x: v.b.a, w: v.b.b, kind: 'muladd' };
  }
  return null;
}

/**
 * Accumulator groups of a `for` body: accumulators mentioned in the loop (bounds and body) only by
 * their own update statements (`accumulate`), which come in runs of adjacent statements of one
 * kind over the same accumulators in the same order, so that the group can live packed from before
 * the loop to after it. Groups of four first, then of two among what is left (fmaExact: two only;
 * mul-then-add: four only). A loop that can `return` out of its middle is left alone (the group
 * would not be unpacked).
 */
export function fmaGroups(loop: Extract<XStmt, { k: 'for' }>, o: GroupOptions): FmaGroup[] {
  const body = loop.body, memo = new Map<object, Set<string>>();
  if (hasReturn(body)) return [];
  // fma: f32x4 where the host's multiply-add is fused, else f64x2 pairs (fmaExact). mul + add in
  // groups of four only (narrower, building the lanes costs what the scalar code does).
  const cands = body.map((s) => {
    const u = accumulate(s, o.isF32, o.isScalarPrivate);
    return u && u.kind === 'fma' && !o.fusedMadd ? { ...u, kind: 'fmaExact' as const } : u;
  });
  // Statements (and bounds) mentioning each name, and each candidate accumulator's own statements.
  const mentions = new Map<string, number>(), own = new Map<string, number>();
  for (const part of [loop.from, loop.to, loop.step, ...body]) for (const n of namesIn(part, memo)) mentions.set(n, (mentions.get(n) ?? 0) + 1);
  for (const c of cands) if (c) own.set(c.acc, (own.get(c.acc) ?? 0) + 1);
  const taken = new Set<string>(), groups: FmaGroup[] = [];
  const free = (c: Update | null): c is Update => !!c && !taken.has(c.acc) && mentions.get(c.acc) === own.get(c.acc);
  for (const width of [4, 2]) {
    const groupOf = new Map<string, string | null>(); // accumulator → its group's key; null: in two
    const runs: number[] = [];
    for (let i = 0; i + width <= body.length;) {
      const run = cands.slice(i, i + width);
      if (!run.every(free) || new Set(run.map((c) => c.acc)).size !== width || run.some((c) => c.kind !== run[0]!.kind)
        || (width < 4 && run[0]!.kind === 'muladd') || (width > 2 && run[0]!.kind === 'fmaExact')) { i++; continue; }
      const key = run.map((c) => c.acc).join(' ');
      for (const c of run) groupOf.set(c.acc, groupOf.has(c.acc) && groupOf.get(c.acc) !== key ? null : key);
      runs.push(i);
      i += width;
    }
    // Keep groups whose every statement is in one of their runs.
    const counted = new Map<string, number>();
    for (const i of runs) for (const c of cands.slice(i, i + width) as Update[]) counted.set(c.acc, (counted.get(c.acc) ?? 0) + 1);
    const byKey = new Map<string, FmaGroup>();
    for (const i of runs) {
      const run = cands.slice(i, i + width) as Update[], key = run.map((c) => c.acc).join(' ');
      if (!run.every((c) => groupOf.get(c.acc) === key && counted.get(c.acc) === own.get(c.acc))) continue;
      let g = byKey.get(key);
      if (!g) byKey.set(key, (g = { acc: run.map((c) => c.acc), kind: run[0]!.kind, steps: [] }));
      g.steps.push({ at: run.map((_, j) => i + j), x: run.map((c) => c.x), w: run.map((c) => c.w) });
    }
    for (const g of byKey.values()) { groups.push(g); for (const a of g.acc) taken.add(a); }
  }
  return groups;
}

function hasReturn(ss: XStmt[]): boolean {
  return ss.some((s) => s.k === 'return'
    || (s.k === 'if' && (hasReturn(s.then) || hasReturn(s.else)))
    || ((s.k === 'for' || s.k === 'while') && hasReturn(s.body))
    || (s.k === '$loop' && (hasReturn(s.pre) || hasReturn(s.body) || hasReturn(s.post))));
}

// ---- emission ------------------------------------------------------------------------------

/** The emitter's parts the packing uses: its function, scalar expressions, statements. */
export interface PackHost {
  f: FnBuilder;
  /** Push scalar expression e. */
  ex(e: Expr): void;
  /** The local of a scalar variable. */
  local(name: string): number;
  stmt(s: XStmt): void;
  newStatement(): void;
  /** Push the address of a workgroup array's element; returns the static offset to load at. */
  workgroupAddr(name: string, index: Expr): number;
  /** Whether a private array lives in memory (indexed at run time), not in locals. */
  privateInMemory(name: string): boolean;
  /** Push the address of such a private array's element; returns the static offset to load at. */
  privateAddr(name: string, index: Expr): number;
  /** Immutable lets emitted so far (before the loop): their initialisers, to compare indices. */
  lets: ReadonlyMap<string, Expr>;
  /** The correctly rounded scalar fma of the three f32 values pushArgs pushes (wasm-expr.ts). */
  exactFma(pushArgs: () => void): void;
  /** A storage buffer's element type, vector width and whether kernels may write it. */
  storageInfo(name: string): StorageInfo | undefined;
  /** Push the address of a storage buffer's element (times its vector width); returns the static offset to access it at. */
  storageAddr(name: string, index: Expr): number;
  /** f16 bits on the stack → f32, as the scalar code converts them. */
  h2f(): void;
  /** Convert weight lanes four at a time (wasm-convert.ts) where recognised. */
  convertWeights: boolean;
}
export interface Packed { group: FmaGroup; v: number }

/** The loop's packable groups, each loaded into a v128 local (f32x4) before the loop. */
export interface GroupOptions {
  isF32: (name: string) => boolean;
  isScalarPrivate: (name: string) => boolean;
  /** The host's relaxed multiply-add is fused: fma accumulators may be packed too. */
  fusedMadd: boolean;
}

export function packAccumulators(h: PackHost, loop: Extract<XStmt, { k: 'for' }>, o: GroupOptions): Packed[] {
  return fmaGroups(loop, o).map((group) => {
    const v = h.f.local('v128');
    const f64 = group.kind === 'fmaExact';
    group.acc.forEach((n, lane) => {
      h.f.get(h.local(n));
      if (f64) h.f.op('f64.promote_f32').simd(lane === 0 ? 'f64x2.splat' : 'f64x2.replace_lane', lane === 0 ? undefined : lane);
      else if (lane === 0) h.f.simd('f32x4.splat'); else h.f.simd('f32x4.replace_lane', lane);
    });
    h.f.set(v);
    return { group, v };
  });
}

/**
 * f32x4 of a step's operands: one splat when they are all the same expression; one v128.load
 * (four lanes) or v128.load64_zero (two) when they read adjacent elements of an f32 storage
 * buffer; else lane by lane.
 */
function lanesOf(h: PackHost, es: Expr[]): void {
  const first = JSON.stringify(es[0]);
  if (es.every((e, i) => i === 0 || JSON.stringify(e) === first)) { h.ex(es[0]!); h.f.simd('f32x4.splat'); return; }
  const e0 = es[0]!;
  const info = e0.k === 'load' && e0.space === 'storage' ? h.storageInfo(e0.name) : undefined;
  if (e0.k === 'load' && info?.t === 'f32' && info.vec === 1 && (es.length === 4 || es.length === 2)
    && es.every((e) => e.k === 'load' && e.space === 'storage' && e.name === e0.name)
    && consecutive(es.map((e) => (e as typeof e0).index), h.lets)) {
    const off = h.storageAddr(e0.name, e0.index);
    h.f.simdMem(es.length === 4 ? 'v128.load' : 'v128.load64_zero', off, 2);
    return;
  }
  h.ex(e0); h.f.simd('f32x4.splat');
  for (let lane = 1; lane < es.length; lane++) { h.ex(es[lane]!); h.f.simd('f32x4.replace_lane', lane); }
}

// ---- operands straight from memory -----------------------------------------------------------
// Packed steps take x (one value for every lane) and w (adjacent columns) from lets that load a
// workgroup array or an in-memory private array (a GEMM's staged tiles), and x from lets loading a
// read-only storage buffer. Loading them with one v128.load32_splat / v128.load (four lanes) /
// v128.load64_zero (two) instead of f32 loads and lane inserts moves the work from the shuffle
// port to the load ports (bench/notes/cpu.md); the same values, so the same bits. Conditions: the
// lets are immutable, in this loop body, the array is never stored to in the body (storage: no
// storage store at all, bindings may alias), and the indices are one affine form but for
// constants c, c + 1, … (lets resolved through their initialisers). Weight lanes unpacked one at a
// time are converted as vectors instead (wasm-convert.ts).

type Affine = { terms: string; c: number };
/** e as (its non-constant part, canonical; its constant), resolving immutable lets. */
function affine(e: Expr, lets: ReadonlyMap<string, Expr>, depth = 0): Affine {
  if (depth > 32) return { terms: JSON.stringify(e), c: 0 };
  if (e.k === 'const' && typeof e.v === 'number' && (e.t === 'u32' || e.t === 'i32')) return { terms: '', c: e.v };
  if (e.k === 'var') {
    const d = lets.get(e.name);
    return d ? affine(d, lets, depth + 1) : { terms: `v:${e.name}`, c: 0 };
  }
  if (e.k === 'bin' && e.op === 'add' && (e.t === 'u32' || e.t === 'i32')) {
    const a = affine(e.a, lets, depth + 1), b = affine(e.b, lets, depth + 1);
    return { terms: [a.terms, b.terms].filter(Boolean).sort().join(' + '), c: a.c + b.c };
  }
  const resolve = (x: Expr): unknown => (x.k === 'var' && lets.has(x.name) ? resolve(lets.get(x.name)!) : x.k === 'bin' ? { ...x, a: resolve(x.a), b: resolve(x.b) } : x);
  return { terms: JSON.stringify(resolve(e)), c: 0 };
}

/** Whether indices are i, i + 1, i + 2, … of one affine form. */
function consecutive(indices: Expr[], lets: ReadonlyMap<string, Expr>): boolean {
  const a = indices.map((e) => affine(e, lets));
  return a.every((x, j) => x.terms === a[0]!.terms && x.c === a[0]!.c + j);
}

/** Every variable read in an IR node, counted (d per read) into `into`. */
function countReads(node: unknown, into: Map<string, number>, d = 1): void {
  if (node === null || typeof node !== 'object') return;
  const o = node as Record<string, unknown>;
  if (o.k === 'var' && typeof o.name === 'string') into.set(o.name, (into.get(o.name) ?? 0) + d);
  for (const v of Array.isArray(node) ? node : Object.values(o)) countReads(v, into, d);
}

/** Push the address of an element of a storage buffer, workgroup or in-memory private array; returns the static offset. */
function arrayAddr(h: PackHost, space: 'storage' | 'workgroup' | 'private', name: string, index: Expr): number {
  if (space === 'storage') return h.storageAddr(name, index);
  return space === 'private' ? h.privateAddr(name, index) : h.workgroupAddr(name, index);
}

export interface OperandLoads {
  /** Let statements (body index) no longer read once packed steps take their operands as vectors: not emitted. */
  skip: Set<number>;
  /** Per step (body index of its first statement): how to push each operand's lanes. */
  x: Map<number, Operand>;
  w: Map<number, Operand>;
  /** Runs of four stores of converted weight lanes to adjacent elements (body index of the first): one vector store. */
  stores: Map<number, ConvertedStore>;
}
interface ConvertedStore { space: 'workgroup' | 'private'; name: string; index: Expr; value: Converted }
/**
 * A vector operand and a key equal for equal operands within an iteration: a workgroup array's
 * lanes loaded at once, or lanes converted from weight words (wasm-convert.ts).
 */
type Operand = {
  kind: 'load'; space: 'workgroup' | 'storage' | 'private'; name: string; index: Expr; key: string; load: 'v128.load32_splat' | 'v128.load' | 'v128.load64_zero';
} | Converted;

/**
 * How a loop body's packed steps take their operands, which stores of converted lanes go as one
 * vector, and which lets are then dead. Computed before the loop is emitted (h.lets: the lets
 * emitted so far); a loop with neither packed groups nor converted stores is emitted as usual.
 */
export function loopOperands(h: PackHost, body: XStmt[], packed: Packed[]): OperandLoads {
  const lets = new Map(h.lets);
  const loadLet = new Map<string, { at: number; space: 'workgroup' | 'private'; name: string; index: Expr }>();
  // Lets loading one f32 of a read-only storage buffer (a GEMM's x): splat straight from memory
  // where the packed steps are their only readers.
  const storageLet = new Map<string, { name: string; index: Expr }>();
  const letAt = new Map<string, number>();
  const stored = new Set<string>(), assigned = new Set<string>();
  let storageStores = false; // a binding may alias another: no storage splats past a store
  const walk = (ss: XStmt[], top: boolean) => ss.forEach((s, i) => {
    if (s.k === 'store' && (s.space === 'workgroup' || s.space === 'private')) stored.add(s.name);
    if ((s.k === 'store' && s.space === 'storage') || (s.k === 'atomic' && s.space === 'storage')) storageStores = true;
    if (s.k === 'assign' || s.k === 'for') assigned.add(s.name);
    if (s.k === 'atomic') stored.add(s.name);
    if (top && s.k === 'let' && !s.mutable) {
      lets.set(s.name, s.init);
      letAt.set(s.name, i);
      if (s.init.k === 'load' && s.init.t === 'f32' && (s.init.space === 'workgroup' || (s.init.space === 'private' && h.privateInMemory(s.init.name)))) {
        loadLet.set(s.name, { at: i, space: s.init.space, name: s.init.name, index: s.init.index });
      }
      if (s.init.k === 'load' && s.init.space === 'storage' && s.init.t === 'f32') {
        const info = h.storageInfo(s.init.name);
        if (info?.t === 'f32' && info.vec === 1 && info.readOnly) storageLet.set(s.name, { name: s.init.name, index: s.init.index });
      }
    }
    if (s.k === 'if') { walk(s.then, false); walk(s.else, false); }
    if (s.k === 'for' || s.k === 'while') walk(s.body, false);
    if (s.k === '$loop') { walk(s.pre, false); walk(s.body, false); walk(s.post, false); }
  });
  walk(body, true);
  // An index read at the packed step must mean what it meant at its let: no variable it
  // depends on (through lets) may be assigned in the body.
  const dependsOnAssigned = (e: Expr, depth = 0): boolean => {
    if (depth > 32) return true;
    let hit = false;
    forEachExpr(e, (x) => {
      if (!hit && x.k === 'var') hit = assigned.has(x.name) || (lets.has(x.name) && dependsOnAssigned(lets.get(x.name)!, depth + 1));
    });
    return hit;
  };
  for (const [name, l] of [...loadLet]) if (dependsOnAssigned(l.index)) loadLet.delete(name);
  for (const [name, l] of [...storageLet]) if (storageStores || dependsOnAssigned(l.index)) storageLet.delete(name);
  // Reads of each variable in the body, against those the packed steps' x operands make.
  const allReads = new Map<string, number>(), xReads = new Map<string, number>();
  countReads(body, allReads);
  for (const { group } of packed) for (const st of group.steps) for (const x of st.x) countReads(x, xReads);
  const conv: ConvertContext = {
    lets, storage: (n) => h.storageInfo(n), stable: (e) => !dependsOnAssigned(e),
    offsetBy: (a, b, d) => { const x = affine(a, lets), y = affine(b, lets); return x.terms === y.terms && y.c === x.c + d; },
  };
  const out: OperandLoads = { skip: new Set(), x: new Map(), w: new Map(), stores: new Map() };
  const varName = (e: Expr): string | undefined => (e.k === 'var' ? e.name : undefined);
  for (const { group } of packed) {
    const lanes = group.acc.length;
    for (const st of group.steps) {
      const xs = st.x.map(varName), x0 = xs[0], lx = x0 !== undefined ? loadLet.get(x0) : undefined;
      if (lx && x0 !== undefined && xs.every((n) => n === x0) && !stored.has(lx.name)) {
        const a = affine(lx.index, lets);
        out.x.set(st.at[0]!, { kind: 'load', space: lx.space, name: lx.name, index: lx.index, key: `x ${lx.name} ${a.terms} ${a.c}`, load: 'v128.load32_splat' });
      }
      const sx = x0 !== undefined ? storageLet.get(x0) : undefined;
      if (!lx && sx && x0 !== undefined && xs.every((n) => n === x0) && allReads.get(x0) === xReads.get(x0)) {
        out.x.set(st.at[0]!, { kind: 'load', space: 'storage', name: sx.name, index: sx.index, key: `xs ${x0}`, load: 'v128.load32_splat' });
      }
      const ws = st.w.map(varName), lw = ws.map((n) => (n !== undefined ? loadLet.get(n) : undefined));
      const l0 = lw[0];
      if (l0 && new Set(ws).size === lanes && lw.every((l) => l && l.name === l0.name) && !stored.has(l0.name) && consecutive(lw.map((l) => l!.index), lets)) {
        const a = affine(l0.index, lets);
        const load = lanes === 4 ? 'v128.load' : 'v128.load64_zero';
        out.w.set(st.at[0]!, { kind: 'load', space: l0.space, name: l0.name, index: l0.index, key: `w${lanes} ${l0.name} ${a.terms} ${a.c}`, load });
        continue;
      }
      const c = group.kind === 'fmaExact' || !h.convertWeights ? null : convertedLanes(conv, st.w);
      if (c) out.w.set(st.at[0]!, c);
    }
  }
  // f16 quads converted as vectors only where several steps share them (a GEMM's rows): for one
  // step the scalar table lookups cost less (a 1-row GEMV measured 1.12x slower converted).
  const uses = new Map<string, number>();
  for (const o of out.w.values()) uses.set(o.key, (uses.get(o.key) ?? 0) + 1);
  for (const [at, o] of out.w) if (o.kind === 'f16' && uses.get(o.key)! < 2) out.w.delete(at);
  if (h.convertWeights) findConvertedStores(h, body, conv, out.stores);
  // Lets no longer read: the operands vector steps take over, then what only they read, and so on.
  const lane = new Map<number, { st: FmaGroup['steps'][number]; j: number }>();
  for (const { group } of packed) for (const st of group.steps) st.at.forEach((at, j) => lane.set(at, { st, j }));
  const reads = new Map<string, number>();
  const count = (node: unknown, d: number) => countReads(node, reads, d);
  const storeRun = new Map<number, number>(); // statement → its run's first
  for (const at of out.stores.keys()) for (let j = 0; j < 4; j++) storeRun.set(at + j, at);
  const countStmt = (i: number, d: number) => {
    const run = storeRun.get(i);
    if (run !== undefined) {
      // A converted store reads its index and what the vector is computed from (once per run).
      const st = out.stores.get(run)!;
      if (run === i) { count(st.index, d); count(st.value.kind === 'nibbles' ? st.value.word : st.value.index, d); }
      return;
    }
    const l = lane.get(i);
    if (!l) { count(body[i], d); return; }
    const at = l.st.at[0]!;
    // A vector operand still reads what its address or word is computed from (once per step).
    for (const [ops, lanes] of [[out.x, l.st.x], [out.w, l.st.w]] as const) {
      const o = ops.get(at);
      if (!o) count(lanes[l.j], d);
      else if (l.j === 0) count(o.kind === 'nibbles' ? o.word : o.index, d);
    }
  };
  body.forEach((_, i) => countStmt(i, 1));
  for (let changed = true; changed;) {
    changed = false;
    for (const [name, i] of letAt) {
      if (out.skip.has(i) || (reads.get(name) ?? 0) > 0) continue;
      out.skip.add(i);
      countStmt(i, -1);
      changed = true;
    }
  }
  return out;
}

/**
 * Runs of four adjacent statements storing converted weight lanes (wasm-convert.ts) to adjacent
 * f32 elements of one workgroup or in-memory private array: a GEMM staging unpacked weights.
 */
function findConvertedStores(h: PackHost, body: XStmt[], conv: ConvertContext, out: Map<number, ConvertedStore>): void {
  for (let i = 0; i + 4 <= body.length; i++) {
    const run = body.slice(i, i + 4);
    const s0 = run[0]!;
    if (s0.k !== 'store' || (s0.space !== 'workgroup' && !(s0.space === 'private' && h.privateInMemory(s0.name)))) continue;
    const stores = run.filter((s): s is Extract<XStmt, { k: 'store' }> => s.k === 'store' && s.space === s0.space && s.name === s0.name && s.value.t === 'f32');
    if (stores.length !== 4 || !stores.every((s) => conv.stable(s.index)) || !consecutive(stores.map((s) => s.index), conv.lets)) continue;
    const value = convertedLanes(conv, stores.map((s) => s.value));
    if (!value) continue;
    out.set(i, { space: s0.space as 'workgroup' | 'private', name: s0.name, index: s0.index, value });
    i += 3;
  }
}

/** Push a vector operand: computed at its first use in the iteration, then from its local. */
function vectorOperand(h: PackHost, o: Operand, cache: Map<string, number>): void {
  const known = cache.get(o.key);
  if (known !== undefined) { h.f.get(known); return; }
  const v = h.f.local('v128');
  if (o.kind === 'load') h.f.simdMem(o.load, arrayAddr(h, o.space, o.name, o.index), 2);
  else emitConverted(h, o);
  h.f.tee(v);
  cache.set(o.key, v);
}

/**
 * The loop body, each packed step's statements as one f32x4 fused multiply-add. Returns how many
 * distinct operands it loads as vectors.
 */
export function packedLoopBody(h: PackHost, body: XStmt[], packed: Packed[], ops: OperandLoads): number {
  const steps = new Map(packed.flatMap(({ group, v }) => group.steps.map((st) => [st.at[0]!, { st, v, kind: group.kind }] as const)));
  const cache = new Map<string, number>(); // operand key → v128 local, loaded at its first use this iteration
  let exact: ExactTemps | undefined;
  for (let i = 0; i < body.length; i++) {
    if (ops.skip.has(i)) continue;
    const run = ops.stores.get(i);
    if (run) {
      h.newStatement();
      const off = arrayAddr(h, run.space, run.name, run.index);
      emitConverted(h, run.value);
      h.f.simdMem('v128.store', off, 2);
      i += 3;
      continue;
    }
    const p = steps.get(i);
    if (!p) { h.stmt(body[i]!); continue; }
    h.newStatement();
    const vx = ops.x.get(i), vw = ops.w.get(i);
    if (p.kind === 'muladd') h.f.get(p.v); // acc + x·w, in the scalar code's operand order
    if (vx) vectorOperand(h, vx, cache); else lanesOf(h, p.st.x);
    if (vw) vectorOperand(h, vw, cache); else lanesOf(h, p.st.w);
    if (p.kind === 'fma') h.f.get(p.v).simd('f32x4.relaxed_madd').set(p.v);
    else if (p.kind === 'muladd') h.f.simd('f32x4.mul').simd('f32x4.add').set(p.v);
    else exactPairStep(h, p.v, exact ??= { x: h.f.local('v128'), w: h.f.local('v128'), p: h.f.local('v128'), s: h.f.local('v128'), q: h.f.local('v128') });
    i += p.st.at.length - 1; // the step's other statements
  }
  return cache.size + ops.stores.size;
}

interface ExactTemps { x: number; w: number; p: number; s: number; q: number }

/**
 * One fmaExact step, x and w (f32 lanes 0–1) on the stack: s = x·w + acc in f64x2 (the product is
 * exact), then each lane rounded to f32 — right unless a lane is exactly halfway between two f32
 * values (its 29 bits below f32 precision are 1000…0) or near the subnormal range (|s| ≤ 2^-125,
 * s ≠ 0) and its f64 sum was inexact (TwoSum's error): then both lanes again through the scalar
 * exact path (wasm-expr.ts exactFma).
 */
function exactPairStep(h: PackHost, acc: number, t: ExactTemps): void {
  const f = h.f;
  const round = () => f.get(t.s).simd('f32x4.demote_f64x2_zero').simd('f64x2.promote_low_f32x4').set(acc);
  f.set(t.w).set(t.x);
  f.get(t.x).simd('f64x2.promote_low_f32x4').get(t.w).simd('f64x2.promote_low_f32x4').simd('f64x2.mul').tee(t.p).get(acc).simd('f64x2.add').tee(t.s);
  f.v128([0x1fffffff, 0x1fffffff], 'i64').simd('v128.and').v128([0x10000000, 0x10000000], 'i64').simd('i64x2.eq');
  f.get(t.s).simd('f64x2.abs').v128([2 ** -125, 2 ** -125], 'f64').simd('f64x2.le');
  f.get(t.s).v128([0, 0], 'f64').simd('f64x2.ne').simd('v128.and').simd('v128.or').simd('v128.any_true');
  f.if('pairHalfway');
  // TwoSum's error (q = s − p, e = (p − (s − q)) + (acc − q)): a lane whose f64 sum was exact is right as it is.
  f.get(t.s).get(t.p).simd('f64x2.sub').set(t.q);
  f.get(t.p).get(t.s).get(t.q).simd('f64x2.sub').simd('f64x2.sub').get(acc).get(t.q).simd('f64x2.sub').simd('f64x2.add');
  f.v128([0, 0], 'f64').simd('f64x2.ne').simd('v128.any_true');
  f.if('pairInexact');
  for (let lane = 0; lane < 2; lane++) {
    f.get(acc);
    h.exactFma(() => {
      f.get(t.x).simd('f32x4.extract_lane', lane).get(t.w).simd('f32x4.extract_lane', lane);
      f.get(acc).simd('f64x2.extract_lane', lane).op('f32.demote_f64');
    });
    f.op('f64.promote_f32').simd('f64x2.replace_lane', lane).set(acc);
  }
  f.else();
  round();
  f.end();
  f.else();
  round();
  f.end();
}

/** After the loop: each group back into its f32 variables. */
export function unpackAccumulators(h: PackHost, packed: Packed[]): void {
  for (const { group, v } of packed) {
    group.acc.forEach((n, lane) => {
      if (group.kind === 'fmaExact') h.f.get(v).simd('f64x2.extract_lane', lane).op('f32.demote_f64').set(h.local(n)); // exact: f32 values
      else h.f.get(v).simd('f32x4.extract_lane', lane).set(h.local(n));
    });
  }
}
