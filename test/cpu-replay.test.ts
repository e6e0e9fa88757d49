// Replayed steps on the cpu device signalled through shared words instead of messages
// (src/backend/cpu/pool.ts, worker.ts lingerForReplays): many replays give the bits of the
// float64 reference; a kernel that traps in such a replay rejects (no hang) and replays go on;
// queued launches and a new graph reach listening workers at once; an idle pool with listening
// workers lets Node exit.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { kernel, storage } from '../codegen/dsl/index.js';
import { vectorAdd } from '../codegen/kernels/vectorAdd.js';
import { createCpuDevice, KernelRunError } from '../src/backend/cpu/index.js';
import type { WorkerPool } from '../src/backend/cpu/pool.js';
import type { Device, DeviceGraph } from '../src/backend/device.js';
import { freshSeed, randomF32, rng } from './util.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
/** Workers listen 20 s after a replay, so every replay here but a graph's first goes through the words. */
const LISTEN_MS = '20000';

async function listeningDevice(): Promise<Device> {
  const saved = process.env.KILN_CPU_LISTEN_MS;
  process.env.KILN_CPU_LISTEN_MS = LISTEN_MS;
  try {
    return await createCpuDevice({ workers: 2, executor: 'wasm' });
  } finally {
    if (saved === undefined) delete process.env.KILN_CPU_LISTEN_MS; else process.env.KILN_CPU_LISTEN_MS = saved;
  }
}
const dev = await listeningDevice();
afterAll(async () => { await dev.destroy(); });
/** Replays handed out through the words and by message so far (one per worker per replay). */
const replays = () => ({ ...(dev as unknown as { pool: WorkerPool }).pool.replays });

describe('cpu step replay through shared words', () => {
  it('200 replays of a dependent chain give the reference bits, all but the first through the words', async () => {
    const r = rng(freshSeed('cpu replay words'));
    const n = 4096, add = vectorAdd({ caps: dev.caps, workgroupSize: 64 });
    const [a, b, t, u, out] = ['a', 'b', 't', 'u', 'out'].map((l) => dev.alloc('f32', n, l));
    try {
      // t = a + b; u = t + a; out = u + t: each launch reads the one before (barriers between).
      const graph = dev.captureGraph!(() => {
        dev.launch(add, { a: a!, b: b!, out: t! }, { n });
        dev.launch(add, { a: t!, b: a!, out: u! }, { n });
        dev.launch(add, { a: u!, b: t!, out: out! }, { n });
      });
      const before = replays();
      for (let rep = 0; rep < 200; rep++) {
        const av = randomF32(n, r), bv = randomF32(n, r);
        dev.write(a!, av);
        dev.write(b!, bv);
        dev.write(out!, new Float32Array(n).fill(Number.NaN));
        graph.replay();
        const got = await dev.read(out!);
        let wrong = -1;
        for (let i = 0; i < n && wrong < 0; i++) {
          const tv = Math.fround(av[i]! + bv[i]!), uv = Math.fround(tv + av[i]!);
          if (!Object.is(got[i], Math.fround(uv + tv))) wrong = i;
        }
        expect(wrong, `replay ${rep}: first wrong element`).toBe(-1);
      }
      const after = replays();
      expect(after.byMessage - before.byMessage, 'replays by message (the first, per worker)').toBe(2);
      expect(after.byWord - before.byWord).toBe(2 * 199);
      graph.destroy();
    } finally {
      for (const x of [a, b, t, u, out]) dev.free(x!);
    }
  });

  it('a kernel that traps in a replay through the words rejects sync() naming it, and replays go on', async () => {
    // out[idx[i]] = i: an index past the end of the memory traps.
    const scatter = kernel({
      name: 'scatterAt', workgroupSize: 64, grid: (u) => Math.ceil(u.n / 64),
      bindings: { idx: storage('u32', 'read'), out: storage('f32', 'read_write') },
      uniforms: { n: 'u32' },
      body(k, { idx, out }, { n }) {
        const i = k.let('i', k.globalId.x);
        k.if(i.lt(n), () => out.set(idx.at(i), k.f32(i)));
      },
    });
    const n = 1024, idx = dev.alloc('u32', n, 'idx'), out = dev.alloc('f32', n, 'out');
    const reversed = Uint32Array.from({ length: n }, (_, i) => n - 1 - i);
    const want = Float32Array.from({ length: n }, (_, i) => n - 1 - i);
    const graph = dev.captureGraph!(() => dev.launch(scatter, { idx, out }, { n }));
    try {
      const check = async (what: string) => {
        dev.write(idx, reversed);
        dev.write(out, new Float32Array(n).fill(Number.NaN));
        graph.replay();
        expect(Buffer.from((await dev.read(out)).buffer).equals(Buffer.from(want.buffer)), what).toBe(true);
      };
      await check('first replay');
      await check('second replay');
      const before = replays();
      const wild = reversed.slice();
      wild[n - 5] = 0x20000000; // 2 GiB past the buffer's start, past the end of the memory
      dev.write(idx, wild);
      graph.replay();
      const e = await dev.sync().catch((x: unknown) => x);
      expect(replays().byWord - before.byWord, 'the failing replay went through the words').toBe(2);
      expect(e).toBeInstanceOf(KernelRunError);
      expect(String(e)).toMatch(/scatterAt.*out of bounds/);
      await dev.sync(); // reported once
      await check('the replay after the error');
      await check('and the one after');
    } finally {
      graph.destroy();
      dev.free(idx);
      dev.free(out);
    }
  });

  it('queued launches and a new graph reach workers listening for replays without waiting out their listening', async () => {
    // Workers listen for 20 s: a message they did not get called back for would wait that long.
    const n = 1 << 18, add = vectorAdd({ caps: dev.caps });
    const [a, b, out] = ['a', 'b', 'out'].map((l) => dev.alloc('f32', n, l));
    const graphs: DeviceGraph[] = [];
    try {
      dev.write(a!, new Float32Array(n).fill(1));
      dev.write(b!, new Float32Array(n).fill(2));
      graphs.push(dev.captureGraph!(() => dev.launch(add, { a: a!, b: b!, out: out! }, { n })));
      graphs.push(dev.captureGraph!(() => dev.launch(add, { a: out!, b: out!, out: b! }, { n })));
      const [g1, g2] = graphs as [DeviceGraph, DeviceGraph];
      const t0 = performance.now();
      g1.replay();
      g1.replay();
      await dev.sync();
      const workers = (dev as unknown as { pool: WorkerPool }).pool;
      const sent = { ...workers.replays };
      // Each launch on the workers (big enough not to run inline), then the other graph, then g1 again.
      dev.launch(add, { a: a!, b: a!, out: out! }, { n }); // out = 2
      g2.replay(); // b = 4
      g1.replay(); // out = 1 + 4
      dev.launch(add, { a: out!, b: a!, out: out! }, { n }); // out = 6
      const got = await dev.read(out!);
      expect(Array.from(new Set(got))).toEqual([6]);
      expect(workers.replays.byWord - sent.byWord, 'g1 after the launch and g2').toBe(2);
      expect(workers.replays.byMessage - sent.byMessage, "g2's first replay").toBe(2);
      // A liveness bound, not a timing: one missed call-back alone would take 20 s.
      expect(performance.now() - t0).toBeLessThan(15_000);
    } finally {
      for (const g of graphs) g.destroy();
      for (const x of [a, b, out]) dev.free(x!);
    }
  });

  it('an idle pool whose workers listen for replays lets Node exit', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(repo, 'test', 'fixtures', 'cpu-replay-idle.ts')], {
      cwd: repo, encoding: 'utf8', timeout: 60_000, env: { ...process.env, KILN_CPU_LISTEN_MS: '600000' },
    });
    expect(r.error, 'the process did not exit within 60 s').toBeUndefined();
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { first: number; last: number; byWord: number; at: number };
    expect(out.first).toBe(2.5);
    expect(out.last).toBe(2.5);
    expect(out.byWord, 'replays through the words (workers were listening at the end)').toBe(6);
    expect(Date.now() - out.at, 'ms from the script\'s end to the exit').toBeLessThan(30_000);
  });
});
