import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BufferPool, FRAME_HEADER_BYTES, ZERO_CHUNK, createHasher } from '@ferry/core';
import type { RemoteFile } from '@ferry/transport';
import { pullRange } from '../src/pump.js';

const MiB = 1024 * 1024;

/**
 * A remote whose read() delivers a whole range of ZEROS frames in one go,
 * ignoring the sink's promises, as the helper client does with the frames of
 * one socket read (thousands of ZEROS frames fit in 64 KiB).
 */
function zerosRemote(pieces: number): RemoteFile {
  return {
    headroom: 0,
    beginWrite: () => {
      throw new Error('not used');
    },
    read: async (_offset, length, algorithm, sink) => {
      const h = createHasher(algorithm);
      for (let i = 0; i < pieces; i++) {
        const piece = ZERO_CHUNK.subarray(0, length / pieces);
        h.update(piece);
        void sink(piece, true);
      }
      return { hash: h.digest() };
    },
    fsync: async () => {},
    close: async () => {},
  };
}

describe('pullRange with runs of zeros', () => {
  let dir: string | undefined;
  afterEach(async () => {
    vi.restoreAllMocks();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('checks the destination through pool buffers only, and zeroes what is not zero', async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-pump-'));
    const path = join(dir, 'dst.bin');
    const size = 256 * MiB;
    await writeFile(path, '');
    await truncate(path, size);
    const fh = await open(path, 'r+');
    try {
      // Stale bytes from an earlier attempt, inside the run of zeros.
      await fh.write(Buffer.from('stale'), 0, 5, 100 * MiB + 7);
      const pool = new BufferPool(FRAME_HEADER_BYTES + MiB, 4);
      const allocUnsafe = vi.spyOn(Buffer, 'allocUnsafe');
      const r = await pullRange(fh, path, zerosRemote(256), pool, { offset: 0, length: size, algorithm: 'xxh3' });
      // No buffer of the data path's size was allocated outside the pool
      // (one per ZEROS frame made a sparse pull slow and unbounded in memory).
      expect(allocUnsafe.mock.calls.filter(([n]) => n >= MiB)).toEqual([]);
      expect(pool.inUse).toBe(0);
      expect(r.bytes).toBe(size);
      expect(r.dstHash).toBe(r.srcHash);
      const back = Buffer.alloc(16);
      await fh.read(back, 0, 16, 100 * MiB);
      expect(back.equals(Buffer.alloc(16))).toBe(true);
    } finally {
      await fh.close();
    }
  });
});
