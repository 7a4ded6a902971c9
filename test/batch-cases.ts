/**
 * One BATCH of every kind of entry and every per-entry failure, with what
 * must be on disk after it: the cases `ferry serve` (packages/serve/test),
 * the python helper and all three modes through `RemoteConnection.writeBatch`
 * (test/batch-writes.test.ts) must all pass the same way.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { createHasher, encodeControl, encodeDataHeader } from '@ferry/core';
import type { BatchEntry, BatchEntryResult, HashAlgorithm } from '@ferry/core';

const MiB = 1024 * 1024;
export const MTIME_MS = 1_600_000_000_000;

/** A file's bytes as pieces: a Buffer travels as DATA, a number as that many zeros (ZEROS). */
export type Piece = Buffer | number;

export interface BatchCase {
  entries: BatchEntry[];
  /** Per entry: a file's pieces (empty for other kinds). */
  pieces: Piece[][];
  /** Per entry: the hash COMMIT sends (null for non-files, and where the case says the source changed). */
  srcHashes: Array<string | null>;
  /** Checks the answer and the disk. `level`: 'wire' sent a wrong hash for `badhash`; 'client' cannot, and sent it right. */
  check(results: ReadonlyArray<{ ok: boolean; error?: { code: string; path?: string; errno?: string } }>): Promise<void>;
}

export function bytesOf(pieces: Piece[]): Buffer {
  return Buffer.concat(pieces.map((p) => (typeof p === 'number' ? Buffer.alloc(p) : p)));
}

function hashOf(algorithm: HashAlgorithm, data: Buffer): string {
  const h = createHasher(algorithm);
  h.update(data);
  return h.digest();
}

/** Every `.ferry-*.part` left under `dir` (there must be none after a batch). */
export async function leftovers(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const e of await readdir(dir, { recursive: true })) if (/\.ferry-[0-9a-f]{24}\.part$/.test(String(e))) found.push(String(e));
  return found;
}

/**
 * The case, under `dir` (made here, with what must be in the way already).
 * `level` 'wire': COMMIT sends null for `changed` and a wrong hash for
 * `badhash`; 'client': `changed`'s source gives 2 bytes fewer than its size.
 */
export async function batchCase(dir: string, algorithm: HashAlgorithm, level: 'wire' | 'client'): Promise<BatchCase> {
  await mkdir(dir, { recursive: true });
  const d = join(dir, 'tree');
  // In the way, or to be replaced.
  await mkdir(join(dir, 'pre'), { recursive: true });
  await mkdir(join(dir, 'pre', 'isdir'));
  await writeFile(join(dir, 'pre', 'notdir'), 'a file where a directory goes');
  await writeFile(join(dir, 'pre', 'changed'), 'keep');
  await writeFile(join(dir, 'pre', 'replace'), 'old content that is longer');
  await writeFile(join(dir, 'victim'), 'never written through a link');
  await symlink(join(dir, 'victim'), join(dir, 'pre', 'oversym'));
  await mkdir(join(dir, 'elsewhere'));
  await symlink(join(dir, 'elsewhere'), join(dir, 'pre', 'dirlink'));

  const one = Buffer.from('x');
  const sparse: Piece[] = [randomBytes(MiB), MiB, MiB, randomBytes(MiB)];
  const moded = randomBytes(10);
  const inSub = randomBytes(100_000);
  const replace = Buffer.from('new');
  const list: Array<{ entry: BatchEntry; pieces?: Piece[] }> = [
    { entry: { kind: 'dir', path: d } },
    { entry: { kind: 'dir', path: join(d, 'sub') } },
    { entry: { kind: 'dir', path: join(dir, 'pre') } },
    { entry: { kind: 'file', path: join(d, 'empty'), size: 0 }, pieces: [] },
    { entry: { kind: 'file', path: join(d, 'one'), size: 1 }, pieces: [one] },
    { entry: { kind: 'file', path: join(d, 'sparse'), size: 4 * MiB }, pieces: sparse },
    { entry: { kind: 'file', path: join(d, 'sub', 'in-sub'), size: inSub.length }, pieces: [inSub.subarray(0, 40_000), inSub.subarray(40_000)] },
    { entry: { kind: 'symlink', path: join(d, 'link'), target: 'one', mtimeMs: MTIME_MS } },
    { entry: { kind: 'symlink', path: join(d, 'dangling'), target: 'nowhere/at/all' } },
    { entry: { kind: 'hardlink', path: join(d, 'hard'), target: join(d, 'one') } },
    { entry: { kind: 'file', path: join(dir, 'pre', 'isdir'), size: 5 }, pieces: [Buffer.from('12345')] },
    { entry: { kind: 'dir', path: join(dir, 'pre', 'notdir') } },
    // A link where a directory goes: refused, and nothing is made through it.
    { entry: { kind: 'dir', path: join(dir, 'pre', 'dirlink') } },
    { entry: { kind: 'file', path: join(dir, 'pre', 'dirlink', 'through'), size: 1 }, pieces: [Buffer.from('t')] },
    { entry: { kind: 'file', path: join(dir, 'pre', 'changed'), size: 4 }, pieces: [Buffer.from('abcd')] },
    { entry: { kind: 'file', path: join(d, 'badhash'), size: 4 }, pieces: [Buffer.from('wxyz')] },
    { entry: { kind: 'file', path: join(d, 'moded'), size: moded.length, mode: 0o640, mtimeMs: MTIME_MS, atimeMs: MTIME_MS + 5000 }, pieces: [moded] },
    { entry: { kind: 'file', path: join(dir, 'pre', 'replace'), size: replace.length }, pieces: [replace] },
    { entry: { kind: 'file', path: join(dir, 'pre', 'oversym'), size: 3 }, pieces: [Buffer.from('abc')] },
  ];
  const entries = list.map((x) => x.entry);
  const pieces = list.map((x) => x.pieces ?? []);
  const srcHashes = list.map(({ entry, pieces: p }) => {
    if (entry.kind !== 'file') return null;
    if (level === 'wire' && entry.path.endsWith('/changed')) return null;
    if (level === 'wire' && entry.path.endsWith('/badhash')) return hashOf(algorithm, Buffer.from('not what was sent'));
    return hashOf(algorithm, bytesOf(p!));
  });
  const index = (name: string) => entries.findIndex((e) => e.path.endsWith(`/${name}`));

  const check: BatchCase['check'] = async (results) => {
    expect(results).toHaveLength(entries.length);
    const failed = (name: string) => results[index(name)]!;
    expect(failed('isdir')).toMatchObject({ ok: false, error: { code: 'DEST_CONFLICT', path: join(dir, 'pre', 'isdir') } });
    expect(failed('notdir')).toMatchObject({ ok: false, error: { code: 'DEST_CONFLICT', path: join(dir, 'pre', 'notdir') } });
    expect(failed('changed')).toMatchObject({ ok: false, error: { code: 'SOURCE_CHANGED', path: join(dir, 'pre', 'changed') } });
    if (level === 'wire') expect(failed('badhash')).toMatchObject({ ok: false, error: { code: 'HASH_MISMATCH', path: join(d, 'badhash') } });
    else expect(failed('badhash').ok).toBe(true);
    expect(failed('dirlink')).toMatchObject({ ok: false, error: { code: 'DEST_CONFLICT', path: join(dir, 'pre', 'dirlink') } });
    expect(failed('through')).toMatchObject({ ok: false, error: { code: 'DEST_CONFLICT', path: join(dir, 'pre', 'dirlink', 'through') } });
    expect(await readdir(join(dir, 'elsewhere'))).toEqual([]);
    const bad = new Set(['isdir', 'notdir', 'changed', 'dirlink', 'through', ...(level === 'wire' ? ['badhash'] : [])].map(index));
    results.forEach((r, i) => {
      if (!bad.has(i)) expect({ i, path: entries[i]!.path, r }).toEqual({ i, path: entries[i]!.path, r: expect.objectContaining({ ok: true }) });
    });

    // Bytes, holes, modes and times, links.
    expect(await readFile(join(d, 'empty'))).toHaveLength(0);
    expect(await readFile(join(d, 'one'), 'utf8')).toBe('x');
    const sp = await stat(join(d, 'sparse'));
    expect((await readFile(join(d, 'sparse'))).equals(bytesOf(sparse))).toBe(true);
    // 2 MiB of data, 2 MiB of hole: far fewer than the 8192 blocks of a filled file.
    expect(sp.blocks).toBeLessThan(3 * 2048);
    expect((await readFile(join(d, 'sub', 'in-sub'))).equals(inSub)).toBe(true);
    expect(await readlink(join(d, 'link'))).toBe('one');
    expect(await readlink(join(d, 'dangling'))).toBe('nowhere/at/all');
    const hard = await stat(join(d, 'hard'));
    expect(hard.nlink).toBe(2);
    expect(hard.ino).toBe((await stat(join(d, 'one'))).ino);
    const m = await stat(join(d, 'moded'));
    expect(m.mode & 0o7777).toBe(0o640);
    expect(m.mtimeMs).toBe(MTIME_MS);
    expect((await readFile(join(d, 'moded'))).equals(moded)).toBe(true);
    // Files are created 0600 and given no other mode unless the entry says.
    expect((await stat(join(d, 'one'))).mode & 0o777).toBe(0o600);
    // Failed entries leave the target as it was.
    expect((await lstat(join(dir, 'pre', 'isdir'))).isDirectory()).toBe(true);
    expect(await readFile(join(dir, 'pre', 'notdir'), 'utf8')).toBe('a file where a directory goes');
    expect(await readFile(join(dir, 'pre', 'changed'), 'utf8')).toBe('keep');
    if (level === 'wire') await expect(lstat(join(d, 'badhash'))).rejects.toMatchObject({ code: 'ENOENT' });
    // Replaced: a file, and a link (not written through).
    expect(await readFile(join(dir, 'pre', 'replace'), 'utf8')).toBe('new');
    expect((await lstat(join(dir, 'pre', 'oversym'))).isFile()).toBe(true);
    expect(await readFile(join(dir, 'pre', 'oversym'), 'utf8')).toBe('abc');
    expect(await readFile(join(dir, 'victim'), 'utf8')).toBe('never written through a link');
    expect(await leftovers(dir)).toEqual([]);
  };
  return { entries, pieces, srcHashes, check };
}

/** The frames of `c` as a client sends them, id `id`: BATCH, the bytes, COMMIT. */
export function batchFrames(c: BatchCase, id: number, algorithm: HashAlgorithm): Buffer {
  const out: Buffer[] = [encodeControl('BATCH', id, { algorithm, entries: c.entries })];
  for (const pieces of c.pieces) {
    for (const p of pieces) {
      if (typeof p === 'number') for (let left = p; left > 0; left -= Math.min(left, MiB)) out.push(encodeControl('ZEROS', id, { length: Math.min(left, MiB) }));
      else out.push(encodeDataHeader(id, p.length), p);
    }
  }
  out.push(encodeControl('COMMIT', id, { srcHashes: c.srcHashes }));
  return Buffer.concat(out);
}

export type { BatchEntryResult };
