/**
 * The plan stage of a single-file job: fingerprint the source, resume the
 * earlier run's job (its journal replayed) or start afresh (a new temporary
 * file, job.json, the journal's job record), and with --delta reuse what the
 * old destination file already holds. Ends with the run's counters
 * (RunState) and how many agents the ranges left need.
 */
import { readdir, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, HASH_ALGORITHMS, IntervalSet, JOURNAL_VERSION, RangeHashes, formatBytes, planRanges, workItemCount } from '@ferry/core';
import type { FileIdentity, HashAlgorithm, RangePlan, ResolvedCopyOptions, SourceFingerprint } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import type { CopyRequest } from './copy.js';
import { reuseUnchanged } from './delta.js';
import type { CopyEvent } from './events.js';
import { rangeBytesOf } from './file-context.js';
import type { RunState } from './file-context.js';
import { JOB_FILE_VERSION, fingerprintChanges, foldJournal, localFingerprint, readJobFile, remoteFingerprint, writeJobFile } from './job-state.js';
import type { JobFile, JournalState } from './job-state.js';
import { JournalFile } from './journal-file.js';
import { stopStale } from './nats-server.js';
import { withRemote } from './prepare.js';
import type { PreparedCopy } from './prepare.js';
import { adoptTarget, checkTemp, createTemp, resizeInPlace, useTempPath } from './temp-file.js';

/** What planning needs: the job as prepared, and where its files go. */
export interface PlanInput {
  request: CopyRequest;
  options: ResolvedCopyOptions;
  prep: PreparedCopy;
  jobDir: string;
  emit: (e: CopyEvent) => void;
}

/** The job this run carries on: resumed (`folded` set) or new. */
export interface FilePlan {
  job: JobFile;
  plan: RangePlan;
  /** The earlier run's journal, replayed: set when it is resumed. */
  folded: JournalState | undefined;
  /** The temporary destination file (none in a discard job). */
  temp: FileIdentity | undefined;
  journal: JournalFile;
}

/**
 * Resumes the job in `jobDir` or starts it afresh. The journal, once open, is
 * put in `held` at once, so the caller closes it however planning ends.
 */
export async function planFileJob(input: PlanInput, held: { journal?: JournalFile | undefined }): Promise<FilePlan> {
  const { prep, options, jobDir } = input;
  const fingerprint = prep.direction === 'push' ? await localFingerprint(prep.localPath) : await remoteFingerprint(prep.conn, prep.remotePath);
  const previous = await readJobFile(jobDir);
  /** A new job's temporary file: a fresh random name (prepareCopy drew it). */
  const freshTemp = prep.tempPath;
  if (previous && !options.restart) {
    const resumed = await resumeJob(input, held, previous, fingerprint);
    if (resumed) return resumed;
  }
  return startJob(input, held, previous, freshTemp, fingerprint);
}

/** The earlier run's job, its journal replayed; undefined (journal closed) when it cannot be resumed. */
async function resumeJob(input: PlanInput, held: { journal?: JournalFile | undefined }, job: JobFile, fingerprint: SourceFingerprint): Promise<FilePlan | undefined> {
  const { prep, options, emit } = input;
  // The resumed job's own temporary file, whose name was random: its job file has it.
  if (!prep.discard) useTempPath(prep, job.tempPath);
  const opened = await JournalFile.open(join(input.jobDir, 'journal'));
  held.journal = opened.journal;
  const folded = foldJournal(opened.replay.records);
  if (opened.replay.tornTail) emit({ type: 'log', message: `journal had a torn last record (${opened.replay.records.length} records kept); it was cut off` });
  const why = await resumeBlocker(job, folded, fingerprint, prep, options, input.request.restartChanged === true);
  if (why) {
    emit({ type: 'log', message: `not resuming job ${prep.jobId}: ${why}; starting over` });
    await opened.journal.close();
    held.journal = undefined;
    return undefined;
  }
  return { job, plan: planRanges(job.fileBytes, job.rangeBytes), folded, temp: job.temp, journal: opened.journal };
}

/** A new job: the job directory cleared, a new temporary file, job.json, and the journal's job record. */
async function startJob(input: PlanInput, held: { journal?: JournalFile | undefined }, previous: JobFile | undefined, freshTemp: string, fingerprint: SourceFingerprint): Promise<FilePlan> {
  const { prep, options, jobDir } = input;
  const plan = planRanges(prep.fileBytes, options.rangeBytes);
  await clearJobDir(jobDir);
  // A discard job creates no file; one started over with --restart keeps the identity its job file had.
  const temp = prep.discard ? (options.restart ? previous?.temp : undefined) : await freshTempFile(input, previous, freshTemp);
  const job = newJobFile(input, plan, fingerprint, temp);
  await writeJobFile(jobDir, job);
  const opened = await JournalFile.open(join(jobDir, 'journal'));
  held.journal = opened.journal;
  await opened.journal.append({
    t: 'job',
    v: JOURNAL_VERSION,
    jobId: prep.jobId,
    source: prep.sourceLabel,
    destination: prep.destinationLabel,
    fileBytes: prep.fileBytes,
    rangeBytes: plan.rangeBytes,
    rangeCount: plan.count,
    hash: job.hash,
    fingerprint,
    ...(temp ? { tempPath: prep.tempPath, temp } : {}),
    at: Date.now(),
  });
  return { job, plan, folded: undefined, temp, journal: opened.journal };
}

/** The new job's destination file: a fresh temporary file, or with --inplace the destination itself. */
async function freshTempFile(input: PlanInput, previous: JobFile | undefined, freshTemp: string): Promise<FileIdentity> {
  const { prep, options, emit } = input;
  useTempPath(prep, freshTemp);
  // The earlier run's partial file goes (only its name is removed: whatever it names now is not touched),
  // unless that was the destination itself (--inplace).
  if (previous && previous.tempPath !== freshTemp && previous.tempPath !== prep.targetPath) await removeTemp(prep, previous.tempPath);
  const inPlace = options.inplace ? await adoptTarget(prep) : undefined;
  if (inPlace) {
    useTempPath(prep, prep.targetPath);
    emit({ type: 'log', message: `--inplace: writing the changed ranges straight into ${prep.destinationLabel}` });
    return inPlace;
  }
  if (options.inplace) emit({ type: 'log', message: `--inplace: no regular file with one name at ${prep.destinationLabel} (or its helper cannot resize it): copying through a temporary file` });
  return createTemp(prep);
}

function newJobFile(input: PlanInput, plan: RangePlan, fingerprint: SourceFingerprint, temp: FileIdentity | undefined): JobFile {
  const { request, options, prep } = input;
  return {
    v: JOB_FILE_VERSION,
    jobId: prep.jobId,
    createdAt: Date.now(),
    source: request.source,
    destination: request.destination,
    options: request.options ?? {},
    direction: prep.direction,
    sourceLabel: prep.sourceLabel,
    destinationLabel: prep.destinationLabel,
    targetPath: prep.targetPath,
    tempPath: prep.tempPath,
    remoteHosts: prep.remoteHosts,
    fileBytes: prep.fileBytes,
    rangeBytes: plan.rangeBytes,
    rangeCount: plan.count,
    hash: rangeHashFor(options, prep.conn),
    fingerprint,
    ...(temp ? { temp } : {}),
    ...(request.launchOptions ? { launch: request.launchOptions } : {}),
  };
}

/** Removes the name of an earlier run's temporary file (unlink: a link there is removed, not followed). */
async function removeTemp(prep: PreparedCopy, path: string): Promise<void> {
  if (prep.direction === 'push') await withRemote(prep, (c) => c.unlink(path)).catch(() => {});
  else await unlink(path).catch(() => {});
}

/** Everything under the job directory except the lock, for a fresh start. */
async function clearJobDir(dir: string): Promise<void> {
  await stopStale(join(dir, 'nats', 'nats.pid'));
  for (const name of await readdir(dir)) if (name !== 'lock') await rm(join(dir, name), { recursive: true, force: true });
}

/** Why an earlier run cannot be resumed (start over), or undefined. Throws when it must not be overwritten silently. */
async function resumeBlocker(job: JobFile, folded: JournalState, fingerprint: SourceFingerprint, prep: PreparedCopy, options: ResolvedCopyOptions, restartChanged: boolean): Promise<string | undefined> {
  if (folded.final) return 'its previous run finished';
  if (!folded.job) return 'its journal has no job record';
  if (options.rangeBytes !== undefined && options.rangeBytes !== job.rangeBytes) {
    throw new FerryError('USAGE', `job ${job.jobId} was started with --range-size ${formatBytes(job.rangeBytes)}; rerun without --range-size to resume it, or add --restart to start over`);
  }
  if (options.hashGiven && options.hash !== job.hash) {
    throw new FerryError('USAGE', `job ${job.jobId} was started with --hash ${job.hash}; rerun with --hash ${job.hash} to resume it, or add --restart to start over`);
  }
  const changes = fingerprintChanges(job.fingerprint, fingerprint);
  if (changes.length > 0 && restartChanged) return `the source is not the file it started copying (${changes.join(', ')})`;
  if (changes.length > 0) {
    throw new FerryError(
      'SOURCE_CHANGED',
      `source ${prep.sourceLabel} is not the file job ${job.jobId} started copying (${changes.join(', ')}): refusing to mix two versions; rerun with --restart to copy it from the beginning`,
      { path: prep.sourceLabel },
    );
  }
  if (prep.discard) return undefined; // a discard job's destination is always "there"
  if (!job.temp) return `its partial file ${prep.tempPath} was made by an older ferry, which did not record which file it is`;
  // DEST_REPLACED (the job kept) when something other than the file it created is at its name.
  const found = await checkTemp(prep, job.temp);
  if (found === 'gone') return `its partial file ${prep.tempPath} is gone`;
  if (found.size !== job.fileBytes) return `its partial file ${prep.tempPath} has ${found.size} bytes, not ${job.fileBytes}`;
  return undefined;
}

/**
 * The range hash of a new job: --hash if given; else xxh3, or where the remote
 * side cannot compute it (ferry's Python helper), the first of core's
 * HASH_ALGORITHMS it can (crc32: zlib's, native in Node and Python alike).
 */
export function rangeHashFor(options: ResolvedCopyOptions, conn: RemoteConnection): HashAlgorithm {
  if (options.hashGiven || !conn.hashes || conn.hashes.includes(options.hash)) return options.hash;
  return HASH_ALGORITHMS.find((h) => conn.hashes!.includes(h)) ?? options.hash;
}

/** Refuses a job whose range hash the remote side cannot compute (a resumed xxh3 job on a host now without ferry serve). */
export function checkRemoteHashes(hash: HashAlgorithm, conn: RemoteConnection, given: boolean): void {
  if (!conn.hashes || conn.hashes.includes(hash)) return;
  const can = conn.hashes.join(', ');
  throw new FerryError(
    'USAGE',
    given
      ? `--hash ${hash} needs 'ferry serve' on ${conn.label}; its ${conn.mode} path hashes ${can}: drop --hash, or pass one of those`
      : `this job hashes its ranges with ${hash}, which the ${conn.mode} path on ${conn.label} cannot compute (it has ${can}): install ferry there to resume it, or add --restart to start over`,
    { host: conn.label },
  );
}

/** The run's counters: what the journal says is done, nothing moved yet. */
export function newRunState(planned: FilePlan): RunState {
  const { plan, job, folded } = planned;
  const state: RunState = {
    plan,
    done: folded?.done ?? new IntervalSet(),
    hashes: new RangeHashes(plan.count, job.hash),
    attempts: folded?.attempts ?? new Map(),
    resends: folded?.resends ?? 0,
    resumedBytes: 0,
    movedBytes: 0,
    rangesSent: 0,
    rangesReused: 0,
    reusedBytes: 0,
  };
  for (const [i, h] of folded?.hashes ?? []) if (i < plan.count) state.hashes.set(i, h);
  return state;
}

/**
 * --delta: what the old destination file already holds is copied on its host and
 * journaled first (delta.ts); --inplace: it is where it belongs already. Then an
 * --inplace file takes the copy's size, before the agents write (and check it).
 */
export async function reuseDestination(input: PlanInput, planned: FilePlan, state: RunState): Promise<void> {
  const { prep, options, emit } = input;
  const { plan, temp, journal } = planned;
  /** --inplace: the job writes into the destination file itself. */
  const inPlace = !prep.discard && prep.tempPath === prep.targetPath;
  if (options.delta && !prep.discard && temp && state.done.size < plan.count) {
    const outcome = await reuseUnchanged({
      prep,
      plan,
      hash: planned.job.hash,
      temp,
      inPlace,
      verify: options.verify,
      todo: [...IntervalSet.from(state.done.toArray()).missing(plan.count)],
      emit,
      ...(input.request.signal ? { signal: input.request.signal } : {}),
      onDurable: async (ranges) => {
        const at = Date.now();
        for (const r of ranges) {
          state.done.add(r.range);
          state.hashes.set(r.range, r.hash);
          await journal.append({ t: 'range', range: r.range, attempt: 0, hash: r.hash, bytes: r.bytes, durable: true, agent: 'delta', host: prep.direction === 'push' ? prep.conn.label : 'local', reused: true, at });
        }
      },
    });
    state.rangesReused = outcome.reused;
    state.reusedBytes = outcome.reusedBytes;
    emit({ type: 'delta', oldBytes: outcome.oldBytes ?? null, compared: outcome.compared, reused: outcome.reused, reusedBytes: outcome.reusedBytes, toSend: plan.count - state.done.size });
  }
  if (inPlace && temp) await resizeInPlace(prep, temp);
  state.resumedBytes = rangeBytesOf(plan, state.done) - state.reusedBytes;
}

/**
 * Agents that join by themselves (ferry run) count whatever the plan; launched ones are capped by
 * the work items left (small ranges travel up to 16 to an item), but rank 0's own agent always
 * runs when asked for: a rank that died in an earlier job of a tree does not join this one.
 */
export function agentCountFor(request: CopyRequest, options: ResolvedCopyOptions, plan: RangePlan, state: RunState): number {
  const external = request.externalAgents ?? 0;
  return Math.max(external + Math.min(1, Math.max(0, options.agents - external)), Math.min(options.agents, Math.max(1, workItemCount(plan.count - state.done.size, plan.rangeBytes))));
}
