/**
 * The control plane beyond loopback (issue #30, finding 4): the embedded
 * nats-server that listens on 0.0.0.0 speaks TLS with a per-run CA and takes
 * only clients with the run's certificate. A TCP proxy between a client and
 * the server records every byte, as someone on the cluster network would.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createServer, connect as netConnect } from 'node:net';
import type { Server, Socket } from 'node:net';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import { connectBus } from '@ferry/agent/nats';
import { AGENT_EXEC_ENV, JOB_SPEC_SHA256_ENV, MESSAGE_VERSION, NATS_TLS_ENV, agentExecOf, decodeAgentEvent, encodeAgentExec, encodeClientTls, encodeMessage, jobSubjects, specDigest } from '@ferry/core';
import type { AgentEvent, JobSpec } from '@ferry/core';
import { setupJobStreams, startEmbeddedNats } from '@ferry/coordinator';
import type { EmbeddedNats } from '@ferry/coordinator';
import { makeRandomFile, startFerry, tempDir } from './helpers.js';

interface Tap {
  port: number;
  /** Everything each direction carried, concatenated. */
  toServer: () => Buffer;
  toClient: () => Buffer;
  close: () => Promise<void>;
}

/** A TCP proxy on loopback to `port` that keeps a copy of every byte. */
async function tap(port: number): Promise<Tap> {
  const up: Buffer[] = [];
  const down: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = netConnect({ host: '127.0.0.1', port });
    sockets.add(client).add(upstream);
    client.on('data', (d: Buffer) => {
      up.push(Buffer.from(d));
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      down.push(Buffer.from(d));
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (!address || typeof address !== 'object') throw new Error('proxy has no port');
  return {
    port: address.port,
    toServer: () => Buffer.concat(up),
    toClient: () => Buffer.concat(down),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const portOf = (url: string) => Number(new URL(url).port);

describe('the embedded nats-server beyond loopback', () => {
  const cleanup: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
  });

  async function start(): Promise<EmbeddedNats> {
    const dir = await tempDir('ferry-bus-tls-');
    cleanup.push(() => dir.remove());
    const nats = await startEmbeddedNats({ storeDir: join(dir.path, 'job', 'nats'), host: '0.0.0.0', advertiseHost: '127.0.0.1', jobId: 'abcd1234' });
    cleanup.push(() => nats.stop({ discard: true }));
    return nats;
  }

  it('speaks TLS: a proxy on the path sees neither the token nor a CONNECT, nor what a client publishes', async () => {
    const nats = await start();
    expect(nats.tls).toBeDefined();
    const proxy = await tap(portOf(nats.url));
    cleanup.push(() => proxy.close());
    const nc = await connectBus({ url: `nats://127.0.0.1:${proxy.port}`, token: nats.token, tls: nats.tls, name: 'ferry-agent-test' });
    const kv = await new Kvm(nc).create('ferry_abcd1234', { history: 1 });
    await kv.put('spec', new TextEncoder().encode('secret-spec-marker'));
    expect(new TextDecoder().decode((await kv.get('spec'))!.value)).toBe('secret-spec-marker');
    await nc.close();
    const sent = proxy.toServer().toString('latin1');
    const received = proxy.toClient().toString('latin1');
    expect(sent.length).toBeGreaterThan(0);
    expect(sent).not.toContain(nats.token);
    expect(received).not.toContain(nats.token);
    expect(sent).not.toContain('CONNECT');
    expect(sent).not.toContain('auth_token');
    expect(sent).not.toContain('secret-spec-marker');
    expect(received).not.toContain('secret-spec-marker');
    // The only clear text is the server's INFO, which asks for TLS before anything else.
    expect(received).toMatch(/^INFO \{[^\n]*"tls_required":true/);
  });

  it('carries a real agent process through the proxy without the token, a CONNECT or the job spec in clear text', async () => {
    const nats = await start();
    const proxy = await tap(portOf(nats.url));
    cleanup.push(() => proxy.close());
    const dir = await tempDir('ferry-bus-tls-agent-');
    cleanup.push(() => dir.remove());
    const JOB = 'abcd1234';
    const marker = join(dir.path, 'marker-source-path.bin');
    await makeRandomFile(marker, 1024 * 1024);
    const spec: JobSpec = {
      v: MESSAGE_VERSION, jobId: JOB, direction: 'push', mode: 'helper', localPath: marker, remotePath: '/nonexistent/.dst.part',
      remoteHosts: [{ host: '127.0.0.1', port: 9, user: 'nobody' }], remoteCommand: 'ferry serve', fileBytes: 1024 * 1024, rangeBytes: 1024 * 1024, rangeCount: 1,
      hash: 'xxh3', streams: 1, windowBytes: 1024 * 1024, connectionBytesPerSec: 0, maxConnectionsPerHost: 0, agentCount: 1, ackWaitMs: 30_000, maxDeliver: 3,
      durableEveryRanges: 1, durableIntervalMs: 5000, ssh: { knownHostsFile: join(dir.path, 'known_hosts'), identityFiles: [], connectTimeoutMs: 2000, transport: 'ssh2', sshCommand: ['ssh'] }, createdAt: Date.now(),
    };
    // The coordinator's side, directly on the server.
    const nc = await connectBus({ url: `nats://127.0.0.1:${portOf(nats.url)}`, token: nats.token, tls: nats.tls, name: 'ferry-coordinator-test' });
    cleanup.push(() => nc.close());
    await setupJobStreams(nc, await jetstreamManager(nc), spec);
    const started = new Promise<AgentEvent>((resolve) => {
      nc.subscribe(jobSubjects(JOB).events, { callback: (_e, m) => { const ev = decodeAgentEvent(m.data, JOB); if (ev.type === 'agent.started') resolve(ev); } });
    });
    // The agent, as a launcher starts it, through the proxy.
    const agent = startFerry(['agent', '--job', JOB, '--nats', `nats://127.0.0.1:${proxy.port}`, '--id', 'sniffed-1'], {
      env: { FERRY_NATS_TOKEN: nats.token, [NATS_TLS_ENV]: encodeClientTls(nats.tls!), [AGENT_EXEC_ENV]: encodeAgentExec(agentExecOf(spec)), [JOB_SPEC_SHA256_ENV]: specDigest(encodeMessage(spec)) },
      timeoutMs: 60_000,
    });
    cleanup.push(async () => agent.child.kill('SIGKILL'));
    expect((await started).agent).toBe('sniffed-1');
    nc.publish(jobSubjects(JOB).control, encodeMessage({ v: MESSAGE_VERSION, job: JOB, type: 'stop', reason: 'test over' }));
    await agent.result;
    const sent = proxy.toServer().toString('latin1');
    const received = proxy.toClient().toString('latin1');
    expect(sent.length).toBeGreaterThan(1000);
    for (const secret of [nats.token, 'CONNECT', 'auth_token', 'sniffed-1', 'ferry.abcd1234']) expect(sent).not.toContain(secret);
    for (const secret of [nats.token, 'marker-source-path', 'ferry serve']) expect(received).not.toContain(secret);
  });

  it('refuses a client that has the token but not the run\'s certificate, and one that does not trust the run\'s CA', async () => {
    const nats = await start();
    const url = `nats://127.0.0.1:${portOf(nats.url)}`;
    // The token alone, in clear text (today's scheme): the server wants TLS.
    await expect(connect({ servers: url, token: nats.token, reconnect: false, timeout: 5000 })).rejects.toThrow();
    // The token inside TLS, trusting the job's CA, without a client certificate.
    await expect(connect({ servers: url, token: nats.token, tls: { ca: nats.tls!.ca }, reconnect: false, timeout: 5000 })).rejects.toThrow();
    // Another run's credential (another CA): the server refuses it, and the client refuses the server.
    const other = await start();
    await expect(connect({ servers: url, token: nats.token, tls: other.tls!, reconnect: false, timeout: 5000 })).rejects.toThrow();
    // With everything, it connects.
    const nc = await connect({ servers: url, token: nats.token, tls: nats.tls!, reconnect: false, timeout: 5000 });
    await nc.close();
  });

  it('keeps the certificates\' keys readable by the user only, and the CA key nowhere', async () => {
    const dir = await tempDir('ferry-bus-tls-files-');
    cleanup.push(() => dir.remove());
    const store = join(dir.path, 'job', 'nats');
    const second = await startEmbeddedNats({ storeDir: store, host: '0.0.0.0', advertiseHost: '127.0.0.1', jobId: 'abcd1234' });
    cleanup.push(() => second.stop({ discard: true }));
    expect((await stat(join(store, 'tls'))).mode & 0o777).toBe(0o700);
    for (const f of ['ca.pem', 'server-cert.pem', 'server-key.pem']) expect((await stat(join(store, 'tls', f))).mode & 0o777).toBe(0o600);
    expect((await readdir(join(store, 'tls'))).sort()).toEqual(['ca.pem', 'server-cert.pem', 'server-key.pem']);
  });

  it('gives another Unix user on the node nothing to join with: no token in process lists or environments, no key file, no way in without them', async () => {
    const user = `ferrybus${process.pid}`;
    // A password of '*' (none works): the user exists only to run the attacker's commands.
    execFileSync('useradd', ['-M', '-d', '/nonexistent', '-s', '/bin/sh', '-p', '*', user]);
    cleanup.push(async () => execFileSync('userdel', [user], { stdio: 'ignore' }));
    const uid = execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim();
    const gid = execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim();
    const asOther = (cmd: string, ...args: string[]) => spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', cmd, ...args], { encoding: 'utf8', timeout: 20_000 });
    const dir = await tempDir('ferry-bus-other-');
    cleanup.push(() => dir.remove());
    const store = join(dir.path, 'job', 'nats');
    const nats = await startEmbeddedNats({ storeDir: store, host: '0.0.0.0', advertiseHost: '127.0.0.1', jobId: 'abcd1234' });
    cleanup.push(() => nats.stop({ discard: true }));
    expect(nats.pid).toBeDefined();
    // What `ps` shows every user (every process's command line, read as ps reads it): no token, no credential.
    const ps = asOther(process.execPath, '-e', `
      const fs = require('node:fs');
      for (const pid of fs.readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n))) {
        try { process.stdout.write(fs.readFileSync('/proc/' + pid + '/cmdline', 'latin1').replace(/\\0/g, ' ') + '\\n'); } catch {}
      }
    `);
    expect(ps.status).toBe(0);
    expect(ps.stdout).toContain('nats-server');
    expect(ps.stdout).not.toContain(nats.token);
    // The server's environment (where the token is) and its key are the user's alone.
    const environ = asOther('cat', `/proc/${nats.pid}/environ`);
    expect(environ.status).not.toBe(0);
    expect(environ.stdout).not.toContain(nats.token);
    const key = asOther('cat', join(store, 'tls', 'server-key.pem'));
    expect(key.status).not.toBe(0);
    expect(key.stderr).toMatch(/Permission denied/);
    // Knocking with a guessed token in clear text.
    const knock = asOther(process.execPath, '-e', `
      const s = require('node:net').connect(${portOf(nats.url)}, '127.0.0.1');
      let got = '';
      s.on('data', (d) => { got += d; if (got.includes('INFO')) s.write('CONNECT {"auth_token":"guessed","verbose":false}\\r\\nPING\\r\\n'); });
      s.on('close', () => { process.stdout.write(got); process.exit(0); });
      s.on('error', () => {});
      setTimeout(() => { process.stdout.write(got); process.exit(0); }, 5000);
    `);
    expect(knock.stdout).toMatch(/^INFO /);
    // Its one line of clear text asks for TLS and a client certificate, and then it hangs up: no PONG, no +OK.
    expect(knock.stdout).toMatch(/"tls_required":true,"tls_verify":true/);
    expect(knock.stdout.trim().split('\r\n')).toHaveLength(1);
    expect(knock.stdout).not.toContain('PONG');
  });

  it('keeps the token scheme on loopback', async () => {
    const dir = await tempDir('ferry-bus-loopback-');
    cleanup.push(() => dir.remove());
    const nats = await startEmbeddedNats({ storeDir: join(dir.path, 'nats'), host: '127.0.0.1' });
    cleanup.push(() => nats.stop({ discard: true }));
    expect(nats.tls).toBeUndefined();
    const nc = await connect({ servers: nats.url, token: nats.token, reconnect: false });
    await nc.close();
  });
});
