/**
 * Which metadata beyond modes and times a tree copy keeps (issue 31), decided
 * once per copy from the options and what the two sides can do:
 *
 * - **owners** when the destination side runs as root (as tar and rsync do
 *   there) or with --preserve=owner; by name as rsync maps them (the
 *   destination's id for the source's name where it has that name, else
 *   the number), by number only with --numeric-ids, or where a side cannot
 *   tell names (SFTP);
 * - **extended attributes and ACLs** with --xattrs / --acls, where the
 *   remote side runs a helper (ferry serve or the python one): SFTP has no
 *   way to read or set them, so asking for them there is a usage error.
 */
import { FerryError } from '@ferry/core';
import type { EntryMeta, ExactXattrs, ResolvedCopyOptions, TreeEntry } from '@ferry/core';
import type { RemoteConnection, SetAttrs, WalkWanted } from '@ferry/transport';
import { runsAsRoot } from '@ferry/serve';
import type { MetaWanted } from '@ferry/serve';

export interface MetaPlan {
  /** Owner and group travel with each entry. */
  owners: boolean;
  /** ...with their names (not --numeric-ids, and both sides can tell them). */
  names: boolean;
  /** Extended attributes (files and directories) travel. */
  xattrs: boolean;
  /**
   * The kinds of attributes a directory or a big file set by path gets as an
   * exact set (removed ones removed): with xattrs, where the destination
   * can (this process for a pull, a helper with `xattrs-exact` for a push).
   */
  exact: ExactXattrs | undefined;
  /** What the remote walk adds to entries (a pull). */
  walk: WalkWanted;
  /** What the local walk adds to entries (a push), if anything. */
  local: MetaWanted | undefined;
}

export function metaPlanOf(options: ResolvedCopyOptions, direction: 'push' | 'pull', conn: RemoteConnection): MetaPlan {
  const can = conn.metadata;
  const destinationRoot = direction === 'pull' ? runsAsRoot() : can.euid === 0;
  const owners = options.preserveOwner || destinationRoot;
  if (options.preserveOwner && !can.owners) {
    throw new FerryError('HELPER_UNAVAILABLE', `--preserve=owner: the helper on ${conn.label} is older than this ferry and cannot set or report owners: install the same ferry version there, or use --mode python or --mode sftp`, { host: conn.label });
  }
  const xattrs = options.xattrs || options.acls;
  if (xattrs && !can.xattrs) {
    if (conn.mode === 'sftp') throw new FerryError('USAGE', `--xattrs and --acls need ferry serve or python3 on ${conn.label}: SFTP can neither read nor set extended attributes; use --mode helper or --mode python, or leave them out`, { host: conn.label });
    throw new FerryError('HELPER_UNAVAILABLE', `--xattrs and --acls: the helper on ${conn.label} is older than this ferry and cannot read or set extended attributes: install the same ferry version there, or use --mode python`, { host: conn.label });
  }
  const names = owners && !options.numericIds && can.names;
  const scope = { xattrs: options.xattrs, acls: options.acls };
  return {
    owners,
    names,
    xattrs,
    exact: xattrs && (direction === 'pull' || can.xattrsExact === true) ? scope : undefined,
    walk: { ...(names ? { names: true } : {}), ...(options.xattrs ? { xattrs: true } : {}), ...(options.acls ? { acls: true } : {}) },
    local: names || xattrs ? { names, ...(xattrs ? { xattrs: scope } : {}) } : undefined,
  };
}

/** The owner and attribute fields an entry carries to the destination under `plan` (none for hard links, no attributes for symbolic links). */
export function wireMeta(plan: MetaPlan, e: TreeEntry): EntryMeta {
  const out: EntryMeta = {};
  if (e.kind === 'hardlink') return out;
  if (plan.owners) {
    out.uid = e.uid;
    out.gid = e.gid;
    if (plan.names && e.user !== undefined) out.user = e.user;
    if (plan.names && e.group !== undefined) out.group = e.group;
  }
  if (plan.xattrs && e.kind !== 'symlink' && e.xattrs && Object.keys(e.xattrs).length > 0) out.xattrs = e.xattrs;
  return out;
}

/**
 * What an entry set by path gets (a directory at the end of a copy, a big
 * file after its job or whose metadata alone changed): wireMeta, and for a
 * directory or file where the destination can, the exact set of attributes
 * (an attribute removed or changed at the source since an earlier run is
 * removed or changed there too).
 */
export function pathMeta(plan: MetaPlan, e: TreeEntry): SetAttrs {
  const out: SetAttrs = wireMeta(plan, e);
  if (plan.exact && (e.kind === 'dir' || e.kind === 'file')) out.xattrsExact = plan.exact;
  return out;
}
