/**
 * One error class with a stable `code`. Codes cross NATS and the helper protocol
 * as data, so the code (not the message text) is the contract; exit codes map
 * from codes. Exit codes are grouped by tens so scripts can test the class:
 * 1x source, 2x destination, 3x authentication and host keys, 4x network,
 * 5x verification, 6x environment, 7x job.
 */

export type ErrorCode =
  | 'USAGE'
  | 'SOURCE_NOT_FOUND'
  | 'SOURCE_UNREADABLE'
  | 'SOURCE_CHANGED'
  | 'DEST_DIR_MISSING'
  | 'DEST_NOT_WRITABLE'
  | 'DEST_NO_SPACE'
  | 'DEST_IO'
  | 'DEST_REPLACED'
  /** Something of another kind is in the way at the destination (a directory where a file goes, a file where a directory goes). */
  | 'DEST_CONFLICT'
  | 'SSH_AUTH_FAILED'
  | 'HOST_KEY_UNKNOWN'
  | 'HOST_KEY_CHANGED'
  | 'HOST_UNREACHABLE'
  | 'CONNECTION_LOST'
  | 'NATS_UNREACHABLE'
  | 'VERIFY_FAILED'
  /** The bytes the destination received hash differently from what was sent (corrupted on the way): sending them again may succeed. */
  | 'HASH_MISMATCH'
  /** `ferry check`: some entry differs between the two sides, or is on one side only. */
  | 'COPIES_DIFFER'
  /** `ferry check`: no difference found, but some entries could not be compared (unreadable, vanished). */
  | 'CHECK_INCOMPLETE'
  | 'NATS_SERVER_MISSING'
  | 'HELPER_UNAVAILABLE'
  /** A socket where a shared helper should be did not prove it knows the job's secret: someone else may be listening there. */
  | 'HELPER_UNTRUSTED'
  | 'PROTOCOL'
  | 'SSH_CLIENT_MISSING'
  | 'AGENTS_FAILED'
  | 'RANGE_FAILED'
  /** A tree copy ended with some entries not copied (failed.ndjson lists them); the rest arrived. */
  | 'TREE_PARTIAL'
  | 'INTERRUPTED'
  | 'INTERNAL';

export const EXIT_CODES: Readonly<Record<ErrorCode, number>> = {
  INTERNAL: 1,
  USAGE: 2,
  SOURCE_NOT_FOUND: 10,
  SOURCE_UNREADABLE: 11,
  SOURCE_CHANGED: 12,
  DEST_DIR_MISSING: 20,
  DEST_NOT_WRITABLE: 21,
  DEST_NO_SPACE: 22,
  DEST_IO: 23,
  DEST_REPLACED: 24,
  DEST_CONFLICT: 25,
  SSH_AUTH_FAILED: 30,
  HOST_KEY_UNKNOWN: 31,
  HOST_KEY_CHANGED: 32,
  HOST_UNREACHABLE: 40,
  CONNECTION_LOST: 41,
  NATS_UNREACHABLE: 42,
  VERIFY_FAILED: 50,
  HASH_MISMATCH: 51,
  COPIES_DIFFER: 53,
  CHECK_INCOMPLETE: 54,
  NATS_SERVER_MISSING: 60,
  HELPER_UNAVAILABLE: 61,
  HELPER_UNTRUSTED: 64,
  PROTOCOL: 62,
  SSH_CLIENT_MISSING: 63,
  AGENTS_FAILED: 70,
  RANGE_FAILED: 71,
  TREE_PARTIAL: 72,
  INTERRUPTED: 130,
};

/** Errors that a later attempt (another connection, another agent, a rerun) may not see again. */
const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['CONNECTION_LOST', 'HOST_UNREACHABLE', 'NATS_UNREACHABLE', 'DEST_IO', 'HASH_MISMATCH']);

export interface FerryErrorFields {
  host?: string;
  path?: string;
  range?: number;
  /** errno name (ENOENT, ENOSPC, ...) of the system error behind this one. */
  errno?: string;
  cause?: unknown;
}

/** The plain-data form of an error, as it travels between processes. */
export interface ErrorData {
  code: ErrorCode;
  message: string;
  host?: string;
  path?: string;
  range?: number;
  errno?: string;
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly host: string | undefined;
  readonly path: string | undefined;
  readonly range: number | undefined;
  readonly errno: string | undefined;

  constructor(code: ErrorCode, message: string, fields: FerryErrorFields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = 'FerryError';
    this.code = code;
    this.host = fields.host;
    this.path = fields.path;
    this.range = fields.range;
    this.errno = fields.errno ?? errnoOf(fields.cause);
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }

  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }

  toData(): ErrorData {
    const data: ErrorData = { code: this.code, message: this.message };
    if (this.host !== undefined) data.host = this.host;
    if (this.path !== undefined) data.path = this.path;
    if (this.range !== undefined) data.range = this.range;
    if (this.errno !== undefined) data.errno = this.errno;
    return data;
  }

  static fromData(data: ErrorData): FerryError {
    const code = isErrorCode(data.code) ? data.code : 'INTERNAL';
    const fields: FerryErrorFields = {};
    if (data.host !== undefined) fields.host = data.host;
    if (data.path !== undefined) fields.path = data.path;
    if (data.range !== undefined) fields.range = data.range;
    if (typeof data.errno === 'string') fields.errno = data.errno;
    return new FerryError(code, String(data.message), fields);
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(EXIT_CODES, value);
}

/** Any thrown value as a FerryError; unknown errors become INTERNAL with the original as cause. */
export function toFerryError(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FerryError('INTERNAL', message, { cause: err });
}

export function exitCodeOf(err: unknown): number {
  return toFerryError(err).exitCode;
}

/** Node errno code (ENOENT, ENOSPC, ...) of a system error, if it has one. */
export function errnoOf(err: unknown): string | undefined {
  if (err instanceof FerryError) return err.errno;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/**
 * Maps a system error met while writing the destination to a FerryError naming
 * where it happened and what to do.
 */
export function destinationError(err: unknown, where: { host?: string; path: string }): FerryError {
  if (err instanceof FerryError) return err;
  const errno = errnoOf(err);
  const at = where.host ? `${where.host}:${where.path}` : where.path;
  const fields: FerryErrorFields = { path: where.path, cause: err };
  if (errno !== undefined) fields.errno = errno;
  if (where.host !== undefined) fields.host = where.host;
  switch (errno) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new FerryError('DEST_NO_SPACE', `no space left on the destination filesystem writing ${at}: free space (or raise the quota) and rerun the same command to resume`, fields);
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new FerryError('DEST_NOT_WRITABLE', `permission denied writing ${at}: choose a directory you can write to, or fix its permissions`, fields);
    case 'ENOENT':
      return new FerryError('DEST_DIR_MISSING', `destination directory of ${at} does not exist: create it first (ferry does not create directories)`, fields);
    case 'ENOTDIR':
      return new FerryError('DEST_DIR_MISSING', `destination ${at} cannot be written: a component of its directory is not a directory: choose a destination in an existing directory`, fields);
    default: {
      const detail = err instanceof Error ? err.message : String(err);
      return new FerryError('DEST_IO', `I/O error writing ${at}: ${detail}`, fields);
    }
  }
}

/**
 * Maps a system error met while reading the source to a FerryError naming
 * where it happened. (ENOENT: gone or never there; EACCES/EPERM: unreadable.)
 */
export function sourceError(err: unknown, where: { host?: string; path: string }): FerryError {
  if (err instanceof FerryError) return err;
  const errno = errnoOf(err);
  const at = where.host ? `${where.host}:${where.path}` : where.path;
  const fields: FerryErrorFields = { path: where.path, cause: err };
  if (errno !== undefined) fields.errno = errno;
  if (where.host !== undefined) fields.host = where.host;
  if (errno === 'ENOENT') return new FerryError('SOURCE_NOT_FOUND', `no such file: ${at}`, fields);
  if (errno === 'EACCES' || errno === 'EPERM') return new FerryError('SOURCE_UNREADABLE', `permission denied reading ${at}`, fields);
  return new FerryError('DEST_IO', `${err instanceof Error ? err.message : String(err)}`, fields);
}
