/**
 * The helper's input, read into one reused buffer.
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
 */
import { Socket } from 'node:net';
import type { OnReadOpts, SocketConstructorOpts } from 'node:net';
import type { Readable } from 'node:stream';

/**
 * Wraps a pipe or socket `fd` for reading into one buffer of `bufferBytes`.
 * A read takes what the pipe holds, up to the buffer: 1 MiB matches the pipes
 * the helper asks for (pipes.ts); with them a loopback push moved 1.07x as
 * much as with 128 KiB, at 0.91x the CPU per GB (bench/README.md, "The
 * helper's pipes").
 */
export function reusedBufferInput(fd: number, bufferBytes = 1024 * 1024): Readable {
  const buffer = Buffer.allocUnsafe(bufferBytes);
  // Node 20 takes onread in the constructor; @types/node lists it for connect() only.
  const options: SocketConstructorOpts & { onread: OnReadOpts } = {
    fd,
    readable: true,
    writable: false,
    onread: {
      buffer,
      callback: (n: number) => {
        socket.emit('data', buffer.subarray(0, n));
        return true;
      },
    },
  };
  const socket: Socket = new Socket(options);
  return socket;
}
