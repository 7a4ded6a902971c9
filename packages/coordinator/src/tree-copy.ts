/**
 * `ferry cp -r`: a whole directory tree as one job. The stages, in order:
 *
 * 1. **prepare** (tree-target.ts): where the tree goes, named as `scp -r`
 *    names it; the coordinator's connection; the job's state directory and
 *    journal (tree-journal.ts).
 * 2. **walk and plan** (serve's walk.ts, core's tree-plan.ts): the source is
 *    read as a stream, so bytes move before the walk ends; directories come
 *    out first and are made (one BATCH of `dir` entries) before anything
 *    that lands in them is sent; small files and symlinks are grouped into
 *    batches; a file of the journal whose size, mtime and inode are unchanged
 *    is not sent again.
 * 3. **send** (tree-send.ts): batches go to a pool of connections, a few in
 *    flight on each; every file is written under a temporary name, checked by
 *    hash, and renamed into place by the remote helper.
 * 4. **collect**: each durable entry is journaled; a failed one is listed in
 *    the job's failed.ndjson with its reason, a skipped one (fifo, device) in
 *    skipped.ndjson; neither stops the others.
 * 5. **big files**: each file of at least `HUGE_FILE_BYTES` is copied as a
 *    single-file job of its own (copy.ts: ranges spread over every agent and
 *    stream, journaled per range), so a huge file never forms a tail.
 * 6. **finalize** (tree-finalize.ts): hard links, then directories' modes and
 *    times, deepest first.
 */
import { lstat, mkdir } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { FerryError, Pacer, TreePlanner, copyMode, errnoOf, formatLocation, parseLocation, resolveCopyOptions, resolveTreeThresholds, toFerryError } from '@ferry/core';
import type { BatchEntry, ErrorData, HashAlgorithm, ResolvedCopyOptions, TreeEntry, WalkItem } from '@ferry/core';
import type { BatchResult, RemoteConnection } from '@ferry/transport';
import type { Pace } from '@ferry/agent';
import { walkTree } from '@ferry/serve';
import { metaPlanOf, pathMeta, wireMeta } from './tree-meta.js';
import type { MetaPlan } from './tree-meta.js';
import type { CopyRequest } from './copy.js';
import { defaultStateDir, fallbackWarning, rangeHashFor, runCopy } from './copy.js';
import type { CopySummary, TreeSummary } from './events.js';
import { jobDirOf, lockJob, readTreeJobFile, writeTreeJobFile, writeTreeStatus } from './job-state.js';
import type { TreeJobFile, TreeJobStatus } from './job-state.js';
import { connectAny, remoteSideOf, remoteStat, resolveRemote } from './prepare.js';
import { dryRunSync, syncStateOf } from './tree-sync.js';
import type { DestIndex, SyncState } from './tree-sync.js';
import { writePrivateFile } from './private-file.js';
import { bigFileEntryOf } from './manifest.js';
import { SyncRecords, previousSyncRecords, writeSyncManifest, writeSyncPartial } from './sync-manifest.js';
import type { SyncRecord } from './sync-manifest.js';
import { finishDirectories, localDestination, makeHardLinks } from './tree-finalize.js';
import type { TreeDestination } from './tree-finalize.js';
import { pullTransfer } from './tree-fetch.js';
import { TreeJournal, recordOf } from './tree-journal.js';
import type { TreeJournalState, TreeRecord } from './tree-journal.js';
import type { Counters, TreeContext } from './tree-context.js';
import { TreePlan } from './tree-plan.js';
import { TreeSender, pushTransfer } from './tree-send.js';
import { AgentBatches, treeUsesAgents } from './tree-agents.js';
import type { WireBatch } from './tree-send.js';
import { SourceIsFile, prepareTreePush, remotePathOf, sourcePathOf } from './tree-target.js';
import type { TreeTarget } from './tree-target.js';

export { HUGE_FILE_BYTES } from './tree-plan.js';

/** Connections of a tree's batches when --streams is not given. */
const DEFAULT_TREE_STREAMS = 4;
/** Failures printed one by one (all of them go to failed.ndjson). */
const FAILURES_SHOWN = 20;
/**
 * Failures of one entry that every later entry would meet too: they stop the
 * copy as --fail-fast does (batches on their way finish and are journaled),
 * with that failure's own exit code, rather than try each remaining file and
 * list thousands of failures. A full destination is the one: a full disk
 * stops the copy, as it stops cp, tar and rsync.
 */
const STOPS_THE_COPY: ReadonlySet<string> = new Set(['DEST_NO_SPACE']);

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

/** The destination root's identity (device and inode), or undefined where it is not a directory. */
async function targetIdOf(target: TreeTarget, conn: RemoteConnection): Promise<{ dev: number; ino: number } | undefined> {
  if (target.direction === 'pull') {
    const st = await lstat(target.targetRoot).catch(() => undefined);
    return st?.isDirectory() ? { dev: st.dev, ino: st.ino } : undefined;
  }
  const st = await remoteStat(conn, target.targetRoot).catch((err: unknown) => {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  });
  return st?.type === 'directory' ? { dev: st.dev, ino: st.ino } : undefined;
}

/**
 * Why a resumed job's journal no longer speaks for its destination: the
 * root directory is gone, or another directory stands at its name (removed
 * and made again since the run that recorded it). Undefined when it is the
 * same, or when no earlier run recorded it (a journal from an older ferry).
 */
async function staleDestination(target: TreeTarget, conn: RemoteConnection, previous: TreeJobFile | undefined): Promise<string | undefined> {
  if (!previous || previous.targetRoot !== target.targetRoot) return undefined;
  const now = await targetIdOf(target, conn);
  if (!now) return `${target.targetRoot} is not there any more`;
  const was = previous.targetId;
  if (was && (was.dev !== now.dev || was.ino !== now.ino)) return `${target.targetRoot} is another directory than the one an earlier run wrote (inode ${now.ino}, was ${was.ino})`;
  return undefined;
}

/** Records the destination root's identity in tree.json, for staleDestination on the next run. */
async function recordTargetId(jobDir: string, target: TreeTarget, conn: RemoteConnection): Promise<void> {
  const job = await readTreeJobFile(jobDir);
  if (!job || !conn.alive) return;
  const id = await targetIdOf(target, conn);
  if (!id || (job.targetId?.dev === id.dev && job.targetId.ino === id.ino)) return;
  await writeTreeJobFile(jobDir, { ...job, targetId: id });
}

/**
 * The tree job's journal (emptied for --restart and for every sync) and its
 * job.json; the journal goes into `held` at once, so the caller closes it
 * however the job ends.
 */
async function openTreeJob(request: CopyRequest, options: ResolvedCopyOptions, target: TreeTarget, conn: RemoteConnection, jobDir: string, held: { journal?: TreeJournal }, emit: NonNullable<CopyRequest['onEvent']>): Promise<{ journal: TreeJournal; state: TreeJournalState; algorithm: HashAlgorithm }> {
  const journalPath = join(jobDir, 'tree.ndjson');
  // A sync compares with the destination itself, never with the journal: each run starts an
  // empty one (reading an earlier run's would cost a second per 50,000 lines for nothing).
  if (options.restart || options.sync) await writePrivateFile(journalPath, '');
  let opened = await TreeJournal.open(journalPath);
  held.journal = opened.journal;
  const previous = await readTreeJobFile(jobDir);
  // The journal speaks for a destination directory that is still the one its runs wrote.
  const stale = opened.state.done.size > 0 ? await staleDestination(target, conn, previous) : undefined;
  if (stale) {
    emit({ type: 'warning', message: `${target.destinationLabel}: ${stale}: what earlier runs of this job journaled is not there; copying everything again` });
    await opened.journal.close();
    await writePrivateFile(journalPath, '');
    opened = await TreeJournal.open(journalPath);
    held.journal = opened.journal;
  }
  const resumed = opened.state.done.size > 0;
  const algorithm: HashAlgorithm = rangeHashFor(options, conn);
  await writeTreeJobFile(jobDir, {
    v: 1,
    kind: 'tree',
    jobId: target.jobId,
    createdAt: previous && !options.restart ? previous.createdAt : Date.now(),
    source: request.source,
    destination: request.destination,
    sourceLabel: target.sourceLabel,
    destinationLabel: target.destinationLabel,
    targetRoot: target.targetRoot,
    ...(previous?.targetId && resumed ? { targetId: previous.targetId } : {}),
    options: request.options ?? {},
    hash: algorithm,
  });
  return { journal: opened.journal, state: opened.state, algorithm };
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

/** Entries a sync's source walk may find ahead while the destination is still being read (~300 bytes each). */
const SYNC_WALK_AHEAD = 65_536;

/** Written this often while a tree copy runs, for `ferry status`. */
const STATUS_EVERY_MS = 5000;

/** One run of a tree copy: the stages' shared state. */
class TreeRun {
  readonly counters: Counters = { files: 0, bytes: 0, resumedFiles: 0, resumedBytes: 0, dirs: 0, symlinks: 0, hardlinks: 0, failed: 0, skipped: 0, unchanged: 0, deleted: 0, attributes: 0 };
  /** Walk errors of the source: a sync's --delete then deletes nothing (what is under an unreadable directory is unknown). */
  private walkErrors = 0;
  readonly streams: number;
  /** The plan stage: what each entry becomes (tree-plan.ts). */
  readonly plan: TreePlan;
  /** Sync: each destination entry's record as this run leaves it (sync-manifest.ts), and the previous runs'. */
  readonly records: SyncRecords;
  /** Tree paths that failed (a hard link to one is not made). */
  private readonly failedPaths = new Set<string>();
  private readonly failures: string[] = [];
  /** Entries that failed because their directory is not at the destination (DEST_DIR_MISSING). */
  missingDirFailures = 0;
  private lastProgress = 0;
  private onTick: () => void = () => {};
  private readonly sender: TreeSender | AgentBatches;
  private readonly dest: TreeDestination;
  /** --fail-fast's first failure, or one in STOPS_THE_COPY: the error the copy ends with. */
  stopped: FerryError | undefined;

  constructor(
    private readonly request: CopyRequest,
    private readonly options: ResolvedCopyOptions,
    private readonly target: TreeTarget,
    private readonly journal: TreeJournal,
    private readonly state: TreeJournalState,
    algorithm: HashAlgorithm,
    private readonly umask: number,
    private readonly meta: MetaPlan,
    private readonly control: () => Promise<RemoteConnection>,
    private readonly emit: NonNullable<CopyRequest['onEvent']>,
    private readonly saveStatus: (phase: TreeJobStatus['phase']) => Promise<void>,
    jobDir: string,
    private readonly syncPending?: Promise<SyncState>,
  ) {
    const ctx: TreeContext = {
      request, options, target, algorithm, umask, meta, counters: this.counters, emit,
      fail: (p, error) => this.fail(p, error),
      checkStop: () => this.checkStop(),
      sourcePath: (p) => this.sourcePath(p),
      destPath: (p) => this.destPath(p),
    };
    this.records = new SyncRecords(algorithm);
    this.plan = new TreePlan(ctx, state, this.records, { send: (entries) => this.send(entries), makeDirs: () => this.makeDirs() });
    this.streams = options.tuneStreams ? DEFAULT_TREE_STREAMS : Math.max(1, options.streams * options.agents);
    // Agents on other nodes (ferry run -r, --launcher): the batches go to them over NATS (tree-agents.ts), a push's and a pull's.
    const streams = options.tuneStreams ? DEFAULT_TREE_STREAMS : options.streams;
    const onResult = (batch: WireBatch, results: BatchResult[]) => this.collect(batch, results);
    const pace = options.limitBytesPerSec ? paceTo(options.limitBytesPerSec) : undefined;
    this.sender = treeUsesAgents(request)
      ? new AgentBatches({ request, options, target, jobDir, algorithm, mode: target.conn.mode, streams, emit, onResult })
      : new TreeSender({
      streams: this.streams,
      connect: async () => (await connectAny(target.hosts, target.ssh, target.connectOptions)).conn,
      transfer: this.stopping(target.direction === 'pull' ? pullTransfer(algorithm, (e) => sourcePathOf(target, e.path), pace) : pushTransfer(algorithm, (e) => this.sourcePath(e.path), pace)),
      onResult,
      log: (message) => emit({ type: 'log', message }),
      ...(request.signal ? { signal: request.signal } : {}),
    });
    this.dest =
      target.direction === 'pull'
        ? localDestination
        : {
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

  /** --fail-fast or a full destination: once stopped, no further batch goes out (the sender then ends its lanes). */
  private stopping<T extends (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]>>(transfer: T): T {
    return (async (conn: RemoteConnection, batch: WireBatch) => {
      // Not a connection's trouble: the sender stops rather than send the batch again.
      if (this.stopped) throw new FerryError('INTERRUPTED', 'stopped at a failure that stops the copy (--fail-fast, a full destination)');
      return transfer(conn, batch);
    }) as T;
  }

  /** --fail-fast or a failure in STOPS_THE_COPY: ends the stage at hand. */
  private checkStop(): void {
    if (this.stopped) throw this.stopped;
  }

  /** The source tree as a stream: walked here for a push, by the remote helper for a pull. */
  private async walk(): Promise<AsyncIterable<WalkItem>> {
    const walk = this.target.direction === 'pull' ? (await this.control()).walk(this.target.sourceRoot, this.meta.walk) : walkTree(this.target.sourceRoot, { ...request(this.request), ...(this.meta.local ? { meta: this.meta.local } : {}), ...(this.syncPending ? { highWater: SYNC_WALK_AHEAD } : {}) });
    if (!this.syncPending) return walk;
    // A sync: the source walk starts now and runs ahead (up to SYNC_WALK_AHEAD entries here, a
    // pull's up to the SSH window) while the destination's walk is read; planning waits for that.
    // Two items asked for: the walker reports the root first and starts reading directories on the next request.
    const it = walk[Symbol.asyncIterator]();
    const primed = [it.next()];
    primed.push(primed[0]!.then((r) => (r.done ? r : it.next())));
    for (const p of primed) p.catch(() => {});
    try {
      this.plan.sync = await this.syncPending;
      this.records.start();
    } catch (err) {
      await it.return?.();
      throw err;
    }
    return { [Symbol.asyncIterator]: () => ({ next: () => primed.shift() ?? it.next(), return: async () => (await it.return?.()) ?? { done: true, value: undefined } }) };
  }

  async copy(): Promise<void> {
    const planner = new TreePlanner(
      resolveTreeThresholds({
        ...(this.options.rangeBytes ? { rangeBytes: this.options.rangeBytes } : {}),
        ...(this.options.batchFilesUnder !== undefined ? { smallFileBytes: this.options.batchFilesUnder } : {}),
        ...(this.options.batchBytes !== undefined ? { batchBytes: this.options.batchBytes } : {}),
      }),
    );
    const progress = setInterval(() => this.progress(), 1000);
    let saved = Date.now();
    void this.saveStatus('running').catch(() => {});
    this.onTick = () => {
      if (Date.now() - saved < STATUS_EVERY_MS) return;
      saved = Date.now();
      void this.saveStatus('running').catch(() => {});
    };
    try {
      try {
        for await (const item of await this.walk()) {
          if ('error' in item) {
            this.walkErrors++;
            if (item.path === '') throw new FerryError('SOURCE_UNREADABLE', `cannot read source ${this.target.sourceLabel}: ${item.error.message}`, { path: this.target.sourceRoot });
            this.fail(item.path, { code: 'SOURCE_UNREADABLE', message: `${this.sourceLabelOf(item.path)}: ${item.error.message}`, path: this.sourcePath(item.path), errno: item.error.code });
            continue;
          }
          this.checkStop();
          if (!this.plan.admit(item.entry)) continue;
          for (const step of planner.add(item.entry)) await this.plan.publish(step);
        }
        this.checkStop();
        for (const step of planner.finish()) await this.plan.publish(step);
        await this.makeDirs();
      } finally {
        await this.sender.close();
      }
      this.checkStop();
      for (const entry of this.plan.huge) {
        await this.copyHuge(entry);
        this.checkStop();
      }
      for (const entry of this.plan.hugeMeta) {
        await this.refreshHuge(entry);
        this.checkStop();
      }
      await this.setAttributes();
      this.checkStop();
      const linked: TreeEntry[] = [];
      const ctx = {
        dest: this.dest,
        remotePath: (p: string) => this.destPath(p),
        preserve: this.options.preserve,
        umask: this.umask,
        meta: (e: TreeEntry) => pathMeta(this.meta, e),
        failed: (e: TreeEntry, error: ErrorData) => this.fail(e.path, error),
        done: (e: TreeEntry) => {
          this.counters.hardlinks++;
          linked.push(e);
        },
      };
      await makeHardLinks(ctx, this.plan.linksToMake(), (p) => this.failedPaths.has(p));
      await this.journalLinks(linked);
      this.checkStop();
      // Before the directories' times are set: removing an entry changes its directory's mtime.
      if (this.plan.sync && this.options.deleteExtraneous) await this.deleteExtraneous(this.plan.sync.index);
      this.checkStop();
      await finishDirectories(ctx, this.plan.dirsToFinish());
      this.checkStop();
    } finally {
      clearInterval(progress);
      this.progress();
    }
  }

  /** Journals each further name made (TreePlan.linkRecords), and says how many were still right. */
  private async journalLinks(links: readonly TreeEntry[]): Promise<void> {
    await this.journal.append(this.plan.linkRecords(links));
    const n = this.plan.resumedLinks;
    if (n > 0) this.emit({ type: 'log', message: `${n} hard link${n === 1 ? '' : 's'} made by earlier runs ${n === 1 ? 'is' : 'are'} still right: not made again` });
  }

  /**
   * Sync: the files whose extended attributes alone differ get the source's
   * as an exact set, by path (as a big file of a copy's rerun does), a few
   * at once; no owner or mode is given again (they are the same already,
   * and a chown would clear set-id bits).
   */
  private async setAttributes(): Promise<void> {
    const files = this.plan.attributesToSet;
    for (let i = 0; i < files.length; i += 32) {
      await Promise.all(
        files.slice(i, i + 32).map(async (e) => {
          const { uid: _u, gid: _g, user: _un, group: _gn, ...attrs } = pathMeta(this.meta, e);
          try {
            await this.dest.setstat(this.destPath(e.path), attrs, true);
            this.counters.attributes++;
            this.emit({ type: 'log', message: `${this.destPath(e.path)}: extended attributes set again (its bytes are the same)` });
          } catch (err) {
            this.fail(e.path, toFerryError(err).toData());
          }
        }),
      );
      this.checkStop();
    }
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

  /**
   * `--delete`: what the destination holds and the source does not, removed
   * deepest first, once every entry arrived: never after a failure or a walk
   * that could not read part of the source (what it did not see would go).
   */
  private async deleteExtraneous(index: DestIndex): Promise<void> {
    if (this.counters.failed > 0 || this.walkErrors > 0) {
      this.emit({ type: 'warning', message: `--delete: nothing deleted, as ${this.counters.failed > 0 ? `${this.counters.failed} entries failed` : 'part of the source could not be read'}; run again once the copy is complete` });
      return;
    }
    const doomed = index.extraneous().filter((e) => !index.underUnreadable(e.path));
    for (const e of doomed) this.plan.touch(e.path);
    // Of one depth, several at once: none is inside another.
    for (let i = 0; i < doomed.length; ) {
      const depth = doomed[i]!.path.split('/').length;
      let j = i;
      while (j < doomed.length && doomed[j]!.path.split('/').length === depth) j++;
      const level = doomed.slice(i, j);
      for (let k = 0; k < level.length; k += 32) {
        await Promise.all(
          level.slice(k, k + 32).map(async (e) => {
            try {
              await this.dest.remove(this.destPath(e.path), e.kind === 'dir');
              this.counters.deleted++;
              this.emit({ type: 'log', message: `deleted ${this.destPath(e.path)}` });
            } catch (err) {
              this.fail(e.path, toFerryError(err).toData());
            }
          }),
        );
      }
      this.checkStop();
      i = j;
    }
  }

  /** A big file of metaAlone: its owner, attributes (an exact set) and mode set again (owner first: a chown clears set-id bits), journaled with the new digest. */
  private async refreshHuge(entry: TreeEntry): Promise<void> {
    const previous = this.state.done.get(entry.path)!;
    try {
      await this.dest.setstat(this.destPath(entry.path), { ...pathMeta(this.meta, entry), mode: copyMode(entry.mode, this.umask, this.options.preserve) }, true);
      await this.journal.append([recordOf(entry, { job: previous.job!, meta: this.plan.digestOf(entry) })]);
      this.emit({ type: 'log', message: `${entry.path}: mode, owner${this.meta.xattrs ? ' and attributes' : ''} set again (its bytes are unchanged)` });
      this.counters.files++;
    } catch (err) {
      this.fail(entry.path, toFerryError(err).toData());
    }
  }

  private async send(entries: TreeEntry[]): Promise<void> {
    if (entries.length === 0) return;
    for (const e of entries) this.plan.touch(e.path);
    // Their directories exist before any of them is written.
    await this.makeDirs();
    // A directory that could not be made (found just now): nothing goes in it.
    entries = entries.filter((e) => !this.plan.underFailedDir(e.path));
    if (entries.length === 0) return;
    const wire = entries.map((e) => this.wireEntry(e));
    const batch: WireBatch = { entries, wire, bytes: entries.reduce((n, e) => n + e.size, 0), attempts: 0 };
    await this.sender.submit(batch);
  }

  private wireEntry(e: TreeEntry): BatchEntry {
    // Whole milliseconds on the wire (scp -p keeps whole seconds).
    const times = this.options.preserve ? { mtimeMs: Math.floor(e.mtimeMs), atimeMs: Math.floor(e.atimeMs) } : {};
    const path = this.destPath(e.path);
    const meta = wireMeta(this.meta, e);
    if (e.kind === 'symlink') return { kind: 'symlink', path, target: e.target!, ...times, ...meta };
    return { kind: 'file', path, size: e.size, mode: copyMode(e.mode, this.umask, this.options.preserve), ...times, ...meta };
  }

  /** Makes the directories the walk has found so far (one BATCH); a directory that cannot be made fails the copy. */
  private async makeDirs(): Promise<void> {
    const dirs = this.plan.takePendingDirs();
    if (dirs.length === 0) return;
    for (const d of dirs) this.plan.touch(d.path);
    const wire: BatchEntry[] = dirs.map((d) => ({ kind: 'dir', path: this.destPath(d.path) }));
    const results = await this.dest.apply(wire);
    results.forEach((r, i) => {
      const d = dirs[i]!;
      if (r.ok) {
        this.counters.dirs++;
        return;
      }
      if (d.path === '') throw new FerryError(r.error.code, `cannot create ${this.target.destinationLabel}: ${r.error.message}`, { path: this.target.targetRoot });
      this.plan.dirNotMade(d.path);
      this.fail(d.path, r.error);
    });
  }

  /** Stage 4: a batch's results into the journal, the counters and the failure list. */
  private async collect(batch: WireBatch, results: BatchResult[]): Promise<void> {
    const records: TreeRecord[] = [];
    const ok: TreeEntry[] = [];
    results.forEach((r, i) => {
      const e = batch.entries[i]!;
      if (!r.ok) {
        this.fail(e.path, r.error);
        return;
      }
      ok.push(e);
      records.push(recordOf(e, { ...(r.dstHash ? { hash: r.dstHash } : {}), meta: this.plan.digestOf(e) }));
    });
    // Counted once they are on record: a crash before that sends them again.
    await this.journal.append(records);
    results.forEach((r, i) => {
      const e = batch.entries[i]!;
      if (!r.ok) return;
      if (e.kind === 'symlink') this.records.record(e, { type: 'symlink', target: e.target! });
      else this.records.record(e, r.dstHash ? this.records.wholeFile(e, r.dstHash) : undefined);
    });
    for (const e of ok) {
      if (e.kind === 'symlink') this.counters.symlinks++;
      else {
        this.counters.files++;
        this.counters.bytes += e.size;
      }
    }
  }

  /** Stage 5: a huge file as a job of its own (its ranges over every agent and stream, resumable per range). */
  private async copyHuge(entry: TreeEntry): Promise<void> {
    const loc = this.target.remote;
    const pull = this.target.direction === 'pull';
    const source = pull ? formatLocation({ ...loc, path: sourcePathOf(this.target, entry.path) }) : this.sourcePath(entry.path);
    const destination = pull ? this.destPath(entry.path) : formatLocation({ ...loc, path: remotePathOf(this.target, entry.path) });
    try {
      const summary = await runCopy({
        ...this.request,
        source,
        destination,
        // A file that changed since an earlier run started its job is sent whole again, as any changed file of the tree.
        restartChanged: true,
        // A sync's big file that is there already: only the ranges that differ go (--delta).
        ...(this.plan.sync ? { options: { ...this.request.options, delta: true } } : {}),
        onEvent: (e) => {
          if (e.type === 'done') this.emit({ type: 'log', message: `${entry.path}: ${e.bytes} bytes in ${e.seconds.toFixed(1)} s (job ${e.jobId})` });
          else if (e.type !== 'job.start') this.emit(e);
        },
      });
      // Owner and attributes: the single-file copy keeps mode and times only.
      const meta = pathMeta(this.meta, entry);
      if (Object.keys(meta).length > 0) await this.dest.setstat(this.destPath(entry.path), meta);
      await this.journal.append([recordOf(entry, { job: summary.jobId, meta: this.plan.digestOf(entry) })]);
      if (this.plan.sync) {
        // Its ranges' hashes as its job recorded them (reused ranges included: hashed alike on both sides);
        // where that state cannot be read, the file arrived all the same: only its hash is unknown.
        const ranged = await bigFileEntryOf(this.options.stateDir ?? defaultStateDir(), this.target.jobId, entry.path, summary.jobId).catch(() => undefined);
        if (ranged) {
          const { path: _, ...body } = ranged;
          this.records.record(entry, body);
        } else this.records.record(entry, undefined);
      }
      this.counters.files++;
      this.counters.bytes += summary.movedBytes;
      this.counters.resumedBytes += summary.resumedBytes;
    } catch (err) {
      const e = toFerryError(err);
      // What stops every file stops the tree: the login, the host keys, an interrupt.
      if (['SSH_AUTH_FAILED', 'HOST_KEY_UNKNOWN', 'HOST_KEY_CHANGED', 'INTERRUPTED', 'HELPER_UNTRUSTED'].includes(e.code)) throw e;
      this.fail(entry.path, e.toData());
    }
  }

  private fail(path: string, error: ErrorData): void {
    // A failed write may have left and removed a temporary name there.
    this.plan.touch(path);
    if (!this.stopped && (this.options.failFast || STOPS_THE_COPY.has(error.code))) {
      const fields = { path: error.path ?? path, ...(error.host ? { host: error.host } : {}), ...(error.errno ? { errno: error.errno } : {}) };
      this.stopped = this.options.failFast
        ? new FerryError(error.code, `${error.message} (--fail-fast stopped the copy at its first failure; what arrived is journaled: rerun without --fail-fast to copy the rest)`, fields)
        : new FerryError(error.code, error.message, fields);
    }
    this.counters.failed++;
    if (error.code === 'DEST_DIR_MISSING') this.missingDirFailures++;
    this.failedPaths.add(path);
    this.failures.push(JSON.stringify({ path, code: error.code, message: error.message, ...(error.errno ? { errno: error.errno } : {}) }));
    if (this.failures.length <= FAILURES_SHOWN) this.emit({ type: 'file.failed', path, code: error.code, message: error.message });
    else if (this.failures.length === FAILURES_SHOWN + 1) this.emit({ type: 'warning', message: `more entries failed; the job's failed.ndjson lists them all` });
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
  private sourcePath(treePath: string): string {
    return sourcePathOf(this.target, treePath);
  }

  private sourceLabelOf(treePath: string): string {
    return this.target.direction === 'pull' ? `${targetHostOf(this.target)}:${this.sourcePath(treePath)}` : this.sourcePath(treePath);
  }

  private destPath(treePath: string): string {
    return remotePathOf(this.target, treePath);
  }

  /** failed.ndjson and skipped.ndjson in the job's directory (replaced by each run). */
  async writeLists(jobDir: string): Promise<void> {
    await writePrivateFile(join(jobDir, 'failed.ndjson'), this.failures.map((l) => l + '\n').join(''));
    await writePrivateFile(join(jobDir, 'skipped.ndjson'), this.plan.skips.map((l) => l + '\n').join(''));
  }
}

function targetHostOf(target: TreeTarget): string {
  return target.hosts[0]?.host ?? target.remote.hosts[0] ?? '';
}

function request(req: CopyRequest): { signal?: AbortSignal } {
  return req.signal ? { signal: req.signal } : {};
}

async function* noBytes(): AsyncGenerator<Uint8Array> {}

/**
 * --limit-rate for the batches of this process's own connections: one bucket
 * (core's Pacer) shared by all of them, so the cap holds for the pool as a
 * whole and a connection between batches leaves its share to the others.
 * The huge files that follow the batches are copies of their own (runCopy),
 * paced by their agents at the same cap; they start once the batches are done.
 */
function paceTo(bytesPerSec: number): Pace {
  const pacer = new Pacer(bytesPerSec, Date.now());
  return (bytes) => {
    const waitMs = pacer.take(bytes, Date.now());
    return waitMs > 0 ? new Promise<void>((resolve) => setTimeout(resolve, waitMs)) : undefined;
  };
}
