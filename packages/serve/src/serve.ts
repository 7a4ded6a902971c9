/**
 * `ferry serve`: the helper a remote host runs over SSH. It speaks the framed
 * protocol of @ferry/core on stdin/stdout, pwrites received ranges at their
 * offsets while hashing them as received, streams ranges it is asked to read
 * with their hash, and touches only files it was asked to OPEN (writes go by
 * handle, bounded by the size the file had when opened).
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { lstat, open, rename, rmdir, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import {
  BATCH_CAPABILITY,
  TREE_META_CAPABILITY,
  HASH_ONLY_CAPABILITY,
  entryMetaOf,
  hasMeta,
  BufferPool,
  FRAME_HEADER_BYTES,
  MAX_BATCH_BODY_BYTES,
  MAX_OPEN_BATCHES,
  batchBytes,
  FerryError,
  FrameDecoder,
  FileWriter,
  FrameType,
  HASH_ALGORITHMS,
  PROTOCOL_VERSION,
  SAFE_FILES_CAPABILITY,
  Semaphore,
  SerialQueue,
  TREE_READ_CAPABILITY,
  ZERO_CHUNK,
  createHasher,
  hashBytes,
  isAllZero,
  destinationError,
  COPY_RANGE_CAPABILITY,
  XATTRS_EXACT_CAPABILITY,
  WALK_HASH_CAPABILITY,
  sourceError,
  encodeControl,
  errnoOf,
  hashStoredThrough,
  openDirectAuto,
  parseHubKey,
  pwriteAll,
  toFerryError,
  writeHeader,
} from '@ferry/core';
import type { CopyRangeBody, BatchBody, BatchEntry, BatchEntryResult, ControlFrame, DecodedFrame, ErrorBody, HashAlgorithm, Hasher, OkBody, OpenBody, ReadBatchBody, ReadBatchEntry, StatResult, TreeEntry, WalkBody, WireTreeEntry, WireWalkItem } from '@ferry/core';
import { walkTree } from './walk.js';
import { PendingLimit } from './pending.js';
import { applyPathMeta, setModeTimesAt } from './meta.js';
import { globPaths } from './glob.js';
import { BatchWriter, MAX_HELD_FILES } from './batch.js';

const MiB = 1024 * 1024;
/** Pending writes a session may always hold, and holds before it knows its rate (pending.ts). */
const MIN_PENDING_BYTES = 16 * MiB;
/** Pending writes a fast session may hold: ~0.6 s of a 200 MB/s stream, the length of a long storage stall. */
const MAX_PENDING_BYTES = 128 * MiB;
/** Seconds of a session's input rate its pending writes may stand for. */
const PENDING_SECONDS = 1;
/** Chunks a READ reads ahead of what it has sent. */
const READ_AHEAD = 3;
/**
 * WRITEs that may hold a gather buffer at once. Each holds up to a chunk
 * (1 MiB) while its DATA trickles in; beyond this, the one that has held its
 * buffer longest writes what it has now. A client streams one range at a time
 * per session, so this only bites a client that opens writes by the thousand.
 */
export const MAX_GATHERING = 8;
/**
 * WRITEs a session may have open (announced, not all their bytes received).
 * Each costs a hasher and a little bookkeeping; a client that opens more is
 * not ferry's, and the session ends with a PROTOCOL error.
 */
export const MAX_OPEN_WRITES = 256;
/** Temporary files of a BATCH open at once, at most (written, waiting for the batch's sync). */
export const MAX_BATCH_OPEN_FILES = MAX_HELD_FILES;
/** A walk's items go out in ENTRIES frames of at most this many... */
const WALK_CHUNK_ITEMS = 1024;
/** ...and about this many bytes (well within MAX_BATCH_BODY_BYTES: one more item never overflows it)... */
const WALK_CHUNK_BYTES = 256 * 1024;
/** ...or once the first item has waited this long (a slow file system still shows progress). */
const WALK_CHUNK_MS = 100;
/** Ids of failed WRITEs whose DATA is still dropped; the oldest are forgotten beyond this. */
const MAX_DISCARDED = 4096;
/** Bytes per read and write of a COPY_RANGE. */
const COPY_CHUNK_BYTES = 4 * MiB;

export interface ServeOptions {
  input: Readable;
  output: Writable;
  /** Size of the buffers writes are gathered into before each pwrite. @default 1 MiB */
  chunkBytes?: number;
  /**
   * Most bytes of pwrites pending before input is paused; the limit follows the
   * session's input rate between 16 MiB and this (pending.ts). @default 128 MiB
   */
  maxPendingBytes?: number;
  software?: string;
  /**
   * Asked for in HELLO (`hub: true` with a `hubKey`): opens, once, a socket for
   * further sessions that prove they know `key` (hub.ts) and resolves with its
   * path, which HELLO's answer carries. Absent, or HELLO without a key: no socket.
   */
  openHub?: (key: Buffer) => Promise<string>;
  /** Called with the session's memory accounting after each input chunk (tests). */
  onMemory?: (memory: ServeMemory) => void;
  /**
   * Why sshd's pipes to this helper stay smaller than asked (growPipes in
   * pipes.ts), or undefined once they have grown. OPEN's answer carries the
   * reason (`pipesReason`) for the client to report. Absent for sessions not
   * on sshd's pipes (the joined sessions of a shared helper).
   */
  pipes?: Promise<string | undefined>;
}

/** What a session holds in memory for writes, as it counts it. */
export interface ServeMemory {
  /** Bytes of writes handed to the disk and not done (what pauses input at the pending limit). */
  pendingBytes: number;
  /** WRITEs holding a gather buffer. */
  gathering: number;
  /** WRITEs open (announced, not all bytes received). */
  openWrites: number;
  /** Buffers of the session's pool in use, and how many it has (its memory is bufferBytes times that). */
  poolInUse: number;
  poolBuffers: number;
  /** Bytes allocated outside the pool for pieces that came while every pool buffer was out; 0 once written. */
  outsidePoolBytes: number;
}

/** Where an Upload's bytes go: an open file, or the temporary file of a BATCH entry. */
interface WriteTarget {
  path: string;
  writer: Pick<FileWriter, 'write' | 'zero'>;
  /** Writes (and zeroings) handed to `writer` and not finished: FSYNC and CLOSE wait for them. */
  writing: Set<Promise<void>>;
  /**
   * The first write that failed after its WRITE was answered: every later WRITE, FSYNC and
   * CLOSE of this handle fails with it, so no range written through it can become durable.
   */
  writeError: FerryError | undefined;
}

interface OpenFile extends WriteTarget {
  fh: FileHandle;
  path: string;
  size: number;
  writable: boolean;
  /** This file's writes, one at a time, aligned ones with O_DIRECT when OPEN asked for it. */
  writer: FileWriter;
  /** Writes (and zeroings) handed to `writer` and not finished: FSYNC and CLOSE wait for them. */
  writing: Set<Promise<void>>;
  /**
   * The first write that failed after its WRITE was answered: every later WRITE, FSYNC and
   * CLOSE of this handle fails with it, so no range written through it can become durable.
   */
  writeError: FerryError | undefined;
}

interface Upload {
  id: number;
  file: WriteTarget;
  offset: number;
  length: number;
  received: number;
  hasher: Hasher;
  /** Buffer being filled, and the file offset of its first byte. */
  buf: Buffer | undefined;
  fill: number;
  bufOffset: number;
  error: FerryError | undefined;
  /** OK sent: every byte arrived and was hashed, and its writes are on their way (FSYNC waits for them). */
  answered: boolean;
}

/** A BATCH from its frame to its answer. */
interface Batch {
  id: number;
  /** Its files written as their bytes come (batch.ts). */
  writer: BatchWriter;
  /** Sizes of its files, in entry order: their bytes come in this order. */
  sizes: number[];
  /** The file receiving bytes now, and what it has. */
  cursor: number;
  cursorReceived: number;
  total: number;
  received: number;
  /** COMMIT arrived: no more bytes. */
  committed: boolean;
}


/** Bytes an entry's extended attributes add to an ENTRIES frame, about. */
function xattrBytes(e: TreeEntry): number {
  let n = 0;
  for (const [k, v] of Object.entries(e.xattrs ?? {})) n += k.length + v.length + 8;
  return n;
}

/**
 * A walked file's hash for WALK's `hash` (WALK_HASH_CAPABILITY), read whole
 * with synchronous calls into `buf` (at least `entry.size + 1` bytes), never
 * through a link; undefined when it cannot be read, or is no longer the file
 * the walk found (another inode, another size): the client then hashes it
 * with a READ_BATCH, which reports why.
 */
function walkHash(path: string, entry: TreeEntry, algorithm: HashAlgorithm, buf: Buffer): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.ino !== entry.ino || st.dev !== entry.dev || st.size !== entry.size) return undefined;
    let n = 0;
    // One byte past the size tells a file that grew since its lstat.
    for (;;) {
      const got = readSync(fd, buf, n, entry.size + 1 - n, n);
      if (got === 0) break;
      n += got;
      if (n > entry.size) return undefined;
    }
    return n === entry.size ? hashBytes(algorithm, buf.subarray(0, n)) : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * A walk that hashes (WALK's `hash`) stops hashing once WALK_HASH_SLOW_CHUNKS
 * chunks of WALK_HASH_CHUNK files in a row took more than WALK_HASH_SLOW_US a
 * file (a file in the page cache takes some tens of microseconds; one slow
 * chunk is more often another process taking the CPU).
 */
const WALK_HASH_CHUNK = 64;
const WALK_HASH_SLOW_US = 1000;
const WALK_HASH_SLOW_CHUNKS = 3;

/** A walk's entry as ENTRIES carries it: only the fields that are set. */
function wireEntry(e: TreeEntry): WireWalkItem {
  return {
    path: e.path,
    kind: e.kind,
    size: e.size,
    mode: e.mode,
    uid: e.uid,
    gid: e.gid,
    mtimeMs: e.mtimeMs,
    atimeMs: e.atimeMs,
    dev: e.dev,
    ino: e.ino,
    nlink: e.nlink,
    ...(e.target === undefined ? {} : { target: e.target }),
    ...(e.allocated === undefined ? {} : { allocated: e.allocated }),
    ...entryMetaOf({ ...(e.user === undefined ? {} : { user: e.user }), ...(e.group === undefined ? {} : { group: e.group }), ...(e.xattrs === undefined ? {} : { xattrs: e.xattrs }) }),
  };
}

export function statOf(st: import('node:fs').Stats): StatResult {
  return {
    type: st.isFile() ? 'file' : st.isDirectory() ? 'directory' : 'other',
    size: st.size,
    mode: st.mode & 0o7777,
    mtimeMs: Math.floor(st.mtimeMs),
    ino: st.ino,
    dev: st.dev,
    uid: st.uid,
    nlink: st.nlink,
  };
}

/**
 * A COMMIT's results as they fit in one answer (MAX_BATCH_BODY_BYTES): a few
 * thousand failures with long paths in their messages could not, so then
 * each failure keeps its code, errno and a short message, and the client
 * names the path from its own entry.
 */
export function fitResults(results: BatchEntryResult[]): BatchEntryResult[] {
  if (encodeControl('OK', 0, { results }).length <= MAX_BATCH_BODY_BYTES) return results;
  return results.map((r) => (r.ok ? r : { ok: false, error: { code: r.error.code, message: r.error.errno ?? r.error.code, ...(r.error.errno ? { errno: r.error.errno } : {}) } }));
}

/** The helper's umask (what a file created without an explicit mode gets), for modes as scp sets them. */
function currentUmask(): number {
  return process.umask();
}

/** Runs one helper session until input ends. Resolves when everything pending is written. */
export async function serve(options: ServeOptions): Promise<void> {
  const { input, output } = options;
  const chunkBytes = options.chunkBytes ?? 1024 * 1024;
  const maxPendingBytes = options.maxPendingBytes ?? MAX_PENDING_BYTES;
  const pendingLimit = new PendingLimit(Math.min(MIN_PENDING_BYTES, maxPendingBytes), maxPendingBytes, PENDING_SECONDS, performance.now());
  // Aligned, so that a file opened with `direct` can take the gathered chunks with O_DIRECT.
  // Only the buffers in use at once are ever touched: a slow session's stay untouched.
  // Room for the pending writes at the limit, the gather buffers, and a few reads.
  const pool = new BufferPool(FRAME_HEADER_BYTES + chunkBytes, Math.ceil(maxPendingBytes / chunkBytes) + MAX_GATHERING + 4, { aligned: true });
  /** WRITEs holding a gather buffer, the longest-holding first. */
  const gathering = new Set<Upload>();
  let outsidePoolBytes = 0;
  const files = new Map<number, OpenFile>();
  const uploads = new Map<number, Upload>();
  /** BATCHes announced and not yet answered, and the one whose bytes are arriving (one at a time). */
  const batches = new Map<number, Batch>();
  let receiving: Batch | undefined;
  const discarded = new Set<number>();
  let nextHandle = 1;
  let pendingBytes = 0;
  let paused = false;
  let fatal: FerryError | undefined;
  let drainWaiters: Array<() => void> = [];
  const work = new Set<Promise<unknown>>();

  const wake = () => {
    const w = drainWaiters;
    drainWaiters = [];
    for (const f of w) f();
  };
  output.on('drain', wake);
  // A client gone mid-answer: nothing more can be sent, and nothing may wait for a drain
  // that will not come (a shared helper would otherwise keep its socket open for good).
  let outputGone = false;
  const gone = () => {
    outputGone = true;
    wake();
  };
  output.on('close', gone);
  output.on('error', gone);

  const send = (buf: Buffer, done?: () => void): Promise<void> => {
    if (outputGone) {
      done?.();
      return Promise.resolve();
    }
    const ok = output.write(buf, done ? () => done() : undefined);
    return ok ? Promise.resolve() : new Promise((resolve) => drainWaiters.push(resolve));
  };
  const reply = (id: number, body: OkBody) => void send(encodeControl('OK', id, body));
  const replyError = (id: number, err: unknown) => {
    const e = toFerryError(err);
    const body: ErrorBody = e.toData();
    void send(encodeControl('ERROR', id, body));
  };
  const track = (p: Promise<unknown>) => {
    work.add(p);
    void p.finally(() => work.delete(p));
  };
  const fileOf = (handle: number): OpenFile => {
    const f = files.get(handle);
    if (!f) throw new FerryError('PROTOCOL', `unknown file handle ${handle}`);
    return f;
  };
  const checkBounds = (f: OpenFile, offset: number, length: number) => {
    if (offset + length > f.size) {
      throw new FerryError('PROTOCOL', `range [${offset}, ${offset + length}) lies beyond the end (${f.size}) of ${f.path}`, { path: f.path });
    }
  };

  const setPending = (delta: number) => {
    pendingBytes += delta;
    const limit = pendingLimit.bytes;
    if (!paused && pendingBytes >= limit) {
      paused = true;
      input.pause();
    } else if (paused && pendingBytes < limit / 2) {
      paused = false;
      input.resume();
    }
  };

  // A WRITE is answered once its bytes are in and hashed, not once they are written: the
  // client's next range starts while the disk catches up (a virtual disk's flush can hold
  // writes for most of a second, and a stream waiting at each range end for it would stop).
  // Nothing is lost by it: a range counts as done only after the FSYNC that follows it, which
  // waits for these writes and fails if one of them did (writeError).
  const finishUpload = (u: Upload) => {
    if (u.answered || u.error || u.received < u.length || u.buf !== undefined) return;
    u.answered = true;
    uploads.delete(u.id);
    reply(u.id, { bytes: u.received, hash: u.hasher.digest() });
  };

  /** A write of `u` failed: its WRITE fails, or, if already answered, the file's later FSYNC does. */
  const failWrite = (u: Upload, err: unknown) => {
    if (!u.answered) return failUpload(u, err);
    u.file.writeError ??= err instanceof FerryError ? err : destinationError(err, { path: u.file.path });
  };

  /** Runs `write`, one of `u`'s writes of `n` bytes, counted as pending until it ends. */
  const trackWrite = (u: Upload, n: number, write: () => Promise<void>) => {
    setPending(n);
    const p = (async () => {
      try {
        await write();
      } catch (err) {
        failWrite(u, err);
      } finally {
        setPending(-n);
      }
    })();
    const { writing } = u.file;
    writing.add(p);
    void p.finally(() => writing.delete(p));
    track(p);
  };

  /**
   * Waits for the writes of `f` in progress now (those of every WRITE answered so far; not
   * those started later, or a stream that never pauses would hold an FSYNC back for good);
   * throws if a write failed after its WRITE was answered.
   */
  const settleWrites = async (f: OpenFile) => {
    await Promise.allSettled([...f.writing]);
    if (f.writeError) throw f.writeError;
  };

  const failUpload = (u: Upload, err: unknown) => {
    if (u.error) return;
    u.error = err instanceof FerryError ? err : destinationError(err, { path: u.file.path });
    if (u.buf) {
      pool.release(u.buf);
      u.buf = undefined;
      gathering.delete(u);
    }
    uploads.delete(u.id);
    if (u.received < u.length) discard(u.id);
    replyError(u.id, u.error);
  };

  const flush = (u: Upload) => {
    const buf = u.buf!;
    const n = u.fill;
    const at = u.bufOffset;
    u.buf = undefined;
    u.fill = 0;
    gathering.delete(u);
    // Pending counts the buffer held, not the bytes in it: a one-byte write holds a whole chunk.
    trackWrite(u, chunkBytes, async () => {
      try {
        await u.file.writer.write(buf, n, at);
      } finally {
        pool.release(buf);
      }
    });
  };

  /** A run of zeros: written only where the file does not already read as zeros (a fresh sparse file does). */
  const ensureZeros = (u: Upload, at: number, n: number) => {
    trackWrite(u, n, async () => {
      const buf = await pool.acquire();
      try {
        await u.file.writer.zero(buf, n, at);
      } finally {
        pool.release(buf);
      }
    });
  };

  const onZeros = (id: number, n: number) => {
    if (discarded.has(id)) return;
    const b = batches.get(id);
    if (b) return onBatchBytes(b, n);
    const u = uploads.get(id);
    if (!u) throw new FerryError('PROTOCOL', `ZEROS for unknown request ${id}`);
    if (u.received + n > u.length) throw new FerryError('PROTOCOL', `ZEROS for request ${id} overruns its length ${u.length}`);
    receiveZeros(u, n);
  };

  /** A run of `n` zeros for `u`, within its length. A BATCH's file is a hole there already (sized at creation): nothing to write. */
  const receiveZeros = (u: Upload, n: number) => {
    u.hasher.update(ZERO_CHUNK.subarray(0, n));
    pendingLimit.received(n, performance.now());
    if (u.buf && u.fill > 0) flush(u);
    else if (u.buf) {
      pool.release(u.buf);
      u.buf = undefined;
      gathering.delete(u);
    }
    const at = u.offset + u.received;
    u.received += n;
    if (n > 0 && !u.error) ensureZeros(u, at, n);
    finishUpload(u);
  };

  const onData = (frame: Extract<DecodedFrame, { type: 'DATA' }>) => {
    if (discarded.has(frame.id)) {
      if (frame.remaining === 0) {
        // The sender cannot know where its data stopped being wanted; the id is forgotten
        // once a whole frame boundary passes after the WRITE's declared length.
      }
      return;
    }
    const b = batches.get(frame.id);
    if (b) return onBatchBytes(b, frame.chunk);
    const u = uploads.get(frame.id);
    if (!u) throw new FerryError('PROTOCOL', `DATA for unknown request ${frame.id}`);
    if (u.received + frame.chunk.length > u.length) throw new FerryError('PROTOCOL', `DATA for request ${frame.id} overruns its length ${u.length}`);
    receive(u, frame.chunk);
  };

  /** A piece of `u`'s bytes, within its length: hashed, gathered into pool buffers and written in chunks. */
  const receive = (u: Upload, data: Buffer) => {
    let piece = data;
    u.hasher.update(piece);
    pendingLimit.received(piece.length, performance.now());
    while (piece.length > 0) {
      if (!u.buf) {
        // Gather buffers are few: the write that has held one longest writes what it has now.
        const oldest = gathering.size >= MAX_GATHERING ? gathering.values().next().value : undefined;
        if (oldest) flush(oldest);
        const b = pool.tryAcquire();
        if (!b) {
          // Every pool buffer is out (reads, writes at the disk): this piece goes to the disk now,
          // from a copy of its own size, counted as pending like any write. Never a new chunk-sized
          // buffer: they were what let a client pile up gigabytes.
          const copy = Buffer.from(piece);
          const at = u.offset + u.received;
          outsidePoolBytes += copy.length;
          trackWrite(u, copy.length, async () => {
            try {
              await u.file.writer.write(copy, copy.length, at);
            } finally {
              outsidePoolBytes -= copy.length;
            }
          });
          u.received += copy.length;
          break;
        }
        u.buf = b;
        gathering.add(u);
        u.bufOffset = u.offset + u.received;
        u.fill = 0;
      }
      const n = Math.min(chunkBytes - u.fill, piece.length);
      piece.copy(u.buf, u.fill, 0, n);
      u.fill += n;
      u.received += n;
      piece = piece.subarray(n);
      if (u.fill === chunkBytes || u.received === u.length) flush(u);
    }
    if (u.received === u.length && u.buf === undefined) finishUpload(u);
  };

  /** Bytes of the BATCH `b` (a DATA piece, or a run of `data` zeros), split among its files in entry order. */
  const onBatchBytes = (b: Batch, data: Buffer | number) => {
    const n = typeof data === 'number' ? data : data.length;
    if (b !== receiving) throw new FerryError('PROTOCOL', `${typeof data === 'number' ? 'ZEROS' : 'DATA'} for batch ${b.id} after its COMMIT`);
    if (b.received + n > b.total) throw new FerryError('PROTOCOL', `${typeof data === 'number' ? 'ZEROS' : 'DATA'} for batch ${b.id} overruns its files' ${b.total} bytes`);
    b.received += n;
    pendingLimit.received(n, performance.now());
    let at = 0;
    while (at < n) {
      const k = Math.min(b.sizes[b.cursor]! - b.cursorReceived, n - at);
      if (k === 0) {
        b.cursor++;
        b.cursorReceived = 0;
        continue;
      }
      if (typeof data === 'number') b.writer.zeros(b.cursor, k, ZERO_CHUNK);
      else b.writer.data(b.cursor, data.subarray(at, at + k));
      b.cursorReceived += k;
      at += k;
    }
  };

  const startBatch = (id: number, body: BatchBody) => {
    if (uploads.has(id) || batches.has(id)) throw new FerryError('PROTOCOL', `request id ${id} is already in use`);
    if (receiving) throw new FerryError('PROTOCOL', `BATCH ${id} before the COMMIT of batch ${receiving.id}: one batch's bytes at a time`);
    if (batches.size >= MAX_OPEN_BATCHES) throw new FerryError('PROTOCOL', `more than ${MAX_OPEN_BATCHES} BATCHes open at once in one session`);
    const writer = new BatchWriter(body.entries, body.algorithm);
    const sizes = writer.files.map((f) => f.size);
    const b: Batch = { id, writer, sizes, cursor: 0, cursorReceived: 0, total: batchBytes(body.entries), received: 0, committed: false };
    batches.set(id, b);
    receiving = b;
    // Directories first (a BATCH lists one before what lands in it); files are made as their bytes come.
    writer.makeDirectories();
  };

  /**
   * COMMIT: each file whose hashes agree is renamed over its path, symbolic
   * and hard links are made, and the batch is made durable; one answer with a
   * result per entry.
   */
  const commitBatch = async (b: Batch, srcHashes: Array<string | null>): Promise<OkBody> => ({ results: fitResults(await b.writer.commit(srcHashes)) });

  /** Remembers a failed WRITE whose DATA is still to be dropped; forgets the oldest beyond MAX_DISCARDED. */
  const discard = (id: number) => {
    discarded.add(id);
    if (discarded.size > MAX_DISCARDED) discarded.delete(discarded.values().next().value!);
  };

  /**
   * READ (and HASH of a file opened for reading): the range in chunks, each
   * hashed and sent in order. Reads run up to READ_AHEAD chunks ahead of the
   * sending, so the disk (or the page cache's copy) works while the pipe to
   * sshd drains, instead of each waiting for the other.
   */
  const doRead = async (id: number, f: OpenFile, offset: number, length: number, hasher: Hasher, sendData: boolean) => {
    const readChunk = async (at: number): Promise<{ buf: Buffer; n: number }> => {
      const buf = await pool.acquire();
      const want = Math.min(chunkBytes, length - at);
      let n = 0;
      try {
        while (n < want) {
          const { bytesRead } = await f.fh.read(buf, FRAME_HEADER_BYTES + n, want - n, offset + at + n);
          if (bytesRead === 0) {
            throw new FerryError('SOURCE_CHANGED', `${f.path} ended at ${offset + at + n}, before the end of the range [${offset}, ${offset + length}): the file shrank`, { path: f.path });
          }
          n += bytesRead;
        }
      } catch (err) {
        pool.release(buf);
        throw err instanceof FerryError ? err : sourceError(err, { path: f.path });
      }
      return { buf, n };
    };
    const ahead: Array<Promise<{ buf: Buffer; n: number }>> = [];
    let next = 0;
    const fill = () => {
      while (ahead.length < READ_AHEAD && next < length) {
        const p = readChunk(next);
        p.catch(() => {});
        ahead.push(p);
        next += Math.min(chunkBytes, length - next);
      }
    };
    try {
      fill();
      while (ahead.length > 0) {
        const { buf, n } = await ahead.shift()!;
        fill();
        const data = buf.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + n);
        hasher.update(data);
        if (sendData && isAllZero(data)) {
          pool.release(buf);
          await send(encodeControl('ZEROS', id, { length: n }));
        } else if (sendData) {
          writeHeader(buf, 0, FrameType.DATA, id, n);
          await send(buf.subarray(0, FRAME_HEADER_BYTES + n), () => pool.release(buf));
        } else pool.release(buf);
      }
    } finally {
      // A failed range: the reads still on their way give their buffers back.
      for (const p of ahead.splice(0)) void p.then(({ buf }) => pool.release(buf), () => {});
    }
    reply(id, { bytes: length, hash: hasher.digest() });
  };

  /**
   * HASH of a file open for writing (`--verify`): its bytes as the storage
   * holds them, read back around the page cache where the file is written with
   * O_DIRECT (FileWriter.hashStored).
   */
  const hashStored = async (id: number, f: OpenFile, offset: number, length: number, algorithm: HashAlgorithm) => {
    reply(id, { bytes: length, hash: await hashStoredThrough(f.writer, pool, f.path, offset, length, algorithm) });
  };

  /**
   * COPY_RANGE (`--delta`): a range of the old destination file into the open
   * new one, at the same offset, read and written here and hashed on the way
   * (node has no copy_file_range of a range). The old file is never reached
   * through a link at its name, and must be a regular file still that long.
   */
  const copyRange = async (body: CopyRangeBody): Promise<OkBody> => {
    const f = fileOf(body.handle);
    if (!f.writable) throw new FerryError('PROTOCOL', `COPY_RANGE into ${f.path}, which was opened read-only`);
    checkBounds(f, body.offset, body.length);
    let from: FileHandle;
    try {
      from = await open(body.from, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      if (errnoOf(err) === 'ELOOP') throw new FerryError('DEST_CONFLICT', `${body.from} is a symbolic link now: its ranges are not reused`, { path: body.from });
      throw sourceError(err, { path: body.from });
    }
    try {
      if (!(await from.stat()).isFile()) throw new FerryError('DEST_CONFLICT', `${body.from} is not a regular file: its ranges are not reused`, { path: body.from });
      const hasher = createHasher(body.algorithm);
      const buf = Buffer.allocUnsafe(Math.min(Math.max(body.length, 1), COPY_CHUNK_BYTES));
      let done = 0;
      while (done < body.length) {
        const want = Math.min(buf.length, body.length - done);
        const { bytesRead } = await from.read(buf, 0, want, body.offset + done);
        if (bytesRead === 0) throw new FerryError('DEST_REPLACED', `${body.from} ended at ${body.offset + done} bytes, within the range being reused: it changed`, { path: body.from });
        const piece = buf.subarray(0, bytesRead);
        hasher.update(piece);
        let written = 0;
        try {
          while (written < bytesRead) written += (await f.fh.write(piece, written, bytesRead - written, body.offset + done + written)).bytesWritten;
        } catch (err) {
          throw destinationError(err, { path: f.path });
        }
        done += bytesRead;
      }
      return { bytes: done, hash: hasher.digest() };
    } finally {
      await from.close().catch(() => {});
    }
  };

  const openFile = async (body: OpenBody): Promise<OkBody> => {
    let fh: FileHandle;
    // Destination files are never reached through a symbolic link: in a directory others can
    // write, one planted at the name would have ferry write (and chmod) whatever it points at.
    if (body.policy === 'create') {
      try {
        // Read as well as written: a ZEROS run is only written where the file does not read as zeros.
        // `exclusive`: a new file or nothing (EEXIST), whatever another user planted at the name.
        const how = body.exclusive === true ? constants.O_EXCL : constants.O_TRUNC;
        fh = await open(body.path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW | how, body.mode ?? (body.exclusive === true ? 0o600 : 0o644));
        await fh.truncate(body.size ?? 0);
      } catch (err) {
        throw destinationError(err, { path: body.path });
      }
    } else if (body.policy === 'write') {
      try {
        fh = await open(body.path, constants.O_RDWR | constants.O_NOFOLLOW);
      } catch (err) {
        throw destinationError(err, { path: body.path });
      }
    } else {
      try {
        fh = await open(body.path, 'r');
      } catch (err) {
        throw sourceError(err, { path: body.path });
      }
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new FerryError('PROTOCOL', `${body.path} is not a regular file`, { path: body.path });
    }
    let writer = new FileWriter(fh);
    let directReason: string | undefined;
    if ((body.direct === true || body.direct === 'auto') && body.policy === 'write') {
      // The open file a second time (through /proc/self/fd), not its name again.
      const d = await openDirectAuto(body.path, body.direct, fh);
      if ('fh' in d) writer = new FileWriter(fh, d.fh);
      else directReason = d.reason;
    }
    const handle = nextHandle++;
    files.set(handle, { fh, path: body.path, size: st.size, writable: body.policy !== 'read', writer, writing: new Set(), writeError: undefined });
    const pipesReason = await options.pipes;
    const pipes = pipesReason === undefined ? {} : { pipesReason };
    const base = { handle, size: st.size, stat: statOf(st), ...pipes };
    if (body.direct === undefined || body.direct === false) return base;
    return { ...base, direct: writer.direct, ...(directReason ? { directReason } : {}) };
  };

  /**
   * RENAME with a handle: `from` must be the handle's file just before, and
   * `to` just after. There is no rename-if-same-inode in Linux, so a swap in
   * between is not prevented; it is found, and reported, at once.
   */
  const renameChecked = async (f: OpenFile, from: string, to: string) => {
    const mine = await f.fh.stat();
    const sameAs = async (path: string, when: string) => {
      let st;
      try {
        st = await lstat(path);
      } catch (err) {
        throw new FerryError('DEST_REPLACED', `${path} is gone ${when} (${errnoOf(err) ?? (err as Error).message})`, { path });
      }
      const problem = st.isSymbolicLink() ? 'a symbolic link' : !st.isFile() ? 'something that is not a regular file' : st.ino !== mine.ino || st.dev !== mine.dev ? `another file (inode ${st.ino}, not ${mine.ino})` : undefined;
      if (problem) throw new FerryError('DEST_REPLACED', `found ${problem} at ${path} ${when}`, { path });
    };
    await sameAs(from, 'before the rename');
    try {
      await rename(from, to);
    } catch (err) {
      throw destinationError(err, { path: to });
    }
    await sameAs(to, 'after the rename');
  };

  /**
   * WALK: the tree under `root` (walk.ts: lstat, parents first, hard links
   * by device and inode) in ENTRIES frames, then an OK. Each frame waits for
   * the client to take the one before (the SSH window), and the walker for
   * each frame, so a walk of millions of entries holds a few thousand.
   */
  const walkTo = async (id: number, root: string, wanted: WalkBody) => {
    let items: WireWalkItem[] = [];
    let bytes = 0;
    let first = 0;
    let count = 0;
    const flush = async () => {
      if (items.length === 0) return;
      const out = items;
      items = [];
      bytes = 0;
      await send(encodeControl('ENTRIES', id, { items: out }));
    };
    const meta = wanted.names || wanted.xattrs || wanted.acls ? { names: wanted.names === true, ...(wanted.xattrs || wanted.acls ? { xattrs: { xattrs: wanted.xattrs === true, acls: wanted.acls === true } } : {}) } : undefined;
    const hashing = wanted.hash === undefined ? undefined : { algorithm: wanted.hash, maxBytes: wanted.hashMaxBytes ?? 0, buf: Buffer.allocUnsafe((wanted.hashMaxBytes ?? 0) + 1), on: true, files: 0, spent: 0, slowChunks: 0 };
    for await (const item of walkTree(root, meta ? { meta } : {})) {
      if (outputGone) return;
      const wire: WireWalkItem = 'error' in item ? { path: item.path, error: { code: item.error.code, message: item.error.message } } : wireEntry(item.entry);
      if (hashing?.on && 'entry' in item && item.entry.kind === 'file' && item.entry.size <= hashing.maxBytes) {
        const t0 = performance.now();
        const hash = walkHash(item.entry.path === '' ? root : join(root, item.entry.path), item.entry, hashing.algorithm, hashing.buf);
        if (hash !== undefined) (wire as WireTreeEntry).hash = hash;
        // Only the hashing counts: not the walk between files, nor waits for the client to take frames.
        hashing.spent += performance.now() - t0;
        // On a file system that answers over a network, one file at a time is slow: the client's
        // READ_BATCHes on several connections do the rest (entries without a hash), at once.
        if (++hashing.files === WALK_HASH_CHUNK) {
          hashing.slowChunks = (hashing.spent * 1000) / WALK_HASH_CHUNK > WALK_HASH_SLOW_US ? hashing.slowChunks + 1 : 0;
          hashing.files = 0;
          hashing.spent = 0;
          if (hashing.slowChunks >= WALK_HASH_SLOW_CHUNKS) hashing.on = false;
        }
      }
      if (items.length === 0) first = performance.now();
      items.push(wire);
      count++;
      // UTF-16 length times 3 bounds the UTF-8 bytes; the rest of an item's fields are a few dozen bytes.
      bytes += 3 * ('entry' in item ? item.entry.path.length + (item.entry.target?.length ?? 0) : item.path.length + item.error.message.length) + 160 + ('entry' in item ? xattrBytes(item.entry) : 0) + (('hash' in wire && wire.hash?.length) || 0);
      if (items.length >= WALK_CHUNK_ITEMS || bytes >= WALK_CHUNK_BYTES || performance.now() - first >= WALK_CHUNK_MS) await flush();
    }
    await flush();
    reply(id, { size: count });
  };

  /** READ_BATCHes queued or being sent: their bytes go out one batch after another. */
  let readBatches = 0;
  const readQueue = new SerialQueue();

  /**
   * READ_BATCH: each file's bytes in entry order, exactly its listed size
   * (a file that changed since it was listed is padded or cut, and fails
   * alone with SOURCE_CHANGED), then one OK with a result per file.
   */
  const readBatch = async (id: number, body: ReadBatchBody): Promise<OkBody> => {
    const results: BatchEntryResult[] = [];
    for (const e of body.entries) {
      if (outputGone) break;
      results.push(await readBatchFile(id, e, body.algorithm, body.hashOnly === true));
    }
    return { results: fitResults(results) };
  };

  /** One file of a READ_BATCH: its bytes sent (none with `hashOnly`: only hashed), then its result. */
  const readBatchFile = async (id: number, e: ReadBatchEntry, algorithm: HashAlgorithm, hashOnly: boolean): Promise<BatchEntryResult> => {
    let sent = 0;
    const pad = async () => {
      while (!hashOnly && sent < e.size) {
        const n = Math.min(ZERO_CHUNK.length, e.size - sent);
        sent += n;
        await send(encodeControl('ZEROS', id, { length: n }));
      }
    };
    const failed = async (err: unknown): Promise<BatchEntryResult> => {
      await pad();
      return { ok: false, error: toFerryError(err).toData() };
    };
    const changed = (why: string) => new FerryError('SOURCE_CHANGED', `${e.path} changed since it was listed (${why}): not copied; copy it again`, { path: e.path });
    /** Sends the `n` bytes read into `buf` (after its frame header's room), or ZEROS for a run of zeros; `hashed`: already hashed. */
    const sendRead = async (buf: Buffer, n: number, hashed = false) => {
      const data = buf.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + n);
      if (!hashed) hasher().update(data);
      sent += n;
      if (hashOnly) pool.release(buf);
      else if (n > 0 && isAllZero(data)) {
        pool.release(buf);
        await send(encodeControl('ZEROS', id, { length: n }));
      } else if (n > 0) {
        writeHeader(buf, 0, FrameType.DATA, id, n);
        await send(buf.subarray(0, FRAME_HEADER_BYTES + n), () => pool.release(buf));
      } else pool.release(buf);
    };
    // Created at the first chunk of a big file: a small one is hashed in one call (hashBytes), and
    // a hasher object (an Xxh3 state) costs more than hashing a few KiB.
    let streaming: Hasher | undefined;
    const hasher = () => (streaming ??= createHasher(algorithm));
    // A file smaller than one chunk (most of a tree): read whole with synchronous calls, one byte
    // past its size to tell one that grew. Through the thread pool, its open, fstat, two reads and
    // close cost several times the CPU of the calls themselves.
    if (e.size < chunkBytes) {
      let fd: number;
      try {
        fd = openSync(e.path, constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch (err) {
        return failed(errnoOf(err) === 'ELOOP' ? changed('it is a symbolic link now') : sourceError(err, { path: e.path }));
      }
      let n = 0;
      let buf: Buffer | undefined;
      try {
        if (!fstatSync(fd).isFile()) return await failed(changed('it is no longer a regular file'));
        buf = await pool.acquire();
        for (;;) {
          const got = readSync(fd, buf, FRAME_HEADER_BYTES + n, e.size + 1 - n, n);
          if (got === 0) break;
          n += got;
          if (n > e.size) break;
        }
      } catch (err) {
        if (buf) pool.release(buf);
        return failed(sourceError(err, { path: e.path }));
      } finally {
        closeSync(fd);
      }
      if (n > e.size) {
        pool.release(buf);
        return failed(changed(`it holds more than ${e.size} bytes`));
      }
      const hash = hashBytes(algorithm, buf.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + n));
      await sendRead(buf, n, true);
      if (n < e.size) return failed(changed(`it ended at ${n} of ${e.size} bytes`));
      return { ok: true, hash };
    }
    let fh: FileHandle;
    try {
      // Never through a link at the name: what was listed as a file must still be one.
      fh = await open(e.path, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      return failed(errnoOf(err) === 'ELOOP' ? changed('it is a symbolic link now') : sourceError(err, { path: e.path }));
    }
    try {
      if (!(await fh.stat()).isFile()) return await failed(changed('it is no longer a regular file'));
      while (sent < e.size) {
        const buf = await pool.acquire();
        const want = Math.min(chunkBytes, e.size - sent);
        let n = 0;
        try {
          while (n < want) {
            const { bytesRead } = await fh.read(buf, FRAME_HEADER_BYTES + n, want - n, sent + n);
            if (bytesRead === 0) break;
            n += bytesRead;
          }
        } catch (err) {
          pool.release(buf);
          return await failed(sourceError(err, { path: e.path }));
        }
        await sendRead(buf, n);
        if (n < want) return await failed(changed(`it ended at ${sent} of ${e.size} bytes`));
      }
      // One byte past the size tells a file that grew.
      const { bytesRead } = await fh.read(Buffer.alloc(1), 0, 1, e.size);
      if (bytesRead > 0) return await failed(changed(`it holds more than ${e.size} bytes`));
      return { ok: true, hash: hasher().digest() };
    } catch (err) {
      return failed(sourceError(err, { path: e.path }));
    } finally {
      await fh.close().catch(() => {});
    }
  };

  const onControl = (frame: ControlFrame) => {
    const { id } = frame;
    const run = (fn: () => Promise<OkBody>) => track(fn().then((body) => reply(id, body), (err: unknown) => replyError(id, err)));
    switch (frame.type) {
      case 'HELLO': {
        // hub-auth: joins of this helper's socket prove a key, and so does the helper (core's hub-auth.ts).
        const hello = {
          version: PROTOCOL_VERSION,
          software: options.software ?? 'ferry',
          capabilities: ['write', 'read', 'hash', 'fsync', 'setstat', 'rename', 'hub-auth', SAFE_FILES_CAPABILITY, BATCH_CAPABILITY, TREE_READ_CAPABILITY, TREE_META_CAPABILITY, HASH_ONLY_CAPABILITY, COPY_RANGE_CAPABILITY, XATTRS_EXACT_CAPABILITY, WALK_HASH_CAPABILITY, ...HASH_ALGORITHMS.map((h) => `hash:${h}`)],
          umask: currentUmask(),
          euid: process.geteuid?.() ?? -1,
        };
        const openHub = options.openHub;
        const key = parseHubKey(frame.body.hubKey);
        // A client without a key (an older ferry) gets no socket: its joins could not be checked.
        if (frame.body.hub !== true || !openHub || !key) {
          reply(id, { hello });
          return;
        }
        // No hub (a temporary directory that refuses one): this session works alone.
        run(async () => ({ hello: { ...hello, ...(await openHub(key).then((hub) => ({ hub }), () => ({}))) } }));
        return;
      }
      case 'OPEN':
        run(() => openFile(frame.body));
        return;
      case 'COPY_RANGE': {
        const body = frame.body;
        run(() => copyRange(body));
        return;
      }
      case 'WRITE': {
        const f = fileOf(frame.body.handle);
        if (!f.writable) throw new FerryError('PROTOCOL', `WRITE to ${f.path}, which was opened read-only`);
        checkBounds(f, frame.body.offset, frame.body.length);
        if (uploads.has(id) || batches.has(id)) throw new FerryError('PROTOCOL', `request id ${id} is already in use`);
        if (uploads.size >= MAX_OPEN_WRITES) throw new FerryError('PROTOCOL', `more than ${MAX_OPEN_WRITES} WRITEs open at once in one session`);
        if (f.writeError) {
          // The stream carries this WRITE's DATA all the same: it is dropped (see onData).
          discard(id);
          replyError(id, f.writeError);
          return;
        }
        const u: Upload = {
          id,
          file: f,
          offset: frame.body.offset,
          length: frame.body.length,
          received: 0,
          hasher: createHasher(frame.body.algorithm),
          buf: undefined,
          fill: 0,
          bufOffset: frame.body.offset,
          error: undefined,
          answered: false,
        };
        uploads.set(id, u);
        if (u.length === 0) finishUpload(u);
        return;
      }
      case 'READ':
      case 'HASH': {
        const f = fileOf(frame.body.handle);
        checkBounds(f, frame.body.offset, frame.body.length);
        const reading =
          frame.type === 'HASH' && f.writable
            ? hashStored(id, f, frame.body.offset, frame.body.length, frame.body.algorithm)
            : doRead(id, f, frame.body.offset, frame.body.length, createHasher(frame.body.algorithm), frame.type === 'READ');
        track(reading.catch((err: unknown) => replyError(id, err)));
        return;
      }
      case 'FSYNC': {
        const f = fileOf(frame.body.handle);
        run(async () => {
          await settleWrites(f);
          try {
            await f.fh.sync();
          } catch (err) {
            throw destinationError(err, { path: f.path });
          }
          return {};
        });
        return;
      }
      case 'CLOSE': {
        const f = fileOf(frame.body.handle);
        files.delete(frame.body.handle);
        run(async () => {
          try {
            await settleWrites(f);
          } finally {
            await f.writer.close().catch(() => {});
            await f.fh.close();
          }
          return {};
        });
        return;
      }
      case 'STAT':
        run(async () => {
          try {
            return { stat: statOf(await stat(frame.body.path)) };
          } catch (err) {
            throw sourceError(err, { path: frame.body.path });
          }
        });
        return;
      case 'SETSTAT': {
        const b = frame.body;
        // By handle: fchmod and futimes on the file itself, never a name that may point elsewhere by now.
        const f = b.handle === undefined ? undefined : fileOf(b.handle);
        const path = f?.path ?? b.path!;
        if (b.size !== undefined && !f?.writable) throw new FerryError('PROTOCOL', `SETSTAT size of ${path}, which is not open for writing`);
        run(async () => {
          try {
            if (b.size !== undefined && f) {
              // --inplace: the file takes the copy's size before any range is written through this handle.
              await settleWrites(f);
              await f.fh.truncate(b.size);
              f.size = b.size;
            }
            // Owner and attributes first: chown clears set-id bits, and an ACL's mask follows the mode.
            // An exact set goes to a directory or file by name: a link put in its place is refused, never followed by the chmod.
            if (b.xattrsExact && !f && (await lstat(path)).isSymbolicLink()) throw new FerryError('DEST_CONFLICT', `${path} is a symbolic link now: its mode and attributes were not set; move it away and rerun`, { path });
            if (hasMeta(b) || b.xattrsExact) applyPathMeta(path, entryMetaOf(b), b.xattrsExact ?? undefined);
            if (f) {
              if (b.mode !== undefined) await f.fh.chmod(b.mode);
              if (b.mtimeMs !== undefined) await f.fh.utimes((b.atimeMs ?? b.mtimeMs) / 1000, b.mtimeMs / 1000);
            } else {
              // By name (a tree's directory, a big file set again): through a descriptor opened without following a link there.
              await setModeTimesAt(path, b, 'either');
            }
          } catch (err) {
            throw destinationError(err, { path });
          }
          return {};
        });
        return;
      }
      case 'RENAME': {
        const f = frame.body.handle === undefined ? undefined : fileOf(frame.body.handle);
        if (f) {
          run(async () => {
            await renameChecked(f, frame.body.from, frame.body.to);
            return {};
          });
          return;
        }
        run(async () => {
          try {
            await rename(frame.body.from, frame.body.to);
          } catch (err) {
            throw destinationError(err, { path: frame.body.to });
          }
          return {};
        });
        return;
      }
      case 'UNLINK':
        run(async () => {
          try {
            await (frame.body.dir === true ? rmdir(frame.body.path) : unlink(frame.body.path));
          } catch (err) {
            if (errnoOf(err) !== 'ENOENT') throw destinationError(err, { path: frame.body.path });
          }
          return {};
        });
        return;
      case 'ZEROS':
        onZeros(id, frame.body.length);
        return;
      case 'BATCH':
        startBatch(id, frame.body);
        return;
      case 'WALK':
        track(walkTo(id, frame.body.root, frame.body).catch((err: unknown) => replyError(id, err)));
        return;
      case 'GLOB': {
        const pattern = frame.body.pattern;
        run(async () => ({ paths: await globPaths(pattern) }));
        return;
      }
      case 'READ_BATCH': {
        if (readBatches >= MAX_OPEN_BATCHES) throw new FerryError('PROTOCOL', `more than ${MAX_OPEN_BATCHES} READ_BATCHes open at once in one session`);
        readBatches++;
        const body = frame.body;
        run(() => readQueue.run(() => readBatch(id, body)).finally(() => readBatches--));
        return;
      }
      case 'COMMIT': {
        const b = batches.get(id);
        if (!b || b.committed) throw new FerryError('PROTOCOL', `COMMIT for unknown batch ${id}`);
        if (b.received < b.total) throw new FerryError('PROTOCOL', `COMMIT for batch ${id} before all its bytes (${b.received} of ${b.total})`);
        if (frame.body.srcHashes.length !== b.writer.entries.length) throw new FerryError('PROTOCOL', `COMMIT for batch ${id} has ${frame.body.srcHashes.length} hashes for ${b.writer.entries.length} entries`);
        b.committed = true;
        receiving = undefined;
        run(() => commitBatch(b, frame.body.srcHashes).finally(() => batches.delete(id)));
        return;
      }
      case 'OK':
      case 'ERROR':
      case 'ENTRIES':
        throw new FerryError('PROTOCOL', `unexpected ${frame.type} frame from the client`);
    }
  };

  const decoder = new FrameDecoder((frame) => {
    if (frame.type === 'DATA') onData(frame);
    else onControl(frame);
  });

  await new Promise<void>((resolve) => {
    input.on('data', (chunk: Buffer) => {
      if (fatal) return;
      try {
        decoder.push(chunk);
        options.onMemory?.({ pendingBytes, gathering: gathering.size, openWrites: uploads.size, poolInUse: pool.inUse, poolBuffers: pool.count, outsidePoolBytes });
      } catch (err) {
        // A malformed stream cannot be resynchronised: say why and stop.
        fatal = toFerryError(err);
        replyError(0, fatal);
        input.pause();
        resolve();
      }
    });
    input.on('end', resolve);
    input.on('close', resolve);
    input.on('error', resolve);
  });
  while (work.size > 0) await Promise.allSettled([...work]);
  // BATCHes never committed (the client went away): their temporary files go.
  for (const b of batches.values()) if (!b.committed) b.writer.abort();
  batches.clear();
  for (const f of files.values()) {
    await f.writer.close().catch(() => {});
    await f.fh.close().catch(() => {});
  }
  files.clear();
  if (fatal) throw fatal;
}
