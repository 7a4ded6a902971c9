/**
 * A finished job's manifest (core's manifest.ts, docs/manifest.md), made from
 * its state directory alone: a single-file job from its manifest.json (or,
 * without one, its journal's range records and final root hash); a tree job
 * from its tree.ndjson, each big file's ranges from the single-file job that
 * moved it.
 *
 * ```ts
 * const text = formatManifest(...(await jobManifest(stateDir, jobId)));
 * ```
 */
import { constants } from 'node:fs';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, posix } from 'node:path';
import { FerryError, algorithmOfDigest, errnoOf, isHashAlgorithm, replayJournal, rootHash } from '@ferry/core';
import type { HashAlgorithm, ManifestEntry, ManifestFacts, RangedFileEntry } from '@ferry/core';
import { foldJournal, jobDirOf, pidAlive, readJobFile, readStatus, readTreeJobFile, readTreeStatus } from './job-state.js';
import type { JobFile } from './job-state.js';
import type { TreeRecord } from './tree-journal.js';
import { syncJobEntries } from './sync-manifest.js';

/** A job's manifest: what formatManifest needs. */
export type JobManifest = [facts: ManifestFacts, entries: ManifestEntry[]];

const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

/** The manifest of finished job `jobId` (a full id) in `stateDir`; USAGE when the job is unknown or not finished. */
export async function jobManifest(stateDir: string, jobId: string): Promise<JobManifest> {
  const dir = jobDirOf(stateDir, jobId);
  const tree = await readTreeJobFile(dir);
  if (tree) {
    if (tree.options.compare !== undefined) return syncManifestOf(dir, jobId, tree);
    const status = await readTreeStatus(dir);
    const phase = status?.phase === 'running' && !pidAlive(status.pid) ? 'interrupted' : (status?.phase ?? 'new');
    // A partial tree (some entries failed) has a manifest of what arrived.
    if (phase !== 'done' && phase !== 'partial') throw notFinished(jobId, phase);
    const records = await readTreeRecords(join(dir, 'tree.ndjson'));
    const entries: ManifestEntry[] = [];
    // A further name of a file (`k`) is not an entry of its own, as in any manifest.
    for (const r of records.values()) if (r.k === undefined) entries.push(await treeEntryOf(stateDir, jobId, r));
    const hash = tree.hash ?? mostCommonAlgorithm(entries) ?? 'xxh3';
    const facts: ManifestFacts = { kind: 'tree', job: jobId, source: tree.sourceLabel, destination: tree.destinationLabel, hash, createdAt: iso(tree.createdAt)!, ...(status ? { finishedAt: iso(status.updatedAt)! } : {}) };
    return [facts, entries];
  }
  const job = await readJobFile(dir);
  if (!job) throw new FerryError('USAGE', `job ${jobId} in ${stateDir} has neither a readable job.json nor tree.json: 'ferry status' lists the jobs there`);
  const { entry, finishedAt } = await fileEntryOf(dir, job);
  const facts: ManifestFacts = { kind: 'file', job: jobId, source: job.sourceLabel, destination: job.destinationLabel, hash: entry.algorithm ?? job.hash, createdAt: iso(job.createdAt)!, ...(finishedAt !== undefined ? { finishedAt: iso(finishedAt)! } : {}) };
  return [facts, [entry]];
}

/**
 * A sync job's manifest: the destination as its last run left it
 * (sync-manifest.ts), only after a run that completed (a failed or
 * interrupted one changed the destination in ways no record lists).
 */
async function syncManifestOf(dir: string, jobId: string, tree: NonNullable<Awaited<ReturnType<typeof readTreeJobFile>>>): Promise<JobManifest> {
  const status = await readTreeStatus(dir);
  const phase = status?.phase === 'running' && !pidAlive(status.pid) ? 'interrupted' : (status?.phase ?? 'new');
  if (phase !== 'done') {
    throw new FerryError('USAGE', `job ${jobId} is a ferry sync whose last run did not complete (${phase}): only a complete run leaves a manifest; run 'ferry sync ${tree.source} ${tree.destination}' again`);
  }
  const { hash, finishedAt, entries } = await syncJobEntries(dir, jobId, tree);
  const facts: ManifestFacts = { kind: 'tree', job: jobId, source: tree.sourceLabel, destination: tree.destinationLabel, hash, createdAt: iso(tree.createdAt)!, finishedAt: iso(finishedAt)! };
  return [facts, entries];
}

/** The ranges of big file `path`, copied by single-file job `job` (a sync records them in its own manifest). */
export async function bigFileEntryOf(stateDir: string, treeJob: string, path: string, job: string): Promise<ManifestEntry> {
  return treeEntryOf(stateDir, treeJob, { p: path, s: 0, m: 0, i: 0, job });
}

function notFinished(jobId: string, phase: string): FerryError {
  return new FerryError('USAGE', `job ${jobId} is not finished (${phase}): only a finished copy has a manifest; 'ferry resume ${jobId}' finishes it`);
}

/** What a finished single-file job wrote: manifest.json (file-finalize.ts), or its journal where that is missing. */
interface DoneFile {
  hash: HashAlgorithm;
  rangeBytes: number;
  ranges: string[];
  root: string;
  bytes: number;
}

async function fileEntryOf(dir: string, job: JobFile): Promise<{ entry: RangedFileEntry; finishedAt: number | undefined }> {
  const status = await readStatus(dir);
  const phase = status?.phase === 'running' && !pidAlive(status.pid) ? 'interrupted' : status?.phase;
  if (phase !== undefined && phase !== 'done') throw notFinished(job.jobId, phase);
  const done = (await readManifestJson(dir)) ?? (await fromJournal(dir, job));
  if (!done) throw notFinished(job.jobId, phase ?? 'no record of its end');
  return {
    entry: { path: posix.basename(job.targetPath), type: 'file', size: done.bytes, rangeBytes: done.rangeBytes, ranges: done.ranges, root: done.root, algorithm: done.hash },
    finishedAt: status?.updatedAt,
  };
}

async function readManifestJson(dir: string): Promise<DoneFile | undefined> {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || err instanceof SyntaxError) return undefined;
    throw err;
  }
  const ranges = m.rangeHashes;
  if (!isHashAlgorithm(m.hash) || typeof m.rangeBytes !== 'number' || typeof m.bytes !== 'number' || typeof m.rootHash !== 'string' || !Array.isArray(ranges) || !ranges.every((r) => typeof r === 'string')) return undefined;
  return { hash: m.hash, rangeBytes: m.rangeBytes, ranges: ranges as string[], root: m.rootHash, bytes: m.bytes };
}

/** The journal of a job that reached its final record: every range's hash, and the root hash. */
async function fromJournal(dir: string, job: JobFile): Promise<DoneFile | undefined> {
  let data: Buffer;
  try {
    data = await readFile(join(dir, 'journal'));
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
  const { records } = replayJournal(data);
  const state = foldJournal(records);
  const final = records.findLast((r) => r.t === 'final');
  if (!state.final || !final || final.t !== 'final') return undefined;
  const ranges: string[] = [];
  for (let i = 0; i < job.rangeCount; i++) {
    const h = state.hashes.get(i);
    if (h === undefined) return undefined;
    ranges.push(h);
  }
  if (rootHash(job.hash, ranges) !== final.rootHash) return undefined;
  return { hash: job.hash, rangeBytes: job.rangeBytes, ranges, root: final.rootHash, bytes: job.fileBytes };
}

/** Every durable record of a tree journal, by path (a later line of a path wins), read a MiB at a time. */
export async function readTreeRecords(path: string): Promise<Map<string, TreeRecord>> {
  const out = new Map<string, TreeRecord>();
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return out;
    throw err;
  }
  try {
    const buf = Buffer.allocUnsafe(1024 * 1024);
    let carry = Buffer.alloc(0);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      const chunk = Buffer.concat([carry, buf.subarray(0, bytesRead)]);
      const end = chunk.lastIndexOf(0x0a) + 1;
      for (const line of chunk.toString('utf8', 0, end).split('\n')) {
        if (line === '') continue;
        let r: unknown;
        try {
          r = JSON.parse(line);
        } catch {
          continue;
        }
        const rec = r as TreeRecord;
        if (rec !== null && typeof rec === 'object' && typeof rec.p === 'string' && typeof rec.s === 'number') out.set(rec.p, rec);
      }
      carry = Buffer.from(chunk.subarray(end));
    }
  } finally {
    await fh.close();
  }
  // A line cut short by a crash (no newline) is not a record.
  return out;
}

async function treeEntryOf(stateDir: string, treeJob: string, r: TreeRecord): Promise<ManifestEntry> {
  if (r.job !== undefined) {
    const dir = jobDirOf(stateDir, r.job);
    const job = await readJobFile(dir);
    if (!job) throw new FerryError('USAGE', `tree job ${treeJob}: ${r.p} was copied by job ${r.job}, whose state (${dir}) is gone: its ranges cannot be listed`, { path: r.p });
    const { entry } = await fileEntryOf(dir, job);
    return { ...entry, path: r.p };
  }
  if (typeof r.l === 'string') return { path: r.p, type: 'symlink', target: r.l };
  const algorithm = typeof r.h === 'string' ? algorithmOfDigest(r.h) : undefined;
  if (r.h !== undefined && algorithm) return { path: r.p, type: 'file', size: r.s, hash: r.h, algorithm };
  return { path: r.p, type: 'unknown' };
}

function mostCommonAlgorithm(entries: ManifestEntry[]): HashAlgorithm | undefined {
  const counts = new Map<HashAlgorithm, number>();
  for (const e of entries) if (e.type === 'file' && e.algorithm) counts.set(e.algorithm, (counts.get(e.algorithm) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
}

/**
 * Writes `text` to `path` as a new file replacing any there: through an
 * unguessable O_EXCL|O_NOFOLLOW temporary name next to it and a rename, so
 * nothing planted at the name is followed. Mode 0666 less the umask: a
 * manifest is kept with the data, not a secret.
 */
export async function writeManifestFile(path: string, text: string): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(8).toString('hex')}.tmp`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o666);
  try {
    await fh.writeFile(text);
    await fh.sync();
    await fh.close();
    await rename(tmp, path);
  } catch (err) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
}
