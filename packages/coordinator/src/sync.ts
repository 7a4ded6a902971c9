/**
 * `ferry sync SRC DST`: make DST the same as SRC, sending only what differs
 * (issue 32). A directory is a tree copy in sync mode (tree-copy.ts with
 * tree-sync.ts: the destination walked and compared entry by entry); a file
 * is compared with the file at the destination and copied only when they
 * differ at the level asked.
 */
import { lstat, realpath } from 'node:fs/promises';
import { basename, posix, resolve } from 'node:path';
import { FerryError, parseLocation, resolveCopyOptions } from '@ferry/core';
import type { TreeEntry } from '@ferry/core';
import { availableParallelism } from 'node:os';
import type { CopyRequest } from './copy.js';
import { rangeHashFor, runCopy } from './copy.js';
import type { CopySummary, TreeSummary } from './events.js';
import { connectAny, expandHome, remoteSideOf, remoteStat, resolveRemote } from './prepare.js';
import { runTreeCopy } from './tree-copy.js';
import { localFileHash, syncAction } from './tree-sync.js';
import type { DestEntry } from './tree-sync.js';

/** What a sync of one file did: copied (the copy's summary), or nothing because the destination was the same. */
export type FileSyncSummary = CopySummary | { unchanged: boolean; dryRun?: true; source: string; destination: string };

/** `ferry sync`: a tree, or one file. The request's options carry `compare` (and `delete`, `dryRun`). */
export async function runSync(request: CopyRequest): Promise<TreeSummary | FileSyncSummary> {
  const src = parseLocation(request.source);
  if (src.kind === 'local') {
    const st = await lstat(resolve(src.path)).catch(() => undefined);
    if (st?.isDirectory()) return runTree(request);
    return syncFile(request);
  }
  // A remote source: the tree copy finds out whether it is a directory (a file comes back here).
  return runTree(request);
}

function runTree(request: CopyRequest): Promise<TreeSummary | FileSyncSummary> {
  return runTreeCopy(request, () => syncFile(request));
}

/**
 * One file: copied when the destination's file differs at the compare level
 * (a missing one, another size, time or mode, or content with `checksum`);
 * otherwise nothing moves.
 */
async function syncFile(request: CopyRequest): Promise<FileSyncSummary> {
  const options = resolveCopyOptions(request.options, { cores: availableParallelism() });
  const emit = request.onEvent ?? (() => {});
  const remoteLoc = remoteSideOf(request.source, request.destination);
  if (!remoteLoc) throw new FerryError('USAGE', `ferry sync copies between this host and a remote one ([user@]host:PATH on one side): ${request.source} -> ${request.destination} is not that`);
  const push = parseLocation(request.source).kind === 'local';
  let destExists = false;
  const { ssh, hosts } = await resolveRemote(remoteLoc, options);
  const { conn } = await connectAny(hosts, ssh, { mode: options.mode, remoteCommand: options.remoteCommand, windowBytes: options.windowBytes, recordNewHostKeys: true, ...(request.signal ? { signal: request.signal } : {}) });
  try {
    const remotePath = await expandHome(conn, remoteLoc.path, push ? 'destination' : 'source');
    // A local source is followed through a link at its name, as cp copies one file.
    const given = resolve(parseLocation(push ? request.source : request.destination).path);
    const localPath = push ? await realpath(given).catch(() => given) : given;
    const localStat = async (p: string) => {
      const st = await lstat(p).catch(() => undefined);
      return st ? { type: st.isFile() ? 'file' : st.isDirectory() ? 'directory' : 'other', size: st.size, mtimeMs: st.mtimeMs, mode: st.mode & 0o7777, ino: st.ino } : undefined;
    };
    const source = push ? await localStat(localPath) : await remoteStat(conn, remotePath);
    if (!source) throw new FerryError('SOURCE_NOT_FOUND', `source ${request.source} does not exist: check the path`, { path: push ? localPath : remotePath });
    if (source.type !== 'file') throw new FerryError('USAGE', `source ${request.source} is neither a directory nor a regular file: not synced`);
    // A destination that is a directory receives the file under its own name, as cp does.
    let destPath = push ? remotePath : localPath;
    let dest = push ? await remoteStat(conn, destPath) : await localStat(destPath);
    if (dest?.type === 'directory') {
      destPath = posix.join(destPath, basename(push ? localPath : remotePath));
      dest = push ? await remoteStat(conn, destPath) : await localStat(destPath);
    }
    const umask = push ? await conn.umask(destPath) : process.umask();
    const entry = { path: '', kind: 'file', size: source.size, mode: source.mode, mtimeMs: source.mtimeMs, nlink: 1 } as TreeEntry;
    const there: DestEntry | undefined = dest ? { kind: dest.type === 'file' ? 'file' : dest.type === 'directory' ? 'dir' : 'special', size: dest.size, mtimeMs: dest.mtimeMs, mode: dest.mode & 0o7777 } : undefined;
    let { action } = syncAction(entry, there, { level: options.sync ?? 'mtime', umask, preserve: options.preserve });
    if (action === 'same' && options.sync === 'checksum') {
      // Both sides hashed at once, each where it is.
      const algorithm = rangeHashFor(options, conn);
      const [local, remote] = await Promise.all([localFileHash(algorithm, push ? localPath : destPath, source.size), conn.hashRange(push ? destPath : remotePath, 0, source.size, algorithm)]);
      if (local !== remote) action = 'update';
    }
    if (action === 'same') {
      emit({ type: 'log', message: `${destPath} is the same as the source: nothing sent` });
      return { unchanged: true, source: request.source, destination: request.destination };
    }
    destExists = dest?.type === 'file';
    if (options.dryRun) {
      emit({ type: 'sync.change', action: dest ? 'update' : 'create', path: destPath, kind: 'file' });
      return { unchanged: false, dryRun: true, source: request.source, destination: request.destination };
    }
  } finally {
    conn.close();
  }
  // A job of the same file that changed since it started goes again whole, as a tree's changed file does.
  // Where the file is there already, only the ranges that differ go (--delta).
  return runCopy({ ...request, restartChanged: true, options: { ...request.options, ...(destExists ? { delta: true } : {}) } });
}
