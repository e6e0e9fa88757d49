// The builder rejects invalid kernels when they are built, naming the kernel and the expression;
// and the launch API rejects wrong bindings at compile time (the @ts-expect-error lines below
// fail `tsc --noEmit`, part of `npm test`, if they ever start to type-check).
import { describe, expect, it } from 'vitest';
import { BASELINE_CAPS, type Caps, kernel, KernelError, max, storage, type Val } from '../codegen/dsl/index.js';
import { dims } from '../codegen/dsl/dims.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import type { Device } from '../src/backend/device.js';

/** A one-binding kernel whose body is the test's. */
function build(body: Parameters<typeof kernel<{ x: ReturnType<typeof storage<'f32', 'read'>>; y: ReturnType<typeof storage<'u32', 'read_write'>> }, { n: 'u32' }>>[0]['body'], caps: Caps = BASELINE_CAPS) {
  return kernel({
    name: 'probe', caps, workgroupSize: 64,
    bindings: { x: storage('f32', 'read'), y: storage('u32', 'read_write') },
    uniforms: { n: 'u32' },
    grid: ({ n }) => Math.ceil(n / 64),
    body,
  });
}

describe('kernel validation at build time', () => {
  it('mixing types without a cast names the kernel, the operation and the expression', () => {
    expect(() => build((k, { x }) => { k.let('bad', x.at(0).add(k.globalId.x as unknown as Val<'f32'>)); }))
      .toThrow(/kernel 'probe': 'add' mixes f32 and u32 without a cast in `\(x\[0\] \+ globalId\.x\)`/);
  });

  it('writing a read-only buffer is refused', () => {
    expect(() => build((k, { x }) => { (x as unknown as { set(i: number, v: number): void }).set(0, 1); }))
      .toThrow(/kernel 'probe': store to read-only buffer 'x' in `x\[0\]`/);
  });

  it('seeing a binding as another element type or as writable is checked when the kernel is built', () => {
    expect(() => build((k, { x }) => { k.let('v', x.typed('u32').at(0)); })).toThrow(/kernel 'probe': array 'x' holds f32, not u32/);
    expect(() => build((k, { x }) => { x.writableRef().set(0, 1); })).toThrow(/kernel 'probe': array 'x' is read-only/);
    expect(() => build((k, { x, y }) => { y.writableRef().typed('u32').set(0, k.u32(x.typed('f32').at(0))); })).not.toThrow();
  });

  it('a value from another kernel is an unbound name here', () => {
    let foreign: Val<'u32'> | undefined;
    build((k) => { foreign = k.let('i', k.globalId.x); });
    expect(() => build((k, { y }) => y.set(0, foreign!)))
      .toThrow(/kernel 'probe': value `i` belongs to kernel 'probe'|belongs to kernel/);
  });

  it('wrong arity of a math function is reported', () => {
    expect(() => build((k, { x }) => { k.let('m', k.call('max', [x.at(0)])); })).toThrow(/kernel 'probe': max takes 2 arguments, got 1/);
  });

  it('subgroup operations need the capability checked first, and present', () => {
    const caps = { ...BASELINE_CAPS, subgroups: true, subgroupSize: 32 };
    expect(() => build((k, { x }) => { k.let('s', k.subgroupAdd(x.at(0))); }, caps))
      .toThrow(/kernel 'probe': subgroup add used without checking k\.caps\.subgroups/);
    expect(() => build((k, { x }) => { const checked = k.caps.subgroups; if (checked || !checked) k.let('s', k.subgroupAdd(x.at(0))); }, BASELINE_CAPS))
      .toThrow(/kernel 'probe': subgroup add used but the device has no subgroup operations/);
    // Checked and present: builds, and the IR says so.
    const ok = build((k, { x, y }) => { if (k.caps.subgroups) y.set(0, k.u32(k.subgroupAdd(x.at(0)))); }, caps);
    expect(ok.ir.usesSubgroups).toBe(true);
  });

  it('literals must fit their type; shifts must be below 32; conditions must be bool', () => {
    expect(() => build((k, { y }) => y.set(0, -1))).toThrow(/kernel 'probe': literal -1 is out of range for u32/);
    expect(() => build((k, { y }) => y.set(0, 1.5))).toThrow(/literal 1\.5 is not an integer but u32 is expected/);
    expect(() => build((k, { y }) => y.set(0, k.u32(1).shl(32)))).toThrow(/shift by 32 is not below 32/);
    expect(() => build((k, { x }) => k.if(x.at(0) as unknown as Val<'bool'>, () => {}))).toThrow(/if condition is f32, not bool in `x\[0\]`/);
    expect(() => build((k) => k.break())).toThrow(/kernel 'probe': break outside a loop/);
  });

  it('device limits are checked: workgroup size, storage buffers, workgroup memory, f16 buffers', () => {
    const small: Caps = { ...BASELINE_CAPS, maxInvocationsPerWorkgroup: 32 };
    expect(() => build(() => {}, small)).toThrow(/workgroup of 64 invocations exceeds the device limit 32/);
    expect(() => build((k) => { k.shared('big', 'f32', 8192); })).toThrow(/workgroup arrays take 32768 bytes, over the device limit 16384/);
    expect(() => kernel({
      name: 'halves', workgroupSize: 1, bindings: { h: storage('f16', 'read') }, uniforms: {}, grid: () => 1, body() {},
    })).toThrow(/binding 'h' is f16 but the device has no f16 storage: pass f16 data packed in u32/);
    const many = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`b${i}`, storage('f32', 'read')]));
    expect(() => kernel({ name: 'wide', workgroupSize: 1, bindings: many, uniforms: {}, grid: () => 1, body() {} }))
      .toThrow(/9 storage buffers exceed the device limit 8/);
  });

  it('a correct kernel builds, keeps its names, and unrolls TypeScript loops', () => {
    const kern = build((k, { x, y }) => {
      const acc = k.var('acc', 'f32', 0);
      for (let i = 0; i < 4; i++) acc.set(max(acc, x.at(i)));
      y.set(0, k.bitcast('u32', acc));
    });
    expect(kern.ir.name).toBe('probe');
    expect(kern.ir.body.filter((s) => s.k === 'assign')).toHaveLength(4);
    expect(kern.grid({ n: 130 })).toEqual([3, 1, 1]);
  });
});

describe('launch typing', () => {
  it('wrong binding names and dtypes do not type-check', () => {
    // Only the types are under test: the device is never called.
    const typed = (dev: Device) => {
      const a = dev.alloc('f32', 4), b = dev.alloc('f32', 4), out = dev.alloc('f32', 4), u = dev.alloc('u32', 4);
      dev.launch(vectorAdd(), { a, b, out }, { n: 4 });
      // @ts-expect-error — 'c' is not a binding of vectorAdd
      dev.launch(vectorAdd(), { a, b, c: out }, { n: 4 });
      // @ts-expect-error — out holds f32, not u32
      dev.launch(vectorAdd(), { a, b, out: u }, { n: 4 });
      // @ts-expect-error — the uniform is n
      dev.launch(vectorAdd(), { a, b, out }, { m: 4 });
    };
    expect(typeof typed).toBe('function');
  });

  it('KernelError is what build-time failures throw', () => {
    let err: unknown;
    try { build((k, { y }) => y.set(0, -1)); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(KernelError);
  });
});

describe('shapes as text (TensorSpec dims)', () => {
  it('evaluates over the sizes, names what it depends on, and refuses what is not whole', () => {
    const d = dims('[ceil(K / segLen), 4, Nw / 8]');
    expect(d.names).toEqual(['K', 'segLen', 'Nw']);
    expect(d.eval({ K: 100, segLen: 32, Nw: 64 })).toEqual([4, 4, 8]);
    expect(d.elements({ K: 100, segLen: 32, Nw: 64 })).toBe(128);
    expect(() => d.eval({ K: 100, segLen: 32, Nw: 12 })).toThrow(/shape \[ceil\(K \/ segLen\), 4, Nw \/ 8\]: dimension 2 is 1.5, not a whole number \(K = 100, segLen = 32, Nw = 12\)/);
    expect(() => d.eval({ K: 1, Nw: 8 })).toThrow(/'segLen' is not given/);
    expect(dims('n').eval({ n: 5 })).toEqual([5]);
    expect(dims('[max(a, b) - 1, min(a, 2) * (b + 1)]').eval({ a: 3, b: 4 })).toEqual([3, 10]);
    expect(() => dims('[M, K')).toThrow(/expected \]/);
    expect(() => dims('[M; K]')).toThrow(/cannot read/);
    expect(() => dims('[sqrt(M)]')).toThrow(/unknown function 'sqrt'/);
  });

  it('a binding shape must name uniforms only; the launch check and the header read it', () => {
    expect(() => kernel({
      name: 'shaped', workgroupSize: 64, bindings: { x: storage('f32', 'read', { shape: '[M, K]' }) }, uniforms: { M: 'u32' },
      grid: () => 1, body() {},
    })).toThrow(/kernel 'shaped': binding 'x' has shape \[M, K\], but 'K' is not a uniform/);
    const k = kernel({
      name: 'shaped', workgroupSize: 64, bindings: { x: storage('f32', 'read', { shape: '[M, K / 2]' }) }, uniforms: { M: 'u32', K: 'u32' },
      grid: () => 1, body() {},
    });
    expect(k.ir.buffers[0]!.shape).toBe('[M, K / 2]');
    expect(k.bindings.x.shape).toBe('[M, K / 2]');
  });

  it('a text grid is evaluated for launches and documents itself in headers', () => {
    const k = kernel({
      name: 'gridded', workgroupSize: 64, bindings: {}, uniforms: { M: 'u32', N: 'u32' },
      grid: '[ceil(N / 64), M]', body() {},
    });
    expect(k.grid({ M: 3, N: 130 })).toEqual([3, 3, 1]);
    expect(k.ir.gridDoc).toBe('ceil(N / 64) x M');
    expect(() => kernel({ name: 'gridded', workgroupSize: 64, bindings: {}, uniforms: { M: 'u32' }, grid: '[ceil(N / 64), M]', body() {} }))
      .toThrow(/kernel 'gridded': grid \[ceil\(N \/ 64\), M\] uses 'N', not a uniform/);
  });
});
