/**
 * The manifest of a finished copy (docs/manifest.md): NDJSON, a header line
 * then one line per entry, sorted by path (bytes of UTF-8) so that two
 * manifests of the same data diff cleanly. The header's `root` is the hash of
 * the entry lines exactly as written (each with its newline), so a manifest
 * whose entries were edited, cut or reordered is told from one that was not.
 * Pure: building, writing and reading the text; the state directory and the
 * data are read by the coordinator (manifest.ts, verify.ts).
 *
 * ```ts
 * const text = formatManifest({ kind: 'file', source, destination, hash: 'xxh3', createdAt, finishedAt }, entries);
 * const back = parseManifest(text, 'm.ndjson');
 * ```
 */
import { FerryError } from './errors.js';
import { createHasher, isHashAlgorithm, rootHash } from './hash.js';
import type { HashAlgorithm } from './hash.js';

export const MANIFEST_FORMAT = 'ferry-manifest';
export const MANIFEST_VERSION = 1;

/** The first line: what the manifest describes. */
export interface ManifestHeader {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  /** One file (its one entry is the file itself) or a directory tree (entries under its root). */
  kind: 'file' | 'tree';
  /** The job that made the copy, when the manifest was exported from one. */
  job?: string;
  source: string;
  destination: string;
  /** The hash algorithm of `root` and of every entry without an `algorithm` of its own. */
  hash: HashAlgorithm;
  /** ISO 8601 times the job was created and finished. */
  createdAt?: string;
  finishedAt?: string;
  /** Entry lines, and bytes of the files among them. */
  entries: number;
  bytes: number;
  /** Hash (`hash`) of the entry lines as written, each with its newline. */
  root: string;
}

/** A file moved whole in a batch: one hash of all its bytes. */
export interface WholeFileEntry {
  path: string;
  type: 'file';
  size: number;
  hash: string;
  algorithm?: HashAlgorithm;
}

/** A file moved in ranges: each range's hash, and the file's root hash (of the range hashes). */
export interface RangedFileEntry {
  path: string;
  type: 'file';
  size: number;
  rangeBytes: number;
  ranges: string[];
  root: string;
  algorithm?: HashAlgorithm;
}

export interface SymlinkEntry {
  path: string;
  type: 'symlink';
  target: string;
}

/** An entry an older ferry journaled without its kind or a hash: only its presence can be checked. */
export interface UnknownEntry {
  path: string;
  type: 'unknown';
}

export type ManifestEntry = WholeFileEntry | RangedFileEntry | SymlinkEntry | UnknownEntry;

export interface Manifest {
  header: ManifestHeader;
  entries: ManifestEntry[];
}

/** What a manifest's header says besides what formatManifest works out (format, version, counts, root). */
export type ManifestFacts = Omit<ManifestHeader, 'format' | 'version' | 'entries' | 'bytes' | 'root'>;

/** Digest lengths tell the three algorithms apart: xxh3 16 hex digits, crc32 8, sha256 64. */
export function algorithmOfDigest(hex: string): HashAlgorithm | undefined {
  if (!/^[0-9a-f]+$/.test(hex)) return undefined;
  return hex.length === 16 ? 'xxh3' : hex.length === 8 ? 'crc32' : hex.length === 64 ? 'sha256' : undefined;
}

/** The algorithm of an entry's hashes. */
export function entryAlgorithm(header: Pick<ManifestHeader, 'hash'>, entry: WholeFileEntry | RangedFileEntry): HashAlgorithm {
  return entry.algorithm ?? header.hash;
}

/** Paths in the order of their UTF-8 bytes (as `LC_ALL=C sort`). */
export function comparePaths(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** One entry as its line (without the newline), fields in a fixed order. */
export function entryLine(e: ManifestEntry): string {
  switch (e.type) {
    case 'symlink':
      return JSON.stringify({ path: e.path, type: e.type, target: e.target });
    case 'unknown':
      return JSON.stringify({ path: e.path, type: e.type });
    case 'file':
      if ('ranges' in e) return JSON.stringify({ path: e.path, type: e.type, size: e.size, ...(e.algorithm ? { algorithm: e.algorithm } : {}), rangeBytes: e.rangeBytes, root: e.root, ranges: e.ranges });
      return JSON.stringify({ path: e.path, type: e.type, size: e.size, ...(e.algorithm ? { algorithm: e.algorithm } : {}), hash: e.hash });
  }
}

function headerLine(h: ManifestHeader): string {
  const { format, version, kind, job, source, destination, hash, createdAt, finishedAt, entries, bytes, root } = h;
  return JSON.stringify({ format, version, kind, ...(job !== undefined ? { job } : {}), source, destination, hash, ...(createdAt ? { createdAt } : {}), ...(finishedAt ? { finishedAt } : {}), entries, bytes, root });
}

function rootOf(algorithm: HashAlgorithm, lines: readonly string[]): string {
  const h = createHasher(algorithm);
  for (const line of lines) h.update(Buffer.from(line + '\n', 'utf8'));
  return h.digest();
}

/** The manifest as text: the header, then the entries sorted by path; an algorithm equal to the header's is left out of an entry. */
export function formatManifest(facts: ManifestFacts, entries: readonly ManifestEntry[]): string {
  const sorted = entries.map((e) => ('algorithm' in e && e.algorithm === facts.hash ? withoutAlgorithm(e) : e)).sort((a, b) => comparePaths(a.path, b.path));
  const lines = sorted.map(entryLine);
  const bytes = sorted.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0);
  const header: ManifestHeader = { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, ...facts, entries: lines.length, bytes, root: rootOf(facts.hash, lines) };
  return [headerLine(header), ...lines].map((l) => l + '\n').join('');
}

function withoutAlgorithm<T extends WholeFileEntry | RangedFileEntry>(e: T): T {
  const { algorithm: _, ...rest } = e;
  return rest as T;
}

/**
 * Reads a manifest's text. Refuses (USAGE, naming `name`) what is not one, a
 * format version this ferry does not know, an entry it cannot read or whose
 * path leaves the root, and a manifest whose entries do not hash to its root.
 */
export function parseManifest(text: string, name: string): Manifest {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const bad = (what: string) => new FerryError('USAGE', `${name}: ${what}`, { path: name });
  let raw: unknown;
  try {
    raw = JSON.parse(lines[0] ?? '');
  } catch {
    raw = undefined;
  }
  const h = raw as Record<string, unknown> | undefined;
  if (h === null || typeof h !== 'object' || h.format !== MANIFEST_FORMAT) {
    throw bad(`not a ferry manifest (its first line must be a JSON object with "format":"${MANIFEST_FORMAT}"): 'ferry manifest JOB' writes one`);
  }
  if (h.version !== MANIFEST_VERSION) {
    throw bad(`a ferry manifest of version ${JSON.stringify(h.version)}, which this ferry does not read (it reads version ${MANIFEST_VERSION}): verify it with the ferry that wrote it, or a newer one`);
  }
  if (h.kind !== 'file' && h.kind !== 'tree') throw bad(`the header's kind must be "file" or "tree", got ${JSON.stringify(h.kind)}`);
  if (!isHashAlgorithm(h.hash)) throw bad(`the header's hash must be xxh3, crc32 or sha256, got ${JSON.stringify(h.hash)}`);
  for (const k of ['source', 'destination', 'root'] as const) if (typeof h[k] !== 'string') throw bad(`the header has no ${k}`);
  const entryLines = lines.slice(1);
  const entries: ManifestEntry[] = [];
  const seen = new Set<string>();
  entryLines.forEach((line, i) => {
    const where = `line ${i + 2}`;
    let e: unknown;
    try {
      e = JSON.parse(line);
    } catch {
      throw bad(`${where} is not JSON`);
    }
    const entry = checkEntry(e, (what) => bad(`${where}: ${what}`));
    if (seen.has(entry.path)) throw bad(`${where}: ${entry.path} is listed twice`);
    if ('ranges' in entry && !rangedRootMatches({ hash: h.hash as HashAlgorithm }, entry)) throw bad(`${where}: ${entry.path}'s root is not the hash of its range hashes`);
    seen.add(entry.path);
    entries.push(entry);
  });
  if (h.kind === 'file' && (entries.length !== 1 || entries[0]!.type !== 'file')) throw bad('a manifest of kind "file" must have exactly one file entry');
  const root = rootOf(h.hash, entryLines);
  if (root !== h.root) throw bad(`damaged: its entries hash to ${root}, its header says ${String(h.root)} (an entry was changed, added or removed after it was written)`);
  const header: ManifestHeader = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    kind: h.kind,
    ...(typeof h.job === 'string' ? { job: h.job } : {}),
    source: h.source as string,
    destination: h.destination as string,
    hash: h.hash,
    ...(typeof h.createdAt === 'string' ? { createdAt: h.createdAt } : {}),
    ...(typeof h.finishedAt === 'string' ? { finishedAt: h.finishedAt } : {}),
    entries: entries.length,
    bytes: entries.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0),
    root,
  };
  return { header, entries };
}

/** Why a manifest path cannot be joined to a root (absolute, `..`, empty parts), or undefined. */
export function manifestPathProblem(path: string): string | undefined {
  if (path === '') return 'an empty path';
  if (path.startsWith('/')) return 'an absolute path';
  if (path.includes('\0')) return 'a NUL byte';
  for (const part of path.split('/')) if (part === '' || part === '.' || part === '..') return `a path with a '${part}' component`;
  return undefined;
}

function checkEntry(v: unknown, bad: (what: string) => FerryError): ManifestEntry {
  if (v === null || typeof v !== 'object') throw bad('not a JSON object');
  const e = v as Record<string, unknown>;
  if (typeof e.path !== 'string') throw bad('no path');
  const problem = manifestPathProblem(e.path);
  if (problem) throw bad(`${JSON.stringify(e.path)} is ${problem}: entry paths are relative to the root, without '.' or '..'`);
  const path = e.path;
  if (e.type === 'symlink') {
    if (typeof e.target !== 'string') throw bad(`${path}: a symlink without a target`);
    return { path, type: 'symlink', target: e.target };
  }
  if (e.type === 'unknown') return { path, type: 'unknown' };
  if (e.type !== 'file') throw bad(`${path}: type must be file, symlink or unknown, got ${JSON.stringify(e.type)}`);
  if (typeof e.size !== 'number' || !Number.isSafeInteger(e.size) || e.size < 0) throw bad(`${path}: size must be a whole number of bytes`);
  if (e.algorithm !== undefined && !isHashAlgorithm(e.algorithm)) throw bad(`${path}: algorithm must be xxh3, crc32 or sha256, got ${JSON.stringify(e.algorithm)}`);
  const algorithm = e.algorithm as HashAlgorithm | undefined;
  const digest = (x: unknown) => typeof x === 'string' && /^[0-9a-f]+$/.test(x);
  if (Array.isArray(e.ranges)) {
    const rangeBytes = e.rangeBytes;
    if (typeof rangeBytes !== 'number' || !Number.isSafeInteger(rangeBytes) || rangeBytes <= 0) throw bad(`${path}: rangeBytes must be a positive whole number`);
    const ranges = e.ranges;
    if (!ranges.every(digest)) throw bad(`${path}: every range hash must be lowercase hex`);
    if (ranges.length !== Math.ceil(e.size / rangeBytes)) throw bad(`${path}: ${ranges.length} range hashes for ${e.size} bytes in ranges of ${rangeBytes}`);
    if (typeof e.root !== 'string') throw bad(`${path}: no root hash`);
    return { path, type: 'file', size: e.size, rangeBytes, ranges: ranges as string[], root: e.root, ...(algorithm ? { algorithm } : {}) };
  }
  if (!digest(e.hash)) throw bad(`${path}: a file needs a hash (lowercase hex) or ranges`);
  return { path, type: 'file', size: e.size, hash: e.hash as string, ...(algorithm ? { algorithm } : {}) };
}

/** Whether a ranged entry's root is the hash of its range hashes (a check of the manifest itself). */
export function rangedRootMatches(header: Pick<ManifestHeader, 'hash'>, e: RangedFileEntry): boolean {
  return rootHash(entryAlgorithm(header, e), e.ranges) === e.root;
}
