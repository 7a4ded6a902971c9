/**
 * Owners and extended attributes of tree entries (issue 31): which
 * attributes travel, and the checks of their wire form. No I/O: the walkers
 * read them, the destinations (serve's meta.ts, the python helper) set them.
 *
 * Owners are decided as rsync decides them: the source's numbers travel
 * with the source's names; the destination uses the id its own user
 * database has for the name, and the number where it has no such name, or
 * with `--numeric-ids` (then no names travel at all).
 *
 * ```ts
 * const names = listed.filter((n) => xattrWanted(n, { xattrs: true, acls: false, root: false }));
 * ```
 */

/** Owner, group and extended attributes to give an entry at the destination (all optional). */
export interface EntryMeta {
  /** Owner and group by number, as the source has them. */
  uid?: number;
  gid?: number;
  /** ...and by name, where the source has one (not with --numeric-ids): the destination's id for the name wins. */
  user?: string;
  group?: string;
  /** Extended attributes (ACLs among them) by name, their values as stored. */
  xattrs?: Record<string, Uint8Array>;
}

/** Which extended attributes a copy takes. */
export interface XattrScope {
  /** --xattrs: user.* (and trusted.*, security.* as root). */
  readonly xattrs: boolean;
  /** --acls: system.posix_acl_access and system.posix_acl_default. */
  readonly acls: boolean;
  /** Whether the side reading or setting runs as root (trusted.* and security.* need it). */
  readonly root: boolean;
}

/**
 * SETSTAT's `xattrsExact` (capability `xattrs-exact`): the attributes of
 * these kinds at the path become exactly the request's `xattrs` (none when
 * it has none): the ones the request does not name are removed. The
 * destination adds its own `root` (trusted.* and security.* are left alone
 * where it is not root, as a copy neither reads nor sets them there).
 */
export type ExactXattrs = Omit<XattrScope, 'root'>;

/**
 * The attributes among `listed` (what the destination has) that an exact set
 * `keep` under `scope` removes. Never `security.*`: set where the source has
 * them, but what the destination has of its own there is its policy's label
 * (SELinux, Smack, IMA), which a file written fresh gets too; removing it
 * would leave a directory unlabeled.
 */
export function xattrsToRemove(listed: readonly string[], keep: Readonly<Record<string, unknown>> | undefined, scope: XattrScope): string[] {
  return listed.filter((n) => xattrWanted(n, scope) && !n.startsWith('security.') && !(keep !== undefined && Object.hasOwn(keep, n)));
}

/** What is wrong with a wire `xattrsExact` (`at` names it), or undefined. */
export function exactXattrsProblem(v: unknown, at: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) return `${at}.xattrsExact must be a map with the booleans xattrs and acls`;
  const x = v as Record<string, unknown>;
  for (const k of ['xattrs', 'acls']) if (typeof x[k] !== 'boolean') return `${at}.xattrsExact.${k} must be a boolean`;
  return undefined;
}

export const ACL_XATTRS: readonly string[] = ['system.posix_acl_access', 'system.posix_acl_default'];

/**
 * Whether the attribute `name` is copied. Never `lustre.*` (the file
 * system's own striping layout, which the destination's file system
 * chooses), never other `system.*` names (file system internals); ACLs only
 * with --acls; `trusted.*` and `security.*` only as root (only root may read
 * or set them; security.selinux is the destination's policy otherwise).
 */
export function xattrWanted(name: string, scope: XattrScope): boolean {
  if (name.startsWith('lustre.')) return false;
  if (ACL_XATTRS.includes(name)) return scope.acls;
  if (name.startsWith('system.')) return false;
  if (name.startsWith('trusted.') || name.startsWith('security.')) return scope.xattrs && scope.root;
  return scope.xattrs && name.startsWith('user.');
}

/** Longest attribute name and value Linux stores (XATTR_NAME_MAX, XATTR_SIZE_MAX). */
export const MAX_XATTR_NAME_BYTES = 255;
export const MAX_XATTR_VALUE_BYTES = 64 * 1024;
/** Attributes of one entry on the wire, at most... */
export const MAX_XATTRS_PER_ENTRY = 128;
/** ...holding this many bytes of names and values together (an ENTRIES frame or BATCH body stays within 1 MiB). */
export const MAX_XATTR_BYTES_PER_ENTRY = 256 * 1024;

/** What is wrong with an entry's owner and attribute fields on the wire (`at` names it), or undefined. Absent fields may be nil. */
export function entryMetaProblem(entry: Record<string, unknown>, at: string): string | undefined {
  const given = (k: string) => entry[k] !== undefined && entry[k] !== null;
  for (const k of ['uid', 'gid']) {
    const v = entry[k];
    if (given(k) && (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > 0xfffffffe)) return `${at}.${k} must be an id from 0 to 4294967294`;
  }
  for (const k of ['user', 'group']) {
    const v = entry[k];
    if (given(k) && (typeof v !== 'string' || v.length === 0 || v.length > 256 || v.includes('\0') || v.includes(':') || v.includes('\n'))) return `${at}.${k} must be a name of 1 to 256 characters without NUL, ':' or newline`;
  }
  if (given('xattrs')) {
    const x = entry.xattrs;
    if (x === null || typeof x !== 'object' || Array.isArray(x) || x instanceof Uint8Array) return `${at}.xattrs must be a map of names to bytes`;
    const names = Object.keys(x);
    if (names.length > MAX_XATTRS_PER_ENTRY) return `${at}.xattrs holds more than ${MAX_XATTRS_PER_ENTRY} attributes`;
    let total = 0;
    for (const n of names) {
      total += n.length + ((x as Record<string, { length?: number }>)[n]?.length ?? 0);
      if (total > MAX_XATTR_BYTES_PER_ENTRY) return `${at}.xattrs holds more than ${MAX_XATTR_BYTES_PER_ENTRY} bytes`;
      if (n.length === 0 || Buffer.byteLength(n) > MAX_XATTR_NAME_BYTES || n.includes('\0') || !n.includes('.')) return `${at}.xattrs has a bad name (1 to ${MAX_XATTR_NAME_BYTES} bytes, a namespace, no NUL)`;
      const v = (x as Record<string, unknown>)[n];
      if (!(v instanceof Uint8Array) || v.length > MAX_XATTR_VALUE_BYTES) return `${at}.xattrs.${n} must be bytes, at most ${MAX_XATTR_VALUE_BYTES}`;
    }
  }
  return undefined;
}

/** Only the owner and attribute fields of `e` that are set. */
export function entryMetaOf(e: EntryMeta): EntryMeta {
  const out: EntryMeta = {};
  if (e.uid !== undefined && e.uid !== null) out.uid = e.uid;
  if (e.gid !== undefined && e.gid !== null) out.gid = e.gid;
  if (e.user !== undefined && e.user !== null) out.user = e.user;
  if (e.group !== undefined && e.group !== null) out.group = e.group;
  if (e.xattrs !== undefined && e.xattrs !== null) out.xattrs = e.xattrs;
  return out;
}

/** Whether an entry's fields ask for anything to be set. */
export function hasMeta(e: EntryMeta): boolean {
  return (e.uid ?? null) !== null || (e.gid ?? null) !== null || (e.xattrs !== undefined && e.xattrs !== null && Object.keys(e.xattrs).length > 0);
}

/**
 * The id to give: the destination's id for the name where it has one
 * (`lookup` answers from its user or group database), else the number.
 */
export function destinationId(id: number | undefined, name: string | undefined, lookup: (name: string) => number | undefined): number | undefined {
  if (name !== undefined) {
    const mapped = lookup(name);
    if (mapped !== undefined) return mapped;
  }
  return id;
}
