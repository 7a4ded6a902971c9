/**
 * Before any byte moves: work out what is copied where, check the source can be
 * read and the destination written, and create the temporary destination file
 * at full size. Every failure here names the host and path and the fix.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { homedir, hostname, userInfo } from 'node:os';
import { basename, dirname, join, posix, resolve } from 'node:path';
import { DISCARD_HOST, FerryError, TEMP_TOKEN_ENV, destinationError, tempNameFor, errnoOf, firstBadDirectory, formatLocation, hostLabel, parseLocation, tildePrefix, underHome } from '@ferry/core';
import type { BadComponent, Direction, PathKind, RemoteHost, RemoteLocation, ResolvedCopyOptions, SshSettings, StatResult, TransferMode } from '@ferry/core';
import { DEFAULT_KEEPALIVE_COUNT_MAX, DEFAULT_KEEPALIVE_INTERVAL_MS, connectRemote, loadSshConfig, resolveRemoteHost } from '@ferry/transport';
import type { ConfigSource, LocalFacts, RemoteConnection } from '@ferry/transport';

export interface PreparedCopy {
  direction: Direction;
  jobId: string;
  /** As the user would write them, for messages. */
  sourceLabel: string;
  destinationLabel: string;
  fileBytes: number;
  sourceMode: number;
  sourceMtimeMs: number;
  /** The host the coordinator is connected to. */
  remoteHost: RemoteHost;
  /** Every remote host given (they must see the same filesystem). */
  remoteHosts: RemoteHost[];
  ssh: SshSettings;
  /** Connection used by the coordinator for setup and finalisation (replaced if it dies; see withRemote). */
  conn: RemoteConnection;
  /** How `conn` was made, to make another. */
  connectOptions: Parameters<typeof connectRemote>[2];
  mode: TransferMode;
  /** The local file: the source (push) or the temporary destination (pull). */
  localPath: string;
  /** The remote file: the temporary destination (push) or the source (pull). */
  remotePath: string;
  /** Final destination path (remote for push, local for pull). */
  targetPath: string;
  /** Temporary file next to the target, renamed into place at the end. */
  tempPath: string;
  /**
   * Control-plane benchmark (FERRY_BENCH_DISCARD=1, destination discard:PATH): no
   * remote host exists, nothing is created, written or renamed; `conn` refuses every use.
   */
  discard: boolean;
}

/**
 * Runs `fn` on the coordinator's connection; if that connection has died (its
 * host went down, sshd was restarted), connects again, to any of the hosts,
 * and runs it once more.
 */
export async function withRemote<T>(prep: PreparedCopy, fn: (conn: RemoteConnection) => Promise<T>): Promise<T> {
  if (prep.conn.alive) {
    try {
      return await fn(prep.conn);
    } catch (err) {
      if (prep.conn.alive) throw err;
    }
  }
  prep.conn.close();
  prep.conn = (await connectAny(prep.remoteHosts, prep.ssh, prep.connectOptions)).conn;
  return fn(prep.conn);
}

export const DEFAULT_IDENTITY_FILES = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

/**
 * Where the system's ssh files are (ssh_config, ssh_known_hosts): /etc/ssh, or
 * this variable's directory. For ferry's own tests, which must not depend on
 * (or touch) the machine's.
 */
export const SSH_SYSTEM_DIR_ENV = 'FERRY_TEST_SSH_ETC';

export async function sshSettings(options: ResolvedCopyOptions): Promise<SshSettings> {
  const sshDir = join(homedir(), '.ssh');
  let identityFiles = options.identityFiles.map((f) => resolve(f));
  for (const f of identityFiles) {
    try {
      await stat(f);
    } catch {
      throw new FerryError('USAGE', `identity file ${f} (-i) does not exist`, { path: f });
    }
  }
  // OpenSSH finds the default keys itself (and those ~/.ssh/config names).
  if (identityFiles.length === 0 && options.transport !== 'openssh') {
    identityFiles = [];
    for (const name of DEFAULT_IDENTITY_FILES) {
      const f = join(sshDir, name);
      try {
        await stat(f);
        identityFiles.push(f);
      } catch {
        // not present
      }
    }
  }
  const settings: SshSettings = {
    knownHostsFile: resolve(options.knownHostsFile ?? join(sshDir, 'known_hosts')),
    identityFiles,
    connectTimeoutMs: options.connectTimeoutMs,
    transport: options.transport,
    sshCommand: options.sshCommand,
  };
  if (options.sendWindowBytes > 0) settings.sendWindowBytes = options.sendWindowBytes;
  if (options.sharedHelper) settings.sharedHelper = true;
  // OpenSSH reads the known_hosts files its configuration names unless --known-hosts says otherwise.
  if (options.knownHostsFile !== undefined) settings.knownHostsGiven = true;
  if (options.sshConfigFile !== undefined) settings.configFile = options.sshConfigFile === 'none' ? 'none' : resolve(options.sshConfigFile);
  // With explicit -i keys, ssh-agent is still offered first, as ssh does.
  if (process.env.SSH_AUTH_SOCK) settings.agentSocket = process.env.SSH_AUTH_SOCK;
  return settings;
}

/** The remote side of a copy, when exactly one side is remote (prepareCopy says what is wrong otherwise). */
export function remoteSideOf(source: string, destination: string): RemoteLocation | undefined {
  try {
    const src = parseLocation(source);
    const dst = parseLocation(destination);
    if (src.kind === 'remote' && dst.kind === 'local') return src;
    if (src.kind === 'local' && dst.kind === 'remote') return dst;
  } catch {
    // prepareCopy says what is wrong.
  }
  return undefined;
}

/** A copy's SSH settings and remote hosts, each resolved through ssh_config once, for the coordinator and every agent. */
export interface ResolvedRemote {
  ssh: SshSettings;
  /** Every remote host given (they must see the same filesystem), with its route. */
  hosts: RemoteHost[];
  /**
   * What ssh would do with these hosts that the embedded client will not: one
   * line per host (hosts that share the same lines, together), to show once.
   */
  warnings: string[];
}

/**
 * Works out how to reach each host of `loc`: ~/.ssh/config then
 * /etc/ssh/ssh_config (or the one -F names), with the command line winning,
 * as ssh would (see the transport's ssh-route.ts). Done once per copy, by the
 * coordinator: agents get the result in the job's spec and read no
 * configuration of their own.
 */
export async function resolveRemote(loc: RemoteLocation, options: ResolvedCopyOptions, ssh?: SshSettings): Promise<ResolvedRemote> {
  const key = ssh === undefined ? JSON.stringify([loc, options]) : undefined;
  if (ahead && ahead.remote.key === key) return ahead.remote.resolved;
  const settings = ssh ?? (await sshSettings(options));
  const home = homedir();
  const systemDir = process.env[SSH_SYSTEM_DIR_ENV] || '/etc/ssh';
  const local: LocalFacts = { home, user: userInfo().username, uid: process.getuid?.() ?? 0, hostname: hostname(), cwd: process.cwd(), env: process.env, systemDir };
  const file = options.sshConfigFile;
  const sources: ConfigSource[] =
    file === 'none' ? [] : file !== undefined ? [{ path: resolve(file), system: false, required: true }] : [{ path: join(home, '.ssh', 'config'), system: false, checkPermissions: true }, { path: join(systemDir, 'ssh_config'), system: true }];
  const config = await loadSshConfig(sources, { home, uid: local.uid, systemDir });
  const defaultIdentityFiles: string[] = [];
  for (const name of DEFAULT_IDENTITY_FILES) {
    const f = join(home, '.ssh', name);
    if (await stat(f).then(() => true, () => false)) defaultIdentityFiles.push(f);
  }
  const cli = {
    identityFiles: options.identityFiles.map((f) => resolve(f)),
    ...(options.knownHostsFile !== undefined ? { knownHostsFile: resolve(options.knownHostsFile) } : {}),
    ...(options.connectTimeoutGiven ? { connectTimeoutMs: options.connectTimeoutMs } : {}),
    acceptNewHostKey: options.acceptNewHostKey,
  };
  const defaults = { defaultIdentityFiles, connectTimeoutMs: options.connectTimeoutMs, keepaliveIntervalMs: DEFAULT_KEEPALIVE_INTERVAL_MS, keepaliveCountMax: DEFAULT_KEEPALIVE_COUNT_MAX };
  const hosts: RemoteHost[] = [];
  const byItems = new Map<string, string[]>();
  for (const host of loc.hosts) {
    const resolved = resolveRemoteHost(config, { host, user: loc.user, port: loc.port }, cli, local, defaults);
    hosts.push(resolved.host);
    if (resolved.unsupported.length === 0) continue;
    const items = resolved.unsupported.join(', ');
    byItems.set(items, [...(byItems.get(items) ?? []), hostLabel(resolved.host)]);
  }
  // ssh itself applies the configuration with --transport openssh: nothing is left out.
  const warnings =
    settings.transport === 'openssh'
      ? []
      : [...byItems].map(([items, labels]) => `${labels.join(', ')}: the embedded SSH client does not honour ${items}: use --transport openssh to have ssh apply ${items.includes('), ') ? 'them' : 'it'}`);
  return { ssh: settings, hosts, warnings };
}

/**
 * What this command set going ahead of the rest of ferry (early.ts): its
 * hosts and SSH settings, and its first connection. The first connectAny
 * that asks for the same connection takes it; resolveRemote of the same
 * location and options returns the same settings.
 */
let ahead: { remote: { key: string; resolved: Promise<ResolvedRemote> }; opened: Promise<Connected>; connectionKey?: string } | undefined;

type Connected = { conn: RemoteConnection; host: RemoteHost };
type ConnectOptions = Parameters<typeof connectRemote>[2];

/** What makes two connections the same: hosts, SSH settings and the data path asked for (not the signal). */
function connectionKey(hosts: RemoteHost[], ssh: SshSettings, options: ConnectOptions): string {
  return JSON.stringify([hosts, ssh, options.mode, options.remoteCommand, options.pythonAlongside !== false, options.windowBytes, options.chunkBytes, options.helperTimeoutMs, options.recordNewHostKeys === true]);
}

/**
 * Resolves `loc` and opens the connection the command will ask for first,
 * without waiting for it. The promise returned settles (never rejects) once
 * that connection waits on the remote side alone (its helper's command sent:
 * RemoteOptions.onWaiting) or has ended either way: the caller loads the
 * rest of ferry then, while the remote shell and helper start, and not
 * during the login, whose round trips would each wait for the loading.
 */
export function connectAhead(loc: RemoteLocation, options: ResolvedCopyOptions, connectOptions: ConnectOptions): Promise<void> {
  let waiting!: () => void;
  const underway = new Promise<void>((resolve) => (waiting = resolve));
  const resolved = resolveRemote(loc, options);
  const remote = { key: JSON.stringify([loc, options]), resolved };
  const opened = resolved.then((r) => connectAny(r.hosts, r.ssh, { ...connectOptions, onWaiting: waiting }));
  void opened.then(waiting, waiting);
  // Whoever takes them sees their errors; nobody may, so none goes unhandled.
  resolved.catch(() => {});
  opened.catch(() => {});
  const mine = { remote, opened } as NonNullable<typeof ahead>;
  ahead = mine;
  // Known once the hosts are resolved (before any connectAny can ask: it needs them too).
  void resolved.then((r) => (mine.connectionKey = connectionKey(r.hosts, r.ssh, connectOptions)), () => {});
  return underway;
}

/** Closes the connection opened ahead if nothing took it (a command that failed before it needed one). */
export function dropAhead(): void {
  const left = ahead;
  ahead = undefined;
  void left?.opened.then(({ conn }) => conn.close(), () => {});
}

/** Connects to the first host of the list that answers; the last error when none does. */
export async function connectAny(hosts: RemoteHost[], ssh: SshSettings, options: ConnectOptions): Promise<Connected> {
  if (ahead?.connectionKey !== undefined && ahead.connectionKey === connectionKey(hosts, ssh, options)) {
    const { opened } = ahead;
    ahead = undefined;
    return opened;
  }
  let last: unknown;
  for (const host of hosts) {
    try {
      return { conn: await connectRemote(host, ssh, options), host };
    } catch (err) {
      last = err;
      // Only an unreachable host makes the next one worth trying; a bad key or host key fails everywhere.
      if (!(err instanceof FerryError) || (err.code !== 'HOST_UNREACHABLE' && err.code !== 'CONNECTION_LOST')) throw err;
    }
  }
  if (hosts.length > 1 && last instanceof FerryError) {
    throw new FerryError('HOST_UNREACHABLE', `none of the remote hosts ${hosts.map(hostLabel).join(', ')} is reachable; last: ${last.message}`, { cause: last });
  }
  throw last;
}

/**
 * A random part for a temporary name: 96 bits, so nobody can have a file
 * ready at the name (`first`: the test hook FERRY_TEST_TEMP_TOKEN may choose it).
 */
export function newTempToken(first = false): string {
  const hook = first ? process.env[TEMP_TOKEN_ENV] : undefined;
  return hook || randomBytes(12).toString('hex');
}

export function makeJobId(direction: Direction, source: string, target: string): string {
  return createHash('sha256').update(`${direction}\0${source}\0${target}`).digest('hex').slice(0, 16);
}

/** What a local path is, for firstBadDirectory: a missing one and one under a file alike are missing. */
export async function localKind(path: string): Promise<PathKind> {
  try {
    return (await stat(path)).isDirectory() ? 'directory' : 'other';
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === 'ENOENT' || errno === 'ENOTDIR') return 'missing';
    throw err;
  }
}

/** A remote stat that answers undefined for a path under a file too (the helper says ENOTDIR, sftp-server "no such file"). */
export async function remoteStat(conn: RemoteConnection, path: string): Promise<StatResult | undefined> {
  try {
    return await conn.stat(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOTDIR') return undefined;
    throw err;
  }
}

export function remoteKind(conn: RemoteConnection): (path: string) => Promise<PathKind> {
  return async (path) => {
    const st = await remoteStat(conn, path);
    return !st ? 'missing' : st.type === 'directory' ? 'directory' : 'other';
  };
}

/** `host:path`, or `path` for a local one. */
function placeOf(host: string | undefined, path: string): string {
  return host === undefined ? path : `${host}:${path}`;
}

/**
 * Why a source that is not there is not there: the first directory on its way
 * that is missing or is not a directory, when it is one of those, named.
 */
async function sourceMissing(host: string | undefined, path: string, probe: (path: string) => Promise<PathKind>, cause?: unknown): Promise<FerryError> {
  const bad = await firstBadDirectory(posix.dirname(path), probe).catch(() => undefined);
  const why = !bad ? '' : bad.problem === 'missing' ? ` ${bad.path} is missing;` : ` ${bad.path} is not a directory;`;
  return new FerryError('SOURCE_NOT_FOUND', `source ${placeOf(host, path)} does not exist:${why} check the path`, {
    ...(host === undefined ? {} : { host }),
    path,
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * The error for a destination whose directory `dir` is not a directory one can
 * write in, naming the component at fault: the first one missing (to create),
 * or one that is a file. `given` is the destination as it was resolved.
 */
export function destinationDirError(host: string | undefined, given: string, dir: string, bad: BadComponent | undefined): FerryError {
  const fields = { ...(host === undefined ? {} : { host }), path: bad?.path ?? dir };
  if (bad?.problem === 'not-directory') {
    return new FerryError('DEST_DIR_MISSING', `destination ${placeOf(host, given)} cannot be created: ${bad.path} is not a directory: choose a destination in an existing directory`, fields);
  }
  const first = bad && bad.path.replace(/\/+$/, '') !== dir.replace(/\/+$/, '') ? `: ${bad.path} is missing;` : ':';
  return new FerryError('DEST_DIR_MISSING', `destination directory ${placeOf(host, dir)} does not exist${first} create it first (ferry does not create directories)`, fields);
}

/**
 * A remote path with scp's `~` and `~user` replaced by that directory (the
 * login directory, or the user's home); other paths unchanged.
 */
export async function expandHome(conn: RemoteConnection, path: string, role: 'source' | 'destination'): Promise<string> {
  const tilde = tildePrefix(path);
  if (!tilde) return path;
  const home = await conn.homeDirectory(tilde.user);
  if (home !== undefined) return underHome(home, tilde.rest);
  const label = conn.label;
  const fields = { host: label, path };
  throw role === 'source'
    ? new FerryError('SOURCE_NOT_FOUND', `source ${label}:${path} does not exist: there is no user ${tilde.user} on ${label}; check the name after ~`, fields)
    : new FerryError('DEST_DIR_MISSING', `destination ${label}:${path} cannot be created: there is no user ${tilde.user} on ${label}: check the name after ~, or write the path out in full`, fields);
}

async function statLocalSource(path: string): Promise<{ size: number; mode: number; mtimeMs: number }> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === 'ENOENT' || errno === 'ENOTDIR') throw await sourceMissing(undefined, path, localKind, err);
    throw new FerryError('SOURCE_UNREADABLE', `cannot access source ${path} (${errno ?? (err as Error).message}): check its permissions`, { path, cause: err });
  }
  if (st.isDirectory()) throw new FerryError('USAGE', `source ${path} is a directory: ferry cp copies one file`, { path });
  if (!st.isFile()) throw new FerryError('USAGE', `source ${path} is not a regular file`, { path });
  try {
    const fh = await open(path, 'r');
    await fh.close();
  } catch (err) {
    throw new FerryError('SOURCE_UNREADABLE', `cannot read source ${path} (${errnoOf(err) ?? (err as Error).message}): check its permissions`, { path, cause: err });
  }
  return { size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs };
}

/** Final remote path for a push: a directory gets the source's name; the parent must exist. */
async function remoteTarget(conn: RemoteConnection, loc: RemoteLocation, sourceName: string): Promise<string> {
  const label = conn.label;
  const given = await expandHome(conn, loc.path, 'destination');
  let st: StatResult | undefined;
  try {
    st = await remoteStat(conn, given);
  } catch (err) {
    throw destinationError(err, { host: label, path: given });
  }
  // The directory the file goes into must be there: `dir/` itself, or the parent of a file name.
  const dir = st?.type === 'directory' ? undefined : given.endsWith('/') ? given : posix.dirname(given);
  if (dir !== undefined) {
    let dirStat: StatResult | undefined;
    try {
      dirStat = await remoteStat(conn, dir);
    } catch (err) {
      throw destinationError(err, { host: label, path: dir });
    }
    if (dirStat?.type !== 'directory') {
      const bad = await firstBadDirectory(dir, remoteKind(conn)).catch((err: unknown) => {
        throw destinationError(err, { host: label, path: dir });
      });
      throw destinationDirError(label, given, dir, bad);
    }
  }
  const target = st?.type === 'directory' ? posix.join(given, sourceName) : given;
  const existing = st?.type === 'directory' ? await conn.stat(target) : st;
  if (existing && existing.type !== 'file') {
    throw new FerryError('USAGE', `destination ${label}:${target} exists and is not a regular file`, { host: label, path: target });
  }
  return conn.realpath(target).catch(() => target);
}

async function localTarget(given: string, sourceName: string): Promise<string> {
  const abs = resolve(given);
  let st;
  try {
    st = await stat(abs);
  } catch (err) {
    const errno = errnoOf(err);
    if (errno !== 'ENOENT' && errno !== 'ENOTDIR') throw destinationError(err, { path: abs });
  }
  if (st?.isDirectory()) return join(abs, sourceName);
  if (st && !st.isFile() && !given.endsWith('/')) throw new FerryError('USAGE', `destination ${given} exists and is not a regular file`, { path: given });
  // The directory the file goes into must be there: `dir/` itself, or the parent of a file
  // name (as given: relative paths are looked at, and named, relative to here).
  const dir = given.endsWith('/') ? given : dirname(given);
  let kind: PathKind;
  try {
    kind = await localKind(dir);
  } catch (err) {
    throw destinationError(err, { path: resolve(dir) });
  }
  if (kind !== 'directory') {
    const bad = await firstBadDirectory(dir, localKind).catch((err: unknown) => {
      throw destinationError(err, { path: resolve(dir) });
    });
    throw destinationDirError(undefined, given, dir, bad);
  }
  return abs;
}

/** The coordinator's connection in a discard job: there is no remote host, so any use is a bug. */
function discardConnection(): RemoteConnection {
  const none = () => Promise.reject(new FerryError('INTERNAL', `a discard job (FERRY_BENCH_DISCARD) has no remote host to talk to`));
  return { label: DISCARD_HOST, alive: true, mode: 'helper', stat: none, createSized: none, createNew: none, umask: none, openFile: none, setstat: none, rename: none, unlink: none, rmdir: none, hashFiles: none, hashRange: none, writeBatch: none, walk: () => ({ [Symbol.asyncIterator]: () => ({ next: none }) }), readBatch: none, metadata: { owners: false, names: false, xattrs: false, xattrsExact: false }, glob: none, realpath: none, homeDirectory: none, close: () => {} };
}

export interface PrepareOptions {
  signal?: AbortSignal;
  /**
   * A control-plane benchmark job (see core's discard.ts; the caller has
   * checked the command line). The source is checked as usual; the
   * destination is never contacted.
   */
  discard?: boolean;
  /** Runs once the coordinator's own connection to the remote host is up. */
  onConnected?: (conn: RemoteConnection, host: RemoteHost) => void;
  /** The SSH settings and hosts, when the caller has resolved them already (warm start hands its agents the same). */
  remote?: ResolvedRemote;
}

/** How the coordinator's own connection is opened (prepareCopy, and early.ts ahead of it). */
export function coordinatorConnectOptions(options: ResolvedCopyOptions, signal?: AbortSignal): Parameters<typeof connectRemote>[2] {
  return {
    mode: options.mode,
    remoteCommand: options.remoteCommand,
    // A --remote-cmd given says where ferry serve is: no python helper started beside it.
    pythonAlongside: !options.remoteCommandGiven,
    windowBytes: options.windowBytes,
    // The coordinator's own connections record new host keys where the host's route allows (--accept-new-host-key, StrictHostKeyChecking accept-new).
    recordNewHostKeys: true,
    ...(signal ? { signal } : {}),
  };
}

export async function prepareCopy(source: string, destination: string, options: ResolvedCopyOptions, prepare: PrepareOptions = {}): Promise<PreparedCopy> {
  const { signal, discard = false, onConnected } = prepare;
  const src = parseLocation(source);
  const dst = parseLocation(destination);
  if (src.kind === 'local' && dst.kind === 'local') {
    throw new FerryError('USAGE', `both ${source} and ${destination} are local: one side must be remote, written [user@]host[:port]:path`);
  }
  if (src.kind === 'remote' && dst.kind === 'remote') {
    throw new FerryError('USAGE', `both ${source} and ${destination} are remote: ferry copies between this site and one remote host`);
  }
  const remoteLoc = (src.kind === 'remote' ? src : dst) as RemoteLocation;
  const { ssh, hosts: remoteHosts } = prepare.remote ?? (await resolveRemote(remoteLoc, options));
  // The job id names the hosts as given, so it does not change with the host that answered.
  const hostsKey = `${remoteLoc.hosts.join(',')}:${remoteLoc.port ?? 22}`;
  const connectOptions = coordinatorConnectOptions(options, signal);

  if (discard) {
    if (src.kind !== 'local') throw new FerryError('USAGE', 'a discard job needs a local source');
    const sourcePath = resolve(src.path);
    const info = await statLocalSource(sourcePath);
    const targetPath = remoteLoc.path.endsWith('/') ? posix.join(remoteLoc.path, basename(sourcePath)) : remoteLoc.path;
    // Never the id of a real copy, whatever a host called "discard" might hold.
    const jobId = makeJobId('push', sourcePath, `discard\0${targetPath}`);
    const tempPath = tempNameFor(targetPath, jobId.slice(0, 8));
    return {
      direction: 'push',
      jobId,
      sourceLabel: sourcePath,
      destinationLabel: formatLocation({ ...remoteLoc, path: targetPath }),
      fileBytes: info.size,
      sourceMode: info.mode,
      sourceMtimeMs: info.mtimeMs,
      remoteHost: remoteHosts[0]!,
      remoteHosts,
      ssh,
      conn: discardConnection(),
      connectOptions: { ...connectOptions, mode: 'helper' },
      mode: 'helper',
      localPath: sourcePath,
      remotePath: tempPath,
      targetPath,
      tempPath,
      discard: true,
    };
  }

  if (src.kind === 'local') {
    const sourcePath = resolve(src.path);
    const info = await statLocalSource(sourcePath);
    const { conn, host: remoteHost } = await connectAny(remoteHosts, ssh, connectOptions);
    onConnected?.(conn, remoteHost);
    try {
      const targetPath = await remoteTarget(conn, remoteLoc, basename(sourcePath));
      const jobId = makeJobId('push', sourcePath, `${hostsKey}:${targetPath}`);
      // A new job's name; a resumed job's temporary file is the one its job file names (file-plan.ts).
      const tempPath = tempNameFor(targetPath, newTempToken(true));
      return {
        direction: 'push',
        jobId,
        sourceLabel: sourcePath,
        destinationLabel: formatLocation({ ...remoteLoc, path: targetPath }),
        fileBytes: info.size,
        sourceMode: info.mode,
        sourceMtimeMs: info.mtimeMs,
        remoteHost,
        remoteHosts,
        ssh,
        conn,
        connectOptions: { ...connectOptions, mode: conn.mode },
        mode: conn.mode,
        localPath: sourcePath,
        remotePath: tempPath,
        targetPath,
        tempPath,
        discard: false,
      };
    } catch (err) {
      conn.close();
      throw err;
    }
  }

  const { conn, host: remoteHost } = await connectAny(remoteHosts, ssh, connectOptions);
  onConnected?.(conn, remoteHost);
  try {
    const label = conn.label;
    const given = await expandHome(conn, remoteLoc.path, 'source');
    const st = await remoteStat(conn, given);
    if (!st) throw await sourceMissing(label, given, remoteKind(conn));
    if (st.type === 'directory') throw new FerryError('USAGE', `source ${label}:${given} is a directory: ferry cp copies one file`, { host: label, path: given });
    if (st.type !== 'file') throw new FerryError('USAGE', `source ${label}:${given} is not a regular file`, { host: label, path: given });
    const remotePath = await conn.realpath(given).catch(() => given);
    try {
      const f = await conn.openFile(remotePath, 'read');
      await f.close();
    } catch (err) {
      throw new FerryError('SOURCE_UNREADABLE', `cannot read source ${label}:${remotePath} (${errnoOf(err) ?? (err as Error).message}): check its permissions`, { host: label, path: remotePath, cause: err });
    }
    const targetPath = await localTarget(dst.path, posix.basename(remotePath));
    const jobId = makeJobId('pull', `${hostsKey}:${remotePath}`, targetPath);
    const tempPath = tempNameFor(targetPath, newTempToken(true), posix);
    return {
      direction: 'pull',
      jobId,
      sourceLabel: formatLocation({ ...remoteLoc, path: remotePath }),
      destinationLabel: targetPath,
      fileBytes: st.size,
      sourceMode: st.mode,
      sourceMtimeMs: st.mtimeMs,
      remoteHost,
      remoteHosts,
      ssh,
      conn,
      connectOptions: { ...connectOptions, mode: conn.mode },
      mode: conn.mode,
      localPath: tempPath,
      remotePath,
      targetPath,
      tempPath,
      discard: false,
    };
  } catch (err) {
    conn.close();
    throw err;
  }
}
