/**
 * Where a tree goes (`ferry cp -r`), named as `scp -r` names it: an existing
 * destination directory receives the source directory under its own name; a
 * destination that does not exist becomes the copy of the source (its parent
 * must exist); a destination that is a file is an error, and so is one
 * ending in `/` that does not exist.
 */
import { lstat } from 'node:fs/promises';
import { basename, posix, resolve } from 'node:path';
import { FerryError, destinationError, errnoOf, firstBadDirectory, formatLocation, hostLabel, parseLocation } from '@ferry/core';
import type { RemoteHost, RemoteLocation, ResolvedCopyOptions, SshSettings } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { connectAny, destinationDirError, expandHome, makeJobId, remoteKind, remoteStat, resolveRemote } from './prepare.js';
import type { ResolvedRemote } from './prepare.js';

export interface TreeTarget {
  jobId: string;
  /** The local directory walked (absolute). */
  sourceRoot: string;
  /** The remote directory the tree becomes (absolute). */
  targetRoot: string;
  sourceLabel: string;
  destinationLabel: string;
  hosts: RemoteHost[];
  ssh: SshSettings;
  /** The coordinator's own connection: directories, links, finishing touches. */
  conn: RemoteConnection;
  connectOptions: Parameters<typeof connectAny>[2];
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
  if (src.kind !== 'local' || dst.kind !== 'remote') {
    throw new FerryError('USAGE', `ferry cp -r copies a local directory to a remote host for now ([user@]host:DIR); pulling a tree (${source} -> ${destination}) is not built yet`);
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
  const connectOptions = { mode: options.mode, remoteCommand: options.remoteCommand, windowBytes: options.windowBytes, recordNewHostKeys: true, ...(signal ? { signal } : {}) };
  const { conn } = await connectAny(hosts, ssh, connectOptions);
  try {
    const hostsKey = `${loc.hosts.join(',')}:${loc.port ?? 22}`;
    const jobId = makeJobId('push', sourceRoot, `${hostsKey}:tree:${loc.user ?? ''}:${loc.path}`);
    const targetRoot = (await rememberedRoot(jobId)) ?? (await remoteTreeRoot(conn, loc, basename(sourceRoot)));
    return {
      jobId,
      sourceRoot,
      targetRoot,
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

async function remoteTreeRoot(conn: RemoteConnection, loc: RemoteLocation, sourceName: string): Promise<string> {
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
    root = posix.join(given, sourceName);
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

/** The remote path of a tree path. */
export function remotePathOf(target: Pick<TreeTarget, 'targetRoot'>, treePath: string): string {
  return treePath === '' ? target.targetRoot : posix.join(target.targetRoot, treePath);
}

/** How messages name the remote host of a target. */
export function targetHostLabel(target: Pick<TreeTarget, 'hosts'>): string {
  return target.hosts[0] ? hostLabel(target.hosts[0]) : '';
}
