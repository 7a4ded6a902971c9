import { spawn, execFileSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { constants, createWriteStream, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, PROTOCOL_VERSION, encodeControl, encodeDataHeader } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { reusedBufferInput } from '../src/input.js';
import { serve } from '../src/serve.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function scratchDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-input-'));
  dirs.push(dir);
  return dir;
}

/** A FIFO fed with `data` by a `cat` process; returns the read end's fd. */
function fifoWith(data: Buffer): number {
  const dir = scratchDir();
  const file = join(dir, 'data');
  const fifo = join(dir, 'fifo');
  writeFileSync(file, data);
  execFileSync('mkfifo', [fifo]);
  spawn('sh', ['-c', `cat "$0" > "$1"`, file, fifo], { stdio: 'ignore' });
  return openSync(fifo, 'r');
}

/** A FIFO this process writes through `writer`; returns the read end's fd too. */
function fifoWritten(): { fd: number; writer: WriteStream } {
  const fifo = join(scratchDir(), 'fifo');
  execFileSync('mkfifo', [fifo]);
  // Non-blocking, so that the read end opens before there is a writer.
  const fd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  return { fd, writer: createWriteStream(fifo) };
}

describe('reusedBufferInput', () => {
  it('delivers a pipe byte for byte as data events that all view one reused buffer', async () => {
    const data = randomBytes(8 * 1024 * 1024 + 123);
    const input = reusedBufferInput(fifoWith(data), 64 * 1024);
    const hash = createHash('sha256');
    const backing = new Set<ArrayBufferLike>();
    let bytes = 0;
    let events = 0;
    input.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      backing.add(chunk.buffer);
      bytes += chunk.length;
      events += 1;
    });
    await new Promise<void>((resolve, reject) => {
      input.on('end', resolve);
      input.on('error', reject);
    });
    expect(bytes).toBe(data.length);
    expect(hash.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    expect(events).toBeGreaterThan(1);
    expect(backing.size).toBe(1);
  });

  it('reads nothing while paused and goes on after resume', async () => {
    const data = randomBytes(1024 * 1024);
    const input = reusedBufferInput(fifoWith(data), 64 * 1024);
    let bytes = 0;
    let whilePaused = 0;
    let paused = false;
    input.on('data', (chunk: Buffer) => {
      if (paused) whilePaused += chunk.length;
      bytes += chunk.length;
      if (bytes >= 128 * 1024 && bytes - chunk.length < 128 * 1024) {
        input.pause();
        paused = true;
        setTimeout(() => {
          paused = false;
          input.resume();
        }, 200);
      }
    });
    await new Promise<void>((resolve) => input.on('end', resolve));
    expect(whilePaused).toBe(0);
    expect(bytes).toBe(data.length);
  });
});

describe('reusedBufferInput with a read target', () => {
  it('reads into the buffers the target names, and counts what went there', async () => {
    const data = randomBytes(1024 * 1024 + 7);
    const input = reusedBufferInput(fifoWith(data), 64 * 1024);
    const mine = Buffer.alloc(data.length);
    let at = 0;
    // Every other read into `mine` at its place, 10000 bytes at most; the others into the reused buffer.
    let turn = 0;
    input.target = (reused) => (turn++ % 2 === 0 ? mine.subarray(at, Math.min(at + 10000, mine.length)) : reused);
    let placed = 0;
    const hash = createHash('sha256');
    input.on('data', (chunk: Buffer) => {
      if (chunk.buffer === mine.buffer) {
        expect(chunk.byteOffset).toBe(mine.byteOffset + at);
        placed += chunk.length;
      } else chunk.copy(mine, at);
      hash.update(chunk);
      at += chunk.length;
    });
    await new Promise<void>((resolve) => input.on('end', resolve));
    expect(at).toBe(data.length);
    expect(mine.equals(data)).toBe(true);
    expect(hash.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    expect(placed).toBeGreaterThan(0);
    expect(input.placedBytes).toBe(placed);
  });

  it('lets serve() read every DATA byte straight into its write buffers', async () => {
    const dir = scratchDir();
    const dest = join(dir, 'dest');
    const MiB = 1024 * 1024;
    const pieces = [randomBytes(700 * 1024), randomBytes(MiB + 3), randomBytes(2 * MiB - 11), randomBytes(5)];
    const first = Buffer.concat(pieces);
    const second = randomBytes(MiB);
    const zeros = 64 * 1024;
    const size = first.length + zeros + second.length;
    // One session's input, as a client sends it: OPEN, answered before two WRITEs (the second
    // after a run of ZEROS), then FSYNC and CLOSE.
    const { fd, writer } = fifoWritten();
    const input = reusedBufferInput(fd);
    const output = new PassThrough();
    const replies: DecodedFrame[] = [];
    let opened: () => void = () => {};
    const open = new Promise<void>((resolve) => (opened = resolve));
    const decoder = new FrameDecoder((f) => {
      replies.push(f);
      if (f.id === 2) opened();
    });
    output.on('data', (chunk: Buffer) => decoder.push(chunk));
    const session = serve({ input, output });
    writer.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
    writer.write(encodeControl('OPEN', 2, { path: dest, policy: 'create', size }));
    await open;
    const handle = (replies.find((r) => r.id === 2) as { body: { handle: number } }).body.handle;
    const frames: Buffer[] = [
      encodeControl('WRITE', 3, { handle, offset: 0, length: first.length, algorithm: 'xxh3' }),
      ...pieces.flatMap((p) => [encodeDataHeader(3, p.length), p]),
      encodeControl('WRITE', 4, { handle, offset: first.length, length: zeros + second.length, algorithm: 'xxh3' }),
      encodeControl('ZEROS', 4, { length: zeros }),
      encodeDataHeader(4, second.length),
      second,
      encodeControl('FSYNC', 5, { handle }),
      encodeControl('CLOSE', 6, { handle }),
    ];
    for (const f of frames) writer.write(f);
    writer.end();
    await session;
    expect(replies.filter((r) => r.type !== "OK")).toEqual([]);
    expect(replies.map((r) => [r.id, r.type])).toEqual([1, 2, 3, 4, 5, 6].map((id) => [id, 'OK']));
    expect(readFileSync(dest).equals(Buffer.concat([first, Buffer.alloc(zeros), second]))).toBe(true);
    // Only headers and control frames went through the reused buffer.
    expect(input.placedBytes).toBe(first.length + second.length);
  });
});
