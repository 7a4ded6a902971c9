/**
 * The one msgpack codec for everything ferry sends as structured data (NATS
 * messages, helper control frames, journal records). Plain maps, no record
 * structures, so two processes of different builds always agree.
 */
import { createRequire } from 'node:module';

// The CommonJS build, loaded with require(): one file instead of msgpackr's five ES modules, ~7 ms
// less start-up per process (Node 20), which every helper pays.
const { Packr } = createRequire(import.meta.url)('msgpackr') as typeof import('msgpackr');

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number' });

export function encode(value: unknown): Buffer {
  return packr.pack(value);
}

export function decode(data: Uint8Array): unknown {
  return packr.unpack(data);
}
