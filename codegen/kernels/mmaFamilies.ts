// Registry entry for the tensor-core MMA linears (int4Mma.ts, mmaMatmul.ts's denseMma): what CUDA
// runs for every linear op at M ≤ 64. `kiln codegen` writes the variants a Llama-family forward
// launches at Llama-3-8B's shapes (K = 4096, group size 128), chosen by the runtime's own
// chooser (mmaKernelFor: split-K, vec4 staging, steps): the plain epilogues, and the fused QKV
// (norm, RoPE + KV append, with and without the layer-0 embedding gather), gate/up (norm) and
// lm_head (norm). Devices without tensor cores have none (WebGPU takes the GEMV / GEMM; the MMA
// kernels run there only when a test forces them), so shaders/ gets no MMA files.
import type { Caps } from '../dsl/types.js';
import { denseSource } from './denseMatmul.js';
import type { KernelFamily, KernelVariant } from './index.js';
import { int4MmaKernel, INT4_MMA_SPLITS } from './int4Mma.js';
import { int4Source } from './int4Matmul.js';
import { type Epilogue, fullEpilogue, type LinearEpilogue } from './linearCommon.js';
import type { RopeAppendEpilogue } from './linearFusion.js';
import type { MmaFusion } from './mmaFusion.js';
import { mmaKernelFor } from './mmaLinear.js';
import { num } from './params.js';

const K = 4096, N = 4096, QKV_N = 6144, NORM = { workgroupSize: 256 };
const ROPE: RopeAppendEpilogue = { layout: 'halves', heads: 32, kvHeads: 8, headDim: 128, kvDtype: 'f16', blockSize: 16 };
const PLAIN: Epilogue[] = [{}, { bias: true }, { residual: true }, { gateUp: true }].map((e) => fullEpilogue(e));
/** The fused launches LlamaForward takes on CUDA: [epilogue, fusion, N]. */
const FUSED: [Epilogue, MmaFusion, number][] = [
  [fullEpilogue({}), { norm: NORM, rope: ROPE }, QKV_N],
  [fullEpilogue({}), { gather: 'f16', norm: NORM, rope: ROPE }, QKV_N],
  [fullEpilogue({ gateUp: true }), { norm: NORM }, N],
];

const label = (k: KernelVariant['kernel']): KernelVariant => ({ label: k.ir.name, kernel: k });

function variants(caps: Caps): KernelVariant[] {
  if (!caps.tensorCores) return [];
  const int4 = int4Source(128), f16 = denseSource('f16');
  return [
    ...[int4, f16].flatMap((src) => [
      ...PLAIN.map((e) => mmaKernelFor(src, K, N, e, caps)),
      ...FUSED.map(([e, fusion, n]) => mmaKernelFor(src, K, n, e, caps, fusion)),
    ]),
    mmaKernelFor(f16, K, 128256, fullEpilogue({}), caps, { norm: NORM }), // lm_head
  ].map(label);
}

export const MMA_FAMILIES: KernelFamily[] = [{
  family: 'linearMma',
  variants,
  // INT4 only: groupSize, split, vec4, steps, bias / residual / gateUp / out.
  build: (p, caps) => {
    const split = num(p, 'split', 1);
    if (!INT4_MMA_SPLITS.includes(split)) throw new Error(`linearMma: split ${split} is not one of ${INT4_MMA_SPLITS.join(', ')}`);
    const e = fullEpilogue({ bias: !!p.bias, residual: !!p.residual, gateUp: !!p.gateUp, out: (p.out as LinearEpilogue['out']) ?? 'f32' });
    return int4MmaKernel({
      groupSize: num(p, 'groupSize', 128), split, epilogue: e, vec4: !!p.vec4, caps, ...(p.steps !== undefined ? { steps: num(p, 'steps', 4) } : {}),
    });
  },
}];
