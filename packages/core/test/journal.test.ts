import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { JOURNAL_VERSION, encode, encodeRecord, replayJournal } from '@ferry/core';
import type { JournalRecord } from '@ferry/core';

const jobRecord: JournalRecord = {
  t: 'job',
  v: JOURNAL_VERSION,
  jobId: 'c0ffee00',
  source: '/data/big.bin',
  destination: 'dtn01:/scratch/big.bin',
  fileBytes: 6 * 2 ** 30 + 1,
  rangeBytes: 16 * 2 ** 20,
  rangeCount: 385,
  hash: 'xxh3',
  fingerprint: { size: 6 * 2 ** 30 + 1, mtimeMs: 1_700_000_000_123, ino: 2 ** 40 + 5, headHash: '2d06800538d394c2', tailHash: '78af5f94892f3950' },
  at: 1_700_000_000_000,
};
const rangeRecord: JournalRecord = {
  t: 'range',
  range: 384,
  attempt: 0,
  hash: '0440216782466d91',
  bytes: 1,
  durable: true,
  agent: 'a1',
  host: 'dtn01',
  at: 1_700_000_001_000,
};
const resendRecord: JournalRecord = { t: 'resend', range: 7, attempt: 1, reason: 'hash mismatch', at: 1_700_000_002_000 };
const finalRecord: JournalRecord = { t: 'final', rootHash: 'c681dac516c0de85', at: 1_700_000_003_000 };
const records = [jobRecord, rangeRecord, resendRecord, finalRecord];

/** A record framed by hand: u32 length | u32 crc32 | body. */
function frame(body: Buffer, sum = crc32(body)): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32BE(body.length, 0);
  header.writeUInt32BE(sum >>> 0, 4);
  return Buffer.concat([header, body]);
}

describe('journal records', () => {
  it('uses journal version 1', () => {
    expect(JOURNAL_VERSION).toBe(1);
  });

  it('frames a record as length, crc32 and msgpack body', () => {
    const rec = encodeRecord(finalRecord);
    const body = encode(finalRecord);
    expect(rec.length).toBe(8 + body.length);
    expect(rec.readUInt32BE(0)).toBe(body.length);
    expect(rec.readUInt32BE(4)).toBe(crc32(body) >>> 0);
    expect(rec.subarray(8).equals(body)).toBe(true);
  });

  it('replays every kind of record in order with numbers above 2^32 exact', () => {
    const data = Buffer.concat(records.map(encodeRecord));
    expect(replayJournal(data)).toEqual({ records, validBytes: data.length, tornTail: false });
  });

  it('replays an empty journal as no records and no torn tail', () => {
    expect(replayJournal(new Uint8Array(0))).toEqual({ records: [], validBytes: 0, tornTail: false });
  });

  it('replays a Uint8Array view at an offset inside a larger buffer', () => {
    const data = Buffer.concat(records.map(encodeRecord));
    const backing = new Uint8Array(data.length + 20);
    backing.fill(0xaa);
    backing.set(data, 7);
    const view = backing.subarray(7, 7 + data.length);
    expect(replayJournal(view)).toEqual({ records, validBytes: data.length, tornTail: false });
  });

  it('replays many records', () => {
    const many: JournalRecord[] = [];
    for (let i = 0; i < 1000; i++) many.push({ ...rangeRecord, range: i, at: i });
    const data = Buffer.concat(many.map(encodeRecord));
    const result = replayJournal(data);
    expect(result.records.length).toBe(1000);
    expect(result.records[999]).toEqual({ ...rangeRecord, range: 999, at: 999 });
    expect(result.validBytes).toBe(data.length);
    expect(result.tornTail).toBe(false);
  });
});

describe('journal replay after a crash', () => {
  const whole = records.slice(0, 3).map(encodeRecord);
  const prefix = Buffer.concat(whole);
  const last = encodeRecord(finalRecord);

  it('keeps the whole records before a last record truncated at every byte position', () => {
    for (let cut = 1; cut < last.length; cut++) {
      const data = Buffer.concat([prefix, last.subarray(0, cut)]);
      const result = replayJournal(data);
      expect(result.records, `cut after ${cut} bytes`).toEqual(records.slice(0, 3));
      expect(result.validBytes, `cut after ${cut} bytes`).toBe(prefix.length);
      expect(result.tornTail, `cut after ${cut} bytes`).toBe(true);
    }
  });

  it('reports no torn tail when the cut falls exactly between records', () => {
    expect(replayJournal(prefix)).toEqual({ records: records.slice(0, 3), validBytes: prefix.length, tornTail: false });
  });

  it('treats a torn first record as an empty journal with a torn tail', () => {
    const first = encodeRecord(jobRecord);
    for (let cut = 1; cut < first.length; cut++) {
      expect(replayJournal(first.subarray(0, cut))).toEqual({ records: [], validBytes: 0, tornTail: true });
    }
  });

  it('stops at a record whose checksum does not match', () => {
    const bad = Buffer.from(last);
    bad.writeUInt32BE((bad.readUInt32BE(4) ^ 1) >>> 0, 4);
    const data = Buffer.concat([prefix, bad]);
    expect(replayJournal(data)).toEqual({ records: records.slice(0, 3), validBytes: prefix.length, tornTail: true });
  });

  it('stops at a record whose body has one flipped bit', () => {
    for (let at = 8; at < last.length; at++) {
      const bad = Buffer.from(last);
      bad[at] = bad[at]! ^ 0x10;
      const result = replayJournal(Buffer.concat([prefix, bad]));
      expect(result.records.length, `bit flipped in byte ${at}`).toBe(3);
      expect(result.validBytes).toBe(prefix.length);
      expect(result.tornTail).toBe(true);
    }
  });

  it('ignores good records after a corrupt one', () => {
    const corrupt = Buffer.from(encodeRecord(rangeRecord));
    corrupt[corrupt.length - 1] = corrupt[corrupt.length - 1]! ^ 0xff;
    const first = encodeRecord(jobRecord);
    const data = Buffer.concat([first, corrupt, encodeRecord(resendRecord), encodeRecord(finalRecord)]);
    expect(replayJournal(data)).toEqual({ records: [jobRecord], validBytes: first.length, tornTail: true });
  });

  it('stops at zero-filled space after the records, as a preallocated file leaves', () => {
    const data = Buffer.concat([prefix, Buffer.alloc(64)]);
    expect(replayJournal(data)).toEqual({ records: records.slice(0, 3), validBytes: prefix.length, tornTail: true });
  });

  it('stops at a record length above 1 MiB', () => {
    const header = Buffer.alloc(8);
    header.writeUInt32BE(1024 * 1024 + 1, 0);
    const data = Buffer.concat([prefix, header, Buffer.alloc(1024 * 1024 + 1)]);
    expect(replayJournal(data)).toEqual({ records: records.slice(0, 3), validBytes: prefix.length, tornTail: true });
  });

  it('stops at a checksummed body that is not valid msgpack', () => {
    const data = Buffer.concat([prefix, frame(Buffer.from([0x81]))]);
    expect(replayJournal(data)).toEqual({ records: records.slice(0, 3), validBytes: prefix.length, tornTail: true });
  });

  it('stops at a checksummed body that is not a record', () => {
    for (const body of [encode(42), encode('text'), encode(null), encode({ at: 1 }), encode({ t: 5 })]) {
      const data = Buffer.concat([prefix, frame(body)]);
      expect(replayJournal(data)).toEqual({ records: records.slice(0, 3), validBytes: prefix.length, tornTail: true });
    }
  });

  it('lets replay resume cleanly after truncating to validBytes and appending', () => {
    const torn = Buffer.concat([prefix, last.subarray(0, 5)]);
    const { validBytes } = replayJournal(torn);
    const repaired = Buffer.concat([torn.subarray(0, validBytes), last]);
    expect(replayJournal(repaired)).toEqual({ records, validBytes: repaired.length, tornTail: false });
  });
});
