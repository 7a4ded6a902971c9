/**
 * Owners and extended attributes of tree entries, read where a tree is
 * walked and set where it is written (issue 31): `ferry serve` for a push,
 * the coordinator for a pull, with the same functions.
 *
 * - **Names** of ids come from the host's user and group databases through
 *   `getent` (NSS: files, LDAP, SSSD alike), one lookup per id or name,
 *   cached; a host without `getent` has no names and ids travel as numbers.
 * - **Extended attributes** through @napi-rs/xattr (Node has no xattr API):
 *   its calls never follow a link at the name (lgetxattr, lsetxattr), and
 *   a file's are set on its temporary name only after checking that the
 *   name is still the file this side created.
 *
 * ```ts
 * const meta = await readMeta('/data/a', 'file', { names: true, xattrs: scope });
 * applyFileMeta(temp, entry.path, { ...entry, ...meta });
 * ```
 */
import { execFile, spawnSync } from 'node:child_process';
import { constants as fsConstants, fchownSync, lchownSync, lstatSync } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { FerryError, MAX_XATTRS_PER_ENTRY, MAX_XATTR_BYTES_PER_ENTRY, destinationError, destinationId, errnoOf, xattrWanted, xattrsToRemove } from '@ferry/core';
import type { EntryMeta, ExactXattrs, XattrScope } from '@ferry/core';

/** Whether this process may give files away and read or set trusted.* and security.* attributes. */
export function runsAsRoot(): boolean {
  return typeof process.geteuid === 'function' && process.geteuid() === 0;
}

type Db = 'passwd' | 'group';

/** getent's answers, by database, key and field: a field of the line, or undefined (no such entry, no getent). */
const known = new Map<string, string | undefined>();
const asking = new Map<string, Promise<string | undefined>>();

function fieldOf(stdout: string, field: 0 | 2): string | undefined {
  const value = (stdout.split('\n')[0] ?? '').split(':')[field];
  return value === undefined || value === '' ? undefined : value;
}

function getent(db: Db, key: string, field: 0 | 2): Promise<string | undefined> {
  const k = `${db}\0${key}\0${field}`;
  if (known.has(k)) return Promise.resolve(known.get(k));
  let p = asking.get(k);
  if (!p) {
    p = new Promise((resolve) => {
      // No shell: the key is one argument; `--` so that a name is never taken for an option.
      execFile('getent', [db, '--', key], { timeout: 10_000, maxBuffer: 64 * 1024 }, (err, stdout) => {
        const value = err ? undefined : fieldOf(stdout, field);
        known.set(k, value);
        asking.delete(k);
        resolve(value);
      });
    });
    asking.set(k, p);
  }
  return p;
}

/**
 * The same, waiting here: where a batch's files are written with synchronous
 * calls (batch.ts). One lookup per distinct name, cached: a tree has few owners.
 */
function getentSync(db: Db, key: string, field: 0 | 2): string | undefined {
  const k = `${db}\0${key}\0${field}`;
  if (!known.has(k)) {
    const r = spawnSync('getent', [db, '--', key], { timeout: 10_000, maxBuffer: 64 * 1024, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    known.set(k, r.status === 0 ? fieldOf(r.stdout, field) : undefined);
  }
  return known.get(k);
}

/** The name of a user id (undefined: none). */
export function userName(uid: number): Promise<string | undefined> {
  return getent('passwd', String(uid), 0);
}

/** Owner and group names of ids, waiting here for getent (once per id: cached), as readMeta gives them. */
export function readNamesSync(uid: number, gid: number): { user?: string; group?: string } {
  // Most entries of a tree have the owners of the one before: the same (frozen) answer, no lookup.
  if (lastNames !== undefined && lastNames.uid === uid && lastNames.gid === gid) return lastNames.names;
  const user = getentSync('passwd', String(uid), 0);
  const group = getentSync('group', String(gid), 0);
  const names = Object.freeze({ ...(user !== undefined ? { user } : {}), ...(group !== undefined ? { group } : {}) });
  lastNames = { uid, gid, names };
  return names;
}

/** readNamesSync's last answer. */
let lastNames: { uid: number; gid: number; names: { user?: string; group?: string } } | undefined;

/** The name of a group id (undefined: none). */
export function groupName(gid: number): Promise<string | undefined> {
  return getent('group', String(gid), 0);
}

function idOf(db: Db, name: string): number | undefined {
  // A name that is all digits would be taken as an id by getent: it has no name mapping.
  if (/^\d+$/.test(name)) return undefined;
  const v = getentSync(db, name, 2);
  const n = v === undefined ? NaN : Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** The owner and group an entry gets here: by name where this host knows the name, else the number. */
export function destinationOwner(meta: EntryMeta): { uid: number; gid: number } {
  const u = meta.user === undefined ? undefined : idOf('passwd', meta.user);
  const g = meta.group === undefined ? undefined : idOf('group', meta.group);
  return { uid: destinationId(meta.uid, meta.user, () => u) ?? -1, gid: destinationId(meta.gid, meta.group, () => g) ?? -1 };
}

/** What a walk is asked to add to each entry. */
export interface MetaWanted {
  /** Owner and group names. */
  names?: boolean;
  /** Extended attributes and ACLs to read (files and directories). */
  xattrs?: Omit<XattrScope, 'root'>;
}

type XattrLib = typeof import('@napi-rs/xattr');
let xattrLib: Promise<XattrLib> | undefined;
/** Loaded when a copy asks for attributes: every `ferry serve` start does not pay for it. */
function xattrs(): Promise<XattrLib> {
  xattrLib ??= import('@napi-rs/xattr');
  return xattrLib;
}

let xattrLibNow: XattrLib | undefined;
/** The same, loaded here (a native module: require is synchronous). */
function xattrsNow(): XattrLib {
  xattrLibNow ??= createRequire(import.meta.url)('@napi-rs/xattr') as XattrLib;
  return xattrLibNow;
}

/** The errno name in @napi-rs/xattr's messages (`Operation not permitted (os error 1)`). */
function xattrErrno(err: unknown): string | undefined {
  const m = /\(os error (\d+)\)/.exec((err as Error)?.message ?? '');
  if (!m) return undefined;
  const n = Number(m[1]);
  return Object.entries(constants.errno).find(([, v]) => v === n)?.[0];
}

function xattrError(err: unknown): Error {
  const errno = xattrErrno(err);
  return Object.assign(new Error((err as Error).message), errno ? { code: errno } : {});
}

/** Owner names and extended attributes of the entry at `path` (lstat semantics: a link is not followed). */
export async function readMeta(path: string, kind: string, uid: number, gid: number, wanted: MetaWanted): Promise<{ user?: string; group?: string; xattrs?: Record<string, Uint8Array> }> {
  const out: { user?: string; group?: string; xattrs?: Record<string, Uint8Array> } = {};
  if (wanted.names) {
    const [u, g] = await Promise.all([userName(uid), groupName(gid)]);
    if (u !== undefined) out.user = u;
    if (g !== undefined) out.group = g;
  }
  if (wanted.xattrs && (kind === 'file' || kind === 'dir')) {
    const scope: XattrScope = { ...wanted.xattrs, root: runsAsRoot() };
    const lib = await xattrs();
    let names: string[];
    try {
      names = await lib.listAttributes(path);
    } catch (err) {
      // A file system without attributes has none to copy.
      if (xattrErrno(err) === 'ENOTSUP' || xattrErrno(err) === 'EOPNOTSUPP') return out;
      throw xattrError(err);
    }
    const found: Record<string, Uint8Array> = {};
    let total = 0;
    for (const name of names.filter((n) => xattrWanted(n, scope)).sort()) {
      // Gone since it was listed (null): nothing to copy.
      const value = await lib.getAttribute(path, name).catch((err: unknown) => {
        throw xattrError(err);
      });
      if (value !== null) found[name] = new Uint8Array(value);
      total += name.length + (value?.length ?? 0);
      if (total > MAX_XATTR_BYTES_PER_ENTRY || Object.keys(found).length > MAX_XATTRS_PER_ENTRY) {
        throw Object.assign(new Error(`its extended attributes exceed ${MAX_XATTRS_PER_ENTRY} names or ${MAX_XATTR_BYTES_PER_ENTRY} bytes: not copied`), { code: 'E2BIG' });
      }
    }
    if (Object.keys(found).length > 0) out.xattrs = found;
  }
  return out;
}

function ownerError(path: string, meta: EntryMeta, err: unknown): FerryError {
  const e = destinationError(err, { path });
  if (e.errno !== 'EPERM') return e;
  const who = `${meta.user ?? meta.uid ?? '-'}:${meta.group ?? meta.gid ?? '-'}`;
  return new FerryError('DEST_NOT_WRITABLE', `${path}: cannot give it to ${who} (EPERM): only root may give files to another user or a group it is not in; copy as root there, or without --preserve=owner`, { path, errno: 'EPERM' });
}

function setXattrs(name: string, path: string, values: Record<string, Uint8Array>): void {
  const lib = xattrsNow();
  for (const [n, v] of Object.entries(values)) {
    try {
      lib.setAttributeSync(name, n, v);
    } catch (err) {
      const errno = xattrErrno(err);
      throw new FerryError('DEST_NOT_WRITABLE', `${path}: cannot set its extended attribute ${n} (${errno ?? (err as Error).message}): the destination's file system or permissions refuse it; copy without --xattrs/--acls to leave them out`, { path, ...(errno ? { errno } : {}) });
    }
  }
}

function sameFile(name: string, ino: number, dev: number): boolean {
  try {
    const st = lstatSync(name);
    return st.isFile() && st.ino === ino && st.dev === dev;
  } catch {
    return false;
  }
}

/**
 * Owner and attributes of a file still under its temporary name, before its
 * mode is set (chown clears set-id bits; an ACL's mask follows the mode set
 * after it). The owner through the descriptor; attributes by name (there is
 * no fd call for them here), once the name is checked to be this file.
 * Synchronous, as the rest of a batch's file steps (batch.ts).
 */
export function applyFileMeta(tmp: { fd: number; name: string; ino: number; dev: number }, path: string, meta: EntryMeta): void {
  if (meta.uid !== undefined || meta.gid !== undefined) {
    const { uid, gid } = destinationOwner(meta);
    try {
      fchownSync(tmp.fd, uid, gid);
    } catch (err) {
      throw ownerError(path, meta, err);
    }
  }
  if (meta.xattrs && Object.keys(meta.xattrs).length > 0) {
    if (!sameFile(tmp.name, tmp.ino, tmp.dev)) throw new FerryError('DEST_REPLACED', `the temporary file ${tmp.name} of ${path} is not the file ferry created: its attributes were not set. Check who can write in that directory`, { path });
    setXattrs(tmp.name, path, meta.xattrs);
  }
}

/**
 * Removes the attributes at `path` of the kinds `exact` names that `keep`
 * does not hold, with the calls that never follow a link at the name
 * (llistxattr, lremovexattr): a link planted where a directory was loses
 * nothing of what it points to.
 */
function removeOtherXattrs(path: string, keep: Record<string, Uint8Array> | undefined, exact: ExactXattrs): void {
  const lib = xattrsNow();
  let listed: string[];
  try {
    listed = lib.listAttributesSync(path);
  } catch (err) {
    const errno = xattrErrno(err);
    // A file system without attributes has none to remove.
    if (errno === 'ENOTSUP' || errno === 'EOPNOTSUPP') return;
    throw destinationError(xattrError(err), { path });
  }
  for (const n of xattrsToRemove(listed, keep, { ...exact, root: runsAsRoot() })) {
    try {
      lib.removeAttributeSync(path, n);
    } catch (err) {
      const errno = xattrErrno(err);
      // Gone since it was listed: as wanted.
      if (errno === 'ENODATA') continue;
      throw new FerryError('DEST_NOT_WRITABLE', `${path}: cannot remove its extended attribute ${n} (${errno ?? (err as Error).message}), which the source no longer has: the destination's file system or permissions refuse it; remove it there, or copy without --xattrs/--acls`, { path, ...(errno ? { errno } : {}) });
    }
  }
}

/**
 * Owner and attributes of what is at `path` now (a directory at the end of a
 * copy, a symbolic link, a big file set again), never through a link at the
 * name. With `exact` (SETSTAT's `xattrsExact`), attributes of those kinds
 * that `meta.xattrs` does not hold are removed first.
 */
export function applyPathMeta(path: string, meta: EntryMeta, exact?: ExactXattrs): void {
  if (meta.uid !== undefined || meta.gid !== undefined) {
    const { uid, gid } = destinationOwner(meta);
    try {
      lchownSync(path, uid, gid);
    } catch (err) {
      throw ownerError(path, meta, err);
    }
  }
  if (exact) removeOtherXattrs(path, meta.xattrs, exact);
  if (meta.xattrs && Object.keys(meta.xattrs).length > 0) setXattrs(path, path, meta.xattrs);
}

/**
 * What a by-name mode and times change may find at its name: a directory
 * (`dir`), a regular file (`file`: a big file whose metadata alone is set
 * again), or either (`ferry serve`'s SETSTAT by path, which is told no kind).
 */
export type ModeTimesTarget = 'dir' | 'file' | 'either';

/**
 * Sets the mode and times of what is at `path` through a descriptor opened
 * with O_NOFOLLOW (O_DIRECTORY for a directory; O_NONBLOCK, so that a fifo
 * put in its place does not hang), never by name: the object checked is the
 * object changed. A symbolic link swapped in at the name (ELOOP) or anything
 * else of another kind is refused with DEST_CONFLICT, and nothing where it
 * points is touched. Used by ferry serve's SETSTAT by path and by a pull's
 * directories (the coordinator's tree-finalize.ts).
 */
export async function setModeTimesAt(path: string, attrs: { mode?: number | undefined; mtimeMs?: number | undefined; atimeMs?: number | undefined }, target: ModeTimesTarget): Promise<void> {
  if (attrs.mode === undefined && attrs.mtimeMs === undefined) return;
  const flags = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK | (target === 'dir' ? fsConstants.O_DIRECTORY : 0);
  const what = target === 'dir' ? 'a directory' : target === 'file' ? 'a regular file' : 'a directory or a regular file';
  const notSet = target === 'file' ? 'its mode and owner were not set' : 'its mode and times were not set';
  let fh;
  try {
    try {
      fh = await open(path, flags);
    } catch (err) {
      const errno = errnoOf(err);
      if (errno !== 'ELOOP' && errno !== 'ENOTDIR') throw err;
      // ENOTDIR may also mean a component above is no directory: then lstat fails the same way.
      const st = await lstat(path);
      if (st.isSymbolicLink()) throw new FerryError('DEST_CONFLICT', `${path} is a symbolic link now: ${notSet} (the link was not followed); move it away and rerun`, { path });
      throw new FerryError('DEST_CONFLICT', `${path} is no longer ${what}: ${notSet}; move it away and rerun`, { path });
    }
    const st = await fh.stat();
    if (target === 'file' ? !st.isFile() : target === 'either' && !st.isFile() && !st.isDirectory()) {
      throw new FerryError('DEST_CONFLICT', `${path} is no longer ${what}: ${notSet}; move it away and rerun`, { path });
    }
    if (attrs.mode !== undefined) await fh.chmod(attrs.mode);
    if (attrs.mtimeMs !== undefined) await fh.utimes((attrs.atimeMs ?? attrs.mtimeMs) / 1000, attrs.mtimeMs / 1000);
  } catch (err) {
    throw destinationError(err, { path });
  } finally {
    await fh?.close().catch(() => {});
  }
}
