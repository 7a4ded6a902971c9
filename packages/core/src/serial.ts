/**
 * Runs async tasks one at a time, in the order they were given; a failed task
 * does not stop the ones after it. ferry writes each file through one of
 * these per process: a buffered write holds the file's inode lock for its
 * whole length (ext4, xfs), so writes issued in parallel from the thread pool
 * do not overlap, they spin on the lock (7% of all CPU in a 2-stream loopback
 * profile), and one write at a time keeps up with any SSH stream.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private waiting = 0;

  /** Tasks given and not yet finished (the running one included). */
  get size(): number {
    return this.waiting;
  }

  run<T>(task: () => Promise<T>): Promise<T> {
    this.waiting++;
    const result = this.tail.then(task);
    this.tail = result.then(
      () => this.waiting--,
      () => this.waiting--,
    );
    return result;
  }
}

/** A counting semaphore, first come first served: at most `count` holders at once. */
export class Semaphore {
  private free: number;
  private readonly waiting: Array<() => void> = [];

  constructor(count: number) {
    this.free = count;
  }

  acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }

  /** Lets every waiter and every later acquire through (the holders are going away). */
  openAll(): void {
    this.free = Infinity;
    for (const w of this.waiting.splice(0)) w();
  }
}
