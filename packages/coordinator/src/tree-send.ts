/**
 * The streams of a tree copy: batches of entries (small files, symlinks, a
 * mid-sized file alone) handed to a pool of SSH connections, each keeping a
 * few batches in flight (one batch's bytes follow the last at once; each
 * batch costs the helper's one answer, not a round trip per file). What a
 * batch does on its connection is the caller's `transfer`: a push writes it
 * (`pushTransfer`, agent's tree-push.ts), a pull reads it (tree-fetch.ts).
 *
 * A connection that dies gives its batches back: they go out again on
 * another (or a new) connection, up to `maxAttempts` times; entries of a batch
 * that fails for good are reported failed, never silently dropped.
 *
 * `TreeOutbox` is a tree copy's send stage, where the plan's entries go
 * (tree-plan.ts's PlanSink): their directories made first (one BATCH of
 * `dir` entries on the coordinator's connection), then the entries as one
 * batch to the pool (`TreeSender`) or to agents on other nodes
 * (tree-agents.ts's `AgentBatches`).
 */
import { FerryError, Pacer, copyMode, toFerryError } from '@ferry/core';
import type { BatchEntry, TreeEntry } from '@ferry/core';
import type { BatchResult, RemoteConnection } from '@ferry/transport';
import type { Pace, WireBatch } from '@ferry/agent';
import { connectAny } from './prepare.js';
import { AgentBatches, treeUsesAgents } from './tree-agents.js';
import type { TreeContext } from './tree-context.js';
import { pullTransfer } from './tree-fetch.js';
import type { TreeDestination } from './tree-finalize.js';
import { wireMeta } from './tree-meta.js';
import type { PlanSink, TreePlan } from './tree-plan.js';

export type { WireBatch } from '@ferry/agent';
export { pushTransfer } from '@ferry/agent';
import { pushTransfer } from '@ferry/agent';

export interface SenderOptions {
  /** Connections used at most. */
  streams: number;
  /** Batches in flight on one connection. */
  perConnection?: number;
  /** Opens a connection (the caller's hosts, settings, retries). */
  connect: () => Promise<RemoteConnection>;
  /** Moves one batch over `conn`: one result per entry; rejects when the whole batch failed. */
  transfer: (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]>;
  /** Tries of one batch before its entries count as failed. */
  maxAttempts?: number;
  /** Every batch's outcome, one result per entry (errors from reading the source replace the wire's). */
  onResult: (batch: WireBatch, results: BatchResult[]) => Promise<void>;
  log: (message: string) => void;
  signal?: AbortSignal;
}

const DEFAULT_PER_CONNECTION = 2;
const DEFAULT_MAX_ATTEMPTS = 3;

/** Errors of one connection: its batches go out again elsewhere. */
const CONNECTION_TROUBLE = new Set(['CONNECTION_LOST', 'HOST_UNREACHABLE', 'DEST_IO']);

export class TreeSender {
  private readonly queue: WireBatch[] = [];
  private readonly waiters: Array<() => void> = [];
  private readonly spaceWaiters: Array<() => void> = [];
  private closed = false;
  private failure: FerryError | undefined;
  private readonly lanes: Promise<void>[] = [];
  private readonly conns: Array<Promise<RemoteConnection> | undefined> = [];
  private readonly perConnection: number;
  private readonly maxAttempts: number;
  private readonly limit: number;
  private started = 0;
  private busy = 0;

  constructor(private readonly options: SenderOptions) {
    this.perConnection = Math.max(1, options.perConnection ?? DEFAULT_PER_CONNECTION);
    this.maxAttempts = Math.max(1, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    this.limit = options.streams * this.perConnection * 2;
  }

  /** Queues a batch; waits while the queue is full (the walk is held back, memory stays bounded). */
  async submit(batch: WireBatch): Promise<void> {
    if (this.failure) throw this.failure;
    while (this.queue.length >= this.limit && !this.failure) await new Promise<void>((r) => this.spaceWaiters.push(r));
    if (this.failure) throw this.failure;
    this.queue.push(batch);
    // A connection opens only when there is work for it: a tree of ten files uses one.
    if (this.started < this.options.streams * this.perConnection && this.busy + this.queue.length > this.started) this.startLane();
    this.waiters.shift()?.();
  }

  /** Waits until every batch is settled, then closes the connections. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w();
    try {
      await Promise.all(this.lanes);
    } finally {
      for (const c of this.conns) void c?.then((conn) => conn.close(), () => {});
    }
    if (this.failure) throw this.failure;
  }

  /** Connections opened so far. */
  get connections(): number {
    return this.conns.filter((c) => c !== undefined).length;
  }

  private startLane(): void {
    const lane = this.started++;
    const slot = Math.floor(lane / this.perConnection) % this.options.streams;
    this.lanes.push(this.runLane(slot).catch((err: unknown) => this.fail(toFerryError(err))));
  }

  private fail(err: FerryError): void {
    this.failure ??= err;
    for (const w of this.spaceWaiters.splice(0)) w();
    for (const w of this.waiters.splice(0)) w();
  }

  private async take(): Promise<WireBatch | undefined> {
    for (;;) {
      if (this.failure) return undefined;
      const b = this.queue.shift();
      if (b) {
        this.spaceWaiters.shift()?.();
        return b;
      }
      if (this.closed) return undefined;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  private connection(slot: number): Promise<RemoteConnection> {
    let c = this.conns[slot];
    if (!c) {
      c = this.options.connect();
      this.conns[slot] = c;
      c.catch(() => {
        if (this.conns[slot] === c) this.conns[slot] = undefined;
      });
    }
    return c;
  }

  private async runLane(slot: number): Promise<void> {
    for (;;) {
      if (this.options.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted: rerun the same command to go on');
      const batch = await this.take();
      if (!batch) return;
      this.busy++;
      try {
        await this.sendOnce(slot, batch);
      } finally {
        this.busy--;
      }
    }
  }

  private async sendOnce(slot: number, batch: WireBatch): Promise<void> {
    batch.attempts++;
    let conn: RemoteConnection | undefined;
    try {
      conn = await this.connection(slot);
      const results = await this.options.transfer(conn, batch);
      await this.options.onResult(batch, results);
    } catch (err) {
      if (this.options.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted: rerun the same command to go on');
      const e = toFerryError(err);
      if (!CONNECTION_TROUBLE.has(e.code) && conn?.alive !== false) throw e;
      // The connection is gone: a new one for this slot, and the batch goes out again.
      if (conn && this.conns[slot]) {
        const dead = this.conns[slot];
        this.conns[slot] = undefined;
        void dead?.then((c) => c.close(), () => {});
      }
      if (batch.attempts >= this.maxAttempts) {
        this.options.log(`a batch of ${batch.entries.length} entries failed ${batch.attempts} times: ${e.message}`);
        if (e.code !== 'DEST_IO' || conn?.alive === false) {
          // The host is gone, not these entries: every later batch would fail the same way, one
          // by one. The copy stops; what arrived is journaled and a rerun goes on from there.
          throw new FerryError('CONNECTION_LOST', `lost the connection to ${e.host ?? 'the remote host'} and could not connect again (${batch.attempts} tries: ${e.message}); what arrived is journaled: rerun the same command to go on`, { ...(e.host ? { host: e.host } : {}), cause: e });
        }
        await this.options.onResult(batch, batch.entries.map(() => ({ ok: false as const, error: e.toData() })));
        return;
      }
      this.options.log(`connection trouble (${e.code}: ${e.message}): a batch of ${batch.entries.length} entries goes out again`);
      await new Promise((r) => setTimeout(r, 200 * batch.attempts));
      this.queue.unshift(batch);
      this.waiters.shift()?.();
    }
  }
}

/** Connections of a tree's batches when --streams is not given. */
const DEFAULT_TREE_STREAMS = 4;

/** What a tree's send stage is given. */
export interface OutboxSetup {
  ctx: TreeContext;
  plan: TreePlan;
  /** Where directories are made (the coordinator's connection, or this host for a pull). */
  dest: TreeDestination;
  jobDir: string;
  /** Whether the copy stopped (--fail-fast, a full destination): no further batch goes out. */
  stopped: () => boolean;
  /** Stage 5 (collect): each batch's results (tree-collect.ts). */
  onResult: (batch: WireBatch, results: BatchResult[]) => Promise<void>;
}

/** A tree copy's send stage: the plan's entries, their directories first, to the streams or the agents. */
export class TreeOutbox implements PlanSink {
  /** Connections the batches use at most. */
  readonly streams: number;
  private readonly sender: TreeSender | AgentBatches;

  constructor(private readonly setup: OutboxSetup) {
    const { request, options, target, algorithm, emit } = setup.ctx;
    this.streams = options.tuneStreams ? DEFAULT_TREE_STREAMS : Math.max(1, options.streams * options.agents);
    // Agents on other nodes (ferry run -r, --launcher): the batches go to them over NATS (tree-agents.ts), a push's and a pull's.
    const streams = options.tuneStreams ? DEFAULT_TREE_STREAMS : options.streams;
    const pace = options.limitBytesPerSec ? paceTo(options.limitBytesPerSec) : undefined;
    const sourcePath = (e: TreeEntry) => setup.ctx.sourcePath(e.path);
    this.sender = treeUsesAgents(request)
      ? new AgentBatches({ request, options, target, jobDir: setup.jobDir, algorithm, mode: target.conn.mode, streams, emit, onResult: setup.onResult })
      : new TreeSender({
          streams: this.streams,
          connect: async () => (await connectAny(target.hosts, target.ssh, target.connectOptions)).conn,
          transfer: stopping(setup.stopped, target.direction === 'pull' ? pullTransfer(algorithm, sourcePath, pace) : pushTransfer(algorithm, sourcePath, pace)),
          onResult: setup.onResult,
          log: (message) => emit({ type: 'log', message }),
          ...(request.signal ? { signal: request.signal } : {}),
        });
  }

  /** Entries to write, as one batch, once their directories exist; one whose directory could not be made fails. */
  async send(entries: TreeEntry[]): Promise<void> {
    const { plan } = this.setup;
    if (entries.length === 0) return;
    for (const e of entries) plan.touch(e.path);
    // Their directories exist before any of them is written.
    await this.makeDirs();
    // A directory that could not be made (found just now): nothing goes in it.
    entries = entries.filter((e) => !plan.underFailedDir(e.path));
    if (entries.length === 0) return;
    const wire = entries.map((e) => this.wireEntry(e));
    const batch: WireBatch = { entries, wire, bytes: entries.reduce((n, e) => n + e.size, 0), attempts: 0 };
    await this.sender.submit(batch);
  }

  private wireEntry(e: TreeEntry): BatchEntry {
    const { options, umask, meta } = this.setup.ctx;
    // Whole milliseconds on the wire (scp -p keeps whole seconds).
    const times = options.preserve ? { mtimeMs: Math.floor(e.mtimeMs), atimeMs: Math.floor(e.atimeMs) } : {};
    const path = this.setup.ctx.destPath(e.path);
    const wire = wireMeta(meta, e);
    if (e.kind === 'symlink') return { kind: 'symlink', path, target: e.target!, ...times, ...wire };
    return { kind: 'file', path, size: e.size, mode: copyMode(e.mode, umask, options.preserve), ...times, ...wire };
  }

  /** Makes the directories the walk has found so far (one BATCH); the root that cannot be made fails the copy, another fails alone. */
  async makeDirs(): Promise<void> {
    const { ctx, plan, dest } = this.setup;
    const dirs = plan.takePendingDirs();
    if (dirs.length === 0) return;
    for (const d of dirs) plan.touch(d.path);
    const wire: BatchEntry[] = dirs.map((d) => ({ kind: 'dir', path: ctx.destPath(d.path) }));
    const results = await dest.apply(wire);
    results.forEach((r, i) => {
      const d = dirs[i]!;
      if (r.ok) {
        ctx.counters.dirs++;
        return;
      }
      if (d.path === '') throw new FerryError(r.error.code, `cannot create ${ctx.target.destinationLabel}: ${r.error.message}`, { path: ctx.target.targetRoot });
      plan.dirNotMade(d.path);
      ctx.fail(d.path, r.error);
    });
  }

  /** Waits until every batch is settled (and journaled), then closes the connections. */
  close(): Promise<void> {
    return this.sender.close();
  }
}

/** --fail-fast or a full destination: once stopped, no further batch goes out (the sender then ends its lanes). */
function stopping<T extends (conn: RemoteConnection, batch: WireBatch) => Promise<BatchResult[]>>(stopped: () => boolean, transfer: T): T {
  return (async (conn: RemoteConnection, batch: WireBatch) => {
    // Not a connection's trouble: the sender stops rather than send the batch again.
    if (stopped()) throw new FerryError('INTERRUPTED', 'stopped at a failure that stops the copy (--fail-fast, a full destination)');
    return transfer(conn, batch);
  }) as T;
}

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
