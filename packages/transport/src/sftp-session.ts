/**
 * SFTP data path for hosts where `ferry serve` cannot run: pipelined writes and
 * reads at offsets with a bounded number of requests in flight (ssh2's SFTP has
 * no backpressure of its own), split at the server's maximum packet size so the
 * pieces go out concurrently instead of one after another.
 */
import type { Client, SFTPWrapper, Stats } from 'ssh2';
import { FerryError, destinationError } from '@ferry/core';
import type { StatResult } from '@ferry/core';
import { limitSendWindow, serverSoftware } from './send-window.js';
import type { SendWindow } from './send-window.js';

/** SFTP status codes (draft-ietf-secsh-filexfer-02) that ferry distinguishes. */
const SFTP_NO_SUCH_FILE = 2;
const SFTP_PERMISSION_DENIED = 3;
const SFTP_FAILURE = 4;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFDIR = 0o040000;

export function openSftp(client: Client): Promise<SFTPWrapper> {
  return new Promise((resolve, reject) => client.sftp((err, sftp) => (err ? reject(err) : resolve(sftp))));
}

/** Translates an SFTP status error into the errno-style code ferry's error mapping understands. */
export function sftpErrno(err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code;
  if (code === SFTP_NO_SUCH_FILE) return 'ENOENT';
  if (code === SFTP_PERMISSION_DENIED) return 'EACCES';
  if (code === SFTP_FAILURE) return 'EIO';
  return typeof code === 'string' ? code : undefined;
}

function withErrno(err: unknown): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  const errno = sftpErrno(err);
  if (errno) (e as NodeJS.ErrnoException).code = errno;
  return e;
}

export function statResult(stats: Stats): StatResult {
  const type = (stats.mode & S_IFMT) === S_IFREG ? 'file' : (stats.mode & S_IFMT) === S_IFDIR ? 'directory' : 'other';
  // SFTP v3 has no inode or device numbers and whole-second times.
  return { type, size: stats.size, mode: stats.mode & 0o7777, mtimeMs: stats.mtime * 1000, ino: 0, dev: 0, ...(typeof stats.uid === 'number' ? { uid: stats.uid } : {}) };
}

/** lstat's answer: a symbolic link is its own kind here. */
export function lstatResult(stats: Stats): StatResult & { link: boolean } {
  return { ...statResult(stats), link: (stats.mode & S_IFMT) === S_IFLNK };
}

function sftpAttrs(attrs: { mode?: number; mtimeMs?: number; atimeMs?: number; uid?: number; gid?: number }): Record<string, number> {
  const a: Record<string, number> = {};
  if (attrs.mode !== undefined) a.mode = attrs.mode;
  // SFTP sets owner and group together (numbers only: SFTP v3 has no names).
  if (attrs.uid !== undefined || attrs.gid !== undefined) {
    a.uid = attrs.uid ?? -1;
    a.gid = attrs.gid ?? -1;
  }
  if (attrs.mtimeMs !== undefined) {
    a.mtime = Math.floor(attrs.mtimeMs / 1000);
    a.atime = Math.floor((attrs.atimeMs ?? attrs.mtimeMs) / 1000);
  }
  return a;
}

function cb<T>(fn: (done: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(withErrno(err)) : resolve(value as T))));
}

export interface RangeIo {
  /** Bytes in flight per range at most. */
  windowBytes: number;
}

/** A promise-based view of one SFTP session, with the pipelined range operations. */
export class SftpSession {
  readonly maxWriteBytes: number;
  readonly maxReadBytes: number;

  constructor(readonly sftp: SFTPWrapper, readonly label: string) {
    const internal = sftp as unknown as { _maxWriteLen?: number; _maxReadLen?: number };
    this.maxWriteBytes = internal._maxWriteLen ?? 32 * 1024;
    this.maxReadBytes = internal._maxReadLen ?? 32 * 1024;
  }

  /** What `limitSendWindow` applied to the SFTP channel, if anything. */
  sendWindow: SendWindow | undefined;

  /** Starts the SFTP subsystem; `sendWindowBytes` caps the data in flight to the server (0: its whole window). */
  static async open(client: Client, label: string, sendWindowBytes = 0): Promise<SftpSession> {
    try {
      const sftp = await openSftp(client);
      const session = new SftpSession(sftp, label);
      session.sendWindow = limitSendWindow(sftp, serverSoftware(client), sendWindowBytes);
      return session;
    } catch (err) {
      throw new FerryError('CONNECTION_LOST', `cannot start the SFTP subsystem on ${label}: ${(err as Error).message} (is 'Subsystem sftp' enabled in its sshd_config?)`, { host: label, cause: err });
    }
  }

  stat(path: string): Promise<StatResult> {
    return cb<Stats>((d) => this.sftp.stat(path, d)).then(statResult);
  }

  lstat(path: string): Promise<StatResult & { link: boolean }> {
    return cb<Stats>((d) => this.sftp.lstat(path, d)).then(lstatResult);
  }

  fstat(handle: Buffer): Promise<StatResult> {
    return cb<Stats>((d) => this.sftp.fstat(handle, d)).then(statResult);
  }

  /** Mode and times of an open file (fsetstat): the file itself, whatever its name points at now. */
  fsetstat(handle: Buffer, attrs: { mode?: number; mtimeMs?: number; atimeMs?: number; uid?: number; gid?: number }): Promise<void> {
    return cb<void>((d) => this.sftp.fsetstat(handle, sftpAttrs(attrs) as never, d));
  }

  /** 'wx': SSH_FXF_CREAT|EXCL (sftp-server: O_CREAT|O_EXCL, which also refuses a symbolic link at the name); 'xw+' reads too. */
  open(path: string, flags: 'r' | 'r+' | 'w' | 'wx' | 'xw+', mode?: number): Promise<Buffer> {
    return cb<Buffer>((d) => this.sftp.open(path, flags, mode === undefined ? {} : { mode }, d));
  }

  close(handle: Buffer): Promise<void> {
    return cb<void>((d) => this.sftp.close(handle, d));
  }

  truncate(handle: Buffer, size: number): Promise<void> {
    return cb<void>((d) => this.sftp.fsetstat(handle, { size } as never, d));
  }

  /** Whether the server offers the `copy-data` extension (OpenSSH's sftp-server since 9.0): a range copied between two open files on its host. */
  get canCopyData(): boolean {
    return (this.sftp as unknown as { _extensions?: Record<string, string> })._extensions?.['copy-data'] === '1';
  }

  /** `copy-data`: [srcOffset, srcOffset + length) of `src` into `dst` at `dstOffset`, on the server's host. */
  copyData(src: Buffer, srcOffset: number, length: number, dst: Buffer, dstOffset: number): Promise<void> {
    return cb<void>((d) => this.sftp.ext_copy_data(src, srcOffset, length, dst, dstOffset, d));
  }

  fsync(handle: Buffer): Promise<void> {
    return cb<void>((d) => this.sftp.ext_openssh_fsync(handle, d));
  }

  setstat(path: string, attrs: { mode?: number; mtimeMs?: number; atimeMs?: number }): Promise<void> {
    return cb<void>((d) => this.sftp.setstat(path, sftpAttrs(attrs) as never, d));
  }

  /** Atomic replace (posix-rename@openssh.com), as rename(2); plain SFTP rename refuses to overwrite. */
  rename(from: string, to: string): Promise<void> {
    return cb<void>((d) => this.sftp.ext_openssh_rename(from, to, d)).catch(async (err: unknown) => {
      if (!/not supported/i.test((err as Error).message)) throw err;
      return cb<void>((d) => this.sftp.rename(from, to, d));
    });
  }

  mkdir(path: string, mode: number): Promise<void> {
    return cb<void>((d) => this.sftp.mkdir(path, { mode } as never, d));
  }

  /** A symbolic link at `linkPath` holding `target` (ssh2 swaps the arguments for OpenSSH's sftp-server, which has them reversed). */
  symlink(target: string, linkPath: string): Promise<void> {
    return cb<void>((d) => this.sftp.symlink(target, linkPath, d));
  }

  /** A further name `newPath` of the file at `oldPath` (hardlink@openssh.com). */
  hardlink(oldPath: string, newPath: string): Promise<void> {
    return cb<void>((d) => this.sftp.ext_openssh_hardlink(oldPath, newPath, d));
  }

  /**
   * Mode, times or owner of what is at `path` itself, never through a link
   * there (lsetstat@openssh.com, OpenSSH 8.0 and later); throws where the
   * server lacks it, and for a mode where its C library cannot change one
   * without following (glibc before 2.32: RHEL 8).
   */
  lsetstat(path: string, attrs: { mode?: number; mtimeMs?: number; atimeMs?: number; uid?: number; gid?: number }): Promise<void> {
    return cb<void>((d) => this.sftp.ext_openssh_lsetstat(path, sftpAttrs(attrs) as never, d));
  }

  unlink(path: string): Promise<void> {
    return cb<void>((d) => this.sftp.unlink(path, d));
  }

  rmdir(path: string): Promise<void> {
    return cb<void>((d) => this.sftp.rmdir(path, d));
  }

  realpath(path: string): Promise<string> {
    return cb<string>((d) => this.sftp.realpath(path, d));
  }

  /** Free bytes for unprivileged users, and whether it is mounted read-only, for the filesystem holding `path`, when the server says. */
  async fsInfo(path: string): Promise<{ freeBytes: number; readOnly: boolean } | undefined> {
    try {
      const st = await cb<{ f_bavail: number; f_frsize: number; f_flag: number }>((d) => this.sftp.ext_openssh_statvfs(path, d as never));
      // ST_RDONLY is bit 0 of f_flag.
      return { freeBytes: st.f_bavail * st.f_frsize, readOnly: (st.f_flag & 1) !== 0 };
    } catch {
      return undefined;
    }
  }

  /**
   * Writes `buf[start, end)` at `position` as concurrent requests of at most
   * maxWriteBytes. ssh2 copies the data into its packets at once, so `buf` may be
   * reused as soon as this returns; the promise settles when the server answered.
   */
  writeAt(handle: Buffer, buf: Buffer, start: number, end: number, position: number): Promise<void> {
    const parts: Array<Promise<void>> = [];
    for (let at = start; at < end; at += this.maxWriteBytes) {
      const n = Math.min(this.maxWriteBytes, end - at);
      const pos = position + (at - start);
      parts.push(cb<void>((d) => this.sftp.write(handle, buf, at, n, pos, d)));
    }
    return parts.length === 1 ? parts[0]! : Promise.all(parts).then(() => undefined);
  }

  /** Reads exactly `length` bytes at `position` into `buf[start...]`, with concurrent requests. */
  async readAt(handle: Buffer, buf: Buffer, start: number, length: number, position: number): Promise<void> {
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < length; at += this.maxReadBytes) {
      parts.push(this.readExactly(handle, buf, start + at, Math.min(this.maxReadBytes, length - at), position + at));
    }
    await Promise.all(parts);
  }

  private async readExactly(handle: Buffer, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
    let done = 0;
    while (done < len) {
      const n = await cb<number>((d) => this.sftp.read(handle, buf, off + done, len - done, pos + done, (err, bytes) => d(err, bytes)));
      if (!n) throw new FerryError('SOURCE_CHANGED', `${this.label}: file ended at ${pos + done} while reading a range that should reach ${pos + len}: the source shrank`, { host: this.label });
      done += n;
    }
  }
}

/**
 * Maps an SFTP failure while writing `path` to a FerryError. SFTP v3 reports a
 * full disk or a read-only mount as a bare SSH_FX_FAILURE; statvfs tells them apart.
 */
export async function sftpWriteError(session: SftpSession, err: unknown, path: string): Promise<FerryError> {
  if (err instanceof FerryError) return err;
  const errno = sftpErrno(err);
  if (errno === 'EIO') {
    const dir = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) || '/' : '.';
    const fs = await session.fsInfo(dir);
    if (fs?.readOnly) return destinationError(Object.assign(new Error('read-only file system'), { code: 'EROFS' }), { host: session.label, path });
    if (fs && fs.freeBytes < 4 * 1024 * 1024) return destinationError(Object.assign(new Error('no space'), { code: 'ENOSPC' }), { host: session.label, path });
  }
  return destinationError(withErrno(err), { host: session.label, path });
}
