// What the two paged-attention ops (pagedAttention, attentionRows) share at the op level: the
// bindings a caller passes and the checks on the sizes, so either op can stand in for the other
// (src/ops/attention.ts runPagedAttention runs both).
import { storage } from '../dsl/index.js';
import type { AttentionSizes } from './pagedAttentionConfig.js';

/** The op's bindings: q, kCache, vCache (u32 words of f16 pairs for f16 KV), blockTables, tiles (u32), out. */
export function attentionOpBindings(kvDtype: 'f32' | 'f16') {
  const kvT = kvDtype === 'f16' ? 'u32' : 'f32';
  return {
    q: storage('f32', 'read'),
    kCache: storage(kvT, 'read'),
    vCache: storage(kvT, 'read'),
    blockTables: storage('u32', 'read'),
    tiles: storage('u32', 'read'),
    out: storage('f32', 'read_write'),
  };
}

/** Throws, naming the op and the size, unless `positive` are positive integers, window a non-negative integer and scale positive and finite. */
export function checkAttentionSizes(opName: string, s: AttentionSizes, positive: readonly (keyof AttentionSizes)[]): void {
  for (const key of positive) {
    if (!Number.isInteger(s[key]) || s[key] < 1) throw new Error(`op '${opName}': size ${key} = ${s[key]} must be a positive integer`);
  }
  if (!Number.isInteger(s.window) || s.window < 0) throw new Error(`op '${opName}': window = ${s.window} must be a non-negative integer`);
  if (!(s.scale > 0) || !Number.isFinite(s.scale)) throw new Error(`op '${opName}': scale = ${s.scale} must be positive and finite`);
}
