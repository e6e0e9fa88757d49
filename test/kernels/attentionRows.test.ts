// attentionRows (the CPU executor's attention op): random ragged batches (q_len 1..37, contexts
// crossing cache blocks, random non-contiguous block tables, GQA 1..8, head_dim 8..128, f32 and
// f16 KV, sliding windows) against a float64 reference on the values the cache holds; a
// sequence's rows bit-identical alone, in a mixed batch, chunked as a prefill and token by token,
// whatever the tile size and heads per invocation; the same bits as pagedAttention where that one sums per warp.
import { describe, expect, it } from 'vitest';
import { attentionRows, attentionRowsConfig } from '../../codegen/kernels/attentionRows.js';
import { pagedAttention } from '../../codegen/kernels/pagedAttention.js';
import { attentionConfig } from '../../codegen/kernels/pagedAttentionConfig.js';
import { f32ArrayToF16, packF16Pairs } from '../../codegen/dsl/f16.js';
import type { Device } from '../../src/backend/device.js';
import { runPagedAttention } from '../../src/ops/attention.js';
import { forEachBackend } from '../backends.js';
import { freshSeed, rng } from '../util.js';
import { BS, type Case, type CaseSpec, makeCase, reference, type Shape, seq0Alone, seq0RowBits } from './attentionCases.js';
import { Buffers, maxRowErr } from './buffers.js';

const rowsCase = (r: () => number, shape: Shape, spec: CaseSpec) => makeCase(r, shape, spec, { spareBlocks: 3, kvAsCached: true });

type Kernel = { kind: 'rows'; tileTokens?: number; headsPerInvocation?: number } | { kind: 'paged'; chunkSize: number };

/** Write every position's K/V into its cache slot (unwritten words poisoned), run the op, read out (poisoned first). */
async function runCase(dev: Device, c: Case, kern: Kernel = { kind: 'rows' }): Promise<Float32Array> {
  const { headDim: D, group: G, kvHeads: KVH, kvDtype } = c.shape;
  const rowKV = KVH * D, f16 = kvDtype === 'f16';
  const k = new Float32Array(c.numBlocks * BS * rowKV).fill(Number.NaN), v = k.slice();
  c.seqs.forEach((s, si) => {
    for (let p = 0; p < s.ctxLen + s.qLen; p++) {
      const slot = s.blockTable[Math.floor(p / BS)]! * BS + (p % BS);
      k.set(c.k[si]!.subarray(p * rowKV, (p + 1) * rowKV), slot * rowKV);
      v.set(c.v[si]!.subarray(p * rowKV, (p + 1) * rowKV), slot * rowKV);
    }
  });
  const bufs = new Buffers(dev);
  try {
    const cache = (a: Float32Array, label: string) => (f16 ? bufs.input('u32', packF16Pairs(f32ArrayToF16(a)), label) : bufs.input('f32', a, label));
    const kCache = cache(k, 'kCache'), vCache = cache(v, 'vCache');
    const out = bufs.output('f32', c.numTokens * KVH * G * D, 'out');
    const params = { headDim: D, groupSize: G, kvDtype, blockSize: BS, caps: dev.caps };
    const o = kern.kind === 'rows' ? attentionRows({ ...params, tileTokens: kern.tileTokens, headsPerInvocation: kern.headsPerInvocation }) : pagedAttention({ ...params, chunkSize: kern.chunkSize });
    runPagedAttention(dev, o, { q: bufs.input('f32', c.q, 'q'), kCache, vCache, out },
      { numTokens: c.numTokens, seqs: c.seqs, window: c.shape.window }, { numBlocks: c.numBlocks, numKvHeads: KVH, maxBlocksPerSeq: c.maxBlocksPerSeq });
    return await bufs.read(out);
  } finally { bufs.free(); }
}

/** Prefills (37 and 5 tokens), decodes and an empty context; contexts up to ~300, crossing blocks. */
function raggedSpec(r: () => number): CaseSpec {
  const ctx = () => Math.floor(r() * 300);
  return [{ qLen: 37, ctxLen: ctx() }, { qLen: 1, ctxLen: 0 }, { qLen: 5, ctxLen: ctx() }, { qLen: 1, ctxLen: ctx() }, { qLen: 5, ctxLen: 0 }, { qLen: 1, ctxLen: 17 }];
}

const shapes: Shape[] = [
  { headDim: 32, group: 2, kvHeads: 4, kvDtype: 'f32' }, // brown-target's heads
  { headDim: 32, group: 2, kvHeads: 4, kvDtype: 'f16' },
  { headDim: 8, group: 1, kvHeads: 3, kvDtype: 'f32', window: 1 },
  { headDim: 64, group: 4, kvHeads: 2, kvDtype: 'f16', window: 50 },
  { headDim: 80, group: 8, kvHeads: 1, kvDtype: 'f32', window: 100 },
  { headDim: 128, group: 4, kvHeads: 2, kvDtype: 'f16' },
];

forEachBackend('attentionRows', (dev) => {
  for (const shape of shapes) {
    const label = `head_dim ${shape.headDim}, GQA ${shape.group}:1, ${shape.kvDtype} KV${shape.window ? `, window ${shape.window}` : ''}`;
    it(`ragged batch vs float64: ${label}, every row within 2e-6`, async () => {
      const r = rng(freshSeed(`attentionRows ${label}`));
      const c = rowsCase(r, shape, raggedSpec(r));
      const out = await runCase(dev, c);
      expect(out.every(Number.isFinite)).toBe(true);
      // Measured ≤ 3.0e-7 over these shapes (cpu, llvmpipe; window 1: exactly 0): the reference reads the values the cache holds.
      expect(maxRowErr(out, reference(c), c.numTokens * shape.kvHeads * shape.group, shape.headDim)).toBeLessThan(2e-6);
    }, 120_000);
  }

  for (const kvDtype of ['f32', 'f16'] as const) {
    it(`${kvDtype} KV: a sequence's rows are bit-identical alone, in a mixed batch, chunked as a prefill, token by token, at any tile size and heads per invocation`, async () => {
      const r = rng(freshSeed(`attentionRows batch invariance ${kvDtype}`));
      const shape: Shape = { headDim: 32, group: 4, kvHeads: 2, kvDtype, window: 40 };
      // The sequence under test is sequence 0: 7 new tokens after 45 cached ones (crossing a block end).
      const mixed = rowsCase(r, shape, [{ qLen: 7, ctxLen: 45 }, ...raggedSpec(r)]);
      const rowLen = shape.kvHeads * shape.group * shape.headDim;
      const mine = seq0RowBits(mixed, await runCase(dev, mixed));
      const only = (qFrom: number, qLen: number) => seq0Alone(mixed, qFrom, qLen);
      for (const v of [{ tileTokens: 1 }, { tileTokens: 3, headsPerInvocation: 1 }, { tileTokens: 8, headsPerInvocation: 4 }]) {
        expect(seq0RowBits(only(0, 7), await runCase(dev, only(0, 7), { kind: 'rows', ...v })), `alone, ${JSON.stringify(v)}`).toEqual(mine);
      }
      const parts = [seq0RowBits(only(0, 3), await runCase(dev, only(0, 3), { kind: 'rows', tileTokens: 2 })), seq0RowBits(only(3, 4), await runCase(dev, only(3, 4)))];
      expect(Uint32Array.from([...parts[0]!, ...parts[1]!]), 'prefill chunked 3 + 4').toEqual(mine);
      for (let j = 0; j < 7; j++) expect(seq0RowBits(only(j, 1), await runCase(dev, only(j, 1))), `token ${j} as a decode`).toEqual(mine.slice(j * rowLen, (j + 1) * rowLen));
    }, 180_000);
  }

  // On devices where pagedAttention sums each block per warp (32-wide subgroups, blocks of 16) its
  // single-chunk rows take the same f32 operations in the same order: the model's bits do not move
  // where the forward swaps one op for the other (the cpu device).
  it('the same bits as pagedAttention (one chunk per row) where that one sums per warp', async (ctx) => {
    const warp = attentionConfig({ headDim: 32, groupSize: 2, caps: dev.caps }).warpSoftmax;
    if (!warp) ctx.skip();
    const r = rng(freshSeed('attentionRows vs pagedAttention'));
    for (const shape of [shapes[1]!, { headDim: 64, group: 4, kvHeads: 2, kvDtype: 'f32', window: 50 } as Shape]) {
      const c = rowsCase(r, shape, raggedSpec(r));
      const paged = await runCase(dev, c, { kind: 'paged', chunkSize: 512 });
      expect(new Uint32Array((await runCase(dev, c)).buffer), `${shape.headDim} ${shape.kvDtype}`).toEqual(new Uint32Array(paged.buffer));
    }
  }, 180_000);
});

describe('attentionRows config', () => {
  it('gives every row one chunk and rejects bad parameters by name', () => {
    const c = attentionRowsConfig({ headDim: 32, groupSize: 2 });
    expect(c.chunkSize % c.blockSize).toBe(0);
    expect(c.chunkSize).toBeGreaterThanOrEqual(2 ** 30);
    expect([c.rows, c.headsPerInvocation, c.workgroupSize]).toEqual([16, 2, 8]); // 2 heads × 32 ≤ 64
    expect(attentionRowsConfig({ headDim: 128, groupSize: 4 }).headsPerInvocation).toBe(1);
    expect(() => attentionRowsConfig({ headDim: 32, groupSize: 4, headsPerInvocation: 3 })).toThrow(/headsPerInvocation 3 does not divide groupSize 4/);
    expect(() => attentionRowsConfig({ headDim: 33, groupSize: 2, kvDtype: 'f16' })).toThrow(/headDim 33 .* even for f16/);
    expect(() => attentionRowsConfig({ headDim: 32, groupSize: 9 })).toThrow(/groupSize 9/);
    expect(() => attentionRowsConfig({ headDim: 32, groupSize: 2, tileTokens: 0 })).toThrow(/tileTokens 0/);
    const o = attentionRows({ headDim: 32, groupSize: 2 });
    const sizes = { numTokens: 1, numSeqs: 1, numKvHeads: 1, numBlocks: 1, maxBlocksPerSeq: 1, numTiles: 1, maxTileChunks: 2, partRows: 0, window: 0, scale: 0.1 };
    expect(() => o.plan(sizes)).toThrow(/maxTileChunks = 2/);
  });
});
