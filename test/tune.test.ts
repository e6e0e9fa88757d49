// `kiln tune` writes the variant cache; the runtime reads it back when it builds its ops.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createDevice } from '../src/backend/index.js';
import { loadModel } from '../src/llm.js';
import { tuneCacheKey } from '../src/ops/tune.js';
import { parseShape, readTuneCache, tuneCommand } from '../src/tune.js';
import { parseArgs } from '../src/util/args.js';

const dir = mkdtempSync(join(tmpdir(), 'kiln-tune-'));
const MODEL = join(import.meta.dirname, '..', 'models', 'brown-draft');

describe('variant cache', () => {
  const devP = createDevice('cpu');
  afterAll(async () => (await devP).destroy());

  it('kiln tune writes a winner under the device/family/shape key', async () => {
    const cache = join(dir, 'tune.json');
    await tuneCommand(parseArgs(['int4Linear', '--device', 'cpu', '--shape', 'K=128,N=384,M=1', '--cache', cache, '--reps', '1', '--samples', '1']));
    const file = JSON.parse(readFileSync(cache, 'utf8'));
    const dev = await devP;
    const key = tuneCacheKey(dev.description, 'int4Linear', { K: 128, N: 384, M: 1 });
    expect(Object.keys(file.entries)).toContain(key);
    expect(file.entries[key].winner.segLen).toBeGreaterThan(0);
    expect(readTuneCache(cache)[key]).toEqual(file.entries[key].winner);
  });

  it('on cpu the GEMM race is among register GEMM blocks (the GEMM the device runs past 8 rows)', async () => {
    const cache = join(dir, 'rows.json');
    await tuneCommand(parseArgs(['denseLinear', '--device', 'cpu', '--shape', 'K=64,N=64,weight=f16,M=24', '--cache', cache, '--reps', '1', '--samples', '1']));
    const dev = await devP;
    const key = tuneCacheKey(dev.description, 'denseLinear', { K: 64, N: 64, weight: 'f16', M: 24 });
    const winner = readTuneCache(cache)[key] as { gemmRows?: { rows: number }; gemm?: unknown };
    expect(winner.gemmRows?.rows).toBeGreaterThan(0); // the cpu device runs the register GEMM past 8 rows
    expect(winner.gemm).toBeUndefined(); // the tiled tiling is not raced where it never runs
  });

  it('the runtime builds its linear ops and norms with the cached choices', async () => {
    const dev = await devP;
    // brown-draft: hidden 128, 2·kv + q = 256 columns for qkv. Plant a distinctive (valid) choice.
    const choice = { segLen: 64, gemv: { workgroupSize: 32, units: 2 }, gemm: { tileM: 16, tileN: 16, tileK: 16, blockM: 1, blockN: 1 }, finishWorkgroupSize: 32 };
    const key = tuneCacheKey(dev.description, 'int4Linear', { K: 128, N: 256, groupSize: 64 });
    const cache = join(dir, 'planted.json');
    const normKey = tuneCacheKey(dev.description, 'rmsNorm', { D: 128 });
    writeFileSync(cache, JSON.stringify({ version: 1, entries: {
      [key]: { winner: choice, ms: 1, measured: 'test' },
      [normKey]: { winner: { workgroupSize: 32 }, ms: 1, measured: 'test' },
    } }));
    const llm = await loadModel(MODEL, { device: dev, quant: 'int4-rtn', groupSize: 64, tuneCache: cache });
    try {
      const qkv = llm.weights.layers[0]!.qkv.op;
      expect(qkv.choice.segLen).toBe(64);
      expect(qkv.choice.gemv[0]).toEqual({ workgroupSize: 32, units: 2 });
      expect(qkv.choice.gemm).toEqual(choice.gemm);
      // Layers without an entry keep the defaults, and the model still generates.
      expect(llm.engine.forward['ops'].norm.ir.workgroupSize[0]).toBe(32);
      expect(llm.weights.layers[0]!.o.op.choice.segLen).not.toBe(0);
      const text = await llm.complete('The jury', { temperature: 0, maxTokens: 4 });
      expect(text.length).toBeGreaterThan(0);
    } finally {
      await llm.close();
    }
  });

  it('rejects a corrupt cache file and bad shapes with clear errors', () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{ not json');
    expect(() => readTuneCache(bad)).toThrow(/variant cache .*bad\.json: not JSON/);
    writeFileSync(bad, JSON.stringify({ version: 2, entries: {} }));
    expect(() => readTuneCache(bad)).toThrow(/expected \{"version": 1/);
    expect(readTuneCache(join(dir, 'missing.json'))).toEqual({});
    expect(() => parseShape('K4096')).toThrow(/not name=value/);
    expect(parseShape('K=4096,layout=halves')).toEqual({ K: 4096, layout: 'halves' });
  });
});
