import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import {
  FRAME_HEADER_BYTES,
  FerryError,
  FrameDecoder,
  FrameType,
  MAX_CONTROL_BYTES,
  MAX_DATA_FRAME_BYTES,
  PROTOCOL_VERSION,
  ZERO_CHUNK,
  encode,
  encodeControl,
  encodeDataHeader,
  frameTypeName,
  isAllZero,
  writeHeader,
} from '@ferry/core';
import type { ControlFrame, DecodedFrame } from '@ferry/core';

/** mulberry32, seeded so random splits are the same on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function payload(n: number, seed: number): Buffer {
  const rand = prng(seed);
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

/** A frame with any header fields and body, for frames encodeControl would never write. */
function rawFrame(type: number, id: number, body: Buffer, flags = 0, reserved = 0): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt8(type, 0);
  header.writeUInt8(flags, 1);
  header.writeUInt16BE(reserved, 2);
  header.writeUInt32BE(id, 4);
  header.writeUInt32BE(body.length, 8);
  return Buffer.concat([header, body]);
}

function dataFrame(id: number, body: Buffer): Buffer {
  return Buffer.concat([encodeDataHeader(id, body.length), body]);
}

interface DataPiece {
  type: 'DATA';
  id: number;
  chunk: Buffer;
  frameBytes: number;
  remaining: number;
}

/** A decoder that records what it emits; DATA chunks are copied because they are only valid during the callback. */
function recorder() {
  const events: Array<ControlFrame | DataPiece> = [];
  const decoder = new FrameDecoder((frame: DecodedFrame) => {
    if (frame.type === 'DATA') events.push({ ...frame, chunk: Buffer.from(frame.chunk) });
    else events.push(frame);
  });
  return { decoder, events };
}

/** A whole DATA payload, as hex so that comparing 64 KiB payloads stays fast. */
interface WholeData {
  type: 'DATA';
  id: number;
  hex: string;
}

/**
 * Merges the DATA pieces of each frame back into one payload, checking on the way that every
 * piece of a frame reports the same `frameBytes` and that `remaining` counts down to exactly 0.
 */
function reassemble(events: Array<ControlFrame | DataPiece>): Array<ControlFrame | WholeData> {
  const out: Array<ControlFrame | WholeData> = [];
  const problems: string[] = [];
  let pieces: DataPiece[] = [];
  let received = 0;
  for (const e of events) {
    if (e.type !== 'DATA') {
      if (pieces.length > 0) problems.push(`${e.type} ${e.id} arrived inside an unfinished DATA frame`);
      out.push(e);
      continue;
    }
    const first = pieces[0];
    if (first && (first.id !== e.id || first.frameBytes !== e.frameBytes)) problems.push(`DATA piece of frame ${e.id} interleaved`);
    pieces.push(e);
    received += e.chunk.length;
    if (e.remaining !== e.frameBytes - received) problems.push(`remaining ${e.remaining} after ${received} of ${e.frameBytes} bytes`);
    if (e.remaining === 0) {
      out.push({ type: 'DATA', id: e.id, hex: Buffer.concat(pieces.map((p) => p.chunk)).toString('hex') });
      pieces = [];
      received = 0;
    }
  }
  if (pieces.length > 0) problems.push('stream ended inside a DATA frame');
  expect(problems).toEqual([]);
  return out;
}

function protocolError(fn: () => unknown): FerryError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('PROTOCOL');
    return err as FerryError;
  }
  throw new Error('expected a PROTOCOL error, nothing was thrown');
}

function decodeOne(bytes: Buffer): Array<ControlFrame | DataPiece> {
  const { decoder, events } = recorder();
  decoder.push(bytes);
  return events;
}

const WRITE_PAYLOAD = payload(70_000, 1);
const READ_PAYLOAD = payload(5, 2);

/** A realistic exchange: control frames of every type, and DATA frames above and below control sizes. */
function conversation(): { bytes: Buffer; expected: Array<ControlFrame | WholeData> } {
  const frames: Array<ControlFrame | { type: 'DATA'; id: number; data: Buffer }> = [
    { type: 'HELLO', id: 0, body: { version: PROTOCOL_VERSION, software: 'ferry 0.1.0', capabilities: ['fsync', 'sparse'] } },
    { type: 'OK', id: 0, body: { hello: { version: 1, software: 'ferry 0.1.0', capabilities: [] } } },
    { type: 'OPEN', id: 1, body: { path: '/data/big.bin.ferry-part', policy: 'create', size: 6 * 2 ** 30, mode: 0o644 } },
    { type: 'OK', id: 1, body: { handle: 3 } },
    { type: 'WRITE', id: 2, body: { handle: 3, offset: 2 ** 32 + 4096, length: WRITE_PAYLOAD.length, algorithm: 'xxh3' } },
    { type: 'DATA', id: 2, data: WRITE_PAYLOAD.subarray(0, 65_536) },
    { type: 'ZEROS', id: 2, body: { length: 1024 * 1024 } },
    { type: 'DATA', id: 2, data: WRITE_PAYLOAD.subarray(65_536) },
    { type: 'ZEROS', id: 2, body: { length: 0 } },
    { type: 'OK', id: 2, body: { bytes: WRITE_PAYLOAD.length, hash: '0440216782466d91' } },
    { type: 'READ', id: 3, body: { handle: 3, offset: 0, length: 5, algorithm: 'sha256' } },
    { type: 'DATA', id: 3, data: READ_PAYLOAD },
    { type: 'DATA', id: 3, data: Buffer.alloc(0) },
    { type: 'OK', id: 3, body: { hash: 'ab'.repeat(32) } },
    { type: 'HASH', id: 4, body: { handle: 3, offset: 2 ** 40, length: 16 * 2 ** 20, algorithm: 'xxh3' } },
    { type: 'FSYNC', id: 5, body: { handle: 3 } },
    { type: 'SETSTAT', id: 6, body: { path: '/data/big.bin.ferry-part', mode: 0o600, mtimeMs: 1_700_000_000_000, atimeMs: 0 } },
    { type: 'CLOSE', id: 7, body: { handle: 3 } },
    { type: 'STAT', id: 8, body: { path: '/data/big.bin' } },
    {
      type: 'OK',
      id: 8,
      body: { stat: { type: 'file', size: 6 * 2 ** 30 + 1, mode: 0o100644, mtimeMs: 1_700_000_000_123, ino: 2 ** 40 + 3, dev: 2049 } },
    },
    { type: 'RENAME', id: 9, body: { from: '/data/big.bin.ferry-part', to: '/data/big.bin' } },
    { type: 'UNLINK', id: 0xffffffff, body: { path: '/data/old' } },
    { type: 'ERROR', id: 10, body: { code: 'DEST_NO_SPACE', message: 'no space', path: '/data', errno: 'ENOSPC' } },
  ];
  const parts: Buffer[] = frames.map((f) => (f.type === 'DATA' ? dataFrame(f.id, f.data) : encodeControl(f.type, f.id, f.body as never)));
  const expected = frames.map((f) => (f.type === 'DATA' ? { type: 'DATA' as const, id: f.id, hex: f.data.toString('hex') } : f));
  return { bytes: Buffer.concat(parts), expected };
}

describe('frame types and headers', () => {
  it('uses a 12-byte header and the documented limits', () => {
    expect(FRAME_HEADER_BYTES).toBe(12);
    expect(MAX_CONTROL_BYTES).toBe(65536);
    expect(MAX_DATA_FRAME_BYTES).toBe(16777216);
    expect(PROTOCOL_VERSION).toBe(1);
  });

  it('names every frame type code and nothing else', () => {
    expect(frameTypeName(1)).toBe('HELLO');
    expect(frameTypeName(4)).toBe('DATA');
    expect(frameTypeName(12)).toBe('UNLINK');
    expect(frameTypeName(13)).toBe('ZEROS');
    expect(frameTypeName(64)).toBe('OK');
    expect(frameTypeName(65)).toBe('ERROR');
    expect(frameTypeName(0)).toBeUndefined();
    expect(frameTypeName(14)).toBe('BATCH');
    expect(frameTypeName(15)).toBe('COMMIT');
    expect(frameTypeName(16)).toBe('WALK');
    expect(frameTypeName(17)).toBe('READ_BATCH');
    expect(frameTypeName(18)).toBe('ENTRIES');
    expect(frameTypeName(19)).toBe('GLOB');
    expect(frameTypeName(20)).toBe('COPY_RANGE');
    expect(frameTypeName(21)).toBeUndefined();
    expect(frameTypeName(66)).toBeUndefined();
    for (const [name, code] of Object.entries(FrameType)) expect(frameTypeName(code)).toBe(name);
  });

  it('writes type, zero flags, zero reserved bits, id and body length big-endian', () => {
    const buf = Buffer.alloc(16, 0xee);
    writeHeader(buf, 2, FrameType.WRITE, 0x01020304, 0x0a0b0c0d);
    expect(buf.toString('hex')).toBe('eeee' + '03' + '00' + '0000' + '01020304' + '0a0b0c0d' + 'eeee');
  });

  it('writes ids and lengths as unsigned 32-bit values', () => {
    const buf = Buffer.alloc(12);
    writeHeader(buf, 0, FrameType.OK, -1, 2 ** 32 - 1);
    expect(buf.toString('hex')).toBe('40000000ffffffffffffffff');
  });

  it('encodes a DATA header for a payload sent separately', () => {
    expect(encodeDataHeader(7, 65536).toString('hex')).toBe('040000000000000700010000');
  });

  it('encodes a control frame as a header followed by the msgpack body', () => {
    const frame = encodeControl('CLOSE', 9, { handle: 3 });
    const body = encode({ handle: 3 });
    expect(frame.subarray(0, 12).toString('hex')).toBe('09000000' + '00000009' + body.length.toString(16).padStart(8, '0'));
    expect(frame.subarray(12).equals(body)).toBe(true);
  });
});

describe('zero runs', () => {
  it('shares one 1 MiB chunk of zeros', () => {
    expect(ZERO_CHUNK.length).toBe(1048576);
    expect(ZERO_CHUNK.every((b) => b === 0)).toBe(true);
  });

  it('recognises empty and all-zero buffers of any size as all zero', () => {
    expect(isAllZero(Buffer.alloc(0))).toBe(true);
    expect(isAllZero(Buffer.alloc(1))).toBe(true);
    expect(isAllZero(Buffer.alloc(1048576))).toBe(true);
    expect(isAllZero(Buffer.alloc(3 * 1048576 + 17))).toBe(true);
  });

  it('finds a single non-zero byte anywhere, including past the first MiB', () => {
    for (const at of [0, 1, 1048575, 1048576, 2 * 1048576 + 5, 3 * 1048576 + 16]) {
      const buf = Buffer.alloc(3 * 1048576 + 17);
      buf[at] = 1;
      expect(isAllZero(buf), `non-zero byte at ${at}`).toBe(false);
    }
  });

  it('checks only the bytes of a view, not its backing buffer', () => {
    const backing = Buffer.alloc(64);
    backing[0] = 0xff;
    backing[63] = 0xff;
    expect(isAllZero(backing.subarray(1, 63))).toBe(true);
    expect(isAllZero(backing.subarray(0, 63))).toBe(false);
  });

  it('accepts a ZEROS frame of exactly 1 MiB', () => {
    expect(decodeOne(encodeControl('ZEROS', 8, { length: 1048576 }))).toEqual([{ type: 'ZEROS', id: 8, body: { length: 1048576 } }]);
  });
});

describe('FrameDecoder on valid streams', () => {
  it('decodes a whole conversation pushed at once', () => {
    const { bytes, expected } = conversation();
    const { decoder, events } = recorder();
    decoder.push(bytes);
    expect(reassemble(events)).toEqual(expected);
    expect(decoder.idle).toBe(true);
  });

  it('decodes a whole conversation fed one byte at a time', () => {
    const { bytes, expected } = conversation();
    const { decoder, events } = recorder();
    for (let i = 0; i < bytes.length; i++) decoder.push(bytes.subarray(i, i + 1));
    expect(reassemble(events)).toEqual(expected);
    expect(decoder.idle).toBe(true);
    // One byte at a time, every non-empty DATA piece is one byte and `remaining` steps down by one.
    const writePieces = events.filter((e): e is DataPiece => e.type === 'DATA' && e.id === 2);
    expect(writePieces.length).toBe(WRITE_PAYLOAD.length);
    expect(writePieces.slice(0, 3).map((p) => [p.frameBytes, p.remaining])).toEqual([
      [65_536, 65_535],
      [65_536, 65_534],
      [65_536, 65_533],
    ]);
  });

  it('decodes a whole conversation in 100 different random splits (seed 42)', () => {
    const { bytes, expected } = conversation();
    const rand = prng(42);
    for (let trial = 0; trial < 100; trial++) {
      const { decoder, events } = recorder();
      let at = 0;
      const maxPiece = [7, 31, 300, 5000, 80_000][trial % 5]!;
      while (at < bytes.length) {
        const n = Math.min(bytes.length - at, 1 + Math.floor(rand() * maxPiece));
        decoder.push(bytes.subarray(at, at + n));
        at += n;
      }
      expect(reassemble(events)).toEqual(expected);
      expect(decoder.idle).toBe(true);
    }
  });

  it('counts remaining down to zero across the pieces of one DATA frame', () => {
    const body = payload(10, 3);
    const { decoder, events } = recorder();
    const frame = dataFrame(5, body);
    decoder.push(frame.subarray(0, 15));
    decoder.push(frame.subarray(15, 16));
    decoder.push(frame.subarray(16));
    expect(events).toEqual([
      { type: 'DATA', id: 5, chunk: body.subarray(0, 3), frameBytes: 10, remaining: 7 },
      { type: 'DATA', id: 5, chunk: body.subarray(3, 4), frameBytes: 10, remaining: 6 },
      { type: 'DATA', id: 5, chunk: body.subarray(4), frameBytes: 10, remaining: 0 },
    ]);
  });

  it('emits nothing for a DATA header until a body byte arrives', () => {
    const { decoder, events } = recorder();
    decoder.push(encodeDataHeader(1, 4));
    expect(events).toEqual([]);
    expect(decoder.idle).toBe(false);
    decoder.push(Buffer.from([9, 9, 9, 9]));
    expect(events).toEqual([{ type: 'DATA', id: 1, chunk: Buffer.from([9, 9, 9, 9]), frameBytes: 4, remaining: 0 }]);
    expect(decoder.idle).toBe(true);
  });

  it('emits an empty DATA frame as one empty piece with nothing remaining', () => {
    const events = decodeOne(Buffer.concat([encodeDataHeader(3, 0), encodeControl('CLOSE', 4, { handle: 1 })]));
    expect(events).toEqual([
      { type: 'DATA', id: 3, chunk: Buffer.alloc(0), frameBytes: 0, remaining: 0 },
      { type: 'CLOSE', id: 4, body: { handle: 1 } },
    ]);
  });

  it('is idle at the start, busy inside a header or body, and idle between frames', () => {
    const frame = encodeControl('STAT', 1, { path: '/x' });
    const { decoder, events } = recorder();
    expect(decoder.idle).toBe(true);
    decoder.push(frame.subarray(0, 5));
    expect(decoder.idle).toBe(false);
    decoder.push(frame.subarray(5, 13));
    expect(decoder.idle).toBe(false);
    decoder.push(frame.subarray(13));
    expect(decoder.idle).toBe(true);
    expect(events).toEqual([{ type: 'STAT', id: 1, body: { path: '/x' } }]);
  });

  it('ignores an empty push', () => {
    const { decoder, events } = recorder();
    decoder.push(Buffer.alloc(0));
    expect(events).toEqual([]);
    expect(decoder.idle).toBe(true);
  });

  it('keeps offsets and lengths above 2^32 exact', () => {
    const events = decodeOne(encodeControl('WRITE', 1, { handle: 0, offset: 2 ** 53 - 1, length: 2 ** 32 + 1, algorithm: 'sha256' }));
    expect(events).toEqual([{ type: 'WRITE', id: 1, body: { handle: 0, offset: 9007199254740991, length: 4294967297, algorithm: 'sha256' } }]);
  });

  it('accepts a DATA frame of exactly the maximum size', () => {
    const { decoder, events } = recorder();
    decoder.push(encodeDataHeader(1, MAX_DATA_FRAME_BYTES));
    decoder.push(Buffer.alloc(1));
    expect(events).toEqual([{ type: 'DATA', id: 1, chunk: Buffer.alloc(1), frameBytes: MAX_DATA_FRAME_BYTES, remaining: MAX_DATA_FRAME_BYTES - 1 }]);
  });

  it('accepts a control body of exactly the maximum size', () => {
    const overhead = encode({ path: '', policy: 'read' }).length;
    // A str16 header is 3 bytes against the 1 byte of an empty fixstr.
    const path = 'p'.repeat(MAX_CONTROL_BYTES - overhead - 2);
    const frame = encodeControl('OPEN', 1, { path, policy: 'read' });
    expect(frame.length).toBe(FRAME_HEADER_BYTES + MAX_CONTROL_BYTES);
    expect(decodeOne(frame)).toEqual([{ type: 'OPEN', id: 1, body: { path, policy: 'read' } }]);
  });

  it('accepts OPEN with the write and read policies and without size or mode', () => {
    expect(decodeOne(encodeControl('OPEN', 1, { path: 'rel/x', policy: 'write' }))).toEqual([{ type: 'OPEN', id: 1, body: { path: 'rel/x', policy: 'write' } }]);
    expect(decodeOne(encodeControl('OPEN', 2, { path: '/x', policy: 'read' }))).toEqual([{ type: 'OPEN', id: 2, body: { path: '/x', policy: 'read' } }]);
  });

  it("accepts OPEN with direct true, false or 'auto' and refuses any other direct", () => {
    expect(decodeOne(encodeControl('OPEN', 1, { path: '/x', policy: 'write', direct: true }))).toEqual([{ type: 'OPEN', id: 1, body: { path: '/x', policy: 'write', direct: true } }]);
    expect(decodeOne(encodeControl('OPEN', 2, { path: '/x', policy: 'write', direct: false }))[0]).toMatchObject({ body: { direct: false } });
    expect(decodeOne(encodeControl('OPEN', 4, { path: '/x', policy: 'write', direct: 'auto' }))[0]).toMatchObject({ body: { direct: 'auto' } });
    for (const direct of [1, 'AUTO', 'yes']) {
      const err = protocolError(() => decodeOne(encodeControl('OPEN', 3, { path: '/x', policy: 'write', direct } as never)));
      expect(err.message).toBe("helper protocol: OPEN.direct must be a boolean or 'auto'");
    }
  });

  it('takes a COPY_RANGE with the old file, the handle, the range and the algorithm', () => {
    const body = { from: '/data/old.bin', handle: 2, offset: 1 << 20, length: 1 << 20, algorithm: 'xxh3' as const };
    expect(decodeOne(encodeControl('COPY_RANGE', 9, body))).toEqual([{ type: 'COPY_RANGE', id: 9, body }]);
  });

  it('takes a SETSTAT xattrsExact of two booleans only', () => {
    const body = { path: '/d', xattrs: { 'user.a': Buffer.from([1]) }, xattrsExact: { xattrs: true, acls: false } };
    expect(decodeOne(encodeControl('SETSTAT', 4, body))).toEqual([{ type: 'SETSTAT', id: 4, body }]);
    expect(protocolError(() => decodeOne(encodeControl('SETSTAT', 4, { path: '/d', xattrsExact: { xattrs: 'yes', acls: false } }))).message).toBe('helper protocol: SETSTAT.xattrsExact.xattrs must be a boolean');
  });

  it('takes a SETSTAT size with a handle only', () => {
    expect(decodeOne(encodeControl('SETSTAT', 4, { handle: 1, size: 5 }))).toEqual([{ type: 'SETSTAT', id: 4, body: { handle: 1, size: 5 } }]);
    expect(protocolError(() => decodeOne(encodeControl('SETSTAT', 4, { path: '/x', size: 5 }))).message).toBe('helper protocol: SETSTAT.size needs a handle');
  });

  it('rejects a COPY_RANGE without the file to copy from, or with a negative offset', () => {
    expect(protocolError(() => decodeOne(encodeControl('COPY_RANGE', 9, { handle: 2, offset: 0, length: 1, algorithm: 'xxh3' } as never))).message).toBe('helper protocol: COPY_RANGE.from must be a non-empty string without NUL');
    expect(protocolError(() => decodeOne(encodeControl('COPY_RANGE', 9, { from: '/x', handle: 2, offset: -1, length: 1, algorithm: 'xxh3' }))).message).toBe('helper protocol: COPY_RANGE.offset must be a non-negative integer');
  });
});

describe('FrameDecoder on invalid headers', () => {
  it.each([0, 21, 63, 66, 255])('rejects unknown frame type %i', (type) => {
    const err = protocolError(() => decodeOne(rawFrame(type, 1, encode({ handle: 1 }))));
    expect(err.message).toBe(`helper protocol: unknown frame type ${type}`);
  });

  it('rejects an unknown type as soon as the twelfth header byte arrives', () => {
    const frame = rawFrame(99, 1, Buffer.alloc(3));
    const { decoder } = recorder();
    for (let i = 0; i < 11; i++) decoder.push(frame.subarray(i, i + 1));
    const err = protocolError(() => decoder.push(frame.subarray(11, 12)));
    expect(err.message).toBe('helper protocol: unknown frame type 99');
  });

  it('rejects a header with flags set', () => {
    const err = protocolError(() => decodeOne(rawFrame(FrameType.OPEN, 1, encode({ path: '/x', policy: 'read' }), 0x01)));
    expect(err.message).toBe('helper protocol: reserved header bits set in OPEN frame');
  });

  it('rejects a header with reserved bits set', () => {
    expect(protocolError(() => decodeOne(rawFrame(FrameType.DATA, 1, Buffer.alloc(1), 0, 0x8000))).message).toBe(
      'helper protocol: reserved header bits set in DATA frame',
    );
    expect(protocolError(() => decodeOne(rawFrame(FrameType.OK, 1, encode({}), 0, 0x0001))).message).toBe(
      'helper protocol: reserved header bits set in OK frame',
    );
  });

  it('rejects a DATA frame one byte over the maximum before reading its body', () => {
    const { decoder, events } = recorder();
    const err = protocolError(() => decoder.push(encodeDataHeader(1, MAX_DATA_FRAME_BYTES + 1)));
    expect(err.message).toBe('helper protocol: DATA frame of 16777217 bytes exceeds 16777216');
    expect(events).toEqual([]);
  });

  it('rejects a DATA frame declaring 4 GiB - 1 bytes', () => {
    expect(protocolError(() => decodeOne(encodeDataHeader(1, 2 ** 32 - 1))).message).toBe(
      'helper protocol: DATA frame of 4294967295 bytes exceeds 16777216',
    );
  });

  it('rejects a control body one byte over the maximum before reading it', () => {
    const header = Buffer.alloc(12);
    writeHeader(header, 0, FrameType.OPEN, 1, MAX_CONTROL_BYTES + 1);
    expect(protocolError(() => decodeOne(header)).message).toBe('helper protocol: OPEN frame body of 65537 bytes exceeds 65536');
  });

  it('rejects a control frame with an empty body', () => {
    expect(protocolError(() => decodeOne(rawFrame(FrameType.OK, 1, Buffer.alloc(0)))).message).toBe('helper protocol: OK frame has an empty body');
  });
});

describe('FrameDecoder on invalid bodies', () => {
  it('rejects a body that is not valid msgpack', () => {
    const err = protocolError(() => decodeOne(rawFrame(FrameType.OK, 1, Buffer.from([0x81]))));
    expect(err.message).toBe('helper protocol: OK body is not valid msgpack (data ends inside a msgpack map of 1 entries (at byte 1))');
  });

  it('rejects a body with bytes after the msgpack value', () => {
    const err = protocolError(() => decodeOne(rawFrame(FrameType.CLOSE, 1, Buffer.concat([encode({ handle: 1 }), Buffer.from([0])]))));
    expect(err.message).toBe('helper protocol: CLOSE body is not valid msgpack (1 bytes after the msgpack value)');
  });

  it.each([
    ['an array', [1, 2]],
    ['a number', 5],
    ['a string', 'ok'],
    ['nil', null],
    ['a binary', Buffer.from('path')],
  ])('rejects a body that is %s instead of a map', (_what, body) => {
    expect(protocolError(() => decodeOne(rawFrame(FrameType.OK, 1, encode(body)))).message).toBe('helper protocol: OK body is not a map');
    expect(protocolError(() => decodeOne(rawFrame(FrameType.OPEN, 2, encode(body)))).message).toBe('helper protocol: OPEN body is not a map');
  });

  it('rejects a cyclic OPEN body, an Error and a Set as msgpack it does not accept', () => {
    const { Packr } = createRequire(import.meta.url)('msgpackr') as typeof import('msgpackr');
    const clone = new Packr({ structuredClone: true, useRecords: false });
    const cyclic: Record<string, unknown> = { path: '/x', policy: 'read' };
    cyclic.size = cyclic;
    for (const body of [cyclic, new Error('x'), new Set([1])]) {
      expect(protocolError(() => decodeOne(rawFrame(FrameType.OPEN, 1, clone.pack(body)))).message).toMatch(/^helper protocol: OPEN body is not valid msgpack \(msgpack extension .* is not accepted\)$/);
    }
  });

  it('rejects an OK whose fields have the wrong types', () => {
    for (const [body, why] of [
      [{ handle: '1' }, 'OK.handle must be a non-negative integer'],
      [{ hash: 5 }, 'OK.hash must be a string'],
      [{ direct: 'yes' }, 'OK.direct must be a boolean'],
      [{ stat: { type: 'file', size: -1, mode: 0, mtimeMs: 0, ino: 0, dev: 0 } }, 'OK.stat.size must be a non-negative integer'],
      [{ stat: [1] }, 'OK.stat must be a map with a type of file, directory or other'],
      [{ hello: { version: 1, software: 'x', capabilities: [1] } }, 'OK.hello needs software and a list of capabilities'],
      [{ stat: { type: 'file', size: 1, mode: 0, mtimeMs: '0', ino: 0, dev: 0 } }, 'OK.stat.mtimeMs must be a number'],
    ] as const) {
      expect(protocolError(() => decodeOne(rawFrame(FrameType.OK, 1, encode(body)))).message).toBe(`helper protocol: ${why}`);
    }
  });

  it('accepts an OK with nil for absent fields, a time before 1970 and a 64-bit inode number (as the Python helper sends them)', () => {
    const body = { handle: 1, size: 0, directReason: null, stat: { type: 'file', size: 1, mode: 0o644, mtimeMs: -86_400_000, ino: 2 ** 63, dev: 2049 } };
    expect(decodeOne(rawFrame(FrameType.OK, 1, encode(body)))).toEqual([{ type: 'OK', id: 1, body }]);
  });

  const invalid: Array<[string, number, unknown, string]> = [
    ['HELLO without a version', FrameType.HELLO, { software: 'x', capabilities: [] }, 'HELLO.version must be a non-negative integer'],
    ['HELLO with a text version', FrameType.HELLO, { version: '1' }, 'HELLO.version must be a non-negative integer'],
    ['HELLO asking for a hub with a path', FrameType.HELLO, { version: 1, hub: '/tmp/s' }, 'HELLO.hub must be a boolean'],
    ['OPEN with an unknown policy', FrameType.OPEN, { path: '/x', policy: 'append' }, 'OPEN.policy must be create, write or read'],
    ['OPEN without a policy', FrameType.OPEN, { path: '/x' }, 'OPEN.policy must be create, write or read'],
    ['OPEN without a path', FrameType.OPEN, { policy: 'read' }, 'OPEN.path must be a non-empty string without NUL'],
    ['OPEN with an empty path', FrameType.OPEN, { path: '', policy: 'read' }, 'OPEN.path must be a non-empty string without NUL'],
    ['OPEN with a NUL in the path', FrameType.OPEN, { path: '/x\0y', policy: 'read' }, 'OPEN.path must be a non-empty string without NUL'],
    ['OPEN with a numeric path', FrameType.OPEN, { path: 7, policy: 'read' }, 'OPEN.path must be a non-empty string without NUL'],
    ['OPEN with a negative size', FrameType.OPEN, { path: '/x', policy: 'create', size: -1 }, 'OPEN.size must be a non-negative integer'],
    ['OPEN with a fractional size', FrameType.OPEN, { path: '/x', policy: 'create', size: 1.5 }, 'OPEN.size must be a non-negative integer'],
    ['OPEN with a nil mode', FrameType.OPEN, { path: '/x', policy: 'create', mode: null }, 'OPEN.mode must be a non-negative integer'],
    ['WRITE with a negative offset', FrameType.WRITE, { handle: 1, offset: -1, length: 1, algorithm: 'xxh3' }, 'WRITE.offset must be a non-negative integer'],
    ['WRITE with an offset of 2^53', FrameType.WRITE, { handle: 1, offset: 2 ** 53, length: 1, algorithm: 'xxh3' }, 'WRITE.offset must be a non-negative integer'],
    ['WRITE without a handle', FrameType.WRITE, { offset: 0, length: 1, algorithm: 'xxh3' }, 'WRITE.handle must be a non-negative integer'],
    ['WRITE with a text length', FrameType.WRITE, { handle: 1, offset: 0, length: '1', algorithm: 'xxh3' }, 'WRITE.length must be a non-negative integer'],
    ['WRITE with an unknown algorithm', FrameType.WRITE, { handle: 1, offset: 0, length: 1, algorithm: 'md5' }, 'WRITE.algorithm must be one of xxh3, crc32, sha256'],
    ['WRITE without an algorithm', FrameType.WRITE, { handle: 1, offset: 0, length: 1 }, 'WRITE.algorithm must be one of xxh3, crc32, sha256'],
    ['READ with a negative length', FrameType.READ, { handle: 1, offset: 0, length: -5, algorithm: 'xxh3' }, 'READ.length must be a non-negative integer'],
    ['READ without an offset', FrameType.READ, { handle: 1, length: 5, algorithm: 'sha256' }, 'READ.offset must be a non-negative integer'],
    ['HASH with a negative handle', FrameType.HASH, { handle: -1, offset: 0, length: 5, algorithm: 'sha256' }, 'HASH.handle must be a non-negative integer'],
    ['HASH with an algorithm in capitals', FrameType.HASH, { handle: 1, offset: 0, length: 5, algorithm: 'SHA256' }, 'HASH.algorithm must be one of xxh3, crc32, sha256'],
    ['FSYNC without a handle', FrameType.FSYNC, { fd: 1 }, 'FSYNC.handle must be a non-negative integer'],
    ['CLOSE with a fractional handle', FrameType.CLOSE, { handle: 0.5 }, 'CLOSE.handle must be a non-negative integer'],
    ['SETSTAT without a path', FrameType.SETSTAT, { mode: 0o644 }, 'SETSTAT.path must be a non-empty string without NUL'],
    ['SETSTAT with a negative mtime', FrameType.SETSTAT, { path: '/x', mtimeMs: -5 }, 'SETSTAT.mtimeMs must be a non-negative integer'],
    ['SETSTAT with a fractional atime', FrameType.SETSTAT, { path: '/x', atimeMs: 1.5 }, 'SETSTAT.atimeMs must be a non-negative integer'],
    ['SETSTAT with a text mode', FrameType.SETSTAT, { path: '/x', mode: '644' }, 'SETSTAT.mode must be a non-negative integer'],
    ['STAT without a path', FrameType.STAT, {}, 'STAT.path must be a non-empty string without NUL'],
    ['UNLINK with an empty path', FrameType.UNLINK, { path: '' }, 'UNLINK.path must be a non-empty string without NUL'],
    ['RENAME without a source', FrameType.RENAME, { to: '/b' }, 'RENAME.from must be a non-empty string without NUL'],
    ['RENAME with an empty target', FrameType.RENAME, { from: '/a', to: '' }, 'RENAME.to must be a non-empty string without NUL'],
    ['ZEROS without a length', FrameType.ZEROS, {}, 'ZEROS.length must be a non-negative integer'],
    ['ZEROS with a negative length', FrameType.ZEROS, { length: -1 }, 'ZEROS.length must be a non-negative integer'],
    ['ZEROS with a fractional length', FrameType.ZEROS, { length: 0.5 }, 'ZEROS.length must be a non-negative integer'],
    ['ZEROS one byte over 1 MiB', FrameType.ZEROS, { length: 1024 * 1024 + 1 }, 'ZEROS of 1048577 bytes exceeds 1048576'],
    ['ZEROS of 2^32 bytes', FrameType.ZEROS, { length: 2 ** 32 }, 'ZEROS of 4294967296 bytes exceeds 1048576'],
    ['ERROR without a code', FrameType.ERROR, { message: 'x' }, 'ERROR needs code and message'],
    ['ERROR without a message', FrameType.ERROR, { code: 'DEST_IO' }, 'ERROR needs code and message'],
    ['ERROR with a numeric code', FrameType.ERROR, { code: 62, message: 'x' }, 'ERROR needs code and message'],
  ];

  it.each(invalid)('rejects %s', (_name, type, body, message) => {
    const err = protocolError(() => decodeOne(rawFrame(type, 1, encode(body))));
    expect(err.message).toBe(`helper protocol: ${message}`);
    expect(err.exitCode).toBe(62);
  });

  it('rejects an invalid body fed byte by byte only when its last byte arrives', () => {
    const frame = rawFrame(FrameType.OPEN, 1, encode({ path: '/x', policy: 'append' }));
    const { decoder, events } = recorder();
    for (let i = 0; i < frame.length - 1; i++) decoder.push(frame.subarray(i, i + 1));
    expect(events).toEqual([]);
    const err = protocolError(() => decoder.push(frame.subarray(frame.length - 1)));
    expect(err.message).toBe('helper protocol: OPEN.policy must be create, write or read');
  });

  it('delivers the frames before an invalid one', () => {
    const good = encodeControl('CLOSE', 1, { handle: 2 });
    const bad = rawFrame(FrameType.CLOSE, 2, encode({ handle: -2 }));
    const { decoder, events } = recorder();
    const err = protocolError(() => decoder.push(Buffer.concat([good, bad])));
    expect(err.message).toBe('helper protocol: CLOSE.handle must be a non-negative integer');
    expect(events).toEqual([{ type: 'CLOSE', id: 1, body: { handle: 2 } }]);
  });
});
