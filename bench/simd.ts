// `npm run bench -- simd`: the cpu's arithmetic peak as WebAssembly reaches it, for the floor in
// bench/notes/cpu.md (FLOPs per token ÷ this): f32x4 multiply-adds (SIMD128) and scalar f32
// multiply-adds, 8 independent chains each, in a module built with the kernel emitter's encoder,
// on one thread. Multiply by the cores for the machine.
//
//   npm run bench -- simd [--iterations 20000000]
import { FnBuilder, encodeModule } from '../codegen/emit/wasm-encode.js';

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
  const W = (globalThis as unknown as { WebAssembly: { Memory: new (d: object) => unknown; Module: new (b: Uint8Array) => unknown; Instance: new (m: unknown, i: object) => { exports: Record<string, unknown> } } }).WebAssembly;
  const memory = new W.Memory({ initial: 1, maximum: 65536, shared: true });
  const m2 = new W.Module(encodeModule([], [f], { run: 0 }));
  return new W.Instance(m2, { env: { memory } }).exports.run as Kernel;
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
}
