/**
 * `ferry cp` of one file, end to end, as its stages:
 *
 * | stage               | module                                  |
 * | ------------------- | --------------------------------------- |
 * | prepare             | prepare.ts (`prepareCopy`), warm.ts      |
 * | plan                | file-plan.ts (`planFileJob`)            |
 * | publish             | publish.ts, launch.ts (the agents)      |
 * | collect and journal | collect.ts, collect-reports.ts          |
 * | finalize            | file-finalize.ts (`finalizeFile`)       |
 *
 * runCopy and transfer only wire them. Every way out (done, failed,
 * interrupted) stops the agents, journals what they made durable, and leaves a
 * job a rerun can resume.
 */
import { mkdir } from 'node:fs/promises';
import { availableParallelism, homedir } from 'node:os';
import { join } from 'node:path';
import { BENCH_DISCARD_ENV, FerryError, benchDiscardRequested, formatBytes, parseLocation, resolveCopyOptions, toFerryError } from '@ferry/core';
import type { CopyOptions, JobSpec, ResolvedCopyOptions, TransferMode } from '@ferry/core';
import type { Launcher } from '@ferry/launcher';
import type { RemoteConnection } from '@ferry/transport';
import { collectCompletions, recoverCompletions } from './collect.js';
import { Progress, watchAgentReports } from './collect-reports.js';
import type { CopyEvent, CopySummary } from './events.js';
import { Outcome, rangeBytesOf } from './file-context.js';
import type { Run, TransferContext } from './file-context.js';
import { finalizeFile } from './file-finalize.js';
import { agentCountFor, checkRemoteHashes, newRunState, planFileJob, reuseDestination } from './file-plan.js';
import { FileStatus } from './file-status.js';
import type { JobBus } from './job-bus.js';
import { jobDirOf, lockJob } from './job-state.js';
import type { JournalFile } from './journal-file.js';
import { launchAgents, stopAgents } from './launch.js';
import { prepareCopy, remoteSideOf, resolveRemote } from './prepare.js';
import type { PreparedCopy } from './prepare.js';
import { LOCAL_BUS_ENV, jobSpecOf, openJobBus, publishPlan, rateSharePublisher } from './publish.js';
import { startWarmAgents } from './warm.js';
import type { WarmStart } from './warm.js';

export { LOCAL_BUS_ENV, firstExternalAddress, useLocalBus } from './publish.js';
export { rangeHashFor } from './file-plan.js';

/** NATS, loaded once runCopy has started connecting, where a job needs it (bus.ts). */
const loadBus = () => import('./nats-job-bus.js');

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
   * A tree's huge file (tree-huge.ts): when the source is no longer the file
   * an earlier run of this job started copying, start the file over rather
   * than refuse. The tree walked the new version and sends it whole, as it
   * sends any file whose size, mtime or inode changed. @default false
   */
  restartChanged?: boolean;
}

export function defaultStateDir(): string {
  const base = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'ferry');
}

export async function runCopy(request: CopyRequest): Promise<CopySummary> {
  const options: ResolvedCopyOptions = resolveCopyOptions(request.options, { cores: availableParallelism() });
  const emit = request.onEvent ?? (() => {});
  const started = Date.now();
  const { prep, warm } = await prepare(request, options, emit);
  const jobDir = jobDirOf(options.stateDir ?? defaultStateDir(), prep.jobId);
  /** Released however the job ends: its journal and its lock. */
  const held: { journal?: JournalFile | undefined; unlock?: () => Promise<void> } = {};
  const shutdowns: Array<Promise<unknown>> = [];
  let status: FileStatus | undefined;
  try {
    await mkdir(jobDir, { recursive: true, mode: 0o700 });
    held.unlock = await lockJob(jobDir);
    // Plan: resume the earlier run or start afresh; --delta reuses what the old destination holds.
    const input = { request, options, prep, jobDir, emit };
    const planned = await planFileJob(input, held);
    const { plan, job } = planned;
    checkRemoteHashes(job.hash, prep.conn, options.hashGiven);
    const state = newRunState(planned);
    await reuseDestination(input, planned, state);
    status = new FileStatus(jobDir, prep, state);
    const ctx: TransferContext = {
      prep,
      plan,
      options,
      jobDir,
      state,
      request,
      emit,
      warm,
      shutdowns,
      agents: agentCountFor(request, options, plan, state),
      journal: planned.journal,
      hash: job.hash,
      saveStatus: status.save,
      resumed: planned.folded !== undefined,
      shape: { streams: options.firstStreams },
      temp: planned.temp,
    };
    emitJobStart(ctx);
    await status.save();
    // Publish, collect and journal: the agents move the ranges not done yet.
    if (state.done.size < plan.count) await transfer(ctx);
    const summary = await finalizeFile({ ...ctx, job, started });
    status.phase = 'done';
    await status.save();
    emit({ type: 'done', ...summary });
    return summary;
  } catch (err) {
    const e = toFerryError(err);
    await status?.failed(e);
    throw e;
  } finally {
    await warm?.dismiss().catch(() => {});
    await Promise.all(shutdowns);
    await held.journal?.close().catch(() => {});
    await held.unlock?.().catch(() => {});
    prep.conn.close();
  }
}

/** The prepare stage (prepare.ts): the remote side connected and the job named, with local agents warming up meanwhile (warm.ts). */
async function prepare(request: CopyRequest, options: ResolvedCopyOptions, emit: (e: CopyEvent) => void): Promise<{ prep: PreparedCopy; warm: WarmStart | undefined }> {
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
  return { prep, warm };
}

function emitJobStart(ctx: TransferContext): void {
  const { prep, plan, options, state } = ctx;
  ctx.emit({
    type: 'job.start',
    jobId: prep.jobId,
    source: prep.sourceLabel,
    destination: prep.destinationLabel,
    bytes: prep.fileBytes,
    ranges: plan.count,
    rangeBytes: plan.rangeBytes,
    agents: plan.count === 0 ? 0 : ctx.agents,
    streams: options.firstStreams,
    maxStreams: options.streams,
    tuning: options.tuneStreams,
    mode: prep.mode,
    hash: ctx.hash,
    stateDir: ctx.jobDir,
    resumed: ctx.resumed,
    rangesDone: state.done.size,
    bytesDone: state.resumedBytes,
  });
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

/**
 * Publish, collect and journal: the part with the control plane and agents;
 * returns once every range is durable and verified.
 */
async function transfer(ctx: TransferContext): Promise<void> {
  const bus = await openJobBus(ctx);
  const cleanup: Run['cleanup'] = [];
  /** Every range is done and journaled (transfer() returns normally). */
  let journaled = false;
  try {
    if (ctx.resumed) await recoverCompletions(ctx, bus);
    const spec = jobSpecOf(ctx);
    await bus.start(spec);
    if (ctx.state.done.size === ctx.plan.count) {
      journaled = true;
      return;
    }
    const run = newRun(ctx, bus, spec, cleanup);
    watchAgentReports(ctx, run);
    const progress = new Progress(ctx, run);
    progress.start();
    const { feed, consuming } = await collectCompletions(ctx, run);
    publishPlan(ctx, run);
    const agents = await launchAgents(ctx, run);
    const failure = await run.outcome.ended();
    await stopAgents(ctx, run, agents, failure);
    // Journal what the agents reported on their way out.
    await bus.settle();
    feed.stop();
    await consuming;
    await progress.mirror();
    progress.tick();
    if (failure) throw failure.code === 'INTERRUPTED' ? interrupted(ctx) : failure;
    journaled = true;
  } finally {
    for (const fn of cleanup.reverse()) await Promise.resolve(fn()).catch(() => {});
    const { after } = await bus.close(journaled).catch(() => ({ after: undefined }));
    if (after) ctx.shutdowns.push(after);
  }
}

/** A transfer's run: its outcome (failed at once when the job's signal aborts) and what the stages share. */
function newRun(ctx: TransferContext, bus: JobBus, spec: JobSpec, cleanup: Run['cleanup']): Run {
  const { signal } = ctx.request;
  const outcome = new Outcome();
  const onAbort = () => outcome.fail(new FerryError('INTERRUPTED', 'interrupted'));
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  cleanup.push(() => signal?.removeEventListener('abort', onAbort));
  const { shares, publishShare } = rateSharePublisher(ctx, bus, spec);
  return {
    bus,
    spec,
    runTag: Date.now().toString(36),
    outcome,
    cleanup,
    heartbeats: new Map(),
    knownAgents: new Set(),
    lastAgentError: undefined,
    hostBytes: new Map(),
    hostRecent: new Map(),
    dirtyBlocks: new Set(),
    published: new Uint8Array(ctx.plan.count),
    shares,
    publishShare,
  };
}

function interrupted(ctx: TransferContext): FerryError {
  const { plan, state, prep } = ctx;
  return new FerryError(
    'INTERRUPTED',
    `interrupted: ${state.done.size} of ${plan.count} ranges (${formatBytes(rangeBytesOf(plan, state.done))} of ${formatBytes(plan.fileBytes)}) are done and journaled; rerun the same command, or 'ferry resume ${prep.jobId}', to continue`,
  );
}
