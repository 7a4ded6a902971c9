/**
 * The one msgpack codec for everything ferry sends as structured data (NATS
 * messages, helper control frames, journal records). Plain maps, no record
 * structures, so two processes of different builds always agree.
 *
 * Decoding is strict, because what is decoded may come from anyone who can
 * reach a socket or a subject: before msgpackr sees the bytes, `checkPlain`
 * walks them and lets through only plain data (nil, booleans, numbers,
 * strings, binaries, arrays, and maps whose keys are strings), nested at
 * most MAX_DECODE_DEPTH deep, as exactly one value. msgpackr's extensions
 * (structured-clone references and cycles, Error, Set, Map, RegExp, Date,
 * typed arrays, records, bundled strings) are refused, but for `undefined`,
 * which the encoder writes for absent optional fields.
 */
import { createRequire } from 'node:module';

// The CommonJS build, loaded with require(): one file instead of msgpackr's five ES modules, ~7 ms
// less start-up per process (Node 20), which every helper pays. Loaded at the first message, not
// with this module: the CLI's start (exit codes, options) needs core but not msgpack, and the
// ~35 ms then fall while the SSH login waits on the network.
let packr: import('msgpackr').Packr | undefined;
function packrNow(): import('msgpackr').Packr {
  if (packr) return packr;
  const { Packr } = createRequire(import.meta.url)('msgpackr') as typeof import('msgpackr');
  packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number', structuredClone: false, mapsAsObjects: true });
  return packr;
}

/** Deepest nesting of arrays and maps a decoded value may have. */
export const MAX_DECODE_DEPTH = 32;

export function encode(value: unknown): Buffer {
  return packrNow().pack(value);
}

/** Decodes one plain msgpack value (see checkPlain); throws on anything else. */
export function decode(data: Uint8Array): unknown {
  checkPlain(data);
  return packrNow().unpack(data);
}

/**
 * Throws unless `data` is exactly one msgpack value made only of plain data
 * nested at most `maxDepth` deep. Counts are checked against the bytes left,
 * so no header can make a decoder reserve room for more than is there.
 */
export function checkPlain(data: Uint8Array, maxDepth = MAX_DECODE_DEPTH): void {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const end = data.length;
  let at = 0;
  const need = (n: number) => {
    if (n > end - at) throw new Error(`data ends inside a msgpack value (at byte ${at})`);
  };
  const u8 = () => (need(1), data[at++]!);
  const u16 = () => (need(2), (at += 2), view.getUint16(at - 2));
  const u32 = () => (need(4), (at += 4), view.getUint32(at - 4));
  const skip = (n: number) => {
    need(n);
    at += n;
  };
  /** Reads one value's header; returns what follows it: none, `n` values (array) or `n` key/value pairs (map). */
  const value = (depth: number, asKey: boolean): void => {
    const t = u8();
    const str = (n: number) => skip(n);
    if (asKey && !(t >= 0xa0 && t <= 0xbf) && t !== 0xd9 && t !== 0xda && t !== 0xdb) throw new Error(`msgpack map key at byte ${at - 1} is not a string`);
    if (t <= 0x7f || t >= 0xe0) return; // fixint
    if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f);
    if (t >= 0x90 && t <= 0x9f) return items(t & 0x0f, depth, 1);
    if (t >= 0x80 && t <= 0x8f) return items(t & 0x0f, depth, 2);
    switch (t) {
      case 0xc0: // nil
      case 0xc2: // false
      case 0xc3: // true
        return;
      case 0xcc:
      case 0xd0:
        return skip(1);
      case 0xcd:
      case 0xd1:
        return skip(2);
      case 0xce:
      case 0xd2:
      case 0xca:
        return skip(4);
      case 0xcf:
      case 0xd3:
      case 0xcb:
        return skip(8);
      case 0xd9:
      case 0xc4:
        return str(u8());
      case 0xda:
      case 0xc5:
        return str(u16());
      case 0xdb:
      case 0xc6:
        return str(u32());
      case 0xdc:
        return items(u16(), depth, 1);
      case 0xdd:
        return items(u32(), depth, 1);
      case 0xde:
        return items(u16(), depth, 2);
      case 0xdf:
        return items(u32(), depth, 2);
      case 0xd4: {
        // fixext 1 of type 0: `undefined`, as the encoder writes an absent optional field.
        const type = u8();
        u8();
        if (type === 0) return;
        throw new Error(`msgpack extension type ${type} at byte ${at - 3} is not accepted`);
      }
      default:
        throw new Error(t === 0xc1 ? `msgpack byte 0xc1 (never used) at ${at - 1}` : `msgpack extension (0x${t.toString(16)}) at byte ${at - 1} is not accepted`);
    }
  };
  const items = (count: number, depth: number, per: 1 | 2): void => {
    if (depth + 1 > maxDepth) throw new Error(`msgpack value nested deeper than ${maxDepth}`);
    // Every value takes at least one byte.
    if (count * per > end - at) throw new Error(`data ends inside a msgpack ${per === 1 ? 'array' : 'map'} of ${count} entries (at byte ${at})`);
    for (let i = 0; i < count; i++) {
      if (per === 2) value(depth + 1, true);
      value(depth + 1, false);
    }
  };
  if (end === 0) throw new Error('empty msgpack data');
  value(0, false);
  if (at !== end) throw new Error(`${end - at} bytes after the msgpack value`);
}
