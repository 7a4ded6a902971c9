/**
 * `ferry sync` (issue 32): what the destination already holds, and whether
 * each entry of the source must go again. A sync is a tree copy whose
 * "already done" comes from the destination itself, not from the journal of
 * an earlier run: the destination is walked first (the remote helper's walk
 * for a push, walkTree here for a pull) into a DestIndex, and each entry the
 * source walk reports is compared with what stands at its path, at the level
 * asked:
 *
 * - `exists`: an entry of the same kind is there;
 * - `size`: and a file has the same size;
 * - `mtime` (the default, as rsync): and the same modification time, to the
 *   second, and the same mode;
 * - `checksum`: a file of the same size has the same content (both sides
 *   hashed), whatever its time.
 *
 * A symbolic link is the same when it points at the same target; a
 * directory when one is there (its mode and times are set at the end of
 * every run, as for a copy). What the source walk never reports stays in the
 * index: with `--delete`, those entries are removed once everything else
 * succeeded (deepest first), never after a run with a failure.
 *
 * The index holds one small object per destination entry: a tree of
 * millions of entries costs what rsync's file list costs (~150 bytes each).
 */
import { open } from 'node:fs/promises';
import { copyMode, createHasher } from '@ferry/core';
import type { CompareLevel, HashAlgorithm, TreeEntry, TreeEntryKind, WalkItem } from '@ferry/core';

/** What stands at a destination path, as its walk found it. */
export interface DestEntry {
  readonly kind: TreeEntryKind;
  readonly size: number;
  readonly mtimeMs: number;
  readonly mode: number;
  readonly target?: string;
  /** `dev:ino` of a file with more than one name (hard links); undefined otherwise or where the walk has no inodes (SFTP). */
  readonly inode?: string;
}

/** What a sync does with one entry. */
export type SyncAction = 'same' | 'create' | 'update';

/** The destination as its walk found it, by tree path. */
export class DestIndex {
  private readonly entries = new Map<string, DestEntry>();
  /** Inode of every destination name with several links, kept after `take` (hard links are compared at the end). */
  private readonly linked = new Map<string, string>();
  /** Paths the walk could not read (an unreadable directory): what is under them is unknown. */
  readonly unreadable: string[] = [];
  /** Whether the destination's root exists. */
  exists = false;

  get size(): number {
    return this.entries.size;
  }

  /** Reads a walk of the destination; a destination that does not exist is an empty index. */
  static async read(walk: AsyncIterable<WalkItem>): Promise<DestIndex> {
    const index = new DestIndex();
    const sizes = new Map<string, { size: number; mtimeMs: number }>();
    for await (const item of walk) {
      if ('error' in item) {
        if (item.path === '' && (item.error.code === 'ENOENT' || item.error.code === 'SOURCE_NOT_FOUND')) return index;
        index.unreadable.push(item.path);
        continue;
      }
      const e = item.entry;
      if (e.path === '') index.exists = true;
      const several = (e.kind === 'file' || e.kind === 'hardlink') && e.nlink > 1 && e.ino > 0;
      const inode = several ? `${e.dev}:${e.ino}` : undefined;
      if (inode) index.linked.set(e.path, inode);
      if (e.kind === 'hardlink') {
        // A further name of a file: the file's size and time are its first name's.
        const first = inode ? sizes.get(inode) : undefined;
        index.entries.set(e.path, { kind: 'file', size: first?.size ?? -1, mtimeMs: first?.mtimeMs ?? -1, mode: e.mode, ...(inode ? { inode } : {}) });
        continue;
      }
      if (inode) sizes.set(inode, { size: e.size, mtimeMs: e.mtimeMs });
      index.entries.set(e.path, { kind: e.kind, size: e.size, mtimeMs: e.mtimeMs, mode: e.mode, ...(e.target !== undefined ? { target: e.target } : {}), ...(inode ? { inode } : {}) });
    }
    return index;
  }

  /** What stands at `path`, once: the source reported it, so it is not extraneous. */
  take(path: string): DestEntry | undefined {
    const e = this.entries.get(path);
    if (e) this.entries.delete(path);
    return e;
  }

  /** Whether two destination names are one file (hard links). */
  sameFile(a: string, b: string): boolean {
    const x = this.linked.get(a);
    return x !== undefined && x === this.linked.get(b);
  }

  /** Entries the source did not report (for --delete), children before their directories. */
  extraneous(): Array<{ path: string; kind: TreeEntryKind }> {
    const left = [...this.entries].map(([path, e]) => ({ path, kind: e.kind }));
    const depth = (p: string) => (p === '' ? 0 : p.split('/').length);
    return left.filter((e) => e.path !== '').sort((a, b) => depth(b.path) - depth(a.path) || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** Whether `path` lies under a directory the walk could not read (nothing there is deleted). */
  underUnreadable(path: string): boolean {
    return this.unreadable.some((u) => u === '' || path === u || path.startsWith(u + '/'));
  }
}

/** How a sync compares: its level and how the destination's modes are made. */
export interface Comparison {
  level: CompareLevel;
  umask: number;
  preserve: boolean;
}

/**
 * What must happen to `entry` (a directory, file or symbolic link of the
 * source) given what stands at its path. `checksum` answers 'same' for a
 * file of the same size: the caller then compares contents (sameContent).
 */
export function syncAction(entry: TreeEntry, dest: DestEntry | undefined, c: Comparison): { action: SyncAction; reason: string } {
  if (!dest) return { action: 'create', reason: 'missing' };
  const kind = entry.kind === 'hardlink' ? 'file' : entry.kind;
  if (dest.kind !== kind) return { action: 'update', reason: `a ${dest.kind} is there` };
  if (c.level === 'exists' || kind === 'dir' || kind === 'special') return { action: 'same', reason: '' };
  if (kind === 'symlink') return dest.target === entry.target ? { action: 'same', reason: '' } : { action: 'update', reason: 'target' };
  if (dest.size !== entry.size) return { action: 'update', reason: 'size' };
  if (c.level === 'size' || c.level === 'checksum') return { action: 'same', reason: '' };
  if (Math.floor(dest.mtimeMs / 1000) !== Math.floor(entry.mtimeMs / 1000)) return { action: 'update', reason: 'mtime' };
  if (dest.mode !== copyMode(entry.mode, c.umask, c.preserve)) return { action: 'update', reason: 'mode' };
  return { action: 'same', reason: '' };
}

/** Reads a hash of a whole file on one side: this host's or the remote one's. */
export type HashFile = (path: string, size: number) => Promise<string>;

/** The hash of a local file's bytes, read a few MiB at a time. */
export function localFileHash(algorithm: HashAlgorithm): HashFile {
  return async (path, size) => {
    const fh = await open(path, 'r');
    try {
      const hasher = createHasher(algorithm);
      const buf = Buffer.allocUnsafe(Math.min(Math.max(size, 1), 4 * 1024 * 1024));
      let offset = 0;
      while (offset < size) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - offset), offset);
        if (bytesRead === 0) break;
        hasher.update(buf.subarray(0, bytesRead));
        offset += bytesRead;
      }
      return hasher.digest();
    } finally {
      await fh.close();
    }
  };
}

/** Hashes both sides of each file at once, `parallel` files at a time; true where the contents are the same. */
export async function sameContent(files: readonly TreeEntry[], source: HashFile, dest: HashFile, sourcePath: (p: string) => string, destPath: (p: string) => string, parallel = 8): Promise<boolean[]> {
  const same = new Array<boolean>(files.length).fill(false);
  let next = 0;
  const lane = async () => {
    while (next < files.length) {
      const i = next++;
      const e = files[i]!;
      try {
        const [a, b] = await Promise.all([source(sourcePath(e.path), e.size), dest(destPath(e.path), e.size)]);
        same[i] = a === b;
      } catch {
        // Either side unreadable: the file goes again (and fails there if the source is the trouble).
        same[i] = false;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, files.length) }, lane));
  return same;
}

/**
 * Whether a further name of a file (`link`, a hard link to `first`, the
 * source's entry of its first name) is already right at the destination:
 * the same file as the first name there where the walk has inodes; where
 * it has none (SFTP), a file at its name that compares as the same as the
 * first name would. `dest` is what stood at the link's name.
 */
export function linkSame(link: TreeEntry, dest: DestEntry | undefined, first: TreeEntry | undefined, index: DestIndex, c: Comparison): boolean {
  if (!dest) return false;
  if (dest.inode !== undefined) return index.sameFile(link.path, link.target!);
  return first !== undefined && c.level !== 'checksum' && syncAction({ ...first, path: link.path }, dest, c).action === 'same';
}

/** One line of `ferry sync --dry-run`. */
export interface PlannedChange {
  action: 'create' | 'update' | 'delete';
  path: string;
  kind: TreeEntryKind;
  /** Why an update: size, mtime, mode, target, content, or what kind of entry stands there. */
  reason?: string;
}

export interface SyncPlanCounts {
  create: number;
  update: number;
  delete: number;
  unchanged: number;
  /** Source entries that could not be read: not compared (and --delete would delete nothing). */
  unreadable: number;
}

/**
 * `ferry sync --dry-run`: the source walk compared with the destination's
 * index as a sync would, each change reported to `change`, nothing done.
 * Special files are left out as a copy leaves them out.
 */
export async function planSync(
  walk: AsyncIterable<WalkItem>,
  index: DestIndex,
  c: Comparison,
  contents: { source: HashFile; dest: HashFile; sourcePath: (p: string) => string; destPath: (p: string) => string },
  deleteExtraneous: boolean,
  change: (c: PlannedChange) => void,
): Promise<SyncPlanCounts> {
  const counts: SyncPlanCounts = { create: 0, update: 0, delete: 0, unchanged: 0, unreadable: 0 };
  const report = (p: PlannedChange) => {
    counts[p.action]++;
    change(p);
  };
  const links: Array<{ link: TreeEntry; dest: DestEntry | undefined }> = [];
  /** Source files with several names, by path: their further names are compared with them. */
  const firsts = new Map<string, TreeEntry>();
  const resent = new Set<string>();
  let toHash: TreeEntry[] = [];
  const hashNow = async () => {
    const files = toHash;
    toHash = [];
    const same = await sameContent(files, contents.source, contents.dest, contents.sourcePath, contents.destPath);
    files.forEach((e, i) => {
      if (same[i]) counts.unchanged++;
      else {
        resent.add(e.path);
        report({ action: 'update', path: e.path, kind: e.kind, reason: 'content' });
      }
    });
  };
  for await (const item of walk) {
    if ('error' in item) {
      counts.unreadable++;
      continue;
    }
    const e = item.entry;
    const dest = index.take(e.path);
    if (e.kind === 'special') continue;
    if (e.kind === 'hardlink') {
      links.push({ link: e, dest });
      continue;
    }
    if (e.nlink > 1) firsts.set(e.path, e);
    const { action, reason } = syncAction(e, dest, c);
    if (action === 'same') {
      if (c.level === 'checksum' && e.kind === 'file') {
        toHash.push(e);
        if (toHash.length >= 256) await hashNow();
      } else counts.unchanged++;
      continue;
    }
    resent.add(e.path);
    report(action === 'create' ? { action, path: e.path, kind: e.kind } : { action, path: e.path, kind: e.kind, reason });
  }
  if (toHash.length > 0) await hashNow();
  for (const { link, dest } of links) {
    if (!resent.has(link.target!) && linkSame(link, dest, firsts.get(link.target!), index, c)) counts.unchanged++;
    else report({ action: 'create', path: link.path, kind: 'hardlink', reason: `link to ${link.target}` });
  }
  if (deleteExtraneous && counts.unreadable === 0) {
    for (const e of index.extraneous()) if (!index.underUnreadable(e.path)) report({ action: 'delete', path: e.path, kind: e.kind });
  }
  return counts;
}
