import { describe, expect, it } from 'vitest';
import { firstBadDirectory, pathPrefixes } from '@ferry/core';
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
