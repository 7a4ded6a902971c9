/**
 * `ferry sync` (issue 32) against a real sshd: a rerun moves nothing and says
 * so in its exit code; the compare levels (mtime misses what checksum
 * catches); --dry-run changes nothing and lists what a sync would do;
 * --delete removes only what the source lacks, and nothing after a failure;
 * push and pull, ferry serve, the python helper and SFTP; one file;
 * with --xattrs, a change of extended attributes alone is an update that
 * sends no bytes; a sync job's manifest, and `ferry verify JOB` of it.
 */
import { execFileSync } from 'node:child_process';
import { appendFile, chown, lstat, mkdir, readFile, readlink, rm, stat, symlink, utimes, writeFile, link } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getAttribute, listAttributes, removeAttribute, setAttribute } from '@napi-rs/xattr';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { listAll, on, treeArgs } from './tree-helpers.js';
import { flipByte, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

let sshd: Sshd;
let bare: Sshd;
let work: { path: string; remove(): Promise<void> };
/** Whether the test directory's file system takes user.* attributes (tmpfs before Linux 6.6 does not). */
let userXattrs = false;

beforeAll(async () => {
  sshd = await startSshd();
  bare = await startSshd({ without: ['node'] });
  work = await tempDir('ferry-sync-');
  const probe = join(work.path, 'xattr-probe');
  await writeFile(probe, '');
  userXattrs = await setAttribute(probe, 'user.probe', 'x').then(() => true, () => false);
  await rm(probe);
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await bare?.stop();
  await work?.remove();
});

function args(server: Sshd, extra: string[] = []): string[] {
  return treeArgs(server, join(work.path, 'state'), extra);
}

/** A small tree: files, a directory, a symbolic link, two names of one file, and a file big enough to be striped (2 MiB and over). */
async function makeTree(root: string): Promise<void> {
  await mkdir(join(root, 'sub', 'deep'), { recursive: true });
  await writeFile(join(root, 'a.txt'), 'alpha\n');
  await writeFile(join(root, 'sub', 'b.txt'), 'bravo\n');
  await writeFile(join(root, 'sub', 'deep', 'c.bin'), Buffer.alloc(70_000, 7));
  await symlink('a.txt', join(root, 'link'));
  await link(join(root, 'a.txt'), join(root, 'sub', 'a-again.txt'));
  await makeRandomFile(join(root, 'big.bin'), 3 * 1024 * 1024);
}

/** Type, size, mode, mtime (s), content hash or link target of each entry under `root`. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const p of (await listAll(root)).sort()) {
    const st = await lstat(join(root, p));
    const what = st.isSymbolicLink() ? `-> ${await readlink(join(root, p))}` : st.isDirectory() ? 'dir' : `${st.size} ${(await readFile(join(root, p))).toString('base64').slice(0, 40)} ${st.mtimeMs}`;
    out[p] = `${(st.mode & 0o7777).toString(8)} ${what}`;
  }
  return out;
}

/** Snapshot without times: what a sync must make equal. */
async function content(root: string): Promise<Record<string, string>> {
  const s = await snapshot(root);
  for (const k of Object.keys(s)) s[k] = s[k]!.replace(/ [\d.]+$/, '');
  return s;
}

/** Each directory's mtime, in whole seconds (SFTP carries no more). */
async function dirTimes(root: string): Promise<Record<string, number>> {
  const out: Record<string, number> = { '': Math.floor((await stat(root)).mtimeMs / 1000) };
  for (const p of await listAll(root)) {
    const st = await lstat(join(root, p));
    if (st.isDirectory()) out[p] = Math.floor(st.mtimeMs / 1000);
  }
  return out;
}

type Done = { jobId: string; files: number; bytes: number; dirs: number; symlinks: number; hardlinks: number; unchanged: number; deleted: number; failed: number; attributes: number };

function doneOf(stdout: string): Done {
  const done = parseEvents(stdout).find((e) => e.type === 'tree.done');
  expect(done, stdout).toBeDefined();
  return done as unknown as Done;
}

describe.each([
  ['ferry serve', () => sshd, ['--remote-cmd', REMOTE_CMD]],
  ['the python helper', () => bare, ['--mode', 'python']],
  ['SFTP', () => sshd, ['--mode', 'sftp']],
] as const)('ferry sync push with %s', (name, server, mode) => {
  it('copies a tree, then a rerun moves nothing and --exit-code says so; a change is sent alone', async () => {
    const tag = name.replace(/\W/g, '');
    const src = join(work.path, `push-src-${tag}`);
    const dst = join(work.path, `push-dst-${tag}`);
    await makeTree(src);
    const first = await runFerry(['sync', '--exit-code', ...args(server(), [...mode]), src, on(server(), dst)]);
    expect(first.code, first.stderr).toBe(3);
    expect(await content(dst)).toEqual(await content(src));
    // Times are kept (a sync compares them next time): to the second (SFTP carries no more).
    expect(Math.floor((await stat(join(dst, 'sub', 'b.txt'))).mtimeMs / 1000)).toBe(Math.floor((await stat(join(src, 'sub', 'b.txt'))).mtimeMs / 1000));

    const again = await runFerry(['sync', '--exit-code', ...args(server(), [...mode]), src, on(server(), dst)]);
    expect(again.code, again.stdout).toBe(0);
    const d = doneOf(again.stdout);
    expect(d).toMatchObject({ files: 0, bytes: 0, dirs: 0, symlinks: 0, deleted: 0, failed: 0 });
    expect(d.unchanged).toBeGreaterThanOrEqual(5);
    expect(parseEvents(again.stdout).find((e) => e.type === 'sync.done')).toMatchObject({ changed: false });

    // One file grows: it alone goes.
    await appendFile(join(src, 'sub', 'b.txt'), 'more\n');
    const third = await runFerry(['sync', '--exit-code', ...args(server(), [...mode]), src, on(server(), dst)]);
    expect(third.code, third.stderr).toBe(3);
    expect(doneOf(third.stdout)).toMatchObject({ files: 1, bytes: 11 });
    expect(await content(dst)).toEqual(await content(src));
    // The file's directory changed when the file was replaced: its time is the source's again
    // (and so are those a sync left alone, as nothing in them changed).
    expect(await dirTimes(dst)).toEqual(await dirTimes(src));

    // --delete: a file and a directory with a file in it (rmdir through this data path).
    await mkdir(join(dst, 'old', 'older'), { recursive: true });
    await writeFile(join(dst, 'old', 'older', 'x'), 'x');
    const del = await runFerry(['sync', '--delete', ...args(server(), [...mode]), src, on(server(), dst)]);
    expect(del.code, del.stderr).toBe(0);
    expect(doneOf(del.stdout)).toMatchObject({ deleted: 3, files: 0 });
    expect(await content(dst)).toEqual(await content(src));
    expect(await dirTimes(dst)).toEqual(await dirTimes(src));
    // The job's manifest checks out (the deleted entries are not in it).
    const verified = await runFerry(['verify', doneOf(del.stdout).jobId, '--state-dir', join(work.path, 'state'), '--json']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    expect(parseEvents(verified.stdout).find((e) => e.type === 'verify.done')).toMatchObject({ entries: 5, bad: 0 });
  });
});

describe('ferry sync compare levels, --dry-run and --delete', () => {
  it('--compare checksum catches a change that size and mtime miss', async () => {
    const src = join(work.path, 'cmp-src');
    const dst = join(work.path, 'cmp-dst');
    await makeTree(src);
    expect((await runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)])).code).toBe(0);
    // Same size, same time, other bytes: what a careless restore or bit rot leaves.
    const file = join(dst, 'sub', 'deep', 'c.bin');
    const before = await stat(file);
    await writeFile(file, Buffer.alloc(70_000, 8));
    await utimes(file, before.atime, before.mtime);

    const mtime = await runFerry(['sync', '--exit-code', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(mtime.code, mtime.stderr).toBe(0);
    expect((await readFile(file))[0]).toBe(8);
    const size = await runFerry(['sync', '--exit-code', '--compare', 'size', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(size.code, size.stderr).toBe(0);

    const sum = await runFerry(['sync', '--exit-code', '--compare', 'checksum', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(sum.code, sum.stderr).toBe(3);
    expect(doneOf(sum.stdout)).toMatchObject({ files: 1, bytes: 70_000 });
    expect((await readFile(file))[0]).toBe(7);
    // And a time changed alone is an update at the default level.
    await utimes(join(dst, 'a.txt'), new Date(2001, 1, 1), new Date(2001, 1, 1));
    const time = await runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(time.code, time.stderr).toBe(0);
    expect(doneOf(time.stdout).files).toBeGreaterThanOrEqual(1);
    expect(await content(dst)).toEqual(await content(src));
  });

  it('--dry-run lists creates, updates and deletes and touches nothing; --delete then removes only the extras', async () => {
    const src = join(work.path, 'dry-src');
    const dst = join(work.path, 'dry-dst');
    await makeTree(src);
    expect((await runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)])).code).toBe(0);
    await writeFile(join(src, 'new.txt'), 'new\n');
    await appendFile(join(src, 'a.txt'), 'changed\n');
    await mkdir(join(dst, 'extra-dir', 'inner'), { recursive: true });
    await writeFile(join(dst, 'extra-dir', 'inner', 'x'), 'x');
    await writeFile(join(dst, 'sub', 'extra.txt'), 'extra');
    await symlink('nowhere', join(dst, 'extra-link'));
    const before = await snapshot(dst);

    const dry = await runFerry(['sync', '--dry-run', '--delete', '--exit-code', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(dry.code, dry.stderr).toBe(3);
    expect(await snapshot(dst)).toEqual(before);
    const changes = parseEvents(dry.stdout).filter((e) => e.type === 'sync.change').map((e) => `${e.action as string} ${e.path as string}`).sort();
    expect(changes).toEqual(
      ['create new.txt', 'update a.txt', 'create sub/a-again.txt', 'delete extra-dir', 'delete extra-dir/inner', 'delete extra-dir/inner/x', 'delete extra-link', 'delete sub/extra.txt'].sort(),
    );
    // Human output: one line per change and what it adds up to.
    const human = await runFerry(['sync', '-n', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]).filter((a) => a !== '--json'), src, on(sshd, dst)]);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/^delete +extra-dir\/inner\/x$/m);
    expect(human.stdout).toMatch(/2 to create, 1 to update, 5 to delete/);

    // Without --delete the extras stay.
    const keep = await runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(keep.code, keep.stderr).toBe(0);
    expect(await readFile(join(dst, 'sub', 'extra.txt'), 'utf8')).toBe('extra');
    const del = await runFerry(['sync', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(del.code, del.stderr).toBe(0);
    expect(doneOf(del.stdout)).toMatchObject({ deleted: 5, files: 0 });
    expect(await content(dst)).toEqual(await content(src));
  });

  it.skipIf(process.getuid?.() !== 0)('compares owners where the copy keeps them (root): a chown alone is an update, and a rerun then moves nothing', async () => {
    const src = join(work.path, 'owner-src');
    const dst = join(work.path, 'owner-dst');
    await makeTree(src);
    const run = (extra: string[] = []) => runFerry(['sync', '--exit-code', ...extra, ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect((await run()).code).toBe(3);
    // Ids nobody's name maps: the copy gives them as they are.
    await chown(join(src, 'sub', 'b.txt'), 54321, 54322);
    await chown(join(src, 'sub', 'deep'), 54321, 54322);
    const dry = await run(['--dry-run']);
    expect(dry.code, dry.stderr).toBe(3);
    expect(parseEvents(dry.stdout).filter((e) => e.type === 'sync.change')).toEqual([{ type: 'sync.change', action: 'update', path: 'sub/b.txt', kind: 'file', reason: 'owner' }]);
    const sync = await run();
    expect(sync.code, sync.stderr).toBe(3);
    expect(doneOf(sync.stdout)).toMatchObject({ files: 1, bytes: 6 });
    for (const p of ['sub/b.txt', 'sub/deep']) expect(await stat(join(dst, p))).toMatchObject({ uid: 54321, gid: 54322 });
    expect(await content(dst)).toEqual(await content(src));
    expect(await dirTimes(dst)).toEqual(await dirTimes(src));
    const again = await run();
    expect(again.code, again.stdout).toBe(0);
    expect(doneOf(again.stdout)).toMatchObject({ files: 0, bytes: 0 });
  });

  it('--delete deletes nothing when an entry failed; what that run sent keeps its hash in the next complete run\'s manifest', async () => {
    const src = join(work.path, 'fail-src');
    const dst = join(work.path, 'fail-dst');
    await makeTree(src);
    expect((await runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)])).code).toBe(0);
    await writeFile(join(dst, 'extra.txt'), 'extra');
    // A directory where the source has a file: that file cannot be synced. Another file changed goes.
    await rm(join(dst, 'a.txt'));
    await mkdir(join(dst, 'a.txt'));
    await appendFile(join(src, 'sub', 'b.txt'), 'more\n');
    const run = await runFerry(['sync', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(run.code, run.stderr).toBe(72);
    expect(run.stdout).toMatch(/a\.txt is a directory where the source has a file/);
    expect(run.stdout).toMatch(/--delete: nothing deleted/);
    expect(await readFile(join(dst, 'extra.txt'), 'utf8')).toBe('extra');
    expect(await readFile(join(dst, 'sub', 'b.txt'), 'utf8')).toBe('bravo\nmore\n');
    // The way cleared, the next run completes: b.txt is the same now, and the manifest still knows its hash.
    await rm(join(dst, 'a.txt'), { recursive: true });
    const fixed = await runFerry(['sync', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(fixed.code, fixed.stderr).toBe(0);
    expect(doneOf(fixed.stdout)).toMatchObject({ files: 1, deleted: 1, failed: 0 });
    const verified = await runFerry(['verify', doneOf(fixed.stdout).jobId, '--state-dir', join(work.path, 'state'), '--json']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    expect(parseEvents(verified.stdout).find((e) => e.type === 'verify.done')).toMatchObject({ bad: 0 });
  });
});

describe('ferry sync and links planted in the destination', () => {
  it('--delete removes a planted link, never what it points at; a link where a directory goes is not gone through', async () => {
    const src = join(work.path, 'plant-src');
    const dst = join(work.path, 'plant-dst');
    const victim = join(work.path, 'victim');
    await makeTree(src);
    await mkdir(victim);
    await writeFile(join(victim, 'precious.txt'), 'keep me');
    expect((await runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)])).code).toBe(0);
    // Not in the source: a link to the victim's directory.
    await symlink(victim, join(dst, 'planted'));
    const del = await runFerry(['sync', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(del.code, del.stderr).toBe(0);
    expect(doneOf(del.stdout)).toMatchObject({ deleted: 1 });
    await expect(lstat(join(dst, 'planted'))).rejects.toThrow(/ENOENT/);
    expect(await readFile(join(victim, 'precious.txt'), 'utf8')).toBe('keep me');

    // Where the source has a directory, a link to the victim's: nothing is written through it, nothing deleted.
    await rm(join(dst, 'sub'), { recursive: true });
    await symlink(victim, join(dst, 'sub'));
    await writeFile(join(dst, 'extra.txt'), 'extra');
    const run = await runFerry(['sync', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(run.code, run.stderr).toBe(72);
    expect(await listAll(victim)).toEqual(['precious.txt']);
    expect(await readFile(join(dst, 'extra.txt'), 'utf8')).toBe('extra');
  });
});

describe('ferry sync pull and one file', () => {
  it('pulls a tree, a rerun moves nothing, --delete removes a local extra', async () => {
    const src = join(work.path, 'pull-src');
    const dst = join(work.path, 'pull-dst');
    await makeTree(src);
    const first = await runFerry(['sync', '--exit-code', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), on(sshd, src), dst]);
    expect(first.code, first.stderr).toBe(3);
    expect(await content(dst)).toEqual(await content(src));
    await writeFile(join(dst, 'extra.txt'), 'extra');
    const again = await runFerry(['sync', '--exit-code', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), on(sshd, src), dst]);
    expect(again.code, again.stderr).toBe(3);
    expect(doneOf(again.stdout)).toMatchObject({ files: 0, bytes: 0, deleted: 1 });
    expect(await content(dst)).toEqual(await content(src));
    const third = await runFerry(['sync', '--exit-code', '--delete', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), on(sshd, src), dst]);
    expect(third.code, third.stderr).toBe(0);
    // The job's manifest: every file and link pulled (the deleted extra not among them), and the copy matches it.
    const job = doneOf(third.stdout).jobId;
    const manifest = await runFerry(['manifest', job, '--state-dir', join(work.path, 'state')]);
    expect(manifest.code, manifest.stderr).toBe(0);
    expect(manifest.stdout.trim().split('\n').slice(1).map((l) => (JSON.parse(l) as { path: string }).path)).toEqual(['a.txt', 'big.bin', 'link', 'sub/b.txt', 'sub/deep/c.bin']);
    const verified = await runFerry(['verify', job, '--state-dir', join(work.path, 'state'), '--json']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  });

  it('syncs one file: sent when it differs, not when it is the same', async () => {
    const src = join(work.path, 'one.bin');
    const dst = join(work.path, 'one-copy.bin');
    await makeRandomFile(src, 1024 * 1024);
    const first = await runFerry(['sync', '--exit-code', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(first.code, first.stderr).toBe(3);
    expect((await readFile(dst)).equals(await readFile(src))).toBe(true);
    const again = await runFerry(['sync', '--exit-code', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(again.code, again.stderr).toBe(0);
    expect(parseEvents(again.stdout).some((e) => e.type === 'done')).toBe(false);
    await appendFile(src, 'tail');
    const third = await runFerry(['sync', '--exit-code', ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    expect(third.code, third.stderr).toBe(3);
    expect((await readFile(dst)).equals(await readFile(src))).toBe(true);
  });

  it('sends only the changed range of a big file, alone or in a tree (--delta)', async () => {
    const dir = join(work.path, 'delta-src');
    const dst = join(work.path, 'delta-dst');
    await mkdir(dir);
    await makeRandomFile(join(dir, 'big.bin'), 4 * 1024 * 1024);
    await writeFile(join(dir, 'small.txt'), 'small');
    const sync = (src: string, to: string) => runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD, '--range-size', '1MiB']), src, on(sshd, to)]);
    expect((await sync(dir, dst)).code).toBe(0);
    const flip = () => flipByte(join(dir, 'big.bin'), 2.5 * 1024 * 1024);
    // In a tree: the big file is a copy of its own, with --delta.
    await flip();
    const tree = await sync(dir, dst);
    expect(tree.code, tree.stderr).toBe(0);
    expect(parseEvents(tree.stdout).find((e) => e.type === 'delta')).toMatchObject({ reused: 3 });
    expect(doneOf(tree.stdout)).toMatchObject({ files: 1 });
    expect((await readFile(join(dst, 'big.bin'))).equals(await readFile(join(dir, 'big.bin')))).toBe(true);
    // One file.
    await flip();
    const one = await sync(join(dir, 'big.bin'), join(dst, 'big.bin'));
    expect(one.code, one.stderr).toBe(0);
    expect(parseEvents(one.stdout).find((e) => e.type === 'done')).toMatchObject({ rangesSent: 1, rangesReused: 3 });
    expect((await readFile(join(dst, 'big.bin'))).equals(await readFile(join(dir, 'big.bin')))).toBe(true);
  });
});

/** The user.* attributes of every file and directory under `root` (and of `root` itself, as ''), values as text. */
async function userXattrsOf(root: string): Promise<Record<string, Record<string, string>>> {
  const out: Record<string, Record<string, string>> = {};
  for (const p of ['', ...(await listAll(root))].sort()) {
    const path = join(root, p);
    if ((await lstat(path)).isSymbolicLink()) continue;
    const values: Record<string, string> = {};
    for (const n of (await listAttributes(path)).filter((n) => n.startsWith('user.')).sort()) values[n] = (await getAttribute(path, n))!.toString();
    out[p] = values;
  }
  return out;
}

/** The ways attributes travel: both helpers each way (a pull through the python helper: its walk and STAT report them). */
const XATTR_WAYS = [
  ['push with ferry serve', 'push', () => sshd, ['--remote-cmd', REMOTE_CMD]],
  ['push with the python helper', 'push', () => bare, ['--mode', 'python']],
  ['pull with ferry serve', 'pull', () => sshd, ['--remote-cmd', REMOTE_CMD]],
  ['pull with the python helper', 'pull', () => bare, ['--mode', 'python']],
] as const;

describe.each(XATTR_WAYS)('ferry sync --xattrs, %s', (name, direction, server, mode) => {
  it('updates attributes that alone changed, on files and directories, with no bytes sent; the dry run lists them', async (ctx) => {
    if (!userXattrs) ctx.skip();
    const tag = name.replace(/\W/g, '');
    const src = join(work.path, `xattr-src-${tag}`);
    const dst = join(work.path, `xattr-dst-${tag}`);
    await makeTree(src);
    await setAttribute(join(src, 'sub'), 'user.keep', 'dir');
    await setAttribute(join(src, 'sub'), 'user.change', 'before');
    await setAttribute(join(src, 'sub'), 'user.gone', 'soon');
    await setAttribute(join(src, 'sub', 'b.txt'), 'user.change', 'before');
    await setAttribute(join(src, 'sub', 'b.txt'), 'user.gone', 'soon');
    await setAttribute(join(src, 'big.bin'), 'user.big', 'before');
    const run = (extra: string[] = []) =>
      runFerry(['sync', '--xattrs', '--exit-code', ...extra, ...args(server(), [...mode]), direction === 'push' ? src : on(server(), src), direction === 'push' ? on(server(), dst) : dst]);
    const first = await run();
    expect(first.code, first.stderr).toBe(3);
    expect(await userXattrsOf(dst)).toEqual(await userXattrsOf(src));
    expect((await run()).code).toBe(0);

    // Set, altered and removed: on a small file, on a big one (a copy of its own when sent), on a directory; a file that had none gets one.
    await setAttribute(join(src, 'sub'), 'user.change', 'after');
    await removeAttribute(join(src, 'sub'), 'user.gone');
    await setAttribute(join(src, 'sub'), 'user.new', 'added');
    await setAttribute(join(src, 'sub', 'b.txt'), 'user.change', 'after');
    await removeAttribute(join(src, 'sub', 'b.txt'), 'user.gone');
    await setAttribute(join(src, 'sub', 'b.txt'), 'user.new', 'added');
    await setAttribute(join(src, 'big.bin'), 'user.big', 'after');
    await setAttribute(join(src, 'a.txt'), 'user.set', 'fresh');
    const before = await userXattrsOf(dst);
    const inodes = await Promise.all(['sub/b.txt', 'big.bin', 'a.txt'].map(async (p) => (await stat(join(dst, p))).ino));

    const dry = await run(['--dry-run']);
    expect(dry.code, dry.stderr).toBe(3);
    const changes = parseEvents(dry.stdout).filter((e) => e.type === 'sync.change').map((e) => `${e.action as string} ${e.path as string} ${e.reason as string}`).sort();
    expect(changes).toEqual(['update a.txt xattrs', 'update big.bin xattrs', 'update sub xattrs', 'update sub/b.txt xattrs']);
    // At the checksum level too, once the contents are found the same.
    const sum = await run(['--dry-run', '--compare', 'checksum']);
    expect(sum.code, sum.stderr).toBe(3);
    expect(parseEvents(sum.stdout).filter((e) => e.type === 'sync.change').map((e) => `${e.action as string} ${e.path as string} ${e.reason as string}`).sort()).toEqual(changes);
    expect(await userXattrsOf(dst)).toEqual(before);

    const sync = await run();
    expect(sync.code, sync.stderr).toBe(3);
    expect(doneOf(sync.stdout), sync.stdout).toMatchObject({ files: 0, bytes: 0, dirs: 0, failed: 0, attributes: 4 });
    // No content moved: no copy of the big file, each file still the one that was there.
    expect(parseEvents(sync.stdout).filter((e) => e.type === 'job.start' || e.type === 'delta')).toEqual([]);
    expect(await Promise.all(['sub/b.txt', 'big.bin', 'a.txt'].map(async (p) => (await stat(join(dst, p))).ino))).toEqual(inodes);
    expect(await userXattrsOf(dst)).toEqual(await userXattrsOf(src));
    expect(await content(dst)).toEqual(await content(src));
    expect(await dirTimes(dst)).toEqual(await dirTimes(src));

    const again = await run();
    expect(again.code, again.stdout).toBe(0);
    expect(doneOf(again.stdout)).toMatchObject({ files: 0, bytes: 0, attributes: 0 });
  });
});

describe.each(XATTR_WAYS)('ferry sync --xattrs of one file, %s', (name, direction, server, mode) => {
  it('copies its attributes, then sets a change of them alone with no bytes sent; the dry run lists it', async (ctx) => {
    if (!userXattrs) ctx.skip();
    const tag = name.replace(/\W/g, '');
    const src = join(work.path, `xattr-one-${tag}.bin`);
    const dst = join(work.path, `xattr-one-${tag}-copy.bin`);
    await makeRandomFile(src, 300_000);
    await setAttribute(src, 'user.change', 'before');
    await setAttribute(src, 'user.gone', 'soon');
    const attrsOf = async (path: string) => {
      const values: Record<string, string> = {};
      for (const n of (await listAttributes(path)).filter((n) => n.startsWith('user.')).sort()) values[n] = (await getAttribute(path, n))!.toString();
      return values;
    };
    const run = (extra: string[] = []) =>
      runFerry(['sync', '--xattrs', '--exit-code', ...extra, ...args(server(), [...mode]), direction === 'push' ? src : on(server(), src), direction === 'push' ? on(server(), dst) : dst]);
    const first = await run();
    expect(first.code, first.stderr).toBe(3);
    expect((await readFile(dst)).equals(await readFile(src))).toBe(true);
    expect(await attrsOf(dst)).toEqual({ 'user.change': 'before', 'user.gone': 'soon' });
    const same = await run();
    expect(same.code, same.stdout + same.stderr).toBe(0);

    await setAttribute(src, 'user.change', 'after');
    await removeAttribute(src, 'user.gone');
    await setAttribute(src, 'user.new', 'added');
    const inode = (await stat(dst)).ino;
    const dry = await run(['--dry-run']);
    expect(dry.code, dry.stderr).toBe(3);
    expect(parseEvents(dry.stdout).filter((e) => e.type === 'sync.change').map((e) => `${e.action as string} ${e.path as string} ${e.reason as string}`)).toEqual([`update ${dst} xattrs`]);
    expect(await attrsOf(dst)).toEqual({ 'user.change': 'before', 'user.gone': 'soon' });
    // At the checksum level too, once the contents are found the same.
    const sum = await run(['--dry-run', '--compare', 'checksum']);
    expect(sum.code, sum.stderr).toBe(3);
    expect(parseEvents(sum.stdout).filter((e) => e.type === 'sync.change').map((e) => e.reason)).toEqual(['xattrs']);

    const sync = await run();
    expect(sync.code, sync.stderr).toBe(3);
    // No content moved: no job, the file the one that was there.
    expect(parseEvents(sync.stdout).filter((e) => e.type === 'job.start' || e.type === 'done' || e.type === 'delta')).toEqual([]);
    expect(parseEvents(sync.stdout).some((e) => e.type === 'log' && /extended attributes set again/.test(String(e.message)))).toBe(true);
    expect((await stat(dst)).ino).toBe(inode);
    expect(await attrsOf(dst)).toEqual(await attrsOf(src));
    expect((await readFile(dst)).equals(await readFile(src))).toBe(true);
    expect((await run()).code).toBe(0);

    // Content and attributes both changed: the file goes (its changed ranges), its attributes with it.
    await appendFile(src, 'tail');
    await setAttribute(src, 'user.change', 'again');
    const both = await run();
    expect(both.code, both.stderr).toBe(3);
    expect(parseEvents(both.stdout).some((e) => e.type === 'done')).toBe(true);
    expect((await readFile(dst)).equals(await readFile(src))).toBe(true);
    expect(await attrsOf(dst)).toEqual({ 'user.change': 'again', 'user.new': 'added' });
    expect((await run()).code).toBe(0);
  });
});

describe('ferry sync jobs have a manifest', () => {
  const MiB = 1024 * 1024;
  const state = () => join(work.path, 'state');
  const manifestOf = async (job: string) => {
    const r = await runFerry(['manifest', job, '--state-dir', state()]);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  const verify = (job: string) => runFerry(['verify', job, '--state-dir', state(), '--json']);

  it('after each complete run: the whole destination with the hashes of what was sent, compared or kept; verify JOB checks it and names a corrupted file', async () => {
    const src = join(work.path, 'mf-src');
    const dst = join(work.path, 'mf-dst');
    await makeTree(src);
    const sync = () => runFerry(['sync', ...args(sshd, ['--remote-cmd', REMOTE_CMD, '--range-size', '1MiB']), src, on(sshd, dst)]);
    const first = await sync();
    expect(first.code, first.stderr).toBe(0);
    const job = doneOf(first.stdout).jobId;
    const m1 = await manifestOf(job);
    // Directories and the second name of a file are not listed, as in any manifest.
    expect(m1[0]).toMatchObject({ format: 'ferry-manifest', kind: 'tree', job, entries: 5 });
    expect(m1.slice(1).map((l) => [l.path, l.type])).toEqual([['a.txt', 'file'], ['big.bin', 'file'], ['link', 'symlink'], ['sub/b.txt', 'file'], ['sub/deep/c.bin', 'file']]);
    expect(m1[2]!.ranges).toHaveLength(3);
    const ok = await verify(job);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);

    // Nothing changed: every entry keeps its hash.
    expect((await sync()).code).toBe(0);
    expect((await manifestOf(job)).slice(1)).toEqual(m1.slice(1));

    // A small file grows; one range of the big file changes (the others are reused there, --delta).
    await appendFile(join(src, 'sub', 'b.txt'), 'more\n');
    await flipByte(join(src, 'big.bin'), 1.5 * MiB);
    const second = await sync();
    expect(second.code, second.stderr).toBe(0);
    expect(parseEvents(second.stdout).find((e) => e.type === 'delta')).toMatchObject({ reused: 2 });
    const m2 = await manifestOf(job);
    const entry = (m: typeof m1, path: string) => m.find((l) => l.path === path)!;
    expect(entry(m2, 'sub/b.txt')).toMatchObject({ size: 11 });
    expect(entry(m2, 'sub/b.txt').hash).not.toBe(entry(m1, 'sub/b.txt').hash);
    const [r1, r2] = [entry(m1, 'big.bin').ranges as string[], entry(m2, 'big.bin').ranges as string[]];
    expect([r2[0] === r1[0], r2[1] === r1[1], r2[2] === r1[2]]).toEqual([true, false, true]);
    expect(entry(m2, 'a.txt')).toEqual(entry(m1, 'a.txt'));
    const again = await verify(job);
    expect(again.code, again.stdout + again.stderr).toBe(0);

    await flipByte(join(dst, 'sub', 'deep', 'c.bin'), 100);
    const bad = await verify(job);
    expect(bad.code, bad.stderr).toBe(50);
    expect(parseEvents(bad.stdout).filter((e) => e.type === 'verify.mismatch').map((e) => e.path)).toEqual(['sub/deep/c.bin']);
  });

  it('a first sync onto an existing copy at the mtime level knows no hashes: manifest and verify say so and how to fix it; --compare checksum does', async () => {
    const src = join(work.path, 'mf2-src');
    const dst = join(work.path, 'mf2-dst');
    await makeTree(src);
    execFileSync('cp', ['-a', src, dst]);
    const sync = (extra: string[] = []) => runFerry(['sync', ...extra, ...args(sshd, ['--remote-cmd', REMOTE_CMD]), src, on(sshd, dst)]);
    const first = await sync();
    expect(first.code, first.stderr).toBe(0);
    const job = doneOf(first.stdout).jobId;
    for (const r of [await runFerry(['manifest', job, '--state-dir', state()]), await verify(job)]) {
      expect(r.code, r.stdout).toBe(2);
      // The link's target is its entry: four files lack a hash.
      expect(r.stderr).toMatch(/4 of the 5 entries at .* have no known hash/);
      expect(r.stderr).toContain(`ferry sync --compare checksum ${src} ${on(sshd, dst)}`);
    }
    const sum = await sync(['--compare', 'checksum']);
    expect(sum.code, sum.stderr).toBe(0);
    expect(doneOf(sum.stdout).jobId).toBe(job);
    expect((await manifestOf(job))[0]).toMatchObject({ entries: 5 });
    // And a later run at the default level keeps them.
    expect((await sync()).code).toBe(0);
    const ok = await verify(job);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  });
});
