/**
 * The helper answers a WRITE once its bytes are in and hashed, before they
 * are on disk (serve.ts), so a range is never done until the FSYNC after it.
 * This proves the other half with a real disk-full error: a write that fails
 * after its WRITE was answered fails that FSYNC, and every later WRITE and
 * the CLOSE of the handle. The helper runs in a mount namespace of its own
 * (unshare -m) with a full 1 MiB tmpfs, which goes away with it.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, PROTOCOL_VERSION, encodeControl, encodeDataHeader } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';

const isRoot = process.getuid?.() === 0;
const MAIN = fileURLToPath(new URL('../packages/cli/dist/main.js', import.meta.url));

/** `ferry serve` on a fresh tmpfs of 1 MiB at `dir`, filled up first; replies by request id. */
function helperOnFullDisk(dir: string) {
  const script = `mount -t tmpfs -o size=1m ferry-test '${dir}' && { cat /dev/zero > '${dir}/filler' 2>/dev/null; true; } && exec '${process.execPath}' '${MAIN}' serve`;
  const child: ChildProcessWithoutNullStreams = spawn('unshare', ['-m', 'sh', '-c', script]);
  const replies = new Map<number, DecodedFrame>();
  const waiting = new Map<number, (f: DecodedFrame) => void>();
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const decoder = new FrameDecoder((f) => {
    const w = waiting.get(f.id);
    if (w) {
      waiting.delete(f.id);
      w(f);
    } else replies.set(f.id, f);
  });
  child.stdout.on('data', (d: Buffer) => decoder.push(d));
  const reply = (id: number) =>
    new Promise<DecodedFrame>((resolve, reject) => {
      const r = replies.get(id);
      if (r) return resolve(r);
      waiting.set(id, resolve);
      child.once('close', () => reject(new Error(`helper exited before answering ${id}: ${stderr}`)));
    });
  return { child, send: (b: Buffer) => child.stdin.write(b), reply };
}

let child: ChildProcessWithoutNullStreams | undefined;
let dir: string | undefined;
afterEach(() => {
  child?.kill('SIGKILL');
  child = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe.skipIf(!isRoot)('the helper answers WRITEs before their bytes are on disk', () => {
  it('fails the FSYNC, later WRITEs and the CLOSE of a handle whose write failed after its OK', async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-full-'));
    const h = helperOnFullDisk(dir);
    child = h.child;
    h.send(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
    expect(await h.reply(1)).toMatchObject({ type: 'OK' });
    // A sparse file takes no space: OPEN succeeds on the full disk.
    h.send(encodeControl('OPEN', 2, { path: join(dir, 'dest'), policy: 'create', size: 1024 * 1024 }));
    const opened = await h.reply(2);
    expect(opened).toMatchObject({ type: 'OK' });
    const handle = (opened as { body: { handle: number } }).body.handle;

    // 64 KiB: one write, started as the last byte arrives and answered at once.
    const data = Buffer.alloc(64 * 1024, 0x5a);
    h.send(encodeControl('WRITE', 3, { handle, offset: 0, length: data.length, algorithm: 'xxh3' }));
    h.send(Buffer.concat([encodeDataHeader(3, data.length), data]));
    expect(await h.reply(3)).toMatchObject({ type: 'OK', body: { bytes: data.length } });

    // The write itself failed (ENOSPC): nothing written through this handle may become durable.
    h.send(encodeControl('FSYNC', 4, { handle }));
    expect(await h.reply(4)).toMatchObject({ type: 'ERROR', body: { code: 'DEST_NO_SPACE' } });
    h.send(encodeControl('WRITE', 5, { handle, offset: data.length, length: data.length, algorithm: 'xxh3' }));
    h.send(Buffer.concat([encodeDataHeader(5, data.length), data]));
    expect(await h.reply(5)).toMatchObject({ type: 'ERROR', body: { code: 'DEST_NO_SPACE' } });
    h.send(encodeControl('FSYNC', 6, { handle }));
    expect(await h.reply(6)).toMatchObject({ type: 'ERROR', body: { code: 'DEST_NO_SPACE' } });
    h.send(encodeControl('CLOSE', 7, { handle }));
    expect(await h.reply(7)).toMatchObject({ type: 'ERROR', body: { code: 'DEST_NO_SPACE' } });

    // The session goes on: the DATA of the refused WRITE was skipped, not taken for frames.
    h.send(encodeControl('STAT', 8, { path: join(dir, 'dest') }));
    expect(await h.reply(8)).toMatchObject({ type: 'OK', body: { stat: { size: 1024 * 1024 } } });
  });
});
