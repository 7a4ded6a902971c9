/**
 * What the stages of a single-file job (copy.ts) share: the run's counters
 * (RunState), the job as the stages see it (TransferContext), and the state of
 * one transfer with its agents (Run). Plain data and one small class; no I/O.
 */
import type { FerryError, FileIdentity, IntervalSet, JobSpec, RangeHashes, RangePlan, RateShares, ResolvedCopyOptions } from '@ferry/core';
import type { CopyRequest } from './copy.js';
import type { CopyEvent } from './events.js';
import type { JobStatus } from './job-state.js';
import type { JobBus } from './job-bus.js';
import type { JournalFile } from './journal-file.js';
import type { PreparedCopy } from './prepare.js';
import type { WarmStart } from './warm.js';

export interface RunState {
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

export interface TransferContext {
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

/** An agent as its last heartbeat described it. */
export interface AgentBeat {
  node: string;
  bytes: number;
  inFlight: number;
  pending: number;
  errors: number;
  rate: number;
  connected: number;
  utilization: number | undefined;
  idleCores: number | undefined;
  at: number;
  seenAt: number;
}

/** How a transfer ends: the first of success or failure wins, later ones are ignored. */
export class Outcome {
  finished = false;
  private readonly settled: Promise<void>;
  private settle!: { resolve: () => void; reject: (err: FerryError) => void };

  constructor() {
    this.settled = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    this.settled.catch(() => {});
  }

  readonly fail = (err: FerryError): void => {
    if (this.finished) return;
    this.finished = true;
    this.settle.reject(err);
  };

  readonly succeed = (): void => {
    if (this.finished) return;
    this.finished = true;
    this.settle.resolve();
  };

  /** Waits for the end: undefined when every range is done, else why not. */
  async ended(): Promise<FerryError | undefined> {
    try {
      await this.settled;
      return undefined;
    } catch (err) {
      return err as FerryError;
    }
  }
}

/** One transfer with its agents: its control plane and what the stages learn while it runs. */
export interface Run {
  bus: JobBus;
  spec: JobSpec;
  /** Tells this run's work items apart from an earlier run's (NATS deduplication ids). */
  runTag: string;
  outcome: Outcome;
  /** Undone in reverse order however the transfer ends. */
  cleanup: Array<() => Promise<unknown> | unknown>;
  heartbeats: Map<string, AgentBeat>;
  /**
   * Agents of this run, as they announced themselves (agent.started, heartbeats): a
   * completion from any other name is not acted on. Bounded: a flood of names is not ours.
   */
  knownAgents: Set<string>;
  lastAgentError: FerryError | undefined;
  /** Durable bytes per remote host, and per host one entry per second of them (the status's rates). */
  hostBytes: Map<string, number>;
  hostRecent: Map<string, Array<{ at: number; bytes: number }>>;
  /** Blocks of range hashes changed since the KV mirror last kept them. */
  dirtyBlocks: Set<number>;
  /** Ranges handed out in this run (their first work item published). */
  published: Uint8Array;
  /** --limit-rate: the agents' active connections, from which each one's share follows. */
  shares: RateShares | undefined;
  /** --limit-rate: sends the per-connection share when it changed (or `always`). */
  publishShare: (always?: boolean) => void;
}

export function rangeBytesOf(plan: RangePlan, set: IntervalSet): number {
  let total = 0;
  for (const [s, e] of set.toArray()) total += Math.min(e * plan.rangeBytes, plan.fileBytes) - s * plan.rangeBytes;
  return total;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
