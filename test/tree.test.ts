/**
 * `ferry cp -r` against a real sshd: a generated project tree (small files,
 * directories of many modes, symlinks, hard links, a sparse file, one file big
 * enough to be striped as a copy of its own) arrives identical in content,
 * type, mode, times, link targets and links, through ferry serve, the python
 * helper (no node on the remote host) and SFTP; a rerun sends nothing; a
 * changed file alone is sent again; an entry that cannot be written fails
 * alone, listed, with its own exit code.
 */
import { execFileSync } from 'node:child_process';
import { appendFile, link, mkdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { on, tempFilesUnder, treeArgs, treeWithConflict } from './tree-helpers.js';
import { killStrays, parseEvents, REMOTE_CMD, runFerry, startFerry, tempDir } from './helpers.js';
// A plain ES module of the benchmarks (no types).
import { compareTrees, generateTree } from '../bench/tree-lib.mjs';

const MiB = 1024 * 1024;

let sshd: Sshd;
let bare: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;

function common(server: Sshd, extra: string[] = []): string[] {
  return treeArgs(server, join(work.path, 'state'), extra);
}

function at(server: Sshd, path: string): string {
  return on(server, path);
}

beforeAll(async () => {
  sshd = await startSshd();
  bare = await startSshd({ without: ['node'] });
  work = await tempDir('ferry-tree-');
  src = join(work.path, 'project');
  // ~300 entries: files from a few bytes to 60 KiB (batched), a few of 100 KiB-1 MiB (a batch each), 3 MiB (striped).
  await generateTree(src, { files: 300, big: 1, bigBytes: 3 * MiB, seed: 31, medianBytes: 4096 });
  await appendFile(join(src, 'notes.txt'), 'first line\n');
}, 60_000);

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await bare?.stop();
  await work?.remove();
});

describe('ferry cp -r (push)', () => {
  it.each([
    ['helper', () => sshd, ['--remote-cmd', REMOTE_CMD]],
    // Files striped as copies of their own are tested in helper mode; here the sparse file goes in a batch (faster).
    ['python', () => bare, ['--stripe-files-over', '128MiB']],
    // SFTP stripes the 64 MiB sparse file too (over 2 MiB): its range writes skip the runs of zeros, so it arrives sparse (compareTrees' 'sparse').
    ['sftp', () => sshd, ['--mode', 'sftp']],
  ] as const)('copies the tree exactly with -p (%s mode)', async (mode, server, flags) => {
    const dst = join(work.path, `dst-${mode}`);
    await mkdir(dst);
    const r = await runFerry(['cp', '-r', '-p', ...common(server(), [...flags]), src, at(server(), dst + '/')]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const done = parseEvents(r.stdout).find((e) => e.type === 'tree.done')!;
    expect(done).toMatchObject({ mode, failed: 0, resumedFiles: 0 });
    expect(done.files as number).toBeGreaterThan(250);
    // An existing directory receives the tree under the source's name, as scp -r.
    const diff = await compareTrees(src, join(dst, 'project'));
    expect(diff.differences).toEqual({});
    expect(diff.same).toBe(true);
    // No temporary file is left anywhere.
    expect(await tempFilesUnder(join(dst, 'project'))).toEqual([]);
  }, 120_000);

  it('sends nothing again on a rerun, and a changed file alone', async () => {
    const dst = join(work.path, 'dst-rerun');
    const args = ['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), src, at(sshd, dst)];
    const first = await runFerry(args);
    expect(first.code).toBe(0);
    const firstDone = parseEvents(first.stdout).find((e) => e.type === 'tree.done')!;
    // A destination that did not exist becomes the copy itself.
    expect((await compareTrees(src, dst)).same).toBe(true);

    // ferry status knows the tree job.
    const status = await runFerry(['status', '--state-dir', join(work.path, 'state'), firstDone.jobId as string]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`job ${firstDone.jobId as string} \\(tree\\): done`));
    // ferry resume runs the same command again: nothing is left to send, the first run's directory is kept (not nested).
    const resumed = await runFerry(['resume', '--state-dir', join(work.path, 'state'), '--json', firstDone.jobId as string]);
    expect(resumed.code).toBe(0);
    expect(parseEvents(resumed.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 0, bytes: 0, resumedFiles: (firstDone.files as number) + (firstDone.symlinks as number) });

    // One small file changes (size and mtime): it alone goes again.
    const path = join(src, 'notes.txt');
    await appendFile(path, 'one more line\n');
    const t = new Date(Date.UTC(2026, 5, 1));
    await utimes(path, t, t);
    const third = await runFerry(args);
    expect(third.code).toBe(0);
    expect(parseEvents(third.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 1, bytes: 25 });
    expect((await compareTrees(src, dst)).same).toBe(true);
  }, 180_000);

  it("makes no hard link again on a rerun, whichever name the walk meets first, and links a changed file's names again", async () => {
    const tree = join(work.path, 'links-src');
    await mkdir(join(tree, 'p'), { recursive: true });
    await mkdir(join(tree, 'q'));
    // Three names of a small file, three of a big one (striped as a job of its own); `r` and `rbig`, at the root, are met first.
    await writeFile(join(tree, 'r'), 'one file, three names\n');
    await writeFile(join(tree, 'rbig'), Buffer.alloc(3 * MiB, 5));
    for (const [first, name] of [['r', 'p/f'], ['r', 'q/f'], ['rbig', 'p/big'], ['rbig', 'q/big']] as const) await link(join(tree, first), join(tree, name));
    const dst = join(work.path, 'dst-links');
    const args = ['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), tree, at(sshd, dst)];
    const done = (r: { stdout: string }) => parseEvents(r.stdout).find((e) => e.type === 'tree.done')!;
    const inode = async (p: string) => (await stat(join(dst, p))).ino;
    const first = await runFerry(args);
    expect(first.code, first.stderr).toBe(0);
    expect(done(first)).toMatchObject({ files: 2, hardlinks: 4, failed: 0 });

    // Nothing changed: no byte, no file, no link.
    const again = await runFerry(args);
    expect(again.code, again.stderr).toBe(0);
    expect(done(again)).toMatchObject({ files: 0, bytes: 0, hardlinks: 0, resumedFiles: 2 });
    expect(parseEvents(again.stdout).filter((e) => e.type === 'job.start')).toEqual([]);

    // The root names go: the walk now meets p/f and p/big first, names that earlier runs made as links.
    await rm(join(tree, 'r'));
    await rm(join(tree, 'rbig'));
    const moved = await runFerry(args);
    expect(moved.code, moved.stderr).toBe(0);
    expect(done(moved)).toMatchObject({ files: 0, bytes: 0, hardlinks: 0, resumedFiles: 2 });
    expect(parseEvents(moved.stdout).filter((e) => e.type === 'job.start')).toEqual([]);
    expect(await inode('q/f')).toBe(await inode('p/f'));
    expect(await inode('q/big')).toBe(await inode('p/big'));

    // One name's content changes: the file goes again, and its other name is linked to it again.
    await appendFile(join(tree, 'q', 'f'), 'and a change\n');
    const changed = await runFerry(args);
    expect(changed.code, changed.stderr).toBe(0);
    expect(done(changed)).toMatchObject({ files: 1, bytes: 35, hardlinks: 1, failed: 0 });
    expect(await readFile(join(dst, 'q', 'f'), 'utf8')).toBe('one file, three names\nand a change\n');
    expect(await inode('q/f')).toBe(await inode('p/f'));
    expect(await inode('q/big')).toBe(await inode('p/big'));
    expect((await readFile(join(dst, 'q', 'big'))).equals(await readFile(join(tree, 'q', 'big')))).toBe(true);
    // The job's manifest lists each file once, by a name it has at the destination, and the copy matches it.
    const manifest = await runFerry(['manifest', done(changed).jobId as string, '--state-dir', join(work.path, 'state')]);
    expect(manifest.code, manifest.stderr).toBe(0);
    const paths = manifest.stdout.trim().split('\n').slice(1).map((l) => (JSON.parse(l) as { path: string }).path);
    expect(paths.filter((p) => /^[pq]\/f$/.test(p))).toHaveLength(1);
    expect(paths.filter((p) => /^(r|rbig|[pq]\/big)$/.test(p)).sort()).toEqual(['r', 'rbig']);
    const verified = await runFerry(['verify', done(changed).jobId as string, '--state-dir', join(work.path, 'state'), '--json']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    const rerun = await runFerry(args);
    expect(done(rerun)).toMatchObject({ files: 0, bytes: 0, hardlinks: 0 });
  }, 180_000);

  it('copies everything again when the destination was removed or replaced since the journaled run, and names the fix when a directory inside it is gone', async () => {
    const tree = join(work.path, 'stale-src');
    await generateTree(tree, { files: 40, big: 0, sparse: 0, seed: 9, medianBytes: 1024 });
    await mkdir(join(tree, 'linked'));
    await writeFile(join(tree, 'linked', 'a'), 'one file, two names\n');
    await link(join(tree, 'linked', 'a'), join(tree, 'linked', 'b'));
    const dst = join(work.path, 'dst-stale');
    const args = ['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), tree, at(sshd, dst)];
    const warnings = (r: { stdout: string }) => parseEvents(r.stdout).filter((e) => e.type === 'warning').map((e) => String(e.message));
    expect((await runFerry(args)).code).toBe(0);

    // Removed: the journal lists everything as sent, yet nothing is there.
    await rm(dst, { recursive: true });
    const removed = await runFerry(args);
    expect(removed.code, removed.stderr).toBe(0);
    expect(warnings(removed)).toEqual([expect.stringMatching(/: \S+dst-stale is not there any more: what earlier runs of this job journaled is not there; copying everything again$/)]);
    expect(parseEvents(removed.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ resumedFiles: 0, failed: 0 });
    expect((await compareTrees(tree, dst)).differences).toEqual({});

    // Replaced by another (empty) directory of the same name: made while the old one still stood, so its inode differs.
    await rename(dst, `${dst}.old`);
    await mkdir(dst);
    await rm(`${dst}.old`, { recursive: true });
    const replaced = await runFerry(args);
    expect(replaced.code, replaced.stderr).toBe(0);
    expect(warnings(replaced)).toEqual([expect.stringMatching(/dst-stale is another directory than the one an earlier run wrote \(inode \d+, was \d+\)/)]);
    expect((await compareTrees(tree, dst)).differences).toEqual({});

    // The root stands, a directory inside it is gone: the journal is trusted (no walk of the destination), and what
    // fails for it says to add --restart, which copies it all again.
    // Its file and the link to it are journaled (not sent or made again); a name given to the file since is made, and fails.
    await rm(join(dst, 'linked'), { recursive: true });
    await link(join(tree, 'linked', 'a'), join(tree, 'linked', 'c'));
    const inside = await runFerry(args);
    expect(inside.code).toBe(72);
    expect(inside.stderr).toMatch(/1 of them because their directory, made by an earlier run of this job, is gone from the destination: .* add --restart to copy everything again \(or use ferry sync/);
    const restarted = await runFerry([...args, '--restart']);
    expect(restarted.code, restarted.stderr).toBe(0);
    expect((await compareTrees(tree, dst)).differences).toEqual({});
  }, 180_000);

  it('goes on after the coordinator is killed: the rerun sends what is not journaled and leaves no temporary file', async () => {
    const tree = join(work.path, 'kill-src');
    await generateTree(tree, { files: 120, big: 0, sparse: 0, seed: 5, medianBytes: 2048 });
    const dst = join(work.path, 'dst-kill');
    // One stream, batches of 4 KiB: the copy is slow enough to be caught half way.
    const args = ['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD, '-a', '1', '-s', '1', '--batch-size', '4KiB']), tree, at(sshd, dst)];
    const live = startFerry(args);
    const start = await live.waitFor((e) => e.type === 'tree.start');
    const journal = join(start.stateDir as string, 'tree.ndjson');
    for (let i = 0; i < 600 && (await stat(journal).then((s) => s.size, () => 0)) === 0; i++) await new Promise((r) => setTimeout(r, 50));
    live.child.kill('SIGKILL');
    await live.result;
    const again = await runFerry(args);
    expect(again.stderr).toBe('');
    expect(again.code).toBe(0);
    const done = parseEvents(again.stdout).find((e) => e.type === 'tree.done')!;
    expect(done.resumedFiles as number).toBeGreaterThan(0);
    expect((await compareTrees(tree, dst)).differences).toEqual({});
    expect(await tempFilesUnder(dst)).toEqual([]);
  }, 180_000);

  it('lists an entry it cannot write, copies the rest, and exits 72', async () => {
    // The existing directory receives the tree as partial-src/, where a directory stands in b.txt's way.
    const { tree, into, dst } = await treeWithConflict(work.path, 'partial-src', join(work.path, 'dst-partial'));
    const r = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), tree, at(sshd, into)]);
    expect(r.code).toBe(72);
    expect(r.stderr).toMatch(/not copied/);
    const events = parseEvents(r.stdout);
    expect(events.filter((e) => e.type === 'file.failed').map((e) => e.path)).toEqual(['b.txt']);
    const done = events.find((e) => e.type === 'tree.done')!;
    expect(done).toMatchObject({ files: 2, failed: 1 });
    const list = (await readFile(join(done.stateDir as string, 'failed.ndjson'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { path: string; code: string });
    expect(list.map((l) => l.path)).toEqual(['b.txt']);
    expect(await readFile(join(dst, 'a.txt'), 'utf8')).toBe('a.txt\n');
    expect(await readFile(join(dst, 'sub/c.txt'), 'utf8')).toBe('sub/c.txt\n');
    expect((await stat(join(dst, 'b.txt'))).isDirectory()).toBe(true);
    // Once the obstacle is gone, the same command copies what failed and nothing else.
    await rm(join(dst, 'b.txt'), { recursive: true });
    const again = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), tree, at(sshd, into)]);
    expect(again.code).toBe(0);
    expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 1, resumedFiles: 2, failed: 0 });
    expect(await readFile(join(dst, 'b.txt'), 'utf8')).toBe('b.txt\n');
  }, 120_000);

  it('copies several sources into one directory, as scp -r a b dir', async () => {
    const a = join(work.path, 'multi-a');
    await mkdir(join(a, 'sub'), { recursive: true });
    await appendFile(join(a, 'sub', 'x.txt'), 'x\n');
    const b = join(work.path, 'multi-b.txt');
    await appendFile(b, 'b\n');
    const dst = join(work.path, 'dst-multi');
    // The destination must be a directory: a missing one is an error, not the first source's new name.
    const missing = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), a, b, at(sshd, dst)]);
    expect(missing.code).toBe(20);
    await mkdir(dst);
    const r = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), a, b, at(sshd, dst)]);
    expect(r.code).toBe(0);
    expect(await readFile(join(dst, 'multi-a', 'sub', 'x.txt'), 'utf8')).toBe('x\n');
    expect(await readFile(join(dst, 'multi-b.txt'), 'utf8')).toBe('b\n');
  }, 60_000);

  it('says what is wrong with the command line', async () => {
    // A directory without -r.
    const noR = await runFerry(['cp', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), src, at(sshd, join(work.path, 'x'))]);
    expect(noR.code).toBe(2);
    expect(noR.stderr).toMatch(/is a directory: use ferry cp -r/);
    // A destination ending in / that does not exist, as scp.
    const missing = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), src, at(sshd, join(work.path, 'nowhere') + '/')]);
    expect(missing.code).toBe(20);
    expect(missing.stderr).toMatch(/does not exist/);
    // A destination that is a file.
    const file = join(work.path, 'a-file');
    await appendFile(file, 'x');
    const onFile = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), src, at(sshd, file)]);
    expect(onFile.code).toBe(2);
    expect(onFile.stderr).toMatch(/not a directory/);
    await rm(file);
  }, 60_000);
});

// A fifo in the tree is listed as skipped, not copied, and does not fail the copy.
describe('special files', () => {
  it('are skipped and listed', async () => {
    const tree = join(work.path, 'with-fifo');
    await mkdir(tree);
    await appendFile(join(tree, 'a.txt'), 'hello\n');
    execFileSync('mkfifo', [join(tree, 'pipe')]);
    const dst = join(work.path, 'dst-fifo');
    const r = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), tree, at(sshd, dst)]);
    expect(r.code).toBe(0);
    const done = parseEvents(r.stdout).find((e) => e.type === 'tree.done')!;
    expect(done).toMatchObject({ files: 1, skipped: 1, failed: 0 });
    expect(await readFile(join(dst, 'a.txt'), 'utf8')).toBe('hello\n');
    expect(await readFile(join(done.stateDir as string, 'skipped.ndjson'), 'utf8')).toMatch(/"path":"pipe"/);
    await expect(stat(join(dst, 'pipe'))).rejects.toThrow();
  }, 60_000);
});

describe('--limit-rate', () => {
  // 500 kB/s over ~0.4 MB of small files in batches and a 1 MiB file striped as a copy of its
  // own: each part takes its bytes over the rate at least (the batches may start with up to half
  // a second of credit, core's PACER_BURST_MS), where an unpaced copy of them here takes well
  // under a second of transfer. Bounds are loose: a loaded machine only makes a copy slower.
  const RATE = 500_000;
  let tree: string;
  beforeAll(async () => {
    tree = join(work.path, 'rate-src');
    await generateTree(tree, { files: 40, big: 1, bigBytes: MiB, sparse: 0, seed: 8, medianBytes: 8 * 1024 });
  }, 60_000);

  /** Seconds a copy of `bytes` takes at least at RATE with `credit` seconds of burst, loosened by a fifth. */
  const atLeast = (bytes: number, credit: number) => 0.8 * (bytes / RATE - credit);

  it('paces the batches of a push and its striped file, one after the other at the cap', async () => {
    const dst = join(work.path, 'dst-rate');
    const r = await runFerry(['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD, '--limit-rate', String(RATE), '--stripe-files-over', '1MiB']), tree, at(sshd, dst)]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect((await compareTrees(tree, dst)).differences).toEqual({});
    const events = parseEvents(r.stdout);
    const done = events.find((e) => e.type === 'tree.done')!;
    // The striped file reports its own copy: "path: N bytes in S s (job ...)".
    const big = events.map((e) => /^(\S+): (\d+) bytes in ([\d.]+) s \(job/.exec(String(e.message ?? ''))).find(Boolean)!;
    expect(big[1]).toMatch(/big0\.h5$/);
    expect(Number(big[2])).toBe(MiB);
    expect(Number(big[3])).toBeGreaterThanOrEqual(atLeast(MiB, 0));
    // The batches (everything else), then the striped file, each at the rate.
    expect(done.bytes as number).toBeGreaterThan(1.2 * MiB);
    expect(done.seconds as number).toBeGreaterThanOrEqual(atLeast(done.bytes as number, 0.5));
  }, 60_000);

  it('paces the batches of agents a launcher started (--launcher ssh), which end the copy with exit 0', async () => {
    const dst = join(work.path, 'dst-rate-agents');
    // An agent started through the test sshd by ssh(1), the batches on the job's NATS queue.
    const launch = ['--launcher', 'ssh', '--hosts', sshd.host, '-a', '1', '-s', '2', '--ssh-option', `Port=${sshd.port}`, '--ssh-option', `IdentityFile=${sshd.userKey}`, '--ssh-option', `UserKnownHostsFile=${sshd.knownHosts}`,
      '--nats-listen', '127.0.0.1', '--nats-advertise', '127.0.0.1', '--agent-cmd', REMOTE_CMD.replace(/ serve$/, '')];
    const r = await runFerry(['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD, '--limit-rate', String(RATE), '--stripe-files-over', '128MiB', '--batch-size', '128KiB', ...launch]), tree, at(sshd, dst)]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect((await compareTrees(tree, dst)).differences).toEqual({});
    const events = parseEvents(r.stdout);
    expect(events.filter((e) => e.type === 'agent.start')).toHaveLength(1);
    const done = events.find((e) => e.type === 'tree.done')!;
    expect(done.seconds as number).toBeGreaterThanOrEqual(atLeast(done.bytes as number, 0.5));
  }, 60_000);

  it('paces the batches of a pull', async () => {
    const dst = join(work.path, 'pulled-rate');
    // The 1 MiB file goes in a batch of its own here.
    const r = await runFerry(['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD, '--limit-rate', String(RATE), '--stripe-files-over', '128MiB']), at(sshd, tree), dst]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect((await compareTrees(tree, dst)).differences).toEqual({});
    const done = parseEvents(r.stdout).find((e) => e.type === 'tree.done')!;
    expect(done.bytes as number).toBeGreaterThan(1.2 * MiB);
    expect(done.seconds as number).toBeGreaterThanOrEqual(atLeast(done.bytes as number, 0.5));
  }, 60_000);
});
