// Batch invariance (DESIGN.md, Determinism): on one backend a sequence's logits rows are
// bit-identical whatever else is in the batch, however its tokens are chunked (one prefill, many
// chunks, one token at a time), and whichever rows are asked for. Driven through LlamaForward
// directly with the model's own paged KV cache and block manager.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { type LLM, type LoadOptions, loadModel } from '../src/llm.js';
import type { SeqInput } from '../src/model/forward.js';
import { forEachBackend } from './backends.js';
import { brownDir, type BrownName } from './runtimeGolden.js';
import { freshSeed, rng } from './util.js';

/** Where two logits arrays first differ in their bits, or null. */
function firstDiff(got: Float32Array, want: Float32Array, V: number): string | null {
  if (got.length !== want.length) return `length ${got.length} vs ${want.length}`;
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length), b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      let worst = 0;
      for (let j = 0; j < got.length; j++) worst = Math.max(worst, Math.abs(got[j]! - want[j]!));
      return `row ${Math.floor(i / V)}, column ${i % V}: ${got[i]} vs ${want[i]} (largest difference ${worst.toExponential(2)})`;
    }
  }
  return null;
}

let seqIds = 0;

/** Runs sequences through the model's forward pass in the steps a scheduler gives. */
class Runner {
  private readonly names: string[];
  /** rows[s][p]: logits of sequence s at position p, once produced. */
  readonly rows: (Float32Array | undefined)[][];
  readonly done: number[];
  constructor(private readonly llm: LLM, readonly seqs: number[][]) {
    this.names = seqs.map(() => `batch-test-${seqIds++}`);
    this.names.forEach((n) => llm.engine.blocks.addSequence(n));
    this.rows = seqs.map((s) => new Array<Float32Array | undefined>(s.length));
    this.done = seqs.map(() => 0);
  }

  /** One forward pass: each entry feeds the next `n` tokens of sequence `s`. */
  async step(parts: { s: number; n: number; logits: SeqInput['logits'] }[]): Promise<void> {
    const bm = this.llm.engine.blocks, V = this.llm.spec.vocabSize;
    const batch: SeqInput[] = parts.map(({ s, n, logits }) => {
      const tokens = this.seqs[s]!.slice(this.done[s], this.done[s]! + n);
      const slots = bm.append(this.names[s]!, tokens);
      return { tokens, ctxLen: this.done[s]!, blockTable: bm.blockTable(this.names[s]!), slots, logits };
    });
    const r = await this.llm.engine.forward.forward(batch);
    // The rows come back in batch order, exactly those asked for.
    const expected = parts.flatMap(({ n, logits }, i) => (logits === 'all' ? [...Array(n).keys()] : logits === 'last' ? [n - 1] : []).map((token) => ({ seq: i, token })));
    expect(r.rows).toEqual(expected);
    expect(r.logits.length).toBe(expected.length * V);
    r.rows.forEach(({ seq, token }, k) => { this.rows[parts[seq]!.s]![this.done[parts[seq]!.s]! + token] = r.logits.slice(k * V, (k + 1) * V); });
    parts.forEach(({ s, n }) => { this.done[s]! += n; });
  }

  /** Rows of sequence s that were produced, with the matching rows of `ref`. */
  produced(s: number, ref: Float32Array): { got: Float32Array; want: Float32Array; count: number } {
    const V = this.llm.spec.vocabSize;
    const pos = this.rows[s]!.flatMap((r, p) => (r ? [p] : []));
    const got = new Float32Array(pos.length * V), want = new Float32Array(pos.length * V);
    pos.forEach((p, k) => { got.set(this.rows[s]![p]!, k * V); want.set(ref.subarray(p * V, (p + 1) * V), k * V); });
    return { got, want, count: pos.length };
  }

  free(): void {
    for (const n of this.names) if (this.llm.engine.blocks.has(n)) this.llm.engine.blocks.free(n);
  }
}

/** A sequence's rows run alone, in one chunk. */
async function solo(llm: LLM, tokens: number[]): Promise<Float32Array> {
  const r = new Runner(llm, [tokens]);
  try {
    await r.step([{ s: 0, n: tokens.length, logits: 'all' }]);
    return r.produced(0, new Float32Array(tokens.length * llm.spec.vocabSize)).got;
  } finally {
    r.free();
  }
}

const CONFIGS: { model: BrownName; name: string; opts: LoadOptions; lengths: number[] }[] = [
  { model: 'draft', name: 'f16 weights', opts: {}, lengths: [41, 23, 35] },
  { model: 'draft', name: 'INT4 RTN g=64, f16 KV', opts: { quant: 'int4-rtn', groupSize: 64, kvDtype: 'f16' }, lengths: [37, 18, 29] },
  { model: 'target', name: 'f16 weights', opts: {}, lengths: [33, 17, 20] },
];

forEachBackend('runtime batch invariance', (dev: Device) => {
  for (const c of CONFIGS) {
    describe(`brown-${c.model}, ${c.name}`, () => {
      let llm: LLM;
      let seqs: number[][];
      let refs: Float32Array[];
      beforeAll(async () => {
        llm = await loadModel(brownDir(c.model), { device: dev, maxBatchTokens: 64, ...c.opts });
        const r = rng(freshSeed(`batch invariance brown-${c.model} ${c.name}`));
        const V = llm.spec.vocabSize;
        seqs = c.lengths.map((n) => Array.from({ length: n }, () => Math.floor(r() * V)));
        refs = [];
        for (const s of seqs) refs.push(await solo(llm, s));
      });
      afterAll(async () => {
        expect(llm.engine.blocks.freeBlocks).toBe(llm.engine.blocks.numBlocks);
        await llm?.close();
      });

      it('one token at a time (decode steps) gives the same bits as one prefill', async () => {
        const r = new Runner(llm, [seqs[1]!]);
        try {
          while (r.done[0]! < seqs[1]!.length) await r.step([{ s: 0, n: 1, logits: 'all' }]);
          const { got, want, count } = r.produced(0, refs[1]!);
          expect(count).toBe(seqs[1]!.length);
          expect(firstDiff(got, want, llm.spec.vocabSize)).toBeNull();
        } finally {
          r.free();
        }
      });

      it('fixed chunk sizes (5, 16, 7) give the same bits as one prefill', async () => {
        for (const chunk of [5, 16, 7]) {
          const r = new Runner(llm, [seqs[0]!]);
          try {
            while (r.done[0]! < seqs[0]!.length) await r.step([{ s: 0, n: Math.min(chunk, seqs[0]!.length - r.done[0]!), logits: 'all' }]);
            expect(firstDiff(r.produced(0, refs[0]!).got, r.produced(0, refs[0]!).want, llm.spec.vocabSize), `chunk ${chunk}`).toBeNull();
          } finally {
            r.free();
          }
        }
      });

      it('mixed batches (prefill chunks with decodes, random order and rows asked) give the same bits as alone', async () => {
        const r = rng(freshSeed(`batch mix brown-${c.model} ${c.name}`));
        const run = new Runner(llm, seqs);
        try {
          let steps = 0, multi = 0;
          while (run.done.some((d, s) => d < seqs[s]!.length)) {
            const live = seqs.map((_, s) => s).filter((s) => run.done[s]! < seqs[s]!.length);
            // A random non-empty subset in random order, each with a decode or a prefill chunk.
            const pick = live.filter(() => r() < 0.75);
            if (!pick.length) pick.push(live[Math.floor(r() * live.length)]!);
            pick.sort(() => r() - 0.5);
            let budget = llm.engine.forward.maxBatchTokens;
            const parts = pick.flatMap((s) => {
              const left = seqs[s]!.length - run.done[s]!;
              const n = Math.min(left, budget, r() < 0.4 ? 1 : 1 + Math.floor(r() * 20));
              if (n < 1) return [];
              budget -= n;
              // A sequence's last part always returns rows, so every sequence gets compared.
              const u = r(), last = n === left;
              return [{ s, n, logits: (u < 0.7 ? 'all' : u < 0.9 || last ? 'last' : 'none') as SeqInput['logits'] }];
            });
            await run.step(parts);
            steps++;
            if (parts.length > 1) multi++;
          }
          expect(multi).toBeGreaterThan(0);
          console.log(`brown-${c.model} ${c.name} [${dev.kind}]: ${steps} passes (${multi} with several sequences); rows compared per sequence: ${seqs.map((_, i) => run.produced(i, refs[i]!).count).join(', ')} of ${seqs.map((s) => s.length).join(', ')}`);
          seqs.forEach((s, i) => {
            const { got, want, count } = run.produced(i, refs[i]!);
            expect(count).toBeGreaterThan(0);
            expect(run.rows[i]![s.length - 1]).toBeDefined();
            expect(firstDiff(got, want, llm.spec.vocabSize), `sequence ${i} (${count} rows in ${steps} steps)`).toBeNull();
          });
        } finally {
          run.free();
        }
      });
    });
  }
}, { cpuExecutors: 'default' });
