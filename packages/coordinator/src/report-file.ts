/**
 * A file the user named for a report (`ferry check --combined FILE`): written
 * as the shell's `>` would (an existing file of the user's is emptied and
 * written over, mode 0666 less the umask for a new one), but never through a
 * symbolic link at the name, never into a file of another user or one with
 * further names (what someone could plant in a shared directory such as
 * /tmp), never into a directory or fifo. Character devices (/dev/null,
 * /dev/stdout) are written as they are.
 *
 * ```ts
 * const f = await openReportFile('differ.txt');
 * f.write('a/b.dat\n');
 * await f.close();
 * ```
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { FerryError, errnoOf } from '@ferry/core';

export interface ReportFile {
  readonly path: string;
  /** Queues text; written in the background in pieces of some 64 KiB. */
  write(text: string): void;
  /** Writes what is queued and closes; rejects with the first write error. */
  close(): Promise<void>;
}

const FLUSH_BYTES = 64 * 1024;

/** Opens `path` for a report; `what` names the option for messages (`--differ`). */
export async function openReportFile(path: string, what: string): Promise<ReportFile> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o666);
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === 'ELOOP') throw new FerryError('USAGE', `${what} ${path} is a symbolic link, which ferry does not write through: remove it or name another file`, { path });
    throw new FerryError('USAGE', `${what} ${path} cannot be written (${errno ?? (err as Error).message}): name a file in a directory you can write`, { path, cause: err });
  }
  try {
    const st = await fh.stat();
    const uid = process.getuid?.();
    if (st.isFile()) {
      if (uid !== undefined && st.uid !== uid) throw new FerryError('USAGE', `${what} ${path} belongs to uid ${st.uid}, not you (uid ${uid}): ferry does not write over another user's file; name another file`, { path });
      if (st.nlink > 1) throw new FerryError('USAGE', `${what} ${path} has ${st.nlink} names (hard links): ferry does not write over a file that is also elsewhere; remove it or name another file`, { path });
      await fh.truncate(0);
    } else if (!st.isCharacterDevice()) {
      throw new FerryError('USAGE', `${what} ${path} is not a regular file: name a file`, { path });
    }
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
  let queued: string[] = [];
  let queuedBytes = 0;
  let failure: unknown;
  let chain: Promise<void> = Promise.resolve();
  const flush = () => {
    if (queued.length === 0) return;
    const text = queued.join('');
    queued = [];
    queuedBytes = 0;
    chain = chain.then(async () => {
      if (failure === undefined) await fh.write(text).catch((err: unknown) => void (failure = err));
    });
  };
  return {
    path,
    write(text) {
      queued.push(text);
      queuedBytes += text.length;
      if (queuedBytes >= FLUSH_BYTES) flush();
    },
    async close() {
      flush();
      await chain;
      await fh.close();
      if (failure !== undefined) throw new FerryError('USAGE', `${what} ${path} could not be written (${errnoOf(failure) ?? (failure as Error).message})`, { path, cause: failure });
    },
  };
}
