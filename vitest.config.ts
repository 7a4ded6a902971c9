import { configDefaults, defineConfig } from 'vitest/config';
import { BaseSequencer } from 'vitest/node';
import type { TestSpecification } from 'vitest/node';
import { fileURLToPath } from 'node:url';

const src = (p: string) => fileURLToPath(new URL(p, import.meta.url));

// Unit tests import packages from source; integration tests run the built CLI.
const alias = {
  // Before '@ferry/coordinator', which would take it as a prefix.
  '@ferry/coordinator/early': src('./packages/coordinator/src/early.ts'),
  '@ferry/agent/nats': src('./packages/agent/src/nats.ts'),
  '@ferry/core': src('./packages/core/src/index.ts'),
  '@ferry/transport': src('./packages/transport/src/index.ts'),
  '@ferry/serve': src('./packages/serve/src/index.ts'),
  '@ferry/agent': src('./packages/agent/src/index.ts'),
  '@ferry/coordinator': src('./packages/coordinator/src/index.ts'),
  '@ferry/launcher': src('./launcher/src/index.ts'),
};

/**
 * Integration tests start sshd and nats-server processes; on 2 cores they must not all
 * run at once. Two lanes: every file of the `serial` project runs alone in its lane, one
 * after the other, as all files did before; the few slow files below, which spend their
 * time waiting (copies held to --limit-rate so that a fault lands mid-transfer, resumes
 * after it), run one at a time in the `alongside` lane, next to the serial lane's file.
 *
 * Why these may overlap with any other file: each starts its own sshd on a free port
 * (faults' second host listens on 127.0.0.2, which no other file uses) and its own
 * nats-servers, works in a temp directory of its own (mounts included: faults' small
 * filesystem is mounted there), kills processes only by pid or under that directory
 * (killStrays), and looks for processes only below its own sshd or ferry. No other file
 * kills by name or counts this checkout's processes but its own (cp's warm-agent check
 * looks for its own run's agents). None creates users, netns or Slurm clusters.
 *
 * vitest 4 runs every file of a project with maxWorkers 1 in one group, one file at a
 * time across all projects, and refuses projects of the same group with different
 * maxWorkers; so the lanes are locks (test/lane-setup.ts, served by test/global-setup.mjs)
 * and the pool gets a worker per alongside file plus one: the alongside files go first
 * (AlongsideFirst), take a worker each and wait there for their lane, and one worker is
 * left to take the serial files in turn.
 */
const ALONGSIDE = ['test/faults.test.ts', 'test/lifetime.test.ts', 'test/temp-files.test.ts'];
const WORKERS = ALONGSIDE.length + 1;

class AlongsideFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const alongside = (f: TestSpecification) => f.project.name === 'alongside';
    return [...sorted.filter(alongside), ...sorted.filter((f) => !alongside(f))];
  }
}

const lane = (name: 'serial' | 'alongside', include: string[], exclude: string[] = []) => ({
  resolve: { alias },
  test: {
    name,
    include,
    exclude: [...configDefaults.exclude, ...exclude],
    setupFiles: ['test/lane-setup.ts'],
    provide: { lane: name },
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks' as const,
    maxWorkers: WORKERS,
  },
});

export default defineConfig({
  resolve: { alias },
  test: {
    globalSetup: ['test/global-setup.mjs'],
    maxWorkers: WORKERS,
    sequence: { sequencer: AlongsideFirst },
    projects: [
      lane('serial', ['packages/*/test/**/*.test.ts', 'launcher/test/**/*.test.ts', 'test/**/*.test.ts'], ALONGSIDE),
      lane('alongside', ALONGSIDE),
    ],
  },
});
