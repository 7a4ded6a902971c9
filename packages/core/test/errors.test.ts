import { describe, expect, it } from 'vitest';
import { EXIT_CODES, FerryError, destinationError, errnoOf, exitCodeOf, isErrorCode, toFerryError } from '@ferry/core';
import type { ErrorCode, ErrorData } from '@ferry/core';

function sysError(code: string, message = `${code}: something`): NodeJS.ErrnoException {
  const err = new Error(message) as NodeJS.ErrnoException;
  err.code = code;
  return err;
}

describe('exit codes', () => {
  it('maps every error code to its documented exit code', () => {
    expect(EXIT_CODES).toEqual({
      INTERNAL: 1,
      USAGE: 2,
      SOURCE_NOT_FOUND: 10,
      SOURCE_UNREADABLE: 11,
      SOURCE_CHANGED: 12,
      DEST_DIR_MISSING: 20,
      DEST_NOT_WRITABLE: 21,
      DEST_NO_SPACE: 22,
      DEST_IO: 23,
      DEST_REPLACED: 24,
      DEST_CONFLICT: 25,
      SSH_AUTH_FAILED: 30,
      HOST_KEY_UNKNOWN: 31,
      HOST_KEY_CHANGED: 32,
      HOST_UNREACHABLE: 40,
      CONNECTION_LOST: 41,
      NATS_UNREACHABLE: 42,
      VERIFY_FAILED: 50,
      HASH_MISMATCH: 51,
      COPIES_DIFFER: 53,
      CHECK_INCOMPLETE: 54,
      NATS_SERVER_MISSING: 60,
      HELPER_UNAVAILABLE: 61,
      HELPER_UNTRUSTED: 64,
      PROTOCOL: 62,
      SSH_CLIENT_MISSING: 63,
      AGENTS_FAILED: 70,
      RANGE_FAILED: 71,
      TREE_PARTIAL: 72,
      INTERRUPTED: 130,
    });
  });

  it('gives every code a distinct exit code', () => {
    const values = Object.values(EXIT_CODES);
    expect(new Set(values).size).toBe(values.length);
  });
});

describe('FerryError', () => {
  it('carries code, message, name and optional fields', () => {
    const cause = new Error('root');
    const err = new FerryError('DEST_IO', 'disk hiccup', { host: 'dtn01', path: '/x', range: 7, cause });
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('FerryError');
    expect(err.code).toBe('DEST_IO');
    expect(err.message).toBe('disk hiccup');
    expect(err.host).toBe('dtn01');
    expect(err.path).toBe('/x');
    expect(err.range).toBe(7);
    expect(err.cause).toBe(cause);
    expect(err.exitCode).toBe(23);
  });

  it('has no cause and no fields when none are given', () => {
    const err = new FerryError('USAGE', 'bad');
    expect(err.host).toBeUndefined();
    expect(err.path).toBeUndefined();
    expect(err.range).toBeUndefined();
    expect(err.errno).toBeUndefined();
    expect('cause' in err).toBe(false);
  });

  it('is retryable only for lost connections, unreachable hosts or NATS, destination I/O errors and hash mismatches', () => {
    const retryable = (Object.keys(EXIT_CODES) as ErrorCode[]).filter((code) => new FerryError(code, 'x').retryable);
    expect(retryable.sort()).toEqual(['CONNECTION_LOST', 'DEST_IO', 'HASH_MISMATCH', 'HOST_UNREACHABLE', 'NATS_UNREACHABLE']);
  });

  it('takes the errno of a system error given as cause', () => {
    const err = new FerryError('SOURCE_UNREADABLE', 'cannot read', { cause: sysError('EACCES') });
    expect(err.errno).toBe('EACCES');
    expect(err.toData()).toEqual({ code: 'SOURCE_UNREADABLE', message: 'cannot read', errno: 'EACCES' });
  });

  it('prefers an explicit errno to the one of its cause', () => {
    const err = new FerryError('DEST_IO', 'x', { errno: 'EIO', cause: sysError('ENOSPC') });
    expect(err.errno).toBe('EIO');
  });

  it('takes the errno of a FerryError given as cause', () => {
    const inner = new FerryError('DEST_NO_SPACE', 'full', { errno: 'ENOSPC' });
    expect(new FerryError('RANGE_FAILED', 'range 3 failed', { cause: inner }).errno).toBe('ENOSPC');
  });

  it('converts to plain data without undefined fields', () => {
    expect(new FerryError('USAGE', 'bad').toData()).toEqual({ code: 'USAGE', message: 'bad' });
    expect(Object.keys(new FerryError('USAGE', 'bad').toData())).toEqual(['code', 'message']);
    expect(new FerryError('RANGE_FAILED', 'r', { host: 'h', path: '/p', range: 0, cause: new Error('c') }).toData()).toEqual({
      code: 'RANGE_FAILED',
      message: 'r',
      host: 'h',
      path: '/p',
      range: 0,
    });
  });

  it('round-trips through plain data', () => {
    const data: ErrorData = { code: 'VERIFY_FAILED', message: 'hash mismatch', host: 'h', path: '/p', range: 2 ** 33, errno: 'EIO' };
    const err = FerryError.fromData(data);
    expect(err).toBeInstanceOf(FerryError);
    expect(err.toData()).toEqual(data);
    expect(err.exitCode).toBe(50);
  });

  it('becomes INTERNAL when plain data carries an unknown code', () => {
    const err = FerryError.fromData({ code: 'NOPE' as ErrorCode, message: 'from a newer build' });
    expect(err.code).toBe('INTERNAL');
    expect(err.message).toBe('from a newer build');
  });

  it('drops a non-string errno from plain data', () => {
    const err = FerryError.fromData({ code: 'DEST_IO', message: 'x', errno: 5 as unknown as string });
    expect(err.errno).toBeUndefined();
    expect(err.toData()).toEqual({ code: 'DEST_IO', message: 'x' });
  });

  it('turns a non-string message in plain data into text', () => {
    const err = FerryError.fromData({ code: 'USAGE', message: 42 as unknown as string });
    expect(err.message).toBe('42');
  });
});

describe('isErrorCode', () => {
  it('accepts only the listed codes', () => {
    expect(isErrorCode('PROTOCOL')).toBe(true);
    expect(isErrorCode('protocol')).toBe(false);
    expect(isErrorCode('toString')).toBe(false);
    expect(isErrorCode('__proto__')).toBe(false);
    expect(isErrorCode(62)).toBe(false);
    expect(isErrorCode(undefined)).toBe(false);
  });
});

describe('toFerryError and exitCodeOf', () => {
  it('passes a FerryError through unchanged', () => {
    const err = new FerryError('USAGE', 'x');
    expect(toFerryError(err)).toBe(err);
    expect(exitCodeOf(err)).toBe(2);
  });

  it('wraps an Error as INTERNAL with the original as cause', () => {
    const original = new TypeError('boom');
    const err = toFerryError(original);
    expect(err.code).toBe('INTERNAL');
    expect(err.message).toBe('boom');
    expect(err.cause).toBe(original);
    expect(exitCodeOf(original)).toBe(1);
  });

  it('wraps a thrown non-error value as INTERNAL with its text as message', () => {
    const err = toFerryError('just a string');
    expect(err.code).toBe('INTERNAL');
    expect(err.message).toBe('just a string');
    expect(err.cause).toBe('just a string');
    expect(toFerryError(undefined).message).toBe('undefined');
  });
});

describe('errnoOf', () => {
  it('returns the errno code of a system error', () => {
    expect(errnoOf(sysError('ENOSPC'))).toBe('ENOSPC');
  });

  it('returns the errno carried by a FerryError', () => {
    expect(errnoOf(new FerryError('DEST_IO', 'x', { errno: 'EIO' }))).toBe('EIO');
    expect(errnoOf(new FerryError('DEST_IO', 'x'))).toBeUndefined();
  });

  it('ignores codes that are not errno names, such as Node ERR_ codes', () => {
    expect(errnoOf({ code: 'ERR_STREAM_DESTROYED' })).toBeUndefined();
    expect(errnoOf({ code: 'enoent' })).toBeUndefined();
    expect(errnoOf({ code: 'E' })).toBeUndefined();
    expect(errnoOf({ code: 'ECONNRESET' })).toBe('ECONNRESET');
  });

  it('returns undefined for values without a string code', () => {
    expect(errnoOf(new Error('x'))).toBeUndefined();
    expect(errnoOf({ code: 28 })).toBeUndefined();
    expect(errnoOf(null)).toBeUndefined();
    expect(errnoOf(undefined)).toBeUndefined();
    expect(errnoOf('ENOSPC')).toBeUndefined();
  });
});

describe('destinationError', () => {
  it('maps ENOSPC and EDQUOT to DEST_NO_SPACE with advice to free space and rerun', () => {
    for (const errno of ['ENOSPC', 'EDQUOT']) {
      const cause = sysError(errno);
      const err = destinationError(cause, { host: 'dtn01', path: '/data/f.part' });
      expect(err.code).toBe('DEST_NO_SPACE');
      expect(err.message).toBe(
        'no space left on the destination filesystem writing dtn01:/data/f.part: free space (or raise the quota) and rerun the same command to resume',
      );
      expect(err.host).toBe('dtn01');
      expect(err.path).toBe('/data/f.part');
      expect(err.cause).toBe(cause);
      expect(err.errno).toBe(errno);
      expect(err.exitCode).toBe(22);
    }
  });

  it('maps EACCES, EPERM and EROFS to DEST_NOT_WRITABLE', () => {
    for (const errno of ['EACCES', 'EPERM', 'EROFS']) {
      const err = destinationError(sysError(errno), { path: '/ro/f' });
      expect(err.code).toBe('DEST_NOT_WRITABLE');
      expect(err.message).toBe('permission denied writing /ro/f: choose a directory you can write to, or fix its permissions');
      expect(err.host).toBeUndefined();
    }
  });

  it('maps ENOENT to DEST_DIR_MISSING', () => {
    const err = destinationError(sysError('ENOENT'), { host: 'h', path: '/no/such/f' });
    expect(err.code).toBe('DEST_DIR_MISSING');
    expect(err.message).toBe('destination directory of h:/no/such/f does not exist: create it first (ferry does not create directories)');
  });

  it('maps ENOTDIR to DEST_DIR_MISSING, saying that something on the way is not a directory', () => {
    const err = destinationError(sysError('ENOTDIR'), { host: 'h', path: '/file/f' });
    expect(err.code).toBe('DEST_DIR_MISSING');
    expect(err.message).toBe('destination h:/file/f cannot be written: a component of its directory is not a directory: choose a destination in an existing directory');
  });

  it('maps any other error to DEST_IO with the original message', () => {
    const err = destinationError(sysError('EIO', 'EIO: i/o error, write'), { path: '/f' });
    expect(err.code).toBe('DEST_IO');
    expect(err.message).toBe('I/O error writing /f: EIO: i/o error, write');
    expect(err.errno).toBe('EIO');
    expect(err.retryable).toBe(true);
    expect(destinationError('weird', { path: '/f' }).message).toBe('I/O error writing /f: weird');
    expect(destinationError('weird', { path: '/f' }).errno).toBeUndefined();
  });

  it('passes a FerryError through unchanged', () => {
    const original = new FerryError('CONNECTION_LOST', 'gone', { host: 'h' });
    expect(destinationError(original, { path: '/f' })).toBe(original);
  });
});
