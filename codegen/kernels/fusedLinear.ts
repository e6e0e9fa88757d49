// A linear layer together with what surrounds it in a transformer block, as one op: an optional
// RMSNorm of x before it, and for the QKV projection RoPE and the KV-cache append after it. The
// op plans as few launches as the device and the row count allow, always with the same bits as
// the separate launches (rmsNorm → linear → ropeQkv → kvAppend):
//   M ≤ GEMV_MAX_ROWS with a device-scope fence (CUDA, cpu): one launch, the GEMV with the norm
//     as its prologue and the split-K finish, RoPE and the append folded into its last arrivals;
//   M ≤ GEMV_MAX_ROWS without (WebGPU): the GEMV with the norm prologue, then the finish kernel
//     (for QKV: the finish with RoPE and the append, ropeFinish.ts);
//   larger M: rmsNorm, the tiled GEMM (+ ropeQkv and kvAppend).
// Where the linear takes the tensor-core MMA path (M ≤ linear.mmaRows, int4Mma.ts), the MMA kernel
// takes the norm, the gather and (with a fence) RoPE and the append (mmaFusion.ts): one launch;
// without a fence, then ropeQkv and kvAppend. Its split-K stays inside a workgroup: no finish.
import type { BindingSpec, Op, Plan, PlanStep } from '../dsl/index.js';
import { op, storage } from '../dsl/index.js';
import { embedding } from './embedding.js';
import { kvAppendKernel } from './kvAppend.js';
import { capsKey, epilogueBindings, gemvKernel, linearFinishKernel, memoKernel, segmentCount } from './linearCommon.js';
import { fusionBindings, type GemvFusion, type RopeAppendEpilogue } from './linearFusion.js';
import { GEMV_MAX_ROWS, gemmKernelFor, type LinearOp } from './linearOp.js';
import { mmaKernelFor } from './mmaLinear.js';
import { type MmaFusion, mmaHeadTickets } from './mmaFusion.js';
import { rmsNorm } from './rmsNorm.js';
import { ropeFinishKernel } from './ropeFinish.js';
import { ropeQkv } from './ropeQkv.js';

export type { RopeAppendEpilogue } from './linearFusion.js';

export interface FusedLinearSpec {
  linear: LinearOp;
  /** RMSNorm of x (weights bound as `normW` [K]) in the norm kernel's order for this workgroup size. */
  norm?: { workgroupSize: number; eps: number };
  /** QKV projection: rotate q and k by `pos`, write q [M, heads·headDim] and append K/V at `slots`. */
  rope?: RopeAppendEpilogue;
  /**
   * Layer 0: x is the embedding of token `ids` from table `embed` (f32 [V, K] or f16 pairs
   * [V, K/2]); the op writes those rows to x (the residual stream) as the embedding kernel would.
   */
  gather?: { table: 'f32' | 'f16'; vocab: number; workgroupSize?: number };
}

/**
 * Sizes: M rows; with rope also maxPos (the rope table's positions) and numBlocks (the cache's).
 * maxRows (optional): the most rows any call will bring; scratch is sized for it at once, so it is
 * never regrown (a captured graph keeps its addresses).
 */
export type FusedLinearSizes = Record<string, number> & { M: number };

export interface FusedLinearOp extends Op<Record<string, BindingSpec>, FusedLinearSizes> {
  readonly linear: LinearOp;
  readonly spec: FusedLinearSpec;
  plan(sizes: FusedLinearSizes): Plan;
  /** Whether M rows run as one launch here. */
  oneLaunch(M: number): boolean;
}

function checkRope(name: string, l: LinearOp, r: RopeAppendEpilogue): void {
  const e = l.epilogue;
  if (e.gateUp || e.residual || e.out !== 'f32') throw new Error(`${name}: the RoPE epilogue needs a plain f32 QKV projection (no gateUp, residual or f16 output)`);
  if (l.N !== (r.heads + 2 * r.kvHeads) * r.headDim) {
    throw new Error(`${name}: N = ${l.N} is not (heads + 2·kvHeads)·headDim = (${r.heads} + 2·${r.kvHeads})·${r.headDim}`);
  }
  if (r.headDim % 2 || r.headDim < 2) throw new Error(`${name}: headDim ${r.headDim} must be even`);
}

export function fusedLinear(spec: FusedLinearSpec): FusedLinearOp {
  const l = spec.linear, e = l.epilogue, src = l.source;
  const name = `${l.name}${spec.gather ? '_embed' : ''}${spec.norm ? `_norm${spec.norm.workgroupSize}` : ''}${spec.rope ? '_rope' : ''}`;
  const r = spec.rope;
  if (r) checkRope(name, l, r);
  const { K, N, Nw } = l;
  const S = segmentCount(K, l.choice.segLen);
  const weightNames = Object.keys(src.bindings);
  const kvT = r?.kvDtype === 'f16' ? 'u32' : 'f32';
  const g = spec.gather;
  // Op-level bindings carry no shapes: the sizes (M, …) do not name the kernels' uniforms (K, Nw);
  // every launch checks its own shapes, and runFusedLinear the linear's tensors.
  const shapeless = (b: Record<string, BindingSpec>) =>
    Object.fromEntries(Object.entries(b).map(([n, s]) => [n, storage(s.t, s.access, s.atomic ? { atomic: true } : {})]));
  const bindings: Record<string, BindingSpec> = {
    x: storage('f32', g ? 'read_write' : 'read'),
    ...(g ? { ids: storage('u32', 'read'), embed: storage(g.table === 'f16' ? 'u32' : 'f32', 'read') } : {}),
    ...shapeless(src.bindings),
    ...(spec.norm ? { normW: storage('f32', 'read') } : {}),
    ...(e.bias ? { bias: storage('f32', 'read') } : {}),
    ...(e.residual ? { residual: storage('f32', 'read') } : {}),
    ...(r
      ? {
          pos: storage('u32', 'read'), table: storage('f32', 'read'), slots: storage('i32', 'read'),
          q: storage('f32', 'read_write'), kCache: storage(kvT, 'read_write'), vCache: storage(kvT, 'read_write'),
        }
      : shapeless({ out: epilogueBindings(e).out! })),
  };
  const same = (names: string[]) => Object.fromEntries(names.map((n) => [n, n]));
  const epiNames = [...(e.bias ? ['bias'] : []), ...(e.residual ? ['residual'] : [])];
  // Where the linear's own output goes: the op's out, or the QKV scratch RoPE reads.
  const outName = r ? 'qkv' : 'out';
  const caps_ = l.caps;

  const folds = (M: number): boolean => {
    if (M <= l.mmaRows) return !r || !!caps_.deviceFence;
    if (!caps_.deviceFence || M > GEMV_MAX_ROWS) return false;
    const v = l.choice.gemv[M - 1]!;
    const B = v.units * src.cols;
    if (e.gateUp && N % B) return false; // gate block b and up block b + N/B must finish the same columns
    if (e.out === 'f16' && B % 2) return false;
    return true;
  };

  const ropeSteps = (M: number, maxPos: number, numBlocks: number, temps: Plan['temps'], rowsCap: number): PlanStep[] => {
    if (!r) return [];
    temps.kNew = { t: 'f32', length: rowsCap * r.kvHeads * r.headDim };
    temps.vNew = { t: 'f32', length: rowsCap * r.kvHeads * r.headDim };
    const rope = ropeQkv({ layout: r.layout, caps: caps_ });
    // The same kernel object every plan: a captured step's launches compare equal.
    const append = memoKernel(`kvAppend/${r.headDim}/${r.kvDtype}/${r.blockSize}/${capsKey(caps_)}`,
      () => kvAppendKernel({ headDim: r.headDim, kvDtype: r.kvDtype, blockSize: r.blockSize, caps: caps_ }));
    return [
      { kernel: rope, bind: { qkv: 'qkv', pos: 'pos', table: 'table', q: 'q', k: 'kNew', v: 'vNew' }, uniforms: { T: M, Hq: r.heads, Hk: r.kvHeads, D: r.headDim, maxPos } },
      { kernel: append, bind: { kNew: 'kNew', vNew: 'vNew', slots: 'slots', kCache: 'kCache', vCache: 'vCache' }, uniforms: { numTokens: M, numKvHeads: r.kvHeads, numBlocks } },
    ];
  };

  const gatherStep = (M: number): PlanStep => {
    const gk = embedding({ table: g!.table, caps: caps_, workgroupSize: g!.workgroupSize });
    return { kernel: gk, bind: { ids: 'ids', table: 'embed', out: 'x' }, uniforms: { T: M, V: g!.vocab, D: K } };
  };

  const plan = (sizes: FusedLinearSizes): Plan => {
    const M = sizes.M;
    if (!Number.isInteger(M) || M < 1) throw new Error(`${name}: M = ${M} is not a positive integer`);
    const maxPos = sizes.maxPos ?? 0, numBlocks = sizes.numBlocks ?? 0;
    if (r && !(Number.isInteger(maxPos) && maxPos >= 1 && Number.isInteger(numBlocks) && numBlocks >= 1)) {
      throw new Error(`${name}: sizes maxPos = ${sizes.maxPos} and numBlocks = ${sizes.numBlocks} must be positive integers (RoPE table positions, KV-cache blocks)`);
    }
    const temps: Plan['temps'] = {};
    const steps: PlanStep[] = [];
    // Rows sized for the largest GEMV where the GEMV runs, so decode and verify share scratch.
    const rowsCap = Math.max(M, GEMV_MAX_ROWS, sizes.maxRows ?? 0);
    if (r) temps.qkv = { t: 'f32', length: rowsCap * N };
    const ropeUniforms: Record<string, number> = r ? { maxPos, numBlocks } : {};
    if (M <= l.mmaRows) return mmaPlan(M, temps, steps, rowsCap, maxPos, numBlocks);
    if (M <= GEMV_MAX_ROWS) {
      const fold = folds(M);
      // The CPU executor stages the normed x in workgroup memory where it fits (NormPrologue.stagedK).
      const staged = !!spec.norm && l.deviceClass === 'cpu' && 4 * M * (K + spec.norm.workgroupSize) <= caps_.maxWorkgroupStorage;
      const fusion: GemvFusion = {
        ...(spec.norm ? { norm: { workgroupSize: spec.norm.workgroupSize, ...(staged ? { stagedK: K } : {}) } } : {}),
        ...(fold ? { finish: e, ...(r ? { rope: r } : {}) } : {}),
      };
      // The gather too, where the kernel's buffers stay within the device's limit.
      if (g && 2 + weightNames.length + Object.keys(fusionBindings({ ...fusion, gather: g.table })).length - 1 <= caps_.maxStorageBuffers) {
        fusion.gather = g.table;
      } else if (g) steps.push(gatherStep(M));
      const gemv = gemvKernel(src, M, l.choice.gemv[M - 1]!, caps_, fusion);
      temps.part = { t: 'f32', length: S * GEMV_MAX_ROWS * Nw };
      const gemvBind: Record<string, string> = {
        ...same(['x', ...weightNames]), part: 'part', ...(spec.norm ? { normW: 'normW' } : {}), ...(fusion.gather ? same(['ids', 'embed']) : {}),
      };
      const gemvUniforms: Record<string, number> = {
        K, Nw, segLen: l.choice.segLen, ...(spec.norm ? { eps: spec.norm.eps } : {}), ...(fusion.gather ? { V: g!.vocab, M } : {}),
      };
      if (fold) {
        temps.tickets = { t: 'u32', length: Nw };
        if (r) temps.headTickets = { t: 'u32', length: r.heads + 2 * r.kvHeads };
        const fb = fusionBindings(fusion);
        const bind: Record<string, string> = { ...gemvBind, tickets: 'tickets', ...same(epiNames), out: outName };
        if (r) Object.assign(bind, same(['pos', 'table', 'slots', 'q', 'kCache', 'vCache']), { headTickets: 'headTickets' });
        for (const b of Object.keys(fb)) if (!(b in bind)) throw new Error(`${name}: fused binding '${b}' is not bound`);
        steps.push({ kernel: gemv, bind, uniforms: { ...gemvUniforms, M, N, ...ropeUniforms } });
        return { temps, steps };
      }
      steps.push({ kernel: gemv, bind: gemvBind, uniforms: gemvUniforms });
      if (r && 7 + (e.bias ? 1 : 0) <= caps_.maxStorageBuffers) {
        // No fence: the finish, RoPE and the append still one launch (a pair of elements each).
        const rf = ropeFinishKernel(e, r, caps_, l.choice.finishWorkgroupSize);
        const bind: Record<string, string> = { part: 'part', ...same(epiNames), ...same(['pos', 'table', 'slots', 'q', 'kCache', 'vCache']) };
        steps.push({ kernel: rf, bind, uniforms: { M, N, S, maxPos, numBlocks } });
        return { temps, steps };
      }
      const finish = linearFinishKernel({ epilogue: e, workgroupSize: l.choice.finishWorkgroupSize, caps: caps_ });
      steps.push({ kernel: finish, bind: { part: 'part', ...same(epiNames), out: outName }, uniforms: { M, N, S } });
      steps.push(...ropeSteps(M, maxPos, numBlocks, temps, rowsCap));
      return { temps, steps };
    }
    if (g) steps.push(gatherStep(M));
    let x = 'x';
    if (spec.norm) {
      temps.normed = { t: 'f32', length: rowsCap * K };
      steps.push({ kernel: rmsNorm({ caps: caps_, workgroupSize: spec.norm.workgroupSize }), bind: { x: 'x', w: 'normW', out: 'normed' }, uniforms: { M, D: K, eps: spec.norm.eps } });
      x = 'normed';
    }
    const gemm = gemmKernelFor(src, e, l.choice, caps_);
    steps.push({ kernel: gemm, bind: { x, ...same(weightNames), ...same(epiNames), out: outName }, uniforms: { M, K, N, Nw, segLen: l.choice.segLen } });
    steps.push(...ropeSteps(M, maxPos, numBlocks, temps, rowsCap));
    return { temps, steps };
  };
  /** The MMA path: one launch with the norm, gather and (with a fence) RoPE + append folded in. */
  const mmaPlan = (M: number, temps: Plan['temps'], steps: PlanStep[], rowsCap: number, maxPos: number, numBlocks: number): Plan => {
    const fusion: MmaFusion = {
      ...(spec.norm ? { norm: { workgroupSize: spec.norm.workgroupSize } } : {}),
      ...(r && caps_.deviceFence ? { rope: r } : {}),
    };
    let kern = mmaKernelFor(src, K, N, e, caps_, g ? { ...fusion, gather: g.table } : fusion);
    // The gather too, where the kernel's buffers stay within the device's limit.
    if (g && kern.ir.buffers.length > caps_.maxStorageBuffers) kern = mmaKernelFor(src, K, N, e, caps_, fusion);
    const gathers = !!g && !!kern.ir.params.gather;
    if (g && !gathers) steps.push(gatherStep(M));
    const bind: Record<string, string> = { ...same(['x', ...weightNames, ...epiNames]), out: outName };
    if (spec.norm) bind.normW = 'normW';
    if (gathers) Object.assign(bind, same(['ids', 'embed']));
    if (fusion.rope) {
      // One ticket per head per 16-row block, sized for the most rows the path takes (never regrown).
      temps.mmaHeadTickets = { t: 'u32', length: mmaHeadTickets(fusion.rope, l.mmaRows) };
      Object.assign(bind, same(['pos', 'table', 'slots', 'q', 'kCache', 'vCache']), { headTickets: 'mmaHeadTickets' });
    }
    const uniforms: Record<string, number> = {
      M, K, N, Nw, ...(spec.norm ? { eps: spec.norm.eps } : {}), ...(gathers ? { V: g!.vocab } : {}), ...(fusion.rope ? { maxPos, numBlocks } : {}),
    };
    steps.push({ kernel: kern, bind, uniforms });
    if (r && !fusion.rope) steps.push(...ropeSteps(M, maxPos, numBlocks, temps, rowsCap));
    return { temps, steps };
  };
  const base = op(name, bindings, plan);
  return { ...base, plan, linear: l, spec, oneLaunch: folds };
}
