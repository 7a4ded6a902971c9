/**
 * What a tree pull reads from the remote side (`RemoteConnection.walk` and
 * `readBatch`): the types the three modes share, the wording of a file's
 * failure, and SFTP mode's emulation of WALK and READ_BATCH with readdir,
 * lstat, readlink, open and read.
 *
 * What SFTP cannot give: inode and device numbers (so no hard link is told
 * apart: each name comes as a file of its own), allocated bytes (a sparse
 * file is not known as one, though its zeros still travel as zero runs),
 * O_NOFOLLOW (a link at a file's name is refused by lstat just before the
 * open, which leaves a race), and a hash computed on the server: the hash
 * is of the bytes as they arrived.
 */
import { FerryError, ZERO_CHUNK, createHasher, isAllZero, sourceError } from '@ferry/core';
import type { ErrorData, HashAlgorithm, ReadBatchEntry, TreeEntry, WalkItem, WireWalkItem } from '@ferry/core';
import type { SftpSession } from './sftp-session.js';
import { sftpErrno } from './sftp-session.js';

/** One file's outcome: the hash of the bytes the remote side read (and sent), or why they cannot be trusted. */
export type ReadBatchResult = { ok: true; hash: string } | { ok: false; error: ErrorData };

/**
 * Takes file `index`'s next bytes (`zero`: a run of zeros; `data` then views a
 * shared zero buffer). Calls come in order, one at a time; `data` is the
 * caller's to keep. A rejection fails the whole batch.
 */
export type ReadBatchSink = (index: number, data: Buffer, zero: boolean) => Promise<void>;

/** A walk's wire item as a WalkItem. */
export function walkItemOf(item: WireWalkItem): WalkItem {
  if ('error' in item) return { path: item.path, error: { code: item.error.code, message: item.error.message } };
  const entry: TreeEntry = {
    path: item.path,
    kind: item.kind,
    size: item.size,
    mode: item.mode,
    uid: item.uid,
    gid: item.gid,
    mtimeMs: item.mtimeMs,
    atimeMs: item.atimeMs,
    dev: item.dev,
    ino: item.ino,
    nlink: item.nlink,
    ...(item.target === undefined || item.target === null ? {} : { target: item.target }),
    ...(item.allocated === undefined || item.allocated === null ? {} : { allocated: item.allocated }),
    ...(item.user === undefined || item.user === null ? {} : { user: item.user }),
    ...(item.group === undefined || item.group === null ? {} : { group: item.group }),
    ...(item.xattrs === undefined || item.xattrs === null ? {} : { xattrs: item.xattrs }),
    ...(item.hash === undefined || item.hash === null ? {} : { hash: item.hash }),
  };
  return { entry };
}

/** A file's failure as the caller gets it: named as `host:path`, errno-based ones worded by core's sourceError. */
export function readEntryError(error: ErrorData, path: string, host: string): ErrorData {
  if (error.errno && error.code.startsWith('SOURCE_') && error.code !== 'SOURCE_CHANGED') {
    return sourceError(Object.assign(new Error(error.message), { code: error.errno }), { host, path }).toData();
  }
  const message = error.message.includes(path) ? error.message.split(path).join(`${host}:${path}`) : `${host}:${path}: ${error.message}`;
  return { ...error, message, path, host };
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

interface SftpAttrs {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  atime: number;
  mtime: number;
}

function sftpCall<T>(fn: (done: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value as T))));
}

function entryOf(path: string, a: SftpAttrs, target?: string): TreeEntry {
  const type = a.mode & S_IFMT;
  const kind = type === S_IFREG ? 'file' : type === S_IFDIR ? 'dir' : type === S_IFLNK ? 'symlink' : 'special';
  return {
    path,
    kind,
    size: kind === 'file' ? a.size : 0,
    mode: a.mode & 0o7777,
    uid: a.uid,
    gid: a.gid,
    // SFTP v3 has whole seconds only.
    mtimeMs: a.mtime * 1000,
    atimeMs: a.atime * 1000,
    dev: 0,
    ino: 0,
    nlink: 1,
    ...(target === undefined ? {} : { target }),
  };
}

function walkError(path: string, err: unknown): WalkItem {
  return { path, error: { code: sftpErrno(err) ?? 'EIO', message: (err as Error).message } };
}

/**
 * The tree under `root` over SFTP: parents before their contents, one
 * directory listed at a time (readdir's attributes are lstat's), the
 * directories still to list kept as paths.
 */
export async function* sftpWalk(session: SftpSession, root: string): AsyncGenerator<WalkItem> {
  const sftp = session.sftp;
  const describe = async (path: string, abs: string, a: SftpAttrs): Promise<WalkItem> => {
    if ((a.mode & S_IFMT) !== S_IFLNK) return { entry: entryOf(path, a) };
    try {
      return { entry: entryOf(path, a, await sftpCall<string>((d) => sftp.readlink(abs, d))) };
    } catch (err) {
      return walkError(path, err);
    }
  };
  let rootAttrs: SftpAttrs;
  try {
    rootAttrs = await sftpCall<SftpAttrs>((d) => sftp.lstat(root, d as never));
  } catch (err) {
    yield walkError('', err);
    return;
  }
  yield await describe('', root, rootAttrs);
  if ((rootAttrs.mode & S_IFMT) !== S_IFDIR) return;
  const dirs = [''];
  while (dirs.length > 0) {
    const rel = dirs.pop()!;
    const abs = rel === '' ? root : `${root.replace(/\/$/, '')}/${rel}`;
    let list: Array<{ filename: string; attrs: SftpAttrs }>;
    try {
      list = await sftpCall((d) => sftp.readdir(abs, d as never));
    } catch (err) {
      yield walkError(rel, err);
      continue;
    }
    const found: string[] = [];
    for (const { filename, attrs } of list) {
      if (filename === '.' || filename === '..') continue;
      const child = rel === '' ? filename : `${rel}/${filename}`;
      const item = await describe(child, `${abs}/${filename}`, attrs);
      yield item;
      if ('entry' in item && item.entry.kind === 'dir') found.push(child);
    }
    dirs.push(...found.reverse());
  }
}

/** Bytes read per request chain of one file: a few SFTP reads in flight. */
const SFTP_READ_CHUNK = 1024 * 1024;

/**
 * READ_BATCH over SFTP: each file opened (after an lstat that refuses a
 * link), read as exactly its listed size, hashed here, its zero runs given
 * to the sink as such.
 */
export async function sftpReadBatch(session: SftpSession, label: string, entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm, sink: ReadBatchSink): Promise<ReadBatchResult[]> {
  const results: ReadBatchResult[] = [];
  for (let i = 0; i < entries.length; i++) results.push(await readOne(session, label, entries[i]!, i, algorithm, sink));
  return results;
}

async function readOne(session: SftpSession, label: string, e: ReadBatchEntry, index: number, algorithm: HashAlgorithm, sink: ReadBatchSink): Promise<ReadBatchResult> {
  const where = { host: label, path: e.path };
  let sent = 0;
  const failed = async (err: unknown): Promise<ReadBatchResult> => {
    // The sink expects every byte of the size: zeros, and the entry fails.
    while (sent < e.size) {
      const n = Math.min(ZERO_CHUNK.length, e.size - sent);
      sent += n;
      await sink(index, ZERO_CHUNK.subarray(0, n), true);
    }
    return { ok: false, error: (err instanceof FerryError ? err : sourceError(err, where)).toData() };
  };
  const changed = (why: string) => new FerryError('SOURCE_CHANGED', `${label}:${e.path} changed since it was listed (${why}): not copied; copy it again`, where);
  let handle: Buffer;
  try {
    const st = await session.lstat(e.path);
    if (st.link || st.type !== 'file') return await failed(changed(st.link ? 'it is a symbolic link now' : 'it is no longer a regular file'));
    handle = await session.open(e.path, 'r');
  } catch (err) {
    return failed(err);
  }
  const hasher = createHasher(algorithm);
  try {
    while (sent < e.size) {
      const n = Math.min(SFTP_READ_CHUNK, e.size - sent);
      const buf = Buffer.allocUnsafe(n);
      try {
        await session.readAt(handle, buf, 0, n, sent);
      } catch (err) {
        return await failed(err instanceof FerryError && err.code === 'SOURCE_CHANGED' ? changed(`it ended before ${e.size} bytes`) : err);
      }
      hasher.update(buf);
      sent += n;
      const zero = isAllZero(buf);
      await sink(index, zero ? ZERO_CHUNK.subarray(0, n) : buf, zero);
    }
    const more = Buffer.alloc(1);
    const extra = await sftpCall<number>((d) => session.sftp.read(handle, more, 0, 1, e.size, (err, bytes) => d(err, bytes))).catch(() => 0);
    if (extra > 0) return { ok: false, error: changed(`it holds more than ${e.size} bytes`).toData() };
    return { ok: true, hash: hasher.digest() };
  } finally {
    await session.close(handle).catch(() => {});
  }
}
