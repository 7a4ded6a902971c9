/**
 * The plan stage of a tree copy, per entry the walk reports: whether it may
 * be made (its directory walked before it, and made), whether it goes at all
 * (the journal holds it unchanged: resumed; a sync's destination holds it
 * the same: unchanged), and how: directories in BATCHes before what lands
 * in them, small files and symlinks in batches, big files as jobs of their
 * own after the batches, hard links at the end. Core's TreePlanner cuts the
 * steps; TreePlan decides each one and hands what goes to the send stage
 * (`PlanSink`: tree-send.ts's TreeOutbox), and keeps the lists the later
 * stages read (big files, links, directories to finish).
 */
import { posix } from 'node:path';
import { FerryError, copyMode } from '@ferry/core';
import type { TreeEntry, TreeStep } from '@ferry/core';
import type { SyncRecords } from './sync-manifest.js';
import type { TreeContext } from './tree-context.js';
import { alreadyDone, metaDigest, recordOf } from './tree-journal.js';
import type { TreeJournalState, TreeRecord } from './tree-journal.js';
import { pathMeta, wireMeta } from './tree-meta.js';
import { attributesAlone, linkSame, sameContent, sameOwner, syncAction } from './tree-sync.js';
import type { Comparison, DestEntry, SyncState } from './tree-sync.js';

/** Files this big are copied as jobs of their own, striped over every agent and stream. */
export const HUGE_FILE_BYTES = 256 * 1024 * 1024;
/** Directories made in one BATCH, at most, before a batch that needs them goes out. */
const DIRS_PER_BATCH = 1024;
/** The owner's fields of pathMeta, which a sync compares itself (dirSettled). */
const OWNER_FIELDS = new Set(['uid', 'gid', 'user', 'group']);

/** Where the plan's decisions go: the send stage. */
export interface PlanSink {
  /** Entries to write (small files, symlinks, a mid-sized file alone). */
  send(entries: TreeEntry[]): Promise<void>;
  /** Makes the directories waiting in `pendingDirs`. */
  makeDirs(): Promise<void>;
}

/** The tree path of the directory `treePath` is in ('' for the root's entries). */
export function parentOf(treePath: string): string {
  const dir = posix.dirname(treePath);
  return dir === '.' ? '' : dir;
}

/** A tree's plan as the walk feeds it: what each entry becomes, and the lists the later stages read. */
export class TreePlan {
  /** `ferry sync`: the destination's index and how to compare, once read (before the first entry is planned). */
  sync: SyncState | undefined;
  /** Sync: files with several names this run sent again (their further names are made again too). */
  private readonly resentLinked = new Set<string>();
  /** Source files with several names (their first names), and in a sync what stood at each further name at the destination (hard links are few). */
  private readonly linkFirsts = new Map<string, TreeEntry>();
  private readonly linkDests = new Map<string, DestEntry | undefined>();
  /** Copy: first names of files with several names that an earlier run made durable and this run did not send (`resumed`). */
  private readonly resumedFirsts = new Set<string>();
  /** Copy: further names found still right at the destination (linkResumed), not made again. */
  resumedLinks = 0;
  /** Directories of the tree: their modes and times are set at the end. */
  private readonly dirs = new Map<string, TreeEntry>();
  /** Directories to make before the next batch goes out (takePendingDirs). */
  private pendingDirs: TreeEntry[] = [];
  /** Hard links, made once every file is in place (linksToMake). */
  private readonly links: TreeEntry[] = [];
  /** Big files, each copied as a job of its own after the batches (tree-huge.ts). */
  readonly huge: TreeEntry[] = [];
  /** Big files whose bytes an earlier run copied and whose mode or owner alone changed since: set again, not sent. */
  readonly hugeMeta: TreeEntry[] = [];
  /** Sync: files the same as their source but for their extended attributes: those are set again (an exact set), no bytes sent. */
  readonly attributesToSet: TreeEntry[] = [];
  /** Sync: directories already as the copy would leave them (dirSettled); their SETSTAT is skipped unless touched. */
  private readonly settledDirs = new Set<string>();
  /** Directories in which something was made, replaced or removed this run. */
  private readonly touched = new Set<string>();
  /** skipped.ndjson's lines. */
  readonly skips: string[] = [];
  /** Directories the walk reported (each entry's directory must be one, reported before it). */
  private readonly walkedDirs = new Set<string>();
  /** Directories that could not be made: nothing under them is made (whatever stands at their name is not ours). */
  private readonly failedDirs = new Set<string>();

  constructor(
    private readonly ctx: TreeContext,
    private readonly state: TreeJournalState,
    private readonly records: SyncRecords,
    private readonly sink: PlanSink,
  ) {}

  /**
   * Whether `entry` may be made: its directory was reported before it (a
   * walk that broke that rule, or named a path outside the tree, is not
   * followed: it ends the copy), and no directory above it failed.
   */
  admit(entry: TreeEntry): boolean {
    if (entry.path === '') {
      if (entry.kind === 'dir') this.walkedDirs.add('');
      return true;
    }
    const parent = parentOf(entry.path);
    if (!this.walkedDirs.has(parent)) throw new FerryError('PROTOCOL', `the walk of ${this.ctx.target.sourceLabel} reported ${entry.path} before its directory: not copied`, { path: entry.path });
    if (entry.kind === 'dir') this.walkedDirs.add(entry.path);
    return !this.underFailedDir(entry.path, () => {
      if (entry.kind === 'dir') this.failedDirs.add(entry.path);
    });
  }

  /**
   * Whether the directory of `treePath` could not be made: the entry then
   * fails (nothing is made through whatever stands there), after `before`.
   */
  underFailedDir(treePath: string, before?: () => void): boolean {
    const parent = parentOf(treePath);
    if (!this.failedDirs.has(parent)) return false;
    before?.();
    this.ctx.fail(treePath, { code: 'DEST_CONFLICT', message: `${this.ctx.destPath(treePath)} was not made: its directory ${this.ctx.destPath(parent)} could not be`, path: treePath });
    return true;
  }

  /** Stage 3's decision for each step of core's planner, in order. */
  async publish(step: TreeStep): Promise<void> {
    if (this.sync) return this.publishSync(step, this.sync);
    switch (step.type) {
      case 'mkdir':
        return this.addDir(step.entry);
      case 'skip':
        return this.skip(step.entry, step.reason);
      case 'hardlink':
        this.links.push(step.entry);
        return;
      case 'file':
        if (step.entry.nlink > 1) this.linkFirsts.set(step.entry.path, step.entry);
        if (this.resumed(step.entry)) return;
        if (this.isHuge(step.entry)) {
          (this.metaAlone(step.entry) ? this.hugeMeta : this.huge).push(step.entry);
          return;
        }
        return this.sink.send([step.entry]);
      case 'batch':
        for (const { entry } of step.entries) if (entry.nlink > 1) this.linkFirsts.set(entry.path, entry);
        return this.sink.send(step.entries.map((n) => n.entry).filter((e) => !this.resumed(e)));
    }
  }

  /**
   * A sync's plan step: each entry compared with what stands at its path at
   * the destination; only what differs goes (as a copy's would).
   */
  private async publishSync(step: TreeStep, sync: SyncState): Promise<void> {
    switch (step.type) {
      case 'mkdir': {
        const dest = sync.index.take(step.entry.path);
        // One already there will do (its mode and times are set at the end, as for any
        // directory, unless they are right already and nothing in it changes).
        if (dest?.kind === 'dir') {
          this.dirs.set(step.entry.path, step.entry);
          if (this.dirSettled(step.entry, dest, sync.comparison)) this.settledDirs.add(step.entry.path);
          return;
        }
        return this.addDir(step.entry);
      }
      case 'skip':
        sync.index.take(step.entry.path);
        return this.skip(step.entry, step.reason);
      case 'hardlink':
        this.linkDests.set(step.entry.path, sync.index.take(step.entry.path));
        this.links.push(step.entry);
        return;
      case 'file': {
        const [entry] = await this.changed([step.entry], sync);
        if (!entry) return;
        if (this.isHuge(entry)) {
          this.touch(entry.path);
          this.huge.push(entry);
          return;
        }
        return this.sink.send([entry]);
      }
      case 'batch':
        return this.sink.send(await this.changed(step.entries.map((n) => n.entry), sync));
    }
  }

  private isHuge(entry: TreeEntry): boolean {
    return entry.size >= (this.ctx.options.stripeFilesOver ?? HUGE_FILE_BYTES);
  }

  /** A directory to make: it waits for the next batch (or the next DIRS_PER_BATCH). */
  private async addDir(entry: TreeEntry): Promise<void> {
    this.dirs.set(entry.path, entry);
    this.pendingDirs.push(entry);
    if (this.pendingDirs.length >= DIRS_PER_BATCH) await this.sink.makeDirs();
  }

  private skip(entry: TreeEntry, reason: string): void {
    this.ctx.counters.skipped++;
    this.skips.push(JSON.stringify({ path: entry.path, reason }));
  }

  /** The directories to make now (the send stage makes them, in one BATCH). */
  takePendingDirs(): TreeEntry[] {
    const dirs = this.pendingDirs;
    this.pendingDirs = [];
    return dirs;
  }

  /** A directory that could not be made: nothing goes under it, and its mode and times are not set. */
  dirNotMade(treePath: string): void {
    this.dirs.delete(treePath);
    this.failedDirs.add(treePath);
  }

  /**
   * The entries of `entries` that differ from the destination (counting the
   * others as unchanged); one where something of another kind stands fails
   * (nothing is deleted to make room but by --delete's own rules: never).
   */
  private async changed(entries: readonly TreeEntry[], sync: SyncState): Promise<TreeEntry[]> {
    const out: TreeEntry[] = [];
    const toHash: TreeEntry[] = [];
    const dests = new Map<string, DestEntry | undefined>();
    for (const e of entries) {
      const dest = sync.index.take(e.path);
      if (e.nlink > 1) this.linkFirsts.set(e.path, e);
      const { action, reason } = syncAction(e, dest, sync.comparison);
      if (action === 'same') {
        if (sync.comparison.level === 'checksum' && e.kind === 'file') {
          toHash.push(e);
          dests.set(e.path, dest);
        } else {
          this.sameButAttributes(e, dest, sync.comparison);
          this.records.keep(e);
        }
        continue;
      }
      if (dest?.kind === 'dir') {
        this.ctx.fail(e.path, { code: 'DEST_CONFLICT', message: `${this.ctx.destPath(e.path)} is a directory where the source has a ${e.kind}: not replaced (remove it, then sync again)`, path: e.path });
        continue;
      }
      if (reason !== 'missing' && e.nlink > 1) this.resentLinked.add(e.path);
      out.push(e);
    }
    if (toHash.length > 0) out.push(...(await this.changedContent(toHash, dests, sync)));
    return out;
  }

  /** --compare checksum: of files the same by their metadata, the ones whose bytes differ (hashed on both sides). */
  private async changedContent(toHash: TreeEntry[], dests: ReadonlyMap<string, DestEntry | undefined>, sync: SyncState): Promise<TreeEntry[]> {
    const out: TreeEntry[] = [];
    const same = await sameContent(toHash, sync.hashSource, sync.hashDest, (p) => this.ctx.sourcePath(p), (p) => this.ctx.destPath(p));
    toHash.forEach((e, i) => {
      const hash = same[i];
      if (hash !== undefined) {
        this.sameButAttributes(e, dests.get(e.path), sync.comparison);
        this.records.record(e, this.records.wholeFile(e, hash));
      } else {
        if (e.nlink > 1) this.resentLinked.add(e.path);
        out.push(e);
      }
    });
    return out;
  }

  /** Sync: an entry found the same is unchanged, or has its attributes alone set again. */
  private sameButAttributes(e: TreeEntry, dest: DestEntry | undefined, c: Comparison): void {
    if (attributesAlone(e, dest, c)) this.attributesToSet.push(e);
    else this.ctx.counters.unchanged++;
  }

  /**
   * Sync: a directory at the destination that already has the mode,
   * modification time and (where the copy keeps them) owner the copy would
   * give it, and the attributes where they are compared (Comparison.xattrs;
   * where they are copied but not compared, it is never settled: they are
   * set at every run). One whose attributes alone differ counts among the
   * `attributes` set again.
   */
  private dirSettled(entry: TreeEntry, dest: DestEntry, c: Comparison): boolean {
    const { meta, options, counters } = this.ctx;
    if (!c.xattrs && Object.keys(pathMeta(meta, entry)).some((k) => !OWNER_FIELDS.has(k))) return false;
    if ((dest.mode & 0o7777) !== copyMode(entry.mode, this.ctx.umask, options.preserve)) return false;
    if (meta.owners && !sameOwner(entry, dest, meta.names)) return false;
    // The destination's time is the source's in whole milliseconds, as this run would set it; read back as a float it may
    // come a hair under (1796667587773.999), so it is rounded.
    if (options.preserve && Math.round(dest.mtimeMs) !== Math.floor(entry.mtimeMs)) return false;
    if (!attributesAlone(entry, dest, c)) return true;
    counters.attributes++;
    this.ctx.emit({ type: 'log', message: `${this.ctx.destPath(entry.path)}: its extended attributes differ from the source's: set again with its mode and times` });
    return false;
  }

  /** Something at `path` is made, replaced or removed at the destination: its directory's time changes. */
  touch(path: string): void {
    this.touched.add(parentOf(path));
  }

  /** The directories whose mode and times are set at the end: in a sync, not the settled ones nothing touched. */
  dirsToFinish(): ReadonlyMap<string, TreeEntry> {
    if (this.settledDirs.size === 0) return this.dirs;
    return new Map([...this.dirs].filter(([p]) => !this.settledDirs.has(p) || this.touched.has(p)));
  }

  /**
   * The hard links to make: not one whose directory could not be made (a
   * link or a file in its place, found after the walk admitted the entry:
   * nothing is made through it), nor, in a sync, one already right there.
   */
  linksToMake(): TreeEntry[] {
    return this.links.filter((l) => {
      if (this.underFailedDir(l.path)) return false;
      if (this.sync ? this.linkUnchanged(l, this.sync) : this.linkResumed(l)) return false;
      this.touch(l.path);
      return true;
    });
  }

  /**
   * Copy: a further name an earlier run made at the destination (its
   * journal record, `k`) for the very file its first name still is (same
   * inode, mtime and size), where this run did not send that first name
   * again: the link there is still right. Which name of a file comes first
   * depends on the walk's order, so each name of it is journaled, and a
   * rerun finds the file resumed under whichever name is first this time.
   */
  private linkResumed(link: TreeEntry): boolean {
    const first = this.linkFirsts.get(link.target!);
    if (!first || !this.resumedFirsts.has(first.path)) return false;
    const r = this.state.done.get(link.path);
    if (r === undefined || r.ino !== link.ino || r.mtimeMs !== link.mtimeMs || r.size !== first.size) return false;
    this.resumedLinks++;
    return true;
  }

  /** Sync: a further name that is already the same file as its first name there, and that file was not sent again. */
  private linkUnchanged(link: TreeEntry, sync: SyncState): boolean {
    if (this.resentLinked.has(link.target!) || !linkSame(link, this.linkDests.get(link.path), this.linkFirsts.get(link.target!), sync.index, sync.comparison)) return false;
    this.ctx.counters.unchanged++;
    return true;
  }

  /** The journal's records of further names made: their first name's size, mtime, inode and metadata digest, and `k`, the first name. */
  linkRecords(links: readonly TreeEntry[]): TreeRecord[] {
    const records: TreeRecord[] = [];
    for (const l of links) {
      const first = this.linkFirsts.get(l.target!);
      if (first) records.push({ ...recordOf(first, { meta: this.digestOf(first) }), p: l.path, k: first.path });
    }
    return records;
  }

  /** Counts an entry an earlier run made durable; true when it need not be sent. */
  private resumed(entry: TreeEntry): boolean {
    // The digest only for an entry the journal holds: a first run makes none here.
    if (!this.state.done.has(entry.path) || !alreadyDone(this.state, entry, this.digestOf(entry))) return false;
    if (entry.nlink > 1) this.resumedFirsts.add(entry.path);
    this.ctx.counters.resumedFiles++;
    this.ctx.counters.resumedBytes += entry.size;
    return true;
  }

  /**
   * The digest of what `entry` is given besides its bytes under this run's
   * options (the journal's `a`): its mode as this run sets it (not for a
   * symbolic link, which has none), its owner and attributes where the copy
   * keeps them. A rerun whose digest differs sends the entry again.
   */
  digestOf(entry: TreeEntry): string {
    return metaDigest({ ...(entry.kind === 'symlink' ? {} : { mode: copyMode(entry.mode, this.ctx.umask, this.ctx.options.preserve) }), ...wireMeta(this.ctx.meta, entry) });
  }

  /**
   * Whether a big file's bytes are at the destination already, only its
   * mode, owner or attributes changed since (the journal's digest): it is
   * then not copied again, they are set by path. With --xattrs or --acls
   * only where the destination takes an exact set (`MetaPlan.exact`: the
   * attributes removed at the source are removed there); elsewhere setting
   * by path would only add, so the file goes again whole. Not for an older
   * journal's record (no digest: alreadyDone trusted it).
   */
  private metaAlone(entry: TreeEntry): boolean {
    const { meta } = this.ctx;
    const r = this.state.done.get(entry.path);
    const same = r !== undefined && r.job !== undefined && r.a !== undefined && r.size === entry.size && r.mtimeMs === entry.mtimeMs && r.ino === entry.ino;
    if (same && meta.xattrs && !meta.exact) {
      this.ctx.emit({ type: 'log', message: `${entry.path}: its metadata alone changed, but the helper on ${this.ctx.target.conn.label} cannot remove extended attributes: sent again whole` });
    }
    return same && (!meta.xattrs || meta.exact !== undefined);
  }
}
