import { describe, expect, it } from 'vitest';
import { TreeMatcher } from '@ferry/core';
import type { MatchOutcome, TreeEntry, WalkItem } from '@ferry/core';

let ino = 100;
function item(path: string, kind: TreeEntry['kind'], size = 0, extra: Partial<TreeEntry> = {}): WalkItem {
  return { entry: { path, kind, size, mode: 0o644, uid: 1000, gid: 1000, mtimeMs: 1e12, atimeMs: 1e12, dev: 1, ino: ino++, nlink: 1, ...extra } };
}

function brief(outcomes: MatchOutcome[]): string[] {
  return outcomes.map((o) => ('compare' in o ? `? ${o.path} ${o.compare.size}` : `${o.status} ${o.path}`));
}

describe('TreeMatcher', () => {
  it('pairs entries by tree path whatever order each side gives them in', () => {
    const m = new TreeMatcher({ sizeOnly: false });
    const out: MatchOutcome[] = [];
    out.push(...m.add('src', item('', 'dir')), ...m.add('src', item('a', 'file', 10)), ...m.add('src', item('b', 'file', 0)));
    expect(out).toEqual([]);
    expect(m.held).toEqual({ src: 3, dst: 0 });
    out.push(...m.add('dst', item('b', 'file', 0)), ...m.add('dst', item('a', 'file', 10)), ...m.add('dst', item('', 'dir')));
    // The two root directories are not an entry of their own.
    expect(brief(out)).toEqual(['same b', '? a 10']);
    expect(m.held).toEqual({ src: 0, dst: 0 });
    expect(m.finish()).toEqual([]);
  });

  it('decides kinds, sizes and link targets without content, and leaves one-sided entries to the end', () => {
    const m = new TreeMatcher({ sizeOnly: false });
    const out = [
      ...m.add('src', item('d', 'dir')),
      ...m.add('dst', item('d', 'file', 3)),
      ...m.add('src', item('s', 'file', 3)),
      ...m.add('dst', item('s', 'file', 4)),
      ...m.add('src', item('l', 'symlink', 0, { target: 'x' })),
      ...m.add('dst', item('l', 'symlink', 0, { target: 'y' })),
      ...m.add('src', item('only-src', 'file', 1)),
      ...m.add('dst', item('only-dst', 'file', 1)),
    ];
    expect(out).toEqual([
      { path: 'd', status: 'differ', reason: 'a directory in the source, a file in the destination' },
      { path: 's', status: 'differ', reason: '3 bytes in the source, 4 in the destination' },
      { path: 'l', status: 'differ', reason: 'link to x in the source, to y in the destination' },
    ]);
    expect(brief(m.finish())).toEqual(['missing-on-dst only-src', 'missing-on-src only-dst']);
  });

  it('reports roots that are files, or of different kinds', () => {
    const m = new TreeMatcher({ sizeOnly: false });
    expect(brief([...m.add('src', item('', 'file', 5)), ...m.add('dst', item('', 'file', 5))])).toEqual(['?  5']);
    const k = new TreeMatcher({ sizeOnly: false });
    expect(brief([...k.add('src', item('', 'dir')), ...k.add('dst', item('', 'file', 5))])).toEqual(['differ ']);
  });

  it('with sizeOnly, files of one size are the same', () => {
    const m = new TreeMatcher({ sizeOnly: true });
    expect(brief([...m.add('src', item('a', 'file', 5)), ...m.add('dst', item('a', 'file', 5))])).toEqual(['same a']);
  });

  it('reports a walk error as an error, also one that comes after its directory was paired', () => {
    const m = new TreeMatcher({ sizeOnly: false });
    const err = (path: string): WalkItem => ({ path, error: { code: 'EACCES', message: 'permission denied' } });
    const out = [...m.add('src', err('x')), ...m.add('dst', item('x', 'file', 1)), ...m.add('src', item('d', 'dir')), ...m.add('dst', item('d', 'dir')), ...m.add('dst', err('d'))];
    expect(out).toEqual([{ path: 'x', status: 'error', reason: 'source: permission denied' }, { path: 'd', status: 'same' }]);
    expect(m.finish()).toEqual([{ path: 'd', status: 'error', reason: 'destination: permission denied' }]);
  });

  it('compares a further name of a file as the file, whichever name each side saw first', () => {
    const m = new TreeMatcher({ sizeOnly: false });
    const out = [
      ...m.add('src', item('a', 'file', 7, { nlink: 2 })),
      ...m.add('src', item('b', 'hardlink', 0, { nlink: 2, target: 'a' })),
      ...m.add('dst', item('b', 'file', 7, { nlink: 2 })),
      ...m.add('dst', item('a', 'hardlink', 0, { nlink: 2, target: 'b' })),
    ];
    expect(brief(out)).toEqual(['? b 7', '? a 7']);
  });

  it("passes on the hash a side's walk brought with a file (a remote walk asked for them), not a further name's", () => {
    const m = new TreeMatcher({ sizeOnly: false });
    const out = [
      ...m.add('src', item('a', 'file', 7, { hash: 'aaaaaaaaaaaaaaaa' })),
      ...m.add('dst', item('a', 'file', 7)),
      ...m.add('src', item('b', 'file', 7, { hash: 'bbbbbbbbbbbbbbbb' })),
      ...m.add('dst', item('b', 'file', 7, { hash: 'cccccccccccccccc' })),
      ...m.add('src', item('c', 'file', 9, { nlink: 2, hash: 'dddddddddddddddd' })),
      ...m.add('src', item('d', 'hardlink', 0, { nlink: 2, target: 'c' })),
      ...m.add('dst', item('d', 'file', 9, { hash: 'eeeeeeeeeeeeeeee' })),
      // Sizes that differ decide without any hash.
      ...m.add('src', item('e', 'file', 1, { hash: 'ffffffffffffffff' })),
      ...m.add('dst', item('e', 'file', 2, { hash: 'ffffffffffffffff' })),
    ];
    expect(out.map((o) => ('compare' in o ? [o.path, o.compare] : [o.path, o.status]))).toEqual([
      ['a', { size: 7, srcHash: 'aaaaaaaaaaaaaaaa' }],
      ['b', { size: 7, srcHash: 'bbbbbbbbbbbbbbbb', dstHash: 'cccccccccccccccc' }],
      ['d', { size: 9, dstHash: 'eeeeeeeeeeeeeeee' }],
      ['e', 'differ'],
    ]);
  });
});
