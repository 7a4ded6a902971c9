/**
 * The finalize stage of a single-file job, once every range is durable and
 * verified: the source must still be the file the job started copying; the
 * temporary file is renamed into place (with -p, its times and mode set); the
 * root hash closes the journal, and manifest.json records the copy.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, rootHash } from '@ferry/core';
import type { CopySummary } from './events.js';
import type { TransferContext } from './file-context.js';
import { fingerprintChanges, localFingerprint, remoteFingerprint } from './job-state.js';
import type { JobFile } from './job-state.js';
import { withRemote } from './prepare.js';
import { finalizeLocal, finalizeRemote } from './temp-file.js';

/** What finalizing needs beyond the transfer's context. */
export type FinalizeContext = Pick<TransferContext, 'prep' | 'plan' | 'options' | 'agents' | 'jobDir' | 'state' | 'journal' | 'hash' | 'shape' | 'temp'> & { job: JobFile; started: number };

/** Renames the finished copy into place and records it; returns the job's summary. */
export async function finalizeFile(ctx: FinalizeContext): Promise<CopySummary> {
  await checkSourceUnchanged(ctx);
  const { prep, options, temp } = ctx;
  if (prep.discard) {
    // Nothing was written, so nothing is renamed into place.
  } else if (prep.direction === 'push') await finalizeRemote(prep, temp!, options.preserve);
  else await finalizeLocal(prep, temp!, options.preserve);
  const root = rootHash(ctx.job.hash, ctx.state.hashes.values());
  await ctx.journal.append({ t: 'final', rootHash: root, at: Date.now() });
  const summary = summaryOf(ctx, root);
  await writeFile(join(ctx.jobDir, 'manifest.json'), JSON.stringify({ ...summary, rangeBytes: ctx.plan.rangeBytes, rangeHashes: ctx.state.hashes }, null, 1) + '\n', { mode: 0o600 });
  return summary;
}

/** The source must be what it was when the job started, or the copy mixes two versions. */
async function checkSourceUnchanged(ctx: FinalizeContext): Promise<void> {
  const { prep } = ctx;
  const now = prep.direction === 'push' ? await localFingerprint(prep.localPath) : await withRemote(prep, (c) => remoteFingerprint(c, prep.remotePath));
  const changes = fingerprintChanges(ctx.job.fingerprint, now);
  if (changes.length > 0) {
    throw new FerryError(
      'SOURCE_CHANGED',
      `source ${prep.sourceLabel} changed during the copy (${changes.join(', ')}): nothing was renamed into place; rerun with --restart to copy the new version`,
      { path: prep.sourceLabel },
    );
  }
}

function summaryOf(ctx: FinalizeContext, root: string): CopySummary {
  const { prep, plan, state } = ctx;
  const seconds = (Date.now() - ctx.started) / 1000;
  return {
    jobId: prep.jobId,
    source: prep.sourceLabel,
    destination: prep.destinationLabel,
    bytes: prep.fileBytes,
    movedBytes: state.movedBytes,
    resumedBytes: state.resumedBytes,
    reusedBytes: state.reusedBytes,
    rangesSent: state.rangesSent,
    rangesReused: state.rangesReused,
    seconds,
    mbps: seconds > 0 ? state.movedBytes / 1e6 / seconds : 0,
    ranges: plan.count,
    resends: state.resends,
    hash: ctx.hash,
    rootHash: root,
    mode: plan.count === 0 ? 'none' : prep.mode,
    agents: plan.count === 0 ? 0 : ctx.agents,
    streams: ctx.shape.streams,
    tuned: ctx.options.tuneStreams,
  };
}
