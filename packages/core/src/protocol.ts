/**
 * The helper wire protocol spoken between an agent (or the coordinator) and
 * `ferry serve` on the remote host, over an SSH exec channel's stdin/stdout.
 *
 * Every frame is a 12-byte header followed by a body:
 *
 *   u8 type | u8 flags (0) | u16 reserved (0) | u32 id | u32 body length
 *
 * Control frames carry a msgpack map. DATA frames carry raw bytes: file
 * contents are never msgpack-wrapped. A request and everything that answers it
 * share the request's id. A range write is one WRITE frame (handle, offset,
 * length, hash algorithm) followed by DATA frames with the same id whose lengths
 * add up to `length`; the helper answers once, after the last byte is written,
 * with the hash of what it received. READ is the mirror image: DATA frames from
 * the helper, then an OK with the hash computed while reading.
 *
 * Inside a WRITE or a READ, a ZEROS frame (same id) stands for `length` zero
 * bytes: runs of zeros, as in sparse files, cost a few bytes on the wire and
 * are written only where the destination does not already read as zeros.
 *
 * A BATCH (capability `batch`) writes many small entries in one request: the
 * body lists directories, files, symbolic links and hard links; DATA and ZEROS
 * frames with its id carry the files' bytes back to back in entry order; a
 * COMMIT with the same id follows the last byte at once, with the source's
 * hash of each file; the helper answers once, with one result per entry.
 *
 * A pull of a tree (capability `tree-read`) asks the helper to WALK a
 * directory: ENTRIES frames with the request's id carry what it finds, a few
 * thousand entries each, parents before their contents, and an OK ends the
 * walk. A READ_BATCH lists files by path and size: the helper sends their
 * bytes back to back as DATA and ZEROS frames, exactly the sum of the sizes,
 * then one OK with a result per file (its hash, or why it failed).
 *
 * For `--delta` (capability `copy-range`), COPY_RANGE copies a range of an
 * existing file on the helper's host (the old destination file) into an open
 * file at the same offset, and answers with the hash of the bytes it copied:
 * unchanged ranges never cross the network.
 *
 * The decoder is a state machine: bytes in, frames out, no I/O.
 */
import { decode, encode } from './codec.js';
import { FerryError } from './errors.js';
import type { ErrorData } from './errors.js';
import { HASH_ALGORITHMS, isHashAlgorithm } from './hash.js';
import { HUB_KEY_BYTES, parseHubKey } from './hub-auth.js';
import type { HashAlgorithm } from './hash.js';
import { entryMetaProblem, exactXattrsProblem } from './tree-meta.js';
import type { EntryMeta, ExactXattrs } from './tree-meta.js';

export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 12;
/** Largest control body accepted: paths and small maps only. */
export const MAX_CONTROL_BYTES = 64 * 1024;
/**
 * Largest BATCH and COMMIT body, and OK body as the client accepts it (the
 * answer to a COMMIT has a result per entry). Every other control body stays
 * within MAX_CONTROL_BYTES.
 */
export const MAX_BATCH_BODY_BYTES = 1024 * 1024;
/** Most entries in one BATCH: the tree planner's DEFAULT_BATCH_ENTRIES. */
export const MAX_BATCH_ENTRIES = 4096;
/**
 * Most file bytes one BATCH may declare. A batch is small files (the planner
 * closes one at 64 MiB); this bound only keeps a client's sizes sane.
 */
export const MAX_BATCH_BYTES = 1024 * 1024 * 1024;
/**
 * BATCHes a session may have open (announced, not yet answered). Beyond it
 * the session ends with PROTOCOL; a client keeps within it.
 */
export const MAX_OPEN_BATCHES = 4;
/** HELLO capability of helpers that take BATCH and COMMIT. */
export const BATCH_CAPABILITY = 'batch';
/** HELLO capability of helpers that take WALK and READ_BATCH (a tree pull). */
export const TREE_READ_CAPABILITY = 'tree-read';
/**
 * HELLO capability of helpers that set and report owners and extended
 * attributes (BATCH entries' and SETSTAT's uid, gid, user, group, xattrs;
 * WALK's `names` and `xattrs`) and expand GLOB.
 */
export const TREE_META_CAPABILITY = 'tree-meta';
/**
 * HELLO capability of helpers that take READ_BATCH with `hashOnly`: each
 * file read and hashed where it is, no byte sent back, the result per file
 * as always (`ferry check`, `ferry sync --compare checksum`).
 */
export const HASH_ONLY_CAPABILITY = 'read-batch-hash-only';
/**
 * HELLO capability of helpers that take COPY_RANGE: bytes copied on the
 * helper's host from an existing file into an open one (`--delta`); and
 * SETSTAT's `size` on a writable handle (`--inplace`).
 */
export const COPY_RANGE_CAPABILITY = 'copy-range';
/**
 * HELLO capability of helpers that take SETSTAT's `xattrsExact`: the
 * attributes of the kinds a copy keeps become exactly the request's, the
 * others removed, never through a link at the name (a directory on a
 * rerun, a big file whose attributes alone changed). A helper without it
 * would ignore the field and only add.
 */
export const XATTRS_EXACT_CAPABILITY = 'xattrs-exact';
/**
 * HELLO capability of helpers that take WALK's `hash` and `hashMaxBytes`:
 * each regular file of at most that size comes with its hash, read as it is
 * found (`ferry check` then sends no READ_BATCH for it: one pass over the
 * tree on that side, as rsync's checksum file list).
 */
export const WALK_HASH_CAPABILITY = 'walk-hash';
/** Largest WALK `hashMaxBytes` a helper takes: it reads each such file whole into one buffer. */
export const MAX_WALK_HASH_BYTES = 1024 * 1024;
/** Most items in one ENTRIES frame (its body stays within MAX_BATCH_BODY_BYTES too). */
export const MAX_WALK_ITEMS = 4096;
/** Largest DATA frame accepted. */
export const MAX_DATA_FRAME_BYTES = 16 * 1024 * 1024;

export const FrameType = {
  HELLO: 1,
  OPEN: 2,
  WRITE: 3,
  DATA: 4,
  READ: 5,
  HASH: 6,
  FSYNC: 7,
  SETSTAT: 8,
  CLOSE: 9,
  STAT: 10,
  RENAME: 11,
  UNLINK: 12,
  ZEROS: 13,
  BATCH: 14,
  COMMIT: 15,
  WALK: 16,
  READ_BATCH: 17,
  ENTRIES: 18,
  GLOB: 19,
  COPY_RANGE: 20,
  OK: 64,
  ERROR: 65,
} as const;
export type FrameTypeName = keyof typeof FrameType;
export type FrameTypeCode = (typeof FrameType)[FrameTypeName];

const TYPE_NAMES = new Map<number, FrameTypeName>(
  (Object.entries(FrameType) as Array<[FrameTypeName, number]>).map(([k, v]) => [v, k]),
);

export function frameTypeName(code: number): FrameTypeName | undefined {
  return TYPE_NAMES.get(code);
}

/** How OPEN treats the file. */
export type OpenPolicy =
  /** Create or truncate, then size to `size` (sparse). Used for the temporary destination file. */
  | 'create'
  /** The file must exist; it is opened for writing without truncation. Used by agents. */
  | 'write'
  /** Opened read-only. */
  | 'read';

export interface HelloBody {
  version: number;
  software: string;
  capabilities: string[];
  /**
   * Request: also take further sessions on a Unix socket (a shared helper, see
   * serve's hub.ts). Answer: that socket's path, when the helper opened one.
   */
  hub?: boolean | string;
  /** Answer: the helper process's umask, for modes as scp sets them (a file's mode without -p). */
  umask?: number;
  /** Answer (`tree-meta`): the helper's effective user id (0: root, so a tree's owners are kept). */
  euid?: number;
  /**
   * Request with `hub: true`: the secret (hex, HUB_KEY_BYTES) every session
   * joining that socket must prove it knows, and the hub proves back
   * (hub-auth.ts). A helper opens no socket without one.
   */
  hubKey?: string;
}
export interface OpenBody {
  path: string;
  policy: OpenPolicy;
  size?: number;
  mode?: number;
  /**
   * With policy 'write': write aligned data with O_DIRECT (the OK says whether
   * the file system allows it); `auto`: only where the file is on a local disk
   * file system (core's directIoFits), through the page cache elsewhere.
   */
  direct?: boolean | 'auto';
  /**
   * With policy 'create': create a new file only (O_CREAT|O_EXCL|O_NOFOLLOW),
   * failing with EEXIST whatever is at `path`, a symbolic link included.
   * Helpers with the `safe-files` capability open 'create' and 'write' with
   * O_NOFOLLOW always, and answer OPEN with the handle's fstat (`stat`).
   */
  exclusive?: boolean;
}
export interface WriteBody { handle: number; offset: number; length: number; algorithm: HashAlgorithm }
export interface ReadBody { handle: number; offset: number; length: number; algorithm: HashAlgorithm }
export interface HashBody { handle: number; offset: number; length: number; algorithm: HashAlgorithm }
export interface HandleBody { handle: number }
/**
 * By path, or (`safe-files`) by an open handle: fchmod and futimes, nothing
 * looked up by name. With `tree-meta`, owner and attributes too (by path:
 * lchown and the attribute calls that do not follow a link).
 */
export interface SetstatBody extends EntryMeta {
  path?: string;
  handle?: number;
  mode?: number;
  mtimeMs?: number;
  atimeMs?: number;
  /** With a writable `handle` (capability `copy-range`): ftruncate to this size first (`--inplace`). */
  size?: number;
  /** Capability `xattrs-exact`: the attributes of these kinds become exactly `xattrs`, the others removed. */
  xattrsExact?: ExactXattrs;
}
export interface PathBody { path: string }
/** UNLINK: `dir` removes an empty directory (rmdir) instead (`ferry sync --delete`); a helper before it ignores the field and fails with EISDIR. */
export interface UnlinkBody { path: string; dir?: boolean }
/**
 * With `handle` (`safe-files`): `from` must still be the file open as `handle`
 * (same device and inode, not a link) just before the rename, and `to` must be
 * it just after; DEST_REPLACED otherwise.
 */
export interface RenameBody { from: string; to: string; handle?: number }
export interface ZerosBody { length: number }
/**
 * Copies [offset, offset + length) of the regular file at `from` (opened
 * read-only, never through a symbolic link at the name) into the open,
 * writable file `handle` at the same offset, on the helper's host. The OK
 * carries `bytes` and the hash of the bytes copied.
 */
export interface CopyRangeBody { from: string; handle: number; offset: number; length: number; algorithm: HashAlgorithm }

/** What a BATCH entry makes. */
export type BatchEntryKind =
  /** mkdir 0700; an existing directory (not a link to one) is fine. Its mode and times are set later, by SETSTAT. */
  | 'dir'
  /** A regular file of `size` bytes, created under a temporary name and renamed over `path` at COMMIT when its hashes agree. */
  | 'file'
  /** A symbolic link to `target` (stored as given, never followed). */
  | 'symlink'
  /** A further name of the file at `target` (an absolute path on the helper's side). */
  | 'hardlink';

/**
 * One entry of a BATCH. Paths are absolute; parents come before their
 * contents. Owner and attributes (`tree-meta`) are set on files before
 * their mode, on symbolic links before the rename (owner only).
 */
export interface BatchEntry extends EntryMeta {
  kind: BatchEntryKind;
  path: string;
  /** Files: their bytes in the batch's DATA and ZEROS frames. Absent (or 0) for the other kinds. */
  size?: number;
  /** Files: permission bits (at most 0o7777), set through the open file before the rename. */
  mode?: number;
  /** Files and symlinks: times in ms since 1970; atime defaults to mtime. */
  mtimeMs?: number;
  atimeMs?: number;
  /** Symlinks: the link's text. Hard links: the existing file's absolute path. */
  target?: string;
}

export interface BatchBody { algorithm: HashAlgorithm; entries: BatchEntry[] }
/** One per entry: the source's hash of a file's bytes, null for other kinds and for a file the client could not read consistently. */
export interface CommitBody { srcHashes: Array<string | null> }
/** One entry's outcome in the answer to a COMMIT; `hash` is the helper's hash of a file's bytes. */
export type BatchEntryResult = { ok: true; hash?: string } | { ok: false; error: ErrorData };

/**
 * WALK: the directory (or single entry) to walk, absolute. With
 * `tree-meta`: `names` adds each entry's owner and group names, `xattrs` and
 * `acls` its extended attributes and ACLs (files and directories).
 */
/**
 * WALK: the tree under `root`; `names`, `xattrs`, `acls` add those to each entry (`tree-meta`);
 * with WALK_HASH_CAPABILITY, `hash` and `hashMaxBytes` add the content hash of each regular file
 * of at most that many bytes (`ferry check`), where the helper could read it whole.
 */
export interface WalkBody { root: string; names?: boolean; xattrs?: boolean; acls?: boolean; hash?: HashAlgorithm; hashMaxBytes?: number }
/** GLOB (`tree-meta`): the paths an absolute pattern matches (core's glob.ts), in `paths` of the OK. */
export interface GlobBody { pattern: string }
/** One file of a READ_BATCH: its bytes are sent as exactly `size` bytes, whatever the file holds now. */
export interface ReadBatchEntry { path: string; size: number }
export interface ReadBatchBody { algorithm: HashAlgorithm; entries: ReadBatchEntry[]; /** HASH_ONLY_CAPABILITY: hash each file, send none of its bytes. */ hashOnly?: boolean }
/**
 * One item of a walk on the wire: a tree entry (core's TreeEntry fields, its
 * `path` relative to the root, `''` the root itself), or an entry the walk
 * could not report and why.
 */
export type WireWalkItem = WireTreeEntry | { path: string; error: { code: string; message: string } };
export interface WireTreeEntry {
  path: string;
  kind: 'file' | 'dir' | 'symlink' | 'hardlink' | 'special';
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  atimeMs: number;
  dev: number;
  ino: number;
  nlink: number;
  target?: string;
  allocated?: number;
  user?: string;
  group?: string;
  xattrs?: Record<string, Uint8Array>;
  /** A small file's content hash, when the WALK asked for them (WALK_HASH_CAPABILITY). */
  hash?: string;
}
/** ENTRIES: the next items of a WALK, in the order found. */
export interface EntriesBody { items: WireWalkItem[] }

export interface StatResult {
  type: 'file' | 'directory' | 'other';
  size: number;
  mode: number;
  mtimeMs: number;
  ino: number;
  dev: number;
  /** Owner and link count (helpers with `safe-files`; SFTP gives the owner only). */
  uid?: number;
  nlink?: number;
}

/** Body of OK: which fields are set depends on the request it answers. */
export interface OkBody {
  handle?: number;
  size?: number;
  bytes?: number;
  hash?: string;
  /** STAT; and OPEN (`safe-files`): fstat of the handle just opened, for the client to check it is the file it expects. */
  stat?: StatResult;
  hello?: HelloBody;
  /** OPEN with `direct`: whether aligned writes bypass the page cache... */
  direct?: boolean;
  /** ...and if not, why. */
  directReason?: string;
  /** OPEN: set when sshd's pipes to the helper stay at the kernel's default size, and why (a slower session). */
  pipesReason?: string;
  /** COMMIT: one result per entry of the BATCH. */
  results?: BatchEntryResult[];
  /** GLOB: the paths matched, sorted. */
  paths?: string[];
}

export type ErrorBody = ErrorData;

export type ControlFrame =
  | { type: 'HELLO'; id: number; body: HelloBody }
  | { type: 'OPEN'; id: number; body: OpenBody }
  | { type: 'WRITE'; id: number; body: WriteBody }
  | { type: 'READ'; id: number; body: ReadBody }
  | { type: 'HASH'; id: number; body: HashBody }
  | { type: 'FSYNC'; id: number; body: HandleBody }
  | { type: 'SETSTAT'; id: number; body: SetstatBody }
  | { type: 'CLOSE'; id: number; body: HandleBody }
  | { type: 'STAT'; id: number; body: PathBody }
  | { type: 'RENAME'; id: number; body: RenameBody }
  | { type: 'UNLINK'; id: number; body: UnlinkBody }
  | { type: 'ZEROS'; id: number; body: ZerosBody }
  | { type: 'BATCH'; id: number; body: BatchBody }
  | { type: 'COMMIT'; id: number; body: CommitBody }
  | { type: 'WALK'; id: number; body: WalkBody }
  | { type: 'READ_BATCH'; id: number; body: ReadBatchBody }
  | { type: 'ENTRIES'; id: number; body: EntriesBody }
  | { type: 'GLOB'; id: number; body: GlobBody }
  | { type: 'COPY_RANGE'; id: number; body: CopyRangeBody }
  | { type: 'OK'; id: number; body: OkBody }
  | { type: 'ERROR'; id: number; body: ErrorBody };

/** What the decoder emits. DATA bodies arrive as pieces; `chunk` is a view valid only during the callback. */
export type DecodedFrame = ControlFrame | { type: 'DATA'; id: number; chunk: Buffer; frameBytes: number; remaining: number };

export function writeHeader(target: Buffer, at: number, type: FrameTypeCode, id: number, bodyBytes: number): void {
  target.writeUInt8(type, at);
  target.writeUInt8(0, at + 1);
  target.writeUInt16BE(0, at + 2);
  target.writeUInt32BE(id >>> 0, at + 4);
  target.writeUInt32BE(bodyBytes >>> 0, at + 8);
}

export function encodeControl<F extends ControlFrame>(type: F['type'], id: number, body: F['body']): Buffer {
  const payload = encode(body);
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  writeHeader(out, 0, FrameType[type], id, payload.length);
  payload.copy(out, FRAME_HEADER_BYTES);
  return out;
}

/** 1 MiB of zeros, shared: stands in for ZEROS runs. Never write into it. */
export const ZERO_CHUNK: Buffer = Buffer.alloc(1024 * 1024);

/** True when every byte of `buf` is zero (a memcmp against ZERO_CHUNK). */
export function isAllZero(buf: Buffer): boolean {
  for (let at = 0; at < buf.length; at += ZERO_CHUNK.length) {
    const n = Math.min(ZERO_CHUNK.length, buf.length - at);
    if (!buf.subarray(at, at + n).equals(ZERO_CHUNK.subarray(0, n))) return false;
  }
  return true;
}

/** Header of a DATA frame, for callers that send the payload as a separate buffer. */
export function encodeDataHeader(id: number, bodyBytes: number): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  writeHeader(out, 0, FrameType.DATA, id, bodyBytes);
  return out;
}

function protocolError(message: string): FerryError {
  return new FerryError('PROTOCOL', `helper protocol: ${message}`);
}

/** A map as the strict codec decodes one: an object of the plain kind (not an array, a Buffer, or anything with a class). */
export function isPlainMap(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

const BATCH_KINDS: ReadonlySet<unknown> = new Set<BatchEntryKind>(['dir', 'file', 'symlink', 'hardlink']);
const ENTRY_KEYS: ReadonlySet<string> = new Set(['kind', 'path', 'size', 'mode', 'mtimeMs', 'atimeMs', 'target', 'uid', 'gid', 'user', 'group', 'xattrs']);

/**
 * What is wrong with entry `index` of a BATCH, in words, or undefined: the
 * checks the helper makes on what it decodes, and the client on what it is
 * about to send. Absent fields may be nil (other encoders write them so).
 */
export function batchEntryProblem(entry: unknown, index: number): string | undefined {
  const at = `entries[${index}]`;
  if (!isPlainMap(entry)) return `${at} is not a map`;
  for (const k of Object.keys(entry)) if (!ENTRY_KEYS.has(k)) return `${at} has an unknown field ${k}`;
  const given = (k: string) => entry[k] !== undefined && entry[k] !== null;
  const path = (v: unknown) => typeof v === 'string' && v.startsWith('/') && !v.includes('\0') && v.length > 1;
  if (!BATCH_KINDS.has(entry.kind)) return `${at}.kind must be dir, file, symlink or hardlink`;
  if (!path(entry.path)) return `${at}.path must be an absolute path without NUL (not /)`;
  for (const k of ['size', 'mode', 'mtimeMs', 'atimeMs']) {
    const v = entry[k];
    if (given(k) && (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)) return `${at}.${k} must be a non-negative integer`;
  }
  if (given('mode') && (entry.mode as number) > 0o7777) return `${at}.mode must be at most 0o7777`;
  if (entry.kind === 'file' && !given('size')) return `${at}.size is missing (a file)`;
  if (entry.kind !== 'file' && given('size') && entry.size !== 0) return `${at}.size must be absent for a ${String(entry.kind)}`;
  if (entry.kind === 'symlink' || entry.kind === 'hardlink') {
    const t = entry.target;
    if (typeof t !== 'string' || t.length === 0 || t.includes('\0')) return `${at}.target must be a non-empty string without NUL`;
    if (entry.kind === 'hardlink' && !path(t)) return `${at}.target must be an absolute path (a hard link)`;
  } else if (given('target')) return `${at}.target must be absent for a ${String(entry.kind)}`;
  return entryMetaProblem(entry, at);
}

/** What is wrong with a BATCH's list of entries as a whole (count, each entry, the sum of sizes), or undefined. */
export function batchEntriesProblem(entries: unknown): string | undefined {
  if (!Array.isArray(entries)) return 'entries must be a list';
  if (entries.length > MAX_BATCH_ENTRIES) return `${entries.length} entries exceed ${MAX_BATCH_ENTRIES}`;
  let bytes = 0;
  for (let i = 0; i < entries.length; i++) {
    const problem = batchEntryProblem(entries[i], i);
    if (problem) return problem;
    bytes += (entries[i] as { size?: number }).size ?? 0;
    if (bytes > MAX_BATCH_BYTES) return `the files' sizes add up to more than ${MAX_BATCH_BYTES} bytes`;
  }
  return undefined;
}

/** A BATCH body as the wire carries it: entries with only the fields that are set (absent ones are not sent as nil or undefined). */
export function batchBody(algorithm: HashAlgorithm, entries: readonly BatchEntry[]): BatchBody {
  return {
    algorithm,
    entries: entries.map((e) => {
      const out: BatchEntry = { kind: e.kind, path: e.path };
      if (e.kind === 'file') out.size = e.size ?? 0;
      for (const k of ['mode', 'mtimeMs', 'atimeMs', 'uid', 'gid'] as const) if (e[k] !== undefined) out[k] = e[k];
      if (e.target !== undefined) out.target = e.target;
      if (e.user !== undefined) out.user = e.user;
      if (e.group !== undefined) out.group = e.group;
      if (e.xattrs !== undefined) out.xattrs = e.xattrs;
      return out;
    }),
  };
}

/** Total file bytes a BATCH carries (what its DATA and ZEROS frames must add up to). */
export function batchBytes(entries: readonly BatchEntry[]): number {
  let n = 0;
  for (const e of entries) if (e.kind === 'file') n += e.size ?? 0;
  return n;
}

/**
 * Whether `p` is a tree path a walk may report: relative, `/`-separated,
 * without empty, `.` or `..` components or NUL (`''` is the root). A helper
 * that sent `../x` would otherwise have the puller write outside its target.
 */
/** An empty, `.` or `..` component (a leading, trailing or doubled slash is an empty one), or a NUL. */
const BAD_TREE_PATH = /(?:^|\/)\.{0,2}(?:\/|$)|\0/;

export function isTreePath(p: unknown): p is string {
  if (typeof p !== 'string') return false;
  // One test rather than a split: every entry of a walk goes through here.
  return p === '' || !BAD_TREE_PATH.test(p);
}

const WALK_KINDS: ReadonlySet<unknown> = new Set(['file', 'dir', 'symlink', 'hardlink', 'special']);
const WALK_ENTRY_KEYS: ReadonlySet<string> = new Set(['path', 'kind', 'size', 'mode', 'uid', 'gid', 'mtimeMs', 'atimeMs', 'dev', 'ino', 'nlink', 'target', 'allocated', 'user', 'group', 'xattrs', 'hash']);

/** What is wrong with item `index` of an ENTRIES frame, in words, or undefined. Absent optional fields may be nil. */
export function walkItemProblem(item: unknown, index: number): string | undefined {
  const problem = walkEntryProblem(item);
  return problem === undefined ? undefined : `items[${index}]${problem}`;
}

/** walkItemProblem's words after `items[i]`: the name is put together only for an item that is wrong. */
function walkEntryProblem(item: unknown): string | undefined {
  if (!isPlainMap(item)) return ' is not a map';
  if (!isTreePath(item.path)) return `.path must be a relative path without empty, . or .. components or NUL`;
  if (item.error !== undefined) {
    const e = item.error;
    if (Object.keys(item).length !== 2 || !isPlainMap(e) || typeof e.code !== 'string' || typeof e.message !== 'string' || Object.keys(e).length !== 2) return ` must be { path, error: { code, message } }`;
    return undefined;
  }
  for (const k of Object.keys(item)) if (!WALK_ENTRY_KEYS.has(k)) return ` has an unknown field ${k}`;
  if (!WALK_KINDS.has(item.kind)) return `.kind must be file, dir, symlink, hardlink or special`;
  for (const k of ['size', 'mode', 'uid', 'gid', 'nlink']) {
    const v = item[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) return `.${k} must be a non-negative integer`;
  }
  if ((item.mode as number) > 0o7777) return `.mode must be at most 0o7777`;
  if (item.kind !== 'file' && item.size !== 0) return `.size must be 0 for a ${String(item.kind)}`;
  // Times before 1970 are negative; device and inode numbers may be 64-bit (kept as the nearest number).
  for (const k of ['mtimeMs', 'atimeMs', 'dev', 'ino']) {
    if (typeof item[k] !== 'number' || !Number.isFinite(item[k])) return `.${k} must be a number`;
  }
  const given = (k: string) => item[k] !== undefined && item[k] !== null;
  if (given('allocated') && (typeof item.allocated !== 'number' || !Number.isSafeInteger(item.allocated) || item.allocated < 0)) return `.allocated must be a non-negative integer`;
  if (item.kind === 'symlink') {
    const t = item.target;
    if (typeof t !== 'string' || t.length === 0 || t.includes('\0')) return `.target must be a non-empty string without NUL`;
  } else if (item.kind === 'hardlink') {
    if (!isTreePath(item.target) || item.target === '') return `.target must be a tree path (a hard link's first name)`;
  } else if (given('target')) return `.target must be absent for a ${String(item.kind)}`;
  if (given('hash') && (item.kind !== 'file' || typeof item.hash !== 'string' || !/^[0-9a-f]{8,128}$/.test(item.hash))) return `.hash must be a file's hex digest`;
  return entryMetaProblem(item, '');
}

/** What is wrong with a READ_BATCH's list of files, or undefined. */
export function readBatchProblem(entries: unknown): string | undefined {
  if (!Array.isArray(entries)) return 'entries must be a list';
  if (entries.length > MAX_BATCH_ENTRIES) return `${entries.length} entries exceed ${MAX_BATCH_ENTRIES}`;
  let bytes = 0;
  for (let i = 0; i < entries.length; i++) {
    const e: unknown = entries[i];
    if (!isPlainMap(e)) return `entries[${i}] is not a map`;
    for (const k of Object.keys(e)) if (k !== 'path' && k !== 'size') return `entries[${i}] has an unknown field ${k}`;
    if (typeof e.path !== 'string' || !e.path.startsWith('/') || e.path.includes('\0')) return `entries[${i}].path must be an absolute path without NUL`;
    if (typeof e.size !== 'number' || !Number.isSafeInteger(e.size) || e.size < 0) return `entries[${i}].size must be a non-negative integer`;
    bytes += e.size;
    if (bytes > MAX_BATCH_BYTES) return `the files' sizes add up to more than ${MAX_BATCH_BYTES} bytes`;
  }
  return undefined;
}

/** Checks a decoded control body has the fields its frame type needs, with their types, so handlers can trust it (the frame's size bounds its strings). */
function validate(frame: ControlFrame): ControlFrame {
  const b = frame.body as unknown as Record<string, unknown>;
  if (!isPlainMap(b)) throw protocolError(`${frame.type} body is not a map`);
  const int = (k: string, from: Record<string, unknown> = b, what = k) => {
    const v = from[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw protocolError(`${frame.type}.${what} must be a non-negative integer`);
  };
  const str = (k: string) => {
    if (typeof b[k] !== 'string' || (b[k] as string).length === 0 || (b[k] as string).includes('\0')) {
      throw protocolError(`${frame.type}.${k} must be a non-empty string without NUL`);
    }
  };
  const optional = (k: string, type: 'string' | 'boolean' | 'int') => {
    const v = b[k];
    // Other encoders (the Python helper) write an absent field as nil.
    if (v === undefined || v === null) return;
    if (type === 'int') return int(k);
    if (typeof v !== type) throw protocolError(`${frame.type}.${k} must be a ${type}`);
  };
  const algo = () => {
    if (!isHashAlgorithm(b.algorithm)) throw protocolError(`${frame.type}.algorithm must be one of ${HASH_ALGORITHMS.join(', ')}`);
  };
  switch (frame.type) {
    case 'HELLO':
      int('version');
      if (b.hub !== undefined && typeof b.hub !== 'boolean') throw protocolError('HELLO.hub must be a boolean');
      if (b.hubKey !== undefined && parseHubKey(b.hubKey) === undefined) throw protocolError(`HELLO.hubKey must be ${2 * HUB_KEY_BYTES} hex digits`);
      break;
    case 'OPEN':
      str('path');
      if (b.policy !== 'create' && b.policy !== 'write' && b.policy !== 'read') throw protocolError('OPEN.policy must be create, write or read');
      if (b.size !== undefined) int('size');
      if (b.mode !== undefined) int('mode');
      if (b.direct !== undefined && typeof b.direct !== 'boolean' && b.direct !== 'auto') throw protocolError("OPEN.direct must be a boolean or 'auto'");
      if (b.exclusive !== undefined && typeof b.exclusive !== 'boolean') throw protocolError('OPEN.exclusive must be a boolean');
      break;
    case 'WRITE':
    case 'READ':
    case 'HASH':
      int('handle');
      int('offset');
      int('length');
      algo();
      break;
    case 'FSYNC':
    case 'CLOSE':
      int('handle');
      break;
    case 'COPY_RANGE':
      str('from');
      int('handle');
      int('offset');
      int('length');
      algo();
      break;
    case 'SETSTAT':
      if (b.handle !== undefined) int('handle');
      else str('path');
      if (b.mode !== undefined) int('mode');
      if (b.mtimeMs !== undefined) int('mtimeMs');
      if (b.atimeMs !== undefined) int('atimeMs');
      if (b.size !== undefined) {
        int('size');
        if (b.handle === undefined) throw protocolError('SETSTAT.size needs a handle');
      }
      {
        const problem = entryMetaProblem(b, 'SETSTAT') ?? exactXattrsProblem(b.xattrsExact, 'SETSTAT');
        if (problem) throw protocolError(problem);
      }
      break;
    case 'STAT':
      str('path');
      break;
    case 'UNLINK':
      str('path');
      if (b.dir !== undefined && typeof b.dir !== 'boolean') throw protocolError('UNLINK: dir must be a boolean');
      break;
    case 'RENAME':
      str('from');
      str('to');
      if (b.handle !== undefined) int('handle');
      break;
    case 'ZEROS':
      int('length');
      if ((b.length as number) > ZERO_CHUNK.length) throw protocolError(`ZEROS of ${String(b.length)} bytes exceeds ${ZERO_CHUNK.length}`);
      break;
    case 'BATCH': {
      algo();
      const problem = batchEntriesProblem(b.entries);
      if (problem) throw protocolError(`BATCH.${problem}`);
      break;
    }
    case 'COMMIT': {
      const h = b.srcHashes;
      if (!Array.isArray(h) || h.length > MAX_BATCH_ENTRIES || !h.every((x) => x === null || (typeof x === 'string' && x.length > 0 && x.length <= 128))) {
        throw protocolError(`COMMIT.srcHashes must be a list of at most ${MAX_BATCH_ENTRIES} hashes (strings of at most 128 characters) or nils`);
      }
      break;
    }
    case 'WALK':
      str('root');
      if (!(b.root as string).startsWith('/')) throw protocolError('WALK.root must be an absolute path');
      for (const k of ['names', 'xattrs', 'acls']) optional(k, 'boolean');
      if (b.hash !== undefined && !isHashAlgorithm(b.hash)) throw protocolError(`WALK.hash must be one of ${HASH_ALGORITHMS.join(', ')}`);
      if (b.hashMaxBytes !== undefined && (typeof b.hashMaxBytes !== 'number' || !Number.isSafeInteger(b.hashMaxBytes) || b.hashMaxBytes < 0 || b.hashMaxBytes > MAX_WALK_HASH_BYTES)) throw protocolError(`WALK.hashMaxBytes must be an integer from 0 to ${MAX_WALK_HASH_BYTES}`);
      break;
    case 'GLOB':
      str('pattern');
      if (!(b.pattern as string).startsWith('/')) throw protocolError('GLOB.pattern must be an absolute path');
      break;
    case 'READ_BATCH': {
      algo();
      const problem = readBatchProblem(b.entries);
      if (problem) throw protocolError(`READ_BATCH.${problem}`);
      if (b.hashOnly !== undefined && typeof b.hashOnly !== 'boolean') throw protocolError('READ_BATCH.hashOnly must be a boolean');
      break;
    }
    case 'ENTRIES': {
      const items = b.items;
      if (!Array.isArray(items) || items.length > MAX_WALK_ITEMS) throw protocolError(`ENTRIES.items must be a list of at most ${MAX_WALK_ITEMS} items`);
      for (let i = 0; i < items.length; i++) {
        const problem = walkItemProblem(items[i], i);
        if (problem) throw protocolError(`ENTRIES.${problem}`);
      }
      break;
    }
    case 'OK': {
      for (const k of ['handle', 'size', 'bytes'] as const) optional(k, 'int');
      if (b.results !== undefined) {
        const r = b.results;
        if (!Array.isArray(r) || r.length > MAX_BATCH_ENTRIES) throw protocolError(`OK.results must be a list of at most ${MAX_BATCH_ENTRIES} results`);
        for (const x of r) {
          const good = isPlainMap(x) && ((x.ok === true && (x.hash === undefined || x.hash === null || typeof x.hash === 'string')) || (x.ok === false && isPlainMap(x.error) && typeof x.error.code === 'string' && typeof x.error.message === 'string'));
          if (!good) throw protocolError('OK.results must hold { ok: true, hash? } or { ok: false, error: { code, message } }');
          if (x.ok === false) {
            const e = x.error as Record<string, unknown>;
            for (const k of ['host', 'path', 'errno']) if (e[k] !== undefined && e[k] !== null && typeof e[k] !== 'string') throw protocolError(`OK.results error.${k} must be a string`);
          }
        }
      }
      for (const k of ['hash', 'directReason', 'pipesReason'] as const) optional(k, 'string');
      if (b.paths !== undefined && (!Array.isArray(b.paths) || !b.paths.every((p) => typeof p === 'string' && p.startsWith('/') && !p.includes('\0')))) throw protocolError('OK.paths must be a list of absolute paths');
      optional('direct', 'boolean');
      if (b.stat !== undefined) {
        const st = b.stat;
        if (!isPlainMap(st) || (st.type !== 'file' && st.type !== 'directory' && st.type !== 'other')) throw protocolError('OK.stat must be a map with a type of file, directory or other');
        for (const k of ['size', 'mode']) int(k, st, `stat.${k}`);
        // Times before 1970 are negative; inode and device numbers may be 64-bit (kept as the nearest number).
        for (const k of ['mtimeMs', 'ino', 'dev']) {
          if (typeof st[k] !== 'number' || !Number.isFinite(st[k])) throw protocolError(`OK.stat.${k} must be a number`);
        }
      }
      if (b.hello !== undefined) {
        const h = b.hello;
        if (!isPlainMap(h)) throw protocolError('OK.hello must be a map');
        int('version', h, 'hello.version');
        if (typeof h.software !== 'string' || !Array.isArray(h.capabilities) || !h.capabilities.every((c) => typeof c === 'string')) throw protocolError('OK.hello needs software and a list of capabilities');
        if (h.hub !== undefined && typeof h.hub !== 'string' && typeof h.hub !== 'boolean') throw protocolError('OK.hello.hub must be a path');
      }
      break;
    }
    case 'ERROR':
      if (typeof b.code !== 'string' || typeof b.message !== 'string') throw protocolError('ERROR needs code and message');
      optional('host', 'string');
      optional('path', 'string');
      optional('errno', 'string');
      optional('range', 'int');
      break;
  }
  return frame;
}

/**
 * Which side decodes: the helper takes requests, of which BATCH, COMMIT,
 * READ_BATCH and SETSTAT (a directory's attributes) may be up to MAX_BATCH_BODY_BYTES; the client takes answers, of
 * which OK (a COMMIT's or READ_BATCH's results) and ENTRIES (a walk's items)
 * may be that large. Everything else stays within MAX_CONTROL_BYTES.
 */
export type DecoderSide = 'helper' | 'client';

/** Largest control body of `type` that `side` accepts. */
export function maxControlBytes(type: FrameTypeName, side: DecoderSide): number {
  const large = side === 'helper' ? type === 'BATCH' || type === 'COMMIT' || type === 'READ_BATCH' || type === 'SETSTAT' : type === 'OK' || type === 'ENTRIES';
  return large ? MAX_BATCH_BODY_BYTES : MAX_CONTROL_BYTES;
}

/**
 * Incremental frame decoder. Feed it whatever the stream delivers; it calls
 * `onFrame` for each control frame and for each piece of a DATA body.
 */
export class FrameDecoder {
  private header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private type = 0;
  private id = 0;
  private bodyBytes = 0;
  private bodyLeft = 0;
  private control: Buffer | undefined;
  private controlFill = 0;

  constructor(
    private readonly onFrame: (frame: DecodedFrame) => void,
    private readonly side: DecoderSide = 'helper',
  ) {}

  /** True when no frame is partially received. */
  get idle(): boolean {
    return this.headerFill === 0 && this.bodyLeft === 0;
  }

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.bodyLeft === 0 && this.headerFill < FRAME_HEADER_BYTES) {
        const n = Math.min(FRAME_HEADER_BYTES - this.headerFill, chunk.length - at);
        chunk.copy(this.header, this.headerFill, at, at + n);
        this.headerFill += n;
        at += n;
        if (this.headerFill < FRAME_HEADER_BYTES) return;
        this.startFrame();
        continue;
      }
      const n = Math.min(this.bodyLeft, chunk.length - at);
      const piece = chunk.subarray(at, at + n);
      at += n;
      this.bodyLeft -= n;
      if (this.type === FrameType.DATA) {
        this.onFrame({ type: 'DATA', id: this.id, chunk: piece, frameBytes: this.bodyBytes, remaining: this.bodyLeft });
      } else {
        piece.copy(this.control!, this.controlFill);
        this.controlFill += n;
      }
      if (this.bodyLeft === 0) this.finishFrame();
    }
  }

  private startFrame(): void {
    const h = this.header;
    this.type = h.readUInt8(0);
    this.id = h.readUInt32BE(4);
    this.bodyBytes = h.readUInt32BE(8);
    this.bodyLeft = this.bodyBytes;
    const name = frameTypeName(this.type);
    if (name === undefined) throw protocolError(`unknown frame type ${this.type}`);
    if (h.readUInt8(1) !== 0 || h.readUInt16BE(2) !== 0) throw protocolError(`reserved header bits set in ${name} frame`);
    if (this.type === FrameType.DATA) {
      if (this.bodyBytes > MAX_DATA_FRAME_BYTES) throw protocolError(`DATA frame of ${this.bodyBytes} bytes exceeds ${MAX_DATA_FRAME_BYTES}`);
      if (this.bodyBytes === 0) {
        this.onFrame({ type: 'DATA', id: this.id, chunk: Buffer.alloc(0), frameBytes: 0, remaining: 0 });
        this.headerFill = 0;
      }
      return;
    }
    const limit = maxControlBytes(name, this.side);
    if (this.bodyBytes > limit) throw protocolError(`${name} frame body of ${this.bodyBytes} bytes exceeds ${limit}`);
    if (this.bodyBytes === 0) throw protocolError(`${name} frame has an empty body`);
    this.control = Buffer.allocUnsafe(this.bodyBytes);
    this.controlFill = 0;
  }

  private finishFrame(): void {
    this.headerFill = 0;
    if (this.type === FrameType.DATA) return;
    const name = frameTypeName(this.type)!;
    let body: unknown;
    try {
      body = decode(this.control!);
    } catch (err) {
      throw protocolError(`${name} body is not valid msgpack (${(err as Error).message})`);
    }
    this.control = undefined;
    this.onFrame(validate({ type: name, id: this.id, body } as ControlFrame));
  }
}
