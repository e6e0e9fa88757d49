// `npm run bench -- simd`: the cpu's arithmetic peak as WebAssembly reaches it, for the floor in
// bench/notes/cpu.md (FLOPs per token ÷ this): f32x4 multiply-adds (SIMD128) and scalar f32
// multiply-adds, 8 independent chains each, in a module built with the kernel emitter's encoder,
// on one thread. Multiply by the cores for the machine. And the f16 GEMV's core as the wasm
// executor ran it until 2026-12-07, when `fma` was the f64 sum rounded to f32: f16 weights (two
// per word) through the f16 → f32 table in memory, 8 accumulators — ns per weight, best of 30
// (today's exact path adds a halfway test to this; the fused path is the GEMV rows below).
//
//   npm run bench -- simd [--iterations 20000000]
import { makeF16 } from '../codegen/dsl/f16.js';
import { FnBuilder, encodeModule } from '../codegen/emit/wasm-encode.js';
import { defaultDenseChoice, denseSource } from '../codegen/kernels/denseMatmul.js';
import { defaultInt4Gemv, int4Source } from '../codegen/kernels/int4Matmul.js';
import { gemvKernel } from '../codegen/kernels/linearCommon.js';
import { createCpuDevice } from '../src/backend/cpu/index.js';
import type { Device, DeviceBuffer } from '../src/backend/device.js';

type WasmApi = {
  Memory: new (d: object) => { buffer: ArrayBuffer };
  Module: new (b: Uint8Array) => unknown;
  Instance: new (m: unknown, i: object) => { exports: Record<string, unknown> };
};
const W = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

type Kernel = (n: number) => number;

/** loop n times: acc_j = acc_j * m + a, j < 8 (v128 lanes or scalars); returns one lane. */
function module(simd: boolean): Kernel {
  const f = new FnBuilder(['i32'], ['f32']);
  const t = simd ? 'v128' : 'f32';
  const acc = Array.from({ length: 8 }, () => f.local(t)), m = f.local(t), a = f.local(t), i = f.local('i32');
  const splat = (v: number, into: number) => { f.f32(v); if (simd) f.simd('f32x4.splat'); f.set(into); };
  splat(0.999, m); splat(1e-3, a);
  for (const x of acc) splat(1, x);
  f.block('done').loop('top');
  f.get(i).get(0).op('i32.ge_u').brIf('done');
  for (const x of acc) {
    f.get(x).get(m);
    if (simd) f.simd('f32x4.mul').get(a).simd('f32x4.add'); else f.op('f32.mul').get(a).op('f32.add');
    f.set(x);
  }
  f.get(i).i32(1).op('i32.add').set(i).br('top').end().end();
  f.get(acc[0]!);
  if (simd) f.simd('f32x4.extract_lane', 0);
  for (const x of acc.slice(1)) { f.get(x); if (simd) f.simd('f32x4.extract_lane', 0); f.op('f32.add'); }
  const memory = new W.Memory({ initial: 1, maximum: 65536, shared: true });
  const m2 = new W.Module(encodeModule([], [f], { run: 0 }));
  return new W.Instance(m2, { env: { memory } }).exports.run as Kernel;
}

/** run(n): n words (2n f16 weights at WORDS) × 0.5 into 8 accumulators, as the GEMV's inner loop. */
function gemvCore(): { run: Kernel; words: number } {
  const TABLE = 0, WORDS = 1 << 20, NW = 1 << 19;
  const memory = new W.Memory({ initial: 64, maximum: 65536, shared: true });
  new Float32Array(memory.buffer, TABLE, 65536).set(makeF16().table);
  const F = makeF16(), words = new Uint32Array(memory.buffer, WORDS, NW);
  let s = 12345;
  const rnd = () => { s = (Math.imul(s, 1103515245) + 12345) >>> 0; return s / 2 ** 32 - 0.5; };
  for (let i = 0; i < NW; i++) words[i] = (F.bits(rnd() * 0.1) | (F.bits(rnd() * 0.1) << 16)) >>> 0;
  const f = new FnBuilder(['i32'], ['f32']);
  const i = f.local('i32'), x = f.local('i32'), acc = Array.from({ length: 8 }, () => f.local('f32'));
  f.block('done').loop('top');
  f.get(i).get(0).op('i32.ge_u').brIf('done');
  for (let j = 0; j < 4; j++) {
    f.get(i).i32(j).op('i32.add').i32(2).op('i32.shl').mem('i32.load', WORDS).set(x);
    for (const half of [0, 1]) {
      const a = acc[2 * j + half]!;
      f.f64(0.5).get(x);
      if (half) f.i32(16).op('i32.shr_u'); else f.i32(65535).op('i32.and');
      f.i32(2).op('i32.shl').mem('f32.load', TABLE).op('f64.promote_f32').op('f64.mul');
      f.get(a).op('f64.promote_f32').op('f64.add').op('f32.demote_f64').set(a);
    }
  }
  f.get(i).i32(4).op('i32.add').set(i).br('top').end().end(); // i counts words: 4 per step
  f.get(acc[0]!);
  for (const a of acc.slice(1)) f.get(a).op('f32.add');
  const m = new W.Module(encodeModule([], [f], { run: 0 }));
  return { run: new W.Instance(m, { env: { memory } }).exports.run as Kernel, words: NW };
}

export async function main(args: string[]): Promise<void> {
  let n = 20_000_000;
  for (let k = 0; k < args.length; k++) {
    if (args[k] === '--iterations') n = Number(args[++k]);
    else throw new Error(`bench simd: unknown option ${args[k]}`);
  }
  console.log('| arithmetic (one thread) | GFLOP/s (best of 5) |');
  console.log('|---|---:|');
  for (const simd of [true, false]) {
    const run = module(simd);
    run(1000);
    let best = 0;
    for (let s = 0; s < 5; s++) {
      const t0 = performance.now();
      run(n);
      const sec = (performance.now() - t0) / 1000;
      best = Math.max(best, (n * 8 * (simd ? 4 : 1) * 2) / sec / 1e9);
    }
    console.log(`| ${simd ? 'f32x4 mul + add (SIMD128)' : 'scalar f32 mul + add'} | ${best.toFixed(1)} |`);
  }
  const core = gemvCore();
  core.run(1 << 12);
  let ns = Number.POSITIVE_INFINITY;
  for (let r = 0; r < 30; r++) {
    const t0 = performance.now();
    core.run(core.words);
    ns = Math.min(ns, ((performance.now() - t0) * 1e6) / (2 * core.words));
  }
  console.log(`| f16 GEMV core, f64 fma rounded to f32 (the executor before 2026-12-07): ${ns.toFixed(2)} ns per weight | ${(2 / ns).toFixed(1)} |`);
  await gemvKernels();
}

/**
 * The decode GEMVs as the cpu device's wasm executor runs them, one thread (workers 0): fma as the
 * host's fused relaxed multiply-add with accumulators packed in f32x4 (the default), the same
 * without packing (KILN_WASM_SIMD=0), and fma through the exact path (KILN_WASM_FMA=exact; the
 * fallback where the multiply-add is not fused). Variables read when a device is created. µs per
 * launch, minimum over interleaved launches, brown-target's shapes (K 256; N 1536 gate/up, 2048
 * lm_head).
 */
async function gemvKernels(): Promise<void> {
  const variants = [['packed', {}], ['scalar', { KILN_WASM_SIMD: '0' }], ['exact', { KILN_WASM_FMA: 'exact' }]] as const;
  const devs: Device[] = [];
  for (const [, env] of variants) {
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try { devs.push(await createCpuDevice({ workers: 0, executor: 'wasm' })); } finally {
      for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
    }
  }
  console.log(`\n| kernel (one thread, wasm; the variant the cpu device picks) | K × N | ${variants.map(([n]) => `${n} µs`).join(' | ')} | scalar / packed | exact / packed |`);
  console.log(`|---|---|${variants.map(() => '---:|').join('')}---:|---:|`);
  try {
    for (const [name, source, v] of [
      ['dense f16 GEMV', denseSource('f16'), defaultDenseChoice(256, 2048, 'f16', devs[0]!.caps, devs[0]!.profile.parallelism).gemv[0]!],
      ['INT4 g128 GEMV', int4Source(128), defaultInt4Gemv(1, 2048, devs[0]!.caps, devs[0]!.profile.parallelism, 'cpu')],
    ] as const) {
      for (const N of [1536, 2048]) {
        const K = 256, kern = gemvKernel(source, 1, v, devs[0]!.caps);
        const us = devs.map(() => Number.POSITIVE_INFINITY);
        const bufs = devs.map((dev) => {
          const b: Record<string, DeviceBuffer> = {};
          for (const d of kern.ir.buffers) {
            const n = d.name === 'x' ? K : d.name === 'part' ? N : K * N; // generous: covers every weight binding
            const words = new Uint32Array(n * (d.vec ?? 1));
            for (let i = 0; i < words.length; i++) words[i] = (Math.random() * 0x3bff) | ((Math.random() * 0x3bff) << 16);
            b[d.name] = dev.alloc(d.t === 'f32' ? 'f32' : 'u32', n * (d.vec ?? 1), d.name);
            dev.write(b[d.name]!, d.t === 'f32' ? Float32Array.from(words, () => Math.random() - 0.5) : words);
          }
          return b;
        });
        for (let r = 0; r < 60; r++) {
          for (let i = 0; i < devs.length; i++) {
            const t0 = performance.now();
            devs[i]!.launch(kern, bufs[i]! as never, { K, Nw: N, segLen: K } as never);
            await devs[i]!.sync();
            us[i] = Math.min(us[i]!, (performance.now() - t0) * 1000);
          }
        }
        devs.forEach((dev, i) => { for (const b of Object.values(bufs[i]!)) dev.free(b); });
        console.log(`| ${name} ${JSON.stringify(v).replace(/[{}"]/g, '')} | ${K} × ${N} | ${us.map((u) => u.toFixed(0)).join(' | ')} | ${(us[1]! / us[0]!).toFixed(2)} | ${(us[2]! / us[0]!).toFixed(2)} |`);
      }
    }
  } finally {
    for (const d of devs) await d.destroy();
  }
}
