/**
 * check.ts's ConnectionPool (pure logic, fake connections): the first
 * connection opens with the first request, a further one only once requests
 * have shared the open ones for POOL_GROW_AFTER_MS; never more than its size.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { RemoteConnection } from '@ferry/transport';
import { ConnectionPool, POOL_GROW_AFTER_MS } from '../src/check.js';

/** A request that ends when `finish` is called. */
function held(): { promise: Promise<void>; finish: () => void } {
  let finish!: () => void;
  const promise = new Promise<void>((r) => (finish = r));
  return { promise, finish };
}

describe('ConnectionPool (ferry check hashing connections)', () => {
  let opened: number;
  let pool: ConnectionPool;
  beforeEach(() => {
    vi.useFakeTimers();
    opened = 0;
    pool = new ConnectionPool(async () => {
      opened++;
      return { alive: true, close: () => {} } as unknown as RemoteConnection;
    }, 3, 8);
  });
  afterEach(() => {
    pool.close();
    vi.useRealTimers();
  });

  it('serves quick requests on one connection', async () => {
    for (let i = 0; i < 20; i++) await pool.use(async () => i);
    expect(opened).toBe(1);
  });

  it('opens a further connection only once requests have shared one for a while, up to its size', async () => {
    const work = Array.from({ length: 6 }, () => held());
    const uses = work.slice(0, 4).map((w) => pool.use(() => w.promise));
    await vi.advanceTimersByTimeAsync(0);
    // Four requests in flight share the first connection: no second one yet.
    expect(opened).toBe(1);
    await vi.advanceTimersByTimeAsync(POOL_GROW_AFTER_MS);
    // Still sharing after the wait: the next request opens a second connection...
    uses.push(pool.use(() => work[4]!.promise));
    await vi.advanceTimersByTimeAsync(0);
    expect(opened).toBe(2);
    // ...and a third once they have shared again for a while; never a fourth (size 3).
    uses.push(pool.use(() => work[5]!.promise));
    await vi.advanceTimersByTimeAsync(POOL_GROW_AFTER_MS);
    for (let i = 0; i < 4; i++) uses.push(pool.use(async () => undefined));
    await vi.advanceTimersByTimeAsync(10 * POOL_GROW_AFTER_MS);
    expect(opened).toBe(3);
    for (const w of work) w.finish();
    await Promise.all(uses);
  });
});
