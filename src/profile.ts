// `kiln profile <family>`: GPU efficiency without a GPU. One launch (or one op plan) of a kernel
// family runs on a profiling CPU device (random inputs) whose memory-access model counts, per
// static load/store site, global 32-byte sectors and shared-memory wavefronts against the ideal
// (codegen/emit/js-helpers.ts PROFILING). Where nvcc exists, the same IR emitted as CUDA goes
// through ptxas for registers and spills; with those, the occupancy on the chosen card and a
// roofline estimate (the launch's DRAM footprint over the card's bandwidth).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KernelIR } from '../codegen/dsl/ir.js';
import { CUDA_CAPS } from '../codegen/dsl/types.js';
import { emitCUDA } from '../codegen/emit/cuda.js';
import { createCpuDevice, type LaunchProfile, takeLaunchProfiles } from './backend/cpu/index.js';
import type { Device } from './backend/device.js';
import { CUDA_SEMANTIC_FLAGS } from './backend/cuda/compile.js';
import { accept, awqWeights, denseWeights, linear, pagedAttention, rmsNorm, tensor } from './ops/index.js';
import { OP_FAMILIES, type OpFamilyName } from '../codegen/kernels/registry.js';
import { f32ToF16Bits } from './quant/f16.js';
import { flag, parseArgs, rejectUnknown, str } from './util/args.js';

/** The cards the model knows: per SM 64K registers, 2048 threads, 228 KB shared memory; 132 SMs. */
export const CARDS = {
  h100: { name: 'H100 SXM', bandwidth: 3.35e12, sms: 132 },
  h200: { name: 'H200', bandwidth: 4.8e12, sms: 132 },
} as const;
export type CardName = keyof typeof CARDS;
const SM_REGISTERS = 65536, SM_THREADS = 2048, SM_SHARED = 228 * 1024, SM_MAX_CTAS = 32;
/** Shared memory the driver reserves per CTA on sm_90. */
const CTA_RESERVED_SHARED = 1024;

export interface PtxasReport { registers: number; spillStores: number; spillLoads: number }

/** Registers and spills of each entry function in `ptxas -v` output. */
export function parsePtxas(log: string): Map<string, PtxasReport> {
  const out = new Map<string, PtxasReport>();
  let cur: PtxasReport | undefined;
  for (const line of log.split('\n')) {
    const fn = line.match(/Compiling entry function '(\w+)'/) ?? line.match(/Function properties for (\w+)/);
    if (fn) {
      cur = out.get(fn[1]!);
      if (!cur) out.set(fn[1]!, (cur = { registers: -1, spillStores: 0, spillLoads: 0 }));
    }
    const spill = line.match(/(\d+) bytes spill stores, (\d+) bytes spill loads/);
    if (spill && cur) { cur.spillStores = Number(spill[1]); cur.spillLoads = Number(spill[2]); }
    const regs = line.match(/Used (\d+) registers/);
    if (regs && cur) cur.registers = Number(regs[1]);
  }
  return out;
}

const NVCC = process.env.NVCC ?? 'nvcc';
// The flags test/cuda-compile.test.ts compiles every generated kernel with.
const NVCC_FLAGS = ['-cubin', '-gencode=arch=compute_90a,code=sm_90a', ...CUDA_SEMANTIC_FLAGS, '-Xptxas', '-v'];
const CACHE_DIR = process.env.KILN_NVCC_CACHE ?? join(homedir(), '.cache', 'kiln', 'nvcc-profile');

/** ptxas's figures for the kernel's CUDA, or the reason there are none (no nvcc, a compile error). */
export function ptxasReport(ir: KernelIR): PtxasReport | string {
  const source = emitCUDA(ir);
  const key = createHash('sha256').update(`${NVCC} ${NVCC_FLAGS.join(' ')}\n`).update(source).digest('hex');
  const cached = join(CACHE_DIR, `${key}.json`);
  if (existsSync(cached)) return JSON.parse(readFileSync(cached, 'utf8')) as PtxasReport | string;
  const dir = mkdtempSync(join(tmpdir(), 'kiln-profile-'));
  try {
    writeFileSync(join(dir, 'k.cu'), source);
    const r = spawnSync(NVCC, [...NVCC_FLAGS, '-o', join(dir, 'k.cubin'), join(dir, 'k.cu')], { encoding: 'utf8' });
    if (r.error) return `no nvcc ('${NVCC}': ${r.error.message}; set NVCC)`;
    const log = `${r.stdout}${r.stderr}`;
    let result: PtxasReport | string;
    if (r.status !== 0) result = `nvcc failed on kernel '${ir.name}': ${log.trim().split('\n').slice(0, 3).join(' / ')}`;
    else result = parsePtxas(log).get(ir.name) ?? `ptxas reported nothing for '${ir.name}'`;
    mkdirSync(CACHE_DIR, { recursive: true });
    writeFileSync(cached, JSON.stringify(result));
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface Occupancy {
  /** CTAs one SM can hold, and what limits it. */
  ctasPerSM: number; limit: 'registers' | 'threads' | 'shared memory' | 'CTA slots';
  /** Resident warps per SM at that limit / 64. */
  occupancy: number;
  /** Warps per SM this launch's grid actually provides (spread over every SM). */
  gridWarpsPerSM: number;
}

/** Theoretical occupancy on sm_90 (registers allocated per warp in units of 256). */
export function occupancy(threads: number, registers: number, sharedBytes: number, ctas: number, sms: number): Occupancy {
  const warps = Math.ceil(threads / 32);
  const regsPerWarp = Math.ceil((Math.max(1, registers) * 32) / 256) * 256;
  // Ties go to the first: at full occupancy the threads are the limit, not the registers.
  const limits: [Occupancy['limit'], number][] = [
    ['threads', Math.floor(SM_THREADS / (warps * 32))],
    ['registers', Math.floor(Math.floor(SM_REGISTERS / regsPerWarp) / warps)],
    ['shared memory', sharedBytes > 0 ? Math.floor(SM_SHARED / (sharedBytes + CTA_RESERVED_SHARED)) : Infinity],
    ['CTA slots', SM_MAX_CTAS],
  ];
  let [limit, ctasPerSM] = limits[0]!;
  for (const [l, n] of limits) if (n < ctasPerSM) [limit, ctasPerSM] = [l, n];
  return {
    ctasPerSM, limit, occupancy: (ctasPerSM * warps) / (SM_THREADS / 32),
    gridWarpsPerSM: Math.min(ctasPerSM, ctas / sms) * warps,
  };
}

// ---- families ---------------------------------------------------------------------------------
type Shape = Record<string, number>;
/** Run the op once on `dev` with random inputs (uploads are not launches: only the op is profiled). */
type Runner = (dev: Device, s: Shape, rand: () => number) => Promise<void> | void;
interface Family { about: string; defaults: Shape; run: Runner }

const f16Words = (n: number, rand: () => number) => {
  const w = new Uint32Array(Math.ceil(n / 2));
  for (let i = 0; i < w.length; i++) w[i] = (f32ToF16Bits(rand() - 0.5) | (f32ToF16Bits(rand() - 0.5) << 16)) >>> 0;
  return w;
};
const f32s = (n: number, rand: () => number, scale = 1) => Float32Array.from({ length: n }, () => (rand() - 0.5) * scale);

// What each family is and its sizes: the registry (codegen/kernels/registry.ts); here, how to run it.
const RUNNERS: { [F in OpFamilyName]?: Runner } = {
  int4Linear(dev, { M, K, N, groupSize: G }, rand) {
    const words = (n: number) => Int32Array.from({ length: n }, () => (rand() * 2 ** 32) | 0);
    const scales = Uint16Array.from({ length: (K! / G!) * N! }, () => f32ToF16Bits(0.01 + rand() * 0.01));
    const w = awqWeights(dev, { K: K!, N: N!, groupSize: G!, qweight: words((K! * N!) / 8), qzeros: words(((K! / G!) * N!) / 8), scales });
    linear(dev, w, tensor(dev, 'f32', [M!, K!], f32s(M! * K!, rand)));
  },
  denseLinear(dev, { M, K, N }, rand) {
    const w = denseWeights(dev, { weight: f32s(K! * N!, rand, 0.1), K: K!, N: N!, dtype: 'f16' });
    linear(dev, w, tensor(dev, 'f32', [M!, K!], f32s(M! * K!, rand)));
  },
  rmsNorm(dev, { M, D, fused }, rand) {
    const residual = fused ? { residual: tensor(dev, 'f32', [M!, D!], f32s(M! * D!, rand)) } : {};
    rmsNorm(dev, tensor(dev, 'f32', [M!, D!], f32s(M! * D!, rand)), tensor(dev, 'f32', [D!], f32s(D!, rand)), residual);
  },
  pagedAttention(dev, { B, Q, C, H, KV, D }, rand) {
    const bs = 16, blocksPerSeq = Math.ceil((C! + Q!) / bs), blocks = B! * blocksPerSeq;
    const cache = () => tensor(dev, 'u32', [blocks, bs, KV!, D! / 2], f16Words(blocks * bs * KV! * D!, rand));
    // Physical blocks shuffled, as a block manager hands them out after some churn.
    const order = Array.from({ length: blocks }, (_, i) => i).sort(() => rand() - 0.5);
    const seqs = Array.from({ length: B! }, (_, b) => ({
      qStart: b * Q!, qLen: Q!, ctxLen: C!, blockTable: order.slice(b * blocksPerSeq, (b + 1) * blocksPerSeq),
    }));
    pagedAttention(dev, tensor(dev, 'f32', [B! * Q!, H!, D!], f32s(B! * Q! * H! * D!, rand)), { k: cache(), v: cache(), kvDtype: 'f16' }, seqs);
  },
  rejectionSampler(dev, { B, K, V }, rand) {
    const probs = (rows: number) => {
      const p = new Float32Array(rows * V!);
      for (let r = 0; r < rows; r++) {
        let sum = 0;
        for (let i = 0; i < V!; i++) sum += p[r * V! + i] = rand();
        for (let i = 0; i < V!; i++) p[r * V! + i]! /= sum;
      }
      return p;
    };
    const seqs = Array.from({ length: B! }, (_, b) => ({
      draftTokens: Array.from({ length: K! }, () => Math.floor(rand() * V!)), seed: b, position: 100,
    }));
    accept(dev, seqs, tensor(dev, 'f32', [B!, K!, V!], probs(B! * K!)), tensor(dev, 'f32', [B!, K! + 1, V!], probs(B! * (K! + 1))));
  },
};

/** The profilable families: registry entries with a runner; their numeric sizes are the --shape keys. */
export const FAMILIES: Record<string, Family> = Object.fromEntries((Object.keys(RUNNERS) as OpFamilyName[]).map((name) => {
  const f = OP_FAMILIES[name];
  const defaults = Object.fromEntries(Object.entries(f.sizes).filter((e): e is [string, number] => typeof e[1] === 'number'));
  return [name, { about: f.about, defaults, run: RUNNERS[name]! }];
}));

// ---- the report ----------------------------------------------------------------------------
export interface KernelReport {
  name: string;
  grid: [number, number, number];
  threads: number;
  sharedBytes: number;
  /** DRAM footprint: distinct 32-byte sectors the launch touched × 32 (every reuse an L2 hit). */
  bytes: number;
  /** L2 → SM traffic: 32 × the sectors of every warp request. */
  sector_bytes: number;
  /** The footprint per binding. */
  buffer_bytes: Record<string, number>;
  sites: { site: string; access: string; space: 'global' | 'shared'; kind: 'load' | 'store'; requests: number; sectors: number; ideal_sectors: number; wavefronts: number; ideal_wavefronts: number }[];
  /** From ptxas (null where nvcc is absent or failed: see `ptxas`). */
  registers: number | null;
  spills: { stores: number; loads: number } | null;
  ptxas: string;
  /** Resident warps / 64 per SM on the card (null without registers). */
  occupancy: number | null;
  occupancy_limit: string | null;
  /** Warps per SM the grid provides on the card, at most what occupancy allows. */
  warps_per_sm: number | null;
  /** bytes / the card's bandwidth, in microseconds. */
  roofline_us: number;
}

export interface ProfileReport {
  family: string; shape: Shape; card: CardName; kernels: KernelReport[]; note?: string;
  /** The family's default variant on the modelled device (registry chooser, CUDA caps, a GPU profile). */
  variant: Record<string, unknown>;
}

/** Profile one op of `family` at `shape` (defaults filled in) for `card`. */
export async function profileFamily(family: string, shape: Shape = {}, card: CardName = 'h200', o: { nvcc?: boolean; seed?: number } = {}): Promise<ProfileReport> {
  const f = FAMILIES[family];
  if (!f) throw new Error(`kiln profile: unknown family '${family}' (one of ${Object.keys(FAMILIES).join(', ')})`);
  for (const k of Object.keys(shape)) {
    if (!(k in f.defaults)) throw new Error(`kiln profile ${family}: unknown shape key '${k}' (keys: ${Object.keys(f.defaults).join(', ')})`);
  }
  const s = { ...f.defaults, ...shape };
  const dev = await createCpuDevice({ profile: true });
  // Choose variants as the CUDA device would: its caps and profile, not the CPU's.
  Object.assign(dev.caps, CUDA_CAPS);
  (dev as { profile: Device['profile'] }).profile = { software: false, deviceClass: 'gpu', vendor: 'nvidia', parallelism: 65536, multiprocessors: CARDS[card].sms };
  let launches: LaunchProfile[];
  try {
    let seed = (o.seed ?? 1) >>> 0;
    const rand = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 2 ** 32; };
    await dev.sync();
    takeLaunchProfiles(dev);
    await f.run(dev, s, rand);
    await dev.sync();
    launches = takeLaunchProfiles(dev);
  } finally {
    await dev.destroy();
  }
  const c = CARDS[card];
  const kernels = launches.map((l): KernelReport => {
    const [x, y, z] = l.ir.workgroupSize, threads = x * y * z;
    const sharedBytes = l.ir.shared.reduce((a, sh) => a + 4 * sh.length, 0);
    const p = o.nvcc === false ? 'not run' : ptxasReport(l.ir);
    const regs = typeof p === 'string' ? null : p.registers;
    const occ = regs === null ? null : occupancy(threads, regs, sharedBytes, l.grid[0] * l.grid[1] * l.grid[2], c.sms);
    return {
      name: l.kernel, grid: l.grid, threads, sharedBytes, bytes: l.dramBytes, sector_bytes: l.sectorBytes, buffer_bytes: l.bufferBytes,
      sites: l.sites.map(({ site, access, space, kind, requests, sectors, ideal_sectors, wavefronts, ideal_wavefronts }) =>
        ({ site, space, kind, requests, sectors, ideal_sectors, wavefronts, ideal_wavefronts, access })),
      registers: regs, spills: typeof p === 'string' ? null : { stores: p.spillStores, loads: p.spillLoads },
      ptxas: typeof p === 'string' ? p : 'ok',
      occupancy: occ?.occupancy ?? null, occupancy_limit: occ?.limit ?? null, warps_per_sm: occ?.gridWarpsPerSM ?? null,
      roofline_us: (l.dramBytes / c.bandwidth) * 1e6,
    };
  });
  const variant = OP_FAMILIES[family as OpFamilyName].defaults({ ...OP_FAMILIES[family as OpFamilyName].sizes, ...s },
    { caps: CUDA_CAPS, parallelism: dev.profile.parallelism, deviceClass: dev.profile.deviceClass });
  return { family, shape: s, card, kernels, variant };
}

const fmtBytes = (b: number) => (b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : b >= 1e3 ? `${(b / 1e3).toFixed(1)} KB` : `${b} B`);
const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}×` : '-');

/** The human-readable report: per kernel its totals, then one row per site. */
export function formatReport(r: ProfileReport): string {
  const c = CARDS[r.card];
  const out = [`kiln profile ${r.family} ${Object.entries(r.shape).map(([k, v]) => `${k}=${v}`).join(',')} — model for ${c.name} (${c.bandwidth / 1e12} TB/s, ${c.sms} SMs); counted on the CPU executor`];
  if (r.note) out.push(r.note);
  out.push(`default variant: ${JSON.stringify(r.variant)}`);
  let total = 0;
  for (const k of r.kernels) {
    total += k.roofline_us;
    out.push('', `kernel ${k.name}: grid ${k.grid.join('×')}, ${k.threads} threads, ${fmtBytes(k.sharedBytes)} shared`);
    out.push(k.registers === null
      ? `  registers: unknown (${k.ptxas})`
      : `  registers ${k.registers}, spills ${k.spills!.stores}/${k.spills!.loads} B (stores/loads) · occupancy ${(100 * k.occupancy!).toFixed(0)}% (limited by ${k.occupancy_limit}) · the grid gives ${k.warps_per_sm!.toFixed(2)} warps/SM`);
    const g = k.sites.filter((s) => s.space === 'global'), sh = k.sites.filter((s) => s.space === 'shared');
    const sum = (xs: typeof g, f: (s: (typeof g)[number]) => number) => xs.reduce((a, s) => a + f(s), 0);
    out.push(`  bytes ${fmtBytes(k.bytes)} (DRAM footprint: ${Object.entries(k.buffer_bytes).map(([b, n]) => `${b} ${fmtBytes(n)}`).join(', ')}), ${fmtBytes(k.sector_bytes)} sector traffic · roofline ${k.roofline_us.toFixed(2)} µs`);
    out.push(`  global sectors ${sum(g, (s) => s.sectors)} vs ideal ${sum(g, (s) => s.ideal_sectors)} (${ratio(sum(g, (s) => s.sectors), sum(g, (s) => s.ideal_sectors))})`
      + (sh.length ? ` · shared wavefronts ${sum(sh, (s) => s.wavefronts)} vs ideal ${sum(sh, (s) => s.ideal_wavefronts)} (${ratio(sum(sh, (s) => s.wavefronts), sum(sh, (s) => s.ideal_wavefronts))})` : ''));
    const rows = [['site', 'space', 'kind', 'requests', 'sectors', 'ideal', 'per req', '×ideal', 'wavefronts', 'ideal', '×ideal', 'access']];
    for (const s of k.sites) {
      const gl = s.space === 'global';
      rows.push([s.site, s.space, s.kind, String(s.requests),
        gl ? String(s.sectors) : '', gl ? String(s.ideal_sectors) : '', gl && s.requests ? (s.sectors / s.requests).toFixed(1) : '',
        gl ? ratio(s.sectors, s.ideal_sectors) : '',
        gl ? '' : String(s.wavefronts), gl ? '' : String(s.ideal_wavefronts), gl ? '' : ratio(s.wavefronts, s.ideal_wavefronts), s.access]);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
    const left = (i: number) => i < 3 || i === rows[0]!.length - 1;
    for (const row of rows) out.push(`  ${row.map((cell, i) => (left(i) ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd()}`);
  }
  out.push('', `total roofline ${total.toFixed(2)} µs over ${r.kernels.length} launch${r.kernels.length === 1 ? '' : 'es'} (launch overheads not counted)`);
  return out.join('\n');
}

const HELP = `kiln profile — GPU efficiency without a GPU: a memory-access model on the CPU executor

  kiln profile <family> [--shape K=4096,N=4096] [--device-model h100|h200] [--json] [--no-nvcc]

  families (--shape keys with their defaults):
${Object.entries(FAMILIES).map(([n, f]) => `    ${n.padEnd(17)} ${Object.entries(f.defaults).map(([k, v]) => `${k}=${v}`).join(',')}\n      ${f.about}`).join('\n')}
  Per kernel launched: per load/store site the warp requests, global 32-byte sectors vs the ideal,
  shared-memory wavefronts vs conflict-free; bytes (DRAM footprint), registers and spills from
  ptxas (where nvcc exists), occupancy and a roofline estimate for the card (default h200).
`;

export async function profileCommand(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['json', 'no-nvcc']);
  if (flag(a, 'help')) { process.stdout.write(HELP); return; }
  rejectUnknown(a, ['shape', 'device-model', 'json', 'no-nvcc'], 'profile');
  const family = a.positional[0];
  if (!family || a.positional.length > 1) throw new Error(`kiln profile: name one family\n${HELP}`);
  const card = str(a, 'device-model', 'h200');
  if (!(card in CARDS)) throw new Error(`kiln profile: --device-model ${card}: use h100 or h200`);
  const shape: Shape = {};
  for (const part of (str(a, 'shape') ?? '').split(',').filter(Boolean)) {
    const m = part.match(/^(\w+)=(\d+)$/);
    if (!m) throw new Error(`kiln profile: --shape wants KEY=N,…, not '${part}'`);
    shape[m[1]!] = Number(m[2]);
  }
  const r = await profileFamily(family, shape, card as CardName, { nvcc: !flag(a, 'no-nvcc') });
  process.stdout.write(flag(a, 'json') ? `${JSON.stringify({ kernels: r.kernels, family: r.family, shape: r.shape, device_model: r.card })}\n` : `${formatReport(r)}\n`);
}
