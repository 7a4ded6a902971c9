import { describe, expect, it } from 'vitest';
import { posix } from 'node:path';
import { firstBadDirectory, joinUnder, pathPrefixes } from '@ferry/core';
import type { PathKind } from '@ferry/core';

/** A file system as a map of path -> kind; anything else is missing. Records what was looked at. */
function fs(entries: Record<string, PathKind>): { probe: (p: string) => Promise<PathKind>; seen: string[] } {
  const seen: string[] = [];
  return {
    seen,
    probe: async (p) => {
      seen.push(p);
      return entries[p] ?? 'missing';
    },
  };
}

describe('pathPrefixes', () => {
  it('lists the directories on the way, from the top', () => {
    expect(pathPrefixes('/a/b/c')).toEqual(['/a', '/a/b', '/a/b/c']);
    expect(pathPrefixes('/a//b/')).toEqual(['/a', '/a/b']);
    expect(pathPrefixes('a/b')).toEqual(['a', 'a/b']);
    expect(pathPrefixes('../x')).toEqual(['..', '../x']);
    expect(pathPrefixes('/')).toEqual([]);
  });
});

describe('firstBadDirectory', () => {
  it('names the first missing component, not the deepest', async () => {
    const { probe, seen } = fs({ '/data': 'directory' });
    expect(await firstBadDirectory('/data/in/2024/run7', probe)).toEqual({ path: '/data/in', problem: 'missing' });
    // It stops there: nothing below a missing directory is looked at.
    expect(seen).toEqual(['/data', '/data/in']);
  });

  it('names a file standing where a directory should be', async () => {
    const { probe } = fs({ '/w': 'directory', '/w/dst': 'other' });
    expect(await firstBadDirectory('/w/dst', probe)).toEqual({ path: '/w/dst', problem: 'not-directory' });
    expect(await firstBadDirectory('/w/dst/sub/', probe)).toEqual({ path: '/w/dst', problem: 'not-directory' });
  });

  it('walks a relative path from its first component', async () => {
    const { probe } = fs({ in: 'directory' });
    expect(await firstBadDirectory('in/new', probe)).toEqual({ path: 'in/new', problem: 'missing' });
  });

  it('finds nothing when every component is a directory', async () => {
    const { probe } = fs({ '/a': 'directory', '/a/b': 'directory' });
    expect(await firstBadDirectory('/a/b/', probe)).toBeUndefined();
  });

  it('passes on a failure to look (permission denied)', async () => {
    const probe = async (p: string): Promise<PathKind> => {
      if (p === '/secret') throw Object.assign(new Error('denied'), { code: 'EACCES' });
      return 'directory';
    };
    await expect(firstBadDirectory('/secret/x', probe)).rejects.toThrow('denied');
  });
});

describe('joinUnder', () => {
  it('gives what posix.join gives, clean paths or not', () => {
    const roots = ['/', '/data', '/data/', '/data//in', '/a/./b', '/a/../b', '/x/y.', '/.x', 'rel', 'rel/a', ''];
    const rels = ['a', 'a/b', 'a/', '/a', 'a//b', './a', 'a/.', 'a/..', '../a', '..', '.', '.a', '..a', 'a..', 'a/.b/c', 'a/..b', '...', 'a b/c\nd'];
    for (const root of roots) for (const rel of rels) expect(joinUnder(root, rel), JSON.stringify([root, rel])).toBe(posix.join(root, rel));
  });

  it('matches posix.join on random paths of /, . and letters', () => {
    const pick = (n: number) => Array.from({ length: n }, () => '/.a'[Math.floor(Math.random() * 3)]).join('');
    for (let i = 0; i < 5000; i++) {
      const root = `/${pick(1 + (i % 7))}`;
      const rel = pick(1 + (i % 9));
      expect(joinUnder(root, rel), JSON.stringify([root, rel])).toBe(posix.join(root, rel));
    }
  });
});
