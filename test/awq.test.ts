// AWQ: calibration statistics, the scale and clipping searches, folding, and the quantize() call.
// Searches run on small random problems (seeds printed); brown-draft is quantized once with a
// small calibration set for the end-to-end checks.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel } from '../src/io/index.js';
import { encodeSafetensors, type MemoryTensor } from '../src/io/safetensors.js';
import { loadAwqLinear } from '../src/io/awq.js';
import { readFloat16Bits } from '../src/io/safetensors.js';
import { f32ArrayToF16 } from '../src/quant/f16.js';
import { loadModel } from '../src/llm.js';
import { ReferenceModel, loadReferenceWeights } from '../src/model/reference.js';
import { layerLinears } from '../src/model/spec.js';
import { foldScales, oTie, readLayer } from '../src/quant/awqLayer.js';
import { type HalfWeight, pseudoQuantizeRow, scaledLoss, searchClip, searchScales } from '../src/quant/awqSearch.js';
import { accumulate, finishGroupStats, newGroupStats, type GroupStats } from '../src/quant/calibrate.js';
import { h } from '../src/quant/rtn.js';
import { quantize, type QuantizeModelResult } from '../src/quant/quantize.js';
import { parseArgs } from '../src/util/args.js';
import { quantizeCommand } from '../src/quant/quantize.js';
import { freshSeed, randomF32, relErr, rng } from './util.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const DRAFT = path.join(ROOT, 'models/brown-draft');
const CALIB = path.resolve(ROOT, '../shared/data/brown-calib.txt');
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-awq-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const tmp = (name: string) => path.join(tmpRoot, name);

/** Random inputs X [T, K] and their statistics. */
function statsOf(x: Float32Array, T: number, K: number): GroupStats {
  const st = newGroupStats(K);
  accumulate(st, x, T);
  return finishGroupStats(st);
}

function halfWeight(N: number, K: number, r: () => number, spread = 0.1): HalfWeight {
  return { w: randomF32(N * K, r, -spread, spread).map(h), N, K };
}

describe('calibration statistics and the search loss', () => {
  it('the Gram matrix and |x| sums equal direct sums; the loss equals ‖X·ΔW‖² / (T·N) computed on X', () => {
    const seed = freshSeed('awq gram');
    const r = rng(seed);
    const [T, K, N, g] = [37, 64, 16, 32];
    const x = randomF32(T * K, r, -2, 2);
    const st = statsOf(x, T, K);
    for (const [i, j] of [[0, 0], [3, 60], [60, 3], [63, 63]] as const) {
      let s = 0;
      for (let t = 0; t < T; t++) s += x[t * K + i]! * x[t * K + j]!;
      expect(st.gram[i * K + j]).toBeCloseTo(s, 9);
    }
    expect(st.absSum[5]).toBeCloseTo(Array.from({ length: T }, (_, t) => Math.abs(x[t * K + 5]!)).reduce((a, b) => a + b), 9);
    const W = halfWeight(N, K, r);
    const s = randomF32(K, r, 0.5, 2);
    // Direct: dequantize the scaled weights, scale back, and run X through the difference.
    const dq = new Float64Array(K), codes = new Uint8Array(g);
    let direct = 0;
    for (let n = 0; n < N; n++) {
      const row = Float32Array.from({ length: K }, (_, k) => h(W.w[n * K + k]! * s[k]!));
      pseudoQuantizeRow(row, 0, K, g, dq, codes);
      for (let t = 0; t < T; t++) {
        let e = 0;
        for (let k = 0; k < K; k++) e += x[t * K + k]! * (h(dq[k]! / s[k]!) - W.w[n * K + k]!);
        direct += e * e;
      }
    }
    expect(scaledLoss([W], st, s, g)).toBeCloseTo(direct / (T * N), 10);
  });
});

describe('AWQ scale search', () => {
  it("uniform activations: the paper's scales pick α = 0 (every α gives s = 1, plain RTN)", () => {
    const r = rng(freshSeed('awq uniform'));
    const [T, K, N, g] = [64, 64, 32, 32];
    // Every channel has the same |x| on average: x = ±1 with random signs.
    const x = Float32Array.from({ length: T * K }, () => (r() < 0.5 ? -1 : 1));
    const res = searchScales([halfWeight(N, K, r)], statsOf(x, T, K), { groupSize: g, duo: false });
    expect(res.alpha).toBe(0);
    expect(Array.from(res.scales).every((v) => v === 1)).toBe(true);
    expect(res.loss).toBe(res.unscaled);
  });

  it('one salient channel: both scalings pick α > 0, scale that channel up, and beat RTN', () => {
    const seed = freshSeed('awq salient');
    const r = rng(seed);
    const [T, K, N, g] = [128, 64, 48, 32];
    const x = randomF32(T * K, r, -1, 1);
    for (let t = 0; t < T; t++) x[t * K + 7] = x[t * K + 7]! * 40; // channel 7 carries large activations
    const W = halfWeight(N, K, r);
    const st = statsOf(x, T, K);
    for (const duo of [true, false]) {
      const res = searchScales([W], st, { groupSize: g, duo });
      console.log(`[awq] salient, duo=${duo}: α ${res.alpha}, loss ${res.loss.toExponential(3)} vs RTN ${res.unscaled.toExponential(3)} (seed ${seed})`);
      expect(res.alpha).toBeGreaterThan(0);
      const others = Array.from(res.scales).filter((_, k) => k !== 7);
      expect(res.scales[7]).toBeGreaterThan(Math.max(...others));
      expect(res.loss).toBeLessThan(res.unscaled * 0.9);
    }
  });

  it('tied channels (o_proj under GQA) share one scale', () => {
    const r = rng(freshSeed('awq tie'));
    const spec = { heads: 4, kvHeads: 2, headDim: 32 } as Parameters<typeof oTie>[0];
    const tie = oTie(spec);
    expect([tie[0], tie[32], tie[64], tie[96], tie[31], tie[95]]).toEqual([0, 0, 32, 32, 31, 63]);
    const [T, K, N] = [64, 128, 16];
    const x = randomF32(T * K, r);
    for (let t = 0; t < T; t++) x[t * K + 40] = x[t * K + 40]! * 30;
    const res = searchScales([halfWeight(N, K, r)], statsOf(x, T, K), { groupSize: 32, tie });
    for (let k = 0; k < K; k++) expect(res.scales[k]).toBe(res.classScales[tie[k]!]);
  });

  it('clipping never increases the per-group error and clamps only within the group range', () => {
    const r = rng(freshSeed('awq clip'));
    const [T, K, N, g] = [96, 64, 16, 32];
    const x = randomF32(T * K, r);
    const W = halfWeight(N, K, r);
    // Heavy tails so that shrinking the range pays off somewhere.
    for (let i = 0; i < 20; i++) W.w[Math.floor(r() * W.w.length)] = h((r() < 0.5 ? -1 : 1) * 0.8);
    const orig = W.w.slice();
    const res = searchClip(W, statsOf(x, T, K), g);
    expect(res.lossAfter).toBeLessThanOrEqual(res.lossBefore);
    expect(res.lossAfter).toBeLessThan(res.lossBefore); // the planted outliers get clipped
    for (let i = 0; i < W.w.length; i++) expect(Math.abs(W.w[i]!)).toBeLessThanOrEqual(Math.abs(orig[i]!));
  });
});

describe('scale folding', () => {
  it('leaves the FP function unchanged: brown-draft logits within 1e-5 before quantization', () => {
    const seed = freshSeed('awq fold');
    const r = rng(seed);
    const m = openModel(DRAFT);
    try {
      const { spec, weights: store } = m;
      const base = loadReferenceWeights(spec, store);
      const folded = loadReferenceWeights(spec, store);
      const tie = oTie(spec);
      for (let l = 0; l < spec.layers; l++) {
        const L = readLayer(spec, store, l, Math.fround);
        const kvDim = spec.kvHeads * spec.headDim;
        const oClass = randomF32(kvDim, r, 0.25, 4);
        foldScales(L, {
          qkv: randomF32(spec.hidden, r, 0.25, 4), o: Float32Array.from(tie, (c) => oClass[c]!), oClass,
          gateUp: randomF32(spec.hidden, r, 0.25, 4), down: randomF32(spec.ffn, r, 0.25, 4),
        }, Math.fround);
        Object.assign(folded.layers[l]!, {
          attnNorm: L.ln1, ffnNorm: L.ln2, q: L.q.w, k: L.k.w, v: L.v.w, o: L.o.w, gate: L.gate.w, up: L.up.w, down: L.down.w,
        });
        expect(relErr(folded.layers[l]!.v, base.layers[l]!.v)).toBeGreaterThan(0.1); // the weights did change
      }
      const ids = m.tokenizer!.encode('The jury said that the city had been given a new plan for the election.');
      const a = new ReferenceModel(spec, base), b = new ReferenceModel(spec, folded);
      const la = a.forward(ids, a.newCache(ids.length)), lb = b.forward(ids, b.newCache(ids.length));
      const V = spec.vocabSize;
      let worst = 0;
      for (let t = 0; t < ids.length; t++) worst = Math.max(worst, relErr(lb.subarray(t * V, (t + 1) * V), la.subarray(t * V, (t + 1) * V)));
      console.log(`[awq] folded vs original logits: worst row ${worst.toExponential(2)} (seed ${seed})`);
      expect(worst).toBeLessThan(1e-5);
    } finally {
      m.weights.close();
    }
  });
});

describe('quantize(): AWQ on brown-draft (8 × 64 calibration tokens, 4 points on the α grid)', () => {
  const OUT = tmp('draft-awq');
  let res: QuantizeModelResult;
  beforeAll(async () => {
    res = await quantize(DRAFT, { out: OUT, method: 'awq', groupSize: 64, samples: 8, seqLen: 64, calib: CALIB, device: 'cpu', grid: 4, keepTensors: true });
  }, 120_000);

  it("is the library's quantize()", async () => {
    expect((await import('../src/index.js')).quantize).toBe(quantize);
  });

  it('reports a search per layer that beats RTN on the calibration error', () => {
    expect(res.awq!.layers.length).toBe(2);
    for (const l of res.awq!.layers) for (const g of l.loss) expect(g.awq).toBeLessThanOrEqual(g.rtn * 1.0000001);
    expect(res.quantizedLinears).toBe(14);
  });

  it('export → load: the tensors read back bit-identical and the INT4 kernels match the float64 reference', async () => {
    const m = openModel(OUT);
    try {
      expect(m.spec.quantization?.groupSize).toBe(64);
      // Quantizing again gives the same file (deterministic), and every linear reads back as written.
      const again = tmp('draft-awq-again');
      await quantize(DRAFT, { out: again, method: 'awq', groupSize: 64, samples: 8, seqLen: 64, calib: CALIB, device: 'cpu', grid: 4 });
      expect(fs.readFileSync(path.join(again, 'model.safetensors')).equals(fs.readFileSync(path.join(OUT, 'model.safetensors')))).toBe(true);
      for (let l = 0; l < m.spec.layers; l++) {
        for (const lin of layerLinears(m.spec, l)) {
          const t = loadAwqLinear(m.weights, lin, 64), want = res.tensors!.linears.get(lin.name)!;
          for (const k of ['qweight', 'qzeros', 'scales'] as const) expect(Buffer.from(t[k].buffer, t[k].byteOffset, t[k].byteLength).equals(Buffer.from(want[k].buffer, want[k].byteOffset, want[k].byteLength)), `${lin.name}.${k}`).toBe(true);
        }
      }
      expect(res.tensors!.dense.size).toBe(2 * m.spec.layers); // the two norms of each layer (no v bias in Llama)
      for (const [name, v] of res.tensors!.dense) expect(Array.from(readFloat16Bits(m.weights, name)), name).toEqual(Array.from(f32ArrayToF16(v)));
      const ids = m.tokenizer!.encode('The jury said that the city had been given a new plan.');
      const ref = ReferenceModel.fromStore(m.spec, m.weights).forward(ids, ReferenceModel.fromStore(m.spec, m.weights).newCache(ids.length));
      const llm = await loadModel(OUT, { device: 'cpu' });
      try {
        expect(llm.weights.format).toBe('int4');
        const got = await llm.logits(ids);
        const V = m.spec.vocabSize;
        for (let t = 0; t < ids.length; t++) expect(relErr(got.subarray(t * V, (t + 1) * V), ref.subarray(t * V, (t + 1) * V))).toBeLessThan(1e-4);
      } finally {
        await llm.close();
      }
    } finally {
      m.weights.close();
    }
  }, 120_000);
});

describe('quantize(): bad input, refused before any calibration', () => {
  const run = (...argv: string[]) => quantizeCommand(parseArgs(argv, ['force', 'help', 'paper-scales', 'no-clip', 'module-loss']), undefined, () => {});

  it('empty, missing or too-short calibration text; a busy output directory; unknown method', async () => {
    const empty = tmp('empty.txt');
    fs.writeFileSync(empty, ' \n');
    const short = tmp('short.txt');
    fs.writeFileSync(short, 'The jury said that the city had been given a new plan.');
    await expect(run('--model', DRAFT, '--out', tmp('a'), '--calib', empty)).rejects.toThrow(/calibration file .*empty\.txt \(--calib\) is empty/);
    await expect(run('--model', DRAFT, '--out', tmp('b'), '--calib', tmp('nope.txt'))).rejects.toThrow(/nope\.txt \(--calib\) does not exist/);
    await expect(run('--model', DRAFT, '--out', tmp('c'), '--calib', short)).rejects.toThrow(/has \d+ tokens, fewer than --samples 64 × --seq-len 256 = 16384/);
    await expect(run('--model', DRAFT, '--out', tmp('c'), '--calib', short, '--samples', '0')).rejects.toThrow(/--samples 0 must be a positive integer/);
    const busy = tmp('busy');
    fs.mkdirSync(busy);
    fs.writeFileSync(path.join(busy, 'x'), '');
    const t0 = performance.now();
    await expect(run('--model', DRAFT, '--out', busy, '--calib', CALIB)).rejects.toThrow(/busy exists and is not empty \(1 entries\); pass --force/);
    expect(performance.now() - t0).toBeLessThan(2000); // before the calibration, not after it
    await expect(run('--model', DRAFT, '--out', tmp('d'), '--method', 'gptq')).rejects.toThrow(/method 'gptq' is not available \(--method: awq, rtn/);
    for (const d of ['a', 'b', 'c', 'd']) expect(fs.existsSync(tmp(d)), d).toBe(false);
  });

  it('a group size that does not divide a layer, and an unsupported architecture, name the field', async () => {
    const dir = tmp('syn');
    fs.mkdirSync(dir);
    const r = rng(freshSeed('awq syn'));
    const [H, F, V] = [64, 96, 32];
    const t = new Map<string, MemoryTensor>();
    const put = (n: string, shape: number[]) => t.set(n, { dtype: 'F32', shape, data: randomF32(shape.reduce((a, b) => a * b, 1), r, -0.2, 0.2) });
    put('model.embed_tokens.weight', [V, H]); put('model.norm.weight', [H]);
    put('model.layers.0.input_layernorm.weight', [H]); put('model.layers.0.post_attention_layernorm.weight', [H]);
    for (const [n, s] of [['self_attn.q_proj', [H, H]], ['self_attn.k_proj', [H, H]], ['self_attn.v_proj', [H, H]], ['self_attn.o_proj', [H, H]],
      ['mlp.gate_proj', [F, H]], ['mlp.up_proj', [F, H]], ['mlp.down_proj', [H, F]]] as const) put(`model.layers.0.${n}.weight`, [...s]);
    fs.writeFileSync(path.join(dir, 'model.safetensors'), encodeSafetensors(t));
    const cfg = {
      architectures: ['LlamaForCausalLM'], hidden_size: H, intermediate_size: F, num_hidden_layers: 1, num_attention_heads: 2,
      vocab_size: V, max_position_embeddings: 64, tie_word_embeddings: true,
    };
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    await expect(run('--model', dir, '--out', tmp('e'), '--group-size', '64', '--calib', CALIB)).rejects.toThrow(/group size 64 does not divide intermediate_size = 96/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, architectures: ['GPT2LMHeadModel'] }));
    await expect(run('--model', dir, '--out', tmp('f'), '--group-size', '32', '--calib', CALIB)).rejects.toThrow(/architectures' is \["GPT2LMHeadModel"\]; Kiln supports LlamaForCausalLM/);
    for (const d of ['e', 'f']) expect(fs.existsSync(tmp(d)), d).toBe(false);
  });
});

describe('eval compare: KL(reference ‖ model) and top-1 agreement', () => {
  it('a model against itself: KL 0, full agreement; RTN against f16: KL > 0', async () => {
    const { compareModels } = await import('../src/quant/compare.js');
    const f16 = await loadModel(DRAFT, { device: 'cpu' });
    const rtn = await loadModel(DRAFT, { device: f16.device, quant: 'int4-rtn', groupSize: 64 });
    try {
      const ids = f16.encode(fs.readFileSync(CALIB, 'utf8').slice(0, 2000));
      const self = await compareModels(f16, f16, ids, { window: 64, maxWindows: 2 });
      expect([self.kl, self.top1, self.predictions]).toEqual([0, 1, 128]);
      expect(self.pplModel).toBe(self.pplReference);
      const q = await compareModels(rtn, f16, ids, { window: 64, maxWindows: 2 });
      console.log(`[compare] RTN g64 vs f16 on 128 predictions: KL ${q.kl.toExponential(3)}, top-1 ${q.top1}`);
      expect(q.kl).toBeGreaterThan(0);
      expect(q.kl).toBeLessThan(0.1);
      expect(q.top1).toBeGreaterThan(0.8);
      expect(q.pplReference).toBeCloseTo(self.pplReference, 10);
    } finally {
      await rtn.close();
      await f16.close();
    }
  });
});
