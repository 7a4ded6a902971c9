import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, PROTOCOL_VERSION, encodeControl } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { openHub } from '../src/hub.js';
import { serve } from '../src/serve.js';

/** Sends HELLO (with `hub` when given) to a serve() session over `input`/`output` and returns the answer's hello. */
async function hello(input: PassThrough | Socket, output: PassThrough | Socket, hub?: boolean): Promise<Record<string, unknown>> {
  const answer = new Promise<DecodedFrame>((resolve) => {
    const decoder = new FrameDecoder(resolve);
    output.on('data', (chunk: Buffer) => decoder.push(chunk));
  });
  input.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [], ...(hub === undefined ? {} : { hub }) }));
  const frame = await answer;
  expect(frame.type).toBe('OK');
  return (frame as { body: { hello: Record<string, unknown> } }).body.hello;
}

describe('shared helper socket (hub)', () => {
  it('takes sessions on a socket in a private directory, and on close waits for them and removes it', async () => {
    let served = 0;
    const hub = await openHub(async (socket) => {
      served++;
      await serve({ input: socket, output: socket });
    });
    const dir = hub.path.slice(0, hub.path.lastIndexOf('/'));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const socket = connect(hub.path);
    await new Promise((r) => socket.once('connect', r));
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
    const child = spawn(process.execPath, ['--input-type=module', '-e', `import { openHub } from ${JSON.stringify(dist)}; const h = await openHub(async () => {}); console.log(h.path); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const path = await new Promise<string>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
    const dir = path.slice(0, path.lastIndexOf('/'));
    expect(existsSync(path)).toBe(true);
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    child.kill('SIGTERM');
    expect(await exited).toBe('SIGTERM');
    expect(existsSync(dir)).toBe(false);
  });

  it('refuses sessions beyond its limit', async () => {
    const hub = await openHub((socket) => serve({ input: socket, output: socket }), 1);
    const first = connect(hub.path);
    await hello(first, first);
    const second = connect(hub.path);
    await new Promise((r) => second.once('close', r));
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
    const session = serve({ input, output, openHub: async () => '/run/x/s' });
    expect((await hello(input, output, true)).hub).toBe('/run/x/s');
    input.end();
    await session;

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
});
