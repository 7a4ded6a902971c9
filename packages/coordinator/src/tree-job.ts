/**
 * A tree job's state directory, as the prepare stage opens it: the journal
 * (tree.ndjson, tree-journal.ts), emptied for --restart, for every sync and
 * when the destination root is no longer the directory earlier runs wrote
 * (its device and inode, recorded in tree.json at the end of each run), and
 * tree.json, the job as `ferry status` and `ferry resume` read it.
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoOf } from '@ferry/core';
import type { HashAlgorithm, ResolvedCopyOptions } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import type { CopyRequest } from './copy.js';
import { rangeHashFor } from './copy.js';
import { readTreeJobFile, writeTreeJobFile } from './job-state.js';
import type { TreeJobFile } from './job-state.js';
import { remoteStat } from './prepare.js';
import { writePrivateFile } from './private-file.js';
import { TreeJournal } from './tree-journal.js';
import type { TreeJournalState } from './tree-journal.js';
import type { TreeTarget } from './tree-target.js';

/** The destination root's identity (device and inode), or undefined where it is not a directory. */
async function targetIdOf(target: TreeTarget, conn: RemoteConnection): Promise<{ dev: number; ino: number } | undefined> {
  if (target.direction === 'pull') {
    const st = await lstat(target.targetRoot).catch(() => undefined);
    return st?.isDirectory() ? { dev: st.dev, ino: st.ino } : undefined;
  }
  const st = await remoteStat(conn, target.targetRoot).catch((err: unknown) => {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  });
  return st?.type === 'directory' ? { dev: st.dev, ino: st.ino } : undefined;
}

/**
 * Why a resumed job's journal no longer speaks for its destination: the
 * root directory is gone, or another directory stands at its name (removed
 * and made again since the run that recorded it). Undefined when it is the
 * same, or when no earlier run recorded it (a journal from an older ferry).
 */
async function staleDestination(target: TreeTarget, conn: RemoteConnection, previous: TreeJobFile | undefined): Promise<string | undefined> {
  if (!previous || previous.targetRoot !== target.targetRoot) return undefined;
  const now = await targetIdOf(target, conn);
  if (!now) return `${target.targetRoot} is not there any more`;
  const was = previous.targetId;
  if (was && (was.dev !== now.dev || was.ino !== now.ino)) return `${target.targetRoot} is another directory than the one an earlier run wrote (inode ${now.ino}, was ${was.ino})`;
  return undefined;
}

/** Records the destination root's identity in tree.json, for staleDestination on the next run. */
export async function recordTargetId(jobDir: string, target: TreeTarget, conn: RemoteConnection): Promise<void> {
  const job = await readTreeJobFile(jobDir);
  if (!job || !conn.alive) return;
  const id = await targetIdOf(target, conn);
  if (!id || (job.targetId?.dev === id.dev && job.targetId.ino === id.ino)) return;
  await writeTreeJobFile(jobDir, { ...job, targetId: id });
}

/**
 * The tree job's journal (emptied for --restart and for every sync) and its
 * tree.json; the journal goes into `held` at once, so the caller closes it
 * however the job ends.
 */
export async function openTreeJob(request: CopyRequest, options: ResolvedCopyOptions, target: TreeTarget, conn: RemoteConnection, jobDir: string, held: { journal?: TreeJournal }, emit: NonNullable<CopyRequest['onEvent']>): Promise<{ journal: TreeJournal; state: TreeJournalState; algorithm: HashAlgorithm }> {
  const journalPath = join(jobDir, 'tree.ndjson');
  // A sync compares with the destination itself, never with the journal: each run starts an
  // empty one (reading an earlier run's would cost a second per 50,000 lines for nothing).
  if (options.restart || options.sync) await writePrivateFile(journalPath, '');
  let opened = await TreeJournal.open(journalPath);
  held.journal = opened.journal;
  const previous = await readTreeJobFile(jobDir);
  // The journal speaks for a destination directory that is still the one its runs wrote.
  const stale = opened.state.done.size > 0 ? await staleDestination(target, conn, previous) : undefined;
  if (stale) {
    emit({ type: 'warning', message: `${target.destinationLabel}: ${stale}: what earlier runs of this job journaled is not there; copying everything again` });
    await opened.journal.close();
    await writePrivateFile(journalPath, '');
    opened = await TreeJournal.open(journalPath);
    held.journal = opened.journal;
  }
  const resumed = opened.state.done.size > 0;
  const algorithm: HashAlgorithm = rangeHashFor(options, conn);
  await writeTreeJobFile(jobDir, {
    v: 1,
    kind: 'tree',
    jobId: target.jobId,
    createdAt: previous && !options.restart ? previous.createdAt : Date.now(),
    source: request.source,
    destination: request.destination,
    sourceLabel: target.sourceLabel,
    destinationLabel: target.destinationLabel,
    targetRoot: target.targetRoot,
    ...(previous?.targetId && resumed ? { targetId: previous.targetId } : {}),
    options: request.options ?? {},
    hash: algorithm,
  });
  return { journal: opened.journal, state: opened.state, algorithm };
}
