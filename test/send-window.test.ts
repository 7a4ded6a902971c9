/**
 * --send-window against a real OpenSSH sshd: the cap is applied to the data
 * channel of both modes, and data still flows with the smallest cap allowed
 * (OpenSSH re-opens its window after three packets; a cap at or below that
 * would stall the channel for good).
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHasher, MIN_SEND_WINDOW_BYTES } from '@ferry/core';
import type { SshSettings } from '@ferry/core';
import { connectRemote } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { REMOTE_CMD, tempDir, writeRange } from './helpers.js';

const MiB = 1024 * 1024;
let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-sendwin-');
});

afterAll(async () => {
  await sshd?.stop();
  await work?.remove();
});

function settings(sendWindowBytes?: number): SshSettings {
  const s: SshSettings = { knownHostsFile: sshd.knownHosts, identityFiles: [sshd.userKey], connectTimeoutMs: 20_000 };
  if (sendWindowBytes !== undefined) s.sendWindowBytes = sendWindowBytes;
  return s;
}

function connect(mode: 'helper' | 'sftp', sendWindowBytes?: number): Promise<RemoteConnection> {
  return connectRemote({ host: sshd.host, port: sshd.port, user: sshd.user }, settings(sendWindowBytes), { mode, remoteCommand: REMOTE_CMD, windowBytes: 8 * MiB });
}

describe.each(['helper', 'sftp'] as const)('--send-window in %s mode', (mode) => {
  it('caps the data channel at the smallest allowed window and still moves 24 MiB intact', async () => {
    const conn = await connect(mode, MIN_SEND_WINDOW_BYTES);
    try {
      expect(conn.mode).toBe(mode);
      // OpenSSH grants session channels 2 MiB (SFTP's INIT has used a few bytes); ferry leaves all but the cap unused.
      expect(conn.sendWindow?.capBytes).toBe(MIN_SEND_WINDOW_BYTES);
      expect(conn.sendWindow?.serverBytes).toBeGreaterThan(2 * MiB - 1024);
      expect(conn.sendWindow?.serverBytes).toBeLessThanOrEqual(2 * MiB);
      const data = randomBytes(24 * MiB);
      const dest = join(work.path, `${mode}-capped.bin`);
      const hash = await writeRange(conn, dest, data);
      const want = createHasher('sha256');
      want.update(data);
      expect(hash).toBe(want.digest());
      expect((await readFile(dest)).equals(data)).toBe(true);
    } finally {
      conn.close();
    }
  });

  it('keeps the server window whole with 0 and with a cap no smaller than the window', async () => {
    for (const bytes of [0, 2 * MiB, undefined]) {
      const conn = await connect(mode, bytes);
      try {
        expect(conn.sendWindow).toBeUndefined();
        const dest = join(work.path, `${mode}-whole.bin`);
        await writeFile(dest, '');
        const data = randomBytes(3 * MiB);
        await writeRange(conn, dest, data);
        expect((await readFile(dest)).equals(data)).toBe(true);
      } finally {
        conn.close();
      }
    }
  });
});
