import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { FrameDecoder, HUB_ACCEPTED, HUB_CHALLENGE_BYTES, HUB_FULL, HUB_KEY_BYTES, HUB_REFUSED, PROTOCOL_VERSION, checkHubChallenge, encodeControl, joinRequest } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { openHub, privateDirProblem, socketBase } from '../src/hub.js';
import { serve } from '../src/serve.js';

const KEY = randomBytes(HUB_KEY_BYTES);

/** Reads bytes from `socket` until `n` have arrived or it ends. */
function readBytes(socket: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let have = 0;
    const done = () => {
      socket.off('data', onData);
      resolve(Buffer.concat(parts));
    };
    const onData = (d: Buffer) => {
      parts.push(d);
      have += d.length;
      if (have >= n) done();
    };
    socket.on('data', onData);
    socket.once('close', done);
  });
}

/** Connects to a hub and proves `key` (core's hub-auth.ts); resolves with the socket and how the hub answered. */
async function joinAs(path: string, key = KEY): Promise<{ socket: Socket; outcome: 'joined' | 'full' | 'unproven' | 'refused' }> {
  const socket = connect(path);
  await new Promise((r) => socket.once('connect', r));
  const nonce = randomBytes(32);
  socket.write(joinRequest(nonce));
  const checked = checkHubChallenge(key, nonce, await readBytes(socket, HUB_CHALLENGE_BYTES));
  if (checked.status !== 'ok') return { socket, outcome: checked.status };
  socket.write(checked.reply);
  const verdict = await readBytes(socket, 1);
  return { socket, outcome: verdict[0] === HUB_ACCEPTED ? 'joined' : 'refused' };
}

/** Sends HELLO (with `hub` when given) to a serve() session over `input`/`output` and returns the answer's hello. */
async function hello(input: PassThrough | Socket, output: PassThrough | Socket, hub?: boolean, withKey = true): Promise<Record<string, unknown>> {
  const answer = new Promise<DecodedFrame>((resolve) => {
    const decoder = new FrameDecoder(resolve);
    output.on('data', (chunk: Buffer) => decoder.push(chunk));
  });
  input.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [], ...(hub === undefined ? {} : { hub }), ...(hub && withKey ? { hubKey: KEY.toString('hex') } : {}) }));
  const frame = await answer;
  expect(frame.type).toBe('OK');
  return (frame as { body: { hello: Record<string, unknown> } }).body.hello;
}

describe('shared helper socket (hub)', () => {
  it('takes sessions on a socket in a private directory, and on close waits for them and removes it', async () => {
    let served = 0;
    const hub = await openHub(
      async (socket) => {
        served++;
        await serve({ input: socket, output: socket });
      },
      { key: KEY },
    );
    const dir = hub.path.slice(0, hub.path.lastIndexOf('/'));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(hub.path).mode & 0o777).toBe(0o600);
    const { socket, outcome } = await joinAs(hub.path);
    expect(outcome).toBe('joined');
    expect((await hello(socket, socket)).version).toBe(PROTOCOL_VERSION);
    expect(hub.sessions).toBe(1);
    let closed = false;
    const closing = hub.close().then(() => (closed = true));
    // No new sessions once closing, and the directory goes at once; the joined session goes on until it ends.
    await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(dir)).toBe(false);
    expect(closed).toBe(false);
    expect((await hello(socket, socket)).version).toBe(PROTOCOL_VERSION);
    socket.end();
    await closing;
    expect(existsSync(dir)).toBe(false);
    expect(served).toBe(1);
  });

  it('removes its directory when the helper is ended by SIGTERM', async () => {
    const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const child = spawn(process.execPath, ['--input-type=module', '-e', `import { openHub } from ${JSON.stringify(dist)}; const h = await openHub(async () => {}, { key: Buffer.alloc(32) }); console.log(h.path); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const path = await new Promise<string>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
    const dir = path.slice(0, path.lastIndexOf('/'));
    expect(existsSync(path)).toBe(true);
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    child.kill('SIGTERM');
    expect(await exited).toBe('SIGTERM');
    expect(existsSync(dir)).toBe(false);
  });

  it('refuses sessions beyond its limit', async () => {
    const hub = await openHub((socket) => serve({ input: socket, output: socket }), { key: KEY, maxSessions: 1 });
    const first = (await joinAs(hub.path)).socket;
    await hello(first, first);
    const second = await joinAs(hub.path);
    expect(second.outcome).toBe('full');
    expect(hub.sessions).toBe(1);
    first.end();
    await hub.close();
  });

  it('ends a session whose client went away in the middle of a READ', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-gone-'));
    try {
      const file = join(dir, 'src.bin');
      writeFileSync(file, Buffer.alloc(8 * 1024 * 1024, 7));
      const input = new PassThrough();
      // A client that stopped reading: nothing it is sent ever drains.
      const output = new Writable({ highWaterMark: 1024, write: () => {} });
      const session = serve({ input, output });
      input.write(encodeControl('OPEN', 1, { path: file, policy: 'read' }));
      // The OPEN is answered (into the stuck output) before the READ names its handle.
      await new Promise((r) => setTimeout(r, 200));
      input.write(encodeControl('READ', 2, { handle: 1, offset: 0, length: 8 * 1024 * 1024, algorithm: 'xxh3' }));
      await new Promise((r) => setTimeout(r, 200));
      output.destroy();
      input.end();
      const ended = await Promise.race([session.then(() => 'ended'), new Promise((r) => setTimeout(() => r('still waiting'), 5000))]);
      expect(ended).toBe('ended');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("answers HELLO's hub request with the socket's path only when the helper can open one", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const keys: Buffer[] = [];
    const session = serve({ input, output, openHub: async (key) => (keys.push(key), '/run/x/s') });
    expect((await hello(input, output, true)).hub).toBe('/run/x/s');
    expect(keys).toEqual([KEY]);
    input.end();
    await session;

    // An older client, without a key: no socket whose joins could not be checked.
    const oldIn = new PassThrough();
    const oldOut = new PassThrough();
    let opened = 0;
    const old = serve({ input: oldIn, output: oldOut, openHub: async () => (opened++, '/run/x/s') });
    expect((await hello(oldIn, oldOut, true, false)).hub).toBeUndefined();
    expect(opened).toBe(0);
    oldIn.end();
    await old;

    const plainIn = new PassThrough();
    const plainOut = new PassThrough();
    const plain = serve({ input: plainIn, output: plainOut });
    expect((await hello(plainIn, plainOut, true)).hub).toBeUndefined();
    plainIn.end();
    await plain;

    const failingIn = new PassThrough();
    const failingOut = new PassThrough();
    const failing = serve({ input: failingIn, output: failingOut, openHub: () => Promise.reject(new Error('EACCES')) });
    expect((await hello(failingIn, failingOut, true)).hub).toBeUndefined();
    failingIn.end();
    await failing;
  });

  it('refuses a joiner that does not know the key, and never serves it', async () => {
    let served = 0;
    const hub = await openHub(async () => void served++, { key: KEY });
    try {
      const wrong = await joinAs(hub.path, randomBytes(HUB_KEY_BYTES));
      // The hub's proof does not check out with another key: the joiner stops there...
      expect(wrong.outcome).toBe('unproven');
      wrong.socket.destroy();
      // ...and a joiner that answers the challenge without the key is refused.
      const socket = connect(hub.path);
      await new Promise((r) => socket.once('connect', r));
      socket.write(joinRequest(randomBytes(32)));
      expect((await readBytes(socket, HUB_CHALLENGE_BYTES)).length).toBe(HUB_CHALLENGE_BYTES);
      socket.write(randomBytes(32));
      expect([...(await readBytes(socket, 2))]).toEqual([HUB_REFUSED]);
      // A client that skips the handshake (an older ferry, or a frame sent blind) is not served either.
      const blind = connect(hub.path);
      await new Promise((r) => blind.once('connect', r));
      blind.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'x', capabilities: [] }));
      blind.write(encodeControl('STAT', 2, { path: '/' }));
      expect((await readBytes(blind, 1000)).length).toBe(0);
      expect(served).toBe(0);
      expect(hub.sessions).toBe(0);
    } finally {
      await hub.close();
    }
  });

  it('hangs up on a joiner that stays silent', async () => {
    const hub = await openHub(async () => {}, { key: KEY, joinTimeoutMs: 200 });
    try {
      const socket = connect(hub.path);
      await new Promise((r) => socket.once('connect', r));
      expect((await readBytes(socket, 1)).length).toBe(0);
      while (hub.sessions > 0) await new Promise((r) => setTimeout(r, 10));
    } finally {
      await hub.close();
    }
  });

  it('says full without a challenge when it has no room', async () => {
    const hub = await openHub(async () => {}, { key: KEY, maxSessions: 0 });
    try {
      const socket = connect(hub.path);
      await new Promise((r) => socket.once('connect', r));
      expect([...(await readBytes(socket, 2))]).toEqual([HUB_FULL]);
    } finally {
      await hub.close();
    }
  });
});

describe('where the hub socket goes', () => {
  const scratch = () => mkdtempSync(join(tmpdir(), 'ferry-xdg-'));

  it('uses $XDG_RUNTIME_DIR when it is a directory of this user closed to others', async () => {
    const dir = scratch();
    try {
      chmodSync(dir, 0o700);
      expect(await socketBase({ XDG_RUNTIME_DIR: dir })).toBe(dir);
      const hub = await openHub(async () => {}, { key: KEY, base: await socketBase({ XDG_RUNTIME_DIR: dir }) });
      expect(hub.path.startsWith(`${dir}/ferry-hub-`)).toBe(true);
      await hub.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('falls back to the temporary directory when $XDG_RUNTIME_DIR is open to others, owned by another user, a link or relative', async () => {
    const dir = scratch();
    try {
      const open = join(dir, 'open');
      mkdirSync(open, { mode: 0o755 });
      chmodSync(open, 0o755);
      expect(await socketBase({ XDG_RUNTIME_DIR: open })).toBe(tmpdir());
      const foreign = join(dir, 'foreign');
      mkdirSync(foreign, { mode: 0o700 });
      chownSync(foreign, 65534, 65534);
      expect(await socketBase({ XDG_RUNTIME_DIR: foreign })).toBe(tmpdir());
      const mine = join(dir, 'mine');
      mkdirSync(mine, { mode: 0o700 });
      const link = join(dir, 'link');
      symlinkSync(mine, link);
      expect(await socketBase({ XDG_RUNTIME_DIR: link })).toBe(tmpdir());
      expect(await socketBase({ XDG_RUNTIME_DIR: 'run/user' })).toBe(tmpdir());
      expect(await socketBase({})).toBe(tmpdir());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names what is wrong with a directory others can reach', async () => {
    const dir = scratch();
    try {
      chmodSync(dir, 0o750);
      expect(await privateDirProblem(dir)).toBe(`${dir} has mode 0750: others can reach it`);
      chmodSync(dir, 0o700);
      expect(await privateDirProblem(dir)).toBeUndefined();
      chownSync(dir, 65534, 65534);
      expect(await privateDirProblem(dir)).toBe(`${dir} is owned by uid 65534, not this user (uid ${process.getuid!()})`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
