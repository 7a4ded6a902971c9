import { describe, expect, it } from 'vitest';
import { GiB, KiB, MiB, formatBytes, formatDuration, formatRate, parseDuration, parseSize } from '@ferry/core';

describe('parseSize', () => {
  it('exports binary unit constants', () => {
    expect(KiB).toBe(1024);
    expect(MiB).toBe(1048576);
    expect(GiB).toBe(1073741824);
  });

  it('reads a bare number as bytes', () => {
    expect(parseSize('0')).toBe(0);
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('4096b')).toBe(4096);
    expect(parseSize('4096B')).toBe(4096);
  });

  it('reads IEC suffixes as powers of 1024', () => {
    expect(parseSize('1KiB')).toBe(1024);
    expect(parseSize('64MiB')).toBe(67108864);
    expect(parseSize('2GiB')).toBe(2147483648);
    expect(parseSize('3TiB')).toBe(3 * 2 ** 40);
  });

  it('reads bare k, m, g and t as binary, as dd and rsync do', () => {
    expect(parseSize('1k')).toBe(1024);
    expect(parseSize('8m')).toBe(8388608);
    expect(parseSize('2g')).toBe(2147483648);
    expect(parseSize('1t')).toBe(1099511627776);
  });

  it('reads SI suffixes as powers of 1000', () => {
    expect(parseSize('1kB')).toBe(1000);
    expect(parseSize('64MB')).toBe(64_000_000);
    expect(parseSize('1.5GB')).toBe(1_500_000_000);
    expect(parseSize('2TB')).toBe(2_000_000_000_000);
  });

  it('ignores the case of the suffix', () => {
    expect(parseSize('64mib')).toBe(67108864);
    expect(parseSize('64MIB')).toBe(67108864);
    expect(parseSize('2G')).toBe(2147483648);
    expect(parseSize('1gb')).toBe(1_000_000_000);
  });

  it('allows spaces around the number and between number and unit', () => {
    expect(parseSize('  64 MiB  ')).toBe(67108864);
    expect(parseSize('\t1k\n')).toBe(1024);
  });

  it('accepts fractions and rounds to a whole byte', () => {
    expect(parseSize('1.5KiB')).toBe(1536);
    expect(parseSize('0.5k')).toBe(512);
    expect(parseSize('1.5')).toBe(2);
    expect(parseSize('1.0000001KiB')).toBe(1024);
  });

  it('accepts sizes above 4 GiB exactly', () => {
    expect(parseSize('6GiB')).toBe(6442450944);
    expect(parseSize('4294967297')).toBe(4294967297);
  });

  it('accepts the largest safe integer and rejects anything above it', () => {
    expect(parseSize('9007199254740991')).toBe(Number.MAX_SAFE_INTEGER);
    expect(parseSize('9007199254740993')).toBeUndefined();
    expect(parseSize('8192TiB')).toBeUndefined();
    expect(parseSize('1' + '0'.repeat(400))).toBeUndefined();
  });

  it('returns undefined for text that is not a size', () => {
    for (const text of ['', ' ', 'MiB', 'abc', '-1', '-1MiB', '+5', '1.', '.5k', '1e6', '1,5MiB', '5 PiB', '5x', '5 k b', '0x10', 'Infinity', 'NaN']) {
      expect(parseSize(text), text).toBeUndefined();
    }
  });
});

describe('parseDuration', () => {
  it('reads a bare number as seconds', () => {
    expect(parseDuration('30')).toBe(30_000);
    expect(parseDuration('0')).toBe(0);
  });

  it('reads ms, s, m and h', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('1h')).toBe(3_600_000);
  });

  it('ignores the case of the unit and surrounding spaces', () => {
    expect(parseDuration(' 30 S ')).toBe(30_000);
    expect(parseDuration('250MS')).toBe(250);
    expect(parseDuration('1H')).toBe(3_600_000);
  });

  it('accepts fractions and rounds to a whole millisecond', () => {
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('0.5m')).toBe(30_000);
    expect(parseDuration('1.5h')).toBe(5_400_000);
    expect(parseDuration('0.4ms')).toBe(0);
    expect(parseDuration('0.0015')).toBe(2);
  });

  it('returns undefined for text that is not a duration', () => {
    for (const text of ['', 'abc', 's', '-1s', '1d', '1 min', '10sec', '1.s', '.5s', '1e3', '5 5s', '1hm']) {
      expect(parseDuration(text), text).toBeUndefined();
    }
  });
});

describe('formatBytes', () => {
  it('prints whole bytes below 1 KiB', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1)).toBe('1 B');
    expect(formatBytes(1023)).toBe('1023 B');
  });

  it('prints one decimal below 100 of a unit', () => {
    expect(formatBytes(1024)).toBe('1.0 KiB');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(64 * MiB)).toBe('64.0 MiB');
    expect(formatBytes(6 * GiB)).toBe('6.0 GiB');
    expect(formatBytes(2 ** 32 + 2 ** 31)).toBe('6.0 GiB');
    expect(formatBytes(1.25 * 2 ** 40)).toBe('1.3 TiB');
  });

  it('prints no decimal from 100 of a unit upwards', () => {
    expect(formatBytes(100 * KiB)).toBe('100 KiB');
    expect(formatBytes(512 * MiB)).toBe('512 MiB');
    expect(formatBytes(1000 * GiB)).toBe('1000 GiB');
  });

  it('stops at PiB for very large sizes', () => {
    expect(formatBytes(2 ** 50)).toBe('1.0 PiB');
    expect(formatBytes(2 ** 60)).toBe('1024 PiB');
  });

  it('moves to the next unit when rounding reaches 1024', () => {
    expect(formatBytes(MiB - 1)).toBe('1.0 MiB');
    expect(formatBytes(GiB - 1)).toBe('1.0 GiB');
    expect(formatBytes(1023 * KiB)).toBe('1023 KiB');
    expect(formatBytes(1023.5 * KiB - 1)).toBe('1023 KiB');
    expect(formatBytes(1023.5 * KiB)).toBe('1.0 MiB');
  });

  it('keeps the sign of a negative size', () => {
    expect(formatBytes(-5)).toBe('-5 B');
    expect(formatBytes(-1536)).toBe('-1.5 KiB');
  });
});

describe('formatRate', () => {
  it('prints decimal megabytes per second with one decimal', () => {
    expect(formatRate(0)).toBe('0.0 MB/s');
    expect(formatRate(1_000_000)).toBe('1.0 MB/s');
    expect(formatRate(12_345_678)).toBe('12.3 MB/s');
    expect(formatRate(1_250_000_000)).toBe('1250.0 MB/s');
  });
});

describe('formatDuration', () => {
  it('prints seconds alone below a minute', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(5)).toBe('5s');
    expect(formatDuration(59)).toBe('59s');
  });

  it('prints minutes and zero-padded seconds below an hour', () => {
    expect(formatDuration(60)).toBe('1m00s');
    expect(formatDuration(65)).toBe('1m05s');
    expect(formatDuration(3599)).toBe('59m59s');
  });

  it('prints hours with zero-padded minutes and seconds', () => {
    expect(formatDuration(3600)).toBe('1h00m00s');
    expect(formatDuration(3725)).toBe('1h02m05s');
    expect(formatDuration(100 * 3600 + 1)).toBe('100h00m01s');
  });

  it('rounds to the nearest second before splitting', () => {
    expect(formatDuration(59.5)).toBe('1m00s');
    expect(formatDuration(1.4)).toBe('1s');
  });

  it('prints -- for negative, infinite or NaN durations', () => {
    expect(formatDuration(-1)).toBe('--');
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe('--');
    expect(formatDuration(Number.NaN)).toBe('--');
  });
});
