/**
 * The destination's temporary file, as data: its name, what identifies it, the
 * check that a file found at its name is still it, and the mode it ends with.
 *
 * In a directory others can write (a group-writable project directory), the
 * name of a temporary file is no promise: another user can plant a symbolic
 * link or a file of their own there before it is created, or swap it while a
 * copy runs. So the file is created new (O_CREAT|O_EXCL|O_NOFOLLOW) under a
 * random name, its identity (inode, owner) is kept in the job, and every later
 * open by name (agents, resume, the final rename) checks it found that file.
 *
 * ```ts
 * const problem = identityProblem({ ino: 12, uid: 1000 }, st);
 * if (problem) throw replacedError('host:/proj/.x.part', problem);
 * ```
 */
import { posix } from 'node:path';
import { FerryError } from './errors.js';
import type { FerryErrorFields } from './errors.js';

/** HELLO capability of helpers that create exclusively, open without following links, answer OPEN with fstat, and set modes and rename by handle. */
export const SAFE_FILES_CAPABILITY = 'safe-files';

/** Test hook: the random part of the first temporary name a job tries (so a test can plant something there first). Unset in real use. */
export const TEMP_TOKEN_ENV = 'FERRY_TEST_TEMP_TOKEN';

/** What identifies the temporary file a job created. */
export interface FileIdentity {
  ino: number;
  /** Its owner: the user ferry runs as on that side. */
  uid: number;
  /**
   * Kept for messages, never compared: st_dev of one file differs between the
   * clients of a shared file system (NFS, Lustre) and between the hosts behind
   * one name, and an agent or a resume may run on any of them.
   */
  dev?: number;
  /** Its size: the copy's, from creation on. Where there is no inode number (SFTP) it tells a swapped file too. */
  size?: number;
}

/** What fstat (or lstat) said of a file found at the temporary name. */
export interface FoundFile {
  type: 'file' | 'directory' | 'other';
  ino: number;
  dev: number;
  uid?: number;
  nlink?: number;
  size?: number;
  /** lstat found a symbolic link there (open with O_NOFOLLOW fails with ELOOP instead). */
  link?: boolean;
}

/** The identity to keep of a file just created. */
export function identityOf(st: { ino: number; dev: number; uid?: number; size: number }): FileIdentity {
  if (st.uid === undefined) throw new FerryError('INTERNAL', 'a created file was reported without its owner');
  return { ino: st.ino, uid: st.uid, dev: st.dev, size: st.size };
}

/**
 * Why `found` is not the file `expected` names, in words for an error
 * message ("a symbolic link", "a file owned by uid 1001", ...), or undefined
 * when it is. A second hard link counts as not it: someone could then read or
 * change the data through the other name.
 */
export function identityProblem(expected: FileIdentity, found: FoundFile): string | undefined {
  if (found.link) return 'a symbolic link';
  if (found.type === 'directory') return 'a directory';
  if (found.type !== 'file') return 'something that is not a regular file';
  if (found.uid !== undefined && found.uid !== expected.uid) return `a file owned by uid ${found.uid}, not uid ${expected.uid}`;
  if (found.ino !== expected.ino) return `another file (inode ${found.ino}, not ${expected.ino})`;
  if (expected.size !== undefined && found.size !== undefined && found.size !== expected.size) return `a file of ${found.size} bytes, not ${expected.size}`;
  if (found.nlink !== undefined && found.nlink !== 1) return `the file, but with ${found.nlink} names (hard links)`;
  return undefined;
}

/**
 * The error for a temporary file that is not the one ferry created: what was
 * found and what to do. `place` is `host:path` or a local path.
 */
export function replacedError(place: string, problem: string, fields: FerryErrorFields = {}): FerryError {
  return new FerryError(
    'DEST_REPLACED',
    `the partial file ${place} is not the file ferry created: found ${problem}. Another user who can write in its directory may have replaced it; nothing was renamed into place and the job is kept. Check who can write in that directory, move the file away, and rerun with --restart`,
    { path: place, ...fields },
  );
}

/**
 * A destination file's mode, as scp sets it: with -p the source's mode;
 * without, its permission bits limited by the destination's umask (set-id and
 * sticky bits dropped, as scp over SFTP does).
 */
export function copyMode(sourceMode: number, umask: number, preserve: boolean): number {
  return preserve ? sourceMode & 0o7777 : sourceMode & 0o777 & ~umask;
}

/**
 * `.NAME.ferry-TOKEN.part` next to the target. TOKEN is random (the caller
 * draws it: core does no I/O), so another user cannot know the name before
 * the file exists; the job keeps it for a resume.
 */
export function tempNameFor(targetPath: string, token: string, pathApi: typeof posix = posix): string {
  return pathApi.join(pathApi.dirname(targetPath), `.${pathApi.basename(targetPath)}.ferry-${token}.part`);
}
