/**
 * A finished job's manifest from its state directory alone, including
 * directories an older ferry wrote (no hash in tree.json, no link targets in
 * the journal, no manifest.json).
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FerryError, encodeRecord, hashBytes, rootHash } from '@ferry/core';
import type { TreeEntry } from '@ferry/core';
import { jobManifest } from '../src/manifest.js';
import { recordOf } from '../src/tree-journal.js';

let stateDir: string;
beforeEach(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'ferry-manifest-'));
});
afterEach(async () => {
  await rm(stateDir, { recursive: true, force: true });
});

const h = (s: string) => hashBytes('xxh3', Buffer.from(s));

async function jobDir(id: string, files: Record<string, string | Buffer>): Promise<void> {
  const dir = join(stateDir, 'jobs', id);
  await mkdir(dir, { recursive: true });
  for (const [name, body] of Object.entries(files)) await writeFile(join(dir, name), body, { mode: 0o600 });
}

function jobJson(id: string, extra: object = {}): string {
  return JSON.stringify({ v: 1, jobId: id, createdAt: 0, source: '/s', destination: 'h:/d', options: {}, direction: 'push', sourceLabel: '/s/big', destinationLabel: 'h:/d/big', targetPath: '/d/big', tempPath: '/d/.big.part', remoteHosts: [], fileBytes: 10, rangeBytes: 8, rangeCount: 2, hash: 'xxh3', fingerprint: {}, ...extra });
}

const treeJson = (id: string) => JSON.stringify({ v: 1, kind: 'tree', jobId: id, createdAt: 1000, source: '/s', destination: 'h:/d/', sourceLabel: '/s', destinationLabel: 'h:/d/s', targetRoot: '/d/s', options: {} });

function link(path: string, target: string): TreeEntry {
  return { path, kind: 'symlink', size: 0, mode: 0o777, uid: 0, gid: 0, mtimeMs: 1, atimeMs: 1, dev: 1, ino: 2, nlink: 1, target };
}

async function refusal(p: Promise<unknown>): Promise<FerryError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(FerryError);
  return err as FerryError;
}

describe('jobManifest', () => {
  it("a tree an older ferry copied: the hash from the digests, a record without its kind as unknown, the last line of a path winning, a torn line dropped, a big file's ranges from its own job", async () => {
    const ranges = [h('r0'), h('r1')];
    await jobDir('big1', { 'job.json': jobJson('big1'), 'status.json': JSON.stringify({ phase: 'done', pid: 1, updatedAt: 5 }), 'manifest.json': JSON.stringify({ hash: 'xxh3', rangeBytes: 8, bytes: 10, rootHash: rootHash('xxh3', ranges), rangeHashes: ranges }) });
    const lines = [
      { p: 'a', s: 1, m: 1, i: 1, h: h('old a') },
      { p: 'old-link', s: 0, m: 1, i: 2 },
      { p: 'a', s: 2, m: 2, i: 1, h: h('a') },
      { p: 'c', s: 3, m: 1, i: 3, h: hashBytes('crc32', Buffer.from('c')) },
      { p: 'big', s: 10, m: 1, i: 4, job: 'big1' },
    ];
    const journal = lines.map((l) => JSON.stringify(l) + '\n').join('') + '{"p":"torn","s":1';
    await jobDir('t1', { 'tree.json': treeJson('t1'), 'tree-status.json': JSON.stringify({ phase: 'done', pid: 1, updatedAt: 9000 }), 'tree.ndjson': journal });
    const [facts, entries] = await jobManifest(stateDir, 't1');
    expect(facts).toEqual({ kind: 'tree', job: 't1', source: '/s', destination: 'h:/d/s', hash: 'xxh3', createdAt: new Date(1000).toISOString(), finishedAt: new Date(9000).toISOString() });
    expect(entries).toEqual([
      { path: 'a', type: 'file', size: 2, hash: h('a'), algorithm: 'xxh3' },
      { path: 'old-link', type: 'unknown' },
      { path: 'c', type: 'file', size: 3, hash: hashBytes('crc32', Buffer.from('c')), algorithm: 'crc32' },
      { path: 'big', type: 'file', size: 10, rangeBytes: 8, ranges, root: rootHash('xxh3', ranges), algorithm: 'xxh3' },
    ]);
  });

  it("a symlink's record now holds its target, and becomes a symlink entry", async () => {
    await jobDir('t2', { 'tree.json': treeJson('t2'), 'tree-status.json': JSON.stringify({ phase: 'partial', pid: 1, updatedAt: 1 }), 'tree.ndjson': JSON.stringify(recordOf(link('l', '../x'))) + '\n' });
    const [, entries] = await jobManifest(stateDir, 't2');
    expect(entries).toEqual([{ path: 'l', type: 'symlink', target: '../x' }]);
  });

  it('a job still running, or one that failed, has no manifest yet', async () => {
    await jobDir('t3', { 'tree.json': treeJson('t3'), 'tree-status.json': JSON.stringify({ phase: 'running', pid: process.pid, updatedAt: 1 }), 'tree.ndjson': '' });
    expect((await refusal(jobManifest(stateDir, 't3'))).message).toBe("job t3 is not finished (running): only a finished copy has a manifest; 'ferry resume t3' finishes it");
    await jobDir('f1', { 'job.json': jobJson('f1'), 'status.json': JSON.stringify({ phase: 'failed', pid: 1, updatedAt: 1 }) });
    const e = await refusal(jobManifest(stateDir, 'f1'));
    expect(e.code).toBe('USAGE');
    expect(e.message).toContain('job f1 is not finished (failed)');
  });

  it("a ferry sync job's manifest is its last complete run's record of the whole destination; entries without a hash make it refuse, naming the fix", async () => {
    const sync = treeJson('s1').replace('"options":{}', '"options":{"compare":"mtime"}');
    const records = [
      { p: 'a', s: 1, m: 5, e: { type: 'file', size: 1, hash: h('a'), algorithm: 'xxh3' } },
      { p: 'l', s: 0, m: 5, e: { type: 'symlink', target: 'a' } },
    ];
    const file = (rs: object[]) => [{ v: 1, hash: 'xxh3', finishedAt: 7000 }, ...rs].map((l) => JSON.stringify(l) + '\n').join('');
    await jobDir('s1', { 'tree.json': sync, 'tree-status.json': JSON.stringify({ phase: 'done', pid: 1, updatedAt: 1 }), 'tree.ndjson': '', 'sync-manifest.ndjson': file(records) });
    const [facts, entries] = await jobManifest(stateDir, 's1');
    expect(facts).toEqual({ kind: 'tree', job: 's1', source: '/s', destination: 'h:/d/s', hash: 'xxh3', createdAt: new Date(1000).toISOString(), finishedAt: new Date(7000).toISOString() });
    expect(entries).toEqual([
      { path: 'a', type: 'file', size: 1, hash: h('a'), algorithm: 'xxh3' },
      { path: 'l', type: 'symlink', target: 'a' },
    ]);

    await jobDir('s2', { 'tree.json': sync.replaceAll('s1', 's2'), 'tree-status.json': JSON.stringify({ phase: 'done', pid: 1, updatedAt: 1 }), 'tree.ndjson': '', 'sync-manifest.ndjson': file([...records, { p: 'b', s: 2, m: 5 }, { p: 'c', s: 2, m: 5 }]) });
    const unknown = await refusal(jobManifest(stateDir, 's2'));
    expect(unknown.code).toBe('USAGE');
    expect(unknown.message).toMatch(/^job s2: 2 of the 4 entries at h:\/d\/s have no known hash \(b among them\).*Run 'ferry sync --compare checksum \/s h:\/d\/' once/);

    // A run that did not complete changed the destination in ways no record lists; an older ferry's sync left none.
    await jobDir('s3', { 'tree.json': sync.replaceAll('s1', 's3'), 'tree-status.json': JSON.stringify({ phase: 'partial', pid: 1, updatedAt: 1 }), 'tree.ndjson': '', 'sync-manifest.ndjson': file(records) });
    expect((await refusal(jobManifest(stateDir, 's3'))).message).toBe("job s3 is a ferry sync whose last run did not complete (partial): only a complete run leaves a manifest; run 'ferry sync /s h:/d/' again");
    await jobDir('s4', { 'tree.json': sync.replaceAll('s1', 's4'), 'tree-status.json': JSON.stringify({ phase: 'done', pid: 1, updatedAt: 1 }), 'tree.ndjson': '' });
    expect((await refusal(jobManifest(stateDir, 's4'))).message).toContain('left no manifest');
    // Hashes that vouch for the data come only from a file nobody else could have written.
    await chmod(join(stateDir, 'jobs', 's1', 'sync-manifest.ndjson'), 0o644);
    expect((await refusal(jobManifest(stateDir, 's1'))).message).toMatch(/sync-manifest\.ndjson has mode .*so others can read or change it/);
  });

  it('a single-file job without manifest.json: the ranges and root hash from its journal, once it has a final record', async () => {
    const ranges = [h('r0'), h('r1')];
    const record = (range: number) => encodeRecord({ t: 'range', range, attempt: 1, hash: ranges[range]!, bytes: 8, durable: true, agent: 'a', host: 'h', at: 1 });
    await jobDir('f2', { 'job.json': jobJson('f2'), journal: Buffer.concat([record(0), record(1)]) });
    expect((await refusal(jobManifest(stateDir, 'f2'))).message).toContain('job f2 is not finished (no record of its end)');
    await writeFile(join(stateDir, 'jobs', 'f2', 'journal'), Buffer.concat([record(0), record(1), encodeRecord({ t: 'final', rootHash: rootHash('xxh3', ranges), at: 2 })]));
    const [facts, entries] = await jobManifest(stateDir, 'f2');
    expect(facts).toMatchObject({ kind: 'file', job: 'f2', source: '/s/big', destination: 'h:/d/big', hash: 'xxh3' });
    expect(entries).toEqual([{ path: 'big', type: 'file', size: 10, rangeBytes: 8, ranges, root: rootHash('xxh3', ranges), algorithm: 'xxh3' }]);
  });
});
