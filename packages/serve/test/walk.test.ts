import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { link, mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { walkTree } from '@ferry/serve';
import type { WalkItem } from '@ferry/serve';
import type { TreeEntry } from '@ferry/core';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-walk-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Both ways of reading: synchronous calls a chunk at a time (a fast file system), and many asynchronous ones in flight (after a slow chunk). */
let readSync = true;

async function collect(path: string, options = {}): Promise<WalkItem[]> {
  const out: WalkItem[] = [];
  for await (const item of walkTree(path, { readSync, ...options })) out.push(item);
  return out;
}
const entries = (items: WalkItem[]) => items.filter((i): i is { entry: TreeEntry } => 'entry' in i).map((i) => i.entry);
const byPath = (items: WalkItem[]) => new Map(entries(items).map((e) => [e.path, e]));

describe.each([
  ['synchronous reads', true],
  ['asynchronous reads', false],
])('walkTree, %s', (_name, sync) => {
  beforeEach(() => {
    readSync = sync;
  });

  it('reports every kind of entry with lstat metadata', async () => {
    await mkdir(join(root, 'sub/deeper'), { recursive: true, mode: 0o750 });
    await writeFile(join(root, 'a.txt'), 'hello', { mode: 0o640 });
    await writeFile(join(root, 'sub/deeper/b'), Buffer.alloc(3000, 1));
    await writeFile(join(root, 'empty'), '');
    await symlink('../a.txt', join(root, 'sub/link'));
    await symlink('/nowhere/at/all', join(root, 'dangling'));
    await link(join(root, 'a.txt'), join(root, 'sub/hard'));
    execFileSync('mkfifo', [join(root, 'fifo')]);
    // A sparse file: 64 MiB of size, one page of data.
    const fh = await open(join(root, 'sparse'), 'w');
    await fh.write(Buffer.from('x'), 0, 1, 32 * 2 ** 20);
    await fh.truncate(64 * 2 ** 20);
    await fh.close();

    const items = await collect(root);
    expect(items.filter((i) => 'error' in i)).toEqual([]);
    const m = byPath(items);
    expect([...m.keys()].sort()).toEqual(['', 'a.txt', 'dangling', 'empty', 'fifo', 'sparse', 'sub', 'sub/deeper', 'sub/deeper/b', 'sub/hard', 'sub/link'].sort());
    expect(m.get('')!.kind).toBe('dir');
    expect(m.get('sub/deeper')!).toMatchObject({ kind: 'dir', size: 0 });
    expect(m.get('sub/deeper/b')!).toMatchObject({ kind: 'file', size: 3000 });
    expect(m.get('empty')!).toMatchObject({ kind: 'file', size: 0 });
    expect(m.get('sub/link')!).toMatchObject({ kind: 'symlink', target: '../a.txt', size: 0 });
    expect(m.get('dangling')!).toMatchObject({ kind: 'symlink', target: '/nowhere/at/all' });
    expect(m.get('fifo')!.kind).toBe('special');
    expect(m.get('sparse')!.size).toBe(64 * 2 ** 20);
    expect(m.get('sparse')!.allocated).toBeLessThan(2 ** 20);
    expect(m.get('sub/deeper/b')!.allocated).toBeUndefined();
    // Two names of one file: the first seen is the file, the other a hard link to it.
    const names = [m.get('a.txt')!, m.get('sub/hard')!];
    expect(names.map((e) => e.kind).sort()).toEqual(['file', 'hardlink']);
    const hard = names.find((e) => e.kind === 'hardlink')!;
    const first = names.find((e) => e.kind === 'file')!;
    expect(hard.target).toBe(first.path);
    expect(hard.size).toBe(0);
    expect(first).toMatchObject({ size: 5, mode: 0o640, nlink: 2 });
  });

  it('emits every directory before anything under it, whatever the concurrency', async () => {
    // 3 levels of 6 directories with 5 files each: 258 directories, 1,290 files.
    const made: string[] = [];
    const grow = async (dir: string, depth: number) => {
      for (let f = 0; f < 5; f++) await writeFile(join(root, dir, `f${f}`), `${dir}/${f}`);
      if (depth === 3) return;
      for (let d = 0; d < 6; d++) {
        const sub = dir === '' ? `d${d}` : `${dir}/d${d}`;
        await mkdir(join(root, sub));
        made.push(sub);
        await grow(sub, depth + 1);
      }
    };
    await grow('', 0);
    for (const concurrency of [1, 3, 16]) {
      const items = await collect(root, { concurrency, highWater: 7 });
      const seen = new Set<string>();
      for (const e of entries(items)) {
        if (e.path !== '') {
          const parent = e.path.includes('/') ? e.path.slice(0, e.path.lastIndexOf('/')) : '';
          expect(seen.has(parent), `${e.path} came before its directory (concurrency ${concurrency})`).toBe(true);
        }
        seen.add(e.path);
      }
      expect(seen.size).toBe(1 + made.length + 5 * (1 + made.length));
    }
  });

  it('stops cleanly when the consumer stops early', async () => {
    await mkdir(join(root, 'many'));
    for (let i = 0; i < 3000; i++) await writeFile(join(root, 'many', `f${i}`), '');
    let taken = 0;
    for await (const item of walkTree(root, { highWater: 10, readSync })) {
      expect('entry' in item).toBe(true);
      if (++taken === 50) break;
    }
    expect(taken).toBe(50);
    // The whole tree is still there to walk again (nothing held open).
    expect(entries(await collect(root)).length).toBe(3002);
  });

  it('reports a name that is not UTF-8 as an error, and goes on', async () => {
    await writeFile(Buffer.concat([Buffer.from(join(root, 'bad-')), Buffer.from([0xff, 0xfe])]), 'x');
    await writeFile(join(root, 'good'), 'y');
    const items = await collect(root);
    expect(byPath(items).has('good')).toBe(true);
    const errors = items.filter((i) => 'error' in i);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ error: { code: 'ENAME', message: expect.stringMatching(/not valid UTF-8 \(bytes 6261642dfffe\)/) } });
  });

  it('walks a single file as a tree of one entry', async () => {
    await writeFile(join(root, 'one'), 'abc');
    const items = await collect(join(root, 'one'));
    expect(entries(items)).toHaveLength(1);
    expect(entries(items)[0]).toMatchObject({ path: '', kind: 'file', size: 3 });
  });

  it('reports a missing root as an error entry', async () => {
    const items = await collect(join(root, 'absent'));
    expect(items).toEqual([{ path: '', error: { code: 'ENOENT', message: expect.stringContaining('absent') } }]);
  });

  it('reports a directory it cannot read and walks the rest', async () => {
    await mkdir(join(root, 'gone'));
    await writeFile(join(root, 'kept'), 'k');
    // Root reads any directory; a directory replaced by a file between listing and reading is what a user meets.
    const items: WalkItem[] = [];
    for await (const item of walkTree(root, { concurrency: 1, highWater: 1, readSync })) {
      items.push(item);
      if ('entry' in item && item.entry.path === 'gone') {
        await rm(join(root, 'gone'), { recursive: true });
        await writeFile(join(root, 'gone'), 'now a file');
      }
    }
    expect(byPath(items).has('kept')).toBe(true);
    expect(items.filter((i) => 'error' in i)).toEqual([{ path: 'gone', error: { code: 'ENOTDIR', message: expect.any(String) } }]);
  });
});
