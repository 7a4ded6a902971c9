import { allocAligned } from './direct.js';

/**
 * A fixed pool of equal buffers for the data path. `acquire()` waits when all
 * are out, which is what bounds an agent's memory whatever the file size: a
 * reader that runs ahead of the network simply waits for a buffer. Buffers are
 * made when first needed (a small copy never makes most of them); aligned
 * ones all at once, as one block.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  /** Buffers made so far (at most `count`). */
  private made = 0;
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
    if (aligned) {
      this.free.push(...aligned);
      this.made = count;
    }
  }

  /** Buffers currently handed out. */
  get inUse(): number {
    return this.made - this.free.length;
  }

  acquire(): Promise<Buffer> {
    const buf = this.tryAcquire();
    if (buf) return Promise.resolve(buf);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  tryAcquire(): Buffer | undefined {
    const buf = this.free.pop();
    if (buf || this.made === this.count) return buf;
    this.made++;
    return Buffer.allocUnsafeSlow(this.bufferBytes);
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
