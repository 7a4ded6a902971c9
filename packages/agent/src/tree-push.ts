/**
 * A push's batch on one connection: the entries written by the remote
 * helper, each small file read here as its bytes go out (moved from the
 * coordinator's tree-send.ts, so that agents on other nodes push batches
 * with the same code as the coordinator).
 */
import { open } from 'node:fs/promises';
import { constants } from 'node:fs';
import { errnoOf } from '@ferry/core';
import type { BatchEntry, ErrorData, HashAlgorithm, TreeEntry } from '@ferry/core';
import type { BatchResult, RemoteConnection } from '@ferry/transport';

/** One batch as it goes on the wire: the tree's entries and their remote form, in the same order. */
export interface WireBatch {
  readonly entries: readonly TreeEntry[];
  readonly wire: readonly BatchEntry[];
  /** Bytes of content in the batch. */
  readonly bytes: number;
  attempts: number;
}

const READ_CHUNK = 1024 * 1024;

/** A push's transfer: the batch written by the helper, each file read here as it goes out. */
export function pushTransfer(algorithm: HashAlgorithm, localPath: (entry: TreeEntry) => string): (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]> {
  return async (conn, batch) => {
    const readErrors = new Map<number, ErrorData>();
    const ahead = new ReadAhead(batch.entries, localPath, readErrors);
    try {
      const results = await conn.writeBatch([...batch.wire], algorithm, (i) => ahead.read(i));
      return results.map((r, i) => (readErrors.get(i) ? { ok: false as const, error: readErrors.get(i)! } : r));
    } finally {
      ahead.close();
    }
  };
}

/** Files of at most this size are read whole, ahead of their turn... */
const READ_AHEAD_FILE_BYTES = 1024 * 1024;
/** ...up to this many of them... */
const READ_AHEAD_FILES = 32;
/** ...holding at most this many bytes. */
const READ_AHEAD_BYTES = 8 * 1024 * 1024;

type WholeFile = { data: Buffer } | { error: ErrorData };

/**
 * The small files of a batch, read a few ahead of the one going out. Each
 * file costs an open, a read and a close through the thread pool: one after
 * the other they would stand between one file's last byte and the next's
 * first, and a batch of thousands of small files would move at the pace of
 * those round trips, not of the link.
 */
class ReadAhead {
  private readonly ready = new Map<number, Promise<WholeFile>>();
  private next = 0;
  private held = 0;
  private closed = false;

  constructor(
    private readonly entries: readonly TreeEntry[],
    private readonly localPath: (entry: TreeEntry) => string,
    private readonly errors: Map<number, ErrorData>,
  ) {}

  async *read(index: number): AsyncGenerator<Uint8Array> {
    const entry = this.entries[index]!;
    if (entry.kind !== 'file' || entry.size === 0) return;
    if (entry.size > READ_AHEAD_FILE_BYTES) {
      this.fill(index + 1);
      yield* readLocal(this.localPath(entry), entry, index, this.errors);
      return;
    }
    if (this.next <= index) this.next = index;
    this.fill(index);
    const pending = this.ready.get(index);
    this.ready.delete(index);
    if (pending) this.held -= entry.size;
    const got = await (pending ?? readWhole(this.localPath(entry), entry.size));
    this.fill(index + 1);
    if ('error' in got) {
      this.errors.set(index, got.error);
      return;
    }
    yield got.data;
  }

  close(): void {
    this.closed = true;
  }

  /** Starts reading the small files from `from` on, within the limits. */
  private fill(from: number): void {
    if (this.next < from) this.next = from;
    while (!this.closed && this.next < this.entries.length && this.ready.size < READ_AHEAD_FILES) {
      const e = this.entries[this.next]!;
      if (e.kind === 'file' && e.size > 0) {
        if (e.size > READ_AHEAD_FILE_BYTES) break;
        if (this.ready.size > 0 && this.held + e.size > READ_AHEAD_BYTES) break;
        this.held += e.size;
        const p = readWhole(this.localPath(e), e.size);
        p.catch(() => {});
        this.ready.set(this.next, p);
      }
      this.next++;
    }
  }
}

function openError(path: string, err: unknown): ErrorData {
  const errno = errnoOf(err);
  return { code: errno === 'ENOENT' ? 'SOURCE_NOT_FOUND' : 'SOURCE_UNREADABLE', message: `cannot read ${path} (${errno ?? (err as Error).message})`, path, ...(errno ? { errno } : {}) };
}

function readError(path: string, err: unknown): ErrorData {
  const errno = errnoOf(err);
  return { code: 'SOURCE_UNREADABLE', message: `reading ${path} failed (${errno ?? (err as Error).message})`, path, ...(errno ? { errno } : {}) };
}

/** A small file whole (one byte past its size, to tell one that grew), never through a link. */
async function readWhole(path: string, size: number): Promise<WholeFile> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    return { error: openError(path, err) };
  }
  try {
    const buf = Buffer.allocUnsafe(size + 1);
    let got = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, null);
      if (bytesRead === 0) break;
      got += bytesRead;
      if (got === buf.length) break;
    }
    return { data: buf.subarray(0, got) };
  } catch (err) {
    return { error: readError(path, err) };
  } finally {
    await fh.close();
  }
}

/**
 * A file's bytes as they are now, never through a link. A file that cannot be
 * opened yields nothing: the batch's framing then fails just that entry, and
 * the reason recorded here replaces the wire's.
 */
async function* readLocal(path: string, entry: TreeEntry, index: number, errors: Map<number, ErrorData>): AsyncGenerator<Uint8Array> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    errors.set(index, openError(path, err));
    return;
  }
  try {
    // One byte past the size tells a file that grew since the walk.
    let left = entry.size + 1;
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, left));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      left -= bytesRead;
      yield buf.subarray(0, bytesRead);
    }
  } catch (err) {
    errors.set(index, readError(path, err));
  } finally {
    await fh.close();
  }
}
