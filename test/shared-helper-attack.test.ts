/**
 * Another Unix user against `--shared-helper` (docs/security.md, "Shared
 * helper"), with real sshds and a real `ferry cp`.
 *
 * The testbed is two data transfer nodes behind one host name: two sshds with
 * the same host key behind a TCP proxy that hands connections to them in turn
 * (the DNS alias), each in a mount namespace of its own where the directory
 * its helpers use as TMPDIR is that node's own (`tmpA`, `tmpB`, both 1777
 * like /tmp). A shared helper started on one node puts its socket in that
 * node's directory; a join that lands on the other node looks for the same
 * path there.
 *
 * The attacker is a second user (`useradd`) who sees the socket directory's
 * name appear in one node's /tmp and plants a listener at the same path on
 * the other (test/fixtures/attacker-hub.mjs: it fakes the join handshake
 * without the key, then plays `ferry serve`). So that the plant is in place
 * before the victim's join arrives, the proxy holds the bytes sent to the
 * other node from the moment the directory appears until the attacker says
 * it has planted: the attack at its best timing, every run.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { copyFileSync, watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import { chmod, chown, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JOIN_REQUEST_BYTES } from '@ferry/core';
import type { SshSettings } from '@ferry/core';
import { connectRemote } from '@ferry/transport';
import { freePort, startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { fileHash, killStrays, makeRandomFile, REMOTE_CMD, ROOT, runFerry, tempDir, writeRange } from './helpers.js';

const MiB = 1024 * 1024;
let work: { path: string; remove(): Promise<void> };
/** The path every node's helpers use as TMPDIR, and what each node has there. */
let nodeTmp: string;
let tmpA: string;
let tmpB: string;
let sshdA: Sshd;
let sshdB: Sshd;
let attacker: string | undefined;
let attackerIds: { uid: number; gid: number };
let logDir: string;
/** Every attacker process started, to end in afterAll. */
const attackers = new Set<ChildProcessWithoutNullStreams>();
let proxy: { port: number; knownHosts: string; close(): void; hold(node: 0 | 1): () => void };

/** Two sshds (one host key) whose sessions see `dir` at `nodeTmp`. */
async function startNode(dir: string, keysFrom?: Sshd): Promise<Sshd> {
  const sshdDir = join(work.path, `sshd-${dir.endsWith('A') ? 'a' : 'b'}`);
  await mkdir(sshdDir);
  if (keysFrom) for (const f of ['hostkey', 'hostkey.pub', 'userkey', 'userkey.pub']) copyFileSync(join(keysFrom.dir, f), join(sshdDir, f));
  return startSshd({
    dir: sshdDir,
    extraConfig: [`SetEnv TMPDIR=${nodeTmp}`],
    wrap: ['unshare', '-m', '--propagation', 'private', 'sh', '-c', `mount --bind '${dir}' '${nodeTmp}' && exec "$@"`, 'sh'],
  });
}

/**
 * The host name that reaches both nodes: connection 1 goes to A, 2 to B, 3
 * to A... `hold(node)` stops passing bytes to that node's connections until
 * the returned function is called.
 */
async function startProxy(): Promise<typeof proxy> {
  const port = await freePort();
  const nodes = [sshdA, sshdB];
  const held: Array<Set<() => void> | undefined> = [undefined, undefined];
  let next = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const node = (next++ % 2) as 0 | 1;
    const upstream = netConnect(nodes[node]!.port, nodes[node]!.host);
    sockets.add(client).add(upstream);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    upstream.pipe(client);
    client.on('data', (chunk: Buffer) => {
      const waiting = held[node];
      if (waiting) {
        client.pause();
        waiting.add(() => {
          upstream.write(chunk);
          client.resume();
        });
      } else upstream.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const knownHosts = join(work.path, 'known_hosts_alias');
  const [, type, key] = sshdA.hostKeyLine.split(' ');
  await writeFile(knownHosts, `[127.0.0.1]:${port} ${type} ${key}\n`);
  return {
    port,
    knownHosts,
    close() {
      server.close();
      for (const s of sockets) s.destroy();
    },
    hold(node) {
      const waiting = new Set<() => void>();
      held[node] = waiting;
      return () => {
        if (held[node] === waiting) held[node] = undefined;
        for (const go of waiting) go();
      };
    },
  };
}

interface Attack {
  child: ChildProcessWithoutNullStreams;
  /** Directories the attacker has planted a listener in. */
  planted: string[];
  stop(): Promise<void>;
}

/** Starts the attacker's process, as the attacker. */
function startAttacker(): { child: ChildProcessWithoutNullStreams; lines: (want: (line: string) => boolean) => Promise<string> } {
  const child = spawn('setpriv', [`--reuid=${attackerIds.uid}`, `--regid=${attackerIds.gid}`, '--clear-groups', process.execPath, join(ROOT, 'test/fixtures/attacker-hub.mjs'), join(ROOT, 'packages/core/dist/index.js'), logDir], { stdio: ['pipe', 'pipe', 'pipe'] });
  attackers.add(child);
  let out = '';
  const waiters: Array<{ want: (line: string) => boolean; resolve: (line: string) => void }> = [];
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    let nl: number;
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      const w = waiters.findIndex((x) => x.want(line));
      if (w >= 0) waiters.splice(w, 1)[0]!.resolve(line);
    }
  });
  child.stderr.on('data', (d: Buffer) => process.stderr.write(`attacker: ${d.toString()}`));
  return { child, lines: (want) => new Promise((resolve) => waiters.push({ want, resolve })) };
}

/**
 * The attack: whenever a shared helper's directory appears on one node, the
 * attacker plants a listener at the same path on the other, while the proxy
 * holds that node's traffic.
 */
function plantOnTheOtherNode(): Attack {
  const { child, lines } = startAttacker();
  const planted: string[] = [];
  const watchers: FSWatcher[] = [];
  const dirs = [tmpA, tmpB] as const;
  for (const node of [0, 1] as const) {
    watchers.push(
      watch(dirs[node], (_event, name) => {
        if (!name?.startsWith('ferry-hub-') || planted.some((p) => p.endsWith(`/${name}`))) return;
        const other = (1 - node) as 0 | 1;
        const target = join(dirs[other], name);
        planted.push(target);
        const release = proxy.hold(other);
        const done = lines((l) => l === `planted ${target}`);
        child.stdin.write(`plant ${target}\n`);
        void done.then(release);
      }),
    );
  }
  return {
    child,
    planted,
    async stop() {
      for (const w of watchers) w.close();
      child.stdin.end();
      await new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r(undefined)));
    },
  };
}

/** What each connection to the attacker's listeners carried, in bytes. */
async function attackerReceived(): Promise<number[]> {
  const files = (await readdir(logDir)).filter((n) => n.startsWith('conn-'));
  return Promise.all(files.map(async (f) => (await stat(join(logDir, f))).size));
}

beforeAll(async () => {
  work = await tempDir('ferry-spoof-');
  await chmod(work.path, 0o755);
  nodeTmp = join(work.path, 'tmp');
  tmpA = join(work.path, 'tmpA');
  tmpB = join(work.path, 'tmpB');
  for (const d of [nodeTmp, tmpA, tmpB]) {
    await mkdir(d);
    await chmod(d, 0o1777);
  }
  attacker = `ferryhub${process.pid % 100000}`;
  // A password of '*' (no login by password), no home directory.
  execFileSync('useradd', ['-M', '-d', '/nonexistent', '-s', '/bin/sh', '-p', '*', attacker]);
  attackerIds = { uid: Number(execFileSync('id', ['-u', attacker]).toString().trim()), gid: Number(execFileSync('id', ['-g', attacker]).toString().trim()) };
  logDir = join(work.path, 'attacker-log');
  await mkdir(logDir);
  await chown(logDir, attackerIds.uid, attackerIds.gid);
  sshdA = await startNode(tmpA);
  sshdB = await startNode(tmpB, sshdA);
  proxy = await startProxy();
});

afterAll(async () => {
  proxy?.close();
  if (work) await killStrays(work.path);
  // The attacker's processes (each one this file started), whatever they are still doing.
  for (const child of attackers) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (attacker) execFileSync('userdel', [attacker], { stdio: 'ignore' });
  await sshdA?.stop();
  await sshdB?.stop();
  await work?.remove();
});

function copyArgs(src: string, dst: string, state: string): string[] {
  return ['cp', src, `${sshdA.user}@127.0.0.1:${proxy.port}:${dst}`, '-i', sshdA.userKey, '--known-hosts', proxy.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, state), '--range-size', '4MiB', '--agents', '1', '--streams', '4', '--shared-helper', '--mode', 'helper'];
}

describe('--shared-helper behind a host name that reaches two nodes', () => {
  it('copies byte-identically without an attacker: joins that land on the other node start helpers of their own', async () => {
    const src = join(work.path, 'plain-src.bin');
    await makeRandomFile(src, 32 * MiB);
    const dst = join(work.path, 'plain-dst.bin');
    const r = await runFerry(copyArgs(src, dst, 'plain-state'));
    expect(r.code, r.stderr).toBe(0);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it("refuses to join another user's listener planted at the socket's path on the other node: the copy fails with exit 64 and the attacker gets nothing of it", async () => {
    const src = join(work.path, 'attacked-src.bin');
    await makeRandomFile(src, 32 * MiB);
    const dst = join(work.path, 'attacked-dst.bin');
    const attack = plantOnTheOtherNode();
    let r: Awaited<ReturnType<typeof runFerry>> | undefined;
    try {
      r = await runFerry(copyArgs(src, dst, 'attacked-state'));
    } finally {
      await attack.stop();
    }
    // The attack happened: a listener was planted and the victim's join reached it.
    expect(attack.planted.length).toBeGreaterThan(0);
    const received = await attackerReceived();
    expect(received.length).toBeGreaterThan(0);
    // It got the join's opening message (a magic and a fresh nonce), nothing more: no HELLO, no OPEN, no data.
    for (const bytes of received) expect(bytes).toBeLessThanOrEqual(JOIN_REQUEST_BYTES);
    // The copy fails with the refusal, naming the socket and what to do.
    expect({ code: r!.code, stdout: r!.stdout }).toEqual({ code: 64, stdout: '' });
    expect(r!.stderr).toMatch(/^ferry: error: .*the shared helper socket \S+\/ferry-hub-\w+\/s on 127\.0\.0\.1:\d+ answered without proving the secret this copy gave its helper: another user may be listening there \(a host name that reaches several nodes, each with its own \/tmp\); refused to join it and sent it nothing\. Drop --shared-helper for this host, or connect to one node by its own name\n/m);
  });
});

describe('a real hub against a caller without its key', () => {
  it('keeps other users out of its directory, and refuses joins that do not prove the key even when they get in', async () => {
    const ssh: SshSettings = { knownHostsFile: sshdA.knownHosts, identityFiles: [sshdA.userKey], connectTimeoutMs: 20_000, sharedHelper: true };
    const conn = await connectRemote({ host: sshdA.host, port: sshdA.port, user: sshdA.user }, ssh, { mode: 'helper', remoteCommand: REMOTE_CMD, windowBytes: 8 * MiB });
    const { child, lines } = startAttacker();
    try {
      expect(conn.sharedHelper).toBe('started');
      const hubs = (await readdir(tmpA)).filter((n) => n.startsWith('ferry-hub-'));
      expect(hubs).toHaveLength(1);
      const dir = join(tmpA, hubs[0]!);
      const path = join(dir, 's');
      expect((await stat(dir)).mode & 0o777).toBe(0o700);

      // As created: the directory keeps the attacker out.
      const probe = async () => {
        const line = lines((l) => l.startsWith('{'));
        child.stdin.write(`probe ${path}\n`);
        return JSON.parse(await line) as Record<string, { error?: string; received?: number; last?: string }>;
      };
      expect(await probe()).toEqual({ path, join: { error: 'EACCES' }, blind: { error: 'EACCES' } });

      // Opened up (a careless chmod): the proof keeps the attacker out. The hub answers the
      // challenge (65 bytes) and then refuses (0x02); frames sent blind get nothing at all.
      await chmod(dir, 0o755);
      await chmod(path, 0o777);
      expect(await probe()).toEqual({ path, join: { received: 66, last: '02' }, blind: { received: 0, last: '' } });
      expect((await readdir(logDir)).includes('stolen')).toBe(false);

      // The helper still serves its own client.
      const data = Buffer.alloc(2 * MiB, 7);
      await writeRange(conn, join(work.path, 'still-served.bin'), data, 'xxh3');
      expect((await readFile(join(work.path, 'still-served.bin'))).equals(data)).toBe(true);
    } finally {
      child.stdin.end();
      conn.close();
    }
  });
});
