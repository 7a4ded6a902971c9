import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION, encodeControl, encodeDataHeader } from '@ferry/core';
import { repliesById } from '../../../test/helpers.js';
import { serve } from '../src/serve.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A serve() session over in-memory streams: `send` a frame, `reply(id)` waits for its answer. */
function session() {
  const input = new PassThrough();
  const output = new PassThrough();
  const reply = repliesById(output);
  const done = serve({ input, output });
  return { send: (b: Buffer) => input.write(b), reply, end: () => input.end(), done };
}

describe('serve', () => {
  it('writes a run of ZEROS and DATA through the handle that created the file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-serve-'));
    dirs.push(dir);
    const dest = join(dir, 'dest');
    const data = randomBytes(300 * 1024);
    const zeros = 64 * 1024;
    const s = session();
    s.send(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
    expect(await s.reply(1)).toMatchObject({ type: 'OK' });
    s.send(encodeControl('OPEN', 2, { path: dest, policy: 'create', size: zeros + data.length }));
    const opened = await s.reply(2);
    expect(opened).toMatchObject({ type: 'OK' });
    const handle = (opened as { body: { handle: number } }).body.handle;
    s.send(encodeControl('WRITE', 3, { handle, offset: 0, length: zeros + data.length, algorithm: 'xxh3' }));
    // A ZEROS run reads the file to see whether it holds zeros already (a fresh sparse file does).
    s.send(encodeControl('ZEROS', 3, { length: zeros }));
    s.send(Buffer.concat([encodeDataHeader(3, data.length), data]));
    expect(await s.reply(3)).toMatchObject({ type: 'OK', body: { bytes: zeros + data.length } });
    s.send(encodeControl('FSYNC', 4, { handle }));
    expect(await s.reply(4)).toMatchObject({ type: 'OK' });
    s.send(encodeControl('CLOSE', 5, { handle }));
    expect(await s.reply(5)).toMatchObject({ type: 'OK' });
    s.end();
    await s.done;
    expect(readFileSync(dest).equals(Buffer.concat([Buffer.alloc(zeros), data]))).toBe(true);
  });
});
