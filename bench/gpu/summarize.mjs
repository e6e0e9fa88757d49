#!/usr/bin/env node
// Folds what bench/gpu/run.sh left in its work folder into $OUT/summary.md (read first: phases,
// tests, kernels, then the bench and torch tables), $OUT/results.json (everything) and
// WORK/summary-short.md (the first part and the ceilings, which run.sh prints last). Plain Node,
// no dependencies: it runs on the GPU machine after every phase, so a timeout keeps a summary.
//   node bench/gpu/summarize.mjs WORK OUT
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [work, out] = process.argv.slice(2);
if (!work || !out) {
  console.error('usage: node bench/gpu/summarize.mjs WORK OUT');
  process.exit(2);
}

const readJson = (p) => {
  try { return JSON.parse(readFileSync(p, 'utf8')); } catch { return undefined; }
};
const readText = (p) => (existsSync(p) ? readFileSync(p, 'utf8') : '');
const cellText = (v) => (v === undefined || v === null ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v)).replaceAll('|', '\\|').replaceAll('\n', ' ');

/** A markdown table of objects, columns in first-seen key order. */
function table(rows, columns) {
  if (!rows?.length) return '(none)\n';
  const cols = columns ?? [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return [`| ${cols.join(' | ')} |`, `|${cols.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${cols.map((c) => cellText(r[c])).join(' | ')} |`)].join('\n') + '\n';
}

const phases = readText(join(work, 'phases.tsv')).split('\n').filter(Boolean).map((l) => {
  const [phase, status, seconds, note] = l.split('\t');
  return { phase, status, seconds: Number(seconds), note };
});
const probe = readJson(join(work, 'json', 'probe.json'));
const compile = readJson(join(work, 'json', 'compile.json'));
const torch = readJson(join(work, 'json', 'torch_ref.json'));
const reportsDir = join(work, 'reports');
const reports = existsSync(reportsDir)
  ? readdirSync(reportsDir).filter((f) => f.endsWith('.json')).sort().map((f) => readJson(join(reportsDir, f)) ?? { file: f, errors: ['unreadable report'] })
  : [];
const benchNames = phases.filter((p) => p.phase.startsWith('bench-')).map((p) => p.phase.slice('bench-'.length));
const benches = Object.fromEntries(benchNames.map((name) => {
  const log = readText(join(work, 'logs', `bench-${name}.log`));
  // The bench's own tables (markdown rows), else its last lines.
  const tableLines = log.split('\n').filter((l) => l.startsWith('|'));
  return [name, { json: readJson(join(work, 'json', `bench-${name}.json`)), tables: tableLines, tail: log.split('\n').slice(-15).join('\n') }];
}));

const md = [];
md.push(`# Kiln on the GPU machine — ${new Date().toISOString()}\n\n`);
md.push(probe?.ok ? `Device: ${probe.description}\n\n` : `CUDA: not available${probe?.reason ? ` — ${probe.reason}` : ''}\n\n`);
md.push('## Phases\n\n', table(phases));

const totals = reports.reduce((a, r) => ({
  passed: a.passed + (r.passed ?? 0), failed: a.failed + (r.failed ?? 0), skipped: a.skipped + (r.skipped ?? 0), errors: a.errors + (r.errors?.length ?? 0),
}), { passed: 0, failed: 0, skipped: 0, errors: 0 });
if (reports.length) {
  md.push(`\n## Conformance (KILN_BACKENDS=${process.env.KILN_GPU_BACKENDS ?? 'cuda'}): ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped, ${totals.errors} errors\n\n`);
  md.push(table(reports.map((r) => ({ file: r.file, passed: r.passed, failed: r.failed, skipped: r.skipped, errors: r.errors?.length ?? 0, seconds: r.ms === undefined ? (r.timedOut ? `killed at ${r.limit}` : '') : (r.ms / 1000).toFixed(1) }))));
  const failures = reports.flatMap((r) => [
    ...(r.tests ?? []).filter((t) => t.state === 'fail').map((t) => `- ${r.file}: ${t.name}\n  ${(t.error ?? '').split('\n')[0]}`),
    ...(r.errors ?? []).map((e) => `- ${r.file}: ${e.split('\n')[0]}`),
  ]);
  if (failures.length) md.push(`\nFailures (${failures.length}${failures.length > 25 ? ', first 25' : ''}):\n\n`, failures.slice(0, 25).join('\n'), '\n');
  const skippedNotes = [...new Set(reports.flatMap((r) => (r.tests ?? []).filter((t) => t.state === 'skip' && t.note).map((t) => t.note === 'suite skipped' ? t.name : `${t.name} [${t.note}]`)))];
  if (skippedNotes.length) md.push(`\nSkipped with a reason (${skippedNotes.length}${skippedNotes.length > 10 ? ', first 10' : ''}):\n\n`, skippedNotes.slice(0, 10).map((s) => `- ${s}`).join('\n'), '\n');
}

if (compile?.kernels) {
  const k = compile.kernels;
  const compiled = k.filter((r) => r.compileMs !== undefined);
  const failed = k.filter((r) => r.error);
  const local = compiled.filter((r) => r.localBytes);
  md.push(`\n## Kernels: ${k.length} emitted, ${compiled.length} compiled and loaded, ${failed.length} failed, ${local.length} using local memory` +
    (compiled.length ? `, registers up to ${Math.max(...compiled.map((r) => r.registers))}, ${(compiled.reduce((a, r) => a + r.compileMs, 0) / 1000).toFixed(1)} s compiling` : '') + '\n\n');
  const notable = [...failed, ...local.filter((r) => !r.error)];
  if (notable.length) {
    md.push(table(notable.slice(0, 20).map((r) => ({ kernel: r.label, registers: r.registers, localBytes: r.localBytes, sharedBytes: r.sharedBytes, error: r.error?.split('\n')[0] }))));
    if (notable.length > 20) md.push(`… and ${notable.length - 20} more in results.json\n`);
  }
}

// What the console shows last (the reply keeps only the output's tail): everything above, plus
// the ceilings; the bench and torch tables are in summary.md.
const short = [...md];
if (torch) {
  const copy = torch.copy?.[0];
  const mm = (torch.matmul ?? []).filter((r) => r.TFLOPs).map((r) => `${r.dtype} ${r.TFLOPs} TFLOP/s`).join(', ');
  short.push(`\nCeilings (torch): copy ${copy?.GBps ?? '?'} GB/s; 8192³ matmul ${mm || '?'}\n`);
}
const benchesShown = Object.entries(benches).filter(([, b]) => b.tables.length || b.tail.trim()).map(([n]) => n);
short.push(`\nFull tables (${[torch ? 'torch' : '', ...benchesShown.map((n) => `bench ${n}`)].filter(Boolean).join(', ') || 'none'}) in $OUT/summary.md; data in results.json, logs in logs.tar.gz.\n`);

if (torch) {
  md.push(`\n## PyTorch references (${cellText(torch.env?.device)}, torch ${cellText(torch.env?.torch)}, CUDA ${cellText(torch.env?.cuda)})\n\n`);
  md.push(`${torch.method ?? ''}\n`);
  for (const [section, title] of [['copy', 'Copy bandwidth'], ['matmul', 'cuBLAS matmul'], ['int4', '_weight_int4pack_mm (W4A16, g128)'], ['linear_fp16', 'fp16 F.linear (cuBLAS) on the INT4 shapes'], ['sdpa', 'scaled_dot_product_attention (fp16, GQA 4:1, d=128)']]) {
    if (torch[section]) md.push(`\n### ${title}\n\n`, table(torch[section]));
  }
  if (torch.errors) md.push('\nSections that failed: ', Object.keys(torch.errors).join(', '), '\n');
}

for (const [name, b] of Object.entries(benches)) {
  if (!b.tables.length && !b.tail.trim()) continue;
  md.push(`\n## bench ${name}\n\n`, b.tables.length ? `${b.tables.join('\n')}\n` : `\`\`\`\n${b.tail}\n\`\`\`\n`);
}

writeFileSync(join(out, 'summary.md'), md.join(''));
writeFileSync(join(work, 'summary-short.md'), short.join(''));
writeFileSync(join(out, 'results.json'), JSON.stringify({
  created: new Date().toISOString(), manifest: readJson(join(process.cwd(), '.devkit', 'gpu', 'manifest.json')),
  phases, probe, conformance: { totals, files: reports }, compile, torch, benches,
}, null, 1));
console.log(short.join(''));
