// Counter-based randoms shared by the sampling and acceptance kernels: Philox-4x32-10 (Salmon et
// al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), built only from u32 adds, xors,
// shifts and 16x16-bit products, so every backend produces identical bits and a JS mirror
// (`philoxRef`) reproduces them on the host.
//
// A draw is keyed by (request seed, token position, stream): key = (seed, KEY_HI), counter =
// (position, stream, 0, 0). Nothing about the batch enters, so a request's randoms never depend
// on what else is being decoded. Streams keep the uses independent: a drafter must sample with
// STREAM_DRAFT, or its draw at a position would equal the target's residual draw there and the
// rejection sampler would no longer be lossless.
import type { KernelBuilder, Val } from '../dsl/index.js';

/** The token sampled at a position (plain sampling, the residual/bonus token of acceptance). */
export const STREAM_SAMPLE = 0;
/** The uniform that accepts or rejects the draft token at a position. */
export const STREAM_ACCEPT = 1;
/** Sampling done by a drafter (kept apart from STREAM_SAMPLE, see above). */
export const STREAM_DRAFT = 2;

const KEY_HI = 0x6b696c6e; // "kiln": the second key word, fixed
const M0 = 0xd2511f53, M1 = 0xcd9e8d57; // Philox multipliers
const W0 = 0x9e3779b9, W1 = 0xbb67ae85; // Weyl key increments
const ROUNDS = 10;

/** Round keys: key + r·W (mod 2³²), precomputed so the kernel needs one wrapping add per round. */
const bump = (w: number, r: number) => Number((BigInt(w) * BigInt(r)) & 0xffffffffn);

// ---- the DSL version -------------------------------------------------------------------------
type Lazy = () => Val<'u32'>;
/** A value emitted as a local the first time something asks for it, so words no output depends
 *  on are never emitted (an unused local is a compiler warning in CUDA). */
function lazy(f: Lazy): Lazy {
  let v: Val<'u32'> | undefined;
  return () => (v ??= f());
}

/** High and low words of the 64-bit product m·b (m a constant), from 16-bit halves: no product
 *  exceeds 32 bits, so no target's multiply needs to wrap or widen. */
function mulHiLo(k: KernelBuilder, m: number, b: Lazy, tag: string): { hi: Lazy; lo: Lazy } {
  const ml = m & 0xffff, mh = m >>> 16;
  const bl = lazy(() => k.let(`${tag}bl`, b().band(0xffff)));
  const bh = lazy(() => k.let(`${tag}bh`, b().shr(16)));
  const t = lazy(() => k.let(`${tag}t`, bl().mul(ml)));
  const m1 = lazy(() => k.let(`${tag}m1`, bl().mul(mh)));
  const m2 = lazy(() => k.let(`${tag}m2`, bh().mul(ml)));
  const mid = lazy(() => k.let(`${tag}mid`, t().shr(16).add(m1().band(0xffff)).add(m2().band(0xffff))));
  return {
    hi: lazy(() => k.let(`${tag}hi`, bh().mul(mh).add(m1().shr(16)).add(m2().shr(16)).add(mid().shr(16)))),
    lo: lazy(() => k.let(`${tag}lo`, mid().shl(16).bor(t().band(0xffff)))),
  };
}

/** Philox-4x32-10 of counter (c0..c3) under key (seed, KEY_HI): the first `words` of its four
 *  random u32 words. */
export function philox(k: KernelBuilder, seed: Val<'u32'>, ctr: [Val<'u32'>, Val<'u32'>, Val<'u32'>, Val<'u32'>],
  tag = 'rng', words = 4): Val<'u32'>[] {
  let c: Lazy[] = ctr.map((v) => () => v);
  for (let r = 0; r < ROUNDS; r++) {
    const k0 = r === 0 ? () => seed : lazy(() => k.let(`${tag}${r}k`, seed.add(bump(W0, r))));
    const k1 = (KEY_HI + bump(W1, r)) >>> 0;
    const a = mulHiLo(k, M0, c[0]!, `${tag}${r}a`), b = mulHiLo(k, M1, c[2]!, `${tag}${r}b`);
    const [c1, c3] = [c[1]!, c[3]!];
    c = [lazy(() => k.let(`${tag}${r}x0`, b.hi().bxor(c1()).bxor(k0()))), b.lo,
      lazy(() => k.let(`${tag}${r}x2`, a.hi().bxor(c3()).bxor(k1))), a.lo];
  }
  return c.slice(0, words).map((f) => f());
}

/** A uniform in [0, 1 − 2⁻²⁴] from the top 24 bits: exact in f32 on every backend (and < 1, so
 *  u·total < total for any positive total — the samplers rely on it). */
export function uniform01(k: KernelBuilder, bits: Val<'u32'>): Val<'f32'> {
  return k.f32(bits.shr(8)).mul(1 / 16777216);
}

/** The uniform for (seed, position, stream). */
export function randomUniform(k: KernelBuilder, seed: Val<'u32'>, position: Val<'u32'>, stream: Val<'u32'> | number,
  tag = 'rng'): Val<'f32'> {
  const zero = k.u32(0);
  const s = typeof stream === 'number' ? k.u32(stream) : stream;
  const [x] = philox(k, seed, [position, s, zero, zero], tag, 1);
  return k.let(`${tag}U`, uniform01(k, x!));
}

// ---- the JS mirror (tests, host-side references) ----------------------------------------------
function mulHiLoRef(m: number, b: number): [number, number] {
  const p = BigInt(m) * BigInt(b >>> 0);
  return [Number(p >> 32n), Number(p & 0xffffffffn)];
}

/** Philox-4x32-10 under a full two-word key (checked against Random123's known answers). */
export function philoxKeyedRef(key0: number, key1: number, ctr: [number, number, number, number]): [number, number, number, number] {
  let [c0, c1, c2, c3] = ctr.map((x) => x >>> 0) as [number, number, number, number];
  for (let r = 0; r < ROUNDS; r++) {
    const k0 = (key0 + bump(W0, r)) >>> 0;
    const k1 = (key1 + bump(W1, r)) >>> 0;
    const [hi0, lo0] = mulHiLoRef(M0, c0);
    const [hi1, lo1] = mulHiLoRef(M1, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return [c0, c1, c2, c3];
}

/** Philox-4x32-10 keyed as the kernels key it, bit-identical to `philox`. */
export const philoxRef = (seed: number, ctr: [number, number, number, number]) => philoxKeyedRef(seed, KEY_HI, ctr);

export const uniform01Ref = (bits: number): number => (bits >>> 8) / 16777216;

/** The uniform `randomUniform` draws for (seed, position, stream). */
export function randomUniformRef(seed: number, position: number, stream: number): number {
  return uniform01Ref(philoxRef(seed >>> 0, [position >>> 0, stream >>> 0, 0, 0])[0]);
}
