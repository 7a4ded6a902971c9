/**
 * `ferry cp --delta`: before the agents start, the ranges of the new file that
 * the old destination file already holds are found and copied into the job's
 * temporary file on the destination host, so that only the ranges that differ
 * (and those past the old file's end) cross the network.
 *
 * Each candidate range (one the old file holds whole) is hashed on both sides
 * at once (the source where it is, the old file where it is: the remote side
 * through its helper, or over SFTP), several ranges at a time. Where the two
 * hashes agree, the range is copied from the old file into the temporary file
 * at the same offset, on the destination host (the helper's COPY_RANGE, SFTP's
 * `copy-data`, or a local read and write for a pull), and the hash of the
 * bytes as copied must agree again: an old file that changes meanwhile costs a
 * send, never a wrong byte. Reused ranges are made durable (fsync) before they
 * are journaled, like sent ones, so a resumed job keeps them.
 *
 *   const outcome = await reuseUnchanged({ prep, plan, hash, temp, todo, emit, onDurable });
 */
import { constants } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { FerryError, createHasher, formatBytes, rangeAt, toFerryError } from '@ferry/core';
import type { FileIdentity, HashAlgorithm, RangePlan } from '@ferry/core';
import type { RemoteFile } from '@ferry/transport';
import type { CopyEvent } from './events.js';
import type { PreparedCopy } from './prepare.js';
import { openLocalTemp } from './temp-file.js';

/** Ranges hashed (and copied) at once. */
const DELTA_PARALLEL = 4;
/** Ranges copied between two fsyncs of the temporary file (and their journal records). */
const DELTA_BATCH = 64;
/** Bytes per read of a local range. */
const LOCAL_CHUNK_BYTES = 4 * 1024 * 1024;

export interface ReusedRange {
  range: number;
  hash: string;
  bytes: number;
}

export interface DeltaOutcome {
  /** Size of the old destination file, or undefined when there was none (or not a regular file). */
  oldBytes: number | undefined;
  /** Ranges hashed on both sides. */
  compared: number;
  /** Ranges copied from the old file, durable and handed to `onDurable`. */
  reused: number;
  reusedBytes: number;
}

export interface DeltaInput {
  prep: PreparedCopy;
  plan: RangePlan;
  hash: HashAlgorithm;
  /** The job's temporary file. */
  temp: FileIdentity;
  /**
   * `--inplace`: the temporary file is the old file itself; a range whose
   * hashes agree is done where it is, and nothing is copied or written.
   */
  inPlace?: boolean;
  /** `--verify`: after their fsync, reused ranges are read back from the new file and hashed again; one that differs is sent. */
  verify?: boolean;
  /** Ranges not done yet, ascending. */
  todo: readonly number[];
  emit: (event: CopyEvent) => void;
  /** Called with each batch of reused ranges once they are durable in the temporary file (it journals them). */
  onDurable: (ranges: ReusedRange[]) => Promise<void>;
  signal?: AbortSignal;
}

/** The destination side of a delta: hashing the old file, copying from it into the temporary file, fsync. */
interface DeltaTarget {
  oldHash(offset: number, length: number): Promise<string>;
  /** Copies a range whose old hash is `old`; resolves with the hash of the bytes as copied. */
  copy(offset: number, length: number, old: string): Promise<string>;
  sync(): Promise<void>;
  /** The hash of a range as the new file holds it, read back (`--verify`); absent where nothing was written. */
  storedHash?(offset: number, length: number): Promise<string>;
  close(): Promise<void>;
}

export async function reuseUnchanged(input: DeltaInput): Promise<DeltaOutcome> {
  const { prep, plan, hash, emit } = input;
  const where = prep.direction === 'push' ? `${prep.conn.label}:${prep.targetPath}` : prep.targetPath;
  const oldBytes = await oldFileSize(prep);
  const none: DeltaOutcome = { oldBytes, compared: 0, reused: 0, reusedBytes: 0 };
  if (oldBytes === undefined) {
    emit({ type: 'log', message: `--delta: no regular file at ${where}: every range is sent` });
    return none;
  }
  const candidates = input.todo.filter((i) => {
    const r = rangeAt(plan, i);
    return r.length > 0 && r.offset + r.length <= oldBytes;
  });
  if (candidates.length === 0) return none;
  const target = input.inPlace ? inPlaceTarget(prep, hash) : prep.direction === 'push' ? await remoteTarget(prep, input.temp, hash) : await localTarget(prep, input.temp, hash);
  if (!target) {
    emit({ type: 'warning', message: `--delta: ${prep.conn.label} cannot copy ranges on its side (${prep.mode} mode${prep.mode === 'sftp' ? ": its sftp-server has no 'copy-data' extension" : ': an older helper'}): every range is sent` });
    return none;
  }
  const sourceHash = prep.direction === 'push' ? localHasher(prep.localPath, hash) : (offset: number, length: number) => prep.conn.hashRange(prep.remotePath, offset, length, hash);
  const outcome: DeltaOutcome = { oldBytes, compared: 0, reused: 0, reusedBytes: 0 };
  let copyFailure: FerryError | undefined;
  try {
    for (let at = 0; at < candidates.length; at += DELTA_BATCH) {
      if (input.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted');
      const batch = candidates.slice(at, at + DELTA_BATCH);
      let reused: ReusedRange[] = [];
      await eachLimited(batch, DELTA_PARALLEL, async (i) => {
        if (copyFailure) return;
        const r = rangeAt(plan, i);
        try {
          const [src, old] = await Promise.all([sourceHash(r.offset, r.length), target.oldHash(r.offset, r.length)]);
          outcome.compared++;
          if (src !== old) return;
          const copied = await target.copy(r.offset, r.length, old);
          if (copied === src) reused.push({ range: i, hash: src, bytes: r.length });
        } catch (err) {
          // The old file went, changed or cannot be read (or the remote side refused): the rest
          // is sent, and whatever is wrong with the source is the agents' to report.
          copyFailure ??= toFerryError(err);
        }
      });
      if (reused.length > 0) {
        await target.sync();
        const storedHash = target.storedHash;
        if (input.verify && storedHash) {
          const stored: ReusedRange[] = [];
          await eachLimited(reused, DELTA_PARALLEL, async (u) => {
            const r = rangeAt(plan, u.range);
            if ((await storedHash(r.offset, r.length)) === u.hash) stored.push(u);
          });
          if (stored.length < reused.length) emit({ type: 'warning', message: `--delta --verify: ${reused.length - stored.length} reused range(s) read back differently from ${where}'s new file; they are sent` });
          reused = stored;
        }
        reused.sort((a, b) => a.range - b.range);
        await input.onDurable(reused);
        outcome.reused += reused.length;
        for (const r of reused) outcome.reusedBytes += r.bytes;
      }
      if (copyFailure) break;
    }
  } finally {
    await target.close().catch(() => {});
  }
  if (copyFailure) emit({ type: 'warning', message: `--delta: stopped reusing ranges of ${where} (${copyFailure.message}); the rest is sent` });
  emit({ type: 'log', message: `--delta: ${outcome.reused} of ${plan.count} ranges (${formatBytes(outcome.reusedBytes)}) reused from ${where}, ${outcome.compared - outcome.reused} of those compared differ` });
  return outcome;
}

/** `--inplace`: the old file is the job's file; a range that hashes alike needs nothing done. */
function inPlaceTarget(prep: PreparedCopy, hash: HashAlgorithm): DeltaTarget {
  const oldHash = prep.direction === 'push' ? (offset: number, length: number) => prep.conn.hashRange(prep.targetPath, offset, length, hash) : localHasher(prep.targetPath, hash);
  return {
    oldHash,
    // Nothing to copy: the range is where it belongs.
    copy: async (_offset, _length, old) => old,
    sync: async () => {},
    close: async () => {},
  };
}

/** The old destination file's size when it is a regular file (not a link), else undefined. */
async function oldFileSize(prep: PreparedCopy): Promise<number | undefined> {
  if (prep.direction === 'pull') {
    const st = await lstat(prep.targetPath).catch(() => undefined);
    return st?.isFile() ? st.size : undefined;
  }
  // The helper's STAT follows a link; COPY_RANGE does not, and refuses one.
  const st = await prep.conn.stat(prep.targetPath).catch(() => undefined);
  return st?.type === 'file' ? st.size : undefined;
}

async function remoteTarget(prep: PreparedCopy, temp: FileIdentity, hash: HashAlgorithm): Promise<DeltaTarget | undefined> {
  const f: RemoteFile = await prep.conn.openFile(prep.tempPath, 'write', { expect: temp });
  const copyFrom = f.copyFrom;
  if (!copyFrom) {
    await f.close().catch(() => {});
    return undefined;
  }
  return {
    oldHash: (offset, length) => prep.conn.hashRange(prep.targetPath, offset, length, hash),
    copy: (offset, length) => copyFrom(prep.targetPath, offset, length, hash),
    sync: () => f.fsync(),
    storedHash: (offset, length) => f.hashStored(offset, length, hash),
    close: () => f.close(),
  };
}

async function localTarget(prep: PreparedCopy, temp: FileIdentity, hash: HashAlgorithm): Promise<DeltaTarget> {
  const { size: _size, ...same } = temp;
  const into = await openLocalTemp(prep.tempPath, same);
  let from: FileHandle;
  try {
    // Never through a link at the old file's name; and it must still be a regular file.
    from = await open(prep.targetPath, constants.O_RDONLY | constants.O_NOFOLLOW);
    if (!(await from.stat()).isFile()) {
      await from.close();
      throw new FerryError('DEST_CONFLICT', `${prep.targetPath} is not a regular file: its ranges are not reused`, { path: prep.targetPath });
    }
  } catch (err) {
    await into.close();
    throw err;
  }
  const buf = Buffer.allocUnsafe(LOCAL_CHUNK_BYTES);
  const copyLock = { busy: Promise.resolve() };
  return {
    oldHash: (offset, length) => hashOpen(from, offset, length, hash, prep.targetPath),
    copy: (offset, length) => {
      // One shared buffer: copies one after another (the hashing around them runs in parallel).
      const run = copyLock.busy.then(async () => {
        const h = createHasher(hash);
        let done = 0;
        while (done < length) {
          const { bytesRead } = await from.read(buf, 0, Math.min(buf.length, length - done), offset + done);
          if (bytesRead === 0) throw new FerryError('DEST_REPLACED', `${prep.targetPath} ended at ${offset + done} bytes, within the range being reused: it changed`, { path: prep.targetPath });
          h.update(buf.subarray(0, bytesRead));
          let written = 0;
          while (written < bytesRead) written += (await into.write(buf, written, bytesRead - written, offset + done + written)).bytesWritten;
          done += bytesRead;
        }
        return h.digest();
      });
      copyLock.busy = run.then(
        () => undefined,
        () => undefined,
      );
      return run;
    },
    sync: () => into.sync(),
    storedHash: (offset, length) => hashOpen(into, offset, length, hash, prep.tempPath),
    close: async () => {
      await from.close().catch(() => {});
      await into.close();
    },
  };
}

/** Hashes ranges of a local file, each through its own read. */
function localHasher(path: string, hash: HashAlgorithm): (offset: number, length: number) => Promise<string> {
  return async (offset, length) => {
    const fh = await open(path, constants.O_RDONLY);
    try {
      return await hashOpen(fh, offset, length, hash, path);
    } finally {
      await fh.close();
    }
  };
}

async function hashOpen(fh: FileHandle, offset: number, length: number, hash: HashAlgorithm, path: string): Promise<string> {
  const h = createHasher(hash);
  const buf = Buffer.allocUnsafe(Math.min(LOCAL_CHUNK_BYTES, Math.max(1, length)));
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, length - done), offset + done);
    if (bytesRead === 0) throw new FerryError('SOURCE_CHANGED', `${path} ended at ${offset + done} bytes, before the end of a range`, { path });
    h.update(buf.subarray(0, bytesRead));
    done += bytesRead;
  }
  return h.digest();
}

/** Runs `fn` over `items`, at most `limit` at once; the first failure is thrown once all have settled. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  });
  const results = await Promise.allSettled(workers);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
