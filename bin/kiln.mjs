#!/usr/bin/env node
// The `kiln` command: runs the TypeScript sources through tsx. `kiln codegen ...` goes to
// codegen/cli.ts; every other subcommand to src/cli.ts.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const [sub, ...rest] = process.argv.slice(2);
const [script, args] = sub === 'codegen' ? ['codegen/cli.ts', rest] : ['src/cli.ts', process.argv.slice(2)];
const path = root + script;
if (!existsSync(path)) {
  console.error(`kiln: '${sub ?? ''}' is handled by ${script}, which is not part of this checkout yet; try \`kiln codegen --help\``);
  process.exit(2);
}
let tsx;
try {
  tsx = import.meta.resolve('tsx');
} catch {
  console.error('kiln: the tsx package is needed to run the TypeScript sources (npm install tsx)');
  process.exit(2);
}
const r = spawnSync(process.execPath, ['--import', tsx, path, ...args], { stdio: 'inherit' });
if (r.error) throw r.error;
process.exit(r.status ?? 128 + (r.signal ? (constants.signals[r.signal] ?? 1) : 0));
