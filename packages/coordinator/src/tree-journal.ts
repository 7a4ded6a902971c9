/**
 * The journal of a tree copy (`ferry cp -r`): one NDJSON line per entry that is
 * durable at the destination, appended in groups, each group fsynced before
 * the entries in it count as done. A rerun of the same copy reads it back and
 * sends again only what it does not list, or what changed at the source since
 * (size, mtime or inode), or whose metadata the copy keeps changed since
 * (`a`: a digest of the mode, owner and attributes the entry was given, see
 * metaDigest; chown, chmod and setfattr change none of size, mtime or inode).
 * A record without `a` (written by a ferry before it) is trusted as it
 * always was: its metadata is not compared.
 *
 * A line cut short by a crash is dropped when the journal is read, and the
 * file is truncated to the last whole line before anything is appended.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { GroupCommit } from './journal-file.js';
import type { TreeEntry } from '@ferry/core';

/** One durable entry: a file (with the hash of its content), a symlink, or a big file copied as a job of its own. */
export interface TreeRecord {
  /** Tree path (`/`-separated under the root). */
  p: string;
  /** Source size, mtime (ms) and inode when it was sent. */
  s: number;
  m: number;
  i: number;
  /** Content hash (files sent in batches), absent for symlinks. */
  h?: string;
  /** A big file: the id of the single-file job that moved it. */
  job?: string;
  /** Digest of the metadata the entry was given at the destination (metaDigest); absent in journals of older versions. */
  a?: string;
}

export interface TreeJournalState {
  /** Durable entries by tree path. */
  done: Map<string, TreeRecord>;
  /** Bytes of a last line cut short, removed on open. */
  tornBytes: number;
}

export class TreeJournal {
  private readonly writer: GroupCommit;

  private constructor(
    private readonly fh: FileHandle,
    position: number,
    readonly path: string,
  ) {
    this.writer = new GroupCommit(fh, position);
  }

  /** Opens (creating 0600, never through a link) and reads the journal at `path`. */
  static async open(path: string): Promise<{ journal: TreeJournal; state: TreeJournalState }> {
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    try {
      const data = await fh.readFile();
      const end = data.lastIndexOf(0x0a) + 1;
      const done = new Map<string, TreeRecord>();
      for (const line of data.subarray(0, end).toString('utf8').split('\n')) {
        if (line === '') continue;
        let rec: unknown;
        try {
          rec = JSON.parse(line);
        } catch {
          continue;
        }
        if (isRecord(rec)) done.set(rec.p, rec);
      }
      if (end < data.length) {
        await fh.truncate(end);
        await fh.sync();
      }
      return { journal: new TreeJournal(fh, end, path), state: { done, tornBytes: data.length - end } };
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Resolves once the records are on stable storage (records queued meanwhile share the next fsync). */
  append(records: readonly TreeRecord[]): Promise<void> {
    if (records.length === 0) return Promise.resolve();
    return this.writer.append(Buffer.from(records.map((r) => JSON.stringify(r) + '\n').join(''), 'utf8'));
  }

  async close(): Promise<void> {
    await this.writer.settle();
    await this.fh.close();
  }
}

function isRecord(v: unknown): v is TreeRecord {
  if (v === null || typeof v !== 'object') return false;
  const r = v as Record<string, unknown>;
  return typeof r.p === 'string' && typeof r.s === 'number' && typeof r.m === 'number' && typeof r.i === 'number';
}

/** The journal's record for an entry sent now. */
export function recordOf(entry: TreeEntry, extra: { hash?: string; job?: string; meta?: string } = {}): TreeRecord {
  return { p: entry.path, s: entry.size, m: entry.mtimeMs, i: entry.ino, ...(extra.hash ? { h: extra.hash } : {}), ...(extra.job ? { job: extra.job } : {}), ...(extra.meta ? { a: extra.meta } : {}) };
}

/**
 * Whether an earlier run made this entry durable and the source has not
 * changed since: neither its size, mtime and inode nor (where the record
 * holds one) the digest `meta` of the metadata it is to get now.
 */
export function alreadyDone(state: TreeJournalState, entry: TreeEntry, meta?: string): boolean {
  const r = state.done.get(entry.path);
  if (r === undefined || r.s !== entry.size || r.m !== entry.mtimeMs || r.i !== entry.ino) return false;
  return r.a === undefined || meta === undefined || r.a === meta;
}

/** What an entry is given at the destination besides its bytes, for metaDigest. */
export interface DigestedMeta {
  mode?: number;
  uid?: number;
  gid?: number;
  user?: string;
  group?: string;
  xattrs?: Record<string, Uint8Array>;
}

/**
 * A short digest (16 hex digits) of the metadata an entry gets: its mode,
 * owner (numbers and names) and extended attributes, as far as the copy
 * keeps them. No I/O: made from what the walk already reported, so it costs
 * a few microseconds per entry and 20 bytes of journal.
 */
export function metaDigest(m: DigestedMeta): string {
  const h = createHash('sha256');
  const field = (k: string, v: string | number | undefined) => h.update(v === undefined ? `${k}\0-\n` : `${k}\0${v}\n`);
  field('mode', m.mode);
  field('uid', m.uid);
  field('gid', m.gid);
  field('user', m.user);
  field('group', m.group);
  for (const name of Object.keys(m.xattrs ?? {}).sort()) {
    const value = m.xattrs![name]!;
    h.update(`x\0${Buffer.byteLength(name)}:${name}\0${value.length}:`);
    h.update(value);
  }
  return h.digest('hex').slice(0, 16);
}
