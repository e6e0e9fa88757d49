// Launches per decode token of Llama-3-8B with INT4 (g = 128) weights, counted by recording the
// step (GraphRecordingDevice over a NullDevice: launches validated and dropped, no weights in
// memory). Goals (issues 13 and 14): ≤ 5 launches per layer and ≤ 160 per token where the device
// has a device-scope fence (CUDA; the cpu device likewise); without one (WebGPU) the split-K
// finishes and the attention merge stay separate launches.
// A layer has five points where every workgroup needs what all the others wrote (QKV → attention
// → o → gate/up → down → next QKV); with no workgroup ever waiting on another (DESIGN.md), each is
// a launch boundary. The embedding rides in layer 0's QKV launch; the classifier is one more:
// 5 · 32 + 1 = 161, one over issue 14's 160 (see bench/notes/fusion.md for what would remove it).
import { describe, expect, it } from 'vitest';
import { denseLinear } from '../codegen/kernels/denseMatmul.js';
import { int4Linear } from '../codegen/kernels/int4Matmul.js';
import { BASELINE_CAPS, CUDA_CAPS } from '../codegen/dsl/types.js';
import type { Device } from '../src/backend/device.js';
import { parseHfConfig } from '../src/io/hfConfig.js';
import { LlamaForward } from '../src/model/forward.js';
import type { DeviceLinear, ModelWeights } from '../src/model/weights.js';
import { linearHints } from '../src/ops/linear.js';
import { GraphRecordingDevice } from './fixtures/graphRecorder.js';
import { NullDevice } from './fixtures/nullDevice.js';

/** Llama-3-8B's config.json (the fields the spec reads). */
const LLAMA3_8B = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 4096, intermediate_size: 14336,
  num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256,
  max_position_embeddings: 8192, rms_norm_eps: 1e-5, rope_theta: 500000, hidden_act: 'silu',
  tie_word_embeddings: false, bos_token_id: 128000, eos_token_id: 128001,
};

/** INT4 weights as the loader lays them out (shapes only: the device holds no memory). */
function int4Weights(dev: Device, spec: ReturnType<typeof parseHfConfig>, g: number): ModelWeights {
  const hints = linearHints(dev);
  const D = spec.hidden, hd = spec.headDim;
  const int4 = (K: number, N: number, e: { residual?: boolean; gateUp?: boolean }, label: string): DeviceLinear => {
    const Nw = e.gateUp ? 2 * N : N;
    return {
      op: int4Linear({ K, N, groupSize: g, ...hints, ...e }),
      weights: {
        qweight: dev.alloc('u32', (K * Nw) / 8, `${label}.qweight`),
        qzeros: dev.alloc('u32', ((K / g) * Nw) / 8, `${label}.qzeros`),
        scales: dev.alloc('u32', ((K / g) * Nw) / 2, `${label}.scales`),
      },
    };
  };
  const layers = Array.from({ length: spec.layers }, (_, l) => ({
    attnNorm: dev.alloc('f32', D, `L${l}.attnNorm`),
    ffnNorm: dev.alloc('f32', D, `L${l}.ffnNorm`),
    qkv: int4(D, (spec.heads + 2 * spec.kvHeads) * hd, {}, `L${l}.qkv`),
    o: int4(spec.heads * hd, D, { residual: true }, `L${l}.o`),
    gateUp: int4(D, spec.ffn, { gateUp: true }, `L${l}.gateUp`),
    down: int4(spec.ffn, D, { residual: true }, `L${l}.down`),
  }));
  return {
    format: 'int4', groupSize: g,
    embed: { dtype: 'f16', table: dev.alloc('u32', (spec.vocabSize * D) / 2, 'embed') },
    layers,
    finalNorm: dev.alloc('f32', D, 'finalNorm'),
    lmHead: { op: denseLinear({ K: D, N: spec.vocabSize, weight: 'f16', ...hints }), weights: { w: dev.alloc('u32', (D * spec.vocabSize) / 2, 'lmHead.w') } },
    bytesPerToken: 0,
    buffers: [],
  };
}

/** Kernel names of one decode step of `n` sequences, each `ctxLen` positions into its context. */
function decodeStepLaunches(caps: typeof CUDA_CAPS, n: number, ctxLen: number): string[] {
  const dev = new GraphRecordingDevice(new NullDevice(caps));
  const spec = parseHfConfig(LLAMA3_8B, { source: 'Llama-3-8B config' });
  const fw = new LlamaForward(dev, spec, int4Weights(dev, spec, 128), { numBlocks: 1024, maxSeqs: 8, maxBatchTokens: 64, kvDtype: 'f16', decodeGraphs: false });
  const blocks = Math.ceil((ctxLen + 1) / fw.blockSize);
  fw.decodeStep(Array.from({ length: n }, (_, i) => ({
    tokens: [1], ctxLen, blockTable: Array.from({ length: blocks }, (_, b) => i * blocks + b), slots: [i * blocks * fw.blockSize + ctxLen], logits: 'last' as const,
  })));
  return dev.log.map((l) => l.kernel.ir.name);
}

describe('Llama-3-8B INT4 decode launches (recorded, not run)', () => {
  const layers = LLAMA3_8B.num_hidden_layers;
  for (const [n, ctxLen] of [[1, 4000], [8, 100]] as const) {
    it(`with a device fence (CUDA caps): 5 per layer, 5 · 32 + 1 per token, ${n} sequence${n > 1 ? 's' : ''} at context ${ctxLen}`, () => {
      const names = decodeStepLaunches({ ...CUDA_CAPS }, n, ctxLen);
      console.log(`Llama-3-8B INT4 decode step (${n} × context ${ctxLen}), CUDA caps: ${names.length} launches`);
      // Everything but the classifier (the dense f16 linear, on the MMA path) belongs to a layer.
      expect(names.at(-1)).toMatch(/^denseMma_f16_.*_norm\d+$/);
      const inLayers = names.slice(0, -1);
      expect(inLayers.length / layers).toBeLessThanOrEqual(5);
      expect(names.length).toBeLessThanOrEqual(5 * layers + 1);
      // A layer, every linear on the tensor-core MMA path (tensorCores caps, M ≤ 64): QKV (embedding
      // in layer 0; norm, RoPE, KV append folded), attention (merge folded), o (residual), gate/up
      // (norm folded), down (residual).
      expect(names.slice(0, 5).map((x) => x.replace(/_.*/, ''))).toEqual(['int4Mma', 'attentionPartial', 'int4Mma', 'int4Mma', 'int4Mma']);
      expect(names[0]).toMatch(/^int4Mma_.*_embedf16_norm\d+_rope/);
      expect(names[3]).toMatch(/^int4Mma_.*_gateup_f32_norm\d+$/);
    });
  }
  it('without one (WebGPU): the finishes and the attention merge are launches of their own (RoPE and the append ride in QKV\'s), the norms still folded', () => {
    const names = decodeStepLaunches({ ...BASELINE_CAPS, maxStorageBuffers: 10, maxWorkgroupStorage: 49152, maxInvocationsPerWorkgroup: 1024 }, 1, 4000);
    console.log(`Llama-3-8B INT4 decode step (1 × context 4000), no device fence: ${names.length} launches`);
    expect(names.filter((x) => x.startsWith('rmsNorm') || x.startsWith('embedding'))).toEqual([]);
    expect(names.filter((x) => x.startsWith('linearFinish')).length).toBe(3 * layers + 1);
    expect(names.filter((x) => x.startsWith('ropeFinish')).length).toBe(layers);
    expect(names.filter((x) => x.startsWith('attentionMerge')).length).toBe(layers);
    expect(names.length).toBe(10 * layers + 2);
  });
});
