/**
 * The rest of `ferry cp -r`'s command line (issue 31) against a real sshd:
 * --fail-fast; remote globs expanded without a shell (ferry serve, the
 * python helper, SFTP); -r with a single file; owners (as root, and
 * --preserve=owner, --numeric-ids) and extended attributes and ACLs
 * (--xattrs, --acls) pushed and pulled, with files owned by a second Unix
 * user and an id no name has.
 */
import { execFileSync } from 'node:child_process';
import { appendFile, chmod, chown, lchown, lstat, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getAttribute, listAttributes, removeAttribute, setAttribute } from '@napi-rs/xattr';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { listAll, on, treeArgs, treeWithConflict } from './tree-helpers.js';
import { killStrays, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

let sshd: Sshd;
let bare: Sshd;
let work: { path: string; remove(): Promise<void> };
let user: { name: string; uid: number; gid: number };
const made: string[] = [];

function common(server: Sshd, extra: string[] = []): string[] {
  return treeArgs(server, join(work.path, 'state'), extra);
}

/** A POSIX ACL as the kernel stores it in system.posix_acl_*: version 2, then (tag, perm, id) entries sorted by tag. */
function acl(entries: Array<[tag: number, perm: number, id?: number]>): Buffer {
  const out = Buffer.alloc(4 + 8 * entries.length);
  out.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    out.writeUInt16LE(tag, 4 + 8 * i);
    out.writeUInt16LE(perm, 6 + 8 * i);
    out.writeUInt32LE(id ?? 0xffffffff, 8 + 8 * i);
  });
  return out;
}
const USER_OBJ = 0x01;
const USER = 0x02;
const GROUP_OBJ = 0x04;
const MASK = 0x10;
const OTHER = 0x20;

/** Every attribute of `path` but security.* (the destination's own labels), by name. */
async function xattrsOf(path: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of (await listAttributes(path)).sort()) if (!n.startsWith('security.')) out[n] = (await getAttribute(path, n))!.toString('hex');
  return out;
}

/** Owner, group and attributes of each path under `root` (links not followed). */
async function metaOf(root: string): Promise<Record<string, { uid: number; gid: number; xattrs?: Record<string, string> }>> {
  const out: Record<string, { uid: number; gid: number; xattrs?: Record<string, string> }> = {};
  for (const p of (await listAll(root)).sort()) {
    const st = await lstat(join(root, p));
    out[p] = { uid: st.uid, gid: st.gid, ...(st.isSymbolicLink() ? {} : { xattrs: await xattrsOf(join(root, p)) }) };
  }
  return out;
}

let metaSrc: string;
let globSrc: string;

beforeAll(async () => {
  const tag = process.pid % 100000;
  user = { name: `ferrym${tag}`, uid: 0, gid: 0 };
  // A password of '*': the user only owns files here; -U: a group of its own name.
  execFileSync('useradd', ['-M', '-U', '-s', '/bin/sh', '-p', '*', user.name]);
  made.push(user.name);
  user.uid = Number(execFileSync('id', ['-u', user.name]).toString().trim());
  user.gid = Number(execFileSync('id', ['-g', user.name]).toString().trim());
  sshd = await startSshd();
  bare = await startSshd({ without: ['node'] });
  work = await tempDir('ferry-treemeta-');

  // Owners and attributes: a file and a directory of the second user, a file of ids no name has,
  // a symbolic link of the user's, attributes of every kind the copy keeps or leaves.
  metaSrc = join(work.path, 'meta-src');
  await mkdir(join(metaSrc, 'dir-owned'), { recursive: true });
  await mkdir(join(metaSrc, 'acl-dir'));
  for (const f of ['owned.txt', 'numeric.txt', 'dir-owned/inner.txt', 'xattr.txt']) await appendFile(join(metaSrc, f), `${f}\n`);
  await chown(join(metaSrc, 'owned.txt'), user.uid, user.gid);
  await chown(join(metaSrc, 'dir-owned'), user.uid, user.gid);
  await chown(join(metaSrc, 'numeric.txt'), 54321, 54322);
  await symlink('owned.txt', join(metaSrc, 'link'));
  await lchown(join(metaSrc, 'link'), user.uid, user.gid);
  const x = join(metaSrc, 'xattr.txt');
  await setAttribute(x, 'user.one', 'first');
  await setAttribute(x, 'user.bin', Buffer.from([0, 1, 2, 255]));
  await setAttribute(x, 'trusted.ferry', 'as root only');
  // rw for the owner and the second user, r for the group (mask rw), r for others: mode 0664.
  await setAttribute(x, 'system.posix_acl_access', acl([[USER_OBJ, 6], [USER, 6, user.uid], [GROUP_OBJ, 4], [MASK, 6], [OTHER, 4]]));
  // Big enough to be copied as a job of its own (treeArgs: 2 MiB and more): owner and attributes come after.
  await writeFile(join(metaSrc, 'big.bin'), Buffer.alloc(3 * 1024 * 1024, 7));
  await chown(join(metaSrc, 'big.bin'), user.uid, user.gid);
  await setAttribute(join(metaSrc, 'big.bin'), 'user.big', 'striped');
  await setAttribute(join(metaSrc, 'acl-dir'), 'user.dir', 'on a directory');
  await setAttribute(join(metaSrc, 'acl-dir'), 'system.posix_acl_default', acl([[USER_OBJ, 7], [USER, 5, user.uid], [GROUP_OBJ, 5], [MASK, 5], [OTHER, 0]]));

  // Globs: directories and files some patterns match, a hidden one none does.
  globSrc = join(work.path, 'glob-src');
  await mkdir(join(globSrc, 'run1'), { recursive: true });
  await mkdir(join(globSrc, 'run2'));
  for (const f of ['run1/a.txt', 'run2/b.txt', 'run3.txt', 'other.txt', '.run4']) await appendFile(join(globSrc, f), `${f}\n`);
}, 60_000);

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await bare?.stop();
  await work?.remove();
  for (const name of made) execFileSync('userdel', [name], { stdio: 'ignore' });
});

describe('owners, extended attributes and ACLs', () => {
  it('keeps owners by name as root, and attributes and ACLs with --xattrs --acls (push, ferry serve)', async () => {
    const dst = join(work.path, 'meta-push');
    const r = await runFerry(['cp', '-r', '-p', '--xattrs', '--acls', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), metaSrc, on(sshd, dst)]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const want = await metaOf(metaSrc);
    expect(want['owned.txt']).toMatchObject({ uid: user.uid, gid: user.gid });
    expect(want['big.bin']).toMatchObject({ uid: user.uid, xattrs: { 'user.big': Buffer.from('striped').toString('hex') } });
    expect(Object.keys(want['xattr.txt']!.xattrs!)).toEqual(['system.posix_acl_access', 'trusted.ferry', 'user.bin', 'user.one']);
    expect(await metaOf(dst)).toEqual(want);
  });

  it('pulls them the same way through the python helper, by number with --numeric-ids', async () => {
    const dst = join(work.path, 'meta-pull');
    const r = await runFerry(['cp', '-r', '-p', '--xattrs', '--acls', '--numeric-ids', ...common(bare), on(bare, metaSrc), dst]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(parseEvents(r.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ mode: 'python', failed: 0 });
    expect(await metaOf(dst)).toEqual(await metaOf(metaSrc));
  });

  it('sets numeric owners in SFTP mode with --preserve=owner, and refuses --xattrs there with a usage error', async () => {
    const dst = join(work.path, 'meta-sftp');
    // The big file in a batch here: its striped copy is tested above.
    const r = await runFerry(['cp', '-r', '--preserve=owner', ...common(sshd, ['--mode', 'sftp', '--stripe-files-over', '128MiB']), metaSrc, on(sshd, dst)]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const got = await metaOf(dst);
    for (const p of ['owned.txt', 'numeric.txt', 'dir-owned', 'link', 'dir-owned/inner.txt', 'big.bin']) {
      const st = await lstat(join(metaSrc, p));
      expect({ p, uid: got[p]!.uid, gid: got[p]!.gid }).toEqual({ p, uid: st.uid, gid: st.gid });
    }
    const refused = await runFerry(['cp', '-r', '--xattrs', ...common(sshd, ['--mode', 'sftp']), metaSrc, on(sshd, join(work.path, 'meta-sftp-x'))]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--xattrs and --acls need ferry serve or python3 on .*SFTP can neither read nor set extended attributes/);
  });
});

describe('a rerun follows metadata changed at the source', () => {
  /** A tree of small files, a link and a big (striped) file, copied once; then `change` alters metadata only, and a rerun must carry it over. */
  async function rerunAfter(name: string, server: Sshd, direction: 'push' | 'pull', extra: string[]): Promise<void> {
    const src = join(work.path, `${name}-src`);
    await mkdir(join(src, 'sub'), { recursive: true });
    for (const f of ['mode.txt', 'owner.txt', 'attr.txt', 'same.txt', 'sub/same.txt']) await appendFile(join(src, f), `${f}\n`);
    await symlink('same.txt', join(src, 'link'));
    await writeFile(join(src, 'big.bin'), Buffer.alloc(3 * 1024 * 1024, 9));
    await setAttribute(join(src, 'attr.txt'), 'user.old', 'before');
    const dst = join(work.path, `${name}-dst`);
    const args = ['cp', '-r', '-p', '--preserve=owner', '--xattrs', ...common(server, extra), direction === 'push' ? src : on(server, src), direction === 'push' ? on(server, dst) : dst];
    const first = await runFerry(args);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(await metaOf(dst)).toEqual(await metaOf(src));

    // chmod, chown, setfattr: the ctime changes, not the size, mtime or inode.
    await chmod(join(src, 'mode.txt'), 0o600);
    await chown(join(src, 'owner.txt'), user.uid, user.gid);
    await setAttribute(join(src, 'attr.txt'), 'user.new', 'after');
    await removeAttribute(join(src, 'attr.txt'), 'user.old');
    await lchown(join(src, 'link'), user.uid, user.gid);
    await chown(join(src, 'big.bin'), user.uid, user.gid);
    await chmod(join(src, 'big.bin'), 0o640);
    const again = await runFerry(args);
    expect(again.stderr).toBe('');
    expect(again.code).toBe(0);
    // The changed entries alone go again (three small files, the link, the big file); the other two not.
    const done = parseEvents(again.stdout).find((e) => e.type === 'tree.done')!;
    expect(done).toMatchObject({ files: 4, symlinks: 1, resumedFiles: 2, failed: 0 });
    const want = await metaOf(src);
    expect(want['owner.txt']).toMatchObject({ uid: user.uid });
    expect(want['attr.txt']!.xattrs).toEqual({ 'user.new': Buffer.from('after').toString('hex') });
    expect(await metaOf(dst)).toEqual(want);
    for (const f of ['mode.txt', 'big.bin']) expect(((await stat(join(dst, f))).mode & 0o7777).toString(8)).toBe(((await stat(join(src, f))).mode & 0o7777).toString(8));

    // Unchanged since: nothing is sent.
    const third = await runFerry(args);
    expect(third.code).toBe(0);
    expect(parseEvents(third.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 0, symlinks: 0, bytes: 0 });

    // A journal an older ferry wrote (no metadata digests) still resumes: nothing is sent again.
    const journal = join(parseEvents(third.stdout).find((e) => e.type === 'tree.start')!.stateDir as string, 'tree.ndjson');
    const old = (await readFile(journal, 'utf8')).split('\n').filter((l) => l !== '').map((l) => { const { a: _a, ...rest } = JSON.parse(l) as Record<string, unknown>; return JSON.stringify(rest); });
    await writeFile(journal, old.join('\n') + '\n');
    await chmod(join(src, 'same.txt'), 0o600);
    const older = await runFerry(args);
    expect(older.code).toBe(0);
    expect(parseEvents(older.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 0, symlinks: 0, bytes: 0, resumedFiles: 7 });
  }

  /** A big (striped) file whose mode and owner alone changed: set again by path, its bytes not sent. */
  async function bigFileAfter(name: string, server: Sshd, direction: 'push' | 'pull', extra: string[]): Promise<void> {
    const src = join(work.path, `${name}-src`);
    await mkdir(src, { recursive: true });
    await writeFile(join(src, 'big.bin'), Buffer.alloc(3 * 1024 * 1024, 5));
    await appendFile(join(src, 'small.txt'), 'small\n');
    const dst = join(work.path, `${name}-dst`);
    const args = ['cp', '-r', '-p', '--preserve=owner', ...common(server, extra), direction === 'push' ? src : on(server, src), direction === 'push' ? on(server, dst) : dst];
    const first = await runFerry(args);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    await chown(join(src, 'big.bin'), user.uid, user.gid);
    await chmod(join(src, 'big.bin'), 0o4750);
    const again = await runFerry(args);
    expect(again.stderr).toBe('');
    expect(again.code).toBe(0);
    expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 1, bytes: 0, resumedFiles: 1, failed: 0 });
    const got = await stat(join(dst, 'big.bin'));
    // Owner first, then the mode: the set-uid bit survives the chown.
    expect({ uid: got.uid, gid: got.gid, mode: (got.mode & 0o7777).toString(8) }).toEqual({ uid: user.uid, gid: user.gid, mode: '4750' });
    expect((await readFile(join(dst, 'big.bin'))).equals(await readFile(join(src, 'big.bin')))).toBe(true);
    const third = await runFerry(args);
    expect(parseEvents(third.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 0, bytes: 0, resumedFiles: 2 });
  }

  it('sets the changed mode and owner of a big file again without sending its bytes (push, ferry serve; pull, python helper; push, SFTP)', async () => {
    await bigFileAfter('rerun-big-push', sshd, 'push', ['--remote-cmd', REMOTE_CMD]);
    await bigFileAfter('rerun-big-pull', bare, 'pull', []);
    await bigFileAfter('rerun-big-sftp', sshd, 'push', ['--mode', 'sftp']);
  }, 240_000);

  it('sends a file or link again whose mode, owner or attributes changed, and nothing else (push, ferry serve)', async () => {
    await rerunAfter('rerun-push', sshd, 'push', ['--remote-cmd', REMOTE_CMD]);
  }, 180_000);

  it('does the same for a pull through the python helper', async () => {
    await rerunAfter('rerun-pull', bare, 'pull', []);
  }, 180_000);
});

describe("a rerun leaves exactly the source's attributes", () => {
  /**
   * Directories (finished by SETSTAT) and a big file (its own job): an
   * attribute removed, one changed, one added, a default ACL dropped at the
   * source, and one put on the destination's directory by someone else; the
   * rerun moves no byte and leaves the source's exact set.
   */
  async function exactAfter(name: string, server: Sshd, direction: 'push' | 'pull', extra: string[]): Promise<void> {
    const src = join(work.path, `${name}-src`);
    await mkdir(join(src, 'd', 'e'), { recursive: true });
    await appendFile(join(src, 'd', 'small.txt'), 'small\n');
    await writeFile(join(src, 'big.bin'), Buffer.alloc(3 * 1024 * 1024, 3));
    await setAttribute(join(src, 'd'), 'user.gone', 'removed later');
    await setAttribute(join(src, 'd'), 'user.changes', 'before');
    await setAttribute(join(src, 'd'), 'system.posix_acl_default', acl([[USER_OBJ, 7], [USER, 5, user.uid], [GROUP_OBJ, 5], [MASK, 5], [OTHER, 0]]));
    await setAttribute(join(src, 'd', 'e'), 'user.deep', 'removed later');
    await setAttribute(join(src, 'big.bin'), 'user.drop', 'removed later');
    await setAttribute(join(src, 'big.bin'), 'user.keep', 'before');
    const dst = join(work.path, `${name}-dst`);
    const args = ['cp', '-r', '-p', '--xattrs', '--acls', ...common(server, extra), direction === 'push' ? src : on(server, src), direction === 'push' ? on(server, dst) : dst];
    const first = await runFerry(args);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(await metaOf(dst)).toEqual(await metaOf(src));

    await removeAttribute(join(src, 'd'), 'user.gone');
    await setAttribute(join(src, 'd'), 'user.changes', 'after');
    await removeAttribute(join(src, 'd'), 'system.posix_acl_default');
    await removeAttribute(join(src, 'd', 'e'), 'user.deep');
    await removeAttribute(join(src, 'big.bin'), 'user.drop');
    await setAttribute(join(src, 'big.bin'), 'user.keep', 'after');
    await setAttribute(join(src, 'big.bin'), 'user.added', 'new');
    // As on a first run into a directory that is there already: what the source does not have goes.
    await setAttribute(join(dst, 'd'), 'user.planted', 'not the source\'s');
    const again = await runFerry(args);
    expect(again.stderr).toBe('');
    expect(again.code).toBe(0);
    // The big file's attributes set by path: no byte moves.
    expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ mode: server === bare ? 'python' : 'helper', files: 1, bytes: 0, resumedFiles: 1, failed: 0 });
    const want = await metaOf(src);
    expect(want['d']!.xattrs).toEqual({ 'user.changes': Buffer.from('after').toString('hex') });
    expect(want['d/e']!.xattrs).toEqual({});
    expect(want['big.bin']!.xattrs).toEqual({ 'user.added': Buffer.from('new').toString('hex'), 'user.keep': Buffer.from('after').toString('hex') });
    expect(await metaOf(dst)).toEqual(want);
    expect((await readFile(join(dst, 'big.bin'))).equals(await readFile(join(src, 'big.bin')))).toBe(true);
  }

  it('removes and changes attributes of directories and of a big file without sending its bytes (push, ferry serve)', async () => {
    await exactAfter('exact-push', sshd, 'push', ['--remote-cmd', REMOTE_CMD]);
  }, 120_000);

  it('does the same for a push to the python helper, and for a pull (written here) from it', async () => {
    await exactAfter('exact-push-python', bare, 'push', []);
    await exactAfter('exact-pull', bare, 'pull', []);
  }, 120_000);
});

describe('--fail-fast', () => {
  it('stops at the first entry that fails, with its exit code, and keeps what is journaled', async () => {
    // The existing directory receives the tree as ff-src/, where a directory stands in b.txt's way.
    const { tree, into, dst } = await treeWithConflict(work.path, 'ff-src', join(work.path, 'ff-dst'));
    const args = ['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), tree, on(sshd, into)];
    const r = await runFerry([...args.slice(0, 2), '--fail-fast', ...args.slice(2)]);
    // DEST_CONFLICT's own exit code, not 72.
    expect(r.code).toBe(25);
    expect(r.stderr).toMatch(/b\.txt cannot be made: a directory is in the way there.*--fail-fast stopped the copy/);
    const events = parseEvents(r.stdout);
    expect(events.find((e) => e.type === 'tree.done')).toBeUndefined();
    const start = events.find((e) => e.type === 'tree.start')!;
    const failed = (await readFile(join(start.stateDir as string, 'failed.ndjson'), 'utf8')).trim().split('\n').map((l) => (JSON.parse(l) as { path: string }).path);
    expect(failed).toEqual(['b.txt']);
    // Without the obstacle and without --fail-fast, the same copy goes on from its journal.
    await rm(join(dst, 'b.txt'), { recursive: true });
    const again = await runFerry(args);
    expect(again.code).toBe(0);
    expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ failed: 0 });
    expect((await listAll(dst)).sort()).toEqual(['a.txt', 'b.txt', 'sub', 'sub/c.txt']);
  });
});

describe('remote globs and -r with a file', () => {
  it('expands a pattern on the remote side without a shell: each match a source (ferry serve)', async () => {
    const dst = join(work.path, 'glob-helper');
    await mkdir(dst);
    const r = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), on(sshd, `${globSrc}/run*`), dst + '/']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect((await listAll(dst)).sort()).toEqual(['run1', 'run1/a.txt', 'run2', 'run2/b.txt', 'run3.txt']);
  });

  it('copies the one match of a pattern as a file with -r (python helper), and matches with readdir in SFTP mode', async () => {
    const one = join(work.path, 'glob-python.txt');
    const r = await runFerry(['cp', '-r', ...common(bare), on(bare, `${globSrc}/run?.txt`), one]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await readFile(one, 'utf8')).toBe('run3.txt\n');
    const dst = join(work.path, 'glob-sftp');
    await mkdir(dst);
    const s = await runFerry(['cp', '-r', ...common(sshd, ['--mode', 'sftp']), on(sshd, `${globSrc}/run[!2]*`), dst]);
    expect(s.stderr).toBe('');
    expect(s.code).toBe(0);
    expect((await listAll(dst)).sort()).toEqual(['run1', 'run1/a.txt', 'run3.txt']);
  });

  it('says "No such file or directory" for a pattern that matches nothing, and never runs what it holds', async () => {
    const planted = join(globSrc, 'PLANTED');
    const r = await runFerry(['cp', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), on(sshd, `${globSrc}/$(touch ${planted})*`), join(work.path, 'nothing')]);
    expect(r.code).toBe(10);
    expect(r.stderr).toContain(`${globSrc}/$(touch ${planted})*: No such file or directory`);
    await expect(stat(planted)).rejects.toThrow();
  });

  it('copies a local file named with -r as the file', async () => {
    const dst = join(work.path, 'file-r.txt');
    const r = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), join(globSrc, 'other.txt'), on(sshd, dst)]);
    expect(r.code).toBe(0);
    expect(await readFile(dst, 'utf8')).toBe('other.txt\n');
  });
});
