/**
 * `ferry sync` (issue 32): what the destination already holds, and whether
 * each entry of the source must go again. A sync is a tree copy whose
 * "already done" comes from the destination itself, not from the journal of
 * an earlier run: the destination is walked (the remote helper's walk for a
 * push, walkTree here for a pull; the source walk starts meanwhile and waits
 * a little ahead) into a DestIndex, and each entry the source walk reports
 * is then compared with what stands at its path, at the level asked:
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
 * This module also holds the sync's state for a run (syncStateOf) and the
 * dry run (dryRunSync); tree-plan.ts's TreePlan.publishSync uses them.
 */
import { lstat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { copyMode, xattrWanted, xattrsToRemove } from '@ferry/core';
import type { CompareLevel, HashAlgorithm, ResolvedCopyOptions, TreeEntry, TreeEntryKind, WalkItem, XattrScope } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { runsAsRoot, walkTree } from '@ferry/serve';
import type { CopyRequest } from './copy.js';
import type { TreeSummary } from './events.js';
import { LocalHashers } from './local-hash.js';
import { remoteStat } from './prepare.js';
import { remotePathOf, sourcePathOf } from './tree-target.js';
import type { TreeTarget } from './tree-target.js';
import { metaPlanOf } from './tree-meta.js';
import type { MetaPlan } from './tree-meta.js';

/** What stands at a destination path, as its walk found it. */
export interface DestEntry {
  readonly kind: TreeEntryKind;
  readonly size: number;
  readonly mtimeMs: number;
  readonly mode: number;
  readonly target?: string;
  /** `dev:ino` of a file with more than one name (hard links); undefined otherwise or where the walk has no inodes (SFTP). */
  readonly inode?: string;
  /** Owner and group ids, and their names where the walk asked for them (a sync that keeps owners compares them). */
  readonly uid?: number;
  readonly gid?: number;
  readonly user?: string;
  readonly group?: string;
  /** Extended attributes of a file or directory, where the walk was asked for them (a sync that copies them compares them). */
  readonly xattrs?: Record<string, Uint8Array>;
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
        index.entries.set(e.path, { kind: 'file', size: first?.size ?? -1, mtimeMs: first?.mtimeMs ?? -1, mode: e.mode, ...(inode ? { inode } : {}), ...ownerOf(e) });
        continue;
      }
      if (inode) sizes.set(inode, { size: e.size, mtimeMs: e.mtimeMs });
      index.entries.set(e.path, { kind: e.kind, size: e.size, mtimeMs: e.mtimeMs, mode: e.mode, ...(e.target !== undefined ? { target: e.target } : {}), ...(inode ? { inode } : {}), ...ownerOf(e), ...(e.xattrs ? { xattrs: e.xattrs } : {}) });
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

/** A walked entry's owner, as DestEntry keeps it. */
function ownerOf(e: TreeEntry): Pick<DestEntry, 'uid' | 'gid' | 'user' | 'group'> {
  return { uid: e.uid, gid: e.gid, ...(e.user !== undefined ? { user: e.user } : {}), ...(e.group !== undefined ? { group: e.group } : {}) };
}

/**
 * Whether `dest` has the owner and group a copy of `entry` would get there:
 * the same id, or (by names) the same name, which the destination maps to
 * its own id as a copy does (serve's destinationOwner); not compared where
 * the destination's walk gave no ids.
 */
export function sameOwner(entry: TreeEntry, dest: DestEntry, byName: boolean): boolean {
  if (dest.uid === undefined || dest.gid === undefined) return true;
  const user = dest.uid === entry.uid || (byName && entry.user !== undefined && entry.user === dest.user);
  const group = dest.gid === entry.gid || (byName && entry.group !== undefined && entry.group === dest.group);
  return user && group;
}

/** How a sync compares: its level and how the destination's modes are made. */
export interface Comparison {
  level: CompareLevel;
  umask: number;
  preserve: boolean;
  /** Owners are compared (the copy keeps them: root at the destination, --preserve=owner), by name or by id only (--numeric-ids). */
  owners?: 'names' | 'ids';
  /**
   * Extended attributes and ACLs are compared (--xattrs, --acls at the
   * mtime and checksum levels): the kinds copied, and whether the
   * destination side runs as root (which of them it can set).
   */
  xattrs?: XattrScope;
}

/**
 * Whether setting the attributes of the source's entry exactly (SETSTAT's
 * `xattrsExact`, as a copy does) would change anything at the destination:
 * an attribute of the kinds copied that the destination can set and that
 * is missing there or has another value, or one there that the source no
 * longer has (never `security.*`, which an exact set leaves alone).
 * Symbolic links and hard links' further names carry none.
 */
export function xattrsDiffer(entry: TreeEntry, dest: DestEntry, scope: XattrScope): boolean {
  if (entry.kind !== 'file' && entry.kind !== 'dir') return false;
  const source = entry.xattrs ?? {};
  const there = dest.xattrs ?? {};
  for (const [name, value] of Object.entries(source)) {
    if (!xattrWanted(name, scope)) continue;
    const v = there[name];
    if (v === undefined || !Buffer.from(v.buffer, v.byteOffset, v.byteLength).equals(value)) return true;
  }
  return xattrsToRemove(Object.keys(there), source, scope).length > 0;
}

/** A file or directory that is the same as its source but for its attributes (Comparison.xattrs): they alone are set again, no bytes sent. */
export function attributesAlone(entry: TreeEntry, dest: DestEntry | undefined, c: Comparison): boolean {
  return c.xattrs !== undefined && dest !== undefined && dest.kind === entry.kind && xattrsDiffer(entry, dest, c.xattrs);
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
  if (c.level === 'size') return { action: 'same', reason: '' };
  if (c.level === 'checksum') return c.owners && !sameOwner(entry, dest, c.owners === 'names') ? { action: 'update', reason: 'owner' } : { action: 'same', reason: '' };
  if (Math.floor(dest.mtimeMs / 1000) !== Math.floor(entry.mtimeMs / 1000)) return { action: 'update', reason: 'mtime' };
  if (dest.mode !== copyMode(entry.mode, c.umask, c.preserve)) return { action: 'update', reason: 'mode' };
  if (c.owners && !sameOwner(entry, dest, c.owners === 'names')) return { action: 'update', reason: 'owner' };
  return { action: 'same', reason: '' };
}

/** The hashes of whole files on one side (this host's or the remote one's); undefined where a file could not be hashed. */
export type HashFiles = (files: ReadonlyArray<{ path: string; size: number }>) => Promise<Array<string | undefined>>;

/** A local file's hash, read here (one file of `ferry sync`; a tree's files go through localHashFiles). */
export function localFileHash(algorithm: HashAlgorithm, path: string, size: number): Promise<string> {
  const hashers = new LocalHashers(1);
  return hashers.hash(path, 0, size, algorithm).finally(() => hashers.close());
}

/** This host's files hashed on `hashers`' threads (check's LocalHashers: several cores, the event loop free). */
export function localHashFiles(hashers: LocalHashers, algorithm: HashAlgorithm): HashFiles {
  return async (files) => {
    const hashes = await hashers.hashFiles(files, algorithm).catch(() => undefined);
    return files.map((_, i) => (typeof hashes?.[i] === 'string' ? hashes[i] : undefined));
  };
}

/** Files hashed by the remote side in one request, at most (READ_BATCH's bounds are 4,096 files and 1 GiB). */
const HASH_GROUP_FILES = 1024;
const HASH_GROUP_BYTES = 256 * 1024 * 1024;

/**
 * The remote host's files hashed there: many to a request (RemoteConnection's
 * hashFiles: READ_BATCH without their bytes where the helper can), a file
 * bigger than a group by itself (hashRange).
 */
export function remoteHashFiles(conn: Pick<RemoteConnection, 'hashFiles' | 'hashRange'>, algorithm: HashAlgorithm): HashFiles {
  return async (files) => {
    const out = new Array<string | undefined>(files.length).fill(undefined);
    let group: number[] = [];
    let bytes = 0;
    const flush = async () => {
      if (group.length === 0) return;
      const indexes = group;
      group = [];
      bytes = 0;
      const results = await conn.hashFiles(indexes.map((i) => ({ path: files[i]!.path, size: files[i]!.size })), algorithm).catch(() => undefined);
      indexes.forEach((i, k) => {
        const r = results?.[k];
        out[i] = r?.ok ? r.hash : undefined;
      });
    };
    for (let i = 0; i < files.length; i++) {
      const f = files[i]!;
      if (f.size > HASH_GROUP_BYTES) {
        out[i] = await conn.hashRange(f.path, 0, f.size, algorithm).catch(() => undefined);
        continue;
      }
      if (group.length >= HASH_GROUP_FILES || bytes + f.size > HASH_GROUP_BYTES) await flush();
      group.push(i);
      bytes += f.size;
    }
    await flush();
    return out;
  };
}

/**
 * Both sides of each file hashed at once, each where it is; the hash where
 * the contents are the same (a sync's manifest records it), undefined where
 * not (a file either side could not hash: not the same, so it goes again).
 */
export async function sameContent(files: readonly TreeEntry[], source: HashFiles, dest: HashFiles, sourcePath: (p: string) => string, destPath: (p: string) => string): Promise<Array<string | undefined>> {
  const [a, b] = await Promise.all([source(files.map((e) => ({ path: sourcePath(e.path), size: e.size }))), dest(files.map((e) => ({ path: destPath(e.path), size: e.size })))]);
  return files.map((_, i) => (a[i] !== undefined && a[i] === b[i] ? a[i] : undefined));
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
  /** Why an update: size, mtime, mode, owner, target, content, xattrs (the attributes alone), or what kind of entry stands there. */
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
  contents: { source: HashFiles; dest: HashFiles; sourcePath: (p: string) => string; destPath: (p: string) => string },
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
  /** What stood at the path of each file of toHash (its attributes are compared once its content is found the same). */
  const dests = new Map<string, DestEntry | undefined>();
  const hashNow = async () => {
    const files = toHash;
    toHash = [];
    const same = await sameContent(files, contents.source, contents.dest, contents.sourcePath, contents.destPath);
    files.forEach((e, i) => {
      if (same[i] === undefined) {
        resent.add(e.path);
        report({ action: 'update', path: e.path, kind: e.kind, reason: 'content' });
      } else if (attributesAlone(e, dests.get(e.path), c)) report({ action: 'update', path: e.path, kind: e.kind, reason: 'xattrs' });
      else counts.unchanged++;
    });
    dests.clear();
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
        dests.set(e.path, dest);
        if (toHash.length >= 256) await hashNow();
      } else if (attributesAlone(e, dest, c)) report({ action: 'update', path: e.path, kind: e.kind, reason: 'xattrs' });
      else counts.unchanged++;
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

/** `ferry sync`: what the destination holds, how entries are compared with it, and how each side's files are hashed (--compare checksum). */
export interface SyncState {
  index: DestIndex;
  comparison: Comparison;
  hashSource: HashFiles;
  hashDest: HashFiles;
  /** Ends the hashing threads. */
  close(): void;
}

/**
 * The destination as it is now (empty when it does not exist yet): a sync
 * compares the source with it. Its walk reads owner names and attributes
 * where they are compared, as the source walk reads them.
 */
async function destinationIndex(target: TreeTarget, conn: RemoteConnection, meta: MetaPlan, xattrs: boolean): Promise<DestIndex> {
  if (target.direction === 'pull') {
    const isDir = await lstat(target.targetRoot).then((s) => s.isDirectory(), () => false);
    const wanted = { names: meta.names, ...(xattrs && meta.local?.xattrs ? { xattrs: meta.local.xattrs } : {}) };
    return isDir ? DestIndex.read(walkTree(target.targetRoot, wanted.names || wanted.xattrs ? { meta: wanted } : {})) : new DestIndex();
  }
  const st = await remoteStat(conn, target.targetRoot);
  const { names, xattrs: x, acls } = meta.walk;
  return st?.type === 'directory' ? DestIndex.read(conn.walk(target.targetRoot, { ...(names ? { names } : {}), ...(xattrs && x ? { xattrs: x } : {}), ...(xattrs && acls ? { acls } : {}) })) : new DestIndex();
}

/**
 * Which attributes a sync compares: those the run copies (--xattrs,
 * --acls), at the mtime and checksum levels, where the destination takes an
 * exact set (MetaPlan.exact: elsewhere an attribute removed at the source
 * could not be removed there, and the entry would differ at every run).
 */
function xattrScopeOf(options: ResolvedCopyOptions, target: TreeTarget, conn: RemoteConnection, meta: MetaPlan): XattrScope | undefined {
  if (!meta.exact || (options.sync !== 'mtime' && options.sync !== 'checksum')) return undefined;
  return { ...meta.exact, root: target.direction === 'pull' ? runsAsRoot() : conn.metadata.euid === 0 };
}

/** What a sync compares with, and how: the destination walked first, files hashed on their own side at --compare checksum. */
export async function syncStateOf(target: TreeTarget, conn: RemoteConnection, options: ResolvedCopyOptions, algorithm: HashAlgorithm, umask: number, meta: MetaPlan, emit: NonNullable<CopyRequest['onEvent']>): Promise<SyncState> {
  const started = Date.now();
  const xattrs = xattrScopeOf(options, target, conn, meta);
  const index = await destinationIndex(target, conn, meta, xattrs !== undefined);
  emit({ type: 'log', message: `the destination holds ${index.size} entries (walked in ${((Date.now() - started) / 1000).toFixed(1)} s)` });
  // Threads only when a file is hashed here (--compare checksum); idle ones do not hold the process.
  const hashers = new LocalHashers(Math.min(8, availableParallelism()));
  const local = localHashFiles(hashers, algorithm);
  const remote = remoteHashFiles(conn, algorithm);
  return {
    index,
    comparison: { level: options.sync!, umask, preserve: options.preserve, ...(meta.owners ? { owners: meta.names ? 'names' : 'ids' } : {}), ...(xattrs ? { xattrs } : {}) },
    hashSource: target.direction === 'push' ? local : remote,
    hashDest: target.direction === 'push' ? remote : local,
    close: () => hashers.close(),
  };
}

/** `ferry sync --dry-run`: every create, update and delete a sync would make, reported as `sync.change` events; nothing changed, no job state written. */
export async function dryRunSync(target: TreeTarget, conn: RemoteConnection, options: ResolvedCopyOptions, algorithm: HashAlgorithm, emit: NonNullable<CopyRequest['onEvent']>, started: number): Promise<TreeSummary> {
  const umask = target.direction === 'pull' ? process.umask() : await conn.umask(target.targetRoot);
  const meta = metaPlanOf(options, target.direction, conn);
  const sync = await syncStateOf(target, conn, options, algorithm, umask, meta, emit);
  try {
    // The source walked as the sync itself walks it: owner names where they are compared.
    const walk = target.direction === 'pull' ? conn.walk(target.sourceRoot, meta.walk) : walkTree(target.sourceRoot, meta.local ? { meta: meta.local } : {});
    const plan = await planSync(
      walk,
      sync.index,
      sync.comparison,
      { source: sync.hashSource, dest: sync.hashDest, sourcePath: (p) => sourcePathOf(target, p), destPath: (p) => remotePathOf(target, p) },
      options.deleteExtraneous,
      (change) => emit({ type: 'sync.change', ...change }),
    );
    const seconds = (Date.now() - started) / 1000;
    const summary: TreeSummary = {
      jobId: target.jobId,
      source: target.sourceLabel,
      destination: target.destinationLabel,
      files: 0, bytes: 0, resumedFiles: 0, resumedBytes: 0, dirs: 0, symlinks: 0, hardlinks: 0, failed: 0, skipped: 0, unchanged: plan.unchanged, deleted: 0, attributes: 0,
      seconds,
      mbps: 0,
      filesPerSec: 0,
      mode: conn.mode,
      streams: 0,
      hash: algorithm,
      stateDir: '',
      plan,
    };
    emit({ type: 'tree.done', ...summary });
    return summary;
  } finally {
    sync.close();
  }
}
