import { describe, expect, it } from 'vitest';
import { BlockManager, OutOfBlocksError } from '../src/kv/blockManager.js';
import { freshSeed, rng } from './util.js';

describe('BlockManager', () => {
  it('hands out slots block by block and frees exactly', () => {
    const bm = new BlockManager(4, { blockSize: 4 });
    bm.addSequence('a');
    expect(bm.append('a', [1, 2, 3, 4, 5])).toEqual([0, 1, 2, 3, 4]);
    expect(bm.blockTable('a')).toEqual([0, 1]);
    expect(bm.freeBlocks).toBe(2);
    bm.free('a');
    expect(bm.freeBlocks).toBe(4);
  });

  it('is all-or-nothing when out of blocks', () => {
    const bm = new BlockManager(2, { blockSize: 4, prefixCaching: false });
    bm.addSequence('a');
    bm.append('a', [1, 2, 3]);
    expect(() => bm.append('a', [4, 5, 6, 7, 8, 9])).toThrow(OutOfBlocksError);
    expect(bm.length('a')).toBe(3);
    expect(bm.freeBlocks).toBe(1);
  });

  it('shares full prompt blocks through the prefix cache and leaves the last token to compute', () => {
    const bm = new BlockManager(8, { blockSize: 4 });
    const prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13];
    bm.addSequence('a');
    bm.append('a', prompt);
    const cached = bm.addSequence('b', prompt);
    expect(cached).toBe(8);
    expect(bm.blockTable('b')).toEqual(bm.blockTable('a').slice(0, 2));
    bm.append('b', prompt.slice(cached));
    expect(bm.usedBlocks).toBe(4);
    // An exact multiple of the block size still leaves its last block to compute.
    expect(bm.addSequence('c', prompt.slice(0, 8))).toBe(4);
    bm.free('a'); bm.free('b'); bm.free('c');
    expect(bm.freeBlocks).toBe(8);
    // Freed cached blocks are still found until evicted.
    expect(bm.addSequence('d', prompt)).toBe(8);
  });

  it('copies a shared block before a truncated sequence writes into it', () => {
    const bm = new BlockManager(8, { blockSize: 4 });
    const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    bm.addSequence('a'); bm.append('a', prompt);
    bm.addSequence('b', prompt); bm.append('b', [9]);
    const shared = bm.blockTable('b')[1]!;
    const { copy } = bm.truncate('b', 6);
    expect(copy?.src).toBe(shared);
    expect(bm.blockTable('b')[1]).toBe(copy?.dst);
    expect(bm.blockTable('a')[1]).toBe(shared);
  });

  it('keeps its invariants under random operations (property test)', () => {
    const seed = freshSeed('blockManager property');
    const r = rng(seed);
    const bs = 4, total = 24;
    const bm = new BlockManager(total, { blockSize: bs });
    const live = new Map<number, number[]>();
    let next = 0;
    const vocab = 3; // tiny vocabulary: many shared prefixes
    for (let step = 0; step < 3000; step++) {
      const op = r();
      const ids = [...live.keys()];
      if (op < 0.3 || ids.length === 0) {
        const prompt = Array.from({ length: 1 + Math.floor(r() * 14) }, () => Math.floor(r() * vocab));
        const id = next++;
        const cached = bm.addSequence(id, prompt);
        expect(cached).toBeLessThan(prompt.length);
        expect(cached % bs).toBe(0);
        try { bm.append(id, prompt.slice(cached)); live.set(id, prompt); } catch (e) {
          expect(e).toBeInstanceOf(OutOfBlocksError);
          bm.free(id);
        }
      } else {
        const id = ids[Math.floor(r() * ids.length)]!;
        const toks = live.get(id)!;
        if (op < 0.6) {
          const more = Array.from({ length: 1 + Math.floor(r() * 6) }, () => Math.floor(r() * vocab));
          const before = bm.freeBlocks;
          try { bm.append(id, more); toks.push(...more); } catch (e) {
            expect(e).toBeInstanceOf(OutOfBlocksError);
            expect(bm.freeBlocks).toBe(before);
          }
        } else if (op < 0.8) {
          const len = Math.floor(r() * (toks.length + 1));
          try { bm.truncate(id, len); toks.length = len; } catch (e) { expect(e).toBeInstanceOf(OutOfBlocksError); }
        } else {
          bm.free(id);
          live.delete(id);
        }
      }
      // Invariants: lengths and tokens as tracked; tables cover the length exactly; a block is
      // shared only when it is full and identical in the sequences that share it.
      const owner = new Map<number, { seq: number; idx: number }[]>();
      for (const [id, toks] of live) {
        expect(bm.tokens(id)).toEqual(toks);
        const table = bm.blockTable(id);
        expect(table.length).toBe(Math.ceil(toks.length / bs));
        table.forEach((b, idx) => owner.set(b, [...(owner.get(b) ?? []), { seq: id, idx }]));
      }
      for (const [, users] of owner) {
        if (users.length < 2) continue;
        const first = users[0]!;
        const ref = live.get(first.seq)!.slice(first.idx * bs, (first.idx + 1) * bs);
        expect(ref.length).toBe(bs);
        for (const u of users) expect(live.get(u.seq)!.slice(u.idx * bs, (u.idx + 1) * bs)).toEqual(ref);
      }
      expect(bm.usedBlocks).toBe(owner.size);
    }
    for (const id of live.keys()) bm.free(id);
    expect(bm.freeBlocks).toBe(total);
  });
});

describe('BlockManager.free with dropCached', () => {
  it('forgets the sequence’s cached blocks (a failed pass may not have written their KV)', () => {
    const bm = new BlockManager(8, { blockSize: 4 });
    const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    bm.addSequence('a'); bm.append('a', prompt);
    bm.free('a', { dropCached: true });
    expect(bm.freeBlocks).toBe(8);
    expect(bm.addSequence('b', prompt)).toBe(0);
    // Without it the same prefix is found again.
    bm.append('b', prompt);
    bm.free('b');
    expect(bm.addSequence('c', prompt)).toBe(8);
  });

  it('keeps blocks still shared with another sequence cached', () => {
    const bm = new BlockManager(8, { blockSize: 4 });
    const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    bm.addSequence('a'); bm.append('a', prompt);
    expect(bm.addSequence('b', prompt)).toBe(8);
    bm.free('b', { dropCached: true });
    expect(bm.addSequence('c', prompt)).toBe(8);
  });
});
