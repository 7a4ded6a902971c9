/**
 * Both helpers (`ferry serve` and ferry's python helper), spoken to through
 * the protocol client, create and touch destination files safely (the
 * `safe-files` capability): exclusive creation that a planted link or file
 * defeats, no link followed on OPEN for writing, the handle's fstat in OPEN's
 * answer, mode and times set through the handle, and a RENAME that checks
 * its names are the handle's file. The attacks with a second user and a
 * whole `ferry cp` are test/attack-files.test.ts. A directory's mode and times
 * set by name go through a descriptor opened without following a link, in
 * both helpers and on a pull's local side.
 */
import { execFileSync } from 'node:child_process';
import { chmod, lstat, mkdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SAFE_FILES_CAPABILITY } from '@ferry/core';
import type { HelperClient } from '../packages/transport/src/helper-client.js';
import { localDestination } from '../packages/coordinator/src/tree-finalize.js';
import { startLocalHelper, swapInLink, tempDir } from './helpers.js';

let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('ferry-safe-files-');
});

afterAll(async () => {
  await work?.remove();
});

const start = async (kind: 'serve' | 'python'): Promise<HelperClient> => (await startLocalHelper(kind)).helper;

describe.each(['serve', 'python'] as const)('the %s helper', (kind) => {
  let n = 0;
  const fresh = () => join(work.path, `${kind}-${++n}`);

  it('says it has safe-files and its umask', async () => {
    const helper = await start(kind);
    expect(helper.hello?.capabilities).toContain(SAFE_FILES_CAPABILITY);
    expect(helper.hello?.umask).toBe(process.umask());
    helper.close();
  });

  it('creates exclusively: a new file is 0600 and described; a link or a file at the name fails with EEXIST and is left alone', async () => {
    const helper = await start(kind);
    const path = fresh();
    const { handle, stat: st } = await helper.open(path, 'create', { size: 4096, mode: 0o600, exclusive: true });
    await helper.closeFile(handle);
    const on = await stat(path);
    expect(st).toMatchObject({ type: 'file', size: 4096, ino: on.ino, uid: on.uid, nlink: 1 });
    expect(on.mode & 0o777).toBe(0o600);

    const victim = fresh();
    await writeFile(victim, 'keep me');
    const link = fresh();
    await symlink(victim, link);
    await expect(helper.open(link, 'create', { size: 4096, exclusive: true })).rejects.toMatchObject({ errno: 'EEXIST' });
    await expect(helper.open(victim, 'create', { size: 4096, exclusive: true })).rejects.toMatchObject({ errno: 'EEXIST' });
    expect(await readFile(victim, 'utf8')).toBe('keep me');
    helper.close();
  });

  it('opens for writing without following a link (ELOOP), and reads a source through one', async () => {
    const helper = await start(kind);
    const victim = fresh();
    await writeFile(victim, 'keep me');
    const link = fresh();
    await symlink(victim, link);
    await expect(helper.open(link, 'write')).rejects.toMatchObject({ errno: 'ELOOP' });
    const { handle } = await helper.open(link, 'read');
    await helper.closeFile(handle);
    helper.close();
  });

  it('sets mode and times through the handle: a link swapped in at the name changes nothing it points at', async () => {
    const helper = await start(kind);
    const path = fresh();
    const { handle } = await helper.open(path, 'create', { size: 10, exclusive: true });
    const victim = fresh();
    await writeFile(victim, 'keep me');
    await chmod(victim, 0o600);
    await rename(path, `${path}.moved`);
    await symlink(victim, path);
    await helper.setstat({ handle }, { mode: 0o640, mtimeMs: 1_000_000_000_000 });
    const moved = await stat(`${path}.moved`);
    expect(moved.mode & 0o777).toBe(0o640);
    expect(moved.mtimeMs).toBe(1_000_000_000_000);
    expect((await stat(victim)).mode & 0o777).toBe(0o600);
    await helper.closeFile(handle);
    helper.close();
  });

  it("sets a directory's mode and times by name through a descriptor: a link swapped in for the directory is refused (DEST_CONFLICT), its target untouched", async () => {
    const helper = await start(kind);
    // A directory of the tree, finished as a push finishes it (SETSTAT by path, after its files).
    const dir = fresh();
    await mkdir(dir, { mode: 0o700 });
    await helper.setstat(dir, { mode: 0o750, mtimeMs: 1_000_000_000_000 });
    const set = await stat(dir);
    expect(set.mode & 0o777).toBe(0o750);
    expect(set.mtimeMs).toBe(1_000_000_000_000);
    // Another user renames it away and puts a link to a directory of the user's in its place.
    const victim = fresh();
    const before = await swapInLink(dir, victim);
    const refused = helper.setstat(dir, { mode: 0o777, mtimeMs: 1_000_000_000_000 });
    await expect(refused).rejects.toMatchObject({ code: 'DEST_CONFLICT', message: `here:${dir} is a symbolic link now: its mode and times were not set (the link was not followed); move it away and rerun` });
    const after = await stat(victim);
    expect(after.mode & 0o7777).toBe(before.mode & 0o7777);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    // A fifo in its place is refused too, without hanging on its open.
    await rm(dir);
    execFileSync('mkfifo', [dir]);
    await expect(helper.setstat(dir, { mode: 0o777 })).rejects.toMatchObject({ code: 'DEST_CONFLICT' });
    expect((await lstat(dir)).mode & 0o777).not.toBe(0o777);
    helper.close();
  });

  it('renames with a handle only when the name is still that file: DEST_REPLACED, the target untouched, otherwise', async () => {
    const helper = await start(kind);
    const path = fresh();
    const target = fresh();
    const { handle } = await helper.open(path, 'create', { size: 10, exclusive: true });
    await writeFile(target, 'old target');
    await rename(path, `${path}.moved`);
    await writeFile(path, 'planted');
    await expect(helper.rename(path, target, handle)).rejects.toMatchObject({ code: 'DEST_REPLACED' });
    expect(await readFile(target, 'utf8')).toBe('old target');
    // The real file back at its name: the rename goes through.
    await rename(`${path}.moved`, path);
    await helper.rename(path, target, handle);
    expect((await lstat(target)).size).toBe(10);
    await helper.closeFile(handle);
    helper.close();
  });
});

describe("a tree pull's local destination (the coordinator's tree-finalize.ts)", () => {
  it("sets a directory's mode and times through a descriptor: a link swapped in for the directory is refused (DEST_CONFLICT), its target untouched", async () => {
    const dir = join(work.path, 'local-dir');
    await mkdir(dir, { mode: 0o700 });
    await localDestination.setstat(dir, { mode: 0o750, mtimeMs: 1_000_000_000_000 });
    expect((await stat(dir)).mode & 0o777).toBe(0o750);
    const victim = join(work.path, 'local-victim');
    await mkdir(victim, { mode: 0o700 });
    await utimes(victim, 1_500_000_000, 1_500_000_000);
    const before = await stat(victim);
    await rename(dir, `${dir}.moved`);
    await symlink(victim, dir);
    await expect(localDestination.setstat(dir, { mode: 0o777, mtimeMs: 1_000_000_000_000 })).rejects.toMatchObject({
      code: 'DEST_CONFLICT',
      message: `${dir} is a symbolic link now: its mode and times were not set (the link was not followed); move it away and rerun`,
    });
    const after = await stat(victim);
    expect(after.mode & 0o7777).toBe(before.mode & 0o7777);
    expect(after.mtimeMs).toBe(before.mtimeMs);
  });
});
