import { describe, expect, it } from 'vitest';
import { pubAckError } from '@ferry/agent';
import { forEachLimit, prefetchCount } from '../src/concurrency.js';
import { discardRange } from '../src/discard.js';

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

describe('prefetchCount', () => {
  const MiB = 1024 * 1024;
  it('pulls ranges of 16 MiB and more one at a time', () => {
    expect(prefetchCount(16 * MiB)).toBe(1);
    expect(prefetchCount(64 * MiB)).toBe(1);
    expect(prefetchCount(1024 * MiB)).toBe(1);
  });
  it('pulls smaller ranges up to 16 MiB (at most 16) at a time', () => {
    expect(prefetchCount(MiB)).toBe(16);
    expect(prefetchCount(2 * MiB)).toBe(8);
    expect(prefetchCount(5 * MiB)).toBe(3);
    expect(prefetchCount(8 * MiB)).toBe(2);
  });
  it('falls back to one for nonsense', () => {
    expect(prefetchCount(0)).toBe(1);
    expect(prefetchCount(Number.NaN)).toBe(1);
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
