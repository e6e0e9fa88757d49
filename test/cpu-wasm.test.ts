// The cpu device's wasm executor against its js executor (the reference): a whole model's logits
// bit for bit, and step replay (captureGraph): where barriers go, recorded launch chains replayed
// with fresh inputs, decode steps replayed with the plain forward's bits. Kernel-level conformance
// runs in the kernel suites ('cpu' and 'cpu-js' in test/backends.ts) and test/cpu-executor.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exp, exp2, kernel, storage } from '../codegen/dsl/index.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { denseSource } from '../codegen/kernels/denseMatmul.js';
import { gemvKernel } from '../codegen/kernels/linearCommon.js';
import { int4Source } from '../codegen/kernels/int4Matmul.js';
import { emitWasm } from '../codegen/emit/wasm.js';
import { createCpuDevice, KernelRunError } from '../src/backend/cpu/index.js';
import { barriersBetween } from '../src/backend/cpu/graph.js';
import { WasmHeap } from '../src/backend/cpu/heap.js';
import type { Device } from '../src/backend/device.js';
import { BlockManager } from '../src/kv/blockManager.js';
import { type LLM, loadModel } from '../src/llm.js';
import { LlamaForward, type SeqInput } from '../src/model/forward.js';
import { brownDir } from './runtimeGolden.js';
import { freshSeed, randomF32, rng } from './util.js';

const wasm = await createCpuDevice({ workers: 2, executor: 'wasm' });
const js = await createCpuDevice({ workers: 2, executor: 'js' });
afterAll(async () => { await wasm.destroy(); await js.destroy(); });

/** Where two f32 arrays first differ in their bits, or null. */
function firstDiff(got: Float32Array, want: Float32Array): string | null {
  if (got.length !== want.length) return `length ${got.length} vs ${want.length}`;
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length), b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `element ${i}: ${got[i]} vs ${want[i]}`;
  return null;
}

describe('step replay: barriers', () => {
  const at = (offset: number, writes: boolean) => ({ offset, bytes: 64, writes });
  it('separate a launch from one whose output it reads or whose input it overwrites, and nothing else', () => {
    expect(barriersBetween([
      { bindings: [at(0, false), at(64, true)] },     // reads A, writes B
      { bindings: [at(0, false), at(128, true)] },    // reads A, writes C: independent
      { bindings: [at(64, false), at(192, true)] },   // reads B: after a barrier
      { bindings: [at(256, false), at(64, true)] },   // writes B, which launch 3 read: barrier
      { bindings: [at(320, false), at(384, true)] },  // independent of launch 4
    ])).toEqual([false, true, true, false, false]);
    // Solo launches run in order on one thread: no barrier between them, one before a launch on every thread.
    expect(barriersBetween([
      { bindings: [at(0, false), at(64, true)], solo: true },
      { bindings: [at(64, false), at(128, true)], solo: true },  // reads launch 1's output: same thread
      { bindings: [at(128, false), at(192, true)] },             // reads launch 2's output: barrier
      { bindings: [at(192, false), at(256, true)], solo: true }, // reads launch 3's: barrier
    ])).toEqual([false, true, true, false]);
    // Overlap, not equality: a view that starts inside a written buffer conflicts.
    expect(barriersBetween([{ bindings: [at(0, true)] }, { bindings: [{ offset: 32, bytes: 8, writes: false }] }])).toEqual([true, false]);
  });
});

describe.each([['wasm', wasm], ['js', js]] as const)('step replay on the %s executor', (_name, dev: Device) => {
  it.each([64, 3000])('a recorded chain of dependent and independent launches replays with the inputs written before each replay (n = %i)', async (n) => {
    const add = vectorAdd({ caps: dev.caps });
    const a = dev.alloc('f32', n, 'a'), b = dev.alloc('f32', n, 'b');
    const c = dev.alloc('f32', n, 'c'), d = dev.alloc('f32', n, 'd'), e = dev.alloc('f32', n, 'e');
    try {
      const graph = dev.captureGraph!(() => {
        dev.launch(add, { a, b, out: c }, { n });       // c = a + b
        dev.launch(add, { a: c, b, out: d }, { n });    // d = c + b (needs c)
        dev.launch(add, { a, b: a, out: e }, { n });    // e = a + a (independent)
        dev.launch(add, { a: d, b: e, out: c }, { n }); // c = d + e (overwrites c, which launch 2 read)
      });
      expect(graph.launches).toBe(4);
      expect(() => dev.captureGraph!(() => { dev.write(a, new Float32Array(n)); })).toThrow(/during graph capture/);
      const r = rng(freshSeed('cpu graph replay'));
      for (let rep = 0; rep < 3; rep++) {
        const A = randomF32(n, r), B = randomF32(n, r);
        dev.write(a, A);
        dev.write(b, B);
        dev.write(c, new Float32Array(n).fill(Number.NaN));
        graph.replay();
        const got = await dev.read(c);
        const f = Math.fround;
        const want = A.map((x, i) => f(f(f(x + B[i]!) + B[i]!) + f(x + x)));
        expect(firstDiff(got, want), `replay ${rep}`).toBeNull();
      }
      graph.destroy();
      expect(() => graph.replay()).toThrow(/destroyed/);
    } finally {
      for (const x of [a, b, c, d, e]) dev.free(x);
    }
  });

  it('refuses to free a buffer a live graph or the capture in progress uses, and frees it once the graph is destroyed', async () => {
    const add = vectorAdd({ caps: dev.caps }), n = 64;
    const a = dev.alloc('f32', n, 'a'), out = dev.alloc('f32', n, 'out'), spare = dev.alloc('f32', n, 'spare');
    const graph = dev.captureGraph!(() => {
      dev.launch(add, { a, b: a, out }, { n });
      expect(() => dev.free(a)).toThrow("cpu free of 'a': the buffer is used by the graph being captured; destroy the graph before freeing or regrowing its buffers");
    });
    expect(() => dev.free(out)).toThrow("cpu free of 'out': the buffer is used by 1 live captured graph (1 launches); destroy the graph before freeing or regrowing its buffers");
    dev.free(spare); // not in the graph
    // The refused buffers are intact and the graph still replays with them.
    const A = randomF32(n, rng(freshSeed('cpu graph free')));
    dev.write(a, A);
    graph.replay();
    expect(firstDiff(await dev.read(out), A.map((x) => Math.fround(x + x)))).toBeNull();
    graph.destroy();
    dev.free(a);
    dev.free(out);
  });
});

describe('SIMD128: fma accumulators carried in f32x4 groups', () => {
  // Per invocation over a loop of `steps` k: four accumulators updated twice per iteration (as a
  // k-unrolled GEMV does: a group of four, two steps), a pair with two different x (a group of
  // two), one left over (scalar), one also read elsewhere in the loop (not packed); a `continue`
  // and a `break` must leave the packed groups intact. Magnitudes spread so that f64 and f32
  // rounding would disagree.
  const accs = kernel({
    name: 'fmaAccumulators', workgroupSize: 32, grid: (u) => Math.ceil(u.n / 32),
    bindings: { x: storage('f32', 'read'), w: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { n: 'u32', steps: 'u32', stopAt: 'u32' },
    body(k, { x, w, out }, { n, steps, stopAt }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.ge(n), () => k.return());
      const a = [0, 1, 2, 3].map((j) => k.var(`a${j}`, 'f32', 0));
      const b0 = k.var('b0', 'f32', 0), b1 = k.var('b1', 'f32', 0), c = k.var('c', 'f32', 0), seen = k.var('seen', 'f32', 0);
      k.for('s', k.u32(0), steps, (s) => {
        k.if(s.eq(stopAt), () => k.break());
        k.if(s.eq(3), () => k.continue());
        const xs = k.let('xs', x.at(s));
        const xt = k.let('xt', x.at(s.add(1)));
        const ws = [0, 1, 2, 3, 4].map((j) => k.let(`w${j}`, w.at(s.mul(5).add(j).add(i))));
        for (let j = 0; j < 4; j++) a[j]!.set(k.call('fma', [xs, ws[j]!, a[j]!]));
        for (let j = 0; j < 4; j++) a[j]!.set(k.call('fma', [xt, ws[j + 1]!, a[j]!]));
        b0.set(k.call('fma', [xs, ws[4]!, b0]));
        b1.set(k.call('fma', [xt, ws[0]!, b1]));
        c.set(k.call('fma', [xs, ws[1]!, c]));
        seen.set(k.call('fma', [xt, ws[2]!, seen]));
        k.if(seen.gt(1e30), () => seen.set(0)); // reads `seen` elsewhere: stays scalar
      });
      [...a, b0, b1, c, seen].forEach((v, j) => out.set(i.mul(8).add(j), v));
    },
  });

  it('are used (this kernel and the dense f16 GEMV) and give the js executor\'s bits', async () => {
    expect(emitWasm(accs.ir, { fusedMadd: true }).simdGroups).toBe(2);
    expect(emitWasm(accs.ir, { fusedMadd: true, simd: false }).simdGroups).toBe(0);
    expect(emitWasm(accs.ir).simdGroups).toBe(3); // no fused multiply-add: exact f64x2 pairs (a0 a1, a2 a3, b0 b1)
    const gemv = gemvKernel(denseSource('f16'), 1, { workgroupSize: 64, units: 4, vec: 4 }, wasm.caps);
    expect(emitWasm(gemv.ir, { fusedMadd: true }).simdGroups).toBe(2); // 8 accumulators
    const int4 = gemvKernel(int4Source(128), 1, { workgroupSize: 32, units: 4, vec: 4, unrollK: 8 }, wasm.caps);
    expect(emitWasm(int4.ir, { fusedMadd: true }).simdGroups).toBe(8); // 32 group sums, each updated 8 times per iteration
    const r = rng(freshSeed('wasm simd fma pairs'));
    const n = 40, steps = 37;
    const spread = (m: number) => Float32Array.from(randomF32(m, r), (v, j) => v * 2 ** ((j % 9) * 4 - 16));
    const X = spread(steps + 1), W = spread(5 * steps + n + 8);
    for (const stopAt of [steps + 1, 20]) {
      const got = await Promise.all([wasm, js].map(async (dev) => {
        const x = dev.alloc('f32', X.length, 'x'), w = dev.alloc('f32', W.length, 'w'), out = dev.alloc('f32', 8 * n, 'out');
        try {
          dev.write(x, X); dev.write(w, W); dev.write(out, new Float32Array(8 * n).fill(Number.NaN));
          dev.launch(accs, { x, w, out }, { n, steps, stopAt });
          return await dev.read(out);
        } finally { for (const b of [x, w, out]) dev.free(b); }
      }));
      expect(got[1]!.every(Number.isFinite)).toBe(true);
      expect(firstDiff(got[0]!, got[1]!), `stopAt ${stopAt}`).toBeNull();
    }
  });
});

describe('SIMD128: mul-then-add accumulators carried in f32x4 groups', () => {
  // acc = acc + x · w (two roundings, as attention's P·V sums): four elements of a private array
  // updated from four adjacent storage words (one 16-byte load), four more from words 2 apart
  // (lane by lane), four variables, a group of two (left scalar: mul + add packs in fours only),
  // and one element also read elsewhere in the loop (left scalar). Spread magnitudes so that a
  // fused multiply-add, or f64 arithmetic, would give other bits.
  const mulAdd = kernel({
    name: 'mulAddAccumulators', workgroupSize: 16, grid: (u) => Math.ceil(u.n / 16),
    bindings: { x: storage('f32', 'read'), w: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { n: 'u32', steps: 'u32' },
    body(k, { x, w, out }, { n, steps }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.ge(n), () => k.return());
      const acc = k.privateArray('acc', 'f32', 9);
      for (let e = 0; e < 9; e++) acc.set(e, 0);
      const v = [0, 1, 2, 3, 4, 5].map((j) => k.var(`v${j}`, 'f32', 0));
      const seen = k.var('seen', 'f32', 0);
      k.for('s', k.u32(0), steps, (s) => {
        const xs = k.let('xs', x.at(s));
        const row = k.let('row', s.mul(16).add(i));
        for (let e = 0; e < 4; e++) acc.set(e, acc.at(e).add(xs.mul(w.at(row.add(e)))));
        for (let e = 4; e < 8; e++) acc.set(e, acc.at(e).add(xs.mul(w.at(row.add(2 * (e - 4))))));
        for (let j = 0; j < 4; j++) v[j]!.set(v[j]!.add(xs.mul(w.at(row.add(j + 8)))));
        for (let j = 4; j < 6; j++) v[j]!.set(v[j]!.add(xs.mul(w.at(row.add(j + 8)))));
        acc.set(8, acc.at(8).add(xs.mul(w.at(row.add(15)))));
        seen.set(seen.add(acc.at(8)));
      });
      for (let e = 0; e < 9; e++) out.set(i.mul(16).add(e), acc.at(e));
      [...v, seen].forEach((val, j) => out.set(i.mul(16).add(9 + j), val));
    },
  });

  it('are packed with or without a fused multiply-add and give the js executor\'s bits', async () => {
    expect(emitWasm(mulAdd.ir, { fusedMadd: true }).simdGroups).toBe(3);
    expect(emitWasm(mulAdd.ir).simdGroups).toBe(3);
    expect(emitWasm(mulAdd.ir, { simd: false }).simdGroups).toBe(0);
    const r = rng(freshSeed('wasm simd mul-add groups'));
    const n = 24, steps = 9;
    const spread = (m: number) => Float32Array.from(randomF32(m, r), (val, j) => val * 2 ** ((j % 9) * 4 - 16));
    const X = spread(steps), W = spread(16 * steps + n + 16);
    const got = await Promise.all([wasm, js].map(async (dev) => {
      const x = dev.alloc('f32', X.length, 'x'), w = dev.alloc('f32', W.length, 'w'), out = dev.alloc('f32', 16 * n, 'out');
      try {
        dev.write(x, X); dev.write(w, W); dev.write(out, new Float32Array(16 * n).fill(Number.NaN));
        dev.launch(mulAdd, { x, w, out }, { n, steps });
        return await dev.read(out);
      } finally { for (const b of [x, w, out]) dev.free(b); }
    }));
    expect(got[1]!.every(Number.isFinite)).toBe(true);
    expect(firstDiff(got[0]!, got[1]!)).toBeNull();
  });
});

describe('SIMD128: packed operands loaded straight from workgroup memory', () => {
  // x and w staged in workgroup memory, then per invocation a loop of packed groups: x from one
  // let (a splat load); w from lets at adjacent indices (one 16-byte load), one of them also read
  // elsewhere (the vector load, and the let kept); w at indices 2 apart (scalar loads: not
  // adjacent); w indexed by a variable the loop assigns between the lets and the group (must stay
  // scalar: the index means something else by then); and a group of two adjacent (one 8-byte
  // load). Every variant must give the js executor's bits.
  const staged = kernel({
    name: 'stagedOperands', workgroupSize: 16, grid: () => [1, 1, 1],
    bindings: { x: storage('f32', 'read'), w: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { steps: 'u32' },
    body(k, { x, w, out }, { steps }) {
      const xs = k.shared('xs', 'f32', 64), ws = k.shared('ws', 'f32', 256);
      const li = k.let('li', k.localIndex);
      k.for('e', li, k.u32(64), (e) => xs.set(e, x.at(e)), 16);
      k.for('f', li, k.u32(256), (f) => ws.set(f, w.at(f)), 16);
      k.barrier();
      const acc = Array.from({ length: 14 }, (_, j) => k.var(`acc${j}`, 'f32', 0));
      const other = k.var('other', 'f32', 0), o = k.var('o', 'u32', 0);
      const base = k.let('base', li.mul(8));
      k.for('s', k.u32(0), steps, (s) => {
        const xv = k.let('xv', xs.at(s));
        const row = k.let('row', s.mul(16));
        const at = (j: number, index: typeof row) => k.let(`w${j}`, ws.at(index));
        const wv = [
          ...[0, 1, 2, 3].map((j) => at(j, row.add(base.rem(16)).add(j))), // adjacent
          ...[0, 1, 2, 3].map((j) => at(4 + j, row.add(2 * j))), // 2 apart
          ...[0, 1, 2, 3].map((j) => at(8 + j, o.add(row).add(j))), // o moves below
          ...[0, 1].map((j) => at(12 + j, row.add(12 + j))), // a group of two
        ];
        o.set(o.add(1).rem(8));
        other.set(other.add(wv[0]!));
        wv.forEach((wj, j) => acc[j]!.set(k.call('fma', [xv, wj, acc[j]!])));
      });
      [...acc, other].forEach((v, j) => out.set(li.mul(15).add(j), v));
    },
  });

  it('where x is one let and w adjacent ones, and gives the js executor\'s bits everywhere', async () => {
    const m = emitWasm(staged.ir, { fusedMadd: true });
    expect(m.simdGroups).toBe(4);
    // x (one load for all four groups), w0..w3 and w12/w13; w4..w7 are 2 apart and w8..w11's index moves.
    expect(m.vectorOperands).toBe(3);
    const r = rng(freshSeed('wasm staged operands'));
    const spread = (n: number) => Float32Array.from(randomF32(n, r), (v, j) => v * 2 ** ((j % 7) * 4 - 12));
    const X = spread(64), W = spread(256), steps = 3;
    const got = await Promise.all([wasm, js].map(async (dev) => {
      const x = dev.alloc('f32', 64, 'x'), w = dev.alloc('f32', 256, 'w'), out = dev.alloc('f32', 16 * 15, 'out');
      try {
        dev.write(x, X); dev.write(w, W); dev.write(out, new Float32Array(16 * 15).fill(Number.NaN));
        dev.launch(staged, { x, w, out }, { steps });
        return await dev.read(out);
      } finally { for (const b of [x, w, out]) dev.free(b); }
    }));
    expect(got[1]!.every(Number.isFinite)).toBe(true);
    expect(firstDiff(got[0]!, got[1]!)).toBeNull();
  });
});

describe('SIMD128: weight lanes converted four at a time', () => {
  // Two rows share every weight (a GEMM's shape): f16 pairs of a vec2<u32> load and INT4 nibbles
  // (AutoAWQ's order) become f32x4 operands computed as vectors (wasm-convert.ts). The f16 words
  // cover every class: zeros, subnormals, normals, the largest, infinities and NaNs (lanes the
  // vector path hands to the table); nibbles all 16 values.
  const lanes = kernel({
    name: 'convertedLanes', workgroupSize: 8, grid: () => [1, 1, 1],
    bindings: {
      x: storage('f32', 'read'), wh: storage('u32', 'read', { vec: 2 }), wq: storage('u32', 'read'), out: storage('f32', 'read_write'),
    },
    uniforms: { steps: 'u32' },
    body(k, { x, wh, wq, out }, { steps }) {
      const li = k.let('li', k.localIndex);
      const a = Array.from({ length: 2 }, (_, r) => Array.from({ length: 4 }, (_, c) => k.var(`a${r}_${c}`, 'f32', 0)));
      const b = Array.from({ length: 2 }, (_, r) => Array.from({ length: 8 }, (_, c) => k.var(`b${r}_${c}`, 'f32', 0)));
      k.for('s', k.u32(0), steps, (s) => {
        const at = k.let('at', s.mul(8).add(li));
        const hw = k.let('hw', wh.at(at));
        const p0 = k.let('p0', k.unpack2x16float(hw.at(0) as never)), p1 = k.let('p1', k.unpack2x16float(hw.at(1) as never));
        const hv = [p0.x, p0.y, p1.x, p1.y].map((v, c) => k.let(`h${c}`, v));
        const q = k.let('q', wq.at(at));
        const qv = [0, 4, 1, 5, 2, 6, 3, 7].map((nib, c) => k.let(`n${c}`, k.f32(nib === 0 ? q.band(15) : nib === 7 ? q.shr(28) : q.shr(nib * 4).band(15))));
        for (let r = 0; r < 2; r++) {
          const xv = k.let(`x${r}`, x.at(s.mul(2).add(r)));
          for (let c = 0; c < 4; c++) a[r]![c]!.set(k.call('fma', [xv, hv[c]!, a[r]![c]!]));
          for (let c = 0; c < 8; c++) b[r]![c]!.set(k.call('fma', [xv, qv[c]!, b[r]![c]!]));
        }
      });
      [...a.flat(), ...b.flat()].forEach((v, j) => out.set(li.mul(24).add(j), v));
    },
  });

  // The same conversions stored (a GEMM staging unpacked weights in private memory): four stores
  // to adjacent elements become one vector store.
  const staged = kernel({
    name: 'convertedStores', workgroupSize: 8, grid: () => [1, 1, 1],
    bindings: { wh: storage('u32', 'read', { vec: 2 }), wq: storage('u32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { steps: 'u32' },
    body(k, { wh, wq, out }, { steps }) {
      const li = k.let('li', k.localIndex);
      const stage = k.privateArray('stage', 'f32', 48);
      k.for('s', k.u32(0), steps, (s) => {
        const at = k.let('at', s.mul(8).add(li));
        const hw = k.let('hw', wh.at(at));
        const p0 = k.let('p0', k.unpack2x16float(hw.at(0) as never)), p1 = k.let('p1', k.unpack2x16float(hw.at(1) as never));
        const q = k.let('q', wq.at(at));
        const base = k.let('base', s.mul(12));
        [p0.x, p0.y, p1.x, p1.y].forEach((v, c) => stage.set(base.add(c), v));
        [0, 4, 1, 5, 2, 6, 3, 7].forEach((nib, c) => stage.set(base.add(4 + c), k.f32(nib === 0 ? q.band(15) : nib === 7 ? q.shr(28) : q.shr(nib * 4).band(15))));
      });
      k.for('e', k.u32(0), steps.mul(12), (e) => out.set(li.mul(48).add(e), stage.at(e)));
    },
  });

  it('stored: four adjacent stores become one, with the js executor\'s bits', async () => {
    expect(emitWasm(staged.ir, { fusedMadd: true }).vectorOperands).toBe(3); // one f16 quad, two nibble quads
    expect(emitWasm(staged.ir, { fusedMadd: true, convertWeights: false }).vectorOperands).toBe(0);
    const r = rng(freshSeed('wasm converted stores'));
    const steps = 4;
    const words = [0x00000001, 0x83ff0400, 0x7c00fc00, 0x7e00fe01, 0x7bff8000, 0x3c000200];
    const H = Uint32Array.from({ length: steps * 16 }, (_, i) => (i < words.length ? words[i]! : Math.floor(r() * 2 ** 32) >>> 0));
    const Q = Uint32Array.from({ length: steps * 8 }, () => Math.floor(r() * 2 ** 32) >>> 0);
    const got = await Promise.all([wasm, js].map(async (dev) => {
      const wh = dev.alloc('u32', H.length, 'wh'), wq = dev.alloc('u32', Q.length, 'wq'), out = dev.alloc('f32', 8 * 48, 'out');
      try {
        dev.write(wh, H); dev.write(wq, Q); dev.write(out, new Float32Array(8 * 48).fill(Number.NaN));
        dev.launch(staged, { wh, wq, out }, { steps });
        return await dev.read(out);
      } finally { for (const b of [wh, wq, out]) dev.free(b); }
    }));
    const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
    expect(bits(got[0]!)).toEqual(bits(got[1]!));
    // Lane 0 of invocation 0, step 0 is the smallest subnormal; the nibbles are their values.
    expect(got[1]![0]).toBe(2 ** -24);
    expect(got[1]![4]).toBe(Q[0]! & 15);
  });

  it('are used, off with convertWeights: false, and give the js executor\'s bits', async () => {
    const on = emitWasm(lanes.ir, { fusedMadd: true });
    expect(on.vectorOperands).toBe(5); // one f16 quad, two nibble quads, x0 and x1 splat from memory
    expect(emitWasm(lanes.ir, { fusedMadd: true, convertWeights: false }).vectorOperands).toBe(2);
    const r = rng(freshSeed('wasm converted lanes'));
    const steps = 24;
    // Finite words (zeros and subnormals often); each accumulator meets one infinity or NaN at most,
    // so an infinity stays visible in its sum and a wrong conversion of it shows.
    const finite = [0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x0200];
    const half = () => (r() < 0.2 ? finite[Math.floor(r() * finite.length)]! : Math.floor(r() * 0x7800) | (r() < 0.5 ? 0x8000 : 0));
    const H = Uint32Array.from({ length: steps * 16 }, () => (half() | (half() << 16)) >>> 0);
    const special = [0x7c00, 0xfc00, 0x7e00, 0xfe01];
    for (let li = 0; li < 8; li++) {
      for (let c = 0; c < 4; c++) {
        if ((li + c) % 3 === 2) continue; // some lanes stay finite throughout
        const at = ((li + 5 * c) % steps) * 8 + li, word = 2 * at + (c >> 1), shift = (c & 1) * 16;
        H[word] = ((H[word]! & ~(0xffff << shift)) | (special[(li + c) % 4]! << shift)) >>> 0;
      }
    }
    const Q = Uint32Array.from({ length: steps * 8 }, () => Math.floor(r() * 2 ** 32) >>> 0);
    const X = Float32Array.from(randomF32(steps * 2, r), (v, j) => v * 2 ** ((j % 5) * 3 - 6));
    const got = await Promise.all([wasm, js].map(async (dev) => {
      const x = dev.alloc('f32', X.length, 'x'), wh = dev.alloc('u32', H.length, 'wh'), wq = dev.alloc('u32', Q.length, 'wq'), out = dev.alloc('f32', 8 * 24, 'out');
      try {
        dev.write(x, X); dev.write(wh, H); dev.write(wq, Q); dev.write(out, new Float32Array(8 * 24).fill(Number.NaN));
        dev.launch(lanes, { x, wh, wq, out }, { steps });
        return await dev.read(out);
      } finally { for (const b of [x, wh, wq, out]) dev.free(b); }
    }));
    const [w, j] = got as [Float32Array, Float32Array];
    // NaN results may differ in payload between executors; every other value bit for bit.
    const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length), (u, i) => (Number.isNaN(a[i]) ? 'NaN' : u));
    expect(bits(w)).toEqual(bits(j));
    // The f16 sums (8 of each 24) hold infinities, NaNs and finite values: the comparison has teeth.
    const f16Sums = Array.from({ length: 8 }, (_, li) => Array.from(j.subarray(li * 24, li * 24 + 8))).flat();
    expect(f16Sums.filter((v) => v === Infinity || v === -Infinity).length).toBeGreaterThan(4);
    expect(f16Sums.filter(Number.isFinite).length).toBeGreaterThan(16);
  });
});

describe('the wasm heap', () => {
  // Releasing the topmost block lowers the top; the next allocation there must not see its bytes
  // (found when a 4 MB buffer written by a launch and freed left its data under a model's weights,
  // KV cache and last-arrival tickets, which start at zero).
  it('hands out zeroed bytes, also where a released block at the top was', () => {
    const h = new WasmHeap(1 << 20);
    const a = h.alloc(5000, 'a');
    new Uint8Array(h.sab, a, 5000).fill(0xab);
    h.release(a, 5000);
    const b = h.alloc(3000, 'b'), c = h.alloc(3000, 'c');
    expect(b).toBe(a); // back at the same place: the test means something
    expect(new Uint8Array(h.sab, b, 3000).every((x) => x === 0)).toBe(true);
    expect(new Uint8Array(h.sab, c, 3000).every((x) => x === 0)).toBe(true);
  });
  it('a freed buffer\'s bytes do not show in the next buffer (device level)', async () => {
    const x = wasm.alloc('u32', 1 << 16, 'dirty');
    wasm.write(x, new Uint32Array(1 << 16).fill(0xdeadbeef));
    await wasm.sync();
    wasm.free(x);
    const y = wasm.alloc('u32', 1 << 16, 'clean');
    try {
      expect((await wasm.read(y)).every((v) => v === 0)).toBe(true);
    } finally { wasm.free(y); }
  });
});

describe.each([
  // biome-ignore lint/style/useExponentiationOperator: the JS executor calls Math.pow: that call is the reference
  ['exp2', exp2, (v: number) => Math.pow(2, v), -126, 127.5],
  ['exp', exp, Math.exp, -87, 88],
] as const)('%s inside wasm', (name, fn, ref, lo, hi) => {
  // The wasm executor computes exp2 and exp itself (wasm-helpers.ts exp2Helper, expHelper) and
  // calls Math only outside (lo, hi) or next to an f32 rounding boundary; scripts/check-exp.ts
  // checks every f32 input of those ranges. Here: 2^20 random inputs of the range, its edges,
  // integers, tiny inputs and the specials, on both executors.
  const all = kernel({
    name: `${name}All`, workgroupSize: 64, grid: (u) => Math.ceil(u.n / 64),
    bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') },
    uniforms: { n: 'u32' },
    body(k, { x, out }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.ge(n), () => k.return());
      out.set(i, fn(x.at(i)));
    },
  });
  it(`gives Math's bits (Math.fround of the f64 result) bit for bit`, async () => {
    const r = rng(freshSeed(`wasm ${name}`));
    const n = 1 << 20;
    const bits = new Uint32Array(n + 64);
    const f = new Float32Array(2), u = new Uint32Array(f.buffer);
    f[0] = hi; f[1] = lo;
    // A third uniform in bit pattern (every binade), two thirds uniform in value (large |x|, where
    // an error in the exponent's scaling would show).
    const X0 = new Float32Array(bits.buffer);
    for (let j = 0; j < n; j++) {
      if (j % 3 === 0) bits[j] = r() < 0.5 ? Math.floor(r() * u[0]!) : 0x80000000 + Math.floor(r() * (u[1]! - 0x80000000));
      else X0[j] = lo + (hi - lo) * r();
    }
    const special = [0, -0, 1, -1, 0.5, -0.5, 1e-30, -1e-30, lo, hi, lo - 1e-4, hi - 1e-4, lo + 1, hi - 1, -149, -150, -151, 88.7, 89, -103.9, -104,
      Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, Number.NaN, 3.4e38, -3.4e38];
    const X = new Float32Array(bits.buffer);
    special.forEach((v, j) => { X[n + j] = v; });
    const total = n + special.length;
    const got = await Promise.all([wasm, js].map(async (dev) => {
      const x = dev.alloc('f32', total, 'x'), out = dev.alloc('f32', total, 'out');
      try {
        dev.write(x, X.subarray(0, total)); dev.write(out, new Float32Array(total).fill(Number.NaN));
        dev.launch(all, { x, out }, { n: total });
        return await dev.read(out);
      } finally { dev.free(x); dev.free(out); }
    }));
    const want = Float32Array.from(X.subarray(0, total), ref);
    expect(firstDiff(got[1]!, want), 'js executor').toBeNull();
    expect(firstDiff(got[0]!, want), 'wasm executor').toBeNull();
  });
});

describe('wasm executor errors', () => {
  // 2 GiB past the buffer, far past the end of the memory (it holds little here): the store traps.
  const wild = kernel({
    name: 'wildStore', workgroupSize: 64, grid: () => 4,
    bindings: { out: storage('f32', 'read_write') }, uniforms: {},
    body(k, { out }) { out.set(k.globalId.x.add(0x20000000), 1); },
  });
  it('a trapping kernel rejects sync() naming it, queued or replayed in a graph, and the device stays usable', async () => {
    const out = wasm.alloc('f32', 256, 'out');
    try {
      wasm.launch(wild, { out }, {});
      const e = await wasm.sync().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(KernelRunError);
      expect(String(e)).toMatch(/kernel 'wildStore' failed on the cpu device .*out of bounds/);
      // In a replayed step: the other launches' threads are not left waiting at a barrier.
      const a = wasm.alloc('f32', 64, 'a');
      const add = vectorAdd({ caps: wasm.caps });
      wasm.write(a, new Float32Array(64).fill(2));
      const g = wasm.captureGraph!(() => {
        wasm.launch(add, { a, b: a, out: a }, { n: 64 });
        wasm.launch(wild, { out }, {});
        wasm.launch(add, { a, b: a, out: a }, { n: 64 });
      });
      g.replay();
      const e2 = await wasm.sync().catch((x: unknown) => x);
      expect(e2).toBeInstanceOf(KernelRunError);
      expect(String(e2)).toMatch(/wildStore/);
      await wasm.sync(); // reported once
      g.destroy();
      wasm.free(a);
      const c = wasm.alloc('f32', 64, 'c');
      wasm.write(c, new Float32Array(64).fill(1.5));
      wasm.launch(add, { a: c, b: c, out: c }, { n: 64 });
      expect(Array.from(await wasm.read(c))).toEqual(new Array(64).fill(3));
      wasm.free(c);
    } finally {
      wasm.free(out);
    }
  });
});

describe.each([['f16 weights', {}], ['INT4 RTN g=64', { quant: 'int4-rtn', groupSize: 64 }]] as const)('brown-draft (%s) on the wasm and js executors', (_name, opts) => {
  let onWasm: LLM, onJs: LLM;
  const seed = freshSeed('wasm vs js model');
  beforeAll(async () => {
    onWasm = await loadModel(brownDir('draft'), { device: wasm, ...opts });
    onJs = await loadModel(brownDir('draft'), { device: js, ...opts });
  });
  afterAll(async () => { await onWasm?.close(); await onJs?.close(); });

  /** Prefill, then decode steps (plain forward or replayed decode graphs): every logits row. */
  async function run(llm: LLM, dev: Device, graphs: boolean): Promise<Float32Array[]> {
    const fw = new LlamaForward(dev, llm.spec, llm.weights, { numBlocks: 8, maxSeqs: 2, maxBatchTokens: 16, decodeGraphs: graphs });
    const bm = new BlockManager(8, { prefixCaching: false });
    const r = rng(seed);
    const out: Float32Array[] = [];
    try {
      const input = (s: number, tokens: number[]): SeqInput => {
        const ctxLen = bm.length(s);
        return { tokens, ctxLen, blockTable: [], slots: bm.append(s, tokens), logits: 'last' };
      };
      const withTable = (s: number, q: SeqInput): SeqInput => ({ ...q, blockTable: bm.blockTable(s) });
      for (const s of [0, 1]) {
        bm.addSequence(s);
        const q = input(s, Array.from({ length: 9 + 4 * s }, () => Math.floor(r() * llm.spec.vocabSize)));
        out.push((await fw.forward([withTable(s, q)])).logits);
      }
      for (let step = 0; step < 4; step++) {
        const batch = [0, 1].slice(0, 1 + (step % 2)).map((s) => withTable(s, input(s, [Math.floor(r() * llm.spec.vocabSize)])));
        out.push((graphs ? await fw.decode(batch) : await fw.forward(batch)).logits);
      }
      if (graphs) expect(fw.capturedBuckets).toEqual([1, 2]);
      return out;
    } finally {
      for (const s of [0, 1]) if (bm.has(s)) bm.free(s);
      fw.destroy();
    }
  }

  it('gives the js executor\'s logits bit for bit (prefill and decode), and replayed decode steps give the plain forward\'s', async () => {
    const ref = await run(onJs, js, false);
    const plain = await run(onWasm, wasm, false);
    const replayed = await run(onWasm, wasm, true);
    expect(ref.every((row) => row.every(Number.isFinite))).toBe(true);
    ref.forEach((row, i) => {
      expect(firstDiff(plain[i]!, row), `pass ${i}: wasm vs js`).toBeNull();
      expect(firstDiff(replayed[i]!, row), `pass ${i}: wasm with decode graphs vs js`).toBeNull();
    });
    // The logits depend on the input: the comparison is not between constant rows.
    expect(firstDiff(ref[0]!, ref[1]!)).not.toBeNull();
  });
});
