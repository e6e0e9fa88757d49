#!/usr/bin/env node
// Builds the CUDA host addon (cuda/host → cuda/host/build/Release/kiln_cuda.node) with node-gyp.
// Runs as the package's install script, so it must never fail an install: when the addon cannot be
// built here (no compiler, no Node headers, not Linux) it prints one line saying why and exits 0;
// the CUDA backend then reports itself unavailable with that reason.
//
// Needs no CUDA toolkit (the addon dlopens the driver at run time) and no network: node-gyp is told
// where this Node's own headers are, so it never tries to download them.
//   node scripts/build-addon.mjs [--force]     KILN_SKIP_ADDON=1 skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const hostDir = join(root, 'cuda', 'host');
const output = join(hostDir, 'build', 'Release', 'kiln_cuda.node');
const logFile = join(hostDir, 'build', 'addon-build.log');
const force = process.argv.includes('--force');

function note(msg) {
  console.log(`kiln: CUDA addon ${msg}`);
  process.exit(0);
}

const onPath = (exe) => (process.env.PATH ?? '').split(delimiter).filter(Boolean).some((d) => existsSync(join(d, exe)));

/** npm's own node-gyp (set for lifecycle scripts, or beside this node), else one installed locally. */
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  try {
    candidates.push(createRequire(join(root, 'package.json')).resolve('node-gyp/bin/node-gyp.js'));
  } catch { /* not a local dependency */ }
  return candidates.find((p) => p && existsSync(p));
}

/** A directory whose include/node has this Node's headers (node-gyp's --nodedir). */
function findNodeDir() {
  const candidates = [process.env.npm_config_nodedir, resolve(dirname(process.execPath), '..'), '/usr', '/usr/local'];
  return candidates.find((d) => d && existsSync(join(d, 'include', 'node', 'node_api.h')) && existsSync(join(d, 'include', 'node', 'common.gypi')));
}

function newestSource() {
  return Math.max(...readdirSync(hostDir).filter((f) => /\.(cc|h|gyp)$/.test(f)).map((f) => statSync(join(hostDir, f)).mtimeMs));
}

if (process.env.KILN_SKIP_ADDON) note('build skipped (KILN_SKIP_ADDON is set)');
if (process.platform !== 'linux') note(`not built: the CUDA backend supports Linux only (this is ${process.platform})`);
if (!force && existsSync(output) && statSync(output).mtimeMs >= newestSource()) note(`up to date: ${output}`);
const cxx = process.env.CXX ?? 'g++';
if (!onPath(cxx) && !onPath('c++')) note(`not built: no C++ compiler (${cxx}) on PATH`);
if (!onPath('make')) note('not built: no make on PATH');
if (!onPath('python3') && !onPath('python')) note('not built: node-gyp needs python3');
const gyp = findNodeGyp();
if (!gyp) note('not built: node-gyp not found (it ships with npm)');
const nodedir = findNodeDir();
if (!nodedir) note(`not built: no Node headers (include/node/node_api.h) beside ${process.execPath}; set npm_config_nodedir`);
try {
  createRequire(join(root, 'package.json')).resolve('node-addon-api');
} catch {
  note('not built: the node-addon-api package is not installed (run npm install)');
}

const started = Date.now();
const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--jobs=max', `--directory=${hostDir}`], {
  cwd: hostDir,
  encoding: 'utf8',
  timeout: 15 * 60_000,
  env: { ...process.env, npm_config_nodedir: nodedir },
});
mkdirSync(dirname(logFile), { recursive: true });
writeFileSync(logFile, `${r.stdout ?? ''}\n${r.stderr ?? ''}\n${r.error ? String(r.error) : ''}`);
if (r.status !== 0 || !existsSync(output)) {
  const lastError = `${r.stderr ?? ''}`.split('\n').find((l) => /error/i.test(l))?.trim() ?? r.error?.message ?? `exit ${r.status}`;
  note(`not built: node-gyp failed (${lastError}); full log in ${logFile}`);
}
note(`built in ${((Date.now() - started) / 1000).toFixed(0)} s: ${output}`);
