/**
 * A pull's batch on one connection: the remote helper reads the batch's
 * files (READ_BATCH) and this side writes them exactly as the helper writes
 * a push's batch, with the same code (serve's batch.ts `BatchWriter`): each
 * file created new under a random temporary name next to its path
 * (O_CREAT|O_EXCL|O_NOFOLLOW, 0600), sized at once so runs of zeros stay
 * holes, hashed as its bytes arrive and given its mode and times; then
 * renamed over its path only if its hash is the one the helper computed
 * while reading, links made at a temporary name and renamed, and the whole
 * batch made durable before it counts as done. Moved here from the
 * coordinator's tree-fetch.ts, so that agents on other nodes write a pull's
 * batches with the code the coordinator's own pool runs.
 */
import { lstatSync } from 'node:fs';
import { posix } from 'node:path';
import { ZERO_CHUNK, destinationError, errnoOf } from '@ferry/core';
import type { ErrorData, HashAlgorithm, TreeEntry } from '@ferry/core';
import type { BatchResult, ReadBatchResult, RemoteConnection } from '@ferry/transport';
import { BatchWriter } from '@ferry/serve';
import { stopBeforeRead } from './tree-push.js';
import type { Pace, WireBatch } from './tree-push.js';

/**
 * A pull's transfer: `remotePath` names a tree entry's source on the remote
 * side; `wire` paths are local. With `pace` (--limit-rate) each piece of
 * data waits its turn before it is taken: the read batch's queue then fills
 * and the connection stops reading, so the SSH window holds the helper back.
 * Runs of zeros (ZEROS frames) carry no bytes and are not paced.
 */
export function pullTransfer(algorithm: HashAlgorithm, remotePath: (entry: TreeEntry) => string, pace?: Pace): (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]> {
  return async (conn, batch) => {
    const writer = new BatchWriter(batch.wire, algorithm);
    const files = writer.files;
    let remote: ReadBatchResult[];
    stopBeforeRead(files.map((f) => batch.entries[f.index]!.path));
    try {
      remote = await conn.readBatch(
        files.map((f) => ({ path: remotePath(batch.entries[f.index]!), size: f.size })),
        algorithm,
        // A file the remote side could not read ends early: the next file's bytes end it here.
        async (i, data, zero) => {
          if (zero) writer.zeros(i, data.length, ZERO_CHUNK);
          else {
            const wait = pace?.(data.length);
            if (wait) await wait;
            writer.data(i, data);
          }
        },
      );
    } catch (err) {
      // The batch goes again (or fails whole): nothing of it may stay.
      writer.abort();
      throw err;
    }
    const srcHashes: Array<string | null> = batch.wire.map(() => null);
    files.forEach((f, k) => {
      const r = remote[k]!;
      if (r.ok) srcHashes[f.index] = r.hash;
    });
    const digests = writer.digests();
    const results = await writer.commit(srcHashes, digests);
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

/**
 * Why nothing may be written at tree path `path` under `root`, or undefined:
 * every directory between the root and it must be a directory, not a
 * symbolic link (the coordinator made each one, and a link in its place is
 * someone else's: a write through it would land outside the tree). `seen`
 * keeps each directory's answer for one batch. The final name itself is
 * never followed: the writer creates a fresh temporary name and renames it.
 */
export function destDirProblem(root: string, path: string, seen: Map<string, ErrorData | null>): ErrorData | undefined {
  const parts = path.split('/').slice(0, -1);
  let rel = '';
  for (const part of parts) {
    rel = rel === '' ? part : `${rel}/${part}`;
    let known = seen.get(rel);
    if (known === undefined) {
      const dir = posix.join(root, rel);
      try {
        const st = lstatSync(dir);
        known = st.isDirectory()
          ? null
          : { code: 'DEST_CONFLICT', message: `${posix.join(root, path)} was not written: ${dir} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}, not the directory this copy made: nothing is written through it. Move it away and copy again`, path: dir };
      } catch (err) {
        known =
          errnoOf(err) === 'ENOENT'
            ? { code: 'DEST_DIR_MISSING', message: `${posix.join(root, path)} was not written: its directory ${dir} is not there (the copy made it: was it removed?)`, path: dir, errno: 'ENOENT' }
            : destinationError(err, { path: dir }).toData();
      }
      seen.set(rel, known);
    }
    if (known) return known;
  }
  return undefined;
}
