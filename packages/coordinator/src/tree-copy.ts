/**
 * `ferry cp -r`: a whole directory tree as one job. This module opens the
 * job and runs the stages in order (TreeRun); each lives in a module named
 * after it:
 *
 * 1. **prepare** (tree-target.ts): where the tree goes, named as `scp -r`
 *    names it; the coordinator's connection; here, the job's state
 *    directory and journal (tree-journal.ts).
 * 2. **walk** (tree-walk.ts): the source read as a stream (serve's walk.ts
 *    here, the helper's WALK for a pull), so bytes move before it ends.
 * 3. **plan** (tree-plan.ts; core's TreePlanner cuts the steps): whether
 *    each entry goes (one the journal holds unchanged is resumed, one a
 *    sync finds the same is unchanged) and how: directories first, small
 *    files and symlinks in batches, big files and hard links later.
 * 4. **send** (tree-send.ts; a pull's reads: tree-fetch.ts; agents on other
 *    nodes: tree-agents.ts): batches to a pool of connections, each file
 *    written under a temporary name, checked by hash and renamed into place
 *    by the remote helper.
 * 5. **collect** (tree-collect.ts): each durable entry is journaled; a
 *    failed one is listed in failed.ndjson with its reason, a skipped one
 *    (fifo, device) in skipped.ndjson; neither stops the others.
 * 6. **big files** (tree-huge.ts): each file of at least `HUGE_FILE_BYTES`
 *    is copied as a single-file job of its own (runCopy), so a huge file
 *    never forms a tail.
 * 7. **finalize** (tree-finalize.ts): attributes, hard links, --delete,
 *    then directories' modes and times, deepest first.
 */
import { mkdir } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { FerryError, resolveCopyOptions, toFerryError } from '@ferry/core';
import type { ErrorData, HashAlgorithm, ResolvedCopyOptions, WalkItem } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { metaPlanOf } from './tree-meta.js';
import type { MetaPlan } from './tree-meta.js';
import type { CopyRequest } from './copy.js';
import { defaultStateDir, fallbackWarning, rangeHashFor, runCopy } from './copy.js';
import type { CopySummary, TreeSummary } from './events.js';
import { jobDirOf, lockJob, readTreeJobFile, writeTreeStatus } from './job-state.js';
import type { TreeJobStatus } from './job-state.js';
import { connectAny, remoteSideOf, resolveRemote } from './prepare.js';
import { dryRunSync, syncStateOf } from './tree-sync.js';
import type { SyncState } from './tree-sync.js';
import { SyncRecords, previousSyncRecords, writeSyncManifest, writeSyncPartial } from './sync-manifest.js';
import type { SyncRecord } from './sync-manifest.js';
import { TreeOutcome, collectBatch } from './tree-collect.js';
import type { Counters, TreeContext } from './tree-context.js';
import { finalizeTree, localDestination, remoteDestination } from './tree-finalize.js';
import type { TreeDestination } from './tree-finalize.js';
import { copyHugeFiles } from './tree-huge.js';
import { openTreeJob, recordTargetId } from './tree-job.js';
import { TreeJournal } from './tree-journal.js';
import type { TreeJournalState } from './tree-journal.js';
import { TreePlan } from './tree-plan.js';
import { TreeOutbox } from './tree-send.js';
import { plannerFor, walkSource } from './tree-walk.js';
import { SourceIsFile, prepareTreePush, remotePathOf, sourcePathOf } from './tree-target.js';
import type { TreeTarget } from './tree-target.js';

export { HUGE_FILE_BYTES } from './tree-plan.js';

/**
 * `ferry cp -r`. A remote source that turns out to be a regular file is
 * copied as that file (runCopy), as `scp -r host:FILE dst` does; a local one
 * never comes here (the CLI copies a local file with -r as a file).
 */
export async function runTreeCopy<F = CopySummary>(request: CopyRequest, asFile: () => Promise<F> = () => runCopy(request) as Promise<F>): Promise<TreeSummary | F> {
  try {
    return await runTree(request);
  } catch (err) {
    if (err instanceof SourceIsFile) return asFile();
    throw err;
  }
}

async function runTree(request: CopyRequest): Promise<TreeSummary> {
  const options = resolveCopyOptions(request.options, { cores: availableParallelism() });
  const emit = request.onEvent ?? (() => {});
  const started = Date.now();
  const remoteLoc = remoteSideOf(request.source, request.destination);
  const remote = remoteLoc ? await resolveRemote(remoteLoc, options) : undefined;
  for (const message of remote?.warnings ?? []) emit({ type: 'warning', message });
  const stateDir = options.stateDir ?? defaultStateDir();
  const target = await prepareTreePush(request.source, request.destination, options, async (id) => (await readTreeJobFile(jobDirOf(stateDir, id)).catch(() => undefined))?.targetRoot, remote, request.signal);
  let conn = target.conn;
  const control = async (): Promise<RemoteConnection> => {
    if (!conn.alive) conn = (await connectAny(target.hosts, target.ssh, target.connectOptions)).conn;
    return conn;
  };
  const jobDir = jobDirOf(stateDir, target.jobId);
  if (options.sync && options.dryRun) {
    try {
      return await dryRunSync(target, conn, options, rangeHashFor(options, conn), emit, started);
    } finally {
      conn.close();
    }
  }
  let unlock: (() => Promise<void>) | undefined;
  /** The tree's journal, closed however the job ends. */
  const held: { journal?: TreeJournal } = {};
  let run: TreeRun | undefined;
  let phase: TreeJobStatus['phase'] = 'failed';
  let failure: FerryError | undefined;
  let syncing: Promise<SyncState> | undefined;
  try {
    await mkdir(jobDir, { recursive: true, mode: 0o700 });
    unlock = await lockJob(jobDir);
    const { journal, state, algorithm } = await openTreeJob(request, options, target, conn, jobDir, held, emit);
    const resumed = state.done.size > 0;
    // Modes as scp sets them: limited by the destination side's umask (this process's, for a pull).
    const umask = target.direction === 'pull' ? process.umask() : await conn.umask(target.targetRoot);
    const meta = announceTree(emit, options, target, conn, jobDir, state);
    // Read while the source walk starts (TreeRun.copy waits for it before the first entry is planned).
    const sync = options.sync ? syncStateOf(target, conn, options, algorithm, umask, meta, emit) : undefined;
    sync?.catch(() => {});
    syncing = sync;
    run = new TreeRun(request, options, target, journal, state, algorithm, umask, meta, control, emit, (phase) => writeTreeStatus(jobDir, statusOf(run!, phase)), jobDir, sync);
    // What the previous complete run (and partial ones since) recorded: the hashes of entries this one finds the same without reading them.
    if (options.sync) run.records.previous = await previousSyncRecords(jobDir);
    await copyTree(run, request, conn);
    const summary = treeSummaryOf(run, target, conn, algorithm, jobDir, started);
    const c = run.counters;
    await run.writeLists(jobDir);
    // A sync that completed: the manifest of the destination as it left it (before 'done' is written: never a stale one with it).
    const records = run.syncRecords();
    if (records) await writeSyncManifest(jobDir, algorithm, records);
    else if (options.sync && !options.dryRun) await writeSyncPartial(jobDir, algorithm, run.knownSyncRecords());
    phase = c.failed > 0 ? 'partial' : 'done';
    emit({ type: 'tree.done', ...summary });
    if (c.failed > 0) {
      // A resumed job trusts its journal: directories an earlier run made are not looked at again.
      const gone = resumed && run.missingDirFailures > 0
        ? `; ${run.missingDirFailures} of them because their directory, made by an earlier run of this job, is gone from the destination: what the journal lists there is not checked again, so add --restart to copy everything again (or use ferry sync, which compares with the destination)`
        : '; run the same command again to retry them';
      throw new FerryError('TREE_PARTIAL', `${c.failed} of ${c.files + c.failed + c.resumedFiles} entries were not copied (listed with their reasons in ${join(jobDir, 'failed.ndjson')})${gone}`);
    }
    return summary;
  } catch (err) {
    failure = toFerryError(err);
    if (failure.code === 'INTERRUPTED') phase = 'interrupted';
    throw err;
  } finally {
    // A copy stopped by --fail-fast (or any error) still lists what failed and was skipped.
    if (run && phase !== 'partial' && phase !== 'done') await run.writeLists(jobDir).catch(() => {});
    if (run) await writeTreeStatus(jobDir, statusOf(run, phase, phase === 'partial' ? undefined : failure)).catch(() => {});
    void syncing?.then((s) => s.close(), () => {});
    if (run) await recordTargetId(jobDir, target, conn).catch(() => {});
    await held.journal?.close().catch(() => {});
    await unlock?.().catch(() => {});
    conn.close();
  }
}

/** The tree.start event and what the connection warns of; returns which metadata the copy keeps. */
function announceTree(emit: NonNullable<CopyRequest['onEvent']>, options: ResolvedCopyOptions, target: TreeTarget, conn: RemoteConnection, jobDir: string, state: TreeJournalState): MetaPlan {
  const resumed = state.done.size > 0;
  emit({ type: 'tree.start', jobId: target.jobId, source: target.sourceLabel, destination: target.destinationLabel, mode: conn.mode, stateDir: jobDir, resumed, resumedEntries: state.done.size });
  // A line cut short by a crash mid-write: its entry is sent again, as if never journaled.
  if (state.tornBytes > 0) emit({ type: 'log', message: `tree journal had a torn last line (${state.tornBytes} bytes, ${state.done.size} entries kept); it was cut off` });
  const fallback = fallbackWarning(conn);
  if (fallback) emit({ type: 'warning', message: fallback, host: conn.label });
  const meta = metaPlanOf(options, target.direction, conn);
  if (meta.xattrs && !meta.exact) emit({ type: 'log', message: `the helper on ${conn.label} cannot remove extended attributes (older than this ferry): a directory keeps attributes removed at the source since an earlier run, and a big file whose attributes changed is sent again whole` });
  return meta;
}

/** Runs the tree's stages; an abort closes the coordinator's connection and ends the copy as interrupted. */
async function copyTree(run: TreeRun, request: CopyRequest, conn: RemoteConnection): Promise<void> {
  const onAbort = () => conn.close();
  request.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await run.copy();
  } catch (err) {
    // Whatever the abort broke on its way (a closed connection, a cut walk) is an interruption.
    if (request.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted: rerun the same command to go on; what is journaled is not sent again');
    // --fail-fast: whatever the stop broke on its way, the copy ends with the first failure.
    throw run.stopped ?? err;
  } finally {
    request.signal?.removeEventListener('abort', onAbort);
  }
  if (request.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted: rerun the same command to go on; what is journaled is not sent again');
}

function treeSummaryOf(run: TreeRun, target: TreeTarget, conn: RemoteConnection, algorithm: HashAlgorithm, jobDir: string, started: number): TreeSummary {
  const seconds = (Date.now() - started) / 1000;
  const c = run.counters;
  return {
    jobId: target.jobId,
    source: target.sourceLabel,
    destination: target.destinationLabel,
    ...c,
    seconds,
    mbps: seconds > 0 ? c.bytes / 1e6 / seconds : 0,
    filesPerSec: seconds > 0 ? c.files / seconds : 0,
    mode: conn.mode,
    streams: run.streams,
    hash: algorithm,
    stateDir: jobDir,
  };
}

function statusOf(run: TreeRun, phase: TreeJobStatus['phase'], error?: FerryError): TreeJobStatus {
  const c = run.counters;
  return {
    phase,
    pid: process.pid,
    updatedAt: Date.now(),
    files: c.files,
    bytes: c.bytes,
    resumedFiles: c.resumedFiles,
    dirs: c.dirs,
    failed: c.failed,
    skipped: c.skipped,
    ...(error ? { error: { code: error.code, message: error.message } } : {}),
  };
}

/** Written this often while a tree copy runs, for `ferry status`. */
const STATUS_EVERY_MS = 5000;

/**
 * One run of a tree copy: the stages' shared state (TreeContext), and the
 * wiring of the stages, in order: walk and plan, send and collect, big
 * files, finalize.
 */
class TreeRun implements TreeContext {
  readonly counters: Counters = { files: 0, bytes: 0, resumedFiles: 0, resumedBytes: 0, dirs: 0, symlinks: 0, hardlinks: 0, failed: 0, skipped: 0, unchanged: 0, deleted: 0, attributes: 0 };
  /** Walk errors of the source: a sync's --delete then deletes nothing (what is under an unreadable directory is unknown). */
  walkErrors = 0;
  /** Stage 3 (plan): what each entry becomes (tree-plan.ts). */
  readonly plan: TreePlan;
  /** Stage 4 (send): where the plan's entries go (tree-send.ts). */
  private readonly outbox: TreeOutbox;
  /** Stage 5 (collect): the failure list and policy (tree-collect.ts). */
  readonly outcome: TreeOutcome;
  /** Sync: each destination entry's record as this run leaves it (sync-manifest.ts), and the previous runs'. */
  readonly records: SyncRecords;
  /** Where entries without bytes are made: directories, links, metadata, removals (tree-finalize.ts). */
  readonly dest: TreeDestination;
  private lastProgress = 0;
  private onTick: () => void = () => {};

  constructor(
    readonly request: CopyRequest,
    readonly options: ResolvedCopyOptions,
    readonly target: TreeTarget,
    readonly journal: TreeJournal,
    readonly state: TreeJournalState,
    readonly algorithm: HashAlgorithm,
    readonly umask: number,
    readonly meta: MetaPlan,
    private readonly control: () => Promise<RemoteConnection>,
    readonly emit: NonNullable<CopyRequest['onEvent']>,
    private readonly saveStatus: (phase: TreeJobStatus['phase']) => Promise<void>,
    jobDir: string,
    private readonly syncPending?: Promise<SyncState>,
  ) {
    this.outcome = new TreeOutcome(options, this.counters, emit);
    this.records = new SyncRecords(algorithm);
    this.plan = new TreePlan(this, state, this.records, { send: (entries) => this.outbox.send(entries), makeDirs: () => this.outbox.makeDirs() });
    this.dest = target.direction === 'pull' ? localDestination : remoteDestination(control, algorithm);
    this.outbox = new TreeOutbox({ ctx: this, plan: this.plan, dest: this.dest, jobDir, stopped: () => this.outcome.stopped !== undefined, onResult: (batch, results) => collectBatch(this, batch, results) });
  }

  /** Connections the batches used at most (the summary's `streams`). */
  get streams(): number {
    return this.outbox.streams;
  }

  /** --fail-fast's first failure, or one that stops the copy (a full destination): the error the copy ends with. */
  get stopped(): FerryError | undefined {
    return this.outcome.stopped;
  }

  get failedPaths(): ReadonlySet<string> {
    return this.outcome.failedPaths;
  }

  /** The stages in order. */
  async copy(): Promise<void> {
    const stopTicking = this.tick();
    try {
      try {
        await this.walkAndPlan();
      } finally {
        await this.outbox.close();
      }
      this.checkStop();
      await copyHugeFiles(this);
      await finalizeTree(this);
    } finally {
      stopTicking();
    }
  }

  /** Stages 2 and 3 (walk, plan): each entry the walk reports, admitted and planned; what the plan sends goes out meanwhile. */
  private async walkAndPlan(): Promise<void> {
    const planner = plannerFor(this.options);
    const { items, sync } = await walkSource(this, this.control, this.syncPending);
    if (sync) {
      this.plan.sync = sync;
      this.records.start();
    }
    for await (const item of items) {
      if ('error' in item) {
        this.walkError(item);
        continue;
      }
      this.checkStop();
      if (!this.plan.admit(item.entry)) continue;
      for (const step of planner.add(item.entry)) await this.plan.publish(step);
    }
    this.checkStop();
    for (const step of planner.finish()) await this.plan.publish(step);
    await this.outbox.makeDirs();
  }

  /** A part of the source the walk could not read: it fails alone, unless it is the root. */
  private walkError(item: Extract<WalkItem, { error: unknown }>): void {
    this.walkErrors++;
    if (item.path === '') throw new FerryError('SOURCE_UNREADABLE', `cannot read source ${this.target.sourceLabel}: ${item.error.message}`, { path: this.target.sourceRoot });
    this.fail(item.path, { code: 'SOURCE_UNREADABLE', message: `${this.sourceLabelOf(item.path)}: ${item.error.message}`, path: this.sourcePath(item.path), errno: item.error.code });
  }

  /** Progress every second and the status file every STATUS_EVERY_MS while the copy runs; returns what stops them. */
  private tick(): () => void {
    const progress = setInterval(() => this.progress(), 1000);
    let saved = Date.now();
    void this.saveStatus('running').catch(() => {});
    this.onTick = () => {
      if (Date.now() - saved < STATUS_EVERY_MS) return;
      saved = Date.now();
      void this.saveStatus('running').catch(() => {});
    };
    return () => {
      clearInterval(progress);
      this.progress();
    };
  }

  fail(path: string, error: ErrorData): void {
    // A failed write may have left and removed a temporary name there.
    this.plan.touch(path);
    this.outcome.fail(path, error);
  }

  /** --fail-fast or a failure that stops the copy: ends the stage at hand. */
  checkStop(): void {
    this.outcome.checkStop();
  }

  /** Sync: the records this run made so far, complete or not. */
  knownSyncRecords(): Iterable<SyncRecord> {
    return this.records.known();
  }

  /** Sync: the records of the whole destination, when this run completed (nothing failed, the source read in full); else undefined. */
  syncRecords(): Iterable<SyncRecord> | undefined {
    if (!this.plan.sync || this.counters.failed > 0 || this.walkErrors > 0) return undefined;
    return this.records.known();
  }

  private progress(): void {
    this.onTick();
    const now = Date.now();
    if (now - this.lastProgress < 500) return;
    this.lastProgress = now;
    const c = this.counters;
    this.emit({ type: 'tree.progress', files: c.files, bytes: c.bytes, failed: c.failed, skipped: c.skipped, dirs: c.dirs, resumedFiles: c.resumedFiles });
  }

  /** The source path of a tree path (remote for a pull). */
  sourcePath(treePath: string): string {
    return sourcePathOf(this.target, treePath);
  }

  private sourceLabelOf(treePath: string): string {
    return this.target.direction === 'pull' ? `${targetHostOf(this.target)}:${this.sourcePath(treePath)}` : this.sourcePath(treePath);
  }

  destPath(treePath: string): string {
    return remotePathOf(this.target, treePath);
  }

  /** Entries that failed because their directory is not at the destination (DEST_DIR_MISSING). */
  get missingDirFailures(): number {
    return this.outcome.missingDirFailures;
  }

  /** failed.ndjson and skipped.ndjson in the job's directory (replaced by each run). */
  async writeLists(jobDir: string): Promise<void> {
    await this.outcome.writeLists(jobDir, this.plan.skips);
  }
}

function targetHostOf(target: TreeTarget): string {
  return target.hosts[0]?.host ?? target.remote.hosts[0] ?? '';
}
