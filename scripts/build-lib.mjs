#!/usr/bin/env node
// Builds dist/: what an installed kiln package runs with plain Node (no tsx).
//   dist/index.js dsl.js kernels.js emit.js ops.js   one ESM bundle per package export
//   dist/cli.js codegen-cli.js                the `kiln` command (bin/kiln.mjs loads them)
//   dist/chunk-*.js                           code shared between them (esbuild code splitting)
//   dist/types/**.d.ts                        declarations, emitted by tsc from tsconfig.build.json
// Runs as the package's `prepare` script (npm ci, npm install in a checkout, npm pack).
//   node scripts/build-lib.mjs [--no-types]
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { browserBuildOptions } from './browser-build.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = join(ROOT, 'dist');
const withTypes = !process.argv.includes('--no-types');
const packing = ['pack', 'publish'].includes(process.env.npm_command ?? '');

/** Output name → source. The first five are package.json "exports"; keep the two in step. */
export const ENTRIES = {
  index: 'src/index.ts',
  dsl: 'codegen/dsl/index.ts',
  kernels: 'codegen/kernels/index.ts',
  emit: 'codegen/emit/index.ts',
  ops: 'src/ops/index.ts',
  cli: 'src/cli.ts',
  'codegen-cli': 'codegen/cli.ts',
};

// Sources find package files (models/, cuda/host/build/) with `new URL(rel, import.meta.url)`,
// relative to their own place in the tree. In a bundle import.meta.url is the bundle's, so each
// first-party source that uses import.meta.{url,filename,dirname} gets them replaced (by esbuild's
// define: code only, never strings) with the URL that source has in the package. Every output file
// lies directly in dist/, one level below the package root: hence '../'.
const TSCONFIG = readFileSync(join(ROOT, 'tsconfig.json'), 'utf8');
const META = { 'import.meta.url': '__kilnMetaUrl', 'import.meta.filename': '__kilnMetaFilename', 'import.meta.dirname': '__kilnMetaDirname' };

function importMetaPlugin(esbuild) {
  return {
    name: 'kiln-import-meta',
    setup(build) {
      build.onLoad({ filter: /\.[cm]?[jt]s$/ }, async (args) => {
        if (args.path.includes('/node_modules/') || !args.path.startsWith(ROOT + '/')) return undefined;
        const text = readFileSync(args.path, 'utf8');
        if (!text.includes('import.meta.')) return undefined;
        const rel = relative(ROOT, args.path).split('\\').join('/');
        const out = await esbuild.transform(text, {
          loader: /\.[cm]?ts$/.test(args.path) ? 'ts' : 'js', format: 'esm', target: 'node20',
          sourcefile: rel, tsconfigRaw: TSCONFIG, define: META,
        });
        const prologue = [
          "import { fileURLToPath as __kilnToPath } from 'node:url';",
          "import { dirname as __kilnPathDirname } from 'node:path';",
          `const __kilnMetaUrl = new URL(${JSON.stringify(`../${rel}`)}, import.meta.url).href;`,
          'const __kilnMetaFilename = __kilnToPath(__kilnMetaUrl);',
          'const __kilnMetaDirname = __kilnPathDirname(__kilnMetaFilename);',
        ].join('\n');
        // A hashbang must stay the first line (it only matters for a file run directly).
        const code = out.code.replace(/^#!.*\n/, '');
        return { contents: `${prologue}\n${code}`, loader: 'js' };
      });
    },
  };
}

function fail(msg) {
  console.error(`build-lib: ${msg}`);
  process.exit(1);
}

const started = performance.now();
let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  // `npm ci --omit=dev` in a checkout runs prepare without devDependencies: that checkout runs from
  // its sources, so say so and let the install finish. npm pack / publish must not ship without dist/.
  const why = 'esbuild is not installed (a devDependency)';
  if (['ci', 'install'].includes(process.env.npm_command ?? '')) {
    console.log(`build-lib: dist/ not built: ${why}`);
    process.exit(0);
  }
  fail(`${why}: run npm install in the checkout`);
}
rmSync(DIST, { recursive: true, force: true });
const result = await esbuild.build({
  absWorkingDir: ROOT,
  entryPoints: Object.fromEntries(Object.entries(ENTRIES).map(([name, src]) => [name, join(ROOT, src)])),
  outdir: DIST,
  entryNames: '[name]',
  chunkNames: 'chunk-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Dependencies (webgpu with its Dawn binary, the tokenizer, jinja) stay imports, resolved from the
  // installer's node_modules; the CUDA addon is require()d by path at run time, never bundled.
  packages: 'external',
  plugins: [importMetaPlugin(esbuild)],
  logLevel: 'warning',
  metafile: true,
}).catch((e) => fail(`bundling failed (esbuild's messages are above): ${e.message.split('\n')[0]}`));
const browserResult = await esbuild.build({ ...browserBuildOptions(ROOT), outdir: DIST })
  .catch((e) => fail(`browser bundle failed (esbuild's messages are above): ${e.message.split('\n')[0]}`));
for (const [path, out] of Object.entries(browserResult.metafile.outputs)) {
  const nodeImport = out.imports.find((i) => i.external);
  if (nodeImport) fail(`${path} imports '${nodeImport.path}': the browser build must be self-contained`);
}
// The page's HTML beside its script: the server and `kiln build-playground` serve them as index.html.
copyFileSync(join(ROOT, 'src/playground/index.html'), join(DIST, 'playground.html'));
const bundleMs = performance.now() - started;

const outputs = Object.entries(result.metafile.outputs);
for (const [path] of outputs) {
  if (dirname(resolve(ROOT, path)) !== DIST) fail(`${path} is not directly in dist/: the import.meta rewrite assumes it is`);
}
// Anything imported from outside the bundle must be a Node builtin or a runtime dependency, or an
// installed package breaks on that import. Dev-only tools reached only through `kiln bench` are
// tolerated (benchmarks run from a checkout) but named.
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const runtimeDeps = new Set(Object.keys(pkg.dependencies ?? {}));
const builtins = new Set(builtinModules);
const external = new Map();
for (const [path, out] of outputs) {
  for (const imp of out.imports) {
    if (!imp.external) continue;
    const spec = imp.path.replace(/^node:/, '');
    if (builtins.has(spec) || builtins.has(spec.split('/')[0])) continue;
    const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
    if (!external.has(name)) external.set(name, new Set());
    external.get(name).add(relative(ROOT, resolve(ROOT, path)));
  }
}
for (const [name, files] of external) {
  if (runtimeDeps.has(name)) continue;
  const entryFiles = Object.keys(ENTRIES).filter((e) => e !== 'cli').map((e) => `dist/${e}.js`);
  const inEntryGraph = [...files].some((f) => entryFiles.includes(f));
  if (inEntryGraph) fail(`dist imports '${name}' (${[...files].join(', ')}), which is not in "dependencies"`);
  console.warn(`build-lib: note: '${name}' is a devDependency imported by ${[...files].join(', ')} (benchmark code only)`);
}

let typesMs = 0;
if (withTypes) {
  const t0 = performance.now();
  // The typescript package exports no bin path: find it through its package.json "bin".
  const tsPkg = createRequire(join(ROOT, 'package.json')).resolve('typescript/package.json');
  const tsc = join(dirname(tsPkg), JSON.parse(readFileSync(tsPkg, 'utf8')).bin.tsc);
  const r = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, encoding: 'utf8' });
  typesMs = performance.now() - t0;
  const missing = Object.values(ENTRIES).slice(0, 5).map((src) => join(DIST, 'types', src.replace(/\.ts$/, '.d.ts'))).filter((p) => !existsSync(p));
  const report = `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim();
  if (missing.length) fail(`declaration emit failed (no ${missing.map((p) => relative(ROOT, p)).join(', ')}):\n${report}`);
  if (r.status !== 0) {
    // tsc still wrote the declarations. Type errors are `npm test`'s to report: an install of a
    // checkout mid-edit goes on, but a package is never packed or published from code that fails.
    if (packing) fail(`type errors; not packing:\n${report}`);
    console.warn(`build-lib: warning: type errors, so dist/types may be inaccurate (npm run typecheck):\n${report.split('\n').slice(0, 5).join('\n')}`);
  }
}
const bytes = outputs.reduce((s, [, o]) => s + o.bytes, 0) + Object.values(browserResult.metafile.outputs).reduce((s, o) => s + o.bytes, 0);
console.log(`build-lib: dist/ ${outputs.length} files, ${(bytes / 1024).toFixed(0)} KiB JS in ${bundleMs.toFixed(0)} ms`
  + (withTypes ? `; declarations in ${typesMs.toFixed(0)} ms` : '; no declarations (--no-types)'));
