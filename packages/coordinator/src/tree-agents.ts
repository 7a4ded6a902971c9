/**
 * The send stage of a tree copy when agents run on other nodes (`ferry run
 * -r` under srun or mpirun, `cp -r --launcher srun|ssh|mpirun`): batches of
 * small files become work items on the job's shared queue (NATS JetStream,
 * as ranges are), taken by any agent on any node. For a push, each agent
 * reads the files from the shared source file system and writes the batch
 * over its own connection; for a pull, it reads the batch from the remote
 * side over its own connection (READ_BATCH) and writes it into the shared
 * destination file system (agent's batch-agent.ts). Then it stores one
 * result per entry. The results come back here and go to the same
 * `onResult` as the coordinator's own sender's (tree-send.ts), which
 * journals them.
 *
 * A batch whose agent dies is handed out again by JetStream once its ack wait
 * passes; one handed out `maxDeliver` times without a result fails its
 * entries (listed, never dropped). Results are acted on only for a batch
 * outstanding here, from an agent of this run, for entries not reported yet.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  DEFAULT_MAX_DELIVER,
  RateShares,
  FerryError,
  MESSAGE_VERSION,
  AGENT_EXEC_ENV,
  JOB_SPEC_SHA256_ENV,
  NATS_TLS_ENV,
  agentExecOf,
  batchDoneProblem,
  decodeAgentEvent,
  decodeBatchDone,
  decodeBatchWorkItem,
  decodeHeartbeat,
  encodeAgentExec,
  encodeClientTls,
  encodeMessage,
  specDigest,
  toFerryError,
} from '@ferry/core';
import type { BatchWorkItem, HashAlgorithm, JobSpec, ResolvedCopyOptions, TransferMode } from '@ferry/core';
import type { WireBatch } from '@ferry/agent';
import { LocalLauncher } from '@ferry/launcher';
import type { AgentExit, LaunchedAgents } from '@ferry/launcher';
import { diesWithThisProcess } from '@ferry/transport';
import type { BatchResult } from '@ferry/transport';
import type { CopyRequest } from './copy.js';
import { firstExternalAddress } from './copy.js';
import type { CopyEvent } from './events.js';
import type { CompletionFeed, JobBus } from './job-bus.js';
import { stopStale } from './nats-server.js';
import type { TreeTarget } from './tree-target.js';

/** Whether a tree's batches go to agents over NATS rather than through the coordinator's own connections (either direction). */
export function treeUsesAgents(request: Pick<CopyRequest, 'externalAgents' | 'launcher'>): boolean {
  return (request.externalAgents ?? 0) > 0 || (request.launcher !== undefined && request.launcher.name !== 'local');
}

/** A batch work item's encoded size, at most: NATS's payload limit is 1 MiB. */
const MAX_ITEM_BYTES = 768 * 1024;
/** An agent silent this long counts as gone (agents heartbeat every second). */
const AGENT_SILENCE_MS = 60_000;
/** Agents get this long to finish and leave after the stop before they are killed. */
const AGENT_STOP_GRACE_MS = 15_000;
/** Rejected results shown one by one, at most. */
const MAX_REJECTIONS_SHOWN = 20;
/** How long a batch may fail to be stored in NATS (a restarting nats-server) before the stage gives up. */
const PUBLISH_DEADLINE_MS = 5 * 60_000;
/** Agent names a run keeps, at most (more are not ours). */
const MAX_KNOWN_AGENTS = 1024;

export interface AgentBatchesOptions {
  request: CopyRequest;
  options: ResolvedCopyOptions;
  target: TreeTarget;
  jobDir: string;
  algorithm: HashAlgorithm;
  /** The coordinator's connection's data path: the agents use the same. */
  mode: TransferMode;
  /** Connections per agent. */
  streams: number;
  emit: (e: CopyEvent) => void;
  /** Results of entries of `batch` (a part of a submitted batch, in its order), once each. */
  onResult: (batch: WireBatch, results: BatchResult[]) => Promise<void>;
}

interface Outstanding {
  batch: WireBatch;
  attempt: number;
  /** Entries whose result has been handed to onResult. */
  reported: Uint8Array;
  left: number;
}

/** The send stage over agents: `submit` and `close` as the coordinator's own TreeSender. */
export class AgentBatches {
  private bus: JobBus | undefined;
  private starting: Promise<void> | undefined;
  private readonly outstanding = new Map<number, Outstanding>();
  private nextBatch = 0;
  private readonly waiters: Array<() => void> = [];
  private failure: FerryError | undefined;
  private lastAgentError: FerryError | undefined;
  private readonly heartbeats = new Map<string, { seenAt: number; inFlight: number }>();
  private readonly knownAgents = new Set<string>();
  /** Batches each agent reported, and its node: said at the end. */
  private readonly byAgent = new Map<string, { node: string; batches: number }>();
  private readonly cleanup: Array<() => unknown> = [];
  private feed: CompletionFeed | undefined;
  private consuming: Promise<void> | undefined;
  private launched: LaunchedAgents | undefined;
  private readonly exits: AgentExit[] = [];
  private ownAgents = 0;
  private rejections = 0;
  /** The agents were told to stop: their exits are expected, not a failure. */
  private stopping = false;
  private readonly runTag = Date.now().toString(36);
  private readonly limit: number;

  constructor(private readonly o: AgentBatchesOptions) {
    // Enough batches out for every agent's connections, twice over; memory stays bounded.
    this.limit = Math.max(4, 2 * o.streams * Math.max(1, o.options.agents));
  }

  private get jobId(): string {
    return this.o.target.jobId;
  }

  async submit(batch: WireBatch): Promise<void> {
    if (this.failure) throw this.failure;
    // The job's NATS and agents start with the first batch: a tree of directories alone needs neither.
    this.starting ??= this.start();
    await this.starting;
    for (const part of splitForBus(batch, (b) => this.item(0, 0, b))) {
      while (this.outstanding.size >= this.limit && !this.failure) await new Promise<void>((r) => this.waiters.push(r));
      if (this.failure) throw this.failure;
      const id = this.nextBatch++;
      this.outstanding.set(id, { batch: part, attempt: 0, reported: new Uint8Array(part.entries.length), left: part.entries.length });
      await this.publish(id);
      if (this.failure) throw this.failure;
    }
  }

  /** Waits until every batch is reported, stops the agents, closes the control plane. */
  async close(): Promise<void> {
    if (!this.starting) return;
    try {
      await this.starting;
      while (this.outstanding.size > 0 && !this.failure) await new Promise<void>((r) => this.waiters.push(r));
    } catch (err) {
      this.fail(toFerryError(err));
    }
    await this.shutdown();
    if (this.failure) throw this.failure;
  }

  /** The work item of `batch`: paths relative to the roots, the rest as the helper gets it. */
  private item(id: number, attempt: number, batch: WireBatch): BatchWorkItem {
    return { v: MESSAGE_VERSION, job: this.jobId, type: 'batch', batch: id, attempt, entries: batch.wire.map((w, i) => ({ ...w, path: batch.entries[i]!.path })) };
  }

  /**
   * Stores batch `id`'s work item in the queue. A nats-server restarting drops
   * what it was sent meanwhile unanswered (or answers that no stream takes it
   * yet): the same message goes out again, under the same id (stored once), until
   * PUBLISH_DEADLINE_MS. Past it, the stage fails rather than wait for a batch
   * nobody can take.
   */
  private async publish(id: number): Promise<void> {
    const o = this.outstanding.get(id);
    if (!o || !this.bus) return;
    const data = encodeMessage(this.item(id, o.attempt, o.batch));
    const msgId = `${this.jobId}:b${id}:${o.attempt}:${this.runTag}`;
    const deadline = Date.now() + PUBLISH_DEADLINE_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.bus.publishWork(undefined, data, msgId);
        return;
      } catch (err) {
        if (this.failure) return;
        if (Date.now() > deadline) {
          this.fail(new FerryError('NATS_UNREACHABLE', `cannot store batch ${id} in NATS for ${PUBLISH_DEADLINE_MS / 1000} s (last: ${(err as Error).message}): rerun the same command to go on`, { cause: err }));
          return;
        }
        if (attempt === 0) this.o.emit({ type: 'log', message: `storing batch ${id} in NATS again: ${(err as Error).message}` });
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
  }

  private fail(err: FerryError): void {
    this.failure ??= err;
    for (const w of this.waiters.splice(0)) w();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async start(): Promise<void> {
    const { request, options, target, emit } = this.o;
    const external = request.externalAgents ?? 0;
    this.ownAgents = Math.max(external > 0 ? 0 : 1, options.agents - external);
    const agentCount = Math.max(1, this.ownAgents + external);
    const pull = target.direction === 'pull';
    // A pull's agents write only into the directory made here (the same inode), never a node's own of that name.
    const rootIno = pull ? (await stat(target.targetRoot)).ino : undefined;
    const spec: JobSpec = {
      v: MESSAGE_VERSION,
      jobId: this.jobId,
      direction: target.direction,
      mode: this.o.mode,
      // The tree's local root and its remote one: a push's source and destination, a pull's destination and source.
      localPath: pull ? target.targetRoot : target.sourceRoot,
      remotePath: pull ? target.sourceRoot : target.targetRoot,
      remoteHosts: target.hosts,
      remoteCommand: options.remoteCommand,
      fileBytes: 0,
      rangeBytes: 1024 * 1024,
      rangeCount: 0,
      hash: this.o.algorithm,
      streams: this.o.streams,
      windowBytes: options.windowBytes,
      // --limit-rate: each connection's share until the agents say how many move data (below).
      connectionBytesPerSec: options.limitBytesPerSec ? Math.max(1, Math.floor(options.limitBytesPerSec / (agentCount * this.o.streams))) : 0,
      maxConnectionsPerHost: options.maxConnectionsPerHost,
      agentCount,
      ackWaitMs: options.ackWaitMs,
      maxDeliver: DEFAULT_MAX_DELIVER,
      durableEveryRanges: 1,
      durableIntervalMs: 0,
      ssh: target.ssh,
      createdAt: Date.now(),
      tree: true,
      ...(rootIno !== undefined ? { treeRootIno: rootIno } : {}),
    };
    const remoteAgents = external > 0 || (request.launcher !== undefined && request.launcher.name !== 'local');
    const listen = request.natsListen ?? (remoteAgents ? '0.0.0.0' : '127.0.0.1');
    const advertise = request.natsAdvertise ?? (listen === '0.0.0.0' ? firstExternalAddress() : listen);
    // What a coordinator killed before left running.
    await stopStale(join(this.o.jobDir, 'nats', 'nats.pid'));
    const { openNatsJobBus } = await import('./nats-job-bus.js');
    const bus = await openNatsJobBus({ jobId: this.jobId, jobDir: this.o.jobDir, url: options.natsUrl, token: options.natsUrl ? process.env.FERRY_NATS_TOKEN : undefined, listen, advertise, fresh: true });
    this.bus = bus;
    await bus.start(spec);
    const onAbort = () => this.fail(new FerryError('INTERRUPTED', 'interrupted'));
    if (request.signal?.aborted) onAbort();
    request.signal?.addEventListener('abort', onAbort, { once: true });
    this.cleanup.push(() => request.signal?.removeEventListener('abort', onAbort));

    // --limit-rate, as for a single file's ranges (publish.ts): the cap over the connections moving
    // batches across the agents, sent to every agent when their count changes it, and once a
    // second in case a message was lost.
    const shares = options.limitBytesPerSec ? new RateShares(options.limitBytesPerSec) : undefined;
    let sharePublished = spec.connectionBytesPerSec;
    const publishShare = (always = false) => {
      if (!shares) return;
      const share = Math.max(1, Math.floor(shares.perConnection(Date.now())));
      if (share === sharePublished && !always) return;
      sharePublished = share;
      void bus.control(encodeMessage({ v: MESSAGE_VERSION, job: this.jobId, type: 'rate', connectionBytesPerSec: share }), 'rate').catch(() => {});
    };
    if (shares) {
      const t = setInterval(() => publishShare(true), 1000);
      this.cleanup.push(() => clearInterval(t));
    }
    const reportActive = (agent: string, active: unknown) => {
      if (!shares || typeof active !== 'number' || !this.knownAgents.has(agent)) return;
      shares.report(agent, active, Date.now());
      publishShare();
    };

    bus.onHeartbeat((data) => {
      try {
        const hb = decodeHeartbeat(data, this.jobId);
        this.know(hb.agent);
        if (this.knownAgents.has(hb.agent) && !this.byAgent.has(hb.agent)) this.byAgent.set(hb.agent, { node: String(hb.node), batches: 0 });
        this.heartbeats.set(hb.agent, { seenAt: Date.now(), inFlight: hb.inFlight });
        reportActive(hb.agent, hb.active);
      } catch {
        // a stray or foreign message
      }
    });
    bus.onEvent((data) => {
      try {
        const ev = decodeAgentEvent(data, this.jobId);
        if (ev.type === 'agent.started') {
          this.know(ev.agent);
          if (this.knownAgents.has(ev.agent)) this.byAgent.set(ev.agent, { node: ev.node, batches: this.byAgent.get(ev.agent)?.batches ?? 0 });
          emit({ type: 'agent.start', agent: ev.agent, node: ev.node, pid: ev.pid, index: ev.index });
        } else if (ev.type === 'agent.active') {
          reportActive(ev.agent, ev.active);
        } else if (ev.type === 'agent.error') {
          emit({ type: 'agent.error', agent: ev.agent, code: ev.error.code, message: ev.error.message, fatal: ev.fatal });
          if (ev.fatal) this.lastAgentError = FerryError.fromData(ev.error);
        }
      } catch {
        // ignore
      }
    });
    bus.onMaxDeliveries((_item, deliveries, data) => void this.given(deliveries, data).catch((err: unknown) => this.fail(toFerryError(err))));

    this.feed = await bus.completions();
    const feed = this.feed;
    this.consuming = (async () => {
      try {
        for await (const m of feed.messages) {
          await this.handle(m.data);
          m.ack();
        }
      } catch (err) {
        this.fail(toFerryError(err));
      }
    })();

    const joinTls = bus.join?.tls ? encodeClientTls(bus.join.tls) : undefined;
    const specSha256 = specDigest(encodeMessage(spec));
    if (bus.join) await request.onRendezvous?.({ jobId: this.jobId, url: bus.join.url, token: bus.join.token, specSha256, ...(joinTls ? { tls: joinTls } : {}) });
    if (this.ownAgents > 0) {
      const launcher = request.launcher ?? new LocalLauncher({ wrapCommand: (argv) => diesWithThisProcess(argv, 'KILL') });
      // What agents run comes from their environment, never from the bus; secrets never on argv.
      const env = { [AGENT_EXEC_ENV]: encodeAgentExec(agentExecOf(spec)), [JOB_SPEC_SHA256_ENV]: specSha256 };
      const secretEnv = { ...(bus.join?.token ? { FERRY_NATS_TOKEN: bus.join.token } : {}), ...(joinTls ? { [NATS_TLS_ENV]: joinTls } : {}) };
      this.launched = await launcher.launch({
        count: this.ownAgents,
        command: [...request.agentCommand, '--job', this.jobId, '--nats', bus.join!.url],
        env,
        secretEnv,
        argsFor: launcher.name === 'local' || launcher.name === 'ssh' ? (i) => ['--index', String(external + i)] : undefined,
        onStderr: (i, line) => emit({ type: 'log', message: `agent ${i}: ${line}` }),
      });
      this.launched.onExit((exit) => {
        this.exits.push(exit);
        emit({ type: 'agent.exit', index: exit.index, code: exit.code, signal: exit.signal });
        if (this.exits.length === this.ownAgents && external === 0 && !this.stopping) this.fail(this.agentsGone(`all ${this.ownAgents} agents exited`));
      });
    }
    if (external > 0) {
      const since = Date.now();
      const watchdog = setInterval(() => {
        const newest = Math.max(since, ...[...this.heartbeats.values()].map((h) => h.seenAt));
        if (this.exits.length === this.ownAgents && Date.now() - newest > AGENT_SILENCE_MS) this.fail(this.agentsGone(`no agent has reported for ${AGENT_SILENCE_MS / 1000} s`));
      }, 1000);
      this.cleanup.push(() => clearInterval(watchdog));
    }
  }

  private know(agent: unknown): void {
    if (typeof agent === 'string' && agent.length > 0 && agent.length <= 256 && this.knownAgents.size < MAX_KNOWN_AGENTS) this.knownAgents.add(agent);
  }

  private agentsGone(why: string): FerryError {
    const left = [...this.outstanding.values()].reduce((n, o) => n + o.left, 0);
    const failed = this.exits.filter((e) => e.code !== 0);
    const last = failed.at(-1);
    if (!this.lastAgentError && last && failed.length === this.exits.length) {
      return new FerryError('AGENTS_FAILED', `agent launch via ${last.launcher} failed (exit ${last.code ?? last.signal}): ${last.commandLine}${last.stderrTail ? `\n${last.stderrTail}` : ''}`);
    }
    return this.lastAgentError ?? new FerryError('AGENTS_FAILED', `${why} with ${left} entries of the tree's batches not written: rerun the same command to go on`);
  }

  /** One stored result message: its entries' results, once each, to onResult. */
  private async handle(data: Uint8Array): Promise<void> {
    let done;
    try {
      done = decodeBatchDone(data, this.jobId);
    } catch (err) {
      this.reject(`ignoring a malformed batch result: ${(err as Error).message}`);
      return;
    }
    const o = this.outstanding.get(done.batch);
    // Reported whole already (a batch done twice after a lost ack), or never handed out.
    if (!o) return;
    const problem = batchDoneProblem(done, o.batch.entries.length) ?? (this.knownAgents.has(done.agent) ? undefined : `agent '${String(done.agent).slice(0, 80)}' is not one of this job's agents`);
    if (problem !== undefined) {
      // Its real results may be these: the batch goes out again rather than be lost.
      this.reject(`ignoring results of batch ${done.batch}: ${problem}`);
      o.attempt++;
      if (o.attempt >= DEFAULT_MAX_DELIVER) return this.giveUp(done.batch, o, `its results were refused ${o.attempt} times (last: ${problem})`);
      await this.publish(done.batch);
      return;
    }
    const index: number[] = [];
    const results: BatchResult[] = [];
    done.results.forEach((r, k) => {
      const i = done.from + k;
      if (o.reported[i]) return;
      o.reported[i] = 1;
      o.left--;
      index.push(i);
      results.push(r.ok ? { ok: true, ...(r.hash ? { dstHash: r.hash } : {}) } : { ok: false, error: r.error });
    });
    if (index.length > 0) await this.o.onResult(partOf(o.batch, index), results);
    if (done.from === 0) {
      const a = this.byAgent.get(done.agent);
      if (a) a.batches++;
    }
    if (o.left === 0) {
      this.outstanding.delete(done.batch);
      this.wake();
    }
  }

  private reject(message: string): void {
    this.rejections++;
    if (this.rejections <= MAX_REJECTIONS_SHOWN) this.o.emit({ type: 'warning', message: `${message}${this.rejections === MAX_REJECTIONS_SHOWN ? ' (further ones are not shown)' : ''}` });
  }

  /** A batch handed out its last time without a result (agents crashing or losing their connections on it). */
  private async given(deliveries: number, data: Uint8Array | undefined): Promise<void> {
    let id: number | undefined;
    try {
      id = data ? decodeBatchWorkItem(data, this.jobId).batch : undefined;
    } catch {
      // not a batch of ours
    }
    const o = id === undefined ? undefined : this.outstanding.get(id);
    if (id === undefined || !o) return;
    // Give an agent's late results a moment to arrive first.
    await new Promise((r) => setTimeout(r, 2000));
    if (this.outstanding.get(id) !== o) return;
    await this.giveUp(id, o, `it was handed out ${deliveries} times without a result (agents crashing or losing their connections on it): see the agents' messages with -v`);
  }

  private async giveUp(id: number, o: Outstanding, why: string): Promise<void> {
    const index = [...o.reported.keys()].filter((i) => !o.reported[i]);
    this.outstanding.delete(id);
    const error = new FerryError('AGENTS_FAILED', `not written: ${why}`).toData();
    if (index.length > 0) await this.o.onResult(partOf(o.batch, index), index.map(() => ({ ok: false as const, error })));
    this.wake();
  }

  /** However the stage ended: agents stop and leave, their last results are handled, NATS closes. */
  private async shutdown(): Promise<void> {
    const bus = this.bus;
    if (!bus) return;
    const reason = this.failure ? (this.failure.code === 'INTERRUPTED' ? 'interrupted' : `job failed: ${this.failure.code}`) : 'job done';
    this.stopping = true;
    await bus.control(encodeMessage({ v: MESSAGE_VERSION, job: this.jobId, type: 'stop', reason }), 'stop');
    if (this.launched) {
      const launched = this.launched;
      const killTimer = setTimeout(() => void launched.stop(1000), AGENT_STOP_GRACE_MS);
      await launched.exited;
      clearTimeout(killTimer);
    }
    // Joined agents leave on the stop; give those with a batch in hand a moment to report it.
    const deadline = Date.now() + AGENT_STOP_GRACE_MS;
    while (Date.now() < deadline && [...this.heartbeats.values()].some((h) => Date.now() - h.seenAt < 2500 && h.inFlight > 0)) await new Promise((r) => setTimeout(r, 200));
    await bus.settle();
    this.feed?.stop();
    await this.consuming;
    for (const [agent, a] of this.byAgent) this.o.emit({ type: 'log', message: `${agent} on ${a.node}: ${a.batches} batches` });
    for (const fn of this.cleanup.reverse()) await Promise.resolve(fn()).catch(() => {});
    const { after } = await bus.close(this.failure === undefined).catch(() => ({ after: undefined }));
    await after;
  }
}

/** Entries `index` of `batch`, in that order. */
function partOf(batch: WireBatch, index: readonly number[]): WireBatch {
  const entries = index.map((i) => batch.entries[i]!);
  return { entries, wire: index.map((i) => batch.wire[i]!), bytes: entries.reduce((n, e) => n + e.size, 0), attempts: batch.attempts };
}

/** A batch cut in halves until each half's work item fits in one NATS message. */
export function splitForBus(batch: WireBatch, itemOf: (b: WireBatch) => BatchWorkItem): WireBatch[] {
  if (batch.entries.length <= 1 || encodeMessage(itemOf(batch)).length <= MAX_ITEM_BYTES) return [batch];
  const half = Math.ceil(batch.entries.length / 2);
  const first = [...Array(half).keys()];
  const second = [...Array(batch.entries.length - half).keys()].map((i) => i + half);
  return [...splitForBus(partOf(batch, first), itemOf), ...splitForBus(partOf(batch, second), itemOf)];
}
