/**
 * The control-plane benchmark (bench/coordinator.mjs): a job whose data path
 * discards. The coordinator plans, publishes, verifies and journals every
 * range as usual, agents pull and report them, but no SSH connection is made
 * and no byte is read or written. It takes two keys at once, so that a real
 * copy can never turn into one by accident:
 *
 *   FERRY_BENCH_DISCARD=1 ferry cp LOCAL_FILE discard:/any/path ...
 *
 * The variable alone refuses any other command line (a user who left it set
 * gets an error, not a copy that silently moves nothing); the host name alone
 * is just a host called `discard`.
 */
import { FerryError } from './errors.js';
import { hashBytes } from './hash.js';
import type { HashAlgorithm } from './hash.js';
import type { Location } from './location.js';
import type { ByteRange } from './ranges.js';

export const BENCH_DISCARD_ENV = 'FERRY_BENCH_DISCARD';
/** The destination host a discard job names: `discard:/path`. */
export const DISCARD_HOST = 'discard';

/**
 * Whether this command is a discard job: `envValue` is FERRY_BENCH_DISCARD.
 * Unset or empty: false. `1` with a local source and `discard:PATH` as the
 * destination: true. Anything else: a USAGE error.
 */
export function benchDiscardRequested(envValue: string | undefined, source: Location, destination: Location): boolean {
  if (envValue === undefined || envValue === '') return false;
  if (envValue !== '1') throw new FerryError('USAGE', `${BENCH_DISCARD_ENV} must be 1 or unset, got '${envValue}'`);
  const ok = source.kind === 'local' && destination.kind === 'remote' && destination.hosts.length === 1 && destination.host === DISCARD_HOST && destination.user === undefined && destination.port === undefined;
  if (!ok) {
    throw new FerryError(
      'USAGE',
      `${BENCH_DISCARD_ENV}=1 runs the control-plane benchmark, which moves no bytes; it needs a local source and the destination ${DISCARD_HOST}:PATH. Unset ${BENCH_DISCARD_ENV} for a real copy`,
    );
  }
  return true;
}

/**
 * The hash a discard agent reports for a range, as source and destination hash
 * alike: a hash of the range's coordinates, so each range has its own value of
 * the algorithm's usual length (messages and journal records have their real size).
 */
export function discardHash(algorithm: HashAlgorithm, range: Pick<ByteRange, 'offset' | 'length'>): string {
  const b = Buffer.allocUnsafe(16);
  b.writeDoubleBE(range.offset, 0);
  b.writeDoubleBE(range.length, 8);
  return hashBytes(algorithm, b);
}
