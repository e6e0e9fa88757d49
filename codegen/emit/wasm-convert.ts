// Packed-step weight operands computed as vectors (wasm-simd.ts): four f32 lanes that the kernel
// unpacks one at a time from weight words — f16 halves of two adjacent u32 words, or four INT4
// nibbles of one word — are recognised through their lets and converted four at a time. The same
// values as the scalar code (f16 → f32 and nibble → f32 are exact), so the same bits; the scalar
// lets are then dead and not emitted (wasm-simd.ts operandLoads). A CPU GEMM's inner loop spends
// as much on unpacking weights as on multiply-adds (bench/notes/cpu.md).
import type { Expr } from '../dsl/ir.js';
import { forEachExpr } from '../dsl/walk.js';
import type { FnBuilder } from './wasm-encode.js';
import { XYZW } from './wasm-expr.js';

export type Converted =
  /** f16 halves of two adjacent u32 words (lanes: word 0 low, high, word 1 low, high) at element `index`, + `offset` bytes. */
  | { kind: 'f16'; name: string; index: Expr; offset: number; key: string }
  /** Nibbles of one u32 word, lane i at bits shifts[i]..shifts[i] + 3, as f32. */
  | { kind: 'nibbles'; word: Expr; shifts: number[]; key: string };

export interface StorageInfo { t: string; vec: number; readOnly: boolean }

export interface ConvertContext {
  /** Immutable lets visible at the step (outer and the loop body's top level): their initialisers. */
  lets: ReadonlyMap<string, Expr>;
  storage(name: string): StorageInfo | undefined;
  /** e means at the step what it meant where its let was (no variable it reads is assigned in the loop). */
  stable(e: Expr): boolean;
  /** Whether two u32 index expressions are i and i + d for the same i. */
  offsetBy(a: Expr, b: Expr, d: number): boolean;
}

/** Word w as a storage element: a scalar u32 load (through a let or not), or a component of a vector load let. */
function wordSource(c: ConvertContext, w: Expr): { name: string; index: Expr; comp: number; vec: number } | null {
  if (w.k === 'swizzle' && w.comps.length === 1 && w.a.k === 'var') {
    const l = c.lets.get(w.a.name);
    if (l?.k !== 'load' || l.space !== 'storage') return null;
    const info = c.storage(l.name);
    return info && info.t === 'u32' && info.readOnly && info.vec > 1 && c.stable(l.index) ? { name: l.name, index: l.index, comp: XYZW.indexOf(w.comps), vec: info.vec } : null;
  }
  const l = w.k === 'var' ? c.lets.get(w.name) : w;
  if (l?.k !== 'load' || l.space !== 'storage' || l.t !== 'u32') return null;
  const info = c.storage(l.name);
  return info && info.t === 'u32' && info.readOnly && info.vec === 1 && c.stable(l.index) ? { name: l.name, index: l.index, comp: 0, vec: 1 } : null;
}

/** A lane: a let's initialiser, or the expression itself (a stored value). */
const laneOf = (c: ConvertContext, e: Expr): Expr | undefined => (e.k === 'var' ? c.lets.get(e.name) : e);

function f16Quad(c: ConvertContext, ws: Expr[]): Converted | null {
  const halves = ws.map((e) => {
    const i = laneOf(c, e);
    return i?.k === 'swizzle' && i.a.k === 'var' && (i.comps === 'x' || i.comps === 'y') ? { pair: i.a.name, comp: i.comps } : null;
  });
  const [a, b, d, e] = halves;
  if (!a || !b || !d || !e || a.pair !== b.pair || d.pair !== e.pair || a.pair === d.pair) return null;
  if (a.comp !== 'x' || b.comp !== 'y' || d.comp !== 'x' || e.comp !== 'y') return null;
  const word = (pair: string) => { const i = c.lets.get(pair); return i?.k === 'unpack2x16float' ? wordSource(c, i.a) : null; };
  const w0 = word(a.pair), w1 = word(d.pair);
  if (!w0 || !w1 || w0.name !== w1.name || w0.vec !== w1.vec) return null;
  const adjacent = w0.vec > 1
    ? w1.comp === w0.comp + 1 && c.offsetBy(w0.index, w1.index, 0)
    : c.offsetBy(w0.index, w1.index, 1);
  if (!adjacent) return null;
  const offset = 4 * w0.comp;
  return { kind: 'f16', name: w0.name, index: w0.index, offset, key: `f16 ${w0.name} ${JSON.stringify(w0.index)} ${offset}` };
}

/** u → (word, shift) for (word >> s) & 15, word & 15, word >> 28. */
function nibbleOf(u: Expr): { word: Expr; shift: number } | null {
  const num = (e: Expr) => (e.k === 'const' && typeof e.v === 'number' ? e.v : -1);
  if (u.k === 'bin' && u.op === 'band' && num(u.b) === 15) {
    const a = u.a;
    if (a.k === 'bin' && a.op === 'shr' && a.t === 'u32' && num(a.b) >= 0 && num(a.b) <= 28) return { word: a.a, shift: num(a.b) };
    return { word: a, shift: 0 };
  }
  if (u.k === 'bin' && u.op === 'shr' && u.t === 'u32' && num(u.b) === 28) return { word: u.a, shift: 28 };
  return null;
}

function nibbleQuad(c: ConvertContext, ws: Expr[]): Converted | null {
  const nibs = ws.map((e) => {
    const i = laneOf(c, e);
    return i?.k === 'cast' && i.t === 'f32' && i.a.t === 'u32' ? nibbleOf(i.a) : null;
  });
  if (!nibs.every((n) => n)) return null;
  const word = nibs[0]!.word, key = JSON.stringify(word);
  if (word.t !== 'u32' || nibs.some((n) => JSON.stringify(n!.word) !== key)) return null;
  // The word is recomputed at the step: only variables (and their components), all stable.
  let pure = true;
  forEachExpr(word, (x) => { if (x.k !== 'var' && x.k !== 'swizzle' && x.k !== 'const') pure = false; });
  if (!pure || !c.stable(word)) return null;
  const shifts = nibs.map((n) => n!.shift);
  if (Math.max(...shifts) - Math.min(...shifts) > 24) return null; // see emitConverted: signed conversion
  return { kind: 'nibbles', word, shifts, key: `nib ${key} ${shifts.join(',')}` };
}

/** Four weight lanes as one converted vector operand, or null. */
export function convertedLanes(c: ConvertContext, ws: Expr[]): Converted | null {
  if (ws.length !== 4) return null;
  return f16Quad(c, ws) ?? nibbleQuad(c, ws);
}

export interface ConvertHost {
  f: FnBuilder;
  ex(e: Expr): void;
  /** Push the address of a storage buffer's element (times its vector width); returns the static offset to access it at. */
  storageAddr(name: string, index: Expr): number;
  /** f16 bits on the stack → the f32 the scalar code's table gives. */
  h2f(): void;
}

const f32Bits = (x: number) => { const b = new DataView(new ArrayBuffer(4)); b.setFloat32(0, x, true); return b.getUint32(0, true); };
const all = (v: number) => [v, v, v, v];

/** Push the f32x4 of a converted operand. */
export function emitConverted(h: ConvertHost, o: Converted): void {
  const f = h.f;
  if (o.kind === 'nibbles') {
    // (word >> base) splat, each lane masked to its nibble in place: q·2^(s − base) < 2^31, so the
    // signed conversion is exact (4 significant bits), and the scaling by a power of two too.
    const base = Math.min(...o.shifts);
    h.ex(o.word);
    if (base) f.i32(base).op('i32.shr_u');
    f.simd('i32x4.splat').v128x4(o.shifts.map((s) => 15 << (s - base))).simd('v128.and');
    f.simd('f32x4.convert_i32x4_s').v128x4(o.shifts.map((s) => f32Bits(2 ** (base - s)))).simd('f32x4.mul');
    return;
  }
  // f16: normal numbers by moving the exponent ((h & 0x7fff) << 13, + 112 << 23), subnormals and
  // zero as m·2^-24 (exact, no subnormal f32 arithmetic), then the sign; infinities and NaNs
  // (never in weights, but possible) through the scalar code's table, lane by lane.
  const hv = f.local('v128'), mag = f.local('v128'), r = f.local('v128'), t = f.local('f32');
  const at = h.storageAddr(o.name, o.index);
  f.simdMem('v128.load64_zero', at + o.offset, 2).simd('i32x4.extend_low_i16x8_u').tee(hv);
  f.v128x4(all(0x7fff)).simd('v128.and').tee(mag);
  f.simd('f32x4.convert_i32x4_s').v128x4(all(f32Bits(2 ** -24))).simd('f32x4.mul');
  f.get(mag).i32(13).simd('i32x4.shl').v128x4(all(112 << 23)).simd('i32x4.add');
  f.get(mag).v128x4(all(0x400)).simd('i32x4.lt_s').simd('v128.bitselect');
  f.get(hv).v128x4(all(0x8000)).simd('v128.and').i32(16).simd('i32x4.shl').simd('v128.or').set(r);
  f.get(mag).v128x4(all(0x7c00)).simd('i32x4.ge_s').simd('v128.any_true');
  f.if('f16Special');
  for (let lane = 0; lane < 4; lane++) {
    f.get(hv).simd('i32x4.extract_lane', lane);
    h.h2f();
    if (lane === 0) f.simd('f32x4.splat').set(r);
    else f.set(t).get(r).get(t).simd('f32x4.replace_lane', lane).set(r);
  }
  f.end();
  f.get(r);
}
