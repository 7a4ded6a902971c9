/**
 * Streaming range hashes. xxh3 (64-bit, native, ~10 GB/s per core) is the
 * default with `ferry serve`: it guards against misplaced or torn writes and
 * bit rot, not against an adversary (SSH's MAC covers the wire). crc32 (zlib's,
 * the same in Node and Python: 3-5 GiB/s in either) is what the no-install
 * helper (transport/remote/helper.py) computes fastest where ferry is not
 * installed. sha256 is there for sites that want a cryptographic digest.
 * Digests are lowercase hex, xxh3 in XXH3's canonical (big-endian) form so that
 * `xxhsum -H3` on a remote host gives the same text, crc32 as 8 digits.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import zlib from 'node:zlib';

// Loaded with require(): importing this CommonJS package as ESM costs ~25 ms more per process
// (Node 20), and every helper (one per stream) loads it. At the first xxh3 hash, not with this
// module, so that a command's start does not wait for the native module (~12 ms).
let xxh3Lib: typeof import('@node-rs/xxhash').xxh3 | undefined;
function xxh3Now(): typeof import('@node-rs/xxhash').xxh3 {
  return (xxh3Lib ??= (createRequire(import.meta.url)('@node-rs/xxhash') as typeof import('@node-rs/xxhash')).xxh3);
}

export type HashAlgorithm = 'xxh3' | 'sha256' | 'crc32';

export const HASH_ALGORITHMS: readonly HashAlgorithm[] = ['xxh3', 'crc32', 'sha256'];

/** zlib.crc32 came with Node 20.15; ferry's engines field asks for it. */
const crc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

function needCrc32(): (data: Uint8Array, value?: number) => number {
  if (!crc32) throw new Error(`crc32 needs Node 20.15 or later (zlib.crc32); this is ${process.version}`);
  return crc32;
}

const crc32Hex = (value: number) => (value >>> 0).toString(16).padStart(8, '0');

export interface Hasher {
  update(data: Uint8Array): void;
  /** Hex digest; the hasher must not be used afterwards. */
  digest(): string;
}

export function isHashAlgorithm(value: unknown): value is HashAlgorithm {
  return value === 'xxh3' || value === 'sha256' || value === 'crc32';
}

export function createHasher(algorithm: HashAlgorithm): Hasher {
  if (algorithm === 'xxh3') {
    const h = xxh3Now().Xxh3.withSeed();
    return {
      update: (data) => void h.update(data),
      digest: () => h.digest().toString(16).padStart(16, '0'),
    };
  }
  if (algorithm === 'crc32') {
    const crc = needCrc32();
    let value = 0;
    return {
      update: (data) => void (value = crc(data, value)),
      digest: () => crc32Hex(value),
    };
  }
  const h = createHash('sha256');
  return {
    update: (data) => void h.update(data),
    digest: () => h.digest('hex'),
  };
}

/** Buffers at most this long are hashed with @node-rs/xxhash's one-shot xxh3 (see hashBytes). */
const XXH3_ONE_SHOT_BYTES = 8 * 1024;

/** One buffer's hash, the same as a hasher fed that buffer gives. */
export function hashBytes(algorithm: HashAlgorithm, data: Uint8Array): string {
  if (algorithm === 'xxh3') {
    // One call, no hasher object, for a short buffer: creating an Xxh3 state costs some 5 us. The
    // one-shot call hashes ~1.6 GB/s where the state's update does over 10, so from
    // XXH3_ONE_SHOT_BYTES on the state is cheaper (the digests are the same).
    const lib = xxh3Now();
    if (data.length <= XXH3_ONE_SHOT_BYTES) return lib.xxh64(data).toString(16).padStart(16, '0');
    const h = lib.Xxh3.withSeed();
    h.update(data);
    return h.digest().toString(16).padStart(16, '0');
  }
  if (algorithm === 'crc32') return crc32Hex(needCrc32()(data));
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Root hash of a file: the hash, with the same algorithm, of its range hashes
 * in range order, each as raw bytes. Two files with the same range size and the
 * same root hash have the same ranges.
 */
export function rootHash(algorithm: HashAlgorithm, rangeHashes: Iterable<string>): string {
  const h = createHasher(algorithm);
  for (const hex of rangeHashes) h.update(Buffer.from(hex, 'hex'));
  return h.digest();
}
