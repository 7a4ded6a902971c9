/**
 * The list files of `ferry check` (openReportFile) and the exit status a
 * check's counts stand for (checkOutcome).
 */
import { chown, link, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkOutcome, openReportFile } from '@ferry/coordinator';

const isRoot = process.getuid?.() === 0;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-report-file-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('openReportFile', () => {
  it('creates a new file, and empties and writes over one of yours, as > would', async () => {
    const fresh = join(dir, 'fresh.txt');
    const f = await openReportFile(fresh, '--differ');
    f.write('a\n');
    f.write('b\n');
    await f.close();
    expect(await readFile(fresh, 'utf8')).toBe('a\nb\n');
    const old = join(dir, 'old.txt');
    await writeFile(old, 'x'.repeat(100_000));
    const ino = (await stat(old)).ino;
    const g = await openReportFile(old, '--combined');
    for (let i = 0; i < 20_000; i++) g.write(`= file${i}\n`);
    await g.close();
    const text = await readFile(old, 'utf8');
    expect(text.split('\n')).toHaveLength(20_001);
    expect(text.startsWith('= file0\n')).toBe(true);
    // The same file, written in place (its owner, mode and links stay as they were).
    expect((await stat(old)).ino).toBe(ino);
  });

  it('never writes through a symbolic link, into a file with another name, or into a directory', async () => {
    const target = join(dir, 'precious.txt');
    await writeFile(target, 'keep\n');
    await symlink(target, join(dir, 'link.txt'));
    await expect(openReportFile(join(dir, 'link.txt'), '--match')).rejects.toThrow(`--match ${join(dir, 'link.txt')} is a symbolic link, which ferry does not write through: remove it or name another file`);
    await link(target, join(dir, 'second-name.txt'));
    await expect(openReportFile(join(dir, 'second-name.txt'), '--match')).rejects.toThrow(/has 2 names \(hard links\): ferry does not write over a file that is also elsewhere/);
    expect(await readFile(target, 'utf8')).toBe('keep\n');
    await expect(openReportFile(dir, '--error')).rejects.toMatchObject({ code: 'USAGE' });
  });

  it.skipIf(!isRoot)("never writes over another user's file", async () => {
    const theirs = join(dir, 'theirs.txt');
    await writeFile(theirs, 'theirs\n');
    await chown(theirs, 65534, 65534);
    await expect(openReportFile(theirs, '--differ')).rejects.toThrow(/belongs to uid 65534, not you \(uid 0\): ferry does not write over another user's file/);
    expect(await readFile(theirs, 'utf8')).toBe('theirs\n');
  });
});

describe('checkOutcome', () => {
  it('is none only for identical trees; a difference outranks entries not compared', () => {
    expect(checkOutcome({ differ: 0, missingOnDst: 0, missingOnSrc: 0, errors: 0 })).toBeUndefined();
    expect(checkOutcome({ differ: 0, missingOnDst: 0, missingOnSrc: 1, errors: 2 })).toMatchObject({ code: 'COPIES_DIFFER', exitCode: 53, message: 'the copies differ: 0 differ, 0 only in the source, 1 only in the destination, 2 not compared' });
    expect(checkOutcome({ differ: 0, missingOnDst: 0, missingOnSrc: 0, errors: 1 })).toMatchObject({ code: 'CHECK_INCOMPLETE', exitCode: 54, message: 'no difference found, but 1 entry could not be compared (listed with !)' });
  });
});
