import { describe, expect, it } from 'vitest';
import { corruptRangesFrom } from '@ferry/core';

describe('corruptRangesFrom', () => {
  it('reads a comma-separated list of range indices, and nothing from an unset or empty value', () => {
    expect(corruptRangesFrom('3,7,0')).toEqual(new Set([3, 7, 0]));
    expect(corruptRangesFrom(undefined)).toBeUndefined();
    expect(corruptRangesFrom('')).toBeUndefined();
  });
});
