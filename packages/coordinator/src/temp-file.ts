/**
 * The destination's temporary file, on disk: created new under a random name,
 * checked to be the same file on resume and before it is renamed into place,
 * its mode and times set through the open file. Pure parts (names, the
 * identity check, modes) are core's dest-file.ts.
 */
import { constants } from 'node:fs';
import { lstat, open, rename } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import { FerryError, copyMode, destinationError, errnoOf, identityOf, identityProblem, replacedError, tempNameFor } from '@ferry/core';
import type { FileIdentity } from '@ferry/core';
import { newTempToken, withRemote } from './prepare.js';
import type { PreparedCopy } from './prepare.js';

/** Names tried when one is taken (EEXIST) before giving up: a taken random name means someone is planting files. */
const CREATE_ATTEMPTS = 4;

/** Points the copy at another temporary file (a new name, or the one a resumed job created). */
export function useTempPath(prep: PreparedCopy, path: string): void {
  prep.tempPath = path;
  if (prep.direction === 'push') prep.remotePath = path;
  else prep.localPath = path;
}

/**
 * Creates the copy's temporary file new (O_CREAT|O_EXCL|O_NOFOLLOW, 0600) at
 * full size, sparse; a name already taken gets another random one. Resolves
 * with what identifies the file; `prep` then names it.
 */
export async function createTemp(prep: PreparedCopy): Promise<FileIdentity> {
  for (let attempt = 1; ; attempt++) {
    try {
      return prep.direction === 'push' ? await prep.conn.createNew(prep.tempPath, prep.fileBytes) : await createLocalNew(prep.tempPath, prep.fileBytes);
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST' || attempt >= CREATE_ATTEMPTS) throw prep.direction === 'push' ? destinationError(err, { host: prep.conn.label, path: prep.tempPath }) : err;
      useTempPath(prep, tempNameFor(prep.targetPath, newTempToken(), posix));
    }
  }
}

/** A new local file, mode 0600, that no link or earlier file at `path` can stand in for. */
export async function createLocalNew(path: string, size: number): Promise<FileIdentity> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    await fh.truncate(size);
    return identityOf(await fh.stat());
  } catch (err) {
    if (errnoOf(err) === 'EEXIST') throw err;
    throw destinationError(err, { path });
  } finally {
    await fh?.close();
  }
}

/**
 * `--inplace`: the existing destination file stands in for the temporary one
 * when it is a regular file (not a link) with one name; resolves with what
 * identifies it, with the size the copy will give it (resizeInPlace), or
 * undefined when there is no such file (then a temporary file is made).
 */
export async function adoptTarget(prep: PreparedCopy): Promise<FileIdentity | undefined> {
  if (prep.direction === 'pull') {
    let fh: FileHandle;
    try {
      fh = await open(prep.targetPath, constants.O_RDWR | constants.O_NOFOLLOW);
    } catch {
      return undefined;
    }
    try {
      const st = await fh.stat();
      return st.isFile() && st.nlink === 1 ? { ...identityOf(st), size: prep.fileBytes } : undefined;
    } finally {
      await fh.close();
    }
  }
  return withRemote(prep, async (conn) => {
    const st = await conn.stat(prep.targetPath).catch(() => undefined);
    if (!st || st.type !== 'file' || (st.nlink !== undefined && st.nlink !== 1) || st.uid === undefined) return undefined;
    // Opened for writing without following a link at the name (the helpers; SFTP: lstat first).
    let f;
    try {
      f = await conn.openFile(prep.targetPath, 'write', { expect: { ...identityOf(st), size: st.size } });
    } catch {
      return undefined;
    }
    const canResize = f.resize !== undefined;
    await f.close().catch(() => {});
    return canResize ? { ...identityOf(st), size: prep.fileBytes } : undefined;
  });
}

/** `--inplace`: gives the destination file the copy's size, through the open file, before any range is written. */
export async function resizeInPlace(prep: PreparedCopy, expect: FileIdentity): Promise<void> {
  const { size: _size, ...same } = expect;
  if (prep.direction === 'pull') {
    const fh = await openLocalTemp(prep.tempPath, same);
    try {
      if ((await fh.stat()).size !== prep.fileBytes) await fh.truncate(prep.fileBytes);
    } finally {
      await fh.close();
    }
    return;
  }
  await withRemote(prep, async (conn) => {
    const f = await conn.openFile(prep.tempPath, 'write', { expect: same });
    try {
      if (!f.resize) throw new FerryError('HELPER_UNAVAILABLE', `the helper on ${conn.label} cannot resize ${prep.tempPath} for --inplace: install the same ferry version there, or drop --inplace`, { host: conn.label, path: prep.tempPath });
      await f.resize(prep.fileBytes);
    } finally {
      await f.close().catch(() => {});
    }
  });
}

/**
 * Opens the local temporary file for writing if it is still the file the job
 * created: DEST_REPLACED (what was found, what to do) when it is not, before
 * anything is written. ENOENT passes through (a partial file that is gone).
 */
export async function openLocalTemp(path: string, expect: FileIdentity): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDWR | constants.O_NOFOLLOW);
  } catch (err) {
    if (errnoOf(err) === 'ELOOP') throw replacedError(path, 'a symbolic link');
    throw err;
  }
  const st = await fh.stat();
  const problem = identityProblem({ ...expect, size: st.size }, { type: st.isFile() ? 'file' : st.isDirectory() ? 'directory' : 'other', ino: st.ino, dev: st.dev, uid: st.uid, nlink: st.nlink });
  if (problem) {
    await fh.close();
    throw replacedError(path, problem);
  }
  return fh;
}

/**
 * Whether a resumed job's temporary file is still there ('gone' when not) and
 * its size; DEST_REPLACED when something else is at its name.
 */
export async function checkTemp(prep: PreparedCopy, expect: FileIdentity): Promise<{ size: number } | 'gone'> {
  const { size: _size, ...same } = expect;
  if (prep.direction === 'pull') {
    let fh: FileHandle;
    try {
      fh = await openLocalTemp(prep.tempPath, same);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return 'gone';
      throw err;
    }
    try {
      return { size: (await fh.stat()).size };
    } finally {
      await fh.close();
    }
  }
  return withRemote(prep, async (conn) => {
    let f;
    try {
      f = await conn.openFile(prep.tempPath, 'write', { expect: same });
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || (err instanceof FerryError && err.code === 'DEST_DIR_MISSING')) return 'gone' as const;
      throw err;
    }
    await f.close();
    const st = await conn.stat(prep.tempPath);
    return st ? { size: st.size } : ('gone' as const);
  });
}

/**
 * The local temporary file made durable, its mode (and with -p its times) set
 * through its handle, and renamed into place, checking that the names are
 * this file just before and just after the rename.
 */
export async function finalizeLocal(prep: PreparedCopy, expect: FileIdentity, preserve: boolean): Promise<void> {
  const fh = await openLocalTemp(prep.tempPath, expect);
  try {
    await fh.sync();
    await fh.chmod(copyMode(prep.sourceMode, process.umask(), preserve));
    if (preserve) await fh.utimes(prep.sourceMtimeMs / 1000, prep.sourceMtimeMs / 1000);
    const mine = await fh.stat();
    await sameFileAt(prep.tempPath, mine, 'before the rename');
    // --inplace: the file is already where it belongs.
    if (prep.tempPath !== prep.targetPath) await rename(prep.tempPath, prep.targetPath);
    await sameFileAt(prep.targetPath, mine, 'after the rename');
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw destinationError(err, { path: prep.targetPath });
  } finally {
    await fh.close();
  }
}

/** DEST_REPLACED unless `path` names the file `mine` describes (not a link to it). */
async function sameFileAt(path: string, mine: { ino: number; dev: number }, when: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (err) {
    throw replacedError(path, `nothing (${errnoOf(err) ?? (err as Error).message}) ${when}`);
  }
  const problem = st.isSymbolicLink() ? 'a symbolic link' : !st.isFile() ? 'something that is not a regular file' : st.ino !== mine.ino || st.dev !== mine.dev ? `another file (inode ${st.ino}, not ${mine.ino})` : undefined;
  if (problem) throw replacedError(path, `${problem} ${when}`);
}

/** The remote counterpart of finalizeLocal, through one open handle on the coordinator's connection. */
export async function finalizeRemote(prep: PreparedCopy, expect: FileIdentity, preserve: boolean): Promise<void> {
  await withRemote(prep, async (conn) => {
    const f = await conn.openFile(prep.tempPath, 'write', { expect });
    try {
      await f.fsync();
      const mode = copyMode(prep.sourceMode, preserve ? 0 : await conn.umask(prep.tempPath), preserve);
      await f.setstat(preserve ? { mode, mtimeMs: Math.floor(prep.sourceMtimeMs) } : { mode });
      // --inplace: the file is already where it belongs.
      if (prep.tempPath !== prep.targetPath) await f.renameTo(prep.tempPath, prep.targetPath);
    } finally {
      await f.close().catch(() => {});
    }
  });
}
