/**
 * Fault injection for ferry's own tests: FERRY_TEST_CORRUPT_RANGES=3,7 makes
 * agents corrupt the first attempt of those ranges, so tests can prove that a
 * hash mismatch is caught and the range sent again. Unset in real use.
 */
export const CORRUPT_RANGES_ENV = 'FERRY_TEST_CORRUPT_RANGES';

/** The range indices named by FERRY_TEST_CORRUPT_RANGES, or undefined when it is unset or empty. */
export function corruptRangesFrom(value: string | undefined): ReadonlySet<number> | undefined {
  return value ? new Set(value.split(',').map(Number)) : undefined;
}

/**
 * FERRY_TEST_HOLD_BATCHES=SUFFIX: an agent of a tree job whose name ends with
 * SUFFIX writes each batch it takes and then holds its results until it
 * stops, as an agent that dies before it could report; tests kill it there
 * and prove that its batches go to another agent. Unset in real use.
 */
export const HOLD_BATCHES_ENV = 'FERRY_TEST_HOLD_BATCHES';
