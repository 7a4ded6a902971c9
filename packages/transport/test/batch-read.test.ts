import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { HASH_ALGORITHMS, createHasher } from '@ferry/core';
import type { HashAlgorithm } from '@ferry/core';
import { readExactly } from '../src/batch.js';

/** A source giving `data` in pieces of at most `piece` bytes. */
async function* pieces(data: Buffer, piece: number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < data.length; at += piece) yield data.subarray(at, at + piece);
}

/** What readExactly emits and returns for `source` listed at `size` bytes. */
async function read(source: AsyncIterable<Uint8Array>, size: number, algorithm: HashAlgorithm) {
  const out: Buffer[] = [];
  const outcome = await readExactly(source, size, algorithm, { host: 'here', path: 'f' }, async (data) => void out.push(Buffer.from(data)));
  return { ...outcome, bytes: Buffer.concat(out) };
}

/** The hash a streaming hasher gives for `data`. */
function streamed(algorithm: HashAlgorithm, data: Buffer): string {
  const h = createHasher(algorithm);
  h.update(data);
  return h.digest();
}

describe('readExactly', () => {
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const small = data.subarray(0, 5000);

  it.each(HASH_ALGORITHMS)('hashes a file that comes in one piece as a hasher fed it would (%s)', async (algorithm) => {
    const r = await read(pieces(small, small.length), small.length, algorithm);
    expect(r.problem).toBeUndefined();
    expect(r.bytes.equals(small)).toBe(true);
    expect(r.srcHash).toBe(streamed(algorithm, small));
  });

  it.each(HASH_ALGORITHMS)('hashes a file in many pieces, and one of 1 MiB pieces and more, the same way (%s)', async (algorithm) => {
    const few = await read(pieces(small, 1000), small.length, algorithm);
    expect(few.srcHash).toBe(streamed(algorithm, small));
    const big = await read(pieces(data, 4 * 1024 * 1024), data.length, algorithm);
    expect(big.bytes.equals(data)).toBe(true);
    expect(big.srcHash).toBe(streamed(algorithm, data));
  });

  it.each(HASH_ALGORITHMS)('hashes an empty file (%s)', async (algorithm) => {
    const r = await read(pieces(Buffer.alloc(0), 1), 0, algorithm);
    expect(r.srcHash).toBe(streamed(algorithm, Buffer.alloc(0)));
  });

  it('gives no hash for a file that grew or shrank since it was listed, and exactly its listed size in bytes', async () => {
    const grew = await read(pieces(small, small.length), small.length - 1, 'xxh3');
    expect(grew.srcHash).toBeNull();
    expect(grew.problem?.code).toBe('SOURCE_CHANGED');
    expect(grew.bytes.length).toBe(small.length - 1);
    const shrank = await read(pieces(small, small.length), small.length + 10, 'xxh3');
    expect(shrank.srcHash).toBeNull();
    expect(shrank.problem?.code).toBe('SOURCE_CHANGED');
    expect(shrank.bytes.length).toBe(small.length + 10);
  });
});
