/**
 * The file system steps of a BATCH (core's protocol.ts): making a directory,
 * writing a file under a temporary name, putting a file, a symbolic link or a
 * hard link in place, and making what a batch landed durable. One
 * implementation for both directions of a tree copy: `ferry serve` runs it
 * for a push (serve.ts feeds it a BATCH's bytes), the coordinator for a pull
 * (its tree-fetch.ts feeds it what READ_BATCH brings).
 *
 * Every name is made new under a random temporary name in the target's
 * directory and renamed over the target: never a link followed at the final
 * component, never a half-written or unverified file at the target's name.
 *
 * Why synchronous calls: a batch is thousands of small files, and each step
 * of each file through Node's thread pool (a promise, a hand-off to a worker
 * thread and back) cost more CPU than the step itself: 20,000 files of 16 KiB
 * took ~4 s of CPU that way and ~1.4 s with synchronous calls. The steps are
 * short (page cache), a helper serves one connection, and parallelism comes
 * from connections.
 *
 * Why one sync for the whole batch: an fdatasync per file forces a journal
 * commit per file (ext4: several times the CPU and wall time of writing the
 * files). A batch's files are written and renamed first; then one syncfs
 * (coreutils' `sync -f`, run by a long-lived shell: SyncShell) writes back
 * everything at once, and an fdatasync of
 * each file reports a write-back error that hit it (several at once: each
 * still flushes the disk's cache). Only then is the batch answered, and
 * journaled as durable. A crash before that may leave a renamed file whose
 * bytes did not reach the disk, but never one the journal counts as done:
 * the rerun writes it again. A batch of thousands of files is synced in
 * groups of EARLY_SYNC_GROUP files, in the background while the next ones
 * arrive, so that it never holds more than MAX_HELD_FILES descriptors.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, existsSync, fchmodSync, fdatasync, fdatasyncSync, fstatSync, fsync, fsyncSync, ftruncateSync, futimesSync, linkSync, lstatSync, lutimesSync, mkdirSync, open, openSync, readFileSync, renameSync, statSync, symlinkSync, unlinkSync, writeSync } from 'node:fs';
import { posix } from 'node:path';
import { FerryError, createHasher, destinationError, hashBytes, entryMetaOf, errnoOf, hasMeta, tempNameFor, toFerryError } from '@ferry/core';
import type { BatchEntry, BatchEntryResult, HashAlgorithm, Hasher } from '@ferry/core';
import { applyFileMeta, applyPathMeta } from './meta.js';

/** Tries at a fresh random name when one is taken (a planted file or link): more would mean someone is racing us. */
const NAME_TRIES = 4;
/** The soft limit of open files in `limits` (the text of Linux's /proc/self/limits); undefined when it says none or cannot be read. */
export function openFileLimit(limits: string | undefined): number | undefined {
  const m = limits === undefined ? null : /^Max open files\s+(\d+)/m.exec(limits);
  return m ? Number(m[1]) : undefined;
}

/**
 * Written files of one batch open at once under a soft limit of `limit`
 * descriptors: at most 1,024, at most half the limit (the session has others
 * open), a multiple of 4 (the groups below), at least 16.
 */
export function heldFilesCap(limit: number | undefined): number {
  if (limit === undefined) return 1024;
  return Math.max(16, Math.min(1024, Math.floor(limit / 8) * 4));
}

function procLimits(): string | undefined {
  try {
    return readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Written files of one batch open at once, at most: those held for the
 * batch's sync and those being synced early. Node raises its soft limit of
 * descriptors to the hard one, rarely under 4,096; where it is lower, half.
 */
export const MAX_HELD_FILES = heldFilesCap(openFileLimit(procLimits()));
/**
 * Held files synced early, in the background, while the batch's next files
 * arrive (a batch of thousands of tiny files): one syncfs per group, at most
 * three groups syncing.
 */
export const EARLY_SYNC_GROUP = MAX_HELD_FILES / 4;
/**
 * fdatasyncs (and directory fsyncs) at once. After a syncfs each still costs
 * a flush of the disk's write cache (ext4 sends one when the file's journal
 * transaction has already committed): one at a time that was 0.2-0.8 ms a
 * file here, ~60-130 us with 8-16 at once (the block layer merges flushes
 * that wait together).
 */
const SYNC_PARALLEL = 16;
/** Random bytes drawn at once for temporary names (one draw per name cost more than the name). */
const NAME_POOL_NAMES = 256;

/** The error for an entry whose target has something of another kind in the way. */
export function conflictError(path: string, found: string, errno: string): FerryError {
  return new FerryError('DEST_CONFLICT', `${path} cannot be made: ${found} is in the way there: move it away and copy again`, { path, errno });
}

let namePool = Buffer.alloc(0);
let namePoolAt = 0;

/** A name next to `path` nobody can know in advance: `.NAME.ferry-<24 hex>.part`. */
export function randomTempName(path: string): string {
  if (namePoolAt >= namePool.length) {
    namePool = randomBytes(12 * NAME_POOL_NAMES);
    namePoolAt = 0;
  }
  const token = namePool.toString('hex', namePoolAt, namePoolAt + 12);
  namePoolAt += 12;
  return tempNameFor(path, token);
}

/** Runs `make(name)` at fresh random temporary names until one is free (EEXIST: another try). */
function atFreshName<T>(path: string, make: (name: string) => T): { name: string; value: T } {
  for (let i = 1; ; i++) {
    const name = randomTempName(path);
    try {
      return { name, value: make(name) };
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST' || i >= NAME_TRIES) throw destinationError(err, { path });
    }
  }
}

/** mkdir 0700; an existing directory (not a link to one) will do, anything else there fails with DEST_CONFLICT. */
export function makeDirectory(path: string): void {
  try {
    mkdirSync(path, 0o700);
    return;
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw destinationError(err, { path });
  }
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    throw destinationError(err, { path });
  }
  if (st.isSymbolicLink()) throw conflictError(path, 'a symbolic link', 'EEXIST');
  if (!st.isDirectory()) throw conflictError(path, 'a file', 'ENOTDIR');
}

/** A file's temporary file: its name and the inode it must still be when renamed. */
interface Temp {
  fd: number;
  name: string;
  ino: number;
  dev: number;
}

/**
 * A file's temporary name, created new (O_CREAT|O_EXCL|O_NOFOLLOW, 0600, as
 * OPEN with `exclusive` does). Its bytes are written at their offsets, so
 * what never arrives as DATA (ZEROS) stays a hole; a file whose last bytes
 * are zeros gets its size when complete (BatchWriter's `complete`).
 */
function createTemp(path: string): Temp {
  const { name, value: fd } = atFreshName(path, (n) => openSync(n, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
  try {
    const st = fstatSync(fd);
    return { fd, name, ino: st.ino, dev: st.dev };
  } catch (err) {
    closeQuietly(fd);
    discardTemp(name);
    throw destinationError(err, { path });
  }
}

/**
 * Owner and attributes (--preserve=owner, --xattrs, --acls), then mode and
 * times of a file whose bytes are all written, through its descriptor: the
 * owner first, as chown clears set-id bits and an ACL's mask follows the mode.
 */
function finishWritten(temp: Temp, entry: BatchEntry): void {
  const fd = temp.fd;
  if (hasMeta(entry)) applyFileMeta(temp, entry.path, entry);
  if (entry.mode !== undefined && entry.mode !== null) fchmodSync(fd, entry.mode);
  if (entry.mtimeMs !== undefined && entry.mtimeMs !== null) futimesSync(fd, (entry.atimeMs ?? entry.mtimeMs) / 1000, entry.mtimeMs / 1000);
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Nothing to do about it: the file's fate was decided by its sync.
  }
}

/**
 * Renames `name` over `path`, or removes `name` and throws: EISDIR (a
 * directory at `path`) is DEST_CONFLICT. `check`: what must still be at
 * `name` just before (the file this batch created).
 */
function renameInto(name: string, path: string, check?: { ino: number; dev: number }): void {
  try {
    if (check) {
      const st = lstatSync(name);
      if (!st.isFile() || st.ino !== check.ino || st.dev !== check.dev) {
        throw new FerryError('DEST_REPLACED', `the temporary file ${name} of ${path} is not the file ferry created (found ${st.isSymbolicLink() ? 'a symbolic link' : `inode ${st.ino}`}): nothing was renamed into place. Check who can write in that directory`, { path });
      }
    }
    renameSync(name, path);
  } catch (err) {
    // Never left behind, whatever failed; a swapped name is another user's, and stays.
    if (!(err instanceof FerryError)) discardTemp(name);
    if (errnoOf(err) === 'EISDIR' || errnoOf(err) === 'ENOTEMPTY' || errnoOf(err) === 'EEXIST') throw conflictError(path, 'a directory', 'EISDIR');
    throw destinationError(err, { path });
  }
}

/** Removes a file's temporary name (a failed entry): nothing of it is left. */
export function discardTemp(name: string): void {
  try {
    unlinkSync(name);
  } catch {
    // Already gone.
  }
}

/** symlink(target) at a temporary name, then renamed over `path`; its own times (lutimes) when given. */
export function placeSymlink(entry: BatchEntry): void {
  const { name } = atFreshName(entry.path, (n) => symlinkSync(entry.target!, n));
  if (hasMeta(entry) || (entry.mtimeMs !== undefined && entry.mtimeMs !== null)) {
    try {
      // A link's owner (lchown) at its temporary name; links carry no attributes here.
      if (hasMeta(entry)) applyPathMeta(name, { ...entryMetaOf(entry), xattrs: {} });
      if (entry.mtimeMs !== undefined && entry.mtimeMs !== null) lutimesSync(name, (entry.atimeMs ?? entry.mtimeMs) / 1000, entry.mtimeMs / 1000);
    } catch (err) {
      discardTemp(name);
      throw destinationError(err, { path: entry.path });
    }
  }
  renameInto(name, entry.path);
}

/**
 * link(target) at a temporary name, then renamed over `path`. When `path` is
 * already a name of that file, rename(2) would do nothing and leave both
 * names: the temporary one is removed instead.
 */
export function placeHardlink(entry: BatchEntry): void {
  const { name } = atFreshName(entry.path, (n) => linkSync(entry.target!, n));
  const statOrNot = (p: string) => {
    try {
      return lstatSync(p);
    } catch {
      return undefined;
    }
  };
  const mine = statOrNot(name);
  const there = statOrNot(entry.path);
  if (mine && there && mine.ino === there.ino && mine.dev === there.dev) {
    discardTemp(name);
    return;
  }
  renameInto(name, entry.path);
}

/** fsync of a directory, so the names renamed into it survive a crash. */
export function syncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(fd);
  } catch (err) {
    throw destinationError(err, { path: dir });
  } finally {
    if (fd !== undefined) closeQuietly(fd);
  }
}

export const dirOf = (path: string): string => posix.dirname(path);

/**
 * The entry of `failed` (directories of this batch that could not be made)
 * that `path` lies under, if any: nothing is made in such a directory, since
 * whatever is at its name (a link, say) is not what the batch made.
 */
export function failedAncestor(path: string, failed: ReadonlyMap<string, FerryError>): [string, FerryError] | undefined {
  if (failed.size === 0) return undefined;
  for (let d = posix.dirname(path); d !== '/' && d !== '.'; d = posix.dirname(d)) {
    const err = failed.get(d);
    if (err) return [d, err];
  }
  return undefined;
}

/** The error of an entry under a directory of its batch that could not be made. */
export function underFailedError(path: string, [dir, err]: [string, FerryError]): FerryError {
  return new FerryError(err.code, `${path} was not made: its directory ${dir} could not be (${err.message})`, { path, ...(err.errno ? { errno: err.errno } : {}) });
}

// ---------------------------------------------------------------------------
// A batch's durability: one syncfs, then a cheap fdatasync of each file.

/** coreutils' sync, which does syncfs(2) with -f (coreutils 8.24, 2015, and later). */
const SYNC_PROGRAM = ['/usr/bin/sync', '/bin/sync'].find((p) => existsSync(p));
/** Whether `sync -f` can work here; false once it said it has no -f (an older coreutils): files are synced one by one. */
let syncfsWorks = SYNC_PROGRAM !== undefined;

/** Whether a failed `sync -f` means this coreutils has no -f (rather than one failure of the moment). */
function noSyncfsOption(stderr: string): boolean {
  return /invalid option|unrecognized option|illegal option/i.test(stderr);
}

/** syncfs(2) of the file system holding `dir`, through `sync -f`; false when that could not be done. */
function syncFileSystem(dir: string, wanted: boolean): Promise<boolean> {
  if (!wanted || !syncfsWorks || !SYNC_PROGRAM) return Promise.resolve(false);
  if (syncfsChecked) {
    const shell = syncShellFor(dir);
    if (shell) return shell.sync();
  }
  return new Promise((resolve) => {
    execFile(SYNC_PROGRAM, ['-f', '--', dir], (err, _stdout, stderr) => {
      if (err && noSyncfsOption(String(stderr))) syncfsWorks = false;
      else if (!err) syncfsChecked = true;
      resolve(!err);
    });
  });
}

/** Whether one `sync -f` worked here: from then on the shells below run it. */
let syncfsChecked = false;

/**
 * A shell that runs `sync -f .` in a directory of one file system for each
 * line it reads and answers 0 or 1: a batch of thousands of files is synced
 * in groups, and starting `sync` from a Node process (a fork of all its
 * memory) cost more CPU than the sync itself. The command is fixed; the
 * directory is the shell's working directory, never text it reads.
 */
class SyncShell {
  private readonly child: ChildProcess;
  private readonly waiting: Array<(ok: boolean) => void> = [];
  private answers = '';
  dead = false;

  constructor(dir: string) {
    this.child = spawn('/bin/sh', ['-c', `while read -r _; do if ${SYNC_PROGRAM} -f . 2>/dev/null; then echo 0; else echo 1; fi; done`], { cwd: dir, stdio: ['pipe', 'pipe', 'ignore'] });
    this.child.on('error', () => this.die());
    this.child.on('exit', () => this.die());
    this.child.stdin!.on('error', () => this.die());
    this.child.stdout!.setEncoding('utf8').on('data', (text: string) => {
      this.answers += text;
      for (let nl = this.answers.indexOf('\n'); nl >= 0; nl = this.answers.indexOf('\n')) {
        const line = this.answers.slice(0, nl);
        this.answers = this.answers.slice(nl + 1);
        this.waiting.shift()?.(line === '0');
      }
      if (this.waiting.length === 0) this.idle(true);
    });
    this.idle(true);
  }

  sync(): Promise<boolean> {
    if (this.dead) return Promise.resolve(false);
    this.idle(false);
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin!.write('\n');
    });
  }

  /** An idle shell does not keep the process alive; one with a sync to answer does. */
  private idle(yes: boolean): void {
    for (const h of [this.child, this.child.stdin, this.child.stdout] as Array<{ ref(): void; unref(): void } | null>) {
      if (yes) h?.unref();
      else h?.ref();
    }
  }

  get pid(): number | undefined {
    return this.dead ? undefined : this.child.pid;
  }

  /** Ends the shell (its stdin closes, its loop ends); what waits gets false. */
  close(): void {
    this.child.stdin!.destroy();
    this.child.stdout!.destroy();
    this.die();
  }

  private die(): void {
    if (this.dead) return;
    this.dead = true;
    for (const w of this.waiting.splice(0)) w(false);
    this.idle(true);
  }
}

/** One shell per file system (by device), a few at most; none where sh cannot start. */
const syncShells = new Map<number, SyncShell>();
const MAX_SYNC_SHELLS = 8;

/** The pids of the sync shells running (for tests). */
export function syncShellPids(): number[] {
  return [...syncShells.values()].flatMap((s) => (s.pid === undefined ? [] : [s.pid]));
}

/** Ends every sync shell; the next sync starts another. */
export function closeSyncShells(): void {
  for (const s of syncShells.values()) s.close();
  syncShells.clear();
}

function syncShellFor(dir: string): SyncShell | undefined {
  let dev: number;
  try {
    dev = statSync(dir).dev;
  } catch {
    return undefined;
  }
  let shell = syncShells.get(dev);
  if (shell?.dead) syncShells.delete(dev);
  else if (shell) return shell;
  if (syncShells.size >= MAX_SYNC_SHELLS) return undefined;
  try {
    shell = new SyncShell(dir);
  } catch {
    return undefined;
  }
  syncShells.set(dev, shell);
  return shell;
}

/** The same, waiting here. */
function syncFileSystemNow(dir: string, wanted: boolean): boolean {
  if (!wanted || !syncfsWorks || !SYNC_PROGRAM) return false;
  const r = spawnSync(SYNC_PROGRAM, ['-f', '--', dir], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0 && noSyncfsOption(r.stderr ?? '')) syncfsWorks = false;
  return r.status === 0;
}

function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** Runs `one` over `items`, SYNC_PARALLEL at a time. */
async function inParallel<T>(items: readonly T[], one: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await one(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(SYNC_PARALLEL, items.length) }, lane));
}

/** syncDirectory through the thread pool. */
function syncDirectoryAsync(dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    open(dir, constants.O_RDONLY | constants.O_DIRECTORY, (err, fd) => {
      if (err) return reject(destinationError(err, { path: dir }));
      fsync(fd, (syncErr) => {
        closeQuietly(fd);
        if (syncErr) reject(destinationError(syncErr, { path: dir }));
        else resolve();
      });
    });
  });
}

/**
 * Makes the bytes of `files` durable: one syncfs (unless `syncfs` is false
 * or it cannot be done), then an fdatasync of each, several at once, which
 * reports a write-back error that hit that file. The files that failed, with
 * why.
 */
async function syncFiles(files: readonly WriterFile[], syncfs: boolean): Promise<Array<[WriterFile, FerryError]>> {
  const failed: Array<[WriterFile, FerryError]> = [];
  if (files.length === 0) return failed;
  await syncFileSystem(dirOf(files[0]!.entry.path), syncfs);
  await inParallel(files, async (f) => {
    // A file dropped meanwhile (the batch aborted) has nothing left to sync.
    if (!f.temp || f.temp.fd < 0) return;
    try {
      await fdatasyncAsync(f.temp.fd);
    } catch (err) {
      failed.push([f, destinationError(err, { path: f.entry.path })]);
    }
  });
  return failed;
}

/** A file of a batch from its first byte to its result. */
interface WriterFile {
  /** Its index among the batch's entries. */
  readonly index: number;
  readonly entry: BatchEntry;
  readonly size: number;
  /** Made at the file's first bytes, unless they are all of it in one piece (then `digest` at once). */
  hasher: Hasher | undefined;
  digest: string | undefined;
  received: number;
  /** Where the bytes written so far end (ZEROS are not written): short of `size`, the file is sized when complete. */
  writtenEnd: number;
  temp: Temp | undefined;
  /** Complete and open until the batch's sync says whether its bytes reached the disk. */
  held: boolean;
  error: FerryError | undefined;
}

/**
 * The receiving end of one batch: files created in entry order as their
 * bytes come, each hashed and written as they arrive, given its mode and
 * times once complete; then `commit` renames the ones whose hash is the
 * source's and makes the batch durable. Synchronous except for the sync.
 * `syncfs: false`: each file fdatasynced on its own, as where `sync -f` is
 * missing.
 */
export class BatchWriter {
  readonly files: WriterFile[] = [];
  /** Directories of the batch that could not be made, by entry index and by path. */
  readonly dirErrors = new Map<number, FerryError>();
  readonly failedDirs = new Map<string, FerryError>();
  private current = 0;
  private heldFiles = 0;
  /** Groups of files being synced early, in the background, and their ends. */
  private syncingGroups = 0;
  private readonly earlySyncs: Promise<void>[] = [];
  private ended = false;

  constructor(
    readonly entries: readonly BatchEntry[],
    private readonly algorithm: HashAlgorithm,
    private readonly options: { syncfs?: boolean } = {},
  ) {
    entries.forEach((entry, index) => {
      if (entry.kind === 'file') this.files.push({ index, entry, size: entry.size ?? 0, hasher: undefined, digest: undefined, received: 0, writtenEnd: 0, temp: undefined, held: false, error: undefined });
    });
  }

  /** Makes the batch's directories, in order (a BATCH lists a directory before what lands in it). */
  makeDirectories(): void {
    this.entries.forEach((e, i) => {
      if (e.kind !== 'dir') return;
      const under = failedAncestor(e.path, this.failedDirs);
      let failed: FerryError | undefined = under ? underFailedError(e.path, under) : undefined;
      if (!failed) {
        try {
          makeDirectory(e.path);
        } catch (err) {
          failed = destinationError(err, { path: e.path });
        }
      }
      if (failed) {
        this.dirErrors.set(i, failed);
        this.failedDirs.set(e.path, failed);
      }
    });
  }

  /** Bytes of the `k`-th file (of `files`), following what it received; the files before it are complete. */
  data(k: number, data: Buffer): void {
    const f = this.reach(k);
    // A small file usually arrives whole in one piece (the client packs them): one hashing call.
    if (f.received === 0 && data.length === f.size) f.digest = hashBytes(this.algorithm, data);
    else (f.hasher ??= createHasher(this.algorithm)).update(data);
    if (f.received + data.length > f.size) throw new FerryError('PROTOCOL', `bytes for ${f.entry.path} overrun its size ${f.size}`);
    if (f.temp && !f.error) {
      try {
        let done = 0;
        while (done < data.length) done += writeSync(f.temp.fd, data, done, data.length - done, f.received + done);
        f.writtenEnd = f.received + data.length;
      } catch (err) {
        this.fail(f, destinationError(err, { path: f.entry.path }));
      }
    }
    f.received += data.length;
  }

  /** A run of `n` zeros of the `k`-th file: hashed, not written (the file was sized at creation: a hole). */
  zeros(k: number, n: number, zeroChunk: Buffer): void {
    const f = this.reach(k);
    if (f.received + n > f.size) throw new FerryError('PROTOCOL', `zeros for ${f.entry.path} overrun its size ${f.size}`);
    for (let left = n; left > 0; ) {
      const piece = Math.min(left, zeroChunk.length);
      (f.hasher ??= createHasher(this.algorithm)).update(zeroChunk.subarray(0, piece));
      left -= piece;
    }
    f.received += n;
  }

  /** No more bytes: every file is complete (or short, and then fails at commit). */
  end(): void {
    if (this.ended) return;
    this.reach(this.files.length);
    this.ended = true;
  }

  /** The received hash of each file, in `files` order. */
  digests(): string[] {
    return this.files.map((f) => f.digest ?? (f.hasher ??= createHasher(this.algorithm)).digest());
  }

  /**
   * Renames each file whose received hash is the source's over its path (the
   * others lose their temporary name), makes symbolic links and hard links,
   * makes it all durable, and gives one result per entry. A null source
   * hash: the source changed (or failed) while it was read.
   */
  async commit(srcHashes: ReadonlyArray<string | null | undefined>, digests = this.digests()): Promise<BatchEntryResult[]> {
    this.end();
    // Files synced early fail here, before anything is renamed, if their bytes did not reach the disk.
    await Promise.all(this.earlySyncs);
    const results: BatchEntryResult[] = this.entries.map(() => ({ ok: true }));
    const fail = (i: number, err: unknown) => {
      results[i] = { ok: false, error: toFerryError(err).toData() };
    };
    for (const [i, err] of this.dirErrors) fail(i, err);
    const landed: WriterFile[] = [];
    const dirs = new Set<string>();
    this.files.forEach((f, k) => {
      const path = f.entry.path;
      const src = srcHashes[f.index];
      let err: unknown = f.error;
      if (!err && f.received < f.size) err = new FerryError('PROTOCOL', `${path} got ${f.received} of its ${f.size} bytes`, { path });
      if (!err && (src === null || src === undefined)) err = new FerryError('SOURCE_CHANGED', `${path} was not written: the source file changed while it was read`, { path });
      if (!err && src !== digests[k]) err = new FerryError('HASH_MISMATCH', `${path} was not written: its bytes arrived with hash ${digests[k]}, sent with ${src} (corrupted on the way); send it again`, { path });
      if (!err) {
        try {
          renameInto(f.temp!.name, path, f.temp);
          results[f.index] = { ok: true, hash: digests[k]! };
          landed.push(f);
          dirs.add(dirOf(path));
          return;
        } catch (e) {
          err = e;
        }
      }
      fail(f.index, err);
      this.drop(f);
    });
    // Links after the files: a hard link may name a file of this batch.
    for (const kind of ['symlink', 'hardlink'] as const) {
      this.entries.forEach((e, i) => {
        if (e.kind !== kind) return;
        const under = failedAncestor(e.path, this.failedDirs);
        if (under) return fail(i, underFailedError(e.path, under));
        try {
          if (kind === 'symlink') placeSymlink(e);
          else placeHardlink(e);
          dirs.add(dirOf(e.path));
        } catch (err) {
          fail(i, err);
        }
      });
    }
    // Durable: the bytes of every landed file, then the names in each directory.
    for (const [f, err] of await this.syncHeld(landed)) {
      fail(f.index, err);
      // Its bytes may not be on the disk: the name goes, if it is still this file.
      const st = (() => {
        try {
          return lstatSync(f.entry.path);
        } catch {
          return undefined;
        }
      })();
      if (st && st.ino === f.temp!.ino && st.dev === f.temp!.dev) discardTemp(f.entry.path);
    }
    await inParallel([...dirs], async (dir) => {
      try {
        await syncDirectoryAsync(dir);
      } catch (err) {
        this.entries.forEach((e, i) => {
          if (results[i]!.ok && e.kind !== 'dir' && dirOf(e.path) === dir) fail(i, err);
        });
      }
    });
    return results;
  }

  /** The batch goes again or fails whole: every temporary name of it goes, every descriptor closes. */
  abort(): void {
    this.ended = true;
    for (const f of this.files) this.drop(f);
  }

  /** The file `k`, the files before it ended (given mode and times, or failed); opened if it has no file yet. */
  private reach(k: number): WriterFile {
    if (this.ended) throw new FerryError('PROTOCOL', 'bytes for a batch after its end');
    if (k > this.files.length) throw new FerryError('PROTOCOL', `bytes for file ${k} of a batch of ${this.files.length} files`);
    if (k < this.current) throw new FerryError('PROTOCOL', `bytes for file ${k} of a batch after file ${this.current}'s`);
    for (;;) {
      const f = this.files[this.current];
      if (f && !f.temp && !f.error) this.open(f);
      if (this.current === k) return f!;
      if (f) this.complete(f);
      this.current++;
    }
  }

  private open(f: WriterFile): void {
    const under = failedAncestor(f.entry.path, this.failedDirs);
    if (under) {
      f.error = underFailedError(f.entry.path, under);
      return;
    }
    try {
      f.temp = createTemp(f.entry.path);
    } catch (err) {
      f.error = destinationError(err, { path: f.entry.path });
    }
  }

  /** All of `f`'s bytes are in: its size (when it ends in zeros), mode and times, and it is held for the batch's sync. */
  private complete(f: WriterFile): void {
    if (!f.temp || f.error || f.received < f.size) return;
    try {
      if (f.writtenEnd < f.size) ftruncateSync(f.temp.fd, f.size);
      finishWritten(f.temp, f.entry);
    } catch (err) {
      this.fail(f, destinationError(err, { path: f.entry.path }));
      return;
    }
    f.held = true;
    if (++this.heldFiles < EARLY_SYNC_GROUP) return;
    // A group in the background; here, at once, when as many groups are syncing as the open-file cap allows.
    if ((this.syncingGroups + 2) * EARLY_SYNC_GROUP <= MAX_HELD_FILES) this.syncHeldEarly();
    else this.syncHeldNow();
  }

  /** The held files go to a group synced in the background (then closed) while the next files arrive. */
  private syncHeldEarly(): void {
    const group = this.takeHeld();
    this.syncingGroups++;
    this.earlySyncs.push(
      syncFiles(group, this.options.syncfs !== false).then((failed) => {
        for (const [f, err] of failed) this.fail(f, err);
        for (const f of group) this.close(f);
        this.syncingGroups--;
      }),
    );
  }

  /** Too many files open, the background groups being slower than the arrivals: the held ones are synced here, at once. */
  private syncHeldNow(): void {
    const held = this.takeHeld();
    syncFileSystemNow(dirOf(held[0]!.entry.path), this.options.syncfs !== false);
    for (const f of held) {
      try {
        fdatasyncSync(f.temp!.fd);
        this.close(f);
      } catch (err) {
        this.fail(f, destinationError(err, { path: f.entry.path }));
      }
    }
  }

  /** The files held now, no longer counted as held (their descriptors stay open until they are synced). */
  private takeHeld(): WriterFile[] {
    const held = this.files.filter((f) => f.held);
    for (const f of held) f.held = false;
    this.heldFiles -= held.length;
    return held;
  }

  /** Syncs the held files of `landed`, then closes them; the files whose bytes failed to reach the disk, with why. */
  private async syncHeld(landed: WriterFile[]): Promise<Array<[WriterFile, FerryError]>> {
    const held = landed.filter((f) => f.held);
    const failed = await syncFiles(held, this.options.syncfs !== false);
    for (const f of held) this.close(f);
    return failed;
  }

  private fail(f: WriterFile, err: FerryError): void {
    f.error ??= err;
    this.drop(f);
  }

  /** Closes `f`'s descriptor, if open. */
  private close(f: WriterFile): void {
    if (f.held) {
      f.held = false;
      this.heldFiles--;
    }
    if (f.temp && f.temp.fd >= 0) {
      closeQuietly(f.temp.fd);
      f.temp.fd = -1;
    }
  }

  /** Closes `f` and removes its temporary name (a failed or abandoned file; never one renamed into place). */
  private drop(f: WriterFile): void {
    if (!f.temp) return;
    this.close(f);
    discardTemp(f.temp.name);
  }
}

/**
 * Entries without bytes (directories, symbolic links, hard links) made at
 * once, as a BATCH of only those would make them: directories in order
 * (mkdir 0700, nothing made under one that could not be), then the links by
 * temporary name and rename, then the directories that received names synced.
 */
export async function applyEntries(entries: readonly BatchEntry[]): Promise<BatchEntryResult[]> {
  for (const e of entries) if (e.kind === 'file') throw new FerryError('INTERNAL', `applyEntries takes no files (${e.path})`);
  const writer = new BatchWriter(entries, 'xxh3');
  writer.makeDirectories();
  return writer.commit([]);
}
