/**
 * BATCH and COMMIT against a `ferry serve` session (serve() over in-memory
 * streams, writing a real directory): every kind of entry, every per-entry
 * failure, and a frame sequence that breaks the protocol. The same case runs
 * against the python helper and through every mode in test/batch-writes.test.ts.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { BATCH_CAPABILITY, MAX_OPEN_BATCHES, PROTOCOL_VERSION, createHasher, encodeControl, encodeDataHeader } from '@ferry/core';
import type { BatchEntryResult } from '@ferry/core';
import { repliesById } from '../../../test/helpers.js';
import { batchCase, batchFrames, leftovers } from '../../../test/batch-cases.js';
import { MAX_BATCH_OPEN_FILES, MAX_GATHERING, serve } from '../src/serve.js';
import type { ServeMemory } from '../src/serve.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function fresh(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-batch-'));
  dirs.push(dir);
  return dir;
}

function session() {
  const input = new PassThrough({ highWaterMark: 64 * 1024 });
  const output = new PassThrough();
  const reply = repliesById(output);
  const worst: ServeMemory = { pendingBytes: 0, gathering: 0, openWrites: 0, poolInUse: 0, poolBuffers: 0, outsidePoolBytes: 0 };
  const fds = { before: readdirSync('/proc/self/fd').length, most: 0 };
  const onMemory = (m: ServeMemory) => {
    for (const k of Object.keys(worst) as Array<keyof ServeMemory>) worst[k] = Math.max(worst[k], m[k]);
    fds.most = Math.max(fds.most, readdirSync('/proc/self/fd').length);
  };
  const done = serve({ input, output, onMemory, maxPendingBytes: 16 * 1024 * 1024 });
  done.catch(() => {});
  input.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
  const write = (b: Buffer) => (input.write(b) ? Promise.resolve() : new Promise<void>((r) => input.once('drain', () => r())));
  return { send: (b: Buffer) => input.write(b), write, reply, end: () => input.end(), done, worst, fds };
}

describe('serve: BATCH', () => {
  it('says it takes batches', async () => {
    const s = session();
    expect(await s.reply(1)).toMatchObject({ type: 'OK', body: { hello: { capabilities: expect.arrayContaining([BATCH_CAPABILITY]) } } });
    s.end();
    await s.done;
  });

  it('makes directories, files (empty, one byte, sparse), links and hard links; fails only the entries in the way, changed or corrupted', async () => {
    const dir = fresh();
    const c = await batchCase(dir, 'xxh3', 'wire');
    const s = session();
    s.send(batchFrames(c, 7, 'xxh3'));
    const answer = await s.reply(7);
    expect(answer.type).toBe('OK');
    const results = (answer as { body: { results: BatchEntryResult[] } }).body.results;
    await c.check(results);
    expect(results.find((r) => !r.ok && r.error.path?.endsWith('/isdir'))).toMatchObject({ error: { errno: 'EISDIR' } });
    s.end();
    await s.done;
  });

  it('takes the next batch while the last is being committed, and answers each', async () => {
    const dir = fresh();
    const s = session();
    const frames: Buffer[] = [];
    for (let id = 10; id < 10 + MAX_OPEN_BATCHES; id++) {
      frames.push(
        encodeControl('BATCH', id, { algorithm: 'crc32', entries: [{ kind: 'file', path: join(dir, `f${id}`), size: 2 }] }),
        encodeDataHeader(id, 2),
        Buffer.from('hi'),
        encodeControl('COMMIT', id, { srcHashes: ['d8932aac'] }),
      );
    }
    s.send(Buffer.concat(frames));
    for (let id = 10; id < 10 + MAX_OPEN_BATCHES; id++) expect(await s.reply(id)).toMatchObject({ type: 'OK', body: { results: [{ ok: true, hash: 'd8932aac' }] } });
    expect((await readdir(dir)).sort()).toEqual(['f10', 'f11', 'f12', 'f13']);
    s.end();
    await s.done;
  });

  it(`holds at most ${MAX_BATCH_OPEN_FILES} files open for a batch of 600 (the rest synced early), no gather buffer beyond ${MAX_GATHERING}, and writes every byte`, async () => {
    const dir = fresh();
    const s = session();
    const entries = Array.from({ length: 600 }, (_, i) => ({ kind: 'file' as const, path: join(dir, `f${i}`), size: 3000 + i }));
    const frames: Buffer[] = [encodeControl('BATCH', 9, { algorithm: 'crc32', entries })];
    const hashes: string[] = [];
    for (const [i, e] of entries.entries()) {
      const data = Buffer.alloc(e.size, i % 251);
      const h = createHasher('crc32');
      h.update(data);
      hashes.push(h.digest());
      // Two DATA frames per file, as a client that reads in pieces sends them.
      frames.push(encodeDataHeader(9, 1000), data.subarray(0, 1000), encodeDataHeader(9, e.size - 1000), data.subarray(1000));
    }
    frames.push(encodeControl('COMMIT', 9, { srcHashes: hashes }));
    // In pieces of 64 KiB, as a pipe delivers them, each when the session takes more (it pauses at its pending limit).
    const all = Buffer.concat(frames);
    for (let at = 0; at < all.length; at += 64 * 1024) await s.write(all.subarray(at, at + 64 * 1024));
    const answer = (await s.reply(9)) as { type: string; body: { results: BatchEntryResult[] } };
    expect(answer.type).toBe('OK');
    expect(answer.body.results.every((r) => r.ok)).toBe(true);
    expect(s.worst.gathering).toBeLessThanOrEqual(MAX_GATHERING);
    expect(s.worst.poolInUse).toBeLessThanOrEqual(s.worst.poolBuffers);
    // Pieces that found every pool buffer out are written from copies of their own size: at most one input chunk's worth.
    expect(s.worst.outsidePoolBytes).toBeLessThanOrEqual(64 * 1024);
    // Temporary files open at once, as input chunks arrive (a few more descriptors may come and go beside them).
    expect(s.fds.most - s.fds.before).toBeLessThanOrEqual(MAX_BATCH_OPEN_FILES + 4);
    expect(s.fds.most - s.fds.before).toBeGreaterThan(0);
    // The pool, sized for the 16 MiB pending limit, is all the chunk buffers there are.
    expect(s.worst.poolBuffers).toBeLessThanOrEqual(16 + MAX_GATHERING + 4);
    expect(readFileSync(join(dir, 'f599')).equals(Buffer.alloc(3599, 599 % 251))).toBe(true);
    expect(await leftovers(dir)).toEqual([]);
    s.end();
    await s.done;
  });

  it('takes DATA frames that span several files', async () => {
    const dir = fresh();
    const s = session();
    const entries = [
      { kind: 'file' as const, path: join(dir, 'a'), size: 3 },
      { kind: 'file' as const, path: join(dir, 'empty'), size: 0 },
      { kind: 'file' as const, path: join(dir, 'b'), size: 4 },
    ];
    const crc = (t: string) => {
      const h = createHasher('crc32');
      h.update(Buffer.from(t));
      return h.digest();
    };
    s.send(Buffer.concat([encodeControl('BATCH', 4, { algorithm: 'crc32', entries }), encodeDataHeader(4, 7), Buffer.from('abcdefg'), encodeControl('COMMIT', 4, { srcHashes: [crc('abc'), crc(''), crc('defg')] })]));
    expect(await s.reply(4)).toMatchObject({ type: 'OK', body: { results: [{ ok: true }, { ok: true }, { ok: true }] } });
    expect(readFileSync(join(dir, 'a'), 'utf8') + readFileSync(join(dir, 'b'), 'utf8')).toBe('abcdefg');
    expect(readFileSync(join(dir, 'empty'))).toHaveLength(0);
    s.end();
    await s.done;
  });

  it.each([
    ['bytes beyond the declared sizes', (dir: string) => [encodeControl('BATCH', 5, { algorithm: 'xxh3', entries: [{ kind: 'file', path: join(dir, 'a'), size: 2 }] }), encodeDataHeader(5, 3), Buffer.from('abc')], 'DATA for batch 5 overruns its files\' 2 bytes'],
    ['a COMMIT before all bytes', (dir: string) => [encodeControl('BATCH', 5, { algorithm: 'xxh3', entries: [{ kind: 'file', path: join(dir, 'a'), size: 2 }] }), encodeDataHeader(5, 1), Buffer.from('a'), encodeControl('COMMIT', 5, { srcHashes: ['x'] })], 'COMMIT for batch 5 before all its bytes (1 of 2)'],
    ['a COMMIT with another id', (dir: string) => [encodeControl('BATCH', 5, { algorithm: 'xxh3', entries: [{ kind: 'dir', path: join(dir, 'a') }] }), encodeControl('COMMIT', 6, { srcHashes: [null] })], 'COMMIT for unknown batch 6'],
    ['a COMMIT with too few hashes', (dir: string) => [encodeControl('BATCH', 5, { algorithm: 'xxh3', entries: [{ kind: 'dir', path: join(dir, 'a') }] }), encodeControl('COMMIT', 5, { srcHashes: [] })], 'COMMIT for batch 5 has 0 hashes for 1 entries'],
    ['a second BATCH before the first one\'s COMMIT', (dir: string) => [encodeControl('BATCH', 5, { algorithm: 'xxh3', entries: [{ kind: 'dir', path: join(dir, 'a') }] }), encodeControl('BATCH', 6, { algorithm: 'xxh3', entries: [] })], 'BATCH 6 before the COMMIT of batch 5: one batch\'s bytes at a time'],
  ])('ends the session with PROTOCOL on %s, leaving no temporary file', async (_what, frames, message) => {
    const dir = fresh();
    const s = session();
    s.send(Buffer.concat(frames(dir)));
    expect(await s.reply(0)).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message } });
    s.end();
    await expect(s.done).rejects.toMatchObject({ code: 'PROTOCOL' });
    expect(await leftovers(dir)).toEqual([]);
  });
});
