// The GPU machine's first two checks (bench/gpu/run.sh bundles and runs this):
//   probe    is the CUDA backend usable here? Prints the device, driver, compiler and caps, writes
//            JSON; exit 0 when a CUDA device was created, 3 when CUDA is unavailable (with why).
//   compile  emits CUDA for every default kernel variant in the registry (codegen/kernels) and,
//            where a device exists, compiles and loads each through the backend's compiler (NVRTC,
//            else nvcc), reporting compile time, registers, local memory (spills) and shared memory.
//            Without a device only the emit step runs. Exit 1 when any kernel fails.
//   node cuda-check.mjs probe|compile [--json FILE]
import { writeFileSync } from 'node:fs';
import { CUDA_CAPS } from '../../codegen/dsl/types.js';
import { emitCUDA } from '../../codegen/emit/cuda.js';
import { FAMILIES } from '../../codegen/kernels/index.js';
import { loadAddon } from '../../src/backend/cuda/addon.js';
import { cudaAvailability, createCudaDevice, type CudaDevice } from '../../src/backend/cuda/index.js';
import { BackendUnavailableError } from '../../src/backend/device.js';

interface KernelRow {
  family: string; label: string; emitMs: number; sourceBytes: number;
  compileMs?: number; registers?: number; localBytes?: number; sharedBytes?: number; maxThreads?: number; error?: string;
}

function parse(argv: string[]): { mode: string; json?: string } {
  const [mode = '', ...rest] = argv;
  if (mode !== 'probe' && mode !== 'compile') throw new Error(`usage: cuda-check probe|compile [--json FILE] (got '${mode}')`);
  let json: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--json' && rest[i + 1]) json = rest[++i];
    else throw new Error(`unknown argument '${rest[i]}'`);
  }
  return { mode, json };
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

async function compile(): Promise<{ code: number; report: object }> {
  const dev = await device();
  const caps = typeof dev === 'string' ? CUDA_CAPS : dev.caps;
  if (typeof dev === 'string') console.log(`cuda not available: ${dev}\n(emitting CUDA for every kernel only; nothing is compiled)`);
  const rows: KernelRow[] = [];
  try {
    for (const family of FAMILIES) {
      let variants;
      try {
        variants = family.variants(caps);
      } catch (e) {
        rows.push({ family: family.family, label: '(variants)', emitMs: 0, sourceBytes: 0, error: (e as Error).message });
        continue;
      }
      for (const { label, kernel } of variants) {
        const t0 = performance.now();
        const row: KernelRow = { family: family.family, label, emitMs: 0, sourceBytes: 0 };
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
    (compiled.length ? `, ${(compiled.reduce((a, r) => a + r.compileMs!, 0) / 1000).toFixed(1)} s compiling` : ''));
  return { code: failed.length ? 1 : 0, report: { device: typeof dev === 'string' ? { ok: false, reason: dev } : { ok: true }, kernels: rows } };
}

export async function main(argv: string[]): Promise<number> {
  const { mode, json } = parse(argv);
  const { code, report } = mode === 'probe' ? await probe() : await compile();
  if (json) writeFileSync(json, JSON.stringify(report, null, 1));
  return code;
}
