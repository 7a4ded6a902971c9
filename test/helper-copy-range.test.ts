/**
 * COPY_RANGE (`--delta`) in both helpers (`ferry serve` and ferry's python
 * helper, the latter with and without os.copy_file_range), spoken to through
 * the protocol client: a range of an old file lands in the open file at the
 * same offset and the answer is the hash of those bytes; a link, something
 * that is not a regular file, or an old file too short is refused and
 * nothing is written; a read-only handle is not written through.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COPY_RANGE_CAPABILITY, hashBytes } from '@ferry/core';
import { HelperClient } from '../packages/transport/src/helper-client.js';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { CLI, tempDir } from './helpers.js';

const KiB = 1024;

let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('ferry-copy-range-');
});

afterAll(async () => {
  await work?.remove();
});

type Kind = 'serve' | 'python' | 'python without copy_file_range';

async function start(kind: Kind): Promise<HelperClient> {
  const script = kind === 'serve' ? undefined : pythonHelperScript();
  let command = script ? pythonHelperCommand(script.length) : '';
  // The read-and-write loop of interpreters (or kernels) without copy_file_range.
  if (kind === 'python without copy_file_range') {
    command = command.replace('import os,sys;', 'import os,sys;del os.copy_file_range;');
    if (!command.includes('del os.copy_file_range')) throw new Error(`the python bootstrap changed; this test cannot take copy_file_range away: ${command}`);
  }
  const child = script ? spawn('sh', ['-c', command], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(process.execPath, [CLI, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const helper = new HelperClient({ input: child.stdin, output: child.stdout, stderr: child.stderr, close: () => child.kill() }, 'here');
  if (script) child.stdin.write(script);
  await helper.handshake(10_000);
  return helper;
}

describe.each(['serve', 'python', 'python without copy_file_range'] as const)('COPY_RANGE in the %s helper', (kind) => {
  let n = 0;
  const fresh = async () => {
    const dir = join(work.path, `${kind.replace(/ /g, '-')}-${++n}`);
    await mkdir(dir);
    return dir;
  };
  /** An old file of 3 MiB + 100 bytes and a new, zeroed one of the same size open for writing. */
  const setup = async (helper: HelperClient) => {
    const dir = await fresh();
    const old = join(dir, 'old.bin');
    const bytes = randomBytes(3 * 1024 * KiB + 100);
    await writeFile(old, bytes);
    const into = join(dir, 'new.bin');
    const { handle } = await helper.open(into, 'create', { size: bytes.length, mode: 0o600, exclusive: true });
    return { dir, old, bytes, into, handle };
  };

  it('copies a range into the open file at the same offset and answers with the hash of its bytes', async () => {
    const helper = await start(kind);
    try {
      expect(helper.hello?.capabilities).toContain(COPY_RANGE_CAPABILITY);
      const { old, bytes, into, handle } = await setup(helper);
      const offset = 1024 * KiB;
      const length = 1024 * KiB + 100;
      const hash = await helper.copyRange(handle, old, offset, length, 'crc32');
      expect(hash).toBe(hashBytes('crc32', bytes.subarray(offset, offset + length)));
      await helper.fsync(handle);
      await helper.closeFile(handle);
      const got = await readFile(into);
      expect(got.subarray(offset, offset + length).equals(bytes.subarray(offset, offset + length))).toBe(true);
      // Nothing outside the range was written.
      expect(got.subarray(0, offset).every((b) => b === 0)).toBe(true);
      expect(got.subarray(offset + length).every((b) => b === 0)).toBe(true);
    } finally {
      helper.close();
    }
  });

  it('refuses a symbolic link at the old name and a directory there, writing nothing', async () => {
    const helper = await start(kind);
    try {
      const { dir, old, into, handle } = await setup(helper);
      const link = join(dir, 'link.bin');
      await symlink(old, link);
      await expect(helper.copyRange(handle, link, 0, 4 * KiB, 'crc32')).rejects.toMatchObject({ code: 'DEST_CONFLICT', message: expect.stringContaining(`${link} is a symbolic link now: its ranges are not reused`) });
      await expect(helper.copyRange(handle, dir, 0, 4 * KiB, 'crc32')).rejects.toMatchObject({ code: 'DEST_CONFLICT', message: expect.stringContaining(`${dir} is not a regular file: its ranges are not reused`) });
      await helper.closeFile(handle);
      expect((await readFile(into)).every((b) => b === 0)).toBe(true);
    } finally {
      helper.close();
    }
  });

  it('refuses a range the old file no longer holds whole', async () => {
    const helper = await start(kind);
    try {
      const { old, bytes, handle } = await setup(helper);
      await writeFile(old, bytes.subarray(0, 2 * 1024 * KiB));
      await expect(helper.copyRange(handle, old, 1024 * KiB, 2 * 1024 * KiB, 'crc32')).rejects.toMatchObject({ code: 'DEST_REPLACED' });
      await helper.closeFile(handle);
    } finally {
      helper.close();
    }
  });

  it('does not copy into a file opened read-only', async () => {
    const helper = await start(kind);
    try {
      const { old, into, handle } = await setup(helper);
      await helper.closeFile(handle);
      const { handle: readOnly } = await helper.open(into, 'read');
      await expect(helper.copyRange(readOnly, old, 0, 4 * KiB, 'crc32')).rejects.toMatchObject({ code: 'PROTOCOL', message: expect.stringMatching(/^COPY_RANGE into (here:)?\/.*new\.bin, which was opened read-only$/) });
    } finally {
      helper.close();
    }
  });

  it('resizes an open writable file through its handle (SETSTAT size, for --inplace), keeping what it holds', async () => {
    const helper = await start(kind);
    try {
      const dir = await fresh();
      const path = join(dir, 'f.bin');
      const bytes = randomBytes(64 * KiB);
      await writeFile(path, bytes);
      const { handle } = await helper.open(path, 'write');
      await helper.setstat({ handle }, { size: 16 * KiB });
      expect((await readFile(path)).equals(bytes.subarray(0, 16 * KiB))).toBe(true);
      await helper.setstat({ handle }, { size: 100 * KiB });
      const grown = await readFile(path);
      expect(grown.length).toBe(100 * KiB);
      expect(grown.subarray(16 * KiB).every((b) => b === 0)).toBe(true);
      // The handle's bounds follow: a range up to the new end can be written.
      const hash = await helper.copyRange(handle, path, 0, 100 * KiB, 'crc32');
      expect(hash).toBe(hashBytes('crc32', grown));
      await helper.closeFile(handle);
    } finally {
      helper.close();
    }
  });
});
