/**
 * Range planning: a file of `fileBytes` is cut into `count` ranges of
 * `rangeBytes` (the last one shorter). Ranges are never materialised as a list:
 * a plan of a million ranges is three numbers, and `rangeAt(plan, i)` computes one.
 */
import { GiB, MiB } from './units.js';

export interface RangePlan {
  readonly fileBytes: number;
  readonly rangeBytes: number;
  readonly count: number;
}

export interface ByteRange {
  readonly index: number;
  readonly offset: number;
  readonly length: number;
}

/** Ranges are aligned to this so that they start on filesystem stripe and page boundaries. */
export const RANGE_ALIGN_BYTES = MiB;
/** Smallest range chosen automatically: below this, per-range control traffic starts to show. */
export const MIN_AUTO_RANGE_BYTES = 16 * MiB;
/** Largest range chosen automatically: a re-send after a failure costs at most this much. */
export const MAX_AUTO_RANGE_BYTES = GiB;
/** Automatic sizing aims for about this many ranges, enough to balance many agents. */
export const TARGET_RANGE_COUNT = 4096;

/**
 * Range size for a file when the user gave none: about TARGET_RANGE_COUNT ranges,
 * clamped to [16 MiB, 1 GiB] and aligned to 1 MiB.
 */
export function chooseRangeBytes(fileBytes: number): number {
  const wanted = Math.ceil(fileBytes / TARGET_RANGE_COUNT / RANGE_ALIGN_BYTES) * RANGE_ALIGN_BYTES;
  return Math.min(MAX_AUTO_RANGE_BYTES, Math.max(MIN_AUTO_RANGE_BYTES, wanted));
}

/** Plans the ranges of a file. `rangeBytes` must be a positive multiple of 1 MiB. */
export function planRanges(fileBytes: number, rangeBytes: number = chooseRangeBytes(fileBytes)): RangePlan {
  if (!Number.isSafeInteger(fileBytes) || fileBytes < 0) {
    throw new RangeError(`file size must be a non-negative integer, got ${fileBytes}`);
  }
  if (!Number.isSafeInteger(rangeBytes) || rangeBytes <= 0 || rangeBytes % RANGE_ALIGN_BYTES !== 0) {
    throw new RangeError(`range size must be a positive multiple of 1 MiB, got ${rangeBytes}`);
  }
  return { fileBytes, rangeBytes, count: Math.ceil(fileBytes / rangeBytes) };
}

export function rangeAt(plan: RangePlan, index: number): ByteRange {
  if (!Number.isInteger(index) || index < 0 || index >= plan.count) {
    throw new RangeError(`range index ${index} outside plan of ${plan.count} ranges`);
  }
  const offset = index * plan.rangeBytes;
  return { index, offset, length: Math.min(plan.rangeBytes, plan.fileBytes - offset) };
}
