/**
 * The no-install path: a remote host where ferry is not installed and `node`
 * is not found (a real sshd in a mount namespace where `node` is a stand-in
 * that exits 127), as on most data transfer nodes. `--mode auto` (the default)
 * finds no `ferry serve`, sends ferry's Python helper to the host's python3,
 * says so in one line, and copies byte-identically both ways; without python3
 * too it falls back to SFTP and says that.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { connectRemote } from '@ferry/transport';
import { REMOTE_CMD, fileHash, killStrays, parseEvents, runFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

let bare: Sshd;
let noPython: Sshd;
let full: Sshd;
let work: { path: string; remove(): Promise<void> };

function remote(sshd: Sshd, path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

/** What a user passes: keys and known hosts of the test sshd, nothing about the data path. */
function keys(sshd: Sshd, extra: string[] = []): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--state-dir', join(work.path, 'state'), ...extra];
}

const fallbackLine = (sshd: Sshd) => `ferry: warning: ${sshd.host}:${sshd.port}: 'ferry serve' not found (exit 127); using ferry's python helper: install ferry there or pass --remote-cmd\n`;

beforeAll(async () => {
  bare = await startSshd({ without: ['node'] });
  noPython = await startSshd({ without: ['node', 'python3'] });
  full = await startSshd();
  work = await tempDir('ferry-noinstall-');
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await bare?.stop();
  await noPython?.stop();
  await full?.stop();
  await work?.remove();
});

describe('a remote host without ferry (no node on it)', () => {
  it('really has no node: the test sshd runs a stand-in', async () => {
    const { execFile } = await import('node:child_process');
    const out = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = execFile('ssh', ['-p', String(bare.port), '-i', bare.userKey, '-o', `UserKnownHostsFile=${bare.knownHosts}`, '-o', 'BatchMode=yes', bare.host, 'node --version'], (err, _stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
      );
      child.stdin?.end();
    });
    expect(out.code).toBe(127);
    expect(out.stderr).toContain('node: command not found');
  });

  it.each([0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 5])('pushes and pulls a file of %i bytes (ranges of 1 MiB) byte-identically, saying which path it took', async (size) => {
    const dir = join(work.path, `edges-${size}`);
    await mkdir(join(dir, 'in'), { recursive: true });
    const name = `f${size}.bin`;
    const src = join(dir, name);
    await writeFile(src, randomBytes(size));
    const want = await fileHash(src);
    const push = await runFerry(['cp', src, remote(bare, `${dir}/in/`), '--range-size', '1MiB', ...keys(bare)]);
    expect(push.code, push.stderr).toBe(0);
    expect(push.stderr).toBe(fallbackLine(bare));
    // A 0-byte file moves no range, so no data path is named.
    if (size > 0) expect(push.stdout).toContain('python mode');
    expect(await fileHash(join(dir, 'in', name))).toBe(want);
    const back = join(dir, 'back.bin');
    const pull = await runFerry(['cp', remote(bare, join(dir, 'in', name)), back, '--range-size', '1MiB', ...keys(bare)]);
    expect(pull.code, pull.stderr).toBe(0);
    expect(pull.stderr).toBe(fallbackLine(bare));
    expect(await fileHash(back)).toBe(want);
  });

  it('reports the path, the hash it uses and the fallback in --json, and the file arrives with crc32 range hashes verified', async () => {
    const dir = join(work.path, 'json');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await writeFile(src, randomBytes(40 * MiB));
    const r = await runFerry(['cp', src, remote(bare, `${dir}/copy.bin`), '--json', '--agents', '2', '--streams', '2', '--range-size', '4MiB', ...keys(bare)]);
    expect(r.code, r.stderr).toBe(0);
    const events = parseEvents(r.stdout);
    const warning = events.find((e) => e.type === 'warning');
    expect(warning?.message).toBe(fallbackLine(bare).slice('ferry: warning: '.length, -1));
    const start = events.find((e) => e.type === 'job.start')!;
    expect(start).toMatchObject({ mode: 'python', hash: 'crc32', ranges: 10 });
    const done = events.find((e) => e.type === 'done')!;
    expect(done).toMatchObject({ mode: 'python', hash: 'crc32' });
    expect(String(done.rootHash)).toMatch(/^[0-9a-f]{8}$/);
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(await fileHash(src));
  });

  it('moves a sparse file with holes both ways and keeps it sparse', async () => {
    const dir = join(work.path, 'sparse');
    await mkdir(dir);
    const src = join(dir, 'sparse.bin');
    await writeFile(src, '');
    await truncate(src, 512 * MiB);
    const fh = await open(src, 'r+');
    await fh.write(randomBytes(MiB), 0, MiB, 100 * MiB + 12345);
    await fh.write(randomBytes(4096), 0, 4096, 512 * MiB - 4096);
    await fh.close();
    const want = await fileHash(src);
    const pushed = join(dir, 'pushed.bin');
    const push = await runFerry(['cp', src, remote(bare, pushed), ...keys(bare)]);
    expect(push.code, push.stderr).toBe(0);
    expect(await fileHash(pushed)).toBe(want);
    expect((await stat(pushed)).blocks * 512).toBeLessThan(16 * MiB);
    const pulled = join(dir, 'pulled.bin');
    const pull = await runFerry(['cp', remote(bare, src), pulled, ...keys(bare)]);
    expect(pull.code, pull.stderr).toBe(0);
    expect(await fileHash(pulled)).toBe(want);
    expect((await stat(pulled)).blocks * 512).toBeLessThan(16 * MiB);
  });

  it('detects a range corrupted on its way (both directions) and sends it again', async () => {
    const dir = join(work.path, 'corrupt');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await writeFile(src, randomBytes(24 * MiB));
    const want = await fileHash(src);
    const env = { FERRY_TEST_CORRUPT_RANGES: '1,4' };
    const push = await runFerry(['cp', src, remote(bare, `${dir}/pushed.bin`), '--json', '--range-size', '4MiB', ...keys(bare)], { env });
    expect(push.code, push.stderr).toBe(0);
    const pushResends = parseEvents(push.stdout).filter((e) => e.type === 'range.resend');
    expect(pushResends.map((e) => e.range).sort()).toEqual([1, 4]);
    expect(String(pushResends[0]!.reason)).toMatch(/^hash mismatch \(source [0-9a-f]{8}, destination [0-9a-f]{8}\)/);
    expect(await fileHash(join(dir, 'pushed.bin'))).toBe(want);
    const pull = await runFerry(['cp', remote(bare, src), join(dir, 'pulled.bin'), '--json', '--range-size', '4MiB', ...keys(bare)], { env });
    expect(pull.code, pull.stderr).toBe(0);
    expect(parseEvents(pull.stdout).filter((e) => e.type === 'range.resend').map((e) => e.range).sort()).toEqual([1, 4]);
    expect(await fileHash(join(dir, 'pulled.bin'))).toBe(want);
  });

  it('runs the python helper over --transport openssh too', async () => {
    const dir = join(work.path, 'openssh');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await writeFile(src, randomBytes(9 * MiB + 3));
    const r = await runFerry(['cp', src, remote(bare, `${dir}/copy.bin`), '--transport', 'openssh', '--range-size', '2MiB', ...keys(bare)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(fallbackLine(bare));
    expect(r.stdout).toContain('python mode');
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(await fileHash(src));
  });

  it('refuses --hash xxh3, which the python helper cannot compute, naming what it can', async () => {
    const dir = join(work.path, 'xxh3');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await writeFile(src, randomBytes(MiB));
    const r = await runFerry(['cp', src, remote(bare, `${dir}/`), '--hash', 'xxh3', ...keys(bare)]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`ferry: error: --hash xxh3 needs 'ferry serve' on ${bare.host}:${bare.port}; its python path hashes crc32, sha256: drop --hash, or pass one of those`);
  });

  it('falls back to SFTP where the host has no python3 either, and says what was missing', async () => {
    const dir = join(work.path, 'nopython');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await writeFile(src, randomBytes(5 * MiB));
    const r = await runFerry(['cp', src, remote(noPython, `${dir}/copy.bin`), ...keys(noPython)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(
      `ferry: warning: ${noPython.host}:${noPython.port}: 'ferry serve' not found (exit 127); python3 not found (exit 127); using SFTP, typically a third as fast as ferry serve: install ferry there, or python3, or pass --remote-cmd\n`,
    );
    expect(r.stdout).toContain('sftp mode');
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(await fileHash(src));
  });
});

describe("auto mode starts ferry's python helper alongside ferry serve", () => {
  /** sshd's VERBOSE lines about this connection's sessions, from `from` on. */
  const sessions = async (sshd: Sshd, from: number) => {
    const lines = (await readFile(sshd.log, 'utf8')).slice(from).split('\n');
    return { started: lines.filter((l) => l.startsWith('Starting session: command')).length, closed: lines.filter((l) => l.startsWith('Close session:')).length };
  };

  it('and closes it unused, while the connection stays open, where ferry serve answers', async () => {
    const from = (await readFile(full.log, 'utf8')).length;
    const conn = await connectRemote({ host: full.host, port: full.port, user: full.user }, { knownHostsFile: full.knownHosts, identityFiles: [full.userKey], connectTimeoutMs: 20_000 }, { mode: 'auto', remoteCommand: REMOTE_CMD, windowBytes: 8 * MiB });
    try {
      expect(conn.mode).toBe('helper');
      // Two sessions started: ferry serve and the python helper; the python helper's is closed
      // once it has answered, and ferry serve's is the one left.
      let seen = await sessions(full, from);
      for (let i = 0; i < 100 && seen.closed < 1; i++) {
        await new Promise((r) => setTimeout(r, 100));
        seen = await sessions(full, from);
      }
      expect(seen).toEqual({ started: 2, closed: 1 });
      expect((await conn.stat(work.path))?.type).toBe('directory');
    } finally {
      conn.close();
    }
  });

  it('but not when told where ferry serve is (pythonAlongside false): one session, and python only once that command failed', async () => {
    const fromFull = (await readFile(full.log, 'utf8')).length;
    const conn = await connectRemote({ host: full.host, port: full.port, user: full.user }, { knownHostsFile: full.knownHosts, identityFiles: [full.userKey], connectTimeoutMs: 20_000 }, { mode: 'auto', remoteCommand: REMOTE_CMD, pythonAlongside: false, windowBytes: 8 * MiB });
    try {
      expect(conn.mode).toBe('helper');
      expect((await conn.stat(work.path))?.type).toBe('directory');
      expect(await sessions(full, fromFull)).toEqual({ started: 1, closed: 0 });
    } finally {
      conn.close();
    }
    const fromBare = (await readFile(bare.log, 'utf8')).length;
    const fallback = await connectRemote({ host: bare.host, port: bare.port, user: bare.user }, { knownHostsFile: bare.knownHosts, identityFiles: [bare.userKey], connectTimeoutMs: 20_000 }, { mode: 'auto', remoteCommand: 'ferry serve', pythonAlongside: false, windowBytes: 8 * MiB });
    try {
      expect(fallback.mode).toBe('python');
      expect(fallback.fallbacks).toEqual([{ mode: 'helper', reason: "'ferry serve' not found (exit 127)" }]);
      expect((await readFile(bare.log, 'utf8')).slice(fromBare).match(/Starting session: command/g)).toHaveLength(2);
    } finally {
      fallback.close();
    }
  });

  it('ferry cp with --remote-cmd starts no python helper beside it', async () => {
    const dir = join(work.path, 'remote-cmd-given');
    await mkdir(dir, { recursive: true });
    const src = join(dir, 'src.bin');
    await writeFile(src, randomBytes(MiB));
    const from = (await readFile(full.log, 'utf8')).length;
    const r = await runFerry(['cp', src, remote(full, `${dir}/copy.bin`), '-i', full.userKey, '--known-hosts', full.knownHosts, '--state-dir', join(work.path, 'state'), '--remote-cmd', REMOTE_CMD]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fileHash(join(dir, 'copy.bin'))).toBe(await fileHash(src));
    const log = (await readFile(full.log, 'utf8')).slice(from);
    // One login (the coordinator's, which the in-process agent shares) and one session: ferry serve's.
    expect(log.match(/Accepted publickey/g)).toHaveLength(1);
    expect(log.match(/Starting session: command/g)).toHaveLength(1);
  });

  it('and uses it where ferry serve is not found, saying why, over one login and two sessions', async () => {
    const from = (await readFile(bare.log, 'utf8')).length;
    const conn = await connectRemote({ host: bare.host, port: bare.port, user: bare.user }, { knownHostsFile: bare.knownHosts, identityFiles: [bare.userKey], connectTimeoutMs: 20_000 }, { mode: 'auto', remoteCommand: 'ferry serve', windowBytes: 8 * MiB });
    try {
      expect(conn.mode).toBe('python');
      expect(conn.fallbacks).toEqual([{ mode: 'helper', reason: "'ferry serve' not found (exit 127)" }]);
      const log = (await readFile(bare.log, 'utf8')).slice(from);
      expect(log.match(/Accepted publickey/g)).toHaveLength(1);
      expect(log.match(/Starting session: command/g)).toHaveLength(2);
    } finally {
      conn.close();
    }
  });
});

describe('onWaiting (the CLI loads the coordinator then)', () => {
  it('is called once, before the connection is ready, once the helper was asked for', async () => {
    const events: string[] = [];
    const conn = await connectRemote({ host: full.host, port: full.port, user: full.user }, { knownHostsFile: full.knownHosts, identityFiles: [full.userKey], connectTimeoutMs: 20_000 }, { mode: 'auto', remoteCommand: REMOTE_CMD, windowBytes: 8 * MiB, onWaiting: () => events.push('waiting') });
    events.push('connected');
    conn.close();
    expect(events).toEqual(['waiting', 'connected']);
  });

  it('is called once when the login fails', async () => {
    const events: string[] = [];
    const { freePort } = await import('./fixtures/sshd.mjs');
    const port = await freePort();
    const failed = connectRemote({ host: full.host, port, user: full.user }, { knownHostsFile: full.knownHosts, identityFiles: [full.userKey], connectTimeoutMs: 20_000 }, { mode: 'auto', remoteCommand: REMOTE_CMD, windowBytes: 8 * MiB, onWaiting: () => events.push('waiting') });
    await expect(failed).rejects.toMatchObject({ code: 'HOST_UNREACHABLE' });
    expect(events).toEqual(['waiting']);
  });
});
