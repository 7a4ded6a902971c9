import { describe, expect, it } from 'vitest';
import { resolveCopyOptions } from '@ferry/core';
import type { TreeEntry } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { metaPlanOf, pathMeta, wireMeta } from '../src/tree-meta.js';

/** Only what metaPlanOf reads of a connection: its label, mode and what it can keep. */
function conn(xattrsExact: boolean | undefined): RemoteConnection {
  return { label: 'dtn', mode: 'helper', metadata: { owners: true, names: true, xattrs: true, ...(xattrsExact === undefined ? {} : { xattrsExact }) } } as unknown as RemoteConnection;
}

const dir = { path: 'd', kind: 'dir', mode: 0o40755, uid: 0, gid: 0, xattrs: { 'user.a': new Uint8Array([1]) } } as unknown as TreeEntry;
const link = { path: 'l', kind: 'symlink', mode: 0o120777, uid: 0, gid: 0, target: 'd' } as unknown as TreeEntry;

describe('which entries set by path get an exact set of attributes', () => {
  it('a push to a helper with xattrs-exact, and every pull (this process writes), with --xattrs or --acls', () => {
    const both = resolveCopyOptions({ xattrs: true, acls: true });
    expect(metaPlanOf(both, 'push', conn(true)).exact).toEqual({ xattrs: true, acls: true });
    expect(metaPlanOf(resolveCopyOptions({ acls: true }), 'pull', conn(undefined)).exact).toEqual({ xattrs: false, acls: true });
    expect(metaPlanOf(resolveCopyOptions({}), 'push', conn(true)).exact).toBeUndefined();
  });

  it('not a push to an older helper, which would ignore the field and only add', () => {
    const plan = metaPlanOf(resolveCopyOptions({ xattrs: true }), 'push', conn(undefined));
    expect(plan.exact).toBeUndefined();
    expect(pathMeta(plan, dir)).toEqual(wireMeta(plan, dir));
  });

  it('a directory or file carries the kinds to keep exact, a link not (and the journal digest, wireMeta, is unchanged)', () => {
    const plan = metaPlanOf(resolveCopyOptions({ xattrs: true }), 'push', conn(true));
    expect(pathMeta(plan, dir)).toEqual({ ...wireMeta(plan, dir), xattrsExact: { xattrs: true, acls: false } });
    expect(wireMeta(plan, dir)).not.toHaveProperty('xattrsExact');
    expect(pathMeta(plan, link)).not.toHaveProperty('xattrsExact');
  });
});
