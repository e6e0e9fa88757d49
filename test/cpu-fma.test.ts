// The CPU executors' fma is the correctly rounded one (one rounding of a·b + c to f32, as CUDA's
// fmaf): the JS executor's $fmaPC, the wasm executor through the host's fused f32x4.relaxed_madd
// where it is fused (scalar and packed accumulators), and through the exact helper otherwise
// (KILN_WASM_FMA=exact). Checked against a BigInt rounding of the exact sum, on random inputs and
// on the cases where rounding a·b + c to f64 first and then to f32 goes wrong: a·b exactly halfway
// between two f32 values and c too small to move the f64 sum.
import { afterAll, describe, expect, it } from 'vitest';
import { kernel, storage } from '../codegen/dsl/index.js';
import { RUNTIME } from '../codegen/emit/js-helpers.js';
import { emitWasm } from '../codegen/emit/wasm.js';
import { createCpuDevice } from '../src/backend/cpu/index.js';
import { hostFusedMadd } from '../src/backend/cpu/wasm-api.js';
import type { Device } from '../src/backend/device.js';
import { freshSeed, rng } from './util.js';

/** An f32 value as m · 2^e (m a signed integer). */
function parts(x: number): [bigint, number] {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  const sign = u >>> 31 ? -1n : 1n, ex = (u >>> 23) & 255, frac = u & 0x7fffff;
  return ex === 0 ? [sign * BigInt(frac), -149] : [sign * BigInt(frac | 0x800000), ex - 150];
}

/** a·b + c rounded once to f32 (ties to even), from the exact sum in units of 2^-298. */
function exactFma(a: number, b: number, c: number): number {
  const [ma, ea] = parts(a), [mb, eb] = parts(b), [mc, ec] = parts(c);
  const sum = ma * mb * (1n << BigInt(ea + eb + 298)) + mc * (1n << BigInt(ec + 298));
  if (sum === 0n) return a * b + c; // an exact zero: its sign as IEEE addition gives it
  const mag = sum < 0n ? -sum : sum;
  const exp = mag.toString(2).length - 299;
  const quantum = exp < -126 ? -149 : exp - 23;
  const q = 1n << BigInt(quantum + 298), half = q / 2n, rem = mag % q;
  let m = mag / q;
  if (rem > half || (rem === half && (m & 1n) === 1n)) m += 1n;
  const v = Number(m) * 2 ** quantum;
  return (sum < 0n ? -1 : 1) * (v > 3.4028234663852886e38 ? Infinity : v);
}

/** Random cases, half of them a·b halfway between two f32 values with a tiny c (or none). */
function cases(n: number, r: () => number): [Float32Array, Float32Array, Float32Array] {
  const A = new Float32Array(n), B = new Float32Array(n), C = new Float32Array(n);
  const sign = () => (r() < 0.5 ? -1 : 1);
  for (let i = 0; i < n; i++) {
    const scale = 2 ** (Math.floor(r() * 40) - 20);
    if (i % 2 === 0) {
      // Odd 13-bit mantissas: a product of 25 bits ending in 1 (when below 2^25) is halfway.
      const m1 = 4097 + 2 * Math.floor(r() * 2047), m2 = 4097 + 2 * Math.floor(r() * 2047);
      A[i] = sign() * m1 * 2 ** -12 * scale; B[i] = m2 * 2 ** -12;
      C[i] = i % 10 === 0 ? 0 : Math.fround(sign() * Math.abs(A[i]! * B[i]!) * 2 ** -(55 + Math.floor(r() * 20)));
    } else {
      A[i] = sign() * r() * scale; B[i] = sign() * r() * 4;
      C[i] = Math.fround(A[i]! * B[i]! * (r() * 2 - 1) * 2 ** (Math.floor(r() * 8) - 4));
    }
  }
  // Halfway between the largest f32 and 2^128, just below: the largest f32, not Infinity.
  A[1] = 18631 * 2 ** 51; B[1] = 1801 * 2 ** 52; C[1] = -(2 ** -10);
  return [A, B, C];
}

const r = rng(freshSeed('cpu fma'));
const [A, B, C] = cases(20000, r);
const want = Float32Array.from(A, (a, i) => exactFma(a, B[i]!, C[i]!));

describe('fma on the CPU executors is correctly rounded', () => {
  it('the cases include many where the f64 sum rounded to f32 is wrong (the test can fail)', () => {
    let doubleRounded = 0;
    for (let i = 0; i < A.length; i++) if (Math.fround(A[i]! * B[i]! + C[i]!) !== want[i]) doubleRounded++;
    expect(doubleRounded).toBeGreaterThan(1000);
    expect(want[1]).toBe(3.4028234663852886e38);
  });

  it('the JS executor\'s $fmaPC', () => {
    const bad: string[] = [];
    for (let i = 0; i < A.length; i++) {
      const got = RUNTIME.$fmaPC(A[i]! * B[i]!, C[i]!);
      if (!Object.is(got, want[i]!) && bad.length < 3) bad.push(`fma(${A[i]}, ${B[i]}, ${C[i]}) = ${got}, not ${want[i]}`);
    }
    expect(bad).toEqual([]);
  });

  // One fma per element, and per invocation four accumulators updated together (packed into
  // f32x4 where the host's multiply-add is fused): acc_j = fma(a, b_j, acc_j) over 4 steps.
  const single = kernel({
    name: 'fmaElementwise', workgroupSize: 64, grid: (u) => Math.ceil(u.n / 64),
    bindings: { a: storage('f32', 'read'), b: storage('f32', 'read'), c: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { n: 'u32' },
    body(k, { a, b, c, out }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.lt(n), () => out.set(i, k.call('fma', [a.at(i), b.at(i), c.at(i)])));
    },
  });
  const packed = kernel({
    name: 'fmaAccumulate4', workgroupSize: 32, grid: (u) => Math.ceil(u.n / 128),
    bindings: { a: storage('f32', 'read'), b: storage('f32', 'read'), c: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { n: 'u32' },
    body(k, { a, b, c, out }, { n }) {
      const q = k.let('q', k.globalId.x.mul(4));
      k.if(q.ge(n), () => k.return());
      const acc = [0, 1, 2, 3].map((j) => k.var(`acc${j}`, 'f32', 0));
      acc.forEach((v, j) => v.set(c.at(q.add(j))));
      k.for('s', k.u32(0), k.u32(1), () => {
        const x = k.let('x', a.at(q));
        const w = [0, 1, 2, 3].map((j) => k.let(`w${j}`, b.at(q.add(j))));
        for (let j = 0; j < 4; j++) acc[j]!.set(k.call('fma', [x, w[j]!, acc[j]!]));
      });
      acc.forEach((v, j) => out.set(q.add(j), v));
    },
  });
  // Inputs for `packed`: per quad, a's first element shared by the four lanes.
  const A4 = Float32Array.from(A, (_, i) => A[i - (i % 4)]!);
  const want4 = Float32Array.from(A4, (a, i) => exactFma(a, B[i]!, C[i]!));

  it('the wasm emitter packs the four accumulators into one f32x4 where the multiply-add is fused, else into two exact f64x2 pairs', () => {
    expect(emitWasm(packed.ir, { fusedMadd: true }).simdGroups).toBe(1);
    expect(emitWasm(packed.ir, { fusedMadd: false }).simdGroups).toBe(2);
  });

  const devices: [string, () => Promise<Device>][] = [
    ['wasm', () => createCpuDevice({ workers: 2, executor: 'wasm' })],
    ['wasm, exact helper', () => {
      const saved = process.env.KILN_WASM_FMA;
      process.env.KILN_WASM_FMA = 'exact';
      try { return createCpuDevice({ workers: 2, executor: 'wasm' }); } finally {
        if (saved === undefined) delete process.env.KILN_WASM_FMA; else process.env.KILN_WASM_FMA = saved;
      }
    }],
    ['js', () => createCpuDevice({ workers: 1, executor: 'js' })],
  ];
  const opened: Device[] = [];
  afterAll(async () => { for (const d of opened) await d.destroy(); });

  it.each(devices)('on the %s executor, elementwise and packed', async (name, make) => {
    const dev = await make();
    opened.push(dev);
    if (name === 'wasm' && !hostFusedMadd()) console.log('this host\'s relaxed multiply-add is not fused: the wasm case runs the exact helper too');
    const exact = name.includes('exact') || !hostFusedMadd() || process.env.KILN_WASM_FMA === 'exact';
    if (name !== 'js') expect(dev.description.includes('exact fma')).toBe(exact);
    const n = A.length;
    const run = async (kern: typeof single, a: Float32Array) => {
      const bufs = [a, B, C].map((x, j) => { const d = dev.alloc('f32', n, 'abc'[j]!); dev.write(d, x); return d; });
      const out = dev.alloc('f32', n, 'out');
      try {
        dev.write(out, new Float32Array(n).fill(Number.NaN));
        dev.launch(kern, { a: bufs[0]!, b: bufs[1]!, c: bufs[2]!, out }, { n });
        return await dev.read(out);
      } finally { for (const d of [...bufs, out]) dev.free(d); }
    };
    for (const [kern, a, expected] of [[single, A, want], [packed, A4, want4]] as const) {
      const got = await run(kern, a);
      const bad: string[] = [];
      for (let i = 0; i < n && bad.length < 3; i++) if (!Object.is(got[i], expected[i])) bad.push(`${kern.ir.name}[${i}] = ${got[i]}, not ${expected[i]}`);
      expect(bad).toEqual([]);
    }
  });
});
