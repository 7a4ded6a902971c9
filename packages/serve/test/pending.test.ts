import { describe, expect, it } from 'vitest';
import { PendingLimit } from '../src/pending.js';

const MiB = 1024 * 1024;

/** Feeds `limit` `mbps` MB/s in 10 ms steps for `ms`, from `t`; returns the time reached. */
function feed(limit: PendingLimit, mbps: number, t: number, ms: number): number {
  for (const end = t + ms; t < end; ) {
    t += 10;
    limit.received(mbps * 1e4, t);
  }
  return t;
}

describe('PendingLimit', () => {
  it('starts at its floor and stays there for a slow stream', () => {
    const limit = new PendingLimit(16 * MiB, 128 * MiB, 1, 0);
    expect(limit.bytes).toBe(16 * MiB);
    feed(limit, 15, 0, 5000);
    expect(limit.bytes).toBe(16 * MiB);
  });

  it('follows a fast stream up to about a second of its rate, and no further than its ceiling', () => {
    const limit = new PendingLimit(16 * MiB, 128 * MiB, 1, 0);
    let t = feed(limit, 60, 0, 600);
    expect(limit.bytes).toBeGreaterThan(55e6);
    expect(limit.bytes).toBeLessThan(65e6);
    t = feed(limit, 400, t, 600);
    expect(limit.bytes).toBe(128 * MiB);
  });

  it('keeps its limit while no bytes arrive (a session paused by its disk), and halves at most per window', () => {
    const limit = new PendingLimit(16 * MiB, 128 * MiB, 1, 0);
    let t = feed(limit, 400, 0, 600);
    expect(limit.bytes).toBe(128 * MiB);
    // Paused for 2 s: nothing arrives, nothing changes.
    t += 2000;
    expect(limit.bytes).toBe(128 * MiB);
    // The first bytes after the pause close a window of almost nothing: half, not the floor.
    limit.received(1e6, t);
    expect(limit.bytes).toBe(64 * MiB);
    // A disk slower than the link: the session reads only as fast as it writes, 10 MB/s.
    feed(limit, 10, t, 3000);
    expect(limit.bytes).toBe(16 * MiB);
  });

  it('refuses a floor above its ceiling', () => {
    expect(() => new PendingLimit(32 * MiB, 16 * MiB, 1, 0)).toThrow(RangeError);
    expect(() => new PendingLimit(0, 16 * MiB, 1, 0)).toThrow(RangeError);
  });
});
