// The CUDA backend's own tests: the addon builds and reports a clean reason where there is no
// driver; launch marshalling (pure); the hand-written driver declarations against the real
// cuda.h; compiling through nvcc, and the compiled kernels' parameter layout against what the
// backend passes; and the whole addon + CudaDevice path against a fake libcuda.so.1. Where a real
// driver and GPU exist, the kernel suites run on them through test/backends.ts instead.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CUDA_CAPS, type KernelIR, kernel, storage } from '../codegen/dsl/index.js';
import { emitCUDA } from '../codegen/emit/cuda.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { addonPath, loadAddon, loadAddonFrom } from '../src/backend/cuda/addon.js';
import { CudaCompileError, type CudaCompiler, cudaIncludeDirs, findNvcc, nvccCompiler, nvrtcCandidates, withFallback } from '../src/backend/cuda/compile.js';
import { createCudaDevice } from '../src/backend/cuda/index.js';
import {
  checkGeometry, chooseTarget, cudaCaps, fillPointers, packUniforms, uniformStructBytes,
} from '../src/backend/cuda/marshal.js';
import { BackendUnavailableError, LaunchError } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { mixedUniforms } from './fixtures/cuda-kernels.js';
import { freshSeed } from './util.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const onPath = (exe: string) => (process.env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, exe)));
const toolchain = onPath('g++') && onPath('make');
const nvcc = findNvcc();

/** Whether an NVIDIA driver library is installed, judged without the addon. */
function driverInstalled(): boolean {
  for (const ldconfig of ['ldconfig', '/sbin/ldconfig']) {
    const r = spawnSync(ldconfig, ['-p'], { encoding: 'utf8' });
    if (r.status === 0) return r.stdout.includes('libcuda.so.1');
  }
  const dirs = [...(process.env.LD_LIBRARY_PATH ?? '').split(':'), '/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/lib'];
  return dirs.some((d) => d && existsSync(join(d, 'libcuda.so.1')));
}

/** Runs a fixture script in a fresh Node (so env applies from the first dlopen); its last line is JSON. */
function runFixture(script: string, env: Record<string, string>): Record<string, any> {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repo, 'test', 'fixtures', script)], {
    cwd: repo, encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env },
  });
  if (r.status !== 0) throw new Error(`${script} exited ${r.status}:\n${r.stderr}\n${r.stdout}`);
  const last = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(last) as Record<string, any>;
}

describe('cuda addon on this machine', () => {
  it.skipIf(!toolchain)('is built here, where g++ and make exist (npm install runs scripts/build-addon.mjs)', () => {
    expect(existsSync(addonPath()), `${addonPath()} missing: run \`npm run build:addon\``).toBe(true);
    const a = loadAddon();
    expect('addon' in a ? Object.keys(a.addon).sort() : a.reason).toEqual(['CudaContext', 'driverStatus', 'nvrtcCompile', 'nvrtcLoad']);
  });

  it('says the addon is not built when it is missing', () => {
    const a = loadAddonFrom('/nonexistent/kiln_cuda.node');
    expect('reason' in a && a.reason).toMatch(/^native addon not built: \/nonexistent\/kiln_cuda\.node is missing/);
  });

  it.skipIf(!toolchain || driverInstalled())('reports a clean reason without a driver, and createCudaDevice rejects with it', async () => {
    const a = loadAddon();
    if (!('addon' in a)) throw new Error(a.reason);
    const st = a.addon.driverStatus();
    expect(st.ok).toBe(false);
    expect(st.reason).toMatch(/^no NVIDIA driver: libcuda\.so\.1: cannot open shared object file/);
    const err = await createCudaDevice().then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BackendUnavailableError);
    expect((err as BackendUnavailableError).backend).toBe('cuda');
    expect((err as BackendUnavailableError).reason).toBe(st.reason);
    expect((err as Error).message).toBe(`cuda backend not available: ${st.reason}`);
  });

  it.skipIf(driverInstalled())('createDevice("auto") falls back to another backend', async () => {
    const dev = await createDevice('auto');
    try {
      expect(dev.kind).not.toBe('cuda');
    } finally {
      await dev.destroy();
    }
  });

  it('reports a missing addon as unavailable, not as a crash', () => {
    const r = runFixture('cuda-availability.ts', { KILN_CUDA_ADDON: '/nonexistent/kiln_cuda.node' });
    expect(r.availability).toEqual({ ok: false, reason: expect.stringMatching(/^native addon not built:/) });
    expect(r.created).toMatchObject({ ok: false, unavailable: true, backend: 'cuda', reason: r.availability.reason });
  });

  it.skipIf(!driverInstalled())('creates a device where a driver is installed', async () => {
    const dev = await createCudaDevice();
    try {
      expect(dev.kind).toBe('cuda');
      expect(dev.caps.subgroupSize).toBe(32);
      console.log(`[cuda] ${dev.description}`);
    } finally {
      await dev.destroy();
    }
  });
});

describe('cuda launch marshalling', () => {
  const ir: KernelIR = mixedUniforms(CUDA_CAPS).ir;

  it('packs uniforms by key, in declaration order, 4 bytes each', () => {
    const r = () => Math.random();
    const n = Math.floor(r() * 1e9), alpha = r() * 10 - 5, int = -Math.floor(r() * 1e9);
    expect(ir.uniforms.map((u) => u.key)).toEqual(['n', 'alpha', 'int']);
    expect(ir.uniforms[2]!.name).not.toBe('int'); // emitted under another name: lookup must use the key
    const blob = packUniforms(ir, { n, alpha, int })!;
    expect(blob.byteLength).toBe(uniformStructBytes(ir));
    expect(uniformStructBytes(ir)).toBe(16);
    const dv = new DataView(blob.buffer);
    expect([dv.getUint32(0, true), dv.getFloat32(4, true), dv.getInt32(8, true)]).toEqual([n, Math.fround(alpha), int]);
    expect(packUniforms(vectorAdd({ caps: CUDA_CAPS }).ir, { n: 0xffffffff })!.slice(0, 4)).toEqual(Uint8Array.of(255, 255, 255, 255));
  });

  it('rejects missing and out-of-range uniforms, naming them', () => {
    expect(() => packUniforms(ir, { n: 1, alpha: 1 })).toThrow(/kernel 'mixedUniforms': uniform 'int' \(i32\) is undefined/);
    expect(() => packUniforms(ir, { n: -1, alpha: 1, int: 0 })).toThrow(LaunchError);
    expect(() => packUniforms(ir, { n: 1, alpha: 1, int: 2 ** 31 })).toThrow(/uniform 'int' = 2147483648 is not an i32/);
  });

  it('has no uniform block for a kernel without uniforms', () => {
    const k = kernel({
      name: 'noUniforms', caps: CUDA_CAPS, workgroupSize: 32, bindings: { o: storage('u32', 'read_write') },
      uniforms: {}, grid: () => 1, body(kb, { o }) { o.set(kb.localIndex, 1); },
    });
    expect(packUniforms(k.ir, {})).toBeUndefined();
  });

  it('passes buffer pointers in declaration order, looked up by binding key', () => {
    const k = kernel({
      name: 'order', caps: CUDA_CAPS, workgroupSize: 32,
      bindings: { out: storage('f32', 'read_write'), in: storage('f32', 'read'), int: storage('i32', 'read') },
      uniforms: {}, grid: () => 1,
      body(kb, b) { b.out.set(kb.localIndex, b.in.at(kb.localIndex).add(kb.f32(b.int.at(kb.localIndex)))); },
    });
    const ptr: Record<string, bigint> = { in: 0x7f0000001000n, out: 0x7f0000002000n, int: 0x7fffffffff00n };
    const out = new BigUint64Array(3);
    fillPointers(k.ir, (key) => ptr[key]!, out);
    expect(Array.from(out)).toEqual([ptr.out, ptr.in, ptr.int]);
    expect(() => fillPointers(k.ir, (key) => ptr[key]!, new BigUint64Array(2))).toThrow(/2 pointer slots for 3 buffers/);
  });

  it('checks the grid and block against device limits; an empty grid launches nothing', () => {
    const maxGrid = [2147483647, 65535, 65535];
    expect(checkGeometry('k', [10, 1, 1], [256, 1, 1], maxGrid, 1024)).toBe(true);
    expect(checkGeometry('k', [0, 1, 1], [256, 1, 1], maxGrid, 1024)).toBe(false);
    expect(() => checkGeometry('k', [1, 65536, 1], [256, 1, 1], maxGrid, 1024)).toThrow(/kernel 'k': grid 1x65536x1 exceeds the device limit .* in y/);
    expect(() => checkGeometry('k', [1, 1, 1], [32, 32, 2], maxGrid, 1024)).toThrow(/2048 threads per block exceed the 1024/);
    expect(() => checkGeometry('k', [1.5, 1, 1], [1, 1, 1], maxGrid, 1024)).toThrow(/not whole numbers/);
  });

  it('compiles for the exact architecture when it can, else PTX for the newest older one', () => {
    const nvcc13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121];
    expect(chooseTarget(9, 0, nvcc13)).toEqual({ arch: 'sm_90', cubin: true });
    expect(chooseTarget(9, 0, [])).toEqual({ arch: 'sm_90', cubin: true });
    expect(chooseTarget(12, 5, nvcc13)).toEqual({ arch: 'compute_121', cubin: false });
    expect(chooseTarget(8, 5, nvcc13)).toEqual({ arch: 'compute_80', cubin: false });
    expect(() => chooseTarget(7, 0, nvcc13)).toThrow(/none of which runs on this sm_70 device/);
  });

  it('narrows CUDA_CAPS to the device', () => {
    const h200 = { ccMajor: 9, ccMinor: 0, warpSize: 32, maxThreadsPerBlock: 1024, maxSharedPerBlock: 49152 };
    expect(cudaCaps(h200)).toEqual(CUDA_CAPS);
    expect(cudaCaps({ ...h200, maxThreadsPerBlock: 512, maxSharedPerBlock: 32768 })).toMatchObject({ maxInvocationsPerWorkgroup: 512, maxWorkgroupStorage: 32768 });
    expect(cudaCaps({ ...h200, ccMajor: 5, ccMinor: 2 }).f16).toBe(false);
  });
});

describe('cuda compiler fallback', () => {
  const fake = (name: string, fail: (source: string) => Error | undefined): CudaCompiler & { calls: number } => {
    const c = {
      description: name, version: [13, 0] as const, calls: 0,
      compile(source: string) {
        c.calls++;
        const e = fail(source);
        if (e) throw e;
        return { image: new TextEncoder().encode(`${name}:${source}`), arch: 'sm_90', cubin: true, cached: false };
      },
    };
    return c;
  };

  it('switches to the second compiler for good once the first fails where it succeeds', () => {
    const rtc = fake('nvrtc', () => new CudaCompileError('cuda_fp16.h: cannot open source file'));
    const nvcc = fake('nvcc', () => undefined);
    const c = withFallback(rtc, nvcc);
    expect(c.description).toBe('nvrtc, else nvcc');
    expect(new TextDecoder().decode(c.compile('k1', 'k1', [9, 0]).image)).toBe('nvcc:k1');
    expect(new TextDecoder().decode(c.compile('k2', 'k2', [9, 0]).image)).toBe('nvcc:k2');
    expect([rtc.calls, nvcc.calls]).toEqual([1, 2]);
    expect(c.description).toBe('nvcc');
  });

  it('reports both compilers when both fail, and passes other errors through', () => {
    const c = withFallback(fake('nvrtc', () => new CudaCompileError("kernel 'k': NVRTC failed")), fake('nvcc', () => new CudaCompileError("kernel 'k': nvcc failed")));
    expect(() => c.compile('k', 'k', [9, 0])).toThrow(/^kernel 'k': NVRTC failed\n\nnvcc failed too: kernel 'k': nvcc failed$/);
    const d = withFallback(fake('nvrtc', () => new Error('no such architecture')), fake('nvcc', () => undefined));
    expect(() => d.compile('k', 'k', [9, 0])).toThrow('no such architecture');
  });
});

describe('cuda NVRTC choice', () => {
  const env = { CUDA_HOME: '/nonexistent-toolkit' };
  it('tries the NVRTC of the driver\'s CUDA major version first and newer ones last', () => {
    expect(nvrtcCandidates(env, 12080)).toEqual(['libnvrtc.so.12', 'libnvrtc.so', 'libnvrtc.so.11.2', 'libnvrtc.so.13']);
    expect(nvrtcCandidates(env, 13000)).toEqual(['libnvrtc.so.13', 'libnvrtc.so', 'libnvrtc.so.12', 'libnvrtc.so.11.2']);
    expect(nvrtcCandidates(env)).toEqual(['libnvrtc.so', 'libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so.11.2']);
    expect(nvrtcCandidates({ ...env, KILN_NVRTC: '/opt/x/libnvrtc.so.12' }, 13000)).toEqual(['/opt/x/libnvrtc.so.12']);
  });
});

describe('cuda driver declarations', () => {
  const include = cudaIncludeDirs().find((d) => existsSync(join(d, 'cuda.h')));
  it.skipIf(!include || !onPath('g++'))('match the real cuda.h (types, enum values, signatures)', () => {
    const r = spawnSync('g++', ['-std=c++17', '-fsyntax-only', `-I${include}`, join(repo, 'cuda/host/check_abi.cc')], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});

/** The entry's parameters in PTX: byte size of each, in order. */
function ptxParams(ptx: string, entry: string): number[] {
  const m = new RegExp(`\\.entry ${entry}\\(([^)]*)\\)`).exec(ptx);
  if (!m) throw new Error(`no .entry ${entry} in the PTX`);
  return m[1]!.split(',').map((p) => {
    const scalar = /\.param \.(u|s|b|f)(\d+) /.exec(p);
    if (scalar) return Number(scalar[2]) / 8;
    const array = /\.param \.align \d+ \.b8 \w+\[(\d+)\]/.exec(p);
    if (array) return Number(array[1]);
    throw new Error(`unrecognised PTX parameter '${p.trim()}'`);
  });
}

describe.skipIf(!nvcc)('cuda compile through nvcc', () => {
  let cache: string;
  beforeAll(() => { cache = mkdtempSync(join(tmpdir(), 'kiln-cuda-cache-')); });
  afterAll(() => rmSync(cache, { recursive: true, force: true }));
  const compiler = () => {
    const c = nvccCompiler({ ...process.env, KILN_CUDA_CACHE: cache });
    if ('reason' in c) throw new Error(c.reason);
    return c;
  };

  it('builds a cubin for sm_90 and serves the second compile from the disk cache', () => {
    const source = emitCUDA(vectorAdd({ caps: CUDA_CAPS }).ir);
    const first = compiler().compile(source, 'vectorAdd', [9, 0]);
    expect(first).toMatchObject({ arch: 'sm_90', cubin: true, cached: false });
    expect(Array.from(first.image.slice(0, 4))).toEqual([0x7f, 0x45, 0x4c, 0x46]); // ELF
    expect(Buffer.from(first.image).includes('vectorAdd')).toBe(true);
    const again = compiler().compile(source, 'vectorAdd', [9, 0]);
    expect(again.cached).toBe(true);
    expect(Buffer.from(again.image).equals(Buffer.from(first.image))).toBe(true);
  }, 120_000);

  it('lays kernel parameters out as the launch passes them: 8-byte pointers, then the uniform struct', () => {
    for (const k of [vectorAdd({ caps: CUDA_CAPS }), mixedUniforms(CUDA_CAPS)]) {
      const ir = k.ir;
      // sm_85 is unknown to nvcc 13: the compiler falls back to PTX, which states the parameters.
      const { image, arch, cubin } = compiler().compile(emitCUDA(ir), ir.name, [8, 5]);
      expect({ arch, cubin }).toEqual({ arch: 'compute_80', cubin: false });
      expect(image[image.length - 1]).toBe(0); // the driver wants PTX NUL-terminated
      const params = ptxParams(Buffer.from(image.subarray(0, -1)).toString('utf8'), ir.name);
      expect(params).toEqual([...ir.buffers.map(() => 8), 4 * ir.uniforms.length]);
      expect(4 * ir.uniforms.length).toBeLessThanOrEqual(uniformStructBytes(ir));
    }
  }, 120_000);

  it('reports a compile error naming the kernel, with the compiler output', () => {
    let err: unknown;
    try {
      compiler().compile('extern "C" __global__ void broken() { undeclared_thing = 1; }', 'broken', [9, 0]);
    } catch (e) { err = e; }
    expect(err).toBeInstanceOf(CudaCompileError);
    expect((err as Error).message).toMatch(/^kernel 'broken': nvcc failed \(exit \d+\)\n[\s\S]*undeclared_thing/);
  }, 120_000);
});

// The addon and CudaDevice end to end, against test/fixtures/fake-libcuda.cc in a child process.
describe.skipIf(!toolchain || !nvcc || !existsSync(addonPath()))('cuda backend on a fake driver', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kiln-fake-cuda-'));
    const r = spawnSync('g++', ['-std=c++17', '-shared', '-fPIC', '-o', join(dir, 'libcuda.so.1'), join(repo, 'test/fixtures/fake-libcuda.cc')], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`building the fake driver failed:\n${r.stderr}`);
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const env = () => ({ LD_LIBRARY_PATH: dir, KILN_CUDA_CACHE: join(dir, 'cache'), KILN_CUDA_COMPILER: 'nvcc' });

  it('allocates, copies, launches, captures and replays a graph, and names every error', () => {
    const seed = freshSeed('cuda fake driver');
    const r = runFixture('cuda-fake-scenario.ts', { ...env(), KILN_SEED: String(seed) });
    expect(r.description).toMatch(/^Fake H200 \(kiln test driver\) \(sm_90, 141 GiB, 132 SMs\) via CUDA driver 13\.0, kernels by nvcc/);
    expect(r.caps).toEqual(CUDA_CAPS);
    expect(r.zeroed).toBe(true);
    expect(r.vectorAddErr).toBeLessThan(1e-6);
    expect(r.bytesInUse).toBe(3 * 1000 * 4);
    expect(r.mixedErr).toBeLessThan(1e-6);
    expect(r.partial).toEqual([0, 0, 0, 0, 7, 8, 9, 0]);
    expect(r.writeDuringCapture).toBe("Error: cuda write to 'a' during graph capture: write before captureGraph/replay instead");
    expect(r.graphLaunches).toBe(1);
    expect(r.beforeReplayNaN).toBe(true);
    expect(r.replayErr).toBeLessThan(1e-6);
    expect(r.replayAfterDestroy).toBe('Error: CudaGraph.replay: the graph was destroyed');
    expect(r.graphTimes).toEqual([0.25, 0.25, 0.25]);
    expect(r.flushLast).toBe(0x02020202); // rep 2's memset byte
    expect(r.flushInGraph).toBe("Error: CudaGraph.time: the flush buffer 'sum' is used by a captured graph; flush with a buffer of its own");
    expect(r.freeUnderGraph).toBe("Error: cuda free of 'sum': the buffer is used by 1 live captured graph (1 launches); destroy the graph before freeing or regrowing its buffers");
    expect(r.freeDuringCapture).toBe("Error: cuda free of 'spare2': the buffer is used by the graph being captured; destroy the graph before freeing or regrowing its buffers");
    expect(r.memInfoDrop).toBe(4 << 20);
    expect(r.memInfoBack).toBe(true);
    expect(r.oom).toBe('Error: cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory');
    expect(r.readFreed).toBe("LaunchError: cuda read: buffer 'big' was freed");
    expect(r.launchFreed).toBe("LaunchError: kernel 'vectorAdd': binding 'out': buffer 'big' was freed");
    expect(r.wrongArray).toBe("Error: cuda write to 'a' (f32): expected a Float32Array, got Uint32Array");
    expect(r.overrun).toBe("Error: cuda write to 'a': 1000 elements at offset 1 do not fit in its 1000");
    expect(r.unknownKernel).toBe("Error: cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND (500): named symbol not found (looking up 'notInFakeDriver')");
    expect(r.bytesBeforeDestroy).toBe(6 * 1000 * 4 + 8 * 4);
    expect(r.afterDestroy).toBe("Error: cuda device: cannot allocate 'f32#1': the device was destroyed");
  }, 120_000);

  it('turns a failing cuInit and a driver without devices into reasons', () => {
    const noInit = runFixture('cuda-availability.ts', { ...env(), FAKE_CUDA_INIT_ERROR: '100' });
    expect(noInit.availability).toEqual({ ok: false, reason: 'cuInit failed: CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device is detected' });
    expect(noInit.created).toMatchObject({ unavailable: true, backend: 'cuda', reason: noInit.availability.reason });
    const none = runFixture('cuda-availability.ts', { ...env(), FAKE_CUDA_DEVICES: '0' });
    expect(none.availability).toEqual({ ok: false, reason: 'the NVIDIA driver reports no CUDA device' });
    const one = runFixture('cuda-availability.ts', env());
    expect(one).toMatchObject({ availability: { ok: true }, created: { ok: true } });
  }, 120_000);
});
