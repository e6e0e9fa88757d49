// Ragged paged attention on tensors. The KV cache is a pair of tensors [numBlocks, blockSize,
// numKvHeads, headDim] (f32, or u32 [.., headDim/2] holding f16 pairs); each sequence brings its
// new tokens' rows of q, how many tokens its cache already holds, and its block table.
import { pagedAttention as pagedAttentionOp } from '../../../codegen/kernels/pagedAttention.js';
import { kvAppend as kvAppendOp } from '../../../codegen/kernels/kvAppend.js';
import type { Device } from '../../backend/device.js';
import { type RaggedSequence, attentionTargetCtas, runKvAppend, runPagedAttention, slotMapping } from '../attention.js';
import { PerDevice } from './cache.js';
import { expectTensor, type Tensor, tensor, TensorShapeError } from '../tensor.js';

export interface KvCacheTensors {
  k: Tensor;
  v: Tensor;
  /** 'f16' when the tensors are u32 words holding f16 pairs (default: from their dtype). */
  kvDtype?: 'f32' | 'f16';
}

const attentionOps = new PerDevice<ReturnType<typeof pagedAttentionOp>>();
const appendOps = new PerDevice<ReturnType<typeof kvAppendOp>>();

interface CacheShape {
  numBlocks: number; blockSize: number; numKvHeads: number; headDim: number; kvDtype: 'f32' | 'f16';
  k: Tensor<'f32' | 'u32'>; v: Tensor<'f32' | 'u32'>;
}

function cacheShape(op: string, c: KvCacheTensors): CacheShape {
  const kvDtype = c.kvDtype ?? (c.k.dtype === 'u32' ? 'f16' : 'f32');
  const t: 'f32' | 'u32' = kvDtype === 'f16' ? 'u32' : 'f32';
  const k = expectTensor(op, 'kCache', c.k, t, [null, null, null, null], '[numBlocks, blockSize, numKvHeads, headDim' + (kvDtype === 'f16' ? '/2]' : ']'));
  const v = expectTensor(op, 'vCache', c.v, t, [...k.shape], `[${k.shape.join(', ')}] (as kCache)`);
  const [numBlocks = 0, blockSize = 0, numKvHeads = 0, words = 0] = k.shape;
  return { numBlocks, blockSize, numKvHeads, headDim: kvDtype === 'f16' ? words * 2 : words, kvDtype, k, v };
}

/** Write the new tokens' k and v (f32 [T, numKvHeads, headDim]) into the cache at the sequences' positions. */
export function appendKv(device: Device, cache: KvCacheTensors, k: Tensor, v: Tensor, seqs: readonly RaggedSequence[]): void {
  const c = cacheShape('appendKv', cache);
  const ks = expectTensor('appendKv', 'k', k, 'f32', [null, c.numKvHeads, c.headDim], '[T, numKvHeads, headDim]');
  const T = ks.shape[0] ?? 0;
  const vs = expectTensor('appendKv', 'v', v, 'f32', [T, c.numKvHeads, c.headDim], '[T, numKvHeads, headDim]');
  const slots = slotMapping({ numTokens: T, seqs: [...seqs] }, c.blockSize);
  const p = { headDim: c.headDim, kvDtype: c.kvDtype, blockSize: c.blockSize };
  const op = appendOps.get(device, p, () => kvAppendOp({ ...p, caps: device.caps }));
  runKvAppend(device, op, { kNew: ks.buffer, vNew: vs.buffer, kCache: c.k.buffer, vCache: c.v.buffer }, slots,
    { numKvHeads: c.numKvHeads, numBlocks: c.numBlocks, blockSize: c.blockSize, headDim: c.headDim });
}

export interface AttentionOptions {
  /** Sliding window in positions (0: none). */
  window?: number;
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
}

/**
 * softmax(q·Kᵀ·scale)·V for q f32 [T, numHeads, headDim] against the cache, causal within each
 * sequence (new token j sees positions ≤ ctxLen + j): a new f32 [T, numHeads, headDim] tensor.
 */
export function pagedAttention(device: Device, q: Tensor, cache: KvCacheTensors, seqs: readonly RaggedSequence[], o: AttentionOptions = {}): Tensor<'f32'> {
  const c = cacheShape('pagedAttention', cache);
  const qs = expectTensor('pagedAttention', 'q', q, 'f32', [null, null, c.headDim], '[T, numHeads, headDim]');
  const [T = 0, H = 0] = qs.shape;
  if (H % c.numKvHeads) throw new TensorShapeError(`pagedAttention: ${H} query heads are not a multiple of the cache's ${c.numKvHeads} KV heads`);
  const p = { headDim: c.headDim, groupSize: H / c.numKvHeads, kvDtype: c.kvDtype, blockSize: c.blockSize, targetCtas: attentionTargetCtas(device) };
  const op = attentionOps.get(device, p, () => pagedAttentionOp({ ...p, caps: device.caps }));
  const maxBlocksPerSeq = Math.max(1, ...seqs.map((s) => s.blockTable.length));
  const out = tensor(device, 'f32', [T, H, c.headDim], undefined, 'pagedAttention.out');
  try {
    runPagedAttention(device, op, { q: qs.buffer, kCache: c.k.buffer, vCache: c.v.buffer, out: out.buffer },
      { numTokens: T, seqs: [...seqs], ...(o.window !== undefined ? { window: o.window } : {}), ...(o.scale !== undefined ? { scale: o.scale } : {}) },
      { numBlocks: c.numBlocks, numKvHeads: c.numKvHeads, maxBlocksPerSeq });
  } catch (e) {
    out.free();
    throw e;
  }
  return out;
}
