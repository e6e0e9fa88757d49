// Register double-buffering of paged attention's K/V staging (AttentionConfig.prefetch): the next
// step's block-table lookups and K/V loads are issued into registers while the current step
// computes, so their latency hides behind the score, softmax and PV phases instead of stalling a
// barrier. With K and V in two tiles (splitKv), each tile is free for part of a step:
//
//   scores(n) reads kTile          — V(n) loads (issued after PV(n−1)) are in flight
//   store V(n) → vTile; barrier
//   lookups + K(n+1) loads         — kTile is free: scores(n) are done
//   softmax(n); barrier
//   PV(n) reads vTile              — K(n+1) loads in flight
//   store K(n+1) → kTile; V(n+1) loads at the addresses K(n+1) used; barrier
//
// Three barriers per step instead of four, one block-table lookup per load serving both caches
// (addresses kept in registers between the K and V loads); K's latency hides behind the softmax
// and PV phases, V's behind the barrier and the next scores. ptxas keeps it without spills at
// head_dim 128 (the K registers live across PV). The arithmetic is that of the unpipelined
// staging — only when loads are issued moves — so results are bit-identical.
import { min } from '../dsl/index.js';
import type { ArrayRef, DType, KernelBuilder, Val, Var } from '../dsl/index.js';
import type { AttentionConfig } from './pagedAttentionConfig.js';

export interface KvPipelineInputs {
  c: AttentionConfig;
  /** Invocations, words per load (4: 16-byte loads), loads per position and per step. */
  W: number; vw: number; perPos: number; total: number;
  lid: Val<'u32'>;
  /** The chunk's first step, its end, the tile's end and first attended position. */
  tFrom: Val<'u32'>; tTo: Val<'u32'>; hiAll: Val<'u32'>; loAll: Val<'u32'>;
  /** Offset of word w within a staged row (the layout's skew). */
  wordAt: (w: Val<'u32'>) => Val<'u32'>;
  kS: ArrayRef<'u32' | 'f32', true>; vS: ArrayRef<'u32' | 'f32', true>;
  kCache: ArrayRef<DType, boolean>; vCache: ArrayRef<DType, boolean>;
  /** The cache block holding position pos of the tile's sequence. */
  blockTable: (pos: Val<'u32'>) => Val<'u32'>;
  /** The cache row (block slot × KV heads + this KV head) of position pos in block blk. */
  cacheRow: (blk: Val<'u32'>, pos: Val<'u32'>) => Val<'u32'>;
}

export interface KvPipeline {
  /** One step at tb (positions [tb, vHi) staged): the phases in the order above, with their barriers. */
  step(tb: Val<'u32'>, vHi: Val<'u32'>, scores: () => void, softmax: () => void, pv: () => void): void;
}

/** Emits the prologue (step tFrom's loads, its K stored, a barrier) and returns the step emitter. */
export function kvPipeline(k: KernelBuilder, p: KvPipelineInputs): KvPipeline {
  const { c, W, vw, perPos, total, lid } = p;
  const KT = c.kvTile, L = c.kvLayout, f16 = c.kvDtype === 'f16';
  // This invocation's loads of a step: position tt, word w (the same every step).
  const slots = Array.from({ length: Math.ceil(total / W) }, (_, j) => {
    const full = (j + 1) * W <= total;
    const e = k.let(`pe${j}`, full ? lid.add(j * W) : min(lid.add(j * W), k.u32(total - 1)));
    return { j, full, tt: k.let(`ptt${j}`, e.div(perPos)), w: k.let(`pw${j}`, e.rem(perPos)) };
  });
  type Slot = (typeof slots)[number];
  // Positions past tTo read a clamped, valid address (their block-table entry may not exist).
  const address = (tb: Val<'u32'>, s: Slot) => {
    const posC = k.let(`pc${s.j}`, min(tb.add(s.tt), p.tTo.sub(1)));
    return p.cacheRow(p.blockTable(posC), posC).mul(perPos).add(s.w);
  };
  const stepEnd = (tb: Val<'u32'>) => min(min(tb.add(KT), p.hiAll), p.tTo);
  const zero = f16 ? k.u32(0) : k.f32(0);
  const store = (dst: ArrayRef<'u32' | 'f32', true>, regs: Var[], tb: Val<'u32'>, vHi: Val<'u32'>) => slots.forEach((s) => {
    const body = () => {
      const pos = k.let('pPos', tb.add(s.tt));
      const ok = k.let('pOk', pos.ge(p.loAll).and(pos.lt(vHi)));
      const base = k.let('pAt', s.tt.mul(L.stride).add(p.wordAt(s.w.mul(vw))));
      for (let q = 0; q < vw; q++) {
        const word = (vw > 1 ? regs[s.j]!.at(q) : regs[s.j]!) as Val<'u32' | 'f32'>;
        dst.set(q ? base.add(q) : base, k.select(ok, word, zero));
      }
    };
    if (s.full) body(); else k.if(lid.add(s.j * W).lt(total), body);
  });
  const at = slots.map((s) => k.var(`pAddr${s.j}`, address(p.tFrom, s)));
  const kR: Var[] = slots.map((s) => k.var(`pk${s.j}`, p.kCache.at(at[s.j]!)));
  const vR: Var[] = slots.map((s) => k.var(`pv${s.j}`, p.vCache.at(at[s.j]!)));
  store(p.kS, kR, p.tFrom, k.let('pEnd0', stepEnd(p.tFrom)));
  k.barrier();
  return {
    step(tb, vHi, scores, softmax, pv) {
      scores();
      store(p.vS, vR, tb, vHi);
      k.barrier();
      const next = k.let('nextTb', tb.add(KT)), more = k.let('more', next.lt(p.tTo));
      k.if(more, () => slots.forEach((s) => { at[s.j]!.set(address(next, s)); kR[s.j]!.set(p.kCache.at(at[s.j]!)); }));
      softmax();
      k.barrier();
      pv();
      k.if(more, () => {
        store(p.kS, kR, next, k.let('pEnd', stepEnd(next)));
        slots.forEach((s) => vR[s.j]!.set(p.vCache.at(at[s.j]!)));
      });
      k.barrier();
    },
  };
}
