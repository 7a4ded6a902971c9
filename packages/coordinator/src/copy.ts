/**
 * `ferry cp` end to end: prepare, start (or join) NATS, publish the ranges,
 * launch agents, consume completions (verify, journal, re-send), finalize.
 */
import { chmod, mkdir, open, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { JetStreamClient } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { nanos } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  FerryError,
  IntervalSet,
  JOURNAL_VERSION,
  MESSAGE_VERSION,
  decodeAgentEvent,
  decodeCompletion,
  decodeHeartbeat,
  destinationError,
  encodeMessage,
  jobSubjects,
  makeWorkItem,
  planRanges,
  rangeAt,
  resolveCopyOptions,
  rootHash,
  toFerryError,
  workItemId,
} from '@ferry/core';
import type { Completion, CopyOptions, JobSpec, RangePlan, ResolvedCopyOptions } from '@ferry/core';
import { connectBus } from '@ferry/agent';
import { LocalLauncher } from '@ferry/launcher';
import type { AgentExit, LaunchedAgents, Launcher } from '@ferry/launcher';
import type { CopyEvent, CopySummary } from './events.js';
import { JournalFile } from './journal-file.js';
import { startEmbeddedNats } from './nats-server.js';
import type { EmbeddedNats } from './nats-server.js';
import { prepareCopy } from './prepare.js';
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
}

/** Publishes at most this many ranges before waiting for their acks. */
const PUBLISH_BATCH = 512;
const AGENT_STOP_GRACE_MS = 10_000;

export function defaultStateDir(): string {
  const base = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'ferry');
}

async function publishRanges(js: JetStreamClient, subject: string, jobId: string, plan: RangePlan, indices: Iterable<number>, attempt = 0): Promise<void> {
  let batch: Array<Promise<unknown>> = [];
  for (const i of indices) {
    const item = makeWorkItem(jobId, rangeAt(plan, i), attempt);
    batch.push(js.publish(subject, encodeMessage(item), { msgID: workItemId(item) }));
    if (batch.length >= PUBLISH_BATCH) {
      await Promise.all(batch);
      batch = [];
    }
  }
  await Promise.all(batch);
}

async function setupJobStreams(nc: NatsConnection, spec: JobSpec): Promise<void> {
  const s = jobSubjects(spec.jobId);
  const jsm = await jetstreamManager(nc);
  // A fresh job: remove anything an earlier run with the same id left on an external server.
  for (const name of [s.workStream, s.doneStream, `KV_${s.kvBucket}`]) await jsm.streams.delete(name).catch(() => false);
  await jsm.streams.add({
    name: s.workStream,
    subjects: [s.workSubject],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    duplicate_window: nanos(10 * 60_000),
  });
  await jsm.consumers.add(s.workStream, {
    durable_name: s.workConsumer,
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(spec.ackWaitMs),
    max_deliver: 20,
    max_ack_pending: 100_000,
    max_waiting: 4096,
  });
  await jsm.streams.add({ name: s.doneStream, subjects: [s.doneSubject], retention: RetentionPolicy.Limits, storage: StorageType.File });
  await jsm.consumers.add(s.doneStream, {
    durable_name: s.doneConsumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(60_000),
    max_ack_pending: 100_000,
  });
  const kv = await new Kvm(nc).create(s.kvBucket, { history: 1 });
  await kv.put('spec', encodeMessage(spec));
}

async function finalizeLocal(prep: PreparedCopy, preserve: boolean): Promise<void> {
  try {
    const fh = await open(prep.tempPath, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await chmod(prep.tempPath, preserve ? prep.sourceMode : 0o666 & ~process.umask());
    if (preserve) await utimes(prep.tempPath, prep.sourceMtimeMs / 1000, prep.sourceMtimeMs / 1000);
    await rename(prep.tempPath, prep.targetPath);
  } catch (err) {
    throw destinationError(err, { path: prep.targetPath });
  }
}

async function finalizeRemote(prep: PreparedCopy, preserve: boolean): Promise<void> {
  const { conn } = prep;
  if (prep.fileBytes > 0) {
    const f = await conn.openFile(prep.tempPath, 'write');
    try {
      await f.fsync();
    } finally {
      await f.close();
    }
  }
  // Without -p the file gets the usual mode of a new file (0666 less a umask of 022), as scp does.
  const attrs = preserve ? { mode: prep.sourceMode, mtimeMs: Math.floor(prep.sourceMtimeMs) } : { mode: 0o644 };
  await conn.setstat(prep.tempPath, attrs);
  await conn.rename(prep.tempPath, prep.targetPath);
}

interface RangeState {
  hashes: Array<string | undefined>;
  done: IntervalSet;
  attempts: Map<number, number>;
  resends: number;
}

export async function runCopy(request: CopyRequest): Promise<CopySummary> {
  const options: ResolvedCopyOptions = resolveCopyOptions(request.options);
  const emit = request.onEvent ?? (() => {});
  const signal = request.signal;
  const started = Date.now();
  const prep = await prepareCopy(request.source, request.destination, options, signal);
  const stateDir = options.stateDir ?? defaultStateDir();
  const jobDir = join(stateDir, 'jobs', prep.jobId);
  const plan = planRanges(prep.fileBytes, options.rangeBytes);
  const agents = Math.min(options.agents, Math.max(1, plan.count));

  let nats: EmbeddedNats | undefined;
  let nc: NatsConnection | undefined;
  let launched: LaunchedAgents | undefined;
  let journal: JournalFile | undefined;
  const cleanup: Array<() => Promise<void> | void> = [];

  try {
    // This version starts every job afresh; resuming from the journal is a later step.
    await rm(jobDir, { recursive: true, force: true });
    await mkdir(jobDir, { recursive: true, mode: 0o700 });
    ({ journal } = await JournalFile.open(join(jobDir, 'journal')));
    await journal.append({
      t: 'job',
      v: JOURNAL_VERSION,
      jobId: prep.jobId,
      source: prep.sourceLabel,
      destination: prep.destinationLabel,
      fileBytes: prep.fileBytes,
      rangeBytes: plan.rangeBytes,
      rangeCount: plan.count,
      hash: options.hash,
      at: Date.now(),
    });
    emit({
      type: 'job.start',
      jobId: prep.jobId,
      source: prep.sourceLabel,
      destination: prep.destinationLabel,
      bytes: prep.fileBytes,
      ranges: plan.count,
      rangeBytes: plan.rangeBytes,
      agents: plan.count === 0 ? 0 : agents,
      streams: options.streams,
      mode: prep.mode,
      hash: options.hash,
      stateDir: jobDir,
    });

    const state: RangeState = { hashes: new Array<string | undefined>(plan.count), done: new IntervalSet(), attempts: new Map(), resends: 0 };
    if (plan.count > 0) {
      await transfer(prep, plan, options, agents, jobDir, state, request, emit, (h) => cleanup.push(h), (l) => (launched = l), (n, c) => ((nats = n), (nc = c)), journal);
    }

    if (prep.direction === 'push') await finalizeRemote(prep, options.preserve);
    else await finalizeLocal(prep, options.preserve);

    const root = rootHash(options.hash, state.hashes as string[]);
    await journal.append({ t: 'final', rootHash: root, at: Date.now() });
    const seconds = (Date.now() - started) / 1000;
    const summary: CopySummary = {
      jobId: prep.jobId,
      source: prep.sourceLabel,
      destination: prep.destinationLabel,
      bytes: prep.fileBytes,
      seconds,
      mbps: seconds > 0 ? prep.fileBytes / 1e6 / seconds : 0,
      ranges: plan.count,
      resends: state.resends,
      hash: options.hash,
      rootHash: root,
      mode: plan.count === 0 ? 'none' : prep.mode,
      agents: plan.count === 0 ? 0 : agents,
      streams: options.streams,
    };
    await writeFile(
      join(jobDir, 'manifest.json'),
      JSON.stringify({ ...summary, rangeBytes: plan.rangeBytes, rangeHashes: state.hashes }, null, 1) + '\n',
      { mode: 0o600 },
    );
    emit({ type: 'done', ...summary });
    return summary;
  } finally {
    const l = launched as LaunchedAgents | undefined;
    if (l) await l.stop(AGENT_STOP_GRACE_MS).catch(() => {});
    for (const fn of cleanup.reverse()) await Promise.resolve(fn()).catch(() => {});
    const c = nc as NatsConnection | undefined;
    if (c) await c.close().catch(() => {});
    const n = nats as EmbeddedNats | undefined;
    if (n) {
      await n.stop().catch(() => {});
      await rm(join(jobDir, 'nats'), { recursive: true, force: true }).catch(() => {});
    }
    await journal?.close().catch(() => {});
    prep.conn.close();
  }
}

/** The part with NATS and agents; returns once every range is done and verified. */
async function transfer(
  prep: PreparedCopy,
  plan: RangePlan,
  options: ResolvedCopyOptions,
  agentCount: number,
  jobDir: string,
  state: RangeState,
  request: CopyRequest,
  emit: (e: CopyEvent) => void,
  onCleanup: (fn: () => Promise<void> | void) => void,
  onLaunched: (l: LaunchedAgents) => void,
  onNats: (n: EmbeddedNats | undefined, nc: NatsConnection) => void,
  journal: JournalFile,
): Promise<void> {
  const subjects = jobSubjects(prep.jobId);
  let nats: EmbeddedNats | undefined;
  let url = options.natsUrl;
  let token = process.env.FERRY_NATS_TOKEN;
  if (!url) {
    nats = await startEmbeddedNats({ storeDir: join(jobDir, 'nats') });
    url = nats.url;
    token = nats.token;
  }
  const nc = await connectBus({ url, token, name: `ferry-coordinator-${prep.jobId}` });
  onNats(nats, nc);
  const js = jetstream(nc);

  const spec: JobSpec = {
    v: MESSAGE_VERSION,
    jobId: prep.jobId,
    direction: prep.direction,
    mode: prep.mode,
    localPath: prep.localPath,
    remotePath: prep.remotePath,
    remoteHosts: [prep.remoteHost],
    remoteCommand: options.remoteCommand,
    fileBytes: prep.fileBytes,
    rangeBytes: plan.rangeBytes,
    rangeCount: plan.count,
    hash: options.hash,
    streams: options.streams,
    windowBytes: options.windowBytes,
    ackWaitMs: options.ackWaitMs,
    ssh: prep.ssh,
    createdAt: Date.now(),
  };
  await setupJobStreams(nc, spec);
  await publishRanges(js, subjects.workSubject, prep.jobId, plan, Array.from({ length: plan.count }, (_, i) => i));

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
  onCleanup(() => request.signal?.removeEventListener('abort', onAbort));

  // Agent reports: heartbeats for progress, events for errors.
  const heartbeats = new Map<string, { bytes: number; inFlight: number }>();
  let lastAgentError: FerryError | undefined;
  const hbSub = nc.subscribe(`${subjects.heartbeat}.*`, {
    callback: (err, msg) => {
      if (err) return;
      try {
        const hb = decodeHeartbeat(msg.data, prep.jobId);
        heartbeats.set(hb.agent, { bytes: hb.bytes, inFlight: hb.inFlight });
      } catch {
        // a stray or foreign message: ignore
      }
    },
  });
  const evSub = nc.subscribe(subjects.events, {
    callback: (err, msg) => {
      if (err) return;
      try {
        const ev = decodeAgentEvent(msg.data, prep.jobId);
        if (ev.type === 'agent.error') {
          emit({ type: 'agent.error', agent: ev.agent, code: ev.error.code, message: ev.error.message, fatal: ev.fatal });
          if (ev.fatal) lastAgentError = FerryError.fromData(ev.error);
        }
      } catch {
        // ignore
      }
    },
  });
  onCleanup(() => {
    hbSub.unsubscribe();
    evSub.unsubscribe();
  });

  // Progress, once a second.
  let lastBytes = 0;
  let lastAt = Date.now();
  let rate = 0;
  const doneBytes = () => {
    let total = 0;
    for (const [s, e] of state.done.toArray()) total += Math.min(e * plan.rangeBytes, plan.fileBytes) - s * plan.rangeBytes;
    return total;
  };
  const progressTimer = setInterval(() => {
    let moved = 0;
    let busy = 0;
    for (const hb of heartbeats.values()) {
      moved += hb.bytes;
      if (hb.inFlight > 0) busy++;
    }
    const now = Date.now();
    const instant = ((moved - lastBytes) * 1000) / Math.max(1, now - lastAt);
    rate = rate === 0 ? instant : 0.7 * rate + 0.3 * instant;
    lastBytes = moved;
    lastAt = now;
    const done = doneBytes();
    const shown = Math.min(plan.fileBytes, Math.max(done, moved));
    emit({
      type: 'progress',
      bytes: shown,
      total: plan.fileBytes,
      rangesDone: state.done.size,
      ranges: plan.count,
      rate,
      etaSeconds: rate > 0 ? (plan.fileBytes - shown) / rate : null,
      agentsBusy: busy,
      agents: agentCount,
    });
  }, 1000);
  onCleanup(() => clearInterval(progressTimer));

  // Completions: verify, journal, re-send.
  const doneConsumer = await js.consumers.get(subjects.doneStream, subjects.doneConsumer);
  const messages = await doneConsumer.consume({ max_messages: 1000 });
  onCleanup(() => messages.stop());
  const handle = async (c: Completion) => {
    if (c.error) {
      fail(FerryError.fromData({ ...c.error, range: c.range }));
      return;
    }
    const current = state.attempts.get(c.range) ?? 0;
    if (c.srcHash !== c.dstHash) {
      // Whatever attempt it was, its bytes may be the last ones written: the range is suspect again.
      const wasDone = state.done.delete(c.range);
      if (wasDone) state.hashes[c.range] = undefined;
      else if (c.attempt < current) return; // a newer attempt is already on its way
      if (current >= options.maxResends) {
        fail(
          new FerryError(
            'VERIFY_FAILED',
            `range ${c.range} (bytes ${c.offset}-${c.offset + c.length}) failed verification ${current + 1} time${current === 0 ? "" : "s"} via ${c.remoteHost} (source ${c.srcHash}, destination ${c.dstHash}): check memory, disks and network of ${c.agent} and ${c.remoteHost}`,
            { range: c.range, host: c.remoteHost },
          ),
        );
        return;
      }
      const attempt = current + 1;
      state.attempts.set(c.range, attempt);
      state.resends++;
      emit({ type: 'range.resend', range: c.range, attempt, reason: `hash mismatch (source ${c.srcHash}, destination ${c.dstHash}) via ${c.agent}` });
      await journal.append({ t: 'resend', range: c.range, attempt, reason: 'hash mismatch', at: Date.now() });
      await publishRanges(js, subjects.workSubject, prep.jobId, plan, [c.range], attempt);
      return;
    }
    if (state.done.has(c.range)) return;
    state.done.add(c.range);
    state.hashes[c.range] = c.srcHash;
    await journal.append({ t: 'range', range: c.range, attempt: c.attempt, hash: c.srcHash, bytes: c.length, durable: c.durable, agent: c.agent, host: c.remoteHost, at: Date.now() });
    emit({ type: 'range.done', range: c.range, bytes: c.length, agent: c.agent, host: c.remoteHost, hash: c.srcHash, seconds: (c.finishedAt - c.startedAt) / 1000 });
    if (state.done.size === plan.count) succeed();
  };
  void (async () => {
    try {
      for await (const m of messages) {
        try {
          await handle(decodeCompletion(m.data, prep.jobId));
        } catch (err) {
          if (err instanceof FerryError && err.code === 'PROTOCOL') emit({ type: 'log', message: `ignoring a malformed completion: ${err.message}` });
          else throw err;
        }
        m.ack();
      }
    } catch (err) {
      fail(toFerryError(err));
    }
  })();

  // Agents.
  const launcher = request.launcher ?? new LocalLauncher();
  const corrupt = process.env.FERRY_TEST_CORRUPT_RANGES;
  const agentsUp = await launcher.launch({
    count: agentCount,
    command: [...request.agentCommand, '--job', prep.jobId, '--nats', url],
    env: { ...(token ? { FERRY_NATS_TOKEN: token } : {}), ...(corrupt ? { FERRY_TEST_CORRUPT_RANGES: corrupt } : {}) },
    argsFor: (i) => ['--index', String(i)],
    onStderr: (i, line) => emit({ type: 'log', message: `agent ${i}: ${line}` }),
  });
  onLaunched(agentsUp);
  const exits: AgentExit[] = [];
  agentsUp.onExit((exit) => {
    exits.push(exit);
    emit({ type: 'agent.exit', index: exit.index, code: exit.code, signal: exit.signal });
    if (exits.length === agentCount && !finished) {
      const last = exits.filter((e) => e.code !== 0).pop() ?? exit;
      fail(
        lastAgentError ??
          new FerryError(
            'AGENTS_FAILED',
            `all ${agentCount} agents exited with ${plan.count - state.done.size} of ${plan.count} ranges left (last: exit ${last.code ?? last.signal})${last.stderrTail ? `:\n${last.stderrTail}` : ''}`,
          ),
      );
    }
  });

  try {
    await outcome;
  } finally {
    // Tell agents to finish; they exit after their current range.
    nc.publish(subjects.control, encodeMessage({ v: MESSAGE_VERSION, job: prep.jobId, type: 'stop' }));
    await nc.flush().catch(() => {});
    const timer = setTimeout(() => void agentsUp.stop(1000), AGENT_STOP_GRACE_MS);
    await agentsUp.exited;
    clearTimeout(timer);
  }
}
