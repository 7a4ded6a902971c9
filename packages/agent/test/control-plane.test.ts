import { describe, expect, it } from 'vitest';
import { pubAckError } from '@ferry/agent/nats';
import { forEachLimit } from '../src/concurrency.js';
import { poolBuffers } from '../src/agent.js';
import { discardRange } from '../src/discard.js';
import { QueueWatch, workParts } from '../src/work.js';
import type { WorkItem } from '@ferry/core';

const text = (s: string) => new TextEncoder().encode(s);

describe('forEachLimit', () => {
  it('runs every item, never more than the limit at once', async () => {
    let running = 0;
    let most = 0;
    const seen: number[] = [];
    await forEachLimit([...Array(50).keys()], 4, async (i) => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, (i * 7) % 5));
      seen.push(i);
      running--;
    });
    expect(most).toBe(4);
    expect(seen.sort((a, b) => a - b)).toEqual([...Array(50).keys()]);
  });

  it('handles no items and a limit above the count', async () => {
    await forEachLimit([], 8, async () => {
      throw new Error('not called');
    });
    const seen: number[] = [];
    await forEachLimit([1, 2], 64, async (i) => void seen.push(i));
    expect(seen).toEqual([1, 2]);
  });

  it('passes a failure on after the other items have run', async () => {
    const seen: number[] = [];
    await expect(
      forEachLimit([1, 2, 3, 4], 2, async (i) => {
        if (i === 2) throw new Error('two');
        await new Promise((r) => setTimeout(r, 1));
        seen.push(i);
      }),
    ).rejects.toThrow('two');
    expect(seen.sort()).toEqual([1, 3, 4]);
  });
});

describe('pubAckError', () => {
  it('accepts a stored message and a duplicate', () => {
    expect(pubAckError(text('{"stream":"FERRY_WORK_ab","seq":12}'))).toBeUndefined();
    expect(pubAckError(text('{"stream":"FERRY_WORK_ab","seq":12,"duplicate":true}'))).toBeUndefined();
  });
  it('names what went wrong otherwise', () => {
    expect(pubAckError(text('{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'))).toBe('maximum messages exceeded (503)');
    expect(pubAckError(new Uint8Array(), 503)).toMatch(/no stream/);
    expect(pubAckError(new Uint8Array())).toMatch(/empty/);
    expect(pubAckError(text('not json'))).toMatch(/malformed/);
    expect(pubAckError(text('{"seq":1}'))).toMatch(/no stream/);
  });
});

describe('discardRange', () => {
  it('completes a range at once with equal hashes, counting its bytes', () => {
    let bytes = 0;
    const r = discardRange({ offset: 3 << 20, length: 1 << 20, algorithm: 'xxh3', onBytes: (n) => (bytes += n) });
    expect(r.srcHash).toBe(r.dstHash);
    expect(r.srcHash).toMatch(/^[0-9a-f]{16}$/);
    expect(r.bytes).toBe(1 << 20);
    expect(bytes).toBe(1 << 20);
  });
});

describe('workParts', () => {
  const item = (range: number): WorkItem => ({ v: 2, job: 'j', range, offset: range * 10, length: 10, attempt: 0 });
  const message = (deliveryCount = 1) => {
    const calls: string[] = [];
    return {
      calls,
      msg: {
        ack: () => void calls.push('ack'),
        nak: (d?: number) => void calls.push(d === undefined ? 'nak' : `nak ${d}`),
        term: (r?: string) => void calls.push(r === undefined ? 'term' : `term ${r}`),
        working: () => void calls.push('working'),
        info: { deliveryCount },
      },
    };
  };

  it('acks the message once every part of a run is done, in any order', () => {
    const { msg, calls } = message();
    const parts = workParts(msg, [item(0), item(1), item(2)]);
    expect(parts.map((p) => p.item.range)).toEqual([0, 1, 2]);
    parts[2]!.ack();
    parts[0]!.ack();
    parts[0]!.ack(); // twice counts once
    expect(calls).toEqual([]);
    parts[1]!.ack();
    expect(calls).toEqual(['ack']);
    expect(parts.some((p) => p.givenBack)).toBe(false);
  });

  it('gives the whole run back at the first nak, and acks nothing afterwards', () => {
    const { msg, calls } = message();
    const parts = workParts(msg, [item(0), item(1), item(2)]);
    parts[0]!.ack();
    expect(parts.some((p) => p.givenBack)).toBe(false);
    parts[1]!.nak(500);
    // Every part knows: a worker skips the queued ones rather than move them twice.
    expect(parts.every((p) => p.givenBack)).toBe(true);
    parts[2]!.ack();
    parts[2]!.nak();
    expect(calls).toEqual(['nak 500']);
  });

  it('terminates a single range, but counts a term in a run as done', () => {
    const one = message();
    workParts(one.msg, [item(7)])[0]!.term('hash mismatch');
    expect(one.calls).toEqual(['term hash mismatch']);
    const run = message();
    const parts = workParts(run.msg, [item(0), item(1)]);
    parts[0]!.term('hash mismatch');
    parts[1]!.ack();
    expect(run.calls).toEqual(['ack']);
  });

  it('passes working() on at most once a second per message, and not once settled', () => {
    const { msg, calls } = message(3);
    const parts = workParts(msg, [item(0), item(1)]);
    expect(parts[1]!.deliveries).toBe(3);
    parts[0]!.working();
    parts[1]!.working();
    expect(calls).toEqual(['working']);
    parts[0]!.nak();
    calls.length = 0;
    parts[1]!.working();
    expect(calls).toEqual([]);
  });

  it('makes no parts of no items', () => {
    expect(workParts(message().msg, [])).toEqual([]);
  });
});

describe('QueueWatch', () => {
  const settled = async (p: Promise<void>, withinMs: number) => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), withinMs))]);

  it('waits the quiet time while deliveries say work is left', async () => {
    const q = new QueueWatch();
    expect(q.drained).toBe(false);
    q.delivered(3);
    expect(q.drained).toBe(false);
    const t = Date.now();
    await q.quiet(60).done;
    expect(Date.now() - t).toBeGreaterThanOrEqual(55);
  });

  it('ends the wait at once when the last delivery left nothing behind, and again when work came back', async () => {
    const q = new QueueWatch();
    q.delivered(0);
    expect(q.drained).toBe(true);
    expect(await settled(q.quiet(60_000).done, 20)).toBe(true);
    q.delivered(2);
    expect(q.drained).toBe(false);
    expect(await settled(q.quiet(200).done, 20)).toBe(false);
  });

  it('wakes a wait in progress when a delivery drains the queue (another slot took the last item)', async () => {
    const q = new QueueWatch();
    q.delivered(1);
    const a = q.quiet(60_000);
    const b = q.quiet(60_000);
    expect(await settled(a.done, 20)).toBe(false);
    q.delivered(0);
    expect(await settled(a.done, 20)).toBe(true);
    expect(await settled(b.done, 20)).toBe(true);
  });

  it('cancel ends the wait and leaves no timer or waiter behind', async () => {
    const q = new QueueWatch();
    const w = q.quiet(60_000);
    w.cancel();
    expect(await settled(w.done, 20)).toBe(true);
    expect((q as unknown as { waiters: Set<unknown> }).waiters.size).toBe(0);
  });
});

describe('the agent buffer pool', () => {
  it('reads ahead 3 chunks per slot in a push; a pull gets one buffer per slot plus a shared write queue', () => {
    expect(poolBuffers('push', 2)).toBe(10);
    expect(poolBuffers('push', 16)).toBe(80);
    expect(poolBuffers('pull', 2)).toBe(10);
    expect(poolBuffers('pull', 16)).toBe(24);
  });
});
