// The browser build's esbuild options, shared by scripts/build-lib.mjs (dist/browser.js,
// dist/playground/) and the server, which bundles the playground page from sources in a checkout.
import { join } from 'node:path';

/** The browser build (`kiln/browser`, and the playground page's script): platform 'browser', every
 * dependency bundled, no Node built-ins (esbuild fails on one). src/platform/node.ts is swapped for
 * browser.ts, and the CUDA backend and Dawn (src/backend/webgpu/dawn.ts) for stubs that say they
 * are unavailable. */
export const BROWSER_ENTRIES = {
  browser: 'src/browser/index.ts',
  playground: 'src/playground/main.ts',
};

export function browserPlugin(ROOT) {
  return {
    name: 'kiln-browser',
    setup(build) {
      build.onResolve({ filter: /^\.\/node\.js$/ }, (args) => (args.importer === join(ROOT, 'src/platform/index.ts') ? { path: join(ROOT, 'src/platform/browser.ts') } : undefined));
      build.onResolve({ filter: /^\.\/cuda\/index\.js$/ }, (args) => (args.importer === join(ROOT, 'src/backend/index.ts') ? { path: join(ROOT, 'src/browser/noCuda.ts') } : undefined));
      build.onResolve({ filter: /^\.\/dawn\.js$/ }, (args) => (args.importer === join(ROOT, 'src/backend/webgpu/adapter.ts') ? { path: join(ROOT, 'src/browser/noDawn.ts') } : undefined));
    },
  };
}

/** esbuild options of the browser build (also used by the server to bundle the page from sources). */
export function browserBuildOptions(ROOT) {
  return {
    absWorkingDir: ROOT,
    entryPoints: Object.fromEntries(Object.entries(BROWSER_ENTRIES).map(([name, src]) => [name, join(ROOT, src)])),
    entryNames: '[name]',
    bundle: true,
    splitting: false,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    plugins: [browserPlugin(ROOT)],
    logLevel: 'warning',
    metafile: true,
  };
}
