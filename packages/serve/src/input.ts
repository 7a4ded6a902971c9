/**
 * The helper's input, read into buffers of ours rather than fresh ones.
 *
 * A stream read from a pipe gets a fresh 64 KiB buffer for every read;
 * allocating, faulting in and collecting those buffers doubled the CPU cost of
 * reading the pipe (0.9 against 0.4 s per GiB on a VM where the first touch of
 * a page goes to the hypervisor), paid by each of 16 helpers on 2 cores.
 * Node's `onread` reads into a buffer of ours instead; the socket re-emits each
 * read as a 'data' event on itself, so `serve()` reads it like any stream, with
 * one rule: a chunk is valid only until its 'data' handler returns (serve
 * hashes and copies DATA synchronously, and the frame decoder copies headers
 * and control bodies).
 *
 * Where the next read goes is asked before each read (`target`): serve points
 * it into the write buffer of the upload whose DATA is arriving, so the bytes
 * land where they are written from instead of being copied there (a third of
 * a helper's main thread in a loopback push), and at a frame boundary asks for
 * the header alone, so the body after it is not read into the reused buffer.
 */
import { Socket } from 'node:net';
import type { OnReadOpts, SocketConstructorOpts } from 'node:net';

/** Where the next read of the input goes: a buffer it may fill up to its length, `reused` or a view of it, or another (an empty one means `reused`). */
export type ReadTarget = (reused: Buffer) => Buffer;

/** A pipe or socket read into one reused buffer, or into the buffer `target` names for each read. */
export class ReusedBufferInput extends Socket {
  /** Asked before each read; set by serve(). */
  target: ReadTarget | undefined;
  /** Bytes read into a buffer `target` gave other than the reused one. */
  placedBytes = 0;

  constructor(fd: number, bufferBytes = 128 * 1024) {
    const reused = Buffer.allocUnsafe(bufferBytes);
    let input: ReusedBufferInput | undefined;
    // Node 20 takes onread in the constructor; @types/node lists it for connect() only.
    const options: SocketConstructorOpts & { onread: OnReadOpts } = {
      fd,
      readable: true,
      writable: false,
      onread: {
        // Called once here, before `input` is set, then after every read. An empty buffer
        // would fail the read (ENOBUFS): the reused one takes it.
        buffer: () => {
          const b = input?.target?.(reused);
          return b !== undefined && b.length > 0 ? b : reused;
        },
        callback: (n: number, buf: Uint8Array) => {
          if (buf.buffer !== reused.buffer) input!.placedBytes += n;
          input!.emit('data', (buf as Buffer).subarray(0, n));
          return true;
        },
      },
    };
    super(options);
    input = this;
  }
}

/** Wraps a pipe or socket `fd` for reading into one buffer of `bufferBytes` (a pipe gives at most 64 KiB per read). */
export function reusedBufferInput(fd: number, bufferBytes = 128 * 1024): ReusedBufferInput {
  return new ReusedBufferInput(fd, bufferBytes);
}
