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
 *
 * A rerun of a tree of millions of files reads millions of lines: the
 * journal is read a MiB at a time (never whole), and what a rerun needs of
 * each entry (size, mtime, inode) is kept in one typed array beside a map of
 * paths, not as an object per entry. Opening a journal of 1,000,000 entries
 * (92 MiB): 210 MiB peak and 77 MiB of heap kept, where reading it whole into
 * an object per entry took 533 MiB and kept 184.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { GroupCommit } from './journal-file.js';
import { hashBytes } from '@ferry/core';
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
  /** A symlink's target (absent in journals of older versions, which did not say which entries were links). */
  l?: string;
  /** A big file: the id of the single-file job that moved it. */
  job?: string;
  /** Digest of the metadata the entry was given at the destination (metaDigest); absent in journals of older versions. */
  a?: string;
  /**
   * A further name of a file (a hard link made to it): the file's first name
   * then. Size, mtime, inode and digest are the file's: a rerun whose walk
   * meets this name first finds the file durable under it.
   */
  k?: string;
}

/** What the journal holds of one durable entry. */
export interface DoneEntry {
  size: number;
  mtimeMs: number;
  ino: number;
  /** The digest of its metadata (metaDigest), when its record has one. */
  a?: string;
  /** A big file: the id of the single-file job that moved it. */
  job?: string;
}

/**
 * Durable entries by tree path: what a rerun compares with the source (size,
 * mtime, inode, and the metadata digest). Numbers in typed arrays, not an
 * object per entry: a rerun of a million entries keeps them in ~40 MiB.
 */
export class DoneEntries {
  private readonly index = new Map<string, number>();
  /** Size, mtime (ms) and inode of entry k at 3k, 3k+1, 3k+2. */
  private fields = new Float64Array(3 * 1024);
  /** Entry k's metadata digest (16 hex digits) as two 32-bit halves at 2k, 2k+1; `hasDigest[k]` says whether it has one. */
  private digests = new Uint32Array(2 * 1024);
  private hasDigest = new Uint8Array(1024);
  /** Job ids of big files, by entry number: few. */
  private readonly jobs = new Map<number, string>();

  get size(): number {
    return this.index.size;
  }

  /** Records (or replaces: a later line of the same path wins) an entry. */
  set(path: string, size: number, mtimeMs: number, ino: number, extra: { a?: string; job?: string } = {}): void {
    let k = this.index.get(path);
    if (k === undefined) {
      k = this.index.size;
      this.index.set(path, k);
      if (k >= this.hasDigest.length) this.grow();
    }
    this.fields[3 * k] = size;
    this.fields[3 * k + 1] = mtimeMs;
    this.fields[3 * k + 2] = ino;
    const digest = extra.a !== undefined && /^[0-9a-f]{16}$/.test(extra.a) ? extra.a : undefined;
    this.hasDigest[k] = digest === undefined ? 0 : 1;
    if (digest !== undefined) {
      this.digests[2 * k] = parseInt(digest.slice(0, 8), 16);
      this.digests[2 * k + 1] = parseInt(digest.slice(8), 16);
    }
    if (extra.job !== undefined) this.jobs.set(k, extra.job);
    else this.jobs.delete(k);
  }

  private grow(): void {
    const n = this.hasDigest.length * 2;
    const fields = new Float64Array(3 * n);
    fields.set(this.fields);
    this.fields = fields;
    const digests = new Uint32Array(2 * n);
    digests.set(this.digests);
    this.digests = digests;
    const has = new Uint8Array(n);
    has.set(this.hasDigest);
    this.hasDigest = has;
  }

  has(path: string): boolean {
    return this.index.has(path);
  }

  /** What the journal holds of a durable entry, or undefined. */
  get(path: string): DoneEntry | undefined {
    const k = this.index.get(path);
    if (k === undefined) return undefined;
    const out: DoneEntry = { size: this.fields[3 * k]!, mtimeMs: this.fields[3 * k + 1]!, ino: this.fields[3 * k + 2]! };
    if (this.hasDigest[k]) out.a = this.digests[2 * k]!.toString(16).padStart(8, '0') + this.digests[2 * k + 1]!.toString(16).padStart(8, '0');
    const job = this.jobs.get(k);
    if (job !== undefined) out.job = job;
    return out;
  }

  keys(): IterableIterator<string> {
    return this.index.keys();
  }
}

export interface TreeJournalState {
  /** Durable entries by tree path. */
  done: DoneEntries;
  /** Bytes of a last line cut short, removed on open. */
  tornBytes: number;
}

/** The journal is read in pieces this large. */
const READ_BYTES = 1024 * 1024;

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
      const done = new DoneEntries();
      const add = (line: string) => {
        if (line === '') return;
        let rec: unknown;
        try {
          rec = JSON.parse(line);
        } catch {
          return;
        }
        if (isRecord(rec)) done.set(rec.p, rec.s, rec.m, rec.i, { ...(typeof rec.a === 'string' ? { a: rec.a } : {}), ...(typeof rec.job === 'string' ? { job: rec.job } : {}) });
      };
      // A MiB at a time; a line that runs over a chunk's end waits in `carry` for the rest.
      const buf = Buffer.allocUnsafe(READ_BYTES);
      let carry = Buffer.alloc(0);
      let length = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, length);
        if (bytesRead === 0) break;
        length += bytesRead;
        const chunk = carry.length > 0 ? Buffer.concat([carry, buf.subarray(0, bytesRead)]) : buf.subarray(0, bytesRead);
        // Whole lines up to the last newline of the chunk (a MiB of text at a time).
        const start = chunk.lastIndexOf(0x0a) + 1;
        if (start > 0) for (const line of chunk.toString('utf8', 0, start - 1).split('\n')) add(line);
        carry = Buffer.from(chunk.subarray(start));
      }
      // After the last whole line: a torn one is cut off.
      const end = length - carry.length;
      if (end < length) {
        await fh.truncate(end);
        await fh.sync();
      }
      return { journal: new TreeJournal(fh, end, path), state: { done, tornBytes: length - end } };
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
  return { p: entry.path, s: entry.size, m: entry.mtimeMs, i: entry.ino, ...(extra.hash ? { h: extra.hash } : {}), ...(entry.kind === 'symlink' && entry.target !== undefined ? { l: entry.target } : {}), ...(extra.job ? { job: extra.job } : {}), ...(extra.meta ? { a: extra.meta } : {}) };
}

/**
 * Whether an earlier run made this entry durable and the source has not
 * changed since: neither its size, mtime and inode nor (where the record
 * holds one) the digest `meta` of the metadata it is to get now.
 */
export function alreadyDone(state: TreeJournalState, entry: TreeEntry, meta?: string): boolean {
  const r = state.done.get(entry.path);
  if (r === undefined || r.size !== entry.size || r.mtimeMs !== entry.mtimeMs || r.ino !== entry.ino) return false;
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
 * keeps them. No I/O: made from what the walk already reported. One xxh3 of
 * one buffer (under a microsecond for an entry without attributes): a sha256
 * hasher per entry cost ~0.5 s of the coordinator's CPU over 20,000 files.
 */
/** metaDigest of metadata without attributes, by its text. */
const plainDigests = new Map<string, string>();

export function metaDigest(m: DigestedMeta): string {
  const field = (k: string, v: string | number | undefined) => (v === undefined ? `${k}\0-\n` : `${k}\0${v}\n`);
  const text = field('mode', m.mode) + field('uid', m.uid) + field('gid', m.gid) + field('user', m.user) + field('group', m.group);
  const names = Object.keys(m.xattrs ?? {});
  if (names.length === 0) {
    // Most entries of a tree share a handful of modes and owners.
    let digest = plainDigests.get(text);
    if (digest === undefined) {
      if (plainDigests.size >= 4096) plainDigests.clear();
      digest = hashBytes('xxh3', Buffer.from(text, 'utf8'));
      plainDigests.set(text, digest);
    }
    return digest;
  }
  const parts: Uint8Array[] = [Buffer.from(text, 'utf8')];
  for (const name of names.sort()) {
    const value = m.xattrs![name]!;
    parts.push(Buffer.from(`x\0${Buffer.byteLength(name)}:${name}\0${value.length}:`, 'utf8'), value);
  }
  return hashBytes('xxh3', Buffer.concat(parts));
}
