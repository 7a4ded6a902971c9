/**
 * OpenSSH known_hosts support for ssh2 (which has none of its own).
 *
 * Implements the "SSH_KNOWN_HOSTS FILE FORMAT" described in sshd(8):
 *
 *   [@marker] patterns keytype base64-key [comment]
 *
 * - `patterns` is a comma-separated list; `*` and `?` are wildcards, a leading
 *   `!` negates a pattern (a host matching a negated pattern is rejected by the
 *   line even if another pattern on it matches). Matching is case-insensitive.
 * - Hosts on a non-standard port are written `[host]:port`.
 * - Hashed names are `|1|base64(salt)|base64(HMAC-SHA1(key = salt, data = name))`.
 * - `@revoked` marks a key that must never be accepted; `@cert-authority` marks
 *   a CA key for host certificates.
 *
 * Lines that cannot be parsed are skipped, never thrown on, as OpenSSH does.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { mkdir, open, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { matchPattern } from './patterns.js';

export type KnownHostMarker = 'revoked' | 'cert-authority';

export interface KnownHostEntry {
  /** `@revoked` / `@cert-authority`, or null for an ordinary host key line. */
  marker: KnownHostMarker | null;
  /** The comma-separated host patterns, as written (may be `!neg`, wildcards, or `|1|salt|hash`). */
  patterns: string[];
  /** Key type field, e.g. `ssh-ed25519`; always equal to the type inside `key`. */
  keyType: string;
  /** Raw SSH wire-format public key blob (the base64 field, decoded). */
  key: Buffer;
  /** Everything after the key field, or '' if there is none. */
  comment: string;
  /** 1-based line number in the text it was parsed from. */
  line: number;
  /** File the entry came from, when read with readKnownHostsFiles. */
  file?: string;
}

export type HostKeyCheck =
  | { status: 'known' }
  | { status: 'unknown' }
  | { status: 'changed'; keyType: string; /** The file holding the key on record, when the entries came from files. */ file?: string }
  | { status: 'revoked' };

/** The name a host is looked up and recorded under: `host` on port 22, else `[host]:port`. */
export function hostKeyName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const SHA1_LEN = 20;

function decodeBase64(s: string): Buffer | null {
  if (s.length === 0 || !BASE64_RE.test(s)) return null;
  return Buffer.from(s, 'base64');
}

/** Key type of an SSH public key blob: its first length-prefixed string. Null if malformed. */
function blobKeyType(blob: Buffer): string | null {
  if (blob.length < 4) return null;
  const len = blob.readUInt32BE(0);
  if (len === 0 || len > blob.length - 4) return null;
  const type = blob.subarray(4, 4 + len).toString('latin1');
  // Key type names are printable US-ASCII without spaces (RFC 4251 §6).
  return /^[\x21-\x7e]+$/.test(type) ? type : null;
}

function requireBlobKeyType(blob: Buffer): string {
  const type = blobKeyType(blob);
  if (type === null) throw new Error('malformed SSH public key blob');
  return type;
}

interface HashedPattern {
  salt: Buffer;
  hash: Buffer;
}

/** Parses `|1|salt|hash`; null if the token is not a well-formed hashed name. */
function parseHashed(token: string): HashedPattern | null {
  if (!token.startsWith('|1|')) return null;
  const parts = token.slice(3).split('|');
  if (parts.length !== 2) return null;
  const salt = decodeBase64(parts[0]!);
  const hash = decodeBase64(parts[1]!);
  if (salt === null || hash === null || hash.length !== SHA1_LEN) return null;
  return { salt, hash };
}

/** Parses known_hosts text. Blank, comment and malformed lines are skipped. */
export function parseKnownHosts(text: string): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const entry = parseLine(lines[i]!.replace(/\r$/, ''), i + 1);
    if (entry !== null) entries.push(entry);
  }
  return entries;
}

function parseLine(raw: string, line: number): KnownHostEntry | null {
  const text = raw.replace(/^[ \t]+/, '');
  if (text === '' || text.startsWith('#')) return null;
  const fields = text.split(/[ \t]+/);

  let marker: KnownHostMarker | null = null;
  let f = 0;
  if (fields[0]!.startsWith('@')) {
    if (fields[0] === '@revoked') marker = 'revoked';
    else if (fields[0] === '@cert-authority') marker = 'cert-authority';
    else return null; // unknown marker: OpenSSH rejects the line
    f = 1;
  }
  const hostField = fields[f];
  const keyType = fields[f + 1];
  const keyB64 = fields[f + 2];
  if (hostField === undefined || keyType === undefined || keyB64 === undefined) return null;

  const patterns = hostField.split(',').filter((p) => p !== '');
  if (patterns.length === 0) return null;
  for (const p of patterns) {
    const body = p.startsWith('!') ? p.slice(1) : p;
    if (body === '') return null;
    if (body.startsWith('|') && parseHashed(body) === null) return null;
  }

  const key = decodeBase64(keyB64);
  if (key === null || blobKeyType(key) !== keyType) return null;

  // Comment: the rest of the line after the key field, single spaces between words preserved.
  const comment = fields
    .slice(f + 3)
    .filter((w) => w !== '')
    .join(' ');
  return { marker, patterns, keyType, key, comment, line };
}

function hashedMatch(name: string, hashed: HashedPattern): boolean {
  const mac = createHmac('sha1', hashed.salt).update(name, 'utf8').digest();
  return timingSafeEqual(mac, hashed.hash);
}

/**
 * True if `name` (as produced by hostKeyName) is matched by the entry's patterns:
 * at least one positive pattern matches and no negated pattern does.
 * Comparison is case-insensitive; hashed patterns are checked against the lower-cased
 * name, which is what OpenSSH hashes.
 */
export function matchHost(entry: KnownHostEntry, name: string): boolean {
  const lname = name.toLowerCase();
  let matched = false;
  for (const p of entry.patterns) {
    const negated = p.startsWith('!');
    const body = negated ? p.slice(1) : p;
    let hit: boolean;
    if (body.startsWith('|')) {
      const hashed = parseHashed(body);
      hit = hashed !== null && hashedMatch(lname, hashed);
    } else {
      hit = matchPattern(lname, body.toLowerCase());
    }
    if (hit) {
      if (negated) return false;
      matched = true;
    }
  }
  return matched;
}

function isRevoked(entries: readonly KnownHostEntry[], keyBlob: Buffer): boolean {
  return entries.some((e) => e.marker === 'revoked' && e.key.equals(keyBlob));
}

/**
 * Checks the host key presented by `host:port` against known_hosts entries.
 *
 * - 'revoked': some `@revoked` entry holds this exact key. This wins over everything and,
 *   unlike OpenSSH (which only applies `@revoked` lines whose patterns match the host),
 *   applies whatever the entry's host patterns are: a revoked key is never accepted.
 * - 'known': an ordinary entry matching the host holds this exact key.
 * - 'changed': an ordinary entry matching the host holds a different key of the same type.
 * - 'unknown': otherwise (including when only keys of other types are on record).
 *
 * `@cert-authority` entries are ignored: host certificates are not supported, so a CA
 * key never vouches for a host here.
 *
 * @param keyBlob raw SSH wire-format public key blob, as given to ssh2's hostVerifier.
 * @throws if keyBlob is not a well-formed key blob.
 */
export function checkHostKey(
  entries: readonly KnownHostEntry[],
  host: string,
  port: number,
  keyBlob: Buffer,
): HostKeyCheck {
  const keyType = requireBlobKeyType(keyBlob);
  if (isRevoked(entries, keyBlob)) return { status: 'revoked' };
  const name = hostKeyName(host, port);
  let changed: KnownHostEntry | undefined;
  for (const e of entries) {
    if (e.marker !== null || !matchHost(e, name)) continue;
    if (e.key.equals(keyBlob)) return { status: 'known' };
    if (e.keyType === keyType) changed ??= e;
  }
  if (!changed) return { status: 'unknown' };
  return changed.file === undefined ? { status: 'changed', keyType } : { status: 'changed', keyType, file: changed.file };
}

/**
 * Key types on record for `host:port` (ordinary entries only, revoked keys excluded),
 * deduplicated in file order. Feed them through hostKeyAlgorithmsFor to get the host
 * key algorithms to prefer, so the server presents a key we can verify.
 */
export function knownKeyTypes(
  entries: readonly KnownHostEntry[],
  host: string,
  port: number,
): string[] {
  const name = hostKeyName(host, port);
  const types: string[] = [];
  for (const e of entries) {
    if (e.marker !== null || !matchHost(e, name) || isRevoked(entries, e.key)) continue;
    if (!types.includes(e.keyType)) types.push(e.keyType);
  }
  return types;
}

/**
 * Host key algorithm names for key types. An `ssh-rsa` key can be used with the
 * rsa-sha2-512 / rsa-sha2-256 signature algorithms as well as legacy ssh-rsa;
 * other key types are their own algorithm name.
 */
export function hostKeyAlgorithmsFor(keyTypes: readonly string[]): string[] {
  const algs: string[] = [];
  for (const t of keyTypes) {
    const expanded = t === 'ssh-rsa' ? ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] : [t];
    for (const a of expanded) if (!algs.includes(a)) algs.push(a);
  }
  return algs;
}

/** `name keytype base64` (unhashed, no trailing newline). @throws if keyBlob is malformed. */
export function formatKnownHostsLine(host: string, port: number, keyBlob: Buffer): string {
  const keyType = requireBlobKeyType(keyBlob);
  return `${hostKeyName(host, port)} ${keyType} ${keyBlob.toString('base64')}`;
}

/**
 * Appends a line for the host key to `file`, creating the parent directory (0700)
 * and file (0600) if needed. Modes apply only to what is created here.
 */
export async function appendKnownHost(
  file: string,
  host: string,
  port: number,
  keyBlob: Buffer,
): Promise<void> {
  const line = formatKnownHostsLine(host, port, keyBlob);
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const fh = await open(file, 'a+', 0o600);
  try {
    const { size } = await fh.stat();
    let prefix = '';
    if (size > 0) {
      const last = Buffer.alloc(1);
      await fh.read(last, 0, 1, size - 1);
      if (last[0] !== 0x0a) prefix = '\n';
    }
    // One write so concurrent appenders (O_APPEND) never interleave within a line.
    await fh.write(`${prefix}${line}\n`);
  } finally {
    await fh.close();
  }
}

/** Reads and parses the files that exist, in order; missing files are skipped, other errors throw. */
export async function readKnownHostsFiles(files: readonly string[]): Promise<KnownHostEntry[]> {
  return (await readKnownHostsSources(files)).entries;
}

/** As readKnownHostsFiles, and which of the files exist (for messages that name what was checked). */
export async function readKnownHostsSources(files: readonly string[]): Promise<{ entries: KnownHostEntry[]; found: string[] }> {
  const entries: KnownHostEntry[] = [];
  const found: string[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') continue;
      throw err;
    }
    found.push(file);
    for (const e of parseKnownHosts(text)) entries.push({ ...e, file });
  }
  return { entries, found };
}
