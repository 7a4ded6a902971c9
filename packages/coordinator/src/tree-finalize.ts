/**
 * The last stage of a tree copy, once every file's content is in place
 * (`finalizeTree`): a sync's attributes set again where they alone differ,
 * hard links (a further name needs its first name to exist), a sync's
 * --delete, then each directory's mode and times, deepest first (making,
 * renaming or removing anything in a directory changes its mtime, so a
 * parent is finished after its children).
 */
import { lstat, rmdir, unlink } from 'node:fs/promises';
import { FerryError, copyMode, destinationError, errnoOf, finishOrder, toFerryError } from '@ferry/core';
import type { BatchEntry, ErrorData, HashAlgorithm, TreeEntry } from '@ferry/core';
import type { BatchResult, RemoteConnection, SetAttrs } from '@ferry/transport';
import { applyEntries, applyPathMeta, setModeTimesAt } from '@ferry/serve';
import type { TreeContext } from './tree-context.js';
import type { TreeJournal } from './tree-journal.js';
import { pathMeta } from './tree-meta.js';
import type { TreePlan } from './tree-plan.js';
import type { DestIndex } from './tree-sync.js';

/** Entries per BATCH of links. */
const LINKS_PER_BATCH = 1024;
/** SETSTATs in flight at once on the coordinator's connection. */
const SETSTATS_IN_FLIGHT = 32;
/** Removals (--delete) in flight at once, of one depth. */
const REMOVES_IN_FLIGHT = 32;

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

/** The remote host as a tree's destination (a push), through the coordinator's connection (`control` opens it again if it died). */
export function remoteDestination(control: () => Promise<RemoteConnection>, algorithm: HashAlgorithm): TreeDestination {
  return {
    apply: async (entries) => (await control()).writeBatch(entries, algorithm, () => noBytes()),
    setstat: async (path, attrs) => (await control()).setstat(path, attrs),
    remove: async (path, dir) => {
      const c = await control();
      await (dir ? c.rmdir(path) : c.unlink(path)).catch((err: unknown) => {
        if (errnoOf(err) !== 'ENOENT') throw err;
      });
    },
  };
}

async function* noBytes(): AsyncGenerator<Uint8Array> {}

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


/** What the finalize stage reads and writes of the run. */
export interface TreeFinalizeContext extends TreeContext {
  readonly dest: TreeDestination;
  readonly journal: TreeJournal;
  readonly plan: TreePlan;
  /** Tree paths that failed (a hard link to one is not made). */
  readonly failedPaths: ReadonlySet<string>;
  /** Walk errors of the source: --delete then deletes nothing. */
  readonly walkErrors: number;
}

/** Stage 7 (finalize), in its fixed order: attributes, hard links (journaled), --delete, directories. */
export async function finalizeTree(run: TreeFinalizeContext): Promise<void> {
  await setAttributes(run, run.plan.attributesToSet);
  run.checkStop();
  const linked: TreeEntry[] = [];
  const ctx: FinalizeContext = {
    dest: run.dest,
    remotePath: (p) => run.destPath(p),
    preserve: run.options.preserve,
    umask: run.umask,
    meta: (e) => pathMeta(run.meta, e),
    failed: (e, error) => run.fail(e.path, error),
    done: (e) => {
      run.counters.hardlinks++;
      linked.push(e);
    },
  };
  await makeHardLinks(ctx, run.plan.linksToMake(), (p) => run.failedPaths.has(p));
  await journalLinks(run, linked);
  run.checkStop();
  // Before the directories' times are set: removing an entry changes its directory's mtime.
  if (run.plan.sync && run.options.deleteExtraneous) await deleteExtraneous(run, run.plan.sync.index);
  run.checkStop();
  await finishDirectories(ctx, run.plan.dirsToFinish());
  run.checkStop();
}

/** Journals each further name made (TreePlan.linkRecords), and says how many were still right. */
async function journalLinks(run: TreeFinalizeContext, links: readonly TreeEntry[]): Promise<void> {
  await run.journal.append(run.plan.linkRecords(links));
  const n = run.plan.resumedLinks;
  if (n > 0) run.emit({ type: 'log', message: `${n} hard link${n === 1 ? '' : 's'} made by earlier runs ${n === 1 ? 'is' : 'are'} still right: not made again` });
}

/**
 * Sync: the files whose extended attributes alone differ get the source's
 * as an exact set, by path (as a big file of a copy's rerun does), a few
 * at once; no owner or mode is given again (they are the same already,
 * and a chown would clear set-id bits).
 */
async function setAttributes(run: TreeFinalizeContext, files: readonly TreeEntry[]): Promise<void> {
  for (let i = 0; i < files.length; i += SETSTATS_IN_FLIGHT) {
    await Promise.all(
      files.slice(i, i + SETSTATS_IN_FLIGHT).map(async (e) => {
        const { uid: _u, gid: _g, user: _un, group: _gn, ...attrs } = pathMeta(run.meta, e);
        try {
          await run.dest.setstat(run.destPath(e.path), attrs, true);
          run.counters.attributes++;
          run.emit({ type: 'log', message: `${run.destPath(e.path)}: extended attributes set again (its bytes are the same)` });
        } catch (err) {
          run.fail(e.path, toFerryError(err).toData());
        }
      }),
    );
    run.checkStop();
  }
}

/**
 * `--delete`: what the destination holds and the source does not, removed
 * deepest first, once every entry arrived: never after a failure or a walk
 * that could not read part of the source (what it did not see would go).
 */
async function deleteExtraneous(run: TreeFinalizeContext, index: DestIndex): Promise<void> {
  const { counters } = run;
  if (counters.failed > 0 || run.walkErrors > 0) {
    run.emit({ type: 'warning', message: `--delete: nothing deleted, as ${counters.failed > 0 ? `${counters.failed} entries failed` : 'part of the source could not be read'}; run again once the copy is complete` });
    return;
  }
  const doomed = index.extraneous().filter((e) => !index.underUnreadable(e.path));
  for (const e of doomed) run.plan.touch(e.path);
  // Of one depth, several at once: none is inside another.
  for (let i = 0; i < doomed.length; ) {
    const depth = doomed[i]!.path.split('/').length;
    let j = i;
    while (j < doomed.length && doomed[j]!.path.split('/').length === depth) j++;
    const level = doomed.slice(i, j);
    for (let k = 0; k < level.length; k += REMOVES_IN_FLIGHT) {
      await Promise.all(level.slice(k, k + REMOVES_IN_FLIGHT).map((e) => removeExtraneous(run, e)));
    }
    run.checkStop();
    i = j;
  }
}

async function removeExtraneous(run: TreeFinalizeContext, e: { path: string; kind: string }): Promise<void> {
  try {
    await run.dest.remove(run.destPath(e.path), e.kind === 'dir');
    run.counters.deleted++;
    run.emit({ type: 'log', message: `deleted ${run.destPath(e.path)}` });
  } catch (err) {
    run.fail(e.path, toFerryError(err).toData());
  }
}
