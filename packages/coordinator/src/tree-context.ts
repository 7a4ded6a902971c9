/**
 * What the stages of a tree copy share (tree-copy.ts wires them): the run's
 * counters, and the job as every stage sees it (TreeContext): its options,
 * where it goes, which metadata it keeps, the paths of a tree entry on each
 * side, and the one place a failed entry goes. Types only; no I/O.
 */
import type { ErrorData, HashAlgorithm, ResolvedCopyOptions } from '@ferry/core';
import type { CopyRequest } from './copy.js';
import type { TreeSummary } from './events.js';
import type { MetaPlan } from './tree-meta.js';
import type { TreeTarget } from './tree-target.js';

/** What a run counts as it goes: the summary's counts. */
export type Counters = Pick<TreeSummary, 'files' | 'bytes' | 'resumedFiles' | 'resumedBytes' | 'dirs' | 'symlinks' | 'hardlinks' | 'failed' | 'skipped' | 'unchanged' | 'deleted' | 'attributes'>;

/** A tree run as its stages read it. */
export interface TreeContext {
  readonly request: CopyRequest;
  readonly options: ResolvedCopyOptions;
  readonly target: TreeTarget;
  readonly algorithm: HashAlgorithm;
  /** Modes as scp sets them: limited by the destination side's umask. */
  readonly umask: number;
  readonly meta: MetaPlan;
  readonly counters: Counters;
  readonly emit: NonNullable<CopyRequest['onEvent']>;
  /** An entry that did not arrive: counted, listed in failed.ndjson; it may stop the copy (tree-collect.ts TreeOutcome). */
  fail(path: string, error: ErrorData): void;
  /** --fail-fast or a failure that stops the copy: throws it, ending the stage at hand. */
  checkStop(): void;
  /** The source path of a tree path (remote for a pull). */
  sourcePath(treePath: string): string;
  /** The destination path of a tree path (local for a pull). */
  destPath(treePath: string): string;
}
