/**
 * `--limit-rate`'s arithmetic, with the clock passed in (no timers here; the
 * agent sleeps for what `take()` says).
 *
 * The cap is held by three parts:
 * - `Pacer`: one token bucket (GCRA: a "theoretical arrival time" rather than
 *   a token count) per agent process, shared by its connections, so a
 *   connection between ranges or still connecting leaves its share to the
 *   others of its process at once.
 * - `AgentPacer`: an agent's Pacer, at the per-connection share times the
 *   number of its connections moving data; it says when to announce that
 *   number to the coordinator (`start` / `tick`).
 * - `RateShares`: the coordinator's side. The cap divided by the connections
 *   moving data across the job; published to every agent whenever it changes.
 * A connection count that changes during a copy (more streams, an agent that
 * joins or finishes) needs nothing more: the count is announced and the share
 * follows.
 *
 * ```ts
 * const pacer = new Pacer(12_500_000, Date.now());
 * const waitMs = pacer.take(1 << 20, Date.now()); // sleep this long, then send 1 MiB
 * ```
 */

/**
 * How far behind its schedule a bucket may fall and catch up: the credit a
 * bucket banks while its connections are idle (a range boundary, a
 * reconnect), spent as a burst when they resume. It is also the most a copy
 * can run ahead of the cap over any stretch of time: cap x this.
 */
export const PACER_BURST_MS = 500;

/** Holds the bytes given to `take()` to a rate: a GCRA token bucket with `burstMs` of credit. */
export class Pacer {
  private perMs: number;
  /** When everything accounted so far is paid for at the rate (ms, on the caller's clock). */
  private tat: number;

  constructor(bytesPerSec: number, now: number, private readonly burstMs = PACER_BURST_MS) {
    this.perMs = positiveRate(bytesPerSec) / 1000;
    // No credit at the start: a copy does not open with a burst.
    this.tat = now;
  }

  get bytesPerSec(): number {
    return this.perMs * 1000;
  }

  /**
   * Changes the rate from `now` on. Bytes accounted and not yet paid for are
   * paid at the new rate; credit banked (idle time) stays time.
   */
  setRate(bytesPerSec: number, now: number): void {
    const perMs = positiveRate(bytesPerSec) / 1000;
    if (perMs === this.perMs) return;
    if (this.tat > now) this.tat = now + ((this.tat - now) * this.perMs) / perMs;
    this.perMs = perMs;
  }

  /** Drops the credit banked by idle time: the schedule restarts at `now` (owed bytes stay owed). */
  forgetCredit(now: number): void {
    this.tat = Math.max(this.tat, now);
  }

  /**
   * Accounts `bytes` that are to go at `now`; returns how many ms to wait
   * before sending them (0: at once). Sleeping longer than asked (timer
   * granularity) costs nothing: the next call finds the schedule behind and
   * asks for less.
   */
  take(bytes: number, now: number): number {
    // Idle time counts as credit up to burstMs: the schedule never starts further back than that.
    this.tat = Math.max(this.tat, now - this.burstMs) + bytes / this.perMs;
    return Math.max(0, this.tat - now);
  }
}

function positiveRate(bytesPerSec: number): number {
  if (!(bytesPerSec > 0) || !Number.isFinite(bytesPerSec)) throw new RangeError(`a rate must be a positive number of bytes per second, got ${bytesPerSec}`);
  return bytesPerSec;
}

/**
 * A gap with no connection moving data longer than this is not a range
 * boundary: the agent starts again without the credit it banked (it had no
 * share meanwhile; the others had it all).
 */
const BOUNDARY_MS = 100;

/**
 * One agent's pacing: a Pacer for all its connections at (the per-connection
 * share x its connections moving data), and which those are, with when to
 * tell the coordinator. A count that grows is announced at once (until the
 * coordinator lowers everyone's share the copy runs over the cap); one that
 * shrinks only once it has stayed lower for a whole tick, so the moment
 * between two ranges of a connection does not make the whole job's share
 * flap.
 */
export class AgentPacer {
  private readonly pacer: Pacer;
  private connectionRate: number;
  private readonly busy = new Set<number>();
  private announcedCount = 0;
  /** The most connections active at once since the last tick. */
  private peak = 0;
  /** Since when no connection has moved data (undefined while one does). */
  private idleSince: number | undefined;

  constructor(connectionBytesPerSec: number, now: number, burstMs = PACER_BURST_MS) {
    this.connectionRate = positiveRate(connectionBytesPerSec);
    this.pacer = new Pacer(connectionBytesPerSec, now, burstMs);
    this.idleSince = now;
  }

  /** Connections moving data now. */
  get active(): number {
    return this.busy.size;
  }

  /** The count last announced (what heartbeats repeat). */
  get announced(): number {
    return this.announcedCount;
  }

  /** The agent's rate now. */
  get bytesPerSec(): number {
    return this.pacer.bytesPerSec;
  }

  /** The coordinator's per-connection share changed. */
  setConnectionRate(bytesPerSec: number, now: number): void {
    this.connectionRate = positiveRate(bytesPerSec);
    this.follow(now);
  }

  /** Slot `slot` starts moving data (a range). Returns the count to announce now, if any. */
  start(slot: number, now: number): number | undefined {
    if (this.busy.has(slot)) return undefined;
    if (this.busy.size === 0 && this.idleSince !== undefined && now - this.idleSince > BOUNDARY_MS) this.pacer.forgetCredit(now);
    this.idleSince = undefined;
    this.busy.add(slot);
    this.peak = Math.max(this.peak, this.busy.size);
    this.follow(now);
    if (this.busy.size > this.announcedCount) return (this.announcedCount = this.busy.size);
    return undefined;
  }

  /**
   * Slot `slot` has nothing to move: a range ended with no other queued, or it
   * is reconnecting. With `last` (the job's queue is empty: it will get no
   * more) the lower count is to be announced now, not after a tick, so the
   * others get its share at once; returns it then.
   */
  stop(slot: number, now: number, last = false): number | undefined {
    if (!this.busy.delete(slot)) return undefined;
    if (this.busy.size === 0) this.idleSince = now;
    this.follow(now);
    if (!last || this.busy.size >= this.announcedCount) return undefined;
    this.peak = this.busy.size;
    return (this.announcedCount = this.busy.size);
  }

  /** Called every tick: the count to announce, if it changed and held for the whole tick. */
  tick(): number | undefined {
    const held = Math.max(this.peak, this.busy.size);
    this.peak = this.busy.size;
    if (held === this.announcedCount) return undefined;
    return (this.announcedCount = held);
  }

  /** Accounts `bytes` about to go at `now`: ms to wait first (see Pacer.take). */
  take(bytes: number, now: number): number {
    return this.pacer.take(bytes, now);
  }

  private follow(now: number): void {
    this.pacer.setRate(this.connectionRate * Math.max(1, this.busy.size), now);
  }
}

/**
 * The coordinator's side: the cap, shared by the connections moving data
 * across the job's agents, as each agent last announced them.
 */
export class RateShares {
  private readonly active = new Map<string, { connections: number; at: number }>();

  constructor(
    readonly capBytesPerSec: number,
    /** An agent not heard of for this long counts for nothing (it died, or finished). */
    private readonly staleMs = 5000,
  ) {}

  /** Agent `agent` has `connections` moving data (an announcement, or its heartbeat). */
  report(agent: string, connections: number, now: number): void {
    this.active.set(agent, { connections: Math.max(0, connections), at: now });
  }

  forget(agent: string): void {
    this.active.delete(agent);
  }

  /** Connections moving data across the job, as far as is known at `now`. */
  connections(now: number): number {
    let n = 0;
    for (const { connections, at } of this.active.values()) if (now - at <= this.staleMs) n += connections;
    return n;
  }

  /** What each connection moving data may use: the cap over their number (the whole cap for one, or none known). */
  perConnection(now: number): number {
    return this.capBytesPerSec / Math.max(1, this.connections(now));
  }
}
