// The variant cache `kiln tune` writes (src/tune.ts), as the runtime reads it: a JSON file keyed
// by device, family and shape bucket. Apart from the tune command so that loading a model needs no
// file writes (and the browser build, which has no files, never reaches the tuner).
import { platform } from './platform/index.js';

export interface TuneCacheFile {
  version: 1;
  /** key (device|family|shape fields) → winning parameters. */
  entries: Record<string, { winner: Record<string, unknown>; ms: number | null; measured: string }>;
}

/** KILN_TUNE_CACHE, else $XDG_CACHE_HOME/kiln/tune.json, else ~/.cache/kiln/tune.json. */
export function defaultTuneCachePath(): string {
  const { files } = platform;
  return platform.env('KILN_TUNE_CACHE') ?? files.join(platform.env('XDG_CACHE_HOME') ?? files.join(files.homeDir(), '.cache'), 'kiln', 'tune.json');
}

/** The cache as the runtime looks it up (key → winner); empty when the file does not exist. */
export function readTuneCache(path = defaultTuneCachePath()): Record<string, Record<string, unknown>> {
  if (!platform.files.exists(path)) return {};
  let text: string;
  try {
    text = platform.files.readText(path);
  } catch (e) {
    throw new Error(`variant cache ${path}: ${(e as Error).message}`);
  }
  const file = parseCache(text, path);
  return Object.fromEntries(Object.entries(file.entries).map(([k, v]) => [k, v.winner]));
}

export function parseCache(text: string, path: string): TuneCacheFile {
  let j: unknown;
  try { j = JSON.parse(text); } catch (e) { throw new Error(`variant cache ${path}: not JSON (${(e as Error).message}); delete it or run kiln tune again`); }
  const f = j as TuneCacheFile;
  if (f?.version !== 1 || typeof f.entries !== 'object' || f.entries === null) {
    throw new Error(`variant cache ${path}: expected {"version": 1, "entries": {...}}`);
  }
  for (const [k, v] of Object.entries(f.entries)) {
    if (!v || typeof v.winner !== 'object' || v.winner === null) throw new Error(`variant cache ${path}: entry '${k}' has no winner object`);
  }
  return f;
}
