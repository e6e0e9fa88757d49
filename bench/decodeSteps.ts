// `npm run bench -- decode-steps`: decode steps of one model on each backend, launched one by one
// (decodeGraphs off) and replayed from a captured graph (on), side by side in alternating rounds
// so machine noise hits both alike. Prints ms per step, tokens/s and the launches per step the
// host issues itself (a replay issues none: it appends the recorded commands).
//
//   npm run bench -- decode-steps [--model DIR] [--backends webgpu,cpu] [--formats f16,int4]
//                                 [--steps N (per round, default 16)] [--rounds N (default 3)] [--seqs N (default 1)]
import { BackendUnavailableError, type BackendKind, type Device } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { BlockManager } from '../src/kv/blockManager.js';
import { loadModel } from '../src/llm.js';
import { DEFAULT_MODEL } from '../src/llm.js';
import { LlamaForward } from '../src/model/forward.js';
import type { WeightFormat } from '../src/model/weights.js';

interface Options { model: string; backends: BackendKind[]; formats: WeightFormat[]; steps: number; rounds: number; seqs: number }

function parse(args: string[]): Options {
  const o: Options = { model: DEFAULT_MODEL, backends: ['webgpu', 'cpu'], formats: ['f16', 'int4'], steps: 16, rounds: 3, seqs: 1 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    const count = (what: string) => { const n = Number(v()); if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer`); return n; };
    if (a === '--model') o.model = v();
    else if (a === '--backends') o.backends = v().split(',') as BackendKind[];
    else if (a === '--formats') o.formats = v().split(',') as WeightFormat[];
    else if (a === '--steps') o.steps = count('--steps');
    else if (a === '--rounds') o.rounds = count('--rounds');
    else if (a === '--seqs') o.seqs = count('--seqs');
    else throw new Error(`decode-steps: unknown option '${a}'`);
  }
  return o;
}

/** Launches the host issues through dev.launch (graph replays bypass it). */
function countLaunches(dev: Device): { n: number } {
  const c = { n: 0 };
  const launch = dev.launch.bind(dev);
  dev.launch = ((...a: Parameters<Device['launch']>) => { c.n++; launch(...a); }) as Device['launch'];
  return c;
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const rows: string[][] = [];
  for (const kind of o.backends) {
    let dev: Device;
    try { dev = await createDevice(kind); } catch (e) {
      if (e instanceof BackendUnavailableError) { console.error(`${kind}: skipped (${e.reason})`); continue; }
      throw e;
    }
    try {
      for (const format of o.formats) {
        const llm = await loadModel(o.model, { device: dev, ...(format === 'int4' ? { quant: 'int4-rtn' as const, groupSize: 64 } : {}) });
        const counter = countLaunches(dev);
        const V = llm.spec.vocabSize, numBlocks = Math.ceil((o.rounds * o.steps + 64) / 16) * o.seqs + 8;
        const modes = [false, true].map((graphs) => ({
          graphs, ms: 0, steps: 0, launches: 0,
          fw: new LlamaForward(dev, llm.spec, llm.weights, { numBlocks, maxSeqs: Math.max(8, o.seqs), maxBatchTokens: 64, decodeGraphs: graphs }),
          bm: new BlockManager(numBlocks, { prefixCaching: false }),
        }));
        try {
          for (const m of modes) {
            for (let s = 0; s < o.seqs; s++) {
              m.bm.addSequence(s);
              const prompt = Array.from({ length: 32 }, (_, i) => (i * 7919 + s) % V);
              const slots = m.bm.append(s, prompt);
              await m.fw.forward([{ tokens: prompt, ctxLen: 0, blockTable: m.bm.blockTable(s), slots, logits: 'last' }]);
            }
          }
          const step = async (m: (typeof modes)[number], tok: number) => m.fw.decode(Array.from({ length: o.seqs }, (_, s) => {
            const ctxLen = m.bm.length(s);
            const slots = m.bm.append(s, [tok]); // before the block table: it may take a new block
            return { tokens: [tok], ctxLen, blockTable: m.bm.blockTable(s), slots, logits: 'last' as const };
          }));
          for (const m of modes) await step(m, 1); // compile, allocate and (with graphs) capture
          for (let r = 0; r < o.rounds; r++) {
            for (const m of modes) {
              const from = counter.n, t0 = performance.now();
              for (let i = 0; i < o.steps; i++) await step(m, 2 + i);
              m.ms += performance.now() - t0;
              m.steps += o.steps;
              m.launches += counter.n - from;
            }
          }
          const [off, on] = modes as [(typeof modes)[number], (typeof modes)[number]];
          for (const m of modes) {
            const ms = m.ms / m.steps;
            rows.push([dev.description.slice(0, 48), format, m.graphs ? 'replayed' : 'launched', ms.toFixed(2), ((1000 * o.seqs) / ms).toFixed(1),
              (m.launches / m.steps).toFixed(1), m.graphs ? `${((off.ms / off.steps) / ms).toFixed(2)}×` : '']);
          }
          void on;
        } finally {
          for (const m of modes) m.fw.destroy();
          await llm.close();
        }
      }
    } finally { await dev.destroy(); }
  }
  const head = ['device', 'weights', 'steps', 'ms/step', 'tok/s', 'host launches/step', 'speedup'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join('  ');
  console.log(`decode steps of ${o.model.split('/').pop()}, ${o.seqs} sequence${o.seqs > 1 ? 's' : ''}, ${o.rounds} rounds × ${o.steps} steps per mode`);
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}
