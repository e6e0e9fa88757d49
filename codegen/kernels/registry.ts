// One declaration per op family: which kernel families make it up (FAMILIES, what `kiln codegen`
// writes), its sizes with their defaults (what `kiln profile` runs and `kiln tune` starts from),
// its default variant chooser, what tuning keys its cache by, and its tuning space where that is
// one list. `kiln codegen
// --kernel`, `kiln tune` and `kiln profile` all read this table; the host-side runners (src/ops/
// tune.ts, src/profile.ts) are keyed by its names and checked against it (test/registry.test.ts).
import type { Caps } from '../dsl/types.js';
import { defaultDenseChoice, type DenseWeightDtype } from './denseMatmul.js';
import type { DeviceClass } from './deviceProfile.js';
import { EMBEDDING_WORKGROUP_SIZES, embedding } from './embedding.js';
import { defaultInt4Choice } from './int4Matmul.js';
import { POINTWISE_WORKGROUP_SIZES, argmaxRows, siluMul } from './pointwise.js';
import { RMSNORM_WORKGROUP_SIZES, defaultRmsNormWorkgroup } from './rmsNorm.js';
import { ROPE_WORKGROUP_SIZES, rope } from './rope.js';
import { rejectionSampler } from './acceptance.js';
import { attentionConfig } from './pagedAttentionConfig.js';

export type Sizes = Readonly<Record<string, number | string>>;
/** What a default chooser may know about the device: its caps and profile (src/backend Device.profile). */
export interface ChooserHints { caps: Caps; parallelism?: number; deviceClass?: DeviceClass }

export interface OpFamily {
  about: string;
  /** Kernel families (codegen/kernels/index.ts FAMILIES) whose kernels the op launches. */
  kernels: readonly string[];
  /** The op's sizes with defaults (Llama-3-8B where it applies). */
  sizes: Sizes;
  /** The default variant at these sizes on this device: what the op runs without a tuned choice. */
  defaults: (sizes: Sizes, h: ChooserHints) => Record<string, unknown>;
  /** `kiln tune`: sizes it must be given, the sizes its cache is keyed by (never M: batch
   *  invariance), sizes that differ for tuning (the row counts to time), and the workgroup sizes
   *  it races where the space is one list. */
  tune?: { required: readonly string[]; keyFields: readonly string[]; sizes?: Sizes; workgroupSizes?: readonly number[] };
}

const DECLARED = {
  int4Linear: {
    about: 'INT4 AWQ linear (W4A16), M rows × K → N; default Llama-3-8B 4096×4096 at M = 1 (decode: tensor-core MMA where the device has tensor cores, else the GEMV)',
    kernels: ['linearGemv', 'linearGemm', 'linearFinish', 'linearMma'],
    sizes: { M: 1, K: 4096, N: 4096, groupSize: 128 },
    defaults: (s, h) => ({ ...defaultInt4Choice(n(s.K), n(s.N), n(s.groupSize), h.caps, h.parallelism, h.deviceClass) }),
    tune: { required: ['K', 'N'], keyFields: ['K', 'N', 'groupSize'], sizes: { M: '1,4,16,512' } },
  },
  denseLinear: {
    about: 'dense f16-weight linear, M rows × K → N; default 4096×4096 at M = 1 (tensor-core MMA at M ≤ 64 where the device has tensor cores)',
    kernels: ['linearGemv', 'linearGemm', 'linearFinish', 'linearMma'],
    sizes: { M: 1, K: 4096, N: 4096, weight: 'f16' },
    defaults: (s, h) => ({ ...defaultDenseChoice(n(s.K), n(s.N), s.weight as DenseWeightDtype, h.caps, h.parallelism) }),
    tune: { required: ['K', 'N'], keyFields: ['K', 'N', 'weight'], sizes: { M: '1,4,16,512' } },
  },
  rmsNorm: {
    about: 'RMSNorm of M rows of D (fused = 1: residual add first); default M = 1, D = 4096',
    kernels: ['rmsNorm'],
    sizes: { M: 1, D: 4096, fused: 0 },
    defaults: (s, h) => ({ workgroupSize: defaultRmsNormWorkgroup(n(s.D), h.caps) }),
    tune: { required: ['D'], keyFields: ['D', 'fused'], sizes: { M: 16 }, workgroupSizes: RMSNORM_WORKGROUP_SIZES },
  },
  rope: {
    about: 'RoPE on T tokens of Hq query and Hk KV heads of dim D',
    kernels: ['rope'],
    sizes: { T: 16, Hq: 32, Hk: 8, D: 128, layout: 'halves' },
    defaults: (s, h) => ({ workgroupSize: rope({ layout: s.layout as 'halves', caps: h.caps }).ir.workgroupSize[0] }),
    tune: { required: ['Hq', 'Hk', 'D'], keyFields: ['Hq', 'Hk', 'D', 'layout'], workgroupSizes: ROPE_WORKGROUP_SIZES },
  },
  embedding: {
    about: 'embedding gather of T tokens from a V × D table',
    kernels: ['embedding'],
    sizes: { T: 16, V: 32000, D: 4096, table: 'f16' },
    defaults: (s, h) => ({ workgroupSize: embedding({ table: s.table as 'f16', caps: h.caps }).ir.workgroupSize[0] }),
    tune: { required: ['D'], keyFields: ['D', 'table'], workgroupSizes: EMBEDDING_WORKGROUP_SIZES },
  },
  siluMul: {
    about: 'SiLU(gate) · up over n elements',
    kernels: ['pointwise'],
    sizes: { n: 14336 },
    defaults: (_s, h) => ({ workgroupSize: siluMul({ caps: h.caps }).ir.workgroupSize[0] }),
    tune: { required: ['n'], keyFields: ['n'], workgroupSizes: POINTWISE_WORKGROUP_SIZES },
  },
  argmaxRows: {
    about: 'argmax of M rows of N',
    kernels: ['pointwise'],
    sizes: { M: 8, N: 128256 },
    defaults: (_s, h) => ({ workgroupSize: argmaxRows({ caps: h.caps }).ir.workgroupSize[0] }),
    tune: { required: ['N'], keyFields: ['N'], workgroupSizes: [64, 128, 256, 512, 1024] },
  },
  pagedAttention: {
    about: 'paged attention, f16 KV cache in blocks of 16: B sequences × Q new tokens (1: decode; more: a prefill chunk) after C cached positions, H query / KV heads of dim D; default Llama-3-8B heads (32 / 8, D = 128), B = 1, Q = 1, C = 4096',
    kernels: ['pagedAttention'],
    sizes: { B: 1, Q: 1, C: 4096, H: 32, KV: 8, D: 128 },
    // The path (MMA or scalar) is the device's; chunk lengths follow each row's context (src/ops/attention.ts).
    defaults: (s, h) => ({ mma: attentionConfig({ headDim: n(s.D), groupSize: n(s.H) / n(s.KV), kvDtype: 'f16', caps: h.caps }).mma }),
  },
  rejectionSampler: {
    about: 'speculative acceptance (rejection sampling): B sequences × K drafts over a vocabulary of V; default B = 64, K = 5, V = 128256',
    kernels: ['acceptance'],
    sizes: { B: 64, K: 5, V: 128256 },
    defaults: (_s, h) => { const g = rejectionSampler({ caps: h.caps }).segments; return { workgroupSize: g.wg, items: g.items }; },
  },
} as const satisfies Record<string, OpFamily>;

/** A numeric size (the registry's sizes are numbers except the few that name a dtype or layout). */
function n(v: number | string | undefined): number { return Number(v); }

export type OpFamilyName = keyof typeof DECLARED;
export const OP_FAMILIES: Readonly<Record<OpFamilyName, OpFamily>> = DECLARED;

/** The op family by name, or an error listing them. */
export function opFamily(name: string, what: string): OpFamily {
  const f = (OP_FAMILIES as Readonly<Record<string, OpFamily | undefined>>)[name];
  if (!f) throw new Error(`${what}: unknown op family '${name}' (one of ${Object.keys(OP_FAMILIES).join(', ')})`);
  return f;
}

/** The sizes tuning starts from: the op's defaults with the tuning ones over them, less those tuning must be given. */
export function tuneSizes(f: OpFamily): Sizes {
  const s: Record<string, number | string> = { ...f.sizes, ...f.tune?.sizes };
  for (const r of f.tune?.required ?? []) delete s[r];
  return s;
}
