// Profiling mode of the CPU executor: the memory-access model counts planted access patterns with
// known answers — coalesced and strided global loads, vector loads, shared-memory bank conflicts,
// padding and broadcast — and the counting functions split 64- and 128-bit shared accesses into
// phases as NVIDIA hardware does.
import { afterAll, describe, expect, it } from 'vitest';
import { type Bindings, type Kernel, kernel, storage } from '../codegen/dsl/index.js';
import type { StorageType } from '../codegen/dsl/types.js';
import { emitJS } from '../codegen/emit/js.js';
import { PROFILING } from '../codegen/emit/js-helpers.js';
import { CPU_CAPS, createCpuDevice, type LaunchProfile, type SiteProfile, takeLaunchProfiles } from '../src/backend/cpu/index.js';
import type { DeviceBuffer, HostArray } from '../src/backend/device.js';
import { formatReport, occupancy, parsePtxas, profileFamily } from '../src/profile.js';
import { kiln } from './kilnCli.js';

const dev = await createCpuDevice({ profile: true });
afterAll(() => dev.destroy());

/** Launch once on the profiling device; the launch's profile. */
async function profile(k: Kernel<any, any>, data: Record<string, HostArray<StorageType>>): Promise<LaunchProfile> {
  const bufs: Record<string, DeviceBuffer> = {};
  for (const [name, spec] of Object.entries(k.bindings as Bindings)) {
    bufs[name] = dev.alloc(spec.t, data[name]!.length, name);
    dev.write(bufs[name]!, data[name]!);
  }
  dev.launch(k, bufs as never, {} as never);
  await dev.sync();
  for (const b of Object.values(bufs)) dev.free(b);
  const launches = takeLaunchProfiles(dev);
  expect(launches.length).toBe(1);
  return launches[0]!;
}
function site(p: LaunchProfile, name: string): SiteProfile {
  const s = p.sites.find((x) => x.site === name);
  if (!s) throw new Error(`no site '${name}' in ${p.sites.map((x) => x.site).join(', ')}`);
  return s;
}

/** out[li] = x[li · stride] over one workgroup of 64 invocations (2 warps). */
function strided(stride: number) {
  return kernel({
    name: `stride${stride}`, workgroupSize: 64, grid: () => 1,
    bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
    body(k, { x, out }) {
      out.set(k.localIndex, x.at(k.localIndex.mul(stride)));
    },
  });
}

describe('global memory: 32-byte sectors per warp request', () => {
  it('stride-1 f32 loads: 4 sectors per request (ideal)', async () => {
    const p = await profile(strided(1), { x: new Float32Array(64), out: new Float32Array(64) });
    const x = site(p, 'x#1');
    expect(x).toMatchObject({ space: 'global', kind: 'load', requests: 2, sectors: 8, ideal_sectors: 8, bytes: 256 });
    expect(site(p, 'out#1')).toMatchObject({ kind: 'store', requests: 2, sectors: 8, ideal_sectors: 8 });
    expect(p.dramBytes).toBe(512);
    expect(p.bufferBytes).toEqual({ x: 256, out: 256 });
  });

  it('stride-32 f32 loads: 32 sectors per request, 4 ideal', async () => {
    const p = await profile(strided(32), { x: new Float32Array(64 * 32), out: new Float32Array(64) });
    expect(site(p, 'x#1')).toMatchObject({ requests: 2, sectors: 64, ideal_sectors: 8 });
    expect(site(p, 'x#1').access).toBe('x[(localIndex * 32)]');
    expect(p.sectorBytes).toBe(32 * (64 + 8));
  });

  it('vec4 loads: one 16-byte request per lane, 16 sectors per warp request (ideal)', async () => {
    const k = kernel({
      name: 'vec4Copy', workgroupSize: 32, grid: () => 1,
      bindings: { x: storage('f32', 'read', { vec: 4 }), out: storage('f32', 'read_write', { vec: 4 }) }, uniforms: {},
      body(k, { x, out }) {
        out.set(k.localIndex, x.at(k.localIndex));
      },
    });
    const p = await profile(k, { x: new Float32Array(128), out: new Float32Array(128) });
    expect(site(p, 'x#1')).toMatchObject({ bytesPerLane: 16, requests: 1, sectors: 16, ideal_sectors: 16 });
    expect(site(p, 'out#1')).toMatchObject({ requests: 1, sectors: 16, ideal_sectors: 16 });
  });

  it('loop iterations are separate requests (instances); an inactive warp makes none', async () => {
    const k = kernel({
      name: 'loopSum', workgroupSize: 64, grid: () => 1,
      bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { x, out }) {
        const acc = k.var('acc', 'f32', 0);
        k.if(k.localIndex.lt(32), () => {
          k.for('i', k.localIndex, 128, (i) => { k.assign(acc, acc.add(x.at(i))); }, 32);
        });
        out.set(k.localIndex, acc);
      },
    });
    const p = await profile(k, { x: new Float32Array(128), out: new Float32Array(64) });
    expect(site(p, 'x#1')).toMatchObject({ requests: 4, sectors: 16, ideal_sectors: 16 });
  });
});

/** Shared memory: write tile[li · stride] (or word 0 for a broadcast read), barrier, read it back. */
function sharedPattern(name: string, stride: number, broadcast = false) {
  return kernel({
    name, workgroupSize: 32, grid: () => 1,
    bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
    body(k, { x, out }) {
      const tile = k.shared('tile', 'f32', 32 * stride);
      tile.set(k.localIndex.mul(stride), x.at(k.localIndex));
      k.barrier();
      out.set(k.localIndex, tile.at(broadcast ? k.localIndex.mul(0) : k.localIndex.mul(stride)));
    },
  });
}

describe('shared memory: wavefronts per warp request', () => {
  const data = () => ({ x: new Float32Array(32), out: new Float32Array(32) });
  it('stride-32 words: a 32-way bank conflict (32 wavefronts, 1 ideal)', async () => {
    const p = await profile(sharedPattern('sharedStride32', 32), data());
    expect(site(p, 'tile#1')).toMatchObject({ space: 'shared', kind: 'store', requests: 1, wavefronts: 32, ideal_wavefronts: 1 });
    expect(site(p, 'tile#2')).toMatchObject({ kind: 'load', requests: 1, wavefronts: 32, ideal_wavefronts: 1 });
  });
  it('padded rows (stride 33): conflict-free', async () => {
    const p = await profile(sharedPattern('sharedStride33', 33), data());
    expect(site(p, 'tile#1')).toMatchObject({ wavefronts: 1, ideal_wavefronts: 1 });
    expect(site(p, 'tile#2')).toMatchObject({ wavefronts: 1, ideal_wavefronts: 1 });
  });
  it('a broadcast (every lane reads one word): 1 wavefront', async () => {
    const p = await profile(sharedPattern('sharedBroadcast', 2, true), data());
    expect(site(p, 'tile#1')).toMatchObject({ wavefronts: 2, ideal_wavefronts: 1 }); // stride 2: 2-way
    expect(site(p, 'tile#2')).toMatchObject({ wavefronts: 1, ideal_wavefronts: 1, bytes: 4 });
  });
});

describe('instances, element sizes and checking mode', () => {
  it('a site in a loop with barriers: one request per iteration and warp', async () => {
    const k = kernel({
      name: 'barrierLoop', workgroupSize: 64, grid: () => 1,
      bindings: { x: storage('f32', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { x, out }) {
        const tile = k.shared('tile', 'f32', 64 * 32);
        const acc = k.var('acc', 'f32', 0);
        k.for('it', k.u32(0), k.u32(3), () => {
          tile.set(k.localIndex.mul(32), x.at(k.localIndex));
          k.barrier();
          k.assign(acc, acc.add(tile.at(k.localIndex.bxor(1).mul(32))));
          k.barrier();
        });
        out.set(k.localIndex, acc);
      },
    });
    const p = await profile(k, { x: new Float32Array(64), out: new Float32Array(64) });
    expect(site(p, 'tile#1')).toMatchObject({ requests: 6, wavefronts: 6 * 32, ideal_wavefronts: 6 });
    expect(site(p, 'x#1')).toMatchObject({ requests: 6, sectors: 24, ideal_sectors: 24 });
    expect(site(p, 'out#1')).toMatchObject({ requests: 2 });
  });

  it('f16 elements: 2 bytes per lane, 2 sectors per stride-1 request', async () => {
    const k = kernel({
      name: 'halfCopy', workgroupSize: 32, grid: () => 2, caps: CPU_CAPS,
      bindings: { x: storage('f16', 'read'), out: storage('f32', 'read_write') }, uniforms: {},
      body(k, { x, out }) {
        out.set(k.globalId.x, k.cast('f32', x.at(k.globalId.x)));
      },
    });
    const p = await profile(k, { x: new Uint16Array(64), out: new Float32Array(64) });
    expect(site(p, 'x#1')).toMatchObject({ bytesPerLane: 2, requests: 2, sectors: 4, ideal_sectors: 4 });
    expect(p.dramBytes).toBe(128 + 256);
  });

  it('checking and profiling together: findings still reported, counts unchanged', async () => {
    const d = await createCpuDevice({ profile: true, check: true });
    try {
      const k = strided(32);
      const x = d.alloc('f32', 63 * 32, 'x'), out = d.alloc('f32', 64, 'out'); // one element short
      d.launch(k, { x, out } as never, {} as never);
      await expect(d.sync()).rejects.toThrow(/out-of-bounds read of storage buffer 'x' at index 2016/);
      const [p] = takeLaunchProfiles(d);
      // The out-of-bounds lane is left out of its request: 31 sectors there, 32 in the other.
      expect(site(p!, 'x#1')).toMatchObject({ requests: 2, sectors: 63, ideal_sectors: 8 });
    } finally {
      await d.destroy();
    }
  });

  it('a device not in profiling mode is refused by name', async () => {
    const d = await createCpuDevice({ workers: 0 });
    try {
      expect(() => takeLaunchProfiles(d)).toThrow(/is not a profiling cpu device/);
    } finally {
      await d.destroy();
    }
  });
});

describe('the counting functions', () => {
  const tmp = new Float64Array(128), banks = new Int32Array(32), out = new Float64Array(3);
  const lanes = (f: (l: number) => number) => Float64Array.from({ length: 32 }, (_, l) => f(l));
  it('64-bit shared accesses: 2 phases of 16 lanes', () => {
    PROFILING.$pfShared(lanes((l) => 8 * l), 8, tmp, banks, out);
    expect([...out]).toEqual([2, 2, 256]);
    // A 16-byte lane stride puts lanes l and l + 8 of a phase on the same banks: 2-way per phase.
    PROFILING.$pfShared(lanes((l) => 16 * l), 8, tmp, banks, out);
    expect([...out]).toEqual([4, 2, 256]);
  });
  it('128-bit shared accesses: 4 phases of 8 lanes', () => {
    PROFILING.$pfShared(lanes((l) => 16 * l), 16, tmp, banks, out);
    expect([...out]).toEqual([4, 4, 512]);
    PROFILING.$pfShared(lanes((l) => 32 * l), 16, tmp, banks, out); // 2-way in each phase
    expect([...out]).toEqual([8, 4, 512]);
  });
  it('inactive lanes and misaligned global requests', () => {
    PROFILING.$pfGlobal(lanes((l) => (l < 8 ? 4 * l : -1)), 4, null, tmp, out);
    expect([...out]).toEqual([1, 1, 32]);
    PROFILING.$pfGlobal(lanes((l) => 16 + 4 * l), 4, null, tmp, out); // 128 bytes across 5 sectors
    expect([...out]).toEqual([5, 4, 128]);
  });
});

it('normal (non-profiling) kernels carry no instrumentation', () => {
  const ir = strided(1).ir;
  expect(emitJS(ir)).not.toContain('$pf');
  expect(emitJS(ir, { profile: true })).toContain('$pf(0, ');
});

describe('kiln profile on real kernels', () => {
  it('rmsNorm: each row read once, coalesced; the table names every site', async () => {
    const r = await profileFamily('rmsNorm', { M: 2, D: 1024 }, 'h100', { nvcc: false });
    expect(r.kernels.map((k) => k.name)).toEqual(['rmsNorm']);
    const k = r.kernels[0]!;
    const x = k.sites.find((s) => s.site === 'x#1')!;
    // 2 rows × 1024 f32 = 8 KB in 32-lane requests of 128 bytes: 256 sectors, all of them needed.
    expect(x).toMatchObject({ space: 'global', kind: 'load', sectors: 256, ideal_sectors: 256 });
    expect(k.bytes).toBe(3 * 8192 - 4096); // x and out (2 rows) plus the weight once
    expect(k.roofline_us).toBeCloseTo((k.bytes / 3.35e12) * 1e6, 6);
    for (const s of k.sites) {
      expect(s.requests).toBeGreaterThan(0);
      expect(s.sectors).toBeGreaterThanOrEqual(s.ideal_sectors);
      expect(s.wavefronts).toBeGreaterThanOrEqual(s.ideal_wavefronts);
    }
    const table = formatReport(r);
    expect(table).toContain('kernel rmsNorm: grid');
    for (const s of k.sites) expect(table).toContain(s.site);
  });

  it('int4Linear: every weight byte is fetched, no site below its ideal', async () => {
    const r = await profileFamily('int4Linear', { K: 256, N: 256 }, 'h200', { nvcc: false });
    const sites = r.kernels.flatMap((k) => k.sites);
    const qweight = sites.filter((s) => s.site.startsWith('qweight#'));
    expect(qweight.length).toBeGreaterThan(0);
    expect(qweight.reduce((a, s) => a + s.ideal_sectors, 0)).toBe((256 * 256) / 2 / 32); // 4 bits per weight
    for (const s of sites) expect(s.sectors).toBeGreaterThanOrEqual(s.ideal_sectors);
    expect(() => JSON.stringify({ kernels: r.kernels })).not.toThrow();
  });

  it('pagedAttention (f16 KV, head_dim 128): every shared-memory site conflict-free, K/V loads coalesced, ≥ 2 workgroups per SM', async () => {
    const r = await profileFamily('pagedAttention', { C: 600, H: 8, KV: 2 }, 'h200', { nvcc: false });
    const partial = r.kernels.find((k) => k.name === 'attentionPartial')!;
    // CUDA's default here is the MMA path; mmaFragA/B are the CPU emulation's fragment exchange
    // (codegen/emit/mma.ts), which CUDA does not have (mma.sync reads registers).
    const shared = partial.sites.filter((s) => s.space === 'shared' && s.requests > 0 && !/^mmaFrag[AB]#/.test(s.site));
    expect(shared.length).toBeGreaterThan(10);
    for (const s of shared) expect(s.wavefronts, s.site).toBe(s.ideal_wavefronts);
    for (const s of partial.sites.filter((x) => /^[kv]Cache#/.test(x.site) && x.requests > 0)) expect(s.sectors / s.ideal_sectors, s.site).toBeLessThanOrEqual(1.1);
    // 600 positions over 2 KV heads: chunks of 64 (the smallest) give 2 × 10 workgroups.
    expect(partial.grid).toEqual([1, 2, 10]);
  });

  it('occupancy from registers, threads and shared memory (sm_90)', () => {
    expect(occupancy(32, 126, 0, 128, 132)).toMatchObject({ ctasPerSM: 16, limit: 'registers', occupancy: 0.25 });
    expect(occupancy(256, 32, 0, 1000, 132)).toMatchObject({ ctasPerSM: 8, occupancy: 1 });
    expect(occupancy(128, 32, 100 * 1024, 1000, 132)).toMatchObject({ ctasPerSM: 2, limit: 'shared memory', occupancy: 0.125 });
    expect(parsePtxas("ptxas info    : Compiling entry function 'k' for 'sm_90a'\nptxas info    : Function properties for k\n    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\nptxas info    : Used 40 registers").get('k'))
      .toEqual({ registers: 40, spillStores: 8, spillLoads: 4 });
  });
});

describe('kiln profile (the command)', () => {
  it('--json prints the kernels with their sites; errors name the problem', async () => {
    const r = await kiln('profile', 'rmsNorm', '--shape', 'M=1,D=512', '--device-model', 'h100', '--json', '--no-nvcc');
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out) as { kernels: { name: string; bytes: number; sites: { site: string; space: string; kind: string; requests: number; sectors: number; ideal_sectors: number; wavefronts: number; ideal_wavefronts: number }[]; registers: number | null; occupancy: number | null }[] };
    expect(j.kernels[0]).toMatchObject({ name: 'rmsNorm', bytes: 3 * 2048, registers: null, occupancy: null });
    expect(Object.keys(j.kernels[0]!.sites[0]!).sort()).toEqual(['access', 'ideal_sectors', 'ideal_wavefronts', 'kind', 'requests', 'sectors', 'site', 'space', 'wavefronts']);
    const bad = await kiln('profile', 'rmsNorm', '--shape', 'Q=3');
    expect(bad.code).toBe(1);
    expect(bad.err).toContain("unknown shape key 'Q'");
  }, 60_000);
});
