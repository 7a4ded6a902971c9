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
