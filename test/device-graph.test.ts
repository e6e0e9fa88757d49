// Native graph capture (Device.captureGraph) on every backend that has one: a recorded launch
// sequence replays with the inputs written before each replay; writes inside a capture are
// refused; and decode steps replayed as graphs give the same bits as decode steps launched one by
// one. (Backends without captureGraph are skipped; backend-specific rules live in their tests.)
import { describe, expect, it } from 'vitest';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import type { Device } from '../src/backend/device.js';
import { BlockManager } from '../src/kv/blockManager.js';
import { loadModel } from '../src/llm.js';
import { LlamaForward } from '../src/model/forward.js';
import { forEachBackend } from './backends.js';
import { brownDir } from './runtimeGolden.js';
import { freshSeed, randomF32, rng } from './util.js';

forEachBackend('device graphs', (dev: Device) => {
  const capture = dev.captureGraph?.bind(dev);
  describe.skipIf(!capture)(`native captureGraph${capture ? '' : ' (absent)'}`, () => {
    it('replays its launches with the inputs of the moment, and refuses writes inside the capture', async () => {
      const r = rng(freshSeed('device graph replay'));
      const n = 1000, add = vectorAdd({ caps: dev.caps });
      const a = dev.alloc('f32', n, 'a'), b = dev.alloc('f32', n, 'b'), t = dev.alloc('f32', n, 't'), out = dev.alloc('f32', n, 'out');
      try {
        // out = (a + b) + a, two dependent launches.
        const graph = capture!(() => {
          dev.launch(add, { a, b, out: t }, { n });
          dev.launch(add, { a: t, b: a, out }, { n });
          expect(() => dev.write(a, new Float32Array(n))).toThrow(/during graph capture/);
        });
        expect(graph.launches).toBe(2);
        for (let rep = 0; rep < 3; rep++) {
          const av = randomF32(n, r), bv = randomF32(n, r);
          dev.write(a, av);
          dev.write(b, bv);
          dev.write(out, new Float32Array(n).fill(Number.NaN));
          graph.replay();
          const got = await dev.read(out);
          let wrong = 0;
          for (let i = 0; i < n; i++) if (got[i] !== Math.fround(Math.fround(av[i]! + bv[i]!) + av[i]!)) wrong++;
          expect(wrong, `replay ${rep}`).toBe(0);
        }
        graph.destroy();
      } finally {
        for (const x of [a, b, t, out]) dev.free(x);
      }
    });

    it('decode steps replayed as graphs give the bits of steps launched one by one (brown-draft, INT4 g=64)', async () => {
      const llm = await loadModel(brownDir('draft'), { device: dev, quant: 'int4-rtn', groupSize: 64 });
      const r = rng(freshSeed('device graph decode'));
      const V = llm.spec.vocabSize, numBlocks = 32;
      const fws = [true, false].map((graphs) => new LlamaForward(dev, llm.spec, llm.weights, { numBlocks, maxSeqs: 4, maxBatchTokens: 32, decodeGraphs: graphs }));
      const bms = fws.map(() => new BlockManager(numBlocks, { prefixCaching: false }));
      try {
        const prompts = [0, 1, 2].map(() => Array.from({ length: 3 + Math.floor(r() * 20) }, () => Math.floor(r() * V)));
        fws.forEach((fw, f) => prompts.forEach((p, s) => {
          bms[f]!.addSequence(`s${s}`);
          const slots = bms[f]!.append(`s${s}`, p);
          fw.enqueue([{ tokens: p, ctxLen: 0, blockTable: bms[f]!.blockTable(`s${s}`), slots, logits: 'none' }]);
        }));
        for (const n of [1, 3, 1, 3, 2]) {
          const tokens = Array.from({ length: n }, () => Math.floor(r() * V));
          const [replayed, launched] = await Promise.all(fws.map((fw, f) => fw.decode(tokens.map((tok, s) => {
            const ctxLen = bms[f]!.length(`s${s}`);
            const slots = bms[f]!.append(`s${s}`, [tok]);
            return { tokens: [tok], ctxLen, blockTable: bms[f]!.blockTable(`s${s}`), slots, logits: 'last' as const };
          }))));
          expect(replayed!.logits.every(Number.isFinite)).toBe(true);
          expect(Buffer.from(replayed!.logits.buffer).equals(Buffer.from(launched!.logits.buffer)), `${n} sequences`).toBe(true);
        }
        expect(fws[0]!.capturedBuckets).toEqual([1, 2, 4]);
        expect(fws[1]!.capturedBuckets).toEqual([]);
      } finally {
        for (const fw of fws) fw.destroy();
        await llm.close();
      }
    });
  });
});
