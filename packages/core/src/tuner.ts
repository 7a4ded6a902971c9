/**
 * Stream tuning: how many SSH connections per agent a copy uses, found by
 * measuring instead of asking the user. A TCP stream is often held back by
 * something other than the CPUs (the round trip and windows on a long link, a
 * per-flow limit), and then more streams add up; where the CPUs are the limit
 * (a short link, few cores), more streams only add logins and contention.
 *
 * The tuner starts with `first` connections per agent and measures the copy's
 * rate once they are all up. It then tries a larger count: the cap at once
 * when the agents were mostly idle on nodes with CPU to spare (the streams,
 * not the CPUs, were the limit) and each stream moved little (below
 * `jumpBelow`, 100 MB/s: a stream held back by the round trip or a per-flow
 * cap), else twice as many. It keeps the larger count while it moves at
 * least `minGain` more (10%), and goes back to the previous count, and stops,
 * when it does not. It stops at `max` too. A jump to the cap that did not pay
 * is not the end: idle agents also wait on a pipeline that is short of a
 * second stream (a loopback pull, both ends on the same two cores), so the
 * tuner goes back and doubles from where it jumped.
 *
 * Pure logic: fed samples (time, bytes moved, connections up, the agents' CPU
 * and their nodes' idle cores), it answers with the count to ask the agents for.
 */

export interface TunerOptions {
  /** Connections per agent to start with. */
  first: number;
  /** Connections per agent, at most. */
  max: number;
  /** Agents working (the connections to wait for are `count x agents`). */
  agents: number;
  /** Smallest rate gain that keeps a larger count. @default 0.1 */
  minGain?: number;
  /** Time after the last connection came up before measuring (slow start, the first ranges). @default 500 */
  settleMs?: number;
  /** How long each count is measured. @default 2000 */
  windowMs?: number;
  /** Share of one core an agent uses below which it counts as idle (the streams are the limit). @default 0.5 */
  idleBelow?: number;
  /** Cores a node must have idle for its agents to count as idle (a busy machine starves them too). @default 0.5 */
  spareCores?: number;
  /** Bytes per second per connection below which idle agents jump to the cap. @default 100e6 */
  jumpBelow?: number;
  /** Longest wait for the connections of a new count to come up before measuring anyway. @default 10000 */
  connectWaitMs?: number;
}

export interface TunerSample {
  /** Milliseconds, any monotonic origin. */
  at: number;
  /** Bytes moved by all agents so far. */
  bytes: number;
  /** Connections up across all agents. */
  connected: number;
  /** Share of one core the busiest agent used since its last report, 0..1, if known. */
  utilization?: number;
  /** Idle cores of the busiest agents' node over the same time, if known. */
  idleCores?: number;
}

export type TunerPhase =
  /** Waiting for the connections of the current count to come up. */
  | 'connecting'
  /** All up: waiting `settleMs` before measuring. */
  | 'settling'
  /** Measuring the current count's rate over `windowMs`. */
  | 'measuring'
  /** Finished: `current` is the count kept. */
  | 'done';

export interface TunerStep {
  streams: number;
  /** Bytes per second measured with this many streams per agent. */
  rate: number;
}

export class StreamTuner {
  readonly first: number;
  readonly max: number;
  private readonly agents: number;
  private readonly minGain: number;
  private readonly settleMs: number;
  private readonly windowMs: number;
  private readonly idleBelow: number;
  private readonly spareCores: number;
  private readonly connectWaitMs: number;
  private readonly jumpBelow: number;
  private count: number;
  private state: TunerPhase = 'connecting';
  private since = Number.NaN;
  private startBytes = 0;
  /** During the window: the busiest agent's share of a core, and the fewest idle cores of a node. */
  private busiest = 0;
  private spare = Number.POSITIVE_INFINITY;
  private best: TunerStep | undefined;
  /** The count a jump to the cap started from, until that jump is measured. */
  private jumpedFrom: number | undefined;
  /** A jump to the cap did not pay: only doubling from now on. */
  private jumpFailed = false;
  /** Every count measured, in order: what the tuner saw, for reports. */
  readonly steps: TunerStep[] = [];

  constructor(options: TunerOptions) {
    this.max = Math.max(1, Math.floor(options.max));
    this.first = Math.max(1, Math.min(this.max, Math.floor(options.first)));
    this.agents = Math.max(1, Math.floor(options.agents));
    this.minGain = options.minGain ?? 0.1;
    this.settleMs = options.settleMs ?? 500;
    this.windowMs = options.windowMs ?? 2000;
    this.idleBelow = options.idleBelow ?? 0.5;
    this.spareCores = options.spareCores ?? 0.5;
    this.connectWaitMs = options.connectWaitMs ?? 10_000;
    this.jumpBelow = options.jumpBelow ?? 100e6;
    this.count = this.first;
    if (this.first >= this.max) this.state = 'done';
  }

  /** Connections per agent asked for now. */
  get current(): number {
    return this.count;
  }

  get phase(): TunerPhase {
    return this.state;
  }

  /** Feeds one sample; returns the count to ask the agents for when it changes, else undefined. */
  sample(s: TunerSample): number | undefined {
    if (this.state === 'done') return undefined;
    if (Number.isNaN(this.since)) this.since = s.at;
    if (this.state === 'connecting') {
      const up = s.connected >= this.count * this.agents;
      if (up || s.at - this.since >= this.connectWaitMs) this.enter('settling', s);
      return undefined;
    }
    if (this.state === 'settling') {
      if (s.at - this.since >= this.settleMs) {
        this.enter('measuring', s);
        this.startBytes = s.bytes;
        this.busiest = 0;
        this.spare = Number.POSITIVE_INFINITY;
      }
      return undefined;
    }
    // measuring
    if (s.utilization !== undefined) this.busiest = Math.max(this.busiest, s.utilization);
    if (s.idleCores !== undefined) this.spare = Math.min(this.spare, s.idleCores);
    const elapsed = s.at - this.since;
    if (elapsed < this.windowMs) return undefined;
    const rate = ((s.bytes - this.startBytes) * 1000) / elapsed;
    const step: TunerStep = { streams: this.count, rate };
    this.steps.push(step);
    const jumpedFrom = this.jumpedFrom;
    this.jumpedFrom = undefined;
    if (this.best && rate < this.best.rate * (1 + this.minGain)) {
      if (jumpedFrom !== undefined && jumpedFrom * 2 < this.max) {
        // The cap did not pay: try the next step up instead, as a busy agent would.
        this.jumpFailed = true;
        this.count = jumpedFrom * 2;
        this.enter('connecting', s);
        return this.count;
      }
      // More did not pay: back to what did, and stay there.
      this.state = 'done';
      this.count = this.best.streams;
      return this.count;
    }
    this.best = step;
    if (this.count >= this.max) {
      this.state = 'done';
      return undefined;
    }
    const slowStreams = rate / (this.count * this.agents) < this.jumpBelow;
    const idle = !this.jumpFailed && slowStreams && this.busiest > 0 && this.busiest < this.idleBelow && this.spare !== Number.POSITIVE_INFINITY && this.spare >= this.spareCores;
    if (idle && this.count * 2 < this.max) this.jumpedFrom = this.count;
    this.count = idle ? this.max : Math.min(this.max, this.count * 2);
    this.enter('connecting', s);
    return this.count;
  }

  private enter(phase: TunerPhase, s: TunerSample): void {
    this.state = phase;
    this.since = s.at;
  }
}
