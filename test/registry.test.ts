// One registry per family (codegen/kernels/registry.ts): every op family names kernel families
// that exist, its tuning and profiling sizes come from it, and the commands that read it
// (`kiln codegen --kernel`, `kiln tune`, `kiln profile`) accept exactly its names.
import { describe, expect, it } from 'vitest';
import { generate } from '../codegen/cli.js';
import { CUDA_CAPS } from '../codegen/dsl/types.js';
import { FAMILIES, denseLinear, int4Linear } from '../codegen/kernels/index.js';
import { OP_FAMILIES, opFamily, tuneSizes } from '../codegen/kernels/registry.js';
import { tunableFamilies, tuneCacheKey } from '../src/ops/tune.js';
import { FAMILIES as PROFILED } from '../src/profile.js';

describe('op family registry', () => {
  it('each op family names existing kernel families, and its tuning fields are among its sizes', () => {
    const kernelFamilies = new Set(FAMILIES.map((f) => f.family));
    for (const [name, f] of Object.entries(OP_FAMILIES)) {
      expect(f.kernels.length, name).toBeGreaterThan(0);
      for (const k of f.kernels) expect(kernelFamilies.has(k), `${name} → ${k}`).toBe(true);
      for (const k of [...(f.tune?.required ?? []), ...(f.tune?.keyFields ?? [])]) expect(Object.keys(f.sizes), `${name}.${k}`).toContain(k);
      expect(f.tune?.keyFields ?? [], name).not.toContain('M'); // batch invariance: choices never depend on M
    }
    expect(() => opFamily('noSuchOp', 'test')).toThrow(/unknown op family 'noSuchOp' \(one of int4Linear, /);
  });

  it('kiln tune takes the registry’s tunable families with their sizes', () => {
    const tunable = tunableFamilies();
    expect(tunable.map((t) => t.family)).toEqual(Object.entries(OP_FAMILIES).filter(([, f]) => f.tune).map(([n]) => n));
    for (const t of tunable) {
      const f = opFamily(t.family, 'test');
      expect(t.required).toEqual(f.tune?.required);
      expect(t.defaults).toEqual(tuneSizes(f));
    }
    // The cache key reads the registry's key fields with its defaults filled in.
    expect(tuneCacheKey('dev', 'int4Linear', { K: 4096, N: 1024 })).toBe('dev|int4Linear|K=4096,N=1024,groupSize=128');
    expect(() => tuneCacheKey('dev', 'pagedAttention', {})).toThrow(/tune: unknown kernel family 'pagedAttention'; tunable: int4Linear/);
  });

  it('kiln profile takes registry families, with their numeric sizes as --shape keys', () => {
    for (const [name, p] of Object.entries(PROFILED)) {
      const f = opFamily(name, 'test');
      expect(p.about).toBe(f.about);
      expect(Object.keys(p.defaults).length).toBeGreaterThan(0);
      for (const [k, v] of Object.entries(p.defaults)) expect(f.sizes[k], `${name}.${k}`).toBe(v);
    }
    expect(Object.keys(PROFILED)).toEqual(expect.arrayContaining(['int4Linear', 'pagedAttention', 'rejectionSampler']));
  });

  it('each family’s default chooser is what its op runs without a tuned choice', () => {
    const h = { caps: CUDA_CAPS, parallelism: 65536, deviceClass: 'gpu' as const };
    const sizes = { ...OP_FAMILIES.int4Linear.sizes, K: 2048, N: 1024 };
    expect(OP_FAMILIES.int4Linear.defaults(sizes, h)).toEqual({ ...int4Linear({ K: 2048, N: 1024, groupSize: 128, ...h }).choice });
    expect(OP_FAMILIES.denseLinear.defaults(OP_FAMILIES.denseLinear.sizes, h))
      .toEqual({ ...denseLinear({ K: 4096, N: 4096, weight: 'f16', ...h }).choice });
    expect(OP_FAMILIES.rejectionSampler.defaults({}, h)).toEqual({ workgroupSize: 256, items: 16 });
    for (const f of Object.values(OP_FAMILIES)) expect(typeof f.defaults(f.sizes, h)).toBe('object');
  });

  it('kiln codegen --kernel takes an op family: its kernel families’ variants', () => {
    const byOp = [...generate('wgsl', { kernel: 'rejectionSampler' }).keys()];
    const byKernelFamily = [...generate('wgsl', { kernel: 'acceptance' }).keys()];
    expect(byOp).toEqual(byKernelFamily);
    expect(byOp.length).toBeGreaterThan(2);
  });
});
