// The emitted code of every backend computes what the IR means, at the corners where WGSL, CUDA
// and JavaScript differ unless the emitter takes care (see test/fixtures/semantics.ts). Exact:
// every lane is an integer or an exactly representable float.
import { expect, it } from 'vitest';
import { forEachBackend } from './backends.js';
import { LANES, semantics, semanticsInputs, semanticsReference } from './fixtures/semantics.js';
import { Buffers } from './kernels/buffers.js';
import { freshSeed, rng } from './util.js';

const NAMES = ['round(2x)', 'select', 'w << s', 'w >> s', 'i >> s', 'i / d', 'i % d', 'w / |d|', 'w % |d|', 'x % 2',
  'x % -0.5', 'pack2x16float', 'unpack.x', 'unpack.y', 'u32(3x)', 'i32(3x)', 'abs(i)', 'clamp(i)', 'max + min',
  'u32 wrap *', 'dot', 'swizzle', 'vector select', 'bool casts', 'workgroup memory + atomic count', 'signed for loop',
  'while/continue/break'];

forEachBackend('emitted code semantics', (dev) => {
  it('every lane matches the JavaScript reference exactly', async () => {
    const n = 256;
    const inp = semanticsInputs(n, rng(freshSeed('emit semantics')));
    const ref = semanticsReference(n, inp);
    const bufs = new Buffers(dev);
    try {
      const out = bufs.output('u32', n * (LANES + 3), 'out');
      const total = bufs.input('u32', new Uint32Array(1), 'total');
      dev.launch(semantics(dev.caps), {
        f: bufs.input('f32', inp.f, 'f'), ints: bufs.input('i32', inp.ints, 'ints'), divisors: bufs.input('i32', inp.divisors, 'divisors'),
        words: bufs.input('u32', inp.words, 'words'), shifts: bufs.input('u32', inp.shifts, 'shifts'), out, total,
      }, { n, bias: inp.bias });
      const got = await bufs.read(out);
      const wrong: string[] = [];
      for (let t = 0; t < n; t++) {
        for (let lane = 0; lane < LANES + 3; lane++) {
          const g = got[t * (LANES + 3) + lane]!, w = ref.out[t * (LANES + 3) + lane]!;
          if (g !== w && wrong.length < 20) wrong.push(`invocation ${t}, ${NAMES[lane]}: got 0x${g.toString(16)}, want 0x${w.toString(16)} (x=${inp.f[t]}, i=${inp.ints[t]}, d=${inp.divisors[t]}, w=${inp.words[t]}, s=${inp.shifts[t]})`);
        }
      }
      expect(wrong).toEqual([]);
      expect((await bufs.read(total))[0]).toBe(ref.total);
    } finally { bufs.free(); }
  });
});
