import { describe, expect, it } from 'vitest';
import { FerryError, benchDiscardRequested, discardHash, parseLocation } from '@ferry/core';

const local = parseLocation('/data/big.bin');
const discard = parseLocation('discard:/bench/');

function usage(fn: () => unknown): FerryError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('USAGE');
    return err as FerryError;
  }
  throw new Error('expected a USAGE error');
}

describe('benchDiscardRequested', () => {
  it('is off when FERRY_BENCH_DISCARD is unset or empty, whatever the destination', () => {
    expect(benchDiscardRequested(undefined, local, discard)).toBe(false);
    expect(benchDiscardRequested('', local, discard)).toBe(false);
    expect(benchDiscardRequested(undefined, local, parseLocation('dtn:/x/'))).toBe(false);
  });

  it('is on with FERRY_BENCH_DISCARD=1, a local source and discard:PATH', () => {
    expect(benchDiscardRequested('1', local, discard)).toBe(true);
    expect(benchDiscardRequested('1', local, parseLocation('discard:relative'))).toBe(true);
  });

  it('refuses a real copy while the variable is set, rather than copy nothing', () => {
    const e = usage(() => benchDiscardRequested('1', local, parseLocation('user@dtn:/x/')));
    expect(e.message).toContain('Unset FERRY_BENCH_DISCARD');
    usage(() => benchDiscardRequested('1', local, parseLocation('dtn1:/x/')));
    usage(() => benchDiscardRequested('1', local, parseLocation('discard,dtn1:/x/')));
    usage(() => benchDiscardRequested('1', local, parseLocation('user@discard:/x/')));
    usage(() => benchDiscardRequested('1', local, parseLocation('discard:2222:/x/')));
    usage(() => benchDiscardRequested('1', parseLocation('discard:/x/big.bin'), parseLocation('/tmp/')));
  });

  it('accepts no other value than 1', () => {
    for (const v of ['0', 'yes', 'true', ' 1']) expect(usage(() => benchDiscardRequested(v, local, discard)).message).toContain('must be 1 or unset');
  });
});

describe('discardHash', () => {
  it('is the algorithm\'s length, the same for the same range and different for another', () => {
    const a = discardHash('xxh3', { offset: 0, length: 1 << 20 });
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(discardHash('xxh3', { offset: 0, length: 1 << 20 })).toBe(a);
    expect(discardHash('xxh3', { offset: 1 << 20, length: 1 << 20 })).not.toBe(a);
    expect(discardHash('sha256', { offset: 0, length: 1 << 20 })).toMatch(/^[0-9a-f]{64}$/);
  });
});
