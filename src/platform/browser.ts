// The browser host: no file system (models come by URL or File), workers from Blob URLs, shared
// memory only when the page is cross-origin isolated (COOP/COEP headers).
import type { Platform, PlatformWorker } from './types.js';

interface BrowserGlobals {
  navigator?: { hardwareConcurrency?: number; deviceMemory?: number };
  crossOriginIsolated?: boolean;
  location?: { href: string };
}
const g = globalThis as BrowserGlobals;

/** The slice of the DOM's Worker used here (the project's tsconfig has no DOM types). */
interface WebWorker {
  postMessage(m: unknown): void;
  terminate(): void;
  onmessage: ((e: { data: unknown }) => void) | null;
  onerror: ((e: { message: string }) => void) | null;
}
type WorkerConstructor = new (url: string) => WebWorker;

function noFiles(what: string): never {
  throw new Error(`${what}: there is no file system in the browser; load models by URL or from File objects (kiln/browser loadModel)`);
}

/** FNV-1a over UTF-16 code units, two 32-bit lanes: a cache key, not a security hash. */
function contentKey(text: string): string {
  let a = 0x811c9dc5, b = 0x01000193 ^ text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}

function startWorker(program: string, on: { message(reply: unknown): void; error(why: string): void }): PlatformWorker {
  const main = `${program}\nconst post = (r) => self.postMessage(r);\nself.onmessage = (e) => { post(handle(e.data)); if (typeof linger === 'function') linger(post); };\n`;
  const url = URL.createObjectURL(new Blob([main], { type: 'text/javascript' }));
  const WorkerClass = (globalThis as { Worker?: WorkerConstructor }).Worker;
  if (!WorkerClass) throw new Error('this browser context has no Web Workers');
  const worker = new WorkerClass(url);
  URL.revokeObjectURL(url);
  worker.onmessage = (e) => on.message(e.data);
  worker.onerror = (e) => on.error(`web worker failed: ${e.message}`);
  return {
    post: (m) => worker.postMessage(m),
    hold: () => {},
    terminate: async () => worker.terminate(),
  };
}

const sharing = typeof SharedArrayBuffer !== 'undefined' && g.crossOriginIsolated !== false;

export const platform: Platform = {
  kind: 'browser',
  cpuCount: () => Math.max(1, g.navigator?.hardwareConcurrency ?? 1),
  // navigator.deviceMemory (GiB, rounded, capped at 8 by browsers) where there is one; else 4 GiB.
  freeMemory: () => ((g.navigator?.deviceMemory ?? 4) * 2 ** 30) / 2,
  env: () => undefined,
  contentKey,
  sharedMemory: sharing,
  // Without cross-origin isolation there is no SharedArrayBuffer: plain memory, used on the main
  // thread only (the cpu device then runs no workers). The cast says so to the types: nothing
  // shares it, so nothing relies on it being shared.
  allocShared: (bytes) => (sharing ? new SharedArrayBuffer(bytes) : (new ArrayBuffer(bytes) as unknown as SharedArrayBuffer)),
  startWorker,
  resolvePackagePath: (relative, moduleUrl) => new URL(relative, moduleUrl).href,
  files: {
    exists: (p) => noFiles(p),
    isDirectory: (p) => noFiles(p),
    readText: (p) => noFiles(p),
    readBytes: (p) => noFiles(p),
    open: (p) => noFiles(p),
    join: (...parts) => parts.join('/').replace(/\/+/g, '/'),
    dirname: (p) => p.replace(/\/[^/]*$/, '') || '.',
    homeDir: () => noFiles('the home directory'),
  },
};
