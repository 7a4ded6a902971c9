/**
 * Hashing ranges of local files for `ferry check`, on worker threads: one
 * core hashes some GB/s of xxh3 but well under one of sha256, and a check
 * of a big local file should use as many cores as the remote side's
 * helpers do. `LocalHashers` hands ranges to up to `size` workers (started
 * as work comes, the least busy first); each reads its range itself, never
 * through a link at the file's name.
 *
 * ```ts
 * const hashers = new LocalHashers(4);
 * const digest = await hashers.hash('/data/big.h5', 0, 64 * 2 ** 20, 'xxh3');
 * hashers.close();
 * ```
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { FerryError, createHasher, errnoOf, hashBytes, toFerryError } from '@ferry/core';
import type { ErrorData, HashAlgorithm } from '@ferry/core';

/** Bytes read at a time from a file being hashed. */
export const READ_BYTES = 1024 * 1024;

/** A request to a worker, and its answer: one range, or (`files`) several whole files. */
export type HashRequest =
  | { id: number; path: string; offset: number; length: number; algorithm: HashAlgorithm }
  | { id: number; files: ReadonlyArray<{ path: string; size: number }>; algorithm: HashAlgorithm };
export type FileHash = { hash: string } | { error: ErrorData };
export type HashAnswer = { id: number; hash: string } | { id: number; error: ErrorData } | { id: number; hashes: FileHash[] };

/**
 * Small files go to a thread many to a message: one message per file cost
 * more than hashing it (a check of 20,000 files of a few KiB spent most of
 * its local side posting messages). A message holds at most this many files
 * and bytes, so several threads still share a list.
 */
export const FILES_PER_MESSAGE = 64;
export const BYTES_PER_MESSAGE = 16 * 1024 * 1024;

/**
 * Hash of a range of a local file, never through a link at its name; a file
 * now shorter is an error. Synchronous: it runs on a hashing thread of its
 * own, and the libuv pool (four threads for the whole process) stays free
 * for the walks.
 */
export function hashLocalRange(path: string, offset: number, length: number, algorithm: HashAlgorithm, buf: Buffer): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    throw new FerryError('SOURCE_UNREADABLE', `${path} cannot be read (${errnoOf(err) ?? (err as Error).message})`, { path, cause: err });
  }
  try {
    if (!fstatSync(fd).isFile()) throw new FerryError('SOURCE_CHANGED', `${path} is no longer a regular file: it changed during the check`, { path });
    // A range that fits the buffer (most files of a tree) is read whole and hashed in one call:
    // a hasher object (an Xxh3 state) costs more than hashing a few KiB.
    if (length <= buf.length) {
      let done = 0;
      while (done < length) {
        const n = readAt(fd, path, buf, done, length - done, offset + done);
        if (n === 0) throw new FerryError('SOURCE_CHANGED', `${path} ended at byte ${offset + done} while being checked: it changed during the check`, { path });
        done += n;
      }
      return hashBytes(algorithm, buf.subarray(0, length));
    }
    const h = createHasher(algorithm);
    let done = 0;
    while (done < length) {
      const n = readAt(fd, path, buf, 0, Math.min(buf.length, length - done), offset + done);
      if (n === 0) throw new FerryError('SOURCE_CHANGED', `${path} ended at byte ${offset + done} while being checked: it changed during the check`, { path });
      h.update(buf.subarray(0, n));
      done += n;
    }
    return h.digest();
  } finally {
    closeSync(fd);
  }
}

/** readSync into buf at `at`, an error naming the file and the byte. */
function readAt(fd: number, path: string, buf: Buffer, at: number, want: number, position: number): number {
  try {
    return readSync(fd, buf, at, want, position);
  } catch (err) {
    throw new FerryError('SOURCE_UNREADABLE', `${path} cannot be read at byte ${position} (${errnoOf(err) ?? (err as Error).message})`, { path, cause: err });
  }
}

interface Lane {
  worker: Worker;
  busy: number;
}

type Pending = { lane: Lane; resolve: (answer: string | FileHash[]) => void; reject: (err: FerryError) => void };

export class LocalHashers {
  private readonly lanes: Lane[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  constructor(private readonly size: number) {}

  hash(path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    return this.post({ id: 0, path, offset, length, algorithm }) as Promise<string>;
  }

  /**
   * Whole files' hashes, each a digest or why that file could not be hashed
   * (an error of its own: the others still count); FILES_PER_MESSAGE at a
   * time to a thread.
   */
  async hashFiles(files: ReadonlyArray<{ path: string; size: number }>, algorithm: HashAlgorithm): Promise<Array<string | FerryError>> {
    const groups: Array<Array<{ path: string; size: number }>> = [];
    let group: Array<{ path: string; size: number }> = [];
    let bytes = 0;
    for (const f of files) {
      if (group.length > 0 && (group.length >= FILES_PER_MESSAGE || bytes + f.size > BYTES_PER_MESSAGE)) {
        groups.push(group);
        group = [];
        bytes = 0;
      }
      group.push({ path: f.path, size: f.size });
      bytes += f.size;
    }
    if (group.length > 0) groups.push(group);
    const answers = await Promise.all(groups.map((g) => this.post({ id: 0, files: g, algorithm }) as Promise<FileHash[]>));
    return answers.flat().map((a) => ('hash' in a ? a.hash : FerryError.fromData(a.error)));
  }

  private post(request: HashRequest): Promise<string | FileHash[]> {
    if (this.closed) return Promise.reject(new FerryError('INTERRUPTED', 'the check was stopped'));
    const lane = this.lane();
    const id = this.nextId++;
    if (lane.busy++ === 0) lane.worker.ref();
    return new Promise<string | FileHash[]>((resolve, reject) => {
      this.pending.set(id, { lane, resolve, reject });
      lane.worker.postMessage({ ...request, id } satisfies HashRequest);
    });
  }

  close(): void {
    this.closed = true;
    for (const l of this.lanes.splice(0)) void l.worker.terminate();
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new FerryError('INTERRUPTED', 'the check was stopped'));
    }
  }

  private lane(): Lane {
    let best: Lane | undefined;
    for (const l of this.lanes) if (best === undefined || l.busy < best.busy) best = l;
    if ((best === undefined || best.busy > 0) && this.lanes.length < this.size) best = this.start();
    return best!;
  }

  private start(): Lane {
    const worker = new Worker(new URL('./local-hash-worker.js', import.meta.url));
    // A worker keeps the process alive only while it has work (ref'd by hash(), unref'd when idle).
    worker.unref();
    const lane: Lane = { worker, busy: 0 };
    worker.on('message', (a: HashAnswer) => {
      const p = this.pending.get(a.id);
      if (!p) return;
      this.pending.delete(a.id);
      if (--lane.busy === 0) lane.worker.unref();
      if ('hash' in a) p.resolve(a.hash);
      else if ('hashes' in a) p.resolve(a.hashes);
      else p.reject(FerryError.fromData(a.error));
    });
    const fail = (err: unknown) => {
      const i = this.lanes.indexOf(lane);
      if (i >= 0) this.lanes.splice(i, 1);
      const e = new FerryError('INTERNAL', `a hashing thread stopped: ${toFerryError(err).message}`, { cause: err });
      for (const [id, p] of this.pending) {
        if (p.lane !== lane) continue;
        this.pending.delete(id);
        p.reject(e);
      }
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (!this.closed) fail(new Error(`exit ${code}`));
    });
    this.lanes.push(lane);
    return lane;
  }
}
