/** A hashing thread of LocalHashers (local-hash.ts): ranges in, digests or errors out. */
import { parentPort } from 'node:worker_threads';
import { toFerryError } from '@ferry/core';
import { hashLocalRange } from './local-hash.js';
import type { HashAnswer, HashRequest } from './local-hash.js';

const port = parentPort;
if (port) {
  port.on('message', (r: HashRequest) => {
    hashLocalRange(r.path, r.offset, r.length, r.algorithm).then(
      (hash) => port.postMessage({ id: r.id, hash } satisfies HashAnswer),
      (err: unknown) => port.postMessage({ id: r.id, error: toFerryError(err).toData() } satisfies HashAnswer),
    );
  });
}
