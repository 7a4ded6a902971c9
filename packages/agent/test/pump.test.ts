import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BufferPool, DIRECT_ALIGNMENT, FRAME_HEADER_BYTES, FileWriter, ZERO_CHUNK, createHasher, openDirect } from '@ferry/core';
import type { RemoteFile } from '@ferry/transport';
import { pullRange, pushRange } from '../src/pump.js';

const MiB = 1024 * 1024;

/** A remote file that is only read from, by `read`. */
function readOnlyRemote(read: RemoteFile['read']): RemoteFile {
  return {
    headroom: 0,
    beginWrite: () => {
      throw new Error('not used');
    },
    read,
    fsync: async () => {},
    hashStored: () => {
      throw new Error('not used');
    },
    close: async () => {},
  };
}

/**
 * A remote whose read() delivers a whole range of ZEROS frames in one go,
 * ignoring the sink's promises, as the helper client does with the frames of
 * one socket read (thousands of ZEROS frames fit in 64 KiB).
 */
function zerosRemote(pieces: number): RemoteFile {
  return readOnlyRemote(async (_offset, length, algorithm, sink) => {
    const h = createHasher(algorithm);
    for (let i = 0; i < pieces; i++) {
      const piece = ZERO_CHUNK.subarray(0, length / pieces);
      h.update(piece);
      void sink(piece, true);
    }
    return { hash: h.digest() };
  });
}

/** A remote whose read() hands `data`'s range to the sink in pieces of `piece` bytes, waiting when the sink asks. */
function dataRemote(data: Buffer, piece: number): RemoteFile {
  return readOnlyRemote(async (offset, length, algorithm, sink) => {
    const h = createHasher(algorithm);
    for (let at = offset; at < offset + length; at += piece) {
      const chunk = data.subarray(at, Math.min(at + piece, offset + length));
      h.update(chunk);
      await sink(chunk, false);
    }
    return { hash: h.digest() };
  });
}

let dir: string | undefined;
afterEach(async () => {
  vi.restoreAllMocks();
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** A destination in a fresh temporary directory: a sparse file of `initial` bytes, or one holding `initial`; open for writing. */
async function destination(initial: number | Buffer): Promise<{ path: string; fh: FileHandle }> {
  dir = await mkdtemp(join(tmpdir(), 'ferry-pump-'));
  const path = join(dir, 'dst.bin');
  if (typeof initial === 'number') {
    await writeFile(path, '');
    await truncate(path, initial);
  } else await writeFile(path, initial);
  return { path, fh: await open(path, 'r+') };
}

describe('pullRange with runs of zeros', () => {
  it('checks the destination through pool buffers only, and zeroes what is not zero', async () => {
    const size = 256 * MiB;
    const { path, fh } = await destination(size);
    try {
      // Stale bytes from an earlier attempt, inside the run of zeros.
      await fh.write(Buffer.from('stale'), 0, 5, 100 * MiB + 7);
      const pool = new BufferPool(FRAME_HEADER_BYTES + MiB, 4);
      const allocUnsafe = vi.spyOn(Buffer, 'allocUnsafe');
      const r = await pullRange(new FileWriter(fh), path, zerosRemote(256), pool, { offset: 0, length: size, algorithm: 'xxh3' });
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

describe('pullRange under --direct-io', () => {
  it('writes whole pages from aligned pool buffers with O_DIRECT and the unaligned tail through the page cache', async () => {
    // Two ranges of 3 MiB; the file ends 1000 bytes into the second range's last page.
    const data = randomBytes(3 * MiB + 2 * MiB + 1000);
    const { path, fh } = await destination(data.length);
    const opened = await openDirect(path);
    if (!('fh' in opened)) {
      // No direct I/O in this temporary directory (tmpfs before Linux 6.6): the cp
      // test checks the fallback; here there is nothing to observe.
      await fh.close();
      expect(opened.reason).toMatch(/does not support direct I\/O/);
      return;
    }
    const direct = opened.fh;
    const directWrites: Array<[number, number]> = [];
    const write = direct.write.bind(direct) as (b: Uint8Array, o: number, l: number, p: number) => Promise<unknown>;
    vi.spyOn(direct, 'write').mockImplementation(((b: Uint8Array, o: number, l: number, p: number) => {
      directWrites.push([p, l]);
      return write(b, o, l, p);
    }) as typeof direct.write);
    const writer = new FileWriter(fh, direct);
    try {
      const pool = new BufferPool(FRAME_HEADER_BYTES + MiB, 8, { aligned: true });
      // Pieces of an odd size, as SSH channel reads come.
      for (const [offset, length] of [[0, 3 * MiB], [3 * MiB, data.length - 3 * MiB]] as const) {
        const r = await pullRange(writer, path, dataRemote(data, 32_749), pool, { offset, length, algorithm: 'xxh3' });
        expect(r.dstHash).toBe(r.srcHash);
      }
      expect(pool.inUse).toBe(0);
      expect(writer.direct).toBe(true);
      // Every direct write is whole pages at a page boundary; together with the page-cache tail they cover the file.
      for (const [p, l] of directWrites) expect([p % DIRECT_ALIGNMENT, l % DIRECT_ALIGNMENT]).toEqual([0, 0]);
      const directBytes = directWrites.reduce((n, [, l]) => n + l, 0);
      expect(directBytes).toBe(data.length - (data.length % DIRECT_ALIGNMENT));
      await fh.sync();
    } finally {
      await writer.close();
      await fh.close();
    }
    expect((await readFile(path)).equals(data)).toBe(true);
  });
});

type Piece = { piece: Buffer; zero: boolean };

/** `data` in pieces of `size` bytes, as DATA frames bring them. */
function dataPieces(data: Buffer, size: number): Piece[] {
  const out: Piece[] = [];
  for (let at = 0; at < data.length; at += size) out.push({ piece: data.subarray(at, at + size), zero: false });
  return out;
}

/**
 * A remote whose read() hands `pieces` (the whole range) to the sink in socket
 * reads of `perRead` pieces: the pieces of one read come one after another
 * whatever the sink answers (as the helper client decodes a whole socket
 * read), and only then does it wait for the last answer. With `failAfter`, the
 * connection is lost after that many bytes.
 */
function burstRemote(pieces: Piece[], perRead: number, failAfter?: number): RemoteFile {
  return readOnlyRemote(async (_offset, _length, algorithm, sink) => {
    const h = createHasher(algorithm);
    let sent = 0;
    for (let at = 0; at < pieces.length; at += perRead) {
      let answer: void | Promise<void> = undefined;
      for (const { piece, zero } of pieces.slice(at, at + perRead)) {
        if (failAfter !== undefined && sent >= failAfter) throw new Error('connection lost');
        h.update(piece);
        answer = sink(piece, zero) ?? answer;
        sent += piece.length;
      }
      await answer;
    }
    // The reply comes in the same read as the last pieces, before the sink has placed them.
    return { hash: h.digest() };
  });
}

/** The local file's writer, each write held back for `ms` (a disk that lags the network). */
function slowWriter(fh: Awaited<ReturnType<typeof open>>, ms: number): FileWriter {
  const writer = new FileWriter(fh);
  const write = writer.write.bind(writer);
  vi.spyOn(writer, 'write').mockImplementation(async (b, n, at) => {
    await new Promise((r) => setTimeout(r, ms));
    return write(b, n, at);
  });
  return writer;
}

describe('pullRange when the disk lags', () => {
  const chunk = 256 * 1024;

  it('holds what arrives until a pool buffer is free, and allocates none of its own', async () => {
    const data = randomBytes(6 * MiB + 12_345);
    const { path, fh } = await destination(data.length);
    try {
      const pool = new BufferPool(FRAME_HEADER_BYTES + chunk, 2);
      const allocUnsafe = vi.spyOn(Buffer, 'allocUnsafe');
      const r = await pullRange(slowWriter(fh, 5), path, burstRemote(dataPieces(data, 32_749), 12), pool, { offset: 0, length: data.length, algorithm: 'xxh3' });
      expect(allocUnsafe.mock.calls.filter(([n]) => n >= chunk)).toEqual([]);
      expect(r.dstHash).toBe(r.srcHash);
      expect(pool.inUse).toBe(0);
    } finally {
      await fh.close();
    }
    expect((await readFile(path)).equals(data)).toBe(true);
  });

  it('places runs of zeros that arrive among held pieces at their own offsets', async () => {
    // Data, then two ZEROS pieces in a row, then data, over and over: the second
    // run of zeros comes while no buffer is taken.
    const pieces: Piece[] = [];
    for (let i = 0; i < 24; i++) {
      pieces.push({ piece: randomBytes(50_000), zero: false });
      pieces.push({ piece: ZERO_CHUNK.subarray(0, 12_288), zero: true }, { piece: ZERO_CHUNK.subarray(0, 8_192), zero: true });
    }
    const data = Buffer.concat(pieces.map((p) => p.piece));
    // Stale bytes everywhere: a piece written at a wrong offset, or a run of zeros not written, shows.
    const { path, fh } = await destination(randomBytes(data.length));
    try {
      const pool = new BufferPool(FRAME_HEADER_BYTES + chunk, 2);
      // Socket reads of 9 pieces.
      const r = await pullRange(slowWriter(fh, 5), path, burstRemote(pieces, 9), pool, { offset: 0, length: data.length, algorithm: 'xxh3' });
      expect(r.dstHash).toBe(r.srcHash);
      expect(pool.inUse).toBe(0);
    } finally {
      await fh.close();
    }
    expect((await readFile(path)).equals(data)).toBe(true);
  });

  it('gives every pool buffer back when the connection is lost while pieces are held', async () => {
    const data = randomBytes(4 * MiB);
    const { path, fh } = await destination(data.length);
    try {
      const pool = new BufferPool(FRAME_HEADER_BYTES + chunk, 2);
      const job = { offset: 0, length: data.length, algorithm: 'xxh3' as const };
      await expect(pullRange(slowWriter(fh, 20), path, burstRemote(dataPieces(data, 32_749), 40, 2 * MiB), pool, job)).rejects.toThrow(/connection lost/);
      // Writes still running hand their buffers back as they end; none is kept.
      for (let i = 0; i < 100 && pool.inUse > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(pool.inUse).toBe(0);
      expect(pool.tryAcquire()).toBeDefined();
    } finally {
      await fh.close();
    }
  });
});

describe('pushRange with a transport whose zeros write nothing (SFTP)', () => {
  /** A remote that records what each range write was given: data at its offsets, runs of zeros skipped. */
  function recordingRemote(size: number): { remote: RemoteFile; file: Buffer; zeroRuns: number[] } {
    const file = Buffer.alloc(size, 0xee);
    const zeroRuns: number[] = [];
    const remote: RemoteFile = {
      ...readOnlyRemote(async () => ({ hash: '' })),
      beginWrite: (offset, _length, algorithm) => {
        let at = offset;
        return {
          headroom: 0,
          zerosUnchecked: true,
          failed: new Promise<never>(() => {}),
          write: async (buf, start, end, done) => {
            buf.copy(file, at, start, end);
            at += end - start;
            done();
          },
          zeros: async (n) => {
            zeroRuns.push(n);
            at += n;
          },
          end: async () => {
            const h = createHasher(algorithm);
            h.update(file.subarray(offset, at));
            return { bytes: at - offset, hash: h.digest() };
          },
        };
      },
    };
    return { remote, file, zeroRuns };
  }

  it('skips the runs of zeros on a first attempt, and writes them on an attempt after a failed one', async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-pump-'));
    const path = join(dir, 'src.bin');
    const data = Buffer.concat([randomBytes(MiB), Buffer.alloc(2 * MiB), randomBytes(MiB)]);
    await writeFile(path, data);
    const fh = await open(path, 'r');
    try {
      const pool = new BufferPool(MiB, 4);
      const first = recordingRemote(data.length);
      const r1 = await pushRange(fh, path, first.remote, pool, { offset: 0, length: data.length, algorithm: 'xxh3' });
      expect(first.zeroRuns).toEqual([MiB, MiB]);
      // What was skipped still holds what was there before (a hole reads as zeros; here 0xee shows it was not written).
      expect(first.file.subarray(MiB, 3 * MiB).every((b) => b === 0xee)).toBe(true);
      expect(r1.srcHash).not.toBe(r1.dstHash);
      const again = recordingRemote(data.length);
      const r2 = await pushRange(fh, path, again.remote, pool, { offset: 0, length: data.length, algorithm: 'xxh3', rewrite: true });
      expect(again.zeroRuns).toEqual([]);
      expect(again.file.equals(data)).toBe(true);
      expect(r2.srcHash).toBe(r2.dstHash);
    } finally {
      await fh.close();
    }
  });
});
