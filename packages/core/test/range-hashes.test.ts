import { describe, expect, it } from 'vitest';
import { RangeHashes, hashBytes, rootHash } from '@ferry/core';

describe('RangeHashes', () => {
  it('stores and returns xxh3 and sha256 digests as the same hex', () => {
    for (const algorithm of ['xxh3', 'sha256', 'crc32'] as const) {
      const h = new RangeHashes(5, algorithm);
      const digests = [0, 1, 2, 3, 4].map((i) => hashBytes(algorithm, Buffer.from([i])));
      digests.forEach((d, i) => h.set(i, d));
      expect(h.size).toBe(5);
      expect([0, 1, 2, 3, 4].map((i) => h.get(i))).toEqual(digests);
      expect([...h.values()]).toEqual(digests);
      expect(rootHash(algorithm, h.values())).toBe(rootHash(algorithm, digests));
    }
  });

  it('knows which ranges have none, and forgets a deleted one', () => {
    const h = new RangeHashes(4, 'xxh3');
    h.set(1, '0123456789abcdef');
    h.set(1, 'fedcba9876543210'); // replacing does not count twice
    expect(h.size).toBe(1);
    expect(h.get(0)).toBeUndefined();
    expect(h.has(1)).toBe(true);
    expect(h.get(1)).toBe('fedcba9876543210');
    expect(h.delete(1)).toBe(true);
    expect(h.delete(1)).toBe(false);
    expect(h.get(1)).toBeUndefined();
    expect(h.size).toBe(0);
  });

  it('keeps a digest that is not lowercase hex of the right length as given', () => {
    const h = new RangeHashes(3, 'xxh3');
    h.set(0, 'ABCDEF0123456789');
    h.set(1, 'abc');
    h.set(2, '0123456789abcdef');
    expect([h.get(0), h.get(1), h.get(2)]).toEqual(['ABCDEF0123456789', 'abc', '0123456789abcdef']);
    h.set(1, '00000000000000ff');
    expect(h.get(1)).toBe('00000000000000ff');
  });

  it('slices with blanks for missing ranges, clamped to the plan (the KV mirror blocks)', () => {
    const h = new RangeHashes(5, 'xxh3');
    h.set(3, '0000000000000003');
    expect(h.slice(2, 4)).toEqual(['', '0000000000000003']);
    expect(h.slice(4, 4096)).toEqual(['']);
    expect(h.slice(8, 16)).toEqual([]);
  });

  it('serialises to JSON as the array it replaced, null where a range has none', () => {
    const h = new RangeHashes(3, 'xxh3');
    h.set(0, '0000000000000000');
    h.set(2, '0000000000000002');
    expect(JSON.stringify({ rangeHashes: h })).toBe('{"rangeHashes":["0000000000000000",null,"0000000000000002"]}');
  });

  it('refuses an index outside the plan', () => {
    const h = new RangeHashes(2, 'xxh3');
    expect(() => h.set(2, '0000000000000000')).toThrow(RangeError);
    expect(() => h.get(-1)).toThrow(RangeError);
    expect(() => h.has(1.5)).toThrow(RangeError);
  });

  it('takes about the digest size per range', () => {
    const h = new RangeHashes(1_000_000, 'xxh3');
    for (let i = 0; i < 1_000_000; i += 1000) h.set(i, hashBytes('xxh3', Buffer.from(String(i))));
    expect(h.size).toBe(1000);
    expect(h.get(999_000)).toBe(hashBytes('xxh3', Buffer.from('999000')));
  });
});
