/**
 * An agent: pulls ranges from the job's shared work consumer, moves them over
 * its own SSH connections, and reports each one. A range counts as done only
 * once it is durable: each connection fsyncs the destination every few ranges
 * or seconds, then publishes the completions (waiting for JetStream to store
 * them) and only then acks the work items. A range whose connection is lost
 * before its fsync is handed back, never reported.
 */
import { setMaxListeners } from 'node:events';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import {
  AgentPacer,
  identityProblem,
  replacedError,
  BufferPool,
  COMPLETIONS_PER_MESSAGE,
  FerryError,
  FileWriter,
  FRAME_HEADER_BYTES,
  MESSAGE_VERSION,
  checkControl,
  checkedWorkItem,
  checkJobSpec,
  checkSpecExec,
  decodeControl,
  defaultAgentExec,
  decodeWorkItem,
  destinationError,
  encodeMessage,
  errnoOf,
  hashStoredThrough,
  hostLabel,
  makeCompletionBatch,
  openDirectAuto,
  workItemCount,
  globalSlot,
  slotHost,
  slotStaggerMs,
  toFerryError,
} from '@ferry/core';
import type { AgentEvent, AgentExec, Completion, Direction, ErrorCode, Heartbeat, JobSpec, NatsClientTls, RemoteHost, SshSettings, WorkItem } from '@ferry/core';
import { connectRemote, isSlowHelperStart } from '@ferry/transport';
import type { RemoteConnection, RemoteFile } from '@ferry/transport';
import type { AgentBus, WorkFetch } from './agent-bus.js';
import { pullRange, pushRange } from './pump.js';
import { discardConnection, discardRange } from './discard.js';
import { forEachLimit, signalListeners } from './concurrency.js';
import { LoadMeter } from './load.js';
import { QueueWatch, workParts } from './work.js';
import { runBatchAgent } from './batch-agent.js';
import type { WorkPart } from './work.js';
import type { Preconnected } from './preconnect.js';

export interface AgentOptions {
  jobId: string;
  /** The job's NATS server... */
  natsUrl?: string;
  natsToken?: string | undefined;
  /** The job's NATS credential beyond loopback (FERRY_NATS_TLS). */
  natsTls?: NatsClientTls | undefined;
  /** SHA-256 of the job spec the coordinator stored (FERRY_JOB_SPEC_SHA256): a spec in NATS that differs is refused. */
  specSha256?: string | undefined;
  /**
   * What this agent may run (FERRY_AGENT_EXEC, set by its launcher): its SSH
   * client and the remote helper command. A spec that asks for anything else is
   * refused. @default ferry's defaults (ssh2, 'ferry serve')
   */
  exec?: AgentExec;
  /** ...or a control plane given in memory (the coordinator's local bus: a job whose only agent runs in its process). */
  bus?: AgentBus;
  /** Name in reports and heartbeats. @default `<hostname>-<pid>` */
  agentId?: string;
  /** Index of this agent among the job's agents, used to spread connections over remote hosts. @default 0 */
  index?: number;
  signal?: AbortSignal;
  /** Diagnostic lines (stderr of the agent process). */
  log?: (line: string) => void;
  /** Range indices to corrupt on their first attempt (test-only fault injection). */
  corruptRanges?: ReadonlySet<number>;
  /** Stop when this process is no longer our parent (agents started as local children). */
  parentPid?: number;
  /** Resolves when whoever launched this agent is gone (ssh launcher: stdin closed). */
  launcherGone?: Promise<void>;
  /**
   * Connections opened ahead of the job (`ferry agent --warm`, or the agent in
   * the coordinator's process), taken by the slots whose host they reach.
   */
  preconnected?: Preconnected;
  /**
   * Runs inside another program (the coordinator's process, see the
   * coordinator's warm.ts): it stops when NATS stays away, but never ends the
   * process. @default false
   */
  inProcess?: boolean;
}

export interface AgentSummary {
  agent: string;
  ranges: number;
  bytes: number;
  errors: number;
}

/** Errors after which this agent cannot do anything useful: it reports them and exits. */
const FATAL_FOR_AGENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['SSH_AUTH_FAILED', 'HOST_KEY_UNKNOWN', 'HOST_KEY_CHANGED', 'HELPER_UNAVAILABLE', 'SOURCE_NOT_FOUND', 'SOURCE_UNREADABLE']);
/**
 * Errors that end the job: every agent would meet them, or the user must hear of them
 * whatever the other connections manage (HELPER_UNTRUSTED: another user's listener where
 * the shared helper should be; DEST_REPLACED: another user swapped the temporary file).
 * Reported in a completion.
 */
const FATAL_FOR_JOB: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['DEST_NO_SPACE', 'DEST_NOT_WRITABLE', 'DEST_DIR_MISSING', 'DEST_REPLACED', 'SOURCE_CHANGED', 'HELPER_UNTRUSTED']);
/** Errors that mean "this host, right now": try another host. */
const HOST_TROUBLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['HOST_UNREACHABLE', 'CONNECTION_LOST']);

const NEXT_EXPIRES_MS = 2_000;
/** With unsynced ranges waiting, this long without new work starts their fsync. */
const QUIET_BEFORE_DURABLE_MS = 100;
const QUIET = Symbol('quiet');
const CHUNK_BYTES = 1024 * 1024;
/** Messages of one durable batch's completions being published (and their items acked) at once, at most. */
const REPORTS_IN_FLIGHT = 8;
/** NATS unreachable this long: the job is gone, stop. (A restarting server is back within seconds.) */
const NATS_GONE_MS = 120_000;
/** How long a completion may fail to publish (NATS down) before the agent gives up. */
const PUBLISH_DEADLINE_MS = 5 * 60_000;
/**
 * The agent's 1 MiB buffers. A push reads up to 3 chunks ahead per slot, so
 * 5 per slot. A pull needs one filling per slot and a queue for the file's
 * writer, shared by the slots: 8 more. At 16 streams that is 24 MiB rather
 * than 80 (peak RSS 259 against 290 MiB then; no slower at 4 or 16 streams).
 * A pull waits for these buffers, never allocates beyond them (pump.ts), so
 * the 8 also guarantee progress: a slot holds at most one partly filled.
 */
export function poolBuffers(direction: Direction, streams: number): number {
  return direction === 'push' ? streams * 5 : streams + 8;
}

/**
 * How long an agent waits for a helper it started: 4x the connect timeout (80 s by
 * default) where the coordinator waits 1x. The coordinator has just run the same
 * helper on that host, so silence means a slow start (heavy shell start-up files,
 * many logins at once: pyenv's rehash lock serialises them), and waiting for it
 * costs less than giving up and adding one more login to the queue.
 */
export function agentHelperTimeoutMs(ssh: SshSettings): number {
  return 4 * ssh.connectTimeoutMs;
}

/** How often an agent looks whether its connections moving data have become fewer (--limit-rate; AgentPacer.tick). */
const RATE_TICK_MS = 100;

/** Consecutive rounds over every remote host without one connection before the agent gives up. */
const HOST_ROUNDS_BEFORE_GIVING_UP = 4;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function backoffMs(attempt: number): number {
  return Math.min(30_000, 500 * 2 ** Math.min(attempt, 6));
}

async function openLocal(spec: JobSpec): Promise<FileHandle> {
  try {
    if (spec.direction === 'pull') return await openDestination(spec);
    return await open(spec.localPath, 'r');
  } catch (err) {
    if (spec.direction === 'pull') throw destinationError(err, { path: spec.localPath });
    const errno = errnoOf(err);
    if (errno === 'ENOENT') throw new FerryError('SOURCE_NOT_FOUND', `source ${spec.localPath} disappeared on this node: is it on a filesystem every node mounts?`, { path: spec.localPath, cause: err });
    throw new FerryError('SOURCE_UNREADABLE', `cannot read ${spec.localPath}: ${(err as Error).message}`, { path: spec.localPath, cause: err });
  }
}

/**
 * Pull: the temporary destination file, never through a link planted at its
 * name, and only if it is the file the coordinator created (DEST_REPLACED,
 * before anything is written, when it is not).
 */
async function openDestination(spec: JobSpec): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    fh = await open(spec.localPath, constants.O_RDWR | constants.O_NOFOLLOW);
  } catch (err) {
    if (errnoOf(err) === 'ELOOP') throw replacedError(spec.localPath, 'a symbolic link');
    throw err;
  }
  if (spec.tempFile) {
    const st = await fh.stat();
    const problem = identityProblem(
      { ino: spec.tempFile.ino, uid: spec.tempFile.uid, ...(spec.tempFile.size === undefined ? {} : { size: spec.tempFile.size }) },
      { type: st.isFile() ? 'file' : st.isDirectory() ? 'directory' : 'other', ino: st.ino, dev: st.dev, uid: st.uid, nlink: st.nlink, size: st.size },
    );
    if (problem) {
      await fh.close();
      throw replacedError(spec.localPath, problem);
    }
  }
  return fh;
}

/**
 * Pull: the local file's writer, with an O_DIRECT handle where the file system
 * has it (--direct-io) or is a local disk one (the default).
 */
async function localWriterOf(local: FileHandle, spec: JobSpec, log: (line: string) => void): Promise<FileWriter> {
  if (spec.directIo === undefined) return new FileWriter(local);
  // The open file a second time (through /proc/self/fd), not its name again.
  const d = await openDirectAuto(spec.localPath, spec.directIo, local);
  if ('fh' in d) return new FileWriter(local, d.fh);
  log(`${spec.directIo === true ? '--direct-io' : 'direct I/O'}: writing through the page cache: ${d.reason}`);
  return new FileWriter(local);
}

/** Stores completions, retrying through NATS outages (the server restarting) until a deadline. */
async function publishDurably(bus: AgentBus, data: Uint8Array, isStopping: () => boolean): Promise<void> {
  const deadline = Date.now() + PUBLISH_DEADLINE_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      await bus.storeCompletions(data);
      return;
    } catch (err) {
      if (Date.now() > deadline || (isStopping() && attempt > 20)) {
        throw new FerryError('NATS_UNREACHABLE', `cannot store a completion in NATS: ${(err as Error).message}`, { cause: err });
      }
      await sleep(Math.min(2000, 100 * 2 ** attempt));
    }
  }
}

interface HostHealth {
  downUntil: number;
  failures: number;
}

/**
 * Counts a failure against a host and rests it for a back-off, unless it is
 * resting already: connections that fail together (a helper serving several
 * of them killed, a restarted sshd, a network blip) are one failure, not one
 * per connection, so a single outage cannot use up every round at once.
 */
function hostFailed(h: HostHealth): void {
  const now = Date.now();
  if (h.downUntil > now) return;
  h.failures++;
  h.downUntil = now + backoffMs(h.failures);
}

/** The spec with this agent's own SSH client and remote command in it (they agree already: belt and braces). */
function withOwnExec(spec: JobSpec, own: AgentExec): JobSpec {
  const ssh: SshSettings = { ...spec.ssh, transport: own.transport, sshCommand: [...own.sshCommand] };
  if (own.configFile !== undefined) ssh.configFile = own.configFile;
  else delete ssh.configFile;
  return { ...spec, ssh, remoteCommand: own.remoteCommand };
}

export async function runAgent(options: AgentOptions): Promise<AgentSummary> {
  const agentId = options.agentId ?? `${hostname()}-${process.pid}`;
  const node = hostname();
  const log = options.log ?? (() => {});
  const failureEvent = (e: FerryError): AgentEvent => ({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node, error: e.toData(), fatal: true });
  let bus: AgentBus;
  if (options.bus) bus = options.bus;
  else {
    if (options.natsUrl === undefined) throw new FerryError('USAGE', 'an agent needs --nats URL (or a bus given in process)');
    // NATS is loaded only here: the agent in the coordinator's process of a one-agent job never needs it.
    const { openNatsAgentBus } = await import('./nats-agent-bus.js');
    bus = await openNatsAgentBus({ jobId: options.jobId, url: options.natsUrl, token: options.natsToken, tls: options.natsTls, specSha256: options.specSha256, name: `ferry-agent-${agentId}`, failureEvent });
  }
  // Nothing this agent runs comes from the bus: the spec must ask for what its own settings say,
  // and its fields have the types and bounds the coordinator gives them.
  let spec: JobSpec;
  try {
    checkJobSpec(bus.spec);
    checkSpecExec(bus.spec, options.exec ?? defaultAgentExec());
    spec = withOwnExec(bus.spec, options.exec ?? defaultAgentExec());
  } catch (err) {
    const e = toFerryError(err);
    log(e.message);
    bus.publishEvent(failureEvent(e));
    await bus.close();
    throw e;
  }
  if (spec.tree) {
    // A tree's batches of small files (batch-agent.ts): its ranges are not this loop's.
    const s = await runBatchAgent({ bus, spec, jobId: options.jobId, agentId, node, index: options.index ?? 0, log, signal: options.signal, parentPid: options.parentPid, launcherGone: options.launcherGone, helperTimeoutMs: agentHelperTimeoutMs(spec.ssh) });
    return { agent: s.agent, ranges: s.batches, bytes: s.bytes, errors: s.errors };
  }
  const summary: AgentSummary = { agent: agentId, ranges: 0, bytes: 0, errors: 0 };
  let inFlight = 0;
  const pendingCounts = new Map<number, () => number>();
  const pendingRanges = () => [...pendingCounts.values()].reduce((n, f) => n + f(), 0);
  let stopping = false;
  let fatal: FerryError | undefined;
  const abort = new AbortController();
  let wake: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
  });
  /** Waits cut short by a stop (see orStop). */
  const wakeOnStop = new Set<() => void>();
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    log(`stopping: ${why}`);
    abort.abort(new Error(why));
    wake();
    for (const w of wakeOnStop) w();
  };
  /**
   * `p`, or null as soon as the agent stops. (Not `Promise.race([p, stopped])`: each
   * race leaves a reaction on `stopped` until the end, one per range.)
   */
  const orStop = <T>(p: Promise<T>): Promise<T | null> => {
    if (stopping) return Promise.resolve(null);
    return new Promise<T | null>((resolve, reject) => {
      const w = () => resolve(null);
      wakeOnStop.add(w);
      p.then(
        (v) => {
          wakeOnStop.delete(w);
          resolve(v);
        },
        (err: unknown) => {
          wakeOnStop.delete(w);
          reject(err);
        },
      );
    });
  };
  const onSignal = () => stop('interrupted');
  options.signal?.addEventListener('abort', onSignal, { once: true });
  let parentWatch: NodeJS.Timeout | undefined;
  if (options.parentPid !== undefined) {
    // A coordinator killed with SIGKILL cannot tell its children; they notice being orphaned.
    parentWatch = setInterval(() => {
      if (process.ppid !== options.parentPid) {
        stop('the coordinator process is gone');
        setTimeout(() => process.exit(1), 10_000).unref();
      }
    }, 500);
    parentWatch.unref();
  }

  /** Ends this process a while after a stop that nobody else will end it for (not when in-process). */
  const exitSoon = () => {
    if (!options.inProcess) setTimeout(() => process.exit(1), 10_000).unref();
  };

  // Without NATS this agent can report nothing; when it stays away (the coordinator and its
  // embedded server are gone), stop rather than linger on a compute node.
  const lonely = setInterval(() => {
    const disconnectedSince = bus.disconnectedSince();
    if (disconnectedSince !== undefined && Date.now() - disconnectedSince > NATS_GONE_MS) {
      stop(`no NATS for ${NATS_GONE_MS / 1000} s`);
      exitSoon();
    }
  }, 5000);
  lonely.unref();

  void options.launcherGone?.then(() => {
    stop('the launcher connection closed');
    exitSoon();
  });

  const publishEvent = (event: AgentEvent) => bus.publishEvent(event);

  /** The local file; none in a discard job (the benchmark reads nothing). */
  let local: FileHandle | undefined;
  /** Pull: the writes of the local file. */
  let localWriter: FileWriter | undefined;
  try {
    if (!spec.discard) local = await openLocal(spec);
    if (local && spec.direction === 'pull') localWriter = await localWriterOf(local, spec, log);
  } catch (err) {
    const e = toFerryError(err);
    publishEvent(failureEvent(e));
    await bus.close();
    if (parentWatch) clearInterval(parentWatch);
    clearInterval(lonely);
    options.signal?.removeEventListener('abort', onSignal);
    throw e;
  }

  /** Connection slots working now: the first `active` of the spec's `streams` (the coordinator may change it, see setActive). */
  let active = Math.max(1, Math.min(spec.streams, spec.activeStreams ?? spec.streams));
  let setActive: (n: number) => void = (n) => {
    active = n;
  };
  // --limit-rate: one bucket for all this agent's connections, at the coordinator's share per
  // connection moving data times their number (core's pacer.ts). Its count goes to the
  // coordinator as it changes, and with every heartbeat.
  const pacing = spec.connectionBytesPerSec > 0 ? new AgentPacer(spec.connectionBytesPerSec, Date.now()) : undefined;
  const announce = (moving: number | undefined) => {
    if (moving !== undefined) publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.active', agent: agentId, node, active: moving });
  };
  const pace = pacing
    ? (n: number): Promise<void> | undefined => {
        const waitMs = pacing.take(n, Date.now());
        return waitMs > 0 ? sleep(waitMs) : undefined;
      }
    : undefined;
  const rateTicker = pacing ? setInterval(() => announce(pacing.tick()), RATE_TICK_MS) : undefined;
  rateTicker?.unref();

  const onControl = (data: Uint8Array) => {
    try {
      const control = decodeControl(data, options.jobId);
      checkControl(control, spec.streams);
      if (control.type === 'stop' || control.type === 'cancel') stop(control.reason ?? `the coordinator said ${control.type}`);
      else if (control.type === 'streams') setActive(control.streams);
      else if (control.type === 'rate' && pacing) pacing.setConnectionRate(control.connectionBytesPerSec, Date.now());
    } catch (e) {
      log(`ignoring control message: ${(e as Error).message}`);
    }
  };
  try {
    await bus.listenControl(onControl);
  } catch (err) {
    log(`cannot read the job's stop flag: ${(err as Error).message}`);
  }
  publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.started', agent: agentId, node, pid: process.pid, index: options.index ?? 0 });

  const load = new LoadMeter();
  const heartbeat = () => {
    // How busy this agent and its node were since the last heartbeat: the stream tuner tells
    // a link that holds each stream back (idle agents, idle cores) from busy CPUs.
    const { utilization, idleCores } = load.sample();
    const hb: Heartbeat = {
      v: MESSAGE_VERSION,
      job: options.jobId,
      agent: agentId,
      node,
      pid: process.pid,
      bytes: summary.bytes,
      rangesDone: summary.ranges,
      inFlight,
      pending: pendingRanges(),
      ...(pacing ? { active: pacing.announced } : {}),
      errors: summary.errors,
      streams: active,
      connected: connectedSlots.size,
      utilization,
      idleCores,
      at: Date.now(),
    };
    bus.publishHeartbeat(hb);
  };
  /** Slots with a connection up now (the coordinator's stream tuning waits for them). */
  const connectedSlots = new Set<number>();
  const hbTimer = setInterval(heartbeat, 1000);
  heartbeat();

  let directNoted = false;
  let pipesNoted = false;
  const pool = new BufferPool(FRAME_HEADER_BYTES + CHUNK_BYTES, poolBuffers(spec.direction, spec.streams), { aligned: localWriter?.direct === true });
  // Every slot's connection attempt listens on this signal while it runs.
  setMaxListeners(signalListeners(spec.streams), abort.signal);
  const hosts = spec.remoteHosts;
  const health: HostHealth[] = hosts.map(() => ({ downUntil: 0, failures: 0 }));
  const index = options.index ?? 0;
  const completionOf = (item: WorkItem, host: RemoteHost, startedAt: number, fields: Partial<Completion>): Completion => ({
    v: MESSAGE_VERSION,
    job: options.jobId,
    range: item.range,
    attempt: item.attempt,
    offset: item.offset,
    length: item.length,
    srcHash: '',
    dstHash: '',
    durable: false,
    agent: agentId,
    remoteHost: hostLabel(host),
    startedAt,
    finishedAt: Date.now(),
    ...fields,
  });

  /** The next host to try for a worker: its own first, others while it is down. */
  let lastHostError: FerryError | undefined;
  const pickHost = async (preferred: number): Promise<number> => {
    for (;;) {
      if (health.every((h) => h.failures >= HOST_ROUNDS_BEFORE_GIVING_UP)) {
        const last = lastHostError ? `; last: ${lastHostError.message}` : '';
        fatal ??= new FerryError('HOST_UNREACHABLE', `no remote host is reachable (${hosts.map(hostLabel).join(', ')}; ${HOST_ROUNDS_BEFORE_GIVING_UP} attempts each${last}): check that sshd runs there and the network path`);
        throw fatal;
      }
      const now = Date.now();
      for (let k = 0; k < hosts.length; k++) {
        const i = (preferred + k) % hosts.length;
        if (health[i]!.downUntil <= now) return i;
      }
      const wait = Math.max(100, Math.min(...health.map((h) => h.downUntil)) - now);
      await Promise.race([sleep(wait), stopped]);
      if (stopping) throw new FerryError('INTERRUPTED', 'stopping');
    }
  };

  /** Whether more work is on its way, from what the deliveries said (shared by the slots). */
  const queue = new QueueWatch();

  const worker = async (slot: number) => {
    // Slots are numbered across the job; slot g uses host g mod H, so a cap of C per
    // host leaves slots g >= C*H idle and no host ever gets more than C connections.
    const preferred = slotHost(index, slot, spec.agentCount, hosts.length, spec.maxConnectionsPerHost);
    if (preferred === undefined) {
      log(`slot ${slot} stays idle: ${hosts.length} hosts x --max-per-host ${spec.maxConnectionsPerHost} connections are taken by lower slots`);
      return;
    }
    let hostIndex = preferred;
    let conn: RemoteConnection | undefined;
    let file: RemoteFile | undefined;
    /** Written and verified, waiting for an fsync before they are reported and acked. */
    let pending: Array<{ msg: WorkPart; completion: Completion }> = [];
    let oldestPending = 0;
    let current: WorkPart | undefined;
    let failures = 0;
    const ticker = setInterval(() => {
      current?.working();
      for (const m of queued) m.working();
      for (const p of pending) p.msg.working();
      for (const p of inFlush) p.msg.working();
    }, Math.max(1000, Math.floor(spec.ackWaitMs / 3)));

    /**
     * Ranges pulled but not started. A worker pulls one work item at a time, when
     * it is ready for it; an item holds up to 16 MiB of consecutive ranges (core's
     * rangesPerWorkItem), so a pull request stands for many small ranges.
     */
    const queued: WorkPart[] = [];
    let pulling: { done: Promise<boolean>; messages?: WorkFetch } | undefined;
    let arrived: (() => void) | undefined;
    /** Starts a pull unless one is open; resolves when it ends, true when it brought an item. */
    const pull = (): Promise<boolean> => {
      if (pulling) return pulling.done;
      const p: { done: Promise<boolean>; messages?: WorkFetch } = { done: Promise.resolve(false) };
      p.done = (async () => {
        let got = 0;
        try {
          p.messages = await bus.fetchWork(NEXT_EXPIRES_MS);
          if (stopping) p.messages.stop();
          for await (const m of p.messages.messages) {
            got++;
            let items: WorkItem[];
            try {
              items = checkedWorkItem(decodeWorkItem(m.data, options.jobId), spec);
            } catch (err) {
              log(`dropping malformed work item: ${(err as Error).message}`);
              m.term();
              continue;
            }
            queue.delivered(m.info.pending);
            queued.push(...workParts(m, items));
            arrived?.();
          }
          return got > 0;
        } finally {
          if (pulling === p) pulling = undefined;
        }
      })();
      pulling = p;
      return p.done;
    };
    /**
     * Drops queued ranges whose work item went back already (another of its ranges
     * failed here): the whole item is handed out again, so they would be moved twice.
     */
    const dropGivenBack = () => {
      while (queued.length > 0 && queued[0]!.givenBack) queued.shift();
    };
    /** The next range: a queued one, else the first a pull brings; null when a pull ends empty. */
    const takeWork = async (): Promise<WorkPart | null> => {
      for (;;) {
        dropGivenBack();
        if (queued.length > 0) return queued.shift()!;
        const came = new Promise<undefined>((resolve) => (arrived = () => resolve(undefined)));
        const full = await Promise.race([pull(), came]);
        arrived = undefined;
        dropGivenBack();
        if (queued.length > 0) return queued.shift()!;
        if (full === false) return null;
      }
    };
    /** Work pulled and not started goes back at once when the worker leaves. */
    const giveBackQueued = () => {
      pulling?.messages?.stop();
      for (const m of queued.splice(0)) m.nak();
    };

    /** Ranges written through a connection that is gone may not be on disk: give them back. */
    const giveBackPending = () => {
      for (const p of pending) p.msg.nak();
      pending = [];
    };
    const drop = () => {
      connectedSlots.delete(slot);
      giveBackPending();
      // A lent connection stays open (Preconnected.lend): its remote file must not.
      file?.close().catch(() => {});
      conn?.close();
      conn = undefined;
      file = undefined;
    };
    const connect = async () => {
      for (;;) {
        hostIndex = await pickHost(hostIndex);
        const host = hosts[hostIndex]!;
        try {
          const ready = spec.discard ? undefined : await options.preconnected?.take(host, spec);
          if (ready) {
            const whose = options.preconnected?.isLent(ready) ? "the coordinator's connection" : 'the connection';
            log(`slot ${slot}: using ${whose} to ${hostLabel(host)}, opened while the coordinator prepared`);
          }
          conn = spec.discard ? discardConnection(hostLabel(host)) : (ready ?? (await connectRemote(host, spec.ssh, { mode: spec.mode, remoteCommand: spec.remoteCommand, windowBytes: spec.windowBytes, helperTimeoutMs: agentHelperTimeoutMs(spec.ssh), signal: abort.signal })));
          if (conn.sharedHelper === 'joined') log(`slot ${slot}: joined the shared helper on ${hostLabel(host)}`);
          file = await conn.openFile(spec.remotePath, spec.direction === 'push' ? 'write' : 'read', {
            ...(spec.directIo === undefined ? {} : { direct: spec.directIo }),
            ...(spec.tempFile && spec.direction === 'push' ? { expect: spec.tempFile } : {}),
          });
          if (file.direct === false && !directNoted) {
            directNoted = true;
            log(`${spec.directIo === true ? '--direct-io' : 'direct I/O'}: ${hostLabel(host)} writes through its page cache: ${file.directReason ?? 'not supported there'}`);
          }
          if (file.pipesReason !== undefined && !pipesNoted) {
            pipesNoted = true;
            log(`${hostLabel(host)}: sshd's pipes to the helper stay at 64 KiB (${file.pipesReason}): with perl or python3 there, copies run up to 1.2x faster`);
          }
          health[hostIndex]!.failures = 0;
          health[hostIndex]!.downUntil = 0;
          connectedSlots.add(slot);
          return;
        } catch (err) {
          conn?.close();
          conn = undefined;
          const e = toFerryError(err);
          // A helper that started but stayed silent past its timeout: the coordinator has just
          // run the same helper there, so this is a slow remote side (many logins at once,
          // heavy shell start-up files); back off and try again like a lost connection.
          if (!HOST_TROUBLE.has(e.code) && !isSlowHelperStart(err)) throw e;
          lastHostError = e;
          hostFailed(health[hostIndex]!);
          log(`cannot use ${hostLabel(host)}: ${e.message}`);
          publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node, error: e.toData(), fatal: false });
          hostIndex = (hostIndex + 1) % hosts.length;
        }
      }
    };
    /** Batches being made durable in the background (fsync, report, ack), in order. */
    let flushing: Promise<void> | undefined;
    const inFlush = new Set<{ msg: WorkPart; completion: Completion }>();
    /** --verify reads every fsynced range back, except where a write's hash is a read-back already (SFTP push) or nothing is written (a discard job). */
    const readsBack = (f: RemoteFile) => spec.verify === true && spec.discard !== true && !(spec.direction === 'push' && f.writeHashIsStored === true);
    /**
     * Starts making the pending ranges durable without waiting: the fsync (and
     * with --verify the read-back) runs while the connection moves the next
     * range. If either fails (the connection died), the batch is handed back,
     * never reported.
     */
    const startDurable = () => {
      if (pending.length === 0 || !file) return;
      const batch = pending;
      pending = [];
      const f = file;
      const previous = flushing;
      for (const b of batch) inFlush.add(b);
      const run = (async () => {
        if (previous) await previous;
        let step = 'fsync';
        try {
          if (spec.direction === 'push') await f.fsync();
          else await local!.sync();
          if (readsBack(f)) {
            // --verify: what counts is the hash of what the storage now holds, not of what came in.
            step = 'reading back';
            for (const { completion: c } of batch) {
              c.dstHash = spec.direction === 'push' ? await f.hashStored(c.offset, c.length, spec.hash) : await hashStoredThrough(localWriter!, pool, spec.localPath, c.offset, c.length, spec.hash);
              c.readBack = true;
            }
          }
        } catch (err) {
          log(`${step} on ${hostLabel(hosts[hostIndex]!)} failed, ${batch.length} ranges go back: ${(err as Error).message}`);
          for (const b of batch) {
            b.msg.nak();
            inFlush.delete(b);
          }
          return;
        }
        // Each work item is acked only after its completion is stored. The batch's completions
        // go in messages of up to COMPLETIONS_PER_MESSAGE (one publish and one stored message
        // for many ranges), sent side by side. The ack itself is not waited for: if it is
        // lost, the item comes back after ack_wait and is done again, and the coordinator
        // ignores the second completion.
        const parts: Array<typeof batch> = [];
        for (let i = 0; i < batch.length; i += COMPLETIONS_PER_MESSAGE) parts.push(batch.slice(i, i + COMPLETIONS_PER_MESSAGE));
        await forEachLimit(parts, REPORTS_IN_FLIGHT, async (part) => {
          for (const b of part) b.completion.durable = true;
          try {
            const data = part.length === 1 ? encodeMessage(part[0]!.completion) : encodeMessage(makeCompletionBatch(options.jobId, part.map((b) => b.completion)));
            await publishDurably(bus, data, () => stopping);
            for (const b of part) {
              // A range that read back differently is reported all the same: the coordinator sends it again.
              if (b.completion.srcHash === b.completion.dstHash) {
                b.msg.ack();
                summary.ranges++;
              } else b.msg.term('hash mismatch on reading back');
            }
          } catch (err) {
            // NATS gone for good: the items come back after ack_wait and are done again.
            log(`cannot report ranges ${part[0]!.completion.range}..${part.at(-1)!.completion.range}: ${(err as Error).message}`);
          } finally {
            for (const b of part) inFlush.delete(b);
          }
        });
        // The acks are on their way to the server before the batch counts as reported.
        await bus.flush().catch(() => {});
      })();
      flushing = run;
      void run.finally(() => {
        if (flushing === run) flushing = undefined;
      });
    };
    const settleDurable = async () => {
      while (flushing) await flushing;
    };
    pendingCounts.set(slot, () => pending.length + inFlush.size);
    // Stagger the first connections: many agents opening many connections at once would
    // trip sshd's MaxStartups (10 unauthenticated connections by default) and be dropped.
    // A connection opened ahead of the job (warm start) has waited already.
    const stagger = slotStaggerMs(index, slot, spec.agentCount);
    if (stagger > 0 && !options.preconnected?.has(hosts[preferred]!)) await Promise.race([sleep(stagger), stopped]);
    // Connect while the first work item is on its way, not after it arrives; its
    // failure (if fatal) surfaces where a range would have connected. A slot beyond
    // the plan's range count (a small file, more slots than ranges) will most likely
    // get no work: it connects only if some arrives. (Counted in work items: small ranges
    // travel 16 to an item.)
    const likelyIdle = globalSlot(index, slot, spec.agentCount) >= workItemCount(spec.rangeCount, spec.rangeBytes);
    let early: Promise<void> | undefined = stopping || likelyIdle ? undefined : connect();
    early?.catch(() => {});

    try {
      // A slot beyond `active` retires: what it wrote is made durable and reported below.
      while (!stopping && !fatal && slot < active) {
        let msg: WorkPart | null;
        try {
          // Pulled already: no waiting (and no timer) for it.
          dropGivenBack();
          const next = queued.length > 0 ? Promise.resolve(queued.shift()!) : takeWork();
          if (pending.length > 0 && queued.length === 0) {
            // Written ranges wait for an fsync: when no work comes within a moment, or the
            // queue has run dry (the copy is ending), make them durable now, keeping the
            // same pull request open so nothing it brings is lost.
            const quiet = queue.quiet(QUIET_BEFORE_DURABLE_MS);
            const first = await orStop(Promise.race([next, quiet.done.then((): typeof QUIET => QUIET)])).finally(quiet.cancel);
            if (first === QUIET) {
              startDurable();
              msg = await orStop(next);
            } else {
              msg = first;
            }
          } else {
            msg = await orStop(next);
          }
          // An item that arrives after the stop goes back rather than wait out its ack_wait.
          if (msg === null && stopping) void next.then((m) => m?.nak(), () => {});
        } catch (err) {
          if (stopping) break;
          log(`waiting for work: ${(err as Error).message}`);
          await Promise.race([sleep(500), stopped]);
          continue;
        }
        if (!msg) {
          // No work right now: make what is written durable instead of waiting for more.
          if (!stopping) startDurable();
          continue;
        }
        const item = msg.item;
        current = msg;
        inFlight++;
        const startedAt = Date.now();
        let moved = 0;
        try {
          if (early) {
            const e = early;
            early = undefined;
            await e;
          }
          if (!file) await connect();
          // Connected, it moves data from now on: its agent's rate grows by a share (--limit-rate).
          if (pacing) announce(pacing.start(slot, Date.now()));
          const job = {
            offset: item.offset,
            length: item.length,
            algorithm: spec.hash,
            corrupt: item.attempt === 0 && options.corruptRanges?.has(item.range) === true,
            rewrite: item.attempt > 0,
            signal: abort.signal,
            ...(pace ? { pace } : {}),
            onBytes: (n: number) => {
              moved += n;
              summary.bytes += n;
            },
          };
          const result = spec.discard
            ? discardRange(job)
            : spec.direction === 'push'
              ? await pushRange(local!, spec.localPath, file!, pool, job)
              : await pullRange(localWriter!, spec.localPath, file!, pool, job);
          if (localWriter?.fallbackReason !== undefined && !directNoted) {
            directNoted = true;
            log(`--direct-io: ${localWriter.fallbackReason}`);
          }
          if (result.srcHash !== result.dstHash && spec.direction === 'push') {
            // The helper answers a WRITE before its bytes are written (serve.ts). The bad bytes
            // must be on disk before the range is sent again, or they could land after the new
            // attempt's: FSYNC waits for them. If it fails, the range goes back like any other
            // failure on this connection.
            await file!.fsync();
          }
          const completion = completionOf(item, hosts[hostIndex]!, startedAt, { srcHash: result.srcHash, dstHash: result.dstHash });
          current = undefined;
          if (result.srcHash !== result.dstHash) {
            // Report at once; the coordinator re-sends it as a new attempt.
            await publishDurably(bus, encodeMessage(completion), () => stopping);
            msg.term('hash mismatch');
          } else {
            if (pending.length === 0) oldestPending = Date.now();
            pending.push({ msg, completion });
          }
          if (pending.length >= spec.durableEveryRanges || (pending.length > 0 && Date.now() - oldestPending >= spec.durableIntervalMs)) startDurable();
          failures = 0;
        } catch (err) {
          summary.bytes -= moved;
          const e = toFerryError(err);
          const deliveries = msg.deliveries;
          if (fatal) {
            msg.nak();
          } else if (current === undefined) {
            // The range itself went through; reporting a mismatch failed (NATS gone).
            log(`reporting range ${item.range} failed: ${e.message}`);
            summary.errors++;
          } else if (stopping && e.code === 'INTERRUPTED') {
            msg.nak();
          } else if (FATAL_FOR_AGENT.has(e.code)) {
            summary.errors++;
            fatal = e;
            msg.nak();
            publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node, error: e.toData(), fatal: true });
          } else if (FATAL_FOR_JOB.has(e.code) || deliveries >= spec.maxDeliver) {
            summary.errors++;
            const error =
              FATAL_FOR_JOB.has(e.code) || e.code === 'RANGE_FAILED'
                ? e
                : new FerryError('RANGE_FAILED', `range ${item.range} (bytes ${item.offset}-${item.offset + item.length}) failed ${deliveries} times; last on ${hostLabel(hosts[hostIndex]!)} from ${agentId}: ${e.message}`, { range: item.range, host: hostLabel(hosts[hostIndex]!) });
            await publishDurably(bus, encodeMessage(completionOf(item, hosts[hostIndex]!, startedAt, { error: error.toData() })), () => stopping).catch(() => {});
            msg.term(e.code);
            // The connection is fine (the disk is full, say): keep what was written before.
            if (conn?.alive) startDurable();
            await settleDurable();
            drop();
          } else {
            // Connection trouble or a helper failure: another try, here or on another host, after a pause.
            summary.errors++;
            failures++;
            // The range goes back after a pause, before drop() hands back the written ones at
            // once: in a run of ranges the first nak decides when the whole item returns.
            msg.nak(backoffMs(failures));
            drop();
            if (HOST_TROUBLE.has(e.code)) {
              hostFailed(health[hostIndex]!);
              hostIndex = (hostIndex + 1) % hosts.length;
            }
            log(`range ${item.range}: ${e.code}: ${e.message}`);
            publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node, error: e.toData(), fatal: false });
            if (!stopping) await Promise.race([sleep(backoffMs(failures)), stopped]);
          }
        } finally {
          current = undefined;
          inFlight--;
          // Nothing more to move here for now; with the queue drained, nothing more at all: the
          // other connections get its share at once (--limit-rate).
          if (pacing && queued.length === 0) announce(pacing.stop(slot, Date.now(), queue.drained));
        }
      }
      // Stopping (or retiring): what is written is made durable and reported before the slot ends.
      giveBackQueued();
      if (conn?.alive) startDurable();
      await settleDurable();
      giveBackPending();
    } finally {
      announce(pacing?.stop(slot, Date.now(), true));
      giveBackQueued();
      await early?.catch(() => {});
      await settleDurable();
      clearInterval(ticker);
      drop();
      pendingCounts.delete(slot);
    }
  };

  /** Running workers by slot; a slot retired by a lower `active` leaves once its ranges are reported. */
  const workers = new Map<number, Promise<void>>();
  const startWorker = (slot: number) => {
    const p = worker(slot).then(
      () => {},
      (err: unknown) => {
        if (!fatal) fatal = toFerryError(err);
      },
    );
    workers.set(slot, p);
    void p.finally(() => {
      if (workers.get(slot) === p) workers.delete(slot);
    });
  };
  setActive = (n: number) => {
    if (n === active || stopping) return;
    log(`connections: ${active} -> ${n}`);
    active = n;
    for (let slot = 0; slot < active; slot++) if (!workers.has(slot)) startWorker(slot);
  };

  try {
    for (let slot = 0; slot < active; slot++) startWorker(slot);
    while (workers.size > 0) await Promise.allSettled([...workers.values()]);
    if (fatal && fatal.code === 'HOST_UNREACHABLE') {
      publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node, error: fatal.toData(), fatal: true });
    }
  } finally {
    clearInterval(hbTimer);
    if (rateTicker) clearInterval(rateTicker);
    clearInterval(lonely);
    if (parentWatch) clearInterval(parentWatch);
    heartbeat();
    await localWriter?.close().catch(() => {});
    await local?.close().catch(() => {});
    await bus.close();
    options.signal?.removeEventListener('abort', onSignal);
  }
  if (fatal && !(stopping && fatal.code === 'INTERRUPTED')) throw fatal;
  return summary;
}
