/**
 * Remote sources as scp's remote shell expands them (`ferry cp
 * 'host:/data/run*' dst/`), without a shell: the pattern is sent as data to
 * the helper (GLOB; the python helper matches with its own code) or, in
 * SFTP mode, matched here against readdir's names (core's glob.ts). Each
 * match is a source of its own. A pattern that matches nothing names
 * itself, as sh leaves it: the copy goes on if something has that very
 * name, and fails with "No such file or directory" otherwise, as scp does.
 */
import { availableParallelism } from 'node:os';
import { FerryError, formatLocation, hasGlob, parseLocation, resolveCopyOptions } from '@ferry/core';
import type { CopyOptions, RemoteLocation } from '@ferry/core';
import { connectAny, coordinatorConnectOptions, expandHome, remoteStat, resolveRemote } from './prepare.js';

/** `sources` with every remote pattern replaced by what it matches, in order. Local sources are the shell's and stay as given. */
export async function expandRemoteSources(sources: readonly string[], given: CopyOptions | undefined, signal?: AbortSignal): Promise<string[]> {
  const out: string[] = [];
  for (const source of sources) {
    let loc;
    try {
      loc = parseLocation(source);
    } catch {
      out.push(source);
      continue;
    }
    if (loc.kind !== 'remote' || !hasGlob(loc.path)) out.push(source);
    else out.push(...(await expandOne(loc, source, given, signal)));
  }
  return out;
}

async function expandOne(loc: RemoteLocation, source: string, given: CopyOptions | undefined, signal?: AbortSignal): Promise<string[]> {
  const options = resolveCopyOptions(given, { cores: availableParallelism() });
  const { ssh, hosts } = await resolveRemote(loc, options);
  const { conn } = await connectAny(hosts, ssh, coordinatorConnectOptions(options, signal));
  try {
    // ~ and a relative path as scp's remote shell takes them: the home and the login directory.
    const expanded = await expandHome(conn, loc.path, 'source');
    const pattern = expanded.startsWith('/') ? expanded : `${(await conn.homeDirectory())!.replace(/\/+$/, '')}/${expanded}`;
    const paths = await conn.glob(pattern);
    if (paths.length > 0) return paths.map((path) => formatLocation({ ...loc, path }));
    if (await remoteStat(conn, pattern).catch(() => undefined)) return [source];
    throw new FerryError('SOURCE_NOT_FOUND', `${conn.label}:${loc.path}: No such file or directory (no name there matches the pattern)`, { host: conn.label, path: loc.path });
  } finally {
    conn.close();
  }
}
