/**
 * The file system steps of a BATCH (core's protocol.ts): making a directory,
 * creating a file's temporary name, putting a file, a symbolic link or a hard
 * link in place, and syncing the directories that received names. One
 * implementation for both directions of a tree copy: `ferry serve` runs it
 * for a push (serve.ts feeds the bytes and orders the steps), the
 * coordinator for a pull (its tree-fetch.ts feeds the bytes READ_BATCH
 * brings). Nothing here holds session state.
 *
 * Every name is made new under a random temporary name in the target's
 * directory and renamed over the target: never a link followed at the final
 * component, never a half-written file at the target's name.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, lstat, lutimes, mkdir, open, rename, symlink, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import { FerryError, destinationError, errnoOf, tempNameFor, toFerryError } from '@ferry/core';
import type { BatchEntry, BatchEntryResult } from '@ferry/core';

/** Tries at a fresh random name when one is taken (a planted file or link): more would mean someone is racing us. */
const NAME_TRIES = 4;

/** The error for an entry whose target has something of another kind in the way. */
export function conflictError(path: string, found: string, errno: string): FerryError {
  return new FerryError('DEST_CONFLICT', `${path} cannot be made: ${found} is in the way there: move it away and copy again`, { path, errno });
}

/** A name next to `path` nobody can know in advance: `.NAME.ferry-<24 hex>.part`. */
export function randomTempName(path: string): string {
  return tempNameFor(path, randomBytes(12).toString('hex'));
}

/** Runs `make(name)` at fresh random temporary names until one is free (EEXIST: another try). */
async function atFreshName<T>(path: string, make: (name: string) => Promise<T>): Promise<{ name: string; value: T }> {
  for (let i = 1; ; i++) {
    const name = randomTempName(path);
    try {
      return { name, value: await make(name) };
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST' || i >= NAME_TRIES) throw destinationError(err, { path });
    }
  }
}

/** mkdir 0700; an existing directory (not a link to one) will do, anything else there fails with DEST_CONFLICT. */
export async function makeDirectory(path: string): Promise<void> {
  try {
    await mkdir(path, 0o700);
    return;
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw destinationError(err, { path });
  }
  const st = await lstat(path).catch((err: unknown) => {
    throw destinationError(err, { path });
  });
  if (st.isSymbolicLink()) throw conflictError(path, 'a symbolic link', 'EEXIST');
  if (!st.isDirectory()) throw conflictError(path, 'a file', 'ENOTDIR');
}

export interface TempFile {
  fh: FileHandle;
  name: string;
  ino: number;
  dev: number;
}

/**
 * A file's temporary name, created new (O_CREAT|O_EXCL|O_NOFOLLOW, 0600, as
 * OPEN with `exclusive` does) and sized to `size` at once: what never arrives
 * as DATA (ZEROS) stays a hole.
 */
export async function createTempFile(path: string, size: number): Promise<TempFile> {
  const { name, value: fh } = await atFreshName(path, (n) => open(n, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
  try {
    if (size > 0) await fh.truncate(size);
    const st = await fh.stat();
    return { fh, name, ino: st.ino, dev: st.dev };
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(name).catch(() => {});
    throw destinationError(err, { path });
  }
}

/** Mode, times and data of a file whose bytes are all written, through its handle; then closed. */
export async function finishFile(tmp: TempFile, entry: BatchEntry): Promise<void> {
  try {
    if (entry.mode !== undefined && entry.mode !== null) await tmp.fh.chmod(entry.mode);
    if (entry.mtimeMs !== undefined && entry.mtimeMs !== null) await tmp.fh.utimes((entry.atimeMs ?? entry.mtimeMs) / 1000, entry.mtimeMs / 1000);
    await tmp.fh.datasync();
  } catch (err) {
    throw destinationError(err, { path: entry.path });
  } finally {
    await tmp.fh.close().catch(() => {});
  }
}

/**
 * Renames `name` over `path` and says where it went, or removes `name` and
 * throws: EISDIR (a directory at `path`) is DEST_CONFLICT. `check`: what
 * must still be at `name` just before (the file this batch created).
 */
async function renameInto(name: string, path: string, check?: { ino: number; dev: number }): Promise<void> {
  try {
    if (check) {
      const st = await lstat(name);
      if (!st.isFile() || st.ino !== check.ino || st.dev !== check.dev) {
        throw new FerryError('DEST_REPLACED', `the temporary file ${name} of ${path} is not the file ferry created (found ${st.isSymbolicLink() ? 'a symbolic link' : `inode ${st.ino}`}): nothing was renamed into place. Check who can write in that directory`, { path });
      }
    }
    await rename(name, path);
  } catch (err) {
    // Never left behind, whatever failed; a swapped name is another user's, and stays.
    if (!(err instanceof FerryError)) await unlink(name).catch(() => {});
    if (errnoOf(err) === 'EISDIR' || errnoOf(err) === 'ENOTEMPTY' || errnoOf(err) === 'EEXIST') throw conflictError(path, 'a directory', 'EISDIR');
    throw destinationError(err, { path });
  }
}

export function placeFile(tmp: TempFile, path: string): Promise<void> {
  return renameInto(tmp.name, path, tmp);
}

/** Removes a file's temporary name (a failed entry): nothing of it is left. */
export async function discardTemp(name: string): Promise<void> {
  await unlink(name).catch(() => {});
}

/** symlink(target) at a temporary name, then renamed over `path`; its own times (lutimes) when given. */
export async function placeSymlink(entry: BatchEntry): Promise<void> {
  const { name } = await atFreshName(entry.path, (n) => symlink(entry.target!, n));
  if (entry.mtimeMs !== undefined && entry.mtimeMs !== null) {
    try {
      await lutimes(name, (entry.atimeMs ?? entry.mtimeMs) / 1000, entry.mtimeMs / 1000);
    } catch (err) {
      await unlink(name).catch(() => {});
      throw destinationError(err, { path: entry.path });
    }
  }
  await renameInto(name, entry.path);
}

/**
 * link(target) at a temporary name, then renamed over `path`. When `path` is
 * already a name of that file, rename(2) would do nothing and leave both
 * names: the temporary one is removed instead.
 */
export async function placeHardlink(entry: BatchEntry): Promise<void> {
  const { name } = await atFreshName(entry.path, (n) => link(entry.target!, n));
  const [mine, there] = await Promise.all([lstat(name).catch(() => undefined), lstat(entry.path).catch(() => undefined)]);
  if (mine && there && mine.ino === there.ino && mine.dev === there.dev) {
    await unlink(name).catch(() => {});
    return;
  }
  await renameInto(name, entry.path);
}

/** fsync of a directory, so the names renamed into it survive a crash. */
export async function syncDirectory(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    await fh.sync();
  } catch (err) {
    throw destinationError(err, { path: dir });
  } finally {
    await fh?.close().catch(() => {});
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

/** Runs `fn` over `items` with at most `limit` at once (the thread pool runs 4 file system calls at a time by default). */
export async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Renames, links and directory syncs of one commit at once (Node's thread pool runs 4 by default). */
const COMMIT_PARALLEL = 8;

/** A file of a batch whose bytes have all arrived. */
export interface CommitFile {
  /** Its index among the batch's entries. */
  index: number;
  entry: BatchEntry;
  /** Its temporary file, once created (rejects: it could not be). */
  temp: Promise<TempFile>;
  /** The temporary file with mode, times and data synced and closed (finishFile), or the entry's failure. */
  finished: Promise<TempFile>;
  /** Hash of the bytes received. */
  hash: string;
}

/**
 * A batch's commit: each file whose received hash is the source's is
 * renamed over its path (the others lose their temporary name), then
 * symbolic links and hard links are made (a hard link may name a file of
 * the batch), then every directory that received a name is synced once.
 * One result per entry; `dirErrors` are the batch's directories that could
 * not be made (by index), `failedDirs` the same by path: nothing is made under
 * them. A null source hash: the source changed while it was read.
 */
export async function commitEntries(
  entries: readonly BatchEntry[],
  files: readonly CommitFile[],
  srcHashes: ReadonlyArray<string | null | undefined>,
  dirErrors: ReadonlyMap<number, FerryError> = new Map(),
  failedDirs: ReadonlyMap<string, FerryError> = new Map(),
): Promise<BatchEntryResult[]> {
  const results: BatchEntryResult[] = entries.map(() => ({ ok: true }));
  const fail = (i: number, err: unknown) => {
    results[i] = { ok: false, error: toFerryError(err).toData() };
  };
  for (const [i, err] of dirErrors) fail(i, err);
  const synced = new Map<string, number[]>();
  const landed = (i: number) => {
    const dir = dirOf(entries[i]!.path);
    const here = synced.get(dir);
    if (here) here.push(i);
    else synced.set(dir, [i]);
  };
  const tempOf = async (f: CommitFile): Promise<TempFile | undefined> => {
    try {
      return await f.finished;
    } catch (err) {
      fail(f.index, err);
      // Created, then failed: its temporary name goes.
      const tmp = await f.temp.catch(() => undefined);
      if (tmp) await discardTemp(tmp.name);
      return undefined;
    }
  };
  await eachLimit(files, COMMIT_PARALLEL, async (f) => {
    const tmp = await tempOf(f);
    if (!tmp) return;
    const path = f.entry.path;
    const src = srcHashes[f.index];
    if (src === null || src === undefined) {
      await discardTemp(tmp.name);
      return fail(f.index, new FerryError('SOURCE_CHANGED', `${path} was not written: the source file changed while it was read`, { path }));
    }
    if (src !== f.hash) {
      await discardTemp(tmp.name);
      return fail(f.index, new FerryError('HASH_MISMATCH', `${path} was not written: its bytes arrived with hash ${f.hash}, sent with ${src} (corrupted on the way); send it again`, { path }));
    }
    try {
      await placeFile(tmp, path);
      results[f.index] = { ok: true, hash: f.hash };
      landed(f.index);
    } catch (err) {
      fail(f.index, err);
    }
  });
  // Links after the files: a hard link may name a file of this batch.
  for (const kind of ['symlink', 'hardlink'] as const) {
    const links = entries.map((e, i) => ({ e, i })).filter(({ e }) => e.kind === kind);
    await eachLimit(links, COMMIT_PARALLEL, async ({ e, i }) => {
      const under = failedAncestor(e.path, failedDirs);
      if (under) return fail(i, underFailedError(e.path, under));
      try {
        await (kind === 'symlink' ? placeSymlink(e) : placeHardlink(e));
        landed(i);
      } catch (err) {
        fail(i, err);
      }
    });
  }
  // A rename is durable once its directory is synced: each directory once, several at once.
  await eachLimit([...synced], COMMIT_PARALLEL, async ([dir, landedHere]) => {
    try {
      await syncDirectory(dir);
    } catch (err) {
      for (const i of landedHere) fail(i, err);
    }
  });
  return results;
}

/**
 * Entries without bytes (directories, symbolic links, hard links) made at
 * once, as a BATCH of only those would make them: directories in order
 * (mkdir 0700, nothing made under one that could not be), then the links by
 * temporary name and rename, then the directories that received names synced.
 */
export async function applyEntries(entries: readonly BatchEntry[]): Promise<BatchEntryResult[]> {
  const dirErrors = new Map<number, FerryError>();
  const failedDirs = new Map<string, FerryError>();
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (e.kind === 'file') throw new FerryError('INTERNAL', `applyEntries takes no files (${e.path})`);
    if (e.kind !== 'dir') continue;
    const under = failedAncestor(e.path, failedDirs);
    const failed = under ? underFailedError(e.path, under) : await makeDirectory(e.path).then(() => undefined, (err: unknown) => destinationError(err, { path: e.path }));
    if (failed) {
      dirErrors.set(i, failed);
      failedDirs.set(e.path, failed);
    }
  }
  return commitEntries(entries, [], [], dirErrors, failedDirs);
}
