/**
 * The big files of a tree copy, once the batches are done: each file of at
 * least `--stripe-files-over` (tree-plan.ts's HUGE_FILE_BYTES) is copied as
 * a single-file job of its own (copy.ts's runCopy: ranges spread over every
 * agent and stream, journaled per range), so a huge file never forms a
 * tail; one whose bytes an earlier run copied and whose mode, owner or
 * attributes alone changed gets those set again by path, not its bytes.
 */
import { copyMode, formatLocation, toFerryError } from '@ferry/core';
import type { TreeEntry } from '@ferry/core';
import { defaultStateDir, runCopy } from './copy.js';
import { bigFileEntryOf } from './manifest.js';
import type { SyncRecords } from './sync-manifest.js';
import type { TreeContext } from './tree-context.js';
import type { TreeDestination } from './tree-finalize.js';
import { recordOf } from './tree-journal.js';
import type { TreeJournal, TreeJournalState } from './tree-journal.js';
import { pathMeta } from './tree-meta.js';
import type { TreePlan } from './tree-plan.js';
import { remotePathOf, sourcePathOf } from './tree-target.js';

/** Failures of a big file's own job that stop the tree too: what stops every file (the login, the host keys, an interrupt). */
const STOPS_THE_TREE: ReadonlySet<string> = new Set(['SSH_AUTH_FAILED', 'HOST_KEY_UNKNOWN', 'HOST_KEY_CHANGED', 'INTERRUPTED', 'HELPER_UNTRUSTED']);

/** What the big files' stage reads and writes of the run. */
export interface HugeContext extends TreeContext {
  readonly journal: TreeJournal;
  readonly state: TreeJournalState;
  readonly plan: TreePlan;
  readonly records: SyncRecords;
  readonly dest: TreeDestination;
}

/** Stage 6 (big files): the plan's big files, one after the other, then the ones whose metadata alone changed. */
export async function copyHugeFiles(ctx: HugeContext): Promise<void> {
  for (const entry of ctx.plan.huge) {
    await copyHuge(ctx, entry);
    ctx.checkStop();
  }
  for (const entry of ctx.plan.hugeMeta) {
    await refreshHuge(ctx, entry);
    ctx.checkStop();
  }
}

/** A huge file as a job of its own (its ranges over every agent and stream, resumable per range). */
async function copyHuge(ctx: HugeContext, entry: TreeEntry): Promise<void> {
  const { target, request } = ctx;
  const pull = target.direction === 'pull';
  const source = pull ? formatLocation({ ...target.remote, path: sourcePathOf(target, entry.path) }) : ctx.sourcePath(entry.path);
  const destination = pull ? ctx.destPath(entry.path) : formatLocation({ ...target.remote, path: remotePathOf(target, entry.path) });
  try {
    const summary = await runCopy({
      ...request,
      source,
      destination,
      // A file that changed since an earlier run started its job is sent whole again, as any changed file of the tree.
      restartChanged: true,
      // A sync's big file that is there already: only the ranges that differ go (--delta).
      ...(ctx.plan.sync ? { options: { ...request.options, delta: true } } : {}),
      onEvent: (e) => {
        if (e.type === 'done') ctx.emit({ type: 'log', message: `${entry.path}: ${e.bytes} bytes in ${e.seconds.toFixed(1)} s (job ${e.jobId})` });
        else if (e.type !== 'job.start') ctx.emit(e);
      },
    });
    // Owner and attributes: the single-file copy keeps mode and times only.
    const meta = pathMeta(ctx.meta, entry);
    if (Object.keys(meta).length > 0) await ctx.dest.setstat(ctx.destPath(entry.path), meta);
    await ctx.journal.append([recordOf(entry, { job: summary.jobId, meta: ctx.plan.digestOf(entry) })]);
    if (ctx.plan.sync) await recordHuge(ctx, entry, summary.jobId);
    ctx.counters.files++;
    ctx.counters.bytes += summary.movedBytes;
    ctx.counters.resumedBytes += summary.resumedBytes;
  } catch (err) {
    const e = toFerryError(err);
    if (STOPS_THE_TREE.has(e.code)) throw e;
    ctx.fail(entry.path, e.toData());
  }
}

/**
 * Sync: a big file's record from its ranges' hashes as its job recorded them
 * (reused ranges included: hashed alike on both sides); where that state
 * cannot be read, the file arrived all the same: only its hash is unknown.
 */
async function recordHuge(ctx: HugeContext, entry: TreeEntry, jobId: string): Promise<void> {
  const ranged = await bigFileEntryOf(ctx.options.stateDir ?? defaultStateDir(), ctx.target.jobId, entry.path, jobId).catch(() => undefined);
  if (ranged) {
    const { path: _, ...body } = ranged;
    ctx.records.record(entry, body);
  } else ctx.records.record(entry, undefined);
}

/** A big file of TreePlan.metaAlone: its owner, attributes (an exact set) and mode set again (owner first: a chown clears set-id bits), journaled with the new digest. */
async function refreshHuge(ctx: HugeContext, entry: TreeEntry): Promise<void> {
  const previous = ctx.state.done.get(entry.path)!;
  try {
    await ctx.dest.setstat(ctx.destPath(entry.path), { ...pathMeta(ctx.meta, entry), mode: copyMode(entry.mode, ctx.umask, ctx.options.preserve) }, true);
    await ctx.journal.append([recordOf(entry, { job: previous.job!, meta: ctx.plan.digestOf(entry) })]);
    ctx.emit({ type: 'log', message: `${entry.path}: mode, owner${ctx.meta.xattrs ? ' and attributes' : ''} set again (its bytes are unchanged)` });
    ctx.counters.files++;
  } catch (err) {
    ctx.fail(entry.path, toFerryError(err).toData());
  }
}
