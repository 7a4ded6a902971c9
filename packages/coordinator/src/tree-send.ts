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
 */
import { FerryError, toFerryError } from '@ferry/core';
import type { BatchResult, RemoteConnection } from '@ferry/transport';
import type { WireBatch } from '@ferry/agent';

export type { WireBatch } from '@ferry/agent';
export { pushTransfer } from '@ferry/agent';

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
