// Writes the new tokens' K and V (after RoPE) into their cache slots, before attention reads them.
// kNew, vNew: f32 [numTokens, numKvHeads, headDim]; slots: i32 [numTokens], slot = block ·
// blockSize + offset in the block, or −1 to skip the token (padding). Cache layout as in
// pagedAttention.ts: [numBlocks, blockSize, numKvHeads, headDim], f32 or f16 packed two per u32
// word (low half = the even element). One invocation writes one word of K and the same word of
// V — for f16 both halves of it — so no two invocations ever share a word.
import { kernel, op, storage } from '../dsl/index.js';
import type { Caps, Plan } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';

export interface KvAppendParams {
  headDim: number;
  kvDtype?: 'f32' | 'f16';
  blockSize?: number;
  workgroupSize?: number;
  caps?: Caps;
}

export function kvAppendKernel(p: KvAppendParams) {
  const D = p.headDim, f16 = (p.kvDtype ?? 'f32') === 'f16', BS = p.blockSize ?? 16, W = p.workgroupSize ?? 64;
  if (!Number.isInteger(D) || D < 2 || (f16 && D % 2)) throw new Error(`kvAppend: headDim ${D} must be a positive${f16 ? ' even' : ''} integer`);
  const perPos = f16 ? D / 2 : D; // words per (position, KV head)
  const cacheT = f16 ? 'u32' : 'f32';
  const newShape = `[numTokens, numKvHeads, ${D}]`;
  const cacheShape = `[numBlocks, ${BS}, numKvHeads, ${perPos}]`;
  return kernel({
    name: 'kvAppend',
    params: { headDim: D, kvDtype: f16 ? 'f16' : 'f32', blockSize: BS, workgroupSize: W },
    caps: p.caps ?? BASELINE_CAPS,
    workgroupSize: W,
    bindings: {
      kNew: storage('f32', 'read', { shape: newShape }),
      vNew: storage('f32', 'read', { shape: newShape }),
      slots: storage('i32', 'read', { shape: '[numTokens]' }),
      kCache: storage(cacheT, 'read_write', { shape: cacheShape }),
      vCache: storage(cacheT, 'read_write', { shape: cacheShape }),
    },
    uniforms: { numTokens: 'u32', numKvHeads: 'u32', numBlocks: 'u32' },
    grid: `[ceil(numKvHeads * ${perPos} / ${W}), numTokens]`,
    body(k, b, u) {
      const token = k.let('token', k.workgroupId.y);
      const w = k.let('w', k.workgroupId.x.mul(W).add(k.localIndex)); // word within the token's row
      const slot = k.let('slot', b.slots.at(token));
      const rowWords = k.let('rowWords', u.numKvHeads.mul(perPos));
      k.if(w.lt(rowWords).and(slot.ge(0)), () => {
        const dst = k.let('dst', k.u32(slot).mul(rowWords).add(w));
        if (f16) {
          const src = k.let('src', token.mul(rowWords).add(w).mul(2));
          const kc = b.kCache.typed('u32'), vc = b.vCache.typed('u32');
          kc.set(dst, k.pack2x16float(k.vec('vec2<f32>', b.kNew.at(src), b.kNew.at(src.add(1)))));
          vc.set(dst, k.pack2x16float(k.vec('vec2<f32>', b.vNew.at(src), b.vNew.at(src.add(1)))));
        } else {
          const src = k.let('src', token.mul(rowWords).add(w));
          const kc = b.kCache.typed('f32'), vc = b.vCache.typed('f32');
          kc.set(dst, b.kNew.at(src));
          vc.set(dst, b.vNew.at(src));
        }
      });
    },
  });
}

/** The op (one launch). Sizes: numTokens, numKvHeads, numBlocks. Slots are validated on the host
 *  (src/ops/attention.ts `checkSlots`): each −1 or inside the cache. */
export function kvAppend(p: KvAppendParams) {
  const kern = kvAppendKernel(p);
  const cacheT = (p.kvDtype ?? 'f32') === 'f16' ? 'u32' : 'f32';
  const o = op('kvAppend', {
    kNew: storage('f32', 'read'),
    vNew: storage('f32', 'read'),
    slots: storage('i32', 'read'),
    kCache: storage(cacheT, 'read_write'),
    vCache: storage(cacheT, 'read_write'),
  }, (s: { numTokens: number; numKvHeads: number; numBlocks: number }): Plan => {
    for (const key of ['numTokens', 'numKvHeads', 'numBlocks'] as const) {
      if (!Number.isInteger(s[key]) || s[key] < 1) throw new Error(`op 'kvAppend': size ${key} = ${s[key]} must be a positive integer`);
    }
    return {
      temps: {},
      steps: [{ kernel: kern, bind: { kNew: 'kNew', vNew: 'vNew', slots: 'slots', kCache: 'kCache', vCache: 'vCache' }, uniforms: s }],
    };
  });
  return Object.assign(o, { kernels: [kern] });
}
