// `npm run bench -- spec`: speculative decoding in the engine, brown-target verified, drafted by
// brown-draft or by n-gram lookup, k = 1…8 and adaptive, batches of 1, 4 and 16, side by side
// with no speculation measured in the same run.
//
//   npm run bench -- spec [--drafters model,ngram] [--k 1,2,4,adaptive] [--batch 1,4,16]
//                         [--temperature 0.8] [--tokens 64] [--device cpu] [--reps 2] [--json]
//
// Sampling at temperature 0.8 with a seed per request by default (greedy, --temperature 0,
// flatters n-gram drafting: both brown models loop under greedy decoding).
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { BackendKind } from '../src/backend/device.js';
import { createEngine, type EngineOptions } from '../src/engine.js';
import { DEFAULT_MODEL, loadModel, type LLM } from '../src/llm.js';

const HELDOUT = new URL('../../shared/data/brown-heldout.txt', import.meta.url);
const DRAFT = new URL('../../shared/models/brown-draft', import.meta.url);

interface Options { drafters: string[]; k: (number | 'adaptive')[]; batch: number[]; temperature: number; tokens: number; device: BackendKind; json: boolean; draft: string; reps: number }

function parse(args: string[]): Options {
  const o: Options = { drafters: ['model', 'ngram'], k: [1, 2, 3, 4, 5, 6, 7, 8, 'adaptive'], batch: [1, 4, 16], temperature: 0.8, tokens: 64, device: 'cpu', json: false, draft: DRAFT.pathname, reps: 2 };
  const list = (v: string) => v.split(',').filter(Boolean);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`bench spec: ${a} needs a value`); return x; };
    if (a === '--drafters') o.drafters = list(v());
    else if (a === '--k') o.k = list(v()).map((x) => (x === 'adaptive' ? 'adaptive' : Number(x)));
    else if (a === '--batch') o.batch = list(v()).map(Number);
    else if (a === '--temperature') o.temperature = Number(v());
    else if (a === '--tokens') o.tokens = Number(v());
    else if (a === '--device') o.device = v() as BackendKind;
    else if (a === '--draft') o.draft = v();
    else if (a === '--json') o.json = true;
    else if (a === '--reps') o.reps = Number(v());
    else throw new Error(`bench spec: unknown option ${a} (--drafters, --k, --batch, --temperature, --tokens, --device, --draft, --reps, --json)`);
  }
  for (const d of o.drafters) if (d !== 'model' && d !== 'ngram') throw new Error(`bench spec: drafter '${d}' is not model or ngram`);
  for (const k of o.k) if (k !== 'adaptive' && (!Number.isInteger(k) || k < 1 || k > 16)) throw new Error(`bench spec: --k ${k} must be 1..16 or adaptive`);
  return o;
}

export interface SpecRow {
  drafter: string; k: number | 'adaptive'; batch: number; temperature: number; tok_s: number; baseline_tok_s: number;
  speedup: number; accept_rate: number; accepted_per_step: number; drafter_share: number;
}

/** Generate `tokens` for each of `prompts` together; output tokens/s and speculation stats. */
async function run(target: LLM, prompts: number[][], o: Options, spec?: EngineOptions['speculative']) {
  const e = createEngine(target, { maxSeqs: prompts.length, ...(spec ? { speculative: spec } : {}) });
  try {
    const t0 = performance.now();
    const rs = await Promise.all(prompts.map((prompt, i) => e.generate({ prompt, maxTokens: o.tokens, temperature: o.temperature, seed: 7 + i, stopTokenIds: [] }).result()));
    const s = (performance.now() - t0) / 1000;
    const n = rs.reduce((x, r) => x + r.usage.generatedTokens, 0);
    return { tokS: n / s, stats: e.stats() };
  } finally {
    await e.close();
  }
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const target = await loadModel(DEFAULT_MODEL, { device: o.device });
  const draft = o.drafters.includes('model') ? await loadModel(o.draft, { device: target.device }) : null;
  try {
    if (!fs.existsSync(HELDOUT)) throw new Error(`bench spec: ${HELDOUT.pathname} is missing`);
    const text = target.encode(fs.readFileSync(HELDOUT, 'utf8'));
    const maxB = Math.max(...o.batch);
    const prompts = Array.from({ length: maxB }, (_, i) => text.slice(2000 + i * 97, 2000 + i * 97 + 32));
    // Warm-up: every kernel shape compiled before anything is timed.
    await run(target, prompts.slice(0, 2), { ...o, tokens: 8 });
    if (draft) await run(target, prompts.slice(0, 2), { ...o, tokens: 8 }, { drafter: draft, k: 4 });
    const rows: SpecRow[] = [];
    for (const b of o.batch) {
      const ps = prompts.slice(0, b);
      for (const d of o.drafters) {
        for (const k of o.k) {
          // Fixed k rows drafts k for every sequence (no row cap); adaptive rows use the defaults.
          const spec = k === 'adaptive' ? { drafter: d === 'ngram' ? 'ngram' as const : draft!, k: 8 }
            : { drafter: d === 'ngram' ? 'ngram' as const : draft!, k, adaptive: false, maxBatch: 16, maxVerifyRows: 1 << 20 };
          // Baseline and speculation interleaved, best of `reps` each: the box is shared, and a
          // baseline measured minutes apart would compare two different loads.
          let base = { tokS: 0 }, r = { tokS: 0, stats: undefined as unknown as Awaited<ReturnType<typeof run>>['stats'] };
          for (let rep = 0; rep < o.reps; rep++) {
            const b0 = await run(target, ps, o);
            if (b0.tokS > base.tokS) base = b0;
            const r0 = await run(target, ps, o, spec);
            if (r0.tokS > r.tokS) r = r0;
          }
          const sp = r.stats.speculation!;
          rows.push({
            drafter: d === 'ngram' ? 'ngram' : 'brown-draft', k, batch: b, temperature: o.temperature, tok_s: r.tokS, baseline_tok_s: base.tokS,
            speedup: r.tokS / base.tokS, accept_rate: sp.acceptRate, accepted_per_step: sp.acceptedPerStep, drafter_share: sp.drafterShare,
          });
          if (!o.json) process.stderr.write(`batch ${b} ${d} k=${k}: ${(r.tokS / base.tokS).toFixed(2)}×\n`);
        }
      }
    }
    const machine = `${os.cpus().length} × ${os.cpus()[0]?.model.trim() ?? 'cpu'}, ${target.device.description}`;
    if (o.json) { console.log(JSON.stringify({ machine, rows })); return; }
    console.log(`\nspec: brown-target, ${o.tokens} tokens per request at temperature ${o.temperature}; ${machine}\n`);
    console.log('| drafter | k | batch | tok/s | no-spec tok/s | speedup | accept rate | accepted/step | drafter share |');
    console.log('|---|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      console.log(`| ${r.drafter} | ${r.k} | ${r.batch} | ${r.tok_s.toFixed(1)} | ${r.baseline_tok_s.toFixed(1)} | ${r.speedup.toFixed(2)}× | ${(100 * r.accept_rate).toFixed(0)}% | ${r.accepted_per_step.toFixed(2)} | ${(100 * r.drafter_share).toFixed(0)}% |`);
    }
  } finally {
    await draft?.close();
    await target.close();
  }
}
