/**
 * `ferry serve`: the helper's end of one connection, on stdin/stdout. sshd
 * starts one per stream, so its start-up is paid once per connection (16
 * times for 16 streams): `main.ts` runs a bare `ferry serve` through here
 * without loading commander, the launchers or the other commands.
 */
import { createWriteStream, fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { toFerryError } from '@ferry/core';
import { reportError } from './actions.js';
import type { CliIo } from './actions.js';
import { VERSION } from './version.js';
import type { Hub } from '@ferry/serve';

export async function runServe(io: CliIo): Promise<number> {
  // A pipe or socket (as under sshd) gets an asynchronous stream; anything else a file stream.
  const output = isPipeOrSocket(1) ? new Socket({ fd: 1, readable: false }) : createWriteStream('', { fd: 1 });
  try {
    const { growPipes, openHub, reusedBufferInput, serve } = await import('@ferry/serve');
    // sshd's 64 KiB pipes to and from this helper, 1 MiB where Linux lets us (serve/src/pipes.ts); meanwhile serve.
    const pipes = growPipes();
    // Under sshd stdin is a pipe: read it into one reused buffer (serve/src/input.ts).
    const input = isPipeOrSocket(0) ? reusedBufferInput(0) : process.stdin;
    const software = `ferry ${VERSION}`;
    // A client may ask this helper to take its other connections' sessions too (serve/src/hub.ts).
    let hub: Promise<Hub> | undefined;
    let hubKey: Buffer | undefined;
    const share = (key: Buffer) => {
      // One socket per helper, for the key of the HELLO that asked first.
      if (hubKey !== undefined && !hubKey.equals(key)) return Promise.reject(new Error('a shared helper socket is open for another key'));
      hubKey = key;
      hub ??= openHub((socket) => serve({ input: socket, output: socket, software }), { key });
      return hub.then((h) => h.path);
    };
    try {
      await serve({ input, output, software, openHub: share, pipes });
    } finally {
      // The opening session is over: no new sessions; the joined ones run to their end.
      await hub?.then((h) => h.close(), () => {});
    }
    await new Promise<void>((resolve) => output.end(() => resolve()));
    await pipes;
    io.exitCode = 0;
  } catch (err) {
    reportError(io, toFerryError(err));
  }
  return io.exitCode;
}

function isPipeOrSocket(fd: number): boolean {
  const st = fstatSync(fd);
  return st.isFIFO() || st.isSocket();
}
