/**
 * The tree benchmark's generator and comparison (bench/tree-lib.mjs): the
 * comparison must see every kind of difference, or the benchmark's "0
 * differences" would prove nothing.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { appendFile, chmod, link, lstat, readdir, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from './helpers.js';
// A plain ES module of the benchmarks (no types).
import { compareTrees, generateTree } from '../bench/tree-lib.mjs';

let dir: { path: string; remove(): Promise<void> };
beforeEach(async () => {
  dir = await tempDir('ferry-tree-lib-');
});
afterEach(async () => {
  await dir.remove();
});

async function allPaths(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel === '' ? e.name : `${rel}/${e.name}`;
    out.push(p);
    if (e.isDirectory()) out.push(...(await allPaths(root, p)));
  }
  return out;
}

describe('bench/tree-lib.mjs', () => {
  it('generates the same tree from the same seed, with every kind of entry', async () => {
    const a = join(dir.path, 'a');
    const b = join(dir.path, 'b');
    const counts = await generateTree(a, { files: 400, big: 1, bigBytes: 3 * 2 ** 20, seed: 7 });
    await generateTree(b, { files: 400, big: 1, bigBytes: 3 * 2 ** 20, seed: 7 });
    expect(counts).toMatchObject({ files: 402, dirs: 11, symlinks: 4, hardlinks: 2, sparse: 1 });
    expect((await compareTrees(a, b)).same).toBe(true);
    const paths = await allPaths(a);
    const kinds = await Promise.all(paths.map(async (p) => (await lstat(join(a, p))).isSymbolicLink()));
    expect(kinds.filter(Boolean)).toHaveLength(4);
    expect((await lstat(join(a, paths.find((p) => p.endsWith('.img'))!))).blocks * 512).toBeLessThan(64 * 2 ** 20);
  });

  it('finds no difference in a cp -a copy and names each kind of change', async () => {
    const src = join(dir.path, 'src');
    const dst = join(dir.path, 'dst');
    await generateTree(src, { files: 300, big: 0, seed: 3 });
    execFileSync('cp', ['-a', src, dst]);
    expect(await compareTrees(src, dst)).toMatchObject({ same: true, differences: {} });

    const paths = await allPaths(dst);
    const files = [];
    for (const p of paths) {
      const st = await lstat(join(dst, p));
      if (st.isFile() && st.nlink === 1 && st.size > 0) files.push(p);
    }
    const link1 = paths.find((p) => /\/?link\w+$/.test(p) && !p.includes('missing'))!;
    const hard = paths.find((p) => /\/?hard\w+$/.test(p))!;
    await appendFile(join(dst, files[0]!), 'x'); // size
    const st1 = await lstat(join(src, files[1]!));
    const body = Buffer.from(await (await import('node:fs/promises')).readFile(join(src, files[1]!)));
    body[0] = body[0]! ^ 1;
    await writeFile(join(dst, files[1]!), body); // content, same size
    await utimes(join(dst, files[1]!), st1.atime, st1.mtime);
    await chmod(join(dst, files[2]!), 0o600 === ((await lstat(join(src, files[2]!))).mode & 0o777) ? 0o644 : 0o600); // mode
    await utimes(join(dst, files[3]!), 1e9, 1e9); // mtime
    await unlink(join(dst, link1));
    await symlink('elsewhere', join(dst, link1)); // target
    const hardBody = await (await import('node:fs/promises')).readFile(join(dst, hard));
    const hardSt = await lstat(join(dst, hard));
    await unlink(join(dst, hard));
    await writeFile(join(dst, hard), hardBody, { mode: hardSt.mode & 0o7777 }); // a copy, not a link
    await utimes(join(dst, hard), hardSt.atime, hardSt.mtime);
    await rm(join(dst, files[4]!)); // missing
    await writeFile(join(dst, 'stray'), ''); // extra
    await link(join(dst, files[5]!), join(dst, 'stray2')); // extra, and files[5] gained a name
    const img = paths.find((p) => p.endsWith('.img'))!;
    const imgSt = await lstat(join(src, img));
    await rm(join(dst, img));
    execFileSync('cp', ['--sparse=never', '--preserve=mode,timestamps', join(src, img), join(dst, img)]); // filled in
    expect((await lstat(join(dst, img))).size).toBe(imgSt.size);

    const r = await compareTrees(src, dst, { times: true });
    expect(r.same).toBe(false);
    expect(r.differences.size).toEqual([files[0]]);
    expect(r.differences.content).toEqual([files[1]]);
    expect(r.differences.mode).toEqual([files[2]]);
    expect(r.differences.mtime).toEqual(expect.arrayContaining([files[3]]));
    expect(r.differences.target).toEqual([link1]);
    expect(r.differences.hardlink).toEqual(expect.arrayContaining([hard, files[5]]));
    expect(r.differences.missing).toEqual([files[4]]);
    expect(r.differences.extra.sort()).toEqual(['stray', 'stray2']);
    expect(r.differences.sparse).toEqual([img]);
  });

  it('reuses the source hashes it is given and still sees a changed copy', async () => {
    const src = join(dir.path, 'src');
    const dst = join(dir.path, 'dst');
    await generateTree(src, { files: 100, big: 0, seed: 5 });
    execFileSync('cp', ['-a', src, dst]);
    const sourceHashes = new Map<string, string>();
    expect((await compareTrees(src, dst, { sourceHashes })).same).toBe(true);
    expect(sourceHashes.size).toBeGreaterThan(90);

    const [path] = [...sourceHashes.keys()].filter((p) => !p.endsWith('.img'));
    const st = await lstat(join(dst, path!));
    const body = Buffer.from(await (await import('node:fs/promises')).readFile(join(dst, path!)));
    body[0] = body[0]! ^ 1;
    await writeFile(join(dst, path!), body);
    await utimes(join(dst, path!), st.atime, st.mtime);
    expect((await compareTrees(src, dst, { sourceHashes })).differences).toEqual({ content: [path] });
  });
});
