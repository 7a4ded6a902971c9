/**
 * Files only the user may write or read, in directories that may be shared:
 * the job's state files and the rendezvous file of a multi-node launch
 * (which holds the job's NATS token).
 *
 * Writing goes through a temporary name beside the file that nobody can
 * guess, created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600, then renamed
 * over it: a name planted in advance (a link to another of the user's files,
 * a file another user can read) is never opened, and readers never see half
 * a file. Reading refuses what another user could have written or can read.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FerryError, errnoOf } from '@ferry/core';

function modeText(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Writes `text` to `path` through an unguessable O_EXCL|O_NOFOLLOW temporary name (mode 0600) and a rename. */
export async function writePrivateFile(path: string, text: string): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(8).toString('hex')}.tmp`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
}

/**
 * Throws (USAGE) when `dir` is not the user's own, or others may write it (a
 * file in it could be replaced): `what` names the file for the message.
 */
export async function checkPrivateDir(dir: string, what: string, fix: string): Promise<void> {
  const st = await lstat(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory()) throw new FerryError('USAGE', `${what}: ${dir} is not a directory (a link?): ${fix}`, { path: dir });
  if (uid !== undefined && st.uid !== uid) throw new FerryError('USAGE', `${what}: directory ${dir} belongs to uid ${st.uid}, not you (uid ${uid}), so its files cannot be trusted: ${fix}`, { path: dir });
  if ((st.mode & 0o022) !== 0) throw new FerryError('USAGE', `${what}: directory ${dir} has mode ${modeText(st.mode)}, so others can replace its files: ${fix}, or chmod go-w ${dir}`, { path: dir });
}

/**
 * The text of `path`, which must be a regular file (not a link) of the user's
 * that nobody else can read or write; undefined when there is none. Throws
 * (USAGE) when it is another's or open to others.
 */
export async function readPrivateFile(path: string, what: string, fix: string): Promise<string | undefined> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    if (errnoOf(err) === 'ELOOP') throw new FerryError('USAGE', `${what}: ${path} is a symbolic link, which ferry does not follow here: ${fix}`, { path });
    throw err;
  }
  try {
    const st = await fh.stat();
    const uid = process.getuid?.();
    if (!st.isFile()) throw new FerryError('USAGE', `${what}: ${path} is not a regular file: ${fix}`, { path });
    if (uid !== undefined && st.uid !== uid) throw new FerryError('USAGE', `${what}: ${path} belongs to uid ${st.uid}, not you (uid ${uid}): ${fix}`, { path });
    if ((st.mode & 0o077) !== 0) throw new FerryError('USAGE', `${what}: ${path} has mode ${modeText(st.mode)}, so others can read or change it: ${fix}, or chmod 600 ${path}`, { path });
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}
