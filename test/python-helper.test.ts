/**
 * ferry's python helper (packages/transport/remote/helper.py) on its own,
 * without SSH: started with the same remote command a connection runs, under
 * every python3 this machine has that ferry supports (the system's, and an
 * old one where one is installed: RHEL 8's platform-python is 3.6), and
 * driven through the same HelperClient as `ferry serve`.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { readFile, stat, statfs, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FRAME_HEADER_BYTES, FerryError, LOCAL_DISK_FILESYSTEMS, LOCAL_DISK_FILESYSTEM_NAMES, hashBytes } from '@ferry/core';
import { HelperClient } from '@ferry/transport';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const execFileP = promisify(execFile);

/** Directories whose python3 the helper is run with: the system's, and pyenv's 3.6 where a developer has it. */
const PYTHONS = [{ name: 'the system python3', dir: '/usr/bin' }, ...['3.6.15'].map((v) => ({ name: `python ${v}`, dir: `/root/.pyenv/versions/${v}/bin` })).filter((p) => existsSync(join(p.dir, 'python3')))];

let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  work = await tempDir('ferry-pyhelper-');
});

afterAll(async () => {
  await work?.remove();
});

/** Starts the helper as a connection would, with `dir`'s python3 first on PATH. */
async function startHelper(dir: string): Promise<{ helper: HelperClient; stderr: () => string; exited: Promise<number | null> }> {
  const script = pythonHelperScript();
  const child = spawn('sh', ['-c', pythonHelperCommand(script.length)], { env: { PATH: `${dir}:/usr/bin:/bin` }, stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const helper = new HelperClient({ input: child.stdin, output: child.stdout, stderr: child.stderr, close: () => child.kill() }, 'here');
  child.stdin.write(script);
  await helper.handshake(10_000);
  return { helper, stderr: () => err, exited };
}

/** Writes `data` at `offset` as one range, in pieces of 1 MiB, runs of zeros as ZEROS frames. */
async function writeRange(helper: HelperClient, handle: number, offset: number, data: Buffer, algorithm: 'crc32' | 'sha256'): Promise<string> {
  const w = helper.writeRange(handle, offset, data.length, algorithm);
  for (let at = 0; at < data.length; at += MiB) {
    const piece = data.subarray(at, Math.min(data.length, at + MiB));
    if (piece.every((b) => b === 0)) await w.zeros!(piece.length);
    else {
      const buf = Buffer.alloc(FRAME_HEADER_BYTES + piece.length);
      piece.copy(buf, FRAME_HEADER_BYTES);
      await w.write(buf, FRAME_HEADER_BYTES, buf.length, () => {});
    }
  }
  return (await w.end()).hash;
}

describe.each(PYTHONS)("ferry's python helper under $name", ({ dir }) => {
  it('says what it is and which hashes it computes', async () => {
    const { helper } = await startHelper(dir);
    expect(helper.hello?.software).toMatch(/^ferry-python\/1 \(Python 3\.\d+\.\d+\)$/);
    expect(helper.hello?.capabilities).toEqual(expect.arrayContaining(['hash:crc32', 'hash:sha256']));
    expect(helper.hello?.capabilities).not.toContain('hash:xxh3');
    helper.close();
  });

  it('writes ranges at their offsets with the digests Node computes, keeps holes, and reads them back', async () => {
    const { helper } = await startHelper(dir);
    const path = join(work.path, `${dir.replace(/\W/g, '_')}-ranges.bin`);
    const size = 9 * MiB + 77;
    const first = randomBytes(3 * MiB);
    const second = Buffer.concat([randomBytes(MiB), Buffer.alloc(4 * MiB), randomBytes(MiB + 77)]);
    const { handle: created } = await helper.open(path, 'create', { size, mode: 0o600 });
    await helper.closeFile(created);
    const { handle } = await helper.open(path, 'write');
    // The second range first: offsets, not order, place the bytes.
    expect(await writeRange(helper, handle, 3 * MiB, second, 'sha256')).toBe(hashBytes('sha256', second));
    expect(await writeRange(helper, handle, 0, first, 'crc32')).toBe(hashBytes('crc32', first));
    await helper.fsync(handle);
    const whole = Buffer.concat([first, second]);
    expect((await readFile(path)).equals(whole)).toBe(true);
    // The 4 MiB of zeros arrived as ZEROS frames and were not written: the file has a hole.
    expect((await stat(path)).blocks * 512).toBeLessThan(size - 3 * MiB);
    expect(await helper.hash(handle, 0, size, 'crc32')).toBe(hashBytes('crc32', whole));
    await helper.closeFile(handle);
    const read = await helper.open(path, 'read');
    const got: Buffer[] = [];
    const zeros: number[] = [];
    const r = await helper.readRange(read.handle, MiB, size - MiB, 'crc32', (chunk, zero) => {
      got.push(Buffer.from(chunk));
      if (zero) zeros.push(chunk.length);
    }).done;
    expect(Buffer.concat(got).equals(whole.subarray(MiB))).toBe(true);
    expect(r.hash).toBe(hashBytes('crc32', whole.subarray(MiB)));
    expect(zeros.reduce((a, b) => a + b, 0)).toBe(4 * MiB);
    helper.close();
  });

  it("writes whole pages around the page cache where OPEN asks for direct I/O ('auto': on a local disk file system), the rest buffered", async () => {
    const { helper } = await startHelper(dir);
    const path = join(work.path, `${dir.replace(/\W/g, '_')}-direct.bin`);
    const size = 3 * MiB + 1234;
    const data = randomBytes(size);
    const { handle: created } = await helper.open(path, 'create', { size });
    await helper.closeFile(created);
    const opened = await helper.open(path, 'write', { direct: 'auto' });
    const fsType = (await statfs(work.path)).type;
    const local = LOCAL_DISK_FILESYSTEMS.has(fsType);
    expect(opened.direct).toBe(local);
    if (!local) expect(opened.directReason).toMatch(/is not a local disk file system ferry writes around the page cache by default/);
    expect(await writeRange(helper, opened.handle, 0, data, 'crc32')).toBe(hashBytes('crc32', data));
    await helper.fsync(opened.handle);
    await helper.closeFile(opened.handle);
    // Direct writes leave nothing in the page cache; the buffered tail (1234 bytes) leaves its page.
    const resident = Number((await execFileP('fincore', ['--bytes', '--noheadings', '--output', 'RES', path])).stdout.trim());
    if (local) expect(resident).toBeLessThanOrEqual(4096);
    else expect(resident).toBeGreaterThan(3 * MiB);
    expect((await readFile(path)).equals(data)).toBe(true);
    helper.close();
  });

  it('sets mode and times, renames, stats and unlinks', async () => {
    const { helper } = await startHelper(dir);
    const a = join(work.path, `${dir.replace(/\W/g, '_')}-a`);
    const b = join(work.path, `${dir.replace(/\W/g, '_')}-b`);
    await writeFile(a, 'x');
    await helper.setstat(a, { mode: 0o640, mtimeMs: 1_600_000_000_000 });
    await helper.rename(a, b);
    const st = await helper.stat(b);
    expect(st).toMatchObject({ type: 'file', size: 1, mode: 0o640, mtimeMs: 1_600_000_000_000 });
    await helper.unlink(b);
    await helper.unlink(b); // already gone: not an error
    expect(existsSync(b)).toBe(false);
    helper.close();
  });

  it('reports file errors as ferry serve does, worded by the client', async () => {
    const { helper } = await startHelper(dir);
    const missing = join(work.path, 'no-such-dir', 'x');
    await expect(helper.stat(missing)).rejects.toMatchObject({ code: 'SOURCE_NOT_FOUND', errno: 'ENOENT', message: `no such file: here:${missing}` });
    await expect(helper.open(missing, 'create', { size: 1 })).rejects.toMatchObject({
      code: 'DEST_DIR_MISSING',
      message: `destination directory of here:${missing} does not exist: create it first (ferry does not create directories)`,
    });
    await expect(helper.open(work.path, 'read')).rejects.toMatchObject({ code: 'PROTOCOL', message: `here:${work.path} is not a regular file` });
    // The session goes on after a file error.
    expect((await helper.stat(work.path)).type).toBe('directory');
    helper.close();
  });

  it('refuses xxh3, which it cannot compute, and ends the session: the client broke the protocol', async () => {
    const { helper, exited } = await startHelper(dir);
    const path = join(work.path, `${dir.replace(/\W/g, '_')}-x`);
    await writeFile(path, randomBytes(100));
    const { handle } = await helper.open(path, 'read');
    const err = await helper.hash(handle, 0, 100, 'xxh3').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FerryError);
    expect(err).toMatchObject({ code: 'PROTOCOL', message: 'helper protocol: this helper (python) cannot hash xxh3; it has crc32, sha256' });
    expect(await exited).toBe(0);
  });

  it('refuses a write beyond the size the file had when opened', async () => {
    const { helper } = await startHelper(dir);
    const path = join(work.path, `${dir.replace(/\W/g, '_')}-bounds`);
    await writeFile(path, Buffer.alloc(10));
    const { handle } = await helper.open(path, 'write');
    const w = helper.writeRange(handle, 5, 10, 'crc32');
    await expect(w.end()).rejects.toMatchObject({ code: 'PROTOCOL', message: `range [5, 15) lies beyond the end (10) of here:${path}` });
    expect((await stat(path)).size).toBe(10);
  });
});

describe('the helper source', () => {
  it("names the same local disk file systems as core (direct I/O by default there)", () => {
    const listed = /^LOCAL_DISK_FILESYSTEMS = \(([^)]*)\)$/m.exec(pythonHelperScript().toString('utf8'))?.[1];
    expect(listed?.split(',').map((s) => s.trim().replace(/'/g, ''))).toEqual([...LOCAL_DISK_FILESYSTEM_NAMES]);
  });
});

describe('the remote command', () => {
  it('says what is missing when neither python3 nor platform-python is there', async () => {
    // A PATH with a shell and nothing else (platform-python is looked for by its absolute path,
    // which this machine does not have).
    const bin = join(work.path, 'only-sh');
    const { mkdir, symlink } = await import('node:fs/promises');
    await mkdir(bin);
    await symlink('/bin/sh', join(bin, 'sh'));
    expect(existsSync('/usr/libexec/platform-python')).toBe(false);
    // `sh` is found on that PATH (Node looks the program up in the child's PATH).
    const child = spawn('sh', ['-c', pythonHelperCommand(10)], { env: { PATH: bin }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(code).toBe(127);
    expect(err).toBe('ferry: neither python3 nor /usr/libexec/platform-python is on this host\n');
  });

  it('has no single quote inside (it is one sh -c argument) and nothing the inner double quotes would expand', () => {
    const command = pythonHelperCommand(12345);
    const inner = /^exec sh -c '(.*)'$/.exec(command)?.[1];
    expect(inner).toBeDefined();
    expect(inner).not.toContain("'");
    const boot = /-c "([^"]*)"/.exec(inner!)?.[1];
    expect(boot).toContain('n=12345');
    expect(boot).not.toMatch(/[$`\\]/);
  });
});
