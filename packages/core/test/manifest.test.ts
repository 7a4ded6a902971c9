import { describe, expect, it } from 'vitest';
import { FerryError, algorithmOfDigest, formatManifest, hashBytes, parseManifest, rootHash } from '@ferry/core';
import type { ManifestEntry, ManifestFacts } from '@ferry/core';

const facts: ManifestFacts = { kind: 'tree', job: 'abc', source: '/data/p', destination: 'dtn:/in/p', hash: 'xxh3', createdAt: '2026-01-01T00:00:00.000Z', finishedAt: '2026-01-01T00:01:00.000Z' };
const h = (s: string) => hashBytes('xxh3', Buffer.from(s));
const ranges = [h('r0'), h('r1')];

const entries: ManifestEntry[] = [
  { path: 'zeta', type: 'file', size: 3, hash: h('zeta'), algorithm: 'xxh3' },
  { path: 'big', type: 'file', size: 10, rangeBytes: 8, ranges, root: rootHash('xxh3', ranges), algorithm: 'xxh3' },
  { path: 'l', type: 'symlink', target: '../elsewhere' },
  { path: 'B', type: 'file', size: 1, hash: hashBytes('crc32', Buffer.from('B')), algorithm: 'crc32' },
  { path: 'é', type: 'unknown' },
];

function refused(text: string): string {
  try {
    parseManifest(text, 'm');
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('USAGE');
    return (err as Error).message;
  }
  throw new Error('parseManifest accepted it');
}

describe('manifest', () => {
  it('writes the header, then the entries sorted by their UTF-8 bytes, each algorithm left out where it is the header\'s', () => {
    const lines = formatManifest(facts, entries).trimEnd().split('\n');
    expect(JSON.parse(lines[0]!)).toEqual({ format: 'ferry-manifest', version: 1, ...facts, entries: 5, bytes: 14, root: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(lines.slice(1)).toEqual([
      `{"path":"B","type":"file","size":1,"algorithm":"crc32","hash":"${hashBytes('crc32', Buffer.from('B'))}"}`,
      `{"path":"big","type":"file","size":10,"rangeBytes":8,"root":"${rootHash('xxh3', ranges)}","ranges":["${ranges[0]}","${ranges[1]}"]}`,
      '{"path":"l","type":"symlink","target":"../elsewhere"}',
      `{"path":"zeta","type":"file","size":3,"hash":"${h('zeta')}"}`,
      '{"path":"é","type":"unknown"}',
    ]);
  });

  it('the root is the hash of the entry lines as written, newlines included', () => {
    const text = formatManifest(facts, entries);
    const body = text.slice(text.indexOf('\n') + 1);
    expect((JSON.parse(text.split('\n')[0]!) as { root: string }).root).toBe(hashBytes('xxh3', Buffer.from(body)));
  });

  it('reads back what it wrote, and the same entries in another order make the same text', () => {
    const text = formatManifest(facts, entries);
    const m = parseManifest(text, 'm');
    expect(m.header).toMatchObject({ kind: 'tree', job: 'abc', hash: 'xxh3', entries: 5, bytes: 14 });
    expect(m.entries.map((e) => e.path)).toEqual(['B', 'big', 'l', 'zeta', 'é']);
    expect(m.entries[0]).toEqual({ path: 'B', type: 'file', size: 1, hash: hashBytes('crc32', Buffer.from('B')), algorithm: 'crc32' });
    expect(formatManifest(facts, [...entries].reverse())).toBe(text);
  });

  it('refuses what is not a manifest, and a version it does not know, saying what to do', () => {
    expect(refused('{"hello":1}\n')).toBe(`m: not a ferry manifest (its first line must be a JSON object with "format":"ferry-manifest"): 'ferry manifest JOB' writes one`);
    expect(refused('')).toContain('not a ferry manifest');
    const text = formatManifest(facts, entries);
    expect(refused(text.replace('"version":1', '"version":2'))).toBe('m: a ferry manifest of version 2, which this ferry does not read (it reads version 1): verify it with the ferry that wrote it, or a newer one');
  });

  it('refuses a manifest whose entries were changed, removed or reordered after it was written', () => {
    const text = formatManifest(facts, entries);
    expect(refused(text.replace('../elsewhere', '/etc'))).toMatch(/^m: damaged: its entries hash to [0-9a-f]{16}, its header says [0-9a-f]{16}/);
    const lines = text.trimEnd().split('\n');
    expect(refused([lines[0], ...lines.slice(2)].join('\n') + '\n')).toContain('damaged');
    expect(refused([lines[0], lines[2], lines[1], ...lines.slice(3)].join('\n') + '\n')).toContain('damaged');
  });

  it('refuses entries that leave the root, repeat a path or do not add up, naming the line', () => {
    const one = (e: object) => formatManifest(facts, [e as ManifestEntry]);
    expect(refused(one({ path: '../x', type: 'unknown' }))).toBe(`m: line 2: "../x" is a path with a '..' component: entry paths are relative to the root, without '.' or '..'`);
    expect(refused(one({ path: '/etc/passwd', type: 'unknown' }))).toContain('is an absolute path');
    expect(refused(one({ path: 'a//b', type: 'unknown' }))).toContain("a path with a '' component");
    expect(refused(formatManifest(facts, [{ path: 'a', type: 'unknown' }, { path: 'a', type: 'unknown' }]))).toBe('m: line 3: a is listed twice');
    expect(refused(one({ path: 'big', type: 'file', size: 20, rangeBytes: 8, ranges, root: rootHash('xxh3', ranges) }))).toBe('m: line 2: big: 2 range hashes for 20 bytes in ranges of 8');
    expect(refused(one({ path: 'big', type: 'file', size: 10, rangeBytes: 8, ranges, root: h('other') }))).toBe("m: line 2: big's root is not the hash of its range hashes");
    expect(refused(one({ path: 'f', type: 'file', size: 1 }))).toBe('m: line 2: f: a file needs a hash (lowercase hex) or ranges');
    const dir = '{"path":"d","type":"dir"}';
    const header = { format: 'ferry-manifest', version: 1, kind: 'tree', source: 's', destination: 'd', hash: 'xxh3', entries: 1, bytes: 0, root: hashBytes('xxh3', Buffer.from(dir + '\n')) };
    expect(refused(`${JSON.stringify(header)}\n${dir}\n`)).toBe('m: line 2: d: type must be file, symlink or unknown, got "dir"');
    expect(refused(formatManifest({ ...facts, kind: 'file' }, [{ path: 'l', type: 'symlink', target: 'x' }]))).toBe('m: a manifest of kind "file" must have exactly one file entry');
  });

  it('tells the algorithm of a digest by its length', () => {
    expect(algorithmOfDigest(hashBytes('xxh3', Buffer.from('x')))).toBe('xxh3');
    expect(algorithmOfDigest(hashBytes('crc32', Buffer.from('x')))).toBe('crc32');
    expect(algorithmOfDigest(hashBytes('sha256', Buffer.from('x')))).toBe('sha256');
    expect(algorithmOfDigest('12345')).toBeUndefined();
    expect(algorithmOfDigest('ABCDEF0123456789')).toBeUndefined();
  });
});
