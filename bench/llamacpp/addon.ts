// llama.cpp from npm: node-llama-cpp's prebuilt CPU binary package (@node-llama-cpp/<platform>),
// a Node addon over libllama plus ggml's CPU backends, one per x86 feature level (chosen at load
// by the CPU's features). It is installed on request into a git-ignored cache, never as a
// dependency, and driven through the addon's own classes (model, context, batch, sampler), the
// layer node-llama-cpp's JavaScript wraps; that wrapper and its dependencies are not needed.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The binary package and version this benchmark was written against (its addon API is not public, so pin it). */
export const LLAMACPP_VERSION = '3.22.1';
const PLATFORM_PACKAGES: Record<string, string> = {
  'linux-x64': 'linux-x64', 'linux-arm64': 'linux-arm64', 'darwin-arm64': 'mac-arm64-metal', 'darwin-x64': 'mac-x64', 'win32-x64': 'win-x64',
};

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CACHE_DIR = path.join(REPO_ROOT, '.cache', 'llamacpp');

/** This machine's package name, or null where node-llama-cpp publishes none. */
export function platformPackage(): string | null {
  const p = PLATFORM_PACKAGES[`${process.platform}-${process.arch}`];
  return p ? `@node-llama-cpp/${p}` : null;
}

function installArgs(prefix: string): string[] {
  return ['install', '--prefix', prefix, '--no-save', '--no-package-lock', `${platformPackage() ?? '@node-llama-cpp/<platform>'}@${LLAMACPP_VERSION}`];
}

export function installCommand(): string {
  return ['npm', ...installArgs(path.relative(process.cwd(), CACHE_DIR) || '.')].join(' ');
}

/** The addon file: KILN_LLAMACPP_ADDON if set, else the cached install; null if neither exists. */
export function findAddon(): string | null {
  const env = process.env.KILN_LLAMACPP_ADDON;
  if (env) {
    if (!fs.existsSync(env)) throw new Error(`KILN_LLAMACPP_ADDON=${env}: no such file`);
    return env;
  }
  const pkg = platformPackage();
  if (!pkg) return null;
  const dir = path.join(CACHE_DIR, 'node_modules', pkg, 'bins');
  if (!fs.existsSync(dir)) return null;
  for (const sub of fs.readdirSync(dir)) {
    const f = path.join(dir, sub, 'llama-addon.node');
    if (fs.existsSync(f)) return f;
  }
  return null;
}

/** Downloads the binary package from the npm registry into CACHE_DIR (about 30 MB). */
export function install(): void {
  if (!platformPackage()) throw new Error(`llama.cpp: node-llama-cpp publishes no prebuilt binary for ${process.platform}-${process.arch}`);
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const r = spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', installArgs(CACHE_DIR), { stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) throw new Error(`llama.cpp: '${installCommand()}' failed (exit ${r.status})`);
}

// The slice of the addon's API used here (see node-llama-cpp's dist/bindings/AddonTypes.d.ts).
interface AddonModel { init(): Promise<boolean>; dispose(): Promise<void>; getModelDescription(): string; tokenize(text: string, special: boolean): Uint32Array }
interface AddonContext {
  init(): Promise<boolean>; dispose(): Promise<void>;
  initBatch(size: number): void;
  addToBatch(seq: number, firstPos: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array;
  decodeBatch(): Promise<void>;
  sampleToken(batchLogitIndex: number, sampler: AddonSampler): Promise<number>;
  disposeSequence(seq: number): void;
  getThreads(): number;
}
interface AddonSampler { applyConfig(c: { temperature: number }): void; dispose(): void }
interface Binding {
  loadBackends(dir?: string): void; init(): Promise<void>; dispose(): Promise<void>; systemInfo(): string;
  setLogger(fn: (level: number, msg: string) => void): void; setLoggerLogLevel(level: number): void;
  AddonModel: new (p: string, o: { gpuLayers: number; useMmap: boolean }) => AddonModel;
  AddonContext: new (m: AddonModel, o: { contextSize: number; batchSize: number; sequences: number; threads: number }) => AddonContext;
  AddonSampler: new (m: AddonModel) => AddonSampler;
}
/** The addon's log levels: 0 off, 1 fatal, 2 error, 3 warn, 4 info. */
const LOG_WARN = 3;

/** One context (its own KV cache and thread count) over a loaded model, decoding greedily. */
export interface LlamaSession {
  readonly threads: number;
  /** Clears the KV cache, feeds `ids` from position 0 in one batch, returns the greedy next id. */
  prefill(ids: readonly number[]): Promise<number>;
  /** Feeds one token at `pos`, returns the greedy next id. */
  step(id: number, pos: number): Promise<number>;
  close(): Promise<void>;
}

export interface LlamaCpp {
  readonly addonFile: string;
  readonly systemInfo: string;
  /** The ggml CPU backend library picked for this CPU (e.g. libggml-cpu-zen4.so); null where it cannot be told. */
  readonly cpuBackend: string | null;
  describe(): string;
  session(threads: number, maxBatch: number): Promise<LlamaSession>;
  close(): Promise<void>;
}

/** Which ggml-cpu variant the loader mapped into this process (Linux: /proc/self/maps). */
function loadedCpuBackend(): string | null {
  try {
    const m = /libggml-cpu-[\w-]+\.(so|dylib|dll)/.exec(fs.readFileSync('/proc/self/maps', 'utf8'));
    return m ? m[0] : null;
  } catch { return null; }
}

/** Loads the addon and a GGUF model (all layers on the CPU). */
export async function loadLlamaCpp(addonFile: string, ggufPath: string, contextSize: number): Promise<LlamaCpp> {
  let binding: Binding;
  try {
    binding = createRequire(import.meta.url)(addonFile) as Binding;
  } catch (e) {
    throw new Error(`llama.cpp: could not load ${addonFile} (${(e as Error).message}); reinstall with: ${installCommand()}`);
  }
  binding.setLogger((level, msg) => { if (level <= LOG_WARN) process.stderr.write(`llama.cpp: ${msg}`); });
  binding.setLoggerLogLevel(LOG_WARN);
  binding.loadBackends(path.dirname(addonFile)); // the ggml-cpu-<feature level> libraries sit beside the addon
  await binding.init();
  const model = new binding.AddonModel(ggufPath, { gpuLayers: 0, useMmap: true });
  if (!(await model.init())) throw new Error(`llama.cpp could not load ${ggufPath} (see its messages above)`);
  const sessions: LlamaSession[] = [];
  return {
    addonFile,
    systemInfo: binding.systemInfo(),
    cpuBackend: loadedCpuBackend(),
    describe: () => model.getModelDescription(),
    async session(threads, maxBatch) {
      const ctx = new binding.AddonContext(model, { contextSize, batchSize: maxBatch, sequences: 1, threads });
      if (!(await ctx.init())) throw new Error(`llama.cpp: a context of ${contextSize} tokens, ${threads} threads could not be created`);
      const sampler = new binding.AddonSampler(model);
      sampler.applyConfig({ temperature: 0 }); // greedy
      const run = async (ids: readonly number[], pos: number) => {
        ctx.initBatch(ids.length);
        const [logitIndex] = ctx.addToBatch(0, pos, Uint32Array.from(ids), Uint32Array.of(ids.length - 1));
        await ctx.decodeBatch();
        return ctx.sampleToken(logitIndex!, sampler);
      };
      const s: LlamaSession = {
        threads: ctx.getThreads(),
        prefill(ids) { ctx.disposeSequence(0); return run(ids, 0); },
        step: (id, pos) => run([id], pos),
        async close() { sampler.dispose(); await ctx.dispose(); },
      };
      sessions.push(s);
      return s;
    },
    async close() {
      for (const s of sessions) await s.close();
      await model.dispose();
      await binding.dispose();
    },
  };
}
