/**
 * `ferry verify`: reads the data a manifest describes (core's manifest.ts)
 * again, where it is now, and compares. Three stages:
 *
 * 1. **look**: what stands at each entry's path. A tree's root is walked
 *    once (lstat semantics: a link is a link), locally or by the remote
 *    helper; a file manifest's one file is stat'ed.
 * 2. **hash**: every file's ranges (or its whole bytes, for a file moved in a
 *    batch) go to a pool of workers: connections to the remote host, each
 *    with the remote side hashing (`hashRange`), or readers of local files.
 *    A big file's ranges spread over every worker.
 * 3. **report**: an entry whose work is done is compared and, when it does
 *    not match, reported at once (`verify.mismatch`, naming each range that
 *    differs); an entry that cannot be read is reported and the rest go on.
 *
 * It never writes anything where the data is.
 *
 * ```ts
 * const summary = await runVerify({ manifest, location: 'dtn:/lustre/in/run42', onEvent });
 * if (summary.bad > 0) ...
 * ```
 */
import { constants } from 'node:fs';
import { lstat, open, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { posix } from 'node:path';
import { FerryError, createHasher, entryAlgorithm, errnoOf, parseLocation, resolveCopyOptions, toFerryError } from '@ferry/core';
import type { CopyOptions, HashAlgorithm, Manifest, ManifestEntry, RemoteLocation, TransferMode, WalkItem } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { walkTree } from '@ferry/serve';
import { fallbackWarning } from './copy.js';
import { connectAny, coordinatorConnectOptions, expandHome, remoteStat, resolveRemote } from './prepare.js';

/** Workers hashing at once when the caller does not say. */
export const DEFAULT_VERIFY_CONNECTIONS = 4;

export interface VerifyRequest {
  manifest: Manifest;
  /**
   * Where the data is, local or `[user@]host[:port]:path`: a tree manifest's
   * root directory; for a file manifest the file itself (or a directory
   * holding it under the entry's name).
   */
  location: string;
  /** How to reach a remote location (the SSH and data path options of `ferry cp`). */
  options?: CopyOptions;
  /** Connections (remote) or readers (local) hashing at once. @default DEFAULT_VERIFY_CONNECTIONS */
  connections?: number;
  onEvent?: (event: VerifyEvent) => void;
  signal?: AbortSignal;
}

/** What is wrong with an entry. */
export type VerifyProblem =
  /** Nothing is at its path. */
  | 'missing'
  /** Something of another kind is (a directory or link where a file was, ...). */
  | 'kind'
  /** Its bytes, size or link target are not what the manifest says. */
  | 'changed'
  /** It could not be read (permissions, I/O): not compared. */
  | 'unreadable';

/** A range of a file that does not match: `found` is null for a range past the file's end now. */
export interface BadRange {
  range: number;
  offset: number;
  length: number;
  expected: string;
  found: string | null;
}

export interface VerifySummary {
  job?: string;
  location: string;
  entries: number;
  matched: number;
  /** Entries that do not match, of every problem. */
  bad: number;
  missing: number;
  changed: number;
  kind: number;
  unreadable: number;
  /** Ranges (or whole files) hashed, and those that differed. */
  hashed: number;
  badRanges: number;
  /** Bytes read and hashed. */
  bytes: number;
  seconds: number;
}

export type VerifyEvent =
  | { type: 'verify.start'; job?: string; location: string; kind: 'file' | 'tree'; entries: number; bytes: number; hash: HashAlgorithm; connections: number; mode: TransferMode | 'local' }
  /** `code`, for an entry that cannot be read: the errno (EACCES, ...) where there is one, else ferry's error code. */
  | { type: 'verify.mismatch'; path: string; location: string; problem: VerifyProblem; message: string; ranges?: BadRange[]; code?: string }
  /** Every second while files are hashed: entries compared so far, and bytes hashed of those to hash. */
  | { type: 'verify.progress'; entriesDone: number; entries: number; bytes: number; total: number; rate: number }
  | ({ type: 'verify.done' } & VerifySummary)
  | { type: 'warning'; message: string };

/** What stands at an entry's path. */
type Found = { kind: 'file'; size: number } | { kind: 'symlink'; target: string } | { kind: 'dir' | 'special' } | { kind: 'missing' } | { kind: 'error'; code: string; message: string };

/** Where the data is: what stands where, and hashes of ranges of files (by worker, each with its own connection). */
interface Side {
  readonly mode: TransferMode | 'local';
  /** The full path (and label) of an entry. */
  pathOf(entry: ManifestEntry): string;
  labelOf(path: string): string;
  look(manifest: Manifest): Promise<(entry: ManifestEntry) => Found>;
  hash(worker: number, path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string>;
  close(): void;
}

/** One piece of hashing: a range of an entry's file (`range` -1: the whole file). */
interface Task {
  entry: number;
  range: number;
  offset: number;
  length: number;
}

/** An entry's progress through the hashing. */
interface EntryState {
  pending: number;
  size: number;
  badRanges: BadRange[];
  errors: FerryError[];
}

export async function runVerify(request: VerifyRequest): Promise<VerifySummary> {
  const started = Date.now();
  const { manifest } = request;
  const emit = request.onEvent ?? (() => {});
  const workers = Math.max(1, request.connections ?? DEFAULT_VERIFY_CONNECTIONS);
  const side = await openSide(request, workers, emit);
  const summary: VerifySummary = {
    ...(manifest.header.job !== undefined ? { job: manifest.header.job } : {}),
    location: request.location,
    entries: manifest.entries.length,
    matched: 0,
    bad: 0,
    missing: 0,
    changed: 0,
    kind: 0,
    unreadable: 0,
    hashed: 0,
    badRanges: 0,
    bytes: 0,
    seconds: 0,
  };
  let progress: NodeJS.Timeout | undefined;
  try {
    emit({
      type: 'verify.start',
      ...(manifest.header.job !== undefined ? { job: manifest.header.job } : {}),
      location: request.location,
      kind: manifest.header.kind,
      entries: manifest.entries.length,
      bytes: manifest.header.bytes,
      hash: manifest.header.hash,
      connections: workers,
      mode: side.mode,
    });
    const report = (entry: ManifestEntry, problem: VerifyProblem, message: string, extra: { ranges?: BadRange[]; code?: string } = {}) => {
      summary.bad++;
      summary[problem]++;
      emit({ type: 'verify.mismatch', path: entry.path, location: side.labelOf(side.pathOf(entry)), problem, message, ...extra });
    };
    const found = await side.look(manifest);
    const states = new Map<number, EntryState>();
    const tasks: Task[] = [];

    manifest.entries.forEach((entry, k) => {
      const f = found(entry);
      if (f.kind === 'error') return report(entry, 'unreadable', `cannot be read: ${f.message}`, { code: f.code });
      if (f.kind === 'missing') return report(entry, 'missing', 'missing');
      if (entry.type === 'unknown') {
        summary.matched++;
        return;
      }
      if (entry.type === 'symlink') {
        if (f.kind !== 'symlink') return report(entry, 'kind', `a symbolic link to ${entry.target} in the manifest, a ${kindName(f.kind)} now`);
        if (f.target !== entry.target) return report(entry, 'changed', `a symbolic link to ${f.target} now, to ${entry.target} in the manifest`);
        summary.matched++;
        return;
      }
      if (f.kind !== 'file') return report(entry, 'kind', `a file in the manifest, a ${kindName(f.kind)} now`);
      const state: EntryState = { pending: 0, size: f.size, badRanges: [], errors: [] };
      if ('ranges' in entry) {
        entry.ranges.forEach((expected, i) => {
          const offset = i * entry.rangeBytes;
          const length = Math.min(entry.rangeBytes, entry.size - offset);
          // Past the end of the file as it is now: nothing to read.
          if (offset >= f.size && length > 0) state.badRanges.push({ range: i, offset, length, expected, found: null });
          else {
            state.pending++;
            tasks.push({ entry: k, range: i, offset, length: Math.min(length, f.size - offset) });
          }
        });
      } else if (f.size === entry.size) {
        state.pending++;
        tasks.push({ entry: k, range: -1, offset: 0, length: f.size });
      }
      states.set(k, state);
      if (state.pending === 0) finish(k);
    });

    function finish(k: number): void {
      const entry = manifest.entries[k]!;
      const state = states.get(k)!;
      states.delete(k);
      if (entry.type !== 'file') return;
      const sizeNote = state.size !== entry.size ? `size ${state.size} bytes now, ${entry.size} in the manifest` : '';
      if (state.errors.length > 0) {
        const e = state.errors[0]!;
        report(entry, 'unreadable', `cannot be read: ${e.message}`, { code: e.errno ?? e.code, ...(state.badRanges.length > 0 ? { ranges: state.badRanges } : {}) });
        return;
      }
      summary.badRanges += state.badRanges.length;
      if ('ranges' in entry) {
        if (state.badRanges.length === 0 && !sizeNote) {
          summary.matched++;
          return;
        }
        const ranges = state.badRanges.sort((a, b) => a.range - b.range);
        const which = ranges.length > 0 ? `${ranges.length} of ${entry.ranges.length} ranges differ (${listRanges(ranges.map((r) => r.range))})` : '';
        report(entry, 'changed', [which, sizeNote].filter(Boolean).join('; '), { ranges });
        return;
      }
      if (sizeNote) return report(entry, 'changed', sizeNote);
      if (state.badRanges.length > 0) return report(entry, 'changed', `its bytes differ: hash ${state.badRanges[0]!.found}, ${state.badRanges[0]!.expected} in the manifest`);
      summary.matched++;
    }

    const expectedOf = (t: Task): string => {
      const e = manifest.entries[t.entry]! as Extract<ManifestEntry, { type: 'file' }>;
      return 'ranges' in e ? e.ranges[t.range]! : e.hash;
    };
    let next = 0;
    /** A failure that ends the whole verify (a login refused): the other workers stop taking tasks. */
    let failed = false;
    const work = async (worker: number) => {
      while (next < tasks.length) {
        if (request.signal?.aborted || failed) return;
        const t = tasks[next++]!;
        const entry = manifest.entries[t.entry]! as Extract<ManifestEntry, { type: 'file' }>;
        const state = states.get(t.entry)!;
        const algorithm = entryAlgorithm(manifest.header, entry);
        try {
          const found = t.length === 0 ? createHasher(algorithm).digest() : await side.hash(worker, side.pathOf(entry), t.offset, t.length, algorithm);
          summary.hashed++;
          summary.bytes += t.length;
          const expected = expectedOf(t);
          // A range cut short by a shorter file differs whatever its hash.
          const whole = 'ranges' in entry ? Math.min(entry.rangeBytes, entry.size - t.offset) : entry.size;
          if (found !== expected || t.length !== whole) state.badRanges.push({ range: t.range, offset: t.offset, length: whole, expected, found });
        } catch (err) {
          const e = toFerryError(err);
          if (e.code === 'SSH_AUTH_FAILED' || e.code === 'HOST_KEY_UNKNOWN' || e.code === 'HOST_KEY_CHANGED' || e.code === 'HOST_UNREACHABLE') {
            failed = true;
            throw e;
          }
          state.errors.push(e);
        }
        if (--state.pending === 0) finish(t.entry);
      }
    };
    const total = tasks.reduce((n, t) => n + t.length, 0);
    const hashStart = Date.now();
    progress = setInterval(() => {
      const seconds = (Date.now() - hashStart) / 1000;
      emit({ type: 'verify.progress', entriesDone: manifest.entries.length - states.size, entries: manifest.entries.length, bytes: summary.bytes, total, rate: seconds > 0 ? summary.bytes / seconds : 0 });
    }, PROGRESS_EVERY_MS);
    await Promise.all(Array.from({ length: Math.min(workers, Math.max(1, tasks.length)) }, (_, i) => work(i)));
    if (request.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted: nothing was changed; run ferry verify again');
    summary.seconds = (Date.now() - started) / 1000;
    emit({ type: 'verify.done', ...summary });
    return summary;
  } finally {
    clearInterval(progress);
    side.close();
  }
}

const PROGRESS_EVERY_MS = 1000;

function kindName(kind: Found['kind']): string {
  return kind === 'dir' ? 'directory' : kind === 'symlink' ? 'symbolic link' : kind === 'file' ? 'file' : 'special file';
}

/** `0, 3-5, 9`. */
export function listRanges(ranges: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < ranges.length; ) {
    let j = i;
    while (j + 1 < ranges.length && ranges[j + 1] === ranges[j]! + 1) j++;
    parts.push(i === j ? `range ${ranges[i]}` : `ranges ${ranges[i]}-${ranges[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}

async function openSide(request: VerifyRequest, workers: number, emit: (e: VerifyEvent) => void): Promise<Side> {
  let loc;
  try {
    loc = parseLocation(request.location);
  } catch (err) {
    throw new FerryError('USAGE', `cannot verify at ${request.location}: ${(err as Error).message}`);
  }
  return loc.kind === 'local' ? localSide(loc.path, request.manifest, workers) : remoteSide(loc, request, workers, emit);
}

/** Relative to the tree's root, or the file itself (a directory holding it: under the entry's name). */
function entryPath(root: string, manifest: Manifest, entry: ManifestEntry, rootIsDir: boolean): string {
  if (manifest.header.kind === 'file') return rootIsDir ? posix.join(root, entry.path) : root;
  return posix.join(root, entry.path);
}

async function localSide(given: string, manifest: Manifest, workers: number): Promise<Side> {
  const root = posix.resolve(given);
  const rootIsDir = manifest.header.kind === 'file' && (await stat(root).then((s) => s.isDirectory(), () => false));
  const pathOf = (e: ManifestEntry) => entryPath(root, manifest, e, rootIsDir);
  const buffers = Array.from({ length: workers }, () => Buffer.allocUnsafe(1024 * 1024));
  return {
    mode: 'local',
    pathOf,
    labelOf: (p) => p,
    look: async (m) => {
      if (m.header.kind === 'file') {
        const f = await localFound(pathOf(m.entries[0]!));
        return () => f;
      }
      return lookupOf(walkTree(root));
    },
    hash: async (worker, path, offset, length, algorithm) => {
      const fh = await open(path, constants.O_RDONLY);
      try {
        const h = createHasher(algorithm);
        const buf = buffers[worker]!;
        let at = offset;
        const end = offset + length;
        while (at < end) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - at), at);
          if (bytesRead === 0) break;
          h.update(buf.subarray(0, bytesRead));
          at += bytesRead;
        }
        return h.digest();
      } finally {
        await fh.close();
      }
    },
    close: () => {},
  };
}

/** A local path as Found (following a link at the name, as a single file is copied). */
async function localFound(path: string): Promise<Found> {
  try {
    const st = await stat(path);
    return st.isFile() ? { kind: 'file', size: st.size } : st.isDirectory() ? { kind: 'dir' } : { kind: 'special' };
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === 'ENOENT' || errno === 'ENOTDIR') {
      // A link whose target is gone is there, as a link.
      const l = await lstat(path).catch(() => undefined);
      return l?.isSymbolicLink() ? { kind: 'symlink', target: '' } : { kind: 'missing' };
    }
    return { kind: 'error', code: errno ?? 'EIO', message: (err as Error).message };
  }
}

/** A tree walked once: what stands at each path, and the walk's errors for what is under a directory it could not read. */
async function lookupOf(walk: AsyncIterable<WalkItem>): Promise<(entry: ManifestEntry) => Found> {
  const seen = new Map<string, Found>();
  const errors = new Map<string, { code: string; message: string }>();
  for await (const item of walk) {
    if ('error' in item) {
      errors.set(item.path, item.error);
      continue;
    }
    const e = item.entry;
    if (e.kind === 'file') seen.set(e.path, { kind: 'file', size: e.size });
    else if (e.kind === 'symlink') seen.set(e.path, { kind: 'symlink', target: e.target ?? '' });
    // A further name of a file: the same file, as big as its first name.
    else if (e.kind === 'hardlink') {
      const first = e.target !== undefined ? seen.get(e.target) : undefined;
      seen.set(e.path, first?.kind === 'file' ? first : { kind: 'error', code: 'EIO', message: 'a hard link whose first name the walk did not report' });
    } else seen.set(e.path, { kind: e.kind === 'dir' ? 'dir' : 'special' });
  }
  return (entry) => {
    const f = seen.get(entry.path);
    if (f) return f;
    // Under a directory the walk could not read: unknown, not missing.
    for (let p: string = entry.path; ; p = posix.dirname(p) === '.' ? '' : posix.dirname(p)) {
      const err = errors.get(p);
      // A root (or directory) gone since the walk listed it: what was under it is missing.
      if (err) return err.code === 'ENOENT' || err.code === 'ENOTDIR' ? { kind: 'missing' } : { kind: 'error', ...err };
      if (p === '') break;
    }
    return { kind: 'missing' };
  };
}

async function remoteSide(loc: RemoteLocation, request: VerifyRequest, workers: number, emit: (e: VerifyEvent) => void): Promise<Side> {
  const options = resolveCopyOptions(request.options, { cores: availableParallelism() });
  const remote = await resolveRemote(loc, options);
  for (const message of remote.warnings) emit({ type: 'warning', message });
  const connectOptions = coordinatorConnectOptions(options, request.signal);
  const first = await connectAny(remote.hosts, remote.ssh, connectOptions);
  const conns: Array<RemoteConnection | undefined> = [first.conn];
  const connecting: Array<Promise<RemoteConnection> | undefined> = [];
  const fallback = fallbackWarning(first.conn);
  if (fallback) emit({ type: 'warning', message: fallback });
  // Every further connection in the mode the first one found.
  const more = { ...connectOptions, mode: first.conn.mode };
  const connOf = async (worker: number): Promise<RemoteConnection> => {
    const c = conns[worker];
    if (c?.alive) return c;
    c?.close();
    connecting[worker] ??= connectAny(remote.hosts, remote.ssh, more).then((r) => r.conn);
    try {
      const fresh = await connecting[worker]!;
      conns[worker] = fresh;
      return fresh;
    } finally {
      connecting[worker] = undefined;
    }
  };
  const closeAll = () => {
    for (const c of conns) c?.close();
  };
  try {
    const label = first.conn.label;
    let root = await expandHome(first.conn, loc.path, 'destination');
    if (!root.startsWith('/')) root = await first.conn.realpath(root);
    const manifest = request.manifest;
    const rootIsDir = manifest.header.kind === 'file' && (await remoteStat(first.conn, root))?.type === 'directory';
    const pathOf = (e: ManifestEntry) => entryPath(root, manifest, e, rootIsDir);
    return {
      mode: first.conn.mode,
      pathOf,
      labelOf: (p) => `${label}:${p}`,
      look: async (m) => {
        if (m.header.kind === 'file') {
          const st = await remoteStat(first.conn, pathOf(m.entries[0]!)).catch((err: unknown) => toFerryError(err));
          const f: Found = st instanceof FerryError ? { kind: 'error', code: st.errno ?? st.code, message: st.message } : !st ? { kind: 'missing' } : st.type === 'file' ? { kind: 'file', size: st.size } : st.type === 'directory' ? { kind: 'dir' } : { kind: 'special' };
          return () => f;
        }
        return lookupOf((await connOf(0)).walk(root));
      },
      hash: async (worker, path, offset, length, algorithm) => {
        const conn = await connOf(worker);
        try {
          return await conn.hashRange(path, offset, length, algorithm);
        } catch (err) {
          // A connection that died (not the file's trouble): once more on a new one.
          if (conn.alive) throw err;
          return (await connOf(worker)).hashRange(path, offset, length, algorithm);
        }
      },
      close: closeAll,
    };
  } catch (err) {
    closeAll();
    throw err;
  }
}
