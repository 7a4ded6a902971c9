import type { FileHandle } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ensureZeroed, pwriteAll } from '@ferry/core';

/** A file in memory whose writes take at most `most` bytes a call, like a short write. */
function memoryFile(content: Buffer, most = Infinity, size = content.length) {
  const calls = { writes: 0 };
  const fh = {
    write: async (data: Uint8Array, offset: number, length: number, position: number) => {
      calls.writes++;
      const n = Math.min(length, most);
      content.set(data.subarray(offset, offset + n), position);
      return { bytesWritten: n, buffer: data };
    },
    read: async (buf: Buffer, offset: number, length: number, position: number) => {
      const n = Math.max(0, Math.min(length, size - position));
      content.copy(buf, offset, position, position + n);
      return { bytesRead: n, buffer: buf };
    },
  };
  return { fh: fh as unknown as FileHandle, calls, content };
}

describe('pwriteAll', () => {
  it('goes on after short writes until every byte is at its place', async () => {
    const f = memoryFile(Buffer.alloc(32, 0xee), 3);
    await pwriteAll(f.fh, Buffer.from('0123456789abcdef'), 10, 5);
    expect(f.content.subarray(5, 15).toString()).toBe('0123456789');
    expect(f.content[4]).toBe(0xee);
    expect(f.content[15]).toBe(0xee);
    expect(f.calls.writes).toBe(4);
  });
});

describe('ensureZeroed', () => {
  it('writes nothing where the file already reads as zeros', async () => {
    const f = memoryFile(Buffer.alloc(64));
    await ensureZeroed(f.fh, Buffer.alloc(64), 32, 16);
    expect(f.calls.writes).toBe(0);
  });

  it('writes zeros over other bytes, and past the end of the file', async () => {
    const f = memoryFile(Buffer.alloc(64, 7), 5);
    await ensureZeroed(f.fh, Buffer.alloc(64), 16, 8);
    expect([...f.content.subarray(8, 24)].every((b) => b === 0)).toBe(true);
    expect(f.content[7]).toBe(7);
    expect(f.content[24]).toBe(7);
    const short = memoryFile(Buffer.alloc(64), Infinity, 20);
    await ensureZeroed(short.fh, Buffer.alloc(64), 16, 10); // reads 10 of 16: the file ends at 20
    expect(short.calls.writes).toBeGreaterThan(0);
  });
});
