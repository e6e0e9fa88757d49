// Paged KV block manager: blocks of `blockSize` token slots, refcounted, one block table per
// sequence, and a prefix cache keyed by (parent block's key, token ids of a full block).
// Pure bookkeeping — it never touches a device. Freeing is exact: tests count blocks.

export class OutOfBlocksError extends Error {
  constructor(readonly needed: number, readonly free: number) {
    super(`KV cache out of blocks: need ${needed}, ${free} free`);
  }
}

interface Block {
  id: number;
  refs: number;
  /** Prefix-cache key once the block is full and registered; '' otherwise. */
  key: string;
  /** Unique id of that key (children name their parent by it, so keys stay short). */
  keyId: number;
}

interface Sequence {
  blocks: Block[];
  tokens: number[];
}

export interface BlockManagerOptions {
  blockSize?: number;
  prefixCaching?: boolean;
}

export class BlockManager {
  readonly blockSize: number;
  readonly prefixCaching: boolean;
  private readonly blocks: Block[];
  private readonly freeList: number[] = [];
  /** Unreferenced blocks still holding a cached prefix, least recently used first. */
  private readonly evictable = new Set<number>();
  private readonly cache = new Map<string, number>();
  private nextKeyId = 1;
  private readonly seqs = new Map<string | number, Sequence>();

  constructor(readonly numBlocks: number, opts: BlockManagerOptions = {}) {
    this.blockSize = opts.blockSize ?? 16;
    this.prefixCaching = opts.prefixCaching ?? true;
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new Error(`numBlocks must be a positive integer, got ${numBlocks}`);
    if (!Number.isInteger(this.blockSize) || this.blockSize < 1) throw new Error(`blockSize must be a positive integer, got ${this.blockSize}`);
    this.blocks = Array.from({ length: numBlocks }, (_, id) => ({ id, refs: 0, key: '', keyId: 0 }));
    for (let i = numBlocks - 1; i >= 0; i--) this.freeList.push(i);
  }

  /** Blocks that can be handed out now (free plus evictable cached ones). */
  get freeBlocks(): number { return this.freeList.length + this.evictable.size; }
  get usedBlocks(): number { return this.numBlocks - this.freeBlocks; }
  /** Blocks by state — referenced, unreferenced but holding a cached prefix, empty — summing to numBlocks. */
  stats(): { used: number; cached: number; free: number; total: number } {
    return { used: this.usedBlocks, cached: this.evictable.size, free: this.freeList.length, total: this.numBlocks };
  }
  has(seq: string | number): boolean { return this.seqs.has(seq); }
  length(seq: string | number): number { return this.get(seq).tokens.length; }
  blockTable(seq: string | number): number[] { return this.get(seq).blocks.map((b) => b.id); }
  tokens(seq: string | number): readonly number[] { return this.get(seq).tokens; }

  /** Blocks needed to grow `seq` (or a new sequence) by n tokens. */
  blocksNeeded(seq: string | number | undefined, n: number): number {
    const len = seq !== undefined && this.seqs.has(seq) ? this.seqs.get(seq)!.tokens.length : 0;
    const have = seq !== undefined && this.seqs.has(seq) ? this.seqs.get(seq)!.blocks.length : 0;
    return Math.max(0, Math.ceil((len + n) / this.blockSize) - have);
  }

  /**
   * Start a sequence. With prefix caching, full blocks of `prompt` already cached are shared;
   * returns how many leading tokens are cached (their KV need not be computed). At least the
   * last prompt token is always left to compute, so its logits exist.
   */
  addSequence(seq: string | number, prompt: readonly number[] = []): number {
    if (this.seqs.has(seq)) throw new Error(`sequence ${seq} already exists`);
    const s: Sequence = { blocks: [], tokens: [] };
    if (this.prefixCaching) {
      const full = Math.floor(Math.max(0, prompt.length - 1) / this.blockSize);
      let parent = 0;
      for (let b = 0; b < full; b++) {
        const toks = prompt.slice(b * this.blockSize, (b + 1) * this.blockSize);
        const key = blockKey(parent, toks);
        const id = this.cache.get(key);
        if (id === undefined) break;
        const blk = this.blocks[id]!;
        if (blk.refs === 0) this.evictable.delete(id);
        blk.refs++;
        s.blocks.push(blk);
        s.tokens.push(...toks);
        parent = blk.keyId;
      }
    }
    this.seqs.set(seq, s);
    return s.tokens.length;
  }

  /**
   * Append tokens to a sequence and return their KV slots (block * blockSize + offset).
   * All-or-nothing: on OutOfBlocksError nothing changed.
   */
  append(seq: string | number, tokenIds: readonly number[], opts: { speculative?: number } = {}): number[] {
    const s = this.get(seq);
    // The last `speculative` tokens are drafts that may be rolled back: a block they fill is not
    // offered to the prefix cache (nothing may share a block that truncate() will rewrite).
    const registerBelow = s.tokens.length + tokenIds.length - (opts.speculative ?? 0);
    const need = this.blocksNeeded(seq, tokenIds.length);
    if (need > this.freeBlocks) throw new OutOfBlocksError(need, this.freeBlocks);
    for (let i = 0; i < need; i++) s.blocks.push(this.take());
    const slots: number[] = [];
    for (const t of tokenIds) {
      const pos = s.tokens.length;
      const blk = s.blocks[Math.floor(pos / this.blockSize)]!;
      slots.push(blk.id * this.blockSize + (pos % this.blockSize));
      s.tokens.push(t);
      if ((pos + 1) % this.blockSize === 0 && pos < registerBelow) this.register(s, Math.floor(pos / this.blockSize));
    }
    return slots;
  }

  /**
   * Shrink a sequence to `len` tokens (speculative rollback). Trailing blocks are released.
   * If the block that becomes partial is shared, the sequence gets a private copy: the caller
   * must copy the KV of `copy.src` into `copy.dst` before writing to it.
   */
  truncate(seq: string | number, len: number): { copy?: { src: number; dst: number } } {
    const s = this.get(seq);
    if (!Number.isInteger(len) || len < 0 || len > s.tokens.length) {
      throw new Error(`cannot truncate sequence ${seq} of length ${s.tokens.length} to ${len}`);
    }
    const keep = Math.ceil(len / this.blockSize);
    // All-or-nothing: a shared block that becomes partial needs a fresh block for its copy, and
    // the blocks released here count toward it; check before changing anything.
    const copyNeeded = len % this.blockSize !== 0 && s.blocks[keep - 1]!.refs > 1;
    const released = s.blocks.slice(keep).filter((b) => b.refs === 1).length;
    if (copyNeeded && this.freeBlocks + released < 1) throw new OutOfBlocksError(1, this.freeBlocks);
    while (s.blocks.length > keep) this.release(s.blocks.pop()!);
    s.tokens.length = len;
    let copy: { src: number; dst: number } | undefined;
    if (len % this.blockSize !== 0) {
      const last = s.blocks[keep - 1]!;
      if (last.refs > 1) {
        const fresh = this.take();
        last.refs--;
        s.blocks[keep - 1] = fresh;
        copy = { src: last.id, dst: fresh.id };
      } else if (last.key) {
        // It is about to be rewritten: it no longer holds the cached prefix.
        this.cache.delete(last.key);
        last.key = '';
      }
    }
    return { copy };
  }

  /**
   * Release every block of the sequence. `dropCached`: its blocks leave the prefix cache as well
   * (after a failed pass their KV may never have been written).
   */
  free(seq: string | number, opts: { dropCached?: boolean } = {}): void {
    const s = this.get(seq);
    for (let i = s.blocks.length - 1; i >= 0; i--) {
      const blk = s.blocks[i]!;
      if (opts.dropCached && blk.key && blk.refs === 1) {
        this.cache.delete(blk.key);
        blk.key = '';
      }
      this.release(blk);
    }
    this.seqs.delete(seq);
  }

  private get(seq: string | number): Sequence {
    const s = this.seqs.get(seq);
    if (!s) throw new Error(`unknown sequence ${seq}`);
    return s;
  }

  private take(): Block {
    let id = this.freeList.pop();
    if (id === undefined) {
      // Evict the least recently used cached block.
      id = this.evictable.values().next().value as number;
      this.evictable.delete(id);
      const blk = this.blocks[id]!;
      this.cache.delete(blk.key);
      blk.key = '';
    }
    const blk = this.blocks[id]!;
    blk.refs = 1;
    return blk;
  }

  private release(blk: Block): void {
    if (--blk.refs > 0) return;
    if (blk.key) this.evictable.add(blk.id);
    else this.freeList.push(blk.id);
  }

  private register(s: Sequence, b: number): void {
    if (!this.prefixCaching) return;
    const blk = s.blocks[b]!;
    if (blk.key) return;
    const parent = b === 0 ? 0 : s.blocks[b - 1]!.keyId;
    if (b > 0 && !s.blocks[b - 1]!.key) return; // parent not cached: this block's prefix cannot be found either
    const key = blockKey(parent, s.tokens.slice(b * this.blockSize, (b + 1) * this.blockSize));
    if (this.cache.has(key)) return; // an identical block is already cached
    blk.key = key;
    blk.keyId = this.nextKeyId++;
    this.cache.set(key, blk.id);
  }
}

/** Exact key of a full block: its parent's key and its own token ids (no hash collisions). */
function blockKey(parent: number, tokens: readonly number[]): string {
  return `${parent}/${tokens.join(',')}`;
}
