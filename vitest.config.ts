import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // llvmpipe and the CPU worker pool each want the machine's cores: run files one at a time.
    fileParallelism: false,
  },
});
