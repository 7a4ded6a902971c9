import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { ErrorData } from '@ferry/core';
import { destDirProblem } from '../src/tree-pull.js';

describe("a pull agent's check of the directories above an entry", () => {
  const root = mkdtempSync(join(tmpdir(), 'ferry-dest-dirs-'));
  mkdirSync(join(root, 'a/b'), { recursive: true });
  mkdirSync(join(root, 'elsewhere'));
  symlinkSync(join(root, 'elsewhere'), join(root, 'a/link'));
  writeFileSync(join(root, 'a/file'), '');
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('lets an entry through directories, and one at the root', () => {
    const seen = new Map<string, ErrorData | null>();
    expect(destDirProblem(root, 'a/b/c.txt', seen)).toBeUndefined();
    expect(destDirProblem(root, 'top.txt', seen)).toBeUndefined();
    expect([...seen.keys()]).toEqual(['a', 'a/b']);
  });

  it('refuses to write through a symbolic link in place of a directory, and remembers it for the batch', () => {
    const seen = new Map<string, ErrorData | null>();
    expect(destDirProblem(root, 'a/link/x', seen)).toEqual({
      code: 'DEST_CONFLICT',
      message: `${root}/a/link/x was not written: ${root}/a/link is a symbolic link, not the directory this copy made: nothing is written through it. Move it away and copy again`,
      path: `${root}/a/link`,
    });
    expect(destDirProblem(root, 'a/link/deeper/y', seen)?.code).toBe('DEST_CONFLICT');
    expect(destDirProblem(root, 'a/file/z', seen)?.message).toContain(`${root}/a/file is not a directory`);
  });

  it('names a directory that is not there', () => {
    expect(destDirProblem(root, 'gone/x', new Map())).toEqual({ code: 'DEST_DIR_MISSING', message: `${root}/gone/x was not written: its directory ${root}/gone is not there (the copy made it: was it removed?)`, path: `${root}/gone`, errno: 'ENOENT' });
  });
});
