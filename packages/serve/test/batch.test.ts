/**
 * BATCH and COMMIT against a `ferry serve` session (serve() over in-memory
 * streams, writing a real directory): every kind of entry, every per-entry
 * failure, and a frame sequence that breaks the protocol. The same case runs
 * against the python helper and through every mode in test/batch-writes.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { BATCH_CAPABILITY, MAX_OPEN_BATCHES, PROTOCOL_VERSION, encodeControl, encodeDataHeader } from '@ferry/core';
import type { BatchEntryResult } from '@ferry/core';
import { repliesById } from '../../../test/helpers.js';
import { batchCase, batchFrames, leftovers } from '../../../test/batch-cases.js';
import { serve } from '../src/serve.js';

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
  const input = new PassThrough();
  const output = new PassThrough();
  const reply = repliesById(output);
  const done = serve({ input, output });
  done.catch(() => {});
  input.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
  return { send: (b: Buffer) => input.write(b), reply, end: () => input.end(), done };
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
