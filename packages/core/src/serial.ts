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
