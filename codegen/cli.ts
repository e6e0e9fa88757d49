// `kiln codegen`: ahead-of-time generation of WGSL (shaders/) and CUDA (cuda/*.cu) from the kernel
// registry. No device needed. `--check` fails when the committed files are stale.
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Kernel } from './dsl/builder.js';
import { BASELINE_CAPS, CUDA_CAPS, type Caps } from './dsl/types.js';
import { emitCUDA } from './emit/cuda.js';
import { emitWGSL } from './emit/wgsl.js';
import { FAMILIES, type KernelFamily, type KernelVariant } from './kernels/index.js';
import { OP_FAMILIES, type OpFamily } from './kernels/registry.js';

export type Target = 'wgsl' | 'cuda';
interface TargetInfo { ext: string; caps: Caps; dir: string; emit: (k: Kernel<any, any>) => string }

const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const TARGETS: Record<Target, TargetInfo> = {
  // AOT WGSL assumes only the baseline (compatibility mode); CUDA assumes sm_90.
  wgsl: { ext: '.wgsl', caps: BASELINE_CAPS, dir: join(ROOT, 'shaders'), emit: (k) => emitWGSL(k.ir) },
  cuda: { ext: '.cu', caps: CUDA_CAPS, dir: join(ROOT, 'cuda'), emit: (k) => emitCUDA(k.ir) },
};

const USAGE = `usage: kiln codegen [--target wgsl|cuda] [--out DIR] [--kernel NAME] [--params JSON] [--check]
  (no options)     write every default variant: WGSL into shaders/, CUDA into cuda/ (stale files removed)
  --target T       only this target (default: both)
  --out DIR        write into DIR instead of shaders/ and cuda/
  --kernel NAME    only this kernel family, op family (its kernel families) or variant label
  --params JSON    build the family named by --kernel with these compile-time parameters
  --check          write nothing; exit 1 if the files on disk differ from what would be generated`;

export interface CodegenOptions { targets: Target[]; kernel?: string; params?: Record<string, unknown> }

function selectFamilies(kernel: string | undefined): { families: KernelFamily[]; label?: string } {
  if (!kernel) return { families: FAMILIES };
  const byFamily = FAMILIES.filter((f) => f.family === kernel);
  if (byFamily.length) return { families: byFamily };
  const op = (OP_FAMILIES as Readonly<Record<string, OpFamily | undefined>>)[kernel];
  if (op) return { families: FAMILIES.filter((f) => op.kernels.includes(f.family)) };
  // Not a family: perhaps one variant's label.
  const byLabel = FAMILIES.filter((f) => (Object.keys(TARGETS) as Target[]).some((t) => f.variants(TARGETS[t].caps).some((v) => v.label === kernel)));
  if (byLabel.length) return { families: byLabel, label: kernel };
  throw new Error(`no kernel family or variant named '${kernel}'; kernel families: ${FAMILIES.map((f) => f.family).join(', ')}; op families: ${Object.keys(OP_FAMILIES).join(', ')}`);
}

function slug(params: Record<string, unknown>): string {
  return Object.entries(params).map(([k, v]) => `${k}${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join('-').replace(/[^A-Za-z0-9_.-]+/g, '_');
}

/** Generated sources for one target: file name → text, in registry order. */
export function generate(target: Target, opts: Omit<CodegenOptions, 'targets'> = {}): Map<string, string> {
  const info = TARGETS[target];
  const { families, label } = selectFamilies(opts.kernel);
  let variants: KernelVariant[];
  if (opts.params) {
    const fam = families[0]!;
    if (!opts.kernel || families.length !== 1 || label) throw new Error('--params needs --kernel naming one kernel family');
    if (!fam.build) throw new Error(`kernel family '${fam.family}' does not take --params (it has no build(params, caps))`);
    const kernel = fam.build(opts.params, info.caps);
    // A kernel records the parameters it was specialised with; anything else was a typo.
    const known = Object.keys(kernel.ir.params);
    for (const k of Object.keys(opts.params)) {
      if (!known.includes(k)) throw new Error(`'${k}' is not a parameter of kernel family '${fam.family}' (parameters: ${known.join(', ') || 'none'})`);
    }
    variants = [{ label: `${kernel.ir.name}-${slug(opts.params)}`, kernel }];
  } else {
    variants = families.flatMap((f) => f.variants(info.caps)).filter((v) => !label || v.label === label);
  }
  const files = new Map<string, string>();
  for (const v of variants) {
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(v.label)) throw new Error(`variant label '${v.label}' is not a usable file name`);
    const name = v.label + info.ext;
    if (files.has(name)) throw new Error(`two ${target} variants are labelled '${v.label}'`);
    files.set(name, info.emit(v.kernel));
  }
  return files;
}

/** Generated files of this extension directly in `dir` (cuda/host/ and other folders are not ours). */
function existing(dir: string, ext: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).filter((d) => d.isFile() && d.name.endsWith(ext)).map((d) => d.name).sort();
}

export interface CheckReport { stale: string[]; missing: string[]; extra: string[] }
/** Compare what would be generated with the files in each target's directory (or `outDir`). */
export function check(opts: CodegenOptions, outDir?: string): CheckReport {
  const report: CheckReport = { stale: [], missing: [], extra: [] };
  for (const t of opts.targets) {
    const dir = outDir ?? TARGETS[t].dir;
    const want = generate(t, opts);
    for (const [name, text] of want) {
      const path = join(dir, name);
      if (!existsSync(path)) report.missing.push(path);
      else if (readFileSync(path, 'utf8') !== text) report.stale.push(path);
    }
    // Extra files only make sense against the full default set.
    if (!opts.kernel && !opts.params) for (const name of existing(dir, TARGETS[t].ext)) if (!want.has(name)) report.extra.push(join(dir, name));
  }
  return report;
}

/** Write the generated files; returns the paths written and removed. */
export function write(opts: CodegenOptions, outDir?: string): { written: string[]; removed: string[] } {
  const written: string[] = [], removed: string[] = [];
  for (const t of opts.targets) {
    const dir = outDir ?? TARGETS[t].dir;
    const files = generate(t, opts);
    mkdirSync(dir, { recursive: true });
    for (const [name, text] of files) {
      const path = join(dir, name);
      if (!existsSync(path) || readFileSync(path, 'utf8') !== text) writeFileSync(path, text);
      written.push(path);
    }
    // The default set replaces the folder's generated files: drop those no kernel produces any more.
    if (!outDir && !opts.kernel && !opts.params) {
      for (const name of existing(dir, TARGETS[t].ext)) if (!files.has(name)) { rmSync(join(dir, name)); removed.push(join(dir, name)); }
    }
  }
  return { written, removed };
}

function parseArgs(argv: string[]): { opts: CodegenOptions; out?: string; check: boolean } {
  let out: string | undefined, kernel: string | undefined, params: Record<string, unknown> | undefined;
  let targets: Target[] = ['wgsl', 'cuda'];
  let checkMode = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--target') {
      const t = value();
      if (t !== 'wgsl' && t !== 'cuda') throw new Error(`--target must be wgsl or cuda, not '${t}'`);
      targets = [t];
    } else if (a === '--out') out = value();
    else if (a === '--kernel') kernel = value();
    else if (a === '--params') {
      const text = value();
      let parsed: unknown;
      try { parsed = JSON.parse(text); } catch (e) { throw new Error(`--params is not valid JSON: ${(e as Error).message}`); }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('--params must be a JSON object');
      params = parsed as Record<string, unknown>;
    } else if (a === '--check') checkMode = true;
    else throw new Error(`unknown argument '${a}'`);
  }
  return { opts: { targets, kernel, params }, out: out === undefined ? undefined : resolve(out), check: checkMode };
}

/** Entry point; returns the exit code. */
export function main(argv: string[]): number {
  if (argv.includes('--help') || argv.includes('-h')) { console.log(USAGE); return 0; }
  const show = (p: string) => relative(process.cwd(), p) || p;
  try {
    const { opts, out, check: checkMode } = parseArgs(argv);
    if (checkMode) {
      const r = check(opts, out);
      const problems = [...r.stale.map((p) => `stale:   ${show(p)}`), ...r.missing.map((p) => `missing: ${show(p)}`), ...r.extra.map((p) => `extra:   ${show(p)}`)];
      if (problems.length) {
        console.error(`generated kernels are out of date (run \`npm run codegen\`):\n  ${problems.join('\n  ')}`);
        return 1;
      }
      console.log('generated kernels are up to date');
      return 0;
    }
    const { written, removed } = write(opts, out);
    for (const p of written) console.log(`wrote ${show(p)}`);
    for (const p of removed) console.log(`removed ${show(p)}`);
    return 0;
  } catch (e) {
    console.error(`kiln codegen: ${(e as Error).message}\n${USAGE}`);
    return 1;
  }
}

const invokedDirectly = process.argv[1] !== undefined && existsSync(process.argv[1])
  && pathToFileURL(realpathSync(process.argv[1])).href === import.meta.url;
if (invokedDirectly) process.exitCode = main(process.argv.slice(2));
