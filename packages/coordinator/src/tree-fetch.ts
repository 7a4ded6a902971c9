/**
 * A pull's transfer of one batch (tree-send.ts runs it on its pool of
 * connections): the remote helper reads the batch's files (READ_BATCH) and
 * this side writes them exactly as the helper writes a push's batch, with the
 * same code (serve's batch.ts): each file created new under a random
 * temporary name next to its path (O_CREAT|O_EXCL|O_NOFOLLOW, 0600), sized
 * at once so runs of zeros stay holes, hashed as its bytes arrive, given its
 * mode and times through the handle and synced; then renamed over its path
 * only if its hash is the one the helper computed while reading, symbolic
 * links made at a temporary name and renamed, and each directory that
 * received a name synced.
 */
import { Semaphore, createHasher, destinationError, pwriteAll } from '@ferry/core';
import type { FerryError } from '@ferry/core';
import type { BatchEntry, HashAlgorithm, Hasher, TreeEntry } from '@ferry/core';
import type { BatchResult, ReadBatchResult, RemoteConnection } from '@ferry/transport';
import { commitEntries, createTempFile, discardTemp, finishFile } from '@ferry/serve';
import type { CommitFile, TempFile } from '@ferry/serve';
import type { WireBatch } from './tree-send.js';

/** Temporary files of one batch open at once: the one receiving bytes and those being synced. */
const OPEN_FILES = 32;

interface Incoming {
  index: number;
  entry: BatchEntry;
  size: number;
  hasher: Hasher;
  written: number;
  temp: Promise<TempFile>;
  finished: Promise<TempFile>;
  error: FerryError | undefined;
}

/** A pull's transfer: `remotePath` names a tree entry's source on the remote side; `wire` paths are local. */
export function pullTransfer(algorithm: HashAlgorithm, remotePath: (entry: TreeEntry) => string): (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]> {
  return async (conn, batch) => {
    const slots = new Semaphore(OPEN_FILES);
    const files: Incoming[] = [];
    batch.wire.forEach((entry, index) => {
      if (entry.kind !== 'file') return;
      files.push({ index, entry, size: entry.size ?? 0, hasher: createHasher(algorithm), written: 0, temp: Promise.reject(new Error('not begun')), finished: Promise.reject(new Error('not begun')), error: undefined });
    });
    for (const f of files) {
      f.temp.catch(() => {});
      f.finished.catch(() => {});
    }
    let current = -1;
    /** The files before `k` are done (their bytes all in) and `k` is being received. */
    const advance = async (k: number) => {
      while (current < k) {
        if (current >= 0) finish(files[current]!);
        current++;
        const f = files[current];
        if (!f) return;
        // At most OPEN_FILES open: the sink waits here, which holds the connection's reading.
        await slots.acquire();
        f.temp = createTempFile(f.entry.path, f.size);
        f.temp.catch(() => slots.release());
        await f.temp.catch((err: unknown) => {
          f.error ??= destinationError(err, { path: f.entry.path });
        });
      }
    };
    const finish = (f: Incoming) => {
      f.finished = f.temp.then(async (tmp) => {
        try {
          if (f.error) {
            await tmp.fh.close().catch(() => {});
            throw f.error;
          }
          await finishFile(tmp, f.entry);
          return tmp;
        } finally {
          slots.release();
        }
      });
      f.finished.catch(() => {});
    };
    const sink = async (i: number, data: Buffer, zero: boolean) => {
      await advance(i);
      const f = files[i]!;
      f.hasher.update(data);
      // Zeros are not written: the temporary file was sized at creation and reads as zeros there.
      if (!zero && !f.error) {
        try {
          await pwriteAll((await f.temp).fh, data, data.length, f.written);
        } catch (err) {
          f.error = destinationError(err, { path: f.entry.path });
        }
      }
      f.written += data.length;
    };
    let remote: ReadBatchResult[];
    try {
      remote = await conn.readBatch(
        files.map((f) => ({ path: remotePath(batch.entries[f.index]!), size: f.size })),
        algorithm,
        (i, data, zero) => sink(i, data, zero),
      );
      // Files without bytes (and the last one) end here.
      await advance(files.length);
    } catch (err) {
      // The batch goes again (or fails whole): nothing of it may stay.
      await Promise.all(
        files.map(async (f) => {
          const tmp = await f.temp.catch(() => undefined);
          if (!tmp) return;
          await tmp.fh.close().catch(() => {});
          await f.finished.catch(() => {});
          await discardTemp(tmp.name);
        }),
      );
      throw err;
    }
    const srcHashes: Array<string | null> = batch.wire.map(() => null);
    files.forEach((f, k) => {
      const r = remote[k]!;
      if (r.ok) srcHashes[f.index] = r.hash;
    });
    const digests = files.map((f) => f.hasher.digest());
    const commit: CommitFile[] = files.map((f, k) => ({ index: f.index, entry: f.entry, temp: f.temp, finished: f.finished, hash: digests[k]! }));
    const results = await commitEntries(batch.wire, commit, srcHashes);
    const out: BatchResult[] = results.map((r) => (r.ok ? { ok: true } : { ok: false, error: r.error }));
    files.forEach((f, k) => {
      const r = remote[k]!;
      // The remote side's reason (the file changed, or could not be read) says more than "no hash".
      if (!r.ok) out[f.index] = { ok: false, error: r.error };
      else if (results[f.index]!.ok) out[f.index] = { ok: true, srcHash: r.hash, dstHash: digests[k]! };
    });
    return out;
  };
}
