// Bank-conflict-free row layouts for workgroup (shared) memory, chosen at kernel build time.
//
// A tile of rows of `words` 4-byte words is stored row r at r · stride, word c of a row at
// c + skew · ⌊c / 32⌋ (each 32-word segment shifted by `skew` banks). An odd stride makes a warp
// whose lanes walk down a column (lane = row) touch 32 different banks; the skew spreads lanes that
// each write several consecutive words (a 16-byte global load stored word by word) over all banks.
// Which (stride, skew) is conflict-free depends on the kernel's access patterns, so the kernel
// describes them and the search below simulates the 32 banks as NVIDIA hardware serves a 4-byte
// warp access: one wavefront per distinct word the busiest bank holds (lanes sharing a word are a
// broadcast).

export interface RowLayout {
  /** Words from one row's start to the next. */
  stride: number;
  /** Banks each 32-word segment of a row is shifted by. */
  skew: number;
  /** Words of a row (before padding). */
  words: number;
}

/** Offset of word c within its row. */
export function rowOffset(l: RowLayout, c: number): number {
  return c + l.skew * Math.floor(c / 32);
}
/** Words one row occupies, skew included (the smallest legal stride). */
export function rowSpan(words: number, skew: number): number {
  return words + skew * Math.max(0, Math.ceil(words / 32) - 1);
}

/** Extra wavefronts of one warp access (word addresses, -1 for idle lanes) over the ideal. */
export function excessWavefronts(lanes: readonly number[]): number {
  const distinct = [...new Set(lanes)].filter((a) => a >= 0);
  if (!distinct.length) return 0;
  const perBank = new Array<number>(32).fill(0);
  for (const a of distinct) perBank[a % 32]!++;
  return Math.max(...perBank) - Math.ceil(distinct.length / 32);
}

/**
 * The cheapest layout for rows of `words` words: fewest extra wavefronts over the warp accesses
 * `accesses(layout)` yields, then the smallest stride. Tries skews 0..3 and strides up to 32 words
 * of padding.
 */
export function conflictFreeRows(words: number, accesses: (l: RowLayout) => Iterable<readonly number[]>): RowLayout & { excess: number } {
  let best: (RowLayout & { excess: number }) | undefined;
  for (let skew = 0; skew < 4; skew++) {
    if (skew && words <= 32) break;
    const min = rowSpan(words, skew);
    for (let stride = min; stride <= min + 32; stride++) {
      const l = { stride, skew, words };
      let excess = 0;
      for (const a of accesses(l)) excess += excessWavefronts(a);
      if (!best || excess < best.excess || (excess === best.excess && stride < best.stride)) best = { ...l, excess };
      if (excess === 0) break;
    }
  }
  return best!;
}
