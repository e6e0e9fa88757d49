// A stand-in for the 'vitest' module inside the GPU machine's test bundles (bench/gpu/bundle.mjs
// aliases 'vitest' to this file). That machine has Node but no node_modules, and vitest itself
// (vite, rolldown, native binaries) is too heavy to carry; the test files run unchanged on this
// runner instead. `expect` is vitest's own (@vitest/expect on chai, bundled in), so matchers,
// asymmetric matchers and messages behave as under vitest. Collection, hooks, timeouts, `.each`,
// `.skip`, `.skipIf` and `.runIf` follow vitest; files run one per process, tests in order.
import { writeFileSync } from 'node:fs';
import {
  ASYMMETRIC_MATCHERS_OBJECT, chai, GLOBAL_EXPECT, JestAsymmetricMatchers, JestChaiExpect, JestExtend, getState, setState,
} from '@vitest/expect';

chai.use(JestExtend);
chai.use(JestChaiExpect);
chai.use(JestAsymmetricMatchers);

type AnyFn = (...args: any[]) => unknown;

/** vitest's expect without a current-test binding: chai's expect plus the asymmetric matchers. */
function createExpect(): any {
  const expect: any = (value: unknown, message?: string) => {
    const { assertionCalls } = getState(expect);
    setState({ assertionCalls: assertionCalls + 1 }, expect);
    return chai.expect(value, message);
  };
  Object.assign(expect, chai.expect);
  Object.assign(expect, (globalThis as any)[ASYMMETRIC_MATCHERS_OBJECT]);
  expect.getState = () => getState(expect);
  expect.setState = (state: object) => setState(state, expect);
  setState({ assertionCalls: 0, isExpectingAssertions: false, expectedAssertionsNumber: null, currentTestName: '' }, expect);
  expect.extend = (matchers: object) => (chai.expect as any).extend(expect, matchers);
  expect.soft = (...args: [unknown, string?]) => expect(...args).withContext({ soft: true });
  expect.unreachable = (message?: string) => chai.assert.fail(`expected${message ? ` "${message}" ` : ' '}not to be reached`);
  expect.assert = chai.assert;
  return expect;
}

export const expect = createExpect();
Object.defineProperty(globalThis, GLOBAL_EXPECT, { value: expect, writable: true, configurable: true });

// ---- collection ----------------------------------------------------------------------------

const DEFAULT_TIMEOUT_MS = Number(process.env.KILN_TEST_TIMEOUT_MS ?? 120_000); // vitest.config.ts
type Mode = 'run' | 'skip' | 'todo';
interface Test { kind: 'test'; name: string; fn?: AnyFn; timeout: number; mode: Mode; fails: boolean; skipReason?: string }
interface Suite {
  kind: 'suite'; name: string; mode: Mode; children: (Suite | Test)[];
  beforeAll: [AnyFn, number][]; afterAll: [AnyFn, number][]; beforeEach: [AnyFn, number][]; afterEach: [AnyFn, number][];
}
const newSuite = (name: string, mode: Mode): Suite => ({ kind: 'suite', name, mode, children: [], beforeAll: [], afterAll: [], beforeEach: [], afterEach: [] });
const root = newSuite('', 'run');
let current = root;
const pendingCollections: Promise<unknown>[] = [];

function timeoutOf(t: unknown): number {
  if (typeof t === 'number') return t;
  if (t && typeof t === 'object' && typeof (t as { timeout?: unknown }).timeout === 'number') return (t as { timeout: number }).timeout;
  return DEFAULT_TIMEOUT_MS;
}

/** vitest's `.each` titles: printf-style %s %d %i %f %j %o %O %# %%, and $name for object rows. */
function formatTitle(title: string, row: unknown, index: number): string {
  const args = Array.isArray(row) ? [...row] : [row];
  let out = title.replace(/%[sdifjoO#%]/g, (m) => {
    if (m === '%%') return '%';
    if (m === '%#') return String(index);
    const v = args.shift();
    if (m === '%s') return typeof v === 'string' ? v : String(v);
    if (m === '%d' || m === '%i') return String(Math.trunc(Number(v)));
    if (m === '%f') return String(Number(v));
    return JSON.stringify(v);
  });
  if (row && typeof row === 'object' && !Array.isArray(row)) {
    out = out.replace(/\$([A-Za-z_][\w.]*)/g, (m, path: string) => {
      let v: any = row;
      for (const key of path.split('.')) v = v?.[key];
      return v === undefined ? m : typeof v === 'string' ? v : JSON.stringify(v);
    });
  }
  return out;
}
const spread = (row: unknown): unknown[] => (Array.isArray(row) ? row : [row]);

function addTest(name: string, fn: AnyFn | undefined, timeout: unknown, mode: Mode, fails = false): void {
  current.children.push({ kind: 'test', name, fn, timeout: timeoutOf(timeout), mode: fn ? mode : 'todo', fails });
}

function addSuite(name: string, fn: AnyFn | undefined, mode: Mode): void {
  const suite = newSuite(name, current.mode === 'run' ? mode : current.mode);
  current.children.push(suite);
  if (!fn) return;
  const parent = current;
  current = suite;
  try {
    const r = fn();
    if (r instanceof Promise) pendingCollections.push(r.finally(() => { current = parent; }));
  } finally {
    current = parent;
  }
}

interface TestApi {
  (name: string, fn?: AnyFn, timeout?: number | { timeout?: number }): void;
  skip: TestApi; only: TestApi; todo: TestApi; concurrent: TestApi; sequential: TestApi; fails: TestApi;
  skipIf(cond: unknown): TestApi; runIf(cond: unknown): TestApi;
  each(rows: readonly unknown[]): (name: string, fn: AnyFn, timeout?: number) => void;
}
function makeTest(mode: Mode, fails = false): TestApi {
  const t = ((name: string, fn?: AnyFn, timeout?: unknown) => {
    // it(name, options, fn) is also vitest syntax.
    if (typeof fn !== 'function' && typeof timeout === 'function') [fn, timeout] = [timeout as AnyFn, fn];
    addTest(name, fn, timeout, mode, fails);
  }) as TestApi;
  Object.defineProperties(t, {
    skip: { get: () => makeTest('skip', fails) },
    only: { get: () => makeTest(mode, fails) },
    todo: { get: () => makeTest('todo', fails) },
    concurrent: { get: () => makeTest(mode, fails) },
    sequential: { get: () => makeTest(mode, fails) },
    fails: { get: () => makeTest(mode, true) },
  });
  t.skipIf = (cond) => makeTest(cond ? 'skip' : mode, fails);
  t.runIf = (cond) => makeTest(cond ? mode : 'skip', fails);
  t.each = (rows) => (name, fn, timeout) => {
    rows.forEach((row, i) => addTest(formatTitle(name, row, i), () => fn(...spread(row)), timeout, mode, fails));
  };
  return t;
}

interface SuiteApi {
  (name: string, fn?: AnyFn): void;
  skip: SuiteApi; only: SuiteApi; todo: SuiteApi; concurrent: SuiteApi; sequential: SuiteApi;
  skipIf(cond: unknown): SuiteApi; runIf(cond: unknown): SuiteApi;
  each(rows: readonly unknown[]): (name: string, fn: AnyFn) => void;
}
function makeSuite(mode: Mode): SuiteApi {
  const d = ((name: string, fn?: AnyFn) => addSuite(name, fn, mode)) as SuiteApi;
  Object.defineProperties(d, {
    skip: { get: () => makeSuite('skip') },
    only: { get: () => makeSuite(mode) },
    todo: { get: () => makeSuite('todo') },
    concurrent: { get: () => makeSuite(mode) },
    sequential: { get: () => makeSuite(mode) },
  });
  d.skipIf = (cond) => makeSuite(cond ? 'skip' : mode);
  d.runIf = (cond) => makeSuite(cond ? mode : 'skip');
  d.each = (rows) => (name, fn) => rows.forEach((row, i) => addSuite(formatTitle(name, row, i), () => fn(...spread(row)), mode));
  return d;
}

export const it = makeTest('run');
export const test = it;
export const describe = makeSuite('run');
export const suite = describe;
export const beforeAll = (fn: AnyFn, timeout?: number) => { current.beforeAll.push([fn, timeout ?? DEFAULT_TIMEOUT_MS]); };
export const afterAll = (fn: AnyFn, timeout?: number) => { current.afterAll.push([fn, timeout ?? DEFAULT_TIMEOUT_MS]); };
export const beforeEach = (fn: AnyFn, timeout?: number) => { current.beforeEach.push([fn, timeout ?? DEFAULT_TIMEOUT_MS]); };
export const afterEach = (fn: AnyFn, timeout?: number) => { current.afterEach.push([fn, timeout ?? DEFAULT_TIMEOUT_MS]); };

// ---- running -------------------------------------------------------------------------------

export interface TestResult { name: string; state: 'pass' | 'fail' | 'skip' | 'todo'; ms: number; error?: string; note?: string }

/** Runs fn with a time limit; a synchronous hang cannot be interrupted (run.sh's per-file timeout covers that). */
async function withTimeout(fn: AnyFn, ms: number, what: string, context?: unknown): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([Promise.resolve().then(() => fn(context)), limit]);
  } finally {
    clearTimeout(timer);
  }
}

function describeError(e: unknown): string {
  if (e instanceof Error) return e.stack ?? `${e.name}: ${e.message}`;
  return String(e);
}

class SkipSignal extends Error {}

/** `KILN_TEST_SKIP`: a regular expression on full test names, for tests that cannot run here
 *  (with `KILN_TEST_SKIP_REASON` saying why); they are reported as skipped, never as passed. */
const skipPattern = process.env.KILN_TEST_SKIP ? new RegExp(process.env.KILN_TEST_SKIP) : undefined;
const skipReason = process.env.KILN_TEST_SKIP_REASON ?? 'skipped by KILN_TEST_SKIP';

async function runSuite(s: Suite, path: string[], eachHooks: { before: [AnyFn, number][]; after: [AnyFn, number][] }, out: TestResult[]): Promise<void> {
  const names = s.name ? [...path, s.name] : path;
  const tests = (x: Suite): Test[] => x.children.flatMap((c) => (c.kind === 'test' ? [c] : tests(c)));
  const runnable = s.mode === 'run' && tests(s).some((t) => t.mode === 'run');
  if (!runnable) {
    const walk = (x: Suite, p: string[]) => {
      // An empty skipped suite is how test/backends.ts reports a missing backend: keep its title.
      if (!tests(x).length && x.name && x.mode !== 'run') out.push(print({ name: p.join(' > '), state: 'skip', ms: 0, note: 'suite skipped' }));
      for (const c of x.children) {
        if (c.kind === 'suite') walk(c, [...p, c.name]);
        else out.push(print({ name: [...p, c.name].join(' > '), state: c.mode === 'todo' ? 'todo' : 'skip', ms: 0 }));
      }
    };
    walk(s, names);
    return;
  }
  let setupError: unknown;
  for (const [fn, ms] of s.beforeAll) {
    try { await withTimeout(fn, ms, `beforeAll in '${names.join(' > ')}'`); } catch (e) { setupError = e; break; }
  }
  const hooks = { before: [...eachHooks.before, ...s.beforeEach], after: [...s.afterEach, ...eachHooks.after] };
  for (const c of s.children) {
    if (c.kind === 'suite') {
      if (setupError === undefined) await runSuite(c, names, hooks, out);
      else for (const t of tests(c)) out.push(print({ name: [...names, c.name, t.name].join(' > '), state: 'fail', ms: 0, error: `beforeAll failed: ${describeError(setupError)}` }));
      continue;
    }
    const name = [...names, c.name].join(' > ');
    if (c.mode !== 'run' || !c.fn) { out.push(print({ name, state: c.mode === 'todo' ? 'todo' : 'skip', ms: 0 })); continue; }
    if (skipPattern?.test(name)) { out.push(print({ name, state: 'skip', ms: 0, note: skipReason })); continue; }
    if (setupError !== undefined) { out.push(print({ name, state: 'fail', ms: 0, error: `beforeAll failed: ${describeError(setupError)}` })); continue; }
    out.push(print(await runTest(c, name, hooks)));
  }
  for (const [fn, ms] of s.afterAll) {
    try { await withTimeout(fn, ms, `afterAll in '${names.join(' > ')}'`); } catch (e) {
      out.push(print({ name: `${names.join(' > ')} (afterAll)`, state: 'fail', ms: 0, error: describeError(e) }));
    }
  }
}

async function runTest(t: Test, name: string, hooks: { before: [AnyFn, number][]; after: [AnyFn, number][] }): Promise<TestResult> {
  const started = performance.now();
  let skipped: string | undefined;
  const context = { task: { name }, skip: (note?: string) => { skipped = note ?? 'skipped by the test'; throw new SkipSignal(skipped); }, expect };
  expect.setState({ assertionCalls: 0, currentTestName: name });
  let error: unknown;
  try {
    for (const [fn, ms] of hooks.before) await withTimeout(fn, ms, `beforeEach of '${name}'`, context);
    await withTimeout(t.fn!, t.timeout, `test '${name}'`, context);
  } catch (e) {
    if (!(e instanceof SkipSignal)) error = e;
  }
  for (const [fn, ms] of hooks.after) {
    try { await withTimeout(fn, ms, `afterEach of '${name}'`, context); } catch (e) { error ??= e; }
  }
  const ms = performance.now() - started;
  if (skipped !== undefined && error === undefined) return { name, state: 'skip', ms, note: skipped };
  if (t.fails) return error === undefined ? { name, state: 'fail', ms, error: 'expected to fail (it.fails), but passed' } : { name, state: 'pass', ms };
  return error === undefined ? { name, state: 'pass', ms } : { name, state: 'fail', ms, error: describeError(error) };
}

function print(r: TestResult): TestResult {
  const mark = { pass: '✓', fail: '✗', skip: '↓', todo: '·' }[r.state];
  const time = r.state === 'pass' || r.state === 'fail' ? ` ${r.ms.toFixed(0)}ms` : '';
  console.log(`  ${mark} ${r.name}${time}${r.note ? ` [${r.note}]` : ''}`);
  if (r.error) console.log(r.error.split('\n').map((l) => `      ${l}`).join('\n'));
  return r;
}

/** Runs everything collected so far, prints vitest-like lines, writes $KILN_TEST_REPORT (JSON)
 *  and exits: 1 when any test failed or an error escaped, else 0. */
export async function runCollected(file: string): Promise<never> {
  const escaped: string[] = [];
  process.on('unhandledRejection', (e) => { escaped.push(`unhandled rejection: ${describeError(e)}`); });
  process.on('uncaughtException', (e) => { escaped.push(`uncaught exception: ${describeError(e)}`); });
  const started = performance.now();
  const results: TestResult[] = [];
  console.log(`\n ${file}`);
  try {
    await Promise.all(pendingCollections);
    await runSuite(root, [], { before: [], after: [] }, results);
  } catch (e) {
    escaped.push(`runner error: ${describeError(e)}`);
  }
  const count = (s: TestResult['state']) => results.filter((r) => r.state === s).length;
  const summary = {
    file, passed: count('pass'), failed: count('fail'), skipped: count('skip') + count('todo'),
    errors: escaped, ms: Math.round(performance.now() - started), tests: results,
  };
  for (const e of escaped) console.log(`  ✗ ${e}`);
  console.log(` ${file}: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped` +
    `${escaped.length ? `, ${escaped.length} errors` : ''} (${(summary.ms / 1000).toFixed(1)} s)`);
  if (process.env.KILN_TEST_REPORT) writeFileSync(process.env.KILN_TEST_REPORT, JSON.stringify(summary, null, 1));
  // Devices cached by test/backends.ts (worker pools, CUDA contexts) would keep the process alive.
  process.exit(summary.failed || escaped.length ? 1 : 0);
}
