// The tensor-core MMA node (k.mma): d = a·b + c for one warp, m16n8k16, f16 × f16 → f32.
//
// Fragment layout (CUDA's mma.sync.m16n8k16.row.col, PTX ISA "Matrix fragments for mma.m16n8k16"):
// lane l of a warp has group g = l >> 2 and thread t = l & 3.
//   A (16 × 16, row-major), a[0..3], two f16 per word (low half first):
//     a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   B (16 × 8, k × n), b[0..1]:  b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   C, D (16 × 8), c[0..3] / d[0..3]:  [0] = C[g][2t]  [1] = C[g][2t+1]  [2] = C[g+8][2t]  [3] = C[g+8][2t+1]
//
// CUDA emits the instruction itself (cuda.ts). Every other target runs this IR → IR lowering
// first, which defines the result exactly: each invocation stores its A and B fragments in
// workgroup scratch (MMA_SCRATCH_WORDS per invocation), a barrier, then each computes its four
// outputs as d[i] = (((c[i] + A[r][0]·B[0][n]) + A[r][1]·B[1][n]) + …) + A[r][15]·B[15][n] — k in
// order, each sum rounded to f32 (the products of two f16 are exact in f32, so this is also the
// fma order) — and a second barrier before the scratch is reused. Tensor cores accumulate with
// more internal precision and in their own order, so CUDA agrees within tolerance, not bit for bit.
// The barriers are why every invocation of the workgroup must reach an mma together.
import type { Expr, KernelIR, Stmt } from '../dsl/ir.js';

/** Scratch words per invocation: its 4 A words and 2 B words. */
export const MMA_SCRATCH_WORDS = 6;

function hasMma(body: Stmt[]): boolean {
  return body.some((s) => s.k === 'mma' || (s.k === 'if' && (hasMma(s.then) || hasMma(s.else))) || ((s.k === 'for' || s.k === 'while') && hasMma(s.body)));
}

const u32 = (v: number): Expr => ({ k: 'const', t: 'u32', v });
const bin = (op: 'add' | 'mul' | 'band' | 'shr' | 'sub', a: Expr, b: Expr): Expr => ({ k: 'bin', t: 'u32', op, a, b });
const v = (name: string, t: 'u32' | 'f32'): Expr => ({ k: 'var', t, name });

/** The kernel with every mma replaced by its workgroup-memory emulation (see the header). */
export function lowerMma(ir: KernelIR): KernelIR {
  if (!hasMma(ir.body)) return ir;
  const W = ir.workgroupSize[0] * ir.workgroupSize[1] * ir.workgroupSize[2];
  if (W % 32) throw new Error(`kernel '${ir.name}': mma needs whole warps, the workgroup has ${W} invocations`);
  const taken = new Set([...ir.shared.map((s) => s.name), ...ir.buffers.map((b) => b.name), ...ir.uniforms.map((u) => u.name)]);
  const fresh = (base: string) => { let n = base, i = 1; while (taken.has(n)) n = `${base}_${i++}`; taken.add(n); return n; };
  const fragA = fresh('mmaFragA'), fragB = fresh('mmaFragB');
  let site = 0;
  const lowerOne = (s: Extract<Stmt, { k: 'mma' }>): Stmt[] => {
    const p = `mma${site++}_`;
    const li = `${p}li`, base = `${p}warp`, g = `${p}g`, t = `${p}t`;
    const out: Stmt[] = [
      { k: 'let', name: li, t: 'u32', init: { k: 'builtin', t: 'u32', name: 'localIndex' }, mutable: false },
    ];
    const priv = (name: string, i: number, t: 'u32' | 'f32'): Expr => ({ k: 'load', t, space: 'private', name, index: u32(i) });
    for (let i = 0; i < 4; i++) out.push({ k: 'store', space: 'workgroup', name: fragA, index: bin('add', bin('mul', v(li, 'u32'), u32(4)), u32(i)), value: priv(s.a, i, 'u32') });
    for (let i = 0; i < 2; i++) out.push({ k: 'store', space: 'workgroup', name: fragB, index: bin('add', bin('mul', v(li, 'u32'), u32(2)), u32(i)), value: priv(s.b, i, 'u32') });
    out.push({ k: 'barrier' });
    out.push(
      { k: 'let', name: base, t: 'u32', init: bin('sub', v(li, 'u32'), bin('band', v(li, 'u32'), u32(31))), mutable: false },
      { k: 'let', name: g, t: 'u32', init: bin('shr', bin('band', v(li, 'u32'), u32(31)), u32(2)), mutable: false },
      { k: 'let', name: t, t: 'u32', init: bin('band', v(li, 'u32'), u32(3)), mutable: false },
    );
    // Half h (0 low, 1 high) of scratch word `index` of `frag`, as f32.
    const half = (frag: string, index: Expr, h: number): Expr => ({
      k: 'swizzle', t: 'f32', comps: h ? 'y' : 'x',
      a: { k: 'unpack2x16float', t: 'vec2<f32>', a: { k: 'load', t: 'u32', space: 'workgroup', name: frag, index } },
    });
    const results: string[] = [];
    for (let i = 0; i < 4; i++) {
      const acc = `${p}d${i}`;
      results.push(acc);
      out.push({ k: 'let', name: acc, t: 'f32', init: priv(s.c, i, 'f32'), mutable: true });
      const rowHi = i >> 1; // output row g + 8·rowHi
      const col = bin('add', bin('mul', v(t, 'u32'), u32(2)), u32(i & 1)); // output column 2t + (i & 1)
      for (let kk = 0; kk < 16; kk++) {
        const khi = kk >> 3, pair = (kk & 7) >> 1, h = kk & 1;
        // A[g + 8·rowHi][kk] sits with lane 4g + pair, word rowHi + 2·khi; B[kk][col] with lane 4·col + pair, word khi.
        const aLane = bin('add', v(base, 'u32'), bin('add', bin('mul', v(g, 'u32'), u32(4)), u32(pair)));
        const bLane = bin('add', v(base, 'u32'), bin('add', bin('mul', col, u32(4)), u32(pair)));
        const aVal = half(fragA, bin('add', bin('mul', aLane, u32(4)), u32(rowHi + 2 * khi)), h);
        const bVal = half(fragB, bin('add', bin('mul', bLane, u32(2)), u32(khi)), h);
        out.push({ k: 'assign', name: acc, value: { k: 'bin', t: 'f32', op: 'add', a: v(acc, 'f32'), b: { k: 'bin', t: 'f32', op: 'mul', a: aVal, b: bVal } } });
      }
    }
    // d may be c: every output is computed before any is stored.
    results.forEach((r, i) => out.push({ k: 'store', space: 'private', name: s.d, index: u32(i), value: v(r, 'f32') }));
    out.push({ k: 'barrier' });
    return out;
  };
  const lower = (body: Stmt[]): Stmt[] => body.flatMap((s): Stmt[] => {
    switch (s.k) {
      case 'mma': return lowerOne(s);
      case 'if': return [{ ...s, then: lower(s.then), else: lower(s.else) }];
      case 'for': case 'while': return [{ ...s, body: lower(s.body) }];
      default: return [s];
    }
  });
  return {
    ...ir,
    shared: [...ir.shared, { name: fragA, t: 'u32', length: 4 * W, atomic: false }, { name: fragB, t: 'u32', length: 2 * W, atomic: false }],
    body: lower(ir.body),
  };
}
