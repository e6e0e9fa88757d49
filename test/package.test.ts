// The published package, as its users get it: `npm pack` (which builds dist/ through the prepare
// script), installed offline into a fresh project, then used with plain Node — no tsx, no loaders.
// A builder kernel runs on the CPU device against a float64 reference and emits the same WGSL as
// the sources; the default model (shipped in the package) gives the golden greedy tokens; the CUDA
// addon is looked for inside the installed package; `kiln codegen` works through the bin; and the
// declarations type-check a consumer (and reject a wrong launch).
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generate } from '../codegen/cli.js';
import * as sourceDsl from '../codegen/dsl/index.js';
import { emitWGSL } from '../codegen/emit/index.js';
import { brown, BROWN_PROMPT } from './runtimeGolden.js';
import { freshSeed, randomF32, relErr, rng } from './util.js';

const ROOT = resolve(import.meta.dirname, '..');
const GREEDY_TOKENS = 6;

/** npm, run as the user would; null (with why) when there is none to run. */
function findNpm(): { cmd: string; pre: string[] } | { missing: string } {
  const probe = spawnSync('npm', ['--version'], { encoding: 'utf8' });
  if (!probe.error && probe.status === 0) return { cmd: 'npm', pre: [] };
  const cli = process.env.npm_execpath;
  if (cli && /npm-cli\.js$/.test(cli) && existsSync(cli)) return { cmd: process.execPath, pre: [cli] };
  return { missing: `npm is not runnable here (${probe.error?.message ?? `exit ${probe.status}`}), so the package cannot be packed` };
}
const npm = findNpm();
if ('missing' in npm) console.log(`[package] skipped: ${npm.missing}`);

/** The environment of a plain `node`: none of vitest's or tsx's loaders, no inherited NODE_OPTIONS. */
function plainEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const k of Object.keys(env)) if (k === 'NODE_OPTIONS' || k.startsWith('VITEST') || k.startsWith('TSX')) delete env[k];
  return env;
}

function run(cmd: string, args: string[], cwd: string, env = plainEnv(), timeout = 60_000): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout });
}
function ok(r: SpawnSyncReturns<string>, what: string): string {
  if (r.error || r.status !== 0) throw new Error(`${what} failed (${r.error?.message ?? `exit ${r.status}`}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

// A user's kernel, in a file of its own so this test can build the very same kernel from the
// sources and compare the WGSL the installed package emits.
const AXPY_MJS = `export function axpy({ kernel, storage }) {
  return kernel({
    name: 'axpy',
    workgroupSize: 64,
    bindings: {
      x: storage('f32', 'read', { shape: '[n]' }),
      y: storage('f32', 'read', { shape: '[n]' }),
      out: storage('f32', 'read_write', { shape: '[n]' }),
    },
    uniforms: { n: 'u32', alpha: 'f32' },
    grid: ({ n }) => Math.ceil(n / 64),
    body(k, { x, y, out }, { n, alpha }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.lt(n), () => out.set(i, x.at(i).mul(alpha).add(y.at(i))));
    },
  });
}
`;

const CONSUMER_MJS = `import { readFileSync, writeFileSync } from 'node:fs';
import { createDevice, loadModel, DEFAULT_MODEL } from 'kiln';
import * as dsl from 'kiln/dsl';
import { emitWGSL } from 'kiln/emit';
import { FAMILIES } from 'kiln/kernels';
import { axpy } from './axpy.mjs';

const input = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const report = {
  resolved: Object.fromEntries(['kiln', 'kiln/dsl', 'kiln/emit', 'kiln/kernels'].map((s) => [s, import.meta.resolve(s)])),
  execArgv: process.execArgv,
};

const kernel = axpy(dsl);
const dev = await createDevice('cpu');
const n = input.x.length;
const x = dev.alloc('f32', n, 'x'), y = dev.alloc('f32', n, 'y'), out = dev.alloc('f32', n, 'out');
dev.write(x, Float32Array.from(input.x));
dev.write(y, Float32Array.from(input.y));
dev.write(out, new Float32Array(n).fill(NaN));
dev.launch(kernel, { x, y, out }, { n, alpha: input.alpha });
report.out = Array.from(await dev.read(out));
await dev.destroy();
report.axpyWgsl = emitWGSL(kernel.ir);
report.vectorAddWgsl = emitWGSL(FAMILIES.find((f) => f.family === 'vectorAdd').variants(dsl.BASELINE_CAPS)[0].kernel.ir);

const llm = await loadModel(undefined, { device: 'cpu' });
report.defaultModel = DEFAULT_MODEL;
report.source = llm.source;
report.tokens = [];
for await (const t of llm.generate(input.prompt, { temperature: 0, maxTokens: input.maxTokens })) if (t.tokenId >= 0) report.tokens.push(t.tokenId);
await llm.close();

try {
  const cuda = await createDevice('cuda');
  report.cuda = 'available';
  await cuda.destroy();
} catch (e) {
  report.cuda = e.message;
}
writeFileSync(process.argv[3], JSON.stringify(report));
`;

// Type-checks against the installed declarations; the launch below is complete, and WRONG_LAUNCH
// (a missing binding) must be rejected.
const CONSUMER_TS = `import { createDevice, loadModel, type Device } from 'kiln';
import { kernel, storage } from 'kiln/dsl';
import { emitWGSL } from 'kiln/emit';
import { FAMILIES } from 'kiln/kernels';

const copy = kernel({
  name: 'copy',
  workgroupSize: 64,
  bindings: { src: storage('f32', 'read', { shape: '[n]' }), dst: storage('f32', 'read_write', { shape: '[n]' }) },
  uniforms: { n: 'u32' },
  grid: ({ n }) => Math.ceil(n / 64),
  body(k, { src, dst }, { n }) {
    const i = k.let('i', k.globalId.x);
    k.if(i.lt(n), () => dst.set(i, src.at(i)));
  },
});
const dev: Device = await createDevice('cpu');
const src = dev.alloc('f32', 4), dst = dev.alloc('f32', 4);
dev.launch(copy, { src, dst: LAUNCH_DST }, { n: 4 });
const back: Float32Array = await dev.read(dst);
const wgsl: string = emitWGSL(copy.ir) + FAMILIES.length + back.length;
const llm = await loadModel();
await llm.close();
export { wgsl };
`;

interface Report {
  resolved: Record<string, string>;
  execArgv: string[];
  out: number[];
  axpyWgsl: string;
  vectorAddWgsl: string;
  defaultModel: string;
  source: string;
  tokens: number[];
  cuda: string;
}

describe.skipIf('missing' in npm)('the npm package, installed and used with plain node', () => {
  const { cmd, pre } = 'missing' in npm ? { cmd: '', pre: [] } : npm;
  let work: string, project: string, installed: string, tarball: string, packedFiles: string[];
  let install: string;

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'kiln-package-'));
    const t0 = performance.now();
    // The prepare script's lines come first on stdout; npm's JSON is the last top-level array.
    const packOut = ok(run(cmd, [...pre, 'pack', '--json', '--pack-destination', work], ROOT), 'npm pack');
    const packed = JSON.parse(packOut.slice(packOut.search(/^\[$(?![\s\S]*^\[$)/m))) as
      { filename: string; size: number; files: { path: string }[] }[];
    tarball = join(work, packed[0]!.filename);
    packedFiles = packed[0]!.files.map((f) => f.path);
    const t1 = performance.now();

    project = join(work, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'kiln-consumer', private: true, type: 'module' }));
    // Offline: every dependency must come from npm's cache (filled by this checkout's npm ci). The
    // addon build is skipped: it is the same node-gyp run as the checkout's, and slow.
    const r = run(cmd, [...pre, 'install', '--offline', '--no-audit', '--no-fund', tarball], project, plainEnv({ KILN_SKIP_ADDON: '1' }), 120_000);
    installed = join(project, 'node_modules', 'kiln');
    if (!r.error && r.status === 0 && existsSync(installed)) {
      install = 'npm install --offline';
    } else {
      // The cache lacks a dependency (npm ci from a warm node_modules, a cleaned cache): unpack the
      // tarball as npm would and take the dependencies from this checkout's node_modules.
      console.log(`[package] offline npm install failed, unpacking instead:\n${r.stderr.split('\n').slice(-6).join('\n')}`);
      rmSync(join(project, 'node_modules'), { recursive: true, force: true });
      mkdirSync(installed, { recursive: true });
      ok(run('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1'], project), 'tar');
      const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
      for (const dep of Object.keys(pkg.dependencies)) {
        mkdirSync(dirname(join(project, 'node_modules', dep)), { recursive: true });
        symlinkSync(join(ROOT, 'node_modules', dep), join(project, 'node_modules', dep), 'dir');
      }
      mkdirSync(join(project, 'node_modules', '.bin'));
      symlinkSync('../kiln/bin/kiln.mjs', join(project, 'node_modules', '.bin', 'kiln'));
      install = 'tarball unpacked, dependencies symlinked';
    }
    console.log(`[package] ${packed[0]!.filename}: ${(packed[0]!.size / 2 ** 20).toFixed(1)} MiB, ${packedFiles.length} files; `
      + `pack ${((t1 - t0) / 1000).toFixed(1)} s, ${install} ${((performance.now() - t1) / 1000).toFixed(1)} s`);
  }, 180_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('ships dist/, the bin, models, generated kernels and the addon sources, and no TypeScript sources', () => {
    for (const f of ['dist/index.js', 'dist/dsl.js', 'dist/kernels.js', 'dist/emit.js', 'dist/ops.js', 'dist/cli.js', 'dist/codegen-cli.js',
      'dist/browser.js', 'dist/playground.js', 'dist/playground.html', 'dist/types/src/browser/index.d.ts',
      'dist/types/src/index.d.ts', 'dist/types/codegen/dsl/index.d.ts', 'dist/types/src/ops/index.d.ts', 'bin/kiln.mjs', 'scripts/build-addon.mjs',
      'models/brown-target/model.safetensors', 'models/brown-target/tokenizer.json', 'shaders/vectorAdd.wgsl', 'cuda/vectorAdd.cu',
      'cuda/host/binding.gyp', 'cuda/host/addon.cc', 'README.md', 'package.json']) {
      expect(packedFiles, f).toContain(f);
    }
    const sources = packedFiles.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'));
    expect(sources, 'TypeScript sources in the package').toEqual([]);
    expect(packedFiles.filter((f) => f.startsWith('cuda/host/build')), 'a locally built addon in the package').toEqual([]);
  });

  it('plain node runs a builder kernel on the cpu device, emits WGSL, and generates with the default model', async () => {
    const seed = freshSeed('package axpy');
    const r = rng(seed);
    const n = 1000 + Math.floor(r() * 200); // rarely a multiple of the workgroup: the bounds guard matters
    const x = randomF32(n, r), y = randomF32(n, r), alpha = -2 + 4 * r();
    writeFileSync(join(project, 'axpy.mjs'), AXPY_MJS);
    writeFileSync(join(project, 'consumer.mjs'), CONSUMER_MJS);
    const inputFile = join(project, 'input.json'), reportFile = join(project, 'report.json');
    writeFileSync(inputFile, JSON.stringify({ x: Array.from(x), y: Array.from(y), alpha, prompt: BROWN_PROMPT, maxTokens: GREEDY_TOKENS }));
    // The built CUDA addon, where the installed package looks for it (as its install script would
    // put it), when this checkout has one: then the reason may only be the driver, never the path.
    const builtAddon = join(ROOT, 'cuda/host/build/Release/kiln_cuda.node');
    const haveAddon = existsSync(builtAddon);
    if (haveAddon) cpSync(builtAddon, join(installed, 'cuda/host/build/Release/kiln_cuda.node'));

    ok(run(process.execPath, ['consumer.mjs', inputFile, reportFile], project), 'node consumer.mjs');
    const rep = JSON.parse(readFileSync(reportFile, 'utf8')) as Report;

    // The installed bundles, not the checkout's sources, and no loader.
    for (const [spec, url] of Object.entries(rep.resolved)) {
      expect(url, spec).toBe(pathToFileURL(join(installed, 'dist', `${spec === 'kiln' ? 'index' : spec.slice(5)}.js`)).href);
    }
    expect(rep.execArgv).toEqual([]);

    const ref = Array.from(x, (xi, i) => alpha * xi + y[i]!);
    expect(rep.out.every(Number.isFinite), 'every output written (poisoned with NaN before the launch)').toBe(true);
    expect(relErr(rep.out, ref)).toBeLessThan(1e-6);

    expect(rep.vectorAddWgsl).toBe(generate('wgsl', { kernel: 'vectorAdd' }).get('vectorAdd.wgsl'));
    const user = await import(pathToFileURL(join(project, 'axpy.mjs')).href) as { axpy(d: typeof sourceDsl): { ir: Parameters<typeof emitWGSL>[0] } };
    expect(rep.axpyWgsl).toBe(emitWGSL(user.axpy(sourceDsl).ir));

    expect(rep.defaultModel).toBe(join(installed, 'models', 'brown-target'));
    expect(rep.source).toContain(join(installed, 'models', 'brown-target'));
    const golden = brown.target;
    expect(rep.tokens).toEqual(golden.greedy_ids_fp32.slice(golden.prompt_ids.length, golden.prompt_ids.length + GREEDY_TOKENS));

    if (rep.cuda !== 'available') {
      if (haveAddon) expect(rep.cuda).not.toMatch(/addon not built|failed to load/);
      else expect(rep.cuda).toContain(join(installed, 'cuda/host/build/Release/kiln_cuda.node'));
    }
  });

  it("README's \"Run one kernel on your tensors\" example runs as written on the cpu device", () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('### Run one kernel on your tensors'));
    const code = /```js\n([\s\S]*?)```/.exec(section)?.[1];
    expect(code, 'a js block in the section').toBeDefined();
    writeFileSync(join(project, 'example.mjs'), code ?? '');
    const stdout = ok(run(process.execPath, ['example.mjs'], project), 'node example.mjs');
    const m = /^y 2x128, max \|y − x·W\| = (\S+), rms\(h\[0\]\) = (\S+)$/m.exec(stdout);
    expect(m, stdout).not.toBeNull();
    expect(Number(m?.[1])).toBeLessThan(1e-5);
    expect(Number(m?.[2])).toBeCloseTo(1, 2);
    // The kernel factories README's table names, from kiln/kernels.
    const names = ['int4Linear', 'denseLinear', 'fusedLinear', 'pagedAttention', 'kvAppend', 'sampling', 'argmax', 'logSoftmax', 'rejectionSampler',
      'greedyAcceptance', 'rmsNorm', 'rope', 'ropeQkv', 'embedding', 'siluMul', 'residualAdd', 'argmaxRows', 'f32ToF16', 'f16ToF32',
      'vectorAdd', 'matmulTiled', 'reduce', 'softmax', 'scan'];
    writeFileSync(join(project, 'names.mjs'), `import * as k from 'kiln/kernels';\nconsole.log(JSON.stringify(${JSON.stringify(names)}.filter((n) => typeof k[n] !== 'function')));\n`);
    expect(JSON.parse(ok(run(process.execPath, ['names.mjs'], project), 'node names.mjs'))).toEqual([]);
  });

  it('the kiln bin of the installed package runs `kiln codegen` with plain node', () => {
    const out = join(project, 'kernels');
    const stdout = ok(run(join(project, 'node_modules', '.bin', 'kiln'), ['codegen', '--target', 'wgsl', '--out', out, '--kernel', 'vectorAdd'], project), 'kiln codegen');
    expect(stdout).toContain('vectorAdd.wgsl');
    expect(readdirSync(out)).toEqual(['vectorAdd.wgsl']);
    expect(readFileSync(join(out, 'vectorAdd.wgsl'), 'utf8')).toBe(generate('wgsl', { kernel: 'vectorAdd' }).get('vectorAdd.wgsl'));
    const help = run(join(project, 'node_modules', '.bin', 'kiln'), ['--help'], project);
    expect(ok(help, 'kiln --help')).toContain('kiln generate');
  });

  it('the installed package builds the playground page from dist/ (kiln build-playground, no sources)', () => {
    const out = join(project, 'playground');
    ok(run(join(project, 'node_modules', '.bin', 'kiln'), ['build-playground', out, '--no-model'], project), 'kiln build-playground');
    expect(readdirSync(out).sort()).toEqual(['_headers', 'index.html', 'playground.js']);
    expect(readFileSync(join(out, 'playground.js'), 'utf8')).toBe(readFileSync(join(installed, 'dist', 'playground.js'), 'utf8'));
  });

  it('the shipped declarations type-check a consumer and reject a launch missing a binding', () => {
    const tsPkg = join(ROOT, 'node_modules', 'typescript', 'package.json');
    const tsc = join(dirname(tsPkg), (JSON.parse(readFileSync(tsPkg, 'utf8')) as { bin: { tsc: string } }).bin.tsc);
    writeFileSync(join(project, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false,
        types: ['node'], typeRoots: [join(ROOT, 'node_modules', '@types')],
      },
      files: ['consumer.ts'],
    }));
    writeFileSync(join(project, 'consumer.ts'), CONSUMER_TS.replace('LAUNCH_DST', 'dst'));
    const good = run(process.execPath, [tsc, '-p', 'tsconfig.json'], project);
    expect(`${good.stdout}${good.stderr}`).toBe('');
    expect(good.status).toBe(0);
    writeFileSync(join(project, 'consumer.ts'), CONSUMER_TS.replace('{ src, dst: LAUNCH_DST }', '{ src }'));
    const bad = run(process.execPath, [tsc, '-p', 'tsconfig.json'], project);
    expect(bad.status).not.toBe(0);
    expect(bad.stdout).toMatch(/consumer\.ts.*Property 'dst' is missing/);
  });
});
