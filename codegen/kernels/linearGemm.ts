// The tiled GEMM for any row count (prefill): a workgroup stages a tile of x and an unpacked tile of
// weights in workgroup memory and each invocation accumulates a register block, in the canonical
// order over K (linearCommon.ts), so its rows have the GEMV + finish path's bits.
import { kernel, storage } from '../dsl/index.js';
import type { ArrayRef, Caps, Val, Var } from '../dsl/index.js';
import {
  applyGroup, capsKey, type Epilogue, epilogueBindings, epilogueRefs, epilogueTag, K_GRANULE, memoKernel,
  storeBlockRow, type WeightSource,
} from './linearCommon.js';

export interface GemmVariant {
  /** Rows of x per workgroup. */
  tileM: number;
  /** Weight columns per workgroup (with gateUp: half gate, half up). */
  tileN: number;
  /** k per shared-memory stage; divides K_GRANULE. */
  tileK: number;
  /** Rows per invocation. */
  blockM: number;
  /** Weight columns per invocation. */
  blockN: number;
}

export function checkGemmVariant(what: string, v: GemmVariant, src: WeightSource, e: Epilogue, caps: Caps): void {
  const { tileM, tileN, tileK, blockM, blockN } = v;
  for (const [name, val] of Object.entries(v)) {
    if (!Number.isInteger(val) || val < 1) throw new Error(`${what}: ${name} = ${val} is not a positive integer`);
  }
  if (K_GRANULE % tileK) throw new Error(`${what}: tileK ${tileK} does not divide ${K_GRANULE}`);
  if (tileM % blockM || tileN % blockN) throw new Error(`${what}: tile ${tileM}x${tileN} is not a multiple of the block ${blockM}x${blockN}`);
  const half = e.gateUp ? 2 : 1;
  if (tileN % (src.cols * half)) throw new Error(`${what}: tileN ${tileN} is not a multiple of ${src.cols * half} (unit columns${e.gateUp ? ' × 2 for gate/up' : ''})`);
  if (blockN % half) throw new Error(`${what}: blockN ${blockN} must be even with gateUp`);
  if (e.out === 'f16' && (blockN / half) % 2) throw new Error(`${what}: blockN ${blockN} gives an odd number of output columns per invocation; f16 output needs pairs`);
  const inv = (tileM / blockM) * (tileN / blockN);
  if (inv > caps.maxInvocationsPerWorkgroup) throw new Error(`${what}: ${inv} invocations exceed the device's ${caps.maxInvocationsPerWorkgroup}`);
  const bytes = gemmSharedBytes(v, src);
  if (bytes > caps.maxWorkgroupStorage) throw new Error(`${what}: tiles take ${bytes} bytes of workgroup memory, over the device's ${caps.maxWorkgroupStorage}`);
}

/** Workgroup memory of a GEMM variant: x and weight tiles (+ a group's zero points and scales). */
export function gemmSharedBytes(v: GemmVariant, src: WeightSource): number {
  return ((v.tileM + v.tileN) * v.tileK + (src.group ? 2 * v.tileN : 0)) * 4;
}

/**
 * y[M, N] for any M: a workgroup owns tileM rows × tileN weight columns, walks K in tileK steps,
 * unpacking its weight tile once into shared memory (each weight is read once per workgroup, not
 * once per row) and staging the x tile beside it; each invocation accumulates a blockM × blockN
 * register block in the canonical order of linearCommon.ts (for grouped sources, the group's
 * zero points and scales are staged too and applied at each group's end).
 */
export function gemmKernel(src: WeightSource, e: Epilogue, v: GemmVariant, caps: Caps) {
  const { tileM, tileN, tileK, blockM, blockN } = v;
  const C = src.cols;
  const half = e.gateUp ? 2 : 1;
  checkGemmVariant(`gemm_${src.tag}`, v, src, e, caps);
  const threadsN = tileN / blockN, threadsM = tileM / blockM;
  const inv = threadsN * threadsM;
  const outTileN = tileN / half; // output columns per workgroup
  const key = `gemm/${src.tag}/${epilogueTag(e)}/${tileM}x${tileN}x${tileK}/${blockM}x${blockN}/${capsKey(caps)}`;
  return memoKernel(key, () => kernel({
    name: `gemm_${src.tag}_${epilogueTag(e)}`,
    params: { source: src.tag, ...e, ...v },
    caps,
    workgroupSize: inv,
    bindings: {
      x: storage('f32', 'read', { shape: '[M, K]' }),
      ...src.bindings,
      ...epilogueBindings(e),
    },
    uniforms: { M: 'u32', K: 'u32', N: 'u32', Nw: 'u32', segLen: 'u32' },
    grid: `[ceil(N / ${outTileN}), ceil(M / ${tileM})]`,
    body(k, b, { M, K, N, Nw, segLen }) {
      const refs: Record<string, ArrayRef<any, boolean>> = b;
      const epi = epilogueRefs(k, refs);
      const x = refs.x as ArrayRef<'f32', false>;
      const xs = k.shared('xs', 'f32', tileK * tileM); // k-major: xs[kk·tileM + m]
      const ws = k.shared('ws', 'f32', tileK * tileN); // ws[kk·tileN + tile column]
      const lid = k.let('lid', k.localIndex);
      const tx = k.let('tx', lid.rem(threadsN));
      const ty = k.let('ty', lid.div(threadsN));
      const row0 = k.let('row0', k.workgroupId.y.mul(tileM));
      const out0 = k.let('out0', k.workgroupId.x.mul(outTileN)); // first output column

      // Tile column of this invocation's accumulator j: contiguous output columns per invocation;
      // with gateUp the first blockN/2 are gate columns and the rest the matching up columns.
      const bh = blockN / half;
      const tileCol = (j: number): Val<'u32'> => {
        const off = Math.floor(j / bh) * (tileN / half) + (j % bh);
        return tx.mul(bh).add(off);
      };
      const seg: Var<'f32'>[][] = [], tot: Var<'f32'>[][] = [];
      for (let i = 0; i < blockM; i++) {
        seg.push(Array.from({ length: blockN }, (_, j) => k.var(`acc${i}_${j}`, 'f32', 0)));
        tot.push(Array.from({ length: blockN }, (_, j) => k.var(`tot${i}_${j}`, 'f32', 0)));
      }

      const grp = src.group;
      const zs = grp ? k.shared('zs', 'f32', tileN) : undefined; // zero point per tile column
      const ss = grp ? k.shared('ss', 'f32', tileN) : undefined; // scale per tile column
      const gacc: Var<'f32'>[][] = [];
      const sx: Var<'f32'>[] = [];
      if (grp) {
        for (let i = 0; i < blockM; i++) {
          gacc.push(Array.from({ length: blockN }, (_, j) => k.var(`b${i}_${j}`, 'f32', 0)));
          sx.push(k.var(`sx${i}`, 'f32', 0));
        }
      }
      const u = { K, Nw };

      const unitsPerRow = tileN / C, unitsHalf = unitsPerRow / half;
      /** Tile unit ut → its first output column and its weight unit (gate or up half). */
      const unitOf = (ut: Val<'u32'>, tag: string) => {
        const inHalf = half === 2 ? k.let(`h${tag}`, ut.rem(unitsHalf)) : ut;
        const outCol = k.let(`oc${tag}`, out0.add(inHalf.mul(C)));
        const unit = half === 2
          ? k.let(`unit${tag}`, outCol.add(k.select(ut.ge(unitsHalf), N, 0)).div(C))
          : k.let(`unit${tag}`, outCol.div(C));
        return { outCol, unit };
      };
      /** Run put(item) for items [0, total) spread over the invocations. */
      const spread = (total: number, put: (item: Val<'u32'>, s: number) => void) => {
        for (let s = 0; s < Math.ceil(total / inv); s++) {
          const run = () => put(k.let(`it${s}`, lid.add(s * inv)), s);
          if ((s + 1) * inv > total) k.if(lid.add(s * inv).lt(total), run);
          else run();
        }
      };
      k.for('k0', k.u32(0), K, (k0) => {
        // x tile: tileM × tileK, consecutive invocations read consecutive k; outside → 0.
        const xItems = tileM * tileK;
        for (let s = 0; s < Math.ceil(xItems / inv); s++) {
          const put = () => {
            const e_ = k.let(`xe${s}`, lid.add(s * inv));
            const m = k.let(`xm${s}`, e_.div(tileK)), kk = k.let(`xk${s}`, e_.rem(tileK));
            const r = row0.add(m), c = k0.add(kk);
            const val = k.var(`xv${s}`, 'f32', 0);
            k.if(r.lt(M).and(c.lt(K)), () => val.set(x.at(r.mul(K).add(c))));
            xs.set(kk.mul(tileM).add(m), val);
          };
          if ((s + 1) * inv > xItems) k.if(lid.add(s * inv).lt(xItems), put);
          else put();
        }
        // Weight tile: tileK rows × (tileN / C) units, each unit unpacked once, here.
        spread(tileK * unitsPerRow, (item, s) => {
          const kk = k.let(`wk${s}`, item.div(unitsPerRow)), ut = k.let(`wu${s}`, item.rem(unitsPerRow));
          const { outCol, unit } = unitOf(ut, `w${s}`);
          const kg = k.let(`wkg${s}`, k0.add(kk));
          const vals = Array.from({ length: C }, (_, c) => k.var(`wv${s}_${c}`, 'f32', 0));
          k.if(kg.lt(K).and(outCol.lt(N)), () => {
            const row = k.let(`wrow${s}`, src.row(k, u, kg));
            src.values(k, refs, row, unit, `${s}`, u).forEach((wv, c) => vals[c]!.set(wv));
          });
          const base = k.let(`wbase${s}`, kk.mul(tileN).add(ut.mul(C)));
          vals.forEach((wv, c) => ws.set(c ? base.add(c) : base, wv));
        });
        // At a group's first tile: its zero points and scales per tile column.
        if (grp) {
          k.if(k0.rem(grp.size).eq(0), () => {
            const g = k.let('grp', k0.div(grp.size));
            spread(unitsPerRow, (ut, s) => {
              const { outCol, unit } = unitOf(ut, `g${s}`);
              const zv = Array.from({ length: C }, (_, c) => k.var(`zv${s}_${c}`, 'f32', 0));
              const sv = Array.from({ length: C }, (_, c) => k.var(`sv${s}_${c}`, 'f32', 0));
              k.if(outCol.lt(N), () => {
                const p = grp.params(k, refs, u, g, unit, `${s}`);
                p.z.forEach((z, c) => zv[c]!.set(z));
                p.s.forEach((sc, c) => sv[c]!.set(sc));
              });
              const base = k.let(`gbase${s}`, ut.mul(C));
              for (let c = 0; c < C; c++) {
                zs!.set(c ? base.add(c) : base, zv[c]!);
                ss!.set(c ? base.add(c) : base, sv[c]!);
              }
            });
          });
        }
        k.barrier();
        const kLen = k.let('kLen', k.call<'u32'>('min', [k.u32(tileK), K.sub(k0)]));
        const cols = Array.from({ length: blockN }, (_, j) => k.let(`col${j}`, tileCol(j)));
        k.for('kk', k.u32(0), kLen, (kk) => {
          const a = Array.from({ length: blockM }, (_, i) => k.let(`a${i}`, xs.at(kk.mul(tileM).add(ty.mul(blockM).add(i)))));
          const wrow = k.let('wrow', kk.mul(tileN));
          const bv = Array.from({ length: blockN }, (_, j) => k.let(`w${j}`, ws.at(wrow.add(cols[j]!))));
          const dst = grp ? gacc : seg;
          for (let i = 0; i < blockM; i++) {
            if (grp) sx[i]!.set(sx[i]!.add(a[i]!));
            for (let j = 0; j < blockN; j++) dst[i]![j]!.set(k.call('fma', [a[i]!, bv[j]!, dst[i]![j]!]));
          }
        });
        const next = k.let('kNext', k0.add(tileK));
        // A group's last tile: fold the group into the segment (zs/ss are read before the barrier
        // after which the next group's first tile overwrites them).
        if (grp) {
          k.if(next.rem(grp.size).eq(0), () => {
            const zc = cols.map((c, j) => k.let(`zc${j}`, zs!.at(c)));
            const sc = cols.map((c, j) => k.let(`sc${j}`, ss!.at(c)));
            for (let i = 0; i < blockM; i++) {
              for (let j = 0; j < blockN; j++) {
                applyGroup(k, seg[i]![j]!, gacc[i]![j]!, sx[i]!, zc[j]!, sc[j]!);
                gacc[i]![j]!.set(0);
              }
              sx[i]!.set(0);
            }
          });
        }
        k.barrier();
        // Segment boundary (segLen is a multiple of tileK and of the group) or the end of K: fold
        // into the total.
        k.if(next.rem(segLen).eq(0).or(next.ge(K)), () => {
          for (let i = 0; i < blockM; i++) {
            for (let j = 0; j < blockN; j++) {
              tot[i]![j]!.set(tot[i]![j]!.add(seg[i]![j]!));
              seg[i]![j]!.set(0);
            }
          }
        });
      }, tileK);

      for (let i = 0; i < blockM; i++) {
        const m = k.let(`m${i}`, row0.add(ty.mul(blockM).add(i)));
        k.if(m.lt(M), () => {
          const n0 = k.let(`n0_${i}`, out0.add(tx.mul(bh)));
          storeBlockRow(k, e, epi, N, m, n0, bh, i, (j) => tot[i]![j]!, (j) => tot[i]![bh + j]!);
        });
      }
    },
  }));
}
