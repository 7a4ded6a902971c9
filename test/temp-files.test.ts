/**
 * The temporary destination file across runs, against a real sshd: a resumed
 * job finds its random name in the job, a job an older ferry started (no
 * identity on record) starts over and removes its old partial file, and
 * --restart removes the earlier run's.
 */
import { readdir, readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { fileHash, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, startFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;
let srcHash: string;

function remote(path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

function common(state: string): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '-F', 'none', '--remote-cmd', REMOTE_CMD, '--state-dir', state, '--range-size', '1MiB', '--json'];
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-temp-');
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, 40 * MiB);
  srcHash = await fileHash(src);
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

const parts = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith('.part'));

describe.each(['push', 'pull'] as const)('the temporary file of a %s', (direction) => {
  /**
   * An interrupted copy into `dir`: its job directory and its partial file's name. It is
   * interrupted once `durable` ranges are done (made durable every 5 s), or with none when
   * the test needs only the job and its partial file.
   */
  async function interrupted(dir: string, state: string, durable = 2): Promise<{ args: string[]; jobDir: string; part: string }> {
    const target = join(dir, 'copy.bin');
    const args = ['cp', ...(direction === 'push' ? [src, remote(target)] : [remote(src), target]), ...common(state)];
    const first = startFerry([...args, '--limit-rate', '3MB']);
    const start = await first.waitFor((e) => e.type === 'job.start');
    if (durable > 0) await first.waitFor((e) => e.type === 'range.done', durable);
    first.child.kill('SIGINT');
    expect((await first.result).code).toBe(130);
    const [part] = await parts(dir);
    expect(part).toMatch(/^\.copy\.bin\.ferry-[0-9a-f]{24}\.part$/);
    return { args, jobDir: String(start.stateDir), part: part! };
  }

  it('is found again by a rerun, which resumes into it', async () => {
    const dir = join(work.path, `resume-${direction}`);
    await mkdir(dir);
    const { args } = await interrupted(dir, join(dir, 'state'));
    const r = await runFerry(args);
    expect(r.code).toBe(0);
    const done = parseEvents(r.stdout).find((e) => e.type === 'done')!;
    expect(Number(done.resumedBytes)).toBeGreaterThan(0);
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(srcHash);
    expect(await parts(dir)).toEqual([]);
  });

  it('of a job an older ferry started (no identity on record) is not trusted: the job starts over and the old file goes', async () => {
    const dir = join(work.path, `legacy-${direction}`);
    await mkdir(dir);
    const { args, jobDir } = await interrupted(dir, join(dir, 'state'));
    const jobFile = join(jobDir, 'job.json');
    const job = JSON.parse(await readFile(jobFile, 'utf8')) as Record<string, unknown>;
    delete job.temp;
    await writeFile(jobFile, JSON.stringify(job));
    const r = await runFerry(args);
    expect(r.code).toBe(0);
    const logs = parseEvents(r.stdout).filter((e) => e.type === 'log').map((e) => String(e.message));
    expect(logs.some((m) => /not resuming job \w+: its partial file \S+ was made by an older ferry, which did not record which file it is; starting over/.test(m))).toBe(true);
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(srcHash);
    expect(await parts(dir)).toEqual([]);
  });

  it('of an earlier run is removed by --restart, which copies into a new one', async () => {
    const dir = join(work.path, `restart-${direction}`);
    await mkdir(dir);
    // --restart drops the job whatever it had done: no need to wait for durable ranges.
    const { args } = await interrupted(dir, join(dir, 'state'), 0);
    const r = await runFerry([...args, '--restart']);
    expect(r.code).toBe(0);
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(srcHash);
    expect(await parts(dir)).toEqual([]);
  });
});
