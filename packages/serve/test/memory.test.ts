/**
 * A helper's memory whatever a client sends (docs/security.md, "Helper memory
 * and decoders"): thousands of small WRITEs over many handles, left open or
 * trickled in one byte at a time, keep the session's accounting and the
 * process's buffer memory bounded. Before, each open WRITE held a 1 MiB buffer
 * of its own once the pool ran out: 2,000 one-byte WRITEs left ~1.9 GB allocated.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, PROTOCOL_VERSION, createHasher, encodeControl, encodeDataHeader } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { MAX_GATHERING, MAX_OPEN_WRITES, serve } from '../src/serve.js';
import type { ServeMemory } from '../src/serve.js';

const MiB = 1024 * 1024;
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A session over in-memory streams that records every answer and the session's memory accounting at its worst. */
function session() {
  const input = new PassThrough({ highWaterMark: 4 * MiB });
  const output = new PassThrough();
  const answers = new Map<number, DecodedFrame>();
  const waiting = new Map<number, (f: DecodedFrame) => void>();
  const decoder = new FrameDecoder((f) => {
    answers.set(f.id, f);
    waiting.get(f.id)?.(f);
  });
  output.on('data', (d: Buffer) => decoder.push(d));
  const worst: ServeMemory = { pendingBytes: 0, gathering: 0, openWrites: 0, poolInUse: 0, poolBuffers: 0, outsidePoolBytes: 0 };
  const onMemory = (m: ServeMemory) => {
    for (const k of Object.keys(worst) as Array<keyof ServeMemory>) worst[k] = Math.max(worst[k], m[k]);
  };
  const done = serve({ input, output, onMemory });
  const reply = (id: number) => new Promise<DecodedFrame>((resolve) => (answers.has(id) ? resolve(answers.get(id)!) : waiting.set(id, resolve)));
  /** Writes `frames`, waiting for the stream to take them (serve pauses it at its pending limit). */
  const send = async (frames: Buffer[]) => {
    for (const f of frames) if (!input.write(f)) await new Promise((r) => input.once('drain', r));
  };
  return { input, send, reply, answers, worst, done };
}

function dataFrame(id: number, bytes: Buffer): Buffer {
  return Buffer.concat([encodeDataHeader(id, bytes.length), bytes]);
}

/** Opens `count` files of `size` bytes through `s`; returns their paths and handles. */
async function openFiles(s: ReturnType<typeof session>, count: number, size: number): Promise<Array<{ path: string; handle: number }>> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-mem-'));
  dirs.push(dir);
  await s.send([encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] })]);
  const files = [];
  for (let i = 0; i < count; i++) {
    const path = join(dir, `f${i}`);
    const id = 10 + i;
    await s.send([encodeControl('OPEN', id, { path, policy: 'create', size })]);
    const ok = await s.reply(id);
    expect(ok.type).toBe('OK');
    files.push({ path, handle: (ok as { body: { handle: number } }).body.handle });
  }
  return files;
}

/** Buffer memory of this process (ArrayBuffers: where Buffers live) after a collection when one can be asked for. */
function bufferBytes(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().arrayBuffers;
}

describe('helper memory', () => {
  it(`holds at most ${MAX_GATHERING} gather buffers while 5,000 WRITEs over 50 handles trickle in one byte at a time, and writes every byte`, async () => {
    const s = session();
    const files = await openFiles(s, 50, 100);
    const before = bufferBytes();
    // 100 WRITEs open at once (two per file, of 50 bytes each), fed one byte per DATA frame in
    // turn, 50 rounds: 5,000 one-byte pieces, each for another WRITE than the one before.
    const writes = files.flatMap((f, i) => [0, 50].map((offset, j) => ({ id: 1000 + 2 * i + j, handle: f.handle, offset })));
    await s.send(writes.map((w) => encodeControl('WRITE', w.id, { handle: w.handle, offset: w.offset, length: 50, algorithm: 'xxh3' })));
    const byteOf = (w: (typeof writes)[number], k: number) => (w.id * 7 + k) & 0xff;
    for (let k = 0; k < 50; k++) await s.send(writes.map((w) => dataFrame(w.id, Buffer.from([byteOf(w, k)]))));
    const answers = await Promise.all(writes.map((w) => s.reply(w.id)));
    const grown = bufferBytes() - before;
    for (const [i, w] of writes.entries()) {
      const want = Buffer.from(Array.from({ length: 50 }, (_, k) => byteOf(w, k)));
      const h = createHasher('xxh3');
      h.update(want);
      expect(answers[i]).toMatchObject({ type: 'OK', body: { bytes: 50, hash: h.digest() } });
    }
    s.input.end();
    await s.done;
    for (const [i, f] of files.entries()) {
      const got = readFileSync(f.path);
      for (const [j, offset] of [0, 50].entries()) {
        const w = writes[2 * i + j]!;
        expect(got.subarray(offset, offset + 50).equals(Buffer.from(Array.from({ length: 50 }, (_, k) => byteOf(w, k))))).toBe(true);
      }
    }
    expect(s.worst.gathering).toBeLessThanOrEqual(MAX_GATHERING);
    expect(s.worst.openWrites).toBe(100);
    expect(s.worst.poolInUse).toBeLessThanOrEqual(s.worst.poolBuffers);
    // Buffers this session made beyond its pool (made when it started): a few MiB at most, not a MiB per write.
    expect(grown).toBeLessThan(32 * MiB);
  });

  it(`ends a session that opens more than ${MAX_OPEN_WRITES} WRITEs at once (the 2,000 one-byte WRITEs of the finding), its memory bounded meanwhile`, async () => {
    const s = session();
    const files = await openFiles(s, 20, 4096);
    const before = bufferBytes();
    const frames: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const id = 5000 + i;
      const f = files[i % files.length]!;
      frames.push(encodeControl('WRITE', id, { handle: f.handle, offset: (i * 2) % 4000, length: 2, algorithm: 'xxh3' }), dataFrame(id, Buffer.from([i & 0xff])));
    }
    await s.send(frames);
    s.input.end();
    await s.done.catch(() => {});
    const grown = bufferBytes() - before;
    const fatal = s.answers.get(0);
    expect(fatal).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: `more than ${MAX_OPEN_WRITES} WRITEs open at once in one session` } });
    expect(s.worst.openWrites).toBeLessThanOrEqual(MAX_OPEN_WRITES);
    expect(s.worst.gathering).toBeLessThanOrEqual(MAX_GATHERING);
    expect(grown).toBeLessThan(32 * MiB);
  });
});
