/**
 * The tree walker (issue 31): a directory tree as a stream of entries, read by
 * several directory readers at once, held back when the consumer lags.
 *
 * - **Streaming**: entries come out as they are found, so the first bytes of a
 *   copy move long before a walk of millions of entries ends; at most
 *   `highWater` entries (plus one directory read's chunk per reader) wait in
 *   memory, and the directories still to read wait as paths.
 * - **Parents first**: a directory is emitted before anything under it (it is
 *   queued for reading only once emitted), which the planner relies on.
 * - **lstat, not stat**: links are reported as links; a further name of a
 *   file with several links comes out as a `hardlink` to the first name seen.
 * - **Errors are entries**: an unreadable directory, an entry gone between
 *   listing and lstat, a name that is not UTF-8: each comes out as a
 *   `WalkError` and the walk goes on, so one bad entry never stops a tree.
 *
 * The coordinator walks the local tree of a push; the helper walks the remote
 * tree of a pull.
 *
 * ```ts
 * for await (const item of walkTree('/data/project')) {
 *   if ('error' in item) skipped(item); else planner.add(item.entry);
 * }
 * ```
 */
import { lstat, opendir, readlink } from 'node:fs/promises';
import { lstatSync, opendirSync, readlinkSync } from 'node:fs';
import type { Dir, Stats } from 'node:fs';
import { join } from 'node:path';
import type { TreeEntry, TreeEntryKind, WalkError, WalkItem } from '@ferry/core';
import { readMeta, readNamesSync } from './meta.js';
import type { MetaWanted } from './meta.js';

export type { WalkError, WalkItem };

export interface WalkOptions {
  /** Directories read at once (default 8): the file system's latency is hidden by reading several. */
  readonly concurrency?: number;
  /** Entries found but not yet taken before the readers wait (default 4096). */
  readonly highWater?: number;
  readonly signal?: AbortSignal;
  /** Owner names and extended attributes to add to each entry (meta.ts); none by default. */
  readonly meta?: MetaWanted;
  /**
   * Read with synchronous calls, a chunk at a time, while the file system
   * answers fast (default true; not with extended attributes): see FAST_CHUNK.
   */
  readonly readSync?: boolean;
}


const DEFAULT_CONCURRENCY = 8;
const DEFAULT_HIGH_WATER = 4096;
/** lstat calls in flight per directory reader. */
const LSTATS_AT_ONCE = 32;
/**
 * Entries a reader lists and lstat's with synchronous calls before it lets
 * the event loop run. On a file system that answers from memory (a local
 * disk's cached metadata) a synchronous lstat costs ~10 us where a promise
 * through libuv's thread pool costs ~70 us of CPU: a 21,000-entry tree took
 * 0.24 s instead of 1.55 s. On one that answers over a network (Lustre,
 * NFS) the many calls in flight of the asynchronous readers hide the
 * latency instead, so SLOW_CHUNKS chunks in a row slower than SLOW_ENTRY_US
 * an entry switch the walk to them for good (one slow chunk is more often
 * another process taking the CPU than a slow file system).
 */
const FAST_CHUNK = 128;
const SLOW_ENTRY_US = 300;
const SLOW_CHUNKS = 3;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function kindOf(st: Stats): TreeEntryKind {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  return 'special';
}

/** A name that is not UTF-8 cannot travel as a string without changing: say so rather than copy it under another name. */
function notUtf8(dir: string, raw: Buffer): WalkError {
  return { path: `${dir === '' ? '' : dir + '/'}${raw.toString('latin1')}`, error: { code: 'ENAME', message: `the name is not valid UTF-8 (bytes ${raw.toString('hex')}): not copied` } };
}

function errorOf(path: string, err: unknown): WalkError {
  const e = err as NodeJS.ErrnoException;
  return { path, error: { code: e.code ?? 'EIO', message: e.message } };
}

/** Walks `root` (a directory, or any single entry: a tree of one). */
export async function* walkTree(root: string, options: WalkOptions = {}): AsyncGenerator<WalkItem> {
  const concurrency = Math.max(1, options.concurrency ?? DEFAULT_CONCURRENCY);
  const highWater = Math.max(1, options.highWater ?? DEFAULT_HIGH_WATER);
  const signal = options.signal;
  /** First name of each file with more than one link, by device and inode. */
  const firstNames = new Map<string, string>();
  /** Found, not yet taken: ready[head..]. */
  const ready: WalkItem[] = [];
  let head = 0;
  const dirs: string[] = [];
  let readers = 0;
  let failure: unknown;
  /** Wakes the consumer when items are ready or the walk ended. */
  let wakeConsumer: (() => void) | undefined;
  /** Wakes readers held back by a full buffer. */
  const wakeReaders: Array<() => void> = [];

  const notify = () => {
    const w = wakeConsumer;
    wakeConsumer = undefined;
    w?.();
  };
  const emit = async (item: WalkItem) => {
    ready.push(item);
    notify();
    while (ready.length - head >= highWater && failure === undefined && !signal?.aborted) await new Promise<void>((r) => wakeReaders.push(r));
  };

  /** The kind of an lstat'ed entry; a further name of a file with several links is a `hardlink` to its first name. */
  const kindAndFirst = (path: string, st: Stats): { kind: TreeEntryKind; first?: string } => {
    const kind = kindOf(st);
    if (kind === 'file' && st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      const first = firstNames.get(key);
      if (first === undefined) firstNames.set(key, path);
      else return { kind: 'hardlink', first };
    }
    return { kind };
  };

  const describe = async (path: string, abs: string, st: Stats): Promise<WalkItem> => {
    const { kind, first } = kindAndFirst(path, st);
    const target = kind === 'symlink' ? await readlink(abs) : first;
    return { entry: entryOf(path, st, kind, target, options.meta ? await readMeta(abs, kind, st.uid, st.gid, options.meta) : {}) };
  };

  /** describe with synchronous calls (owner names from getent's cache; never attributes). */
  const describeSync = (path: string, abs: string, st: Stats): WalkItem => {
    const { kind, first } = kindAndFirst(path, st);
    const target = kind === 'symlink' ? readlinkSync(abs) : first;
    return { entry: entryOf(path, st, kind, target, options.meta?.names ? readNamesSync(st.uid, st.gid) : {}) };
  };

  const entryOf = (path: string, st: Stats, kind: TreeEntryKind, target: string | undefined, meta: Partial<TreeEntry>): TreeEntry => {
    const allocated = st.blocks * 512;
    return {
      path,
      kind,
      size: kind === 'file' ? st.size : 0,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtimeMs: st.mtimeMs,
      atimeMs: st.atimeMs,
      dev: st.dev,
      ino: st.ino,
      nlink: st.nlink,
      ...(target === undefined ? {} : { target }),
      ...(kind === 'file' && allocated < st.size ? { allocated } : {}),
      ...meta,
    };
  };

  /** Reports one entry of a directory being read; a directory found is queued once reported. */
  const visit = async (path: string, abs: string) => {
    let item: WalkItem;
    try {
      item = await describe(path, abs, await lstat(abs));
    } catch (err) {
      // Gone between the listing and lstat (or unreadable): reported, not fatal.
      item = errorOf(path, err);
    }
    await emit(item);
    if ('entry' in item && item.entry.kind === 'dir') dirs.push(path);
  };

  const readDir = async (path: string) => {
    const abs = path === '' ? root : join(root, path);
    let dir;
    try {
      dir = await opendir(abs, { encoding: 'buffer' as BufferEncoding, bufferSize: 128 });
    } catch (err) {
      return emit(errorOf(path, err));
    }
    const batch: Array<Promise<void>> = [];
    try {
      for await (const d of dir) {
        if (signal?.aborted) break;
        const raw = d.name as unknown as Buffer;
        let name: string;
        try {
          name = utf8.decode(raw);
        } catch {
          await emit(notUtf8(path, raw));
          continue;
        }
        const child = path === '' ? name : `${path}/${name}`;
        batch.push(visit(child, join(abs, name)));
        if (batch.length >= LSTATS_AT_ONCE) await Promise.all(batch.splice(0));
      }
      await Promise.all(batch.splice(0));
    } catch (err) {
      await Promise.all(batch.splice(0));
      await emit(errorOf(path, err));
    }
  };

  /** Whether readers still use synchronous calls (FAST_CHUNK). */
  let fast = options.readSync !== false && !options.meta?.xattrs;
  /** Chunks in a row that were slow (SLOW_CHUNKS). */
  let slowChunks = 0;

  /**
   * readDir with synchronous calls, FAST_CHUNK entries at a time, the event
   * loop let run between chunks; a slow chunk ends fast reading for the walk
   * (the next directories are read by readDir).
   */
  const readDirFast = async (path: string) => {
    const abs = path === '' ? root : join(root, path);
    let dir: Dir;
    try {
      dir = opendirSync(abs, { encoding: 'buffer' as BufferEncoding, bufferSize: 128 });
    } catch (err) {
      return emit(errorOf(path, err));
    }
    try {
      for (;;) {
        const t0 = performance.now();
        let n = 0;
        let end = false;
        try {
          // A chunk ends early when the consumer lags by highWater entries: memory stays bounded as with emit.
          for (; n < FAST_CHUNK && ready.length - head < highWater; n++) {
            const d = dir.readSync();
            if (d === null) {
              end = true;
              break;
            }
            const raw = d.name as unknown as Buffer;
            let name: string;
            try {
              name = utf8.decode(raw);
            } catch {
              ready.push(notUtf8(path, raw));
              continue;
            }
            const child = path === '' ? name : `${path}/${name}`;
            const childAbs = join(abs, name);
            let item: WalkItem;
            try {
              item = describeSync(child, childAbs, lstatSync(childAbs));
            } catch (err) {
              item = errorOf(child, err);
            }
            ready.push(item);
            // Queued once reported, as visit does.
            if ('entry' in item && item.entry.kind === 'dir') dirs.push(child);
          }
        } catch (err) {
          ready.push(errorOf(path, err));
          end = true;
        }
        notify();
        pump();
        if (end || signal?.aborted) return;
        if (n > 0) {
          slowChunks = ((performance.now() - t0) * 1000) / n > SLOW_ENTRY_US ? slowChunks + 1 : 0;
          if (slowChunks >= SLOW_CHUNKS) fast = false;
        }
        // The copy's connections run between chunks; a lagging consumer holds the reader back.
        await new Promise<void>((r) => setImmediate(r));
        while (ready.length - head >= highWater && failure === undefined && !signal?.aborted) await new Promise<void>((r) => wakeReaders.push(r));
        if (failure !== undefined || signal?.aborted) return;
      }
    } finally {
      dir.closeSync();
    }
  };

  /** Starts readers for queued directories, up to `concurrency`. */
  const pump = () => {
    while (readers < concurrency && dirs.length > 0 && failure === undefined && !signal?.aborted) {
      const path = dirs.pop()!;
      readers++;
      (fast ? readDirFast : readDir)(path)
        .catch((err: unknown) => {
          failure ??= err;
        })
        .finally(() => {
          readers--;
          pump();
          notify();
        });
    }
  };

  // The root: one entry, read as a directory if it is one.
  let rootStat: Stats;
  try {
    rootStat = await lstat(root);
    yield await describe('', root, rootStat);
  } catch (err) {
    // The root itself: nothing else to walk; the caller reports it as the copy's source error.
    yield errorOf('', err);
    return;
  }
  if (!rootStat.isDirectory()) return;
  dirs.push('');
  pump();
  try {
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new Error('walk aborted');
      if (failure !== undefined) throw failure;
      if (head < ready.length) {
        const item = ready[head++]!;
        yield item;
        // Taken (the consumer asked for the next one): readers held back go on once half the room is free.
        if (head === ready.length || head >= highWater) {
          // Drop what was taken: a consumer always a little behind must not keep a walk's worth of entries.
          ready.splice(0, head);
          head = 0;
        }
        if (ready.length <= highWater >> 1) {
          for (const w of wakeReaders.splice(0)) w();
          pump();
        }
        continue;
      }
      if (readers === 0 && dirs.length === 0) return;
      await new Promise<void>((r) => {
        wakeConsumer = r;
      });
    }
  } finally {
    // A consumer that stops early (break, error) releases readers held back.
    failure ??= new Error('walk ended');
    for (const w of wakeReaders.splice(0)) w();
  }
}
