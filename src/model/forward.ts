// The Llama-family forward pass over a ragged batch, on generated kernels. Each sequence brings
// its new token ids, the number of tokens already in its KV cache, its block table and the cache
// slots of the new tokens; one pass serves prefill chunks, decodes and verifies together, and
// returns logits only for the rows asked for. Reads top to bottom, like llama2.c.
//
// A pass is an upload (every host→device write) followed by launchAll (launches only, whose
// parameters follow from a PassLayout). Decode steps use fixed layouts per batch-size bucket
// (decodeBucket.ts), so on CUDA each bucket's step is captured once as a graph and replayed.
import { embedding } from '../../codegen/kernels/embedding.js';
import { type FusedLinearOp, fusedLinear } from '../../codegen/kernels/fusedLinear.js';
import { pagedAttention } from '../../codegen/kernels/pagedAttention.js';
import { type AttentionSizes, TILE_WORDS } from '../../codegen/kernels/pagedAttentionConfig.js';
import { attentionRows } from '../../codegen/kernels/attentionRows.js';
import { defaultRmsNormWorkgroup, rmsNorm } from '../../codegen/kernels/rmsNorm.js';
import { ropeTable } from '../../codegen/kernels/rope.js';
import type { Device, DeviceBuffer, DeviceGraph } from '../backend/device.js';
import { runFusedLinear } from '../ops/linear.js';
import { cachedChoice } from '../ops/tune.js';
import { attentionTargetCtas, checkSlots, prepareAttention } from '../ops/attention.js';
import { type DecodeGeometry, decodeAttentionSizes, decodeBuckets, decodePartRows, maxDecodeChunks, padDecodeMetadata, pickBucket } from './decodeBucket.js';
import { type ModelSpec, ropeFrequencies } from './spec.js';
import type { DeviceLinear, LayerWeights, ModelWeights } from './weights.js';

/** One sequence's part of a forward pass. */
export interface SeqInput {
  /** New token ids (at least one). */
  tokens: readonly number[];
  /** Tokens already in this sequence's KV cache; the new ones sit at positions ctxLen, ctxLen+1, … */
  ctxLen: number;
  /** The sequence's cache blocks, covering ctxLen + tokens.length positions. */
  blockTable: readonly number[];
  /** KV slot (block · blockSize + offset) of each new token. */
  slots: readonly number[];
  /** Which rows' logits to return: the last new token's, every new token's, or none. */
  logits: 'last' | 'all' | 'none';
}

export interface ForwardOptions {
  numBlocks: number;
  blockSize?: number;
  kvDtype?: 'f32' | 'f16';
  /** Most tokens one pass may carry (activation buffers are sized for it). */
  maxBatchTokens?: number;
  /** Most sequences one pass may carry. */
  maxSeqs?: number;
  /** KV positions per split-KV chunk of pagedAttention (default: the kernel's, 512); the cpu device's attentionRows has one chunk per row. */
  attentionChunkSize?: number;
  /** Capture decode steps as graphs on devices that can (default true). */
  decodeGraphs?: boolean;
  /** Variant cache (`kiln tune`): tuned workgroup sizes of the norm and embedding kernels. */
  tuneCache?: Record<string, Record<string, unknown>>;
}

/**
 * What one pass's launches depend on besides the forward's own buffers: every launch parameter is
 * a function of this, so equal layouts give equal launch sequences (see launchAll).
 */
export interface PassLayout {
  /** Rows of the activations (tokens in the pass, padding included). */
  tokens: number;
  /** Rows that go through the final norm and lm_head. */
  logitRows: number;
  attention: AttentionSizes;
  blockTables: DeviceBuffer<'u32'>;
  tiles: DeviceBuffer<'u32'>;
  /** Attention partials owned by the layout (decode buckets, pagedAttention only); else the device's shared scratch. */
  partials?: { acc: DeviceBuffer<'f32'>; ml: DeviceBuffer<'f32'>; tickets: DeviceBuffer<'u32'> };
  /** Logits rows are the activation rows 0..logitRows−1 in order (decode): no gather. */
  identityRows?: boolean;
}

/** The activations of one pass (llama2.c's RunState), f32, sized for maxBatchTokens rows. */
interface Activations {
  /** Residual stream [T, D]. */
  x: DeviceBuffer<'f32'>;
  /** Residual stream after the attention block [T, D]. */
  x2: DeviceBuffer<'f32'>;
  /** Rotated queries [T, Hq·hd] (K and V go straight into the cache). */
  q: DeviceBuffer<'f32'>;
  /** Attention output [T, Hq·hd]. */
  attn: DeviceBuffer<'f32'>;
  /** SiLU(gate)·up [T, ffn]. */
  ffn: DeviceBuffer<'f32'>;
  /** Residual rows whose logits are asked for [R, D]. */
  rowsX: DeviceBuffer<'f32'>;
}

/** Per-token indices of one pass, written by upload(). */
interface PassIndices {
  ids: DeviceBuffer<'u32'>;
  pos: DeviceBuffer<'u32'>;
  /** Rows of the residual stream that go to the classifier. */
  rows: DeviceBuffer<'u32'>;
  /** KV slot of each token, −1 for padding. */
  slots: DeviceBuffer<'i32'>;
}

/** One layer's KV cache: f32, or f16 packed two per u32 word. */
type KvBuffer = DeviceBuffer<'f32'> | DeviceBuffer<'u32'>;

export interface ForwardResult {
  /** [rows, vocab] for the rows asked for, in batch order. */
  logits: Float32Array;
  /** For each returned row: its sequence (index in the batch) and new-token index. */
  rows: { seq: number; token: number }[];
}

export class ForwardError extends Error {}

export class LlamaForward {
  readonly blockSize: number;
  readonly kvDtype: 'f32' | 'f16';
  readonly maxBatchTokens: number;
  readonly maxSeqs: number;
  private readonly kCache: KvBuffer[] = [];
  private readonly vCache: KvBuffer[] = [];
  private readonly act: Activations;
  private readonly idx: PassIndices;
  private readonly ropeTable: DeviceBuffer<'f32'>;
  private readonly ropePositions: number;
  private blockTablesBuf: DeviceBuffer<'u32'> | null = null;
  private tilesBuf: DeviceBuffer<'u32'> | null = null;
  private logitsBuf: DeviceBuffer<'f32'> | null = null;
  private readonly ops;
  private readonly maxBlocksPerSeq: number;
  private readonly buckets: number[];
  private readonly decodeGeometry: DecodeGeometry;
  private readonly graphsEnabled: boolean;
  /** Whether the attention op takes split-KV partials and tickets (pagedAttention; attentionRows does not). */
  private readonly attentionPartials: boolean;
  /** Metadata and attention scratch of decode steps, sized for the largest bucket, never regrown
   *  (a captured graph keeps their addresses). */
  private decodeBufs: { blockTables: DeviceBuffer<'u32'>; tiles: DeviceBuffer<'u32'>; partials?: NonNullable<PassLayout['partials']> } | null = null;
  private readonly decodeLayouts = new Map<number, PassLayout>();
  /** Each linear layer as a fused op (fusedLinear.ts): norm before, RoPE + KV append after QKV. */
  private readonly fused = new Map<DeviceLinear, FusedLinearOp>();
  private readonly graphs = new Map<number, DeviceGraph>();

  constructor(readonly dev: Device, readonly spec: ModelSpec, readonly weights: ModelWeights, readonly opts: ForwardOptions) {
    const s = spec;
    this.blockSize = opts.blockSize ?? 16;
    this.kvDtype = opts.kvDtype ?? 'f32';
    this.maxBatchTokens = opts.maxBatchTokens ?? 256;
    this.maxSeqs = opts.maxSeqs ?? 64;
    // Options are checked, and every kernel built, before anything is allocated.
    for (const [name, v] of [['numBlocks', opts.numBlocks], ['blockSize', this.blockSize], ['maxBatchTokens', this.maxBatchTokens], ['maxSeqs', this.maxSeqs]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new ForwardError(`${name} = ${v} must be a positive integer`);
    }
    if (this.kvDtype !== 'f32' && this.kvDtype !== 'f16') throw new ForwardError(`kvDtype '${String(this.kvDtype)}' is not f32 or f16`);
    const caps = dev.caps;
    const T = this.maxBatchTokens, D = s.hidden, hd = s.headDim;
    const layout = s.ropeLayout === 'interleaved' ? 'interleaved' as const : 'halves' as const;
    // Workgroup sizes `kiln tune` measured for these shapes on this device, if any.
    const tunedWorkgroup = (family: string, shape: Record<string, number | string>): number | undefined => {
      const wg = opts.tuneCache && cachedChoice(opts.tuneCache, dev, family, shape)?.workgroupSize;
      return typeof wg === 'number' ? wg : undefined;
    };
    const rowsAttention = dev.profile.deviceClass === 'cpu';
    const attentionParams = {
      headDim: hd, groupSize: s.heads / s.kvHeads, kvDtype: this.kvDtype, blockSize: this.blockSize, caps, targetCtas: attentionTargetCtas(dev),
      ...(opts.attentionChunkSize !== undefined ? { chunkSize: opts.attentionChunkSize } : {}),
    };
    this.ops = {
      embedWorkgroup: tunedWorkgroup('embedding', { D, table: weights.embed.dtype }),
      gather: embedding({ table: 'f32', caps, workgroupSize: tunedWorkgroup('embedding', { D, table: 'f32' }) }),
      norm: rmsNorm({ caps, workgroupSize: tunedWorkgroup('rmsNorm', { D }) ?? defaultRmsNormWorkgroup(D, caps) }),
      // The cpu device runs attentionRows for every launch — prefill, decode, verify — so a row's
      // bits never depend on which kind of pass it came in: one invocation per row in locals, no
      // barriers (the CPU executor runs each barrier region over every invocation), one chunk per
      // row. GPUs keep pagedAttention (split-KV chunks; the decode buckets own its partials).
      attention: rowsAttention
        ? attentionRows({ headDim: hd, groupSize: s.heads / s.kvHeads, kvDtype: this.kvDtype, blockSize: this.blockSize, caps })
        : pagedAttention(attentionParams),
    };
    this.attentionPartials = !rowsAttention;
    // The norms run as the next linear's prologue, in the norm kernel's order for this workgroup size.
    const norm = { workgroupSize: this.ops.norm.ir.workgroupSize[0], eps: s.rmsNormEps };
    const rope = { layout, heads: s.heads, kvHeads: s.kvHeads, headDim: hd, kvDtype: this.kvDtype, blockSize: this.blockSize };
    // Layer 0's QKV op also gathers the token embeddings (and writes them to the residual stream).
    const gather = { table: weights.embed.dtype, vocab: s.vocabSize, workgroupSize: this.ops.embedWorkgroup };
    for (const [l, w] of weights.layers.entries()) {
      this.fused.set(w.qkv, fusedLinear({ linear: w.qkv.op, norm, rope, ...(l === 0 ? { gather } : {}) }));
      this.fused.set(w.o, fusedLinear({ linear: w.o.op }));
      this.fused.set(w.gateUp, fusedLinear({ linear: w.gateUp.op, norm }));
      this.fused.set(w.down, fusedLinear({ linear: w.down.op }));
    }
    this.fused.set(weights.lmHead, fusedLinear({ linear: weights.lmHead.op, norm }));
    this.maxBlocksPerSeq = Math.ceil(s.maxPositions / this.blockSize);
    this.buckets = decodeBuckets(Math.min(this.maxSeqs, this.maxBatchTokens));
    this.decodeGeometry = {
      numKvHeads: s.kvHeads, numHeads: s.heads, numBlocks: opts.numBlocks, maxBlocksPerSeq: this.maxBlocksPerSeq,
      maxChunks: maxDecodeChunks(s.maxPositions, this.ops.attention.config, s.kvHeads),
      window: s.slidingWindow ?? 0, scale: 1 / Math.sqrt(hd),
    };
    this.graphsEnabled = opts.decodeGraphs ?? true;
    // If an allocation fails part way, give back what was allocated so far.
    const allocated: DeviceBuffer[] = [];
    const alloc = <D extends 'f32' | 'u32' | 'i32'>(dtype: D, n: number, label: string): DeviceBuffer<D> => {
      const b = dev.alloc(dtype, n, label);
      allocated.push(b);
      return b;
    };
    try {
      const kvWords = opts.numBlocks * this.blockSize * s.kvHeads * (this.kvDtype === 'f16' ? hd / 2 : hd);
      for (let l = 0; l < s.layers; l++) {
        this.kCache.push(alloc(this.kvDtype === 'f16' ? 'u32' : 'f32', kvWords, `L${l}.kCache`));
        this.vCache.push(alloc(this.kvDtype === 'f16' ? 'u32' : 'f32', kvWords, `L${l}.vCache`));
      }
      const f32 = (name: string, n: number) => alloc('f32', n, name);
      this.act = {
        x: f32('x', T * D), x2: f32('x2', T * D),
        q: f32('q', T * s.heads * hd),
        attn: f32('attn', T * s.heads * hd),
        ffn: f32('ffn', T * s.ffn),
        rowsX: f32('rowsX', T * D),
      };
      this.idx = {
        ids: alloc('u32', T, 'ids'), pos: alloc('u32', T, 'positions'), rows: alloc('u32', T, 'logitRows'), slots: alloc('i32', T, 'slots'),
      };
      // cos/sin of every position, in float64 on the host (see rope.ts for why).
      this.ropePositions = s.maxPositions;
      const table = ropeTable(ropeFrequencies(s), this.ropePositions);
      this.ropeTable = alloc('f32', table.length, 'ropeTable');
      dev.write(this.ropeTable, table);
    } catch (e) {
      for (const b of allocated) dev.free(b);
      throw e;
    }
  }

  /** Bytes of KV cache one token takes (all layers, K and V). */
  get kvBytesPerToken(): number {
    return this.spec.layers * 2 * this.spec.kvHeads * this.spec.headDim * (this.kvDtype === 'f16' ? 2 : 4);
  }

  /** Run the batch; returns the logits rows asked for. */
  async forward(batch: readonly SeqInput[]): Promise<ForwardResult> {
    return this.readRows(this.enqueue(batch));
  }

  /**
   * Queue the whole pass without reading anything back; the logits rows stay on the device in
   * `logitsBuffer` (for sampling kernels). Returns which rows were produced.
   */
  enqueue(batch: readonly SeqInput[]): { seq: number; token: number }[] {
    const { layout, rows } = this.upload(batch);
    this.launchAll(layout);
    return rows;
  }

  /**
   * Write everything the pass over `batch` reads from the host (token ids, positions, KV slots,
   * block tables, attention tiles, logits rows) and return the launch layout that goes with it.
   * Nothing is launched.
   */
  upload(batch: readonly SeqInput[]): { layout: PassLayout; rows: { seq: number; token: number }[] } {
    const s = this.spec, dev = this.dev;
    const { ids, pos, slots, rowsWanted, T } = this.flatten(batch);
    checkSlots(slots, this.opts.numBlocks, this.blockSize);
    let qStart = 0;
    const meta = prepareAttention(this.ops.attention.config, {
      numTokens: T,
      seqs: batch.map((q) => { const r = { qStart, qLen: q.tokens.length, ctxLen: q.ctxLen, blockTable: q.blockTable }; qStart += q.tokens.length; return r; }),
      window: s.slidingWindow ?? 0,
      scale: 1 / Math.sqrt(s.headDim),
    }, { numBlocks: this.opts.numBlocks, numKvHeads: s.kvHeads, maxBlocksPerSeq: this.maxBlocksPerSeq });
    dev.write(this.idx.ids, ids);
    dev.write(this.idx.pos, pos);
    dev.write(this.idx.slots, slots);
    this.blockTablesBuf = this.ensure(this.blockTablesBuf, meta.blockTables.length, 'blockTables');
    this.tilesBuf = this.ensure(this.tilesBuf, meta.tiles.length, 'attentionTiles');
    dev.write(this.blockTablesBuf, meta.blockTables);
    dev.write(this.tilesBuf, meta.tiles);
    const R = rowsWanted.length;
    if (R) {
      dev.write(this.idx.rows, new Uint32Array(rowsWanted.map((r) => r.row)));
      this.logitsBuf = this.ensure(this.logitsBuf, this.maxBatchTokens * s.vocabSize, 'logits', 'f32');
    }
    return {
      layout: { tokens: T, logitRows: R, attention: meta.sizes, blockTables: this.blockTablesBuf, tiles: this.tilesBuf },
      rows: rowsWanted.map(({ seq, token }) => ({ seq, token })),
    };
  }

  /**
   * Queue every launch of one pass. Launches only: each launch's parameters (buffers, uniforms,
   * grid) are functions of `layout` alone, so the same layout gives the same launch sequence —
   * what a graph capture records. The data comes from the last upload.
   */
  launchAll(L: PassLayout): void {
    const s = this.spec, dev = this.dev, a = this.act, idx = this.idx, T = L.tokens;
    for (let l = 0; l < s.layers; l++) {
      const w = this.layer(l);
      const kCache = this.cacheOf(this.kCache, l), vCache = this.cacheOf(this.vCache, l);
      // Attention block: x2 = x + Wo · attention(rope(Wqkv · norm(x))); the norm, RoPE and the
      // KV append run inside the QKV op (one launch for decode rows where the device has a fence).
      // Layer 0 gathers x, the token embeddings, first (inside the same op).
      const embed: Record<string, DeviceBuffer> = l === 0 ? { ids: idx.ids, embed: this.weights.embed.table } : {};
      this.linear(w.qkv, a.x, { ...embed, normW: w.attnNorm, pos: idx.pos, table: this.ropeTable, slots: idx.slots, q: a.q, kCache, vCache }, T,
        { maxPos: this.ropePositions, numBlocks: this.opts.numBlocks });
      // Scratch the layout brings (decode buckets, for pagedAttention) replaces the device's shared
      // scratch (runPlan); attentionRows takes no partials, and the buckets make none for it.
      dev.run(this.ops.attention, {
        q: a.q, kCache, vCache, blockTables: L.blockTables, tiles: L.tiles, out: a.attn,
        ...(L.partials ? { partAcc: L.partials.acc, partMl: L.partials.ml } : {}),
        // The last-arrival merge's tickets (devices with a fence), owned by the layout like the partials.
        ...(L.partials && dev.caps.deviceFence ? { tickets: L.partials.tickets } : {}),
      }, L.attention);
      this.linear(w.o, a.attn, { out: a.x2, residual: a.x }, T);
      // FFN block: x = x2 + Wd · (SiLU(Wg · norm(x2)) ⊙ Wu · norm(x2))
      this.linear(w.gateUp, a.x2, { normW: w.ffnNorm, out: a.ffn }, T);
      this.linear(w.down, a.ffn, { out: a.x, residual: a.x2 }, T);
    }

    // Only the rows asked for go through the final norm and the classifier.
    const R = L.logitRows;
    if (!R || !this.logitsBuf) return;
    // Decode rows are the activation rows in order: the classifier reads them where they are.
    if (!L.identityRows) dev.launch(this.ops.gather, { ids: idx.rows, table: a.x, out: a.rowsX }, { T: R, V: T, D: s.hidden });
    this.linear(this.weights.lmHead, L.identityRows ? a.x : a.rowsX, { normW: this.weights.finalNorm, out: this.logitsBuf }, R);
  }

  /** The largest decode bucket (decodeBuckets always holds at least bucket 1). */
  private get maxBucket(): number { return this.buckets.at(-1) ?? 1; }

  /** Decode bucket sizes (sequences per fixed-shape decode step). */
  get decodeBuckets(): readonly number[] { return this.buckets; }

  /** Buckets whose decode step has been captured as a graph (devices with captureGraph). */
  get capturedBuckets(): number[] { return [...this.graphs.keys()].sort((x, y) => x - y); }

  /**
   * One decode step: every sequence brings exactly one new token and wants its logits. The batch
   * is padded to a bucket (decodeBucket.ts) whose launches depend on the bucket alone. On a device
   * that can capture graphs (CUDA), a bucket's first step runs and is captured; later steps write
   * their inputs and replay the graph — one call instead of hundreds. Logits rows 0..n−1 of
   * `logitsBuffer` are the sequences', in batch order.
   */
  decodeStep(batch: readonly SeqInput[]): { seq: number; token: number }[] {
    batch.forEach((q, i) => {
      if (q.tokens.length !== 1) throw new ForwardError(`decodeStep: sequence ${i} brings ${q.tokens.length} tokens; a decode step takes exactly one per sequence`);
      if (q.logits === 'none') throw new ForwardError(`decodeStep: sequence ${i} asks for no logits; a decode step returns every sequence's`);
    });
    if (!batch.length) throw new ForwardError('decodeStep: empty batch');
    if (batch.length > this.maxBucket) {
      throw new ForwardError(`decodeStep: ${batch.length} sequences exceed the largest decode bucket ${this.maxBucket} (maxSeqs ${this.maxSeqs}, maxBatchTokens ${this.maxBatchTokens})`);
    }
    const B = pickBucket(batch.length, this.buckets);
    const layout = this.uploadDecode(batch, B);
    const graph = this.graphs.get(B);
    if (graph) {
      graph.replay();
    } else {
      // Run now (this also compiles every kernel and allocates every scratch buffer, so the
      // capture allocates nothing), then record the same launches for later steps.
      this.launchAll(layout);
      if (this.graphsEnabled && this.dev.captureGraph) {
        try {
          this.graphs.set(B, this.dev.captureGraph(() => this.launchAll(layout)));
        } catch (e) {
          // This step already ran; the next one of this bucket tries the capture again.
          throw new ForwardError(`decodeStep: capturing the decode graph of bucket ${B} failed: ${(e as Error).message}`, { cause: e });
        }
      }
    }
    return batch.map((_, seq) => ({ seq, token: 0 }));
  }

  /** decodeStep, then read the logits back: [n, vocab]. */
  async decode(batch: readonly SeqInput[]): Promise<ForwardResult> {
    return this.readRows(this.decodeStep(batch));
  }

  /** The logits of the last enqueued pass: [rows, vocab] (f32). */
  get logitsBuffer(): DeviceBuffer<'f32'> {
    if (!this.logitsBuf) throw new ForwardError('no forward pass has produced logits yet');
    return this.logitsBuf;
  }

  destroy(): void {
    for (const g of this.graphs.values()) g.destroy();
    this.graphs.clear();
    this.decodeLayouts.clear();
    for (const b of [...this.kCache, ...this.vCache, ...Object.values(this.act), ...Object.values(this.idx), this.ropeTable]) this.dev.free(b);
    for (const b of [this.blockTablesBuf, this.tilesBuf, this.logitsBuf]) if (b) this.dev.free(b);
    if (this.decodeBufs) {
      const { blockTables, tiles, partials } = this.decodeBufs;
      for (const b of [blockTables, tiles, ...(partials ? Object.values(partials) : [])]) this.dev.free(b);
    }
    this.decodeBufs = null;
  }

  private async readRows(rows: { seq: number; token: number }[]): Promise<ForwardResult> {
    if (!rows.length || !this.logitsBuf) { await this.dev.sync(); return { logits: new Float32Array(0), rows }; }
    const all = await this.dev.read(this.logitsBuf);
    return { logits: all.slice(0, rows.length * this.spec.vocabSize), rows };
  }

  /** Validate a decode batch, pad it to bucket B and write it; returns B's fixed layout. */
  private uploadDecode(batch: readonly SeqInput[], B: number): PassLayout {
    const s = this.spec, dev = this.dev, g = this.decodeGeometry, n = batch.length;
    const { ids, pos, slots } = this.flatten(batch);
    checkSlots(slots, this.opts.numBlocks, this.blockSize);
    const prep = prepareAttention(this.ops.attention.config, {
      numTokens: n,
      seqs: batch.map((q, i) => ({ qStart: i, qLen: 1, ctxLen: q.ctxLen, blockTable: q.blockTable })),
      window: g.window, scale: g.scale,
    }, { numBlocks: g.numBlocks, numKvHeads: g.numKvHeads, maxBlocksPerSeq: g.maxBlocksPerSeq });
    const { tiles, blockTables } = padDecodeMetadata(prep, B, g);
    const bufs = this.ensureDecodeBuffers();
    // Padding rows: token 0 at position 0, slot −1 (never appended); see decodeBucket.ts.
    const padIds = new Uint32Array(B), padPos = new Uint32Array(B), padSlots = new Int32Array(B).fill(-1);
    padIds.set(ids); padPos.set(pos); padSlots.set(slots);
    dev.write(this.idx.ids, padIds);
    dev.write(this.idx.pos, padPos);
    dev.write(this.idx.slots, padSlots);
    dev.write(this.idx.rows, Uint32Array.from({ length: B }, (_, i) => i));
    dev.write(bufs.blockTables, blockTables);
    dev.write(bufs.tiles, tiles);
    this.logitsBuf = this.ensure(this.logitsBuf, this.maxBatchTokens * s.vocabSize, 'logits', 'f32');
    let layout = this.decodeLayouts.get(B);
    if (!layout) {
      layout = {
        tokens: B, logitRows: B, attention: decodeAttentionSizes(B, g), identityRows: true,
        blockTables: bufs.blockTables, tiles: bufs.tiles, ...(bufs.partials ? { partials: bufs.partials } : {}),
      };
      this.decodeLayouts.set(B, layout);
    }
    return layout;
  }

  private ensureDecodeBuffers(): NonNullable<LlamaForward['decodeBufs']> {
    if (this.decodeBufs) return this.decodeBufs;
    const g = this.decodeGeometry, top = this.maxBucket;
    const partRows = Math.max(1, decodePartRows(top, g));
    const made: DeviceBuffer[] = [];
    const alloc = <T extends 'u32' | 'f32'>(t: T, len: number, label: string): DeviceBuffer<T> => {
      const b = this.dev.alloc(t, len, label);
      made.push(b);
      return b;
    };
    try {
      this.decodeBufs = {
        blockTables: alloc('u32', top * g.maxBlocksPerSeq, 'decode.blockTables'),
        tiles: alloc('u32', top * TILE_WORDS, 'decode.attentionTiles'),
        // attentionRows (the cpu device) keeps each row in locals: no partials, no tickets.
        ...(this.attentionPartials ? {
          partials: {
            acc: alloc('f32', partRows * this.spec.headDim, 'decode.attentionPartAcc'),
            ml: alloc('f32', partRows * 2, 'decode.attentionPartMl'),
            tickets: alloc('u32', top * g.numKvHeads, 'decode.attentionTickets'),
          },
        } : {}),
      };
    } catch (e) {
      for (const b of made) this.dev.free(b);
      throw e;
    }
    return this.decodeBufs;
  }

  private flatten(batch: readonly SeqInput[]) {
    const s = this.spec;
    if (!batch.length) throw new ForwardError('empty batch');
    if (batch.length > this.maxSeqs) throw new ForwardError(`batch of ${batch.length} sequences exceeds maxSeqs ${this.maxSeqs}`);
    const T = batch.reduce((n, q) => n + q.tokens.length, 0);
    if (T > this.maxBatchTokens) throw new ForwardError(`batch of ${T} tokens exceeds maxBatchTokens ${this.maxBatchTokens}`);
    const ids = new Uint32Array(T), pos = new Uint32Array(T), slots = new Int32Array(T);
    const rowsWanted: { seq: number; token: number; row: number }[] = [];
    let t = 0;
    batch.forEach((q, si) => {
      if (!q.tokens.length) throw new ForwardError(`sequence ${si}: no new tokens`);
      if (q.slots.length !== q.tokens.length) throw new ForwardError(`sequence ${si}: ${q.slots.length} slots for ${q.tokens.length} tokens`);
      if (q.ctxLen + q.tokens.length > s.maxPositions) {
        throw new ForwardError(`sequence ${si}: ${q.ctxLen + q.tokens.length} positions exceed the model's context of ${s.maxPositions}`);
      }
      q.tokens.forEach((id, j) => {
        if (!Number.isInteger(id) || id < 0 || id >= s.vocabSize) throw new ForwardError(`sequence ${si}: token id ${id} is outside the vocabulary (0..${s.vocabSize - 1})`);
        ids[t] = id;
        pos[t] = q.ctxLen + j;
        slots[t] = q.slots[j]!;
        if (q.logits === 'all' || (q.logits === 'last' && j === q.tokens.length - 1)) rowsWanted.push({ seq: si, token: j, row: t });
        t++;
      });
    });
    return { ids, pos, slots, rowsWanted, T };
  }

  private layer(l: number): LayerWeights {
    const w = this.weights.layers[l];
    if (!w) throw new ForwardError(`the weights have no layer ${l} (spec has ${this.spec.layers})`);
    return w;
  }

  private cacheOf(caches: KvBuffer[], l: number): KvBuffer {
    const c = caches[l];
    if (!c) throw new ForwardError(`no KV cache for layer ${l}`);
    return c;
  }

  /** A linear layer as its fused op: x, the layer's weights, and what the op adds around it. */
  private linear(lin: DeviceLinear, x: DeviceBuffer<'f32'>, more: Record<string, DeviceBuffer>, M: number, sizes: Record<string, number> = {}): void {
    const op = this.fused.get(lin);
    if (!op) throw new ForwardError(`no fused op for linear layer '${lin.op.name}'`);
    runFusedLinear(this.dev, op, { x, ...lin.weights, ...more }, { ...sizes, M, maxRows: this.maxBatchTokens });
  }

  private ensure<T extends 'u32' | 'f32'>(buf: DeviceBuffer<T> | null, n: number, label: string, t: T = 'u32' as T): DeviceBuffer<T> {
    if (buf && buf.length >= n) return buf;
    if (buf) this.dev.free(buf);
    return this.dev.alloc(t, Math.max(n, 16), label);
  }
}
