// Kiln in a real browser: headless Chromium (Debian's package, driven by puppeteer-core) opens the
// playground page from a server on 127.0.0.1. In-page greedy generation of the golden prompt on
// brown-target (WebGPU on SwiftShader, and the cpu device in Web Workers) gives PyTorch's greedy
// ids, and the page's logits agree with Node's within the cross-backend tolerance; server mode
// streams the same text; errors land in #output's data-error; the static build runs on a host
// without COOP/COEP (cpu on the main thread). The browser bundle is checked for
// Node built-ins without a browser. Skipped, saying why, where Chromium is absent.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DownloadProgress, loadModel as loadBrowserModel } from '../src/browser/index.js';
import { type LLM, loadModel } from '../src/llm.js';
import { type KilnServer, startServer } from '../src/server/index.js';
import { buildPlayground, buildPlaygroundCommand, contentType } from '../src/server/playground.js';
import { argmaxAgreement, BROWN_PROMPT, brown, brownDir, brownLogits, rowErrors } from './runtimeGolden.js';

const ROOT = join(import.meta.dirname, '..');
/** What page.evaluate callbacks see (the project's tsconfig has no DOM types). */
interface PageGlobals {
  document: { getElementById(id: string): { textContent: string | null; dataset: Record<string, string | undefined> } | null };
  crossOriginIsolated: boolean;
  kilnPlayground: {
    llm: { device: { kind: string; description: string } };
    createEngine(llm: unknown, opts: { maxBatchedTokens: number }): { logits(ids: number[]): Promise<Float32Array>; close(): Promise<void> };
  };
}
/** Where Chromium may be: KILN_CHROMIUM, else Debian's binary (not its shell wrapper), else others. */
const CHROMIUM = [process.env.KILN_CHROMIUM, '/usr/lib/chromium/chromium', '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome']
  .find((p): p is string => !!p && existsSync(p));
type Puppeteer = typeof import('puppeteer-core');
const puppeteer: Puppeteer | null = await import('puppeteer-core').then((m) => m.default as unknown as Puppeteer, () => null);
const skipWhy = !CHROMIUM ? 'no Chromium (apt-get install chromium, or set KILN_CHROMIUM)' : !puppeteer ? 'puppeteer-core is not installed (npm install)' : '';
if (skipWhy) console.log(`[browser] skipped: ${skipWhy}`);

/** Cross-backend tolerance (DESIGN.md): norm-wise per logits row, and argmax where the margin exceeds it. */
const ROW_TOL = 1e-4;
const MARGIN = 1e-3;

const target = brown.target;
const promptLen = target.prompt_ids.length;
const newIds = target.greedy_ids_fp32.slice(promptLen);

describe('the browser bundle', () => {
  it('imports no Node built-ins and bundles every dependency', async () => {
    const esbuild = await import('esbuild');
    const { browserBuildOptions } = (await import(pathToFileURL(join(ROOT, 'scripts/browser-build.mjs')).href)) as { browserBuildOptions(root: string): Record<string, unknown> };
    // platform 'browser' with nothing external: esbuild itself fails on a Node built-in.
    const r = await esbuild.build({ ...browserBuildOptions(ROOT), entryPoints: [join(ROOT, 'src/browser/index.ts')], entryNames: undefined, write: false, outdir: join(ROOT, 'dist') });
    const out = r.metafile!.outputs;
    expect(Object.values(out).flatMap((o) => o.imports.filter((i) => i.external).map((i) => i.path))).toEqual([]);
    const inputs = Object.keys(r.metafile!.inputs);
    expect(inputs.filter((p) => /src\/platform\/node\.ts|src\/backend\/cuda\/|src\/backend\/webgpu\/dawn\.ts/.test(p))).toEqual([]);
    expect(inputs).toContain('src/platform/browser.ts');
    // And in the text: no import, dynamic import or require of a built-in by a literal name.
    const text = r.outputFiles!.map((f) => f.text).join('\n');
    const names = builtinModules.filter((m) => !m.startsWith('_')).map((m) => m.replace(/[/]/g, '\\/'));
    const literal = new RegExp(`(?:\\bfrom\\s*|\\bimport\\s*\\(\\s*|\\brequire\\s*\\(\\s*|^\\s*import\\s*)["'](?:node:[\\w/]+|(?:${names.join('|')}))["']`, 'm');
    expect(literal.exec(text)?.[0] ?? null).toBeNull();
  });
});

// One Node model (cpu) and one server for the whole file: the page's server mode, its model files,
// and the reference logits.
let llm: LLM;
let server: KilnServer;
beforeAll(async () => {
  llm = await loadModel(brownDir('target'), { device: 'cpu' });
  server = await startServer({ llm, port: 0 });
});
afterAll(async () => {
  await server?.close(0);
  await llm?.close();
});

describe('kiln/browser loadModel, run in Node', () => {
  it('loads from File objects and from a URL (streamed, with progress), then generates PyTorch\'s greedy ids', async () => {
    const dir = brownDir('target');
    const files = readdirSync(dir).map((name) => ({ name, arrayBuffer: async () => { const b = readFileSync(join(dir, name)); return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer; } }));
    const events: DownloadProgress[] = [];
    for (const source of [files, `${server.address.url}/model/`]) {
      events.length = 0;
      const m = await loadBrowserModel(source, { device: 'cpu', onDownload: (p) => events.push({ ...p }) });
      try {
        const ids: number[] = [];
        for await (const t of m.generate(target.prompt_ids, { maxTokens: newIds.length, temperature: 0 })) if (t.tokenId >= 0) ids.push(t.tokenId);
        expect(ids).toEqual(newIds);
      } finally {
        await m.close();
      }
      const weights = events.filter((e) => e.file === 'model.safetensors');
      const size = statSync(join(dir, 'model.safetensors')).size;
      expect(weights.at(-1)).toEqual({ file: 'model.safetensors', loaded: size, total: size });
      if (typeof source === 'string') expect(weights.length, 'progress while streaming').toBeGreaterThan(1);
    }
    await expect(loadBrowserModel(files.filter((f) => f.name !== 'model.safetensors'), { device: 'cpu' })).rejects.toThrow(/the files given have no model\.safetensors/);
  });
});

describe('kiln build-playground', () => {
  it('refuses bad arguments, naming them, before writing anything', async () => {
    await expect(buildPlaygroundCommand(['--bogus', 'x'], brownDir('target'))).rejects.toThrow(/unknown option '--bogus'/);
    await expect(buildPlaygroundCommand([], brownDir('target'))).rejects.toThrow(/name the output directory/);
    await expect(buildPlaygroundCommand(['a', 'b'], brownDir('target'))).rejects.toThrow(/one output directory, not 'a' and 'b'/);
    const dir = mkdtempSync(join(tmpdir(), 'kiln-playground-'));
    try {
      await expect(buildPlaygroundCommand([dir, '--model', tmpdir()], brownDir('target'))).rejects.toThrow(/no config\.json/);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!!skipWhy)('the playground in headless Chromium', () => {
  let browser: Awaited<ReturnType<Puppeteer['launch']>>;

  beforeAll(async () => {
    browser = await puppeteer!.launch({ executablePath: CHROMIUM!, headless: true, args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-dev-shm-usage'] });
  });
  afterAll(async () => {
    await browser?.close();
  });

  /** Opens the page with these URL parameters (autorun=1) and waits for data-done or data-error. */
  async function runPage(params: Record<string, string | number>, at = `${server.address.url}/`) {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    const q = new URLSearchParams({ ...Object.fromEntries(Object.entries(params).map(([k, v]) => [k, String(v)])), autorun: '1' });
    await page.goto(`${at}?${q}`);
    await page.waitForSelector('#output[data-done], #output[data-error]', { timeout: 110_000 });
    const r = await page.evaluate(() => {
      const w = globalThis as unknown as PageGlobals;
      const o = w.document.getElementById('output')!;
      return { text: o.textContent ?? '', done: o.dataset.done, error: o.dataset.error, ids: o.dataset.ids, isolated: w.crossOriginIsolated };
    });
    expect(errors, 'uncaught page errors').toEqual([]);
    return { page, ...r };
  }

  const greedy = { prompt: BROWN_PROMPT, maxTokens: newIds.length, temperature: 0 };

  it('mode=browser on WebGPU (SwiftShader): PyTorch greedy ids, and logits within the cross-backend tolerance of Node\'s', async () => {
    const { page, done, error, ids, text, isolated } = await runPage({ ...greedy, mode: 'browser', device: 'webgpu' });
    expect(error).toBeUndefined();
    expect(done).toBe('1');
    expect(isolated, 'COOP/COEP make the page cross-origin isolated').toBe(true);
    expect(ids!.split(',').map(Number)).toEqual(newIds);
    expect(text).toBe(llm.decode(target.greedy_ids_fp32).slice(llm.decode(target.prompt_ids).length));
    const device = await page.evaluate(() => (globalThis as unknown as PageGlobals).kilnPlayground.llm.device.description);
    console.log(`[browser] in-page device: ${device}`);
    expect(device).toMatch(/swiftshader/i);
    // Teacher-forced logits over the whole golden sequence, in the page and in Node (cpu).
    const all = target.greedy_ids_fp32;
    // Prefill in chunks of 8 rows: the kernels decode compiled already (a 30-row chunk would
    // compile the tiled-matmul pipelines, ~17 s on SwiftShader). Logits do not depend on chunking.
    const inPage = new Float32Array(await page.evaluate(async (ids: number[]) => {
      const { llm, createEngine } = (globalThis as unknown as PageGlobals).kilnPlayground;
      const engine = createEngine(llm, { maxBatchedTokens: 8 });
      try {
        return Array.from(await engine.logits(ids));
      } finally {
        await engine.close();
      }
    }, all));
    const node = await llm.logits(all);
    const V = llm.spec.vocabSize;
    const vsNode = Math.max(...rowErrors(inPage, node, V));
    const vsTorch = Math.max(...rowErrors(inPage, brownLogits('target'), V));
    console.log(`[browser] logits, worst row: ${vsNode.toExponential(2)} vs Node cpu, ${vsTorch.toExponential(2)} vs PyTorch`);
    expect(vsNode).toBeLessThan(ROW_TOL);
    expect(vsTorch).toBeLessThan(ROW_TOL);
    expect(argmaxAgreement(inPage, node, V, MARGIN).mismatches).toEqual([]);
    const shot = process.env.KILN_PLAYGROUND_SCREENSHOT;
    if (shot) await page.screenshot({ path: shot as `${string}.png`, fullPage: true });
    await page.close();
  });

  it('mode=browser, device auto: only a software adapter here, so the cpu device (Web Workers over SharedArrayBuffer), the same greedy ids', async () => {
    const { page, error, ids } = await runPage({ ...greedy, mode: 'browser', device: 'auto' });
    expect(error).toBeUndefined();
    expect(ids!.split(',').map(Number)).toEqual(newIds);
    const device = await page.evaluate(() => (globalThis as unknown as PageGlobals).kilnPlayground.llm.device.description);
    expect(device).toMatch(/worker/);
    await page.close();
  });

  it('mode=server streams the same text through the OpenAI API', async () => {
    const { page, done, error, text } = await runPage({ ...greedy, mode: 'server' });
    expect(error).toBeUndefined();
    expect(done).toBe('1');
    expect(text).toBe(llm.decode(target.greedy_ids_fp32).slice(llm.decode(target.prompt_ids).length));
    await page.close();
  });

  it('reports a bad model URL and a prompt too long in data-error', async () => {
    const bad = await runPage({ ...greedy, mode: 'browser', model: '/no-such-model/' });
    expect(bad.done).toBeUndefined();
    expect(bad.error).toMatch(/no-such-model\/config\.json: HTTP 404/);
    await bad.page.close();
    const long = 'the jury '.repeat(400);
    const tooLongHere = await runPage({ prompt: long, maxTokens: 4, temperature: 0, mode: 'browser', device: 'webgpu' });
    expect(tooLongHere.error).toMatch(/the prompt has \d+ tokens; the model's context is 512/);
    await tooLongHere.page.close();
    const tooLongThere = await runPage({ prompt: long, maxTokens: 4, temperature: 0, mode: 'server' });
    expect(tooLongThere.error).toMatch(/400: .*maximum context length is 512/);
    await tooLongThere.page.close();
  });

  it('serves the page with COOP/COEP and content types, and model files with ranges', async () => {
    const base = server.address.url;
    const page = await fetch(`${base}/`);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('cross-origin-opener-policy')).toBe('same-origin');
    expect(page.headers.get('cross-origin-embedder-policy')).toBe('require-corp');
    expect((await fetch(`${base}/playground.js`)).headers.get('content-type')).toMatch(/^text\/javascript/);
    const part = await fetch(`${base}/model/model.safetensors`, { headers: { Range: 'bytes=0-7' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toMatch(/^bytes 0-7\/\d+$/);
    const headerLen = new DataView(await part.arrayBuffer()).getBigUint64(0, true);
    expect(headerLen > 0n && headerLen < 100_000n).toBe(true);
    expect((await fetch(`${base}/model/model.safetensors`, { headers: { Range: 'bytes=99999999-' } })).status).toBe(416);
    expect((await fetch(`${base}/model/../config.json`)).status).toBe(404);
  });

  it('kiln build-playground output on a plain static host (no COOP/COEP): the cpu device runs on the main thread, same ids', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-playground-'));
    // A static server that sends only content types: the page is not cross-origin isolated.
    const host = createHttpServer((req, res) => {
      const file = join(dir, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/$/, '/index.html'));
      if (!file.startsWith(dir) || !existsSync(file)) { res.writeHead(404).end(); return; }
      res.writeHead(200, { 'Content-Type': contentType(file) }).end(readFileSync(file));
    });
    try {
      const files = await buildPlayground(dir, brownDir('target'));
      expect(files).toEqual(expect.arrayContaining(['index.html', 'playground.js', '_headers', 'model/config.json', 'model/model.safetensors', 'model/tokenizer.json']));
      await new Promise<void>((r) => host.listen(0, '127.0.0.1', r));
      const url = `http://127.0.0.1:${(host.address() as AddressInfo).port}/`;
      const { page, error, ids, isolated } = await runPage({ ...greedy, mode: 'browser', device: 'cpu' }, url);
      expect(error).toBeUndefined();
      expect(isolated).toBe(false);
      expect(ids!.split(',').map(Number)).toEqual(newIds);
      const device = await page.evaluate(() => (globalThis as unknown as PageGlobals).kilnPlayground.llm.device.description);
      expect(device).toMatch(/main thread/);
      await page.close();
      // Opened without parameters, the page finds no API behind it and switches to this browser.
      const plain = await browser.newPage();
      await plain.goto(url);
      await plain.waitForFunction(() => (globalThis as unknown as { document: { getElementById(id: string): { value: string } } }).document.getElementById('mode')!.value === 'browser', { timeout: 10_000 });
      await plain.close();
    } finally {
      host.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
