import { describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { MAX_DECODE_DEPTH, decode, encode } from '@ferry/core';

describe('msgpack codec', () => {
  it('encodes a small map as plain msgpack bytes (map16, string key, fixint)', () => {
    expect(encode({ a: 1 }).toString('hex')).toBe('de0001a16101');
    expect(encode([1, 'x', true, null]).toString('hex')).toBe('9401a178c3c0');
  });

  it('returns a Buffer', () => {
    expect(Buffer.isBuffer(encode({ a: 1 }))).toBe(true);
  });

  it('round-trips nested plain data', () => {
    const value = { s: 'héllo ✓', n: -42, f: 1.5, t: true, z: null, list: [1, [2, { deep: 'x' }]], empty: {}, none: [] };
    expect(decode(encode(value))).toEqual(value);
  });

  it('decodes maps as plain objects, not records or Maps', () => {
    const out = decode(encode({ a: { b: 1 } })) as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.getPrototypeOf(out.a)).toBe(Object.prototype);
  });

  it('round-trips integers at and above 2^32 exactly', () => {
    for (const n of [2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 6 * 2 ** 30, 2 ** 40 + 12345, 2 ** 53 - 1]) {
      const out = decode(encode({ offset: n }));
      expect(out).toEqual({ offset: n });
    }
  });

  it('round-trips negative integers below -2^31 exactly', () => {
    for (const n of [-(2 ** 31), -(2 ** 31) - 1, -(2 ** 40), -(2 ** 53 - 1)]) expect(decode(encode(n))).toBe(n);
  });

  it('decodes 64-bit integers written by other encoders as numbers', () => {
    // uint64 0x0000000100000001 and int64 -2^33, as a strict msgpack encoder writes them.
    expect(decode(Buffer.from('cf0000000100000001', 'hex'))).toBe(2 ** 32 + 1);
    expect(decode(Buffer.from('d3fffffffe00000000', 'hex'))).toBe(-(2 ** 33));
  });

  it('round-trips a Buffer as a Buffer with the same bytes', () => {
    const buf = Buffer.from([0, 1, 2, 253, 254, 255]);
    const out = decode(encode({ data: buf })) as { data: unknown };
    expect(Buffer.isBuffer(out.data)).toBe(true);
    expect(Buffer.compare(out.data as Buffer, buf)).toBe(0);
  });

  it('round-trips a Uint8Array as a Buffer with the same bytes', () => {
    const out = decode(encode(new Uint8Array([9, 8, 7]))) as Buffer;
    expect(Buffer.isBuffer(out)).toBe(true);
    expect([...out]).toEqual([9, 8, 7]);
  });

  it('round-trips an empty and a large Buffer', () => {
    expect((decode(encode(Buffer.alloc(0))) as Buffer).length).toBe(0);
    const big = Buffer.alloc(100_000, 0xab);
    const out = decode(encode(big)) as Buffer;
    expect(out.length).toBe(100_000);
    expect(out.equals(big)).toBe(true);
  });

  it('decodes a subarray view of a larger buffer', () => {
    const payload = encode({ k: 'v' });
    const framed = Buffer.concat([Buffer.from([1, 2, 3]), payload, Buffer.from([4, 5])]);
    expect(decode(framed.subarray(3, 3 + payload.length))).toEqual({ k: 'v' });
  });

  it('gives the same bytes for the same value', () => {
    expect(encode({ job: 'abcd', range: 7 }).equals(encode({ job: 'abcd', range: 7 }))).toBe(true);
  });

  it('throws on truncated input', () => {
    expect(() => decode(Buffer.from([0x81]))).toThrow('data ends inside a msgpack map of 1 entries (at byte 1)');
  });

  it('decodes a fixmap written by other encoders', () => {
    expect(decode(Buffer.from('81a16101', 'hex'))).toEqual({ a: 1 });
  });

  it('throws on trailing bytes after a value', () => {
    expect(() => decode(Buffer.from('81a1610101', 'hex'))).toThrow('1 bytes after the msgpack value');
  });
});

describe('strict decoding', () => {
  const { Packr } = createRequire(import.meta.url)('msgpackr') as typeof import('msgpackr');
  const clone = new Packr({ structuredClone: true, useRecords: false });

  it('refuses a cyclic body made with structured clone (it once overflowed the stack on re-encoding)', () => {
    const body: Record<string, unknown> = { path: '/x', policy: 'read' };
    body.self = body;
    expect(() => decode(clone.pack(body))).toThrow(/^msgpack extension \(0xd6\) at byte \d+ is not accepted$|^msgpack extension type \d+ at byte \d+ is not accepted$/);
  });

  it("refuses msgpackr's extensions: Error, Set, Map by reference, RegExp, Date, typed arrays, BigInt, records", () => {
    const values: unknown[] = [new Error('x'), new Set([1]), /re/g, new Date(0), new Float64Array([1]), 2n ** 70n];
    for (const v of values) expect(() => decode(clone.pack(v)), String(v)).toThrow(/not accepted/);
    // A record definition (fixext 1, type 0x72) and a bundled-strings header (ext 0x62).
    expect(() => decode(Buffer.from('d47240', 'hex'))).toThrow('msgpack extension type 114 at byte 0 is not accepted');
    expect(() => decode(Buffer.from('d66200000000', 'hex'))).toThrow('msgpack extension (0xd6) at byte 0 is not accepted');
  });

  it('takes undefined, as the encoder writes an absent optional field', () => {
    expect(decode(encode({ a: undefined, b: 1 }))).toEqual({ a: undefined, b: 1 });
  });

  it('refuses maps whose keys are not strings, the never-used byte 0xc1, and nesting deeper than MAX_DECODE_DEPTH', () => {
    expect(() => decode(Buffer.from('810101', 'hex'))).toThrow('msgpack map key at byte 1 is not a string');
    expect(() => decode(Buffer.from('c1', 'hex'))).toThrow('msgpack byte 0xc1 (never used) at 0');
    const deep = (n: number) => Buffer.concat([Buffer.alloc(n, 0x91), Buffer.from([0xc0])]);
    expect(decode(deep(MAX_DECODE_DEPTH))).toBeDefined();
    expect(() => decode(deep(MAX_DECODE_DEPTH + 1))).toThrow(`msgpack value nested deeper than ${MAX_DECODE_DEPTH}`);
    expect(() => decode(deep(100_000))).toThrow(`msgpack value nested deeper than ${MAX_DECODE_DEPTH}`);
  });

  it('refuses an array or map header that claims more entries than the data holds, before anything is reserved', () => {
    expect(() => decode(Buffer.from('ddffffffff', 'hex'))).toThrow('data ends inside a msgpack array of 4294967295 entries (at byte 5)');
    expect(() => decode(Buffer.from('df7fffffffa161', 'hex'))).toThrow('data ends inside a msgpack map of 2147483647 entries (at byte 5)');
  });

  it('keeps a __proto__ key from changing the prototype', () => {
    const out = decode(Buffer.from('81a95f5f70726f746f5f5f81a17801', 'hex')) as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect((out as { x?: unknown }).x).toBeUndefined();
  });
});
