#!/usr/bin/env node
// Prepares everything the GPU machine's one-shot script (bench/gpu/run.sh) needs and that does not
// travel by itself (ignored paths travel only when `carry` names them):
//   .devkit/node.xz                 this Node, xz-compressed (the machine has no Node)
//   cuda/host/build/                the CUDA host addon, built and load-checked here
//   .devkit/gpu/addon-headers/      Node-API + node-addon-api headers, for a g++ rebuild there
//   .devkit/gpu/*.mjs               esbuild bundles: one per test file (vitest replaced by
//                                   bench/gpu/vitest-shim.ts), one per bench, cuda-check; shared
//                                   code in chunk-*.mjs; no node_modules needed at run time
//   .devkit/gpu/manifest.json       what was built, from which commit, and what was skipped
// and checks that the working tree plus the carried paths fit the 64 MiB transfer limit.
//
//   node bench/gpu/bundle.mjs [--tests GLOB,GLOB] [--benches a,b] [--no-node] [--no-addon]
//   (also `npm run bench -- gpu-prep [same options]`)
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const GPU_DIR = join(ROOT, '.devkit', 'gpu');
export const NODE_XZ = join(ROOT, '.devkit', 'node.xz');
/** What the lead names in `carry` (README.md): each must exist after prepare(). */
export const CARRY = ['.devkit/node.xz', '.devkit/gpu', 'cuda/host/build'];
export const LIMIT_BYTES = 64 * 2 ** 20;
/** The benches run.sh runs, in order, when bench/<name>.ts exists. */
export const DEFAULT_BENCHES = ['int4', 'attention', 'accept', 'generate'];
const DEFAULT_TESTS = ['test/kernels/*.test.ts', 'test/cuda-*.test.ts'];

const log = (msg) => console.log(`gpu-prep: ${msg}`);
const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;

function parseArgs(argv) {
  const o = { tests: DEFAULT_TESTS, benches: DEFAULT_BENCHES, node: true, addon: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    const need = () => { if (v === undefined) throw new Error(`${a} needs a value`); i++; return v; };
    if (a === '--tests') o.tests = need().split(',').filter(Boolean);
    else if (a === '--benches') o.benches = need().split(',').filter(Boolean);
    else if (a === '--no-node') o.node = false;
    else if (a === '--no-addon') o.addon = false;
    else throw new Error(`unknown option '${a}' (see the header of bench/gpu/bundle.mjs)`);
  }
  return o;
}

/** 'test/kernels/*.test.ts' → matching files (one '*' in the last segment), sorted. */
function glob(pattern) {
  const dir = join(ROOT, dirname(pattern));
  const re = new RegExp(`^${basename(pattern).split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  return existsSync(dir) ? readdirSync(dir).filter((f) => re.test(f)).sort().map((f) => join(dir, f)) : [];
}

/** .devkit/node.xz from this Node, unless it already holds this exact binary. */
function packNode() {
  const stamp = `${NODE_XZ}.stamp`;
  const st = statSync(process.execPath);
  const want = `${process.version} ${process.platform}-${process.arch} ${st.size} ${st.mtimeMs}`;
  if (existsSync(NODE_XZ) && existsSync(stamp) && readFileSync(stamp, 'utf8') === want) {
    log(`node.xz up to date (${process.version}, ${mib(statSync(NODE_XZ).size)})`);
    return;
  }
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new Error(`the GPU machine is linux-x64; this Node is ${process.platform}-${process.arch}`);
  log(`compressing ${process.execPath} (${process.version}, ${mib(st.size)}) into .devkit/node.xz (about a minute)…`);
  mkdirSync(dirname(NODE_XZ), { recursive: true });
  const r = spawnSync('sh', ['-c', `xz -T0 -6 -c "$1" > "$2.tmp" && mv "$2.tmp" "$2"`, 'sh', process.execPath, NODE_XZ], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('xz failed (is xz installed?)');
  writeFileSync(stamp, want);
  log(`node.xz: ${mib(statSync(NODE_XZ).size)}`);
}

/** Builds cuda/host/build/Release/kiln_cuda.node and checks that it loads in a fresh Node. */
function buildAddon() {
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'build-addon.mjs')], { cwd: ROOT, encoding: 'utf8' });
  process.stdout.write(r.stdout ?? '');
  const addon = join(ROOT, 'cuda', 'host', 'build', 'Release', 'kiln_cuda.node');
  if (!existsSync(addon)) throw new Error(`the CUDA addon was not built (${(r.stdout ?? '').trim()}); the GPU machine has no node-gyp to build it`);
  const check = spawnSync(process.execPath, ['-e', `const a = require(${JSON.stringify(addon)}); console.log(JSON.stringify(a.driverStatus()))`], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`the built addon does not load:\n${check.stderr}`);
  log(`addon loads; driverStatus() here: ${check.stdout.trim()}`);
  return addon;
}

/** The few headers a plain g++ build of the addon needs on the GPU machine (run.sh's fallback). */
function copyAddonHeaders() {
  const out = join(GPU_DIR, 'addon-headers');
  mkdirSync(out, { recursive: true });
  const nodeInclude = [process.env.npm_config_nodedir, resolve(dirname(process.execPath), '..'), '/usr', '/usr/local']
    .filter(Boolean).map((d) => join(d, 'include', 'node')).find((d) => existsSync(join(d, 'node_api.h')));
  if (!nodeInclude) throw new Error('no Node headers (include/node/node_api.h) found beside this Node');
  for (const f of ['node_api.h', 'node_api_types.h', 'js_native_api.h', 'js_native_api_types.h']) copyFileSync(join(nodeInclude, f), join(out, f));
  const napiDir = dirname(createRequire(join(ROOT, 'package.json')).resolve('node-addon-api/package.json'));
  for (const f of readdirSync(napiDir).filter((f) => /^napi.*\.h$/.test(f))) copyFileSync(join(napiDir, f), join(out, f));
}

/** Rewrites import.meta.{url,dirname,filename} in repository sources to the source file's own
 *  location, so `new URL('../models', import.meta.url)` still finds the repository from a bundle. */
const importMetaPlugin = {
  name: 'kiln-import-meta',
  setup(build) {
    build.onLoad({ filter: /\.[cm]?[jt]s$/, namespace: 'file' }, (args) => {
      if (args.path.includes('node_modules') || !args.path.startsWith(ROOT)) return undefined;
      let text = readFileSync(args.path, 'utf8');
      const rel = JSON.stringify(relative(ROOT, args.path).split('\\').join('/'));
      if (text.includes('import.meta.')) {
        text = text
          .replaceAll('import.meta.url', `__kilnUrl(${rel})`)
          .replaceAll('import.meta.dirname', `__kilnDirname(${rel})`)
          .replaceAll('import.meta.filename', `__kilnFilename(${rel})`);
      }
      return { contents: text, loader: args.path.endsWith('.ts') ? 'ts' : 'js', resolveDir: dirname(args.path) };
    });
  },
};

/** 'vitest' → the shim; generated entry modules live in the 'kiln-entry' namespace. */
function entriesPlugin(entries) {
  return {
    name: 'kiln-entries',
    setup(build) {
      build.onResolve({ filter: /^vitest$/ }, () => ({ path: join(ROOT, 'bench', 'gpu', 'vitest-shim.ts') }));
      build.onResolve({ filter: /^kiln-entry:/ }, (args) => ({ path: args.path.slice('kiln-entry:'.length), namespace: 'kiln-entry' }));
      build.onLoad({ filter: /.*/, namespace: 'kiln-entry' }, (args) => ({ contents: entries.get(args.path), loader: 'js', resolveDir: ROOT }));
    },
  };
}

// Every output file lives directly in .devkit/gpu, two levels below the repository root.
const BANNER = [
  "import { createRequire as __kilnCreateRequire } from 'node:module';",
  "import { dirname as __kilnPathDirname } from 'node:path';",
  "import { fileURLToPath as __kilnToPath } from 'node:url';",
  'const require = __kilnCreateRequire(import.meta.url);',
  "const __kilnRoot = new URL('../../', import.meta.url);",
  'const __kilnUrl = (rel) => new URL(rel, __kilnRoot).href;',
  'const __kilnFilename = (rel) => __kilnToPath(new URL(rel, __kilnRoot));',
  'const __kilnDirname = (rel) => __kilnPathDirname(__kilnFilename(rel));',
].join('\n');

const js = (p) => JSON.stringify(p.split('\\').join('/'));

export async function prepare(argv = []) {
  const o = parseArgs(argv);
  const started = Date.now();
  if (o.node) packNode();
  const addon = o.addon ? buildAddon() : undefined;
  rmSync(GPU_DIR, { recursive: true, force: true });
  mkdirSync(GPU_DIR, { recursive: true });
  copyAddonHeaders();

  const entries = new Map();
  const entryPoints = {};
  const tests = [...new Set(o.tests.flatMap(glob))];
  if (!tests.length) throw new Error(`no test files match ${o.tests.join(', ')}`);
  for (const file of tests) {
    const name = `test-${basename(file, '.test.ts')}`;
    entries.set(name, `import { runCollected } from ${js(join(ROOT, 'bench/gpu/vitest-shim.ts'))};\n` +
      `import ${js(file)};\nawait runCollected(${js(relative(ROOT, file))});\n`);
    entryPoints[name] = `kiln-entry:${name}`;
  }
  const benches = {};
  for (const b of o.benches) {
    const file = join(ROOT, 'bench', `${b}.ts`);
    if (!existsSync(file)) { benches[b] = null; log(`bench '${b}': bench/${b}.ts does not exist yet; run.sh will skip it`); continue; }
    const name = `bench-${b}`;
    entries.set(name, `import { main } from ${js(file)};\n` +
      'try { const code = await main(process.argv.slice(2)); process.exit(typeof code === "number" ? code : 0); }\n' +
      'catch (e) { console.error(e); process.exit(1); }\n');
    entryPoints[name] = `kiln-entry:${name}`;
    // Only CUDA is worth timing there; benches that choose devices by --backends get told so.
    // generate: the decode-step graph on Llama-3-8B shapes (random INT4 weights; 8 of the 32 layers
    // keep the weight build inside the phase's limit — per-layer time is what it measures).
    const extra = b === 'generate' ? ['--llama3-8b', '--synthetic-layers', '8', '--rounds', '1'] : [];
    benches[b] = { bundle: `${name}.mjs`, args: /--backends\b/.test(readFileSync(file, 'utf8')) ? ['--backends', 'cuda', ...extra] : extra };
  }
  entries.set('cuda-check', `import { main } from ${js(join(ROOT, 'bench/gpu/cuda-check.ts'))};\n` +
    'try { process.exit(await main(process.argv.slice(2))); } catch (e) { console.error(e); process.exit(1); }\n');
  entryPoints['cuda-check'] = 'kiln-entry:cuda-check';

  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints,
    outdir: GPU_DIR,
    entryNames: '[name]',
    chunkNames: 'chunk-[hash]',
    outExtension: { '.js': '.mjs' },
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    // Dawn (the webgpu package) is loaded by a computed import() that esbuild leaves alone; name it
    // anyway so no future static import drags the native binary in. The machine has no webgpu.
    external: ['webgpu'],
    banner: { js: BANNER },
    plugins: [entriesPlugin(entries), importMetaPlugin],
    logLevel: 'warning',
    metafile: true,
  });
  const outputs = Object.entries(result.metafile.outputs).map(([p, m]) => [relative(GPU_DIR, join(ROOT, p)), m.bytes]);
  const bundleBytes = outputs.reduce((a, [, b]) => a + b, 0);
  const externals = new Set(Object.values(result.metafile.inputs).flatMap((i) => i.imports.filter((x) => x.external).map((x) => x.path)));
  // Relative "externals" are type-only imports esbuild dropped; bare names would be packages.
  const fromNodeModules = [...externals].filter((p) => !/^[./]/.test(p) && !p.startsWith('node:') && !BUILTINS.has(p.split('/')[0]));
  if (fromNodeModules.some((p) => p !== 'webgpu')) throw new Error(`bundles import packages at run time: ${fromNodeModules.join(', ')}`);

  const manifest = {
    created: new Date().toISOString(),
    commit: spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim(),
    dirty: spawnSync('git', ['status', '--porcelain'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).length,
    node: process.version,
    addon: addon ? relative(ROOT, addon) : null,
    tests: tests.map((f) => ({ file: relative(ROOT, f), bundle: `test-${basename(f, '.test.ts')}.mjs` })),
    benches,
    outputs: Object.fromEntries(outputs),
    // Every repository file in the bundles, hashed: check-bundles.mjs tells a stale bundle there.
    inputs: Object.fromEntries(Object.keys(result.metafile.inputs).filter((p) => !p.includes('node_modules') && existsSync(join(ROOT, p)))
      .sort().map((p) => [p, createHash('sha1').update(readFileSync(join(ROOT, p))).digest('hex')])),
  };
  writeFileSync(join(GPU_DIR, 'manifest.json'), JSON.stringify(manifest, null, 1));
  log(`${outputs.length} bundle files, ${mib(bundleBytes)}: ${tests.length} test files, ` +
    `${Object.values(benches).filter(Boolean).length} benches (${Object.entries(benches).map(([k, v]) => `${k}${v ? '' : ' missing'}`).join(', ')}), cuda-check`);
  const size = payloadSize();
  log(`payload: ${mib(size.total)} of ${mib(LIMIT_BYTES)} (tree ${mib(size.tree)}; ${size.carried.map(([p, b]) => `${p} ${mib(b)}`).join(', ')})`);
  if (size.total > LIMIT_BYTES) throw new Error(`the payload is over the 64 MiB transfer limit by ${mib(size.total - LIMIT_BYTES)}`);
  log(`ready in ${((Date.now() - started) / 1000).toFixed(0)} s; carry: ${JSON.stringify(CARRY)}`);
  return manifest;
}

const BUILTINS = new Set(createRequire(import.meta.url)('node:module').builtinModules);

function bytesUnder(p) {
  if (!existsSync(p)) return 0;
  const st = statSync(p);
  if (!st.isDirectory()) return st.size;
  return readdirSync(p).reduce((a, f) => a + bytesUnder(join(p, f)), 0);
}

/** What travels: tracked and untracked-not-ignored files, plus the carried paths. */
export function payloadSize() {
  const r = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`git ls-files failed: ${r.stderr}`);
  const tree = r.stdout.split('\0').filter(Boolean).reduce((a, f) => {
    try { return a + statSync(join(ROOT, f)).size; } catch { return a; } // deleted but still tracked
  }, 0);
  const carried = CARRY.map((p) => [p, bytesUnder(join(ROOT, p))]);
  return { tree, carried, total: tree + carried.reduce((a, [, b]) => a + b, 0) };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  prepare(process.argv.slice(2)).catch((e) => {
    console.error(`gpu-prep failed: ${e instanceof Error ? e.message : e}`);
    process.exit(1);
  });
}
