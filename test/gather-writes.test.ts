/**
 * The SSH packets ssh2 writes in one turn of the event loop reach the kernel
 * in one writev (transport's gather-writes.ts), against a real OpenSSH sshd.
 * The socket's own _write/_writev are watched: they are where a net.Socket
 * hands bytes to libuv, one call per system call.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Client } from 'ssh2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, gatherStats, shellQuote } from '@ferry/transport';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
const clients: Client[] = [];

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-gather-');
});

afterEach(() => {
  delete process.env.FERRY_GATHER_WRITES;
  for (const c of clients.splice(0)) c.end();
});

afterAll(async () => {
  await sshd?.stop();
  await work?.remove();
});

async function connect(): Promise<Client> {
  const client = await connectSsh({ host: sshd.host, port: sshd.port, user: sshd.user }, { knownHostsFile: sshd.knownHosts, identityFiles: [sshd.userKey], connectTimeoutMs: 20_000 });
  clients.push(client);
  return client;
}

interface Calls {
  /** Bytes of each call that went to the kernel, and how many buffers it carried. */
  calls: { buffers: number; bytes: number }[];
}

/** Records every _write and _writev of the client's socket from now on. */
function watchSocket(client: Client): Calls {
  const sock = (client as unknown as { _sock: Record<string, (...a: unknown[]) => unknown> })._sock;
  const seen: Calls = { calls: [] };
  const write = sock._write!;
  const writev = sock._writev!;
  sock._write = function (this: unknown, chunk: unknown, ...rest: unknown[]) {
    seen.calls.push({ buffers: 1, bytes: (chunk as Buffer).length });
    return write.call(this, chunk, ...rest);
  };
  sock._writev = function (this: unknown, chunks: unknown, ...rest: unknown[]) {
    const list = chunks as { chunk: Buffer }[];
    seen.calls.push({ buffers: list.length, bytes: list.reduce((n, c) => n + c.chunk.length, 0) });
    return writev.call(this, chunks, ...rest);
  };
  return seen;
}

/** Opens `cat > path`, then writes `data` with one channel.write; resolves once cat has exited 0. */
function pushOnce(client: Client, path: string, data: Buffer, beforeWrite: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    client.exec(`cat > ${shellQuote(path)}`, (err, channel) => {
      if (err) return reject(err);
      channel.on('exit', (code: number | null) => (code === 0 ? resolve() : reject(new Error(`cat exited ${code}`))));
      channel.resume();
      // Let the exec's own packets leave first, so that the socket is idle.
      setTimeout(() => {
        beforeWrite();
        channel.write(data);
        channel.end();
      }, 50);
    });
  });
}

describe('socket writes gathered per turn of the event loop', () => {
  it('hands a 1 MiB channel write (32 SSH packets) to the kernel in one writev, byte-identically', async () => {
    const client = await connect();
    const stats = gatherStats(client);
    expect(stats).toBeDefined();
    const data = randomBytes(MiB);
    const dest = join(work.path, 'gathered.bin');
    let seen: Calls | undefined;
    await pushOnce(client, dest, data, () => (seen = watchSocket(client)));
    expect((await readFile(dest)).equals(data)).toBe(true);
    // One call carries all of the megabyte's packets (plus their headers, padding and tags).
    const biggest = seen!.calls.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    expect(biggest.buffers).toBeGreaterThanOrEqual(32);
    expect(biggest.bytes).toBeGreaterThan(MiB);
    expect(stats!.writes).toBeGreaterThan(stats!.turns);
  });

  it('writes packet by packet with FERRY_GATHER_WRITES=0', async () => {
    process.env.FERRY_GATHER_WRITES = '0';
    const client = await connect();
    expect(gatherStats(client)).toBeUndefined();
    const data = randomBytes(MiB);
    const dest = join(work.path, 'ungathered.bin');
    let seen: Calls | undefined;
    await pushOnce(client, dest, data, () => (seen = watchSocket(client)));
    expect((await readFile(dest)).equals(data)).toBe(true);
    // Without gathering, the idle socket takes each packet as it comes: no call near a megabyte.
    expect(seen!.calls.length).toBeGreaterThanOrEqual(32);
    expect(Math.max(...seen!.calls.map((c) => c.bytes))).toBeLessThan(MiB / 2);
  });
});
