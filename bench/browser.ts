// `npm run bench -- browser`: batch-1 decode tokens/s of brown-target in a headless Chromium page
// (kiln/browser on WebGPU — SwiftShader here — and on the cpu device in Web Workers) beside Node
// (Dawn on llvmpipe, and the cpu device), side by side in one run. Every configuration decodes
// the same greedy continuation of the golden prompt with EOS ignored, after a warm-up run that
// compiles its kernels; the table shows the best of --runs.
//
//   npm run bench -- browser [--decode 64] [--runs 3] [--model DIR]
// Needs Chromium (Debian's chromium package, or KILN_CHROMIUM=path) and puppeteer-core.
import { existsSync } from 'node:fs';
import { DEFAULT_MODEL, type LLM, loadModel } from '../src/llm.js';
import { type KilnServer, startServer } from '../src/server/index.js';

interface Options { decode: number; runs: number; model: string }

/** What page.evaluate callbacks see (the project's tsconfig has no DOM types). */
interface PageGlobals {
  document: { getElementById(id: string): { textContent: string | null; dataset: Record<string, string | undefined> } | null };
  kilnPlayground: { llm: { device: { kind: string; description: string }; generate: LLM['generate'] } };
}

function parse(args: string[]): Options {
  const o: Options = { decode: 64, runs: 3, model: DEFAULT_MODEL };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!, v = () => { const x = args[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--decode') o.decode = Number(v());
    else if (a === '--runs') o.runs = Number(v());
    else if (a === '--model') o.model = v();
    else throw new Error(`bench browser: unknown option ${a}`);
  }
  for (const k of ['decode', 'runs'] as const) if (!Number.isInteger(o[k]) || o[k] < 1) throw new Error(`bench browser: --${k} must be a positive integer`);
  return o;
}

interface Timing { decodeTokS: number; firstTokenMs: number; tokens: number }

const PROMPT = 'The jury said that';

/** One greedy generation timed per token (the same code runs in Node and, as text, in the page). */
async function timeGeneration(llm: Pick<LLM, 'generate'>, maxTokens: number): Promise<Timing> {
  const t0 = performance.now();
  let first = 0, last = 0, tokens = 0;
  for await (const t of llm.generate('The jury said that', { maxTokens, temperature: 0, stopTokenIds: [] })) {
    if (t.tokenId < 0) continue;
    last = performance.now();
    if (tokens === 0) first = last;
    tokens++;
  }
  return { decodeTokS: tokens > 1 ? (tokens - 1) / ((last - first) / 1000) : 0, firstTokenMs: first - t0, tokens };
}

function best(ts: Timing[]): Timing {
  return ts.reduce((a, b) => (b.decodeTokS > a.decodeTokS ? b : a));
}

async function inNode(model: string, device: 'cpu' | 'webgpu', o: Options): Promise<{ name: string; t: Timing }> {
  const llm = await loadModel(model, { device });
  try {
    await timeGeneration(llm, o.decode); // warm-up: kernels compile
    const ts: Timing[] = [];
    for (let r = 0; r < o.runs; r++) ts.push(await timeGeneration(llm, o.decode));
    return { name: llm.device.description, t: best(ts) };
  } finally {
    await llm.close();
  }
}

export async function main(args: string[]): Promise<void> {
  const o = parse(args);
  const chromium = [process.env.KILN_CHROMIUM, '/usr/lib/chromium/chromium', '/usr/bin/chromium'].find((p): p is string => !!p && existsSync(p));
  if (!chromium) throw new Error('bench browser: no Chromium (apt-get install chromium, or set KILN_CHROMIUM)');
  const puppeteer = (await import('puppeteer-core')).default;
  const rows: { where: string; device: string; t: Timing }[] = [];

  // The page first, with a server of its own (cpu device: it only serves files here).
  const serverLlm = await loadModel(o.model, { device: 'cpu' });
  let server: KilnServer | null = null;
  const browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-dev-shm-usage'] });
  try {
    server = await startServer({ llm: serverLlm, port: 0 });
    for (const device of ['webgpu', 'cpu'] as const) {
      const page = await browser.newPage();
      // The warm-up is the page's own autorun (it loads the model and compiles the kernels).
      const q = new URLSearchParams({ prompt: PROMPT, maxTokens: String(o.decode), temperature: '0', mode: 'browser', device, autorun: '1' });
      await page.goto(`${server.address.url}/?${q}`);
      await page.waitForSelector('#output[data-done], #output[data-error]', { timeout: 600_000 });
      const error = await page.evaluate(() => (globalThis as unknown as PageGlobals).document.getElementById('output')!.dataset.error);
      if (error) throw new Error(`bench browser: the page failed on ${device}: ${error}`);
      const timed = `(${timeGeneration.toString()})`;
      const ts: Timing[] = [];
      for (let r = 0; r < o.runs; r++) {
        ts.push(await page.evaluate(async (fn: string, n: number) => {
          const llm = (globalThis as unknown as PageGlobals).kilnPlayground.llm;
          // tsx (esbuild keepNames) may put __name(...) calls into a function's text.
          (globalThis as { __name?: unknown }).__name ??= (f: unknown) => f;
          // The timing function's own text: the same code Node runs.
          const timeIt = new Function(`return ${fn}`)() as (l: unknown, n: number) => Promise<Timing>;
          return timeIt(llm, n);
        }, timed, o.decode));
      }
      const desc = await page.evaluate(() => (globalThis as unknown as PageGlobals).kilnPlayground.llm.device.description);
      rows.push({ where: 'Chromium page', device: desc, t: best(ts) });
      await page.close();
    }
  } finally {
    await browser.close();
    await server?.close(0);
    await serverLlm.close();
  }
  for (const device of ['webgpu', 'cpu'] as const) {
    const r = await inNode(o.model, device, o);
    rows.push({ where: 'Node', device: r.name, t: r.t });
  }

  const base = rows[0]!.t.decodeTokS;
  console.log(`\nbrown-target, batch 1, greedy, ${o.decode} tokens (EOS ignored), best of ${o.runs} after a warm-up\n`);
  console.log('| where | device | decode tok/s | first token ms | × page WebGPU |');
  console.log('|---|---|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.where} | ${r.device} | ${r.t.decodeTokS.toFixed(1)} | ${r.t.firstTokenMs.toFixed(0)} | ${(r.t.decodeTokS / base).toFixed(2)} |`);
}
