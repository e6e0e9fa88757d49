#!/usr/bin/env node
// The `kiln` command. `kiln codegen ...` goes to codegen/cli.ts; every other subcommand to src/cli.ts.
// In a checkout (the TypeScript sources are here) it runs the sources through tsx, so an edit is
// live without rebuilding; an installed package has no sources and runs the bundles in dist/
// (scripts/build-lib.mjs) with plain Node.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const [sub, ...rest] = process.argv.slice(2);
const codegen = sub === 'codegen';
const source = root + (codegen ? 'codegen/cli.ts' : 'src/cli.ts');
const bundle = root + (codegen ? 'dist/codegen-cli.js' : 'dist/cli.js');

let tsx;
try {
  tsx = import.meta.resolve('tsx');
} catch { /* not installed: fine for an installed package, which runs dist/ */ }

if (existsSync(source) && tsx) {
  const r = spawnSync(process.execPath, ['--import', tsx, source, ...(codegen ? rest : process.argv.slice(2))], { stdio: 'inherit' });
  if (r.error) throw r.error;
  process.exit(r.status ?? 128 + (r.signal ? (constants.signals[r.signal] ?? 1) : 0));
} else if (existsSync(bundle)) {
  // src/cli.ts runs its command when imported (it reads process.argv itself); codegen/cli.ts only
  // when it is the main script, so its main() is called here.
  const url = pathToFileURL(bundle).href;
  if (codegen) process.exitCode = (await import(url)).main(rest);
  else await import(url);
} else if (existsSync(source)) {
  console.error('kiln: the tsx package is needed to run the TypeScript sources (npm install), or build dist/ with `npm run build`');
  process.exit(2);
} else {
  console.error(`kiln: neither ${source} nor ${bundle} exists; this package is incomplete (reinstall it, or run \`npm run build\` in a checkout)`);
  process.exit(2);
}
