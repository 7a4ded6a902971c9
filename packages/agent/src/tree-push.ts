/**
 * A push's batch on one connection: the entries written by the remote
 * helper, each small file read here as its bytes go out (moved from the
 * coordinator's tree-send.ts, so that agents on other nodes push batches
 * with the same code as the coordinator).
 */
import { open } from 'node:fs/promises';
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { STOP_BEFORE_READ_ENV, errnoOf, stopBeforeReadFrom } from '@ferry/core';
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

/** Test hook (core's test-hooks.ts): tree paths before whose read this process stops itself. */
const STOP_BEFORE_READ = stopBeforeReadFrom(process.env[STOP_BEFORE_READ_ENV]);

/** The test hook FERRY_TEST_STOP_BEFORE_READ: stops this process when one of `paths` (tree paths, about to be read) is named. */
export function stopBeforeRead(paths: readonly string[]): void {
  if (!STOP_BEFORE_READ) return;
  const hit = paths.find((p) => STOP_BEFORE_READ.has(p));
  if (hit === undefined) return;
  // Written synchronously (stderr is a pipe or a file): the test knows which read it stopped before.
  process.stderr.write(`ferry: test hook: stopped before reading ${hit}\n`);
  process.kill(process.pid, 'SIGSTOP');
}

/**
 * --limit-rate: accounts `bytes` about to go out and says how long to wait
 * first (a promise), or nothing when they may go at once. One such function
 * is shared by every connection of a process (core's pacer.ts), so a
 * connection between batches leaves its share to the others.
 */
export type Pace = (bytes: number) => Promise<void> | undefined;

/** A push's transfer: the batch written by the helper, each file read here as it goes out (held to `pace`, when given). */
export function pushTransfer(algorithm: HashAlgorithm, localPath: (entry: TreeEntry) => string, pace?: Pace): (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]> {
  return async (conn, batch) => {
    const readErrors = new Map<number, ErrorData>();
    // Buffers for the batch's small files, each back in `buffers` once its file's bytes are used
    // (a buffer per file was ~10% of a 20,000-file push's coordinator time in the garbage
    // collector). One does for a helper, which takes files one after the other; SFTP takes several.
    const buffers: Buffer[] = [];
    const read = (i: number) => readEntry(batch.entries[i]!, localPath, i, readErrors, buffers);
    const results = await conn.writeBatch([...batch.wire], algorithm, pace ? (i) => paced(read(i), pace) : read);
    return results.map((r, i) => (readErrors.get(i) ? { ok: false as const, error: readErrors.get(i)! } : r));
  };
}

/**
 * Files of at most this size are read whole, with synchronous calls: a batch
 * is thousands of small files, and an open, a read and a close through the
 * thread pool (three promises) cost several times the CPU of the calls
 * themselves (20,000 files: ~1.2 s against ~0.4 s).
 */
const WHOLE_FILE_BYTES = 1024 * 1024;

/** `source`'s chunks, each once `pace` lets its bytes go. */
async function* paced(source: AsyncIterable<Uint8Array>, pace: Pace): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    const wait = pace(chunk.length);
    if (wait) await wait;
    yield chunk;
  }
}

async function* readEntry(entry: TreeEntry, localPath: (entry: TreeEntry) => string, index: number, errors: Map<number, ErrorData>, buffers: Buffer[]): AsyncGenerator<Uint8Array> {
  if (entry.kind !== 'file' || entry.size === 0) return;
  const path = localPath(entry);
  stopBeforeRead([entry.path]);
  if (entry.size > WHOLE_FILE_BYTES) {
    yield* readLocal(path, entry, index, errors);
    return;
  }
  const buf = buffers.pop() ?? Buffer.allocUnsafe(WHOLE_FILE_BYTES + 1);
  try {
    const got = readWhole(path, entry.size, buf);
    if ('error' in got) errors.set(index, got.error);
    else yield got.data;
  } finally {
    // Here once the reader asks for more (or stops): it is done with the bytes.
    buffers.push(buf);
  }
}

type WholeFile = { data: Buffer } | { error: ErrorData };

function openError(path: string, err: unknown): ErrorData {
  const errno = errnoOf(err);
  return { code: errno === 'ENOENT' ? 'SOURCE_NOT_FOUND' : 'SOURCE_UNREADABLE', message: `cannot read ${path} (${errno ?? (err as Error).message})`, path, ...(errno ? { errno } : {}) };
}

function readError(path: string, err: unknown): ErrorData {
  const errno = errnoOf(err);
  return { code: 'SOURCE_UNREADABLE', message: `reading ${path} failed (${errno ?? (err as Error).message})`, path, ...(errno ? { errno } : {}) };
}

/**
 * A small file whole (one byte past its size, to tell one that grew), never
 * through a link, into `into` (at least size + 1 bytes): valid until the next
 * file is read.
 */
function readWhole(path: string, size: number, into: Buffer): WholeFile {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    return { error: openError(path, err) };
  }
  try {
    const buf = into.subarray(0, size + 1);
    let got = 0;
    for (;;) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
      if (got === buf.length) break;
    }
    return { data: buf.subarray(0, got) };
  } catch (err) {
    return { error: readError(path, err) };
  } finally {
    closeSync(fd);
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
