import { allocAligned } from './direct.js';

/**
 * A fixed pool of equal buffers for the data path. `acquire()` waits when all
 * are out, which is what bounds an agent's memory whatever the file size: a
 * reader that runs ahead of the network simply waits for a buffer.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(buf: Buffer) => void> = [];
  readonly bufferBytes: number;
  readonly count: number;

  /** Whether every buffer starts page-aligned, as O_DIRECT writes need (see allocAligned). */
  readonly aligned: boolean;

  constructor(bufferBytes: number, count: number, options: { aligned?: boolean } = {}) {
    if (!Number.isInteger(bufferBytes) || bufferBytes <= 0) throw new RangeError(`buffer size must be positive, got ${bufferBytes}`);
    if (!Number.isInteger(count) || count <= 0) throw new RangeError(`buffer count must be positive, got ${count}`);
    this.bufferBytes = bufferBytes;
    this.count = count;
    const aligned = options.aligned === true ? allocAligned(count, bufferBytes) : undefined;
    this.aligned = aligned !== undefined;
    if (aligned) this.free.push(...aligned);
    else for (let i = 0; i < count; i++) this.free.push(Buffer.allocUnsafeSlow(bufferBytes));
  }

  /** Buffers currently handed out. */
  get inUse(): number {
    return this.count - this.free.length;
  }

  acquire(): Promise<Buffer> {
    const buf = this.free.pop();
    if (buf) return Promise.resolve(buf);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  tryAcquire(): Buffer | undefined {
    return this.free.pop();
  }

  release(buf: Buffer): void {
    if (buf.length !== this.bufferBytes) throw new RangeError('buffer returned to the wrong pool');
    // A double release would hand one buffer to two users: the classic corruption bug.
    if (this.free.includes(buf)) throw new RangeError('buffer released twice');
    const waiter = this.waiters.shift();
    if (waiter) waiter(buf);
    else this.free.push(buf);
  }
}
