// Node only: Dawn (the `webgpu` package) and the EGL / Mesa libraries its llvmpipe fallback needs.
// adapter.ts uses these in Node; the browser build (scripts/browser-build.mjs) swaps this file
// for src/browser/noDawn.ts, so no Node built-in reaches a page.
import { existsSync, readdirSync } from 'node:fs';

/** Dawn's `create(options)`; throws when the package cannot be loaded. */
export async function loadDawn(): Promise<(options: string[]) => GPU> {
  // A computed specifier keeps other bundlers from following this native package.
  const dawnPackage = 'webgpu';
  return ((await import(dawnPackage)) as { create: (options: string[]) => GPU }).create;
}

/** EGL without a display (llvmpipe in a headless process); returns the EGL_PLATFORM in effect. */
export function useSurfacelessEgl(): string {
  process.env.EGL_PLATFORM ??= 'surfaceless';
  return process.env.EGL_PLATFORM;
}

/** Which of the EGL/GLES/Mesa libraries llvmpipe needs are missing, with the Debian packages. */
export async function eglHint(): Promise<string> {
  const packages = 'libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri';
  if (process.platform !== 'linux') return `llvmpipe needs Mesa's EGL and OpenGL ES (on Debian/Ubuntu: apt-get install ${packages}).`;
  const triplet = process.arch === 'arm64' ? 'aarch64-linux-gnu' : 'x86_64-linux-gnu';
  const dirs = [...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
    `/usr/lib/${triplet}`, `/lib/${triplet}`, '/usr/lib64', '/lib64', '/usr/lib', '/lib'];
  const has = (f: string) => dirs.some((d) => existsSync(`${d}/${f}`));
  const driverPresent = dirs.some((d) => {
    try { return readdirSync(`${d}/dri`).some((f) => f.endsWith('_dri.so')); } catch { return false; }
  });
  const missing = [
    ['libEGL.so.1', 'libegl1'], ['libEGL_mesa.so.0', 'libegl-mesa0'], ['libGLESv2.so.2', 'libgles2'],
  ].filter(([f]) => !has(f!)).map(([f, p]) => `${f} (${p})`);
  if (!driverPresent) missing.push('the Mesa DRI drivers, dri/*_dri.so (libgl1-mesa-dri)');
  return missing.length
    ? `Missing: ${missing.join(', ')}. On Debian/Ubuntu: apt-get install ${packages}.`
    : `The EGL and GLES libraries are present; check that Mesa's llvmpipe works (e.g. EGL_LOG_LEVEL=debug). Debian packages: ${packages}.`;
}
