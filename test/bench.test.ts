/**
 * The benchmark harness's own pieces that a benchmark run cannot check for
 * itself: each scenario's --help is what bench/README.md documents, and
 * first-contact's remote host really lacks node while its user's tools find
 * the host by its ssh_config alias. No benchmark runs here.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { sshUserHome, withoutNode } from '../bench/common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCENARIOS = ['loopback', 'first-contact', 'wan', 'nodes', 'coordinator', 'hash', 'tree', 'sync', 'check', 'delta'];

describe('npm run bench -- <scenario> --help', () => {
  const readme = readFileSync(join(ROOT, 'bench', 'README.md'), 'utf8');

  it('lists every scenario, each with its own section in bench/README.md', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'bench', 'run.mjs'), '--help'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`scenarios: ${SCENARIOS.join(', ')}`);
    for (const s of SCENARIOS) expect(readme).toContain(`\n## ${s}\n`);
  });

  it.each(SCENARIOS)('%s: every option of its --help is in its section of bench/README.md', (scenario) => {
    const r = spawnSync(process.execPath, [join(ROOT, 'bench', 'run.mjs'), scenario, '--help'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const options = [...r.stdout.matchAll(/^ {2}(--[a-z-]+)/gm)].map((m) => m[1]!);
    expect(options.length).toBeGreaterThan(3);
    const start = readme.indexOf(`\n## ${scenario}\n`);
    const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
    expect(options.filter((o) => !section.includes(`\`${o}`))).toEqual([]);
  });
});

describe("first-contact's remote host and user", () => {
  let work: string;
  let sshd: Sshd;
  let user: { home: string; env: Record<string, string>; wrap: string[]; stop(): void };
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'ferry-bench-test-'));
    sshd = await startSshd({ dir: join(work, 'sshd'), wrap: (await withoutNode(work)).wrap });
    user = await sshUserHome(work, sshd, 'mydtn');
  });
  afterAll(async () => {
    user?.stop();
    await sshd?.stop();
    await rm(work, { recursive: true, force: true });
  });

  const asUser = (argv: string[]) => spawnSync(user.wrap[0]!, [...user.wrap.slice(1), ...argv], { env: user.env, encoding: 'utf8', timeout: 30_000 });

  it('reaches the host as `ssh mydtn`, and its sessions find no node', () => {
    const r = asUser(['ssh', 'mydtn', 'node --version; echo "exit $?"; echo "$(whoami)@$(hostname)"']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^exit 127$/m);
    expect(r.stderr).toContain('node: command not found');
    // The rest of the machine keeps its node.
    expect(spawnSync(process.execPath, ['--version'], { encoding: 'utf8' }).status).toBe(0);
  });

  it('gives OpenSSH and Node the same home, and leaves the real one alone', () => {
    const ssh = asUser(['ssh', '-G', 'mydtn']);
    expect(ssh.stdout).toMatch(new RegExp(`^port ${sshd.port}$`, 'm'));
    expect(ssh.stdout).toMatch(/^hostname 127\.0\.0\.1$/m);
    const node = asUser([process.execPath, '-e', 'process.stdout.write(require("os").homedir())']);
    expect(node.stdout).toBe(user.home);
    expect(spawnSync('ssh', ['-G', 'mydtn'], { encoding: 'utf8' }).stdout).toMatch(/^hostname mydtn$/m);
  });
});
