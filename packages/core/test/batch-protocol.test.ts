/**
 * BATCH and COMMIT on the wire: their body limits (1 MiB, where every other
 * request stays within 64 KiB), and the checks every entry passes before a
 * helper acts on it.
 */
import { describe, expect, it } from 'vitest';
import {
  FRAME_HEADER_BYTES,
  FerryError,
  FrameDecoder,
  FrameType,
  MAX_BATCH_BODY_BYTES,
  MAX_BATCH_BYTES,
  MAX_BATCH_ENTRIES,
  MAX_CONTROL_BYTES,
  batchBody,
  batchBytes,
  batchEntriesProblem,
  encode,
  encodeControl,
  isTreePath,
  maxControlBytes,
} from '@ferry/core';
import type { BatchEntry, DecodedFrame, DecoderSide } from '@ferry/core';

function frame(type: number, id: number, body: Buffer): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(id, 4);
  header.writeUInt32BE(body.length, 8);
  return Buffer.concat([header, body]);
}

function decode(bytes: Buffer, side: DecoderSide = 'helper'): DecodedFrame[] {
  const out: DecodedFrame[] = [];
  new FrameDecoder((f) => out.push(f), side).push(bytes);
  return out;
}

function protocolMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('PROTOCOL');
    return (err as FerryError).message;
  }
  throw new Error('expected a PROTOCOL error, nothing was thrown');
}

/** A header alone, declaring `bytes` of body: the decoder must refuse it before any body byte. */
function header(type: number, bytes: number): Buffer {
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt8(type, 0);
  h.writeUInt32BE(1, 4);
  h.writeUInt32BE(bytes, 8);
  return h;
}

const full: BatchEntry[] = [
  { kind: 'dir', path: '/d' },
  { kind: 'file', path: '/d/a', size: 3, mode: 0o644, mtimeMs: 1_700_000_000_000, atimeMs: 1_700_000_000_500 },
  { kind: 'file', path: '/d/empty', size: 0 },
  { kind: 'symlink', path: '/d/l', target: '../nowhere', mtimeMs: 5 },
  { kind: 'hardlink', path: '/d/h', target: '/d/a' },
];

describe('BATCH and COMMIT bodies', () => {
  it('are new frame types 14 and 15', () => {
    expect(FrameType.BATCH).toBe(14);
    expect(FrameType.COMMIT).toBe(15);
  });

  it('may be up to 1 MiB on the helper side, where every other request stays within 64 KiB', () => {
    expect(MAX_BATCH_BODY_BYTES).toBe(1024 * 1024);
    expect(maxControlBytes('BATCH', 'helper')).toBe(MAX_BATCH_BODY_BYTES);
    expect(maxControlBytes('COMMIT', 'helper')).toBe(MAX_BATCH_BODY_BYTES);
    expect(maxControlBytes('OPEN', 'helper')).toBe(MAX_CONTROL_BYTES);
    expect(maxControlBytes('OK', 'helper')).toBe(MAX_CONTROL_BYTES);
    // The client: only OK (a COMMIT's answer, a result per entry) may be large.
    expect(maxControlBytes('OK', 'client')).toBe(MAX_BATCH_BODY_BYTES);
    expect(maxControlBytes('BATCH', 'client')).toBe(MAX_CONTROL_BYTES);
    expect(maxControlBytes('ERROR', 'client')).toBe(MAX_CONTROL_BYTES);
  });

  it('refuse a body one byte over 1 MiB before reading it, and other types one byte over 64 KiB', () => {
    expect(protocolMessage(() => decode(header(FrameType.BATCH, MAX_BATCH_BODY_BYTES + 1)))).toBe('helper protocol: BATCH frame body of 1048577 bytes exceeds 1048576');
    expect(protocolMessage(() => decode(header(FrameType.COMMIT, MAX_BATCH_BODY_BYTES + 1)))).toBe('helper protocol: COMMIT frame body of 1048577 bytes exceeds 1048576');
    expect(protocolMessage(() => decode(header(FrameType.OK, MAX_CONTROL_BYTES + 1)))).toBe('helper protocol: OK frame body of 65537 bytes exceeds 65536');
    expect(protocolMessage(() => decode(header(FrameType.OK, MAX_BATCH_BODY_BYTES + 1), 'client'))).toBe('helper protocol: OK frame body of 1048577 bytes exceeds 1048576');
    expect(protocolMessage(() => decode(header(FrameType.BATCH, MAX_CONTROL_BYTES + 1), 'client'))).toBe('helper protocol: BATCH frame body of 65537 bytes exceeds 65536');
  });

  it('decode a batch of 4096 entries, over 64 KiB, and its COMMIT', () => {
    const entries: BatchEntry[] = Array.from({ length: MAX_BATCH_ENTRIES }, (_, i) => ({ kind: 'file', path: `/project/run-${i}/output.dat`, size: 100, mode: 0o644, mtimeMs: 1_700_000_000_000 + i }));
    const batch = encodeControl('BATCH', 7, batchBody('xxh3', entries));
    expect(batch.length).toBeGreaterThan(MAX_CONTROL_BYTES);
    expect(batch.length).toBeLessThan(MAX_BATCH_BODY_BYTES);
    const commit = encodeControl('COMMIT', 7, { srcHashes: entries.map((_, i) => (i % 2 ? null : 'ab'.repeat(8))) });
    const frames = decode(Buffer.concat([batch, commit]));
    expect(frames.map((f) => f.type)).toEqual(['BATCH', 'COMMIT']);
    expect((frames[0] as { body: { entries: BatchEntry[] } }).body.entries[4095]).toEqual(entries[4095]);
  });

  it('carry only the fields that are set (absent ones are neither nil nor undefined on the wire)', () => {
    const body = batchBody('sha256', [{ kind: 'file', path: '/a', size: 1, mode: undefined, target: undefined } as BatchEntry, { kind: 'dir', path: '/b', size: 0 }]);
    expect(body).toEqual({ algorithm: 'sha256', entries: [{ kind: 'file', path: '/a', size: 1 }, { kind: 'dir', path: '/b' }] });
    expect(decode(encodeControl('BATCH', 1, batchBody('xxh3', full)))).toEqual([{ type: 'BATCH', id: 1, body: { algorithm: 'xxh3', entries: full } }]);
    expect(batchBytes(full)).toBe(3);
  });

  it.each([
    ['an unknown algorithm', { algorithm: 'md5', entries: [] }, 'BATCH.algorithm must be one of xxh3, crc32, sha256'],
    ['entries that are not a list', { algorithm: 'xxh3', entries: { 0: 1 } }, 'BATCH.entries must be a list'],
    ['4097 entries', { algorithm: 'xxh3', entries: Array.from({ length: 4097 }, () => ({ kind: 'dir', path: '/d' })) }, 'BATCH.4097 entries exceed 4096'],
    ['an entry that is not a map', { algorithm: 'xxh3', entries: ['/a'] }, 'BATCH.entries[0] is not a map'],
    ['an unknown kind', { algorithm: 'xxh3', entries: [{ kind: 'fifo', path: '/a' }] }, 'BATCH.entries[0].kind must be dir, file, symlink or hardlink'],
    ['an unknown field', { algorithm: 'xxh3', entries: [{ kind: 'dir', path: '/a', owner: 0 }] }, 'BATCH.entries[0] has an unknown field owner'],
    ['a relative path', { algorithm: 'xxh3', entries: [{ kind: 'dir', path: 'a' }] }, 'BATCH.entries[0].path must be an absolute path without NUL (not /)'],
    ['the root as a path', { algorithm: 'xxh3', entries: [{ kind: 'dir', path: '/' }] }, 'BATCH.entries[0].path must be an absolute path without NUL (not /)'],
    ['a NUL in a path', { algorithm: 'xxh3', entries: [{ kind: 'dir', path: '/a\0b' }] }, 'BATCH.entries[0].path must be an absolute path without NUL (not /)'],
    ['a file without a size', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a' }] }, 'BATCH.entries[0].size is missing (a file)'],
    ['a negative size', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: -1 }] }, 'BATCH.entries[0].size must be a non-negative integer'],
    ['a fractional size', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: 1.5 }] }, 'BATCH.entries[0].size must be a non-negative integer'],
    ['a size beyond 2^53', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: 2 ** 60 }] }, 'BATCH.entries[0].size must be a non-negative integer'],
    ['a size on a directory', { algorithm: 'xxh3', entries: [{ kind: 'dir', path: '/a', size: 3 }] }, 'BATCH.entries[0].size must be absent for a dir'],
    ['a mode over 0o7777', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: 1, mode: 0o10000 }] }, 'BATCH.entries[0].mode must be at most 0o7777'],
    ['a string time', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: 1, mtimeMs: '1' }] }, 'BATCH.entries[0].mtimeMs must be a non-negative integer'],
    ['a symlink without a target', { algorithm: 'xxh3', entries: [{ kind: 'symlink', path: '/a' }] }, 'BATCH.entries[0].target must be a non-empty string without NUL'],
    ['a hard link to a relative path', { algorithm: 'xxh3', entries: [{ kind: 'hardlink', path: '/a', target: 'b' }] }, 'BATCH.entries[0].target must be an absolute path (a hard link)'],
    ['a target on a file', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: 0, target: '/b' }] }, 'BATCH.entries[0].target must be absent for a file'],
    ['sizes adding up to over 1 GiB', { algorithm: 'xxh3', entries: [{ kind: 'file', path: '/a', size: MAX_BATCH_BYTES }, { kind: 'file', path: '/b', size: 1 }] }, 'BATCH.the files\' sizes add up to more than 1073741824 bytes'],
    ['COMMIT without a list', { srcHashes: 'ab' }, 'COMMIT.srcHashes must be a list of at most 4096 hashes (strings of at most 128 characters) or nils'],
    ['COMMIT with a number for a hash', { srcHashes: ['ab', 5] }, 'COMMIT.srcHashes must be a list of at most 4096 hashes (strings of at most 128 characters) or nils'],
    ['COMMIT with an empty hash', { srcHashes: [''] }, 'COMMIT.srcHashes must be a list of at most 4096 hashes (strings of at most 128 characters) or nils'],
  ] as const)('refuses %s', (_what, body, message) => {
    const type = 'srcHashes' in body ? FrameType.COMMIT : FrameType.BATCH;
    expect(protocolMessage(() => decode(frame(type, 1, encode(body))))).toBe(`helper protocol: ${message}`);
  });

  it('accept nil for absent entry fields (as other encoders write them)', () => {
    expect(batchEntriesProblem([{ kind: 'file', path: '/a', size: 2, mode: null, mtimeMs: null, atimeMs: null, target: null }])).toBeUndefined();
  });

  it('check the results of an OK: each ok with an optional hash, or failed with an error of code and message', () => {
    const good = { results: [{ ok: true, hash: 'ab' }, { ok: true }, { ok: false, error: { code: 'DEST_CONFLICT', message: 'm', path: '/a', errno: 'EISDIR' } }] };
    expect(decode(encodeControl('OK', 3, good), 'client')).toEqual([{ type: 'OK', id: 3, body: good }]);
    for (const results of [[{ ok: 'yes' }], [{ ok: false }], [{ ok: false, error: { code: 1, message: 'm' } }], [{ ok: true, hash: 3 }], 'x', [{ ok: false, error: { code: 'X', message: 'm', errno: 5 } }]]) {
      expect(protocolMessage(() => decode(frame(FrameType.OK, 3, encode({ results })), 'client'))).toMatch(/^helper protocol: OK\.results/);
    }
  });
});

describe('WALK, READ_BATCH and ENTRIES bodies (a tree pull)', () => {
  const item = { path: 'a/b', kind: 'file', size: 3, mode: 0o644, uid: 1, gid: 1, mtimeMs: 1.5, atimeMs: -2, dev: 7, ino: 2 ** 40, nlink: 1 };

  it('ENTRIES and READ_BATCH may be up to 1 MiB on the side that takes them, 64 KiB on the other', () => {
    expect(maxControlBytes('ENTRIES', 'client')).toBe(MAX_BATCH_BODY_BYTES);
    expect(maxControlBytes('READ_BATCH', 'helper')).toBe(MAX_BATCH_BODY_BYTES);
    expect(maxControlBytes('ENTRIES', 'helper')).toBe(MAX_CONTROL_BYTES);
    expect(maxControlBytes('WALK', 'helper')).toBe(MAX_CONTROL_BYTES);
  });

  it('round-trips a walk item and a read batch', () => {
    expect(decode(encodeControl('ENTRIES', 2, { items: [item as never, { path: 'x', error: { code: 'EACCES', message: 'no' } }] }), 'client')).toHaveLength(1);
    expect(decode(encodeControl('READ_BATCH', 3, { algorithm: 'xxh3', entries: [{ path: '/a', size: 0 }] }))).toHaveLength(1);
    // walk-hash: a WALK asking for small files' hashes, and a file entry with one.
    expect(decode(encodeControl('WALK', 4, { root: '/a', hash: 'xxh3', hashMaxBytes: 256 * 1024 }))).toHaveLength(1);
    expect(decode(encodeControl('ENTRIES', 5, { items: [{ ...item, hash: '0123456789abcdef' } as never] }), 'client')).toHaveLength(1);
  });

  it('takes a tree path only without empty, . or .. components or NUL', () => {
    for (const good of ['', 'a', 'a/b', '.a', 'a/..b', '...', 'a/.../b', 'b.', 'x/y..']) expect(isTreePath(good), good).toBe(true);
    for (const bad of ['/', '/a', 'a/', 'a//b', '.', '..', './a', 'a/.', 'a/./b', '../a', 'a/..', 'a/../b', 'a\0b', 7, undefined]) expect(isTreePath(bad), String(bad)).toBe(false);
  });

  it.each([
    ['an unknown hash', { root: '/a', hash: 'md5' }, 'WALK.hash must be one of xxh3, crc32, sha256'],
    ['a hash limit past 1 MiB', { root: '/a', hash: 'xxh3', hashMaxBytes: 1024 * 1024 + 1 }, 'WALK.hashMaxBytes must be an integer from 0 to 1048576'],
  ])('refuses a WALK with %s', (_, body, message) => {
    expect(protocolMessage(() => decode(encodeControl('WALK', 2, body as never)))).toBe(`helper protocol: ${message}`);
  });

  it.each([
    ['a path that climbs out of the tree', { ...item, path: '../x' }, 'ENTRIES.items[0].path must be a relative path without empty, . or .. components or NUL'],
    ['an absolute path', { ...item, path: '/etc/passwd' }, 'ENTRIES.items[0].path must be a relative path without empty, . or .. components or NUL'],
    ['a hard link to a path outside the tree', { ...item, kind: 'hardlink', size: 0, target: 'a/../../b' }, "ENTRIES.items[0].target must be a tree path (a hard link's first name)"],
    ['a directory with a size', { ...item, kind: 'dir' }, 'ENTRIES.items[0].size must be 0 for a dir'],
    ['an unknown field', { ...item, owner: 'me' }, 'ENTRIES.items[0] has an unknown field owner'],
    ['an unknown kind', { ...item, kind: 'fifo' }, 'ENTRIES.items[0].kind must be file, dir, symlink, hardlink or special'],
    ['a hash on a directory', { ...item, kind: 'dir', size: 0, hash: '0123456789abcdef' }, "ENTRIES.items[0].hash must be a file's hex digest"],
    ['a hash that is not hex', { ...item, hash: 'not a digest' }, "ENTRIES.items[0].hash must be a file's hex digest"],
  ])('refuses %s in ENTRIES', (_, bad, message) => {
    expect(protocolMessage(() => decode(encodeControl('ENTRIES', 2, { items: [bad as never] }), 'client'))).toBe(`helper protocol: ${message}`);
  });

  it.each([
    ['4097 files', { algorithm: 'xxh3', entries: Array.from({ length: 4097 }, () => ({ path: '/a', size: 1 })) }, 'READ_BATCH.4097 entries exceed 4096'],
    ['a relative path', { algorithm: 'xxh3', entries: [{ path: 'a', size: 1 }] }, 'READ_BATCH.entries[0].path must be an absolute path without NUL'],
    ['sizes over 1 GiB', { algorithm: 'xxh3', entries: [{ path: '/a', size: MAX_BATCH_BYTES }, { path: '/b', size: 1 }] }, `READ_BATCH.the files' sizes add up to more than ${MAX_BATCH_BYTES} bytes`],
    ['a WALK root that is relative', undefined, 'WALK.root must be an absolute path'],
  ])('refuses %s', (_, body, message) => {
    const frame = body ? encodeControl('READ_BATCH', 2, body as never) : encodeControl('WALK', 2, { root: 'a' });
    expect(protocolMessage(() => decode(frame))).toBe(`helper protocol: ${message}`);
  });
});
