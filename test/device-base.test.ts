// What the device base gives every backend alike: shapes carried by buffers, one wording for bad
// arguments, ownership by device, byte accounting in whole words, and the optional device-side copy.
import { describe, expect, it } from 'vitest';
import { denseLinear } from '../codegen/kernels/denseMatmul.js';
import { argmax } from '../codegen/kernels/sampling.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { createDevice } from '../src/backend/index.js';
import { LaunchError } from '../src/backend/device.js';
import { aheadOfTimeClass, vendorClass } from '../codegen/kernels/deviceProfile.js';
import { BASELINE_CAPS, CUDA_CAPS } from '../codegen/dsl/types.js';
import { forEachBackend } from './backends.js';

forEachBackend('device base', (dev) => {
  it('a buffer allocated by shape carries it; by length, [length]', () => {
    const a = dev.alloc('f32', [2, 3, 4], 'shaped'), b = dev.alloc('u32', 5);
    expect([a.length, a.shape]).toEqual([24, [2, 3, 4]]);
    expect(b.shape).toEqual([5]);
    expect(() => dev.alloc('f32', [2, -1], 'bad')).toThrow(new RegExp(`${dev.kind} alloc 'bad': shape \\[2, -1\\] has a dimension that is not a whole number`));
    expect(() => dev.alloc('f64' as 'f32', 4, 'wide')).toThrow(/alloc 'wide': dtype 'f64' is not one of f32, f16, i32, u32/);
    dev.free(a); dev.free(b);
  });

  it('refuses a buffer of another device and a freed one, naming it', async () => {
    const other = await createDevice('cpu', { workers: 0 });
    try {
      const foreign = other.alloc('f32', 8, 'foreign'), mine = dev.alloc('f32', 8, 'mine');
      const k = vectorAdd({ caps: dev.caps });
      expect(() => dev.launch(k, { a: mine, b: foreign, out: mine }, { n: 8 })).toThrow(LaunchError);
      expect(() => dev.launch(k, { a: mine, b: foreign, out: mine }, { n: 8 })).toThrow(/binding 'b': buffer 'foreign' belongs to another device/);
      expect(() => dev.write(foreign, new Float32Array(8))).toThrow(new RegExp(`${dev.kind} write to 'foreign': buffer 'foreign' belongs to another device`));
      dev.free(mine);
      await expect(dev.read(mine)).rejects.toThrow(/buffer 'mine' was freed/);
    } finally { await other.destroy(); }
  });

  it('copies a whole buffer on the device, ordered with launches and writes', async () => {
    if (!dev.copy) return; // an optional capability: every backend here has it
    const src = dev.alloc('f32', 6, 'src'), dst = dev.alloc('f32', 6, 'dst'), out = dev.alloc('f32', 6, 'out');
    dev.write(src, Float32Array.of(1, 2, 3, 4, 5, 6));
    dev.launch(vectorAdd({ caps: dev.caps }), { a: src, b: src, out }, { n: 6 });
    dev.copy(dst, out);
    dev.write(out, new Float32Array(6)); // after the copy: does not change what it copied
    expect(Array.from(await dev.read(dst))).toEqual([2, 4, 6, 8, 10, 12]);
    const short = dev.alloc('f32', 5, 'short');
    expect(() => dev.copy?.(short, src)).toThrow(/copy: 'src' \(f32\[6\]\) does not match 'short' \(f32\[5\]\)/);
    for (const b of [src, dst, out, short]) dev.free(b);
  });

  it('an op checks each buffer against its binding shape over the op sizes, before any launch', () => {
    const x = dev.alloc('f32', 3 * 10 - 1, 'short'), tokens = dev.alloc('u32', 3, 'tokens');
    expect(() => dev.run(argmax(), { x, tokens }, { rows: 3, vocab: 10 }))
      .toThrow(/op 'argmax': buffer 'short' bound to 'x' has 29 elements, the op needs 30 = f32 \[rows, vocab\] with rows = 3, vocab = 10/);
    // A linear op's shapes use the K, N it was built for beside the run's M.
    const lin = denseLinear({ K: 8, N: 4, weight: 'f32' });
    const w = dev.alloc('f32', 8 * 4, 'w'), xs = dev.alloc('f32', 2 * 8 - 1, 'xShort'), out = dev.alloc('f32', 2 * 4, 'out');
    expect(() => dev.run(lin, { x: xs, w, out }, { M: 2 }))
      .toThrow(/buffer 'xShort' bound to 'x' has 15 elements, the op needs 16 = f32 \[M, K\] with M = 2, K = 8/);
    for (const b of [w, xs, out]) dev.free(b);
    dev.free(x);
    dev.free(tokens);
  });

  it('reports what it is: CPU executor, software rasteriser or GPU, its vendor, and the parallelism it wants', () => {
    const p = dev.profile;
    expect(p.parallelism).toBeGreaterThan(0);
    expect(p.software).toBe(p.deviceClass !== 'gpu');
    if (dev.kind === 'cpu') expect([p.deviceClass, p.vendor]).toEqual(['cpu', 'cpu']);
    if (dev.kind === 'cuda') expect([p.deviceClass, p.vendor]).toEqual(['gpu', 'nvidia']);
    if (dev.kind === 'webgpu') {
      expect(p.deviceClass).not.toBe('cpu');
      if (p.deviceClass === 'software-gpu') expect(p.vendor).toBe('software');
      // The adapter named here is an oracle for this test only; the backend reads the adapter's info fields.
      if (/llvmpipe|swiftshader/i.test(dev.description)) expect(p.deviceClass).toBe('software-gpu');
    }
  });
});

describe('device profile', () => {
  it('vendor classes from an API vendor field; the ahead-of-time class from the target caps', () => {
    expect(['nvidia', 'AMD', 'intel', 'apple', 'arm', 'qualcomm', 'mesa', '', undefined].map(vendorClass))
      .toEqual(['nvidia', 'amd', 'intel', 'apple', 'arm', 'qualcomm', 'unknown', 'unknown', 'unknown']);
    expect([aheadOfTimeClass(CUDA_CAPS), aheadOfTimeClass(BASELINE_CAPS)]).toEqual(['gpu', 'software-gpu']);
  });
});

describe('device base on cpu', () => {
  it('bytesInUse counts whole 4-byte words, never 0', async () => {
    const dev = await createDevice('cpu', { workers: 0 });
    try {
      const a = dev.alloc('f16', 3), b = dev.alloc('u32', 0), c = dev.alloc('f32', [2, 2]);
      expect(dev.bytesInUse).toBe(8 + 4 + 16);
      dev.free(a); dev.free(b); dev.free(c);
      expect(dev.bytesInUse).toBe(0);
    } finally { await dev.destroy(); }
  });
});
