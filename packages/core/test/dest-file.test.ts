import { describe, expect, it } from 'vitest';
import { EXIT_CODES, copyMode, identityOf, identityProblem, replacedError, tempNameFor } from '@ferry/core';

const mine = { ino: 4242, uid: 1000, dev: 7, size: 1024 };
const file = { type: 'file' as const, ino: 4242, dev: 7, uid: 1000, nlink: 1, size: 1024 };

describe('identityProblem', () => {
  it('accepts the file the job created', () => {
    expect(identityProblem(mine, file)).toBeUndefined();
  });

  it('ignores the device number, which differs between the clients of a shared file system', () => {
    expect(identityProblem(mine, { ...file, dev: 99 })).toBeUndefined();
  });

  it('names a symbolic link, a directory and anything else that is not a regular file', () => {
    expect(identityProblem(mine, { ...file, link: true })).toBe('a symbolic link');
    expect(identityProblem(mine, { ...file, type: 'directory' })).toBe('a directory');
    expect(identityProblem(mine, { ...file, type: 'other' })).toBe('something that is not a regular file');
  });

  it("names another user's file by its owner, before anything else about it", () => {
    expect(identityProblem(mine, { ...file, uid: 1001, ino: 1 })).toBe('a file owned by uid 1001, not uid 1000');
  });

  it('names another file of the same owner by its inode, and a second hard link to it', () => {
    expect(identityProblem(mine, { ...file, ino: 17 })).toBe('another file (inode 17, not 4242)');
    expect(identityProblem(mine, { ...file, nlink: 2 })).toBe('the file, but with 2 names (hard links)');
  });

  it('tells a file of another size where there are no inode numbers (SFTP: both 0)', () => {
    expect(identityProblem({ ino: 0, uid: 1000, size: 1024 }, { ...file, ino: 0, size: 32 })).toBe('a file of 32 bytes, not 1024');
    expect(identityProblem({ ino: 0, uid: 1000 }, { ...file, ino: 0, size: 32 })).toBeUndefined();
  });

  it('keeps what a created file is: inode, owner, device and size', () => {
    expect(identityOf({ ino: 1, dev: 2, uid: 3, size: 4 })).toEqual({ ino: 1, dev: 2, uid: 3, size: 4 });
    expect(() => identityOf({ ino: 1, dev: 2, size: 4 })).toThrow('without its owner');
  });
});

describe('replacedError', () => {
  it('says what was found, that the job is kept, and what to do, with its own exit code', () => {
    const e = replacedError('dtn:/proj/.x.ferry-ab.part', 'a symbolic link', { host: 'dtn' });
    expect(e.code).toBe('DEST_REPLACED');
    expect(e.exitCode).toBe(24);
    expect(EXIT_CODES.DEST_REPLACED).toBe(24);
    expect(e.host).toBe('dtn');
    expect(e.message).toBe(
      'the partial file dtn:/proj/.x.ferry-ab.part is not the file ferry created: found a symbolic link. Another user who can write in its directory may have replaced it; nothing was renamed into place and the job is kept. Check who can write in that directory, move the file away, and rerun with --restart',
    );
  });
});

describe('copyMode', () => {
  it("without -p: the source's permission bits limited by the umask, as scp", () => {
    expect(copyMode(0o600, 0o022, false)).toBe(0o600);
    expect(copyMode(0o640, 0o022, false)).toBe(0o640);
    expect(copyMode(0o666, 0o022, false)).toBe(0o644);
    expect(copyMode(0o775, 0o027, false)).toBe(0o750);
    expect(copyMode(0o100644, 0o022, false)).toBe(0o644);
  });

  it('without -p drops set-id and sticky bits; with -p keeps the whole mode and ignores the umask', () => {
    expect(copyMode(0o4755, 0o022, false)).toBe(0o755);
    expect(copyMode(0o4755, 0o077, true)).toBe(0o4755);
    expect(copyMode(0o100640, 0o077, true)).toBe(0o640);
  });
});

describe('tempNameFor', () => {
  it('puts a hidden name with the random token next to the target', () => {
    expect(tempNameFor('/proj/data/big.h5', 'c0ffee')).toBe('/proj/data/.big.h5.ferry-c0ffee.part');
  });
});
