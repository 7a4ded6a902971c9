/**
 * Outgoing SSH packets, against a real OpenSSH sshd.
 * - Cut from a reused slab (transport's packet-ring.ts): what arrives is
 *   byte-identical whether packets come from the slab, from fresh buffers when
 *   the slab is full, or (another cipher) from ssh2 alone.
 * - Gathered (transport's gather-writes.ts): the packets written in one turn of
 *   the event loop reach the kernel in one writev. The socket's own
 *   _write/_writev are watched: they are where a net.Socket hands bytes to
 *   libuv, one call per system call.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import type { Client } from 'ssh2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, gatherStats, packetRingStats, shellQuote, usePacketRing } from '@ferry/transport';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
const clients: Client[] = [];

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-packets-');
});

afterEach(() => {
  delete process.env.FERRY_PACKET_RING;
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

/**
 * Sends `data` in 1 MiB writes into `cat > path` on the server; resolves once
 * cat has exited 0. With `beforeFirstWrite`, it first lets the exec's own
 * packets leave, so that the socket is idle, then calls it.
 */
function push(client: Client, path: string, data: Buffer, beforeFirstWrite?: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    client.exec(`cat > ${shellQuote(path)}`, (err, channel) => {
      if (err) return reject(err);
      channel.on('exit', (code: number | null) => (code === 0 ? resolve() : reject(new Error(`cat exited ${code}`))));
      channel.resume();
      let at = 0;
      const more = () => {
        while (at < data.length) {
          const piece = data.subarray(at, at + MiB);
          at += piece.length;
          if (!channel.write(piece)) return void channel.once('drain', more);
        }
        channel.end();
      };
      if (!beforeFirstWrite) return more();
      setTimeout(() => {
        beforeFirstWrite();
        more();
      }, 50);
    });
  });
}

describe('packets from a reused slab', () => {
  it('carries every packet of a 48 MiB push from the slab, byte-identically', async () => {
    const client = await connect();
    const stats = packetRingStats(client);
    expect(stats).toBeDefined();
    const data = randomBytes(48 * MiB);
    const dest = join(work.path, 'ring.bin');
    await push(client, dest, data);
    expect((await readFile(dest)).equals(data)).toBe(true);
    // 1536 packets of 32 KiB of data at least, nearly all from the slab.
    expect(stats!.ring).toBeGreaterThanOrEqual(1536);
    expect(stats!.fresh).toBeLessThan(stats!.ring / 10);
  });

  it('falls back to fresh buffers while a small slab is full, still byte-identically', async () => {
    process.env.FERRY_PACKET_RING = '0';
    const client = await connect();
    expect(packetRingStats(client)).toBeUndefined();
    // Three packets' worth: the socket holds more than that whenever the kernel's buffer is full.
    const stats = usePacketRing(client, 100 * 1024)!;
    expect(stats).toBeDefined();
    const data = randomBytes(48 * MiB);
    const dest = join(work.path, 'small-ring.bin');
    await push(client, dest, data);
    expect((await readFile(dest)).equals(data)).toBe(true);
    expect(stats.ring).toBeGreaterThan(0);
    expect(stats.fresh).toBeGreaterThan(0);
  });

  it('keeps every byte across key re-exchanges while packets come from the slab', async () => {
    // The server re-keys every MiB: ssh2 queues packets during each exchange and sends them under new keys.
    const rekeying = await startSshd({ extraConfig: ['RekeyLimit 1M'] });
    try {
      const client = await connectSsh({ host: rekeying.host, port: rekeying.port, user: rekeying.user }, { knownHostsFile: rekeying.knownHosts, identityFiles: [rekeying.userKey], connectTimeoutMs: 20_000 });
      clients.push(client);
      let rekeys = 0;
      client.on('handshake', () => rekeys++); // ssh2 emits it for every key exchange after the first
      const stats = packetRingStats(client)!;
      const data = randomBytes(24 * MiB);
      const dest = join(work.path, 'rekeyed.bin');
      await push(client, dest, data);
      expect((await readFile(dest)).equals(data)).toBe(true);
      expect(stats.ring).toBeGreaterThanOrEqual(700);
      expect(rekeys).toBeGreaterThanOrEqual(10);
    } finally {
      for (const c of clients.splice(0)) c.end();
      await rekeying.stop();
    }
  });

  it('leaves packets of another cipher to ssh2', async () => {
    const client = new ssh2.Client();
    clients.push(client);
    const privateKey = await readFile(sshd.userKey);
    await new Promise<void>((resolve, reject) => {
      client.once('ready', () => resolve());
      client.once('error', reject);
      client.connect({
        host: sshd.host,
        port: sshd.port,
        username: sshd.user,
        privateKey,
        algorithms: { cipher: ['chacha20-poly1305@openssh.com'] },
      });
    });
    const stats = usePacketRing(client)!;
    expect(stats).toBeDefined();
    const data = randomBytes(8 * MiB);
    const dest = join(work.path, 'chacha.bin');
    await push(client, dest, data);
    expect((await readFile(dest)).equals(data)).toBe(true);
    expect(stats).toEqual({ ring: 0, fresh: 0 });
  });
});

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

describe('socket writes gathered per turn of the event loop', () => {
  it('hands a 1 MiB channel write (32 SSH packets) to the kernel in one writev, byte-identically', async () => {
    const client = await connect();
    const stats = gatherStats(client);
    expect(stats).toBeDefined();
    const data = randomBytes(MiB);
    const dest = join(work.path, 'gathered.bin');
    let seen: Calls | undefined;
    await push(client, dest, data, () => (seen = watchSocket(client)));
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
    await push(client, dest, data, () => (seen = watchSocket(client)));
    expect((await readFile(dest)).equals(data)).toBe(true);
    // Without gathering, the idle socket takes each packet as it comes: no call near a megabyte.
    expect(seen!.calls.length).toBeGreaterThanOrEqual(32);
    expect(Math.max(...seen!.calls.map((c) => c.bytes))).toBeLessThan(MiB / 2);
  });
});
