/**
 * Tree planning (issue 31): a stream of tree entries in, a stream of work out.
 *
 * A project tree is mostly small files by count and a few huge files by bytes.
 * Each kind of file gets the work item that suits it:
 *
 * - a **big file** (at least `smallFileBytes`) is cut into ranges, as a single
 *   file is today, so a 1 TB file spreads over every agent and never forms a
 *   tail;
 * - **small files** (and empty files and symlinks, which have no bytes to
 *   move) travel many to a **batch**, one item that one stream moves in one
 *   go, so nobody pays a round trip per file;
 * - a further **hard link** to a file is made once that file is in place: its
 *   step comes out at once, and the coordinator keeps it for the end;
 * - a **directory** is made before any item that lands in it is handed out,
 *   and its mode and times are set after its contents (they change its mtime).
 *
 * The planner is streaming: it holds only the batch being filled, so a tree of
 * ten million entries never sits whole in memory. Entries must come parents
 * first (the walker emits a directory before its contents).
 *
 * ```ts
 * const planner = new TreePlanner(resolveTreeThresholds({}));
 * for await (const entry of walk(root)) for (const step of planner.add(entry)) publish(step);
 * for (const step of planner.finish()) publish(step);
 * ```
 */
import { MiB } from './units.js';
import { chooseRangeBytes, planRanges, rangeAt } from './ranges.js';
import type { ByteRange } from './ranges.js';

/** What an entry of a tree is. */
export type TreeEntryKind =
  /** A regular file, moved by content. */
  | 'file'
  /** A directory: made first, its mode and times set last. */
  | 'dir'
  /** A symbolic link, copied as a link (its target is not followed). */
  | 'symlink'
  /** A further name of a file already listed (same device and inode): made as a hard link to `target`. */
  | 'hardlink'
  /** A fifo, socket or device: listed as skipped unless the copy runs as root. */
  | 'special';

/** One entry of a tree, as the walker found it (lstat: links are not followed). */
export interface TreeEntry {
  /** Path under the tree's root, `/`-separated, without a leading `/`; `''` is the root itself. */
  readonly path: string;
  readonly kind: TreeEntryKind;
  /** Bytes of content (files); 0 for every other kind. */
  readonly size: number;
  /** Permission bits (`mode & 0o7777`). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtimeMs: number;
  readonly atimeMs: number;
  /** Device and inode: hard links are told by them, and a resume sends a file again whose inode changed. */
  readonly dev: number;
  readonly ino: number;
  readonly nlink: number;
  /** A symlink's target as stored; a hard link's first name (a tree path). */
  readonly target?: string;
  /** Bytes the file occupies on disk, when fewer than `size`: it is sparse. */
  readonly allocated?: number;
  /** Owner and group names (walks asked for them; none where the id has no name). */
  readonly user?: string;
  readonly group?: string;
  /** Extended attributes the walk was asked for (tree-meta.ts's xattrWanted), files and directories. */
  readonly xattrs?: Record<string, Uint8Array>;
  /** A small file's content hash, from a remote walk asked for them (WalkBody's `hash`). */
  readonly hash?: string;
}

/** An entry a walk could not report, and why (an unreadable directory, a name that is not UTF-8). */
export interface WalkError {
  /** Tree path (`/`-separated, `''` the root) of the entry or directory. */
  readonly path: string;
  readonly error: { readonly code: string; readonly message: string };
}

/** What a walk yields: serve's walkTree locally, `RemoteConnection.walk` remotely. */
export type WalkItem = { readonly entry: TreeEntry } | WalkError;

/** How the planner sorts files and fills batches; every field in bytes or counts. */
export interface TreeThresholds {
  /** Files smaller than this travel in batches; the others are cut into ranges. */
  readonly smallFileBytes: number;
  /** A batch closes once its files hold this many bytes. */
  readonly batchBytes: number;
  /** ... or once it holds this many entries. */
  readonly batchEntries: number;
  /** Range size for big files; undefined: chosen per file (chooseRangeBytes). */
  readonly rangeBytes?: number;
}

/** Files under 4 MiB are batched: below that, a round trip per file costs more than its bytes on a WAN stream. */
export const DEFAULT_SMALL_FILE_BYTES = 4 * MiB;
/** A batch holds up to 64 MiB: a stream's fill of a few seconds, and what a failed batch sends again. */
export const DEFAULT_BATCH_BYTES = 64 * MiB;
/** ... and up to 4,096 entries, so a batch's list stays a few hundred KiB on the bus. */
export const DEFAULT_BATCH_ENTRIES = 4096;

/** Fills in the defaults; a small-file limit above the batch size would make batches of one file, so it is capped. */
export function resolveTreeThresholds(given: Partial<TreeThresholds>): TreeThresholds {
  const batchBytes = given.batchBytes ?? DEFAULT_BATCH_BYTES;
  const batchEntries = given.batchEntries ?? DEFAULT_BATCH_ENTRIES;
  const smallFileBytes = Math.min(given.smallFileBytes ?? DEFAULT_SMALL_FILE_BYTES, batchBytes);
  for (const [name, v] of [['batch size', batchBytes], ['batch entry count', batchEntries], ['small-file size', smallFileBytes]] as const) {
    if (!Number.isSafeInteger(v) || v < (name === 'small-file size' ? 0 : 1)) throw new RangeError(`${name} must be a ${name === 'small-file size' ? 'non-negative' : 'positive'} integer, got ${v}`);
  }
  return { smallFileBytes, batchBytes, batchEntries, ...(given.rangeBytes === undefined ? {} : { rangeBytes: given.rangeBytes }) };
}

/** An entry with the number the planner gave it (its order in the walk). */
export interface NumberedEntry {
  readonly id: number;
  readonly entry: TreeEntry;
}

/** What the planner hands out, in the order it must happen. */
export type TreeStep =
  /** Make this directory now (the coordinator does it before publishing what follows). */
  | { readonly type: 'mkdir'; readonly id: number; readonly entry: TreeEntry }
  /** Small files, links and empty files, moved as one work item. */
  | { readonly type: 'batch'; readonly entries: readonly NumberedEntry[]; readonly bytes: number }
  /** A further name of an earlier file: linked once every file's content is in place. */
  | { readonly type: 'hardlink'; readonly id: number; readonly entry: TreeEntry }
  /** Ranges of one big file, each its own work item. */
  | { readonly type: 'file'; readonly id: number; readonly entry: TreeEntry; readonly rangeBytes: number; readonly ranges: number }
  /** Not copied (fifos, sockets, devices): listed in skipped.ndjson. */
  | { readonly type: 'skip'; readonly id: number; readonly entry: TreeEntry; readonly reason: string };

/** Streaming planner: `add` each entry in walk order, then `finish`. */
export class TreePlanner {
  private nextId = 0;
  private batch: NumberedEntry[] = [];
  private batchBytes = 0;
  private readonly asRoot: boolean;

  constructor(
    private readonly thresholds: TreeThresholds,
    options: { asRoot?: boolean } = {},
  ) {
    this.asRoot = options.asRoot === true;
  }

  /** The steps this entry makes ready (possibly none: it joined the open batch). */
  add(entry: TreeEntry): TreeStep[] {
    const id = this.nextId++;
    switch (entry.kind) {
      case 'dir':
        // A directory goes out at once: batches filled later may hold its files, and it
        // must exist before any of them is written. The open batch need not close for it.
        return [{ type: 'mkdir', id, entry }];
      case 'special':
        // Only root can make one, and the helpers do not make them yet.
        if (!this.asRoot) return [{ type: 'skip', id, entry, reason: 'special file (fifo, socket or device): not copied' }];
        return this.toBatch({ id, entry }, 0);
      case 'file':
        if (entry.size >= this.thresholds.smallFileBytes && entry.size > 0) {
          const rangeBytes = this.thresholds.rangeBytes ?? chooseRangeBytes(entry.size);
          return [{ type: 'file', id, entry, rangeBytes, ranges: planRanges(entry.size, rangeBytes).count }];
        }
        return this.toBatch({ id, entry }, entry.size);
      case 'symlink':
        return this.toBatch({ id, entry }, 0);
      case 'hardlink':
        // Its first name may be a big file still in flight, or in a batch not yet written.
        return [{ type: 'hardlink', id, entry }];
    }
  }

  /** The last, partly filled batch. */
  finish(): TreeStep[] {
    return this.batch.length > 0 ? [this.close()] : [];
  }

  private toBatch(e: NumberedEntry, bytes: number): TreeStep[] {
    // A file that would overflow the open batch starts the next one.
    const out: TreeStep[] = [];
    if (this.batch.length > 0 && this.batchBytes + bytes > this.thresholds.batchBytes) out.push(this.close());
    this.batch.push(e);
    this.batchBytes += bytes;
    if (this.batch.length >= this.thresholds.batchEntries || this.batchBytes >= this.thresholds.batchBytes) out.push(this.close());
    return out;
  }

  private close(): TreeStep {
    const step: TreeStep = { type: 'batch', entries: this.batch, bytes: this.batchBytes };
    this.batch = [];
    this.batchBytes = 0;
    return step;
  }
}

/** The byte ranges of a big file's step. */
export function fileStepRanges(step: Extract<TreeStep, { type: 'file' }>): ByteRange[] {
  const plan = planRanges(step.entry.size, step.rangeBytes);
  const out: ByteRange[] = [];
  for (let i = 0; i < plan.count; i++) out.push(rangeAt(plan, i));
  return out;
}

/**
 * Directories are finished deepest first: setting a directory's mtime before a
 * child directory's contents are done would be undone by them. Returns the
 * order for a list of directory paths (tree paths, `''` the root).
 */
export function finishOrder(dirs: readonly string[]): string[] {
  const depth = (p: string) => (p === '' ? 0 : p.split('/').length);
  return [...dirs].sort((a, b) => depth(b) - depth(a) || (a < b ? -1 : a > b ? 1 : 0));
}
