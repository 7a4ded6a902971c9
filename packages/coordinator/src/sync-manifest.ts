/**
 * The manifest of a `ferry sync` job (issue 32): what its destination holds
 * as the last complete run left it. A sync's journal lists only what a run
 * sent, so the run keeps a record per entry of the whole destination in the
 * job's `sync-manifest.ndjson` (mode 0600, replaced by a rename): the
 * entry's size and mtime at the source, and its manifest entry
 * (docs/manifest.md) where its content hash is known:
 *
 * - sent this run: the hash the destination reported for a small file, the
 *   per-range hashes of a big file's own job (with --delta, the reused
 *   ranges' hashes are the new file's: they were hashed on both sides);
 * - found the same at --compare checksum: the hash both sides agreed on;
 * - found the same otherwise (or its attributes alone set again): what the
 *   previous run's record holds, where the source's size and mtime are
 *   still the ones it recorded; else unknown.
 *
 * Directories are not listed, nor further names of a file (hard links),
 * as in any manifest. Written only after a run in which nothing failed and
 * the source walk read everything; `ferry manifest` and `ferry verify` of
 * the job read it (manifest.ts) and refuse one with entries whose hash is
 * unknown, naming how many and the fix.
 *
 * A run that ends with failed entries leaves no manifest, but what it sent
 * or hashed is at the destination all the same: those records (the ones
 * with a known hash) go to `sync-partial.ndjson`, added to the previous
 * partial run's, and the next run takes them as it takes the last complete
 * run's (a later record of a path over an earlier one). A complete run
 * removes the file.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, algorithmOfDigest, isHashAlgorithm } from '@ferry/core';
import type { HashAlgorithm, ManifestEntry, TreeEntry } from '@ferry/core';
import { readPrivateFile, writePrivateFile } from './private-file.js';

export const SYNC_MANIFEST_FILE = 'sync-manifest.ndjson';
export const SYNC_PARTIAL_FILE = 'sync-partial.ndjson';

/** A manifest entry without its path (the record holds it). */
export type EntryBody = ManifestEntry extends infer E ? (E extends ManifestEntry ? Omit<E, 'path'> : never) : never;

/** One destination entry after a sync run: tree path, the source's size and mtime (ms), and its manifest entry where its hash is known. */
export interface SyncRecord {
  p: string;
  s: number;
  m: number;
  e?: EntryBody;
}

/**
 * A sync run's records as it makes them (each destination entry as this run
 * leaves it), and the previous runs' (previousSyncRecords). A copy keeps
 * none: `record` does nothing until `start` (the sync's destination read).
 */
export class SyncRecords {
  private readonly records = new Map<string, SyncRecord>();
  private on = false;
  previous: ReadonlyMap<string, SyncRecord> = new Map();

  constructor(private readonly algorithm: HashAlgorithm) {}

  /** Records are kept from now on (a sync, once its destination is read). */
  start(): void {
    this.on = true;
  }

  /** What the destination now holds at `e`'s path (undefined body: its hash is unknown). */
  record(e: TreeEntry, body: SyncRecord['e']): void {
    if (!this.on) return;
    this.records.set(e.path, { p: e.path, s: e.size, m: e.mtimeMs, ...(body ? { e: body } : {}) });
  }

  /** A file's manifest entry from the hash of all its bytes (its algorithm told by its length, else this run's). */
  wholeFile(e: TreeEntry, hash: string): SyncRecord['e'] {
    return { type: 'file', size: e.size, hash, algorithm: algorithmOfDigest(hash) ?? this.algorithm };
  }

  /**
   * An entry found the same, not read: a link's target is its entry; a file
   * keeps the previous run's record where the source's size and mtime are
   * still the ones it recorded, else its hash is unknown.
   */
  keep(e: TreeEntry): void {
    if (e.kind === 'symlink') return this.record(e, { type: 'symlink', target: e.target! });
    const before = this.previous.get(e.path);
    this.record(e, before && before.s === e.size && before.m === e.mtimeMs ? before.e : undefined);
  }

  /** The records this run made so far. */
  known(): Iterable<SyncRecord> {
    return this.records.values();
  }
}

/** The records of the job's last complete run (undefined where there is none, or it cannot be read: its entries' hashes are then unknown). */
export async function readSyncManifest(jobDir: string, file = SYNC_MANIFEST_FILE): Promise<{ hash: HashAlgorithm; finishedAt: number; records: Map<string, SyncRecord> } | undefined> {
  // Only a file of the user's that nobody else could have written: its hashes vouch for the data.
  const path = join(jobDir, file);
  const text = await readPrivateFile(path, 'the manifest of a sync job', `remove ${path} and run the sync with --compare checksum once`);
  if (text === undefined) return undefined;
  const lines = text.split('\n');
  let header: { v?: unknown; hash?: unknown; finishedAt?: unknown };
  try {
    header = JSON.parse(lines[0] ?? '') as typeof header;
  } catch {
    return undefined;
  }
  if (header.v !== 1 || !isHashAlgorithm(header.hash) || typeof header.finishedAt !== 'number') return undefined;
  const records = new Map<string, SyncRecord>();
  for (const line of lines.slice(1)) {
    if (line === '') continue;
    let r: SyncRecord;
    try {
      r = JSON.parse(line) as SyncRecord;
    } catch {
      // Written whole and renamed into place: a line that does not parse is damage, and its entry is unknown.
      continue;
    }
    if (r !== null && typeof r === 'object' && typeof r.p === 'string' && typeof r.s === 'number' && typeof r.m === 'number') records.set(r.p, r);
  }
  return { hash: header.hash, finishedAt: header.finishedAt, records };
}

/** Replaces the job's sync manifest with `records` (privately, through a temporary name and a rename); a partial run's records are then stale. */
export async function writeSyncManifest(jobDir: string, hash: HashAlgorithm, records: Iterable<SyncRecord>, file = SYNC_MANIFEST_FILE): Promise<void> {
  const lines = [JSON.stringify({ v: 1, hash, finishedAt: Date.now() })];
  for (const r of records) lines.push(JSON.stringify(r));
  await writePrivateFile(join(jobDir, file), lines.join('\n') + '\n');
  if (file === SYNC_MANIFEST_FILE) await rm(join(jobDir, SYNC_PARTIAL_FILE), { force: true });
}

/** What earlier runs recorded, for a run to take over: the last complete run's records, with those of partial runs since over them. */
export async function previousSyncRecords(jobDir: string): Promise<Map<string, SyncRecord>> {
  const [complete, partial] = await Promise.all([readSyncManifest(jobDir).catch(() => undefined), readSyncManifest(jobDir, SYNC_PARTIAL_FILE).catch(() => undefined)]);
  const out = complete?.records ?? new Map<string, SyncRecord>();
  for (const [p, r] of partial?.records ?? []) out.set(p, r);
  return out;
}

/** A run that did not complete: its records with a known hash, added to the earlier partial runs' (a path's newer record wins). */
export async function writeSyncPartial(jobDir: string, hash: HashAlgorithm, records: Iterable<SyncRecord>): Promise<void> {
  const out = (await readSyncManifest(jobDir, SYNC_PARTIAL_FILE).catch(() => undefined))?.records ?? new Map<string, SyncRecord>();
  // One whose hash this run does not know replaces nothing an earlier run knew of another version: it is dropped.
  for (const r of records) {
    if (r.e !== undefined) out.set(r.p, r);
    else if (out.get(r.p)?.s !== r.s || out.get(r.p)?.m !== r.m) out.delete(r.p);
  }
  await writeSyncManifest(jobDir, hash, out.values(), SYNC_PARTIAL_FILE);
}

/** Every entry of a sync job's manifest, or USAGE naming how many lack a hash and how to give them one. */
export async function syncJobEntries(jobDir: string, jobId: string, sync: { source: string; destination: string; destinationLabel: string }): Promise<{ hash: HashAlgorithm; finishedAt: number; entries: ManifestEntry[] }> {
  const m = await readSyncManifest(jobDir);
  if (!m) {
    throw new FerryError('USAGE', `job ${jobId} is a ferry sync whose last run left no manifest (an older ferry ran it): run 'ferry sync --compare checksum ${sync.source} ${sync.destination}' once, then ask again`);
  }
  const entries: ManifestEntry[] = [];
  let unknown = 0;
  let example: string | undefined;
  for (const r of m.records.values()) {
    if (r.e === undefined) {
      unknown++;
      example ??= r.p;
      continue;
    }
    entries.push({ ...r.e, path: r.p } as ManifestEntry);
  }
  if (unknown > 0) {
    throw new FerryError(
      'USAGE',
      `job ${jobId}: ${unknown} of the ${m.records.size} entries at ${sync.destinationLabel} have no known hash (${example}${unknown > 1 ? ' among them' : ''}): the sync found them the same without reading them (it compares size and mtime), and no earlier run of this job recorded them. Run 'ferry sync --compare checksum ${sync.source} ${sync.destination}' once: it hashes both sides and records every hash`,
    );
  }
  return { hash: m.hash, finishedAt: m.finishedAt, entries };
}
