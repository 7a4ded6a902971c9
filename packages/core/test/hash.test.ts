import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { HASH_ALGORITHMS, createHasher, hashBytes, isHashAlgorithm, rootHash } from '@ferry/core';
import type { HashAlgorithm } from '@ferry/core';

/** Deterministic pseudo-random bytes (xorshift32), so digests are stable across runs. */
function bytes(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const text = (s: string) => Buffer.from(s, 'utf8');

describe('hash algorithms', () => {
  it('lists xxh3, crc32 and sha256, in the order a job prefers them', () => {
    expect(HASH_ALGORITHMS).toEqual(['xxh3', 'crc32', 'sha256']);
  });

  it('recognises exactly the supported algorithm names', () => {
    expect(isHashAlgorithm('xxh3')).toBe(true);
    expect(isHashAlgorithm('sha256')).toBe(true);
    expect(isHashAlgorithm('crc32')).toBe(true);
    expect(isHashAlgorithm('XXH3')).toBe(false);
    expect(isHashAlgorithm('crc32c')).toBe(false);
    expect(isHashAlgorithm('md5')).toBe(false);
    expect(isHashAlgorithm('')).toBe(false);
    expect(isHashAlgorithm(undefined)).toBe(false);
    expect(isHashAlgorithm(3)).toBe(false);
  });
});

describe('crc32', () => {
  it('gives the standard check value of "123456789" (zlib, cksum -a crc32b, Python zlib.crc32)', () => {
    expect(hashBytes('crc32', text('123456789'))).toBe('cbf43926');
    expect(hashBytes('crc32', new Uint8Array(0))).toBe('00000000');
  });

  it('keeps leading zeros so every digest is 8 hex digits', () => {
    const digests = Array.from({ length: 2000 }, (_, i) => hashBytes('crc32', text(`ferry-${i}`)));
    for (const d of digests) expect(d).toMatch(/^[0-9a-f]{8}$/);
    expect(digests.some((d) => d.startsWith('0'))).toBe(true);
  });

  it('streams to the same digest as one buffer, whatever the pieces', () => {
    const data = bytes(3 * 65536 + 17, 7);
    const h = createHasher('crc32');
    for (let at = 0; at < data.length; at += 10007) h.update(data.subarray(at, at + 10007));
    expect(h.digest()).toBe(hashBytes('crc32', data));
  });
});

describe('xxh3', () => {
  it('gives the canonical digest of empty input', () => {
    expect(hashBytes('xxh3', new Uint8Array(0))).toBe('2d06800538d394c2');
  });

  it('gives the canonical digest of "abc"', () => {
    expect(hashBytes('xxh3', text('abc'))).toBe('78af5f94892f3950');
  });

  it('keeps leading zeros so every digest is 16 hex digits', () => {
    expect(hashBytes('xxh3', text('ferry-8'))).toBe('0440216782466d91');
    for (let i = 0; i < 200; i++) expect(hashBytes('xxh3', text(`ferry-${i}`))).toMatch(/^[0-9a-f]{16}$/);
  });

  it('gives the one-shot digest of a buffer too long for the one-shot call (hashed through a state)', () => {
    // XXH3_64bits with seed 0 of these 100,000 bytes, as @node-rs/xxhash's one-shot xxh64 gives it.
    expect(hashBytes('xxh3', bytes(100_000, 7))).toBe('83640ced6c9a22a3');
  });

  it('digests an empty streaming hasher like empty input', () => {
    expect(createHasher('xxh3').digest()).toBe('2d06800538d394c2');
  });

  it('hashes a plain Uint8Array view by its own bytes, not its backing buffer', () => {
    const backing = new Uint8Array(32);
    backing.set(text('0123456789abcdef'), 0);
    const view = backing.subarray(3, 10);
    expect(hashBytes('xxh3', view)).toBe(hashBytes('xxh3', text('3456789')));
  });
});

describe('hashBytes and a streaming hasher', () => {
  it('agree for every algorithm, whatever the length and however the bytes are fed', () => {
    // Lengths around xxh3's internal boundaries (16, 128, 240 bytes, its 1 KiB stripes and 64 KiB blocks) and hashBytes' one-shot limit (8 KiB).
    const lengths = [0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 1025, 8192, 8193, 65_536, 65_537, 1_048_583];
    const data = new Uint8Array(1_048_583);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2_654_435_761) >>> 24;
    for (const algorithm of HASH_ALGORITHMS) {
      for (const n of lengths) {
        const bytes = data.subarray(0, n);
        const h = createHasher(algorithm);
        for (let at = 0; at < n; at += 7_001) h.update(bytes.subarray(at, Math.min(n, at + 7_001)));
        expect(hashBytes(algorithm, bytes), `${algorithm}, ${n} bytes`).toBe(h.digest());
      }
    }
  });
});

describe('sha256', () => {
  it('gives the FIPS 180-2 digest of "abc"', () => {
    expect(hashBytes('sha256', text('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('gives the known digest of empty input', () => {
    expect(hashBytes('sha256', new Uint8Array(0))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('gives the FIPS 180-2 digest of the two-block message', () => {
    expect(hashBytes('sha256', text('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'))).toBe(
      '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
    );
  });
});

describe('streaming hashers', () => {
  const data = bytes(1 << 20, 12345);

  it.each(HASH_ALGORITHMS.map((a) => [a]))('give the one-shot %s digest when fed in uneven pieces', (algorithm: HashAlgorithm) => {
    const expected = hashBytes(algorithm, data);
    const h = createHasher(algorithm);
    let at = 0;
    let step = 1;
    while (at < data.length) {
      const n = Math.min(step, data.length - at);
      h.update(data.subarray(at, at + n));
      at += n;
      step = (step * 7 + 3) % 65537;
    }
    expect(h.digest()).toBe(expected);
  });

  it.each(HASH_ALGORITHMS.map((a) => [a]))('give the one-shot %s digest when fed one byte at a time', (algorithm: HashAlgorithm) => {
    const small = data.subarray(0, 4099);
    const h = createHasher(algorithm);
    for (let i = 0; i < small.length; i++) h.update(small.subarray(i, i + 1));
    expect(h.digest()).toBe(hashBytes(algorithm, small));
  });

  it.each(HASH_ALGORITHMS.map((a) => [a]))('are not changed by empty updates (%s)', (algorithm: HashAlgorithm) => {
    const h = createHasher(algorithm);
    h.update(new Uint8Array(0));
    h.update(text('ab'));
    h.update(new Uint8Array(0));
    h.update(text('c'));
    expect(h.digest()).toBe(hashBytes(algorithm, text('abc')));
  });

  it('gives the same sha256 as node:crypto for a megabyte of data', () => {
    expect(hashBytes('sha256', data)).toBe(createHash('sha256').update(data).digest('hex'));
  });

  it('gives different xxh3 digests for inputs that differ in one bit', () => {
    const flipped = Buffer.from(data);
    flipped[500_000] = flipped[500_000]! ^ 1;
    expect(hashBytes('xxh3', flipped)).not.toBe(hashBytes('xxh3', data));
  });
});

describe('rootHash', () => {
  const rangeHashes = ['0440216782466d91', '2d06800538d394c2', '78af5f94892f3950'];

  it('is the hash of the range digests as raw bytes, in order', () => {
    const raw = Buffer.from(rangeHashes.join(''), 'hex');
    expect(raw.length).toBe(24);
    expect(rootHash('xxh3', rangeHashes)).toBe(hashBytes('xxh3', raw));
  });

  it('is deterministic', () => {
    expect(rootHash('xxh3', rangeHashes)).toBe(rootHash('xxh3', [...rangeHashes]));
    const sha = rangeHashes.map((h) => hashBytes('sha256', text(h)));
    expect(rootHash('sha256', sha)).toBe(rootHash('sha256', sha));
    expect(rootHash('sha256', sha)).toBe(createHash('sha256').update(Buffer.from(sha.join(''), 'hex')).digest('hex'));
  });

  it('depends on the order of the ranges', () => {
    const reversed = [...rangeHashes].reverse();
    expect(rootHash('xxh3', reversed)).not.toBe(rootHash('xxh3', rangeHashes));
  });

  it('is the hash of empty input for a file with no ranges', () => {
    expect(rootHash('xxh3', [])).toBe('2d06800538d394c2');
    expect(rootHash('sha256', [])).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('accepts any iterable, such as a generator', () => {
    function* gen() {
      yield* rangeHashes;
    }
    expect(rootHash('xxh3', gen())).toBe(rootHash('xxh3', rangeHashes));
  });

  it('gives a stable digest for a known list of range hashes', () => {
    expect(rootHash('xxh3', rangeHashes)).toBe('c681dac516c0de85');
    // sha256 of the 32 raw bytes of sha256("abc"), as `xxd -r -p | sha256sum` gives it.
    expect(rootHash('sha256', ['ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'])).toBe(
      '4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358',
    );
  });
});
