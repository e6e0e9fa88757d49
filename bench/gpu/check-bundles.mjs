#!/usr/bin/env node
// Are the bundles in .devkit/gpu built from the sources in this tree? bundle.mjs records a hash of
// every repository file it bundled; this recomputes them. Bundles are snapshots: code changed after
// `npm run bench -- gpu-prep` would not run on the GPU machine. Exit 4 (with a WARNING line) if stale.
//   node bench/gpu/check-bundles.mjs
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const manifestPath = join(root, '.devkit', 'gpu', 'manifest.json');
if (!existsSync(manifestPath)) {
  console.log('WARNING: no .devkit/gpu/manifest.json: run `npm run bench -- gpu-prep`');
  process.exit(4);
}
const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
const changed = Object.entries(manifest.inputs ?? {}).filter(([rel, hash]) => {
  const p = join(root, rel);
  return !existsSync(p) || createHash('sha1').update(readFileSync(p)).digest('hex') !== hash;
}).map(([rel]) => rel);
const built = `commit ${String(manifest.commit).slice(0, 12)}${manifest.dirty ? ` + ${manifest.dirty} changed files` : ''}, built ${manifest.created} with node ${manifest.node}`;
if (changed.length) {
  console.log(`WARNING: stale bundles: ${changed.length} bundled source files differ from this tree (${changed.slice(0, 5).join(', ')}${changed.length > 5 ? ', …' : ''}); rerun \`npm run bench -- gpu-prep\``);
  console.log(`bundles: ${built}`);
  process.exit(4);
}
console.log(`bundles: ${built}; all ${Object.keys(manifest.inputs ?? {}).length} bundled sources match this tree`);
