// The GPU machine's first two checks (bench/gpu/run.sh bundles and runs this):
//   probe    is the CUDA backend usable here? Prints the device, driver, compiler and caps, writes
//            JSON; exit 0 when a CUDA device was created, 3 when CUDA is unavailable (with why).
//   compile  emits CUDA for every default kernel variant in the registry (codegen/kernels) and,
//            where a device exists, compiles and loads each through the backend's compiler (NVRTC,
//            else nvcc), reporting compile time, registers, local memory (spills) and shared memory.
//            Without a device only the emit step runs. Exit 1 when any kernel fails. NVRTC blocks
//            its thread, so `--jobs N` child processes (default: cores − 1, at most 8) each take
//            every N-th kernel, each with its own context; the disk cache they fill serves the
//            test and bench processes after them.
//   node cuda-check.mjs probe|compile [--json FILE] [--jobs N]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CUDA_CAPS } from '../../codegen/dsl/types.js';
import { emitCUDA } from '../../codegen/emit/cuda.js';
import { FAMILIES } from '../../codegen/kernels/index.js';
import { loadAddon } from '../../src/backend/cuda/addon.js';
import { cudaAvailability, createCudaDevice, type CudaDevice } from '../../src/backend/cuda/index.js';
import { BackendUnavailableError } from '../../src/backend/device.js';

interface KernelRow {
  /** Position in the registry's default variants (-1: a family whose variants() threw). */
  index: number; family: string; label: string; emitMs: number; sourceBytes: number;
  compileMs?: number; registers?: number; localBytes?: number; sharedBytes?: number; maxThreads?: number; error?: string;
}

interface Args { mode: string; json?: string; jobs: number; shard?: [number, number] }

function parse(argv: string[]): Args {
  const [mode = '', ...rest] = argv;
  if (mode !== 'probe' && mode !== 'compile') throw new Error(`usage: cuda-check probe|compile [--json FILE] [--jobs N] (got '${mode}')`);
  const a: Args = { mode, jobs: Math.min(8, Math.max(1, availableParallelism() - 1)) };
  for (let i = 0; i < rest.length; i++) {
    const v = rest[i + 1];
    if (rest[i] === '--json' && v) { a.json = v; i++; }
    else if (rest[i] === '--jobs' && v) { a.jobs = Number(v); i++; }
    else if (rest[i] === '--shard' && v) { const [k, n] = v.split('/').map(Number); a.shard = [k!, n!]; i++; }
    else throw new Error(`unknown argument '${rest[i]}'`);
  }
  if (!Number.isInteger(a.jobs) || a.jobs < 1) throw new Error(`--jobs must be a positive integer, got ${a.jobs}`);
  return a;
}

/** The device, or the reason there is none (BackendUnavailableError only; other errors throw). */
async function device(): Promise<CudaDevice | string> {
  try {
    return await createCudaDevice();
  } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    throw e;
  }
}

async function probe(): Promise<{ code: number; report: object }> {
  const addon = loadAddon();
  const driver = 'addon' in addon ? addon.addon.driverStatus() : undefined;
  const availability = cudaAvailability();
  const dev = await device();
  if (typeof dev === 'string') {
    console.log(`cuda not available: ${dev}`);
    return { code: 3, report: { ok: false, reason: dev, addon: 'reason' in addon ? addon.reason : 'loaded', driver, availability } };
  }
  try {
    const mem = dev.memInfo();
    console.log(`cuda: ${dev.description}`);
    console.log(`  memory: ${(mem.free / 2 ** 30).toFixed(1)} GiB free of ${(mem.total / 2 ** 30).toFixed(1)} GiB`);
    console.log(`  L2 ${(dev.info.l2Bytes / 2 ** 20).toFixed(0)} MiB, shared/block ${dev.info.maxSharedPerBlock} (opt-in ${dev.info.maxSharedPerBlockOptin}), ` +
      `clock ${dev.info.clockKHz / 1000} MHz, memory clock ${dev.info.memoryClockKHz / 1000} MHz × ${dev.info.memoryBusWidthBits} bits`);
    console.log(`  caps: ${JSON.stringify(dev.caps)}`);
    return { code: 0, report: { ok: true, description: dev.description, compiler: dev.compiler.description, info: dev.info, caps: dev.caps, mem, driver } };
  } finally {
    await dev.destroy();
  }
}

/** Compiles (or, without a device, only emits) every `shard[1]`-th default kernel variant. */
async function compileShard(shard: [number, number]): Promise<{ device: { ok: boolean; reason?: string }; kernels: KernelRow[] }> {
  const dev = await device();
  const caps = typeof dev === 'string' ? CUDA_CAPS : dev.caps;
  const rows: KernelRow[] = [];
  let index = -1;
  try {
    for (const family of FAMILIES) {
      let variants: ReturnType<typeof family.variants>;
      try {
        variants = family.variants(caps);
      } catch (e) {
        if (shard[0] === 0) rows.push({ index: -1, family: family.family, label: '(variants)', emitMs: 0, sourceBytes: 0, error: (e as Error).message });
        continue;
      }
      for (const { label, kernel } of variants) {
        if (++index % shard[1] !== shard[0]) continue;
        const t0 = performance.now();
        const row: KernelRow = { index, family: family.family, label, emitMs: 0, sourceBytes: 0 };
        rows.push(row);
        try {
          row.sourceBytes = emitCUDA(kernel.ir).length;
          row.emitMs = performance.now() - t0;
          if (typeof dev === 'string') continue;
          const t1 = performance.now();
          const info = dev.functionInfo(kernel);
          row.compileMs = performance.now() - t1;
          Object.assign(row, { registers: info.numRegs, localBytes: info.localBytes, sharedBytes: info.sharedBytes, maxThreads: info.maxThreadsPerBlock });
        } catch (e) {
          row.error = (e as Error).message;
        }
      }
    }
  } finally {
    if (typeof dev !== 'string') await dev.destroy();
  }
  return { device: typeof dev === 'string' ? { ok: false, reason: dev } : { ok: true }, kernels: rows };
}

/** The shards in `jobs` child processes at once (NVRTC compiles block their thread), merged back
 *  into registry order. */
async function compile(jobs: number): Promise<{ code: number; report: object }> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-cuda-check-'));
  const started = performance.now();
  const shards = await Promise.all(Array.from({ length: jobs }, (_, k) => new Promise<{ device: { ok: boolean; reason?: string }; kernels: KernelRow[] }>((done, fail) => {
    const file = join(dir, `shard${k}.json`);
    const child = spawn(process.execPath, [process.argv[1]!, 'compile', '--shard', `${k}/${jobs}`, '--json', file], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', fail);
    child.on('exit', (code) => {
      try { done(JSON.parse(readFileSync(file, 'utf8'))); } catch { fail(new Error(`compile shard ${k}/${jobs} exited ${code} without a report`)); }
    });
  })));
  rmSync(dir, { recursive: true, force: true });
  const device = shards[0]!.device;
  if (!device.ok) console.log(`cuda not available: ${device.reason}\n(emitting CUDA for every kernel only; nothing is compiled)`);
  const rows = shards.flatMap((s) => s.kernels).sort((a, b) => a.index - b.index);
  const dev = device.ok ? undefined : device.reason!;
  const pad = (s: unknown, n: number) => String(s ?? '-').padEnd(n);
  if (typeof dev === 'string') {
    const bytes = rows.reduce((a, r) => a + r.sourceBytes, 0);
    console.log(`emitted ${rows.length - rows.filter((r) => r.error).length} kernels, ${(bytes / 1024).toFixed(0)} KiB of CUDA C++: ${rows.map((r) => r.label).join(', ')}`);
  } else console.log(`${pad('kernel', 44)} ${pad('compile ms', 11)} ${pad('regs', 5)} ${pad('local B', 8)} ${pad('shared B', 9)} max threads`);
  for (const r of typeof dev === 'string' ? rows.filter((x) => x.error) : rows) {
    const ms = r.compileMs === undefined ? '-' : r.compileMs.toFixed(0);
    console.log(`${pad(r.label, 44)} ${pad(ms, 11)} ${pad(r.registers, 5)} ${pad(r.localBytes, 8)} ${pad(r.sharedBytes, 9)} ${r.maxThreads ?? '-'}` +
      `${r.error ? `  FAILED: ${r.error.split('\n')[0]}` : ''}${r.localBytes ? '  (local memory: spills or a runtime-indexed array)' : ''}`);
  }
  const failed = rows.filter((r) => r.error);
  for (const r of failed) console.log(`\n--- ${r.label} ---\n${r.error}`);
  const compiled = rows.filter((r) => r.compileMs !== undefined);
  console.log(`${rows.length} kernels emitted, ${compiled.length} compiled and loaded, ${failed.length} failed, ` +
    `${compiled.filter((r) => r.localBytes).length} using local memory` +
    (compiled.length ? `, ${(compiled.reduce((a, r) => a + r.compileMs!, 0) / 1000).toFixed(1)} s compiling in ${jobs} processes, ${((performance.now() - started) / 1000).toFixed(1)} s wall` : ''));
  return { code: failed.length ? 1 : 0, report: { device, jobs, kernels: rows } };
}

export async function main(argv: string[]): Promise<number> {
  const a = parse(argv);
  if (a.shard) {
    const report = await compileShard(a.shard);
    writeFileSync(a.json!, JSON.stringify(report));
    return 0;
  }
  const { code, report } = a.mode === 'probe' ? await probe() : await compile(a.jobs);
  if (a.json) writeFileSync(a.json, JSON.stringify(report, null, 1));
  return code;
}
