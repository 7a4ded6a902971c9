import { describe, expect, it } from 'vitest';
import { BufferPool } from '@ferry/core';

describe('BufferPool', () => {
  it('starts with every buffer free and of the given size', () => {
    const pool = new BufferPool(4096, 3);
    expect(pool.bufferBytes).toBe(4096);
    expect(pool.count).toBe(3);
    expect(pool.inUse).toBe(0);
  });

  it('hands out distinct buffers of the pool size until it is empty', () => {
    const pool = new BufferPool(1024, 3);
    const a = pool.tryAcquire();
    const b = pool.tryAcquire();
    const c = pool.tryAcquire();
    expect([a?.length, b?.length, c?.length]).toEqual([1024, 1024, 1024]);
    expect(new Set([a, b, c]).size).toBe(3);
    expect(pool.inUse).toBe(3);
    expect(pool.tryAcquire()).toBeUndefined();
  });

  it('gives buffers that do not share memory', () => {
    const pool = new BufferPool(16, 2);
    const a = pool.tryAcquire()!;
    const b = pool.tryAcquire()!;
    a.fill(1);
    b.fill(2);
    expect([...a]).toEqual(new Array(16).fill(1));
    expect([...b]).toEqual(new Array(16).fill(2));
  });

  it('resolves acquire at once while buffers are free', async () => {
    const pool = new BufferPool(8, 1);
    const buf = await pool.acquire();
    expect(buf.length).toBe(8);
    expect(pool.inUse).toBe(1);
  });

  it('makes acquire wait until a buffer is released, then hands over that buffer', async () => {
    const pool = new BufferPool(8, 1);
    const first = pool.tryAcquire()!;
    let got: Buffer | undefined;
    const waiting = pool.acquire().then((buf) => {
      got = buf;
      return buf;
    });
    await Promise.resolve();
    expect(got).toBeUndefined();
    pool.release(first);
    expect(await waiting).toBe(first);
    expect(pool.inUse).toBe(1);
    expect(pool.tryAcquire()).toBeUndefined();
  });

  it('serves waiters in the order they asked', async () => {
    const pool = new BufferPool(8, 2);
    const a = pool.tryAcquire()!;
    const b = pool.tryAcquire()!;
    const order: string[] = [];
    const w1 = pool.acquire().then((buf) => order.push(`w1:${buf === b ? 'b' : 'a'}`));
    const w2 = pool.acquire().then((buf) => order.push(`w2:${buf === b ? 'b' : 'a'}`));
    pool.release(b);
    pool.release(a);
    await Promise.all([w1, w2]);
    expect(order).toEqual(['w1:b', 'w2:a']);
    expect(pool.inUse).toBe(2);
  });

  it('puts a released buffer back when nobody waits', () => {
    const pool = new BufferPool(8, 2);
    const a = pool.tryAcquire()!;
    expect(pool.inUse).toBe(1);
    pool.release(a);
    expect(pool.inUse).toBe(0);
    expect(pool.tryAcquire()).toBe(a);
  });

  it('refuses a buffer of another size', () => {
    const pool = new BufferPool(8, 1);
    pool.tryAcquire();
    expect(() => pool.release(Buffer.alloc(9))).toThrow(new RangeError('buffer returned to the wrong pool'));
    expect(pool.inUse).toBe(1);
  });

  it('rejects a zero, negative or fractional buffer size', () => {
    expect(() => new BufferPool(0, 1)).toThrow(new RangeError('buffer size must be positive, got 0'));
    expect(() => new BufferPool(-8, 1)).toThrow(new RangeError('buffer size must be positive, got -8'));
    expect(() => new BufferPool(1.5, 1)).toThrow(new RangeError('buffer size must be positive, got 1.5'));
  });

  it('rejects a zero, negative or fractional buffer count', () => {
    expect(() => new BufferPool(8, 0)).toThrow(new RangeError('buffer count must be positive, got 0'));
    expect(() => new BufferPool(8, -1)).toThrow(new RangeError('buffer count must be positive, got -1'));
    expect(() => new BufferPool(8, 2.5)).toThrow(new RangeError('buffer count must be positive, got 2.5'));
  });
});
