/**
 * How much an ssh2 channel we read from may hold while its reader is paused.
 *
 * ssh2 gives every channel a 2 MiB window and re-opens it (WINDOW_ADJUST) as
 * it hands data on, until its readable buffer reaches the stream's
 * high-water mark, which ssh2 also sets to 2 MiB. A paused reader (a pull
 * whose disk lags, pump.ts) therefore leaves up to 2 MiB queued in the
 * channel plus what was left of the window, 3 MiB in practice, held as views
 * of ssh2's packet buffers. One agent pulling with 16 streams held ~60 MiB
 * that way and peaked at 250-274 MiB (bench/README.md, "A pull's memory").
 *
 * With a small mark ssh2 stops re-opening the window as soon as the reader
 * pauses, so a paused channel holds at most the window plus the mark. A
 * reader that keeps up has no backlog, so the mark costs it nothing; when a
 * paused reader resumes, the stream asks ssh2 for more (Channel._read) once
 * its buffer is below the mark, and ssh2 re-opens the window then.
 */
export const CHANNEL_READ_BUFFER_BYTES = 64 * 1024;

interface ReadableInternals {
  _readableState?: { highWaterMark?: unknown };
}

/**
 * Lowers the high-water mark of a freshly opened ssh2 channel's readable side
 * to `bytes`. Returns whether it did: not for a channel whose mark is already
 * that low, or an object without Node's readable state.
 */
export function limitReadBuffer(channel: object, bytes = CHANNEL_READ_BUFFER_BYTES): boolean {
  const state = (channel as ReadableInternals)._readableState;
  if (!state || typeof state.highWaterMark !== 'number' || state.highWaterMark <= bytes) return false;
  state.highWaterMark = bytes;
  return true;
}
