/**
 * What a running copy reports: the CLI renders these as a progress bar, a
 * summary, or NDJSON (`--json`), one object per line.
 */
import type { ErrorCode, TransferMode } from '@ferry/core';
import type { PlannedChange, SyncPlanCounts } from './tree-sync.js';

export interface CopySummary {
  jobId: string;
  source: string;
  destination: string;
  /** Size of the file. */
  bytes: number;
  /** Bytes this run moved (ranges made durable by it). */
  movedBytes: number;
  /** Bytes already done by earlier runs of the same job. */
  resumedBytes: number;
  /** `--delta`: bytes this run copied from the old destination file on the destination host instead of sending them. */
  reusedBytes: number;
  /** Ranges this run sent over the network (made durable by the agents). */
  rangesSent: number;
  /** `--delta`: ranges this run copied from the old destination file. */
  rangesReused: number;
  seconds: number;
  /** Decimal megabytes per second moved by this run. */
  mbps: number;
  ranges: number;
  resends: number;
  hash: string;
  rootHash: string;
  /** The data path that ran: helper (`ferry serve`), python (ferry's helper on the remote python3), sftp; none for an empty file. */
  mode: TransferMode | 'none';
  agents: number;
  /** Connections per agent at the end (with tuning, what the tuner kept). */
  streams: number;
  /** Whether the number of streams was tuned during the copy (no --streams given). */
  tuned: boolean;
}

/** What a tree copy (`ferry cp -r`) did. */
export interface TreeSummary {
  jobId: string;
  source: string;
  destination: string;
  /** Files (and big files) copied by this run, and their bytes. */
  files: number;
  bytes: number;
  /** Entries an earlier run of the same copy had made durable, not sent again. */
  resumedFiles: number;
  resumedBytes: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  /** Entries not copied: listed with their reasons in the job's failed.ndjson. */
  failed: number;
  /** Entries left out on purpose (fifos, sockets, devices unless root): skipped.ndjson. */
  skipped: number;
  seconds: number;
  mbps: number;
  filesPerSec: number;
  mode: TransferMode;
  /** Connections the batches used at most. */
  streams: number;
  hash: string;
  /** The job's state directory (journal, failed.ndjson, skipped.ndjson). */
  stateDir: string;
  /** `ferry sync`: entries found the same at the destination (not sent), and entries deleted there (--delete). */
  unchanged: number;
  deleted: number;
  /** `ferry sync --xattrs/--acls`: files and directories whose extended attributes alone were set again (no bytes sent). */
  attributes: number;
  /** `ferry sync --dry-run`: what a sync would do (nothing was done). */
  plan?: SyncPlanCounts;
}

export type CopyEvent =
  | {
      type: 'job.start';
      jobId: string;
      source: string;
      destination: string;
      bytes: number;
      ranges: number;
      rangeBytes: number;
      agents: number;
      /** Connections per agent at the start... */
      streams: number;
      /** ...and at most (the tuner's cap, or --streams). */
      maxStreams: number;
      /** Whether the number of streams is tuned during the copy (no --streams given). */
      tuning: boolean;
      mode: TransferMode | 'none';
      hash: string;
      stateDir: string;
      /** True when an earlier run of the same copy is being continued. */
      resumed: boolean;
      rangesDone: number;
      bytesDone: number;
    }
  | { type: 'range.done'; range: number; bytes: number; agent: string; host: string; hash: string; seconds: number; /** Epoch ms at which the agent had the range verified. */ finishedAt: number }
  | { type: 'range.resend'; range: number; attempt: number; reason: string }
  | { type: 'progress'; bytes: number; total: number; rangesDone: number; ranges: number; rate: number; etaSeconds: number | null; agentsBusy: number; agents: number }
  | { type: 'agent.start'; agent: string; node: string; pid: number; index: number }
  | { type: 'agent.error'; agent: string; code: ErrorCode; message: string; fatal: boolean }
  | { type: 'agent.exit'; index: number; code: number | null; signal: string | null }
  | { type: 'log'; message: string }
  /** `--delta` compared the old destination file (`oldBytes` null: there was none) and reused what it holds. */
  | { type: 'delta'; oldBytes: number | null; compared: number; reused: number; reusedBytes: number; toSend: number }
  /**
   * Something the user should know whatever the verbosity (printed unless -q): a slower
   * data path taken and why, what of ~/.ssh/config the embedded client does not honour.
   */
  | { type: 'warning'; message: string; host?: string }
  | ({ type: 'done' } & CopySummary)
  | { type: 'tree.start'; jobId: string; source: string; destination: string; mode: TransferMode; stateDir: string; resumed: boolean; resumedEntries: number }
  | { type: 'tree.progress'; files: number; bytes: number; failed: number; skipped: number; dirs: number; resumedFiles: number }
  /** An entry not copied (the first 20 of a run; all of them are in failed.ndjson). */
  | { type: 'file.failed'; path: string; code: ErrorCode; message: string }
  | ({ type: 'tree.done' } & TreeSummary)
  /** `ferry sync --dry-run`: one entry a sync would create, update or delete. */
  | ({ type: 'sync.change' } & PlannedChange);
