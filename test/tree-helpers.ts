/** What the tree tests (push and pull) share: the command line, remote paths, listing a tree. */
import { appendFile, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Sshd } from './fixtures/sshd.mjs';

/**
 * `ferry cp -r`'s common options against a test sshd: a 2 MiB file counts as
 * big here (it is striped as a copy of its own), 64 KiB as small.
 */
export function treeArgs(server: Sshd, stateDir: string, extra: readonly string[] = []): string[] {
  return ['-i', server.userKey, '--known-hosts', server.knownHosts, '--state-dir', stateDir, '--batch-files-under', '64KiB', '--stripe-files-over', '2MiB', '--json', ...extra];
}

/** `host:port:path` on a test sshd. */
export function on(server: Sshd, path: string): string {
  return `${server.host}:${server.port}:${path}`;
}

/** Every path under `root` (`/`-separated, relative), directories' contents after them. */
export async function listAll(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel === '' ? e.name : `${rel}/${e.name}`;
    out.push(p);
    if (e.isDirectory()) out.push(...(await listAll(root, p)));
  }
  return out;
}

/** Temporary files ferry left under `root` (there should be none). */
export async function tempFilesUnder(root: string): Promise<string[]> {
  return (await listAll(root)).filter((p) => /\.ferry-[0-9a-f]+\.part$/.test(p));
}

/**
 * A three-file tree `NAME` (a.txt, b.txt, sub/c.txt) under `work`, and a
 * destination directory `into` that receives it as `into/NAME`, where a
 * directory already stands at b.txt's name: b.txt cannot be written.
 */
export async function treeWithConflict(work: string, name: string, into: string): Promise<{ tree: string; into: string; dst: string }> {
  const tree = join(work, name);
  await mkdir(join(tree, 'sub'), { recursive: true });
  for (const file of ['a.txt', 'b.txt', 'sub/c.txt']) await appendFile(join(tree, file), `${file}\n`);
  const dst = join(into, name);
  await mkdir(join(dst, 'b.txt'), { recursive: true });
  return { tree, into, dst };
}
