// Kernel tests are written once and instantiated for every backend present here. They receive a
// Device and never name a backend. Backends that are absent are reported as skipped, with why.
import { describe } from 'vitest';
import { BackendUnavailableError, type BackendKind, type Device } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';

/**
 * 'cpu' is the cpu device's default executor (wasm); 'cpu-js' its JavaScript executor, the
 * reference the wasm one must match bit for bit, so kernel suites run on both.
 */
type TestBackend = BackendKind | 'cpu-js';
const KINDS: TestBackend[] = ['cpu', 'cpu-js', 'webgpu', 'cuda'];
const cache = new Map<TestBackend, Promise<Device | string>>();

/** A device of this kind, or the reason it is unavailable. Shared across a test file. */
export function deviceOrReason(kind: TestBackend): Promise<Device | string> {
  let p = cache.get(kind);
  if (!p) {
    const made = kind === 'cpu-js' ? createDevice('cpu', { executor: 'js' }) : createDevice(kind);
    p = made.catch((e: unknown) => (e instanceof BackendUnavailableError ? e.reason : Promise.reject(e)));
    cache.set(kind, p);
  }
  return p;
}

const only = process.env.KILN_BACKENDS?.split(',').filter(Boolean) as TestBackend[] | undefined;
const resolved = await Promise.all(KINDS.filter((k) => !only || only.includes(k)).map(async (k) => [k, await deviceOrReason(k)] as const));

/**
 * Run `suite` once per available backend; absent ones are skipped with the reason. `cpuExecutors:
 * 'default'` runs the cpu device on its default executor only (model-level suites, for test time).
 */
export function forEachBackend(title: string, suite: (dev: Device) => void, opts: { cpuExecutors?: 'all' | 'default' } = {}): void {
  for (const [kind, d] of resolved) {
    if (kind === 'cpu-js' && opts.cpuExecutors === 'default') continue;
    if (typeof d === 'string') {
      describe.skip(`${title} [${kind}: skipped — ${d}]`, () => {});
    } else {
      describe(`${title} [${kind}]`, () => suite(d));
    }
  }
}

/** The devices present, for tests that compare backends against each other (the cpu device once). */
export function availableDevices(): Device[] {
  return resolved.flatMap(([k, d]) => (typeof d === 'string' || k === 'cpu-js' ? [] : [d]));
}
