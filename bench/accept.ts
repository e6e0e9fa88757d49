// `npm run bench -- accept`: token acceptance for speculative decoding, per backend, for a batch
// of B sequences with k drafts each at vocabulary sizes V (default B 64, k 5, V 32000 and 128256):
//   rejection — the rejection sampler: accepted count + the residual/bonus draw; one launch where
//               the device has a fence (timed beside the two-launch plan there), two elsewhere;
//   greedy    — greedy acceptance on the target's scores (2 launches);
//   sampling  — for scale: the sampling op turning B·(k+1) rows of logits into transformed
//               probabilities + a draw (temperature, top-k 50, top-p 0.9), as a verify step needs;
//               (split) with the threshold search over (segment, row), (single) one workgroup per row.
// Time per call, and effective GB/s over the bytes each must read at least: rejection one pass
// over p_a and q_a per sequence (B·2·V·4; its draw re-reads a single segment, the draft
// lookups are negligible); greedy the
// k + 1 score rows once; sampling its rows about 7 times (max, exp, threshold passes ≈ 16 over the
// kept row, mask, draw) — reported over one pass, so read it as a floor. Next to copy bandwidth.
//
// Software devices (cpu, llvmpipe) run with the batch ÷ --scale (default 8) and say so: B·(k+1)·V
// floats at V = 128256 is 197 MB, past llvmpipe's 128 MiB binding limit at full size.
//
// Options:
//   --backends cpu,webgpu,cuda   devices (default all)
//   --batch 64 --k 5 --vocab 32000,128256
//   --scale N                    software batch scale-down (default 8; 1 = full size)
//   --reps 10 --samples 3        launches per timing sample, samples per cell
import { greedyAcceptance, rejectionSampler } from '../codegen/kernels/acceptance.js';
import { sampling } from '../codegen/kernels/sampling.js';
import { BackendUnavailableError, type BackendKind, type Device, type DeviceBuffer } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { acceptanceRows, samplingRows } from '../src/ops/sampling.js';
import { copyBandwidth, lcg, timeLaunches } from './common.js';

interface Options { backends: BackendKind[]; batch: number; k: number; vocab: number[]; scale: number; reps: number; samples: number }

function parseArgs(args: string[]): Options {
  const o: Options = { backends: ['cpu', 'webgpu', 'cuda'], batch: 64, k: 5, vocab: [32000, 128256], scale: 8, reps: 10, samples: 3 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const need = () => { const v = args[++i]; if (v === undefined) throw new Error(`${a} needs a value`); return v; };
    const ints = (v: string) => v.split(',').map((s) => { const n = Number(s); if (!Number.isInteger(n) || n < 1) throw new Error(`${a}: '${s}' is not a positive integer`); return n; });
    if (a === '--backends') o.backends = need().split(',') as BackendKind[];
    else if (a === '--batch') o.batch = ints(need())[0]!;
    else if (a === '--k') o.k = ints(need())[0]!;
    else if (a === '--vocab') o.vocab = ints(need());
    else if (a === '--scale') o.scale = ints(need())[0]!;
    else if (a === '--reps') o.reps = ints(need())[0]!;
    else if (a === '--samples') o.samples = ints(need())[0]!;
    else throw new Error(`unknown option '${a}' (see the header of bench/accept.ts)`);
  }
  for (const b of o.backends) if (!['cpu', 'webgpu', 'cuda'].includes(b)) throw new Error(`--backends: unknown backend '${b}'`);
  return o;
}


/** A random distribution with a few dominant tokens, like a language model's. */
function distribution(V: number, r: () => number): Float32Array {
  const p = Float32Array.from({ length: V }, () => r() ** 8);
  for (let i = 0; i < 5; i++) p[Math.floor(r() * V)]! += 20 * r();
  const z = p.reduce((s, x) => s + x, 0);
  return p.map((x) => x / z);
}


const fmt = (v: number, digits = 2) => (v >= 100 ? v.toFixed(0) : v.toFixed(digits));
const row = (cells: (string | number)[]) => console.log(`| ${cells.join(' | ')} |`);

async function benchVocab(dev: Device, B: number, K: number, V: number, bw: number, o: Options): Promise<void> {
  const r = lcg(V);
  const bufs: DeviceBuffer[] = [];
  const alloc = <T extends 'f32' | 'u32'>(t: T, n: number, label: string) => { const b = dev.alloc(t, n, label); bufs.push(b); return b; };
  try {
    // Each sequence's rows: q close to p at the first positions, then a rejection at a random spot.
    const p = alloc('f32', B * (K + 1) * V, 'p'), q = alloc('f32', B * K * V, 'q');
    const rowsP = Array.from({ length: 4 }, () => distribution(V, r));
    for (let i = 0; i < B * (K + 1); i++) dev.write(p, rowsP[i % 4]!, i * V);
    for (let i = 0; i < B * K; i++) dev.write(q, rowsP[(i + (i % 3 === 2 ? 1 : 0)) % 4]!, i * V);
    const seqs = Array.from({ length: B }, (_, s) => ({
      draftTokens: Array.from({ length: K }, () => Math.floor(r() * V)), seed: 1000 + s, position: 64 * s,
    }));
    const { draftTokens, seqInfo } = acceptanceRows(seqs, K, V);
    const dt = alloc('u32', draftTokens.length, 'drafts'), si = alloc('u32', seqInfo.length, 'seqInfo');
    dev.write(dt, draftTokens);
    dev.write(si, seqInfo);
    const accepted = alloc('u32', B, 'accepted'), tokens = alloc('u32', B * (K + 1), 'tokens');
    const sizes = { seqs: B, vocab: V, maxK: K };

    // One launch where the device has a fence (the last segment of a sequence draws), and the two
    // launches next to it there for comparison; two launches only elsewhere.
    const bytesR = B * 2 * V * 4;
    for (const oneLaunch of dev.caps.deviceFence ? [true, false] : [false]) {
      const rej = rejectionSampler({ caps: dev.caps, oneLaunch });
      const launches = rej.plan(sizes).steps.length;
      const msR = await timeLaunches(dev, () => dev.run(rej, { draftTokens: dt, draftProbs: q, targetProbs: p, seqInfo: si, accepted, tokens }, sizes), o);
      row([`rejection (${launches} launch${launches > 1 ? 'es' : ''})`, B, K, V, fmt(msR * 1000, 1), fmt(bytesR / msR / 1e6), `${fmt((100 * bytesR) / msR / 1e6 / bw, 1)}%`]);
    }

    const greedy = greedyAcceptance({ caps: dev.caps });
    const msG = await timeLaunches(dev, () => dev.run(greedy, { draftTokens: dt, targetScores: p, seqInfo: si, accepted, tokens }, sizes), o);
    const bytesG = B * (K + 1) * V * 4;
    row(['greedy', B, K, V, fmt(msG * 1000, 1), fmt(bytesG / msG / 1e6), `${fmt((100 * bytesG) / msG / 1e6 / bw, 1)}%`]);

    const rows = B * (K + 1);
    const reqs = Array.from({ length: rows }, (_, i) => ({ temperature: 0.8, topK: 50, topP: 0.9, seed: 7, position: i }));
    const { rowParams, rowInfo, filters } = samplingRows(reqs, V);
    const rp = alloc('f32', rowParams.length, 'rowParams'), ri = alloc('u32', rowInfo.length, 'rowInfo');
    dev.write(rp, rowParams);
    dev.write(ri, rowInfo);
    const probs = alloc('f32', rows * V, 'probs'), toks = alloc('u32', rows, 'tokens');
    // The threshold search split over (segment, row) (default), and one workgroup per row.
    for (const threshold of ['split', 'single'] as const) {
      const smp = sampling({ threshold, caps: dev.caps });
      const msS = await timeLaunches(dev, () => dev.run(smp, { logits: p, rowParams: rp, rowInfo: ri, probs, tokens: toks }, { rows, vocab: V, filters }), o);
      const bytesS = rows * V * 4;
      row([`sampling (${threshold})`, `${rows} rows`, '–', V, fmt(msS * 1000, 1), fmt(bytesS / msS / 1e6), `${fmt((100 * bytesS) / msS / 1e6 / bw, 1)}%`]);
    }
  } catch (e) {
    row(['failed', B, K, V, (e as Error).message.split('\n')[0]!, '', '']);
  } finally { for (const b of bufs) dev.free(b); }
}

async function openDevice(kind: BackendKind): Promise<Device | string> {
  try { return await createDevice(kind); } catch (e) {
    if (e instanceof BackendUnavailableError) return e.reason;
    return `failed to open: ${(e as Error).message.split('\n')[0]}`;
  }
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  console.log(`# token acceptance — ${new Date().toISOString().slice(0, 10)}`);
  for (const kind of o.backends) {
    const dev = await openDevice(kind);
    if (typeof dev === 'string') { console.log(`\n## ${kind}: not available — ${dev}`); continue; }
    try {
      const software = dev.profile.software;
      const B = software ? Math.max(1, Math.round(o.batch / o.scale)) : o.batch;
      const bw = await copyBandwidth(dev, software ? 4 << 20 : 64 << 20, o);
      console.log(`\n## ${dev.kind}: ${dev.description}`);
      console.log(`copy bandwidth (out = a + b): ${fmt(bw)} GB/s`);
      if (B !== o.batch) console.log(`software device: batch ${o.batch} ÷ ${o.scale} = ${B} (--scale 1 for full size)`);
      console.log('');
      row(['op', 'batch', 'k', 'V', 'µs / call', 'GB/s', '% of copy']);
      row(['---', '---', '---', '---', '---', '---', '---']);
      for (const V of o.vocab) await benchVocab(dev, B, o.k, V, bw, o);
    } finally { await dev.destroy(); }
  }
}
