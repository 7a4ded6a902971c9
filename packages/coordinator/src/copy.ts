/**
 * `ferry cp` end to end: prepare, resume or start the job, run NATS, publish
 * the missing ranges, launch agents, consume completions (verify, journal,
 * re-send), finalize. Every way out (done, failed, interrupted) stops the
 * agents, journals what they made durable, and leaves a job a rerun can resume.
 */
import { mkdir, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { availableParallelism, homedir, hostname, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  BENCH_DISCARD_ENV,
  DEFAULT_DURABLE_BYTES,
  DEFAULT_DURABLE_INTERVAL_MS,
  DEFAULT_MAX_DELIVER,
  FerryError,
  HASH_ALGORITHMS,
  IntervalSet,
  JOURNAL_VERSION,
  MAX_AGENTS,
  AGENT_EXEC_ENV,
  JOB_SPEC_SHA256_ENV,
  agentExecOf,
  completionRejection,
  encodeAgentExec,
  specDigest,
  RangeHashes,
  RateShares,
  MESSAGE_VERSION,
  NATS_TLS_ENV,
  CORRUPT_RANGES_ENV,
  decode,
  decodeAgentEvent,
  decodeCompletions,
  decodeHeartbeat,
  decodeWorkItem,
  encode,
  encodeClientTls,
  encodeMessage,
  StreamTuner,
  formatBytes,
  formatRate,
  benchDiscardRequested,
  parseLocation,
  planRanges,
  rangeAt,
  resolveCopyOptions,
  rootHash,
  splitWorkItem,
  toFerryError,
  workItemId,
  workItemCount,
  workItemsOf,
} from '@ferry/core';
import type { Completion, CopyOptions, FileIdentity, HashAlgorithm, JobSpec, RangeExpectation, RangePlan, ResolvedCopyOptions, SourceFingerprint, TransferMode, WorkItem } from '@ferry/core';
import type { JetStreamPublisher } from '@ferry/agent';
import { LocalLauncher } from '@ferry/launcher';
import type { AgentExit, LaunchedAgents, Launcher } from '@ferry/launcher';
import { diesWithThisProcess } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import type { CopyEvent, CopySummary } from './events.js';
import { JournalFile } from './journal-file.js';
import {
  JOB_FILE_VERSION,
  fingerprintChanges,
  foldJournal,
  jobDirOf,
  localFingerprint,
  lockJob,
  readJobFile,
  remoteFingerprint,
  writeJobFile,
  writeStatus,
} from './job-state.js';
import type { JobFile, JobPhase, JobStatus, JournalState } from './job-state.js';
import { stopStale } from './nats-server.js';
import { runAgentInProcess } from './in-process.js';
import type { CompletionMessage, JobBus } from './job-bus.js';
import { LocalBus } from './local-bus.js';
import { KV_HASH_BLOCK } from './nats-job-bus.js';
import { prepareCopy, remoteSideOf, resolveRemote, withRemote } from './prepare.js';
import { adoptTarget, checkTemp, createTemp, finalizeLocal, finalizeRemote, resizeInPlace, useTempPath } from './temp-file.js';
import { startWarmAgents } from './warm.js';
import { reuseUnchanged } from './delta.js';

/** NATS, loaded once runCopy has started connecting, where a job needs it (bus.ts). */
const loadBus = () => import('./nats-job-bus.js');

/** `0`: a job of one local agent uses NATS all the same, instead of its control plane in memory (A/B benchmarks, tests of the NATS path). */
export const LOCAL_BUS_ENV = 'FERRY_LOCAL_BUS';
import type { WarmStart } from './warm.js';
import type { PreparedCopy } from './prepare.js';

export interface CopyRequest {
  source: string;
  destination: string;
  options?: CopyOptions;
  /** argv that starts an agent, e.g. [process.execPath, cliPath, 'agent']. */
  agentCommand: string[];
  /** @default LocalLauncher */
  launcher?: Launcher;
  onEvent?: (event: CopyEvent) => void;
  signal?: AbortSignal;
  /**
   * Agents started by someone else (the other ranks of `ferry run`) that will
   * join this job; they are told the job through `onRendezvous`.
   */
  externalAgents?: number;
  /** Address the embedded nats-server listens on. @default 127.0.0.1, or 0.0.0.0 when agents run elsewhere */
  natsListen?: string;
  /** Address agents on other nodes use to reach the embedded nats-server. @default this node's first non-loopback IPv4 */
  natsAdvertise?: string;
  /** How agents were launched (CLI options), kept in job.json so `ferry resume` launches them the same way. */
  launchOptions?: Record<string, unknown>;
  /**
   * Called once NATS is ready, before agents are launched: where and how agents
   * join (`tls`: the NATS credential beyond loopback, as FERRY_NATS_TLS holds it;
   * `specSha256`: the digest of the job spec in NATS, which agents check).
   */
  onRendezvous?: (info: { jobId: string; url: string; token: string | undefined; specSha256: string; tls?: string }) => Promise<void>;
  /**
   * A tree's huge file (tree-copy.ts): when the source is no longer the file
   * an earlier run of this job started copying, start the file over rather
   * than refuse. The tree walked the new version and sends it whole, as it
   * sends any file whose size, mtime or inode changed. @default false
   */
  restartChanged?: boolean;
}

/** An agent silent this long counts as gone (agents heartbeat every second). */
const AGENT_SILENCE_MS = 60_000;

/** Publishes at most this many ranges before waiting for their acks. */
const PUBLISH_BATCH = 512;
/** Agents get this long to make their ranges durable and leave before they are killed. */
const AGENT_STOP_GRACE_MS = 15_000;
/** Agent names a run keeps (a job has at most MAX_AGENTS agents; names beyond are not ours). */
const MAX_KNOWN_AGENTS = 4 * MAX_AGENTS;
/** Rejected completions logged one by one, at most. */
const MAX_REJECTIONS_SHOWN = 20;
/** What range hashes look like, whatever the algorithm (crc32: 8 hex digits, xxh3: 16, sha256: 64). */
const HASH_HEX = /^[0-9a-f]{8,64}$/;
/** Completions being journaled at once, at most (their records share fsyncs). */
const COMPLETIONS_IN_FLIGHT = 4096;

/** This node's first non-internal IPv4 address: what agents on other nodes can reach. */
export function firstExternalAddress(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return hostname();
}

export function defaultStateDir(): string {
  const base = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'ferry');
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function publishRanges(bus: JobBus, jobId: string, runTag: string, plan: RangePlan, indices: Iterable<number>, attemptOf: (i: number) => number, stopped: () => boolean = () => false, published?: Uint8Array): Promise<void> {
  let batch: Array<Promise<unknown>> = [];
  for (const item of workItemsOf(jobId, plan, indices, attemptOf)) {
    if (stopped()) break;
    // Marked before it goes out: a completion can only come after.
    if (published) published.fill(1, item.range, item.range + (item.count ?? 1));
    batch.push(bus.publishWork(item, encodeMessage(item), `${workItemId(item)}:${runTag}`));
    if (batch.length >= PUBLISH_BATCH) {
      await Promise.all(batch);
      batch = [];
    }
  }
  await Promise.all(batch);
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

interface RunState {
  plan: RangePlan;
  done: IntervalSet;
  hashes: RangeHashes;
  attempts: Map<number, number>;
  resends: number;
  /** Bytes of ranges already done when this run started. */
  resumedBytes: number;
  /** Bytes of ranges made durable by this run. */
  movedBytes: number;
  /** Ranges the agents made durable in this run. */
  rangesSent: number;
  /** `--delta`: ranges (and their bytes) this run copied from the old destination file. */
  rangesReused: number;
  reusedBytes: number;
}

function rangeBytesOf(plan: RangePlan, set: IntervalSet): number {
  let total = 0;
  for (const [s, e] of set.toArray()) total += Math.min(e * plan.rangeBytes, plan.fileBytes) - s * plan.rangeBytes;
  return total;
}

export async function runCopy(request: CopyRequest): Promise<CopySummary> {
  const options: ResolvedCopyOptions = resolveCopyOptions(request.options, { cores: availableParallelism() });
  const emit = request.onEvent ?? (() => {});
  const started = Date.now();
  const discard = benchDiscardRequested(process.env[BENCH_DISCARD_ENV], parseLocation(request.source), parseLocation(request.destination));
  if (discard) emit({ type: 'log', message: `${BENCH_DISCARD_ENV}=1: control-plane benchmark, no byte is read, moved or written and nothing is created at the destination` });
  // ~/.ssh/config is read once per copy, here: the coordinator, the warm agents and the job's agents all use the result.
  const remoteSide = remoteSideOf(request.source, request.destination);
  const remote = remoteSide ? await resolveRemote(remoteSide, options) : undefined;
  for (const message of remote?.warnings ?? []) emit({ type: 'warning', message });
  // Local agents start now and connect while the copy is prepared (warm.ts).
  const warm = await startWarmAgents(request, options, discard, remote);
  let prep: PreparedCopy;
  try {
    // The warm agents connect once the coordinator's own connection is up, not alongside it:
    // many logins at once slow each other (sshd, the remote shell's start-up files).
    const preparing = prepareCopy(request.source, request.destination, options, {
      ...(request.signal ? { signal: request.signal } : {}),
      discard,
      onConnected: (conn, host) => warm?.connect(conn, host),
      ...(remote ? { remote } : {}),
    });
    // While the remote side logs in and starts its helper (an error shows where transfer() loads it),
    // where the job will use NATS: agents in other processes or elsewhere.
    if (options.agents > 1 || options.natsUrl !== undefined || (request.externalAgents ?? 0) > 0 || (request.launcher && request.launcher.name !== 'local') || process.env[LOCAL_BUS_ENV] === '0') loadBus().catch(() => {});
    prep = await preparing;
  } catch (err) {
    await warm?.dismiss();
    throw err;
  }
  const fallback = fallbackWarning(prep.conn);
  if (fallback) emit({ type: 'warning', message: fallback, host: prep.conn.label });
  const stateDir = options.stateDir ?? defaultStateDir();
  const jobDir = jobDirOf(stateDir, prep.jobId);
  let unlock: (() => Promise<void>) | undefined;
  let journal: JournalFile | undefined;
  let phase: JobPhase = 'running';
  let lastStatus: JobStatus | undefined;
  const shutdowns: Array<Promise<unknown>> = [];
  try {
    await mkdir(jobDir, { recursive: true, mode: 0o700 });
    unlock = await lockJob(jobDir);
    const fingerprint = prep.direction === 'push' ? await localFingerprint(prep.localPath) : await remoteFingerprint(prep.conn, prep.remotePath);

    // Resume or start afresh.
    let job = await readJobFile(jobDir);
    const previous = job;
    /** A new job's temporary file: a fresh random name (prepareCopy drew it). */
    const freshTemp = prep.tempPath;
    let folded: JournalState | undefined;
    if (job && !options.restart) {
      // The resumed job's own temporary file, whose name was random: its job file has it.
      if (!prep.discard) useTempPath(prep, job.tempPath);
      const opened = await JournalFile.open(join(jobDir, 'journal'));
      journal = opened.journal;
      folded = foldJournal(opened.replay.records);
      if (opened.replay.tornTail) emit({ type: 'log', message: `journal had a torn last record (${opened.replay.records.length} records kept); it was cut off` });
      const why = await resumeBlocker(job, folded, fingerprint, prep, options, request.restartChanged === true);
      if (why) {
        emit({ type: 'log', message: `not resuming job ${prep.jobId}: ${why}; starting over` });
        await journal.close();
        journal = undefined;
        job = undefined;
        folded = undefined;
      }
    }
    let temp: FileIdentity | undefined = job?.temp;
    let plan: RangePlan;
    if (job && folded) {
      plan = planRanges(job.fileBytes, job.rangeBytes);
    } else {
      plan = planRanges(prep.fileBytes, options.rangeBytes);
      await clearJobDir(jobDir);
      if (!prep.discard) {
        useTempPath(prep, freshTemp);
        // The earlier run's partial file goes (only its name is removed: whatever it names now is not touched),
        // unless that was the destination itself (--inplace).
        if (previous && previous.tempPath !== freshTemp && previous.tempPath !== prep.targetPath) await removeTemp(prep, previous.tempPath);
        const inPlace = options.inplace ? await adoptTarget(prep) : undefined;
        if (inPlace) {
          useTempPath(prep, prep.targetPath);
          temp = inPlace;
          emit({ type: 'log', message: `--inplace: writing the changed ranges straight into ${prep.destinationLabel}` });
        } else {
          if (options.inplace) emit({ type: 'log', message: `--inplace: no regular file with one name at ${prep.destinationLabel} (or its helper cannot resize it): copying through a temporary file` });
          temp = await createTemp(prep);
        }
      }
      job = {
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
      await writeJobFile(jobDir, job);
      const opened = await JournalFile.open(join(jobDir, 'journal'));
      journal = opened.journal;
      await journal.append({
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
    }
    const hash = job.hash;
    checkRemoteHashes(hash, prep.conn, options.hashGiven);
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
    /** --inplace: the job writes into the destination file itself. */
    const inPlace = !prep.discard && prep.tempPath === prep.targetPath;
    if (options.delta && !prep.discard && temp && state.done.size < plan.count) {
      // --delta: what the old destination file already holds is copied on its host and journaled first (delta.ts);
      // --inplace: it is where it belongs already.
      const outcome = await reuseUnchanged({
        prep,
        plan,
        hash: job.hash,
        temp,
        inPlace,
        verify: options.verify,
        todo: [...IntervalSet.from(state.done.toArray()).missing(plan.count)],
        emit,
        ...(request.signal ? { signal: request.signal } : {}),
        onDurable: async (ranges) => {
          const at = Date.now();
          for (const r of ranges) {
            state.done.add(r.range);
            state.hashes.set(r.range, r.hash);
            await journal!.append({ t: 'range', range: r.range, attempt: 0, hash: r.hash, bytes: r.bytes, durable: true, agent: 'delta', host: prep.direction === 'push' ? prep.conn.label : 'local', reused: true, at });
          }
        },
      });
      state.rangesReused = outcome.reused;
      state.reusedBytes = outcome.reusedBytes;
      emit({ type: 'delta', oldBytes: outcome.oldBytes ?? null, compared: outcome.compared, reused: outcome.reused, reusedBytes: outcome.reusedBytes, toSend: plan.count - state.done.size });
    }
    // The file takes the copy's size once its old ranges are hashed, before the agents write (and check it).
    if (inPlace && temp) await resizeInPlace(prep, temp);
    // Agents that join by themselves (ferry run) count whatever the plan; launched ones are capped by
    // the work items left (small ranges travel up to 16 to an item), but rank 0's own agent always
    // runs when asked for: a rank that died in an earlier job of a tree does not join this one.
    const external = request.externalAgents ?? 0;
    const agents = Math.max(external + Math.min(1, Math.max(0, options.agents - external)), Math.min(options.agents, Math.max(1, workItemCount(plan.count - state.done.size, plan.rangeBytes))));
    const shape = { streams: options.firstStreams };
    const resumed = folded !== undefined;
    state.resumedBytes = rangeBytesOf(plan, state.done) - state.reusedBytes;

    emit({
      type: 'job.start',
      jobId: prep.jobId,
      source: prep.sourceLabel,
      destination: prep.destinationLabel,
      bytes: prep.fileBytes,
      ranges: plan.count,
      rangeBytes: plan.rangeBytes,
      agents: plan.count === 0 ? 0 : agents,
      streams: options.firstStreams,
      maxStreams: options.streams,
      tuning: options.tuneStreams,
      mode: prep.mode,
      hash,
      stateDir: jobDir,
      resumed,
      rangesDone: state.done.size,
      bytesDone: state.resumedBytes,
    });

    // Counters that follow from the journal are recomputed on every save; what the agents
    // report (rates, per node and host) is kept from the last save that had it.
    const saveStatus = async (extra: Partial<JobStatus> = {}) => {
      lastStatus = {
        jobId: prep.jobId,
        source: prep.sourceLabel,
        destination: prep.destinationLabel,
        fileBytes: prep.fileBytes,
        ranges: plan.count,
        rangesInFlight: 0,
        rate: 0,
        agents: [],
        nodes: [],
        hosts: [],
        errors: 0,
        ...lastStatus,
        ...extra,
        phase,
        pid: process.pid,
        updatedAt: Date.now(),
        bytesDone: rangeBytesOf(plan, state.done),
        rangesDone: state.done.size,
        rangesPending: extra.rangesPending ?? Math.max(0, plan.count - state.done.size - (extra.rangesInFlight ?? 0)),
        resends: state.resends,
      };
      if (phase !== 'running') {
        lastStatus.rangesInFlight = 0;
        lastStatus.rate = 0;
      }
      await writeStatus(jobDir, lastStatus).catch(() => {});
    };
    await saveStatus();

    if (state.done.size < plan.count) {
      await transfer({ prep, plan, options, agents, jobDir, state, request, emit, journal: journal!, hash, saveStatus, resumed, warm, shutdowns, shape, temp });
    }

    // The source must be what it was when the job started, or the copy mixes two versions.
    const now = prep.direction === 'push' ? await localFingerprint(prep.localPath) : await withRemote(prep, (c) => remoteFingerprint(c, prep.remotePath));
    const changes = fingerprintChanges(job.fingerprint, now);
    if (changes.length > 0) {
      throw new FerryError(
        'SOURCE_CHANGED',
        `source ${prep.sourceLabel} changed during the copy (${changes.join(', ')}): nothing was renamed into place; rerun with --restart to copy the new version`,
        { path: prep.sourceLabel },
      );
    }

    if (prep.discard) {
      // Nothing was written, so nothing is renamed into place.
    } else if (prep.direction === 'push') await finalizeRemote(prep, temp!, options.preserve);
    else await finalizeLocal(prep, temp!, options.preserve);

    const root = rootHash(hash, state.hashes.values());
    await journal!.append({ t: 'final', rootHash: root, at: Date.now() });
    const seconds = (Date.now() - started) / 1000;
    const summary: CopySummary = {
      jobId: prep.jobId,
      source: prep.sourceLabel,
      destination: prep.destinationLabel,
      bytes: prep.fileBytes,
      movedBytes: state.movedBytes,
      resumedBytes: state.resumedBytes,
      reusedBytes: state.reusedBytes,
      rangesSent: state.rangesSent,
      rangesReused: state.rangesReused,
      seconds,
      mbps: seconds > 0 ? state.movedBytes / 1e6 / seconds : 0,
      ranges: plan.count,
      resends: state.resends,
      hash,
      rootHash: root,
      mode: plan.count === 0 ? 'none' : prep.mode,
      agents: plan.count === 0 ? 0 : agents,
      streams: shape.streams,
      tuned: options.tuneStreams,
    };
    await writeFile(join(jobDir, 'manifest.json'), JSON.stringify({ ...summary, rangeBytes: plan.rangeBytes, rangeHashes: state.hashes }, null, 1) + '\n', { mode: 0o600 });
    phase = 'done';
    await saveStatus();
    emit({ type: 'done', ...summary });
    return summary;
  } catch (err) {
    const e = toFerryError(err);
    if (lastStatus) {
      phase = e.code === 'INTERRUPTED' ? 'interrupted' : 'failed';
      await writeStatus(jobDir, { ...lastStatus, phase, updatedAt: Date.now(), error: { code: e.code, message: e.message } }).catch(() => {});
    }
    throw e;
  } finally {
    await warm?.dismiss().catch(() => {});
    await Promise.all(shutdowns);
    await journal?.close().catch(() => {});
    await unlock?.().catch(() => {});
    prep.conn.close();
  }
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
function checkRemoteHashes(hash: HashAlgorithm, conn: RemoteConnection, given: boolean): void {
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

/** What the data path cost: how much slower each fallback is than the path it replaces, as measured (bench/README.md, first-contact). */
const FALLBACK_COST: Record<TransferMode, string> = {
  helper: '',
  python: "ferry's python helper",
  sftp: 'SFTP, typically a third as fast as ferry serve',
};

/**
 * One line for a connection that took a slower data path than the best
 * (`--mode auto`): the host, what was missing, what it costs and the fix.
 */
export function fallbackWarning(conn: RemoteConnection): string | undefined {
  const tried = conn.fallbacks ?? [];
  if (tried.length === 0) return undefined;
  const missing = tried.map((f) => f.reason).join('; ');
  const fix = conn.mode === 'sftp' ? "install ferry there, or python3, or pass --remote-cmd" : 'install ferry there or pass --remote-cmd';
  return `${conn.label}: ${missing}; using ${FALLBACK_COST[conn.mode]}: ${fix}`;
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

interface TransferContext {
  prep: PreparedCopy;
  plan: RangePlan;
  options: ResolvedCopyOptions;
  agents: number;
  jobDir: string;
  state: RunState;
  request: CopyRequest;
  emit: (e: CopyEvent) => void;
  journal: JournalFile;
  hash: string;
  saveStatus: (extra?: Partial<JobStatus>) => Promise<void>;
  /** Continuing an earlier run (its NATS state may hold completions to recover). */
  resumed: boolean;
  /** Local agents started ahead of the job, waiting to be handed it. */
  warm: WarmStart | undefined;
  /**
   * Shutdowns that may end after transfer() returns (the embedded nats-server's
   * exit, ~70 ms, overlaps the destination's finalization); awaited before the
   * job's lock is released.
   */
  shutdowns: Array<Promise<unknown>>;
  /** Streams per agent in use now (the tuner changes it): what the summary reports. */
  shape: { streams: number };
  /** The temporary destination file the job created (none in a discard job). */
  temp: FileIdentity | undefined;
}

/** The control plane a transfer uses: memory when its one agent runs in this process, else NATS. */
async function openJobBus(ctx: TransferContext): Promise<JobBus> {
  const { request, options } = ctx;
  if (useLocalBus(ctx)) return new LocalBus();
  const remoteAgents = (request.externalAgents ?? 0) > 0 || (request.launcher !== undefined && request.launcher.name !== 'local');
  const listen = request.natsListen ?? (remoteAgents ? '0.0.0.0' : '127.0.0.1');
  const advertise = request.natsAdvertise ?? (listen === '0.0.0.0' ? firstExternalAddress() : listen);
  const { openNatsJobBus } = await import('./nats-job-bus.js');
  return openNatsJobBus({
    jobId: ctx.prep.jobId,
    jobDir: ctx.jobDir,
    url: options.natsUrl,
    token: options.natsUrl ? process.env.FERRY_NATS_TOKEN : undefined,
    listen,
    advertise,
    fresh: !ctx.resumed,
  });
}

/**
 * A job's one agent runs in this process (local launcher, nobody joining, no
 * --nats): its control plane can be memory. FERRY_LOCAL_BUS=0 asks for NATS
 * all the same (for A/B benchmarks and tests of the NATS path).
 */
export function useLocalBus(ctx: Pick<TransferContext, 'agents' | 'request' | 'options'>): boolean {
  if (process.env[LOCAL_BUS_ENV] === '0') return false;
  const { request, options } = ctx;
  return ctx.agents === 1 && (request.externalAgents ?? 0) === 0 && (request.launcher === undefined || request.launcher.name === 'local') && options.natsUrl === undefined && !request.onRendezvous;
}

/** The part with the control plane and agents; returns once every range is durable and verified. */
async function transfer(ctx: TransferContext): Promise<void> {
  const { prep, plan, options, state, request, emit, journal } = ctx;
  const cleanup: Array<() => Promise<unknown> | unknown> = [];
  const runTag = Date.now().toString(36);
  const bus = await openJobBus(ctx);
  /** Every range is done and journaled (transfer() returns normally). */
  let journaled = false;
  try {
    const journalRange = async (c: Completion) => {
      state.done.add(c.range);
      state.hashes.set(c.range, c.srcHash);
      await journal.append({ t: 'range', range: c.range, attempt: c.attempt, hash: c.srcHash, bytes: c.length, durable: true, agent: c.agent, host: c.remoteHost, at: Date.now() });
    };
    if (ctx.resumed) {
      // Completions an earlier run stored but did not journal (its coordinator died first),
      // and ranges only its KV mirror has (it lags the journal by a second).
      const { completions, mirrored } = await bus.recover(plan);
      let recovered = 0;
      for (const c of completions) {
        if (c.error || !c.durable || c.srcHash !== c.dstHash || !Number.isInteger(c.range) || c.range < 0 || c.range >= plan.count || state.done.has(c.range)) continue;
        // Its claims must match the plan's range (issue #30): a forged one would mark it done without data.
        const r = rangeAt(plan, c.range);
        if (c.offset !== r.offset || c.length !== r.length || typeof c.srcHash !== 'string' || !HASH_HEX.test(c.srcHash)) continue;
        await journalRange(c);
        recovered++;
      }
      for (const [range, hash] of mirrored) {
        if (state.done.has(range)) continue;
        state.done.add(range);
        state.hashes.set(range, hash);
        await journal.append({ t: 'range', range, attempt: 0, hash, bytes: rangeAt(plan, range).length, durable: true, agent: 'kv-mirror', host: '', at: Date.now() });
        recovered++;
      }
      if (recovered > 0) {
        emit({ type: 'log', message: `recovered ${recovered} ranges an earlier run completed but had not journaled` });
        state.resumedBytes = rangeBytesOf(plan, state.done) - state.reusedBytes;
      }
    }

    const spec: JobSpec = {
      v: MESSAGE_VERSION,
      jobId: prep.jobId,
      direction: prep.direction,
      mode: prep.mode,
      localPath: prep.localPath,
      remotePath: prep.remotePath,
      ...(ctx.temp ? { tempFile: ctx.temp } : {}),
      remoteHosts: prep.remoteHosts,
      remoteCommand: options.remoteCommand,
      fileBytes: plan.fileBytes,
      rangeBytes: plan.rangeBytes,
      rangeCount: plan.count,
      hash: ctx.hash as JobSpec['hash'],
      streams: options.streams,
      activeStreams: options.firstStreams,
      windowBytes: options.windowBytes,
      connectionBytesPerSec: options.limitBytesPerSec ? Math.max(1, Math.floor(options.limitBytesPerSec / (ctx.agents * options.streams))) : 0,
      maxConnectionsPerHost: options.maxConnectionsPerHost,
      agentCount: ctx.agents,
      ackWaitMs: options.ackWaitMs,
      maxDeliver: DEFAULT_MAX_DELIVER,
      durableEveryRanges: Math.max(1, Math.ceil(DEFAULT_DURABLE_BYTES / plan.rangeBytes)),
      durableIntervalMs: DEFAULT_DURABLE_INTERVAL_MS,
      ssh: prep.ssh,
      createdAt: Date.now(),
      ...(prep.discard ? { discard: true } : {}),
      ...(options.directIo === 'off' ? {} : { directIo: options.directIo === 'on' ? true : ('auto' as const) }),
      ...(options.verify ? { verify: true } : {}),
    };
    await bus.start(spec);
    if (state.done.size === plan.count) {
      journaled = true;
      return;
    }

    let settle!: { resolve: () => void; reject: (err: FerryError) => void };
    const outcome = new Promise<void>((resolve, reject) => {
      settle = { resolve, reject };
    });
    outcome.catch(() => {});
    let finished = false;
    const fail = (err: FerryError) => {
      if (finished) return;
      finished = true;
      settle.reject(err);
    };
    const succeed = () => {
      if (finished) return;
      finished = true;
      settle.resolve();
    };
    const onAbort = () => fail(new FerryError('INTERRUPTED', 'interrupted'));
    if (request.signal?.aborted) onAbort();
    request.signal?.addEventListener('abort', onAbort, { once: true });
    cleanup.push(() => request.signal?.removeEventListener('abort', onAbort));

    // --limit-rate: the cap over the connections moving data across the job, sent to every agent
    // whenever an agent's count changes it (and kept for agents that join late), and once a
    // second in case a message was lost.
    const shares = options.limitBytesPerSec ? new RateShares(options.limitBytesPerSec) : undefined;
    let sharePublished = spec.connectionBytesPerSec;
    const publishShare = (always = false) => {
      if (!shares) return;
      const share = shares.perConnection(Date.now());
      if (share === sharePublished && !always) return;
      sharePublished = share;
      void bus.control(encodeMessage({ v: MESSAGE_VERSION, job: prep.jobId, type: 'rate', connectionBytesPerSec: share }), 'rate');
    };

    // Agent reports: heartbeats for progress, status, stream tuning and rate shares, events for errors.
    const heartbeats = new Map<string, { node: string; bytes: number; inFlight: number; pending: number; errors: number; rate: number; connected: number; utilization: number | undefined; idleCores: number | undefined; at: number; seenAt: number }>();
    let lastAgentError: FerryError | undefined;
    /**
     * Agents of this run, as they announced themselves (agent.started, heartbeats): a
     * completion from any other name is not acted on. Bounded: a flood of names is not ours.
     */
    const knownAgents = new Set<string>();
    const knowAgent = (agent: unknown) => {
      if (typeof agent === 'string' && agent.length > 0 && agent.length <= 256 && knownAgents.size < MAX_KNOWN_AGENTS) knownAgents.add(agent);
    };
    bus.onHeartbeat((data: Uint8Array) => {
      try {
        const hb = decodeHeartbeat(data, prep.jobId);
        knowAgent(hb.agent);
        const prev = heartbeats.get(hb.agent);
        const rate = prev && hb.at > prev.at ? ((hb.bytes - prev.bytes) * 1000) / (hb.at - prev.at) : 0;
        heartbeats.set(hb.agent, {
          node: hb.node,
          bytes: hb.bytes,
          inFlight: hb.inFlight,
          pending: hb.pending ?? 0,
          errors: hb.errors,
          rate: prev ? 0.5 * prev.rate + 0.5 * rate : rate,
          connected: hb.connected ?? 0,
          utilization: hb.utilization,
          idleCores: hb.idleCores,
          at: hb.at,
          seenAt: Date.now(),
        });
        if (shares && typeof hb.active === 'number') {
          shares.report(hb.agent, hb.active, Date.now());
          publishShare();
        }
      } catch {
        // a stray or foreign message: ignore
      }
    });
    bus.onEvent((data: Uint8Array) => {
      try {
        const ev = decodeAgentEvent(data, prep.jobId);
        if (ev.type === 'agent.started') knowAgent(ev.agent);
        if (ev.type === 'agent.started') emit({ type: 'agent.start', agent: ev.agent, node: ev.node, pid: ev.pid, index: ev.index });
        if (ev.type === 'agent.active' && shares && typeof ev.active === 'number') {
          shares.report(ev.agent, ev.active, Date.now());
          publishShare();
        }
        if (ev.type === 'agent.error') {
          emit({ type: 'agent.error', agent: ev.agent, code: ev.error.code, message: ev.error.message, fatal: ev.fatal });
          if (ev.fatal) lastAgentError = FerryError.fromData(ev.error);
        }
      } catch {
        // ignore
      }
    });
    // A range whose deliveries ran out without any agent reporting why (agents crashing on it).
    bus.onMaxDeliveries((item: WorkItem | undefined, deliveries: number) => {
      void (async () => {
        let ranges: WorkItem[] = [];
        try {
          ranges = item ? splitWorkItem(item, plan.rangeBytes) : [];
        } catch {
          // malformed: report with what there is
        }
        // Give the agent's own report (with the cause) a moment to arrive first.
        await sleep(2000);
        if (ranges.length > 0 && ranges.every((r) => state.done.has(r.range))) return;
        const count = item?.count ?? 1;
        const what = !item ? 'range ?' : `${count > 1 ? `ranges ${item.range}-${item.range + count - 1}` : `range ${item.range}`} (bytes ${item.offset}-${item.offset + item.length})`;
        fail(
          new FerryError(
            'RANGE_FAILED',
            `${what} ${count > 1 ? 'were' : 'was'} handed out ${deliveries} times without completing (agents crashing or losing their connections on it): see the agents' messages with -v`,
            item ? { range: item.range } : {},
          ),
        );
      })().catch(() => {});
    });

    // Stream tuning: the tuner watches the rate as connections are added (core's tuner.ts).
    const tuner = options.tuneStreams ? new StreamTuner({ first: options.firstStreams, max: options.streams, agents: ctx.agents }) : undefined;
    ctx.shape.streams = options.firstStreams;
    const tune = (now: number, moved: number) => {
      if (!tuner || finished) return;
      let connected = 0;
      let utilization: number | undefined;
      let idleCores: number | undefined;
      for (const hb of heartbeats.values()) {
        connected += hb.connected;
        if (hb.utilization !== undefined) utilization = Math.max(utilization ?? 0, hb.utilization);
        if (hb.idleCores !== undefined) idleCores = Math.min(idleCores ?? Infinity, hb.idleCores);
      }
      const next = tuner.sample({ at: now, bytes: moved, connected, ...(utilization === undefined ? {} : { utilization }), ...(idleCores === undefined ? {} : { idleCores }) });
      if (next === undefined) return;
      const rates = tuner.steps.map((step) => `${step.streams}: ${formatRate(step.rate)}`).join(', ');
      emit({ type: 'log', message: `streams per agent ${ctx.shape.streams} -> ${next} (measured ${rates})` });
      ctx.shape.streams = next;
      void bus.control(encodeMessage({ v: MESSAGE_VERSION, job: prep.jobId, type: 'streams', streams: next }), 'streams');
    };

    // Progress and status, once a second; the journal's mirror too where the bus keeps one.
    let lastBytes = 0;
    let lastAt = Date.now();
    let rate = 0;
    const hostBytes = new Map<string, number>();
    const hostRecent = new Map<string, Array<{ at: number; bytes: number }>>();
    const perNode = () => {
      const nodes = new Map<string, { node: string; agents: number; bytes: number; rate: number }>();
      for (const hb of heartbeats.values()) {
        const n = nodes.get(hb.node) ?? { node: hb.node, agents: 0, bytes: 0, rate: 0 };
        n.agents++;
        n.bytes += hb.bytes;
        n.rate += hb.rate;
        nodes.set(hb.node, n);
      }
      return [...nodes.values()];
    };
    let kvRuns = '';
    const dirtyBlocks = new Set<number>();
    const mirror = async () => {
      if (!bus.keep) return;
      const runs = JSON.stringify(state.done.toArray());
      if (runs !== kvRuns) {
        kvRuns = runs;
        await bus.keep('done', encode({ runs: state.done.toArray(), at: Date.now() }));
      }
      for (const b of [...dirtyBlocks]) {
        dirtyBlocks.delete(b);
        await bus.keep(`hashes.${b}`, encode(state.hashes.slice(b * KV_HASH_BLOCK, (b + 1) * KV_HASH_BLOCK)));
      }
    };
    const tick = () => {
      let moved = 0;
      let busy = 0;
      let inFlight = 0;
      let errors = 0;
      for (const hb of heartbeats.values()) {
        moved += hb.bytes;
        inFlight += hb.inFlight;
        errors += hb.errors;
        if (hb.inFlight > 0) busy++;
      }
      const now = Date.now();
      const instant = ((moved - lastBytes) * 1000) / Math.max(1, now - lastAt);
      rate = rate === 0 ? instant : 0.7 * rate + 0.3 * instant;
      lastBytes = moved;
      lastAt = now;
      tune(now, moved);
      const done = rangeBytesOf(plan, state.done);
      const shown = Math.min(plan.fileBytes, Math.max(done, state.resumedBytes + moved));
      emit({
        type: 'progress',
        bytes: shown,
        total: plan.fileBytes,
        rangesDone: state.done.size,
        ranges: plan.count,
        rate,
        etaSeconds: rate > 0 ? (plan.fileBytes - shown) / rate : null,
        agentsBusy: busy,
        agents: ctx.agents,
      });
      void ctx.saveStatus({
        rangesInFlight: inFlight,
        rangesPending: Math.max(0, plan.count - state.done.size - inFlight),
        rate,
        errors,
        agents: [...heartbeats.entries()].map(([agent, hb]) => ({ agent, node: hb.node, bytes: hb.bytes, inFlight: hb.inFlight, errors: hb.errors, rate: hb.rate })),
        nodes: perNode(),
        hosts: [...hostBytes.entries()].map(([host, bytes]) => {
          // Rate per remote host over the last 10 s of durable ranges.
          const recent = (hostRecent.get(host) ?? []).filter((x) => now - x.at < 10_000);
          hostRecent.set(host, recent);
          return { host, bytes, rate: recent.reduce((n, x) => n + x.bytes, 0) / 10 };
        }),
      });
      void mirror();
      publishShare(true);
    };
    const progressTimer = setInterval(tick, 1000);
    cleanup.push(() => clearInterval(progressTimer));

    // Completions: verify, journal, re-send.
    const feed = await bus.completions();
    cleanup.push(() => feed.stop());
    /** Ranges handed out in this run (their first work item published). */
    const published = new Uint8Array(plan.count);
    const publishWork = (indices: Iterable<number>, attemptOf: (i: number) => number, stopped: () => boolean = () => false) => publishRanges(bus, prep.jobId, runTag, plan, indices, attemptOf, stopped, published);
    const expectation: RangeExpectation = {
      plan,
      isDone: (range) => state.done.has(range),
      isPublished: (range) => published[range] === 1,
      attemptOf: (range) => state.attempts.get(range) ?? 0,
      isKnownAgent: (agent) => knownAgents.has(agent),
    };
    let rejectedClaims = 0;
    const handle = async (c: Completion) => {
      // A completion's claims must match a range this coordinator has outstanding (issue #30):
      // anyone who can write to the bus could otherwise mark ranges done without their data.
      const rejection = completionRejection(c, expectation, HASH_HEX);
      if (rejection !== undefined) {
        // A duplicate (an item redelivered after a lost ack, an older attempt) changes nothing.
        if (rejection.kind === 'stale') return;
        rejectedClaims++;
        if (rejectedClaims <= MAX_REJECTIONS_SHOWN) emit({ type: 'warning', message: `ignoring a completion from agent '${String(c.agent).slice(0, 80)}': ${rejection.reason}${rejectedClaims === MAX_REJECTIONS_SHOWN ? ' (further ones are not shown)' : ''}` });
        if (rejection.kind === 'forged') return;
        // The range is still outstanding, and its real completion could be this one (from an
        // agent not heard of yet): it is done again rather than lost.
        const attempt = (state.attempts.get(c.range) ?? 0) + 1;
        state.attempts.set(c.range, attempt);
        await journal.append({ t: 'resend', range: c.range, attempt, reason: 'completion from an agent not of this job', at: Date.now() });
        await publishWork([c.range], () => attempt);
        return;
      }
      if (c.error) {
        fail(FerryError.fromData({ ...c.error, range: c.range }));
        return;
      }
      const current = state.attempts.get(c.range) ?? 0;
      if (c.srcHash !== c.dstHash) {
        // What differed: the bytes as they arrived (transit), or as the storage gave them back (--verify).
        const found = c.readBack === true ? `destination ${c.dstHash} as read back from storage` : `destination ${c.dstHash}`;
        // Whatever attempt it was, its bytes may be the last ones written: the range is suspect again.
        const wasDone = state.done.delete(c.range);
        if (wasDone) state.hashes.delete(c.range);
        else if (c.attempt < current) return; // a newer attempt is already on its way
        if (current >= options.maxResends) {
          fail(
            new FerryError(
              'VERIFY_FAILED',
              `range ${c.range} (bytes ${c.offset}-${c.offset + c.length}) failed verification ${current + 1} time${current === 0 ? '' : 's'} via ${c.remoteHost} (source ${c.srcHash}, ${found}): check memory, disks and network of ${c.agent} and ${c.remoteHost}`,
              { range: c.range, host: c.remoteHost },
            ),
          );
          return;
        }
        const attempt = current + 1;
        state.attempts.set(c.range, attempt);
        state.resends++;
        emit({ type: 'range.resend', range: c.range, attempt, reason: `hash mismatch (source ${c.srcHash}, ${found}) via ${c.agent}` });
        await journal.append({ t: 'resend', range: c.range, attempt, reason: c.readBack === true ? 'hash mismatch on reading back' : 'hash mismatch', at: Date.now() });
        await publishWork([c.range], () => attempt);
        return;
      }
      if (!c.durable || state.done.has(c.range)) return;
      await journalRange(c);
      state.movedBytes += c.length;
      state.rangesSent++;
      hostBytes.set(c.remoteHost, (hostBytes.get(c.remoteHost) ?? 0) + c.length);
      // Per host, one entry per second of durable ranges (not one per range: there may be thousands a second).
      const recent = hostRecent.get(c.remoteHost) ?? [];
      const last = recent.at(-1);
      const at = Date.now();
      if (last && at - last.at < 1000) last.bytes += c.length;
      else recent.push({ at, bytes: c.length });
      hostRecent.set(c.remoteHost, recent);
      dirtyBlocks.add(Math.floor(c.range / KV_HASH_BLOCK));
      emit({ type: 'range.done', range: c.range, bytes: c.length, agent: c.agent, host: c.remoteHost, hash: c.srcHash, seconds: (c.finishedAt - c.startedAt) / 1000, finishedAt: c.finishedAt });
      if (state.done.size === plan.count) succeed();
    };
    // Completions are handled in arrival order, but not one at a time: each one's decisions
    // (done, re-send) are taken at once and its journal record queued, and the next one is
    // taken while the record is written, so the journal's group commit writes many records
    // per fsync. A completion's message is acked once its record is on disk.
    /** A completion that could not be handled: a malformed one is skipped (and acked), anything else fails the job. */
    const unhandled = (m: CompletionMessage, err: unknown) => {
      if (err instanceof FerryError && err.code === 'PROTOCOL') {
        emit({ type: 'log', message: `ignoring a malformed completion: ${err.message}` });
        m.ack();
      } else fail(toFerryError(err));
    };
    const consuming = (async () => {
      // Messages being handled, oldest first, with how many completions each carries.
      const window: Array<{ done: Promise<void>; count: number }> = [];
      let inWindow = 0;
      try {
        for await (const m of feed.messages) {
          let cs: Completion[];
          try {
            cs = decodeCompletions(m.data, prep.jobId);
          } catch (err) {
            unhandled(m, err);
            continue;
          }
          // A batch message is acked once every one of its completions is handled.
          const done = cs.length === 1 ? handle(cs[0]!) : Promise.all(cs.map(handle));
          window.push({ done: done.then(() => m.ack(), (err: unknown) => unhandled(m, err)), count: cs.length });
          inWindow += cs.length;
          while (inWindow >= COMPLETIONS_IN_FLIGHT) {
            const oldest = window.shift()!;
            await oldest.done;
            inWindow -= oldest.count;
          }
        }
      } catch (err) {
        fail(toFerryError(err));
      } finally {
        await Promise.all(window.map((w) => w.done));
      }
    })();

    // The plan is published while the agents start and work: they take ranges as they come,
    // rather than wait for a million-range plan to be stored first. (The ranges missing now:
    // a snapshot, since completions change the done set meanwhile.)
    let stopPublishing = false;
    const missing = IntervalSet.from(state.done.toArray()).missing(plan.count);
    const publishing = publishWork(missing, (i) => state.attempts.get(i) ?? 0, () => stopPublishing || finished).catch((err: unknown) => fail(toFerryError(err)));
    cleanup.push(async () => {
      stopPublishing = true;
      await publishing;
    });

    const joinTls = bus.join?.tls ? encodeClientTls(bus.join.tls) : undefined;
    const specSha256 = specDigest(encodeMessage(spec));
    if (bus.join) await request.onRendezvous?.({ jobId: prep.jobId, url: bus.join.url, token: bus.join.token, specSha256, ...(joinTls ? { tls: joinTls } : {}) });

    // Agents: those this coordinator launches, and those that join on their own (ferry run).
    const external = request.externalAgents ?? 0;
    const ownAgents = ctx.agents - external;
    const launcher = request.launcher ?? new LocalLauncher({ wrapCommand: (argv) => diesWithThisProcess(argv, 'KILL') });
    const corrupt = process.env[CORRUPT_RANGES_ENV];
    // What agents run comes from their environment, set here, never from the bus; the spec's
    // digest lets them refuse a spec someone else wrote (issue #30).
    const env = { ...(corrupt ? { [CORRUPT_RANGES_ENV]: corrupt } : {}), [AGENT_EXEC_ENV]: encodeAgentExec(agentExecOf(spec)), [JOB_SPEC_SHA256_ENV]: specSha256 };
    // Secrets reach agents in their environment (the ssh launcher: on stdin), never argv.
    const secretEnv = bus.join?.token || joinTls ? { ...(bus.join?.token ? { FERRY_NATS_TOKEN: bus.join.token } : {}), ...(joinTls ? { [NATS_TLS_ENV]: joinTls } : {}) } : undefined;
    const onStderr = (i: number, line: string) => emit({ type: 'log', message: `agent ${i}: ${line}` });
    const warm = ctx.warm && launcher.name === 'local' && ownAgents > 0 ? ctx.warm : undefined;
    const goFor = (i: number) => ({ job: prep.jobId, nats: bus.join?.url ?? '', index: external + i, env: { ...env, ...secretEnv } });
    const agentBus = bus instanceof LocalBus ? bus.agentBus() : undefined;
    let launched: LaunchedAgents | undefined;
    if (agentBus) {
      // The job's one agent, in this process, on the bus in memory (with the connections warm start opened).
      launched = warm ? await warm.go(1, goFor, { launcher: launcher.name, onStderr }, agentBus) : runAgentInProcess((await import('@ferry/agent')).runAgent, goFor(0), undefined, { launcher: launcher.name, onStderr }, agentBus);
    } else if (warm) {
      launched = await warm.go(ownAgents, goFor, { launcher: launcher.name, onStderr });
    } else if (ownAgents > 0) {
      launched = await launcher.launch({
        count: ownAgents,
        command: [...request.agentCommand, '--job', prep.jobId, '--nats', bus.join!.url],
        env,
        ...(secretEnv ? { secretEnv } : {}),
        argsFor: launcher.name === 'local' || launcher.name === 'ssh' ? (i) => ['--index', String(external + i)] : undefined,
        onStderr,
      });
    }
    if (!warm) await ctx.warm?.dismiss();
    const exits: AgentExit[] = [];
    const agentsGone = (why: string) => {
      const failed = exits.filter((e) => e.code !== 0);
      if (failed.length === exits.length && failed.length > 0 && !lastAgentError) {
        // Nothing ever worked: most likely the launch itself (wrong path on the nodes, no allocation).
        const last = failed.at(-1)!;
        return new FerryError('AGENTS_FAILED', `agent launch via ${last.launcher} failed (exit ${last.code ?? last.signal}): ${last.commandLine}${last.stderrTail ? `\n${last.stderrTail}` : ''}`);
      }
      const last = failed.at(-1);
      return (
        lastAgentError ??
        new FerryError('AGENTS_FAILED', `${why} with ${plan.count - state.done.size} of ${plan.count} ranges left${last ? ` (last: exit ${last.code ?? last.signal})${last.stderrTail ? `:\n${last.stderrTail}` : ''}` : ''}`)
      );
    };
    launched?.onExit((exit) => {
      exits.push(exit);
      emit({ type: 'agent.exit', index: exit.index, code: exit.code, signal: exit.signal });
      if (exits.length === ownAgents && external === 0 && !finished) fail(agentsGone(`all ${ownAgents} agents exited`));
    });
    if (external > 0) {
      // Agents this coordinator did not start: gone when none has been heard of for a while.
      const started = Date.now();
      const watchdog = setInterval(() => {
        const newest = Math.max(started, ...[...heartbeats.values()].map((h) => h.seenAt));
        const ownDone = exits.length === ownAgents;
        if (ownDone && Date.now() - newest > AGENT_SILENCE_MS && !finished) fail(agentsGone(`no agent has reported for ${AGENT_SILENCE_MS / 1000} s`));
      }, 1000);
      cleanup.push(() => clearInterval(watchdog));
    }

    let failure: FerryError | undefined;
    try {
      await outcome;
    } catch (err) {
      failure = toFerryError(err);
    }
    // However it ended: agents make what they wrote durable, report it, and leave.
    const reason = failure ? (failure.code === 'INTERRUPTED' ? 'interrupted' : `job failed: ${failure.code}`) : 'job done';
    await bus.control(encodeMessage({ v: MESSAGE_VERSION, job: prep.jobId, type: 'stop', reason }), 'stop');
    if (launched) {
      const killTimer = setTimeout(() => void launched.stop(1000), AGENT_STOP_GRACE_MS);
      await launched.exited;
      clearTimeout(killTimer);
    } else {
      // Joined agents leave on the stop message; give them a moment to report what they made durable.
      const deadline = Date.now() + AGENT_STOP_GRACE_MS;
      while (Date.now() < deadline && [...heartbeats.values()].some((h) => Date.now() - h.seenAt < 2500 && h.inFlight + h.pending > 0)) await sleep(200);
    }
    // Journal what the agents reported on their way out.
    await bus.settle();
    feed.stop();
    await consuming;
    await mirror();
    tick();
    if (failure) {
      if (failure.code === 'INTERRUPTED') {
        throw new FerryError(
          'INTERRUPTED',
          `interrupted: ${state.done.size} of ${plan.count} ranges (${formatBytes(rangeBytesOf(plan, state.done))} of ${formatBytes(plan.fileBytes)}) are done and journaled; rerun the same command, or 'ferry resume ${prep.jobId}', to continue`,
        );
      }
      throw failure;
    }
    journaled = true;
  } finally {
    for (const fn of cleanup.reverse()) await Promise.resolve(fn()).catch(() => {});
    const { after } = await bus.close(journaled).catch(() => ({ after: undefined }));
    if (after) ctx.shutdowns.push(after);
  }
}
