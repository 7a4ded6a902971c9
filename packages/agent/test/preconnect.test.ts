import { describe, expect, it } from 'vitest';
import type { JobSpec, RemoteHost, SshRoute, SshSettings, WarmHint } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { Preconnected } from '../src/preconnect.js';

const ssh: SshSettings = { knownHostsFile: '/kh', identityFiles: ['/id'], connectTimeoutMs: 20_000 };
const dtn1: RemoteHost = { host: 'dtn1', port: 22, user: 'alice' };
const dtn2: RemoteHost = { host: 'dtn2', port: 22, user: 'alice' };
const hint: WarmHint = { v: 2, connections: [], ssh, mode: 'auto', remoteCommand: 'ferry serve', windowBytes: 8 << 20 };
const spec = { mode: 'helper', remoteCommand: 'ferry serve', windowBytes: 8 << 20, ssh, remoteHosts: [dtn1, dtn2] } as unknown as JobSpec;

/** The coordinator's connection, as far as lending goes: it counts its close() calls. */
function ownerConnection(): RemoteConnection & { closes: number; dead(): void } {
  let alive = true;
  const conn = {
    label: 'alice@dtn1:22',
    mode: 'helper' as const,
    closes: 0,
    get alive() {
      return alive;
    },
    dead() {
      alive = false;
    },
    realpath: async (path: string) => `/home/alice/${path}`,
    close() {
      this.closes++;
    },
  };
  return conn as unknown as RemoteConnection & { closes: number; dead(): void };
}

describe('Preconnected.lend (agent 0 in the coordinator process)', () => {
  it('gives the lent connection to one slot going to its host; the slot cannot close it', async () => {
    const pre = new Preconnected(hint);
    const owner = ownerConnection();
    pre.lend(dtn1, owner);
    expect(pre.has(dtn1)).toBe(true);
    expect(pre.has(dtn2)).toBe(false);
    expect(await pre.take(dtn2, spec)).toBeUndefined();
    const got = await pre.take(dtn1, spec);
    expect(got).toBeDefined();
    expect(pre.isLent(got!)).toBe(true);
    expect(got!.label).toBe('alice@dtn1:22');
    expect(await got!.realpath('x')).toBe('/home/alice/x');
    got!.close();
    expect(owner.closes).toBe(0);
    // Lent once: the next slot to that host connects itself.
    expect(pre.has(dtn1)).toBe(false);
    expect(await pre.take(dtn1, spec)).toBeUndefined();
    pre.close();
    expect(owner.closes).toBe(0);
  });

  it('does not lend a connection that has died, or one that does not suit the job', async () => {
    const dead = new Preconnected(hint);
    const owner = ownerConnection();
    owner.dead();
    dead.lend(dtn1, owner);
    expect(await dead.take(dtn1, spec)).toBeUndefined();

    const other = new Preconnected(hint);
    other.lend(dtn1, ownerConnection());
    expect(await other.take(dtn1, { ...spec, mode: 'sftp' })).toBeUndefined();
    const elsewhere = new Preconnected(hint);
    elsewhere.lend(dtn1, ownerConnection());
    expect(await elsewhere.take({ ...dtn1, user: 'bob' }, spec)).toBeUndefined();
  });

  it('lends a connection only to a slot that would reach the host the same way (its whole ssh_config route), in whatever field order it travelled', async () => {
    const route: SshRoute = { hostName: '10.1.2.3', identityFiles: ['/k/dtn'], knownHostsFiles: ['/kh'], globalKnownHostsFiles: [], connectTimeoutMs: 20_000, keepaliveIntervalMs: 15_000, keepaliveCountMax: 4 };
    const viaConfig: RemoteHost = { host: 'dtn1', port: 2222, user: 'alice', label: 'dtn1', route };
    const reordered = JSON.parse(JSON.stringify({ route: { ...route, hostName: '10.1.2.3' }, label: 'dtn1', user: 'alice', port: 2222, host: 'dtn1' })) as RemoteHost;
    const same = new Preconnected(hint);
    same.lend(viaConfig, ownerConnection());
    expect(await same.take(reordered, { ...spec, remoteHosts: [reordered] } as JobSpec)).toBeDefined();

    const otherKey: RemoteHost = { ...viaConfig, route: { ...route, identityFiles: ['/k/other'] } };
    const differs = new Preconnected(hint);
    differs.lend(viaConfig, ownerConnection());
    expect(differs.has(otherKey)).toBe(false);
    expect(await differs.take(otherKey, { ...spec, remoteHosts: [otherKey] } as JobSpec)).toBeUndefined();
    const throughJump: RemoteHost = { ...viaConfig, route: { ...route, jumps: [{ host: 'gw', port: 22, user: 'alice' }] } };
    const jumped = new Preconnected(hint);
    jumped.lend(viaConfig, ownerConnection());
    expect(await jumped.take(throughJump, { ...spec, remoteHosts: [throughJump] } as JobSpec)).toBeUndefined();
  });
});
