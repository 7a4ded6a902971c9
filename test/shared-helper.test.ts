/**
 * --shared-helper against a real OpenSSH sshd: a process's later connections to
 * a host reach the helper its first connection started, over `direct-streamlocal`
 * channels; joined sessions outlive the opener; a helper takes 8 connections
 * at most; a server that refuses streamlocal forwarding gets a helper per
 * connection; `ferry cp --shared-helper` copies byte-identically.
 *
 * Which process serves a session is told by STAT of /proc/self, which the
 * helper resolves to its own /proc/<pid>: equal inode numbers, one process.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHasher } from '@ferry/core';
import type { SshSettings } from '@ferry/core';
import { connectRemote, MAX_SHARED_JOINS } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { childPids, fileHash, killStrays, makeRandomFile, REMOTE_CMD, runFerry, startFerry, tempDir, writeRange } from './helpers.js';

const MiB = 1024 * 1024;
let work: { path: string; remove(): Promise<void> };
let sshd: Sshd;
/** An sshd that refuses streamlocal forwarding. */
let strict: Sshd;
/** The helpers' temporary directory (TMPDIR under sshd), where hub sockets live. */
let helperTmp: string;

beforeAll(async () => {
  work = await tempDir('ferry-shared-');
  helperTmp = join(work.path, 'tmp');
  await mkdir(helperTmp);
  sshd = await startSshd({ extraConfig: [`SetEnv TMPDIR=${helperTmp}`] });
  strict = await startSshd({ extraConfig: ['AllowStreamLocalForwarding no', `SetEnv TMPDIR=${helperTmp}`] });
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await strict?.stop();
  await work?.remove();
});

function connect(server: Sshd, shared = true): Promise<RemoteConnection> {
  const ssh: SshSettings = { knownHostsFile: server.knownHosts, identityFiles: [server.userKey], connectTimeoutMs: 20_000 };
  if (shared) ssh.sharedHelper = true;
  return connectRemote({ host: server.host, port: server.port, user: server.user }, ssh, { mode: 'helper', remoteCommand: REMOTE_CMD, windowBytes: 8 * MiB });
}

/** The inode of the serving helper's /proc/<pid>. */
async function helperOf(conn: RemoteConnection): Promise<number> {
  const st = await conn.stat('/proc/self');
  if (!st) throw new Error('no /proc/self on the remote side');
  return st.ino;
}

/** Writes `bytes` random bytes as one range through `conn` and checks the destination's hash and content. */
async function writeChecked(conn: RemoteConnection, path: string, bytes: number): Promise<void> {
  const data = randomBytes(bytes);
  const hash = await writeRange(conn, path, data, 'xxh3');
  const want = createHasher('xxh3');
  want.update(data);
  expect(hash).toBe(want.digest());
  expect((await readFile(path)).equals(data)).toBe(true);
}

/** The helper processes (`ferry serve`) under an sshd, at any depth. */
async function helperPids(root: number): Promise<number[]> {
  const out: number[] = [];
  const walk = async (pid: number): Promise<void> => {
    for (const child of await childPids(pid)) {
      const cmd = await readFile(`/proc/${child}/cmdline`, 'utf8').catch(() => '');
      if (cmd.split('\0').includes('serve')) out.push(child);
      await walk(child);
    }
  };
  await walk(root);
  return out;
}

/** The shared helpers' socket directories now in the helpers' TMPDIR. */
async function hubDirs(): Promise<string[]> {
  return (await readdir(helperTmp)).filter((n) => n.startsWith('ferry-hub-'));
}

/**
 * Waits until the helpers have removed their sockets' directories (they do once the
 * connection that opened one ends, after the copy's processes exit); returns those
 * left, but for `except`, with the helper processes still alive under the sshd.
 * The deadline is generous: a loaded CI machine takes seconds to wind a copy down.
 */
async function hubsGone(except: string[] = []): Promise<string[]> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const left = (await hubDirs()).filter((n) => !except.includes(n));
    if (left.length === 0) return left;
    if (Date.now() > deadline) {
      return [...left, ...(await helperPids(sshd.pid!)).map((pid) => `helper ${pid} alive`)];
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('--shared-helper', () => {
  it("joins the first connection's helper, keeps joined sessions past the opener, and starts a new helper after it", async () => {
    const first = await connect(sshd);
    const second = await connect(sshd);
    const alone = await connect(sshd, false);
    let third: RemoteConnection | undefined;
    try {
      expect(first.sharedHelper).toBe('started');
      expect(second.sharedHelper).toBe('joined');
      expect(alone.sharedHelper).toBeUndefined();
      const shared = await helperOf(first);
      expect(await helperOf(second)).toBe(shared);
      expect(await helperOf(alone)).not.toBe(shared);
      expect(await hubDirs()).toHaveLength(1);
      await writeChecked(second, join(work.path, 'joined.bin'), 8 * MiB);

      // The opener leaves: its helper takes no new sessions but serves the joined one to its end.
      first.close();
      await writeChecked(second, join(work.path, 'after-opener.bin'), 8 * MiB);
      third = await connect(sshd);
      expect(third.sharedHelper).toBe('started');
      expect(await helperOf(third)).not.toBe(shared);
    } finally {
      first.close();
      second.close();
      alone.close();
      third?.close();
    }
    expect(await hubsGone()).toEqual([]);
  });

  it(`puts at most ${MAX_SHARED_JOINS + 1} connections on one helper`, async () => {
    const conns: RemoteConnection[] = [];
    try {
      for (let i = 0; i < MAX_SHARED_JOINS + 2; i++) conns.push(await connect(sshd));
      expect(conns.map((c) => c.sharedHelper)).toEqual(['started', ...Array<string>(MAX_SHARED_JOINS).fill('joined'), 'started']);
      const helpers = await Promise.all(conns.map(helperOf));
      expect(new Set(helpers.slice(0, MAX_SHARED_JOINS + 1)).size).toBe(1);
      expect(helpers.at(-1)).not.toBe(helpers[0]);
    } finally {
      for (const c of conns) c.close();
    }
    expect(await hubsGone()).toEqual([]);
  });

  it('starts a helper per connection where the server refuses streamlocal forwarding', async () => {
    const first = await connect(strict);
    const second = await connect(strict);
    const third = await connect(strict);
    try {
      expect(first.sharedHelper).toBe('started');
      expect(second.sharedHelper).toBeUndefined();
      expect(third.sharedHelper).toBeUndefined();
      expect(new Set(await Promise.all([first, second, third].map(helperOf))).size).toBe(3);
      await writeChecked(second, join(work.path, 'refused.bin'), 4 * MiB);
    } finally {
      first.close();
      second.close();
      third.close();
    }
    expect(await hubsGone()).toEqual([]);
  });

  it('finishes byte-identical when the shared helpers are killed with SIGKILL mid-copy', async () => {
    const src = join(work.path, 'killed-src.bin');
    await makeRandomFile(src, 256 * MiB);
    const target = join(work.path, 'killed.bin');
    const run = startFerry(['cp', src, `${sshd.user}@${sshd.host}:${sshd.port}:${target}`, '-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'killed-state'), '--json', '--range-size', '8MiB', '--agents', '1', '--streams', '4', '--limit-rate', '40MB', '--shared-helper']);
    try {
      // Ranges are reported in batches (every 5 s): wait for the helper, then for data to flow.
      let helpers: number[] = [];
      for (let i = 0; i < 200 && helpers.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
        helpers = await helperPids(sshd.pid!);
      }
      await new Promise((r) => setTimeout(r, 1000));
      helpers = await helperPids(sshd.pid!);
      const atKill = await hubDirs();
      // Four streams and the coordinator's connection, one helper between them.
      expect(helpers).toHaveLength(1);
      for (const pid of helpers) process.kill(pid, 'SIGKILL');
      const r = await run.result;
      expect(r.code, r.stderr).toBe(0);
      expect(await fileHash(target)).toBe(await fileHash(src));
      expect(run.events.some((e) => e.type === 'agent.error' && e.fatal === false)).toBe(true);
      // The killed helper could not remove its socket's directory; every other helper did.
      expect(await hubsGone(atKill)).toEqual([]);
      for (const d of atKill) await rm(join(helperTmp, d), { recursive: true, force: true });
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  it('ferry cp --shared-helper pushes and pulls byte-identically', async () => {
    const src = join(work.path, 'src.bin');
    await makeRandomFile(src, 96 * MiB);
    const common = ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'state'), '--range-size', '8MiB', '--agents', '2', '--streams', '3', '--shared-helper', '--verbose'];
    const pushed = join(work.path, 'pushed.bin');
    const push = await runFerry(['cp', src, `${sshd.user}@${sshd.host}:${sshd.port}:${pushed}`, ...common]);
    expect(push.code, push.stderr).toBe(0);
    expect(push.stderr).toContain('joined the shared helper');
    const pulled = join(work.path, 'pulled.bin');
    const pull = await runFerry(['cp', `${sshd.user}@${sshd.host}:${sshd.port}:${pushed}`, pulled, ...common]);
    expect(pull.code, pull.stderr).toBe(0);
    const want = await fileHash(src);
    expect(await fileHash(pushed)).toBe(want);
    expect(await fileHash(pulled)).toBe(want);
    expect(await hubsGone()).toEqual([]);
  });
});
