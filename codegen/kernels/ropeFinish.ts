// The QKV projection's split-K finish with RoPE and the KV-cache append, as one launch that needs
// no device fence (WebGPU's path; fusedLinear.ts uses it where the finish cannot fold into the
// GEMV): one invocation per (token, head, pair of adjacent elements) sums the partials of its
// columns and of their rotation partners in segment order from +0 (the finish kernel's
// operations), applies the epilogue (bias), rotates q and k as ropeQkv does, and writes q, or K/V
// into the token's cache slot (kvAppend's layout; f16 packed two per word, the word its own).
import type { ArrayRef, Caps, Val } from '../dsl/index.js';
import { kernel, storage } from '../dsl/index.js';
import { capsKey, type Epilogue, type EpilogueRefs, epilogueTag, epilogueValue, memoKernel } from './linearCommon.js';
import type { RopeAppendEpilogue } from './linearFusion.js';
import { ropeRotatedElement } from './rope.js';

/** Bindings: part f32 [S, M, N], bias? f32 [N], pos, table, slots, q, kCache, vCache. Uniforms M, N, S, maxPos, numBlocks. */
export function ropeFinishKernel(epilogue: Epilogue, r: RopeAppendEpilogue, caps: Caps, workgroupSize = 64) {
  const e = epilogue;
  const wg = workgroupSize, hd = r.headDim, half = hd / 2, f16 = r.kvDtype === 'f16', perPos = f16 ? hd / 2 : hd;
  const H = r.heads + 2 * r.kvHeads;
  const cacheT = f16 ? 'u32' : 'f32';
  const key = `ropeFinish/${epilogueTag(e)}/${r.layout}/${r.heads}x${r.kvHeads}x${hd}/${r.kvDtype}/${r.blockSize}/${wg}/${capsKey(caps)}`;
  return memoKernel(key, () => kernel({
    name: `ropeFinish_${r.layout}_${r.kvDtype}`,
    params: { ...e, rope: r, workgroupSize: wg },
    caps,
    workgroupSize: wg,
    bindings: {
      part: storage('f32', 'read', { shape: '[S, M, N]' }),
      ...(e.bias ? { bias: storage('f32', 'read', { shape: '[N]' }) } : {}),
      pos: storage('u32', 'read', { shape: '[M]' }),
      table: storage('f32', 'read', { shape: `[maxPos, ${hd}]` }),
      slots: storage('i32', 'read', { shape: '[M]' }),
      q: storage('f32', 'read_write', { shape: `[M, ${r.heads * hd}]` }),
      kCache: storage(cacheT, 'read_write', { shape: `[numBlocks, ${r.blockSize}, ${r.kvHeads * perPos}]` }),
      vCache: storage(cacheT, 'read_write', { shape: `[numBlocks, ${r.blockSize}, ${r.kvHeads * perPos}]` }),
    },
    uniforms: { M: 'u32', N: 'u32', S: 'u32', maxPos: 'u32', numBlocks: 'u32' },
    grid: `[ceil(${(H * hd) / 2} / ${wg}), M]`,
    body(k, b, u) {
      const refs: Record<string, ArrayRef<any, boolean>> = b;
      const idx = k.let('idx', k.globalId.x);
      const t = k.let('t', k.workgroupId.y);
      k.if(idx.ge(H * half), () => k.return());
      const h = k.let('h', idx.div(half));
      const e0 = k.let('e0', idx.rem(half).mul(2));
      const epi: EpilogueRefs = { out: b.q, ...(refs.bias ? { bias: refs.bias as ArrayRef<'f32', boolean> } : {}) };
      /** Column c of token t, finished: partials summed in segment order from +0, then the epilogue. */
      const fin = (el: Val<'u32'>, tag: string): Val<'f32'> => {
        const col = k.let(`col${tag}`, h.mul(hd).add(el));
        const sum = k.var(`sum${tag}`, 'f32', 0);
        k.for(`s${tag}`, k.u32(0), u.S, (s) => sum.set(sum.add(b.part.at(s.mul(u.M).add(t).mul(u.N).add(col)))));
        return k.let(`fin${tag}`, epilogueValue(k, e, epi, u.N, t, col, sum));
      };
      const p = k.let('p', b.pos.at(t));
      /** Element e of the head, finished and rotated with its pair partner (ropeQkv's operations). */
      const rotated = (el: Val<'u32'>, tag: string): Val<'f32'> => k.let(`rot${tag}`, ropeRotatedElement(k, r.layout, half, el,
        (i0, i1) => [fin(i0, `${tag}a`), fin(i1, `${tag}b`)], { table: b.table, p, maxPos: u.maxPos },
        { second: `second${tag}`, i: `i${tag}`, y0: `y0${tag}`, y1: `y1${tag}` }));
      const e1 = k.let('e1', e0.add(1));
      const isQ = k.let('isQ', h.lt(r.heads)), isK = k.let('isK', h.lt(r.heads + r.kvHeads));
      k.if(isQ, () => {
        const dst = k.let('qDst', t.mul(r.heads).add(h).mul(hd));
        b.q.set(dst.add(e0), rotated(e0, 'q0'));
        b.q.set(dst.add(e1), rotated(e1, 'q1'));
      }, () => {
        const slot = k.let('slot', b.slots.at(t));
        k.if(slot.ge(0), () => {
          const kvh = k.let('kvh', k.select(isK, h.sub(r.heads), h.sub(r.heads + r.kvHeads)));
          const base = k.let('base', k.u32(slot).mul(r.kvHeads * perPos).add(kvh.mul(perPos)));
          const write = (cache: ArrayRef<'f32' | 'u32', true>, v0: Val<'f32'>, v1: Val<'f32'>) => {
            if (f16) (cache as ArrayRef<'u32', true>).set(base.add(e0.div(2)), k.pack2x16float(k.vec('vec2<f32>', v0, v1)));
            else {
              (cache as ArrayRef<'f32', true>).set(base.add(e0), v0);
              (cache as ArrayRef<'f32', true>).set(base.add(e1), v1);
            }
          };
          k.if(isK, () => write(b.kCache.writableRef(), rotated(e0, 'k0'), rotated(e1, 'k1')),
            () => write(b.vCache.writableRef(), fin(e0, 'v0'), fin(e1, 'v1')));
        });
      });
    },
  }));
}
