/**
 * The collect stage of a tree copy: each batch's results go into the
 * journal (tree-journal.ts) before they are counted, so a crash sends them
 * again rather than lose them (`collectBatch`); and the one place a failed
 * entry goes, with its policy (`TreeOutcome`): counted, listed in the job's
 * failed.ndjson with its reason, shown (the first few), and stopping the
 * copy only under --fail-fast or for a failure every later entry would meet
 * too (a full destination).
 */
import { join } from 'node:path';
import { FerryError } from '@ferry/core';
import type { ErrorData, ResolvedCopyOptions, TreeEntry } from '@ferry/core';
import type { BatchResult } from '@ferry/transport';
import type { WireBatch } from '@ferry/agent';
import { writePrivateFile } from './private-file.js';
import type { SyncRecords } from './sync-manifest.js';
import type { Counters, TreeContext } from './tree-context.js';
import { recordOf } from './tree-journal.js';
import type { TreeJournal, TreeRecord } from './tree-journal.js';
import type { TreePlan } from './tree-plan.js';

/** Failures printed one by one (all of them go to failed.ndjson). */
const FAILURES_SHOWN = 20;
/**
 * Failures of one entry that every later entry would meet too: they stop the
 * copy as --fail-fast does (batches on their way finish and are journaled),
 * with that failure's own exit code, rather than try each remaining file and
 * list thousands of failures. A full destination is the one: a full disk
 * stops the copy, as it stops cp, tar and rsync.
 */
const STOPS_THE_COPY: ReadonlySet<string> = new Set(['DEST_NO_SPACE']);

/** What became of the entries that did not arrive: the run's failure list and whether it stopped. */
export class TreeOutcome {
  /** --fail-fast's first failure, or one in STOPS_THE_COPY: the error the copy ends with. */
  stopped: FerryError | undefined;
  /** Tree paths that failed (a hard link to one is not made). */
  readonly failedPaths = new Set<string>();
  private readonly failures: string[] = [];
  /** Entries that failed because their directory is not at the destination (DEST_DIR_MISSING). */
  missingDirFailures = 0;

  constructor(
    private readonly options: ResolvedCopyOptions,
    private readonly counters: Counters,
    private readonly emit: TreeContext['emit'],
  ) {}

  /** An entry that did not arrive: counted and listed; under --fail-fast, or in STOPS_THE_COPY, it stops the copy. */
  fail(path: string, error: ErrorData): void {
    if (!this.stopped && (this.options.failFast || STOPS_THE_COPY.has(error.code))) {
      const fields = { path: error.path ?? path, ...(error.host ? { host: error.host } : {}), ...(error.errno ? { errno: error.errno } : {}) };
      this.stopped = this.options.failFast
        ? new FerryError(error.code, `${error.message} (--fail-fast stopped the copy at its first failure; what arrived is journaled: rerun without --fail-fast to copy the rest)`, fields)
        : new FerryError(error.code, error.message, fields);
    }
    this.counters.failed++;
    if (error.code === 'DEST_DIR_MISSING') this.missingDirFailures++;
    this.failedPaths.add(path);
    this.failures.push(JSON.stringify({ path, code: error.code, message: error.message, ...(error.errno ? { errno: error.errno } : {}) }));
    if (this.failures.length <= FAILURES_SHOWN) this.emit({ type: 'file.failed', path, code: error.code, message: error.message });
    else if (this.failures.length === FAILURES_SHOWN + 1) this.emit({ type: 'warning', message: `more entries failed; the job's failed.ndjson lists them all` });
  }

  /** --fail-fast or a failure in STOPS_THE_COPY: ends the stage at hand. */
  checkStop(): void {
    if (this.stopped) throw this.stopped;
  }

  /** failed.ndjson and skipped.ndjson (the plan's `skips`) in the job's directory (replaced by each run). */
  async writeLists(jobDir: string, skips: readonly string[]): Promise<void> {
    await writePrivateFile(join(jobDir, 'failed.ndjson'), this.failures.map((l) => l + '\n').join(''));
    await writePrivateFile(join(jobDir, 'skipped.ndjson'), skips.map((l) => l + '\n').join(''));
  }
}

/** What collectBatch reads and writes of the run. */
export interface CollectContext extends TreeContext {
  readonly journal: TreeJournal;
  readonly plan: TreePlan;
  readonly records: SyncRecords;
}

/** Stage 5 (collect): a batch's results into the journal, the counters and the failure list. */
export async function collectBatch(ctx: CollectContext, batch: WireBatch, results: BatchResult[]): Promise<void> {
  const records: TreeRecord[] = [];
  const ok: TreeEntry[] = [];
  results.forEach((r, i) => {
    const e = batch.entries[i]!;
    if (!r.ok) {
      ctx.fail(e.path, r.error);
      return;
    }
    ok.push(e);
    records.push(recordOf(e, { ...(r.dstHash ? { hash: r.dstHash } : {}), meta: ctx.plan.digestOf(e) }));
  });
  // Counted once they are on record: a crash before that sends them again.
  await ctx.journal.append(records);
  results.forEach((r, i) => {
    const e = batch.entries[i]!;
    if (!r.ok) return;
    if (e.kind === 'symlink') ctx.records.record(e, { type: 'symlink', target: e.target! });
    else ctx.records.record(e, r.dstHash ? ctx.records.wholeFile(e, r.dstHash) : undefined);
  });
  for (const e of ok) {
    if (e.kind === 'symlink') ctx.counters.symlinks++;
    else {
      ctx.counters.files++;
      ctx.counters.bytes += e.size;
    }
  }
}
