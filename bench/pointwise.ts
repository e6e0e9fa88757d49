// `npm run bench -- pointwise`: the memory-bound kernels around the matmuls — RMSNorm (plain and
// fused with the residual add), RoPE on a fused q|k|v row (ropeQkv), embedding gather from an f16
// table, SiLU·mul — at Llama-3-8B's widths, per backend: time, GB/s over the bytes each must move,
// and the fraction of a measured copy bandwidth (`out = a + b`) in the same run.
//
// Options: --backends cpu,webgpu,cuda  --tokens 1,64  --reps 10 --samples 3
import { embedding } from '../codegen/kernels/embedding.js';
import { siluMul } from '../codegen/kernels/pointwise.js';
import { rmsNorm } from '../codegen/kernels/rmsNorm.js';
import { ropeTable } from '../codegen/kernels/rope.js';
import { ropeQkv } from '../codegen/kernels/ropeQkv.js';
import { BackendUnavailableError, type BackendKind, type Device, type DeviceBuffer } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { copyBandwidth, randomF32, timeLaunches } from './common.js';

interface Options { backends: BackendKind[]; tokens: number[]; reps: number; samples: number }

function parse(args: string[]): Options {
  const o: Options = { backends: ['cpu', 'webgpu', 'cuda'], tokens: [1, 64], reps: 10, samples: 3 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--backends') o.backends = v().split(',') as BackendKind[];
    else if (a === '--tokens') o.tokens = v().split(',').map(Number);
    else if (a === '--reps') o.reps = Number(v());
    else if (a === '--samples') o.samples = Number(v());
    else throw new Error(`bench pointwise: unknown option ${a}`);
  }
  return o;
}

// Llama-3-8B: hidden 4096, 32 q heads and 8 kv heads of 128, FFN 14336, vocabulary 128256.
const D = 4096, HQ = 32, HK = 8, HD = 128, FFN = 14336, V = 128256, MAXPOS = 8192;

interface Cell { kernel: string; T: number; ms: number; bytes: number }

async function cells(dev: Device, T: number, o: Options): Promise<Cell[]> {
  const owned: DeviceBuffer[] = [];
  const f32 = (n: number, seed: number) => { const b = dev.alloc('f32', n); owned.push(b); dev.write(b, randomF32(n, seed, 1)); return b; };
  const u32 = (data: Uint32Array) => { const b = dev.alloc('u32', data.length); owned.push(b); dev.write(b, data); return b; };
  const caps = dev.caps, t = (launch: () => void) => timeLaunches(dev, launch, o);
  const out: Cell[] = [];
  try {
    const x = f32(T * D, 1), w = f32(D, 2), y = f32(T * D, 3), res = f32(T * D, 4);
    const norm = rmsNorm({ caps }), fused = rmsNorm({ fused: true, caps });
    out.push({ kernel: 'rmsNorm', T, ms: await t(() => dev.launch(norm, { x, w, out: y }, { M: T, D, eps: 1e-5 })), bytes: (2 * T * D + D) * 4 });
    out.push({ kernel: 'rmsNorm + residual', T, ms: await t(() => dev.launch(fused, { x, residual: res, w, out: y }, { M: T, D, eps: 1e-5 })), bytes: (4 * T * D + D) * 4 });

    const qkv = f32(T * (HQ + 2 * HK) * HD, 5), pos = u32(Uint32Array.from({ length: T }, (_, i) => 1000 + i));
    const table = dev.alloc('f32', MAXPOS * HD); owned.push(table); dev.write(table, ropeTable({ headDim: HD, theta: 500000 }, MAXPOS));
    const q = f32(T * HQ * HD, 6), k = f32(T * HK * HD, 7), v = f32(T * HK * HD, 8);
    const rope = ropeQkv({ layout: 'halves', caps });
    out.push({ kernel: 'ropeQkv', T, ms: await t(() => dev.launch(rope, { qkv, pos, table, q, k, v }, { T, Hq: HQ, Hk: HK, D: HD, maxPos: MAXPOS })),
      bytes: 2 * T * (HQ + 2 * HK) * HD * 4 + T * (HQ + HK) * HD * 2 }); // read + write the row; cos/sin of T positions

    // The gather reads only T rows; software devices get a 16384-row table (llvmpipe binds ≤ 128 MiB).
    const rows = dev.profile.software ? 16384 : V;
    const words = (rows * D) / 2, tab = dev.alloc('u32', words); owned.push(tab);
    dev.write(tab, Uint32Array.from({ length: words }, (_, i) => (0x3c00 + (i % 64)) * 0x10001)); // finite halves
    const ids = u32(Uint32Array.from({ length: T }, (_, i) => (i * 7919) % rows));
    const emb = embedding({ table: 'f16', caps });
    out.push({ kernel: 'embedding (f16 table)', T, ms: await t(() => dev.launch(emb, { ids, table: tab, out: y }, { T, V: rows, D })), bytes: T * D * (2 + 4) });

    const gate = f32(T * FFN, 9), up = f32(T * FFN, 10), act = f32(T * FFN, 11);
    const silu = siluMul({ caps });
    out.push({ kernel: 'siluMul', T, ms: await t(() => dev.launch(silu, { gate, up, out: act }, { n: T * FFN })), bytes: 3 * T * FFN * 4 });
  } finally {
    for (const b of owned) dev.free(b);
  }
  return out;
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  for (const kind of o.backends) {
    let dev: Device;
    try { dev = await createDevice(kind); } catch (e) {
      if (e instanceof BackendUnavailableError) { console.log(`${kind}: skipped — ${e.reason}`); continue; }
      throw e;
    }
    try {
      const software = dev.profile.software;
      const bw = await copyBandwidth(dev, software ? 4 << 20 : 64 << 20, o);
      console.log(`\n${kind}: ${dev.description} — copy ${bw.toFixed(1)} GB/s\n`);
      console.log('| kernel | tokens | µs | MB moved | GB/s | % of copy |');
      console.log('|---|---:|---:|---:|---:|---:|');
      for (const T of o.tokens) {
        for (const c of await cells(dev, T, o)) {
          const gbs = c.bytes / (c.ms / 1000) / 1e9;
          console.log(`| ${c.kernel} | ${c.T} | ${(c.ms * 1000).toFixed(1)} | ${(c.bytes / 1e6).toFixed(3)} | ${gbs.toFixed(2)} | ${((100 * gbs) / bw).toFixed(1)} % |`);
        }
      }
    } finally {
      await dev.destroy();
    }
  }
}
