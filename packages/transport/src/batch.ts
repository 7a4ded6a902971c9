/**
 * What the three modes share of `RemoteConnection.writeBatch`: reading each
 * file entry's source as exactly its declared size (the framing depends on
 * it), hashing what is sent, telling runs of zeros apart, and wording each
 * entry's failure as every destination error is worded.
 */
import { FerryError, ZERO_CHUNK, createHasher, destinationError, hashBytes, isAllZero, sourceError } from '@ferry/core';
import type { Hasher } from '@ferry/core';
import type { BatchEntry, ErrorData, HashAlgorithm } from '@ferry/core';

/** One entry's outcome. `srcHash` is of the bytes sent, `dstHash` what the destination computed of what it holds. */
export type BatchResult = { ok: true; srcHash?: string; dstHash?: string } | { ok: false; error: ErrorData };

/** File entry `index`'s bytes, from the source. */
export type BatchRead = (index: number) => AsyncIterable<Uint8Array>;

/** Pieces sent at most this large: a DATA frame per MiB, a ZEROS frame per MiB of zeros. */
const PIECE_BYTES = 1024 * 1024;

/** What reading one file's source came to: its hash, or (null) why it cannot be trusted. */
export interface SourceOutcome {
  srcHash: string | null;
  problem?: FerryError;
}

/**
 * Reads `read`'s bytes for an entry of `size` bytes and hands them to `emit`
 * in pieces of at most 1 MiB, `zero` marking a piece of zeros (`data` then
 * views a shared zero buffer). Always emits exactly `size` bytes, whatever the
 * source does: a source that gives fewer (or fails) is padded with zeros, one
 * that gives more is cut; either way the hash is null and `problem` says why.
 * `data` is valid only until `emit`'s promise settles.
 */
export async function readExactly(
  source: AsyncIterable<Uint8Array>,
  size: number,
  algorithm: HashAlgorithm,
  where: { host: string; path: string },
  emit: (data: Buffer, zero: boolean) => Promise<void>,
): Promise<SourceOutcome> {
  // A small file comes in one piece: hashed in one call (hashBytes), without a hasher object,
  // which cost more than the hashing itself (~0.6 s of a 20,000-file push's profile).
  let hasher: Hasher | undefined;
  let whole: string | undefined;
  let sent = 0;
  let problem: FerryError | undefined;
  /** A failure of `emit` (the destination's), not of the source: it ends the read and is thrown as it is. */
  let sinkError: { err: unknown } | undefined;
  const put = async (data: Buffer, zero: boolean) => {
    try {
      await emit(data, zero);
    } catch (err) {
      sinkError = { err };
      throw err;
    }
  };
  const send = async (chunk: Buffer) => {
    for (let at = 0; at < chunk.length; at += PIECE_BYTES) {
      const piece = chunk.subarray(at, Math.min(chunk.length, at + PIECE_BYTES));
      const zero = isAllZero(piece);
      if (sent === 0 && piece.length === size) whole = hashBytes(algorithm, piece);
      else (hasher ??= createHasher(algorithm)).update(piece);
      sent += piece.length;
      await put(zero ? ZERO_CHUNK.subarray(0, piece.length) : piece, zero);
    }
  };
  const at = `${where.host}:${where.path}`;
  try {
    for await (const chunk of source) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      if (sent + buf.length > size) {
        await send(buf.subarray(0, size - sent));
        problem = new FerryError('SOURCE_CHANGED', `the source of ${at} changed while it was read: it gave more than the ${size} bytes it had when listed; nothing was written there, copy it again`, where);
        break;
      }
      await send(buf);
    }
  } catch (err) {
    if (sinkError) throw sinkError.err;
    problem = err instanceof FerryError && err.code === 'SOURCE_CHANGED' ? err : sourceError(err, where);
  }
  if (sent < size) {
    problem ??= new FerryError('SOURCE_CHANGED', `the source of ${at} changed while it was read: it gave ${sent} of the ${size} bytes it had when listed; nothing was written there, copy it again`, where);
    while (sent < size) {
      const n = Math.min(PIECE_BYTES, size - sent);
      sent += n;
      await put(ZERO_CHUNK.subarray(0, n), true);
    }
  }
  if (problem) return { srcHash: null, problem };
  return { srcHash: whole ?? (hasher ?? createHasher(algorithm)).digest() };
}

/** Codes a helper gives errno-based destination failures (the python helper leaves their wording to core). */
const ERRNO_CODES: ReadonlySet<string> = new Set(['DEST_NO_SPACE', 'DEST_NOT_WRITABLE', 'DEST_DIR_MISSING', 'DEST_IO']);

/**
 * A failed entry's error as the caller gets it: the path named as
 * `host:path` (a helper may leave it out to fit a large answer), errno-based
 * failures worded by core's destinationError as single files are.
 */
export function entryError(error: ErrorData, entry: BatchEntry, host: string): ErrorData {
  const path = error.path ?? entry.path;
  if (error.errno && ERRNO_CODES.has(error.code)) {
    return destinationError(Object.assign(new Error(error.message), { code: error.errno }), { host, path }).toData();
  }
  const message = error.message.includes(path) ? error.message.split(path).join(`${host}:${path}`) : `${host}:${path}: ${error.message}`;
  return { ...error, message, path, host };
}
