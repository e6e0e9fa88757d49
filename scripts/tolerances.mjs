// Summarise a tolerance log (test/measure/vitest.config.ts): per assertion site and backend, the
// largest value measured, the bound, and their ratio — tolerances should sit at ≤ 10× what is measured.
import { readFileSync } from 'node:fs';

const file = process.argv[2] ?? 'tolerances.jsonl';
const rows = readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const by = new Map();
for (const r of rows) {
  const backend = /\[(\w+)\]/.exec(r.test ?? '')?.[1] ?? '-';
  const key = `${r.site}\t${backend}\t${r.bound}`;
  const e = by.get(key) ?? { site: r.site, backend, bound: r.bound, max: -Infinity, n: 0, test: r.test };
  if (r.value > e.max) { e.max = r.value; e.test = r.test; }
  e.n++;
  by.set(key, e);
}
const fmt = (x) => (x === 0 ? '0' : x.toExponential(2));
console.log(['site', 'backend', 'n', 'max measured', 'bound', 'bound/max', 'worst test'].join('\t'));
for (const e of [...by.values()].sort((a, b) => a.site.localeCompare(b.site, 'en', { numeric: true }) || a.backend.localeCompare(b.backend))) {
  console.log([e.site, e.backend, e.n, fmt(e.max), fmt(e.bound), e.max > 0 ? (e.bound / e.max).toFixed(1) : 'inf', e.test].join('\t'));
}
