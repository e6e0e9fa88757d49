// The Node host: files through node:fs, workers through worker_threads.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Platform, PlatformWorker } from './types.js';

function startWorker(program: string, on: { message(reply: unknown): void; error(why: string): void }): PlatformWorker {
  const main = `${program}\nimport('node:worker_threads').then(({ parentPort }) => {\n  const post = (r) => parentPort.postMessage(r);\n  parentPort.on('message', (m) => { post(handle(m)); if (typeof linger === 'function') linger(post); });\n});\n`;
  // execArgv: [] so a worker never loads the parent's loaders (tsx, vitest): it runs plain JS.
  const worker = new Worker(main, { eval: true, execArgv: [] });
  worker.unref();
  let failed = false;
  const fail = (why: string) => { if (!failed) { failed = true; on.error(why); } };
  worker.on('message', (r: unknown) => on.message(r));
  worker.on('error', (e) => fail(`worker thread failed: ${e instanceof Error ? e.message : String(e)}`));
  worker.on('exit', (code) => fail(`worker thread exited (code ${code})`));
  return {
    post: (m) => worker.postMessage(m),
    hold: (busy) => { if (busy) worker.ref(); else worker.unref(); },
    terminate: async () => { failed = true; await worker.terminate(); },
  };
}

export const platform: Platform = {
  kind: 'node',
  cpuCount: () => os.availableParallelism(),
  freeMemory: () => os.freemem(),
  env: (name) => process.env[name],
  contentKey: (text) => createHash('sha1').update(text).digest('hex').slice(0, 20),
  sharedMemory: true,
  allocShared: (bytes) => new SharedArrayBuffer(bytes),
  startWorker,
  resolvePackagePath: (relative, moduleUrl) => fileURLToPath(new URL(relative, moduleUrl)),
  files: {
    exists: (p) => fs.existsSync(p),
    isDirectory: (p) => fs.statSync(p).isDirectory(),
    readText: (p) => fs.readFileSync(p, 'utf8'),
    readBytes: (p) => new Uint8Array(fs.readFileSync(p)),
    open(p) {
      const fd = fs.openSync(p, 'r');
      return {
        size: fs.fstatSync(fd).size,
        readInto: (into, intoOffset, length, position) => fs.readSync(fd, into, intoOffset, length, position),
        close: () => fs.closeSync(fd),
      };
    },
    join: (...parts) => path.join(...parts),
    dirname: (p) => path.dirname(p),
    homeDir: () => os.homedir(),
  },
};
