/**
 * Outgoing SSH packets cut from a reused slab (transport's packet-ring.ts),
 * against a real OpenSSH sshd: what arrives is byte-identical whether packets
 * come from the slab, from fresh buffers when the slab is full, or (another
 * cipher) from ssh2 alone.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import type { Client } from 'ssh2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, packetRingStats, shellQuote, usePacketRing } from '@ferry/transport';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
const clients: Client[] = [];

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-ring-');
});

afterEach(() => {
  delete process.env.FERRY_PACKET_RING;
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

/** Sends `data` in 1 MiB writes into `cat > path` on the server; resolves once cat has exited 0. */
function push(client: Client, path: string, data: Buffer): Promise<void> {
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
      more();
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
