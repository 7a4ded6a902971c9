/**
 * `ferry sync SRC DST`: make DST the same as SRC, sending only what differs
 * (issue 32). A directory is a tree copy in sync mode (tree-copy.ts with
 * tree-sync.ts: the destination walked and compared entry by entry); a file
 * is compared with the file at the destination and copied only when they
 * differ at the level asked. With --xattrs/--acls a file's attributes are
 * read on both sides by a walk of that one file, compared as a tree's are,
 * and set by path: alone when they are all that differs, else after the copy.
 */
import { lstat, realpath } from 'node:fs/promises';
import { basename, posix, resolve } from 'node:path';
import { FerryError, parseLocation, resolveCopyOptions, toFerryError } from '@ferry/core';
import type { ResolvedCopyOptions, TreeEntry, WalkItem, XattrScope } from '@ferry/core';
import { availableParallelism } from 'node:os';
import { runsAsRoot, walkTree } from '@ferry/serve';
import type { RemoteConnection, SetAttrs } from '@ferry/transport';
import type { CopyRequest } from './copy.js';
import { rangeHashFor, runCopy } from './copy.js';
import type { CopySummary, TreeSummary } from './events.js';
import { connectAny, coordinatorConnectOptions, expandHome, remoteSideOf, remoteStat, resolveRemote } from './prepare.js';
import { runTreeCopy } from './tree-copy.js';
import { localDestination } from './tree-finalize.js';
import { metaPlanOf, pathMeta } from './tree-meta.js';
import type { MetaPlan } from './tree-meta.js';
import { attributesAlone, localFileHash, syncAction } from './tree-sync.js';
import type { DestEntry } from './tree-sync.js';

/** What a sync of one file did: copied (the copy's summary), or nothing because the destination was the same. */
export type FileSyncSummary = CopySummary | { unchanged: boolean; dryRun?: true; attributes?: true; source: string; destination: string };

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
  let attrs: FileAttributes | undefined;
  const { ssh, hosts } = await resolveRemote(remoteLoc, options);
  const { conn } = await connectAny(hosts, ssh, coordinatorConnectOptions(options, request.signal));
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
    attrs = await fileAttributes(options, push, conn, push ? localPath : remotePath, dest?.type === 'file' ? destPath : undefined);
    const entry = { path: '', kind: 'file', size: source.size, mode: source.mode, mtimeMs: source.mtimeMs, nlink: 1, ...(attrs?.source.xattrs ? { xattrs: attrs.source.xattrs } : {}) } as TreeEntry;
    const there: DestEntry | undefined = dest
      ? { kind: dest.type === 'file' ? 'file' : dest.type === 'directory' ? 'dir' : 'special', size: dest.size, mtimeMs: dest.mtimeMs, mode: dest.mode & 0o7777, ...(attrs?.dest?.xattrs ? { xattrs: attrs.dest.xattrs } : {}) }
      : undefined;
    const comparison = { level: options.sync ?? 'mtime', umask, preserve: options.preserve, ...(attrs?.scope ? { xattrs: attrs.scope } : {}) };
    let { action } = syncAction(entry, there, comparison);
    if (action === 'same' && options.sync === 'checksum') {
      // Both sides hashed at once, each where it is.
      const algorithm = rangeHashFor(options, conn);
      const [local, remote] = await Promise.all([localFileHash(algorithm, push ? localPath : destPath, source.size), conn.hashRange(push ? destPath : remotePath, 0, source.size, algorithm)]);
      if (local !== remote) action = 'update';
    }
    if (action === 'same' && attrs && attributesAlone(entry, there, comparison)) {
      // Its bytes are the same: the attributes alone are set again (an exact set), as a tree's file's are.
      if (options.dryRun) emit({ type: 'sync.change', action: 'update', path: destPath, kind: 'file', reason: 'xattrs' });
      else await setFileAttributes(attrs.meta, entry, push, conn, destPath);
      if (!options.dryRun) emit({ type: 'log', message: `${destPath}: extended attributes set again (its bytes are the same)` });
      return { unchanged: false, attributes: true, ...(options.dryRun ? { dryRun: true } : {}), source: request.source, destination: request.destination };
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
    if (attrs) {
      // The single-file copy keeps mode and times only: the attributes follow, by path, on this connection.
      const summary = await copyFile(request, destExists);
      await setFileAttributes(attrs.meta, entry, push, conn, destPath);
      return summary;
    }
  } finally {
    conn.close();
  }
  return copyFile(request, destExists);
}

/**
 * A job of the same file that changed since it started goes again whole, as a tree's changed file does.
 * Where the file is there already, only the ranges that differ go (--delta).
 */
function copyFile(request: CopyRequest, destExists: boolean): Promise<CopySummary> {
  return runCopy({ ...request, restartChanged: true, options: { ...request.options, ...(destExists ? { delta: true } : {}) } });
}

/** A file sync's extended attributes (--xattrs, --acls): what the copy keeps, which it compares, and both sides' as a walk of the file reads them. */
interface FileAttributes {
  meta: MetaPlan;
  /** Compared (the tree's xattrScopeOf): at the mtime and checksum levels, where the destination takes an exact set. */
  scope: XattrScope | undefined;
  source: TreeEntry;
  dest: TreeEntry | undefined;
}

/** Reads both sides' attributes where --xattrs or --acls asks (undefined otherwise); `destPath` where a file stands there. */
async function fileAttributes(options: ResolvedCopyOptions, push: boolean, conn: RemoteConnection, sourcePath: string, destPath: string | undefined): Promise<FileAttributes | undefined> {
  if (!options.xattrs && !options.acls) return undefined;
  const meta = metaPlanOf(options, push ? 'push' : 'pull', conn);
  const local = (path: string, side: Side) => rootEntry(walkTree(path, { meta: { names: false, ...(meta.local?.xattrs ? { xattrs: meta.local.xattrs } : {}) } }), path, side);
  const remote = (path: string, side: Side) => rootEntry(conn.walk(path, { ...(options.xattrs ? { xattrs: true } : {}), ...(options.acls ? { acls: true } : {}) }), `${conn.label}:${path}`, side);
  const [source, dest] = await Promise.all([
    push ? local(sourcePath, 'source') : remote(sourcePath, 'source'),
    destPath === undefined ? undefined : push ? remote(destPath, 'destination') : local(destPath, 'destination'),
  ]);
  const compared = meta.exact !== undefined && (options.sync === 'mtime' || options.sync === 'checksum');
  const scope = compared ? { ...meta.exact!, root: push ? conn.metadata.euid === 0 : runsAsRoot() } : undefined;
  return { meta, scope, source, dest };
}

type Side = 'source' | 'destination';

/** The entry a walk of one file reports (its root); the walk's error for it as a FerryError naming the side and `label`. */
async function rootEntry(items: AsyncIterable<WalkItem>, label: string, side: Side): Promise<TreeEntry> {
  let found: WalkItem | undefined;
  for await (const item of items) found ??= item;
  if (found && 'entry' in found) return found.entry;
  const why = found && 'error' in found ? `${found.error.message} (${found.error.code})` : 'nothing reported';
  throw new FerryError(side === 'source' ? 'SOURCE_UNREADABLE' : 'DEST_IO', `the extended attributes of the ${side} ${label} could not be read: ${why}; fix that, or sync without --xattrs and --acls`, { path: label });
}

/** Sets `entry`'s attributes on the destination file as an exact set (no owner or mode: the copy gave those), never through a link at its name. */
async function setFileAttributes(meta: MetaPlan, entry: TreeEntry, push: boolean, conn: RemoteConnection, destPath: string): Promise<void> {
  const { uid: _u, gid: _g, user: _un, group: _gn, ...attrs }: SetAttrs = pathMeta(meta, { ...entry, kind: 'file' });
  try {
    if (push) await conn.setstat(destPath, attrs);
    else await localDestination.setstat(destPath, attrs, true);
  } catch (err) {
    throw toFerryError(err);
  }
}
