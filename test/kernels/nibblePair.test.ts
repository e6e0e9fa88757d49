// The DSL's INT4 magic-number dequant intrinsics: for every word and each of its four nibble pairs
// (i, i + 4), nibblePairF16's f16-pair bits 0x6400 | q and, unpacked, the values 1024 + q, and
// nibblePairValues' q, checked
// exactly against the nibbles read on the host with shifts and masks. Random words (every nibble
// value occurs), the pair index varying per invocation, outputs poisoned. sub2x16float (the f16
// pair difference int4Mma takes (1024 + q) − (1024 + z) with): bits against the float64
// difference rounded once to f16, on random f16 pairs and on every magic pair difference.
import { expect, it } from 'vitest';
import { type Caps, kernel, storage } from '../../codegen/dsl/index.js';
import { f16BitsToF32, f32ToF16Bits } from '../../src/quant/f16.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, rng } from '../util.js';
import { Buffers } from './buffers.js';

const WG = 64;

/** Invocation i, word w = words[i >> 2], pair p = i & 3: bits[i] = nibblePairF16(w >> 4p), lo/hi[i] its two values, q[2i], q[2i + 1] nibblePairValues(w >> 4p). */
function nibblePairs(caps: Caps) {
  return kernel({
    name: 'nibblePairs',
    caps,
    workgroupSize: WG,
    bindings: {
      words: storage('u32', 'read', { shape: '[n]' }),
      bits: storage('u32', 'read_write', { shape: '[n, 4]' }),
      lo: storage('f32', 'read_write', { shape: '[n, 4]' }),
      hi: storage('f32', 'read_write', { shape: '[n, 4]' }),
      q: storage('f32', 'read_write', { shape: '[n, 8]' }),
    },
    uniforms: { n: 'u32' },
    grid: ({ n }) => Math.ceil((4 * n) / WG),
    body(k, { words, bits, lo, hi, q }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.ge(n.mul(4)), () => k.return());
      const pair = k.let('pair', k.nibblePairF16(words.at(i.shr(2)).shr(i.band(3).mul(4))));
      bits.set(i, pair);
      const v = k.let('v', k.unpack2x16float(pair));
      lo.set(i, v.x);
      hi.set(i, v.y);
      const qv = k.let('qv', k.nibblePairValues(words.at(i.shr(2)).shr(i.band(3).mul(4))));
      q.set(i.mul(2), qv.x);
      q.set(i.mul(2).add(1), qv.y);
    },
  });
}

/** diff[i] = sub2x16float(a[i], b[i]). */
function pairDifferences(caps: Caps) {
  return kernel({
    name: 'pairDifferences',
    caps,
    workgroupSize: WG,
    bindings: {
      a: storage('u32', 'read', { shape: '[n]' }),
      b: storage('u32', 'read', { shape: '[n]' }),
      diff: storage('u32', 'read_write', { shape: '[n]' }),
    },
    uniforms: { n: 'u32' },
    grid: ({ n }) => Math.ceil(n / WG),
    body(k, { a, b, diff }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.ge(n), () => k.return());
      diff.set(i, k.sub2x16float(a.at(i), b.at(i)));
    },
  });
}

forEachBackend('sub2x16float (f16 pair difference)', (dev) => {
  it('rounds each half\'s difference once to f16: random normal f16 pairs and (1024 + q) − (1024 + z) for every q, z', async () => {
    const r = rng(freshSeed('sub2x16float'));
    // Exponents −4..10: differences are 0 or at least 2^−14 (no f16 subnormals, which some targets flush).
    const half = () => f32ToF16Bits((r() < 0.5 ? -1 : 1) * (1 + r()) * 2 ** Math.floor(r() * 15 - 4));
    const pairs: [number, number][] = Array.from({ length: 300 }, () => [half() | (half() << 16), half() | (half() << 16)]);
    pairs.push([half() * 65537, 0], [0x3c00 * 65537, 0x3c00 * 65537]); // x − 0; 1 − 1 = +0
    for (let q = 0; q < 16; q++) for (let z = 0; z < 16; z++) pairs.push([(0x6400 | q) * 65537, ((0x6400 | z) | ((0x6400 | (15 - z)) << 16)) >>> 0]);
    const n = pairs.length;
    const bufs = new Buffers(dev);
    try {
      const diff = bufs.output('u32', n, 'diff');
      dev.launch(pairDifferences(dev.caps), {
        a: bufs.input('u32', Uint32Array.from(pairs, (p) => p[0] >>> 0), 'a'), b: bufs.input('u32', Uint32Array.from(pairs, (p) => p[1] >>> 0), 'b'), diff,
      }, { n });
      const got = await bufs.read(diff);
      const bad: string[] = [];
      pairs.forEach(([a, b], i) => {
        const h = (w: number, s: number) => f16BitsToF32((w >>> s) & 0xffff);
        const want = ((f32ToF16Bits(h(a, 16) - h(b, 16)) << 16) | f32ToF16Bits(h(a, 0) - h(b, 0))) >>> 0;
        if (got[i] !== want && bad.length < 10) bad.push(`pair ${i}: 0x${(a >>> 0).toString(16)} − 0x${(b >>> 0).toString(16)} gave 0x${got[i]?.toString(16)}, want 0x${want.toString(16)}`);
      });
      expect(bad).toEqual([]);
    } finally { bufs.free(); }
  });
});

forEachBackend('nibblePairF16 / nibblePairValues (INT4 magic-number dequant)', (dev) => {
  it('give 0x6400 | q for nibbles i and i + 4 (f16 values 1024 + q), and q, exactly', async () => {
    const n = 301;
    const r = rng(freshSeed('nibblePairF16'));
    const words = Uint32Array.from({ length: n }, () => (r() * 2 ** 32) >>> 0);
    const bufs = new Buffers(dev);
    try {
      const bits = bufs.output('u32', 4 * n, 'bits');
      const lo = bufs.output('f32', 4 * n, 'lo');
      const hi = bufs.output('f32', 4 * n, 'hi');
      const q = bufs.output('f32', 8 * n, 'q');
      dev.launch(nibblePairs(dev.caps), { words: bufs.input('u32', words, 'words'), bits, lo, hi, q }, { n });
      const [gb, gl, gh, gq] = [await bufs.read(bits), await bufs.read(lo), await bufs.read(hi), await bufs.read(q)];
      const bad: string[] = [];
      for (let i = 0; i < 4 * n && bad.length < 10; i++) {
        const w = words[i >> 2]!, p = i & 3;
        const qLo = (w >>> (4 * p)) & 15, qHi = (w >>> (4 * p + 16)) & 15;
        const want = ((0x6400 | qHi) * 65536 + (0x6400 | qLo)) >>> 0;
        // Object.is: q = 0 must come out +0, as 1024 − 1024 does.
        if (gb[i] !== want || gl[i] !== 1024 + qLo || gh[i] !== 1024 + qHi || !Object.is(gq[2 * i], qLo) || !Object.is(gq[2 * i + 1], qHi)) {
          bad.push(`word ${i >> 2} (0x${w.toString(16)}) pair ${p}: got 0x${gb[i]?.toString(16)} ${gl[i]} ${gh[i]} q ${gq[2 * i]} ${gq[2 * i + 1]}, want 0x${want.toString(16)} ${1024 + qLo} ${1024 + qHi} q ${qLo} ${qHi}`);
        }
      }
      expect(bad).toEqual([]);
    } finally { bufs.free(); }
  });
});
