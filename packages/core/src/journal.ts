/**
 * Journal records and their framing. The journal file is append-only; each
 * record is `u32 length | u32 crc32 | msgpack body`. Replay reads records until
 * the end or until a record is incomplete or fails its checksum (a torn write
 * at the moment of a crash), and reports how many bytes were valid so the
 * caller can truncate the tail before appending again. The file itself is
 * handled by the coordinator; this module is pure.
 */
import { crc32 } from 'node:zlib';
import { decode, encode } from './codec.js';
import type { HashAlgorithm } from './hash.js';
import type { FileIdentity } from './dest-file.js';

export const JOURNAL_VERSION = 1;
const RECORD_HEADER_BYTES = 8;
/** Larger than any record ferry writes; a length above it means garbage. */
const MAX_RECORD_BYTES = 1024 * 1024;

export interface SourceFingerprint {
  size: number;
  mtimeMs: number;
  ino: number;
  /** Hash of the first and last MiB (or the whole file when smaller). */
  headHash: string;
  tailHash: string;
}

export type JournalRecord =
  | {
      t: 'job';
      v: number;
      jobId: string;
      source: string;
      destination: string;
      fileBytes: number;
      rangeBytes: number;
      rangeCount: number;
      hash: HashAlgorithm;
      fingerprint?: SourceFingerprint;
      /** The temporary destination file (random name) and what identifies it, for a resume to find and check it. */
      tempPath?: string;
      temp?: FileIdentity;
      at: number;
    }
  | {
      t: 'range';
      range: number;
      attempt: number;
      hash: string;
      bytes: number;
      durable: boolean;
      agent: string;
      host: string;
      /** `--delta`: copied from the old destination file on its host, not sent. */
      reused?: boolean;
      at: number;
    }
  | { t: 'resend'; range: number; attempt: number; reason: string; at: number }
  | { t: 'final'; rootHash: string; at: number };

export function encodeRecord(record: JournalRecord): Buffer {
  const body = encode(record);
  const out = Buffer.allocUnsafe(RECORD_HEADER_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  out.writeUInt32BE(crc32(body) >>> 0, 4);
  body.copy(out, RECORD_HEADER_BYTES);
  return out;
}

export interface ReplayResult {
  records: JournalRecord[];
  /** Bytes of the input that hold whole, valid records. */
  validBytes: number;
  /** True when bytes after `validBytes` were ignored (a torn or corrupt tail). */
  tornTail: boolean;
}

export function replayJournal(data: Uint8Array): ReplayResult {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const records: JournalRecord[] = [];
  let at = 0;
  while (at + RECORD_HEADER_BYTES <= buf.length) {
    const length = buf.readUInt32BE(at);
    const sum = buf.readUInt32BE(at + 4);
    if (length === 0 || length > MAX_RECORD_BYTES || at + RECORD_HEADER_BYTES + length > buf.length) break;
    const body = buf.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + length);
    if ((crc32(body) >>> 0) !== sum) break;
    let record: unknown;
    try {
      record = decode(body);
    } catch {
      break;
    }
    if (record === null || typeof record !== 'object' || typeof (record as { t?: unknown }).t !== 'string') break;
    records.push(record as JournalRecord);
    at += RECORD_HEADER_BYTES + length;
  }
  return { records, validBytes: at, tornTail: at < buf.length };
}
