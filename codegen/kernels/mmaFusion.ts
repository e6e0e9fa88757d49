// What the tensor-core MMA linear kernels (int4Mma.ts) take over from the launches around them,
// so a fused decode op on the MMA path is one launch, with the separate launches' bits:
//   - the embedding gather (layer 0's QKV): x[r, k] read from the table row of token ids[r] (f16
//     unpacked exactly, as the embedding kernel does; an id ≥ V gives NaN) and the gathered rows
//     written to x for the residual stream, spread over every invocation of the launch;
//   - an RMSNorm prologue for the workgroup's 16 rows: each row's sum of squares in exactly the
//     rmsNorm kernel's order (lane sums strided by its workgroup size W, then its tree) and x·inv·w
//     applied while loading the A fragments — the norm kernel's f32 operations — before x is
//     rounded to f16, as the unfused op rounds the norm kernel's output;
//   - RoPE and the KV-cache append as the QKV projection's epilogue (needs caps.deviceFence): a
//     workgroup, after storing its 16 rows × 64 columns to the `out` (qkv) scratch, takes one
//     ticket per head its columns touch (per 16-row block); the last workgroup of a head to arrive
//     rotates it (ropeQkv's operations) and writes q, or the rows' K/V cache slots (kvAppend's
//     layout, f16 packed as it packs), spread over its invocations.
// Split-K needs no finish here: int4Mma splits K between warps of one workgroup.
import type { ArrayRef, BindingSpec, KernelBuilder, Val } from '../dsl/index.js';
import { inverseSqrt } from '../dsl/index.js';
import { gatherNormBindings, type NormPrologue, type RopeAppendEpilogue, ropeAppendBindings, ropeAppendTag, ropeRotated } from './linearFusion.js';

/** What an MMA linear kernel takes over. `rope` needs caps.deviceFence (the op checks). */
export interface MmaFusion {
  gather?: 'f32' | 'f16';
  norm?: NormPrologue;
  rope?: RopeAppendEpilogue;
}

export function mmaFusionTag(f: MmaFusion): string {
  return [
    f.gather ? `embed${f.gather}` : '',
    f.norm ? `norm${f.norm.workgroupSize}` : '',
    f.rope ? ropeAppendTag(f.rope) : '',
  ].filter(Boolean).join('_');
}

export function mmaFusionParams(f: MmaFusion): Record<string, unknown> {
  return {
    ...(f.gather ? { gather: f.gather } : {}),
    ...(f.norm ? { normWorkgroupSize: f.norm.workgroupSize } : {}),
    ...(f.rope ? { rope: f.rope } : {}),
  };
}

/** Bindings a fused MMA kernel adds or replaces (x becomes read_write with gather). */
export function mmaFusionBindings(f: MmaFusion): Record<string, BindingSpec> {
  const b = gatherNormBindings(f, 2);
  if (f.rope) Object.assign(b, ropeAppendBindings(f.rope));
  return b;
}

export function mmaFusionUniforms(f: MmaFusion): Record<string, 'u32' | 'f32'> {
  return {
    ...(f.gather ? { V: 'u32' as const } : {}),
    ...(f.norm ? { eps: 'f32' as const } : {}),
    ...(f.rope ? { maxPos: 'u32' as const, numBlocks: 'u32' as const } : {}),
  };
}

/** Head tickets a fused QKV MMA op needs for up to `rows` rows: one per head per 16-row block. */
export function mmaHeadTickets(r: RopeAppendEpilogue, rows: number): number {
  return Math.ceil(rows / 16) * (r.heads + 2 * r.kvHeads);
}

export interface MmaRows {
  /** The workgroup's first row (16 per workgroup). */
  row0: Val<'u32'>;
  /** This lane's A rows (g, g + 8 of the tile) and whether they exist (< M). */
  rLo: Val<'u32'>;
  rHi: Val<'u32'>;
  okLo: Val<'bool'>;
  okHi: Val<'bool'>;
  M: Val<'u32'>;
  K: Val<'u32'>;
  /** Invocations per workgroup. */
  wg: number;
  lid: Val<'u32'>;
}

/** x[r, kk], x[r, kk + 1] (kk even) of the lane's row r = rLo (hi false) or rHi, as f32 before
 *  rounding to f16; zeros on padding rows. */
export type MmaXPair = (hi: boolean, kk: Val<'u32'>, tag: string) => Val<'vec2<f32>'>;

/** Workgroup words the norm prologue needs (its reduction; free again once it returns). */
export function mmaNormScratch(f: MmaFusion): number {
  return f.norm ? 16 * f.norm.workgroupSize : 0;
}

/**
 * The A operand's source: x, or gathered from the embedding table (then the gathered rows are
 * also written to x), normed if asked. Runs the gather's write and the norm's reduction here,
 * before the main loop (every invocation: the norm has barriers).
 */
export function mmaXSource(k: KernelBuilder, f: MmaFusion, refs: Record<string, ArrayRef<any, boolean>>, p: MmaRows,
  u: Record<string, Val<any>>, scratch?: ArrayRef<'f32', true>): MmaXPair {
  const { row0, M, K, wg, lid, rLo, rHi, okLo, okHi } = p;
  const x = refs.x as ArrayRef<'vec2<f32>', boolean>;
  /** Raw pair of row `row` (in bounds) at even kk. */
  let raw: (row: Val<'u32'>, kk: Val<'u32'>, tag: string) => Val<'vec2<f32>'> = (row, kk) => x.at(row.mul(K).add(kk).shr(1));
  if (f.gather) {
    const V = u.V as Val<'u32'>;
    const ids = refs.ids as ArrayRef<'u32', false>;
    const nan = k.let('enan', k.bitcast('f32', k.u32(0x7fc00000)));
    raw = (row, kk, tag) => {
      const id = k.let(`eid${tag}`, ids.at(row));
      const ok = k.let(`eok${tag}`, id.lt(V));
      const at = k.let(`eat${tag}`, k.select(ok, id, k.u32(0)).mul(K).add(kk).shr(1));
      const pair = f.gather === 'f16'
        ? k.unpack2x16float((refs.embed as ArrayRef<'u32', false>).at(at))
        : (refs.embed as ArrayRef<'vec2<f32>', false>).at(at);
      return k.vec('vec2<f32>', k.select(ok, pair.x, nan), k.select(ok, pair.y, nan));
    };
    // The residual stream: M·K/2 pairs, spread over every invocation of the launch.
    const xw = x.writableRef();
    const total = k.let('eTotal', k.numWorkgroups.x.mul(k.numWorkgroups.y).mul(wg));
    const gid = k.let('eGid', k.workgroupId.y.mul(k.numWorkgroups.x).add(k.workgroupId.x).mul(wg).add(lid));
    const halfK = k.let('eHalfK', K.shr(1));
    k.for('ep', gid, M.mul(halfK), (e) => {
      const row = k.let('erow', e.div(halfK));
      xw.set(e, raw(row, e.sub(row.mul(halfK)).shl(1), 'w'));
    }, total);
  }
  const zero = k.vec('vec2<f32>', k.f32(0), k.f32(0));
  const xLo = k.let('xrLo', k.select(okLo, rLo, k.u32(0))), xHi = k.let('xrHi', k.select(okHi, rHi, k.u32(0)));
  if (!f.norm) {
    return (hi, kk, tag) => {
      const v = k.let(`xv${tag}`, raw(hi ? xHi : xLo, kk, tag));
      return k.select(hi ? okHi : okLo, v, zero);
    };
  }
  // Sum of squares of the 16 rows, lane l of W summing k = l, l + W, … (rmsNorm's order).
  const W = f.norm.workgroupSize;
  const red = scratch ?? k.fail('mmaXSource: the norm prologue needs a workgroup scratch of mmaNormScratch words');
  k.for('nItem', lid, k.u32(16 * W), (item) => {
    const r = k.let('nr', item.div(W)), lane = k.let('nl', item.band(W - 1));
    const row = k.let('nrow', row0.add(r));
    const ss = k.var('nss', 'f32', 0);
    k.if(row.lt(M), () => {
      k.for('nk', lane, K, (j) => {
        const pair = raw(row, j.band(~1 >>> 0), 'n');
        const v = k.let('nv', k.select(j.band(1).eq(1), pair.y, pair.x));
        ss.set(k.call('fma', [v, v, ss]));
      }, W);
    });
    red.set(item, ss);
  }, wg);
  k.barrier();
  for (let s = W / 2; s >= 1; s /= 2) {
    // Every row's lanes below s: 16·s items.
    k.for(`nt${s}`, lid, k.u32(16 * s), (item) => {
      const at = k.let(`nat${s}`, item.div(s).mul(W).add(item.band(s - 1)));
      red.set(at, red.at(at).add(red.at(at.add(s))));
    }, wg);
    k.barrier();
  }
  const eps = u.eps as Val<'f32'>;
  const w = refs.normW as ArrayRef<'vec2<f32>', false>;
  // The lane's two rows' inverse RMS (rows g and g + 8 of the tile), in registers.
  const invOf = (r: Val<'u32'>, tag: string) => k.let(`ninv${tag}`, inverseSqrt(red.at(r.sub(row0).mul(W)).div(k.f32(K)).add(eps)));
  const invLo = invOf(rLo, 'Lo'), invHi = invOf(rHi, 'Hi');
  k.barrier(); // the scratch is free again (the split-K sum reuses it)
  return (hi, kk, tag) => {
    const inv = hi ? invHi : invLo;
    const v = k.let(`xv${tag}`, raw(hi ? xHi : xLo, kk, tag));
    const wv = k.let(`nw${tag}`, w.at(kk.shr(1)));
    return k.select(hi ? okHi : okLo, k.vec('vec2<f32>', v.x.mul(inv).mul(wv.x), v.y.mul(inv).mul(wv.y)), zero);
  };
}

export interface MmaRopeContext extends Pick<MmaRows, 'row0' | 'M' | 'K' | 'wg' | 'lid'> {
  N: Val<'u32'>;
  /** The workgroup's first output column and its column count (a constant). */
  wgCol: Val<'u32'>;
  cols: number;
}

/**
 * After the workgroup stored its rows of columns [wgCol, wgCol + cols) to `out` (the qkv
 * scratch): a ticket per head those columns touch; the last workgroup of a head rotates (q, k) or
 * copies (v) it for the workgroup's rows and writes q or the K/V cache slots (slot −1: padding).
 */
export function mmaRopeAppend(k: KernelBuilder, r: RopeAppendEpilogue, refs: Record<string, ArrayRef<any, boolean>>,
  c: MmaRopeContext, u: Record<string, Val<any>>): void {
  const { row0, M, wg, lid, N, wgCol, cols } = c;
  const hd = r.headDim, f16 = r.kvDtype === 'f16', perPos = f16 ? hd / 2 : hd;
  const H = r.heads + 2 * r.kvHeads;
  const qkv = refs.out as ArrayRef<'f32', boolean>;
  const tickets = (refs.headTickets as ArrayRef<'u32', boolean>).writableRef();
  const pos = refs.pos as ArrayRef<'u32', false>, table = refs.table as ArrayRef<'f32', false>;
  const slots = refs.slots as ArrayRef<'i32', false>;
  const q = (refs.q as ArrayRef<'f32', boolean>).writableRef();
  const maxPos = u.maxPos as Val<'u32'>;
  // Heads a workgroup's columns can touch: at most this many (a constant), from head h0.
  const spans = Math.ceil((cols - 1) / hd) + 1;
  const h0 = k.let('rh0', wgCol.div(hd));
  const hEnd = k.let('rh1', k.call<'u32'>('min', [wgCol.add(cols), N]).sub(1).div(hd).add(1));
  const flags = k.shared('ropeLast', 'u32', spans);
  // Release: every invocation's stores, then one ticket per head for the workgroup.
  k.deviceFence();
  k.barrier();
  k.if(lid.eq(0), () => {
    for (let j = 0; j < spans; j++) {
      const h = k.let(`rth${j}`, h0.add(j));
      const flag = k.var(`rtf${j}`, 'u32', 0);
      k.if(h.lt(hEnd), () => {
        // Workgroups (blocks of `cols` columns) that intersect head h, each counted once.
        const count = k.let(`rtc${j}`, h.add(1).mul(hd).sub(1).div(cols).sub(h.mul(hd).div(cols)).add(1));
        const t = k.let(`rtt${j}`, k.workgroupId.y.mul(H).add(h));
        const old = k.atomicAdd(tickets, t, 1);
        k.if(old.add(1).eq(count), () => {
          flag.set(1);
          k.atomicStore(tickets, t, 0);
        });
      });
      flags.set(j, flag);
    }
    k.deviceFence(); // acquire on the ticket taker's side too (the invocations fence again below)
  });
  k.barrier();
  for (let j = 0; j < spans; j++) {
    const h = k.let(`rh${j}`, h0.add(j));
    k.if(flags.at(j).eq(1), () => {
      k.deviceFence(); // acquire: the head's other workgroups' columns
      const isQ = k.let(`risQ${j}`, h.lt(r.heads)), isK = k.let(`risK${j}`, h.lt(r.heads + r.kvHeads));
      /** Element e of row `row`'s head h, rotated (ropeQkv's operations) or as is (v). */
      const value = (row: Val<'u32'>, p: Val<'u32'>, e: Val<'u32'>, rotate: boolean, tag: string): Val<'f32'> => {
        const src = k.let(`rsrc${tag}`, N.mul(row).add(h.mul(hd)));
        return rotate ? ropeRotated(k, r, qkv, table, maxPos, src, p, e, tag) : qkv.at(src.add(e));
      };
      /** Items (row of 16, element or word e) spread over the workgroup, rows below M only. */
      const each = (per: number, body: (row: Val<'u32'>, e: Val<'u32'>) => void, tag: string) => {
        k.for(`rit${tag}`, lid, k.u32(16 * per), (item) => {
          const row = k.let(`rrow${tag}`, row0.add(item.div(per)));
          k.if(row.lt(M), () => body(row, k.let(`re${tag}`, item.rem(per))));
        }, wg);
      };
      k.if(isQ, () => {
        each(hd, (row, e) => {
          const p = k.let(`rpq${j}`, pos.at(row));
          q.set(row.mul(r.heads).add(h).mul(hd).add(e), value(row, p, e, true, `q${j}`));
        }, `q${j}`);
      }, () => {
        each(perPos, (row, wd) => {
          const slot = k.let(`rslot${j}`, slots.at(row));
          k.if(slot.ge(0), () => {
            const p = k.let(`rpk${j}`, pos.at(row));
            const kvh = k.let(`rkvh${j}`, k.select(isK, h.sub(r.heads), h.sub(r.heads + r.kvHeads)));
            const dst = k.let(`rdst${j}`, k.u32(slot).mul(r.kvHeads * perPos).add(kvh.mul(perPos)).add(wd));
            const write = (cacheName: 'kCache' | 'vCache', rotate: boolean) => {
              const tag = `${cacheName[0]}${j}`;
              if (f16) {
                const e0 = k.let(`re0${tag}`, wd.mul(2));
                const pair = k.vec('vec2<f32>', value(row, p, e0, rotate, `${tag}a`), value(row, p, e0.add(1), rotate, `${tag}b`));
                (refs[cacheName] as ArrayRef<'u32', boolean>).writableRef().set(dst, k.pack2x16float(pair));
              } else {
                (refs[cacheName] as ArrayRef<'f32', boolean>).writableRef().set(dst, value(row, p, wd, rotate, tag));
              }
            };
            k.if(isK, () => write('kCache', true), () => write('vCache', false));
          });
        }, `kv${j}`);
      });
    });
  }
}
