// Fixed-shape decode steps (src/model/decodeBucket.ts, LlamaForward.decodeStep): a decode batch
// padded to its bucket gives the same bits as the plain forward for every real row, step after
// step; a bucket's launch sequence never changes between steps; and on a device with graph
// capture each bucket is captured once and replayed. Graph capture is exercised through
// GraphRecordingDevice (CUDA-graph semantics over any backend), since no GPU is needed here.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { BlockManager } from '../src/kv/blockManager.js';
import { type LLM, type LoadOptions, loadModel } from '../src/llm.js';
import {
  decodeAttentionSizes, decodeBuckets, type DecodeGeometry, maxDecodeChunks, padDecodeMetadata, pickBucket,
} from '../src/model/decodeBucket.js';
import { ForwardError, LlamaForward, type SeqInput } from '../src/model/forward.js';
import { GEMV_MAX_ROWS } from '../codegen/kernels/linearOp.js';
import { attentionConfig, TILE_WORDS } from '../codegen/kernels/pagedAttentionConfig.js';
import { prepareAttention } from '../src/ops/attention.js';
import { forEachBackend } from './backends.js';
import { GraphRecordingDevice, launchSignatures } from './fixtures/graphRecorder.js';
import { brownDir } from './runtimeGolden.js';
import { freshSeed, rng } from './util.js';

/** Where two logits arrays first differ in their bits, or null. */
function firstDiff(got: Float32Array, want: Float32Array, V: number): string | null {
  if (got.length !== want.length) return `length ${got.length} vs ${want.length}`;
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length), b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `row ${Math.floor(i / V)}, column ${i % V}: ${got[i]} vs ${want[i]}`;
  return null;
}

describe('decode buckets', () => {
  it('are powers of two up to the largest batch, which is always a bucket', () => {
    expect(decodeBuckets(1)).toEqual([1]);
    expect(decodeBuckets(64)).toEqual([1, 2, 4, 8, 16, 32, 64]);
    expect(decodeBuckets(6)).toEqual([1, 2, 4, 6]);
    expect(() => decodeBuckets(0)).toThrow(/maxRows = 0/);
  });

  it('pick the smallest bucket that holds the batch', () => {
    const b = decodeBuckets(6);
    expect([1, 2, 3, 4, 5, 6].map((n) => pickBucket(n, b))).toEqual([1, 2, 4, 4, 6, 6]);
    expect(() => pickBucket(7, b)).toThrow(/7 sequences exceed the largest bucket \(6\)/);
    expect(() => pickBucket(0, b)).toThrow(/at least one/);
  });

  it('lay out any batch of a bucket with the same sizes, padding rows inert, partial regions disjoint', () => {
    const r = rng(freshSeed('decode bucket layout'));
    const c = attentionConfig({ headDim: 16, groupSize: 2, chunkSize: 32 });
    const maxPositions = 200, numBlocks = 64;
    const g: DecodeGeometry = {
      numKvHeads: 3, numHeads: 6, numBlocks, maxBlocksPerSeq: Math.ceil(maxPositions / c.blockSize),
      maxChunks: maxDecodeChunks(maxPositions, c, 3), window: 0, scale: 0.25,
    };
    expect(g.maxChunks).toBe(7);
    const B = 8;
    const want = decodeAttentionSizes(B, g);
    expect(want).toMatchObject({ numTokens: 8, numSeqs: 8, numTiles: 8, maxTileChunks: 7, partRows: 8 * 6 * 7 });
    for (let trial = 0; trial < 20; trial++) {
      const n = 5 + Math.floor(r() * 4);
      const seqs = Array.from({ length: n }, (_, i) => {
        const ctxLen = Math.floor(r() * maxPositions);
        const blockTable = Array.from({ length: Math.ceil((ctxLen + 1) / c.blockSize) }, () => Math.floor(r() * numBlocks));
        return { qStart: i, qLen: 1, ctxLen, blockTable };
      });
      const prep = prepareAttention(c, { numTokens: n, seqs, scale: g.scale }, g);
      const { tiles, blockTables } = padDecodeMetadata(prep, B, g);
      // Sizes never depend on the batch; only the buffers' contents do.
      expect(decodeAttentionSizes(B, g)).toEqual(want);
      expect(tiles.length).toBe(B * TILE_WORDS);
      expect(blockTables.length).toBe(B * g.maxBlocksPerSeq);
      const regions: [number, number][] = [];
      for (let i = 0; i < B; i++) {
        const t = tiles.subarray(i * TILE_WORDS, (i + 1) * TILE_WORDS);
        if (i < n) {
          // Real tiles: the prepared words, but a fixed partials region.
          const p = prep.tiles.subarray(i * TILE_WORDS, (i + 1) * TILE_WORDS);
          expect([...t.subarray(0, 4)]).toEqual([...p.subarray(0, 4)]);
          expect([...t.subarray(5)]).toEqual([...p.subarray(5)]);
          expect(t[5]).toBe(Math.floor(seqs[i]!.ctxLen / c.chunkSize) + 1);
          expect([...blockTables.subarray(i * g.maxBlocksPerSeq, i * g.maxBlocksPerSeq + seqs[i]!.blockTable.length)]).toEqual(seqs[i]!.blockTable);
        } else {
          // Padding: its own row, one token at position 0, one chunk; block table row of zeros.
          expect([t[0], t[1], t[2], t[3], t[5], t[6], t[7]]).toEqual([i, i, 1, 0, 1, 0, 1]);
          expect(blockTables.subarray(i * g.maxBlocksPerSeq, (i + 1) * g.maxBlocksPerSeq).every((x) => x === 0)).toBe(true);
        }
        // Rows the kernel may address: base + (head · chunks + z) for head < H, z < chunks.
        regions.push([t[4]!, t[4]! + g.numHeads * t[5]!]);
      }
      regions.sort((x, y) => x[0] - y[0]);
      regions.forEach(([lo, hi], k) => {
        expect(hi).toBeLessThanOrEqual(want.partRows);
        if (k) expect(lo).toBeGreaterThanOrEqual(regions[k - 1]![1]);
      });
    }
  });

  it('refuse a batch larger than the bucket or one that spans more chunks than sized for', () => {
    const c = attentionConfig({ headDim: 8, groupSize: 1, chunkSize: 16 });
    const g: DecodeGeometry = { numKvHeads: 1, numHeads: 1, numBlocks: 8, maxBlocksPerSeq: 8, maxChunks: 2, window: 0, scale: 1 };
    const seqs = [0, 1, 2].map((i) => ({ qStart: i, qLen: 1, ctxLen: 5, blockTable: [i] }));
    const prep = prepareAttention(c, { numTokens: 3, seqs }, g);
    expect(() => padDecodeMetadata(prep, 2, g)).toThrow(/3 sequences do not fit a bucket of 2/);
    const long = prepareAttention(c, { numTokens: 1, seqs: [{ qStart: 0, qLen: 1, ctxLen: 40, blockTable: [0, 1, 2] }] }, g);
    expect(() => padDecodeMetadata(long, 1, g)).toThrow(/spans 3 KV chunks, more than the 2/);
  });
});

const CONFIGS: { name: string; opts: LoadOptions; chunk?: number }[] = [
  { name: 'f16 weights, f32 KV', opts: {} },
  // Chunks of 16 positions: contexts up to ~50 span several chunks, so split-KV partials and
  // the merge run in both paths (and the bucket's grid has 32 chunk slices, most exiting at once).
  { name: 'INT4 RTN g=64, f16 KV, attention chunks of 16', opts: { quant: 'int4-rtn', groupSize: 64, kvDtype: 'f16' }, chunk: 16 },
];

/** Sequences per step: every bucket of maxSeqs 16 (1, 2, 4, 8, 16) at least twice. */
const STEP_SIZES = [10, 3, 1, 10, 5, 2, 3, 1, 7, 2, 12];
const NUM_SEQS = 12;

forEachBackend('fixed-shape decode steps', (base: Device) => {
  for (const c of CONFIGS) {
    describe(`brown-draft, ${c.name}`, () => {
      const dev = new GraphRecordingDevice(base);
      let llm: LLM;
      beforeAll(async () => { llm = await loadModel(brownDir('draft'), { device: dev, ...c.opts }); });
      afterAll(async () => { await llm?.close(); });

      /**
       * Prefill each sequence twice (copy 0 for the plain forward, copy 1 for decode steps), then
       * decode random subsets in random order through both and compare the bits.
       */
      async function compare(graphs: boolean): Promise<{ captured: number[]; bucketsSeen: number[]; stepLaunches: Map<number, string[][]>; decodeBuffers: string[] }> {
        const r = rng(freshSeed(`decode graphs=${graphs} ${c.name}`));
        const V = llm.spec.vocabSize, numBlocks = 128;
        const allocatedFrom = dev.allocated.length;
        const fw = new LlamaForward(dev, llm.spec, llm.weights, {
          numBlocks, maxSeqs: 16, maxBatchTokens: 64, kvDtype: c.opts.kvDtype, decodeGraphs: graphs,
          ...(c.chunk ? { attentionChunkSize: c.chunk } : {}),
        });
        const bm = new BlockManager(numBlocks, { prefixCaching: false });
        const name = (s: number, copy: number) => `s${s}c${copy}`;
        const bucketsSeen: number[] = [];
        const stepLaunches = new Map<number, string[][]>();
        try {
          const prompts = Array.from({ length: NUM_SEQS }, () => Array.from({ length: 1 + Math.floor(r() * 40) }, () => Math.floor(r() * V)));
          for (let s = 0; s < NUM_SEQS; s++) {
            for (const copy of [0, 1]) {
              bm.addSequence(name(s, copy));
              const slots = bm.append(name(s, copy), prompts[s]!);
              fw.enqueue([{ tokens: prompts[s]!, ctxLen: 0, blockTable: bm.blockTable(name(s, copy)), slots, logits: 'none' }]);
            }
          }
          const poison = () => dev.write(fw.logitsBuffer, new Float32Array(fw.logitsBuffer.length).fill(Number.NaN));
          const input = (s: number, copy: number, token: number): SeqInput => {
            const ctxLen = bm.length(name(s, copy));
            const slots = bm.append(name(s, copy), [token]);
            return { tokens: [token], ctxLen, blockTable: bm.blockTable(name(s, copy)), slots, logits: 'last' };
          };
          for (const [step, n] of STEP_SIZES.entries()) {
            const order = [...Array(NUM_SEQS).keys()].sort(() => r() - 0.5).slice(0, n);
            const tokens = order.map(() => Math.floor(r() * V));
            const plainBatch = order.map((s, i) => input(s, 0, tokens[i]!));
            const decodeBatch = order.map((s, i) => input(s, 1, tokens[i]!));
            const plain = await fw.forward(plainBatch);
            poison();
            const from = dev.log.length;
            const got = await fw.decode(decodeBatch);
            const B = pickBucket(n, fw.decodeBuckets);
            bucketsSeen.push(B);
            const seen = stepLaunches.get(B) ?? [];
            seen.push(launchSignatures(dev.log.slice(from)));
            stepLaunches.set(B, seen);
            expect(got.rows).toEqual(order.map((_, seq) => ({ seq, token: 0 })));
            expect(got.logits.length).toBe(n * V);
            expect(got.logits.every(Number.isFinite), `step ${step}: decode logits are all finite`).toBe(true);
            expect(firstDiff(got.logits, plain.logits, V), `step ${step} (${n} sequences, bucket ${B}, contexts ${decodeBatch.map((q) => q.ctxLen).join(',')})`).toBeNull();
          }
          // Logits depend on the sequence: the comparison is not between constant rows.
          const last = await fw.forward([0, 1].map((s) => input(s, 0, 7)));
          expect(firstDiff(last.logits.subarray(0, V), last.logits.subarray(V), V)).not.toBeNull();
          const decodeBuffers = dev.allocated.slice(allocatedFrom).filter((l) => l.startsWith('decode.'));
          return { captured: fw.capturedBuckets, bucketsSeen, stepLaunches, decodeBuffers };
        } finally {
          for (let s = 0; s < NUM_SEQS; s++) for (const copy of [0, 1]) if (bm.has(name(s, copy))) bm.free(name(s, copy));
          expect(bm.freeBlocks).toBe(numBlocks);
          fw.destroy();
        }
      }

      it('padded decode steps give the plain forward\'s bits, and a bucket\'s launches never change', async () => {
        const { bucketsSeen, stepLaunches, decodeBuffers } = await compare(false);
        expect([...new Set(bucketsSeen)].sort((a, b) => a - b)).toEqual([1, 2, 4, 8, 16]);
        // The buckets own split-KV partials and merge tickets only where the attention op takes
        // them: pagedAttention, not the cpu device's attentionRows (one chunk per row, in locals).
        const partials = ['decode.attentionPartAcc', 'decode.attentionPartMl', 'decode.attentionTickets'];
        expect(decodeBuffers).toEqual(['decode.blockTables', 'decode.attentionTiles', ...(dev.profile.deviceClass === 'cpu' ? [] : partials)]);
        for (const [B, steps] of stepLaunches) {
          expect(steps.length, `bucket ${B} visited more than once`).toBeGreaterThan(1);
          for (const s of steps.slice(1)) expect(s, `bucket ${B}: launches of a later step`).toEqual(steps[0]);
        }
        expect(stepLaunches.get(1)![0]).not.toEqual(stepLaunches.get(2)![0]);
        // Issue 13's goal where the device has a device-scope fence: a GEMV-sized decode step is at
        // most 5 launches per layer plus the classifier (norms, RoPE, KV append, split-K finishes,
        // the attention merge and the embedding gather all folded; see test/launch-count.test.ts).
        if (dev.caps.deviceFence) {
          for (const [B, steps] of stepLaunches) {
            if (B <= GEMV_MAX_ROWS) expect(steps[0]!.length, `bucket ${B}: launches per decode step`).toBeLessThanOrEqual(5 * llm.spec.layers + 1);
          }
        }
      });

      it('with graph capture, each bucket is captured once and replayed with the same bits', async () => {
        const captures = dev.captures, replays = dev.replays;
        const { captured, bucketsSeen, stepLaunches } = await compare(true);
        const distinct = new Set(bucketsSeen).size;
        expect(captured).toEqual([1, 2, 4, 8, 16]);
        expect(dev.captures - captures).toBe(distinct);
        expect(dev.replays - replays).toBe(STEP_SIZES.length - distinct);
        // A replayed step issues no launch through the forward: one call, the replay.
        for (const steps of stepLaunches.values()) for (const s of steps.slice(1)) expect(s).toEqual([]);
      });

      it('decodeStep refuses what is not a decode step, naming the sequence and field', () => {
        const fw = llm.engine.forward;
        const one = (over: Partial<SeqInput>): SeqInput => ({ tokens: [1], ctxLen: 0, blockTable: [0], slots: [0], logits: 'last', ...over });
        expect(() => fw.decodeStep([one({}), one({ tokens: [1, 2], slots: [1, 2] })])).toThrow(/sequence 1 brings 2 tokens/);
        expect(() => fw.decodeStep([one({ logits: 'none' })])).toThrow(/asks for no logits/);
        expect(() => fw.decodeStep([])).toThrow(ForwardError);
        expect(() => fw.decodeStep(Array.from({ length: fw.maxSeqs + 1 }, (_, i) => one({ slots: [i] })))).toThrow(/exceed the largest decode bucket/);
        expect(() => fw.decodeStep([one({ tokens: [llm.spec.vocabSize] })])).toThrow(/outside the vocabulary/);
        expect(() => fw.decodeStep([one({ ctxLen: llm.spec.maxPositions })])).toThrow(/exceed the model's context/);
        expect(() => fw.decodeStep([one({}), one({})])).toThrow(/slots\[1\] = 0 is also written by token 0/);
        expect(() => fw.decodeStep([one({ blockTable: [10 ** 6] })])).toThrow(/blockTable\[0\] = 1000000 points outside the cache/);
      });
    });
  }
}, { cpuExecutors: 'default' });
