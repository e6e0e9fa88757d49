// Every generated CUDA file compiles with nvcc for sm_90a without a single warning, and ptxas
// reports no register spills. Needs nvcc (no GPU); skipped with a message where it is absent.
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BASELINE_CAPS, CUDA_CAPS } from '../codegen/dsl/types.js';
import { emitCUDA } from '../codegen/emit/cuda.js';
import { defaultInt4Gemv, int4Source } from '../codegen/kernels/int4Matmul.js';
import { gemvKernel } from '../codegen/kernels/linearCommon.js';
import { allKinds, awkwardNames } from './fixtures/allKinds.js';
import { semantics } from './fixtures/semantics.js';
import { CUDA_SEMANTIC_FLAGS } from '../src/backend/cuda/compile.js';

const NVCC = process.env.NVCC ?? 'nvcc';
const ARCH = '-gencode=arch=compute_90a,code=sm_90a';
const CUDA_DIR = fileURLToPath(new URL('../cuda/', import.meta.url));

function nvccVersion(): string | undefined {
  const r = spawnSync(NVCC, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? (r.stdout.match(/release [^\n]*/)?.[0] ?? 'nvcc') : undefined;
}

interface EntryReport { name: string; registers: number; spillStores: number; spillLoads: number; stackBytes: number }
/** Per-kernel figures from `ptxas -v` output. */
function parsePtxas(log: string): EntryReport[] {
  const entries: EntryReport[] = [];
  let cur: EntryReport | undefined;
  for (const line of log.split('\n')) {
    const fn = line.match(/Compiling entry function '(\w+)'/) ?? line.match(/Function properties for (\w+)/);
    if (fn) {
      cur = entries.find((e) => e.name === fn[1]);
      if (!cur) entries.push((cur = { name: fn[1]!, registers: -1, spillStores: -1, spillLoads: -1, stackBytes: -1 }));
    }
    const spill = line.match(/(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/);
    if (spill && cur) [cur.stackBytes, cur.spillStores, cur.spillLoads] = spill.slice(1).map(Number) as [number, number, number];
    const regs = line.match(/Used (\d+) registers/);
    if (regs && cur) cur.registers = Number(regs[1]);
  }
  return entries;
}

interface Compiled { status: number | null; log: string }
function runNvcc(source: string, out: string): Promise<Compiled> {
  return new Promise((done) => {
    execFile(NVCC, ['-cubin', ARCH, ...CUDA_SEMANTIC_FLAGS, '-Xptxas', '-v', '-o', out, source], { encoding: 'utf8' }, (err, stdout, stderr) => {
      done({ status: err ? (typeof err.code === 'number' ? err.code : 1) : 0, log: `${stdout}${stderr}` });
    });
  });
}

// nvcc's verdict and ptxas report depend only on the source, the flags and the compiler, so they
// are kept by a hash of the three (KILN_NVCC_TEST_CACHE, default ~/.cache/kiln/nvcc-test): an
// unchanged kernel is not recompiled on the next run. A changed kernel, flag or nvcc misses.
const CACHE_DIR = process.env.KILN_NVCC_TEST_CACHE ?? join(homedir(), '.cache', 'kiln', 'nvcc-test');
async function compile(source: string, out: string, compiler: string): Promise<Compiled> {
  const key = createHash('sha256').update(`${compiler}\n${ARCH} ${CUDA_SEMANTIC_FLAGS.join(' ')} -Xptxas -v\n`).update(readFileSync(source)).digest('hex');
  const file = join(CACHE_DIR, `${key}.json`);
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as Compiled;
  const r = await runNvcc(source, out);
  mkdirSync(CACHE_DIR, { recursive: true });
  writeFileSync(file, JSON.stringify(r));
  return r;
}

const version = nvccVersion();
if (!version) {
  describe.skip(`CUDA sources compile with nvcc for sm_90a [skipped — '${NVCC}' not found; set NVCC or install the CUDA toolkit]`, () => {});
} else {
  describe(`CUDA sources compile with nvcc for sm_90a (${version})`, () => {
    const tmp = mkdtempSync(join(tmpdir(), 'kiln-nvcc-'));
    // The committed files, plus fixtures that reach every IR construct and awkward identifiers.
    const sources: [string, string][] = readdirSync(CUDA_DIR).filter((f) => f.endsWith('.cu')).sort().map((f) => [f, join(CUDA_DIR, f)]);
    const fixtures: [string, string][] = [
      ['allKinds (f16, subgroups)', emitCUDA(allKinds(CUDA_CAPS).ir)],
      ['allKinds (baseline caps)', emitCUDA(allKinds(BASELINE_CAPS).ir)],
      ['awkwardNames', emitCUDA(awkwardNames(CUDA_CAPS).ir)],
      ['semantics', emitCUDA(semantics(CUDA_CAPS).ir)],
      // The INT4 GEMV the runtime builds on a GPU (magic dequant: inline lop3, HSUB2); cuda/ holds the convert variant.
      ...[1, 8].map((M): [string, string] => [`int4 GEMV, magic dequant, GPU default, M = ${M}`,
        emitCUDA(gemvKernel(int4Source(128, 'magic'), M, defaultInt4Gemv(M, 4096, CUDA_CAPS, 65536, 'gpu'), CUDA_CAPS).ir)]),
      // The tensor-core linears (int4Mma, denseMma) are generated files in cuda/ (codegen/kernels/mmaFamilies.ts).
    ];
    fixtures.forEach(([name, text], i) => {
      const path = join(tmp, `fixture${i}.cu`);
      writeFileSync(path, text);
      sources.push([`${name} (fixture)`, path]);
    });
    const results = new Map<string, Compiled>();

    beforeAll(async () => {
      // Two compilations at a time: the machine has two cores.
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < sources.length; i = next++) results.set(sources[i]![0], await compile(sources[i]![1], join(tmp, `${i}.cubin`), version));
      };
      await Promise.all([worker(), worker()]);
    }, 600_000);
    afterAll(() => rmSync(tmp, { recursive: true, force: true }));

    it('there is something to compile', () => {
      expect(sources.length).toBeGreaterThan(fixtures.length);
    });
    it.each(sources.map(([name]) => name))('%s', (name) => {
      const r = results.get(name)!;
      expect(r.status, r.log).toBe(0);
      expect(r.log.split('\n').filter((l) => /warning/i.test(l)), 'nvcc warnings').toEqual([]);
      const entries = parsePtxas(r.log);
      expect(entries.length, r.log).toBeGreaterThan(0);
      for (const e of entries) {
        console.log(`${name}: ${e.name} — ${e.registers} registers, ${e.stackBytes} bytes stack, spills ${e.spillStores}/${e.spillLoads} bytes`);
        expect(e.registers, `${e.name} registers`).toBeGreaterThan(0);
        expect([e.spillStores, e.spillLoads], `${e.name} spill stores/loads`).toEqual([0, 0]);
      }
    });
    it('the ptxas report parser reads spills, so a spilling kernel would fail', () => {
      const log = "ptxas info    : Compiling entry function 'k' for 'sm_90a'\nptxas info    : Function properties for k\n    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\nptxas info    : Used 255 registers";
      expect(parsePtxas(log)).toEqual([{ name: 'k', registers: 255, spillStores: 8, spillLoads: 4, stackBytes: 16 }]);
    });
  });
}
