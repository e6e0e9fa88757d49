// Vector storage bindings: a binding declared with `vec: W` reads and writes vecW<T> elements,
// element i being scalars [W·i, W·i + W) of the host's scalar buffer. Checked exactly against a
// JavaScript reference (every operation below is exact or one correctly rounded f32 step), with
// odd vector counts, a read-modify-write of one element, and the launch and build-time errors.
import { describe, expect, it } from 'vitest';
import { type Caps, CUDA_CAPS, kernel, KernelError, storage, type StorageType, type VecWidth } from '../../codegen/dsl/index.js';
import { LaunchError } from '../../src/backend/device.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, randomF32, rng } from '../util.js';
import { Buffers } from './buffers.js';

const WG = 64;

/**
 * For each vector i < n:
 *   o4[i]   = a[i].wzyx · 2 + f32(c[i])          (vec4 in, vec4 out, components reordered)
 *   o2[i]   = (o2[i].y ^ b[i].x, o2[i].x + b[i].y) (vec2 read and written in place)
 *   sums[i] = ((a.x − a.y) + a.z) − a.w          (a scalar output of a vec4's components in order)
 */
function vecBindings(caps: Caps) {
  return kernel({
    name: 'vecBindings',
    caps,
    workgroupSize: WG,
    bindings: {
      a: storage('f32', 'read', { vec: 4, shape: '[n, 4]' }),
      b: storage('u32', 'read', { vec: 2, shape: '[n, 2]' }),
      c: storage('i32', 'read', { vec: 4, shape: '[n, 4]' }),
      o4: storage('f32', 'read_write', { vec: 4, shape: '[n, 4]' }),
      o2: storage('u32', 'read_write', { vec: 2, shape: '[n, 2]' }),
      sums: storage('f32', 'read_write', { shape: '[n]' }),
    },
    uniforms: { n: 'u32' },
    grid: ({ n }) => Math.ceil(n / WG),
    body(k, { a, b, c, o4, o2, sums }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.ge(n), () => k.return());
      const av = k.let('av', a.at(i));
      o4.set(i, av.swizzle<'vec4<f32>'>('wzyx').mul(2).add(k.cast('vec4<f32>', c.at(i))));
      const bv = k.let('bv', b.at(i));
      const old = o2.at(i);
      o2.set(i, k.vec('vec2<u32>', old.y.bxor(bv.x), old.x.add(bv.y)));
      sums.set(i, av.x.sub(av.y).add(av.z).sub(av.w));
    },
  });
}

function reference(n: number, a: Float32Array, b: Uint32Array, c: Int32Array, o2In: Uint32Array) {
  const o4 = new Float32Array(4 * n), o2 = new Uint32Array(2 * n), sums = new Float32Array(n);
  const f = Math.fround;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < 4; j++) o4[4 * i + j] = f(f(a[4 * i + 3 - j]! * 2) + c[4 * i + j]!);
    o2[2 * i] = (o2In[2 * i + 1]! ^ b[2 * i]!) >>> 0;
    o2[2 * i + 1] = (o2In[2 * i]! + b[2 * i + 1]!) >>> 0;
    sums[i] = f(f(f(a[4 * i]! - a[4 * i + 1]!) + a[4 * i + 2]!) - a[4 * i + 3]!);
  }
  return { o4, o2, sums };
}

/** Indices where got and want differ bit for bit (NaN poison counts as a difference). */
function diffs(got: ArrayLike<number>, want: ArrayLike<number>, what: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < want.length && out.length < 10; i++) {
    if (!Object.is(got[i], want[i])) out.push(`${what}[${i}]: got ${got[i]}, want ${want[i]}`);
  }
  return out;
}

forEachBackend('vector storage bindings', (dev) => {
  for (const n of [1, 37, 1001]) {
    it(`n = ${n} vectors: vec4/vec2 loads and stores match the reference exactly`, async () => {
      const r = rng(freshSeed(`vector bindings n=${n}`));
      const a = randomF32(4 * n, r, -8, 8);
      const b = Uint32Array.from({ length: 2 * n }, () => (r() * 2 ** 32) >>> 0);
      const c = Int32Array.from({ length: 4 * n }, () => Math.floor(r() * 2001) - 1000);
      const o2In = Uint32Array.from({ length: 2 * n + 2 }, () => (r() * 2 ** 32) >>> 0);
      const ref = reference(n, a, b, c, o2In);
      const bufs = new Buffers(dev);
      try {
        // Outputs hold one vector more than the launch covers: it must stay as it was.
        const o4 = bufs.output('f32', 4 * (n + 1), 'o4');
        const sums = bufs.output('f32', n + 1, 'sums');
        const o2 = bufs.input('u32', o2In, 'o2');
        dev.launch(vecBindings(dev.caps), {
          a: bufs.input('f32', a, 'a'), b: bufs.input('u32', b, 'b'), c: bufs.input('i32', c, 'c'), o4, o2, sums,
        }, { n });
        const [g4, g2, gs] = [await bufs.read(o4), await bufs.read(o2), await bufs.read(sums)];
        expect([...diffs(g4, ref.o4, 'o4'), ...diffs(g2, ref.o2, 'o2'), ...diffs(gs, ref.sums, 'sums')]).toEqual([]);
        expect(Array.from(g4.subarray(4 * n)).every(Number.isNaN)).toBe(true);
        expect(Number.isNaN(gs[n])).toBe(true);
        expect(Array.from(g2.subarray(2 * n))).toEqual(Array.from(o2In.subarray(2 * n)));
      } finally { bufs.free(); }
    });
  }

  it('a buffer whose length is not a multiple of the width, or too short, is refused before launch', async () => {
    const n = 37;
    const bufs = new Buffers(dev);
    try {
      const o4 = bufs.output('f32', 4 * n, 'o4');
      const good = {
        a: bufs.input('f32', new Float32Array(4 * n).fill(1), 'a'), b: bufs.input('u32', new Uint32Array(2 * n), 'b'),
        c: bufs.input('i32', new Int32Array(4 * n), 'c'), o4, o2: bufs.input('u32', new Uint32Array(2 * n), 'o2'),
        sums: bufs.output('f32', n, 'sums'),
      };
      const kern = vecBindings(dev.caps);
      const ragged = bufs.input('f32', new Float32Array(4 * n + 2), 'a_ragged');
      expect(() => dev.launch(kern, { ...good, a: ragged }, { n }))
        .toThrow(/kernel 'vecBindings': buffer 'a_ragged' bound to 'a' \(vec4<f32>\) has 150 elements, not a multiple of 4/);
      expect(() => dev.launch(kern, { ...good, b: bufs.input('u32', new Uint32Array(2 * n + 1), 'b_odd') }, { n }))
        .toThrow(LaunchError);
      // `len` counts scalars: 4(n − 1) is a whole number of vectors but one vector short.
      expect(() => dev.launch(kern, { ...good, a: bufs.input('f32', new Float32Array(4 * (n - 1)), 'a_short') }, { n }))
        .toThrow(/buffer 'a_short' bound to 'a' has 144 elements, the launch needs 148/);
      expect(Array.from(await bufs.read(o4)).every(Number.isNaN)).toBe(true);
    } finally { bufs.free(); }
  });
});

describe('vector bindings are checked when the kernel is built', () => {
  const probe = (t: StorageType, opts: { vec?: number; atomic?: boolean }, caps: Caps = CUDA_CAPS) => () => kernel({
    name: 'vecProbe', caps, workgroupSize: 32,
    bindings: { q: storage(t, 'read_write', opts as { vec?: VecWidth; atomic?: boolean }) },
    uniforms: {},
    grid: () => 1,
    body() {},
  });
  it('the width is 1, 2 or 4; not on f16 or atomic bindings', () => {
    expect(probe('u32', { vec: 3 })).toThrow(KernelError);
    expect(probe('u32', { vec: 3 })).toThrow(/kernel 'vecProbe': binding 'q' has vector width 3, not 1, 2 or 4/);
    expect(probe('u32', { vec: 8 })).toThrow(/binding 'q' has vector width 8/);
    expect(probe('f16', { vec: 2 })).toThrow(/kernel 'vecProbe': binding 'q' is f16 with vector width 2/);
    expect(probe('u32', { vec: 4, atomic: true })).toThrow(/kernel 'vecProbe': atomic binding 'q' cannot have vector width 4/);
    for (const vec of [1, 2, 4]) expect(probe('i32', { vec })).not.toThrow();
  });

  it('a store of the wrong type names the kernel, the value and the binding', () => {
    const build = (store: 'scalar' | 'vec2' | 'u32vec') => kernel({
      name: 'badStore', workgroupSize: 32,
      bindings: { o: storage('f32', 'read_write', { vec: 4 }), s: storage('f32', 'read') },
      uniforms: {},
      grid: () => 1,
      body(k, { o, s }) {
        const x = s.at(0);
        if (store === 'scalar') o.set(0, x as never);
        else if (store === 'vec2') o.set(0, k.vec('vec2<f32>', x, x) as never);
        else o.set(0, k.vec('vec4<u32>', 1, 2, 3, 4) as never);
      },
    });
    expect(() => build('scalar')).toThrow(/kernel 'badStore': store of f32 into vec4<f32> array 'o'/);
    expect(() => build('vec2')).toThrow(/store of vec2<f32> into vec4<f32> array 'o'/);
    expect(() => build('u32vec')).toThrow(/store of vec4<u32> into vec4<f32> array 'o'/);
  });

  it('loads have the vector type, in the IR and for TypeScript', () => {
    const notNow = false as boolean; // the line under @ts-expect-error is type-checked, never built
    const kern = kernel({
      name: 'vecTypes', workgroupSize: 32,
      bindings: { q: storage('u32', 'read', { vec: 4 }), o: storage('u32', 'read_write', { vec: 2 }) },
      uniforms: {},
      grid: () => 1,
      body(k, { q, o }) {
        const v = q.at(k.localIndex); // Val<'vec4<u32>'>
        o.set(k.localIndex, v.swizzle<'vec2<u32>'>('xw'));
        // @ts-expect-error a vec2 binding takes vec2<u32>, not a scalar value
        if (notNow) o.set(0, v.x);
      },
    });
    expect(kern.ir.buffers.map((b) => [b.key, b.t, b.vec])).toEqual([['q', 'u32', 4], ['o', 'u32', 2]]);
    const store = kern.ir.body.find((s) => s.k === 'store');
    expect(store && store.k === 'store' && store.value.t).toBe('vec2<u32>');
    expect(store && store.k === 'store' && store.value.k === 'swizzle' && store.value.a.t).toBe('vec4<u32>');
  });
});
