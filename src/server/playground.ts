// The playground page over HTTP: GET / (the page), /playground.js (its script, the browser build)
// and /model/<file> (the served model's folder, with range requests, for the page's in-browser
// mode). Every answer carries the headers cross-origin isolation needs (COOP/COEP), so the page
// gets SharedArrayBuffer and the cpu device its Web Workers. `kiln build-playground DIR` writes
// the same files for any static host.
import * as fs from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The package root (sources: src/server/ → ../../; the bundle's import.meta.url is rewritten to the same). */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** What cross-origin isolation needs; the model files say they may be embedded by the page. */
export const ISOLATION_HEADERS: Readonly<Record<string, string>> = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.json': 'application/json',
  '.jinja': 'text/plain; charset=utf-8', '.txt': 'text/plain; charset=utf-8', '.safetensors': 'application/octet-stream',
  '.bin': 'application/octet-stream', '.png': 'image/png',
};

export function contentType(file: string): string {
  return CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
}

export interface PlaygroundAssets {
  html: string;
  script: string;
  /** Where they came from: bundled from the sources now, or dist/. */
  origin: string;
}

let cached: Promise<PlaygroundAssets> | null = null;

/**
 * The page and its script. In a checkout (sources and esbuild present) the script is bundled from
 * src/playground/main.ts once per process, so it always matches the sources; an installed
 * package serves dist/playground.{html,js} (scripts/build-lib.mjs).
 */
export function playgroundAssets(): Promise<PlaygroundAssets> {
  cached ??= loadAssets().catch((e) => { cached = null; throw e; });
  return cached;
}

async function loadAssets(): Promise<PlaygroundAssets> {
  const source = path.join(ROOT, 'src/playground/main.ts');
  const buildScript = path.join(ROOT, 'scripts/browser-build.mjs');
  if (fs.existsSync(source) && fs.existsSync(buildScript)) {
    type Esbuild = { build(o: unknown): Promise<{ outputFiles: { text: string }[] }> };
    let esbuild: Esbuild | null = null;
    try {
      const name = 'esbuild';
      esbuild = (await import(name)) as Esbuild;
    } catch { /* no devDependencies: use dist/ */ }
    if (esbuild) {
      const { browserBuildOptions } = (await import(pathToFileURL(buildScript).href)) as { browserBuildOptions(root: string): Record<string, unknown> };
      const r = await esbuild.build({ ...browserBuildOptions(ROOT), entryPoints: [source], entryNames: undefined, metafile: false, write: false, outdir: path.join(ROOT, 'dist') });
      return { html: fs.readFileSync(path.join(ROOT, 'src/playground/index.html'), 'utf8'), script: r.outputFiles[0]!.text, origin: 'sources' };
    }
  }
  const html = path.join(ROOT, 'dist/playground.html'), script = path.join(ROOT, 'dist/playground.js');
  if (!fs.existsSync(html) || !fs.existsSync(script)) throw new Error(`the playground is not built: ${path.relative(ROOT, script)} is missing (npm run build)`);
  return { html: fs.readFileSync(html, 'utf8'), script: fs.readFileSync(script, 'utf8'), origin: 'dist' };
}

/** Files of a model folder the page may fetch (nothing else in the folder is served). */
export function servableModelFile(name: string): boolean {
  return /^[\w.-]+\.(json|safetensors|jinja)$/.test(name) && !name.startsWith('.');
}

function send(res: ServerResponse, status: number, headers: Record<string, string | number>, body?: string | Uint8Array): number {
  res.writeHead(status, { ...ISOLATION_HEADERS, ...headers });
  res.end(body);
  return status;
}

/** Parses a single "bytes=a-b" range (suffix and open ranges too) against a size; null: unsatisfiable. */
export function parseRange(header: string, size: number): { start: number; end: number } | null | 'ignore' {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return 'ignore'; // multiple or malformed ranges: send it all
  let start: number, end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return null;
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return null;
  return { start, end };
}

/** A file, whole or one byte range of it, streamed. */
export function sendFile(req: IncomingMessage, res: ServerResponse, file: string): Promise<number> {
  const size = fs.statSync(file).size;
  const base = { 'Content-Type': contentType(file), 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-cache' };
  const range = req.headers.range ? parseRange(req.headers.range, size) : 'ignore';
  if (range === null) return Promise.resolve(send(res, 416, { ...base, 'Content-Range': `bytes */${size}` }));
  const { start, end } = range === 'ignore' ? { start: 0, end: size - 1 } : range;
  const status = range === 'ignore' ? 200 : 206;
  res.writeHead(status, { ...ISOLATION_HEADERS, ...base, 'Content-Length': Math.max(0, end - start + 1), ...(status === 206 ? { 'Content-Range': `bytes ${start}-${end}/${size}` } : {}) });
  if (req.method === 'HEAD' || size === 0) { res.end(); return Promise.resolve(status); }
  return new Promise((resolve) => {
    const stream = fs.createReadStream(file, { start, end });
    stream.on('error', () => { res.destroy(); resolve(status); });
    stream.on('end', () => resolve(status));
    stream.pipe(res);
  });
}

/** Whether a GET/HEAD route belongs to the playground. */
export function isPlaygroundRoute(route: string): boolean {
  return route === '/' || route === '/index.html' || route === '/playground.js' || route.startsWith('/model/');
}

/**
 * Answers a playground route. `modelSource`: the served model's folder (a llama2.c file cannot be
 * loaded by the page: its /model/ answers 404). Returns the status sent.
 */
export async function servePlayground(req: IncomingMessage, res: ServerResponse, route: string, modelSource: string): Promise<number> {
  if (route.startsWith('/model/')) {
    const modelDir = fs.existsSync(modelSource) && fs.statSync(modelSource).isDirectory() ? modelSource : null;
    let name = '';
    try { name = decodeURIComponent(route.slice('/model/'.length)); } catch { /* malformed %-escape: no such file */ }
    const file = modelDir && servableModelFile(name) ? path.join(modelDir, name) : null;
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      return send(res, 404, { 'Content-Type': 'text/plain; charset=utf-8' }, modelDir ? `the model folder has no ${name}\n` : 'the served model is not a folder the page can load\n');
    }
    return sendFile(req, res, file);
  }
  const assets = await playgroundAssets();
  const [body, type] = route === '/playground.js' ? [assets.script, contentType('x.js')] : [assets.html, contentType('x.html')];
  const bytes = Buffer.from(body, 'utf8');
  res.writeHead(200, { ...ISOLATION_HEADERS, 'Content-Type': type, 'Content-Length': bytes.byteLength, 'Cache-Control': 'no-cache' });
  res.end(req.method === 'HEAD' ? undefined : bytes);
  return 200;
}

/** `kiln build-playground DIR [--model DIR]`: the page as static files (with the model, if given). */
export async function buildPlayground(outDir: string, modelDir: string | null): Promise<string[]> {
  if (modelDir && !fs.existsSync(path.join(modelDir, 'config.json'))) throw new Error(`${modelDir}: no config.json (the page loads Hugging Face model folders)`);
  const assets = await playgroundAssets();
  fs.mkdirSync(outDir, { recursive: true });
  const written: string[] = [];
  const write = (name: string, data: string | Uint8Array) => { fs.writeFileSync(path.join(outDir, name), data); written.push(name); };
  write('index.html', assets.html);
  write('playground.js', assets.script);
  // Netlify / Cloudflare Pages read _headers; other hosts need the same two headers configured.
  write('_headers', `/*\n${Object.entries(ISOLATION_HEADERS).map(([k, v]) => `  ${k}: ${v}`).join('\n')}\n`);
  if (modelDir) {
    fs.mkdirSync(path.join(outDir, 'model'), { recursive: true });
    for (const f of fs.readdirSync(modelDir).filter(servableModelFile)) {
      fs.copyFileSync(path.join(modelDir, f), path.join(outDir, 'model', f));
      written.push(`model/${f}`);
    }
  }
  return written;
}

export const BUILD_PLAYGROUND_HELP = `kiln build-playground — the playground page as static files, for any web host

  kiln build-playground DIR [--model MODEL_DIR | --no-model]

  Writes DIR/index.html, DIR/playground.js, DIR/_headers (COOP/COEP for Netlify / Cloudflare Pages:
  other hosts must send those headers themselves for the cpu device's Web Workers) and a copy of
  the model folder in DIR/model/ (default: models/brown-target), which the page loads in-browser.
`;

export async function buildPlaygroundCommand(argv: string[], defaultModel: string): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) { process.stdout.write(BUILD_PLAYGROUND_HELP); return; }
  let out: string | undefined, model: string | null = defaultModel;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--model' || a === '-m') {
      model = argv[++i] ?? null;
      if (!model) throw new Error('kiln build-playground: --model needs a directory');
    } else if (a === '--no-model') model = null;
    else if (a.startsWith('-')) throw new Error(`kiln build-playground: unknown option '${a}'\n${BUILD_PLAYGROUND_HELP}`);
    else if (out === undefined) out = a;
    else throw new Error(`kiln build-playground: one output directory, not '${out}' and '${a}'`);
  }
  if (!out) throw new Error(`kiln build-playground: name the output directory\n${BUILD_PLAYGROUND_HELP}`);
  const files = await buildPlayground(out, model);
  process.stdout.write(`kiln build-playground: wrote ${files.length} files to ${out} (${files.slice(0, 4).join(', ')}${files.length > 4 ? ', …' : ''})\n`);
}
