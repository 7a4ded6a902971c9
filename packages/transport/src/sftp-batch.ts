/**
 * `writeBatch` in SFTP mode: the semantics of a helper's BATCH (core's
 * protocol.ts), emulated entry by entry with SFTP requests. A file is created
 * new (EXCL, 0600) under a random temporary name, sized at once (runs of
 * zeros are not sent and stay holes), written with pipelined requests, read
 * back and hashed, given its mode and times by handle, synced
 * (fsync@openssh.com) and renamed over its path (posix-rename@openssh.com,
 * which replaces). Links are made at a temporary name too and renamed.
 *
 * Entries run several at once, each after the directory it lands in (and a
 * hard link after the file it names) when that is in the same batch: entries
 * come parents first.
 *
 * Owners travel as numbers only (SFTP has no user names); extended
 * attributes not at all (the coordinator refuses --xattrs and --acls).
 *
 * What SFTP cannot do: sync a directory (the renames are as durable as the
 * server's file system makes them without it), tell inodes apart (a file is
 * recognised by owner and size, as for single files), and hash on the server
 * side: the destination hash is of the bytes read back over SFTP.
 */
import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { FerryError, createHasher, tempNameFor } from '@ferry/core';
import type { BatchEntry, ErrorData, HashAlgorithm } from '@ferry/core';
import { Semaphore } from '@ferry/core';
import { readExactly } from './batch.js';
import type { BatchRead, BatchResult } from './batch.js';
import type { SftpSession } from './sftp-session.js';
import { sftpWriteError } from './sftp-session.js';

/** Entries of one batch in progress at once. */
const PARALLEL_ENTRIES = 8;
/** Tries at a fresh temporary name when one is taken. */
const NAME_TRIES = 4;

export interface SftpBatchContext {
  session: SftpSession;
  label: string;
  /** Bytes of writes in flight per file. */
  windowBytes: number;
  chunkBytes: number;
}

function conflict(label: string, path: string, found: string, errno: string): ErrorData {
  return new FerryError('DEST_CONFLICT', `${label}:${path} cannot be made: ${found} is in the way there: move it away and copy again`, { host: label, path, errno }).toData();
}

class EntryFailure extends Error {
  constructor(readonly data: ErrorData) {
    super(data.message);
  }
}

export async function sftpWriteBatch(ctx: SftpBatchContext, entries: readonly BatchEntry[], algorithm: HashAlgorithm, read: BatchRead): Promise<BatchResult[]> {
  const { session, label } = ctx;
  const results: BatchResult[] = new Array(entries.length);
  /** Directories and files of this batch by path: whether they were made, once done. */
  const landed = new Map<string, Promise<boolean>>();
  const slots = new Semaphore(PARALLEL_ENTRIES);
  const fileWindow = Math.max(ctx.chunkBytes, Math.floor(ctx.windowBytes / PARALLEL_ENTRIES));

  const writeError = async (err: unknown, path: string): Promise<ErrorData> => (err instanceof EntryFailure ? err.data : (await sftpWriteError(session, err, path)).toData());
  const isDirectory = async (path: string) => session.lstat(path).then((st) => !st.link && st.type === 'directory', () => false);
  /** Runs `make` at fresh temporary names next to `path`; sftp-server says only "failure" for a name taken. */
  const atFreshName = async (path: string, make: (name: string) => Promise<void>): Promise<string> => {
    for (let i = 1; ; i++) {
      const name = tempNameFor(path, randomBytes(12).toString('hex'));
      try {
        await make(name);
        return name;
      } catch (err) {
        const taken = await session.lstat(name).then(() => true, () => false);
        if (!taken || i >= NAME_TRIES) throw err;
      }
    }
  };
  /** `name` renamed over `path`, or removed: a directory at `path` is DEST_CONFLICT. */
  const renameInto = async (name: string, path: string) => {
    try {
      if (await isDirectory(path)) throw new EntryFailure(conflict(label, path, 'a directory', 'EISDIR'));
      await session.rename(name, path);
    } catch (err) {
      await session.unlink(name).catch(() => {});
      throw err;
    }
  };

  const dir = async (e: BatchEntry): Promise<BatchResult> => {
    try {
      await session.mkdir(e.path, 0o700);
    } catch (err) {
      const st = await session.lstat(e.path).catch(() => undefined);
      if (!st) return { ok: false, error: await writeError(err, e.path) };
      if (st.link) return { ok: false, error: conflict(label, e.path, 'a symbolic link', 'EEXIST') };
      if (st.type !== 'directory') return { ok: false, error: conflict(label, e.path, 'a file', 'ENOTDIR') };
    }
    return { ok: true };
  };

  const file = async (e: BatchEntry, index: number): Promise<BatchResult> => {
    const size = e.size ?? 0;
    let handle: Buffer | undefined;
    let name: string | undefined;
    try {
      name = await atFreshName(e.path, async (n) => {
        // Read as well as written: the destination hash is of the bytes read back.
        handle = await session.open(n, 'xw+', 0o600);
      });
      const h = handle!;
      // Sized first: what the source gives as zeros is never sent and stays a hole.
      if (size > 0) await session.truncate(h, size);
      const writes = new Set<Promise<void>>();
      let inFlight = 0;
      let failure: unknown;
      let offset = 0;
      const outcome = await readExactly(read(index), size, algorithm, { host: label, path: e.path }, async (data, zero) => {
        const at = offset;
        offset += data.length;
        if (zero) return;
        // ssh2 copies the bytes into its packets here: `data` may be reused once this returns.
        const p = session.writeAt(h, data, 0, data.length, at).then(
          () => void (inFlight -= data.length),
          (err: unknown) => {
            inFlight -= data.length;
            failure ??= err;
          },
        );
        inFlight += data.length;
        writes.add(p);
        void p.finally(() => writes.delete(p));
        while (inFlight >= fileWindow && writes.size > 0) await Promise.race(writes);
        if (failure !== undefined) throw failure;
      });
      await Promise.all(writes);
      if (failure !== undefined) throw failure;
      if (outcome.srcHash === null) throw new EntryFailure(outcome.problem!.toData());
      // SFTP has no server-side hash: the destination's is of the bytes read back (small files:
      // one round trip more, not a second pass over the data on the wire for big ones).
      const dstHash = await readBack(ctx, h, size, algorithm);
      if (dstHash !== outcome.srcHash) {
        throw new EntryFailure(new FerryError('HASH_MISMATCH', `${label}:${e.path} was not written: it reads back with hash ${dstHash}, sent with ${outcome.srcHash}; send it again`, { host: label, path: e.path }).toData());
      }
      // The owner first, on its own: sftp-server chowns after it chmods, and a chown clears set-id bits.
      if (e.uid !== undefined || e.gid !== undefined) await session.fsetstat(h, { ...(e.uid === undefined ? {} : { uid: e.uid }), ...(e.gid === undefined ? {} : { gid: e.gid }) });
      const attrs = { ...(e.mode === undefined ? {} : { mode: e.mode }), ...(e.mtimeMs === undefined ? {} : { mtimeMs: e.mtimeMs, atimeMs: e.atimeMs ?? e.mtimeMs }) };
      if (Object.keys(attrs).length > 0) await session.fsetstat(h, attrs);
      await session.fsync(h).catch((err: unknown) => {
        // A server without fsync@openssh.com: what SFTP offers is all there is.
        if (!/not supported/i.test((err as Error).message)) throw err;
      });
      await session.close(h);
      handle = undefined;
      await renameInto(name, e.path);
      return { ok: true, srcHash: outcome.srcHash, dstHash };
    } catch (err) {
      if (handle) await session.close(handle).catch(() => {});
      if (name) await session.unlink(name).catch(() => {});
      return { ok: false, error: await writeError(err, e.path) };
    }
  };

  const link = async (e: BatchEntry): Promise<BatchResult> => {
    let name: string | undefined;
    try {
      if (e.kind === 'symlink') {
        name = await atFreshName(e.path, (n) => session.symlink(e.target!, n));
        // The link's own owner (lsetstat@openssh.com: lchown), never through it; a failure fails the entry.
        if (e.uid !== undefined || e.gid !== undefined) await session.lsetstat(name, { ...(e.uid === undefined ? {} : { uid: e.uid }), ...(e.gid === undefined ? {} : { gid: e.gid }) });
        // Times of the link itself where the server can (lsetstat@openssh.com); never through it.
        if (e.mtimeMs !== undefined) await session.lsetstat(name, { mtimeMs: e.mtimeMs, atimeMs: e.atimeMs ?? e.mtimeMs }).catch(() => {});
        await renameInto(name, e.path);
      } else {
        name = await atFreshName(e.path, (n) => session.hardlink(e.target!, n));
        await renameInto(name, e.path);
        // Already a name of that file: rename(2) did nothing and left both names.
        await session.unlink(name).catch(() => {});
      }
      return { ok: true };
    } catch (err) {
      if (name) await session.unlink(name).catch(() => {});
      return { ok: false, error: await writeError(err, e.path) };
    }
  };

  const tasks = entries.map(async (e, i) => {
    const parent = posix.dirname(e.path);
    const after = [landed.get(parent), e.kind === 'hardlink' ? landed.get(e.target!) : undefined];
    const done = (async () => {
      const [parentMade] = await Promise.all(after);
      if (parentMade === false) {
        // Nothing is made in a directory of this batch that could not be: whatever is at its name is not ours.
        const why = results[entries.findIndex((x) => x.path === parent)];
        const cause = why && !why.ok ? why.error : undefined;
        results[i] = { ok: false, error: new FerryError((cause?.code ?? 'DEST_CONFLICT') as ErrorData['code'], `${label}:${e.path} was not made: its directory ${parent} could not be (${cause?.message ?? 'failed'})`, { host: label, path: e.path, ...(cause?.errno ? { errno: cause.errno } : {}) }).toData() };
        return false;
      }
      await slots.acquire();
      try {
        results[i] = e.kind === 'dir' ? await dir(e) : e.kind === 'file' ? await file(e, i) : await link(e);
      } finally {
        slots.release();
      }
      return results[i]!.ok;
    })();
    if (e.kind === 'dir' || e.kind === 'file') landed.set(e.path, done);
    await done;
  });
  await Promise.all(tasks);
  return results;
}

/** Hash of the first `size` bytes of an open file, read back over SFTP. */
async function readBack(ctx: SftpBatchContext, handle: Buffer, size: number, algorithm: HashAlgorithm): Promise<string> {
  const h = createHasher(algorithm);
  const buf = Buffer.allocUnsafe(Math.min(ctx.chunkBytes, Math.max(size, 1)));
  for (let at = 0; at < size; at += buf.length) {
    const n = Math.min(buf.length, size - at);
    await ctx.session.readAt(handle, buf, 0, n, at);
    h.update(buf.subarray(0, n));
  }
  return h.digest();
}
