/** A hashing thread of LocalHashers (local-hash.ts): ranges or lists of whole files in, digests or errors out. */
import { parentPort } from 'node:worker_threads';
import { toFerryError } from '@ferry/core';
import { READ_BYTES, hashLocalRange } from './local-hash.js';
import type { FileHash, HashAnswer, HashRequest } from './local-hash.js';

const port = parentPort;
/** One buffer for every range: this thread hashes one at a time. */
const buf = Buffer.allocUnsafe(READ_BYTES);

function hashOne(path: string, offset: number, length: number, algorithm: HashRequest['algorithm']): FileHash {
  try {
    return { hash: hashLocalRange(path, offset, length, algorithm, buf) };
  } catch (err) {
    return { error: toFerryError(err).toData() };
  }
}

if (port) {
  port.on('message', (r: HashRequest) => {
    const answer: HashAnswer = 'files' in r ? { id: r.id, hashes: r.files.map((f) => hashOne(f.path, 0, f.size, r.algorithm)) } : { id: r.id, ...hashOne(r.path, r.offset, r.length, r.algorithm) };
    port.postMessage(answer);
  });
}
