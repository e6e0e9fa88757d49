// The WebAssembly executor's exp2 and exp (codegen/emit/wasm-helpers.ts exp2Helper, expHelper)
// against the JS executor's Math.fround(Math.pow(2, x)) and Math.fround(Math.exp(x)), bit for bit,
// for EVERY f32 x where a helper does not simply call Math (exp2: −126 < x < 127.5, exp:
// −87 < x < 88; about 3.6 billion inputs in all), one child process per range. The issue allows
// porting a Math function only when so checked. Run: npm run check:exp (a few minutes); prints
// the inputs checked and any mismatch, exits 1 on one.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FnBuilder, encodeModule } from '../codegen/emit/wasm-encode.js';
import { MATH_IMPORTS, exp2Helper, expHelper, wasmMathImports } from '../codegen/emit/wasm-helpers.js';

const CHUNK = 1 << 20;
type Fn = 'exp2' | 'exp';
type Range = [Fn, number, number]; // the function, u32 bit patterns [lo, hi)

/** fill(lo, n): f32 results of the helper for bit patterns lo .. lo + n − 1 at byte 0 of memory. */
function checker(fn: Fn): (lo: number, n: number) => Uint32Array {
  const W = (globalThis as unknown as { WebAssembly: any }).WebAssembly;
  const fill = new FnBuilder(['i32', 'i32'], []);
  const i = fill.local('i32');
  fill.block('done').loop('top');
  fill.get(i).get(1).op('i32.ge_u').brIf('done');
  fill.get(i).i32(2).op('i32.shl');
  fill.get(0).get(i).op('i32.add').op('f32.reinterpret_i32').call(MATH_IMPORTS.length + 1);
  fill.mem('f32.store', 0);
  fill.get(i).i32(1).op('i32.add').set(i).br('top').end().end();
  const memory = new W.Memory({ initial: (CHUNK * 4) / 65536, maximum: 65536, shared: true });
  const helper = fn === 'exp2' ? exp2Helper() : expHelper();
  const mod = new W.Module(encodeModule(MATH_IMPORTS, [fill, helper], { fill: MATH_IMPORTS.length }));
  const run = new W.Instance(mod, { env: { memory }, m: wasmMathImports() }).exports.fill as (lo: number, n: number) => void;
  const out = new Uint32Array(memory.buffer, 0, CHUNK);
  return (lo, n) => { run(lo | 0, n); return out; };
}

function check([fn, lo, hi]: Range): { checked: number; bad: string[] } {
  const fill = checker(fn);
  const ref = fn === 'exp2' ? (x: number) => Math.pow(2, x) : Math.exp;
  const f = new Float32Array(1), u = new Uint32Array(f.buffer), want = new Float32Array(1), wantBits = new Uint32Array(want.buffer);
  const bad: string[] = [];
  let checked = 0;
  for (let at = lo; at < hi; at += CHUNK) {
    const n = Math.min(CHUNK, hi - at), got = fill(at, n);
    for (let j = 0; j < n; j++) {
      u[0] = at + j;
      want[0] = ref(f[0]!);
      if (got[j] !== wantBits[0] && bad.length < 20) bad.push(`${fn}(${f[0]}) (0x${(at + j).toString(16)}): wasm 0x${got[j]!.toString(16)}, Math 0x${wantBits[0]!.toString(16)}`);
    }
    checked += n;
  }
  return { checked, bad };
}

/** Bit patterns of the f32 range (lo, hi), lo < 0 < hi: [0, bits(hi)) and [0x80000000, bits(lo)). */
function rangesOf(fn: Fn, lo: number, hi: number): Range[] {
  const f = new Float32Array(2), u = new Uint32Array(f.buffer);
  f[0] = hi; f[1] = lo;
  return [[fn, 0, u[0]!], [fn, 0x80000000, u[1]!]];
}

const [, , fnArg, loArg, hiArg] = process.argv;
if (fnArg === undefined) {
  const ranges = [...rangesOf('exp2', -126, 127.5), ...rangesOf('exp', -87, 88)];
  const t0 = performance.now();
  const results: { checked: number; bad: string[] }[] = [];
  // Two at a time (this machine's cores).
  for (let i = 0; i < ranges.length; i += 2) {
    results.push(...await Promise.all(ranges.slice(i, i + 2).map(([fn, lo, hi]) => new Promise<{ checked: number; bad: string[] }>((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), fn, String(lo), String(hi)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      child.stdout.on('data', (d) => { text += d; });
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(text)) : reject(new Error(`${fn} ${lo}..${hi}: exit ${code}`))));
    }))));
  }
  const checked = results.reduce((s, r) => s + r.checked, 0), bad = results.flatMap((r) => r.bad);
  console.log(`exp2 and exp: ${checked} f32 inputs checked in ${((performance.now() - t0) / 1000).toFixed(0)} s; ${bad.length ? `${bad.length}+ mismatches:\n${bad.join('\n')}` : 'all bit-identical to Math.fround(Math.pow(2, x)) / Math.fround(Math.exp(x))'}`);
  process.exit(bad.length ? 1 : 0);
} else {
  process.stdout.write(JSON.stringify(check([fnArg as Fn, Number(loArg), Number(hiArg)])));
}
