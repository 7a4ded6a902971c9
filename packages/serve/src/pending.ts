/**
 * How many bytes of writes a helper session lets pile up before it stops
 * reading its input (serve.ts pauses at the limit and resumes below half).
 *
 * Storage stalls now and then: a cache flush (an fsync, a journal commit) holds
 * every write for 0.3-0.9 s on the benchmark VM, and a session that stops
 * reading stops its stream, which a fast stream (a short link: 200+ MB/s)
 * feels as a gap each time. So a session may hold about a second of what its
 * stream has been bringing in: enough to ride out such a stall, no more than
 * `max`. A slow stream (a long link: 15-25 MB/s), or one whose disk is slower
 * than its link (it then reads only as fast as it writes), stays near `min`.
 *
 * The rate is taken over windows of `windowMs`, closed when bytes arrive: a
 * session paused by its disk brings none, and keeps the limit it had. A
 * slower window halves the limit at most, so one short gap does not undo it.
 */
export class PendingLimit {
  private current: number;
  private windowStart: number;
  private windowBytes = 0;

  constructor(
    readonly min: number,
    readonly max: number,
    /** Seconds of the recent input rate the limit stands for. */
    private readonly seconds: number,
    now: number,
    private readonly windowMs = 500,
  ) {
    if (!(min > 0) || !(max >= min)) throw new RangeError(`pending limit needs 0 < min <= max, got ${min}, ${max}`);
    this.current = min;
    this.windowStart = now;
  }

  /** The limit now, in bytes. */
  get bytes(): number {
    return this.current;
  }

  /** `n` bytes arrived at `now` (milliseconds, any monotonic origin). */
  received(n: number, now: number): void {
    this.windowBytes += n;
    const elapsed = now - this.windowStart;
    if (elapsed < this.windowMs) return;
    const wanted = (this.windowBytes / elapsed) * 1000 * this.seconds;
    this.current = Math.min(this.max, Math.max(this.min, wanted, this.current / 2));
    this.windowStart = now;
    this.windowBytes = 0;
  }
}
