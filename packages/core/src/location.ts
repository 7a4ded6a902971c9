/**
 * Source and destination arguments, scp style: `[user@]host[:port]:path` is
 * remote, anything else is a local path. A colon after a slash (`./a:b`,
 * `/data/x:y`) is part of a local path, as in scp.
 */
import { FerryError } from './errors.js';
import { expandHostlist } from './hostlist.js';
import type { RemoteHost } from './messages.js';

export interface LocalLocation {
  readonly kind: 'local';
  readonly path: string;
}

export interface RemoteLocation {
  readonly kind: 'remote';
  readonly user: string | undefined;
  /** The first host; `hosts` has all of them. */
  readonly host: string;
  /** Several hosts (`dtn1,dtn2` or `dtn[1-4]`) that see the same filesystem. */
  readonly hosts: readonly string[];
  readonly port: number | undefined;
  /** Remote path as given; relative paths are relative to the login directory. */
  readonly path: string;
}

export type Location = LocalLocation | RemoteLocation;

const REMOTE = /^(?:([^@/:\s]+)@)?(\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\]|[A-Za-z0-9][A-Za-z0-9._,\[\]-]*)(?::(\d{1,5}))?:(.*)$/s;

export function parseLocation(text: string): Location {
  if (text === '') throw new FerryError('USAGE', 'empty path: give a local path or [user@]host[:port]:path');
  if (text.startsWith('/') || text.startsWith('./') || text.startsWith('../')) return { kind: 'local', path: text };
  const colon = text.indexOf(':');
  const slash = text.indexOf('/');
  if (colon < 0 || (slash >= 0 && slash < colon && !text.startsWith('['))) return { kind: 'local', path: text };
  const m = REMOTE.exec(text);
  if (!m) return { kind: 'local', path: text };
  let port: number | undefined;
  if (m[3] !== undefined) {
    port = Number(m[3]);
    if (port < 1 || port > 65535) throw new FerryError('USAGE', `port in '${text}' must be 1-65535, got ${port}`);
  }
  // `[addr]` with a colon inside is an IPv6 address; other brackets are a host list.
  const ipv6 = /^\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\]$/.test(m[2]!);
  const hosts = ipv6 ? [m[2]!.slice(1, -1)] : expandHostlist(m[2]!);
  return { kind: 'remote', user: m[1], host: hosts[0]!, hosts, port, path: m[4] === '' ? '.' : m[4]! };
}

/** `user@host:port:path` back from a location, for messages: text that parses to the same location. */
export function formatLocation(loc: Location): string {
  if (loc.kind === 'local') return loc.path;
  const host = loc.hosts.length > 1 ? loc.hosts.join(',') : hostName(loc.host);
  return `${loc.user ? `${loc.user}@` : ''}${host}${loc.port ? `:${loc.port}` : ''}:${loc.path}`;
}

/**
 * A host as it is typed: an IPv6 address in brackets (`[::1]`), so that what
 * follows it (`:2222`, `:/path`) reads as it would on a command line.
 */
export function hostName(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * `host`, `host:port`, `[::1]` or `[::1]:2222`: how messages name a remote
 * host, as it is typed (a RemoteHost's `label`, the alias from the command
 * line, when it has one). `${hostLabel(h)}:${path}` is then a location a user
 * can paste.
 */
export function hostLabel(loc: { host: string; port?: number | undefined; label?: string | undefined }): string {
  if (loc.label !== undefined) return loc.label;
  const host = hostName(loc.host);
  return loc.port && loc.port !== 22 ? `${host}:${loc.port}` : host;
}

/**
 * The `~` or `~user` a remote path starts with, as scp reads it: the login
 * directory, or that user's home directory; `rest` is what follows the first
 * `/`. Undefined for any other path. (A local `~` is the shell's business.)
 */
export function tildePrefix(path: string): { user: string | undefined; rest: string } | undefined {
  if (!path.startsWith('~')) return undefined;
  const slash = path.indexOf('/');
  const name = slash < 0 ? path.slice(1) : path.slice(1, slash);
  return { user: name === '' ? undefined : name, rest: slash < 0 ? '' : path.slice(slash + 1) };
}

/** `rest` (from tildePrefix) under the directory `home`; a trailing `/` of `rest` stays. */
export function underHome(home: string, rest: string): string {
  if (rest === '') return home;
  return `${home.replace(/\/+$/, '')}/${rest}`;
}

/**
 * A host as SSH errors name it: its label, and where it really is when
 * ssh_config sent it elsewhere, e.g. `mydtn (10.1.2.3:2222)`.
 */
export function describeHost(h: RemoteHost): string {
  const label = hostLabel(h);
  if (!h.route) return label;
  const name = h.route.hostName.includes(':') ? `[${h.route.hostName}]` : h.route.hostName;
  const address = h.port === 22 ? name : `${name}:${h.port}`;
  return address === label ? label : `${label} (${address})`;
}

/**
 * A host and every setting of its route as one string, so two descriptions of
 * a host (a warm start's hint, a job's spec) compare equal exactly when they
 * would connect the same way, whatever order the fields travelled in.
 */
export function remoteHostKey(h: RemoteHost): string {
  return stableJson(h);
}

function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined && v !== null)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
