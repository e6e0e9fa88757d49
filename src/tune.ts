// `kiln tune <family> --device D --shape K=…,N=…`: time a kernel family's variants on a device
// (src/ops/tune.ts) and write the winner to the variant cache, a JSON file keyed by device,
// family and shape bucket. The runtime reads it when it builds its ops and falls back to the
// defaults for anything not there.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { BackendKind } from './backend/device.js';
import { createDevice } from './backend/index.js';
import { tunableFamilies, tuneFamily, type TuneShape } from './ops/tune.js';
import { defaultTuneCachePath, parseCache, type TuneCacheFile } from './tuneCache.js';
import { num, type ParsedArgs, rejectUnknown, str } from './util/args.js';

export { defaultTuneCachePath, readTuneCache, type TuneCacheFile } from './tuneCache.js';

/** Parse "K=4096,N=4096,groupSize=128" (numbers where they look like numbers). */
export function parseShape(s: string): TuneShape {
  const shape: TuneShape = {};
  for (const part of s.split(',').filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new Error(`--shape: '${part}' is not name=value`);
    const v = part.slice(eq + 1);
    shape[part.slice(0, eq)] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  }
  return shape;
}

export async function tuneCommand(a: ParsedArgs): Promise<void> {
  rejectUnknown(a, ['device', 'shape', 'cache', 'reps', 'samples'], 'kiln tune');
  const family = a.positional[0];
  if (!family) {
    const list = tunableFamilies().map((f) => `  ${f.family}: ${f.required.join(', ')}${Object.keys(f.defaults).length ? ` (optional: ${Object.keys(f.defaults).join(', ')})` : ''}`);
    throw new Error(`kiln tune: name a kernel family:\n${list.join('\n')}`);
  }
  const device = str(a, 'device', 'auto') as BackendKind | 'auto';
  const shape = parseShape(str(a, 'shape', ''));
  const path = str(a, 'cache', defaultTuneCachePath());
  const dev = await createDevice(device);
  try {
    const r = await tuneFamily(dev, family, shape, { reps: num(a, 'reps'), samples: num(a, 'samples'), log: (l) => console.log(l) });
    const best = r.timings.filter((t) => t.ms !== null).sort((x, y) => x.ms! - y.ms!)[0];
    let file: TuneCacheFile = { version: 1, entries: {} };
    try { file = parseCache(readFileSync(path, 'utf8'), path); } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; }
    file.entries[r.key] = { winner: r.winner, ms: best?.ms ?? null, measured: new Date().toISOString() };
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(`${path}.tmp`, JSON.stringify(file, null, 2) + '\n');
    renameSync(`${path}.tmp`, path);
    console.log(`winner ${JSON.stringify(r.winner)}${best ? ` (${best.ms!.toFixed(3)} ms)` : ''}\nwrote ${r.key} to ${path}`);
  } finally {
    await dev.destroy();
  }
}
