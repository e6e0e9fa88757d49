// The WebGPU device itself (not the kernels): adapter selection, limits, buffers, the recorded
// pass with per-launch uniforms, compile and launch errors. Skipped, with the reason, without an adapter.
import { afterAll, describe, expect, it } from 'vitest';
import { kernel, storage } from '../codegen/dsl/index.js';
import { op } from '../codegen/dsl/plan.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { BackendUnavailableError, LaunchError } from '../src/backend/device.js';
import { openWebGPUDevice, type WebGPUDevice } from '../src/backend/webgpu/index.js';
import { emitWGSL } from '../codegen/emit/wgsl.js';
import { freshSeed, randomF32, relErr, rng, POISON_F32 } from './util.js';

// A kernel whose WGSL we break on purpose, to see the compile error reported.
const BROKEN = 'brokenKernel';
const emitWithBroken = (ir: Parameters<typeof emitWGSL>[0]) => {
  const wgsl = emitWGSL(ir);
  if (ir.name !== BROKEN) return wgsl;
  return wgsl.replace(new RegExp(`(fn ${BROKEN}\\([^{]*\\{)`), '$1\n  let kiln_broken: f32 = 1u;');
};

const opened = await openWebGPUDevice({ allowSoftware: true }, emitWithBroken).catch((e: unknown) =>
  e instanceof BackendUnavailableError ? e.reason : Promise.reject(e));

/** out[start + i] = value + i for i < count: each launch's uniforms decide where it writes. */
const fillSlice = kernel({
  name: 'fillSlice',
  workgroupSize: 64,
  bindings: { out: storage('f32', 'read_write', { shape: '[start + count]' }) },
  uniforms: { start: 'u32', count: 'u32', value: 'f32' },
  grid: ({ count }) => Math.ceil(count / 64),
  body(k, { out }, { start, count, value }) {
    const i = k.let('i', k.globalId.x);
    k.if(i.lt(count), () => out.set(start.add(i), value.add(k.f32(i))));
  },
});

/** x[i] = x[i] * scale + shift over n elements (i32 shift to exercise signed uniforms). */
const affine = (name: string) => kernel({
  name,
  workgroupSize: 32,
  bindings: { x: storage('f32', 'read_write', { shape: '[n]' }) },
  uniforms: { n: 'u32', scale: 'f32', shift: 'i32' },
  grid: ({ n }) => Math.ceil(n / 32),
  body(k, { x }, { n, scale, shift }) {
    const i = k.let('i', k.globalId.x);
    k.if(i.lt(n), () => x.set(i, x.at(i).mul(scale).add(k.f32(shift))));
  },
});

if (typeof opened === 'string') {
  describe.skip(`webgpu device [skipped — ${opened}]`, () => {});
} else {
  const dev: WebGPUDevice = opened;
  afterAll(() => dev.destroy());

  describe('webgpu device: adapter and limits', () => {
    it('describes the adapter; a software one is named (llvmpipe here)', () => {
      console.log(`[webgpu] ${dev.description}; caps ${JSON.stringify(dev.caps)}`);
      expect(dev.kind).toBe('webgpu');
      if (dev.software) expect(dev.description).toMatch(/llvmpipe|lavapipe|swiftshader|software/i);
      expect(dev.description).not.toMatch(/unnamed adapter/);
    });

    it('refuses a software adapter unless allowed', async () => {
      if (!dev.software) return;
      const err = await openWebGPUDevice({}, emitWGSL).then(async (d) => { await d.destroy(); return undefined; }, (e: unknown) => e);
      expect(err).toBeInstanceOf(BackendUnavailableError);
      expect((err as BackendUnavailableError).reason).toMatch(/allowSoftware/);
    });

    it('requests the adapter limits instead of the defaults', () => {
      const names = ['maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupStorageSize', 'maxStorageBufferBindingSize',
        'maxBufferSize', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupsPerDimension'] as const;
      for (const n of names) expect(dev.limits[n], n).toBe(dev.adapterLimits[n]);
      expect(dev.caps.maxStorageBuffers).toBe(dev.adapterLimits.maxStorageBuffersPerShaderStage);
      expect(dev.caps.maxWorkgroupStorage).toBe(dev.adapterLimits.maxComputeWorkgroupStorageSize);
      expect(dev.caps.maxInvocationsPerWorkgroup).toBe(dev.adapterLimits.maxComputeInvocationsPerWorkgroup);
    });
  });

  describe('webgpu device: buffers', () => {
    it('round-trips f32, i32 and u32 data of odd lengths, whole and at offsets', async () => {
      const r = rng(freshSeed('webgpu round trip'));
      for (const n of [1, 3, 7, 1001]) {
        const f = dev.alloc('f32', n, `f${n}`), i = dev.alloc('i32', n, `i${n}`), u = dev.alloc('u32', n, `u${n}`);
        const fd = randomF32(n, r, -1e3, 1e3);
        const id = Int32Array.from({ length: n }, () => Math.floor((r() - 0.5) * 2 ** 32));
        const ud = Uint32Array.from({ length: n }, () => Math.floor(r() * 2 ** 32));
        dev.write(f, fd); dev.write(i, id); dev.write(u, ud);
        expect(await dev.read(f)).toEqual(fd);
        expect(await dev.read(i)).toEqual(id);
        expect(await dev.read(u)).toEqual(ud);
        if (n > 2) {
          const part = Uint32Array.from({ length: n - 2 }, () => Math.floor(r() * 2 ** 32));
          dev.write(u, part, 1);
          const want = ud.slice(); want.set(part, 1);
          expect(await dev.read(u)).toEqual(want);
        }
        dev.free(f); dev.free(i); dev.free(u);
      }
    });

    it('writes f16 bits at odd offsets and lengths without touching the neighbours', async () => {
      const r = rng(freshSeed('webgpu f16 bits'));
      const n = 9;
      const h = dev.alloc('f16', n, 'halves');
      const base = Uint16Array.from({ length: n }, () => Math.floor(r() * 65536));
      dev.write(h, base);
      expect(await dev.read(h)).toEqual(base);
      const want = base.slice();
      for (const [off, len] of [[1, 1], [2, 3], [3, 4], [8, 1], [5, 2]] as const) {
        const part = Uint16Array.from({ length: len }, () => Math.floor(r() * 65536));
        dev.write(h, part, off);
        want.set(part, off);
      }
      expect(await dev.read(h)).toEqual(want);
      dev.free(h);
    });

    it('rejects writes that do not fit or have the wrong array type', () => {
      const b = dev.alloc('f32', 4, 'small');
      expect(() => dev.write(b, new Float32Array(5))).toThrow(/'small'.*do not fit/);
      expect(() => dev.write(b, new Float32Array(2), 3)).toThrow(/offset 3/);
      expect(() => dev.write(b, new Int32Array(4) as never)).toThrow(/expected a Float32Array/);
      dev.free(b);
    });

    it('accounts for the bytes in use', () => {
      const before = dev.bytesInUse;
      const a = dev.alloc('f32', 10), b = dev.alloc('f16', 3), c = dev.alloc('u32', 1);
      // Whole words, at least 16 bytes (one vec4 element) per buffer.
      expect(dev.bytesInUse - before).toBe(40 + 16 + 16);
      dev.free(b);
      expect(dev.bytesInUse - before).toBe(56);
      expect(() => dev.free(b)).toThrow(/freed/);
      dev.free(a); dev.free(c);
      expect(dev.bytesInUse).toBe(before);
    });
  });

  describe('webgpu device: launches', () => {
    it('runs vectorAdd against a float64 reference', async () => {
      const r = rng(freshSeed('webgpu vectorAdd'));
      const n = 1000;
      const k = vectorAdd();
      const a = dev.alloc('f32', n, 'a'), b = dev.alloc('f32', n, 'b'), out = dev.alloc('f32', n, 'out');
      const ad = randomF32(n, r), bd = randomF32(n, r);
      dev.write(a, ad); dev.write(b, bd); dev.write(out, new Float32Array(n).fill(POISON_F32));
      dev.launch(k, { a, b, out }, { n });
      const ref = Array.from(ad, (x, i) => x + bd[i]!);
      expect(relErr(await dev.read(out), ref)).toBeLessThan(1e-6);
      for (const x of [a, b, out]) dev.free(x);
    });

    it('gives every launch in one pass its own uniforms', async () => {
      const r = rng(freshSeed('webgpu uniforms per launch'));
      const launches = 300; // past one 64 KiB uniform chunk when slots are 256-byte aligned
      const counts = Array.from({ length: launches }, () => 1 + Math.floor(r() * 5));
      const total = counts.reduce((s, c) => s + c, 0);
      const out = dev.alloc('f32', total, 'slices');
      dev.write(out, new Float32Array(total).fill(POISON_F32));
      const want = new Float32Array(total);
      let start = 0;
      for (const count of counts) {
        const value = Math.round((r() - 0.5) * 2000) / 4;
        dev.launch(fillSlice, { out }, { start, count, value });
        for (let i = 0; i < count; i++) want[start + i] = value + i;
        start += count;
      }
      expect(dev.queued).toBe(launches);
      expect(await dev.read(out)).toEqual(want);
      expect(dev.queued).toBe(0);
      dev.free(out);
    });

    it('orders host writes between launches of one pass', async () => {
      const k = affine('affineWrites');
      const x = dev.alloc('f32', 40, 'x');
      dev.write(x, Float32Array.from({ length: 40 }, (_, i) => i));
      dev.launch(k, { x }, { n: 40, scale: 2, shift: -3 });      // x = 2i - 3
      dev.write(x, new Float32Array([100, 101]), 10);            // after the first launch
      dev.launch(k, { x }, { n: 40, scale: 0.5, shift: 7 });     // x = x/2 + 7
      const got = await dev.read(x);
      const want = Float32Array.from({ length: 40 }, (_, i) => (i === 10 || i === 11 ? 100 + i - 10 : 2 * i - 3) * 0.5 + 7);
      expect(got).toEqual(want);
      dev.free(x);
    });

    it('runs a multi-launch op through its plan, with scratch buffers', async () => {
      const r = rng(freshSeed('webgpu op plan'));
      const n = 77;
      const add = vectorAdd({ workgroupSize: 32 });
      const add3 = op('add3', { a: storage('f32', 'read'), b: storage('f32', 'read'), c: storage('f32', 'read'), out: storage('f32', 'read_write') },
        ({ n }: { n: number }) => ({
          temps: { ab: { t: 'f32', length: n } },
          steps: [
            { kernel: add, bind: { a: 'a', b: 'b', out: 'ab' }, uniforms: { n } },
            { kernel: add, bind: { a: 'ab', b: 'c', out: 'out' }, uniforms: { n } },
          ],
        }));
      const [ad, bd, cd] = [randomF32(n, r), randomF32(n, r), randomF32(n, r)];
      const a = dev.alloc('f32', n), b = dev.alloc('f32', n), c = dev.alloc('f32', n), out = dev.alloc('f32', n);
      dev.write(a, ad); dev.write(b, bd); dev.write(c, cd); dev.write(out, new Float32Array(n).fill(POISON_F32));
      dev.run(add3, { a, b, c, out }, { n });
      expect(relErr(await dev.read(out), Array.from(ad, (x, i) => x + bd[i]! + cd[i]!))).toBeLessThan(1e-6);
      for (const x of [a, b, c, out]) dev.free(x);
    });

    it('lets a buffer be freed while a queued launch still uses it', async () => {
      const k = affine('affineFree');
      const x = dev.alloc('f32', 8, 'doomed');
      dev.launch(k, { x }, { n: 8, scale: 1, shift: 1 });
      dev.free(x);
      await dev.sync();
    });

    it('skips empty grids', async () => {
      const out = dev.alloc('f32', 4, 'untouched');
      dev.launch(fillSlice, { out }, { start: 0, count: 0, value: 1 });
      expect(dev.queued).toBe(0);
      dev.free(out);
    });
  });

  describe('webgpu device: errors', () => {
    it('names the kernel and the offending line when WGSL does not compile, and keeps working', async () => {
      const broken = affine(BROKEN);
      const x = dev.alloc('f32', 8, 'x');
      dev.launch(broken, { x }, { n: 8, scale: 1, shift: 0 });
      const err = await dev.sync().then(() => undefined, (e: unknown) => e as Error);
      expect(err?.message).toMatch(new RegExp(`kernel '${BROKEN}': WGSL does not compile`));
      expect(err?.message).toMatch(/kiln_broken/);
      // Known broken now: the next launch fails at once.
      expect(() => dev.launch(broken, { x }, { n: 8, scale: 1, shift: 0 })).toThrow(BROKEN);
      // The device still runs other kernels.
      dev.write(x, new Float32Array(8).fill(2));
      dev.launch(affine('affineAfterError'), { x }, { n: 8, scale: 3, shift: 1 });
      expect(await dev.read(x)).toEqual(new Float32Array(8).fill(7));
      dev.free(x);
    });

    it('validates launches before any device work', () => {
      const k = vectorAdd();
      const a = dev.alloc('f32', 16, 'a16'), b = dev.alloc('f32', 16, 'b16'), out = dev.alloc('f32', 16, 'out16');
      const ints = dev.alloc('i32', 16, 'ints'), short = dev.alloc('f32', 8, 'short');
      const queued = dev.queued;
      expect(() => dev.launch(k, { a, b } as never, { n: 16 })).toThrow(LaunchError);
      expect(() => dev.launch(k, { a, b } as never, { n: 16 })).toThrow(/'vectorAdd'.*'out'.*missing/);
      expect(() => dev.launch(k, { a, b: ints, out } as never, { n: 16 })).toThrow(/'b' expects f32.*'ints' holds i32/);
      expect(() => dev.launch(k, { a, b: short, out }, { n: 16 })).toThrow(/'short'.*8 elements.*needs 16/);
      expect(() => dev.launch(k, { a, b, out }, { n: -1 })).toThrow(/'n' = -1 is not a u32/);
      expect(() => dev.launch(fillSlice, { out: a }, { start: 0, count: 64 * (dev.limits.maxComputeWorkgroupsPerDimension + 1), value: 0 }))
        .toThrow(/'fillSlice'.*(needs|exceeds)/);
      expect(() => dev.launch(affine('affineAlias'), { x: a }, { n: 16, scale: 1, shift: 0 })).not.toThrow();
      expect(() => dev.launch(k, { a, b, out: a }, { n: 16 })).toThrow(/'a16' is bound to both/);
      dev.free(short);
      expect(() => dev.launch(k, { a, b: short, out }, { n: 8 })).toThrow(/'short' was freed/);
      expect(dev.queued).toBe(queued + 1); // only the valid affine launch
      for (const x of [a, b, out, ints]) dev.free(x);
    });

    it('reports an uncaptured device error at the next sync, then carries on', async () => {
      const raw = (dev as unknown as { device: GPUDevice }).device;
      raw.createBuffer({ label: 'invalid on purpose', size: 4, usage: 0 });
      await expect(dev.sync()).rejects.toThrow(/GPUValidationError.*usage/is);
      await dev.sync();
    });

    it('refuses work once destroyed', async () => {
      const other = await openWebGPUDevice({ allowSoftware: true }, emitWGSL);
      const x = other.alloc('f32', 4, 'x');
      await other.destroy();
      expect(other.bytesInUse).toBe(0);
      expect(() => other.alloc('f32', 4)).toThrow(/destroyed/);
      expect(() => other.launch(vectorAdd(), { a: x, b: x, out: x }, { n: 4 })).toThrow(/destroyed/);
      await expect(other.sync()).rejects.toThrow(/destroyed/);
      await other.destroy(); // twice is fine
    });

    it('rejects a grid beyond the workgroups-per-dimension limit, naming the kernel', () => {
      const big = kernel({
        name: 'hugeGrid', workgroupSize: 1, bindings: { x: storage('f32', 'read_write') }, uniforms: { g: 'u32' },
        grid: ({ g }) => g, body(k, { x }) { x.set(k.globalId.x, 0); },
      });
      const x = dev.alloc('f32', 4, 'x');
      expect(() => dev.launch(big, { x }, { g: dev.limits.maxComputeWorkgroupsPerDimension + 1 })).toThrow(/'hugeGrid'.*exceeds/);
      dev.free(x);
    });

    it('a captured graph owns its buffers until destroyed: freeing one is refused, as are copies and syncs inside a capture', async () => {
      const x = dev.alloc('f32', 64, 'graphX');
      const g = dev.captureGraph(() => {
        dev.launch(fillSlice, { out: x }, { start: 0, count: 64, value: 1 });
        expect(() => dev.copy(x, x)).toThrow(/during graph capture/);
      });
      await expect(dev.sync()).resolves.toBeUndefined();
      expect(() => dev.free(x)).toThrow(/'graphX'.*used by 1 live captured graph/);
      g.replay();
      expect((await dev.read(x))[63]).toBe(64);
      g.destroy();
      dev.free(x);
    });
  });
}
