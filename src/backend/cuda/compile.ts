// CUDA C++ → a module image the driver loads: NVRTC through the addon when libnvrtc is present,
// else nvcc when a toolkit is installed. Images are cached on disk by content (source, target,
// compiler), so a kernel compiles once per machine; a cache filled ahead of time (by running the
// kernels once where nvcc exists) serves machines without a compiler of the same target.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { KilnCudaAddon } from './addon.js';
import { chooseTarget } from './marshal.js';

export class CudaCompileError extends Error {}

/**
 * Flags every CUDA compile of a generated kernel takes (NVRTC, nvcc, the tests, kiln profile).
 * `--fmad=false`: the DSL's `a * b + c` is two roundings on every target (the CPU executor and
 * WGSL print it so); letting nvcc contract it into an FMA would make a row's bits depend on which
 * kernel (GEMV, GEMM, fused) computed it. Explicit `fma` stays fused.
 */
export const CUDA_SEMANTIC_FLAGS = ['--fmad=false'];

/** A cubin (cubin: true) or NUL-terminated PTX for the driver to JIT. */
export interface ModuleImage { image: Uint8Array; arch: string; cubin: boolean; cached: boolean }

export interface CudaCompiler {
  /** e.g. "NVRTC 13.0 (libnvrtc.so.13)" or "nvcc 13.0.88 (/usr/local/cuda/bin/nvcc)". */
  readonly description: string;
  /** CUDA version of the compiler as [major, minor]: its output needs a driver at least this new. */
  readonly version: readonly [number, number];
  /** `label` names the kernel in errors and temp files. */
  compile(source: string, label: string, cc: readonly [number, number]): ModuleImage;
}

type Env = Readonly<Record<string, string | undefined>>;

/** CUDA toolkit roots worth looking in: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda. */
export function cudaRoots(env: Env = process.env): string[] {
  return [env.CUDA_HOME, env.CUDA_PATH, '/usr/local/cuda'].filter((d): d is string => !!d);
}

/**
 * libnvrtc names and paths to try, most specific first ($KILN_NVRTC overrides). Given the driver's
 * CUDA version (cuDriverGetVersion, e.g. 12080), the NVRTC of the driver's own major version comes
 * first and those newer than the driver last: a driver loads modules only from a toolkit no newer
 * than itself.
 */
export function nvrtcCandidates(env: Env = process.env, driverVersion?: number): string[] {
  if (env.KILN_NVRTC) return [env.KILN_NVRTC];
  const versioned = [13, 12, 11];
  const major = driverVersion ? Math.floor(driverVersion / 1000) : undefined;
  const order = major === undefined ? versioned
    : [...versioned.filter((v) => v === major), ...versioned.filter((v) => v < major), ...versioned.filter((v) => v > major)];
  const file = (v: number) => (v === 11 ? 'libnvrtc.so.11.2' : `libnvrtc.so.${v}`);
  // Unversioned libnvrtc.so is whatever the toolkit links: after the driver's own, before the others.
  const names = major === undefined ? ['libnvrtc.so', ...order.map(file)]
    : [...order.filter((v) => v === major).map(file), 'libnvrtc.so', ...order.filter((v) => v !== major).map(file)];
  const paths = cudaRoots(env).flatMap((root) => ['lib64', 'lib'].flatMap((lib) => names.map((n) => join(root, lib, n))));
  return [...names, ...paths.filter((p) => existsSync(p))];
}

/** Include directories holding cuda_fp16.h (recent NVRTC also has it built in). */
export function cudaIncludeDirs(env: Env = process.env): string[] {
  return cudaRoots(env).map((r) => join(r, 'include')).filter((d) => existsSync(join(d, 'cuda_fp16.h')));
}

/** nvcc to use: $KILN_NVCC, a toolkit root's bin/nvcc, or the first on PATH. */
export function findNvcc(env: Env = process.env): string | undefined {
  if (env.KILN_NVCC) return env.KILN_NVCC;
  const dirs = [...cudaRoots(env).map((r) => join(r, 'bin')), ...(env.PATH ?? '').split(delimiter).filter(Boolean)];
  return dirs.map((d) => join(d, 'nvcc')).find((p) => existsSync(p));
}

/** The disk cache directory: $KILN_CUDA_CACHE, else ~/.cache/kiln/cuda. */
export function cacheDir(env: Env = process.env): string {
  return env.KILN_CUDA_CACHE ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'kiln', 'cuda');
}

/** Wraps a compiler with the content-addressed disk cache. Cache failures only cost a recompile. */
function cached(
  compilerId: string, dir: string,
  target: (cc: readonly [number, number]) => { arch: string; cubin: boolean },
  build: (source: string, label: string, arch: string, cubin: boolean) => Uint8Array,
): CudaCompiler['compile'] {
  return (source, label, cc) => {
    const { arch, cubin } = target(cc);
    const key = createHash('sha256').update(JSON.stringify([compilerId, arch, cubin, source])).digest('hex');
    const file = join(dir, `${key}.${cubin ? 'cubin' : 'ptx'}`);
    try {
      return { image: new Uint8Array(readFileSync(file)), arch, cubin, cached: true };
    } catch { /* not cached yet */ }
    const image = build(source, label, arch, cubin);
    try {
      mkdirSync(dir, { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, image);
      renameSync(tmp, file); // atomic: concurrent processes never see half a file
    } catch { /* read-only or full disk: keep going uncached */ }
    return { image, arch, cubin, cached: false };
  };
}

/** NVRTC through the addon, or why it is not there. */
export function nvrtcCompiler(addon: KilnCudaAddon, env: Env = process.env, driverVersion?: number): CudaCompiler | { reason: string } {
  const st = addon.nvrtcLoad(nvrtcCandidates(env, driverVersion));
  if (!st.ok) return { reason: st.reason ?? 'NVRTC not found' };
  const version = st.version ? st.version.join('.') : '?';
  const includes = cudaIncludeDirs(env).map((d) => `--include-path=${d}`);
  return {
    description: `NVRTC ${version} (${st.path})`,
    version: [st.version?.[0] ?? 0, st.version?.[1] ?? 0],
    compile: cached(`nvrtc ${version}`, cacheDir(env), (cc) => chooseTarget(cc[0], cc[1], st.archs ?? []), (source, label, arch, cubin) => {
      const options = [`--gpu-architecture=${arch}`, '--std=c++17', '-default-device', ...CUDA_SEMANTIC_FLAGS, ...includes];
      const r = addon.nvrtcCompile(source, `${label}.cu`, options, cubin);
      if (!r.ok || !r.image) throw new CudaCompileError(`kernel '${label}': NVRTC failed (${r.error ?? 'no image'})\n${r.log}`);
      return cubin ? r.image : withNul(r.image);
    }),
  };
}

/** nvcc as a subprocess, or why it is not there. */
export function nvccCompiler(env: Env = process.env): CudaCompiler | { reason: string } {
  const nvcc = findNvcc(env);
  if (!nvcc) return { reason: 'no nvcc (set CUDA_HOME or KILN_NVCC, or put nvcc on PATH)' };
  const v = spawnSync(nvcc, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  const version = /release [\d.]+, V([\d.]+)/.exec(v.stdout ?? '')?.[1];
  if (v.status !== 0 || !version) return { reason: `${nvcc} --version failed: ${(v.stderr || v.error?.message || '').trim()}` };
  // nvcc's own list of real architectures, so an unknown device gets PTX for the newest it has.
  const listed = spawnSync(nvcc, ['--list-gpu-code'], { encoding: 'utf8', timeout: 30_000 });
  const archs = listed.status === 0 ? [...(listed.stdout ?? '').matchAll(/^sm_(\d+)$/gm)].map((m) => Number(m[1])) : [];
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return {
    description: `nvcc ${version} (${nvcc})`,
    version: [major, minor],
    compile: cached(`nvcc ${version}`, cacheDir(env), (cc) => chooseTarget(cc[0], cc[1], archs), (source, label, arch, cubin) => {
      const dir = mkdtempSync(join(tmpdir(), 'kiln-nvcc-'));
      try {
        const src = join(dir, `${label.replace(/[^A-Za-z0-9_.-]/g, '_')}.cu`);
        const out = join(dir, cubin ? 'kernel.cubin' : 'kernel.ptx');
        writeFileSync(src, source);
        const r = spawnSync(nvcc, [cubin ? '-cubin' : '-ptx', `-arch=${arch}`, '-std=c++17', ...CUDA_SEMANTIC_FLAGS, '-o', out, src], {
          encoding: 'utf8', timeout: 300_000,
        });
        if (r.status !== 0) {
          throw new CudaCompileError(`kernel '${label}': nvcc failed (${r.error?.message ?? `exit ${r.status}`})\n${(r.stderr + r.stdout).trim()}`);
        }
        const image = new Uint8Array(readFileSync(out));
        return cubin ? image : withNul(image);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }),
  };
}

/** The compiler to use: $KILN_CUDA_COMPILER = nvrtc | nvcc forces one. By default NVRTC, with nvcc
 *  as a fallback when both exist (an NVRTC without cuda_fp16.h built in, say); else whichever exists. */
export function selectCompiler(addon: KilnCudaAddon, env: Env = process.env, driverVersion?: number): CudaCompiler | { reason: string } {
  const force = env.KILN_CUDA_COMPILER;
  if (force && force !== 'nvrtc' && force !== 'nvcc') return { reason: `KILN_CUDA_COMPILER=${force}: use nvrtc or nvcc` };
  const rtc = force === 'nvcc' ? { reason: 'not tried (KILN_CUDA_COMPILER=nvcc)' } : nvrtcCompiler(addon, env, driverVersion);
  if (force === 'nvrtc') return rtc;
  const cc = nvccCompiler(env);
  if ('compile' in rtc && 'compile' in cc) return withFallback(rtc, cc);
  if ('compile' in rtc) return rtc;
  if ('compile' in cc) return cc;
  return { reason: `no CUDA compiler: ${rtc.reason}; ${cc.reason}` };
}

/** `primary`, switching to `secondary` for good once primary fails where secondary succeeds. */
export function withFallback(primary: CudaCompiler, secondary: CudaCompiler): CudaCompiler {
  let active = primary;
  return {
    get description() { return active === primary ? `${primary.description}, else ${secondary.description}` : secondary.description; },
    get version() { return active.version; },
    compile(source, label, cc) {
      if (active === secondary) return secondary.compile(source, label, cc);
      try {
        return primary.compile(source, label, cc);
      } catch (e) {
        if (!(e instanceof CudaCompileError)) throw e;
        let out: ModuleImage;
        try {
          out = secondary.compile(source, label, cc);
        } catch (e2) {
          throw new CudaCompileError(`${e.message}\n\n${secondary.description} failed too: ${(e2 as Error).message}`);
        }
        active = secondary;
        return out;
      }
    },
  };
}

function withNul(ptx: Uint8Array): Uint8Array {
  if (ptx.length && ptx[ptx.length - 1] === 0) return ptx;
  const out = new Uint8Array(ptx.length + 1);
  out.set(ptx);
  return out;
}
