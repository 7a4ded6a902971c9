/**
 * A job's state directory, `<state-dir>/jobs/<id>/`:
 *
 *   job.json      what the job copies and how (written once, read by resume/status)
 *   journal       append-only record of durable, verified ranges
 *   status.json   live counters, rewritten every second while the job runs
 *   manifest.json range hashes and root hash, when the job is done
 *   lock          pid of the coordinator running the job
 *   nats/         the embedded nats-server's store (and nats.pid)
 */
import { open, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, IntervalSet, createHasher, errnoOf } from '@ferry/core';
import type { CopyOptions, Direction, FileIdentity, HashAlgorithm, JournalRecord, RemoteHost, SourceFingerprint } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { writePrivateFile } from './private-file.js';

export const JOB_FILE_VERSION = 1;

export interface JobFile {
  v: number;
  jobId: string;
  createdAt: number;
  /** The command as given, so `ferry resume` can run it again. */
  source: string;
  destination: string;
  options: CopyOptions;
  direction: Direction;
  sourceLabel: string;
  destinationLabel: string;
  targetPath: string;
  /** The temporary destination file: a random name, next to the target. */
  tempPath: string;
  /** What identifies it (absent from older ferry's jobs, which are then started over). */
  temp?: FileIdentity;
  remoteHosts: RemoteHost[];
  fileBytes: number;
  rangeBytes: number;
  rangeCount: number;
  hash: HashAlgorithm;
  fingerprint: SourceFingerprint;
  /** How the agents were launched (the CLI's launcher options). */
  launch?: Record<string, unknown>;
}

export type JobPhase =
  /** The coordinator is running (its pid is alive). */
  | 'running'
  /** Every range is done and the file is in place. */
  | 'done'
  /** Stopped by an error; see `error`. A rerun resumes. */
  | 'failed'
  /** Stopped by Ctrl-C or SIGTERM. A rerun resumes. */
  | 'interrupted';

export interface JobStatus {
  jobId: string;
  phase: JobPhase;
  pid: number;
  updatedAt: number;
  source: string;
  destination: string;
  fileBytes: number;
  /** Bytes of durable, verified ranges. */
  bytesDone: number;
  rangesDone: number;
  rangesInFlight: number;
  rangesPending: number;
  ranges: number;
  /** Bytes per second over the last seconds. */
  rate: number;
  agents: Array<{ agent: string; node: string; bytes: number; inFlight: number; errors: number; rate: number }>;
  /** Per compute node: its agents together. */
  nodes: Array<{ node: string; agents: number; bytes: number; rate: number }>;
  /** Per remote host: bytes of durable ranges written through it, and the recent rate. */
  hosts: Array<{ host: string; bytes: number; rate: number }>;
  errors: number;
  resends: number;
  error?: { code: string; message: string };
}

export function jobDirOf(stateDir: string, jobId: string): string {
  return join(stateDir, 'jobs', jobId);
}

/** Through an unguessable O_EXCL|O_NOFOLLOW temporary name and a rename (private-file.ts): never through a name planted in advance. */
const writeAtomic = writePrivateFile;

export async function writeJobFile(dir: string, job: JobFile): Promise<void> {
  await writeAtomic(join(dir, 'job.json'), JSON.stringify(job, null, 1) + '\n');
}

export async function readJobFile(dir: string): Promise<JobFile | undefined> {
  try {
    const job = JSON.parse(await readFile(join(dir, 'job.json'), 'utf8')) as JobFile;
    return job.v === JOB_FILE_VERSION ? job : undefined;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
}

export async function writeStatus(dir: string, status: JobStatus): Promise<void> {
  await writeAtomic(join(dir, 'status.json'), JSON.stringify(status) + '\n');
}

export async function readStatus(dir: string): Promise<JobStatus | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'status.json'), 'utf8')) as JobStatus;
  } catch {
    return undefined;
  }
}

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoOf(err) === 'EPERM';
  }
}

/** Takes the job's lock; refuses when another live coordinator holds it. */
export async function lockJob(dir: string): Promise<() => Promise<void>> {
  const path = join(dir, 'lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return async () => {
        await rm(path, { force: true });
      };
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (pid !== process.pid && pidAlive(pid)) {
        throw new FerryError('USAGE', `job ${dir.split('/').pop()} is already running (coordinator pid ${pid}); watch it with 'ferry status', or stop it first`);
      }
      // A stale lock of a coordinator that died.
      await rm(path, { force: true });
    }
  }
  throw new FerryError('INTERNAL', `cannot take the lock ${path}`);
}

/** Ranges the journal proves done, with their hashes and last attempts. */
export interface JournalState {
  job: Extract<JournalRecord, { t: 'job' }> | undefined;
  done: IntervalSet;
  hashes: Map<number, string>;
  attempts: Map<number, number>;
  resends: number;
  final: boolean;
}

export function foldJournal(records: JournalRecord[]): JournalState {
  const state: JournalState = { job: undefined, done: new IntervalSet(), hashes: new Map(), attempts: new Map(), resends: 0, final: false };
  for (const r of records) {
    switch (r.t) {
      case 'job':
        state.job = r;
        break;
      case 'range':
        if (!r.durable) break;
        state.done.add(r.range);
        state.hashes.set(r.range, r.hash);
        state.attempts.set(r.range, Math.max(state.attempts.get(r.range) ?? 0, r.attempt));
        break;
      case 'resend':
        state.resends++;
        state.attempts.set(r.range, Math.max(state.attempts.get(r.range) ?? 0, r.attempt));
        // A mismatch after a range was journaled makes it suspect again.
        if (state.done.delete(r.range)) state.hashes.delete(r.range);
        break;
      case 'final':
        state.final = true;
        break;
    }
  }
  return state;
}

const FINGERPRINT_SAMPLE_BYTES = 1024 * 1024;

/** Size, mtime, inode and hashes of the first and last MiB of a local file. */
export async function localFingerprint(path: string): Promise<SourceFingerprint> {
  const fh = await open(path, 'r');
  try {
    const st = await fh.stat();
    const n = Math.min(FINGERPRINT_SAMPLE_BYTES, st.size);
    const buf = Buffer.alloc(n);
    const sample = async (at: number) => {
      let got = 0;
      while (got < n) {
        const { bytesRead } = await fh.read(buf, got, n - got, at + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const h = createHasher('xxh3');
      h.update(buf.subarray(0, got));
      return h.digest();
    };
    return { size: st.size, mtimeMs: Math.floor(st.mtimeMs), ino: st.ino, headHash: await sample(0), tailHash: await sample(st.size - n) };
  } finally {
    await fh.close();
  }
}

/** The same over SSH, for a remote source (SFTP gives whole-second mtimes and no inode). */
export async function remoteFingerprint(conn: RemoteConnection, path: string): Promise<SourceFingerprint> {
  const st = await conn.stat(path);
  if (!st) throw new FerryError('SOURCE_NOT_FOUND', `source ${conn.label}:${path} does not exist any more`, { host: conn.label, path });
  const n = Math.min(FINGERPRINT_SAMPLE_BYTES, st.size);
  return {
    size: st.size,
    mtimeMs: Math.floor(st.mtimeMs),
    ino: st.ino,
    headHash: await conn.hashRange(path, 0, n, 'xxh3'),
    tailHash: await conn.hashRange(path, st.size - n, n, 'xxh3'),
  };
}

/** What differs between two fingerprints, in words; empty when they match. */
export function fingerprintChanges(was: SourceFingerprint, now: SourceFingerprint): string[] {
  const changes: string[] = [];
  if (was.size !== now.size) changes.push(`size ${was.size} -> ${now.size}`);
  if (was.mtimeMs !== now.mtimeMs) changes.push(`mtime ${new Date(was.mtimeMs).toISOString()} -> ${new Date(now.mtimeMs).toISOString()}`);
  if (was.ino !== now.ino) changes.push(`inode ${was.ino} -> ${now.ino}`);
  if (was.headHash !== now.headHash) changes.push('first MiB differs');
  if (was.tailHash !== now.tailHash) changes.push('last MiB differs');
  return changes;
}

/** Job ids in a state directory, newest first. */
export async function listJobs(stateDir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(join(stateDir, 'jobs'));
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
  const withTimes = await Promise.all(
    names.map(async (n) => {
      // A tree copy (`cp -r`) has tree.json instead of job.json.
      const st = (await stat(join(stateDir, 'jobs', n, 'job.json')).catch(() => undefined)) ?? (await stat(join(stateDir, 'jobs', n, 'tree.json')).catch(() => undefined));
      return { n, t: st?.mtimeMs ?? 0, ok: st !== undefined };
    }),
  );
  return withTimes.filter((x) => x.ok).sort((a, b) => b.t - a.t).map((x) => x.n);
}

/** What a tree copy's state directory says of it (`tree.json`): the command, for `ferry resume`. */
export interface TreeJobFile {
  v: 1;
  kind: 'tree';
  jobId: string;
  createdAt: number;
  source: string;
  destination: string;
  sourceLabel: string;
  destinationLabel: string;
  /** The remote directory the tree became (chosen by the first run, kept by every later one). */
  targetRoot: string;
  /** targetRoot's device and inode once a run made or found it: a rerun that finds another directory there (or none) starts over. */
  targetId?: { dev: number; ino: number };
  options: CopyOptions;
  /** The hash of the files sent in batches (absent in older ferry's jobs: a digest's length tells). */
  hash?: HashAlgorithm;
}

/** How a tree copy stands (`tree-status.json`), rewritten every few seconds and at the end. */
export interface TreeJobStatus {
  phase: JobPhase | 'partial';
  pid: number;
  updatedAt: number;
  files: number;
  bytes: number;
  resumedFiles: number;
  dirs: number;
  failed: number;
  skipped: number;
  error?: { code: string; message: string };
}

export async function writeTreeJobFile(dir: string, job: TreeJobFile): Promise<void> {
  await writeAtomic(join(dir, 'tree.json'), JSON.stringify(job, null, 1) + '\n');
}

export async function readTreeJobFile(dir: string): Promise<TreeJobFile | undefined> {
  try {
    const job = JSON.parse(await readFile(join(dir, 'tree.json'), 'utf8')) as TreeJobFile;
    return job.v === 1 && job.kind === 'tree' ? job : undefined;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || err instanceof SyntaxError) return undefined;
    throw err;
  }
}

export async function writeTreeStatus(dir: string, status: TreeJobStatus): Promise<void> {
  await writeAtomic(join(dir, 'tree-status.json'), JSON.stringify(status) + '\n');
}

export async function readTreeStatus(dir: string): Promise<TreeJobStatus | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'tree-status.json'), 'utf8')) as TreeJobStatus;
  } catch {
    return undefined;
  }
}
