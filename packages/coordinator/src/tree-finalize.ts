/**
 * The last stage of a tree copy, once every file's content is in place: hard
 * links (a further name needs its first name to exist), then each
 * directory's mode and times, deepest first (making or renaming anything in a
 * directory changes its mtime, so a parent is finished after its children).
 */
import { lstat, rmdir, unlink } from 'node:fs/promises';
import { FerryError, copyMode, destinationError, errnoOf, finishOrder, toFerryError } from '@ferry/core';
import type { BatchEntry, ErrorData, TreeEntry } from '@ferry/core';
import type { BatchResult, SetAttrs } from '@ferry/transport';
import { applyEntries, applyPathMeta, setModeTimesAt } from '@ferry/serve';

/** Entries per BATCH of links. */
const LINKS_PER_BATCH = 1024;
/** SETSTATs in flight at once on the coordinator's connection. */
const SETSTATS_IN_FLIGHT = 32;

/**
 * Where a tree lands, for the steps without bytes: the remote host through
 * the coordinator's connection (a push), or this host (a pull), both with
 * the same semantics (serve's batch.ts does the local ones, as the helper
 * does the remote ones).
 */
export interface TreeDestination {
  /** Directories, symbolic links and hard links, as a BATCH without files makes them. */
  apply(entries: BatchEntry[]): Promise<BatchResult[]>;
  /** A directory's owner, attributes, mode and times (a big file's owner, attributes and mode: `file`). */
  setstat(path: string, attrs: SetAttrs, file?: boolean): Promise<void>;
  /** Removes what stands at `path` (`ferry sync --delete`): an empty directory (`dir`), else a file, link or special file, never through a link. */
  remove(path: string, dir: boolean): Promise<void>;
}

/** This host as a tree's destination (a pull). */
export const localDestination: TreeDestination = {
  apply: async (entries) => (await applyEntries(entries)).map((r) => (r.ok ? { ok: true } : { ok: false, error: r.error })),
  // Through the directory itself, opened without following a link at its name.
  setstat: async (path, attrs, file = false) => {
    // Owner and attributes first, never through a link at the name (chown clears set-id bits; an ACL's mask follows the mode).
    const { mode, mtimeMs, atimeMs, xattrsExact, ...meta } = attrs;
    // As the helpers do: a link planted in its place is refused with a message that says so (the calls below would not follow it either).
    if (xattrsExact && (await lstat(path).catch((err: unknown) => { throw destinationError(err, { path }); })).isSymbolicLink()) {
      throw new FerryError('DEST_CONFLICT', `${path} is a symbolic link now: its mode and attributes were not set; move it away and rerun`, { path });
    }
    if (Object.keys(meta).length > 0 || xattrsExact) await applyPathMeta(path, meta, xattrsExact);
    await setModeTimesAt(path, { mode, mtimeMs, atimeMs }, file ? 'file' : 'dir');
  },
  remove: async (path, dir) => {
    try {
      await (dir ? rmdir(path) : unlink(path));
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw destinationError(err, { path });
    }
  },
};

export interface FinalizeContext {
  dest: TreeDestination;
  remotePath: (treePath: string) => string;
  preserve: boolean;
  umask: number;
  failed: (entry: TreeEntry, error: ErrorData) => void;
  done: (entry: TreeEntry) => void;
  /** Owner and attributes a directory is to get (tree-meta.ts's pathMeta). */
  meta: (entry: TreeEntry) => SetAttrs;
}

/** Makes each further name of a file; one whose first name failed fails too. */
export async function makeHardLinks(ctx: FinalizeContext, links: readonly TreeEntry[], firstNameFailed: (treePath: string) => boolean): Promise<void> {
  for (let i = 0; i < links.length; i += LINKS_PER_BATCH) {
    const part: TreeEntry[] = [];
    for (const link of links.slice(i, i + LINKS_PER_BATCH)) {
      if (firstNameFailed(link.target!)) ctx.failed(link, { code: 'SOURCE_UNREADABLE', message: `hard link ${link.path} not made: ${link.target} was not copied`, path: link.path });
      else part.push(link);
    }
    if (part.length === 0) continue;
    const wire: BatchEntry[] = part.map((l) => ({ kind: 'hardlink', path: ctx.remotePath(l.path), target: ctx.remotePath(l.target!) }));
    const results = await ctx.dest.apply(wire);
    results.forEach((r, j) => (r.ok ? ctx.done(part[j]!) : ctx.failed(part[j]!, r.error)));
  }
}

/** Sets every directory's mode (and with -p its times), deepest first. */
export async function finishDirectories(ctx: FinalizeContext, dirs: ReadonlyMap<string, TreeEntry>): Promise<void> {
  const order = finishOrder([...dirs.keys()]);
  // Deepest first, but directories of one depth in parallel: none is inside another.
  let i = 0;
  while (i < order.length) {
    const depth = depthOf(order[i]!);
    let j = i;
    while (j < order.length && depthOf(order[j]!) === depth) j++;
    const level = order.slice(i, j);
    for (let k = 0; k < level.length; k += SETSTATS_IN_FLIGHT) {
      await Promise.all(
        level.slice(k, k + SETSTATS_IN_FLIGHT).map(async (p) => {
          const d = dirs.get(p)!;
          try {
            await ctx.dest.setstat(ctx.remotePath(p), {
              ...ctx.meta(d),
              mode: copyMode(d.mode, ctx.umask, ctx.preserve),
              ...(ctx.preserve ? { mtimeMs: Math.floor(d.mtimeMs), atimeMs: Math.floor(d.atimeMs) } : {}),
            });
          } catch (err) {
            ctx.failed(d, toFerryError(err).toData());
          }
        }),
      );
    }
    i = j;
  }
}

function depthOf(p: string): number {
  return p === '' ? 0 : p.split('/').length;
}

