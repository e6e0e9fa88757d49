// Registry entries for kernel library I (linear layers and the transformer's pointwise kernels):
// the default variants `kiln codegen` writes, and build(params) for custom ones. The linear
// layers are ops of several kernels; their kernels register here by role (GEMV, GEMM, finish),
// each named by its weight source ('int4g128', 'f16', 'f32', ...).
import type { Caps } from '../dsl/types.js';
import { defaultDenseChoice, denseSource } from './denseMatmul.js';
import { embedding } from './embedding.js';
import type { KernelFamily, KernelVariant } from './index.js';
import { defaultInt4Choice, int4Source, INT4_GROUP_SIZES } from './int4Matmul.js';
import {
  type Epilogue, fullEpilogue, type GemvVariant, gemvKernel, type LinearEpilogue, linearFinishKernel, type WeightSource,
} from './linearCommon.js';
import { type GemmVariant, gemmKernel } from './linearGemm.js';
import { GEMV_MAX_ROWS } from './linearOp.js';
import { argmaxRows, f16ToF32, f32ToF16, residualAdd, siluMul } from './pointwise.js';
import { rmsNorm } from './rmsNorm.js';
import { ropeQkv } from './ropeQkv.js';
import { rope } from './rope.js';
import { num } from './params.js';

/** 'int4g128' → the INT4 source with g = 128; 'f32' / 'f16' → dense. */
export function sourceFromTag(tag: string): WeightSource {
  if (tag === 'f32' || tag === 'f16') return denseSource(tag);
  const m = /^int4g(\d+)$/.exec(tag);
  const g = m ? Number(m[1]) : NaN;
  if (!INT4_GROUP_SIZES.includes(g)) throw new Error(`weight source '${tag}' is not f32, f16 or int4g{${INT4_GROUP_SIZES.join(',')}}`);
  return int4Source(g);
}

/** The default choice for a source at a representative shape (Llama-3-8B's 4096 × 4096). */
function defaults(tag: string, caps: Caps) {
  const Nw = 4096, K = 4096;
  return tag.startsWith('int4') ? defaultInt4Choice(K, Nw, Number(tag.slice(5)), caps) : defaultDenseChoice(K, Nw, tag as 'f32' | 'f16', caps);
}

/** The epilogues a Llama-family forward uses: qkv (+bias for Qwen2), o/down (+residual), gate/up. */
const DEFAULT_EPILOGUES: Epilogue[] = [{}, { bias: true }, { residual: true }, { gateUp: true }].map((e) => fullEpilogue(e));
/** Sources with a full default set; the other group sizes get the decode GEMV and a plain GEMM. */
const MAIN_SOURCES = ['int4g128', 'f16', 'f32'];
const EXTRA_SOURCES = ['int4g64', 'int4g32'];

function epilogueOf(p: Record<string, unknown>): Epilogue {
  return fullEpilogue({ bias: !!p.bias, residual: !!p.residual, gateUp: !!p.gateUp, out: (p.out as LinearEpilogue['out']) ?? 'f32' });
}
const label = (k: KernelVariant['kernel']): KernelVariant => ({ label: k.ir.name, kernel: k });

export const TRANSFORMER_FAMILIES: KernelFamily[] = [
  {
    family: 'linearGemv',
    variants: (caps) => [
      ...MAIN_SOURCES.flatMap((tag) => Array.from({ length: GEMV_MAX_ROWS }, (_, i) =>
        label(gemvKernel(sourceFromTag(tag), i + 1, defaults(tag, caps).gemv[i]!, caps)))),
      ...EXTRA_SOURCES.flatMap((tag) => [1, 4].map((rows) => label(gemvKernel(sourceFromTag(tag), rows, defaults(tag, caps).gemv[rows - 1]!, caps)))),
    ],
    build: (p, caps) => {
      const tag = String(p.source ?? 'int4g128');
      const vec = num(p, 'vec', 1) as GemvVariant['vec'];
      const v: GemvVariant = { workgroupSize: num(p, 'workgroupSize', 64), units: num(p, 'units', 1), ...(vec !== 1 ? { vec } : {}) };
      return gemvKernel(sourceFromTag(tag), num(p, 'rows', 1), v, caps);
    },
  },
  {
    family: 'linearGemm',
    variants: (caps) => [
      ...MAIN_SOURCES.flatMap((tag) => DEFAULT_EPILOGUES.map((e) => label(gemmKernel(sourceFromTag(tag), e, defaults(tag, caps).gemm, caps)))),
      ...EXTRA_SOURCES.map((tag) => label(gemmKernel(sourceFromTag(tag), fullEpilogue({}), defaults(tag, caps).gemm, caps))),
    ],
    build: (p, caps) => {
      const tag = String(p.source ?? 'int4g128');
      const d = defaults(tag, caps).gemm;
      const v: GemmVariant = {
        tileM: num(p, 'tileM', d.tileM), tileN: num(p, 'tileN', d.tileN), tileK: num(p, 'tileK', d.tileK),
        blockM: num(p, 'blockM', d.blockM), blockN: num(p, 'blockN', d.blockN),
      };
      return gemmKernel(sourceFromTag(tag), epilogueOf(p), v, caps);
    },
  },
  {
    family: 'linearFinish',
    variants: (caps) => [...DEFAULT_EPILOGUES, fullEpilogue({ out: 'f16' })].map((e) => label(linearFinishKernel({ epilogue: e, caps }))),
    build: (p, caps) => linearFinishKernel({ epilogue: epilogueOf(p), workgroupSize: num(p, 'workgroupSize', 64), caps }),
  },
  {
    family: 'rmsNorm',
    variants: (caps) => [false, true].map((fused) => label(rmsNorm({ fused, caps }))),
    build: (p, caps) => rmsNorm({ fused: !!p.fused, workgroupSize: num(p, 'workgroupSize', 128), caps }),
  },
  {
    family: 'rope',
    variants: (caps) => (['halves', 'interleaved'] as const).flatMap((layout) => [true, false].map((inPlace) => label(rope({ layout, inPlace, caps })))),
    build: (p, caps) => rope({ layout: (p.layout as 'halves' | 'interleaved') ?? 'halves', inPlace: p.inPlace !== false, workgroupSize: num(p, 'workgroupSize', 64), caps }),
  },
  {
    family: 'ropeQkv',
    variants: (caps) => (['halves', 'interleaved'] as const).map((layout) => label(ropeQkv({ layout, caps }))),
    build: (p, caps) => ropeQkv({ layout: (p.layout as 'halves' | 'interleaved') ?? 'halves', workgroupSize: num(p, 'workgroupSize', 64), caps }),
  },
  {
    family: 'embedding',
    variants: (caps) => (['f32', 'f16'] as const).map((table) => label(embedding({ table, caps }))),
    build: (p, caps) => embedding({ table: (p.table as 'f32' | 'f16') ?? 'f16', workgroupSize: num(p, 'workgroupSize', 64), caps }),
  },
  {
    family: 'pointwise',
    variants: (caps) => [
      siluMul({ caps }), residualAdd({ caps }), residualAdd({ inPlace: true, caps }), argmaxRows({ caps }), f32ToF16({ caps }), f16ToF32({ caps }),
    ].map(label),
  },
];
