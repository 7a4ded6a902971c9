/**
 * BATCH and COMMIT (many small entries in one request) beyond the in-process
 * `ferry serve` of packages/serve/test/batch.test.ts: ferry's python helper
 * spoken to frame by frame, and `RemoteConnection.writeBatch` through a real
 * sshd in all three modes. Every one passes the same case
 * (test/batch-cases.ts): each kind of entry, holes kept, and the entries in
 * the way, changed or corrupted failing alone.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION, encodeControl, encodeDataHeader, hashBytes } from '@ferry/core';
import type { BatchEntryResult, HashAlgorithm, SshSettings } from '@ferry/core';
import { connectRemote } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { batchCase, batchFrames, bytesOf, leftovers } from './batch-cases.js';
import { CLI, REMOTE_CMD, repliesById, startLocalHelper, swapInLink, tempDir } from './helpers.js';

let work: { path: string; remove(): Promise<void> };
let n = 0;
const fresh = () => join(work.path, `case-${++n}`);

beforeAll(async () => {
  work = await tempDir('ferry-batch-');
});

afterAll(async () => {
  await work?.remove();
});

/** The system's python3, and RHEL 8's 3.6 (pyenv's) where this machine has it. */
const PYTHONS = ['/usr/bin', ...['/root/.pyenv/versions/3.6.15/bin'].filter((d) => existsSync(join(d, 'python3')))];

/** The python helper as a connection starts it (`dir`'s python3 first on PATH), spoken to in raw frames. */
function python(dir: string) {
  const script = pythonHelperScript();
  const child = spawn('sh', ['-c', pythonHelperCommand(script.length)], { env: { PATH: `${dir}:/usr/bin:/bin` }, stdio: ['pipe', 'pipe', 'pipe'] });
  const reply = repliesById(child.stdout);
  child.stdin.write(script);
  child.stdin.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return { send: (b: Buffer) => child.stdin.write(b), reply, end: () => child.stdin.end(), exited, kill: () => child.kill() };
}

describe.each(PYTHONS)("ferry's python helper (the python3 in %s): BATCH", (pythonDir) => {
  it('says it takes batches, and passes the case frame by frame (sha256 and crc32)', async () => {
    const h = python(pythonDir);
    try {
      expect(await h.reply(1)).toMatchObject({ type: 'OK', body: { hello: { capabilities: expect.arrayContaining(['batch']) } } });
      for (const [id, algorithm] of [[7, 'sha256'], [8, 'crc32']] as const) {
        const dir = fresh();
        const c = await batchCase(dir, algorithm, 'wire');
        h.send(batchFrames(c, id, algorithm));
        const answer = await h.reply(id);
        expect(answer.type).toBe('OK');
        await c.check((answer as { body: { results: BatchEntryResult[] } }).body.results);
      }
      h.end();
      expect(await h.exited).toBe(0);
    } finally {
      h.kill();
    }
  });

  it('ends the session with PROTOCOL on bytes beyond the declared sizes, leaving no temporary file', async () => {
    const dir = fresh();
    await mkdir(dir);
    const h = python(pythonDir);
    try {
      await h.reply(1);
      h.send(Buffer.concat([encodeControl('BATCH', 5, { algorithm: 'crc32', entries: [{ kind: 'file', path: join(dir, 'a'), size: 2 }] }), encodeDataHeader(5, 3), Buffer.from('abc')]));
      expect(await h.reply(0)).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: "helper protocol: DATA for batch 5 overruns its files' 2 bytes" } });
      await h.exited;
      expect(await leftovers(dir)).toEqual([]);
    } finally {
      h.kill();
    }
  });
});

let sshd: Sshd;

describe.each(['helper', 'python', 'sftp'] as const)('RemoteConnection.writeBatch in %s mode', (mode) => {
  let conn: RemoteConnection;
  beforeAll(async () => {
    sshd ??= await startSshd();
    const ssh: SshSettings = { knownHostsFile: sshd.knownHosts, identityFiles: [sshd.userKey], connectTimeoutMs: 20_000 };
    conn = await connectRemote({ host: sshd.host, port: sshd.port, user: sshd.user }, ssh, { mode, remoteCommand: REMOTE_CMD, windowBytes: 8 * 1024 * 1024 });
  });
  afterAll(async () => {
    conn?.close();
    if (mode === 'sftp') await sshd?.stop();
  });

  const algorithm: HashAlgorithm = mode === 'python' ? 'crc32' : 'xxh3';

  it('passes the case: a source that gives fewer bytes than its size fails alone, as SOURCE_CHANGED', async () => {
    const dir = fresh();
    const c = await batchCase(dir, algorithm, 'client');
    const results = await conn.writeBatch(c.entries, algorithm, async function* (i) {
      const data = bytesOf(c.pieces[i]!);
      // The source of `changed` shrank while it was read.
      yield c.entries[i]!.path.endsWith('/changed') ? data.subarray(0, data.length - 2) : data;
    });
    await c.check(results);
    const changed = results.find((r) => !r.ok && r.error.code === 'SOURCE_CHANGED');
    expect(changed).toMatchObject({ ok: false, error: { message: expect.stringContaining('changed while it was read') } });
    const ok = results.filter((r): r is Extract<typeof r, { ok: true }> => r.ok && r.srcHash !== undefined);
    expect(ok.length).toBeGreaterThan(5);
    for (const r of ok) expect(r.dstHash).toBe(r.srcHash);
  });

  it("sets a directory's mode and times by path, and refuses a link swapped in for it (DEST_CONFLICT), its target untouched", async () => {
    const dir = fresh();
    await mkdir(dir, { mode: 0o700 });
    await conn.setstat(dir, { mode: 0o750, mtimeMs: 1_000_000_000_000, atimeMs: 1_000_000_000_000 });
    expect((await stat(dir)).mode & 0o777).toBe(0o750);
    expect((await stat(dir)).mtimeMs).toBe(1_000_000_000_000);
    const victim = fresh();
    const before = await swapInLink(dir, victim);
    await expect(conn.setstat(dir, { mode: 0o777, mtimeMs: 1_000_000_000_000, atimeMs: 1_000_000_000_000 })).rejects.toMatchObject({ code: 'DEST_CONFLICT', message: expect.stringContaining(`${dir} is a symbolic link now: its mode and times were not set (the link was not followed)`) });
    const after = await stat(victim);
    expect(after.mode & 0o7777).toBe(before.mode & 0o7777);
    expect(after.mtimeMs).toBe(before.mtimeMs);
  });

  it('writes a batch whose body would be over 1 MiB (long paths) in parts, and the connection goes on', async () => {
    const dir = fresh();
    const deep = join(dir, 'a'.repeat(200), 'b'.repeat(200));
    const entries = [
      { kind: 'dir' as const, path: dir },
      { kind: 'dir' as const, path: join(dir, 'a'.repeat(200)) },
      { kind: 'dir' as const, path: deep },
      ...Array.from({ length: 2500 }, (_, i) => ({ kind: 'dir' as const, path: join(deep, `d${i}`) })),
      { kind: 'file' as const, path: join(deep, 'f'), size: 2 },
      { kind: 'hardlink' as const, path: join(deep, 'h'), target: join(deep, 'f') },
    ];
    const results = await conn.writeBatch(entries, algorithm, async function* () {
      yield Buffer.from('ok');
    });
    expect(results).toHaveLength(entries.length);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(await readFile(join(deep, 'h'), 'utf8')).toBe('ok');
    expect((await readdir(deep)).length).toBe(2502);
  });

  it('takes several batches in flight at once, a longer source cut at its size, one of more files than a helper holds open', async () => {
    const dir = fresh();
    await mkdir(dir);
    // The first batch's 300 files are more than the python helper holds open for its sync (256): some are synced early.
    const batches = Array.from({ length: 6 }, (_, b) => Array.from({ length: b === 0 ? 300 : 20 }, (_, i) => ({ kind: 'file' as const, path: join(dir, `b${b}-f${i}`), size: 1000 + i })));
    const all = await Promise.all(
      batches.map((entries) =>
        conn.writeBatch(entries, algorithm, async function* (i) {
          const body = Buffer.alloc(entries[i]!.size + (i === 3 ? 10 : 0), i + 1);
          yield body.subarray(0, 500);
          yield body.subarray(500);
        }),
      ),
    );
    for (const [b, results] of all.entries()) {
      results.forEach((r, i) => {
        if (i === 3) expect(r).toMatchObject({ ok: false, error: { code: 'SOURCE_CHANGED' } });
        else expect({ i, r }).toMatchObject({ i, r: { ok: true } });
      });
      expect(await readFile(join(dir, `b${b}-f0`))).toEqual(Buffer.alloc(1000, 1));
    }
    expect(await leftovers(dir)).toEqual([]);
  });
});

describe.each(['serve', 'python'] as const)('a batch of small files to the %s helper', (kind) => {
  it('goes in a few DATA frames, each packing many files, one file split over two, a run of zeros between', async () => {
    const { helper, writes } = await startLocalHelper(kind);
    try {
      const dir = fresh();
      await mkdir(dir);
      // 400 files of 1,000-1,399 bytes (~480 KiB: two packed frames), one of them all zeros in the middle.
      const sizes = Array.from({ length: 400 }, (_, i) => 1000 + i);
      const entries = sizes.map((size, i) => ({ kind: 'file' as const, path: join(dir, `f${i}`), size }));
      const content = (i: number) => Buffer.alloc(sizes[i]!, i === 200 ? 0 : (i % 250) + 1);
      const before = writes();
      const w = helper.writeBatch(entries, 'crc32');
      const hashes: string[] = [];
      for (let i = 0; i < entries.length; i++) {
        if (i === 200) await w.zeros(sizes[i]!);
        else await w.data(content(i));
        hashes.push(hashBytes('crc32', content(i)));
      }
      await w.commit(hashes);
      const results = await w.answer;
      expect(results.every((r) => r.ok)).toBe(true);
      // BATCH, COMMIT, the ZEROS, and the DATA frames before and after it: not a frame per file.
      expect(writes() - before).toBeLessThanOrEqual(8);
      for (const i of [0, 199, 200, 201, 399]) expect(await readFile(join(dir, `f${i}`))).toEqual(content(i));
      expect(await leftovers(dir)).toEqual([]);
    } finally {
      helper.close();
    }
  });
});

describe('a ferry serve without the batch capability', () => {
  it('is refused with HELPER_UNAVAILABLE, saying to install the same version there', async () => {
    const { HelperConnection } = await import('../packages/transport/src/remote.js');
    const old = { hello: { version: 1, software: 'ferry 0.0.9', capabilities: ['write', 'read', 'safe-files'] }, closed: false } as unknown as import('@ferry/transport').HelperClient;
    const conn = new HelperConnection({ ended: false, end: () => {}, exec: () => Promise.reject(new Error('no')) }, old, 'old-host');
    await expect(conn.writeBatch([{ kind: 'dir', path: '/x' }], 'xxh3', async function* () {})).rejects.toMatchObject({
      code: 'HELPER_UNAVAILABLE',
      message: expect.stringContaining('install the same ferry version there'),
    });
  });
});

const isRoot = process.getuid?.() === 0;

describe.skipIf(!isRoot)('a batch on a full disk', () => {
  it.each(['serve', 'python'] as const)('fails the file that does not fit with DEST_NO_SPACE, as a single file would, and makes the rest (%s)', async (kind) => {
    const dir = fresh();
    await mkdir(dir);
    // A 1 MiB tmpfs of its own, filled up, in a mount namespace that goes away with the helper.
    const setup = `mount -t tmpfs -o size=1m ferry-test '${dir}' && { cat /dev/zero > '${dir}/filler' 2>/dev/null; true; }`;
    const script = kind === 'python' ? pythonHelperScript() : undefined;
    const run = kind === 'python' ? `exec sh -c '${pythonHelperCommand(script!.length).replace(/'/g, "'\\''")}'` : `exec '${process.execPath}' '${CLI}' serve`;
    const child = spawn('unshare', ['-m', 'sh', '-c', `${setup} && ${run}`], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      const reply = repliesById(child.stdout);
      if (script) child.stdin.write(script);
      child.stdin.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
      await reply(1);
      const data = Buffer.alloc(256 * 1024, 7);
      const entries = [
        { kind: 'dir' as const, path: join(dir, 'd') },
        { kind: 'file' as const, path: join(dir, 'd', 'big'), size: data.length },
        { kind: 'symlink' as const, path: join(dir, 'd', 'link'), target: 'big' },
      ];
      const { createHasher } = await import('@ferry/core');
      const h = createHasher('sha256');
      h.update(data);
      child.stdin.write(Buffer.concat([encodeControl('BATCH', 2, { algorithm: 'sha256', entries }), encodeDataHeader(2, data.length), data, encodeControl('COMMIT', 2, { srcHashes: [null, h.digest(), null] })]));
      const answer = (await reply(2)) as { type: string; body: { results: BatchEntryResult[] } };
      expect(answer.type).toBe('OK');
      expect(answer.body.results).toEqual([{ ok: true }, { ok: false, error: expect.objectContaining({ code: 'DEST_NO_SPACE', path: join(dir, 'd', 'big'), errno: 'ENOSPC' }) }, { ok: true }]);
      // Seen from inside the namespace (the only place the tmpfs is): the directory was made.
      child.stdin.write(encodeControl('STAT', 3, { path: join(dir, 'd') }));
      expect(await reply(3)).toMatchObject({ type: 'OK', body: { stat: { type: 'directory' } } });
    } finally {
      child.kill('SIGKILL');
    }
  });
});
