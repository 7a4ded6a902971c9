import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FerryError, HUB_FULL, JOIN_REQUEST_BYTES, hubChallenge, parseJoinRequest } from '@ferry/core';
import { joinHub } from '../src/hub-join.js';

const key = randomBytes(32);
const dirs: string[] = [];
let server: Server | undefined;

afterEach(() => {
  server?.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  server = undefined;
});

/** A listener that answers a join's opening message with `answer(nonce)`; resolves with a client socket to it. */
async function peer(answer: (joinNonce: Buffer, socket: Socket) => void): Promise<Socket> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-join-'));
  dirs.push(dir);
  const path = join(dir, 's');
  server = createServer((socket) => {
    let held = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      held = Buffer.concat([held, d]);
      if (held.length === JOIN_REQUEST_BYTES) answer(parseJoinRequest(held)!, socket);
    });
  });
  await new Promise<void>((r) => server!.listen(path, r));
  const socket = connect(path);
  await new Promise((r) => socket.once('connect', r));
  return socket;
}

describe('joining a shared helper', () => {
  it('refuses a peer that answers without proving the key, with HELPER_UNTRUSTED naming the socket', async () => {
    const socket = await peer((nonce, s) => s.write(hubChallenge(randomBytes(32), nonce, randomBytes(32))));
    const err = await joinHub(socket, key, 5000, 'dtn:22', '/tmp/ferry-hub-abc/s').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('HELPER_UNTRUSTED');
    expect((err as FerryError).message).toBe(
      'the shared helper socket /tmp/ferry-hub-abc/s on dtn:22 answered without proving the secret this copy gave its helper: another user may be listening there (a host name that reaches several nodes, each with its own /tmp); refused to join it and sent it nothing. Drop --shared-helper for this host, or connect to one node by its own name',
    );
    socket.destroy();
  });

  it('refuses a peer that answers with frames or garbage', async () => {
    const socket = await peer((_nonce, s) => s.write(randomBytes(200)));
    await expect(joinHub(socket, key, 5000, 'dtn:22', '/x/s')).rejects.toMatchObject({ code: 'HELPER_UNTRUSTED' });
    socket.destroy();
  });

  it('joins a peer that proves the key, and sends its own proof only then', async () => {
    let proof: Buffer | undefined;
    const socket = await peer((nonce, s) => {
      s.write(hubChallenge(key, nonce, randomBytes(32)));
      s.once('data', (d: Buffer) => {
        proof = d;
        s.write(Buffer.from([0]));
      });
    });
    expect(await joinHub(socket, key, 5000, 'dtn:22', '/x/s')).toBe('joined');
    expect(proof?.length).toBe(32);
    socket.destroy();
  });

  it('gives up quietly on a full hub and on a peer that hangs up or stays silent', async () => {
    const full = await peer((_nonce, s) => s.end(Buffer.from([HUB_FULL])));
    expect(await joinHub(full, key, 5000, 'dtn:22', '/x/s')).toBe('full');
    full.destroy();
    server!.close();
    const gone = await peer((_nonce, s) => s.end());
    expect(await joinHub(gone, key, 5000, 'dtn:22', '/x/s')).toBe('gone');
    gone.destroy();
    server!.close();
    const silent = await peer(() => {});
    expect(await joinHub(silent, key, 200, 'dtn:22', '/x/s')).toBe('gone');
    silent.destroy();
  });
});
