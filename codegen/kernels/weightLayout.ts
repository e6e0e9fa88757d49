// How a linear layer's weight matrix lies in memory (WeightLayout) and the index arithmetic the
// weight sources (linearCommon.ts WeightSource) share for it; toWeightLayout re-tiles on the host.
import type { Val } from '../dsl/index.js';

/** The uniforms a source's index arithmetic reads (linearCommon.ts SourceUniforms). */
interface LayoutUniforms { K: Val<'u32'>; Nw: Val<'u32'> }

/**
 * How a weight matrix [K, rowWords] (u32 words or f32 elements) lies in memory. 'rows': row-major,
 * as checkpoints store it — a GPU's lanes read adjacent words of one row. 'strips': cut into
 * column strips of STRIP_WORDS words (16 bytes), each strip's K rows stored one after another,
 * strips in column order — for a CPU, where one invocation walks its columns down K alone: its
 * reads become one sequential stream instead of a 16-byte read per row 2–4 KB apart (the hardware
 * prefetchers follow the stream; bench/notes/cpu.md "Weight strips"). Same values, same
 * arithmetic: results are bit-identical; only the addresses change.
 */
export type WeightLayout = 'rows' | 'strips';

/** The kernel-name fragment of a source in `layout` ('s' for strips), so the two never share a kernel. */
export function layoutTag(layout: WeightLayout): string {
  return layout === 'strips' ? 's' : '';
}
export const STRIP_WORDS = 4;

/** Whether rows of `rowWords` words cut into whole strips (else the op keeps 'rows'). */
export function stripsFit(rowWords: number): boolean {
  return rowWords % STRIP_WORDS === 0;
}

/** A source's row part of the index for row kk, in units of `unitWords`-word vectors (1, 2, 4). */
export function rowIndex(layout: WeightLayout, kk: Val<'u32'>, unitsPerRow: () => Val<'u32'>, unitWords: number): Val<'u32'> {
  if (layout === 'rows') return kk.mul(unitsPerRow());
  const perStrip = STRIP_WORDS / unitWords;
  return perStrip === 1 ? kk : kk.mul(perStrip);
}

/** Index of `unit` (a `unitWords`-word vector) of the row whose part is `row` (rowIndex). */
export function unitIndex(layout: WeightLayout, u: LayoutUniforms, row: Val<'u32'>, unit: Val<'u32'>, unitWords: number): Val<'u32'> {
  if (layout === 'rows') return row.add(unit);
  const perStrip = STRIP_WORDS / unitWords;
  if (perStrip === 1) return unit.mul(u.K).add(row);
  const shift = Math.log2(perStrip);
  return unit.shr(shift).mul(u.K.mul(perStrip)).add(row).add(unit.band(perStrip - 1));
}

/** Host side: a [K, rowWords] matrix (row-major, as stored) in `layout`. */
export function toWeightLayout<T extends Uint32Array | Float32Array>(layout: WeightLayout, data: T, K: number, rowWords: number): T {
  if (layout === 'rows') return data;
  if (!stripsFit(rowWords)) throw new Error(`weight layout 'strips': rows of ${rowWords} words do not cut into strips of ${STRIP_WORDS}`);
  if (data.length !== K * rowWords) throw new Error(`weight layout 'strips': ${data.length} elements is not K · rowWords = ${K} · ${rowWords}`);
  const out = new (data.constructor as new (n: number) => T)(data.length);
  for (let kk = 0; kk < K; kk++) {
    for (let j = 0; j < rowWords; j += STRIP_WORDS) {
      const at = (j / STRIP_WORDS) * K * STRIP_WORDS + kk * STRIP_WORDS;
      for (let w = 0; w < STRIP_WORDS; w++) out[at + w] = data[kk * rowWords + j + w]!;
    }
  }
  return out;
}
