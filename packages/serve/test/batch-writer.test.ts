/**
 * serve's BatchWriter on its own, on a real directory: the early sync past
 * MAX_HELD_FILES, the sync of each file where there is no `sync -f`, an
 * abandoned batch, and no descriptor left open whatever the path.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ZERO_CHUNK, createHasher } from '@ferry/core';
import type { BatchEntry } from '@ferry/core';
import { BatchWriter, EARLY_SYNC_GROUP, MAX_HELD_FILES, closeSyncShells, heldFilesCap, openFileLimit, syncShellPids } from '../src/batch.js';

const dirs: string[] = [];
afterEach(() => {
  closeSyncShells();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function fresh(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-writer-'));
  dirs.push(dir);
  return dir;
}

/** Descriptors open here, besides the sync shell's pipes (it outlives a batch). */
const openFds = () => readdirSync('/proc/self/fd').length - 2 * syncShellPids().length;
const contentOf = (i: number) => Buffer.alloc(100 + (i % 50), i % 251);

/** `sub` (made) and `n` files in it, each fed its bytes; the hashes so far (null for the directory). */
function feedFiles(dir: string, n: number, more: BatchEntry[], options?: { syncfs?: boolean }) {
  const entries: BatchEntry[] = [{ kind: 'dir', path: join(dir, 'sub') }];
  for (let i = 0; i < n; i++) entries.push({ kind: 'file', path: join(dir, 'sub', `f${i}`), size: contentOf(i).length, mode: 0o640 });
  const writer = new BatchWriter([...entries, ...more], 'crc32', options);
  writer.makeDirectories();
  const hashes: Array<string | null> = [null];
  for (let i = 0; i < n; i++) {
    writer.data(i, contentOf(i));
    const h = createHasher('crc32');
    h.update(contentOf(i));
    hashes.push(h.digest());
  }
  return { writer, hashes };
}

/** A batch of `n` files under a new directory `sub`, every file's bytes fed, the sparse one as zeros. */
function feed(dir: string, n: number, options?: { syncfs?: boolean }) {
  const { writer, hashes } = feedFiles(dir, n, [
    { kind: 'file', path: join(dir, 'sub', 'holes'), size: 3 << 20 },
    { kind: 'symlink', path: join(dir, 'sub', 'link'), target: 'f0' },
  ], options);
  writer.zeros(n, 3 << 20, ZERO_CHUNK);
  const h = createHasher('crc32');
  h.update(Buffer.alloc(3 << 20));
  hashes.push(h.digest(), null);
  return { writer, hashes };
}

describe('the open-file cap of a batch', () => {
  it('is half the soft limit of descriptors, between 16 and 1,024, a multiple of 4', () => {
    const limits = (soft: string, hard: string) => `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft.padEnd(20)} ${hard.padEnd(20)} files\n`;
    expect(openFileLimit(limits('20000', '20000'))).toBe(20000);
    expect(openFileLimit(limits('1024', '4096'))).toBe(1024);
    expect(openFileLimit(limits('unlimited', 'unlimited'))).toBeUndefined();
    expect(openFileLimit(undefined)).toBeUndefined();
    expect(heldFilesCap(20000)).toBe(1024);
    expect(heldFilesCap(1024)).toBe(512);
    expect(heldFilesCap(1000)).toBe(500);
    expect(heldFilesCap(20)).toBe(16);
    expect(heldFilesCap(undefined)).toBe(1024);
    expect(MAX_HELD_FILES % 4).toBe(0);
    expect(EARLY_SYNC_GROUP * 4).toBe(MAX_HELD_FILES);
  });
});

describe('BatchWriter', () => {
  for (const syncfs of [true, false]) {
    it(`writes ${MAX_HELD_FILES + 88} files with at most ${MAX_HELD_FILES} held open, and closes every one (${syncfs ? 'one syncfs' : 'no sync -f: each file synced'})`, async () => {
      const dir = fresh();
      const before = openFds();
      const n = MAX_HELD_FILES + 88;
      const { writer, hashes } = feed(dir, n, { syncfs });
      expect(openFds() - before).toBeLessThanOrEqual(MAX_HELD_FILES + 1);
      const results = await writer.commit(hashes);
      expect(results.every((r) => r.ok)).toBe(true);
      expect(openFds()).toBe(before);
      const names = readdirSync(join(dir, 'sub'));
      expect(names.filter((x) => x.endsWith('.part'))).toEqual([]);
      expect(names.length).toBe(n + 2);
      expect(readFileSync(join(dir, 'sub', `f${n - 1}`)).equals(contentOf(n - 1))).toBe(true);
      expect(readFileSync(join(dir, 'sub', 'holes')).equals(Buffer.alloc(3 << 20))).toBe(true);
    });
  }

  it(`syncs groups of ${EARLY_SYNC_GROUP} files in the background while the next ones arrive`, async () => {
    const dir = fresh();
    const before = openFds();
    const n = EARLY_SYNC_GROUP + 10;
    const { writer, hashes } = feedFiles(dir, n, []);
    // The first group's files were complete once the next file began; nothing else waits on them.
    expect(openFds() - before).toBeGreaterThan(EARLY_SYNC_GROUP);
    const deadline = Date.now() + 30_000;
    while (openFds() - before > n - EARLY_SYNC_GROUP && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(openFds() - before).toBeLessThanOrEqual(n - EARLY_SYNC_GROUP);
    // Not renamed yet: the batch is not committed.
    expect(readdirSync(join(dir, 'sub')).every((x) => x.endsWith('.part'))).toBe(true);
    const results = await writer.commit(hashes);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(openFds()).toBe(before);
    expect(readdirSync(join(dir, 'sub')).sort()).toEqual(Array.from({ length: n }, (_, i) => `f${i}`).sort());
  });

  it('runs the syncs of a batch\'s groups through one shell, and starts another when that one dies', async () => {
    const dir = fresh();
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const waitFor = async (done: () => boolean) => {
      const deadline = Date.now() + 30_000;
      while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    };
    const first = feedFiles(dir, 3 * EARLY_SYNC_GROUP + 5, []);
    expect((await first.writer.commit(first.hashes)).every((r) => r.ok)).toBe(true);
    // The first sync proves `sync -f` works (a process of its own); the others go through one shell.
    const [pid] = syncShellPids();
    expect(syncShellPids()).toHaveLength(1);
    process.kill(pid!, 'SIGKILL');
    await waitFor(() => syncShellPids().length === 0);
    expect(syncShellPids()).toEqual([]);
    rmSync(join(dir, 'sub'), { recursive: true });
    const second = feedFiles(dir, 3 * EARLY_SYNC_GROUP + 5, []);
    const results = await second.writer.commit(second.hashes);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(readdirSync(join(dir, 'sub')).length).toBe(3 * EARLY_SYNC_GROUP + 5);
    expect(syncShellPids()).toHaveLength(1);
    expect(syncShellPids()[0]).not.toBe(pid);
    const shell = syncShellPids()[0]!;
    closeSyncShells();
    await waitFor(() => !alive(shell));
    expect(alive(shell)).toBe(false);
  });

  it('fails the files whose hash differs, renames the others, and leaves no temporary name', async () => {
    const dir = fresh();
    const { writer, hashes } = feed(dir, 10);
    hashes[3] = 'deadbeef';
    hashes[5] = null;
    const results = await writer.commit(hashes);
    expect(results[3]).toMatchObject({ ok: false, error: { code: 'HASH_MISMATCH' } });
    expect(results[5]).toMatchObject({ ok: false, error: { code: 'SOURCE_CHANGED' } });
    expect(results.filter((r) => !r.ok).length).toBe(2);
    const names = readdirSync(join(dir, 'sub')).sort();
    expect(names).not.toContain('f2');
    expect(names).not.toContain('f4');
    expect(names.filter((x) => x.endsWith('.part'))).toEqual([]);
  });

  it('leaves nothing of an abandoned batch, and no descriptor open', () => {
    const dir = fresh();
    const before = openFds();
    const { writer } = feed(dir, 40);
    writer.abort();
    expect(openFds()).toBe(before);
    expect(readdirSync(join(dir, 'sub'))).toEqual([]);
  });
});
