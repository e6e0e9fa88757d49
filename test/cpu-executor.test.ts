// The CPU executor: GPU semantics of the JS emitter (rounding, wrapping, f16, bit casts, barriers,
// subgroups, atomics) and the device around it (workers, ordering, errors, launch validation).
// Kernels are written here; references are independent (BigInt for integers, explicit rounding).
// Every kernel run through exec() also runs on the wasm executor, which must give the same bits.
import { afterAll, describe, expect, it } from 'vitest';
import {
  type Bindings, type Kernel, clamp, dot, fma, inverseSqrt, kernel, max, min, round, sqrt, storage,
} from '../codegen/dsl/index.js';
import type { StorageType } from '../codegen/dsl/types.js';
import { emitJS, f16BitsToF32, f32ToF16Bits } from '../codegen/emit/js.js';
import { matmulTiled } from '../codegen/kernels/matmulTiled.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { createCpuDevice, CPU_CAPS, KernelRunError } from '../src/backend/cpu/index.js';
import { type Device, type DeviceBuffer, type HostArray, LaunchError } from '../src/backend/device.js';
import { freshSeed, randomF32, rng } from './util.js';

const dev = await createCpuDevice({ workers: 2, check: false, executor: 'js' });
const wasmDev = await createCpuDevice({ workers: 2, executor: 'wasm' });
const devs: Device[] = [dev, wasmDev];
afterAll(async () => { for (const d of devs) await d.destroy(); });

type Data = Record<string, HostArray<StorageType>>;
/**
 * Upload `data` (one array per binding), launch once, read back every read_write binding. On the
 * js executor's `dev`, the same launch on the wasm executor must give the same bytes.
 */
async function exec(d: Device, k: Kernel<any, any>, data: Data, u: Record<string, number>): Promise<Data> {
  const out = await execOn(d, k, data, u);
  if (d === dev) {
    const w = await execOn(wasmDev, k, data, u);
    for (const [name, arr] of Object.entries(out)) {
      const bytes = (a: HostArray<StorageType>) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      expect(bytes(w[name]!), `kernel '${k.ir.name}', binding '${name}': wasm executor vs js`).toEqual(bytes(arr));
    }
  }
  return out;
}
async function execOn(d: Device, k: Kernel<any, any>, data: Data, u: Record<string, number>): Promise<Data> {
  const bufs: Record<string, DeviceBuffer> = {};
  for (const [name, spec] of Object.entries(k.bindings as Bindings)) {
    const arr = data[name];
    if (!arr) throw new Error(`test: no data for binding '${name}'`);
    bufs[name] = d.alloc(spec.t, arr.length, name);
    d.write(bufs[name]!, arr);
  }
  d.launch(k, bufs as never, u as never);
  const out: Data = {};
  for (const [name, spec] of Object.entries(k.bindings as Bindings)) if (spec.access === 'read_write') out[name] = await d.read(bufs[name]!);
  for (const b of Object.values(bufs)) d.free(b);
  return out;
}
const f = Math.fround;
const poisonF32 = (n: number) => new Float32Array(n).fill(Number.NaN);

describe('f32 arithmetic', () => {
  it('rounds to f32 after every operation', async () => {
    const n = 4096, r = rng(freshSeed('f32 ops'));
    const k = kernel({
      name: 'f32Ops', workgroupSize: 64, grid: ({ n }) => Math.ceil(n / 64),
      bindings: { a: storage('f32', 'read'), b: storage('f32', 'read'), out: storage('f32', 'read_write') },
      uniforms: { n: 'u32' },
      body(k, { a, b, out }, { n }) {
        const i = k.let('i', k.globalId.x);
        k.if(i.lt(n), () => {
          const x = k.let('x', a.at(i)), y = k.let('y', b.at(i));
          out.set(i.mul(5), x.mul(y).add(x));
          out.set(i.mul(5).add(1), x.div(y));
          out.set(i.mul(5).add(2), sqrt(x.mul(x).add(y.mul(y))));
          const s = k.var('s', 'f32', 0);
          k.for('j', k.u32(0), k.u32(64), (j) => s.set(s.add(a.at(i.add(j).rem(n)).mul(b.at(j)))));
          out.set(i.mul(5).add(3), s);
          out.set(i.mul(5).add(4), x.add(1e-8).sub(x)); // x = 1 below: 0 in f32, 1e-8 in f64
        });
      },
    });
    const a = randomF32(n, r, -3, 3), b = randomF32(n, r, 0.5, 2);
    a[7] = 1;
    const { out } = await exec(dev, k, { a, b, out: poisonF32(5 * n) }, { n });
    let sumDiffersFromF64 = 0;
    for (let i = 0; i < n; i++) {
      const x = a[i]!, y = b[i]!;
      expect(out![5 * i]).toBe(f(f(x * y) + x));
      expect(out![5 * i + 1]).toBe(f(x / y));
      expect(out![5 * i + 2]).toBe(f(Math.sqrt(f(f(x * x) + f(y * y)))));
      let s = 0, s64 = 0;
      for (let j = 0; j < 64; j++) { s = f(s + f(a[(i + j) % n]! * b[j]!)); s64 += a[(i + j) % n]! * b[j]!; }
      expect(out![5 * i + 3]).toBe(s);
      if (f(s64) !== s) sumDiffersFromF64++;
      expect(out![5 * i + 4]).toBe(f(f(x + f(1e-8)) - x));
    }
    expect(out![5 * 7 + 4]).toBe(0);
    expect(sumDiffersFromF64).toBeGreaterThan(n / 10); // f64 accumulation would fail this test
  });

  it('vectors, swizzles, select, dot, clamp, min/max, fma, round half to even, inverseSqrt', async () => {
    const n = 256, r = rng(freshSeed('vector ops'));
    const k = kernel({
      name: 'vecOps', workgroupSize: 32, grid: ({ n }) => n / 32,
      bindings: { a: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: { n: 'u32' },
      body(k, { a, out }) {
        const i = k.let('i', k.globalId.x);
        const v = k.var('v', k.vec('vec4<f32>', a.at(i.mul(4)), a.at(i.mul(4).add(1)), a.at(i.mul(4).add(2)), a.at(i.mul(4).add(3))));
        const w = k.let('w', v.swizzle<'vec4<f32>'>('wzyx').mul(k.vec('vec4<f32>', 0.5)));
        v.set(v.swizzle<'vec4<f32>'>('yxwz')); // swap in place: needs temporaries
        const o = i.mul(8);
        out.set(o, dot(v, w));
        out.set(o.add(1), k.select(v.gt(w), v, w).z);
        out.set(o.add(2), clamp(v.x, -0.25, 0.25));
        out.set(o.add(3), min(v.y, w.y).add(max(v.z, w.z)));
        out.set(o.add(4), fma(v.x, w.x, v.w));
        out.set(o.add(5), round(v.x.mul(4)));
        out.set(o.add(6), inverseSqrt(v.y.mul(v.y).add(1)));
        out.set(o.add(7), v.swizzle<'vec3<f32>'>('xyz').add(w.swizzle<'vec3<f32>'>('www')).x);
      },
    });
    const a = randomF32(4 * n, r, -2, 2);
    for (let i = 0; i < 16; i++) a[4 * i] = (i - 8) / 4 + 0.125; // v.x*4 = k + 0.5: ties
    const { out } = await exec(dev, k, { a, out: poisonF32(8 * n) }, { n });
    const evenRound = (x: number) => { const fl = Math.floor(x); return x - fl === 0.5 ? (fl % 2 === 0 ? fl : fl + 1) : Math.round(x); };
    for (let i = 0; i < n; i++) {
      const [a0, a1, a2, a3] = [a[4 * i]!, a[4 * i + 1]!, a[4 * i + 2]!, a[4 * i + 3]!];
      const w = [f(a3 * 0.5), f(a2 * 0.5), f(a1 * 0.5), f(a0 * 0.5)], v = [a1, a0, a3, a2];
      let d = f(v[0]! * w[0]!);
      for (let c = 1; c < 4; c++) d = f(d + f(v[c]! * w[c]!));
      expect(out!.slice(8 * i, 8 * i + 8)).toEqual(new Float32Array([
        d, v[2]! > w[2]! ? v[2]! : w[2]!, Math.min(Math.max(v[0]!, -0.25), 0.25), f(Math.min(v[1]!, w[1]!) + Math.max(v[2]!, w[2]!)),
        f(v[0]! * w[0]! + v[3]!), evenRound(f(v[0]! * 4)), f(1 / Math.sqrt(f(f(v[1]! * v[1]!) + 1))), f(v[0]! + w[3]!),
      ]));
    }
  });
});

describe('integers', () => {
  const n = 1024;
  const k = kernel({
    name: 'intOps', workgroupSize: 64, grid: ({ n }) => n / 64,
    bindings: {
      a: storage('i32', 'read'), b: storage('i32', 'read'), s: storage('u32', 'read'), x: storage('f32', 'read'),
      io: storage('i32', 'read_write'), uo: storage('u32', 'read_write'),
    },
    uniforms: { n: 'u32' },
    body(k, { a, b, s, x, io, uo }) {
      const i = k.let('i', k.globalId.x);
      const ai = k.let('ai', a.at(i)), bi = k.let('bi', b.at(i)), si = k.let('si', s.at(i));
      const ua = k.let('ua', k.u32(ai)), ub = k.let('ub', k.u32(bi));
      const iOut = [ai.add(bi), ai.sub(bi), ai.mul(bi), ai.div(bi), ai.rem(bi), ai.shl(si), ai.shr(si), ai.neg(), ai.bnot(),
        ai.band(bi).bxor(ai.bor(bi)), k.i32(x.at(i)), ai.div(-7), ai.rem(16)];
      const uOut = [ua.add(ub), ua.sub(ub), ua.mul(ub), ua.div(ub), ua.rem(ub), ua.shl(si), ua.shr(si), ua.bnot(),
        k.u32(x.at(i)), ua.div(16), ua.rem(7), k.u32(k.f32(ua).mul(0.5))];
      iOut.forEach((v, j) => io.set(i.mul(iOut.length).add(j), v));
      uOut.forEach((v, j) => uo.set(i.mul(uOut.length).add(j), v));
    },
  });

  it('wrap, divide by zero as WGSL (x/0 = x, x%0 = 0), mask shifts, truncate and saturate conversions', async () => {
    const r = rng(freshSeed('int ops'));
    const a = new Int32Array(n), b = new Int32Array(n), s = new Uint32Array(n), x = new Float32Array(n);
    const edge = [0, 1, -1, 2147483647, -2147483648, 65536, -65536];
    for (let i = 0; i < n; i++) {
      a[i] = i < 49 ? edge[i % 7]! : (r() * 2 ** 32) | 0;
      b[i] = i < 49 ? edge[Math.floor(i / 7)]! : i % 5 === 0 ? 0 : (r() * 2 ** 32) | 0;
      s[i] = Math.floor(r() * 64); // ≥ 32 too: the shift amount is taken modulo 32
      x[i] = i % 9 === 0 ? [Number.NaN, 3e9, -3e9, 5e9, -0.75][i % 5]! : (r() - 0.5) * 2 ** (r() * 34);
    }
    const io = new Int32Array(13 * n).fill(-559038737), uo = new Uint32Array(12 * n).fill(0xdeadbeef);
    const res = await exec(dev, k, { a, b, s, x, io, uo }, { n });
    const I = (v: bigint) => Number(BigInt.asIntN(32, v)), U = (v: bigint) => Number(BigInt.asUintN(32, v));
    const sat = (v: number, lo: number, hi: number) => (Number.isNaN(v) ? 0 : Math.min(hi, Math.max(lo, Math.trunc(v))) + 0);
    for (let i = 0; i < n; i++) {
      const A = BigInt(a[i]!), B = BigInt(b[i]!), S = BigInt(s[i]! % 32), UA = BigInt.asUintN(32, A), UB = BigInt.asUintN(32, B);
      expect(Array.from(res.io!.slice(13 * i, 13 * i + 13)), `i32 row ${i}`).toEqual([
        I(A + B), I(A - B), I(A * B), B === 0n ? a[i] : I(A / B), B === 0n ? 0 : I(A % B), I(A << S), I(A >> S), I(-A), I(~A),
        I((A & B) ^ (A | B)), sat(x[i]!, -2147483648, 2147483647), I(A / -7n), I(A % 16n),
      ]);
      expect(Array.from(res.uo!.slice(12 * i, 12 * i + 12)), `u32 row ${i}`).toEqual([
        U(UA + UB), U(UA - UB), U(UA * UB), UB === 0n ? Number(UA) : U(UA / UB), UB === 0n ? 0 : U(UA % UB), U(UA << S), U(UA >> S),
        U(~UA), sat(x[i]!, 0, 4294967295), U(UA / 16n), U(UA % 7n), sat(f(f(Number(UA)) * 0.5), 0, 4294967295),
      ]);
    }
  });
});

describe('f16', () => {
  // Every finite f16 value, ascending, for a nearest-value search independent of the bit tricks.
  const finite = Array.from({ length: 0x7c00 }, (_, h) => f16BitsToF32(h));
  function nearestF16Bits(x: number): number {
    const ax = Math.abs(x), sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    if (ax >= 65520) return sign | 0x7c00;
    let lo = 0, hi = finite.length - 1;
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (finite[mid]! <= ax) lo = mid; else hi = mid; }
    const dl = ax - finite[lo]!, dh = finite[hi]! - ax;
    return sign | (dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi);
  }

  it('conversions: exact round trip of every f16, known values, ties to even', () => {
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue; // NaNs
      expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
    }
    expect([0x3c00, 0x7bff, 0x0001, 0x0400, 0xc000, 0x7c00].map(f16BitsToF32)).toEqual([1, 65504, 2 ** -24, 2 ** -14, -2, Infinity]);
    expect(Object.is(f16BitsToF32(0x8000), -0)).toBe(true);
    expect(Number.isNaN(f16BitsToF32(0x7e00))).toBe(true);
    const ties: [number, number][] = [[1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [2 ** -25, 0], [3 * 2 ** -25, 0x0002],
      [65520, 0x7c00], [65519.99, 0x7bff], [-(2 ** -26), 0x8000], [2 ** -14 - 2 ** -25, 0x0400]];
    for (const [x, h] of ties) expect(f32ToF16Bits(x), `f16(${x})`).toBe(h);
    const r = rng(freshSeed('f16 rounding'));
    for (let i = 0; i < 20000; i++) {
      const x = f((r() < 0.5 ? -1 : 1) * 2 ** (r() * 44 - 28) * (1 + r()));
      expect(f32ToF16Bits(x), `f16(${x})`).toBe(nearestF16Bits(x));
    }
  });

  it('f16 storage and arithmetic round to f16 after every op; pack/unpack2x16float; bitcasts', async () => {
    const n = 2048, r = rng(freshSeed('f16 kernel'));
    const k = kernel({
      name: 'f16Ops', workgroupSize: 64, grid: ({ n }) => n / 64, caps: CPU_CAPS,
      bindings: {
        h: storage('f16', 'read'), x: storage('f32', 'read'), ho: storage('f16', 'read_write'),
        uo: storage('u32', 'read_write'), fo: storage('f32', 'read_write'),
      },
      uniforms: { n: 'u32' },
      body(k, { h, x, ho, uo, fo }) {
        const i = k.let('i', k.globalId.x);
        const p = k.let('p', h.at(i)), q = k.let('q', h.at(i.add(1).rem(k.u32(2048))));
        ho.set(i.mul(3), p.mul(q).add(p)); // f16 arithmetic
        ho.set(i.mul(3).add(1), k.f16(x.at(i))); // f32 -> f16 store
        ho.set(i.mul(3).add(2), k.bitcast('vec2<f16>', x.at(i)).y);
        const packed = k.let('packed', k.pack2x16float(k.vec('vec2<f32>', x.at(i), k.f32(p))));
        uo.set(i.mul(3), packed);
        uo.set(i.mul(3).add(1), k.bitcast('u32', x.at(i)));
        uo.set(i.mul(3).add(2), k.bitcast('u32', k.vec('vec2<f16>', p, q)));
        const un = k.let('un', k.unpack2x16float(packed));
        fo.set(i.mul(3), un.x);
        fo.set(i.mul(3).add(1), un.y);
        fo.set(i.mul(3).add(2), k.bitcast('f32', k.bitcast('i32', x.at(i)).add(1)));
      },
    });
    const h = new Uint16Array(n), x = randomF32(n, r, -70000, 70000);
    for (let i = 0; i < n; i++) { h[i] = f32ToF16Bits((r() - 0.5) * 2 ** (r() * 20 - 6)); if (i % 4 === 0) x[i] = f(x[i]! * 2 ** -20); }
    const res = await exec(dev, k, { h, x, ho: new Uint16Array(3 * n), uo: new Uint32Array(3 * n), fo: poisonF32(3 * n) }, { n });
    const v = (b: number) => f16BitsToF32(b), r16 = (y: number) => v(nearestF16Bits(f(y)));
    const dv = new DataView(new ArrayBuffer(4));
    const bits = (y: number) => { dv.setFloat32(0, y, true); return dv.getUint32(0, true); };
    for (let i = 0; i < n; i++) {
      const p = v(h[i]!), q = v(h[(i + 1) % n]!), xi = x[i]!;
      expect(v(res.ho![3 * i]!), `p*q+p at ${i}`).toBe(r16(r16(p * q) + p));
      expect(res.ho![3 * i + 1]).toBe(nearestF16Bits(xi));
      expect(res.ho![3 * i + 2]).toBe(bits(xi) >>> 16);
      expect(res.uo![3 * i]).toBe((nearestF16Bits(xi) | (h[i]! << 16)) >>> 0);
      expect(res.uo![3 * i + 1]).toBe(bits(xi));
      expect(res.uo![3 * i + 2]).toBe((h[i]! | (h[(i + 1) % n]! << 16)) >>> 0);
      expect(res.fo![3 * i]).toBe(r16(xi));
      expect(res.fo![3 * i + 1]).toBe(p);
      dv.setInt32(0, (bits(xi) + 1) | 0, true);
      expect(Object.is(res.fo![3 * i + 2], dv.getFloat32(0, true)) || Number.isNaN(res.fo![3 * i + 2]!)).toBe(true);
    }
  });
});

describe('barriers and shared memory', () => {
  const WG = 64;
  const k = kernel({
    name: 'tileSums', workgroupSize: WG, grid: ({ groups }) => groups,
    bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { tiles: 'u32', groups: 'u32', stopAt: 'u32' },
    body(k, { x, out }, { tiles, stopAt }) {
      const tile = k.shared('tile', 'f32', WG);
      const li = k.let('li', k.localIndex);
      const hist = k.privateArray('hist', 'f32', 4); // dynamically indexed, lives across barriers
      const acc = k.var('acc', 'f32', 0);
      k.for('t', k.u32(0), tiles, (t) => {
        k.if(t.eq(stopAt), () => k.break()); // uniform early exit from a loop with barriers
        tile.set(li, x.at(k.workgroupId.x.mul(tiles).add(t).mul(WG).add(li)));
        k.barrier();
        const s = k.var('s', 'f32', 0);
        k.for('j', k.u32(0), k.u32(WG), (j) => s.set(s.add(tile.at(li.add(j).rem(WG)))));
        acc.set(acc.add(s));
        hist.set(t.rem(4), hist.at(t.rem(4)).add(s));
        k.barrier();
      });
      const base = k.let('base', k.globalId.x.mul(6));
      out.set(base, acc);
      out.set(base.add(1), tile.at(k.u32(WG - 1).sub(li))); // the last tile loaded, reversed
      for (let c = 0; c < 4; c++) out.set(base.add(2 + c), hist.at(c));
    },
  });

  function reference(x: Float32Array, tiles: number, groups: number, stopAt: number): Float32Array {
    const out = new Float32Array(groups * WG * 6);
    for (let g = 0; g < groups; g++) {
      const tile = new Float32Array(WG);
      for (let li = 0; li < WG; li++) {
        let acc = 0;
        const hist = [0, 0, 0, 0];
        for (let t = 0; t < Math.min(tiles, stopAt); t++) {
          for (let m = 0; m < WG; m++) tile[m] = x[(g * tiles + t) * WG + m]!;
          let s = 0;
          for (let j = 0; j < WG; j++) s = f(s + tile[(li + j) % WG]!);
          acc = f(acc + s);
          hist[t % 4] = f(hist[t % 4]! + s);
        }
        out.set([acc, tile[WG - 1 - li]!, ...hist], (g * WG + li) * 6);
      }
    }
    return out;
  }

  it('a loop with barriers, a uniform break, a private array kept across barriers', async () => {
    const r = rng(freshSeed('tile sums'));
    for (const [tiles, groups, stopAt] of [[7, 5, 99], [9, 3, 6]] as const) {
      const x = randomF32(tiles * groups * WG, r);
      const { out } = await exec(dev, k, { x, out: poisonF32(groups * WG * 6) }, { tiles, groups, stopAt });
      expect(out).toEqual(reference(x, tiles, groups, stopAt));
    }
  });

  it('continue, if/else with barriers in both branches, a while loop around a barrier; vector, bool and private state across them', async () => {
    const W = 32;
    const k = kernel({
      name: 'controlFlow', workgroupSize: W, grid: () => 2,
      bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: { T: 'u32', skip: 'u32' },
      body(k, { x, out }, { T, skip }) {
        const tile = k.shared('tile', 'f32', W);
        const li = k.let('li', k.localIndex);
        const v = k.var('v', k.vec('vec2<f32>', x.at(k.globalId.x), k.f32(1)));
        const flag = k.var('flag', li.rem(3).eq(0));
        const acc = k.var('acc', 'f32', 0);
        const p = k.privateArray('p', 'f32', 2);
        k.for('t', k.u32(0), T, (t) => {
          k.if(t.eq(skip), () => k.continue());
          tile.set(li, v.x.add(k.f32(t)));
          k.barrier();
          k.if(t.rem(2).eq(0), () => {
            acc.set(acc.add(tile.at(li.add(1).rem(W))));
            k.barrier();
          }, () => {
            acc.set(acc.sub(tile.at(li.add(W - 1).rem(W))));
            k.barrier();
          });
          const j = k.var('j', 'f32', 0);
          k.while(tile.at(0).gt(j), () => { k.barrier(); j.set(j.add(1)); });
          p.set(1, p.at(1).add(j));
          v.set(v.swizzle<'vec2<f32>'>('yx'));
          k.if(flag, () => acc.set(acc.add(1)));
          flag.set(flag.not());
          k.barrier();
        });
        const o = k.let('o', k.globalId.x.mul(4));
        out.set(o, acc); out.set(o.add(1), v.x); out.set(o.add(2), v.y); out.set(o.add(3), p.at(1));
      },
    });
    const x = randomF32(2 * W, rng(freshSeed('control flow')), 0, 2.5);
    const [T, skip] = [6, 3];
    const { out } = await exec(dev, k, { x, out: poisonF32(8 * W) }, { T, skip });
    const ref = new Float32Array(8 * W);
    for (let g = 0; g < 2; g++) {
      const tile = new Float32Array(W);
      const st = Array.from({ length: W }, (_, li) => ({ v: [x[g * W + li]!, 1], flag: li % 3 === 0, acc: 0, p: 0 }));
      for (let t = 0; t < T; t++) {
        if (t === skip) continue;
        st.forEach((s, li) => { tile[li] = f(s.v[0]! + t); });
        st.forEach((s, li) => { s.acc = t % 2 === 0 ? f(s.acc + tile[(li + 1) % W]!) : f(s.acc - tile[(li + W - 1) % W]!); });
        let j = 0;
        while (tile[0]! > j) j = f(j + 1);
        for (const s of st) { s.p = f(s.p + j); s.v = [s.v[1]!, s.v[0]!]; if (s.flag) s.acc = f(s.acc + 1); s.flag = !s.flag; }
      }
      st.forEach((s, li) => ref.set([s.acc, s.v[0]!, s.v[1]!, s.p], (g * W + li) * 4));
    }
    expect(out).toEqual(ref);
  });

  it('invocations that return early stop taking part; the rest still synchronise', async () => {
    const early = kernel({
      name: 'earlyReturn', workgroupSize: WG, grid: () => 2,
      bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { x, out }) {
        const tile = k.shared('tile', 'f32', WG);
        const li = k.let('li', k.localIndex);
        k.if(li.rem(2).eq(1), () => k.return());
        tile.set(li, x.at(k.globalId.x));
        k.barrier();
        out.set(k.globalId.x, tile.at(li.bxor(2)));
      },
    });
    const x = randomF32(2 * WG, rng(freshSeed('early return')));
    const { out } = await exec(dev, early, { x, out: poisonF32(2 * WG) }, {});
    for (let i = 0; i < 2 * WG; i++) {
      if (i % 2) expect(out![i]).toBeNaN();
      else expect(out![i]).toBe(x[i ^ 2]);
    }
  });
});

describe('subgroups (emulated, size 32)', () => {
  it('reports them in caps', () => {
    expect(dev.caps.subgroups).toBe(true);
    expect(dev.caps.subgroupSize).toBe(32);
  });

  for (const WG of [96, 80]) {
    it(`add/max/min, shuffleXor, broadcast, lane ids — workgroup of ${WG}`, async () => {
      const k = kernel({
        name: 'subgroupOps', workgroupSize: WG, grid: () => 3, caps: CPU_CAPS,
        bindings: { x: storage('f32', 'read'), u: storage('u32', 'read'), out: storage('f32', 'read_write'), uo: storage('u32', 'read_write') },
        uniforms: {},
        body(k, { x, u, out, uo }) {
          if (!k.caps.subgroups) throw new Error('test needs subgroups');
          const g = k.let('g', k.globalId.x);
          const v = k.let('v', x.at(g));
          out.set(g.mul(5), k.subgroupAdd(v));
          out.set(g.mul(5).add(1), k.subgroupMax(v));
          out.set(g.mul(5).add(2), k.subgroupMin(v).add(k.subgroupShuffleXor(v, 5)));
          out.set(g.mul(5).add(3), k.subgroupBroadcast(v, 3));
          const acc = k.var('acc', 'u32', 0);
          k.for('r', k.u32(0), k.u32(3), (r) => acc.set(acc.add(k.subgroupAdd(u.at(g).add(r))))); // inside a loop
          uo.set(g.mul(3), acc);
          uo.set(g.mul(3).add(1), k.subgroupInvocationId);
          uo.set(g.mul(3).add(2), k.subgroupSize);
          out.set(g.mul(5).add(4), k.subgroupShuffleXor(v, k.subgroupInvocationId.band(3)));
        },
      });
      const n = 3 * WG, r = rng(freshSeed('subgroups'));
      const x = randomF32(n, r), u = new Uint32Array(n).map(() => (r() * 2 ** 32) >>> 0);
      const res = await exec(dev, k, { x, u, out: poisonF32(5 * n), uo: new Uint32Array(3 * n) }, {});
      for (let i = 0; i < n; i++) {
        const li = i % WG, b = i - (li % 32), lanes = Math.min(32, WG - (li - (li % 32))), lane = li % 32;
        // The butterfly a GPU runs, seen from lane 0; absent lanes add 0.
        const t = Array.from({ length: 32 }, (_, l) => (l < lanes ? x[b + l]! : 0));
        for (let off = 16; off >= 1; off >>= 1) for (let l = 0; l < off; l++) t[l] = f(t[l]! + t[l + off]!);
        const group = Array.from(x.slice(b, b + lanes));
        const shuffled = (m: number) => ((lane ^ m) < lanes ? x[b + (lane ^ m)]! : x[i]!);
        expect(Array.from(res.out!.slice(5 * i, 5 * i + 5)), `invocation ${i}`).toEqual([
          t[0], Math.max(...group), f(Math.min(...group) + shuffled(5)), x[b + 3], shuffled(lane & 3),
        ]);
        let acc = 0n;
        for (let rr = 0n; rr < 3n; rr++) {
          let s = 0n;
          for (let l = 0; l < lanes; l++) s += BigInt.asUintN(32, BigInt(u[b + l]!) + rr);
          acc = BigInt.asUintN(32, acc + s);
        }
        expect(Array.from(res.uo!.slice(3 * i, 3 * i + 3))).toEqual([Number(acc), lane, 32]);
      }
    });
  }
});

describe('subgroup-uniform loops', () => {
  it('a while condition and a for bound computed by subgroup operations', async () => {
    const WG = 64;
    const k = kernel({
      name: 'subgroupLoops', workgroupSize: WG, grid: () => 1, caps: CPU_CAPS,
      bindings: { u: storage('u32', 'read'), out: storage('u32', 'read_write') }, uniforms: {},
      body(k, { u, out }) {
        if (!k.caps.subgroups) throw new Error('test needs subgroups');
        const li = k.let('li', k.localIndex);
        const cnt = k.var('cnt', 'u32', 0);
        const steps = k.var('steps', 'u32', 0);
        // Each subgroup loops until its lanes' counts add up to its limit: trip counts differ by subgroup.
        k.while(k.subgroupAdd(cnt).lt(u.at(li.div(32).add(WG))), () => {
          cnt.set(cnt.add(u.at(li)));
          steps.set(steps.add(1));
        });
        const tot = k.var('tot', 'u32', 0);
        k.for('i', k.u32(0), k.subgroupMax(u.at(li)), (i) => tot.set(tot.add(i)));
        out.set(li.mul(3), cnt); out.set(li.mul(3).add(1), steps); out.set(li.mul(3).add(2), tot);
      },
    });
    const r = rng(freshSeed('subgroup loops'));
    const u = new Uint32Array(WG + 2).map((_, i) => (i < WG ? 1 + Math.floor(r() * 4) : 200 + Math.floor(r() * 300)));
    const { out } = await exec(dev, k, { u, out: new Uint32Array(3 * WG) }, {});
    for (let sgp = 0; sgp < 2; sgp++) {
      const lanes = Array.from(u.slice(32 * sgp, 32 * sgp + 32));
      const per = lanes.reduce((p, q) => p + q, 0), limit = u[WG + sgp]!;
      const steps = Math.ceil(limit / per), m = Math.max(...lanes);
      lanes.forEach((c, l) => expect(Array.from(out!.slice(3 * (32 * sgp + l), 3 * (32 * sgp + l) + 3))).toEqual([c * steps, steps, (m * (m - 1)) / 2]));
    }
  });
});

describe('workers', () => {
  it('atomics are exact across many workgroups on several workers', async () => {
    const d = await createCpuDevice({ workers: 3, check: false });
    devs.push(d);
    const k = kernel({
      name: 'atomicCount', workgroupSize: 64, grid: ({ groups }) => groups,
      bindings: { c: storage('u32', 'read_write', { atomic: true }), m: storage('i32', 'read_write', { atomic: true }), tickets: storage('u32', 'read_write') },
      uniforms: { groups: 'u32' },
      body(k, { c, m, tickets }) {
        const g = k.let('g', k.globalId.x);
        const ticket = k.atomicAdd(c, 0, 1);
        tickets.set(g, ticket);
        k.atomicAdd(c, 1, g.mul(2654435761));
        k.atomicMax(c, 2, g.mul(7919).rem(1000003));
        k.atomicMin(m, 0, k.i32(g.mul(7919).rem(1000003)).sub(500000));
        k.atomicMax(m, 1, k.i32(g.mul(7919).rem(1000003)).sub(500000));
      },
    });
    const groups = 3000, n = groups * 64;
    const res = await exec(d, k, { c: new Uint32Array(3), m: new Int32Array([2 ** 31 - 1, -(2 ** 31)]), tickets: new Uint32Array(n) }, { groups });
    let sum = 0n, mx = 0, mn = Infinity, mxi = -Infinity;
    for (let g = 0; g < n; g++) {
      sum += BigInt.asUintN(32, BigInt(g) * 2654435761n);
      const h = Number((BigInt(g) * 7919n) % 1000003n);
      mx = Math.max(mx, Number(BigInt.asUintN(32, BigInt(g) * 7919n) % 1000003n)); mn = Math.min(mn, h - 500000); mxi = Math.max(mxi, h - 500000);
    }
    expect(Array.from(res.c!)).toEqual([n, Number(BigInt.asUintN(32, sum)), mx]);
    expect(Array.from(res.m!)).toEqual([mn, mxi]);
    // Every invocation drew a distinct ticket: the increments never collided.
    expect(Array.from(res.tickets!).sort((p, q) => p - q)).toEqual(Array.from({ length: n }, (_, i) => i));
  });

  it('1 worker, 3 workers and the main thread give bit-identical results', async () => {
    const [one, three, inline] = await Promise.all([1, 3, 0].map((workers) => createCpuDevice({ workers, check: false, executor: 'js' })));
    devs.push(one!, three!, inline!);
    const mm = matmulTiled({ tileM: 32, tileN: 32, tileK: 8, blockM: 2, blockN: 2 });
    const r = rng(freshSeed('workers'));
    const M = 97, N = 75, K = 131;
    const A = randomF32(M * K, r), B = randomF32(K * N, r);
    const outs = await Promise.all([one!, three!, inline!].map((d) => exec(d, mm, { A, B, C: poisonF32(M * N) }, { M, N, K })));
    expect(outs[0]!.C!.some(Number.isNaN)).toBe(false);
    expect(outs[1]!.C).toEqual(outs[0]!.C);
    expect(outs[2]!.C).toEqual(outs[0]!.C);
    expect(one!.description).toBe('cpu (1 worker, js)');
    expect(inline!.description).toBe('cpu (main thread, js)');
  });
});

describe('the device', () => {
  const add = vectorAdd({ workgroupSize: 64 });

  async function vectorAddWorks(d: Device): Promise<void> {
    const n = 1000, r = rng(1);
    const a = randomF32(n, r), b = randomF32(n, r);
    const { out } = await exec(d, add, { a, b, out: poisonF32(n) }, { n });
    expect(out).toEqual(a.map((v, i) => f(v + b[i]!)));
  }

  it('an error inside a kernel rejects sync() naming the kernel; the device stays usable', async () => {
    const bad = kernel({
      name: 'atomicOutOfBounds', workgroupSize: 64, grid: () => 4,
      bindings: { c: storage('u32', 'read_write', { atomic: true }) }, uniforms: {},
      body(k, { c }) { k.atomicAdd(c, k.globalId.x.add(1000), 1); },
    });
    const c = dev.alloc('u32', 16, 'counters');
    dev.launch(bad, { c }, {});
    const e = await dev.sync().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(KernelRunError);
    expect(String(e)).toMatch(/kernel 'atomicOutOfBounds' failed on the cpu device in workgroup \(\d+,0,0\)/);
    await dev.sync(); // reported once
    dev.free(c);
    await vectorAddWorks(dev);
  });

  it('validates launches before any work: missing binding, wrong dtype, too-small buffer, bad uniform', async () => {
    const n = 100;
    const a = dev.alloc('f32', n, 'a'), b = dev.alloc('f32', n, 'b'), out = dev.alloc('f32', n, 'out');
    const small = dev.alloc('f32', n - 1, 'small'), ints = dev.alloc('i32', n, 'ints');
    dev.write(out, poisonF32(n));
    expect(() => dev.launch(add, { a, b } as never, { n })).toThrow(/kernel 'vectorAdd': binding 'out' \(f32\) is missing/);
    expect(() => dev.launch(add, { a, b: ints, out } as never, { n })).toThrow(/binding 'b' expects f32 but buffer 'ints' holds i32/);
    expect(() => dev.launch(add, { a, b: small, out }, { n })).toThrow(/buffer 'small' bound to 'b' has 99 elements, the launch needs 100 = f32 \[n\] with n = 100/);
    expect(() => dev.launch(add, { a, b, out }, { n: -1 })).toThrow(LaunchError);
    await dev.sync();
    expect((await dev.read(out)).every(Number.isNaN)).toBe(true); // nothing ran
    for (const x of [a, b, out, small, ints]) dev.free(x);
  });

  it('writes and reads are ordered with launches; bytesInUse follows alloc and free', async () => {
    const before = dev.bytesInUse;
    const n = 5000;
    const a = dev.alloc('f32', n), b = dev.alloc('f32', n), out = dev.alloc('f32', n), h = dev.alloc('f16', 3);
    expect(dev.bytesInUse - before).toBe(3 * 4 * n + 8);
    dev.write(a, new Float32Array(n).fill(1));
    dev.write(b, new Float32Array(n).fill(2));
    dev.launch(add, { a, b, out }, { n });
    dev.write(a, new Float32Array(n).fill(10)); // after the launch: does not change its result
    expect(Array.from((await dev.read(out)).slice(0, 3))).toEqual([3, 3, 3]);
    dev.launch(add, { a, b, out }, { n });
    dev.write(out, new Float32Array(n).fill(7), 0); // lands after the second launch
    expect(Array.from((await dev.read(out)).slice(n - 3))).toEqual([7, 7, 7]);
    for (const x of [a, b, out, h]) dev.free(x);
    expect(dev.bytesInUse).toBe(before);
    expect(() => dev.write(a, new Float32Array(1))).toThrow(/was freed/);
  });

  it('emits readable source that keeps the kernel’s names', () => {
    const src = emitJS(matmulTiled({ tileM: 16, tileN: 16, tileK: 8, blockM: 2, blockN: 2 }).ir);
    expect(src).toContain("// Kernel 'matmulTiled'");
    expect(src).toMatch(/function matmulTiled\(/);
    expect(src).toMatch(/acc1_1 = Math\.fround\(acc1_1 \+ Math\.fround\(a1 \* b1\)\)/);
    expect(src).toContain('// workgroup barrier');
  });
});
