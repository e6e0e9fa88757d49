// `npx vitest run --config test/measure/vitest.config.ts test/kernels/x.test.ts` with
// KILN_TOLERANCE_LOG=/tmp/tol.jsonl: the normal suite, logging every measured error against its bound
// (see tolerance-log.ts); `node scripts/tolerances.mjs /tmp/tol.jsonl` summarises the log per site.
import { defineConfig, mergeConfig } from 'vitest/config';
import base from '../../vitest.config.js';

export default mergeConfig(base, defineConfig({ test: { setupFiles: ['test/measure/tolerance-log.ts'] } }));
