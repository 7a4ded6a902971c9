/**
 * `ferry check SRC DST`: whether DST is a copy of SRC. Each side is a local
 * path or a remote one; the two roots correspond (DST is compared as the copy
 * itself, never as a directory the copy went into).
 *
 * The stages:
 *
 * 1. **walk**: both sides at once, the local one with serve's walkTree, a
 *    remote one with `RemoteConnection.walk` on a connection of its own (a
 *    walk that waits for its consumer stops its connection's reading).
 * 2. **match** (core's tree-match.ts): entries are paired by tree path as
 *    they come; kinds, sizes and link targets decide most pairs at once.
 * 3. **hash**: a pair of files of one size is cut into ranges of
 *    `rangeBytes`; each range is hashed on both sides at once, a remote side
 *    on a pool of connections (each its own helper process, so its own core),
 *    several ranges in flight, so one huge file is hashed by every connection
 *    of both sides together. The first range that differs ends that file's
 *    hashing. Starting a range waits for a free slot, which holds the walks
 *    back: memory stays bounded by the ranges in flight, plus the entries
 *    one walk has found that the other has not yet.
 *
 * Every entry is reported once, as it is decided (not in tree order).
 *
 * ```ts
 * const summary = await runCheck({ source: '/data/run1', destination: 'dtn:/lustre/run1', onEntry: (e) => console.log(e.status, e.path) });
 * ```
 */
import { lstat, realpath } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, posix, resolve } from 'node:path';
import { CHECK_MARKS, FerryError, HASH_ALGORITHMS, TreeMatcher, errnoOf, parseLocation, resolveCopyOptions, toFerryError } from '@ferry/core';
import type { CheckStatus, CopyOptions, HashAlgorithm, MatchOutcome, RemoteLocation, ResolvedCopyOptions, TransferMode, WalkItem } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { walkTree } from '@ferry/serve';
import { fallbackWarning } from './copy.js';
import { LocalHashers } from './local-hash.js';
import { connectAny, coordinatorConnectOptions, expandHome, remoteStat, resolveRemote } from './prepare.js';

/** Range of a big file hashed as one piece on each side, unless --range-size says otherwise. */
export const DEFAULT_CHECK_RANGE_BYTES = 64 * 1024 * 1024;
/** Hashing connections per remote side, unless --streams says otherwise. */
export const DEFAULT_CHECK_STREAMS = 4;
/**
 * Hash requests in flight on one connection: a small file's costs round
 * trips (open, hash, close) more than CPU, and several in flight hide them.
 */
const PER_CONNECTION = 8;
/** Hashing threads for the local sides, at most (fewer on a machine with fewer cores). */
const MAX_LOCAL_HASHERS = 8;
/**
 * Files at most this big are hashed whole, many to a request (a remote
 * side's READ_BATCH: one round trip for hundreds of files, though their
 * bytes travel too), rather than one request each.
 */
export const SMALL_FILE_BYTES = 256 * 1024;
/** A batch of small files closes at this many files... */
const BATCH_FILES = 512;
/** ...or this many bytes. */
const BATCH_BYTES = 16 * 1024 * 1024;
/** Tries of one range's hash on a remote side whose connection broke. */
const MAX_HASH_ATTEMPTS = 3;

export interface CheckRequest {
  source: string;
  destination: string;
  /** Connection options as `ferry cp` takes them; `streams`, `rangeSize` and `hash` apply too. */
  options?: CopyOptions;
  /** Files of the same size count as the same: no content is read. @default false */
  sizeOnly?: boolean;
  /** Every entry as it is decided, the same ones too. */
  onEntry?: (entry: CheckEntry) => void;
  onEvent?: (event: CheckEvent) => void;
  signal?: AbortSignal;
}

/** One tree path and what the check found; `''` is the roots themselves. */
export interface CheckEntry {
  status: CheckStatus;
  /** `=`, `*`, `+`, `-` or `!`, as `rclone check --combined` writes them. */
  mark: string;
  path: string;
  /** Why it differs, or could not be compared. */
  reason?: string;
}

export interface CheckSummary {
  source: string;
  destination: string;
  same: number;
  differ: number;
  missingOnDst: number;
  missingOnSrc: number;
  errors: number;
  /** Bytes of content compared (each side hashed them once). */
  bytesHashed: number;
  seconds: number;
  /** The content hash, or none with sizeOnly. */
  hash: HashAlgorithm | 'none';
}

export type CheckEvent =
  | { type: 'check.start'; source: string; destination: string; hash: HashAlgorithm | 'none'; rangeBytes: number; streams: number; modes: Array<TransferMode | 'local'> }
  | { type: 'warning'; message: string; host?: string }
  | ({ type: 'check.done' } & CheckSummary);

/** One side of a check: its tree walked, ranges of its files hashed. */
interface CheckSide {
  /** The root as the user knows it (`host:/abs/path` or an absolute local path). */
  readonly label: string;
  readonly mode: TransferMode | 'local';
  /** Hashes this side computes where the bytes are; undefined: any (locally, or SFTP's tools and reads). */
  readonly hashes: readonly HashAlgorithm[] | undefined;
  /** `hashes`: a remote side's walk hashes files of at most `maxBytes` as it goes, where its helper can (entries' `hash`). */
  walk(signal?: AbortSignal, hashes?: { algorithm: HashAlgorithm; maxBytes: number }): AsyncIterable<WalkItem>;
  hashRange(treePath: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string>;
  /** Whole files' hashes, each a digest or why that file could not be hashed; rejects when the whole request failed. */
  hashFiles(files: readonly SmallFile[], algorithm: HashAlgorithm): Promise<Array<string | FerryError>>;
  close(): void;
}

interface SmallFile {
  readonly path: string;
  readonly size: number;
}

/** A small file to compare, with the hash a side's walk brought, if any. */
interface SmallPair extends SmallFile {
  readonly srcHash?: string;
  readonly dstHash?: string;
}

/**
 * Why a check stops as a whole, not one entry: the connection (after its
 * retries), the credentials, the user. The rest (an unreadable file, one now
 * a directory, which the helper answers as PROTOCOL) marks its entry `!`.
 */
const FATAL: ReadonlySet<string> = new Set(['CONNECTION_LOST', 'HOST_UNREACHABLE', 'SSH_AUTH_FAILED', 'HOST_KEY_UNKNOWN', 'HOST_KEY_CHANGED', 'HELPER_UNAVAILABLE', 'HELPER_UNTRUSTED', 'SSH_CLIENT_MISSING', 'INTERRUPTED', 'USAGE']);

export async function runCheck(request: CheckRequest): Promise<CheckSummary> {
  const options = resolveCopyOptions(request.options ?? {});
  const emit = request.onEvent ?? (() => {});
  const started = Date.now();
  const sizeOnly = request.sizeOnly === true;
  const rangeBytes = options.rangeBytes ?? DEFAULT_CHECK_RANGE_BYTES;
  const streams = options.tuneStreams ? DEFAULT_CHECK_STREAMS : options.streams;
  const sides: CheckSide[] = [];
  // Both local sides (ferry check a b) share the threads.
  const hashers = new LocalHashers(Math.min(MAX_LOCAL_HASHERS, availableParallelism()));
  const onAbort = () => {
    sides.forEach((s) => s.close());
    hashers.close();
  };
  request.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    // One after the other: a host that asks for a password or a host key asks once.
    const src = await openSide(request.source, 'source', options, streams, hashers, emit, request.signal);
    sides.push(src);
    const dst = await openSide(request.destination, 'destination', options, streams, hashers, emit, request.signal);
    sides.push(dst);
    const algorithm = chooseHash(options, sides);
    const hash = sizeOnly ? 'none' : algorithm;
    emit({ type: 'check.start', source: src.label, destination: dst.label, hash, rangeBytes, streams, modes: [src.mode, dst.mode] });
    // The roots themselves (tree path ''), when they differ, go by the source's name.
    const rootName = posix.basename(src.label) || '.';
    const onEntry = (e: CheckEntry) => request.onEntry?.(e.path === '' ? { ...e, path: rootName } : e);
    const run = new CheckRun(src, dst, algorithm, rangeBytes, Math.max(4, streams * PER_CONNECTION), sizeOnly, onEntry, request.signal);
    const counts = await run.run();
    const summary: CheckSummary = { source: src.label, destination: dst.label, ...counts, seconds: (Date.now() - started) / 1000, hash };
    emit({ type: 'check.done', ...summary });
    return summary;
  } catch (err) {
    if (request.signal?.aborted) throw new FerryError('INTERRUPTED', 'the check was interrupted: run it again to check from the start', { cause: err });
    throw err;
  } finally {
    request.signal?.removeEventListener('abort', onAbort);
    for (const s of sides) s.close();
    hashers.close();
  }
}

/** The exit status a finished check stands for: COPIES_DIFFER, CHECK_INCOMPLETE, or none (identical). */
export function checkOutcome(s: Pick<CheckSummary, 'differ' | 'missingOnDst' | 'missingOnSrc' | 'errors'>): FerryError | undefined {
  const different = s.differ + s.missingOnDst + s.missingOnSrc;
  if (different > 0) return new FerryError('COPIES_DIFFER', `the copies differ: ${s.differ} differ, ${s.missingOnDst} only in the source, ${s.missingOnSrc} only in the destination${s.errors > 0 ? `, ${s.errors} not compared` : ''}`);
  if (s.errors > 0) return new FerryError('CHECK_INCOMPLETE', `no difference found, but ${s.errors} entr${s.errors === 1 ? 'y' : 'ies'} could not be compared (listed with !)`);
  return undefined;
}

/**
 * The hash both sides compute where the bytes are: --hash when given, else
 * xxh3 where both have it, crc32 with a python helper; SFTP hashes sha256 on
 * the remote host with sha256sum, so it gets sha256 rather than read
 * everything back here.
 */
function chooseHash(options: ResolvedCopyOptions, sides: readonly CheckSide[]): HashAlgorithm {
  if (options.hashGiven) return options.hash;
  if (sides.some((s) => s.mode === 'sftp')) return 'sha256';
  const everywhere = (h: HashAlgorithm) => sides.every((s) => s.hashes === undefined || s.hashes.includes(h));
  return [options.hash, ...HASH_ALGORITHMS].find(everywhere) ?? options.hash;
}

type Counts = Omit<CheckSummary, 'source' | 'destination' | 'seconds' | 'hash'>;

/** A counting semaphore: starting a range waits for a slot. */
class Slots {
  private free: number;
  private readonly waiting: Array<() => void> = [];
  constructor(size: number) {
    this.free = size;
  }
  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

class CheckRun {
  private readonly matcher: TreeMatcher;
  private readonly slots: Slots;
  private readonly counts: Counts = { same: 0, differ: 0, missingOnDst: 0, missingOnSrc: 0, errors: 0, bytesHashed: 0 };
  private readonly files = new Set<Promise<void>>();
  private small: SmallPair[] = [];
  private smallBytes = 0;
  private fatal: FerryError | undefined;

  constructor(
    private readonly src: CheckSide,
    private readonly dst: CheckSide,
    private readonly algorithm: HashAlgorithm,
    private readonly rangeBytes: number,
    inFlight: number,
    sizeOnly: boolean,
    private readonly onEntry: (entry: CheckEntry) => void,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.matcher = new TreeMatcher({ sizeOnly });
    this.slots = new Slots(inFlight);
    this.walkHashes = sizeOnly ? undefined : { algorithm, maxBytes: SMALL_FILE_BYTES };
  }

  /** What the walks hash as they go (a remote side whose helper can): small files, unless sizes only. */
  private readonly walkHashes: { algorithm: HashAlgorithm; maxBytes: number } | undefined;

  async run(): Promise<Counts> {
    // The walks run together; a failure of one stops the other at its next entry.
    const walks = await Promise.allSettled([this.consume('src', this.src), this.consume('dst', this.dst)]);
    for (const w of walks) if (w.status === 'rejected') this.fatal ??= toFerryError(w.reason);
    if (!this.fatal) for (const o of this.matcher.finish()) await this.handle(o);
    if (!this.fatal) await this.flushSmall();
    await Promise.all([...this.files]);
    if (this.fatal) throw this.fatal;
    return this.counts;
  }

  private async consume(side: 'src' | 'dst', from: CheckSide): Promise<void> {
    for await (const item of from.walk(this.signal, this.walkHashes)) {
      if (this.fatal) return;
      if ('error' in item && item.path === '') throw rootError(side, from.label, item.error);
      for (const o of this.matcher.add(side, item)) await this.handle(o);
    }
  }

  private async handle(o: MatchOutcome): Promise<void> {
    if ('status' in o) return this.report(o.path, o.status, o.reason);
    if (o.compare.size <= SMALL_FILE_BYTES) {
      const { srcHash, dstHash } = o.compare;
      // Both walks hashed it (two remote sides): decided here, nothing to read.
      if (srcHash !== undefined && dstHash !== undefined) return this.decideSmall(o.path, o.compare.size, srcHash, dstHash);
      this.small.push({ path: o.path, size: o.compare.size, ...(srcHash === undefined ? {} : { srcHash }), ...(dstHash === undefined ? {} : { dstHash }) });
      this.smallBytes += o.compare.size;
      if (this.small.length >= BATCH_FILES || this.smallBytes >= BATCH_BYTES) await this.flushSmall();
      return;
    }
    const file = this.compare(o.path, o.compare.size);
    this.track(file);
    // Wait here for a range slot, so the walks wait too.
    await file.started;
  }

  private track(work: Promise<void>): void {
    this.files.add(work);
    void work.finally(() => this.files.delete(work));
  }

  /** A small file both sides have hashed. */
  private decideSmall(path: string, size: number, x: string | FerryError, y: string | FerryError): void {
    const failed = [x, y].find((h): h is FerryError => h instanceof FerryError);
    if (failed && FATAL.has(failed.code)) this.fatal ??= failed;
    else if (failed) this.report(path, 'error', failed.message);
    else {
      this.counts.bytesHashed += size;
      this.report(path, x === y ? 'same' : 'differ', x === y ? undefined : 'the content differs');
    }
  }

  /**
   * One side's hashes of a batch: those its walk brought, the others from
   * one request for them all (none when the walk brought every one).
   */
  private async sideHashes(side: CheckSide, batch: readonly SmallPair[], known: 'srcHash' | 'dstHash'): Promise<Array<string | FerryError>> {
    const missing = batch.filter((f) => f[known] === undefined);
    if (missing.length === 0) return batch.map((f) => f[known]!);
    const got = await side.hashFiles(missing, this.algorithm);
    let i = 0;
    return batch.map((f) => f[known] ?? got[i++]!);
  }

  /** Hashes the small files gathered so far, one request per side, once a slot is free. */
  private async flushSmall(): Promise<void> {
    const batch = this.small;
    if (batch.length === 0) return;
    this.small = [];
    this.smallBytes = 0;
    await this.slots.take();
    this.track(
      (async () => {
        try {
          const [a, b] = await Promise.allSettled([this.sideHashes(this.src, batch, 'srcHash'), this.sideHashes(this.dst, batch, 'dstHash')]);
          if (this.fatal) return;
          const whole = [a, b].find((r) => r.status === 'rejected');
          if (whole) {
            const e = toFerryError(whole.reason);
            if (FATAL.has(e.code)) this.fatal ??= e;
            else for (const f of batch) this.report(f.path, 'error', e.message);
            return;
          }
          const srcHashes = (a as PromiseFulfilledResult<Array<string | FerryError>>).value;
          const dstHashes = (b as PromiseFulfilledResult<Array<string | FerryError>>).value;
          batch.forEach((f, i) => this.decideSmall(f.path, f.size, srcHashes[i]!, dstHashes[i]!));
        } finally {
          this.slots.give();
        }
      })(),
    );
  }

  private report(path: string, status: CheckStatus, reason?: string): void {
    switch (status) {
      case 'same':
        this.counts.same++;
        break;
      case 'differ':
        this.counts.differ++;
        break;
      case 'missing-on-dst':
        this.counts.missingOnDst++;
        break;
      case 'missing-on-src':
        this.counts.missingOnSrc++;
        break;
      case 'error':
        this.counts.errors++;
        break;
    }
    this.onEntry({ status, mark: CHECK_MARKS[status], path, ...(reason === undefined ? {} : { reason }) });
  }

  /**
   * Hashes a pair of files range by range on both sides; resolves once every
   * range has ended. `started` resolves once the last range has a slot.
   */
  private compare(path: string, size: number): Promise<void> & { started: Promise<void> } {
    let markStarted!: () => void;
    const started = new Promise<void>((r) => (markStarted = r));
    const done = (async () => {
      let differs = false;
      let failure: FerryError | undefined;
      const ranges: Array<Promise<void>> = [];
      try {
        for (let offset = 0; offset < size && !differs && !failure && !this.fatal; offset += this.rangeBytes) {
          await this.slots.take();
          if (differs || failure || this.fatal) {
            this.slots.give();
            break;
          }
          const length = Math.min(this.rangeBytes, size - offset);
          ranges.push(
            (async () => {
              try {
                // Both settle before the slot is given back: a failed side does not leave the other's work uncounted.
                const [a, b] = await Promise.allSettled([this.src.hashRange(path, offset, length, this.algorithm), this.dst.hashRange(path, offset, length, this.algorithm)]);
                if (a.status === 'rejected') throw a.reason;
                if (b.status === 'rejected') throw b.reason;
                this.counts.bytesHashed += length;
                if (a.value !== b.value) differs = true;
              } catch (err) {
                const e = toFerryError(err);
                if (FATAL.has(e.code)) this.fatal ??= e;
                else failure ??= e;
              } finally {
                this.slots.give();
              }
            })(),
          );
        }
      } finally {
        markStarted();
      }
      await Promise.all(ranges);
      if (this.fatal) return;
      if (failure) this.report(path, 'error', failure.message);
      else this.report(path, differs ? 'differ' : 'same', differs ? 'the content differs' : undefined);
    })();
    return Object.assign(done, { started });
  }
}

function rootError(side: 'src' | 'dst', label: string, error: { code: string; message: string }): FerryError {
  const missing = error.code === 'ENOENT' || error.code === 'ENOTDIR';
  if (side === 'src') return new FerryError(missing ? 'SOURCE_NOT_FOUND' : 'SOURCE_UNREADABLE', `source ${label} cannot be read (${error.message}): check the path`, { path: label, errno: error.code });
  return new FerryError(missing ? 'DEST_DIR_MISSING' : 'DEST_IO', `destination ${label} cannot be read (${error.message}): check the path`, { path: label, errno: error.code });
}

async function openSide(text: string, role: 'source' | 'destination', options: ResolvedCopyOptions, streams: number, hashers: LocalHashers, emit: (e: CheckEvent) => void, signal?: AbortSignal): Promise<CheckSide> {
  const loc = parseLocation(text);
  if (loc.kind === 'local') return localSide(loc.path, role, hashers);
  return remoteSide(loc, role, options, streams, emit, signal);
}

async function localSide(path: string, role: 'source' | 'destination', hashers: LocalHashers): Promise<CheckSide> {
  // The root is followed when it is a link (`ferry check link-to-run host:run`); nothing under it is.
  let root = resolve(path);
  try {
    if ((await lstat(root)).isSymbolicLink()) root = await realpath(root);
  } catch (err) {
    const errno = errnoOf(err);
    const missing = errno === 'ENOENT' || errno === 'ENOTDIR';
    if (role === 'source') throw new FerryError(missing ? 'SOURCE_NOT_FOUND' : 'SOURCE_UNREADABLE', `source ${root} cannot be read (${errno ?? (err as Error).message}): check the path`, { path: root, cause: err });
    throw new FerryError(missing ? 'DEST_DIR_MISSING' : 'DEST_IO', `destination ${root} cannot be read (${errno ?? (err as Error).message}): check the path`, { path: root, cause: err });
  }
  return {
    label: root,
    mode: 'local',
    hashes: undefined,
    walk: (signal) => walkTree(root, signal ? { signal } : {}),
    hashRange: (treePath, offset, length, algorithm) => hashers.hash(treePath === '' ? root : join(root, treePath), offset, length, algorithm),
    hashFiles: (files, algorithm) => hashers.hashFiles(files.map((f) => ({ path: f.path === '' ? root : join(root, f.path), size: f.size })), algorithm),
    close: () => {},
  };
}

/**
 * A remote side: one connection walks (its reading pauses while the walk
 * waits for us), up to `streams` others hash, each with a few requests in
 * flight; one that breaks is replaced and its range hashed again.
 */
async function remoteSide(loc: RemoteLocation, role: 'source' | 'destination', options: ResolvedCopyOptions, streams: number, emit: (e: CheckEvent) => void, signal?: AbortSignal): Promise<CheckSide> {
  const { ssh, hosts, warnings } = await resolveRemote(loc, options);
  for (const message of warnings) emit({ type: 'warning', message });
  const connectOptions = coordinatorConnectOptions(options, signal);
  const { conn: walker } = await connectAny(hosts, ssh, connectOptions);
  let root: string;
  try {
    const given = await expandHome(walker, loc.path, role);
    root = await walker.realpath(given);
    const st = await remoteStat(walker, root);
    if (!st) {
      const label = `${walker.label}:${root}`;
      throw role === 'source'
        ? new FerryError('SOURCE_NOT_FOUND', `source ${label} does not exist: check the path`, { host: walker.label, path: root })
        : new FerryError('DEST_DIR_MISSING', `destination ${label} does not exist: check the path (ferry check compares it as the copy itself)`, { host: walker.label, path: root });
    }
  } catch (err) {
    walker.close();
    throw err;
  }
  const fallback = fallbackWarning(walker);
  if (fallback) emit({ type: 'warning', message: fallback, host: walker.label });
  // The others take the data path the first one found, without trying the faster ones again.
  const pool = new ConnectionPool(async () => (await connectAny(hosts, ssh, { ...connectOptions, mode: walker.mode })).conn, streams, PER_CONNECTION);
  const label = `${walker.label}:${root}`;
  const pathOf = (treePath: string) => (treePath === '' ? root : `${root.replace(/\/+$/, '')}/${treePath}`);
  const hashRange = (treePath: string, offset: number, length: number, algorithm: HashAlgorithm) =>
    pool.use((c) =>
      c.hashRange(pathOf(treePath), offset, length, algorithm).catch((err: unknown) => {
        const e = toFerryError(err);
        if (FATAL.has(e.code)) throw e;
        throw new FerryError(e.code, `${walker.label}:${pathOf(treePath)}: ${e.message}`, { host: walker.label, path: pathOf(treePath), cause: e });
      }),
    );
  /** Whether the helper takes READ_BATCH with this hash (an older ferry serve does not; the python helper has no xxh3). */
  let batches = true;
  return {
    label,
    mode: walker.mode,
    hashes: walker.hashes,
    walk: (_signal, hashes) => walker.walk(root, hashes ? { hashes } : {}),
    hashRange,
    hashFiles: async (files, algorithm) => {
      if (batches && (walker.hashes === undefined || walker.hashes.includes(algorithm))) {
        try {
          // The helper hashes each file where it is (a helper before HASH_ONLY_CAPABILITY sends the bytes too: dropped here).
          const results = await pool.use((c) => c.hashFiles(files.map((f) => ({ path: pathOf(f.path), size: f.size })), algorithm));
          return results.map((r, i) => (r.ok ? r.hash : new FerryError(FerryError.fromData(r.error).code, `${walker.label}:${pathOf(files[i]!.path)}: ${r.error.message}`, { host: walker.label, path: pathOf(files[i]!.path) })));
        } catch (err) {
          if (toFerryError(err).code !== 'HELPER_UNAVAILABLE') throw err;
          batches = false;
        }
      }
      return Promise.all(files.map((f) => hashRange(f.path, 0, f.size, algorithm).catch((err: unknown) => toFerryError(err))));
    },
    close: () => {
      walker.close();
      pool.close();
    },
  };
}

interface PoolSlot {
  conn: Promise<RemoteConnection>;
  busy: number;
}

/**
 * A further hashing connection opens only once requests have shared the
 * open ones for this long: a connection costs an SSH login and a helper's
 * start (a few tenths of a CPU second on each side), more than hashing a
 * tree's small files or a few hundred MiB on the connections already open.
 */
export const POOL_GROW_AFTER_MS = 300;

/**
 * Up to `size` connections, each with up to `perConnection` requests at once:
 * the first opened by the first request, each further one once requests have
 * waited for or shared the open ones for POOL_GROW_AFTER_MS.
 */
export class ConnectionPool {
  private readonly slots: PoolSlot[] = [];
  private readonly waiting: Array<() => void> = [];
  private closed = false;
  /** Set while a further connection may be due: it opens when this fires, if requests still share. */
  private growTimer: NodeJS.Timeout | undefined;
  /** Whether the pool may open a further connection now (the timer fired with requests sharing). */
  private growDue = false;

  constructor(
    private readonly connect: () => Promise<RemoteConnection>,
    private readonly size: number,
    private readonly perConnection: number,
  ) {}

  async use<T>(fn: (conn: RemoteConnection) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const slot = await this.take();
      let conn: RemoteConnection | undefined;
      try {
        conn = await slot.conn;
        return await fn(conn);
      } catch (err) {
        const e = toFerryError(err);
        const broken = conn === undefined || !conn.alive || e.code === 'CONNECTION_LOST';
        if (broken) this.drop(slot);
        // A connection that broke under a request: the request goes again on another, a few times.
        if (!broken || conn === undefined || attempt >= MAX_HASH_ATTEMPTS || this.closed) throw e;
      } finally {
        slot.busy--;
        this.waiting.shift()?.();
      }
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.growTimer);
    for (const s of this.slots.splice(0)) void s.conn.then((c) => c.close(), () => {});
    for (const w of this.waiting.splice(0)) w();
  }

  private async take(): Promise<PoolSlot> {
    for (;;) {
      if (this.closed) throw new FerryError('INTERRUPTED', 'the check was stopped');
      let best: PoolSlot | undefined;
      for (const s of this.slots) if (s.busy < this.perConnection && (best === undefined || s.busy < best.busy)) best = s;
      // A new connection rather than a second request on a busy one, while there may be more:
      // the first at once, a further one once requests have shared for a while (growDue).
      if ((best === undefined || best.busy > 0) && this.slots.length < this.size) {
        if (this.slots.length === 0 || this.growDue) {
          this.growDue = false;
          best = { conn: this.connect(), busy: 0 };
          best.conn.catch(() => {});
          this.slots.push(best);
        } else this.armGrowth();
      }
      if (best) {
        best.busy++;
        return best;
      }
      await new Promise<void>((r) => this.waiting.push(r));
    }
  }

  /** Starts the wait after which one more connection may open, unless one is running. */
  private armGrowth(): void {
    if (this.growTimer !== undefined || this.closed) return;
    this.growTimer = setTimeout(() => {
      this.growTimer = undefined;
      // Still sharing or waiting: the next request opens a further connection (and arms again).
      if (this.waiting.length > 0 || this.slots.some((s) => s.busy > 1)) {
        this.growDue = true;
        // A request that waits for a free slot takes it now.
        this.waiting.shift()?.();
      }
    }, POOL_GROW_AFTER_MS);
    this.growTimer.unref();
  }

  private drop(slot: PoolSlot): void {
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
    void slot.conn.then((c) => c.close(), () => {});
  }
}
