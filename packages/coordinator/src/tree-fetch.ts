/**
 * A pull's transfer of one batch (tree-send.ts runs it on its pool of
 * connections): the remote helper reads the batch's files (READ_BATCH) and
 * this side writes them exactly as the helper writes a push's batch, with the
 * same code (serve's batch.ts `BatchWriter`): each file created new under a
 * random temporary name next to its path (O_CREAT|O_EXCL|O_NOFOLLOW, 0600),
 * sized at once so runs of zeros stay holes, hashed as its bytes arrive and
 * given its mode and times; then renamed over its path only if its hash is
 * the one the helper computed while reading, links made at a temporary name
 * and renamed, and the whole batch made durable before it counts as done.
 */
import { ZERO_CHUNK } from '@ferry/core';
import type { HashAlgorithm, TreeEntry } from '@ferry/core';
import type { BatchResult, ReadBatchResult, RemoteConnection } from '@ferry/transport';
import { BatchWriter } from '@ferry/serve';
import type { Pace } from '@ferry/agent';
import type { WireBatch } from './tree-send.js';

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
