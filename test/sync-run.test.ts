/**
 * `ferry run --sync` under a real mpirun on this host (issue 32): rank 0
 * compares and deletes, both ranks' agents send what differs. A first run
 * copies the tree, a rerun moves nothing, a change goes alone; --delete
 * deletes nothing after a failed entry and the extras once every entry
 * arrived (and what the failed run sent keeps its hash in the job's
 * manifest); `ferry verify JOB` checks the destination afterwards.
 */
import { spawn } from 'node:child_process';
import { appendFile, link, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { listAll, on, treeArgs } from './tree-helpers.js';
import { CLI, REMOTE_CMD, killStrays, makeRandomFile, parseEvents, runFerry, tempDir } from './helpers.js';
import type { FerryEvent, RunResult } from './helpers.js';

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-sync-run-');
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

/** `mpirun -np 2 ferry run --sync ARGS`: both ranks' output, mpirun's exit code. Killed (with its ranks) after 3 minutes. */
function mpirunSync(args: string[]): Promise<RunResult> {
  const env = { ...process.env, OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' };
  const child = spawn('mpirun', ['--oversubscribe', '-np', '2', process.execPath, CLI, 'run', '--sync', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Events of rank 0 (mpirun passes each rank's lines through whole). */
function eventsOf(r: RunResult): FerryEvent[] {
  return parseEvents(r.stdout.split('\n').filter((l) => l.startsWith('{')).join('\n'));
}

type Done = { jobId: string; files: number; bytes: number; hardlinks: number; unchanged: number; deleted: number; failed: number };

function doneOf(r: RunResult): Done {
  const done = eventsOf(r).find((e) => e.type === 'tree.done');
  expect(done, r.stdout + r.stderr).toBeDefined();
  return done as unknown as Done;
}

/** Content and mode of each entry under `root`: what a sync makes equal. */
async function content(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const p of (await listAll(root)).sort()) {
    const st = await stat(join(root, p));
    out[p] = `${(st.mode & 0o7777).toString(8)} ${st.isDirectory() ? 'dir' : (await readFile(join(root, p))).toString('base64')}`;
  }
  return out;
}

describe('ferry run --sync under mpirun', () => {
  it('copies a tree over both ranks, a rerun moves nothing, a change goes alone, --delete waits for a complete run, and verify JOB passes', async () => {
    const src = join(work.path, 'src');
    const dst = join(work.path, 'dst');
    const state = join(work.path, 'state');
    await mkdir(join(src, 'sub', 'deep'), { recursive: true });
    for (let i = 0; i < 40; i++) await writeFile(join(src, 'sub', `f${i}.txt`), `file ${i}\n`.repeat(200));
    await writeFile(join(src, 'a.txt'), 'alpha\n');
    await writeFile(join(src, 'sub', 'deep', 'c.bin'), Buffer.alloc(70_000, 7));
    await symlink('a.txt', join(src, 'link'));
    await link(join(src, 'a.txt'), join(src, 'sub', 'a-again.txt'));
    // Big enough to be striped as a job of its own (2 MiB and over here).
    await makeRandomFile(join(src, 'big.bin'), 3 * 1024 * 1024);
    // Small batches (8 KiB): many of them, so that both ranks' agents take some.
    const args = (...extra: string[]) => [...treeArgs(sshd, state, ['--remote-cmd', REMOTE_CMD, '--batch-size', '8KiB', '--nats-listen', '127.0.0.1', '--exit-code', ...extra]), src, on(sshd, dst)];

    const first = await mpirunSync(args());
    expect(first.code, first.stderr).toBe(3);
    expect(await content(dst)).toEqual(await content(src));
    expect((await stat(join(dst, 'a.txt'))).ino).toBe((await stat(join(dst, 'sub', 'a-again.txt'))).ino);
    const agents = eventsOf(first).filter((e) => e.type === 'agent.start').map((e) => String(e.agent));
    expect(agents.some((a) => a.endsWith('-r1')), agents.join(' ')).toBe(true);
    expect(doneOf(first)).toMatchObject({ failed: 0 });

    const again = await mpirunSync(args());
    expect(again.code, again.stderr).toBe(0);
    expect(doneOf(again)).toMatchObject({ files: 0, bytes: 0, hardlinks: 0, deleted: 0, failed: 0 });
    expect(eventsOf(again).find((e) => e.type === 'sync.done')).toMatchObject({ changed: false });

    // A change, an extra at the destination, and an entry that cannot be synced (a directory
    // where the source has a file): the change goes, --delete deletes nothing.
    await appendFile(join(src, 'sub', 'f3.txt'), 'more\n');
    await writeFile(join(dst, 'extra.txt'), 'extra');
    await rm(join(dst, 'sub', 'f7.txt'));
    await mkdir(join(dst, 'sub', 'f7.txt'));
    const failed = await mpirunSync(args('--delete'));
    expect(failed.code, failed.stderr).toBe(72);
    expect(failed.stdout).toMatch(/--delete: nothing deleted/);
    expect(doneOf(failed)).toMatchObject({ failed: 1, deleted: 0 });
    expect(await readFile(join(dst, 'extra.txt'), 'utf8')).toBe('extra');
    expect(await readFile(join(dst, 'sub', 'f3.txt'), 'utf8')).toBe(await readFile(join(src, 'sub', 'f3.txt'), 'utf8'));

    // Out of the way: the next run completes, sends that one file, and deletes the extra.
    await rm(join(dst, 'sub', 'f7.txt'), { recursive: true });
    const fixed = await mpirunSync(args('--delete'));
    expect(fixed.code, fixed.stderr).toBe(3);
    expect(doneOf(fixed)).toMatchObject({ files: 1, deleted: 1, failed: 0 });
    expect(await content(dst)).toEqual(await content(src));

    const verified = await runFerry(['verify', doneOf(fixed).jobId, '--state-dir', state, '--json']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    expect(parseEvents(verified.stdout).find((e) => e.type === 'verify.done')).toMatchObject({ bad: 0 });
  });
});
