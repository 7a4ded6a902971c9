import { describe, expect, it } from 'vitest';
import type { TreeEntry, WalkItem } from '@ferry/core';
import { DestIndex, attributesAlone, planSync, syncAction, xattrsDiffer } from '../src/tree-sync.js';
import type { Comparison, PlannedChange } from '../src/tree-sync.js';

function entry(path: string, fields: Partial<TreeEntry> = {}): TreeEntry {
  return { path, kind: 'file', size: 10, mode: 0o644, uid: 0, gid: 0, mtimeMs: 1_700_000_000_500, atimeMs: 0, dev: 1, ino: 0, nlink: 1, ...fields };
}

async function* walk(...entries: TreeEntry[]): AsyncGenerator<WalkItem> {
  for (const e of entries) yield { entry: e };
}

const mtime: Comparison = { level: 'mtime', umask: 0o022, preserve: true };

describe('syncAction', () => {
  const dest = { kind: 'file' as const, size: 10, mtimeMs: 1_700_000_000_000, mode: 0o644 };
  it('compares at each level', () => {
    expect(syncAction(entry('a'), undefined, mtime)).toEqual({ action: 'create', reason: 'missing' });
    // Whole seconds: SFTP keeps no more, and a copy's time is the source's to the millisecond or second.
    expect(syncAction(entry('a'), dest, mtime).action).toBe('same');
    expect(syncAction(entry('a', { mtimeMs: 1_700_000_001_000 }), dest, mtime)).toEqual({ action: 'update', reason: 'mtime' });
    expect(syncAction(entry('a', { mtimeMs: 1_700_000_001_000 }), dest, { ...mtime, level: 'size' }).action).toBe('same');
    expect(syncAction(entry('a', { size: 11 }), dest, { ...mtime, level: 'size' })).toEqual({ action: 'update', reason: 'size' });
    expect(syncAction(entry('a', { size: 11 }), dest, { ...mtime, level: 'exists' }).action).toBe('same');
    expect(syncAction(entry('a', { mode: 0o600 }), dest, mtime)).toEqual({ action: 'update', reason: 'mode' });
    expect(syncAction(entry('a', { kind: 'symlink', size: 0, target: 'x' }), dest, mtime)).toEqual({ action: 'update', reason: 'a file is there' });
    expect(syncAction(entry('a', { kind: 'symlink', size: 0, target: 'x' }), { ...dest, kind: 'symlink', target: 'y' }, mtime)).toEqual({ action: 'update', reason: 'target' });
    expect(syncAction(entry('d', { kind: 'dir', size: 0 }), { ...dest, kind: 'dir', mode: 0o700 }, mtime).action).toBe('same');
  });

  it('compares owners only where the copy keeps them: by id, or by name as the destination maps it', () => {
    const owned = { ...dest, uid: 2000, gid: 2000, user: 'alice', group: 'lab' };
    const alice = entry('a', { uid: 1000, gid: 1000, user: 'alice', group: 'lab' });
    // Not kept: not compared.
    expect(syncAction(alice, owned, mtime).action).toBe('same');
    // By name: alice is alice there, whatever her id.
    expect(syncAction(alice, owned, { ...mtime, owners: 'names' }).action).toBe('same');
    expect(syncAction(alice, owned, { ...mtime, owners: 'ids' })).toEqual({ action: 'update', reason: 'owner' });
    // A name the destination does not know was given as the id.
    expect(syncAction(entry('a', { uid: 3000, gid: 2000, user: 'bob', group: 'lab' }), { ...owned, uid: 3000, user: 'carol' }, { ...mtime, owners: 'names' }).action).toBe('same');
    expect(syncAction(entry('a', { uid: 3000, gid: 2000, user: 'bob', group: 'lab' }), owned, { ...mtime, owners: 'names' })).toEqual({ action: 'update', reason: 'owner' });
    expect(syncAction(entry('a', { uid: 2000, gid: 7, group: 'other' }), owned, { ...mtime, owners: 'names' })).toEqual({ action: 'update', reason: 'owner' });
    // At the checksum level too (the caller compares contents of what is left the same), not at size.
    expect(syncAction(entry('a', { uid: 9 }), owned, { ...mtime, level: 'checksum', owners: 'ids' })).toEqual({ action: 'update', reason: 'owner' });
    expect(syncAction(entry('a', { uid: 9 }), owned, { ...mtime, level: 'size', owners: 'ids' }).action).toBe('same');
    // A destination walk without ids (none reported): not compared.
    expect(syncAction(entry('a', { uid: 9 }), dest, { ...mtime, owners: 'ids' }).action).toBe('same');
  });
});

describe('DestIndex and planSync', () => {
  it('plans creates, updates and deletes (children first), and links by inode', async () => {
    const index = await DestIndex.read(
      walk(
        entry('', { kind: 'dir', size: 0, mode: 0o755 }),
        entry('same', { mtimeMs: 1_700_000_000_000 }),
        entry('grown', { mtimeMs: 1_700_000_000_000 }),
        entry('old', { kind: 'dir', size: 0 }),
        entry('old/x'),
        entry('first', { ino: 5, nlink: 2, mtimeMs: 1_700_000_000_000 }),
        entry('second', { kind: 'hardlink', size: 0, ino: 5, nlink: 2, target: 'first' }),
      ),
    );
    expect(index.size).toBe(7);
    const changes: PlannedChange[] = [];
    const counts = await planSync(
      walk(
        entry('', { kind: 'dir', size: 0, mode: 0o755 }),
        entry('same'),
        entry('grown', { size: 20 }),
        entry('new'),
        entry('first', { ino: 9, nlink: 2 }),
        entry('second', { kind: 'hardlink', size: 0, ino: 9, nlink: 2, target: 'first' }),
      ),
      index,
      mtime,
      { source: async (fs) => fs.map(() => 'a'), dest: async (fs) => fs.map(() => 'a'), sourcePath: (p) => p, destPath: (p) => p },
      true,
      (c) => changes.push(c),
    );
    expect(changes.map((c) => `${c.action} ${c.path}`)).toEqual(['update grown', 'create new', 'delete old/x', 'delete old']);
    expect(counts).toEqual({ create: 1, update: 1, delete: 2, unchanged: 4, unreadable: 0 });
  });

  it('deletes nothing when part of the source could not be read, nor under an unreadable destination directory', async () => {
    const index = await DestIndex.read(
      (async function* (): AsyncGenerator<WalkItem> {
        yield { entry: entry('', { kind: 'dir', size: 0 }) };
        yield { entry: entry('extra') };
        yield { path: 'locked', error: { code: 'EACCES', message: 'permission denied' } };
      })(),
    );
    expect(index.underUnreadable('locked/x')).toBe(true);
    expect(index.underUnreadable('lockedx')).toBe(false);
    const changes: PlannedChange[] = [];
    const counts = await planSync(
      (async function* (): AsyncGenerator<WalkItem> {
        yield { entry: entry('', { kind: 'dir', size: 0 }) };
        yield { path: 'gone', error: { code: 'EACCES', message: 'permission denied' } };
      })(),
      index,
      mtime,
      { source: async (fs) => fs.map(() => 'a'), dest: async (fs) => fs.map(() => 'a'), sourcePath: (p) => p, destPath: (p) => p },
      true,
      (c) => changes.push(c),
    );
    expect(changes).toEqual([]);
    expect(counts.unreadable).toBe(1);
  });

  it('checksum: a file of the same size and time whose content differs is an update', async () => {
    const index = await DestIndex.read(walk(entry('', { kind: 'dir', size: 0 }), entry('f', { mtimeMs: 1_700_000_000_000 }), entry('g', { mtimeMs: 1_700_000_000_000 })));
    const changes: PlannedChange[] = [];
    await planSync(walk(entry('', { kind: 'dir', size: 0 }), entry('f'), entry('g')), index, { ...mtime, level: 'checksum' }, { source: async (fs) => fs.map(() => 'x'), dest: async (fs) => fs.map((f) => (f.path === 'f' ? 'y' : 'x')), sourcePath: (p) => p, destPath: (p) => p }, false, (c) => changes.push(c));
    expect(changes).toEqual([{ action: 'update', path: 'f', kind: 'file', reason: 'content' }]);
  });
});

describe('xattrsDiffer', () => {
  const bytes = (s: string) => new Uint8Array(Buffer.from(s));
  const dest = { kind: 'file' as const, size: 10, mtimeMs: 1_700_000_000_000, mode: 0o644, xattrs: { 'user.a': bytes('1'), 'security.selinux': bytes('label') } };
  const user = { xattrs: true, acls: false, root: false };
  it('finds an attribute set, changed or removed at the source, never one the destination keeps (security.*) or cannot set', () => {
    expect(xattrsDiffer(entry('f', { xattrs: { 'user.a': bytes('1') } }), dest, user)).toBe(false);
    expect(xattrsDiffer(entry('f', { xattrs: { 'user.a': bytes('2') } }), dest, user)).toBe(true);
    expect(xattrsDiffer(entry('f', { xattrs: { 'user.a': bytes('1'), 'user.b': bytes('') } }), dest, user)).toBe(true);
    expect(xattrsDiffer(entry('f'), dest, user)).toBe(true);
    // trusted.* only as root at the destination; ACLs only with --acls.
    expect(xattrsDiffer(entry('f', { xattrs: { 'user.a': bytes('1'), 'trusted.t': bytes('x'), 'system.posix_acl_access': bytes('acl') } }), dest, user)).toBe(false);
    expect(xattrsDiffer(entry('f', { xattrs: { 'user.a': bytes('1'), 'trusted.t': bytes('x') } }), dest, { ...user, root: true })).toBe(true);
    expect(xattrsDiffer(entry('f', { xattrs: { 'user.a': bytes('1') } }), { ...dest, xattrs: { ...dest.xattrs, 'system.posix_acl_access': bytes('acl') } }, { ...user, acls: true })).toBe(true);
    // Links carry none.
    expect(xattrsDiffer(entry('l', { kind: 'symlink', target: 'x' }), { ...dest, kind: 'symlink' }, user)).toBe(false);
  });

  it('makes an update of its own (reason xattrs) only where attributes are compared', async () => {
    const e = entry('f', { xattrs: { 'user.a': bytes('2') } });
    expect(attributesAlone(e, dest, mtime)).toBe(false);
    expect(attributesAlone(e, dest, { ...mtime, xattrs: user })).toBe(true);
    const index = await DestIndex.read(walk(entry('', { kind: 'dir', size: 0 }), entry('f', { xattrs: dest.xattrs, mtimeMs: 1_700_000_000_000 })));
    const changes: PlannedChange[] = [];
    await planSync(walk(entry('', { kind: 'dir', size: 0 }), e), index, { ...mtime, xattrs: user }, { source: async () => [], dest: async () => [], sourcePath: (p) => p, destPath: (p) => p }, false, (c) => changes.push(c));
    expect(changes).toEqual([{ action: 'update', path: 'f', kind: 'file', reason: 'xattrs' }]);
  });
});
