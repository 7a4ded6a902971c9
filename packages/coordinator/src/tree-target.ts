/**
 * Where a tree goes (`ferry cp -r`), named as `scp -r` names it: an existing
 * destination directory receives the source directory under its own name; a
 * destination that does not exist becomes the copy of the source (its parent
 * must exist); a destination that is a file is an error, and so is one
 * ending in `/` that does not exist.
 */
import { lstat } from 'node:fs/promises';
import { basename, dirname, join, posix, resolve } from 'node:path';
import { FerryError, destinationError, errnoOf, firstBadDirectory, formatLocation, hostLabel, joinUnder, parseLocation } from '@ferry/core';
import type { RemoteHost, RemoteLocation, ResolvedCopyOptions, SshSettings } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { connectAny, coordinatorConnectOptions, destinationDirError, expandHome, makeJobId, remoteKind, remoteStat, resolveRemote } from './prepare.js';
import type { ResolvedRemote } from './prepare.js';

export interface TreeTarget {
  jobId: string;
  /** push: a local tree goes to the remote host; pull: a remote tree comes here. */
  direction: 'push' | 'pull';
  /** The directory walked (absolute; local for a push, remote for a pull). */
  sourceRoot: string;
  /** The directory the tree becomes (absolute; remote for a push, local for a pull). */
  targetRoot: string;
  /** The remote side as the command named it (its path is replaced per file for big files). */
  remote: RemoteLocation;
  sourceLabel: string;
  destinationLabel: string;
  hosts: RemoteHost[];
  ssh: SshSettings;
  /** The coordinator's own connection: directories, links, finishing touches. */
  conn: RemoteConnection;
  connectOptions: Parameters<typeof connectAny>[2];
}

/** A tree pull's source is a regular file: `ferry cp -r host:FILE dst` copies it as the file, as scp -r does. */
export class SourceIsFile extends Error {
  constructor() {
    super('the source is a file, not a directory');
  }
}

/** Whether `source` is a local directory: `ferry cp -r` with a file source is a plain copy. */
export async function isLocalDirectory(source: string): Promise<boolean> {
  let loc;
  try {
    loc = parseLocation(source);
  } catch {
    return false;
  }
  if (loc.kind !== 'local') return false;
  try {
    return (await lstat(resolve(loc.path))).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Checks both sides of a tree push and connects; the caller closes `conn`.
 *
 * The job is named by the command (source, hosts, destination as written),
 * not by where the tree lands: `cp -r src host:dst` makes `dst` when it does
 * not exist, and the same command run again would, by scp's rule, make
 * `dst/src`. `rememberedRoot(jobId)` gives the directory an earlier run of the
 * job chose, which a rerun keeps, so it goes on with the same copy.
 */
export async function prepareTreePush(
  source: string,
  destination: string,
  options: ResolvedCopyOptions,
  rememberedRoot: (jobId: string) => Promise<string | undefined>,
  remote?: ResolvedRemote,
  signal?: AbortSignal,
): Promise<TreeTarget> {
  const src = parseLocation(source);
  const dst = parseLocation(destination);
  if (src.kind === 'remote' && dst.kind === 'local') return prepareTreePull(src, dst.path, options, rememberedRoot, remote, signal);
  if (src.kind !== 'local' || dst.kind !== 'remote') {
    throw new FerryError('USAGE', `ferry cp -r copies a directory between this host and a remote one ([user@]host:DIR on one side): ${source} -> ${destination} is not that`);
  }
  const sourceRoot = resolve(src.path);
  let st;
  try {
    st = await lstat(sourceRoot);
  } catch (err) {
    const errno = errnoOf(err);
    throw new FerryError(errno === 'ENOENT' || errno === 'ENOTDIR' ? 'SOURCE_NOT_FOUND' : 'SOURCE_UNREADABLE', `source ${sourceRoot} cannot be read (${errno ?? (err as Error).message}): check the path`, { path: sourceRoot, cause: err });
  }
  if (!st.isDirectory()) throw new FerryError('USAGE', `source ${sourceRoot} is not a directory`, { path: sourceRoot });
  const loc = dst as RemoteLocation;
  const { ssh, hosts } = remote ?? (await resolveRemote(loc, options));
  const connectOptions = coordinatorConnectOptions(options, signal);
  const { conn } = await connectAny(hosts, ssh, connectOptions);
  try {
    const hostsKey = `${loc.hosts.join(',')}:${loc.port ?? 22}`;
    const jobId = makeJobId('push', sourceRoot, `${hostsKey}:${kindKey(options)}:${loc.user ?? ''}:${loc.path}`);
    const targetRoot = options.sync ? await remoteTreeRoot(conn, loc, undefined) : ((await rememberedRoot(jobId)) ?? (await remoteTreeRoot(conn, loc, basename(sourceRoot))));
    return {
      jobId,
      direction: 'push',
      sourceRoot,
      targetRoot,
      remote: loc,
      sourceLabel: sourceRoot,
      destinationLabel: formatLocation({ ...loc, path: targetRoot }),
      hosts,
      ssh,
      conn,
      connectOptions: { ...connectOptions, mode: conn.mode },
    };
  } catch (err) {
    conn.close();
    throw err;
  }
}

/**
 * Checks both sides of a tree pull and connects: the remote source must be a
 * directory; the local destination is named as `scp -r` names it (an existing
 * directory receives the source under its own name, a missing one becomes
 * the copy and its parent must exist). The job is named by the command, and
 * a rerun keeps the directory an earlier run chose, as for a push.
 */
async function prepareTreePull(
  loc: RemoteLocation,
  destination: string,
  options: ResolvedCopyOptions,
  rememberedRoot: (jobId: string) => Promise<string | undefined>,
  remote?: ResolvedRemote,
  signal?: AbortSignal,
): Promise<TreeTarget> {
  const { ssh, hosts } = remote ?? (await resolveRemote(loc, options));
  const connectOptions = coordinatorConnectOptions(options, signal);
  const { conn } = await connectAny(hosts, ssh, connectOptions);
  try {
    const label = conn.label;
    const given = await expandHome(conn, loc.path, 'source');
    const st = await remoteStat(conn, given).catch((err: unknown) => {
      throw new FerryError('SOURCE_UNREADABLE', `source ${label}:${given} cannot be read (${(err as Error).message}): check the path`, { host: label, path: given, cause: err });
    });
    if (!st) throw new FerryError('SOURCE_NOT_FOUND', `source ${label}:${given} does not exist: check the path`, { host: label, path: given });
    // scp -r host:FILE copies the file: the caller copies it as a single file.
    if (st.type === 'file') throw new SourceIsFile();
    if (st.type !== 'directory') throw new FerryError('USAGE', `source ${label}:${given} is neither a directory nor a regular file: not copied`, { host: label, path: given });
    const sourceRoot = await conn.realpath(given);
    const hostsKey = `${loc.hosts.join(',')}:${loc.port ?? 22}`;
    const target = resolve(destination);
    const jobId = makeJobId('pull', `${hostsKey}:${kindKey(options)}:${loc.user ?? ''}:${loc.path}`, target);
    const targetRoot = options.sync ? await localTreeRoot(destination, undefined) : ((await rememberedRoot(jobId)) ?? (await localTreeRoot(destination, posix.basename(sourceRoot.replace(/\/+$/, '')) || 'root')));
    return {
      jobId,
      direction: 'pull',
      sourceRoot,
      targetRoot,
      remote: loc,
      sourceLabel: formatLocation({ ...loc, path: sourceRoot }),
      destinationLabel: targetRoot,
      hosts,
      ssh,
      conn,
      connectOptions: { ...connectOptions, mode: conn.mode },
    };
  } catch (err) {
    conn.close();
    throw err;
  }
}

/** A sync's job is not a copy's: the same paths make two jobs (a sync's destination is the copy itself). */
function kindKey(options: ResolvedCopyOptions): string {
  return options.sync ? 'sync' : 'tree';
}

/**
 * The directory a tree becomes: an existing directory receives the source
 * under `sourceName`, as scp -r names it; with no `sourceName` (a sync) the
 * destination is the copy itself, existing or not.
 */
async function localTreeRoot(destination: string, sourceName: string | undefined): Promise<string> {
  const given = resolve(destination);
  const kindOf = async (path: string) => {
    try {
      const st = await lstat(path);
      return st.isDirectory() ? 'directory' : 'other';
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined;
      throw destinationError(err, { path });
    }
  };
  const kind = await kindOf(given);
  if (kind === 'directory') return sourceName === undefined ? given : join(given, sourceName);
  if (kind) throw new FerryError('USAGE', `destination ${given} exists and is not a directory: a directory can only be copied into a directory`, { path: given });
  if (destination.endsWith('/')) throw new FerryError('DEST_DIR_MISSING', `destination directory ${given} does not exist: create it first, or name it without the trailing /`, { path: given });
  if ((await kindOf(dirname(given))) !== 'directory') throw new FerryError('DEST_DIR_MISSING', `destination ${given} cannot be created: ${dirname(given)} does not exist or is not a directory: create it first`, { path: dirname(given) });
  return given;
}

async function remoteTreeRoot(conn: RemoteConnection, loc: RemoteLocation, sourceName: string | undefined): Promise<string> {
  const label = conn.label;
  const given = await expandHome(conn, loc.path, 'destination');
  const statOf = async (path: string) => {
    try {
      return await remoteStat(conn, path);
    } catch (err) {
      throw destinationError(err, { host: label, path });
    }
  };
  const st = await statOf(given);
  let root: string;
  if (st?.type === 'directory') {
    root = sourceName === undefined ? given : posix.join(given, sourceName);
  } else if (st) {
    throw new FerryError('USAGE', `destination ${label}:${given} exists and is not a directory: a directory can only be copied into a directory`, { host: label, path: given });
  } else {
    if (given.endsWith('/')) {
      const bad = await firstBadDirectory(given, remoteKind(conn)).catch(() => undefined);
      throw destinationDirError(label, given, given, bad);
    }
    const parent = posix.dirname(given);
    if ((await statOf(parent))?.type !== 'directory') {
      const bad = await firstBadDirectory(parent, remoteKind(conn)).catch(() => undefined);
      throw destinationDirError(label, given, parent, bad);
    }
    root = given;
  }
  const existing = await statOf(root);
  if (existing && existing.type !== 'directory') {
    throw new FerryError('USAGE', `destination ${label}:${root} exists and is not a directory`, { host: label, path: root });
  }
  return conn.realpath(posix.dirname(root)).then((d) => posix.join(d, posix.basename(root)), () => root);
}

/** The destination path of a tree path (remote for a push, local for a pull). */
export function remotePathOf(target: Pick<TreeTarget, 'targetRoot'>, treePath: string): string {
  return treePath === '' ? target.targetRoot : joinUnder(target.targetRoot, treePath);
}

/** The source path of a tree path (local for a push, remote for a pull). */
export function sourcePathOf(target: Pick<TreeTarget, 'sourceRoot'>, treePath: string): string {
  return treePath === '' ? target.sourceRoot : joinUnder(target.sourceRoot, treePath);
}

/** How messages name the remote host of a target. */
export function targetHostLabel(target: Pick<TreeTarget, 'hosts'>): string {
  return target.hosts[0] ? hostLabel(target.hosts[0]) : '';
}
