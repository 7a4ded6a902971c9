import { describe, expect, it } from 'vitest';
import {
  GiB,
  MAX_AUTO_RANGE_BYTES,
  MIN_AUTO_RANGE_BYTES,
  MiB,
  RANGE_ALIGN_BYTES,
  TARGET_RANGE_COUNT,
  chooseRangeBytes,
  planRanges,
  rangeAt,
} from '@ferry/core';
import type { ByteRange, RangePlan } from '@ferry/core';

/** Every range of a plan, computed one by one with rangeAt. */
function allRanges(plan: RangePlan): ByteRange[] {
  const out: ByteRange[] = [];
  for (let i = 0; i < plan.count; i++) out.push(rangeAt(plan, i));
  return out;
}

/** Checks that the ranges tile [0, fileBytes) exactly: contiguous, full-sized but for the last, summing to the file size. */
function expectTiles(plan: RangePlan): void {
  const ranges = allRanges(plan);
  const problems: string[] = [];
  let next = 0;
  for (const [i, r] of ranges.entries()) {
    const full = i < ranges.length - 1;
    if (r.index !== i) problems.push(`range ${i} has index ${r.index}`);
    if (r.offset !== next) problems.push(`range ${i} starts at ${r.offset}, not ${next}`);
    if (r.length <= 0 || r.length > plan.rangeBytes) problems.push(`range ${i} has length ${r.length}`);
    if (full && r.length !== plan.rangeBytes) problems.push(`range ${i} is not full: ${r.length}`);
    next += r.length;
  }
  expect(problems).toEqual([]);
  expect(next).toBe(plan.fileBytes);
}

describe('the automatic range size', () => {
  it('uses the documented constants', () => {
    expect(RANGE_ALIGN_BYTES).toBe(1048576);
    expect(MIN_AUTO_RANGE_BYTES).toBe(16 * 1048576);
    expect(MAX_AUTO_RANGE_BYTES).toBe(1073741824);
    expect(TARGET_RANGE_COUNT).toBe(4096);
  });

  it('is the 16 MiB minimum for an empty file', () => {
    expect(chooseRangeBytes(0)).toBe(16 * MiB);
  });

  it('is the 16 MiB minimum for a one-byte file', () => {
    expect(chooseRangeBytes(1)).toBe(16 * MiB);
  });

  it('is the 16 MiB minimum for files around 4 GiB and for a 6 GiB file', () => {
    expect(chooseRangeBytes(2 ** 32 - 1)).toBe(16 * MiB);
    expect(chooseRangeBytes(2 ** 32)).toBe(16 * MiB);
    expect(chooseRangeBytes(2 ** 32 + 1)).toBe(16 * MiB);
    expect(chooseRangeBytes(6 * GiB)).toBe(16 * MiB);
  });

  it('stays at the minimum up to exactly 4096 ranges of 16 MiB (64 GiB)', () => {
    expect(chooseRangeBytes(64 * GiB)).toBe(16 * MiB);
  });

  it('rounds up to the next whole MiB one byte past 64 GiB', () => {
    expect(chooseRangeBytes(64 * GiB + 1)).toBe(17 * MiB);
  });

  it('gives exactly 4096 ranges when the file is 4096 whole MiB multiples', () => {
    expect(chooseRangeBytes(100 * GiB)).toBe(25 * MiB);
    expect(planRanges(100 * GiB).count).toBe(4096);
  });

  it('rounds up rather than exceeding the target count', () => {
    expect(chooseRangeBytes(100 * GiB + 1)).toBe(26 * MiB);
    expect(planRanges(100 * GiB + 1).count).toBe(Math.ceil((100 * GiB + 1) / (26 * MiB)));
    expect(planRanges(100 * GiB + 1).count).toBeLessThanOrEqual(4096);
  });

  it('reaches the 1 GiB maximum at 4 TiB', () => {
    expect(chooseRangeBytes(4096 * GiB)).toBe(GiB);
  });

  it('is clamped to 1 GiB for files larger than 4 TiB', () => {
    expect(chooseRangeBytes(4096 * GiB + 1)).toBe(GiB);
    expect(chooseRangeBytes(2 ** 50)).toBe(GiB);
    expect(chooseRangeBytes(Number.MAX_SAFE_INTEGER)).toBe(GiB);
  });

  it('is always a multiple of 1 MiB within [16 MiB, 1 GiB]', () => {
    const sizes = [0, 1, 12345, 2 ** 32 + 1, 70 * GiB + 3, 123_456_789_012, 3 * 2 ** 40 + 17, 2 ** 45 - 1];
    for (const size of sizes) {
      const bytes = chooseRangeBytes(size);
      expect(bytes % MiB).toBe(0);
      expect(bytes).toBeGreaterThanOrEqual(16 * MiB);
      expect(bytes).toBeLessThanOrEqual(GiB);
    }
  });
});

describe('range planning', () => {
  it('plans no ranges for an empty file', () => {
    expect(planRanges(0)).toEqual({ fileBytes: 0, rangeBytes: 16 * MiB, count: 0 });
    expect(planRanges(0, MiB)).toEqual({ fileBytes: 0, rangeBytes: MiB, count: 0 });
  });

  it('plans a single one-byte range for a one-byte file', () => {
    const plan = planRanges(1);
    expect(plan).toEqual({ fileBytes: 1, rangeBytes: 16 * MiB, count: 1 });
    expect(rangeAt(plan, 0)).toEqual({ index: 0, offset: 0, length: 1 });
  });

  it('plans one short range for a file one byte smaller than the range size', () => {
    const plan = planRanges(16 * MiB - 1);
    expect(plan.count).toBe(1);
    expect(rangeAt(plan, 0)).toEqual({ index: 0, offset: 0, length: 16 * MiB - 1 });
  });

  it('plans one full range for a file exactly the range size', () => {
    const plan = planRanges(16 * MiB);
    expect(plan.count).toBe(1);
    expect(rangeAt(plan, 0)).toEqual({ index: 0, offset: 0, length: 16 * MiB });
  });

  it('plans a full range and a one-byte range for a file one byte larger than the range size', () => {
    const plan = planRanges(16 * MiB + 1);
    expect(plan.count).toBe(2);
    expect(rangeAt(plan, 0)).toEqual({ index: 0, offset: 0, length: 16 * MiB });
    expect(rangeAt(plan, 1)).toEqual({ index: 1, offset: 16 * MiB, length: 1 });
  });

  it('handles the sizes around an explicit 1 MiB range size', () => {
    expect(planRanges(MiB - 1, MiB).count).toBe(1);
    expect(rangeAt(planRanges(MiB - 1, MiB), 0)).toEqual({ index: 0, offset: 0, length: MiB - 1 });
    expect(planRanges(MiB, MiB).count).toBe(1);
    expect(rangeAt(planRanges(MiB, MiB), 0)).toEqual({ index: 0, offset: 0, length: MiB });
    expect(planRanges(MiB + 1, MiB).count).toBe(2);
    expect(rangeAt(planRanges(MiB + 1, MiB), 1)).toEqual({ index: 1, offset: MiB, length: 1 });
  });

  it('tiles files of 0, 1, rangeBytes-1, rangeBytes and rangeBytes+1 bytes exactly', () => {
    for (const size of [0, 1, 16 * MiB - 1, 16 * MiB, 16 * MiB + 1, 2 * 16 * MiB - 1, 2 * 16 * MiB, 2 * 16 * MiB + 1]) {
      expectTiles(planRanges(size));
    }
  });

  it('plans a file of 2^32-1 bytes as 256 ranges whose last is one byte short', () => {
    const plan = planRanges(2 ** 32 - 1);
    expect(plan).toEqual({ fileBytes: 4294967295, rangeBytes: 16 * MiB, count: 256 });
    expect(rangeAt(plan, 255)).toEqual({ index: 255, offset: 255 * 16 * MiB, length: 16 * MiB - 1 });
    expectTiles(plan);
  });

  it('plans a file of exactly 2^32 bytes as 256 full ranges', () => {
    const plan = planRanges(2 ** 32);
    expect(plan).toEqual({ fileBytes: 4294967296, rangeBytes: 16 * MiB, count: 256 });
    expect(rangeAt(plan, 255)).toEqual({ index: 255, offset: 4278190080, length: 16 * MiB });
    expectTiles(plan);
  });

  it('plans a file of 2^32+1 bytes with a one-byte last range starting exactly at 2^32', () => {
    const plan = planRanges(2 ** 32 + 1);
    expect(plan).toEqual({ fileBytes: 4294967297, rangeBytes: 16 * MiB, count: 257 });
    expect(rangeAt(plan, 256)).toEqual({ index: 256, offset: 4294967296, length: 1 });
    expectTiles(plan);
  });

  it('plans the sizes around 4 GiB with 1 MiB ranges exactly', () => {
    const below = planRanges(2 ** 32 - 1, MiB);
    expect(below.count).toBe(4096);
    expect(rangeAt(below, 4095)).toEqual({ index: 4095, offset: 4095 * MiB, length: MiB - 1 });
    const at = planRanges(2 ** 32, MiB);
    expect(at.count).toBe(4096);
    expect(rangeAt(at, 4095)).toEqual({ index: 4095, offset: 4095 * MiB, length: MiB });
    const above = planRanges(2 ** 32 + 1, MiB);
    expect(above.count).toBe(4097);
    expect(rangeAt(above, 4096)).toEqual({ index: 4096, offset: 2 ** 32, length: 1 });
    expectTiles(below);
    expectTiles(at);
    expectTiles(above);
  });

  it('plans a 6 GiB file as 384 ranges of 16 MiB whose offsets above 4 GiB are exact', () => {
    const plan = planRanges(6 * GiB);
    expect(plan).toEqual({ fileBytes: 6442450944, rangeBytes: 16777216, count: 384 });
    expect(rangeAt(plan, 256)).toEqual({ index: 256, offset: 4294967296, length: 16777216 });
    expect(rangeAt(plan, 257)).toEqual({ index: 257, offset: 4311744512, length: 16777216 });
    expect(rangeAt(plan, 383)).toEqual({ index: 383, offset: 6425673728, length: 16777216 });
    expectTiles(plan);
  });

  it('plans a 6 GiB file plus 12345 bytes with 64 MiB ranges and a short last range', () => {
    const plan = planRanges(6 * GiB + 12345, 64 * MiB);
    expect(plan.count).toBe(97);
    expect(rangeAt(plan, 96)).toEqual({ index: 96, offset: 6 * GiB, length: 12345 });
    expectTiles(plan);
  });

  it('computes the last range of the largest safe file size exactly', () => {
    const plan = planRanges(Number.MAX_SAFE_INTEGER, GiB);
    expect(plan.count).toBe(2 ** 23);
    expect(rangeAt(plan, 2 ** 23 - 1)).toEqual({ index: 2 ** 23 - 1, offset: 2 ** 53 - 2 ** 30, length: 2 ** 30 - 1 });
    expect(rangeAt(plan, 2 ** 23 - 2)).toEqual({ index: 2 ** 23 - 2, offset: 2 ** 53 - 2 ** 31, length: 2 ** 30 });
  });

  it('accepts a range size larger than the file', () => {
    const plan = planRanges(5, GiB);
    expect(plan.count).toBe(1);
    expect(rangeAt(plan, 0)).toEqual({ index: 0, offset: 0, length: 5 });
  });

  it('rejects a negative, fractional, non-finite or unsafe file size', () => {
    expect(() => planRanges(-1)).toThrow(new RangeError('file size must be a non-negative integer, got -1'));
    expect(() => planRanges(1.5, MiB)).toThrow(new RangeError('file size must be a non-negative integer, got 1.5'));
    expect(() => planRanges(Number.NaN, MiB)).toThrow(new RangeError('file size must be a non-negative integer, got NaN'));
    expect(() => planRanges(Number.POSITIVE_INFINITY, MiB)).toThrow(new RangeError('file size must be a non-negative integer, got Infinity'));
    expect(() => planRanges(2 ** 53, MiB)).toThrow(new RangeError('file size must be a non-negative integer, got 9007199254740992'));
  });

  it('rejects a range size that is not a positive multiple of 1 MiB', () => {
    expect(() => planRanges(100, 0)).toThrow(new RangeError('range size must be a positive multiple of 1 MiB, got 0'));
    expect(() => planRanges(100, -MiB)).toThrow(new RangeError('range size must be a positive multiple of 1 MiB, got -1048576'));
    expect(() => planRanges(100, MiB - 1)).toThrow(new RangeError('range size must be a positive multiple of 1 MiB, got 1048575'));
    expect(() => planRanges(100, MiB + 1)).toThrow(new RangeError('range size must be a positive multiple of 1 MiB, got 1048577'));
    expect(() => planRanges(100, 1.5 * MiB)).toThrow(new RangeError('range size must be a positive multiple of 1 MiB, got 1572864'));
    expect(() => planRanges(100, Number.NaN)).toThrow(new RangeError('range size must be a positive multiple of 1 MiB, got NaN'));
  });

  it('throws RangeError instances for invalid input', () => {
    expect(() => planRanges(-1)).toThrow(RangeError);
    expect(() => planRanges(1, 3)).toThrow(RangeError);
  });
});

describe('rangeAt', () => {
  const plan = planRanges(3 * MiB + 7, MiB);

  it('computes every range of a small plan', () => {
    expect(allRanges(plan)).toEqual([
      { index: 0, offset: 0, length: MiB },
      { index: 1, offset: MiB, length: MiB },
      { index: 2, offset: 2 * MiB, length: MiB },
      { index: 3, offset: 3 * MiB, length: 7 },
    ]);
  });

  it('rejects an index equal to the range count', () => {
    expect(() => rangeAt(plan, 4)).toThrow(new RangeError('range index 4 outside plan of 4 ranges'));
  });

  it('rejects a negative index', () => {
    expect(() => rangeAt(plan, -1)).toThrow(new RangeError('range index -1 outside plan of 4 ranges'));
  });

  it('rejects a fractional or non-finite index', () => {
    expect(() => rangeAt(plan, 1.5)).toThrow(new RangeError('range index 1.5 outside plan of 4 ranges'));
    expect(() => rangeAt(plan, Number.NaN)).toThrow(new RangeError('range index NaN outside plan of 4 ranges'));
  });

  it('rejects every index of an empty plan', () => {
    expect(() => rangeAt(planRanges(0), 0)).toThrow(new RangeError('range index 0 outside plan of 0 ranges'));
  });
});
