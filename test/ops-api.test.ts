// The public op layer (`kiln/ops`) on the cpu device: each op on user tensors against a float64
// reference, and bad input named before any launch. The kernels themselves are tested on every
// backend in test/kernels/; this checks the typed wrappers (shapes, layouts, uploads).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  accept, acceptGreedy, appendKv, awqWeights, createDevice, denseWeights, dequantizeAwq, type Device, linear,
  pagedAttention, quantizeRtnInt4, rmsNorm, rope, sample, tensor, TensorShapeError,
} from '../src/ops/index.js';
import { freshSeed, randomF32, relErr, rng } from './util.js';

let dev: Device;
beforeAll(async () => { dev = await createDevice('cpu'); });
afterAll(async () => { await dev.destroy(); });

function matmul(x: ArrayLike<number>, w: ArrayLike<number>, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) y[m * N + n]! += x[m * K + k]! * w[k * N + n]!;
  return y;
}

describe('kiln/ops on cpu', () => {
  it('linear on AutoAWQ tensors as stored, and on dense weights with bias and residual', async () => {
    const r = rng(freshSeed('ops linear'));
    const M = 3, K = 256, N = 64, g = 64;
    const awq = quantizeRtnInt4(randomF32(K * N, r), K, N, g, 'KN');
    const xHost = randomF32(M * K, r);
    const x = tensor(dev, 'f32', [M, K], xHost);
    const y = linear(dev, awqWeights(dev, awq), x);
    expect(y.shape).toEqual([M, N]);
    expect(relErr(await y.read(), matmul(xHost, dequantizeAwq(awq), M, K, N))).toBeLessThan(1e-6);

    const wHost = randomF32(K * N, r), bHost = randomF32(N, r), resHost = randomF32(M * N, r);
    const dense = denseWeights(dev, { weight: wHost, K, N });
    const z = linear(dev, dense, x, { bias: tensor(dev, 'f32', [N], bHost), residual: tensor(dev, 'f32', [M, N], resHost) });
    const ref = matmul(xHost, wHost, M, K, N).map((v, i) => v + bHost[i % N]! + resHost[i]!);
    expect(relErr(await z.read(), ref)).toBeLessThan(1e-6);
  });

  it('names the tensor and its expected shape on bad input', () => {
    const w = denseWeights(dev, { weight: new Float32Array(8 * 4), K: 8, N: 4 });
    expect(() => linear(dev, w, tensor(dev, 'f32', [2, 7]))).toThrow(/linear \(K = 8, N = 4\): tensor 'x' is f32 \[2, 7\]; expected f32 \[M, K\]/);
    expect(() => linear(dev, w, tensor(dev, 'u32', [2, 8]))).toThrow(TensorShapeError);
    expect(() => tensor(dev, 'f32', [2, 3], [1, 2, 3])).toThrow(/data has 3 elements, shape \[2, 3\] needs 6/);
    expect(() => awqWeights(dev, { K: 64, N: 12, groupSize: 64, qweight: new Int32Array(96), qzeros: new Int32Array(2), scales: new Uint16Array(12) }))
      .toThrow(/N = 12 is not a multiple of 8/);
    expect(() => rmsNorm(dev, tensor(dev, 'f32', [2, 8]), tensor(dev, 'f32', [4]))).toThrow(/rmsNorm: tensor 'weight' is f32 \[4\]; expected f32 \[D\]/);
  });

  it('rmsNorm and rope match float64 references', async () => {
    const r = rng(freshSeed('ops pointwise'));
    const M = 4, D = 32;
    const xh = randomF32(M * D, r), wh = randomF32(D, r);
    const y = await rmsNorm(dev, tensor(dev, 'f32', [M, D], xh), tensor(dev, 'f32', [D], wh), { eps: 1e-6 }).read();
    const ref = new Float64Array(M * D);
    for (let m = 0; m < M; m++) {
      let ss = 0;
      for (let d = 0; d < D; d++) ss += xh[m * D + d]! ** 2;
      const inv = 1 / Math.sqrt(ss / D + 1e-6);
      for (let d = 0; d < D; d++) ref[m * D + d] = xh[m * D + d]! * inv * wh[d]!;
    }
    expect(relErr(y, ref)).toBeLessThan(1e-6);

    const T = 3, Hq = 2, Hk = 1, hd = 8, positions = [0, 5, 17];
    const qh = randomF32(T * Hq * hd, r), kh = randomF32(T * Hk * hd, r);
    const out = rope(dev, tensor(dev, 'f32', [T, Hq, hd], qh), tensor(dev, 'f32', [T, Hk, hd], kh), { positions, theta: 10000 });
    const rot = (src: Float32Array, H: number) => {
      const o = new Float64Array(src.length);
      for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) for (let i = 0; i < hd / 2; i++) {
        const a = positions[t]! / 10000 ** ((2 * i) / hd), b = (t * H + h) * hd;
        const x0 = src[b + i]!, x1 = src[b + i + hd / 2]!;
        o[b + i] = x0 * Math.cos(a) - x1 * Math.sin(a);
        o[b + i + hd / 2] = x1 * Math.cos(a) + x0 * Math.sin(a);
      }
      return o;
    };
    expect(relErr(await out.q.read(), rot(qh, Hq))).toBeLessThan(1e-6);
    expect(relErr(await out.k.read(), rot(kh, Hk))).toBeLessThan(1e-6);
  });

  it('pagedAttention over a cache filled by appendKv matches causal softmax attention', async () => {
    const r = rng(freshSeed('ops attention'));
    const BS = 16, Hk = 2, G = 2, hd = 16, T = 20, numBlocks = 4;
    const cache = { k: tensor(dev, 'f32', [numBlocks, BS, Hk, hd]), v: tensor(dev, 'f32', [numBlocks, BS, Hk, hd]) };
    // One sequence of 20 tokens in blocks 2 and 0 (a non-trivial block table), all new.
    const seqs = [{ qStart: 0, qLen: T, ctxLen: 0, blockTable: [2, 0] }];
    const kh = randomF32(T * Hk * hd, r), vh = randomF32(T * Hk * hd, r), qh = randomF32(T * Hk * G * hd, r);
    appendKv(dev, cache, tensor(dev, 'f32', [T, Hk, hd], kh), tensor(dev, 'f32', [T, Hk, hd], vh), seqs);
    const out = await pagedAttention(dev, tensor(dev, 'f32', [T, Hk * G, hd], qh), cache, seqs).read();
    const ref = new Float64Array(T * Hk * G * hd);
    for (let t = 0; t < T; t++) for (let h = 0; h < Hk * G; h++) {
      const kvh = Math.floor(h / G), q = (t * Hk * G + h) * hd;
      const s = Array.from({ length: t + 1 }, (_, j) => {
        let d = 0;
        for (let i = 0; i < hd; i++) d += qh[q + i]! * kh[(j * Hk + kvh) * hd + i]!;
        return d / Math.sqrt(hd);
      });
      const mx = Math.max(...s), e = s.map((v) => Math.exp(v - mx)), sum = e.reduce((a, b) => a + b, 0);
      for (let i = 0; i < hd; i++) ref[q + i] = e.reduce((a, w, j) => a + (w / sum) * vh[(j * Hk + kvh) * hd + i]!, 0);
    }
    expect(relErr(out, ref)).toBeLessThan(1e-5);
    expect(() => pagedAttention(dev, tensor(dev, 'f32', [T, 3, hd]), cache, seqs)).toThrow(/3 query heads are not a multiple of the cache's 2 KV heads/);
  });

  it('sample (greedy rows are the argmax) and accept (greedy and rejection sampling)', async () => {
    const V = 50;
    const logits = new Float32Array(2 * V).map((_, i) => Math.sin(i * 1.7));
    const { tokens, probs } = sample(dev, tensor(dev, 'f32', [2, V], logits), [{ temperature: 0, seed: 1, position: 0 }, { temperature: 1, seed: 9, position: 3 }]);
    const t = await tokens.read();
    expect(t[0]).toBe(logits.subarray(0, V).indexOf(Math.max(...logits.subarray(0, V))));
    expect(t[1]).toBeLessThan(V);
    expect(probs.shape).toEqual([2, V]);

    // Target scores whose argmax is token 7 everywhere: drafts [7, 7, 3] → 2 accepted, then 7.
    const scores = Array.from({ length: 4 * V }, (_, i) => (i % V === 7 ? 1 : 0));
    const g = acceptGreedy(dev, [{ draftTokens: [7, 7, 3], seed: 1, position: 0 }], tensor(dev, 'f32', [1, 4, V], scores));
    expect(Array.from(await g.accepted.read())).toEqual([2]);
    expect(Array.from(await g.tokens.read()).slice(0, 3)).toEqual([7, 7, 7]);

    // Draft and target agree exactly: rejection sampling accepts every draft.
    const onehot = (tok: number) => Array.from({ length: V }, (_, i) => (i === tok ? 1 : 0));
    const draft = tensor(dev, 'f32', [1, 2, V], [...onehot(4), ...onehot(5)]);
    const target = tensor(dev, 'f32', [1, 3, V], [...onehot(4), ...onehot(5), ...onehot(6)]);
    const a = accept(dev, [{ draftTokens: [4, 5], seed: 3, position: 10 }], draft, target);
    expect(Array.from(await a.accepted.read())).toEqual([2]);
    expect(Array.from(await a.tokens.read())).toEqual([4, 5, 6]);
  });
});
