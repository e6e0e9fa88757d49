// What the GEMV (linearCommon.ts gemvKernel) can take over from the launches around it, kept out
// of its inner loop so that loop can be reworked independently:
//   - the embedding gather (layer 0's QKV): x[r, k] read from the table row of token ids[r]
//     (f16 unpacked exactly, as the embedding kernel does), and the gathered rows written to x
//     for the residual stream, spread over every invocation of the launch;
//   - an RMSNorm prologue: the row's inverse RMS computed once per workgroup, in exactly the
//     rmsNorm kernel's order (lane sums strided by its workgroup size W, then its tree), and
//     applied while loading x: x·inv·w, the same f32 operations as the norm kernel's output;
//   - the split-K finish folded into the last arrival: each invocation, after writing its
//     segment's partials, takes a ticket for its block of columns; the one that arrives last
//     (KernelBuilder.lastArrival; needs caps.deviceFence) sums the block's partials in segment
//     order from +0 and applies the epilogue — the finish kernel's operations in its order;
//   - RoPE and the KV-cache append as the QKV projection's epilogue: after a column block is
//     finished (to the `qkv` scratch), a ticket per head; the last block of a head to arrive
//     rotates the head's q or k (ropeQkv's operations) and writes q, or K/V into their cache
//     slots (kvAppend's layout, f16 packed as it packs).
// So a fused launch computes the same bits as the launches it replaces (test/kernels/fusion.test.ts).
import type { ArrayRef, BindingSpec, KernelBuilder, Val } from '../dsl/index.js';
import { inverseSqrt, storage } from '../dsl/index.js';
import { type Epilogue, type EpilogueRefs, epilogueTag, epilogueValue, storeOutput } from './linearCommon.js';
import { type RopeLayout, ropeRotatedElement } from './rope.js';

/**
 * RMSNorm prologue: the norm kernel's workgroup size (its reduction order) and eps. `stagedK`:
 * write the normed x (K = stagedK values per row) to workgroup memory once, so that the main loop
 * reads one value per k instead of loading x and normW and multiplying per invocation — the same
 * f32 operations, so the same bits. The CPU executor's choice (1.3–1.5× on the decode GEMVs,
 * bench/notes/cpu.md); GPUs keep the per-k form (x·inv·w in registers, no workgroup memory).
 */
export interface NormPrologue { workgroupSize: number; stagedK?: number }

/** RoPE + KV append epilogue of a fused QKV projection. */
export interface RopeAppendEpilogue {
  layout: RopeLayout;
  heads: number;
  kvHeads: number;
  headDim: number;
  kvDtype: 'f32' | 'f16';
  blockSize: number;
}

export function ropeAppendTag(r: RopeAppendEpilogue): string {
  return `rope_${r.layout}_${r.heads}x${r.kvHeads}x${r.headDim}_kv${r.kvDtype}_bs${r.blockSize}`;
}

/** Bindings the RoPE + KV-append epilogue adds (GEMV and MMA alike). */
export function ropeAppendBindings(r: RopeAppendEpilogue): Record<string, BindingSpec> {
  const f16 = r.kvDtype === 'f16', perPos = f16 ? r.headDim / 2 : r.headDim, cacheT = f16 ? 'u32' : 'f32';
  return {
    headTickets: storage('u32', 'read_write', { atomic: true }),
    pos: storage('u32', 'read', { shape: '[M]' }),
    table: storage('f32', 'read', { shape: `[maxPos, ${r.headDim}]` }),
    slots: storage('i32', 'read', { shape: '[M]' }),
    q: storage('f32', 'read_write', { shape: `[M, ${r.heads * r.headDim}]` }),
    kCache: storage(cacheT, 'read_write', { shape: `[numBlocks, ${r.blockSize}, ${r.kvHeads * perPos}]` }),
    vCache: storage(cacheT, 'read_write', { shape: `[numBlocks, ${r.blockSize}, ${r.kvHeads * perPos}]` }),
  };
}

/**
 * Element e of a head whose values start at qkv[src], rotated to position p: ropeQkv's
 * operations in its order, for either layout.
 */
export function ropeRotated(k: KernelBuilder, r: RopeAppendEpilogue, qkv: ArrayRef<'f32', boolean>, table: ArrayRef<'f32', false>,
  maxPos: Val<'u32'>, src: Val<'u32'>, p: Val<'u32'>, e: Val<'u32'>, tag: string): Val<'f32'> {
  return ropeRotatedElement(k, r.layout, r.headDim / 2, e,
    (i0, i1) => [k.let(`rx0${tag}`, qkv.at(src.add(i0))), k.let(`rx1${tag}`, qkv.at(src.add(i1)))],
    { table, p, maxPos }, { i: `ri${tag}`, y0: `ry0${tag}`, y1: `ry1${tag}` });
}

/** What a GEMV takes over. `finish` needs caps.deviceFence; `rope` needs `finish`. */
export interface GemvFusion {
  /** x gathered from an embedding table (f32 [V, K], or f16 pairs [V, K/2]) at ids; x is written. */
  gather?: 'f32' | 'f16';
  norm?: NormPrologue;
  finish?: Epilogue;
  rope?: RopeAppendEpilogue;
}

export function fusionTag(f: GemvFusion): string {
  return [
    f.gather ? `embed${f.gather}` : '',
    f.norm ? `norm${f.norm.workgroupSize}${f.norm.stagedK ? `s${f.norm.stagedK}` : ''}` : '',
    f.finish ? `fin_${epilogueTag(f.finish)}` : '',
    f.rope ? ropeAppendTag(f.rope) : '',
  ].filter(Boolean).join('_');
}

export function fusionParams(f: GemvFusion): Record<string, unknown> {
  return {
    ...(f.gather ? { gather: f.gather } : {}),
    ...(f.norm ? { normWorkgroupSize: f.norm.workgroupSize, ...(f.norm.stagedK ? { normStagedK: f.norm.stagedK } : {}) } : {}),
    ...(f.finish ? { finish: epilogueTag(f.finish) } : {}),
    ...(f.rope ? { rope: f.rope } : {}),
  };
}

/**
 * Bindings of the embedding gather (x, which it writes, replacing the linear kernel's read-only
 * x; ids; the table) and of the norm prologue's weight. `vec` 2: f32 read as pairs (the MMA path).
 */
export function gatherNormBindings(f: Pick<GemvFusion, 'gather' | 'norm'>, vec?: 2): Record<string, BindingSpec> {
  const b: Record<string, BindingSpec> = {};
  const v = vec ? { vec } : {};
  if (f.gather) {
    b.x = storage('f32', 'read_write', { shape: '[M, K]', ...v });
    b.ids = storage('u32', 'read', { shape: '[M]' });
    b.embed = f.gather === 'f16' ? storage('u32', 'read', { shape: '[V, K / 2]' }) : storage('f32', 'read', { shape: '[V, K]', ...v });
  }
  if (f.norm) b.normW = storage('f32', 'read', { shape: '[K]', ...v });
  return b;
}

/** Bindings a fused GEMV adds (its `part` stays the GEMV's own). */
export function fusionBindings(f: GemvFusion): Record<string, BindingSpec> {
  const b = gatherNormBindings(f);
  if (f.finish) {
    b.tickets = storage('u32', 'read_write', { atomic: true });
    const e = f.finish;
    if (e.bias) b.bias = storage('f32', 'read', { shape: '[Nw]' }); // with gateUp: [2N]
    if (e.residual) b.residual = storage('f32', 'read', { shape: '[M, N]' });
    b.out = e.out === 'f16' ? storage('u32', 'read_write', { shape: '[M, N / 2]' }) : storage('f32', 'read_write', { shape: '[M, N]' });
  }
  if (f.rope) Object.assign(b, ropeAppendBindings(f.rope));
  return b;
}

/** Uniforms a fused GEMV adds. */
export function fusionUniforms(f: GemvFusion): Record<string, 'u32' | 'f32'> {
  return {
    ...(f.gather ? { V: 'u32' as const } : {}),
    ...(f.norm ? { eps: 'f32' as const } : {}),
    ...(f.finish || f.gather ? { M: 'u32' as const } : {}),
    ...(f.finish ? { N: 'u32' as const } : {}),
    ...(f.rope ? { maxPos: 'u32' as const, numBlocks: 'u32' as const } : {}),
  };
}

export type XLoad = (r: number, kk: Val<'u32'>) => Val<'f32'>;

/**
 * How the GEMV loads x[r, kk]: from x, or gathered from the embedding table — then also, before
 * any invocation returns, the gathered rows are written to x, spread over the whole launch.
 */
export function xLoader(k: KernelBuilder, f: GemvFusion, refs: Record<string, ArrayRef<any, boolean>>, rows: number, wg: number,
  K: Val<'u32'>, u: Record<string, Val<any>>): XLoad {
  const x = refs.x as ArrayRef<'f32', boolean>;
  if (!f.gather) return (r, kk) => x.at(r ? kk.add(K.mul(r)) : kk);
  const V = u.V as Val<'u32'>;
  const ids = refs.ids as ArrayRef<'u32', false>;
  const id = Array.from({ length: rows }, (_, r) => k.let(`eid${r}`, ids.at(r)));
  const nan = k.let('enan', k.bitcast('f32', k.u32(0x7fc00000)));
  const load: XLoad = (r, kk) => {
    const ok = id[r]!.lt(V);
    if (f.gather === 'f32') return k.select(ok, (refs.embed as ArrayRef<'f32', false>).at(k.select(ok, id[r]!, k.u32(0)).mul(K).add(kk)), nan);
    const word = (refs.embed as ArrayRef<'u32', false>).at(k.select(ok, id[r]!, k.u32(0)).mul(K).add(kk).div(2));
    const pair = k.unpack2x16float(word);
    return k.select(ok, k.select(kk.band(1).eq(1), pair.y, pair.x), nan);
  };
  // The residual stream: rows·K elements, one by one over every invocation of the launch.
  const xw = x.writableRef();
  const total = k.let('eTotal', k.numWorkgroups.x.mul(k.numWorkgroups.y).mul(wg));
  const gid = k.let('eGid', k.workgroupId.y.mul(k.numWorkgroups.x).add(k.workgroupId.x).mul(wg).add(k.localIndex));
  for (let r = 0; r < rows; r++) k.for(`ec${r}`, gid, K, (kk) => xw.set(r ? kk.add(K.mul(r)) : kk, load(r, kk)), total);
  return load;
}

/**
 * The RMSNorm prologue, run by every invocation before any returns (it has barriers). Returns
 * the normed load of x[r, kk] (raw: the load of x), or undefined without a norm.
 */
export function normPrologue(k: KernelBuilder, f: GemvFusion, refs: Record<string, ArrayRef<any, boolean>>, rows: number,
  wg: number, K: Val<'u32'>, u: Record<string, Val<any>>, load: XLoad): ((r: number, kk: Val<'u32'>, raw: () => Val<'f32'>) => Val<'f32'>) | undefined {
  if (!f.norm) return undefined;
  const W = f.norm.workgroupSize;
  const w = refs.normW as ArrayRef<'f32', false>;
  const red = k.shared('normRed', 'f32', rows * W);
  const lid = k.let('nlid', k.localIndex);
  /** Lanes l = lid + i·wg of the norm's W lanes (those that exist). */
  const eachLane = (body: (lane: Val<'u32'>, i: number) => void, below: number) => {
    for (let i = 0; i < Math.ceil(below / wg); i++) {
      const lane = i ? k.let(`nl${i}`, lid.add(i * wg)) : lid;
      if ((i + 1) * wg > below) k.if(lane.lt(below), () => body(lane, i));
      else body(lane, i);
    }
  };
  for (let r = 0; r < rows; r++) {
    eachLane((lane, i) => {
      const ss = k.var(`nss${r}_${i}`, 'f32', 0);
      k.for(`ni${r}_${i}`, lane, K, (j) => {
        const v = k.let(`nv${r}_${i}`, load(r, j));
        ss.set(k.call('fma', [v, v, ss]));
      }, W);
      red.set(r ? lane.add(r * W) : lane, ss);
    }, W);
  }
  k.barrier();
  for (let s = W / 2; s >= 1; s /= 2) {
    for (let r = 0; r < rows; r++) {
      eachLane((lane) => {
        const at = r ? k.let(`nat${r}_${s}`, lane.add(r * W)) : lane;
        red.set(at, red.at(at).add(red.at(at.add(s))));
      }, s);
    }
    k.barrier();
  }
  const eps = u.eps as Val<'f32'>;
  const inv = Array.from({ length: rows }, (_, r) => k.let(`ninv${r}`, inverseSqrt(red.at(r * W).div(k.f32(K)).add(eps))));
  const KS = f.norm.stagedK;
  if (KS) {
    const xs = k.shared('normX', 'f32', rows * KS);
    for (let r = 0; r < rows; r++) {
      k.for(`nx${r}`, lid, k.call<'u32'>('min', [K, k.u32(KS)]), (j) => xs.set(r ? j.add(r * KS) : j, load(r, j).mul(inv[r]!).mul(w.at(j))), wg);
    }
    k.barrier();
    return (r, kk) => xs.at(r ? kk.add(r * KS) : kk);
  }
  return (r, kk, raw) => raw().mul(inv[r]!).mul(w.at(kk));
}

export interface FinishContext {
  rows: number;
  /** Columns per invocation (units · source columns). */
  block: number;
  /** Partials are bound as vec4<f32>. */
  partVec: boolean;
  /** Partials are bound as vec2<f32> (a nibble-pair GEMV: 2 columns per invocation). */
  partPair?: boolean;
  Nw: Val<'u32'>;
}

/**
 * Folded finish, after this invocation stored its partials: the last of the invocations covering
 * its output columns (S segments; with gateUp, the gate and the up block: 2S) finishes them.
 */
export function foldedFinish(k: KernelBuilder, f: GemvFusion, refs: Record<string, ArrayRef<any, boolean>>, c: FinishContext,
  u: Record<string, Val<any>>): void {
  const e = f.finish;
  if (!e) return;
  const { rows, block: B, partVec, partPair, Nw } = c;
  const N = u.N as Val<'u32'>;
  const S = k.let('fS', k.numWorkgroups.y);
  const tickets = (refs.tickets as ArrayRef<'u32', boolean>).writableRef();
  // With gateUp, N is a multiple of B (the op checks): gate block b and up block b + N/B share ticket b.
  const tb = k.let('ftb', e.gateUp ? k.globalId.x.rem(N.div(B)) : k.globalId.x);
  const last = k.lastArrival(tickets, tb, e.gateUp ? S.mul(2) : S);
  k.if(last, () => {
    const epi: EpilogueRefs = {
      out: refs.out!.writableRef() as EpilogueRefs['out'],
      ...(refs.bias ? { bias: refs.bias as ArrayRef<'f32', boolean> } : {}),
      ...(refs.residual ? { residual: refs.residual as ArrayRef<'f32', boolean> } : {}),
    };
    const ob = k.let('fob', tb.mul(B));
    // Columns per step: a vec4 of partials, or an f16 output pair, or one column.
    const P = partVec ? 4 : partPair || e.out === 'f16' ? 2 : 1;
    const partF = refs.part as ArrayRef<'f32', boolean>;
    const partV = refs.part as ArrayRef<'vec4<f32>', boolean>;
    const partV2 = refs.part as ArrayRef<'vec2<f32>', boolean>;
    for (let r = 0; r < rows; r++) {
      k.for(`fi${r}`, k.u32(0), k.u32(B), (i) => {
        const n = k.let(`fn${r}`, ob.add(i));
        k.if(n.lt(N), () => {
          const sums = (col: Val<'u32'>, tag: string): Val<'f32'>[] => {
            const t = Array.from({ length: P }, (_, p) => k.var(`f${tag}${r}_${p}`, 'f32', 0));
            k.for(`fs${tag}${r}`, k.u32(0), S, (s) => {
              const at = k.let(`fat${tag}${r}`, s.mul(rows).add(r).mul(Nw).add(col));
              if (partVec || partPair) {
                const v = k.let(`fv${tag}${r}`, partVec ? partV.at(at.div(4)) : partV2.at(at.div(2)));
                t.forEach((tp, p) => tp.set(tp.add(v.at(p) as Val<'f32'>)));
              } else {
                t.forEach((tp, p) => tp.set(tp.add(partF.at(p ? at.add(p) : at))));
              }
            });
            return t;
          };
          const g = sums(n, 'g');
          const up = e.gateUp ? sums(N.add(n), 'u') : undefined;
          const m = k.u32(r);
          const vals = g.map((gv, p) => {
            const np = p ? k.let(`fn${r}_${p}`, n.add(p)) : n;
            return k.let(`fval${r}_${p}`, epilogueValue(k, e, epi, N, m, np, gv, up?.[p]));
          });
          storeOutput(k, e, epi, N, m, n, vals);
        });
      }, P);
    }
    if (f.rope) ropeAppend(k, f.rope, refs, rows, ob, B, N, u);
  });
}

/**
 * After column block [ob, ob + B) of the QKV output is finished: one ticket per head it touches;
 * the head's last block to arrive rotates it (q, k) or copies it (v) for every row and writes q,
 * or the row's K/V cache slot (rows with slot −1 are padding: not appended).
 */
function ropeAppend(k: KernelBuilder, r: RopeAppendEpilogue, refs: Record<string, ArrayRef<any, boolean>>, rows: number,
  ob: Val<'u32'>, B: number, N: Val<'u32'>, u: Record<string, Val<any>>): void {
  const hd = r.headDim, f16 = r.kvDtype === 'f16', perPos = f16 ? hd / 2 : hd;
  const qkv = refs.out as ArrayRef<'f32', boolean>;
  const headTickets = (refs.headTickets as ArrayRef<'u32', boolean>).writableRef();
  const pos = refs.pos as ArrayRef<'u32', false>, table = refs.table as ArrayRef<'f32', false>;
  const slots = refs.slots as ArrayRef<'i32', false>;
  const q = (refs.q as ArrayRef<'f32', boolean>).writableRef();
  const maxPos = u.maxPos as Val<'u32'>;
  const h0 = k.let('rh0', ob.div(hd));
  const h1 = k.let('rh1', k.call<'u32'>('min', [ob.add(B), N]).sub(1).div(hd));
  k.for('rh', h0, h1.add(1), (h) => {
    // Blocks of B columns that intersect head h: each finishes once and counts once.
    const count = k.let('rcount', h.add(1).mul(hd).sub(1).div(B).sub(h.mul(hd).div(B)).add(1));
    const lastHead = k.lastArrival(headTickets, h, count);
    k.if(lastHead, () => {
      const isQ = k.let('risQ', h.lt(r.heads)), isK = k.let('risK', h.lt(r.heads + r.kvHeads));
      for (let row = 0; row < rows; row++) {
        const src = k.let(`rsrc${row}`, N.mul(row).add(h.mul(hd)));
        const p = k.let(`rp${row}`, pos.at(row));
        /** Element e of the head rotated (ropeQkv's operations). */
        const rotated = (e: Val<'u32'>, tag: string) => ropeRotated(k, r, qkv, table, maxPos, src, p, e, tag);
        k.if(isQ, () => {
          const dst = k.let(`rq${row}`, k.u32(row).mul(r.heads).add(h).mul(hd));
          k.for(`re${row}`, k.u32(0), k.u32(hd), (e) => q.set(dst.add(e), rotated(e, `q${row}`)));
        }, () => {
          const slot = k.let(`rslot${row}`, slots.at(row));
          k.if(slot.ge(0), () => {
            const kvh = k.let(`rkvh${row}`, k.select(isK, h.sub(r.heads), h.sub(r.heads + r.kvHeads)));
            const dst = k.let(`rdst${row}`, k.u32(slot).mul(r.kvHeads * perPos).add(kvh.mul(perPos)));
            const write = (cacheName: 'kCache' | 'vCache', value: (e: Val<'u32'>, tag: string) => Val<'f32'>) => {
              const tag = `${cacheName[0]}${row}`;
              if (f16) {
                const cache = (refs[cacheName] as ArrayRef<'u32', boolean>).writableRef();
                k.for(`rw${tag}`, k.u32(0), k.u32(perPos), (wd) => {
                  const e0 = k.let(`re0${tag}`, wd.mul(2));
                  cache.set(dst.add(wd), k.pack2x16float(k.vec('vec2<f32>', value(e0, `${tag}a`), value(e0.add(1), `${tag}b`))));
                });
              } else {
                const cache = (refs[cacheName] as ArrayRef<'f32', boolean>).writableRef();
                k.for(`rw${tag}`, k.u32(0), k.u32(hd), (e) => cache.set(dst.add(e), value(e, tag)));
              }
            };
            k.if(isK, () => write('kCache', rotated), () => write('vCache', (e) => qkv.at(src.add(e))));
          });
        });
      }
    });
  });
}
