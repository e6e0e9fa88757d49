// Checking mode of the CPU executor: kernels with a planted bug — a race, a missing barrier, an
// out-of-bounds index, a divergent barrier — are reported naming kernel, array, index and the
// invocations; correct kernels report nothing.
import { afterAll, describe, expect, it } from 'vitest';
import { type Bindings, type Kernel, kernel, storage } from '../codegen/dsl/index.js';
import type { StorageType } from '../codegen/dsl/types.js';
import { matmulTiled } from '../codegen/kernels/matmulTiled.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { createCpuDevice, CPU_CAPS, KernelCheckError } from '../src/backend/cpu/index.js';
import type { Device, DeviceBuffer, HostArray } from '../src/backend/device.js';
import { freshSeed, randomF32, rng } from './util.js';

const dev = await createCpuDevice({ workers: 2, check: true });
afterAll(() => dev.destroy());

type Data = Record<string, HostArray<StorageType>>;
/** Launch once; resolves to the read_write outputs, or rejects with what sync() reports. */
async function exec(d: Device, k: Kernel<any, any>, data: Data, u: Record<string, number>): Promise<Data> {
  const bufs: Record<string, DeviceBuffer> = {};
  for (const [name, spec] of Object.entries(k.bindings as Bindings)) {
    bufs[name] = d.alloc(spec.t, data[name]!.length, name);
    d.write(bufs[name]!, data[name]!);
  }
  try {
    d.launch(k, bufs as never, u as never);
    await d.sync();
    const out: Data = {};
    for (const [name, spec] of Object.entries(k.bindings as Bindings)) if (spec.access === 'read_write') out[name] = await d.read(bufs[name]!);
    return out;
  } finally {
    for (const b of Object.values(bufs)) d.free(b);
  }
}
/** The KernelCheckError a launch reports (fails the test if there is none). */
async function findings(k: Kernel<any, any>, data: Data, u: Record<string, number> = {}): Promise<KernelCheckError> {
  const e = await exec(dev, k, data, u).then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(KernelCheckError);
  return e as KernelCheckError;
}
const WG = 64;
const xs = (n: number) => randomF32(n, rng(freshSeed('check input')));

describe('races on workgroup memory', () => {
  it('a planted race: write your cell, read your neighbour’s, no barrier', async () => {
    const k = kernel({
      name: 'raceNeighbour', workgroupSize: WG, grid: () => 2,
      bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { x, out }) {
        const tile = k.shared('tile', 'f32', WG);
        const li = k.let('li', k.localIndex);
        tile.set(li, x.at(k.globalId.x));
        out.set(k.globalId.x, tile.at(li.add(1).rem(WG)));
      },
    });
    const e = await findings(k, { x: xs(2 * WG), out: new Float32Array(2 * WG) });
    expect(e.kernel).toBe('raceNeighbour');
    expect(e.message).toMatch(/^kernel 'raceNeighbour': checking found \d+ problems/);
    expect(e.message).toContain("race on workgroup array 'tile' at index 1: invocation 0 reads it and invocation 1 writes it with no barrier in between (workgroup (0,0,0))");
    expect(e.count).toBe(2 * WG); // every cell of both workgroups
  });

  const reduceKernel = (withBarrier: boolean) => kernel({
    name: withBarrier ? 'reduceTree' : 'reduceMissingBarrier', workgroupSize: WG, grid: ({ n }) => n / WG,
    bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: { n: 'u32' },
    body(k, { x, out }) {
      const scratch = k.shared('scratch', 'f32', WG);
      const li = k.let('li', k.localIndex);
      scratch.set(li, x.at(k.globalId.x));
      k.barrier();
      for (let s = WG / 2; s >= 1; s /= 2) {
        k.if(li.lt(s), () => scratch.set(li, scratch.at(li).add(scratch.at(li.add(s)))));
        if (withBarrier) k.barrier();
      }
      k.if(li.eq(0), () => out.set(k.workgroupId.x, scratch.at(0)));
    },
  });

  it('a missing barrier in a tree reduction is reported; with the barrier, nothing', async () => {
    const n = 4 * WG, x = xs(n);
    const e = await findings(reduceKernel(false), { x, out: new Float32Array(n / WG) }, { n });
    expect(e.message).toMatch(/race on workgroup array 'scratch' at index \d+: invocation \d+ (reads|writes) it and invocation \d+ (reads|writes) it/);
    const { out } = await exec(dev, reduceKernel(true), { x, out: new Float32Array(n / WG) }, { n });
    for (let g = 0; g < n / WG; g++) {
      const t = Array.from(x.slice(g * WG, (g + 1) * WG));
      for (let s = WG / 2; s >= 1; s /= 2) for (let i = 0; i < s; i++) t[i] = Math.fround(t[i]! + t[i + s]!);
      expect(out![g]).toBe(t[0]);
    }
  });

  it('atomics on workgroup memory do not race with each other, but do with a plain read', async () => {
    const hist = (plainRead: boolean) => kernel({
      name: plainRead ? 'histogramPeek' : 'histogram', workgroupSize: WG, grid: () => 1,
      bindings: { v: storage('u32', 'read'), out: storage('u32', 'read_write') }, uniforms: {},
      body(k, { v, out }) {
        const bins = k.shared('bins', 'u32', 8, { atomic: true });
        const li = k.let('li', k.localIndex);
        k.atomicAdd(bins, v.at(li).rem(8), 1);
        if (plainRead) out.set(li.add(8), bins.at(li.rem(8)));
        k.barrier();
        k.if(li.lt(8), () => out.set(li, k.atomicLoad(bins, li)));
      },
    });
    const v = new Uint32Array(WG).map((_, i) => (i * 37) % 11);
    const { out } = await exec(dev, hist(false), { v, out: new Uint32Array(8) }, {});
    for (let b = 0; b < 8; b++) expect(out![b]).toBe(Array.from(v).filter((x) => x % 8 === b).length);
    const e = await findings(hist(true), { v, out: new Uint32Array(WG + 8) });
    expect(e.message).toMatch(/race on workgroup array 'bins' at index \d: invocation \d+ (reads|updates \(atomically\)) it and invocation \d+ (reads|updates \(atomically\)) it/);
  });
});

describe('out-of-bounds accesses', () => {
  it('a storage buffer read one past the end names buffer, index, length and invocation', async () => {
    const n = 1000;
    const k = kernel({
      name: 'shiftLeft', workgroupSize: WG, grid: ({ n }) => Math.ceil(n / WG),
      bindings: { a: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: { n: 'u32' },
      body(k, { a, out }, { n }) {
        const i = k.let('i', k.globalId.x);
        k.if(i.lt(n), () => out.set(i, a.at(i.add(1)))); // bug: i + 1 == n at the end
      },
    });
    const e = await findings(k, { a: xs(n), out: new Float32Array(n) }, { n });
    expect(e.count).toBe(1);
    expect(e.findings).toEqual(["out-of-bounds read of storage buffer 'a' at index 1000 (length 1000) by invocation 39 in workgroup (15,0,0)"]);
  });

  it('a vector binding read and written past its end reports each scalar past the end', async () => {
    const n = 10; // vectors
    const k = kernel({
      name: 'vecShift', workgroupSize: WG, grid: () => 1,
      bindings: { a: storage('f32', 'read', { vec: 4 }), out: storage('f32', 'read_write', { vec: 2 }) }, uniforms: { n: 'u32' },
      body(k, { a, out }, { n }) {
        const i = k.let('i', k.globalId.x);
        k.if(i.lt(n), () => out.set(i.add(5), a.at(i.add(1)).swizzle('xy'))); // bug: a has n vectors, out n
      },
    });
    const e = await findings(k, { a: xs(4 * n), out: new Float32Array(2 * n) }, { n });
    // a[10] is scalars 40..43, of which the load reads x and y (40, 41); out[10..14] are scalars 20..29.
    expect(e.findings).toContain("out-of-bounds read of storage buffer 'a' at index 40 (length 40) by invocation 9 in workgroup (0,0,0)");
    expect(e.findings).toContain("out-of-bounds write of storage buffer 'out' at index 21 (length 20) by invocation 5 in workgroup (0,0,0)");
    expect(e.count).toBe(2 + 2 * 5);
  });

  it('a workgroup array written past its end; a private array indexed past its end', async () => {
    const k = kernel({
      name: 'offByOne', workgroupSize: [8, 8], grid: () => 1,
      bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: { m: 'u32' },
      body(k, { x, out }, { m }) {
        const tile = k.shared('tile', 'f32', WG);
        const li = k.let('li', k.localIndex);
        tile.set(li.add(1), x.at(li));
        k.barrier();
        const p = k.privateArray('p', 'f32', 4);
        k.for('j', k.u32(0), m, (j) => p.set(j, tile.at(li)));
        out.set(li, p.at(0));
      },
    });
    const e = await findings(k, { x: xs(WG), out: new Float32Array(WG) }, { m: 5 });
    expect(e.findings).toContain("out-of-bounds write of workgroup array 'tile' at index 64 (length 64) by invocation 63 (localId 7,7,0) in workgroup (0,0,0)");
    expect(e.findings).toContain("out-of-bounds write of private array 'p' at index 4 (length 4) by invocation 0 (localId 0,0,0) in workgroup (0,0,0)");
    expect(e.count).toBe(1 + WG);
  });

  it('many findings: the first few are listed, then how many more', async () => {
    const k = kernel({
      name: 'allOut', workgroupSize: WG, grid: () => 4,
      bindings: { out: storage('u32', 'read_write') }, uniforms: {},
      body(k, { out }) { out.set(k.globalId.x.add(7), 1); },
    });
    const e = await findings(k, { out: new Uint32Array(8) });
    expect(e.count).toBe(4 * WG - 1);
    expect(e.message).toMatch(/checking found 255 problems:\n( {2}out-of-bounds write of storage buffer 'out' at index \d+ \(length 8\)[^\n]*\n){8} {2}… 247 more$/);
  });
});

describe('uniform control flow', () => {
  it('a barrier that only some invocations reach', async () => {
    const k = kernel({
      name: 'divergentBarrier', workgroupSize: WG, grid: () => 1,
      bindings: { out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { out }) {
        const li = k.let('li', k.localIndex);
        k.if(li.lt(10), () => k.barrier());
        out.set(li, 1);
      },
    });
    const e = await findings(k, { out: new Float32Array(WG) });
    expect(e.findings).toEqual(['barrier #1 is reached by invocation 0 but not by invocation 10, which has not returned (workgroup (0,0,0)): barriers must be in uniform control flow']);
  });

  it('a subgroup operation that only part of a subgroup reaches', async () => {
    const k = kernel({
      name: 'divergentSubgroup', workgroupSize: WG, grid: () => 1, caps: CPU_CAPS,
      bindings: { out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { out }) {
        if (!k.caps.subgroups) throw new Error('needs subgroups');
        const li = k.let('li', k.localIndex);
        k.if(li.lt(40), () => out.set(li, k.subgroupAdd(k.f32(li))));
      },
    });
    const e = await findings(k, { out: new Float32Array(WG) });
    expect(e.findings).toEqual(['subgroup operation #1 is reached by invocation 32 but not by invocation 40 of the same subgroup (workgroup (0,0,0)): subgroup operations must be in uniform control flow']);
  });
});

describe('correct kernels report nothing', () => {
  it('vectorAdd and a tiled matmul', async () => {
    const n = 1000, r = rng(freshSeed('check clean'));
    const a = randomF32(n, r), b = randomF32(n, r);
    const { out } = await exec(dev, vectorAdd({ workgroupSize: 64 }), { a, b, out: new Float32Array(n) }, { n });
    expect(out).toEqual(a.map((v, i) => Math.fround(v + b[i]!)));
    const M = 37, N = 45, K = 29;
    const mm = matmulTiled({ tileM: 16, tileN: 16, tileK: 8, blockM: 2, blockN: 2 });
    const A = randomF32(M * K, r), B = randomF32(K * N, r);
    const { C } = await exec(dev, mm, { A, B, C: new Float32Array(M * N) }, { M, N, K });
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let kk = 0; kk < K; kk++) s += A[i * K + kk]! * B[kk * N + j]!;
        expect(Math.abs(C![i * N + j]! - s)).toBeLessThan(1e-5);
      }
    }
  });

  it('the device stays usable after a finding, and checking is on by KILN_CHECK=1', async () => {
    const bad = kernel({
      name: 'oneOut', workgroupSize: 1, grid: () => 1, bindings: { out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { out }) { out.set(1, 1); },
    });
    await findings(bad, { out: new Float32Array(1) });
    const { out } = await exec(dev, vectorAdd({ workgroupSize: 64 }), { a: new Float32Array([1, 2]), b: new Float32Array([3, 4]), out: new Float32Array(2) }, { n: 2 });
    expect(Array.from(out!)).toEqual([4, 6]);
    const saved = process.env.KILN_CHECK;
    process.env.KILN_CHECK = '1';
    try {
      const d = await createCpuDevice({ workers: 0 });
      expect(d.description).toBe('cpu (main thread, js, checking)');
      await d.destroy();
    } finally {
      if (saved === undefined) delete process.env.KILN_CHECK; else process.env.KILN_CHECK = saved;
    }
  });
});
