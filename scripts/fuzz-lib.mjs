// A seeded fuzzer of the decoders that take bytes from others: the helper's frame decoder
// (FrameDecoder, control bodies validated) and the NATS message decoders (decodeWorkItem and
// the rest), plus journal replay. Shared by the bounded run in `npm test`
// (packages/core/test/fuzz.test.ts) and the long run (scripts/fuzz.mjs).
//
// Every input comes from one PRNG seeded with `seed`: the same seed gives the same inputs, so a
// failure names its seed and input number, and `node scripts/fuzz.mjs --seed S --inputs N` plays
// it again. An input is random bytes, a valid frame or message mutated (bits flipped, bytes
// replaced by msgpack's special ones, cut, spliced, repeated), or msgpack made up from a grammar
// that includes what the strict codec must refuse (extensions, structured-clone cycles, records,
// deep nesting, counts longer than the data).
//
// What must hold: a decoder either throws a FerryError of code PROTOCOL (the journal replay:
// never throws), or returns plain data (maps with the plain prototype, no classes) that encodes
// again without error.

import { createRequire } from 'node:module';

// Only to make inputs the codec must refuse (structured-clone cycles, Sets).
const { Packr } = createRequire(import.meta.url)('msgpackr');

/** mulberry32: small, fast, and the same everywhere. */
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    pick: (list) => list[Math.floor(next() * list.length)],
    bytes: (n) => {
      const b = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
      return b;
    },
  };
}

const SPECIAL = [0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff];
/** msgpackr's extension types, and a few more. */
const EXT_TYPES = [0x00, 0x42, 0x62, 0x65, 0x69, 0x70, 0x72, 0x73, 0x74, 0x78, 0xff, 0x01, 0x7f];

/** Valid inputs to mutate: every helper frame type and every NATS message kind. */
function corpus(core) {
  const { encodeControl, encodeDataHeader, encode, MESSAGE_VERSION: v } = core;
  const job = '0123456789abcdef';
  const frames = [
    encodeControl('HELLO', 1, { version: 1, software: 'ferry', capabilities: ['write', 'read'], hub: true, hubKey: 'ab'.repeat(32) }),
    encodeControl('OPEN', 2, { path: '/data/x.bin', policy: 'create', size: 1 << 20, mode: 0o600, direct: 'auto' }),
    encodeControl('WRITE', 3, { handle: 1, offset: 0, length: 8, algorithm: 'xxh3' }),
    Buffer.concat([encodeDataHeader(3, 8), Buffer.from('abcdefgh')]),
    encodeControl('ZEROS', 3, { length: 4096 }),
    encodeControl('READ', 4, { handle: 1, offset: 4096, length: 4096, algorithm: 'sha256' }),
    encodeControl('HASH', 5, { handle: 1, offset: 0, length: 1, algorithm: 'xxh3' }),
    encodeControl('FSYNC', 6, { handle: 1 }),
    encodeControl('SETSTAT', 7, { path: '/data/x.bin', mode: 0o644, mtimeMs: 1e12, atimeMs: 1e12 }),
    encodeControl('CLOSE', 8, { handle: 1 }),
    encodeControl('STAT', 9, { path: '/data' }),
    encodeControl('RENAME', 10, { from: '/a', to: '/b' }),
    encodeControl('UNLINK', 11, { path: '/a' }),
    encodeControl('BATCH', 14, { algorithm: 'xxh3', entries: [{ kind: 'dir', path: '/d' }, { kind: 'file', path: '/d/a', size: 8, mode: 0o644, mtimeMs: 1e12, atimeMs: 1e12 }, { kind: 'symlink', path: '/d/l', target: 'a' }, { kind: 'hardlink', path: '/d/h', target: '/d/a' }] }),
    encodeControl('COMMIT', 14, { srcHashes: [null, 'ab'.repeat(8), null, null] }),
    encodeControl('WALK', 16, { root: '/d' }),
    encodeControl('READ_BATCH', 17, { algorithm: 'crc32', entries: [{ path: '/d/a', size: 8 }, { path: '/d/b', size: 0 }] }),
    encodeControl('ENTRIES', 16, { items: [{ path: '', kind: 'dir', size: 0, mode: 0o755, uid: 1, gid: 1, mtimeMs: 1e12, atimeMs: 1e12, dev: 2, ino: 3, nlink: 2 }, { path: 'a', kind: 'hardlink', size: 0, mode: 0o644, uid: 1, gid: 1, mtimeMs: 1.5, atimeMs: -1, dev: 2, ino: 4, nlink: 2, target: 'b' }, { path: 'x', error: { code: 'EACCES', message: 'no' } }] }),
    encodeControl('OK', 14, { results: [{ ok: true }, { ok: true, hash: 'ab'.repeat(8) }, { ok: false, error: { code: 'DEST_CONFLICT', message: 'x', path: '/d/l', errno: 'EISDIR' } }] }),
    encodeControl('OK', 12, { handle: 1, size: 10, hello: { version: 1, software: 'ferry', capabilities: ['hub-auth'], hub: '/run/s' }, stat: { type: 'file', size: 1, mode: 0o644, mtimeMs: 1, ino: 1, dev: 1 } }),
    encodeControl('ERROR', 13, { code: 'DEST_IO', message: 'x', path: '/a', errno: 'EIO', range: 3 }),
  ];
  const messages = [
    encode({ v, job, range: 3, offset: 1 << 30, length: 1 << 26, attempt: 1 }),
    encode({ v, job, range: 3, attempt: 1, srcHash: 'a'.repeat(16), dstHash: 'a'.repeat(16), agent: 'n1-0', bytes: 10 }),
    encode({ v, job, completions: [{ v, job, range: 1, attempt: 1, srcHash: 'x', dstHash: 'x', agent: 'a' }] }),
    encode({ v, job, agent: 'n1-0', bytes: 123, node: 'n1' }),
    encode({ v, job, type: 'stop' }),
    encode({ v, job, type: 'agent.error', agent: 'a', node: 'n', error: { code: 'DEST_IO', message: 'm' }, fatal: false }),
    encode({ v, jobId: job, direction: 'push', mode: 'helper', localPath: '/a', remotePath: '/b', remoteHosts: [{ host: 'h', port: 22, user: 'u' }], rangeBytes: 1 << 26, ssh: { knownHostsFile: '/k' } }),
  ];
  return { frames, messages };
}

/** msgpack bytes from a small grammar, with what the strict codec must refuse mixed in. */
function madeUp(r, depth = 0) {
  const parts = [];
  const put = (...b) => parts.push(Buffer.from(b));
  const k = r.int(depth > 6 ? 8 : 14);
  switch (k) {
    case 0: put(r.int(0x80)); break;
    case 1: put(0xe0 | r.int(32)); break;
    case 2: put(r.pick([0xc0, 0xc2, 0xc3])); break;
    case 3: put(0xcb); parts.push(r.bytes(8)); break;
    case 4: { const n = r.int(8); put(0xa0 | n); parts.push(Buffer.from('abcdefghijk'.slice(0, n))); break; }
    case 5: { const n = r.int(6); put(0xc4, n); parts.push(r.bytes(n)); break; }
    case 6: put(0xd4, r.pick(EXT_TYPES), r.int(256)); break;
    case 7: { const n = r.pick([1, 2, 4, 8, 16]); put({ 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 }[n], r.pick(EXT_TYPES)); parts.push(r.bytes(n)); break; }
    case 8: { const n = r.int(4); put(0x90 | n); for (let i = 0; i < n; i++) parts.push(madeUp(r, depth + 1)); break; }
    case 9: { const n = r.int(4); put(0x80 | n); for (let i = 0; i < n; i++) { parts.push(r.int(5) === 0 ? madeUp(r, depth + 1) : Buffer.from([0xa1, 0x61 + r.int(26)])); parts.push(madeUp(r, depth + 1)); } break; }
    case 10: put(0xdd, 0xff, 0xff, 0xff, r.int(256)); break; // an array that claims 4 billion entries
    case 11: put(0xdf, 0x7f, 0xff, 0xff, 0xff); break; // a map likewise
    case 12: { const n = 40 + r.int(2000); parts.push(Buffer.alloc(n, 0x91)); put(0xc0); break; } // deep nesting
    case 13: put(0xc7, r.int(4), r.pick(EXT_TYPES)); parts.push(r.bytes(r.int(4))); break;
  }
  return Buffer.concat(parts);
}

function mutate(r, input, others) {
  let b = Buffer.from(input);
  const rounds = 1 + r.int(4);
  for (let i = 0; i < rounds; i++) {
    const at = b.length === 0 ? 0 : r.int(b.length);
    switch (r.int(8)) {
      case 0: if (b.length) b[at] ^= 1 << r.int(8); break;
      case 1: if (b.length) b[at] = r.pick(SPECIAL); break;
      case 2: b = b.subarray(0, at); break;
      case 3: b = Buffer.concat([b.subarray(0, at), r.bytes(1 + r.int(8)), b.subarray(at)]); break;
      case 4: b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + r.int(8)))]); break;
      case 5: b = Buffer.concat([b, r.pick(others)]); break;
      case 6: b = Buffer.concat([b.subarray(0, at), madeUp(r), b.subarray(at)]); break;
      case 7: if (b.length >= 4) b.writeUInt32BE(r.pick([0, 1, 0x7fffffff, 0xffffffff, r.int(1 << 20)]), Math.min(at, b.length - 4)); break;
    }
  }
  return b;
}

/** A control frame around `body`, of any type, with a header that may lie about its length. */
function framed(r, core, body) {
  const types = Object.values(core.FrameType);
  const h = Buffer.alloc(core.FRAME_HEADER_BYTES);
  h.writeUInt8(r.int(10) === 0 ? r.int(256) : r.pick(types), 0);
  h.writeUInt32BE(r.int(1 << 16), 4);
  h.writeUInt32BE(r.int(8) === 0 ? r.int(1 << 20) : body.length, 8);
  return Buffer.concat([h, body]);
}

/** Bytes of a value that encodes cyclic structure with msgpackr's structured clone (the codec must refuse them). */
function cyclic(r) {
  const p = new Packr({ structuredClone: true, useRecords: false });
  const o = { path: '/x', policy: 'read' };
  o[r.pick(['self', 'path', 'size'])] = o;
  return p.pack(r.int(2) ? o : new Set([1, o]));
}

function isPlain(value, depth = 0) {
  if (depth > 64) return false;
  if (value === null || value === undefined) return true;
  const t = typeof value;
  if (t === 'string' || t === 'number' || t === 'boolean') return true;
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return Object.getPrototypeOf(value) === Buffer.prototype || Object.getPrototypeOf(value) === Uint8Array.prototype;
  if (Array.isArray(value)) return value.every((v) => isPlain(v, depth + 1));
  if (t !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  return Object.values(value).every((v) => isPlain(v, depth + 1));
}

/**
 * Runs inputs until `inputs` have run or `seconds` have passed (whichever is set and comes
 * first). Returns { inputs, seconds, frames, messages }; throws on the first input that breaks
 * a rule, with the seed and input number to play it again.
 */
export function runFuzz(core, { seed, inputs = Infinity, seconds = Infinity, onProgress } = {}) {
  const r = prng(seed);
  const { frames, messages } = corpus(core);
  const all = [...frames, ...messages];
  const decoders = [core.decodeWorkItem, core.decodeCompletion, core.decodeCompletions, core.decodeHeartbeat, core.decodeControl, core.decodeAgentEvent, core.decodeJobSpec];
  const start = Date.now();
  const stats = { inputs: 0, frames: 0, messages: 0, seconds: 0 };
  for (let i = 0; i < inputs; i++) {
    if ((i & 1023) === 0 && (Date.now() - start) / 1000 >= seconds) break;
    let input;
    const kind = r.int(6);
    if (kind === 0) input = r.bytes(r.int(64));
    else if (kind === 1) input = mutate(r, r.pick(all), all);
    else if (kind === 2) input = framed(r, core, madeUp(r));
    else if (kind === 3) input = madeUp(r);
    else if (kind === 4) input = r.int(2) ? framed(r, core, cyclic(r)) : cyclic(r);
    else input = Buffer.concat([r.pick(frames), mutate(r, r.pick(frames), all), r.pick(frames)]);
    const fail = (what, err) => {
      const e = new Error(`fuzz: ${what} (seed ${seed}, input ${i}; replay: node scripts/fuzz.mjs --seed ${seed} --inputs ${i + 1})\ninput: ${input.toString('hex').slice(0, 4000)}\n${err?.stack ?? err ?? ''}`);
      e.seed = seed;
      e.input = i;
      e.fuzz = true;
      throw e;
    };
    const expectProtocol = (where, err) => {
      if (err?.fuzz) throw err;
      if (!(err instanceof core.FerryError) || err.code !== 'PROTOCOL') fail(`${where} threw something other than a PROTOCOL error`, err);
    };
    const checkOut = (where, value) => {
      if (!isPlain(value)) fail(`${where} returned something that is not plain data`, JSON.stringify(value)?.slice(0, 500));
      try {
        core.encode(value);
      } catch (err) {
        fail(`${where} returned data that does not encode again`, err);
      }
    };

    // The frame decoder, fed in random pieces, as the helper (requests) or the client (answers) runs it.
    const decoder = new core.FrameDecoder((frame) => {
      stats.frames++;
      if (frame.type === 'DATA') {
        if (!Buffer.isBuffer(frame.chunk) || frame.chunk.length > frame.frameBytes || frame.remaining < 0) fail('a DATA piece is out of its frame', JSON.stringify({ n: frame.chunk.length, frameBytes: frame.frameBytes, remaining: frame.remaining }));
      } else checkOut(`FrameDecoder (${frame.type})`, frame.body);
    }, r.int(2) ? 'helper' : 'client');
    try {
      for (let at = 0; at < input.length; ) {
        const n = 1 + r.int(Math.max(1, input.length - at));
        decoder.push(input.subarray(at, at + n));
        at += n;
      }
    } catch (err) {
      expectProtocol('FrameDecoder', err);
    }

    // The NATS message decoders, each on the whole input.
    for (const decode of decoders) {
      try {
        const out = decode(input, r.int(2) ? undefined : '0123456789abcdef');
        stats.messages++;
        checkOut(decode.name || 'a message decoder', out);
      } catch (err) {
        expectProtocol(decode.name || 'a message decoder', err);
      }
    }

    // Journal replay: a torn or corrupt tail ends the replay, it never throws.
    try {
      core.replayJournal(input);
    } catch (err) {
      fail('replayJournal threw', err);
    }
    stats.inputs = i + 1;
    if (onProgress && (i & 65535) === 65535) onProgress(stats.inputs, (Date.now() - start) / 1000);
  }
  stats.seconds = (Date.now() - start) / 1000;
  return stats;
}
