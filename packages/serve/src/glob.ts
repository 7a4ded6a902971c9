/**
 * GLOB: a remote source's pattern expanded here, without a shell (core's
 * glob.ts matches; this side lists directories), as scp's remote shell
 * would expand it.
 */
import { lstat, readdir } from 'node:fs/promises';
import { FerryError, expandGlob } from '@ferry/core';

/** The paths `pattern` (absolute) matches, sorted; none when nothing does. */
export async function globPaths(pattern: string): Promise<string[]> {
  try {
    return await expandGlob(pattern, {
      list: (dir) => readdir(dir).catch(() => undefined),
      exists: (path) => lstat(path).then(() => true, () => false),
    });
  } catch (err) {
    if (err instanceof RangeError) throw new FerryError('USAGE', `${err.message}: narrow the pattern, or copy the directory with -r`, { path: pattern });
    throw err;
  }
}
