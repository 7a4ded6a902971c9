/**
 * ferry cp end to end against a real sshd on loopback and a real nats-server
 * (embedded, started by ferry), in both directions and both data paths.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readdir, readFile, stat, statfs, truncate, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_DISK_FILESYSTEMS, openDirect } from '@ferry/core';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { CLI, fileHash, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const HOLD_FIRST_WRITE = fileURLToPath(new URL('./fixtures/hold-first-write.mjs', import.meta.url));
const execFileP = promisify(execFile);
const GiB = 1024 * MiB;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src256: string;
let src256Hash: string;
/** For tests where the size is not the point: 4 ranges of 16 MiB, the automatic range size. */
let src64: string;
let src64Hash: string;

function remote(path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

function common(extra: string[] = []): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'state'), ...extra];
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-cp-');
  src256 = join(work.path, 'random256.bin');
  await makeRandomFile(src256, 256 * MiB);
  src256Hash = await fileHash(src256);
  src64 = join(work.path, 'random64.bin');
  await makeRandomFile(src64, 64 * MiB);
  src64Hash = await fileHash(src64);
});

afterAll(async () => {
  // Whatever a failed test left running under the work directory (nats-server, agents).
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe.each([
  ['helper', 'xxh3'],
  ['sftp', 'xxh3'],
  ['sftp', 'sha256'],
] as const)('ferry cp in %s mode with %s hashes', (mode, hash) => {
  it('pushes a random 256 MiB file byte-identically', async () => {
    const dir = join(work.path, `push-${mode}-${hash}`);
    await mkdir(dir);
    const r = await runFerry(['cp', src256, remote(`${dir}/`), '--mode', mode, '--hash', hash, '--agents', '2', '--streams', '2', '--range-size', '16MiB', ...common()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${mode} mode`);
    expect(r.stdout).toContain('16 ranges, 0 re-sent, 2 agents x 2 streams');
    expect(await fileHash(join(dir, 'random256.bin'))).toBe(src256Hash);
  });

  it('pulls a random 256 MiB file byte-identically', async () => {
    const dir = join(work.path, `pull-${mode}-${hash}`);
    await mkdir(dir);
    const target = join(dir, 'pulled.bin');
    const r = await runFerry(['cp', remote(src256), target, '--mode', mode, '--hash', hash, '--agents', '2', '--streams', '2', ...common()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${mode} mode`);
    expect(await fileHash(target)).toBe(src256Hash);
  });
});

describe('ferry cp over --transport openssh (an ssh process per connection)', () => {
  it('pushes and pulls a random 256 MiB file byte-identically, ssh reading a config file given with --ssh-cmd', async () => {
    const dir = join(work.path, 'openssh');
    await mkdir(dir);
    // Port, user, key and known_hosts come from the config file only: ferry passes its own, which agree.
    const config = join(dir, 'ssh_config');
    await writeFile(config, `Host ferry-test-dtn\n  HostName ${sshd.host}\n  Ciphers aes128-gcm@openssh.com\n`);
    const alias = `${sshd.user}@ferry-test-dtn:${sshd.port}`;
    const push = await runFerry(['cp', src256, `${alias}:${dir}/`, '--transport', 'openssh', '--ssh-cmd', `ssh -F ${config}`, '--agents', '2', '--streams', '2', '--range-size', '16MiB', ...common(), '--known-hosts', join(dir, 'kh'), '--accept-new-host-key']);
    expect(push.stderr).toBe('');
    expect(push.code).toBe(0);
    expect(push.stdout).toContain('16 ranges, 0 re-sent, 2 agents x 2 streams, helper mode');
    expect(await fileHash(join(dir, 'random256.bin'))).toBe(src256Hash);
    const pulled = join(dir, 'pulled.bin');
    const pull = await runFerry(['cp', `${alias}:${dir}/random256.bin`, pulled, '--transport', 'openssh', '--ssh-cmd', `ssh -F ${config}`, ...common(), '--known-hosts', join(dir, 'kh')]);
    expect(pull.stderr).toBe('');
    expect(pull.code).toBe(0);
    expect(await fileHash(pulled)).toBe(src256Hash);
  });
});

describe('ferry cp edge cases', () => {
  it('moves a sparse 4.5 GiB file with data past 4 GiB both ways and keeps it sparse', async () => {
    const dir = join(work.path, 'sparse');
    await mkdir(dir);
    // 4.5 GiB: past 4 GiB is the point (offsets beyond 32 bits), not the size.
    const size = 4.5 * GiB;
    const sparse = join(dir, 'sparse4g5.bin');
    await writeFile(sparse, '');
    await truncate(sparse, size);
    // Marks just below and above 4 GiB and near the end, so misplaced offsets show.
    const fh = await open(sparse, 'r+');
    for (const [at, text] of [[4 * GiB - 3, 'below-4GiB'], [4 * GiB + 17, 'above-4GiB'], [size - 9, 'the-end!!']] as const) {
      await fh.write(Buffer.from(text), 0, text.length, at);
    }
    await fh.close();
    const want = await fileHash(sparse);
    const pushed = join(dir, 'pushed.bin');
    const push = await runFerry(['cp', sparse, remote(pushed), '--agents', '2', '--streams', '2', '--range-size', '256MiB', ...common()]);
    expect(push.stderr).toBe('');
    expect(push.code).toBe(0);
    expect(push.stdout).toContain('18 ranges');
    expect((await stat(pushed)).size).toBe(size);
    expect(await fileHash(pushed)).toBe(want);
    // Zero runs travel as ZEROS frames and are not written: the copy stays sparse.
    expect((await stat(pushed)).blocks * 512).toBeLessThan(64 * MiB);

    const pulled = join(dir, 'pulled.bin');
    const pull = await runFerry(['cp', remote(pushed), pulled, '--agents', '2', '--streams', '2', '--range-size', '256MiB', ...common()]);
    expect(pull.code).toBe(0);
    expect(await fileHash(pulled)).toBe(want);
    expect((await stat(pulled)).blocks * 512).toBeLessThan(64 * MiB);
  }, 240_000); // 9 GiB read, hashed and checked for zeros on a 2-core machine

  it('pushes byte-identically with the smallest --send-window, in helper and SFTP mode', async () => {
    for (const mode of ['helper', 'sftp']) {
      const dir = join(work.path, `send-window-${mode}`);
      await mkdir(dir);
      // 64 MiB is 512 windows of 128 KiB: they fill and re-open all through the copy.
      const r = await runFerry(['cp', src64, remote(`${dir}/`), '--mode', mode, '--send-window', '128KiB', '--agents', '2', '--streams', '2', ...common()]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(await fileHash(join(dir, 'random64.bin'))).toBe(src64Hash);
    }
  });

  it('copies a 0-byte file both ways', async () => {
    const dir = join(work.path, 'empty');
    await mkdir(dir);
    const empty = join(dir, 'empty.bin');
    await writeFile(empty, '');
    const push = await runFerry(['cp', empty, remote(join(dir, 'pushed.bin')), ...common()]);
    expect(push.code).toBe(0);
    expect(push.stdout).toContain('0 ranges');
    expect((await stat(join(dir, 'pushed.bin'))).size).toBe(0);
    const pull = await runFerry(['cp', remote(empty), join(dir, 'pulled.bin'), ...common()]);
    expect(pull.code).toBe(0);
    expect((await stat(join(dir, 'pulled.bin'))).size).toBe(0);
  });

  it("removes the job's NATS store once every range is journaled, and leaves no nats-server running", async () => {
    const dir = join(work.path, 'nats-store');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await makeRandomFile(src, 40 * MiB + 1234);
    const state = join(dir, 'state');
    // Two agents: the second is a process of its own, so the job runs on an embedded nats-server.
    const r = await runFerry(['cp', src, remote(`${dir}/dst.bin`), '-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', state, '-a', '2', '-s', '1', '--range-size', '8MiB']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(join(dir, 'dst.bin'))).toBe(await fileHash(src));
    const jobs = await readdir(join(state, 'jobs'));
    expect(jobs.length).toBe(1);
    // The journal and manifest stay (status, resume, verification); the store they make redundant goes.
    expect((await readdir(join(state, 'jobs', jobs[0]!))).sort()).toEqual(['job.json', 'journal', 'manifest.json', 'status.json']);
    expect(await killStrays(state)).toEqual([]);
  });

  it('runs a job of one agent without NATS: its agent is in ferry\'s own process, on a control plane in memory', async () => {
    const dir = join(work.path, 'local-bus');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await makeRandomFile(src, 40 * MiB + 1234);
    const state = join(dir, 'state');
    for (const target of [remote(`${dir}/pushed.bin`), join(dir, 'pulled.bin')]) {
      const from = target.startsWith('/') ? remote(`${dir}/pushed.bin`) : src;
      const r = await runFerry(['cp', from, target, '-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', state, '-a', '1', '-s', '2', '--range-size', '8MiB'], {
        env: { FERRY_NATS_SERVER: '/nonexistent/nats-server' },
      });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
    expect(await fileHash(join(dir, 'pushed.bin'))).toBe(await fileHash(src));
    expect(await fileHash(join(dir, 'pulled.bin'))).toBe(await fileHash(src));
  });

  it('detects a range corrupted in transit and re-sends it', async () => {
    const dir = join(work.path, 'corrupt');
    await mkdir(dir);
    // 4 ranges of 16 MiB, the second and the last corrupted once.
    for (const mode of ['helper', 'sftp']) {
      const target = join(dir, `${mode}.bin`);
      const r = await runFerry(['cp', src64, remote(target), '--mode', mode, '--range-size', '16MiB', '--json', ...common()], {
        env: { FERRY_TEST_CORRUPT_RANGES: '1,3' },
      });
      expect(r.code).toBe(0);
      const events = parseEvents(r.stdout);
      const resends = events.filter((e) => e.type === 'range.resend');
      expect(resends.map((e) => e.range).sort((a, b) => Number(a) - Number(b))).toEqual([1, 3]);
      // Found as received, not by reading back (no --verify).
      expect(String(resends[0]!.reason)).toMatch(/^hash mismatch \(source \w+, destination \w+\) via /);
      const done = events.find((e) => e.type === 'done')!;
      expect(done.resends).toBe(2);
      expect(await fileHash(target)).toBe(src64Hash);
    }
    // And when the remote lies about the ranges the corrupted ones also fail in the pull direction.
    const pulled = join(dir, 'pulled.bin');
    const r = await runFerry(['cp', remote(src64), pulled, '--range-size', '16MiB', '--json', ...common()], { env: { FERRY_TEST_CORRUPT_RANGES: '2' } });
    expect(r.code).toBe(0);
    expect(parseEvents(r.stdout).filter((e) => e.type === 'range.resend').map((e) => e.range)).toEqual([2]);
    expect(await fileHash(pulled)).toBe(src64Hash);
  });

  it('keeps a re-sent range when the write of its corrupted first attempt is held until after the re-send', async () => {
    // The helper answers a WRITE before its bytes are written (serve.ts). Here the disk holds
    // the first attempt's write of range 2 (corrupted in transit) for 3 s, long enough for the
    // other stream to send the range again and write it; the held bytes must not land last.
    const dir = join(work.path, 'held');
    await mkdir(dir);
    const target = join(dir, 'x.bin');
    const marker = join(dir, 'held-once');
    const hold = `FERRY_TEST_HOLD_AT=${2 * 16 * MiB} FERRY_TEST_HOLD_MS=3000 FERRY_TEST_HOLD_MARKER=${marker} ${process.execPath} --import ${HOLD_FIRST_WRITE} ${CLI} serve`;
    const r = await runFerry(['cp', src256, remote(target), '-a', '1', '-s', '2', '--range-size', '16MiB', '--json', ...common(['--remote-cmd', hold])], {
      env: { FERRY_TEST_CORRUPT_RANGES: '2' },
    });
    expect(r.code).toBe(0);
    expect(existsSync(marker)).toBe(true);
    expect(parseEvents(r.stdout).filter((e) => e.type === 'range.resend').map((e) => e.range)).toEqual([2]);
    expect(await fileHash(target)).toBe(src256Hash);
  });

  it('moves ranges below 16 MiB in runs of up to 16 per work item, re-sending a corrupted range from the middle of a run, both ways', async () => {
    const dir = join(work.path, 'runs');
    await mkdir(dir);
    // 64 ranges of 1 MiB: 4 work items of 16 ranges; ranges 5 and 37 arrive corrupted once.
    const env = { FERRY_TEST_CORRUPT_RANGES: '5,37' };
    const target = join(dir, 'pushed.bin');
    const push = await runFerry(['cp', src64, remote(target), '--agents', '2', '--streams', '2', '--range-size', '1MiB', '--json', ...common()], { env });
    expect(push.code).toBe(0);
    const pulled = join(dir, 'pulled.bin');
    const pull = await runFerry(['cp', remote(src64), pulled, '--agents', '2', '--streams', '2', '--range-size', '1MiB', '--json', ...common()], { env });
    expect(pull.code).toBe(0);
    for (const r of [push, pull]) {
      const events = parseEvents(r.stdout);
      expect(events.filter((e) => e.type === 'range.resend').map((e) => Number(e.range)).sort((a, b) => a - b)).toEqual([5, 37]);
      const done = events.filter((e) => e.type === 'range.done').map((e) => Number(e.range));
      expect(new Set(done).size).toBe(64);
      expect(events.find((e) => e.type === 'done')).toMatchObject({ ranges: 64, resends: 2 });
    }
    expect(await fileHash(target)).toBe(src64Hash);
    expect(await fileHash(pulled)).toBe(src64Hash);
    // 8 ranges of 1 MiB are one work item: one agent, however many were asked for.
    const small = join(dir, 'small.bin');
    await makeRandomFile(small, 8 * MiB);
    const one = await runFerry(['cp', small, remote(join(dir, 'small-copy.bin')), '--agents', '3', '--streams', '2', '--range-size', '1MiB', '--json', ...common()]);
    expect(one.code).toBe(0);
    expect(parseEvents(one.stdout).find((e) => e.type === 'done')).toMatchObject({ ranges: 8, agents: 1 });
    expect(await fileHash(join(dir, 'small-copy.bin'))).toBe(await fileHash(small));
  });

  it('fails with a verification error when a range keeps arriving corrupted', async () => {
    const dir = join(work.path, 'corrupt-always');
    await mkdir(dir);
    const target = join(dir, 'x.bin');
    const r = await runFerry(['cp', src256, remote(target), '--range-size', '16MiB', '--max-resends', '0', ...common()], {
      env: { FERRY_TEST_CORRUPT_RANGES: '2' },
    });
    expect(r.code).toBe(50);
    expect(r.stderr).toMatch(/range 2 \(bytes 33554432-50331648\) failed verification 1 time via/);
    await expect(stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('emits NDJSON events with --json', async () => {
    const dir = join(work.path, 'json');
    await mkdir(dir);
    const r = await runFerry(['cp', src256, remote(`${dir}/`), '--json', '--range-size', '64MiB', ...common()]);
    expect(r.code).toBe(0);
    const events = parseEvents(r.stdout);
    // No --agents or --streams: one agent on this 2-core machine, its streams tuned from 1 up to 16.
    expect(events[0]).toMatchObject({ type: 'job.start', bytes: 256 * MiB, ranges: 4, rangeBytes: 64 * MiB, agents: 1, streams: 1, maxStreams: 16, tuning: true, mode: 'helper', hash: 'xxh3' });
    expect(events.filter((e) => e.type === 'range.done').map((e) => e.range).sort()).toEqual([0, 1, 2, 3]);
    const done = events.at(-1)!;
    expect(done).toMatchObject({ type: 'done', bytes: 256 * MiB, ranges: 4, resends: 0, destination: remote(join(dir, 'random256.bin')), mode: 'helper', agents: 1, tuned: true });
    expect(String(done.rootHash)).toMatch(/^[0-9a-f]{16}$/);
  });

  it("preserves mode and mtime with -p, and without it gives the source's mode limited by the umask, as scp", async () => {
    const dir = join(work.path, 'preserve');
    await mkdir(dir);
    const src = join(dir, 'src.bin');
    await makeRandomFile(src, 3 * MiB + 5);
    await chmod(src, 0o664);
    await utimes(src, 1_600_000_000, 1_600_000_000);
    for (const direction of ['push', 'pull']) {
      const withP = join(dir, `${direction}-p.bin`);
      const without = join(dir, `${direction}.bin`);
      const spec = (target: string) => (direction === 'push' ? [src, remote(target)] : [remote(src), target]);
      expect((await runFerry(['cp', ...spec(withP), '-p', ...common()])).code).toBe(0);
      expect((await runFerry(['cp', ...spec(without), ...common()])).code).toBe(0);
      const sp = await stat(withP);
      expect(sp.mode & 0o7777).toBe(0o664);
      expect(Math.floor(sp.mtimeMs / 1000)).toBe(1_600_000_000);
      // The remote helper runs with the umask of this process (sshd inherits it), as does a pull.
      expect((await stat(without)).mode & 0o7777).toBe(0o664 & ~process.umask());
      expect(await fileHash(withP)).toBe(await fileHash(src));
    }
  });

  it('falls back to the python helper in auto mode when ferry serve cannot be started, and says so', async () => {
    const dir = join(work.path, 'fallback');
    await mkdir(dir);
    const r = await runFerry(['cp', src64, remote(`${dir}/`), ...common(['--remote-cmd', 'ferry-not-installed-here serve'])]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('python mode');
    expect(r.stderr).toBe(`ferry: warning: ${sshd.host}:${sshd.port}: 'ferry-not-installed-here serve' not found (exit 127); using ferry's python helper: install ferry there or pass --remote-cmd\n`);
    expect(await fileHash(join(dir, 'random64.bin'))).toBe(src64Hash);
  });

  it('opens no more connections to a remote host than --max-per-host', async () => {
    const dir = join(work.path, 'maxperhost');
    await mkdir(dir);
    const accepted = async () => ((await readFile(sshd.log, 'utf8')).match(/Accepted publickey/g) ?? []).length;
    const before = await accepted();
    const r = await runFerry(['cp', src64, remote(`${dir}/`), '--agents', '2', '--streams', '2', '--max-per-host', '1', '-v', ...common()]);
    expect(r.code).toBe(0);
    expect(await fileHash(join(dir, 'random64.bin'))).toBe(src64Hash);
    // One login: the one connection allowed is the coordinator's own, which agent 0
    // (running in the coordinator's process, warm start) moves the data over.
    expect((await accepted()) - before).toBe(1);
    expect(r.stderr).toContain('stays idle: 1 hosts x --max-per-host 1 connections are taken by lower slots');
  });

  it('starts local agents while it prepares, so their connections are open when the job exists, and lends agent 0 its own (warm start)', async () => {
    const accepted = async () => ((await readFile(sshd.log, 'utf8')).match(/Accepted publickey/g) ?? []).length;
    for (const warm of ['1', '0']) {
      const dir = join(work.path, `warm-${warm}`);
      await mkdir(dir);
      const before = await accepted();
      // 4 ranges: work for both slots.
      const r = await runFerry(['cp', src64, remote(`${dir}/`), '--agents', '1', '--streams', '2', '-v', ...common()], { env: { FERRY_WARM_START: warm } });
      expect(r.code).toBe(0);
      expect(await fileHash(join(dir, 'random64.bin'))).toBe(src64Hash);
      const used = r.stderr.match(/slot \d: using the connection to \S+, opened while the coordinator prepared/g) ?? [];
      const lent = r.stderr.match(/slot \d: using the coordinator's connection to \S+, opened while the coordinator prepared/g) ?? [];
      // Warm: agent 0 runs in the coordinator's process; one slot uses the coordinator's
      // connection, the other the connection opened ahead; none is opened twice.
      expect([used.length, lent.length]).toEqual(warm === '1' ? [1, 1] : [0, 0]);
      expect((await accepted()) - before).toBe(warm === '1' ? 2 : 3);
    }
    // A file of one range: the second slot would get no work, so it opens no connection,
    // and warm, the one that works uses the coordinator's.
    const small = join(work.path, 'one-range.bin');
    await writeFile(small, randomBytes(100_000));
    for (const warm of ['1', '0']) {
      const dir = join(work.path, `warm-small-${warm}`);
      await mkdir(dir);
      const before = await accepted();
      const r = await runFerry(['cp', small, remote(`${dir}/`), '--agents', '2', '--streams', '2', ...common()], { env: { FERRY_WARM_START: warm } });
      expect(r.code).toBe(0);
      expect(await readFile(join(dir, 'one-range.bin'))).toEqual(await readFile(small));
      expect((await accepted()) - before).toBe(warm === '1' ? 1 : 2);
    }
    // A pull does not know its size before it starts: agent 0 uses the coordinator's
    // connection, the other slots and agents start with the job and connect only if work reaches them.
    for (const warm of ['1', '0']) {
      const target = join(work.path, `warm-small-pulled-${warm}.bin`);
      const before = await accepted();
      const r = await runFerry(['cp', remote(small), target, '--agents', '2', '--streams', '2', '-v', ...common()], { env: { FERRY_WARM_START: warm } });
      expect(r.code).toBe(0);
      expect(await readFile(target)).toEqual(await readFile(small));
      expect((await accepted()) - before).toBe(warm === '1' ? 1 : 2);
      expect((r.stderr.match(/using the coordinator's connection to \S+, opened while the coordinator prepared/g) ?? []).length).toBe(warm === '1' ? 1 : 0);
    }
  });

  it('leaves no agent behind when the copy cannot start', async () => {
    // This run's agents only (they inherit its environment): other files' tests may run
    // at the same time (vitest.config.ts), and other checkouts' on the same machine.
    const mark = `CP_TEST_RUN=${randomBytes(8).toString('hex')}`;
    const warmAgents = async () => {
      const { readdir } = await import('node:fs/promises');
      const found: string[] = [];
      for (const pid of (await readdir('/proc')).filter((d) => /^\d+$/.test(d))) {
        const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
        if (!cmd.includes(`${CLI}\0agent\0--warm`)) continue;
        const env = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
        if (env.split('\0').includes(mark)) found.push(`${pid}: ${cmd.replace(/\0/g, ' ')}`);
      }
      return found;
    };
    const r = await runFerry(['cp', src256, remote(join(work.path, 'no-such-dir') + '/'), '--agents', '3', ...common()], { env: { CP_TEST_RUN: mark.slice('CP_TEST_RUN='.length) } });
    expect(r.code).toBe(20);
    expect(r.stderr).toContain('does not exist: create it first');
    expect(await warmAgents()).toEqual([]);
  });

  it('writes the destination around the page cache with --direct-io, both ways, a file ending mid-page included', async () => {
    const dir = join(work.path, 'direct');
    await mkdir(dir);
    // 3 ranges of 16 MiB; the last ends 1234 bytes into a page, which goes through the page cache.
    const src = join(dir, 'src.bin');
    await makeRandomFile(src, 40 * MiB + 1234);
    const srcHash = await fileHash(src);
    const pushed = join(dir, 'pushed.bin');
    const pulled = join(dir, 'pulled.bin');
    const buffered = join(dir, 'buffered.bin');
    const autoPushed = join(dir, 'auto-pushed.bin');
    const autoPulled = join(dir, 'auto-pulled.bin');
    const flags = ['--agents', '1', '--streams', '2', '--range-size', '16MiB', '-v', ...common()];
    const push = await runFerry(['cp', src, remote(pushed), '--direct-io', ...flags]);
    const pull = await runFerry(['cp', remote(src), pulled, '--direct-io', ...flags]);
    const plain = await runFerry(['cp', remote(src), buffered, '--no-direct-io', ...flags]);
    // No flag: direct I/O where the destination is on a local disk file system (ext4, xfs, btrfs, f2fs).
    const autoPush = await runFerry(['cp', src, remote(autoPushed), ...flags]);
    const autoPull = await runFerry(['cp', remote(src), autoPulled, ...flags]);
    for (const r of [push, pull, plain, autoPush, autoPull]) expect(r.code).toBe(0);
    // perl is on this machine's PATH: the helper grew sshd's pipes and -v has nothing to say of them.
    for (const r of [push, pull, plain]) expect(r.stderr).not.toContain("sshd's pipes");
    // Hashing reads the copies into the page cache: after fincore, below.
    const identical = async () => {
      for (const path of [pushed, pulled, buffered, autoPushed, autoPulled]) expect(await fileHash(path)).toBe(srcHash);
    };
    // fincore: bytes of the file in the page cache. Direct writes leave none behind
    // but the tail's page; buffered writes leave the whole file.
    const resident = async (path: string) => Number((await execFileP('fincore', ['--bytes', '--noheadings', '--output', 'RES', path])).stdout.trim());
    const localDisk = LOCAL_DISK_FILESYSTEMS.has((await statfs(dir)).type);
    expect(await resident(buffered)).toBeGreaterThan(32 * MiB);
    for (const path of [autoPushed, autoPulled]) {
      if (localDisk) expect(await resident(path)).toBeLessThanOrEqual(64 * 1024);
      else expect(await resident(path)).toBeGreaterThan(32 * MiB);
    }
    if (!localDisk) {
      expect(autoPush.stderr).toContain('direct I/O: 127.0.0.1');
      expect(autoPush.stderr).toContain('is not a local disk file system ferry writes around the page cache by default');
    }
    // Both ends write into this directory's file system. Where it has no direct I/O
    // (tmpfs before Linux 6.6), the copies must still be right and -v must say so.
    const probe = await openDirect(src);
    if (!('fh' in probe)) {
      for (const r of [push, pull]) expect(r.stderr).toContain('--direct-io');
      expect(push.stderr).toContain('writes through its page cache');
      expect(pull.stderr).toContain('writing through the page cache');
      await identical();
      return;
    }
    await probe.fh.close();
    for (const r of [push, pull, plain]) expect(r.stderr).not.toContain('page cache');
    for (const path of [pushed, pulled]) expect(await resident(path)).toBeLessThanOrEqual(64 * 1024);
    await identical();
  });

  it("says with -v when the helper cannot grow sshd's pipes, and copies all the same", async () => {
    const dir = join(work.path, 'small-pipes');
    await mkdir(dir);
    const target = join(dir, 'target.bin');
    // No perl or python3 on the helper's PATH: node itself is named by its absolute path.
    const r = await runFerry(['cp', src64, remote(target), '-a', '1', '-s', '2', '-v', ...common(['--remote-cmd', `env PATH=/nonexistent ${REMOTE_CMD}`])]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("sshd's pipes to the helper stay at 64 KiB (neither perl nor python3 is on its PATH): with perl or python3 there, copies run up to 1.2x faster");
    expect(await fileHash(target)).toBe(src64Hash);
  });

  it('overwrites an existing destination only when the copy is complete', async () => {
    const dir = join(work.path, 'overwrite');
    await mkdir(dir);
    const target = join(dir, 'target.bin');
    await writeFile(target, 'old contents');
    const r = await runFerry(['cp', src64, remote(target), ...common()]);
    expect(r.code).toBe(0);
    expect(await fileHash(target)).toBe(src64Hash);
  });
});

describe('ferry cp with many streams in one agent', () => {
  it('pulls through 12 connections with nothing on stderr', async () => {
    // 12 connection attempts at once share one abort signal: past 10 listeners Node
    // printed a MaxListenersExceededWarning into the user's terminal.
    const dir = join(work.path, 'pull-12');
    await mkdir(dir);
    const target = join(dir, 'pulled.bin');
    const r = await runFerry(['cp', remote(src256), target, '--agents', '1', '--streams', '12', '--range-size', '16MiB', '--direct-io', ...common()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('16 ranges, 0 re-sent, 1 agent x 12 streams, helper mode');
    expect(await fileHash(target)).toBe(src256Hash);
  });
});
