/** A hashing thread of LocalHashers (local-hash.ts): ranges in, digests or errors out. */
import { parentPort } from 'node:worker_threads';
import { toFerryError } from '@ferry/core';
import { READ_BYTES, hashLocalRange } from './local-hash.js';
import type { HashAnswer, HashRequest } from './local-hash.js';

const port = parentPort;
/** One buffer for every range: this thread hashes one at a time. */
const buf = Buffer.allocUnsafe(READ_BYTES);
if (port) {
  port.on('message', (r: HashRequest) => {
    let answer: HashAnswer;
    try {
      answer = { id: r.id, hash: hashLocalRange(r.path, r.offset, r.length, r.algorithm, buf) };
    } catch (err) {
      answer = { id: r.id, error: toFerryError(err).toData() };
    }
    port.postMessage(answer);
  });
}
