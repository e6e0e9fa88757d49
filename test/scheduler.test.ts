// The continuous-batching scheduler with a fake runner: no device. The fake "model" writes each
// computed token's (position, id) into the slot the plan gives it and checks, before every
// step, that the KV a sequence attends to holds exactly its own tokens — so prefix sharing,
// preemption and recompute are checked for what they must preserve, not for how they do it.
// Random workloads are property tests: seeded, seed printed.
import { describe, expect, it } from 'vitest';
import { BlockManager } from '../src/kv/blockManager.js';
import { AdmissionError, QueueFullError, Scheduler, type SchedulerOptions, type StepPlan } from '../src/sched/scheduler.js';
import { freshSeed, rng } from './util.js';

interface FakeReq { id: number; prompt: number[]; maxTokens: number; eosAt?: number; priority?: number }

/** The token the fake model emits at position p of request id (a pure function: recompute-safe). */
const nextToken = (id: number, p: number) => (id * 7919 + p * 104729) % 997 + 3;

interface RunResult {
  outputs: Map<number, number[]>;
  steps: number;
  preemptions: number;
  plans: StepPlan[];
}

function run(reqs: FakeReq[], o: Partial<SchedulerOptions> & { numBlocks: number; blockSize?: number; prefixCaching?: boolean; arrivals?: number[] }): RunResult {
  const bs = o.blockSize ?? 4;
  const blocks = new BlockManager(o.numBlocks, { blockSize: bs, prefixCaching: o.prefixCaching ?? true });
  const opts: SchedulerOptions = {
    maxBatchedTokens: o.maxBatchedTokens ?? 32, maxSeqs: o.maxSeqs ?? 8, chunkSize: o.chunkSize ?? 8, maxPositions: o.maxPositions ?? 1024,
    scheduling: o.scheduling ?? 'continuous', staticBatchSize: o.staticBatchSize ?? 4,
  };
  const sched = new Scheduler(blocks, opts);
  const kv = new Map<number, { pos: number; tok: number }>();
  const outputs = new Map<number, number[]>();
  const byId = new Map(reqs.map((r) => [r.id, r]));
  const plans: StepPlan[] = [];
  let added = 0, steps = 0, preemptions = 0;
  const arrivals = o.arrivals ?? reqs.map(() => 0);
  while (added < reqs.length || sched.hasWork) {
    while (added < reqs.length && arrivals[added]! <= steps) {
      const r = reqs[added++]!;
      sched.add({ id: r.id, prompt: r.prompt, maxTokens: r.maxTokens, priority: r.priority });
      outputs.set(r.id, []);
    }
    const before = new Set(sched.ids().running);
    const plan = sched.schedule();
    steps++;
    if (steps > 100_000) throw new Error('no progress');
    preemptions += plan.preempted.length;
    if (!plan.seqs.length) {
      expect(sched.stats().running, 'nothing planned while requests run').toBe(0);
      continue;
    }
    plans.push(plan);
    // Budget and cap.
    expect(plan.numTokens).toBe(plan.seqs.reduce((s, q) => s + q.tokens.length, 0));
    expect(plan.numTokens).toBeLessThanOrEqual(opts.maxBatchedTokens);
    expect(plan.seqs.length).toBeLessThanOrEqual(opts.maxSeqs);
    expect(new Set(plan.seqs.map((q) => q.id)).size).toBe(plan.seqs.length);
    // Like the forward, every layer appends the step's KV before attending, so a prefix block that
    // another sequence of this step computes may already be shared.
    for (const q of plan.seqs) q.tokens.forEach((t, j) => kv.set(q.slots[j]!, { pos: q.ctxLen + j, tok: t }));
    const slotsThisStep = new Set<number>();
    for (const q of plan.seqs) {
      const toks = sched.tokens(q.id);
      expect(q.blockTable.length).toBeGreaterThanOrEqual(Math.ceil((q.ctxLen + q.tokens.length) / bs));
      // The context it attends to holds its own tokens at their positions.
      for (let p = 0; p < q.ctxLen; p++) {
        const slot = q.blockTable[Math.floor(p / bs)]! * bs + (p % bs);
        expect(kv.get(slot), `request ${q.id} position ${p}`).toEqual({ pos: p, tok: toks[p] });
      }
      q.tokens.forEach((t, j) => {
        const p = q.ctxLen + j;
        expect(t).toBe(toks[p]);
        expect(q.slots[j]).toBe(q.blockTable[Math.floor(p / bs)]! * bs + (p % bs));
        expect(slotsThisStep.has(q.slots[j]!), 'two tokens of one step share a slot').toBe(false);
        slotsThisStep.add(q.slots[j]!);
      });
    }
    // Decodes are never starved: a decode left out means the cap or the budget was spent on decodes.
    const planned = new Set(plan.seqs.map((q) => q.id));
    const decodes = plan.seqs.filter((q) => q.phase === 'decode');
    // (Only sequences already running before this step: a static batch admitted now may not get
    // budget for every member's first chunk, whose one remaining token is not a starved decode.)
    for (const id of sched.ids().running) {
      if (planned.has(id) || !before.has(id)) continue;
      const t = sched.tokens(id);
      if (t.length - (blocks.has(id) ? blocks.length(id) : 0) === 1) {
        expect(decodes.length === opts.maxSeqs || decodes.length >= opts.maxBatchedTokens, `decode ${id} starved`).toBe(true);
      }
    }
    sched.commit(plan);
    for (const q of plan.seqs) {
      if (!q.sample) continue;
      const r = byId.get(q.id)!;
      const p = sched.tokens(q.id).length;
      const tok = nextToken(q.id, p);
      const out = outputs.get(q.id)!;
      out.push(tok);
      sched.append(q.id, [tok]);
      if (out.length >= r.maxTokens || (r.eosAt !== undefined && out.length >= r.eosAt)) sched.remove(q.id);
    }
    const b = sched.stats().blocks;
    expect(b.used + b.cached + b.free).toBe(b.total);
  }
  const b = sched.stats().blocks;
  expect(b.used, 'every block released').toBe(0);
  expect(b.cached + b.free).toBe(o.numBlocks);
  return { outputs, steps, preemptions, plans };
}

function randomWorkload(r: () => number, n: number, shared: number[]): FakeReq[] {
  return Array.from({ length: n }, (_, id) => {
    const own = Array.from({ length: 1 + Math.floor(r() * 40) }, () => 3 + Math.floor(r() * 900));
    const prompt = r() < 0.5 ? [...shared.slice(0, Math.floor(r() * shared.length)), ...own] : own;
    return { id, prompt, maxTokens: 1 + Math.floor(r() * 30), eosAt: r() < 0.2 ? 1 + Math.floor(r() * 10) : undefined, priority: r() < 0.2 ? 1 : 0 };
  });
}

const expected = (reqs: FakeReq[]) => new Map(reqs.map((q) => {
  const n = Math.min(q.maxTokens, q.eosAt ?? Infinity);
  return [q.id, Array.from({ length: n }, (_, i) => nextToken(q.id, q.prompt.length + i))];
}));

describe('scheduler', () => {
  it('random workloads: budget and cap every step, decodes never starved, every request finishes with exact output', () => {
    for (let trial = 0; trial < 12; trial++) {
      const seed = freshSeed(`scheduler workload ${trial}`);
      const r = rng(seed);
      const shared = Array.from({ length: 24 }, () => 3 + Math.floor(r() * 900));
      const reqs = randomWorkload(r, 10 + Math.floor(r() * 30), shared);
      const opts = {
        numBlocks: 40 + Math.floor(r() * 200), maxBatchedTokens: 8 + Math.floor(r() * 60), maxSeqs: 1 + Math.floor(r() * 12),
        chunkSize: 1 + Math.floor(r() * 16), prefixCaching: r() < 0.7,
        arrivals: reqs.map((_, i) => Math.floor(i * r() * 3)),
      };
      const res = run(reqs, opts);
      expect(res.outputs, `seed ${seed}`).toEqual(expected(reqs));
    }
  });

  it('a pool so small that requests are preempted: the same outputs, preemption takes the most recently admitted', () => {
    const seed = freshSeed('scheduler preemption');
    const r = rng(seed);
    const reqs = randomWorkload(r, 24, []).map((q) => ({ ...q, eosAt: undefined, maxTokens: 20 + Math.floor(r() * 20) }));
    // Each request alone fits (≤ 80 tokens = 20 blocks); together they do not.
    const res = run(reqs, { numBlocks: 22, maxSeqs: 8, maxBatchedTokens: 32, chunkSize: 8 });
    expect(res.preemptions, `seed ${seed}: the pool was meant to force preemption`).toBeGreaterThan(0);
    expect(res.outputs).toEqual(expected(reqs));
  });

  it('preempts the most recently admitted running request, which returns to the head of the queue', () => {
    const blocks = new BlockManager(6, { blockSize: 4, prefixCaching: false });
    const s = new Scheduler(blocks, { maxBatchedTokens: 64, maxSeqs: 4, chunkSize: 64, maxPositions: 64 });
    // Three requests of 7 prompt tokens: 2 blocks each fill the pool.
    for (const id of [0, 1, 2]) s.add({ id, prompt: [1, 2, 3, 4, 5, 6, 7], maxTokens: 8 });
    s.add({ id: 3, prompt: [9, 9], maxTokens: 2 });
    let plan = s.schedule();
    expect(plan.seqs.map((q) => q.id)).toEqual([0, 1, 2]);
    s.commit(plan);
    for (const id of [0, 1, 2]) s.append(id, [10]);
    // Position 7 fits the second block; position 8 needs a third block for each.
    plan = s.schedule();
    s.commit(plan);
    for (const id of [0, 1, 2]) s.append(id, [11]);
    plan = s.schedule();
    expect(plan.preempted).toEqual([2]);
    expect(plan.seqs.map((q) => q.id)).toEqual([0, 1]);
    expect(s.ids().preempted).toEqual([2]);
    s.commit(plan);
    for (const id of [0, 1]) s.append(id, [12]);
    // Once 0 finishes, 2 comes back before 3 (which arrived later) and recomputes prompt + output.
    s.remove(0);
    plan = s.schedule();
    const two = plan.seqs.find((q) => q.id === 2)!;
    expect(two.phase).toBe('prefill');
    expect(two.ctxLen).toBe(0);
    expect(two.tokens).toEqual([1, 2, 3, 4, 5, 6, 7, 10, 11]);
    expect(plan.seqs.map((q) => q.id)).not.toContain(3);
  });

  it('static batches run to completion before the next forms', () => {
    const seed = freshSeed('scheduler static');
    const r = rng(seed);
    const reqs = randomWorkload(r, 13, []);
    const res = run(reqs, { numBlocks: 400, maxSeqs: 8, scheduling: 'static', staticBatchSize: 4 });
    expect(res.outputs).toEqual(expected(reqs));
    // A batch is the requests first planned in the same step; batches' lifetimes never overlap.
    const first = new Map<number, number>(), last = new Map<number, number>();
    res.plans.forEach((plan, i) => plan.seqs.forEach((q) => { if (!first.has(q.id)) first.set(q.id, i); last.set(q.id, i); }));
    const batches = new Map<number, number[]>();
    for (const [id, f] of first) batches.set(f, [...(batches.get(f) ?? []), id]);
    const spans = [...batches.entries()].map(([f, ids]) => ({ f, end: Math.max(...ids.map((id) => last.get(id)!)), ids }));
    for (const b of spans) {
      expect(b.ids.length).toBeLessThanOrEqual(4);
      for (const c of spans) if (c !== b && c.f > b.f) expect(c.f, `seed ${seed}: batch ${c.ids} started before ${b.ids} finished`).toBeGreaterThan(b.end);
    }
    expect(spans.length).toBe(Math.ceil(13 / 4));
  });

  it('continuous batching takes more requests per step than static on the same queue', () => {
    const r = rng(freshSeed('scheduler continuous vs static'));
    const reqs = randomWorkload(r, 32, []);
    const st = run(reqs, { numBlocks: 400, maxSeqs: 8, scheduling: 'static', staticBatchSize: 8 });
    const co = run(reqs, { numBlocks: 400, maxSeqs: 8 });
    expect(co.steps).toBeLessThan(st.steps);
  });

  it('refuses what can never fit, and a full queue, with clear errors', () => {
    const s = new Scheduler(new BlockManager(4, { blockSize: 4 }), { maxBatchedTokens: 16, maxSeqs: 2, chunkSize: 8, maxPositions: 64, maxWaiting: 1 });
    expect(() => s.add({ id: 1, prompt: new Array(10).fill(5), maxTokens: 10 })).toThrow(AdmissionError);
    expect(() => s.add({ id: 1, prompt: new Array(10).fill(5), maxTokens: 10 })).toThrow(/need 5 KV blocks of 4, but the pool has 4/);
    expect(() => s.add({ id: 2, prompt: [], maxTokens: 1 })).toThrow(/no tokens/);
    s.add({ id: 3, prompt: [1, 2], maxTokens: 2 });
    expect(() => s.add({ id: 4, prompt: [1, 2], maxTokens: 2 })).toThrow(QueueFullError);
    expect(() => new Scheduler(new BlockManager(4), { maxBatchedTokens: 0, maxSeqs: 2, chunkSize: 8, maxPositions: 64 })).toThrow(/maxBatchedTokens = 0/);
    expect(() => new Scheduler(new BlockManager(4), { maxBatchedTokens: 8, maxSeqs: 2, chunkSize: 8, maxPositions: 64, scheduling: 'static', staticBatchSize: 4 })).toThrow(/staticBatchSize = 4 exceeds maxSeqs = 2/);
  });

  it('speculative drafts: computed with the last token, rolled back to the accepted length', () => {
    const blocks = new BlockManager(16, { blockSize: 4, prefixCaching: false });
    const s = new Scheduler(blocks, { maxBatchedTokens: 64, maxSeqs: 4, chunkSize: 64, maxPositions: 64 });
    s.add({ id: 0, prompt: [1, 2, 3], maxTokens: 20 });
    let plan = s.schedule();
    s.commit(plan);
    s.append(0, [4]);
    s.setDrafts(0, [5, 6, 7, 8, 9]);
    plan = s.schedule();
    expect(plan.seqs[0]!.tokens).toEqual([4, 5, 6, 7, 8, 9]);
    expect(plan.seqs[0]!.ctxLen).toBe(3);
    expect(plan.decodeOnly).toBe(false);
    s.commit(plan);
    expect(blocks.length(0)).toBe(9);
    // Two drafts accepted, then the target's own token: KV keeps 3 + [4, 5, 6] = 6 positions.
    s.append(0, [5, 6, 42], 2);
    expect(blocks.length(0)).toBe(6);
    expect(blocks.blockTable(0).length).toBe(2);
    expect(s.tokens(0)).toEqual([1, 2, 3, 4, 5, 6, 42]);
    plan = s.schedule();
    expect(plan.seqs[0]!.tokens).toEqual([42]);
    expect(plan.seqs[0]!.ctxLen).toBe(6);
  });
});
