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

/**
 * FERRY_TEST_STOP_BEFORE_READ=PATH,PATH: the process pushing a tree's batch
 * stops itself (SIGSTOP) just before it opens the file at each of these tree
 * paths (relative to the tree's root), a pull's just before it asks the
 * remote side to read a batch with one of them, after the walk listed it, saying so
 * on stderr (`ferry: test hook: stopped before reading PATH`); a test
 * changes or deletes the file there and sends SIGCONT, as a user's job could
 * between ferry's walk and its read. Unset in real use.
 */
export const STOP_BEFORE_READ_ENV = 'FERRY_TEST_STOP_BEFORE_READ';

/** The tree paths named by FERRY_TEST_STOP_BEFORE_READ, or undefined when it is unset or empty. */
export function stopBeforeReadFrom(value: string | undefined): ReadonlySet<string> | undefined {
  return value ? new Set(value.split(',')) : undefined;
}
