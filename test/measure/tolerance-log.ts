// Setup file for re-deriving test tolerances (test/measure/vitest.config.ts): every
// toBeLessThan / toBeLessThanOrEqual with a numeric bound is also appended to $KILN_TOLERANCE_LOG
// as one JSON line — test name (with its backend), the calling line, the value and the bound.
// The assertions themselves are unchanged.
import { appendFileSync } from 'node:fs';
import { expect } from 'vitest';

const log = process.env.KILN_TOLERANCE_LOG ?? 'tolerances.jsonl';

function site(): string {
  const frames = (new Error().stack ?? '').split('\n').slice(1);
  const f = frames.find((l) => /\.test\.ts:\d+/.test(l)) ?? '';
  return f.match(/([\w.-]+\.test\.ts:\d+)/)?.[1] ?? '?';
}

function record(received: unknown, bound: unknown, strict: boolean) {
  if (typeof received === 'number' && typeof bound === 'number') {
    appendFileSync(log, `${JSON.stringify({ test: expect.getState().currentTestName, site: site(), value: received, bound })}\n`);
  }
  const pass = typeof received === 'number' && typeof bound === 'number' && (strict ? received < bound : received <= bound);
  return { pass, message: () => `expected ${String(received)} to be ${strict ? 'less than' : 'at most'} ${String(bound)}` };
}

expect.extend({
  toBeLessThan(received: unknown, bound: unknown) { return record(received, bound, true); },
  toBeLessThanOrEqual(received: unknown, bound: unknown) { return record(received, bound, false); },
});
