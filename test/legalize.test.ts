// Target legalization (codegen/emit/legalize.ts): after the CUDA and WGSL passes, nothing is left
// that the printer would have to rewrite itself, the passes are idempotent, and a lifted vector
// operation expanded per component (a target without vectors) computes what the vector one does.
import { describe, expect, it } from 'vitest';
import { type DType, Val, kernel, storage } from '../codegen/dsl/index.js';
import type { Expr, KernelIR } from '../codegen/dsl/ir.js';
import { CUDA_CAPS, isVec } from '../codegen/dsl/types.js';
import { forEachExpr, walk } from '../codegen/dsl/walk.js';
import { CUDA_TARGET, WGSL_TARGET, expandLanes, legalize, legalizeExpr } from '../codegen/emit/legalize.js';
import { createDevice } from '../src/index.js';
import { allKinds } from './fixtures/allKinds.js';
import { freshSeed, rng } from './util.js';

/** Every expression of a body, lane bodies included. */
function allExprs(ir: KernelIR): Expr[] {
  const out: Expr[] = [];
  const visit = (e: Expr): void => forEachExpr(e, (x) => { out.push(x); if (x.k === 'lanes') visit(x.body); });
  walk(ir.body, () => {}, (e) => { if (e.k === 'lanes') visit(e.body); out.push(e); }); // every node; lane bodies too
  return out;
}
const kinds = (es: Expr[]) => new Set(es.map((e) => (e.k === 'bin' ? `bin:${e.op}${isVec(e.t) ? ':vec' : ''}` : e.k)));

describe('legalization', () => {
  const full = allKinds(CUDA_CAPS).ir;

  it('CUDA: shift amounts provably below 32, float % as fmodf, vector %, shifts, casts, selects and math lifted', () => {
    const before = kinds(allExprs(full));
    expect(before).toContain('bin:rem:vec'); // the fixture has the cases the pass must handle
    expect(before).toContain('bin:shl:vec');
    const out = allExprs(legalize(full, CUDA_TARGET));
    for (const e of out) {
      if (e.k === 'bin' && (e.op === 'shl' || e.op === 'shr')) {
        expect(isVec(e.t)).toBe(false);
        const b = e.b;
        const visiblyBelow32 = b.k === 'const' || (b.k === 'bin' && b.b.k === 'const' && (b.op === 'band' || b.op === 'rem'));
        expect(visiblyBelow32, `shift amount ${JSON.stringify(b).slice(0, 120)}`).toBe(true);
      }
      if (e.k === 'bin' && e.op === 'rem') expect(e.t === 'f32' || e.t === 'f16' || isVec(e.t)).toBe(false);
      if (e.k === 'cast' || (e.k === 'call' && e.fn !== 'dot')) expect(isVec(e.t)).toBe(false);
      if (e.k === 'select') expect(isVec(e.cond.t)).toBe(false);
    }
    const after = kinds(out);
    expect(after).toContain('lanes');
    expect(after).toContain('intrinsic');
  });

  it('WGSL: && and || on bool vectors become & and |; nothing else changes', () => {
    const out = legalize(full, WGSL_TARGET);
    for (const e of allExprs(out)) if (e.k === 'bin' && (e.op === 'and' || e.op === 'or')) expect(isVec(e.t)).toBe(false);
    expect(kinds(allExprs(out))).not.toContain('lanes');
    expect(allExprs(out).length).toBe(allExprs(full).length);
  });

  it('the passes are idempotent', () => {
    for (const t of [CUDA_TARGET, WGSL_TARGET]) {
      const once = legalize(full, t);
      expect(legalize(once, t).body).toEqual(once.body);
    }
  });

  it('a lifted operation expanded per component runs as the vector operation (cpu executor)', async () => {
    // out[i] = (a % b) and (w << s) over vec4 lanes: once as written, once lifted (as for CUDA, but
    // keeping % and shifts, which JS has) and expanded per component, as a target without vectors would.
    const scalarTarget = { name: 'scalar', liftVector: CUDA_TARGET.liftVector };
    const build = (expand: boolean) => kernel({
      name: expand ? 'expanded' : 'vectors', workgroupSize: 64,
      bindings: {
        a: storage('f32', 'read', { vec: 4, shape: '[n, 4]' }), b: storage('f32', 'read', { vec: 4, shape: '[n, 4]' }),
        w: storage('u32', 'read', { vec: 4, shape: '[n, 4]' }), s: storage('u32', 'read', { vec: 4, shape: '[n, 4]' }),
        r: storage('f32', 'read_write', { vec: 4, shape: '[n, 4]' }), q: storage('u32', 'read_write', { vec: 4, shape: '[n, 4]' }),
      },
      uniforms: { n: 'u32' },
      grid: '[ceil(n / 64)]',
      body(k, { a, b, w, s, r, q }, { n }) {
        const i = k.let('i', k.globalId.x);
        const put = <T extends DType>(v: Val<T>): Val<T> => {
          if (!expand) return v;
          const l = legalizeExpr(v.e, scalarTarget);
          if (l.k !== 'lanes') throw new Error(`expected a lifted operation, got ${l.k}`);
          return new Val<T>(expandLanes(l), v.kb);
        };
        k.if(i.lt(n), () => {
          r.set(i, put(a.at(i).rem(b.at(i))));
          // Vector shift amounts are valid IR; the builder's signature admits scalar amounts only.
          q.set(i, put(w.at(i).shl(s.at(i) as unknown as Val<'u32'>)));
        });
      },
    });
    const dev = await createDevice('cpu');
    const seed = freshSeed('legalize lanes');
    const rand = rng(seed);
    const n = 96;
    const a = Float32Array.from({ length: 4 * n }, () => (rand() - 0.5) * 100);
    const b = Float32Array.from({ length: 4 * n }, () => (rand() - 0.5) * 8 || 1);
    const w = Uint32Array.from({ length: 4 * n }, () => Math.floor(rand() * 2 ** 32));
    const s = Uint32Array.from({ length: 4 * n }, () => Math.floor(rand() * 64));
    const results: [Float32Array, Uint32Array][] = [];
    for (const expand of [false, true]) {
      const f = (d: Float32Array) => { const x = dev.alloc('f32', d.length); dev.write(x, d); return x; };
      const u = (d: Uint32Array) => { const x = dev.alloc('u32', d.length); dev.write(x, d); return x; };
      const r = f(new Float32Array(4 * n).fill(Number.NaN)), q = u(new Uint32Array(4 * n).fill(0xdeadbeef)); // poisoned
      dev.launch(build(expand), { a: f(a), b: f(b), w: u(w), s: u(s), r, q }, { n });
      results.push([await dev.read(r), await dev.read(q)]);
    }
    const [[r0, q0], [r1, q1]] = results as [[Float32Array, Uint32Array], [Float32Array, Uint32Array]];
    await dev.destroy();
    expect(Array.from(r1)).toEqual(Array.from(r0));
    expect(Array.from(q1)).toEqual(Array.from(q0));
    // And both are what % and << mean (shift amounts mod 32): not the same wrong answer twice.
    for (let j = 0; j < 4 * n; j++) {
      expect(r0[j]).toBe(Math.fround(a[j]! % b[j]!));
      expect(q0[j]).toBe((w[j]! << (s[j]! & 31)) >>> 0);
    }
  });
});
