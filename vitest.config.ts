import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const src = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  resolve: {
    // Unit tests import packages from source; integration tests run the built CLI.
    alias: {
      '@ferry/coordinator/early': src('./packages/coordinator/src/early.ts'),
      '@ferry/core': src('./packages/core/src/index.ts'),
      '@ferry/transport': src('./packages/transport/src/index.ts'),
      '@ferry/serve': src('./packages/serve/src/index.ts'),
      '@ferry/agent': src('./packages/agent/src/index.ts'),
      '@ferry/coordinator': src('./packages/coordinator/src/index.ts'),
      '@ferry/launcher': src('./launcher/src/index.ts'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'launcher/test/**/*.test.ts', 'test/**/*.test.ts'],
    globalSetup: ['test/global-setup.mjs'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration tests start sshd and nats-server processes; on 2 cores they must not all run at once.
    fileParallelism: false,
    pool: 'forks',
  },
});
