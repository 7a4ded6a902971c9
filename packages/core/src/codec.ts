/**
 * The one msgpack codec for everything ferry sends as structured data (NATS
 * messages, helper control frames, journal records). Plain maps, no record
 * structures, so two processes of different builds always agree.
 */
import { Packr } from 'msgpackr';

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number' });

export function encode(value: unknown): Buffer {
  return packr.pack(value);
}

export function decode(data: Uint8Array): unknown {
  return packr.unpack(data);
}
