/**
 * Positional writes that finish: `FileHandle.write` may write less than asked
 * (a signal, a full pipe of a FUSE file system), so every writer of ferry
 * (helper, agent, journal) loops until all of it is on the file.
 */
import type { FileHandle } from 'node:fs/promises';
import { ZERO_CHUNK, isAllZero } from './protocol.js';

/** Writes `length` bytes of `data` (from its start) at `position`, however many calls that takes. */
export async function pwriteAll(fh: FileHandle, data: Uint8Array, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await fh.write(data, done, length - done, position + done);
    done += bytesWritten;
  }
}

/**
 * Makes `length` bytes (at most ZERO_CHUNK's 1 MiB) at `position` read as
 * zeros, writing them only where they do not already (a fresh sparse file
 * does): a run of zeros sent over the wire costs no write and allocates no
 * blocks. `scratch` (at least `length` bytes) receives the current contents.
 */
export async function ensureZeroed(fh: FileHandle, scratch: Buffer, length: number, position: number): Promise<void> {
  const { bytesRead } = await fh.read(scratch, 0, length, position);
  if (bytesRead < length || !isAllZero(scratch.subarray(0, length))) await pwriteAll(fh, ZERO_CHUNK, length, position);
}
