/**
 * What a paused ssh2 channel holds (transport's read-buffer.ts), against a real
 * OpenSSH sshd: with the lowered mark, no more than ssh2's 2 MiB window;
 * without it, the window and ssh2's own 2 MiB buffer. Either way every byte
 * arrives once the reader resumes.
 */
import type { Client, ClientChannel } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHANNEL_READ_BUFFER_BYTES, connectSsh, limitReadBuffer } from '@ferry/transport';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';

const MiB = 1024 * 1024;
/** ssh2's window for a channel it opens (lib/Channel.js MAX_WINDOW). */
const SSH2_WINDOW = 2 * MiB;
const TOTAL = 16 * MiB;
let sshd: Sshd;
let client: Client;

beforeAll(async () => {
  sshd = await startSshd();
  client = await connectSsh({ host: sshd.host, port: sshd.port, user: sshd.user }, { knownHostsFile: sshd.knownHosts, identityFiles: [sshd.userKey], connectTimeoutMs: 20_000 });
});

afterAll(async () => {
  client?.end();
  await sshd?.stop();
});

function exec(command: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => client.exec(command, (err, ch) => (err ? reject(err) : resolve(ch))));
}

/**
 * Waits until the paused channel's backlog has begun and then not grown for
 * 900 ms (a loaded machine can hold the sender up for a moment), and returns it.
 */
async function settledBacklog(channel: ClientChannel): Promise<number> {
  let last = -1;
  let same = 0;
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 300));
    same = last > 0 && channel.readableLength === last ? same + 1 : 0;
    if (same === 3) return last;
    last = channel.readableLength;
  }
  throw new Error(`backlog still growing after 30 s: ${last} bytes`);
}

/** Reads the rest of the channel and resolves with the number of bytes read in all. */
function drain(channel: ClientChannel): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0;
    channel.on('data', (chunk: Buffer) => (n += chunk.length));
    channel.on('error', reject);
    channel.on('close', () => resolve(n));
  });
}

describe('the read buffer of a paused channel', () => {
  it('holds no more than the window with the lowered mark, and every byte arrives after', async () => {
    const channel = await exec(`head -c ${TOTAL} /dev/zero`);
    expect(limitReadBuffer(channel)).toBe(true);
    // Nobody reads yet: the channel is paused from the start.
    const backlog = await settledBacklog(channel);
    expect(backlog).toBeGreaterThan(0);
    expect(backlog).toBeLessThanOrEqual(SSH2_WINDOW + CHANNEL_READ_BUFFER_BYTES);
    expect(await drain(channel)).toBe(TOTAL);
  });

  it("holds ssh2's own buffer on top of the window without it", async () => {
    const channel = await exec(`head -c ${TOTAL} /dev/zero`);
    const backlog = await settledBacklog(channel);
    expect(backlog).toBeGreaterThan(SSH2_WINDOW + MiB / 2);
    expect(await drain(channel)).toBe(TOTAL);
  });

  it('leaves a channel alone whose mark is already as low, or that is no stream', () => {
    const low = { _readableState: { highWaterMark: 16 * 1024 } };
    expect(limitReadBuffer(low)).toBe(false);
    expect(low._readableState.highWaterMark).toBe(16 * 1024);
    expect(limitReadBuffer({})).toBe(false);
  });
});
