/**
 * The data path of a discard job (the control-plane benchmark, FERRY_BENCH_DISCARD:
 * see core's discard.ts): a connection to nowhere, whose fsync is free, and a
 * range "move" that reads and writes nothing. Everything around it (pulling,
 * batching until durable, reporting, acking) is the agent's usual code.
 */
import { FerryError, discardHash } from '@ferry/core';
import type { HashAlgorithm } from '@ferry/core';
import type { RemoteConnection, RemoteFile } from '@ferry/transport';
import type { RangeResult } from './pump.js';

const noData = () => {
  throw new FerryError('INTERNAL', 'a discard job moves no bytes');
};

export function discardConnection(label: string): RemoteConnection {
  let alive = true;
  const file: RemoteFile = {
    headroom: 0,
    beginWrite: noData,
    read: noData,
    fsync: () => Promise.resolve(),
    hashStored: noData,
    close: () => Promise.resolve(),
    setstat: noData,
    renameTo: noData,
  };
  const none = () => Promise.reject(new FerryError('INTERNAL', 'a discard job has no remote host'));
  return {
    label,
    get alive() {
      return alive;
    },
    mode: 'helper',
    stat: none,
    createSized: none,
    createNew: none,
    umask: none,
    openFile: () => Promise.resolve(file),
    setstat: none,
    rename: none,
    unlink: none,
    rmdir: none,
    hashRange: none,
    writeBatch: none,
    walk: () => ({ [Symbol.asyncIterator]: () => ({ next: none }) }),
    readBatch: none,
    metadata: { owners: false, names: false, xattrs: false },
    glob: none,
    realpath: none,
    homeDirectory: none,
    close: () => {
      alive = false;
    },
  };
}

/** One range of a discard job: done at once, both hashes from its coordinates. */
export function discardRange(job: { offset: number; length: number; algorithm: HashAlgorithm; onBytes?: (n: number) => void }): RangeResult {
  const hash = discardHash(job.algorithm, job);
  job.onBytes?.(job.length);
  return { srcHash: hash, dstHash: hash, bytes: job.length };
}
