// Drafting with a smaller model of the same tokenizer (brown-draft for brown-target). The draft
// keeps its own paged KV pool in step with the target: before proposing, each sequence catches
// up on the tokens the target committed since (one ragged pass for all sequences, chunked to
// the token budget), then every sequence drafts together, one batched decode step per draft
// position. Drafts are sampled with the request's own transforms from the draft's distribution q
// (keyed by seed, position and the draft stream), and q's rows stay on the device in the layout
// the acceptance kernel reads.
import { copyRows } from '../../codegen/kernels/copyRows.js';
import { STREAM_DRAFT } from '../../codegen/kernels/random.js';
import { NO_TOKEN, sampling } from '../../codegen/kernels/sampling.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import { uploadScratch } from '../backend/scratch.js';
import type { EngineModel } from '../engine.js';
import type { RowSampling } from '../engine/runner.js';
import { BlockManager, OutOfBlocksError } from '../kv/blockManager.js';
import { LlamaForward, type SeqInput } from '../model/forward.js';
import { runSampling, type SamplingRequest } from '../ops/sampling.js';
import { type DraftRequest, type DraftResult, type Drafter, DrafterError } from './drafter.js';

export interface DraftModelOptions {
  kvBlocks: number;
  maxSeqs: number;
  /** Most drafts per sequence (the probability buffer is sized for it). */
  maxK: number;
  maxBatchedTokens: number;
  kvDtype?: 'f32' | 'f16';
}

export class DraftModelDrafter implements Drafter {
  readonly kind = 'draft-model';
  readonly forward: LlamaForward;
  readonly blocks: BlockManager;
  private readonly dev: Device;
  private readonly V: number;
  private readonly sampler;
  private readonly copy;
  private readonly stepProbs: DeviceBuffer<'f32'>;
  private readonly stepTokens: DeviceBuffer<'u32'>;
  private readonly probs: DeviceBuffer<'f32'>;
  private closed = false;

  constructor(readonly model: EngineModel, readonly o: DraftModelOptions) {
    this.dev = model.device;
    this.V = model.spec.vocabSize;
    this.blocks = new BlockManager(o.kvBlocks, { blockSize: 16, prefixCaching: false });
    this.forward = new LlamaForward(this.dev, model.spec, model.weights, {
      numBlocks: o.kvBlocks, blockSize: 16, kvDtype: o.kvDtype, maxBatchTokens: o.maxBatchedTokens, maxSeqs: o.maxSeqs,
    });
    const made: DeviceBuffer[] = [];
    try {
      this.stepProbs = this.dev.alloc('f32', o.maxSeqs * this.V, 'draft.stepProbs'); made.push(this.stepProbs);
      this.stepTokens = this.dev.alloc('u32', o.maxSeqs, 'draft.stepTokens'); made.push(this.stepTokens);
      this.probs = this.dev.alloc('f32', o.maxSeqs * o.maxK * this.V, 'draft.probs'); made.push(this.probs);
    } catch (e) {
      for (const b of made) this.dev.free(b);
      this.forward.destroy();
      throw e;
    }
    this.sampler = sampling({ caps: this.dev.caps });
    this.copy = copyRows({ caps: this.dev.caps });
  }

  async propose(reqs: readonly DraftRequest[]): Promise<DraftResult> {
    if (this.closed) throw new DrafterError('draft model: the drafter was closed');
    if (reqs.length > this.o.maxSeqs) throw new DrafterError(`draft model: ${reqs.length} sequences exceed maxSeqs ${this.o.maxSeqs}`);
    const maxK = Math.max(1, ...reqs.map((r) => r.k));
    if (maxK > this.o.maxK) throw new DrafterError(`draft model: k = ${maxK} exceeds the ${this.o.maxK} drafts the drafter was sized for`);
    const out: number[][] = reqs.map(() => []);
    const live = new Set<number>(); // indices into reqs still drafting
    reqs.forEach((r, i) => { if (r.k > 0) live.add(i); });
    // Catch up: feed each sequence's tokens the draft has not seen; the last one's logits give draft 0.
    const todo = new Map<number, number>(); // index → next token to feed
    for (const i of live) {
      const r = reqs[i]!;
      if (!this.blocks.has(r.id)) this.blocks.addSequence(r.id);
      // At least the last committed token is fed, so its logits exist.
      if (this.blocks.length(r.id) > r.tokens.length - 1) this.blocks.truncate(r.id, r.tokens.length - 1);
      todo.set(i, this.blocks.length(r.id));
    }
    while (todo.size) {
      let budget = this.o.maxBatchedTokens;
      const batch: SeqInput[] = [];
      const finishing: number[] = [];
      for (const [i, from] of [...todo]) {
        if (budget <= 0 || batch.length >= this.o.maxSeqs) break;
        const r = reqs[i]!;
        const n = Math.min(r.tokens.length - from, budget);
        const chunk = r.tokens.slice(from, from + n);
        let slots: number[];
        try {
          slots = this.blocks.append(r.id, chunk);
        } catch (e) {
          if (!(e instanceof OutOfBlocksError)) throw e;
          // No room in the draft pool now: this sequence does not speculate this step.
          this.blocks.free(r.id);
          todo.delete(i);
          live.delete(i);
          continue;
        }
        const last = from + n === r.tokens.length;
        batch.push({ tokens: chunk, ctxLen: from, blockTable: this.blocks.blockTable(r.id), slots, logits: last ? 'last' : 'none' });
        budget -= n;
        if (last) { finishing.push(i); todo.delete(i); } else todo.set(i, from + n);
      }
      if (!batch.length) break;
      this.forward.enqueue(batch);
      if (finishing.length) await this.sampleInto(finishing, reqs, 0, maxK, out, live);
      else await this.dev.sync();
    }
    // Draft positions 1..k−1: every sequence still drafting feeds its last draft.
    for (let j = 1; j < maxK; j++) {
      const step = [...live].filter((i) => reqs[i]!.k > j && out[i]!.length === j);
      if (!step.length) break;
      const batch: SeqInput[] = [];
      const fed: number[] = [];
      for (const i of step) {
        const r = reqs[i]!;
        const pos = r.tokens.length + j - 1;
        let slots: number[];
        try {
          slots = this.blocks.append(r.id, [out[i]![j - 1]!]);
        } catch (e) {
          if (!(e instanceof OutOfBlocksError)) throw e;
          live.delete(i); // keeps the drafts it has
          continue;
        }
        batch.push({ tokens: [out[i]![j - 1]!], ctxLen: pos, blockTable: this.blocks.blockTable(r.id), slots, logits: 'last' });
        fed.push(i);
      }
      if (!batch.length) break;
      this.forward.decodeStep(batch);
      await this.sampleInto(fed, reqs, j, maxK, out, live);
    }
    return { tokens: out, probs: this.probs, maxK };
  }

  /** Sample draft j of each of `idx` from the last pass's logits rows (in order), place its q row. */
  private async sampleInto(idx: number[], reqs: readonly DraftRequest[], j: number, maxK: number, out: number[][], live: Set<number>): Promise<void> {
    const rows: SamplingRequest[] = idx.map((i) => {
      const r = reqs[i]!, p: RowSampling = r.sampling;
      return { temperature: p.temperature, topK: p.topK, topP: p.topP, minP: p.minP, seed: p.seed, position: r.tokens.length + j, stream: STREAM_DRAFT };
    });
    runSampling(this.dev, this.sampler, { logits: this.forward.logitsBuffer, probs: this.stepProbs, tokens: this.stepTokens }, rows, this.V);
    const n = idx.length;
    const src = uploadScratch(this.dev, 'draft.copySrc', 'u32', Uint32Array.from(idx, (_, r) => r));
    const dst = uploadScratch(this.dev, 'draft.copyDst', 'u32', Uint32Array.from(idx, (i) => i * maxK + j));
    this.dev.launch(this.copy, { src: this.stepProbs, srcRows: src, dstRows: dst, dst: this.probs },
      { R: n, D: this.V, srcRowCount: this.o.maxSeqs, dstRowCount: this.o.maxSeqs * this.o.maxK });
    const toks = await this.dev.read(this.stepTokens);
    idx.forEach((i, r) => {
      const t = toks[r]!;
      if (t === NO_TOKEN) live.delete(i); // the draft's logits were not finite: stop drafting here
      else out[i]!.push(t);
    });
  }

  rollback(id: number, length: number): void {
    if (this.blocks.has(id) && this.blocks.length(id) > length) this.blocks.truncate(id, length);
  }

  release(id: number): void {
    if (this.blocks.has(id)) this.blocks.free(id);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.forward.destroy();
    for (const b of [this.stepProbs, this.stepTokens, this.probs]) this.dev.free(b);
  }
}
