import { spawn, execFileSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { reusedBufferInput } from '../src/input.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A FIFO fed with `data` by a `cat` process; returns the read end's fd. */
function fifoWith(data: Buffer): number {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-input-'));
  dirs.push(dir);
  const file = join(dir, 'data');
  const fifo = join(dir, 'fifo');
  writeFileSync(file, data);
  execFileSync('mkfifo', [fifo]);
  spawn('sh', ['-c', `cat "$0" > "$1"`, file, fifo], { stdio: 'ignore' });
  return openSync(fifo, 'r');
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
