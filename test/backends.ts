// Kernel tests are written once and instantiated for every backend present here. They receive a
// Device and never name a backend. Backends that are absent are reported as skipped, with why.
import { describe } from 'vitest';
import { BackendUnavailableError, type BackendKind, type Device } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';

const KINDS: BackendKind[] = ['cpu', 'webgpu', 'cuda'];
const cache = new Map<BackendKind, Promise<Device | string>>();

/** A device of this kind, or the reason it is unavailable. Shared across a test file. */
export function deviceOrReason(kind: BackendKind): Promise<Device | string> {
  let p = cache.get(kind);
  if (!p) {
    p = createDevice(kind).catch((e: unknown) => (e instanceof BackendUnavailableError ? e.reason : Promise.reject(e)));
    cache.set(kind, p);
  }
  return p;
}

const only = process.env.KILN_BACKENDS?.split(',').filter(Boolean) as BackendKind[] | undefined;
const resolved = await Promise.all(KINDS.filter((k) => !only || only.includes(k)).map(async (k) => [k, await deviceOrReason(k)] as const));

/** Run `suite` once per available backend; absent ones are skipped with the reason. */
export function forEachBackend(title: string, suite: (dev: Device) => void): void {
  for (const [kind, d] of resolved) {
    if (typeof d === 'string') {
      describe.skip(`${title} [${kind}: skipped — ${d}]`, () => {});
    } else {
      describe(`${title} [${kind}]`, () => suite(d));
    }
  }
}

/** The devices present, for tests that compare backends against each other. */
export function availableDevices(): Device[] {
  return resolved.flatMap(([, d]) => (typeof d === 'string' ? [] : [d]));
}
