// A small WebAssembly binary encoder: just what the kernel emitter (wasm.ts) writes — one module
// with an imported shared memory, imported f64 Math functions and a few defined functions. Our own
// rather than binaryen (a 10+ MB dependency): the emitter already produces the structured code a
// module needs, so encoding is a few hundred lines and nothing to optimise (V8's tiers do that).

export type ValType = 'i32' | 'f32' | 'f64' | 'v128';
const VT: Record<ValType, number> = { i32: 0x7f, f32: 0x7d, f64: 0x7c, v128: 0x7b };

/** SIMD128 opcodes (0xFD prefix) by name, the ones used. */
export const SIMD = {
  'f32x4.splat': 19, 'f64x2.splat': 20, 'f32x4.extract_lane': 31, 'f32x4.replace_lane': 32, 'f64x2.extract_lane': 33, 'f64x2.replace_lane': 34,
  'f32x4.demote_f64x2_zero': 94, 'f64x2.promote_low_f32x4': 95,
  'f32x4.add': 228, 'f32x4.mul': 230, 'f64x2.add': 240, 'f64x2.sub': 241, 'f64x2.mul': 242,
  'f64x2.ne': 72, 'f64x2.le': 75, 'v128.and': 78, 'v128.or': 80, 'v128.any_true': 83, 'i64x2.eq': 214, 'f64x2.abs': 236,
  // Weight conversions (wasm-simd.ts convertedOperand): f16 and INT4 nibbles to f32 lanes.
  'i32x4.splat': 17, 'i32x4.extract_lane': 27, 'i32x4.extend_low_i16x8_u': 169, 'i32x4.shl': 171, 'i32x4.add': 174,
  'i32x4.lt_s': 57, 'i32x4.ge_s': 63, 'v128.bitselect': 82, 'f32x4.convert_i32x4_s': 250, 'f32x4.convert_i32x4_u': 251,
  // Relaxed SIMD: a * b + c, fused or not as the host decides (used only where it was found fused).
  'f32x4.relaxed_madd': 261,
} as const;

/** SIMD128 loads (0xFD prefix, then a memarg), the ones used. */
export const SIMD_MEM = { 'v128.load': 0x00, 'v128.load32_splat': 0x09, 'v128.load64_zero': 0x5d, 'v128.store': 0x0b } as const;

/** Opcodes by name (single byte), the ones the emitter uses. */
export const OP = {
  unreachable: 0x00, block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, br_if: 0x0d, return: 0x0f,
  call: 0x10, drop: 0x1a, select: 0x1b,
  'local.get': 0x20, 'local.set': 0x21, 'local.tee': 0x22,
  'i32.load': 0x28, 'f32.load': 0x2a, 'i32.load8_u': 0x2d, 'i32.load16_u': 0x2f,
  'i32.store': 0x36, 'f32.store': 0x38, 'i32.store8': 0x3a, 'i32.store16': 0x3b,
  'i32.const': 0x41, 'f32.const': 0x43, 'f64.const': 0x44,
  'i32.eqz': 0x45, 'i32.eq': 0x46, 'i32.ne': 0x47, 'i32.lt_s': 0x48, 'i32.lt_u': 0x49, 'i32.gt_s': 0x4a, 'i32.gt_u': 0x4b,
  'i32.le_s': 0x4c, 'i32.le_u': 0x4d, 'i32.ge_s': 0x4e, 'i32.ge_u': 0x4f,
  'f32.eq': 0x5b, 'f32.ne': 0x5c, 'f32.lt': 0x5d, 'f32.gt': 0x5e, 'f32.le': 0x5f, 'f32.ge': 0x60,
  'i32.add': 0x6a, 'i32.sub': 0x6b, 'i32.mul': 0x6c, 'i32.div_s': 0x6d, 'i32.div_u': 0x6e, 'i32.rem_s': 0x6f, 'i32.rem_u': 0x70,
  'i32.and': 0x71, 'i32.or': 0x72, 'i32.xor': 0x73, 'i32.shl': 0x74, 'i32.shr_s': 0x75, 'i32.shr_u': 0x76,
  'f32.abs': 0x8b, 'f32.neg': 0x8c, 'f32.ceil': 0x8d, 'f32.floor': 0x8e, 'f32.nearest': 0x90, 'f32.sqrt': 0x91,
  'f32.add': 0x92, 'f32.sub': 0x93, 'f32.mul': 0x94, 'f32.div': 0x95, 'f32.min': 0x96, 'f32.max': 0x97,
  'f64.eq': 0x61, 'f64.ne': 0x62, 'f64.gt': 0x64,
  'f64.abs': 0x99, 'f64.nearest': 0x9e, 'f64.sqrt': 0x9f, 'f64.add': 0xa0, 'f64.sub': 0xa1, 'f64.mul': 0xa2, 'f64.div': 0xa3, 'f64.min': 0xa4, 'f64.max': 0xa5, 'f64.copysign': 0xa6,
  'f32.convert_i32_s': 0xb2, 'f32.convert_i32_u': 0xb3, 'f32.demote_f64': 0xb6, 'f64.promote_f32': 0xbb,
  'i32.reinterpret_f32': 0xbc, 'f32.reinterpret_i32': 0xbe,
  'i32.wrap_i64': 0xa7, 'i64.reinterpret_f64': 0xbd,
} as const;
export type Op = keyof typeof OP;

/** Prefixed opcodes: 0xFC (saturating truncation, bulk memory) and 0xFE (atomics). */
export const PREFIXED = {
  'i32.trunc_sat_f32_s': [0xfc, 0], 'i32.trunc_sat_f32_u': [0xfc, 1],
  'i32.atomic.load': [0xfe, 0x10], 'i32.atomic.store': [0xfe, 0x17], 'i32.atomic.rmw.add': [0xfe, 0x1e],
  'i32.atomic.rmw.xchg': [0xfe, 0x41], 'i32.atomic.rmw.cmpxchg': [0xfe, 0x48],
} as const;

export function uleb(n: number, out: number[] = []): number[] {
  let v = n >>> 0;
  do {
    const b = v & 0x7f;
    v >>>= 7;
    out.push(v ? b | 0x80 : b);
  } while (v);
  return out;
}
export function sleb(n: number, out: number[] = []): number[] {
  let v = n | 0;
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) { out.push(b); return out; }
    out.push(b | 0x80);
  }
}
/** out with xs appended (no spread: bodies may be longer than an argument list may be). */
function append(out: number[], xs: number[]): number[] {
  for (let i = 0; i < xs.length; i++) out.push(xs[i]!);
  return out;
}
const SCRATCH = new DataView(new ArrayBuffer(8));
function name(s: string, out: number[]): void {
  const b = new TextEncoder().encode(s);
  uleb(b.length, out);
  for (const x of b) out.push(x);
}

/** A function body under construction: instructions, extra locals, and named labels for branches. */
export class FnBuilder {
  readonly code: number[] = [];
  private readonly localTypes: ValType[] = [];
  private readonly labels: string[] = [];

  constructor(readonly params: ValType[], readonly results: ValType[]) {}

  local(t: ValType): number {
    this.localTypes.push(t);
    return this.params.length + this.localTypes.length - 1;
  }
  op(o: Op): this { this.code.push(OP[o]); return this; }
  pre(o: keyof typeof PREFIXED): this { const [p, c] = PREFIXED[o]; this.code.push(p); uleb(c, this.code); return this; }
  get(i: number): this { this.code.push(OP['local.get']); uleb(i, this.code); return this; }
  set(i: number): this { this.code.push(OP['local.set']); uleb(i, this.code); return this; }
  tee(i: number): this { this.code.push(OP['local.tee']); uleb(i, this.code); return this; }
  i32(v: number): this { this.code.push(OP['i32.const']); sleb(v, this.code); return this; }
  f32(v: number): this {
    this.code.push(OP['f32.const']);
    SCRATCH.setFloat32(0, v, true);
    for (let i = 0; i < 4; i++) this.code.push(SCRATCH.getUint8(i));
    return this;
  }
  f64(v: number): this {
    this.code.push(OP['f64.const']);
    SCRATCH.setFloat64(0, v, true);
    for (let i = 0; i < 8; i++) this.code.push(SCRATCH.getUint8(i));
    return this;
  }
  /** v128.const of two f64 lanes, or (ints) two i64 lanes given as numbers below 2^53. */
  v128(lanes: [number, number], as: 'f64' | 'i64'): this {
    this.code.push(0xfd);
    uleb(12, this.code);
    for (const v of lanes) {
      if (as === 'f64') SCRATCH.setFloat64(0, v, true); else SCRATCH.setBigUint64(0, BigInt(v), true);
      for (let i = 0; i < 8; i++) this.code.push(SCRATCH.getUint8(i));
    }
    return this;
  }
  /** v128.const of four i32 lanes (f32 lanes: their bits). */
  v128x4(lanes: number[]): this {
    this.code.push(0xfd);
    uleb(12, this.code);
    for (const v of lanes) {
      SCRATCH.setUint32(0, v >>> 0, true);
      for (let i = 0; i < 4; i++) this.code.push(SCRATCH.getUint8(i));
    }
    return this;
  }
  /** A load or store with its memarg: align is log2 of the natural alignment. */
  mem(o: Op | keyof typeof PREFIXED, offset = 0): this {
    if (o in PREFIXED) this.pre(o as keyof typeof PREFIXED); else this.op(o as Op);
    const align = /load8|store8/.test(o) ? 0 : /load16|store16/.test(o) ? 1 : 2;
    uleb(align, this.code);
    uleb(offset, this.code);
    return this;
  }
  /** A SIMD128 memory instruction (align: log2 of the alignment the address guarantees). */
  simdMem(o: keyof typeof SIMD_MEM, offset: number, align: number): this {
    this.code.push(0xfd);
    uleb(SIMD_MEM[o], this.code);
    uleb(align, this.code);
    uleb(offset, this.code);
    return this;
  }
  /** A SIMD128 instruction; extract_lane takes its lane. */
  simd(o: keyof typeof SIMD, lane?: number): this {
    this.code.push(0xfd);
    uleb(SIMD[o], this.code);
    if (lane !== undefined) this.code.push(lane);
    return this;
  }
  call(fn: number): this { this.code.push(OP.call); uleb(fn, this.code); return this; }
  /** memory.fill (dst, value, n on the stack) and memory.copy (dst, src, n). */
  fill(): this { this.code.push(0xfc); uleb(11, this.code); this.code.push(0); return this; }
  copy(): this { this.code.push(0xfc); uleb(10, this.code); this.code.push(0, 0); return this; }

  // Structured control: every block, loop and if carries a label name that br/br_if refer to.
  block(label: string, result?: ValType): this { return this.open(OP.block, label, result); }
  loop(label: string): this { return this.open(OP.loop, label); }
  if(label: string, result?: ValType): this { return this.open(OP.if, label, result); }
  else(): this { this.code.push(OP.else); return this; }
  end(): this { this.labels.pop(); this.code.push(OP.end); return this; }
  br(label: string): this { this.code.push(OP.br); uleb(this.depth(label), this.code); return this; }
  brIf(label: string): this { this.code.push(OP.br_if); uleb(this.depth(label), this.code); return this; }
  private open(op: number, label: string, result?: ValType): this {
    this.code.push(op, result ? VT[result] : 0x40);
    this.labels.push(label);
    return this;
  }
  private depth(label: string): number {
    const i = this.labels.lastIndexOf(label);
    if (i < 0) throw new Error(`wasm encoder: branch to '${label}', which is not open`);
    return this.labels.length - 1 - i;
  }
  get openLabels(): number { return this.labels.length; }

  /** The function body as the code section holds it. */
  encode(): number[] {
    if (this.labels.length) throw new Error(`wasm encoder: unclosed blocks ${this.labels.join(', ')}`);
    const body: number[] = [];
    // Locals in runs of one type.
    const runs: [number, ValType][] = [];
    for (const t of this.localTypes) {
      const last = runs[runs.length - 1];
      if (last && last[1] === t) last[0]++; else runs.push([1, t]);
    }
    uleb(runs.length, body);
    for (const [n, t] of runs) { uleb(n, body); body.push(VT[t]); }
    append(body, this.code);
    body.push(OP.end);
    return append(uleb(body.length), body);
  }
}

export interface ImportFn { module: string; name: string; params: ValType[]; results: ValType[] }

/** A module: imported shared memory, imported functions, defined functions, exports by name. */
export function encodeModule(imports: ImportFn[], fns: FnBuilder[], exports: Record<string, number>): Uint8Array {
  const types: string[] = [];
  const typeOf = (p: ValType[], r: ValType[]) => {
    const key = `${p.join(',')}>${r.join(',')}`;
    let i = types.indexOf(key);
    if (i < 0) { types.push(key); i = types.length - 1; }
    return i;
  };
  const importTypes = imports.map((f) => typeOf(f.params, f.results));
  const fnTypes = fns.map((f) => typeOf(f.params, f.results));
  const section = (id: number, content: number[], out: number[]) => { out.push(id); uleb(content.length, out); append(out, content); };
  const out: number[] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

  const type: number[] = uleb(types.length);
  for (const key of types) {
    const [p, r] = key.split('>') as [string, string];
    const ps = p ? (p.split(',') as ValType[]) : [], rs = r ? (r.split(',') as ValType[]) : [];
    type.push(0x60);
    uleb(ps.length, type); for (const t of ps) type.push(VT[t]);
    uleb(rs.length, type); for (const t of rs) type.push(VT[t]);
  }
  section(1, type, out);

  const imp: number[] = uleb(imports.length + 1);
  name('env', imp); name('memory', imp);
  imp.push(0x02, 0x03); uleb(1, imp); uleb(65536, imp); // shared memory, 1 .. 65536 pages
  imports.forEach((f, i) => { name(f.module, imp); name(f.name, imp); imp.push(0x00); uleb(importTypes[i]!, imp); });
  section(2, imp, out);

  const fn: number[] = uleb(fns.length);
  for (const t of fnTypes) uleb(t, fn);
  section(3, fn, out);

  const ex: number[] = uleb(Object.keys(exports).length);
  for (const [n, i] of Object.entries(exports)) { name(n, ex); ex.push(0x00); uleb(i, ex); }
  section(7, ex, out);

  const code: number[] = uleb(fns.length);
  for (const f of fns) append(code, f.encode());
  section(10, code, out);
  return Uint8Array.from(out);
}
