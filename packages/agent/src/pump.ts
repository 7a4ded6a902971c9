/**
 * The data path of one range: local file <-> remote file over one connection.
 * Buffers come from a bounded pool; reads are positional and run a little
 * ahead of the network; the source hash is computed on the bytes as read and
 * the destination hash by the receiving side.
 */
import type { FileHandle } from 'node:fs/promises';
import { DIRECT_ALIGNMENT, FerryError, createHasher, destinationError, isAllZero } from '@ferry/core';
import type { BufferPool, FileWriter, HashAlgorithm } from '@ferry/core';
import type { RemoteFile } from '@ferry/transport';

export interface RangeJob {
  offset: number;
  length: number;
  algorithm: HashAlgorithm;
  /** Test-only fault injection: flip one byte after hashing, as a corrupting network would. */
  corrupt?: boolean;
  /** Called with each chunk's size as it is handed to the network or the disk. */
  onBytes?: (n: number) => void;
  /** Abandons the range between chunks (Ctrl-C, stop). */
  signal?: AbortSignal;
  /** An attempt after a failed one: where zeros() writes nothing (SFTP), runs of zeros are written as data. */
  rewrite?: boolean;
  /** Rate cap: resolves when `n` more bytes may go (undefined: at once). Runs of zeros do not count: they cross as a few bytes. */
  pace?: (n: number) => Promise<void> | undefined;
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new FerryError('INTERRUPTED', 'range abandoned: the agent is stopping');
}

export interface RangeResult {
  srcHash: string;
  dstHash: string;
  bytes: number;
}

/** Reads exactly `length` bytes at `position` into buf[start...]; a short file is a changed source. */
async function readFully(fh: FileHandle, buf: Buffer, start: number, length: number, position: number, path: string): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, start + done, length - done, position + done);
    if (bytesRead === 0) {
      throw new FerryError('SOURCE_CHANGED', `${path} ended at byte ${position + done} while ferry was reading up to ${position + length}: the source shrank during the copy; rerun when it is stable`, { path });
    }
    done += bytesRead;
  }
}

const READ_AHEAD = 3;

/** Local file -> remote file. */
export async function pushRange(local: FileHandle, localPath: string, remote: RemoteFile, pool: BufferPool, job: RangeJob): Promise<RangeResult> {
  const head = remote.headroom;
  const chunk = pool.bufferBytes - head;
  const writer = remote.beginWrite(job.offset, job.length, job.algorithm);
  const src = createHasher(job.algorithm);
  const reads: Array<Promise<{ buf: Buffer; n: number }>> = [];
  let next = 0;
  const startRead = () => {
    if (next >= job.length) return;
    const at = next;
    const n = Math.min(chunk, job.length - at);
    next += n;
    reads.push(
      pool.acquire().then(async (buf) => {
        try {
          await readFully(local, buf, head, n, job.offset + at, localPath);
        } catch (err) {
          pool.release(buf);
          throw err;
        }
        return { buf, n };
      }),
    );
  };
  for (let i = 0; i < READ_AHEAD; i++) startRead();
  let corrupt = job.corrupt === true;
  try {
    while (reads.length > 0) {
      const { buf, n } = await Promise.race([reads.shift()!, writer.failed]);
      if (job.signal?.aborted) pool.release(buf);
      checkAbort(job.signal);
      startRead();
      src.update(buf.subarray(head, head + n));
      let flipped = false;
      if (corrupt && n > 0) {
        buf[head + (n >> 1)]! ^= 0x01;
        corrupt = false;
        flipped = true;
      }
      job.onBytes?.(n);
      if (writer.zeros && !flipped && !(writer.zerosUnchecked && job.rewrite) && isAllZero(buf.subarray(head, head + n))) {
        // A run of zeros (a sparse region): a few bytes on the wire instead of n (SFTP: none, a hole stays).
        pool.release(buf);
        await Promise.race([writer.zeros(n), writer.failed]);
        continue;
      }
      const paced = job.pace?.(n);
      if (paced) await paced;
      await Promise.race([writer.write(buf, head, head + n, () => pool.release(buf)), writer.failed]);
    }
    const { hash } = await writer.end();
    return { srcHash: src.digest(), dstHash: hash, bytes: job.length };
  } finally {
    // Give back the buffers of reads still outstanding after a failure.
    for (const r of reads.splice(0)) r.then(({ buf }) => pool.release(buf), () => {});
  }
}

/**
 * Remote file -> local file. Pieces are hashed as they arrive and copied into
 * pool buffers that are pwritten when full. A piece that finds no free pool
 * buffer (the disk lags) is held, as the transport's view, until a write
 * gives one back; meanwhile the sink returns a promise and the transport
 * stops reading, which holds the sender through SSH flow control. So the
 * pool bounds the memory: nothing is allocated when the disk lags. Every slot
 * of an agent writes through the one FileWriter of the local file (one write
 * at a time, aligned ones with O_DIRECT under --direct-io), in chunks of
 * whole pages.
 */
export async function pullRange(local: FileWriter, localPath: string, remote: RemoteFile, pool: BufferPool, job: RangeJob): Promise<RangeResult> {
  const chunk = pool.bufferBytes - (pool.bufferBytes % DIRECT_ALIGNMENT);
  const dst = createHasher(job.algorithm);
  let buf: Buffer | undefined;
  let fill = 0;
  let bufOffset = job.offset;
  /** Bytes the transport has handed over (hashed). */
  let arrived = 0;
  /** Bytes placed: copied into a buffer or written as a run of zeros. */
  let received = 0;
  let writeError: FerryError | undefined;
  const writes = new Set<Promise<void>>();
  let corrupt = job.corrupt === true;
  /** Pieces, or the rest of one, that arrived while no pool buffer was free: placed in order once one is. */
  const held: Array<{ piece: Buffer; zero: boolean }> = [];
  let placing: Promise<void> | undefined;
  let finished = false;

  const flush = () => {
    const b = buf!;
    const n = fill;
    const at = bufOffset;
    buf = undefined;
    fill = 0;
    const p = (async () => {
      try {
        await local.write(b, n, at);
        job.onBytes?.(n);
      } catch (err) {
        writeError ??= destinationError(err, { path: localPath });
      } finally {
        pool.release(b);
      }
    })();
    writes.add(p);
    void p.finally(() => writes.delete(p));
  };

  /** A run of zeros: the local file is sparse where nothing was written, so write only where it is not zero. */
  const ensureZeros = (at: number, n: number) => {
    const p = (async () => {
      // Wait for a pool buffer rather than allocate: one socket read can hold
      // thousands of ZEROS frames, and a fresh buffer for each (faulted in, then
      // collected) made a sparse pull 3x slower and unbounded in memory.
      const b = await pool.acquire();
      try {
        await local.zero(b, n, at);
        job.onBytes?.(n);
      } catch (err) {
        writeError ??= destinationError(err, { path: localPath });
      } finally {
        pool.release(b);
      }
    })();
    writes.add(p);
    void p.finally(() => writes.delete(p));
  };

  /** Places what it can of a piece; returns the part that found no free pool buffer. */
  const place = (piece: Buffer, zero: boolean): Buffer | undefined => {
    if (zero) {
      if (buf && fill > 0) flush();
      const at = job.offset + received;
      received += piece.length;
      if (piece.length > 0) ensureZeros(at, piece.length);
      return undefined;
    }
    let rest = piece;
    while (rest.length > 0) {
      if (!buf) {
        buf = pool.tryAcquire();
        if (!buf) return rest;
      }
      // A buffer is empty when taken (flush() empties it): it starts where the range stands.
      if (fill === 0) bufOffset = job.offset + received;
      const n = Math.min(chunk - fill, rest.length);
      rest.copy(buf, fill, 0, n);
      fill += n;
      received += n;
      rest = rest.subarray(n);
      if (fill === chunk || received === job.length) flush();
    }
    return undefined;
  };

  /** Waits for pool buffers and places the held pieces, then lets the transport read on. */
  const placeHeld = async (): Promise<void> => {
    let placed = 0;
    try {
      while (held.length > 0) {
        const item = held[0]!;
        if (!buf && !item.zero) {
          const b = await pool.acquire();
          if (finished) return void pool.release(b);
          buf = b;
        }
        const rest = place(item.piece, item.zero);
        if (!item.zero) placed += item.piece.length - (rest?.length ?? 0);
        if (rest) item.piece = rest;
        else held.shift();
      }
    } finally {
      placing = undefined;
    }
    if (job.pace && placed > 0) await job.pace(placed);
  };

  const sink = (piece: Buffer, zero: boolean): void | Promise<void> => {
    if (writeError) throw writeError;
    checkAbort(job.signal);
    if (arrived + piece.length > job.length) throw new FerryError('PROTOCOL', `remote sent more than the ${job.length} bytes of the range`);
    arrived += piece.length;
    const asZeros = zero && !corrupt;
    if (corrupt && piece.length > 0) {
      // Copy before flipping: the piece is a view of the transport's buffer.
      piece = Buffer.from(piece);
      piece[piece.length >> 1]! ^= 0x01;
      corrupt = false;
    }
    dst.update(piece);
    // Pieces of the socket read the transport was in when it paused still come: keep their order.
    if (placing) {
      held.push({ piece, zero: asZeros });
      return placing;
    }
    const rest = place(piece, asZeros);
    if (rest) {
      held.push({ piece: rest, zero: false });
      return (placing = placeHeld());
    }
    if (!asZeros && job.pace) return job.pace(piece.length);
    if (pool.inUse >= pool.count && writes.size > 0) return Promise.race([...writes]);
  };

  try {
    const { hash } = await remote.read(job.offset, job.length, job.algorithm, sink);
    // The reply can come in the same socket read as the last pieces, before they are placed.
    while (placing) await placing;
    if (buf && fill > 0) flush();
    while (writes.size > 0) await Promise.all([...writes]);
    if (writeError) throw writeError;
    if (received !== job.length) {
      throw new FerryError('PROTOCOL', `received ${received} bytes for a range of ${job.length}`);
    }
    return { srcHash: hash, dstHash: dst.digest(), bytes: job.length };
  } finally {
    finished = true;
    // A buffer taken but not handed to a write: the range failed.
    if (buf) pool.release(buf);
    buf = undefined;
  }
}
