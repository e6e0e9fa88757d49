// Exclusive prefix sum over a large array (f32 or u32), as one multi-launch op:
//   1. scanBlocks: each workgroup scans its block of B = workgroupSize × itemsPerThread elements
//      and writes the block's total to sums[block];
//   2. the same op runs on `sums` (recursively, until one block is left) giving each block's offset;
//   3. addOffsets adds block offsets back, level by level.
// Launch order is the only synchronisation: no workgroup waits on another.
import { kernel, op, storage } from '../dsl/index.js';
import type { Caps, Plan } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';

export type ScanType = 'f32' | 'u32';

export interface ScanParams {
  /** Element type: f32, or u32 (wrapping mod 2³², exact). */
  t?: ScanType;
  workgroupSize?: number;
  /** Consecutive elements each invocation scans sequentially. */
  itemsPerThread?: number;
  caps?: Caps;
}

/** out = exclusive scan of each B-block of x; sums[b] = total of block b. */
export function scanBlocks(p: ScanParams = {}) {
  const t = p.t ?? 'f32';
  const wg = p.workgroupSize ?? 256;
  const items = p.itemsPerThread ?? 4;
  const B = wg * items;
  return kernel({
    name: `scanBlocks_${t}`,
    params: { t, workgroupSize: wg, itemsPerThread: items },
    caps: p.caps ?? BASELINE_CAPS,
    workgroupSize: wg,
    bindings: {
      x: storage(t, 'read', { shape: '[n]' }),
      out: storage(t, 'read_write', { shape: '[n]' }),
      sums: storage(t, 'read_write', { shape: `[ceil(n / ${B})]` }),
    },
    uniforms: { n: 'u32' },
    grid: `[ceil(n / ${B})]`,
    body(k, { x, out, sums }, { n }) {
      const block = k.shared('block', t, B);
      const totals = k.shared('totals', t, wg);
      const lid = k.let('lid', k.localIndex);
      const base = k.let('base', k.workgroupId.x.mul(B));
      const zero = k.cast(t, 0);

      // Coalesced load of the block (zeros past the end), then each invocation scans its own
      // `items` consecutive elements in place and keeps their total.
      for (let j = 0; j < items; j++) {
        const i = k.let(`li${j}`, base.add(lid).add(j * wg));
        const v = k.var(`lv${j}`, zero);
        k.if(i.lt(n), () => v.set(x.at(i)));
        block.set(lid.add(j * wg), v);
      }
      k.barrier();
      const mine = k.let('mine', lid.mul(items));
      const run = k.var('run', zero);
      for (let j = 0; j < items; j++) {
        const v = k.let(`e${j}`, block.at(mine.add(j)));
        block.set(mine.add(j), run);
        run.set(run.add(v));
      }

      // Inclusive Hillis–Steele scan of the invocation totals (log2(wg) rounds, read and write
      // separated by barriers), then shift each invocation's elements by its exclusive prefix.
      totals.set(lid, run);
      k.barrier();
      for (let off = 1; off < wg; off *= 2) {
        const prev = k.var(`p${off}`, zero);
        k.if(lid.ge(off), () => prev.set(totals.at(lid.sub(off))));
        k.barrier();
        totals.set(lid, totals.at(lid).add(prev));
        k.barrier();
      }
      const offset = k.var('offset', zero);
      k.if(lid.gt(0), () => offset.set(totals.at(lid.sub(1))));
      for (let j = 0; j < items; j++) block.set(mine.add(j), block.at(mine.add(j)).add(offset));
      k.if(lid.eq(0), () => sums.set(k.workgroupId.x, totals.at(wg - 1)));
      k.barrier();

      for (let j = 0; j < items; j++) {
        const i = k.let(`si${j}`, base.add(lid).add(j * wg));
        k.if(i.lt(n), () => out.set(i, block.at(lid.add(j * wg))));
      }
    },
  });
}

/** data[i] += offsets[floor(i / B)] for i < n. */
export function addBlockOffsets(p: ScanParams = {}) {
  const t = p.t ?? 'f32';
  const B = (p.workgroupSize ?? 256) * (p.itemsPerThread ?? 4);
  const wg = 256;
  return kernel({
    name: `addBlockOffsets_${t}`,
    params: { t, blockSize: B },
    caps: p.caps ?? BASELINE_CAPS,
    workgroupSize: wg,
    bindings: {
      data: storage(t, 'read_write', { shape: '[n]' }),
      offsets: storage(t, 'read', { shape: `[ceil(n / ${B})]` }),
    },
    uniforms: { n: 'u32' },
    grid: `[ceil(n / ${wg})]`,
    body(k, { data, offsets }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.lt(n), () => data.set(i, data.at(i).add(offsets.at(i.div(B)))));
    },
  });
}

/** out[i] = x[0] + … + x[i−1] (out[0] = 0). Sizes: { n } with n ≥ 1. */
export function scan(p: ScanParams = {}) {
  const t = p.t ?? 'f32';
  const B = (p.workgroupSize ?? 256) * (p.itemsPerThread ?? 4);
  const blocks = scanBlocks(p), add = addBlockOffsets(p);
  const name = `scan_${t}`;
  const o = op(name, {
    x: storage(t, 'read', { shape: '[n]' }),
    out: storage(t, 'read_write', { shape: '[n]' }),
  }, ({ n }: { n: number }): Plan => {
    if (!Number.isInteger(n) || n < 1) throw new Error(`op '${name}': size n = ${n} must be a positive integer`);
    const temps: Plan['temps'] = {};
    const steps: Plan['steps'] = [];
    // Level l scans `src` (len) into `dst` and writes block totals to sums{l+1}; level l+1 scans
    // those totals into scanned{l+1}, which are the offsets level l adds back.
    const down: { dst: string; len: number; offsets: string }[] = [];
    let src = 'x', dst = 'out', len = n, level = 0;
    for (;;) {
      const parts = Math.ceil(len / B);
      const sums = `sums${level + 1}`;
      temps[sums] = { t, length: parts };
      steps.push({ kernel: blocks, bind: { x: src, out: dst, sums }, uniforms: { n: len } });
      if (parts === 1) break;
      const scanned = `scanned${level + 1}`;
      temps[scanned] = { t, length: parts };
      down.push({ dst, len, offsets: scanned });
      src = sums; dst = scanned; len = parts; level++;
    }
    for (const d of down.reverse()) {
      steps.push({ kernel: add, bind: { data: d.dst, offsets: d.offsets }, uniforms: { n: d.len } });
    }
    return { temps, steps };
  });
  return Object.assign(o, { kernels: [blocks, add] });
}
