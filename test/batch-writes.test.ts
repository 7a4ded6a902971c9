/**
 * BATCH and COMMIT (many small entries in one request) beyond the in-process
 * `ferry serve` of packages/serve/test/batch.test.ts: ferry's python helper
 * spoken to frame by frame, and `RemoteConnection.writeBatch` through a real
 * sshd in all three modes. Every one passes the same case
 * (test/batch-cases.ts): each kind of entry, holes kept, and the entries in
 * the way, changed or corrupted failing alone.
 */
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION, encodeControl, encodeDataHeader } from '@ferry/core';
import type { BatchEntryResult } from '@ferry/core';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { batchCase, batchFrames, leftovers } from './batch-cases.js';
import { repliesById, tempDir } from './helpers.js';

let work: { path: string; remove(): Promise<void> };
let n = 0;
const fresh = () => join(work.path, `case-${++n}`);

beforeAll(async () => {
  work = await tempDir('ferry-batch-');
});

afterAll(async () => {
  await work?.remove();
});

/** The python helper as a connection starts it, spoken to in raw frames. */
function python() {
  const script = pythonHelperScript();
  const child = spawn('sh', ['-c', pythonHelperCommand(script.length)], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] });
  const reply = repliesById(child.stdout);
  child.stdin.write(script);
  child.stdin.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return { send: (b: Buffer) => child.stdin.write(b), reply, end: () => child.stdin.end(), exited, kill: () => child.kill() };
}

describe("ferry's python helper: BATCH", () => {
  it('says it takes batches, and passes the case frame by frame (sha256 and crc32)', async () => {
    const h = python();
    try {
      expect(await h.reply(1)).toMatchObject({ type: 'OK', body: { hello: { capabilities: expect.arrayContaining(['batch']) } } });
      for (const [id, algorithm] of [[7, 'sha256'], [8, 'crc32']] as const) {
        const dir = fresh();
        const c = await batchCase(dir, algorithm, 'wire');
        h.send(batchFrames(c, id, algorithm));
        const answer = await h.reply(id);
        expect(answer.type).toBe('OK');
        await c.check((answer as { body: { results: BatchEntryResult[] } }).body.results);
      }
      h.end();
      expect(await h.exited).toBe(0);
    } finally {
      h.kill();
    }
  });

  it('ends the session with PROTOCOL on bytes beyond the declared sizes, leaving no temporary file', async () => {
    const dir = fresh();
    await mkdir(dir);
    const h = python();
    try {
      await h.reply(1);
      h.send(Buffer.concat([encodeControl('BATCH', 5, { algorithm: 'crc32', entries: [{ kind: 'file', path: join(dir, 'a'), size: 2 }] }), encodeDataHeader(5, 3), Buffer.from('abc')]));
      expect(await h.reply(0)).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: "helper protocol: DATA for batch 5 overruns its files' 2 bytes" } });
      await h.exited;
      expect(await leftovers(dir)).toEqual([]);
    } finally {
      h.kill();
    }
  });
});
