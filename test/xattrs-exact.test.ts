/**
 * SETSTAT's `xattrsExact` (capability `xattrs-exact`, issue 31) in both
 * helpers (`ferry serve`, ferry's python helper), spoken to through the
 * protocol client, and in the coordinator's own destination of a pull: a
 * directory's attributes of the kinds asked for become exactly the given
 * set (the others removed, a value changed), other kinds and security
 * labels are left alone;
 * a symbolic link planted where a directory goes is refused and what it
 * points to keeps its attributes and mode.
 */
import { chmod, mkdir, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getAttribute, listAttributes, setAttribute } from '@napi-rs/xattr';
import { XATTRS_EXACT_CAPABILITY } from '@ferry/core';
import type { HelperClient } from '../packages/transport/src/helper-client.js';
import { localDestination } from '../packages/coordinator/src/tree-finalize.js';
import { startLocalHelper, tempDir } from './helpers.js';

let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('ferry-xattrs-exact-');
});

afterAll(async () => {
  await work?.remove();
});

const start = async (kind: 'serve' | 'python'): Promise<HelperClient> => (await startLocalHelper(kind)).helper;

/** A POSIX default ACL as the kernel stores it: version 2, then (tag, perm, id) entries. */
function defaultAcl(): Buffer {
  const entries: Array<[number, number]> = [[0x01, 7], [0x04, 5], [0x20, 0]];
  const out = Buffer.alloc(4 + 8 * entries.length);
  out.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm], i) => {
    out.writeUInt16LE(tag, 4 + 8 * i);
    out.writeUInt16LE(perm, 6 + 8 * i);
    out.writeUInt32LE(0xffffffff, 8 + 8 * i);
  });
  return out;
}

async function valuesOf(path: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of (await listAttributes(path)).sort()) if (!n.startsWith('security.')) out[n] = (await getAttribute(path, n))!.toString();
  return out;
}

/** A directory with two user attributes and a default ACL; a link to a directory outside, which has an attribute of its own. */
async function setup(name: string) {
  const dir = join(work.path, name);
  await mkdir(join(dir, 'd'), { recursive: true });
  await setAttribute(join(dir, 'd'), 'user.gone', 'x');
  await setAttribute(join(dir, 'd'), 'user.changes', 'before');
  await setAttribute(join(dir, 'd'), 'system.posix_acl_default', defaultAcl());
  await mkdir(join(dir, 'victim'));
  await chmod(join(dir, 'victim'), 0o700);
  await setAttribute(join(dir, 'victim'), 'user.victim', 'keep me');
  await symlink(join(dir, 'victim'), join(dir, 'planted'));
  return { d: join(dir, 'd'), planted: join(dir, 'planted'), victim: join(dir, 'victim') };
}

const changed = { xattrs: { 'user.changes': new Uint8Array(Buffer.from('after')) } };

describe.each(['serve', 'python'] as const)('SETSTAT xattrsExact in the %s helper', (kind) => {
  it('leaves exactly the given user attributes on a directory, its ACL (not asked for) alone', async () => {
    const helper = await start(kind);
    try {
      expect(helper.hello?.capabilities).toContain(XATTRS_EXACT_CAPABILITY);
      const { d } = await setup(`${kind}-dir`);
      await helper.setstat(d, { ...changed, xattrsExact: { xattrs: true, acls: false }, mode: 0o750 });
      expect(Object.keys(await valuesOf(d))).toEqual(['system.posix_acl_default', 'user.changes']);
      expect((await valuesOf(d))['user.changes']).toBe('after');
      // With --acls too, an empty set: every attribute of those kinds goes, but not the destination's security label (as root).
      await setAttribute(d, 'security.ferry', 'label');
      await helper.setstat(d, { xattrsExact: { xattrs: true, acls: true } });
      expect(await valuesOf(d)).toEqual({});
      expect((await getAttribute(d, 'security.ferry'))?.toString()).toBe('label');
    } finally {
      helper.close();
    }
  });

  it('refuses a symbolic link planted where the directory goes, and changes nothing it points to', async () => {
    const helper = await start(kind);
    try {
      const { planted, victim } = await setup(`${kind}-link`);
      await expect(helper.setstat(planted, { xattrsExact: { xattrs: true, acls: true }, mode: 0o777 })).rejects.toMatchObject({ code: 'DEST_CONFLICT', message: `here:${planted} is a symbolic link now: its mode and attributes were not set; move it away and rerun` });
      expect(await valuesOf(victim)).toEqual({ 'user.victim': 'keep me' });
      expect((await stat(victim)).mode & 0o7777).toBe(0o700);
    } finally {
      helper.close();
    }
  });
});

describe("a pull's own destination", () => {
  it('sets the exact set on a directory and follows no link planted in its place', async () => {
    const { d, planted, victim } = await setup('local');
    await localDestination.setstat(d, { ...changed, xattrsExact: { xattrs: true, acls: true }, mode: 0o750 });
    expect(await valuesOf(d)).toEqual({ 'user.changes': 'after' });
    await expect(localDestination.setstat(planted, { xattrsExact: { xattrs: true, acls: true }, mode: 0o777 })).rejects.toMatchObject({ code: 'DEST_CONFLICT', message: `${planted} is a symbolic link now: its mode and attributes were not set; move it away and rerun` });
    expect(await valuesOf(victim)).toEqual({ 'user.victim': 'keep me' });
    expect((await stat(victim)).mode & 0o7777).toBe(0o700);
  });
});
