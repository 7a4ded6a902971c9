import { describe, expect, it } from 'vitest';
import { IntervalSet } from '@ferry/core';

/** mulberry32: a small seeded PRNG so the randomized test is the same on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs of a naive set of integers, as IntervalSet.toArray should give them. */
function runsOf(values: Set<number>): Array<[number, number]> {
  const sorted = [...values].sort((a, b) => a - b);
  const runs: Array<[number, number]> = [];
  for (const v of sorted) {
    const last = runs[runs.length - 1];
    if (last && last[1] === v) last[1] = v + 1;
    else runs.push([v, v + 1]);
  }
  return runs;
}

describe('IntervalSet', () => {
  it('starts empty', () => {
    const set = new IntervalSet();
    expect(set.size).toBe(0);
    expect(set.runCount).toBe(0);
    expect(set.toArray()).toEqual([]);
    expect(set.has(0)).toBe(false);
    expect([...set.missing(3)]).toEqual([0, 1, 2]);
  });

  it('adds a single value and reports whether it was new', () => {
    const set = new IntervalSet();
    expect(set.add(5)).toBe(true);
    expect(set.add(5)).toBe(false);
    expect(set.size).toBe(1);
    expect(set.toArray()).toEqual([[5, 6]]);
    expect(set.has(4)).toBe(false);
    expect(set.has(5)).toBe(true);
    expect(set.has(6)).toBe(false);
  });

  it('merges a value adjacent to the end of a run into that run', () => {
    const set = IntervalSet.from([[0, 3]]);
    set.add(3);
    expect(set.toArray()).toEqual([[0, 4]]);
    expect(set.runCount).toBe(1);
    expect(set.size).toBe(4);
  });

  it('merges a value adjacent to the start of a run into that run', () => {
    const set = IntervalSet.from([[5, 8]]);
    set.add(4);
    expect(set.toArray()).toEqual([[4, 8]]);
    expect(set.size).toBe(4);
  });

  it('joins two runs when the value between them is added', () => {
    const set = IntervalSet.from([
      [0, 3],
      [4, 7],
    ]);
    expect(set.runCount).toBe(2);
    expect(set.add(3)).toBe(true);
    expect(set.toArray()).toEqual([[0, 7]]);
    expect(set.runCount).toBe(1);
    expect(set.size).toBe(7);
  });

  it('merges a range that exactly touches runs on both sides', () => {
    const set = IntervalSet.from([
      [0, 10],
      [20, 30],
    ]);
    set.addRange(10, 20);
    expect(set.toArray()).toEqual([[0, 30]]);
    expect(set.size).toBe(30);
  });

  it('merges overlapping ranges and counts each value once', () => {
    const set = new IntervalSet();
    set.addRange(10, 20);
    set.addRange(15, 25);
    expect(set.toArray()).toEqual([[10, 25]]);
    expect(set.size).toBe(15);
    set.addRange(5, 12);
    expect(set.toArray()).toEqual([[5, 25]]);
    expect(set.size).toBe(20);
  });

  it('swallows several runs into one range that covers them', () => {
    const set = IntervalSet.from([
      [2, 3],
      [5, 7],
      [9, 10],
      [20, 22],
    ]);
    set.addRange(1, 12);
    expect(set.toArray()).toEqual([
      [1, 12],
      [20, 22],
    ]);
    expect(set.size).toBe(13);
  });

  it('does nothing when a range inside an existing run is added', () => {
    const set = IntervalSet.from([[0, 100]]);
    set.addRange(10, 20);
    expect(set.toArray()).toEqual([[0, 100]]);
    expect(set.size).toBe(100);
  });

  it('keeps runs separated by a gap of one apart', () => {
    const set = new IntervalSet();
    set.add(1);
    set.add(3);
    expect(set.toArray()).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(set.has(2)).toBe(false);
    expect(set.size).toBe(2);
  });

  it('treats an empty range as a no-op', () => {
    const set = IntervalSet.from([[3, 4]]);
    set.addRange(7, 7);
    set.addRange(0, 0);
    expect(set.toArray()).toEqual([[3, 4]]);
    expect(set.size).toBe(1);
  });

  it('sorts runs added out of order', () => {
    const set = new IntervalSet();
    set.addRange(50, 60);
    set.addRange(10, 20);
    set.addRange(30, 40);
    set.addRange(0, 5);
    expect(set.toArray()).toEqual([
      [0, 5],
      [10, 20],
      [30, 40],
      [50, 60],
    ]);
    expect(set.size).toBe(35);
  });

  it('becomes one run after every index of a job is added in reverse order', () => {
    const set = new IntervalSet();
    for (let i = 999; i >= 0; i--) expect(set.add(i)).toBe(true);
    expect(set.toArray()).toEqual([[0, 1000]]);
    expect(set.runCount).toBe(1);
    expect(set.size).toBe(1000);
    expect([...set.missing(1000)]).toEqual([]);
  });

  it('becomes one run after even then odd indices are added', () => {
    const set = new IntervalSet();
    for (let i = 0; i < 100; i += 2) set.add(i);
    expect(set.runCount).toBe(50);
    for (let i = 1; i < 100; i += 2) set.add(i);
    expect(set.toArray()).toEqual([[0, 100]]);
    expect(set.size).toBe(100);
  });

  it('holds ranges far above 2^32 exactly', () => {
    const set = new IntervalSet();
    set.addRange(2 ** 40, 2 ** 41);
    set.addRange(0, 2 ** 33);
    expect(set.size).toBe(2 ** 41 - 2 ** 40 + 2 ** 33);
    expect(set.has(2 ** 33 - 1)).toBe(true);
    expect(set.has(2 ** 33)).toBe(false);
    expect(set.has(2 ** 40)).toBe(true);
    expect(set.has(2 ** 41 - 1)).toBe(true);
    expect(set.has(2 ** 41)).toBe(false);
    set.addRange(2 ** 33, 2 ** 40);
    expect(set.toArray()).toEqual([[0, 2 ** 41]]);
    expect(set.size).toBe(2 ** 41);
  });

  it('handles a range ending at the largest safe integer', () => {
    const set = new IntervalSet();
    set.addRange(Number.MAX_SAFE_INTEGER - 10, Number.MAX_SAFE_INTEGER);
    expect(set.size).toBe(10);
    expect(set.has(Number.MAX_SAFE_INTEGER - 1)).toBe(true);
    expect(set.has(Number.MAX_SAFE_INTEGER)).toBe(false);
  });

  it('lists missing values below the limit in ascending order', () => {
    const set = IntervalSet.from([
      [1, 3],
      [5, 6],
      [8, 20],
    ]);
    expect([...set.missing(10)]).toEqual([0, 3, 4, 6, 7]);
    expect([...set.missing(25)]).toEqual([0, 3, 4, 6, 7, 20, 21, 22, 23, 24]);
    expect([...set.missing(4)]).toEqual([0, 3]);
    expect([...set.missing(1)]).toEqual([0]);
    expect([...set.missing(0)]).toEqual([]);
  });

  it('lists nothing missing when the set covers the limit', () => {
    const set = IntervalSet.from([[0, 10]]);
    expect([...set.missing(10)]).toEqual([]);
    expect([...set.missing(5)]).toEqual([]);
    expect([...set.missing(12)]).toEqual([10, 11]);
  });

  it('yields missing values lazily from a huge set', () => {
    const set = IntervalSet.from([
      [0, 2 ** 40],
      [2 ** 40 + 1, 2 ** 41],
    ]);
    const it = set.missing(2 ** 50);
    expect(it.next()).toEqual({ value: 2 ** 40, done: false });
    expect(it.next()).toEqual({ value: 2 ** 41, done: false });
    expect(it.next()).toEqual({ value: 2 ** 41 + 1, done: false });
  });

  it('builds from runs given in any order and with overlaps', () => {
    const set = IntervalSet.from([
      [10, 15],
      [0, 3],
      [2, 6],
      [6, 8],
      [14, 20],
    ]);
    expect(set.toArray()).toEqual([
      [0, 8],
      [10, 20],
    ]);
    expect(set.size).toBe(18);
  });

  it('round-trips through toArray and from', () => {
    const set = IntervalSet.from([
      [1, 4],
      [9, 12],
      [2 ** 35, 2 ** 35 + 3],
    ]);
    const copy = IntervalSet.from(set.toArray());
    expect(copy.toArray()).toEqual([
      [1, 4],
      [9, 12],
      [2 ** 35, 2 ** 35 + 3],
    ]);
    expect(copy.size).toBe(set.size);
    expect(copy.size).toBe(9);
  });

  it('returns a fresh array from toArray that does not alias the set', () => {
    const set = IntervalSet.from([[0, 5]]);
    const arr = set.toArray();
    arr[0]![1] = 100;
    arr.push([200, 300]);
    expect(set.toArray()).toEqual([[0, 5]]);
  });

  it('deletes a value from the middle of a run, splitting it in two', () => {
    const set = IntervalSet.from([[0, 10]]);
    expect(set.delete(4)).toBe(true);
    expect(set.toArray()).toEqual([
      [0, 4],
      [5, 10],
    ]);
    expect(set.size).toBe(9);
    expect(set.has(4)).toBe(false);
  });

  it('deletes the first or last value of a run by shrinking it', () => {
    const set = IntervalSet.from([[3, 8]]);
    expect(set.delete(3)).toBe(true);
    expect(set.delete(7)).toBe(true);
    expect(set.toArray()).toEqual([[4, 7]]);
    expect(set.size).toBe(3);
  });

  it('deletes a one-value run entirely', () => {
    const set = IntervalSet.from([
      [1, 2],
      [5, 6],
      [9, 10],
    ]);
    expect(set.delete(5)).toBe(true);
    expect(set.toArray()).toEqual([
      [1, 2],
      [9, 10],
    ]);
    expect(set.runCount).toBe(2);
    expect(set.size).toBe(2);
  });

  it('reports false when deleting a value that is not there', () => {
    const set = IntervalSet.from([
      [2, 4],
      [8, 9],
    ]);
    expect(set.delete(0)).toBe(false);
    expect(set.delete(4)).toBe(false);
    expect(set.delete(6)).toBe(false);
    expect(set.delete(100)).toBe(false);
    expect(set.delete(-1)).toBe(false);
    expect(new IntervalSet().delete(0)).toBe(false);
    expect(set.toArray()).toEqual([
      [2, 4],
      [8, 9],
    ]);
    expect(set.size).toBe(3);
  });

  it('lets a deleted value be added back, rejoining the run', () => {
    const set = IntervalSet.from([[0, 2 ** 40]]);
    expect(set.delete(2 ** 35)).toBe(true);
    expect(set.size).toBe(2 ** 40 - 1);
    expect([...set.missing(2 ** 35 + 1)].length).toBe(1);
    expect(set.add(2 ** 35)).toBe(true);
    expect(set.toArray()).toEqual([[0, 2 ** 40]]);
    expect(set.size).toBe(2 ** 40);
  });

  it('rejects negative, reversed and fractional intervals', () => {
    const set = new IntervalSet();
    expect(() => set.addRange(-1, 3)).toThrow(new RangeError('invalid interval [-1, 3)'));
    expect(() => set.addRange(5, 4)).toThrow(new RangeError('invalid interval [5, 4)'));
    expect(() => set.addRange(0.5, 3)).toThrow(new RangeError('invalid interval [0.5, 3)'));
    expect(() => set.addRange(0, Number.NaN)).toThrow(new RangeError('invalid interval [0, NaN)'));
    expect(() => set.add(-1)).toThrow(new RangeError('invalid interval [-1, 0)'));
    expect(() => IntervalSet.from([[3, 1]])).toThrow(new RangeError('invalid interval [3, 1)'));
    expect(set.size).toBe(0);
    expect(set.toArray()).toEqual([]);
  });

  it('agrees with a naive Set model over 3000 random adds, range adds and deletes (seed 20240607)', () => {
    const rand = prng(20240607);
    const universe = 300;
    const set = new IntervalSet();
    const model = new Set<number>();
    for (let op = 0; op < 3000; op++) {
      const kind = rand();
      if (kind < 0.45) {
        const v = Math.floor(rand() * universe);
        expect(set.add(v)).toBe(!model.has(v));
        model.add(v);
      } else if (kind < 0.7) {
        const v = Math.floor(rand() * universe);
        expect(set.delete(v)).toBe(model.has(v));
        model.delete(v);
      } else {
        const start = Math.floor(rand() * universe);
        const end = Math.min(universe, start + Math.floor(rand() * 12));
        set.addRange(start, end);
        for (let v = start; v < end; v++) model.add(v);
      }
      expect(set.size).toBe(model.size);
      if (op % 50 === 0 || op < 200) {
        const runs = set.toArray();
        expect(runs).toEqual(runsOf(model));
        expect(set.runCount).toBe(runs.length);
        const members: number[] = [];
        for (let v = -1; v <= universe + 1; v++) if (set.has(v)) members.push(v);
        expect(members).toEqual([...model].sort((a, b) => a - b));
        const limit = Math.floor(rand() * (universe + 20));
        const missing: number[] = [];
        for (let v = 0; v < limit; v++) if (!model.has(v)) missing.push(v);
        expect([...set.missing(limit)]).toEqual(missing);
      }
    }
    expect(set.toArray()).toEqual(runsOf(model));
  });

  it('keeps runs sorted, disjoint and non-adjacent under random large ranges (seed 7)', () => {
    const rand = prng(7);
    const set = new IntervalSet();
    let reference: Array<[number, number]> = [];
    for (let op = 0; op < 500; op++) {
      const start = Math.floor(rand() * 2 ** 44);
      const end = start + Math.floor(rand() * 2 ** 38);
      set.addRange(start, end);
      if (start < end) reference.push([start, end]);
      // Merge the reference the slow way: sort and sweep.
      reference = reference
        .slice()
        .sort((a, b) => a[0] - b[0])
        .reduce<Array<[number, number]>>((acc, [s, e]) => {
          const last = acc[acc.length - 1];
          if (last && s <= last[1]) last[1] = Math.max(last[1], e);
          else acc.push([s, e]);
          return acc;
        }, []);
      const runs = set.toArray();
      expect(runs).toEqual(reference);
      expect(set.size).toBe(reference.reduce((n, [s, e]) => n + e - s, 0));
      for (let i = 1; i < runs.length; i++) expect(runs[i]![0]).toBeGreaterThan(runs[i - 1]![1]);
    }
  });
});
