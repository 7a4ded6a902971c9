import { mkdtemp, readFile, rm, stat, symlink, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TreeEntry } from '@ferry/core';
import { TreeJournal, alreadyDone, metaDigest, recordOf } from '../src/tree-journal.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-tree-journal-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function entry(path: string, size: number, mtimeMs = 1000, ino = 7): TreeEntry {
  return { path, kind: 'file', size, mode: 0o644, uid: 0, gid: 0, mtimeMs, atimeMs: mtimeMs, dev: 1, ino, nlink: 1 };
}

describe('TreeJournal', () => {
  it('keeps what was appended across a reopen, and tells changed entries apart', async () => {
    const path = join(dir, 'tree.ndjson');
    const { journal, state } = await TreeJournal.open(path);
    expect(state.done.size).toBe(0);
    await journal.append([recordOf(entry('a', 10), { hash: 'ab' }), recordOf(entry('d/b', 0))]);
    await journal.append([recordOf(entry('big', 1 << 30), { job: '00ff' })]);
    await journal.close();

    const again = await TreeJournal.open(path);
    await again.journal.close();
    expect([...again.state.done.keys()]).toEqual(['a', 'd/b', 'big']);
    expect(again.state.done.get('big')).toEqual({ size: 1 << 30, mtimeMs: 1000, ino: 7, job: '00ff' });
    expect(alreadyDone(again.state, entry('a', 10))).toBe(true);
    // Size, mtime or inode changed: sent again.
    expect(alreadyDone(again.state, entry('a', 11))).toBe(false);
    expect(alreadyDone(again.state, entry('a', 10, 2000))).toBe(false);
    expect(alreadyDone(again.state, entry('a', 10, 1000, 8))).toBe(false);
    expect(alreadyDone(again.state, entry('c', 10))).toBe(false);
  });

  it('sends again an entry whose metadata digest changed, and trusts a record without one (an older journal)', async () => {
    const path = join(dir, 'tree.ndjson');
    const meta = metaDigest({ mode: 0o644, uid: 1000, gid: 1000, user: 'ann', xattrs: { 'user.a': Buffer.from('x') } });
    const { journal } = await TreeJournal.open(path);
    await journal.append([recordOf(entry('new', 1), { meta }), recordOf(entry('old', 1))]);
    await journal.close();
    const { journal: j, state } = await TreeJournal.open(path);
    await j.close();
    expect(state.done.get('new')!.a).toBe(meta);
    expect(alreadyDone(state, entry('new', 1), meta)).toBe(true);
    for (const other of [
      { mode: 0o600, uid: 1000, gid: 1000, user: 'ann', xattrs: { 'user.a': Buffer.from('x') } },
      { mode: 0o644, uid: 1001, gid: 1000, user: 'ann', xattrs: { 'user.a': Buffer.from('x') } },
      { mode: 0o644, uid: 1000, gid: 1000, user: 'bob', xattrs: { 'user.a': Buffer.from('x') } },
      { mode: 0o644, uid: 1000, gid: 1000, user: 'ann', xattrs: { 'user.a': Buffer.from('y') } },
      { mode: 0o644, uid: 1000, gid: 1000, user: 'ann', xattrs: { 'user.a': Buffer.from('x'), 'user.b': Buffer.from('') } },
      { mode: 0o644, uid: 1000, gid: 1000, user: 'ann' },
    ]) expect(alreadyDone(state, entry('new', 1), metaDigest(other))).toBe(false);
    // The same attributes listed in another order: the same digest.
    expect(metaDigest({ xattrs: { 'user.b': Buffer.from('2'), 'user.a': Buffer.from('1') } })).toBe(metaDigest({ xattrs: { 'user.a': Buffer.from('1'), 'user.b': Buffer.from('2') } }));
    expect(alreadyDone(state, entry('old', 1), meta)).toBe(true);
  });

  it('drops a last line cut short by a crash and appends after the last whole one', async () => {
    const path = join(dir, 'tree.ndjson');
    await writeFile(path, JSON.stringify(recordOf(entry('a', 1))) + '\n' + '{"p":"b","s":1,"m');
    const { journal, state } = await TreeJournal.open(path);
    expect([...state.done.keys()]).toEqual(['a']);
    expect(state.tornBytes).toBeGreaterThan(0);
    await journal.append([recordOf(entry('c', 2))]);
    await journal.close();
    const lines = (await readFile(path, 'utf8')).trim().split('\n');
    expect(lines.map((l) => (JSON.parse(l) as { p: string }).p)).toEqual(['a', 'c']);
  });

  it('reads a journal of several MiB in pieces: lines across their ends, a later line of a path over an earlier one, a torn tail', async () => {
    const path = join(dir, 'tree.ndjson');
    const lines = Array.from({ length: 40_000 }, (_, i) => JSON.stringify(recordOf(entry(`dir-${i % 97}/file-${i}-${'x'.repeat(i % 50)}`, i, 1000 + i, i), { hash: '0123456789abcdef' })) + '\n');
    lines.push(JSON.stringify(recordOf(entry('dir-0/file-0-', 5, 2000, 9))) + '\n');
    await writeFile(path, lines.join('') + '{"p":"torn","s":1');
    expect((await stat(path)).size).toBeGreaterThan(3 * 1024 * 1024);
    const { journal, state } = await TreeJournal.open(path);
    await journal.close();
    expect(state.done.size).toBe(40_000);
    expect(state.tornBytes).toBe('{"p":"torn","s":1'.length);
    expect(state.done.get('dir-0/file-0-')).toEqual({ size: 5, mtimeMs: 2000, ino: 9 });
    const i = 31_337;
    expect(alreadyDone(state, entry(`dir-${i % 97}/file-${i}-${'x'.repeat(i % 50)}`, i, 1000 + i, i))).toBe(true);
    expect(state.done.has('torn')).toBe(false);
  });

  it('ignores lines that are not records', async () => {
    const path = join(dir, 'tree.ndjson');
    await appendFile(path, 'garbage\n{"p":1}\n' + JSON.stringify(recordOf(entry('ok', 3))) + '\n');
    const { journal, state } = await TreeJournal.open(path);
    await journal.close();
    expect([...state.done.keys()]).toEqual(['ok']);
  });

  it('never opens a journal through a symbolic link', async () => {
    const target = join(dir, 'elsewhere');
    await writeFile(target, '');
    await symlink(target, join(dir, 'tree.ndjson'));
    await expect(TreeJournal.open(join(dir, 'tree.ndjson'))).rejects.toMatchObject({ code: 'ELOOP' });
  });
});
