/**
 * Both helpers (`ferry serve` and ferry's python helper), spoken to through
 * the protocol client, create and touch destination files safely (the
 * `safe-files` capability): exclusive creation that a planted link or file
 * defeats, no link followed on OPEN for writing, the handle's fstat in OPEN's
 * answer, mode and times set through the handle, and a RENAME that checks
 * its names are the handle's file. The attacks with a second user and a
 * whole `ferry cp` are test/attack-files.test.ts.
 */
import { spawn } from 'node:child_process';
import { chmod, lstat, readFile, rename, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SAFE_FILES_CAPABILITY } from '@ferry/core';
import { HelperClient } from '../packages/transport/src/helper-client.js';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { CLI, tempDir } from './helpers.js';

let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('ferry-safe-files-');
});

afterAll(async () => {
  await work?.remove();
});

async function start(kind: 'serve' | 'python'): Promise<HelperClient> {
  const script = kind === 'python' ? pythonHelperScript() : undefined;
  const child =
    kind === 'python'
      ? spawn('sh', ['-c', pythonHelperCommand(script!.length)], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] })
      : spawn(process.execPath, [CLI, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const helper = new HelperClient({ input: child.stdin, output: child.stdout, stderr: child.stderr, close: () => child.kill() }, 'here');
  if (script) child.stdin.write(script);
  await helper.handshake(10_000);
  return helper;
}

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
