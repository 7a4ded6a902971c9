import { describe, expect, it } from 'vitest';
import { batchEntriesProblem, destinationId, entryMetaProblem, exactXattrsProblem, expandGlob, hasGlob, matchName, xattrWanted, xattrsToRemove } from '@ferry/core';

describe('which extended attributes travel', () => {
  const as = (xattrs: boolean, acls: boolean, root: boolean) => ({ xattrs, acls, root });
  it('takes user.* with --xattrs, ACLs with --acls, trusted.* and security.* only as root, never lustre.* or other system.*', () => {
    expect(xattrWanted('user.a', as(true, false, false))).toBe(true);
    expect(xattrWanted('user.a', as(false, true, true))).toBe(false);
    expect(xattrWanted('system.posix_acl_access', as(false, true, false))).toBe(true);
    expect(xattrWanted('system.posix_acl_default', as(true, false, true))).toBe(false);
    expect(xattrWanted('trusted.x', as(true, false, false))).toBe(false);
    expect(xattrWanted('trusted.x', as(true, false, true))).toBe(true);
    expect(xattrWanted('security.selinux', as(true, true, false))).toBe(false);
    expect(xattrWanted('lustre.lov', as(true, true, true))).toBe(false);
    expect(xattrWanted('system.nfs4_acl', as(true, true, true))).toBe(false);
  });
});

describe('an exact set of attributes (SETSTAT xattrsExact)', () => {
  it('removes what the set does not hold among the kinds asked for, nothing of other kinds, never a security label', () => {
    const listed = ['user.gone', 'user.kept', 'trusted.t', 'security.selinux', 'system.posix_acl_default', 'lustre.lov'];
    expect(xattrsToRemove(listed, { 'user.kept': new Uint8Array() }, { xattrs: true, acls: false, root: false })).toEqual(['user.gone']);
    expect(xattrsToRemove(listed, undefined, { xattrs: true, acls: true, root: true })).toEqual(['user.gone', 'user.kept', 'trusted.t', 'system.posix_acl_default']);
    expect(xattrsToRemove(listed, {}, { xattrs: false, acls: true, root: true })).toEqual(['system.posix_acl_default']);
  });

  it('checks its wire form', () => {
    expect(exactXattrsProblem(undefined, 'SETSTAT')).toBeUndefined();
    expect(exactXattrsProblem({ xattrs: true, acls: false }, 'SETSTAT')).toBeUndefined();
    expect(exactXattrsProblem(true, 'SETSTAT')).toBe('SETSTAT.xattrsExact must be a map with the booleans xattrs and acls');
    expect(exactXattrsProblem({ xattrs: true }, 'SETSTAT')).toBe('SETSTAT.xattrsExact.acls must be a boolean');
  });
});

describe('owners mapped as rsync maps them', () => {
  const db = new Map([['alice', 2001]]);
  it('uses the destination id of a name it knows, else the number', () => {
    expect(destinationId(1001, 'alice', (n) => db.get(n))).toBe(2001);
    expect(destinationId(1002, 'bob', (n) => db.get(n))).toBe(1002);
    // --numeric-ids: no name travels.
    expect(destinationId(1001, undefined, (n) => db.get(n))).toBe(1001);
  });

  it('checks owner and attribute fields on the wire', () => {
    expect(entryMetaProblem({ uid: 5, gid: 6, user: 'a', group: 'b', xattrs: { 'user.x': Buffer.from('v') } }, 'e')).toBeUndefined();
    expect(entryMetaProblem({ uid: -1 }, 'e')).toBe('e.uid must be an id from 0 to 4294967294');
    expect(entryMetaProblem({ user: 'a:b' }, 'e')).toMatch(/e.user must be a name/);
    expect(entryMetaProblem({ xattrs: { 'user.x': 'text' } }, 'e')).toMatch(/must be bytes/);
    expect(entryMetaProblem({ xattrs: { nonamespace: Buffer.alloc(1) } }, 'e')).toMatch(/bad name/);
    expect(batchEntriesProblem([{ kind: 'file', path: '/a', size: 0, uid: 1, gid: 2, xattrs: { 'user.a': Buffer.alloc(70 * 1024) } }])).toMatch(/entries\[0\].xattrs.user.a must be bytes, at most 65536/);
  });
});

describe('remote globs as sh expands them', () => {
  it('matches *, ?, classes and quoting in one component; a leading dot only explicitly', () => {
    expect(matchName('run12', 'run*')).toBe(true);
    expect(matchName('run12', 'run?')).toBe(false);
    expect(matchName('run1', 'run[0-9]')).toBe(true);
    expect(matchName('runx', 'run[!0-9]')).toBe(true);
    expect(matchName('run1', 'run[^0-9]')).toBe(false);
    expect(matchName('a]', 'a[]]')).toBe(true);
    expect(matchName('a*', 'a\\*')).toBe(true);
    expect(matchName('ab', 'a\\*')).toBe(false);
    expect(matchName('[x', '[x')).toBe(true);
    expect(matchName('.hidden', '*')).toBe(false);
    expect(matchName('.hidden', '.h*')).toBe(true);
    expect(matchName('$(touch x)', '$(touch*')).toBe(true);
    expect(hasGlob('/data/run*')).toBe(true);
    expect(hasGlob('/data/[x')).toBe(false);
    expect(hasGlob('/data/a\\*b')).toBe(false);
  });

  it('expands components against listings, sorted, and keeps only what exists after a literal tail', async () => {
    const tree: Record<string, string[]> = { '/': ['d'], '/d': ['run2', 'run1', 'other', '.run3'], '/d/run1': ['out'], '/d/run2': [] };
    const io = { list: async (d: string) => tree[d], exists: async (p: string) => p === '/d/run1/out' };
    expect(await expandGlob('/d/run*', io)).toEqual(['/d/run1', '/d/run2']);
    expect(await expandGlob('/d/*/out', io)).toEqual(['/d/run1/out']);
    expect(await expandGlob('/d/none*', io)).toEqual([]);
  });
});
