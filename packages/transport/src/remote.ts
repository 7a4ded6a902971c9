/**
 * A connection to one remote host, in helper or SFTP mode, behind one
 * interface: file operations for the coordinator (stat, create, fsync, rename)
 * and range transfers for the agents. `connectRemote()` picks the mode.
 */
import { randomBytes } from 'node:crypto';
import type { Client } from 'ssh2';
import { posix } from 'node:path';
import { BATCH_CAPABILITY, WALK_HASH_CAPABILITY, XATTRS_EXACT_CAPABILITY, HASH_ONLY_CAPABILITY, COPY_RANGE_CAPABILITY, TREE_META_CAPABILITY, TREE_READ_CAPABILITY, expandGlob, hasMeta, ZERO_CHUNK, readBatchProblem, FRAME_HEADER_BYTES, FerryError, HUB_KEY_BYTES, MAX_BATCH_BODY_BYTES, MAX_OPEN_BATCHES, batchBody, encodeControl, SAFE_FILES_CAPABILITY, Semaphore, SerialQueue, batchEntriesProblem, createHasher, destinationError, errnoOf, hostLabel, identityOf, identityProblem, isHashAlgorithm, replacedError, toFerryError } from '@ferry/core';
import type { BatchEntry, EntryMeta, ExactXattrs, FileIdentity, HashAlgorithm, ReadBatchEntry, RemoteHost, SshSettings, StatResult, TransferMode, WalkItem, WireWalkItem } from '@ferry/core';
import { readEntryError, sftpReadBatch, sftpWalk, walkItemOf } from './tree-read.js';
import type { ReadBatchResult, ReadBatchSink } from './tree-read.js';
import { entryError, readExactly } from './batch.js';
import type { BatchRead, BatchResult, SourceOutcome } from './batch.js';
import { sftpWriteBatch } from './sftp-batch.js';
import { pythonHelperCommand, pythonHelperScript } from './python-helper.js';
import { execCapture } from './exec.js';
import { connectOpenSsh } from './openssh.js';
import { joinHub } from './hub-join.js';
import type { JoinOutcome } from './hub-join.js';
import type { ExecResult } from './exec.js';
import { HelperClient, isHelloTimeout, isSlowHelperStart, slowStart } from './helper-client.js';
import type { RangeWrite } from './helper-client.js';
import { SftpSession, sftpErrno, sftpWriteError } from './sftp-session.js';
import { connectSsh, shellQuote } from './ssh.js';
import { limitReadBuffer } from './read-buffer.js';
import { limitSendWindow, serverSoftware } from './send-window.js';
import type { SendWindow } from './send-window.js';
import type { ConnectOptions } from './ssh.js';

export type { RangeWrite } from './helper-client.js';
export type { BatchRead, BatchResult } from './batch.js';
export type { ReadBatchResult, ReadBatchSink } from './tree-read.js';

export type RangeSink = (chunk: Buffer, zero: boolean) => void | Promise<void>;

/** One open remote file, for range transfers. */
export interface RemoteFile {
  readonly headroom: number;
  /** Starts writing [offset, offset + length); see RangeWrite. */
  beginWrite(offset: number, length: number, algorithm: HashAlgorithm): RangeWrite;
  /**
   * Reads [offset, offset + length) and hands the bytes to `sink` in order
   * (`zero` marks a run the source sent as zeros; `chunk` then views a shared
   * zero buffer). Resolves with the source-side hash. `sink` may return a
   * promise to hold the stream; `chunk` is valid until then.
   */
  read(offset: number, length: number, algorithm: HashAlgorithm, sink: RangeSink): Promise<{ hash: string }>;
  fsync(): Promise<void>;
  /** Hash of [offset, offset + length) as the remote file holds it now, read back from its storage (`--verify`). */
  hashStored(offset: number, length: number, algorithm: HashAlgorithm): Promise<string>;
  /** True when the hash a write reports is already one read back from storage (SFTP mode), not of the bytes as received. */
  readonly writeHashIsStored?: boolean;
  close(): Promise<void>;
  /** Opened for writing with `direct`: whether aligned writes bypass the remote page cache, and if not, why. */
  readonly direct?: boolean;
  readonly directReason?: string;
  /** Helper mode: set when sshd's pipes to the helper stay at the kernel's default 64 KiB, and why. */
  readonly pipesReason?: string;
  /**
   * `--delta`: copies [offset, offset + length) of the regular file at `from`
   * (the old destination file; never through a link at its name where the
   * remote side can tell) into this file at the same offset, on the remote
   * host; resolves with the hash of the bytes as copied. Absent where the
   * remote side cannot copy there (an older helper; an SFTP server without
   * the `copy-data` extension): such ranges are sent like changed ones.
   */
  copyFrom?: (from: string, offset: number, length: number, algorithm: HashAlgorithm) => Promise<string>;
  /** `--inplace`: sets this file's size (ftruncate through the handle). Absent where the remote side cannot (an older helper). */
  resize?: (size: number) => Promise<void>;
  /** Sets the mode (and times) of this open file itself: fchmod and futimes (SFTP: fsetstat), no name looked up. */
  setstat(attrs: { mode?: number; mtimeMs?: number; atimeMs?: number }): Promise<void>;
  /**
   * Renames this file from `from` to `to`, checking that `from` is this file
   * just before and `to` just after: DEST_REPLACED when another user swapped it.
   */
  renameTo(from: string, to: string): Promise<void>;
}

export interface OpenFileOptions {
  /** policy 'write': have the helper write aligned data with O_DIRECT (true: --direct-io; auto: on a local disk file system). */
  direct?: boolean | 'auto';
  /**
   * policy 'write': the file must be this one (the temporary file the job
   * created): DEST_REPLACED, before any byte is written, when it is not.
   */
  expect?: FileIdentity;
}

/** A faster data path that `--mode auto` tried on a host and could not use, and why. */
export interface Fallback {
  mode: TransferMode;
  /** What was missing, e.g. `'ferry serve' not found (exit 127)`. */
  reason: string;
}

export interface RemoteConnection {
  readonly label: string;
  /** False once the SSH connection (or the helper session) has ended. */
  readonly alive: boolean;
  readonly mode: TransferMode;
  /** The faster paths `--mode auto` tried before this one, in order (none when the first worked). */
  readonly fallbacks?: readonly Fallback[];
  /** Hash algorithms the remote side computes itself; others are computed here from what it sends. */
  readonly hashes?: readonly HashAlgorithm[];
  /** The cap on unread data in the server on the data channel, when one applies (see send-window.ts). */
  readonly sendWindow?: SendWindow;
  /** With --shared-helper: whether this connection started its helper for others to join, or joined one. */
  readonly sharedHelper?: 'started' | 'joined';
  stat(path: string): Promise<StatResult | undefined>;
  /** Creates (or truncates) `path` and sizes it to `size` bytes, sparse. */
  createSized(path: string, size: number, mode?: number): Promise<void>;
  /**
   * Creates `path` new, mode 0600, without following a link at the name
   * (O_CREAT|O_EXCL|O_NOFOLLOW; SFTP: its EXCL flag), sized to `size` bytes,
   * sparse; resolves with what identifies it. Fails with errno EEXIST when
   * anything is at `path`.
   */
  createNew(path: string, size: number): Promise<FileIdentity>;
  /**
   * The umask a file created in the directory of `nearPath` gets on the remote
   * side (the helper's own; SFTP: found by creating an empty probe file there).
   */
  umask(nearPath: string): Promise<number>;
  openFile(path: string, policy: 'write' | 'read', options?: OpenFileOptions): Promise<RemoteFile>;
  /**
   * Mode, times and (helpers with `tree-meta`; SFTP: numbers only) owner and
   * extended attributes of what is at `path`: owner and attributes never
   * through a link at the name.
   */
  setstat(path: string, attrs: SetAttrs): Promise<void>;
  /**
   * What the remote side can keep of a tree's metadata: owners by name or
   * number (`names`: the helper maps names to its own ids; SFTP sets
   * numbers only), extended attributes and ACLs (helpers only), and its
   * effective user id where it says (0: root, so owners are kept).
   */
  readonly metadata: { owners: boolean; names: boolean; xattrs: boolean; euid?: number; /** SETSTAT's `xattrsExact`: an exact set of attributes by path, removals included (helpers of this version). */ xattrsExact?: boolean };
  /** The paths an absolute pattern matches there (core's glob.ts), sorted; none when nothing matches. */
  glob(pattern: string): Promise<string[]>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** Removes an empty directory (`ferry sync --delete`). */
  rmdir(path: string): Promise<void>;
  /**
   * Writes many small entries in one request (push only): directories
   * (mkdir 0700; an existing one will do), files (created new under a random
   * temporary name, renamed over their path once the hashes agree), symbolic
   * links and hard links (made at a temporary name and renamed). Paths are
   * absolute, parents before their contents. `read(i)` gives file entry i's
   * bytes; a source that gives more or fewer than its `size` fails that entry
   * (SOURCE_CHANGED) and no other. Resolves with one result per entry; rejects
   * only when the whole batch fails (the connection, the protocol). Several
   * may run at once on one connection: their bytes follow one another.
   */
  writeBatch(entries: readonly BatchEntry[], algorithm: HashAlgorithm, read: BatchRead): Promise<BatchResult[]>;
  /**
   * Walks the remote tree at `root` (absolute) for a pull: lstat semantics,
   * parents before their contents, a further name of a file as a `hardlink`
   * to its first (not in SFTP mode: no inode numbers there), entries that
   * cannot be read as WalkErrors. Items come as the remote side finds them;
   * while the consumer lags, the connection stops reading (the SSH window
   * then holds the helper back). Stop early only by closing the connection.
   */
  walk(root: string, wanted?: WalkWanted): AsyncIterable<WalkItem>;
  /**
   * Reads many files in one request (a pull): their bytes, exactly each
   * listed size, go to `sink` in order; resolves with the remote side's hash
   * of each file, or why it failed (one that changed since it was listed:
   * SOURCE_CHANGED; its bytes are then padded or cut, and must be dropped).
   * Rejects only when the whole batch fails.
   */
  readBatch(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm, sink: ReadBatchSink): Promise<ReadBatchResult[]>;
  /** Hash of a range of a remote file as it is on disk. */
  hashRange(path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string>;
  /**
   * The hash of each of many whole files, as readBatch gives it, without
   * their bytes where the helper can (HASH_ONLY_CAPABILITY); elsewhere their
   * bytes come and are dropped here.
   */
  hashFiles(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm): Promise<ReadBatchResult[]>;
  /** Absolute form of a remote path (relative paths are relative to the login directory). */
  realpath(path: string): Promise<string>;
  /**
   * The login directory (no `user`), or the home directory of `user` in the
   * remote host's user database: what scp makes of `~` and `~user`.
   * Undefined when there is no such user.
   */
  homeDirectory(user?: string): Promise<string | undefined>;
  close(): void;
}

/** Mode, times, owner and extended attributes to set (each optional). */
export type SetAttrs = { mode?: number; mtimeMs?: number; atimeMs?: number; /** The attributes of these kinds become exactly `xattrs` (`metadata.xattrsExact`). */ xattrsExact?: ExactXattrs } & EntryMeta;

/** What a walk adds to each entry: owner and group names, extended attributes, ACLs. */
export interface WalkWanted {
  names?: boolean;
  xattrs?: boolean;
  acls?: boolean;
  /**
   * Each regular file of at most `maxBytes` with its content hash (`hash`), where the helper
   * has WALK_HASH_CAPABILITY; without it (an older ferry serve, the python helper, SFTP) the
   * entries come without, and the caller hashes them otherwise.
   */
  hashes?: { algorithm: HashAlgorithm; maxBytes: number };
}

export interface RemoteOptions extends ConnectOptions {
  mode: TransferMode | 'auto';
  remoteCommand: string;
  /** Bytes kept in flight per range (SFTP requests, helper frames are bounded by SSH's window). */
  windowBytes: number;
  /** Bytes per read/write call on the data path. */
  chunkBytes?: number;
  /**
   * How long a started helper may take to answer (the remote shell's start-up
   * files, Node loading), on top of the SSH handshake. @default the SSH
   * connect timeout (--connect-timeout, 20 s)
   */
  helperTimeoutMs?: number;
  /**
   * Called once the connection waits on the remote side alone: the helper's
   * command has gone out (or, without one, the attempt ended either way). A
   * caller with work of its own to do meanwhile (the CLI loading the
   * coordinator) starts it then, so that it does not hold up the login's round
   * trips, which each need this process for a moment.
   */
  onWaiting?: () => void;
  /**
   * In `auto` mode, start ferry's python helper alongside `remoteCommand`
   * rather than only after it failed: one remote command sooner where ferry
   * is not installed, one python start wasted where it is. @default true
   */
  pythonAlongside?: boolean;
}

/** The onWaiting of a connection being set up, called by startHelper once the helper's command went out. */
const waitingOf = new WeakMap<Client, () => void>();

/** `fn` (if any), called once whatever the number of calls. */
function once(fn: (() => void) | undefined): () => void {
  let called = fn === undefined;
  return () => {
    if (called) return;
    called = true;
    fn!();
  };
}

/**
 * A helper that the connections of this process to one host share (serve's
 * hub.ts): the connection that starts it asks it for a socket, up to
 * MAX_SHARED_JOINS others open `direct-streamlocal` channels to that socket
 * instead of starting helpers of their own.
 */
interface SharedHelper {
  /** The socket's path once the helper has answered; undefined when there is none to join. */
  readonly path: Promise<string | undefined>;
  /** The secret joins prove they know, and the helper proves back (core's hub-auth.ts); it never leaves this process but inside the SSH session that starts the helper. */
  readonly key: Buffer;
  joined: number;
}

/** Connections joining one shared helper besides the one that started it: 8 streams per helper at most. */
export const MAX_SHARED_JOINS = 7;

/**
 * Whether a READ_BATCH of these entries may be bigger than MAX_BATCH_BODY_BYTES:
 * a bound without encoding them (a path's UTF-8 is at most 3 bytes a UTF-16
 * unit; its map, keys and size 32 more; the rest of the body under 64), so only
 * a batch near the limit is encoded to be measured.
 */
function mayExceedBatchBody(entries: readonly ReadBatchEntry[]): boolean {
  let bound = 64;
  for (const e of entries) bound += 3 * e.path.length + 32;
  return bound > MAX_BATCH_BODY_BYTES;
}

const sharedHelpers = new Map<string, SharedHelper>();
/** Hosts (and commands) where a streamlocal channel to a shared helper failed to open: their connections start helpers of their own. */
const refusedSharing = new Set<string>();
/**
 * Hosts (and commands) where a shared helper's socket answered without proving
 * the key: every later connection there fails with the same error, so that no
 * retry turns the refusal into a copy that quietly goes on.
 */
const untrustedSharing = new Map<string, FerryError>();

/**
 * Sizes a fresh helper channel's buffers: what it may leave unread in the
 * server (send-window.ts) and what it holds while its reader is paused
 * (read-buffer.ts). Returns what was done to the send side.
 */
function fitChannel(client: Client, channel: object, sendWindowBytes: number): SendWindow | undefined {
  limitReadBuffer(channel);
  return limitSendWindow(channel, serverSoftware(client), sendWindowBytes);
}

type StartedHelper = { helper: HelperClient; sendWindow: SendWindow | undefined; sharing?: 'started' | 'joined' };

/**
 * Joins this process's shared helper on the host of `key`: a session over a
 * `direct-streamlocal` channel. Undefined when there is none to join, it is
 * full, or the join fails; the caller then starts a helper (its own).
 */
async function joinSharedHelper(client: Client, key: string, label: string, timeoutMs: number, sendWindowBytes: number): Promise<StartedHelper | undefined> {
  const shared = sharedHelpers.get(key);
  if (!shared || shared.joined >= MAX_SHARED_JOINS) return undefined;
  shared.joined++;
  let helper: HelperClient | undefined;
  try {
    const path = await shared.path;
    if (path === undefined || refusedSharing.has(key)) throw new Error('no shared helper');
    const channel = await new Promise<import('ssh2').ClientChannel>((resolve, reject) =>
      client.openssh_forwardOutStreamLocal(path, (err, ch) => {
        if (err) {
          // The server refused the channel (a numeric reason; not a connection lost meanwhile).
          // OpenSSH says "open failed" alike when it forbids streamlocal forwarding
          // (AllowStreamLocalForwarding, DisableForwarding) and when the socket is not on
          // the node this connection reached (a host name spread over several nodes):
          // either way, later joins would fail too.
          if (typeof (err as { reason?: unknown }).reason === 'number') refusedSharing.add(key);
          reject(err);
        } else resolve(ch);
      }),
    );
    const sendWindow = fitChannel(client, channel, sendWindowBytes);
    let outcome: JoinOutcome;
    try {
      outcome = await joinHub(channel, shared.key, timeoutMs, label, path);
    } catch (err) {
      channel.close();
      // Whatever listens there did not prove the key: no connection of this process joins it again.
      refusedSharing.add(key);
      if (err instanceof FerryError && err.code === 'HELPER_UNTRUSTED') untrustedSharing.set(key, err);
      throw err;
    }
    if (outcome !== 'joined') {
      channel.close();
      throw new Error(`shared helper ${outcome}`);
    }
    helper = new HelperClient({ input: channel, output: channel, close: () => channel.close() }, label);
    await helper.handshake(timeoutMs);
    client.once('close', () => shared.joined--);
    return { helper, sendWindow, sharing: 'joined' };
  } catch (err) {
    helper?.close();
    shared.joined--;
    if (err instanceof FerryError && err.code === 'HELPER_UNTRUSTED') throw err;
    return undefined;
  }
}

/**
 * Starts a helper over exec. With `share`, asks it for a socket and offers it to
 * this process's later connections to the same host (until this one closes).
 */
async function startHelperFor(client: Client, command: string, label: string, timeoutMs: number, sendWindowBytes: number, share: string | undefined): Promise<StartedHelper> {
  if (share === undefined || refusedSharing.has(share)) return startHelper(client, command, label, timeoutMs, sendWindowBytes, undefined);
  let found!: (path: string | undefined) => void;
  const shared: SharedHelper = { path: new Promise((resolve) => (found = resolve)), key: randomBytes(HUB_KEY_BYTES), joined: 0 };
  sharedHelpers.set(share, shared);
  const forget = () => {
    if (sharedHelpers.get(share) === shared) sharedHelpers.delete(share);
  };
  try {
    const started = await startHelper(client, command, label, timeoutMs, sendWindowBytes, shared.key);
    const hello = started.helper.hello;
    // A helper that does not check joins (an older ferry) is not shared.
    const hub = hello?.capabilities?.includes('hub-auth') === true && typeof hello.hub === 'string' ? hello.hub : undefined;
    found(hub);
    if (hub === undefined) {
      forget();
      return started;
    }
    client.once('close', forget);
    return { ...started, sharing: 'started' };
  } catch (err) {
    found(undefined);
    forget();
    throw err;
  }
}

/** Why a helper could not start, in a few words for the fallback line: `not found (exit 127)`. */
const helperFailures = new WeakMap<object, string>();

/** What `err` (from startHelper) says was missing, for a fallback line; its message otherwise. */
export function helperFailureReason(err: unknown): string {
  return (typeof err === 'object' && err !== null && helperFailures.get(err)) || (err as Error).message;
}

/**
 * Starts a helper over an exec channel and waits for its HELLO. `preamble` is
 * written before any frame (the Python helper's source, which the remote
 * command reads first).
 */
async function startHelper(client: Client, command: string, label: string, timeoutMs: number, sendWindowBytes: number, hubKey: Buffer | undefined, preamble?: Buffer, shown = command): Promise<StartedHelper> {
  const channel = await new Promise<import('ssh2').ClientChannel>((resolve, reject) =>
    client.exec(command, (err, ch) => (err ? reject(new FerryError('CONNECTION_LOST', `cannot open a channel to ${label}: ${err.message}`, { host: label, cause: err })) : resolve(ch))),
  );
  waitingOf.get(client)?.();
  const sendWindow = fitChannel(client, channel, sendWindowBytes);
  let exitCode: number | null | undefined;
  let exited!: () => void;
  const exit = new Promise<void>((resolve) => (exited = resolve));
  channel.on('exit', (code: number | null) => {
    exitCode = code;
    exited();
  });
  const helper = new HelperClient({ input: channel, output: channel, stderr: channel.stderr, close: () => channel.close() }, label);
  if (preamble) channel.write(preamble);
  try {
    await helper.handshake(timeoutMs, hubKey);
  } catch (err) {
    // The helper's output can end before sshd's exit status arrives: wait a moment for it, as
    // it tells a missing command (127) from a broken one.
    if (exitCode === undefined && !isHelloTimeout(err)) await Promise.race([exit, new Promise((r) => setTimeout(r, 250).unref())]);
    helper.close();
    const tail = helper.stderr;
    if (isHelloTimeout(err) && exitCode === undefined && !tail.trim()) throw slowStart(shown, label, timeoutMs, err);
    // The session ended with no exit status and not a word: the connection dropped (its sshd
    // session killed, the network cut), which says nothing about the helper. A caller connects
    // again; a missing helper gives exit 127, a broken one an exit status or words on stderr.
    if (exitCode === undefined && !tail.trim() && err instanceof FerryError && err.code === 'CONNECTION_LOST') {
      throw new FerryError('CONNECTION_LOST', `the connection to ${label} dropped while ${preamble ? "ferry's python helper" : `'${shown}'`} was starting (${err.message})`, { host: label, cause: err });
    }
    const missing = exitCode === 127 || /not found|No such file or directory$/im.test(tail);
    const why = missing ? 'command not found' : tail || (err as Error).message;
    const e = new FerryError(
      'HELPER_UNAVAILABLE',
      preamble
        ? `cannot start ferry's python helper on ${label} (${why}): the host needs python3 (3.6 or later) or /usr/libexec/platform-python, or use --mode sftp`
        : `cannot start '${command}' on ${label} (${why}): install ferry there, point --remote-cmd at it, or use --mode sftp`,
      { host: label, cause: err },
    );
    helperFailures.set(e, missing ? `not found (exit ${exitCode ?? 127})` : `failed: ${tail.split('\n').at(-1) || (err as Error).message}`);
    throw e;
  }
  return { helper, sendWindow };
}

/** Starts ferry's Python helper (python-helper.ts) over an exec channel; `slowRetry`: a start that is only slow gets a second one with twice the time. */
async function startPythonHelper(client: Client, label: string, timeoutMs: number, sendWindowBytes: number, slowRetry = false): Promise<StartedHelper> {
  try {
    return await startPythonHelperOnce(client, label, timeoutMs, sendWindowBytes);
  } catch (err) {
    if (!slowRetry || !isSlowHelperStart(err)) throw err;
    return startPythonHelperOnce(client, label, 2 * timeoutMs, sendWindowBytes);
  }
}

function startPythonHelperOnce(client: Client, label: string, timeoutMs: number, sendWindowBytes: number): Promise<StartedHelper> {
  const script = pythonHelperScript();
  return startHelper(client, pythonHelperCommand(script.length), label, timeoutMs, sendWindowBytes, undefined, script, 'python3 (ferry\'s python helper)');
}

/** The hash algorithms a helper computes itself, from its HELLO (`hash:NAME` capabilities; older helpers: xxh3 and sha256). */
export function helperHashes(capabilities: readonly string[] | undefined): HashAlgorithm[] {
  const named = (capabilities ?? []).filter((c) => c.startsWith('hash:')).map((c) => c.slice(5)).filter(isHashAlgorithm);
  return named.length > 0 ? named : ['xxh3', 'sha256'];
}

/**
 * Opens an SSH connection and a data session in the requested mode. 'auto'
 * takes the first that starts of `ferry serve` (helper), ferry's Python helper
 * (python) and SFTP, and records on the connection (`fallbacks`) what it tried
 * and why that failed, for the caller to say so.
 */
export async function connectRemote(target: RemoteHost, ssh: SshSettings, options: RemoteOptions): Promise<RemoteConnection> {
  const waiting = once(options.onWaiting);
  if (ssh.transport === 'openssh') {
    // The ssh process logs in and starts the helper on its own: this process is free at once.
    const connecting = connectOpenSsh(target, ssh, options);
    waiting();
    return connecting;
  }
  const client = await connectSsh(target, ssh, options).catch((err: unknown) => {
    waiting();
    throw err;
  });
  waitingOf.set(client, waiting);
  const label = hostLabel(target);
  const sendWindowBytes = ssh.sendWindowBytes ?? 0;
  // Cancelling also while the remote side starts (shell start-up files, the helper loading):
  // ending the client fails the step in progress at once.
  const onAbort = () => client.destroy();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const fallbacks: Fallback[] = [];
  const timeoutMs = options.helperTimeoutMs ?? ssh.connectTimeoutMs;
  const carrier = (): HelperCarrier => {
    const watch = watchClient(client);
    return { get ended() { return watch.ended; }, end: () => client.end(), exec: (command) => execCapture(client, command, label) };
  };
  // In auto mode ferry's python helper starts alongside ferry serve, not after its exit 127:
  // where ferry is not installed (most data transfer nodes) the login no longer waits for a
  // second remote command; where ferry serve answers, the python helper is closed unused.
  // (Not beside a shared helper, which may be joined without starting anything.)
  let python: Promise<StartedHelper> | undefined;
  const startPython = () => startPythonHelper(client, label, timeoutMs, sendWindowBytes, options.mode === 'auto' && !options.signal?.aborted);
  try {
    if (options.signal?.aborted) throw new FerryError('INTERRUPTED', `connection to ${label} cancelled`, { host: label });
    if (options.mode === 'helper' || options.mode === 'auto') {
      try {
        const share = ssh.sharedHelper === true ? `${label}\0${options.remoteCommand}` : undefined;
        const spoofed = share === undefined ? undefined : untrustedSharing.get(share);
        if (spoofed) throw new FerryError('HELPER_UNTRUSTED', spoofed.message, { host: label, ...(spoofed.path === undefined ? {} : { path: spoofed.path }) });
        let started = share === undefined ? undefined : await joinSharedHelper(client, share, label, timeoutMs, sendWindowBytes);
        try {
          const starting = started ? undefined : startHelperFor(client, options.remoteCommand, label, timeoutMs, sendWindowBytes, share);
          if (starting && options.mode === 'auto' && share === undefined && options.pythonAlongside !== false) {
            python = startPython();
            python.catch(() => {});
          }
          started ??= await starting!;
        } catch (err) {
          // In auto mode a helper that is only slow to start (a crowded or heavy login) gets
          // one more chance, with twice the time, before a slower path is chosen.
          if (options.mode !== 'auto' || !isSlowHelperStart(err) || options.signal?.aborted) throw err;
          started = await startHelper(client, options.remoteCommand, label, 2 * timeoutMs, sendWindowBytes, undefined);
        }
        void python?.then((unused) => unused.helper.close(), () => {});
        return new HelperConnection(carrier(), started.helper, label, started.sendWindow, started.sharing, 'helper', fallbacks);
      } catch (err) {
        // A spoofed shared helper is not a missing one: no slower path hides it.
        if (options.mode === 'helper' || options.signal?.aborted || (err instanceof FerryError && err.code === 'HELPER_UNTRUSTED')) throw err;
        fallbacks.push({ mode: 'helper', reason: `'${options.remoteCommand}' ${helperFailureReason(err)}` });
      }
    }
    if (options.mode === 'python' || options.mode === 'auto') {
      try {
        // In auto mode, as for ferry serve: a start that is only slow gets one more chance before SFTP.
        // One started alongside ferry serve that could not even open its channel (a host allowing
        // one session per connection) starts again now that ferry serve's channel is closed.
        const started = await (python ?? startPython()).catch((err) => {
          if (python && err instanceof FerryError && err.code === 'CONNECTION_LOST') return startPython();
          throw err;
        });
        return new HelperConnection(carrier(), started.helper, label, started.sendWindow, undefined, 'python', fallbacks);
      } catch (err) {
        if (options.mode === 'python' || options.signal?.aborted) throw err;
        fallbacks.push({ mode: 'python', reason: `python3 ${helperFailureReason(err)}` });
      }
    }
    const session = await SftpSession.open(client, label, sendWindowBytes);
    return new SftpConnection(client, session, label, options.windowBytes, options.chunkBytes ?? 1024 * 1024, fallbacks);
  } catch (err) {
    client.end();
    if (options.signal?.aborted) throw new FerryError('INTERRUPTED', `connection to ${label} cancelled`, { host: label });
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    waitingOf.delete(client);
    waiting();
  }
}

/**
 * What a connection can check of the file a job created: not its device (it
 * differs between the clients of a shared file system, and between the hosts
 * of a DNS alias).
 */
function agentIdentity(expect: FileIdentity): FileIdentity {
  const { dev: _dev, ...rest } = expect;
  return rest;
}

function notFound(err: unknown): boolean {
  return errnoOf(err) === 'ENOENT' || sftpErrno(err) === 'ENOENT';
}

/** Tracks whether an ssh2 client is still connected. */
function watchClient(client: Client): { readonly ended: boolean } {
  const state = { ended: false };
  client.once('close', () => (state.ended = true));
  client.once('end', () => (state.ended = true));
  return state;
}

/**
 * The home directory of `user` from the remote host's user database (NSS:
 * files, LDAP, ...) by `getent passwd`, the name quoted for the shell.
 * Undefined when there is no such user.
 */
async function lookupHome(exec: (command: string) => Promise<ExecResult>, user: string, label: string): Promise<string | undefined> {
  const res = await exec(`getent passwd -- ${shellQuote(user)}`);
  // getent: 2 means the key is not in the database.
  if (res.code === 2) return undefined;
  if (res.code !== 0) {
    const why = res.code === 127 || /not found/i.test(res.stderr) ? 'getent is not installed there' : `getent passwd exited with ${res.code ?? res.signal}${res.stderr.trim() ? `: ${res.stderr.trim()}` : ''}`;
    throw new FerryError('USAGE', `cannot look up the home directory of ${user} on ${label} (${why}): write the path out in full instead of ~${user}`, { host: label });
  }
  // A numeric key is looked up as a uid; the shell's ~user means a name only. Lines a
  // chatty shell start-up file printed are skipped the same way.
  for (const line of res.stdout.split('\n')) {
    const fields = line.split(':');
    if (fields.length >= 7 && fields[0] === user && fields[5]) return fields[5];
  }
  // Success without the entry: not getent answering (an SFTP-only account runs sftp-server for any command).
  throw new FerryError('USAGE', `cannot look up the home directory of ${user} on ${label} (getent passwd gave no entry for it): write the path out in full instead of ~${user}`, { host: label });
}

/** What a helper session runs over: an ssh2 connection or an `ssh` subprocess. */
export interface HelperCarrier {
  readonly ended: boolean;
  end(): void;
  /** Runs a short command on the remote host. */
  exec(command: string): Promise<ExecResult>;
}

export class HelperConnection implements RemoteConnection {
  readonly hashes: readonly HashAlgorithm[];
  /** BATCHes open at the helper (sent, not answered): it allows MAX_OPEN_BATCHES. */
  private readonly batchSlots = new Semaphore(MAX_OPEN_BATCHES);
  /** One batch's frames at a time: the helper takes a BATCH's bytes only until its COMMIT. */
  private readonly batchSending = new SerialQueue();
  /** READ_BATCHes open at the helper: it allows MAX_OPEN_BATCHES. */
  private readonly readSlots = new Semaphore(MAX_OPEN_BATCHES);
  constructor(
    private readonly carrier: HelperCarrier,
    private readonly helper: HelperClient,
    readonly label: string,
    readonly sendWindow?: SendWindow,
    readonly sharedHelper?: 'started' | 'joined',
    readonly mode: 'helper' | 'python' = 'helper',
    readonly fallbacks: readonly Fallback[] = [],
  ) {
    this.hashes = helperHashes(helper.hello?.capabilities);
  }

  get alive(): boolean {
    return !this.carrier.ended && !this.helper.closed;
  }

  async stat(path: string): Promise<StatResult | undefined> {
    try {
      return await this.helper.stat(path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined;
      throw err;
    }
  }

  async createSized(path: string, size: number, mode?: number): Promise<void> {
    const { handle } = await this.helper.open(path, 'create', mode === undefined ? { size } : { size, mode });
    await this.helper.closeFile(handle);
  }

  /** The helper opens without following links, creates exclusively, and sets modes and renames by handle. */
  private get safeFiles(): boolean {
    return this.helper.hello?.capabilities.includes(SAFE_FILES_CAPABILITY) === true;
  }

  private needSafeFiles(path: string): void {
    if (this.safeFiles) return;
    throw new FerryError(
      'HELPER_UNAVAILABLE',
      `the helper on ${this.label} (${this.helper.hello?.software ?? 'unknown'}) is older than this ferry and cannot create or reopen ${path} safely (without following links, checked to be the file ferry created): install the same ferry version there, or use --mode python or --mode sftp`,
      { host: this.label, path },
    );
  }

  async createNew(path: string, size: number): Promise<FileIdentity> {
    this.needSafeFiles(path);
    const { handle, stat } = await this.helper.open(path, 'create', { size, mode: 0o600, exclusive: true });
    await this.helper.closeFile(handle);
    if (!stat) throw new FerryError('PROTOCOL', `the helper on ${this.label} created ${path} but did not say which file it is`, { host: this.label, path });
    return { ...identityOf(stat), size };
  }

  async umask(): Promise<number> {
    const umask = this.helper.hello?.umask;
    return typeof umask === 'number' ? umask & 0o777 : 0o022;
  }

  async openFile(path: string, policy: 'write' | 'read', options: OpenFileOptions = {}): Promise<RemoteFile> {
    const direct = (options.direct === true || options.direct === 'auto') && policy === 'write';
    const expect = policy === 'write' ? options.expect : undefined;
    if (expect) this.needSafeFiles(path);
    let opened: Awaited<ReturnType<HelperClient['open']>>;
    try {
      opened = await this.helper.open(path, policy, direct ? { direct: options.direct! } : {});
    } catch (err) {
      // The helper opens destination files with O_NOFOLLOW: ELOOP is a link planted at the name.
      if (expect && errnoOf(err) === 'ELOOP') throw replacedError(`${this.label}:${path}`, 'a symbolic link', { host: this.label });
      throw err;
    }
    const { handle } = opened;
    const helper = this.helper;
    if (expect) {
      // Checked before a byte is written: the answer to OPEN carries the handle's fstat.
      const problem = opened.stat ? identityProblem(agentIdentity(expect), opened.stat) : 'a file the helper did not describe';
      if (problem) {
        await helper.closeFile(handle).catch(() => {});
        throw replacedError(`${this.label}:${path}`, problem, { host: this.label });
      }
    }
    return {
      headroom: 12,
      ...(direct ? { direct: opened.direct === true, directReason: opened.directReason ?? (opened.direct ? undefined : 'the remote helper does not know --direct-io: run the same ferry version everywhere') } : {}),
      ...(opened.pipesReason === undefined ? {} : { pipesReason: opened.pipesReason }),
      beginWrite: (offset, length, algorithm) => helper.writeRange(handle, offset, length, algorithm),
      read: async (offset, length, algorithm, sink) => {
        // Pieces arrive as views of the channel's buffers; a sink that returns a
        // promise pauses the channel until it settles, which holds the sender.
        let failure: unknown;
        const fail = (err: unknown) => {
          if (failure !== undefined) return;
          failure = err;
          // Stop waiting for the rest of the range; what still arrives for it is dropped.
          helper.abandon(read.id, toFerryError(err));
        };
        const read = helper.readRange(handle, offset, length, algorithm, (chunk, zero) => {
          if (failure !== undefined) return;
          let r: void | Promise<void>;
          try {
            r = sink(chunk, zero);
          } catch (err) {
            fail(err);
            return;
          }
          if (r) {
            helper.pause();
            r.then(
              () => helper.resume(),
              (err: unknown) => {
                fail(err);
                helper.resume();
              },
            );
          }
        });
        try {
          return { hash: (await read.done).hash };
        } catch (err) {
          throw failure ?? err;
        }
      },
      fsync: () => helper.fsync(handle),
      ...(policy === 'write' && helper.hello?.capabilities.includes(COPY_RANGE_CAPABILITY) === true && this.hashes.length > 0
        ? {
            copyFrom: async (from: string, offset: number, length: number, algorithm: HashAlgorithm) => {
              if (this.hashes.includes(algorithm)) return helper.copyRange(handle, from, offset, length, algorithm);
              // A helper without this algorithm (the Python one has no xxh3): copied there, hashed here from what it holds now.
              await helper.copyRange(handle, from, offset, length, this.hashes[0]!);
              const h = createHasher(algorithm);
              await helper.readRange(handle, offset, length, this.hashes[0]!, (chunk) => h.update(chunk)).done;
              return h.digest();
            },
            resize: (size: number) => helper.setstat({ handle }, { size }),
          }
        : {}),
      hashStored: (offset, length, algorithm) => helper.hash(handle, offset, length, algorithm),
      close: () => helper.closeFile(handle),
      setstat: (attrs) => (this.safeFiles ? helper.setstat({ handle }, attrs) : helper.setstat(path, attrs)),
      renameTo: async (from, to) => {
        try {
          await helper.rename(from, to, this.safeFiles ? handle : undefined);
        } catch (err) {
          // The helper says "found X at PATH before|after the rename": worded here as every DEST_REPLACED is.
          if (err instanceof FerryError && err.code === 'DEST_REPLACED') {
            throw replacedError(`${this.label}:${err.path ?? from}`, err.message.replace(/^found (.*) at .* ((before|after) the rename)$/, '$1 $2'), { host: this.label });
          }
          throw err;
        }
      },
    };
  }

  get metadata(): RemoteConnection['metadata'] {
    const meta = this.helper.hello?.capabilities.includes(TREE_META_CAPABILITY) === true;
    const euid = this.helper.hello?.euid;
    const exact = this.helper.hello?.capabilities.includes(XATTRS_EXACT_CAPABILITY) === true;
    return { owners: meta, names: meta, xattrs: meta, xattrsExact: exact, ...(typeof euid === 'number' && euid >= 0 ? { euid } : {}) };
  }

  async glob(pattern: string): Promise<string[]> {
    this.needMeta('expand a remote glob pattern');
    return this.helper.glob(pattern);
  }

  private needMeta(what: string): void {
    if (this.helper.hello?.capabilities.includes(TREE_META_CAPABILITY) === true) return;
    throw new FerryError('HELPER_UNAVAILABLE', `the helper on ${this.label} (${this.helper.hello?.software ?? 'unknown'}) is older than this ferry and cannot ${what}: install the same ferry version there, or use --mode python`, { host: this.label });
  }

  setstat(path: string, attrs: SetAttrs): Promise<void> {
    if (hasMeta(attrs)) this.needMeta("set a tree's owners or extended attributes");
    if (attrs.xattrsExact && this.helper.hello?.capabilities.includes(XATTRS_EXACT_CAPABILITY) !== true) {
      throw new FerryError('HELPER_UNAVAILABLE', `the helper on ${this.label} (${this.helper.hello?.software ?? 'unknown'}) is older than this ferry and cannot remove extended attributes: install the same ferry version there, or use --mode python`, { host: this.label });
    }
    return this.helper.setstat(path, attrs);
  }

  /**
   * A helper without `batch` (an older ferry serve) is refused rather than
   * emulated: its frames cannot make a directory, a symbolic link or a hard
   * link at all, and a round trip per file is what batches exist to avoid.
   */
  async writeBatch(entries: readonly BatchEntry[], algorithm: HashAlgorithm, read: BatchRead): Promise<BatchResult[]> {
    const label = this.label;
    if (this.helper.hello?.capabilities.includes(BATCH_CAPABILITY) !== true) {
      throw new FerryError(
        'HELPER_UNAVAILABLE',
        `the helper on ${label} (${this.helper.hello?.software ?? 'unknown'}) is older than this ferry and cannot write a tree's directories, small files and links in batches: install the same ferry version there, or use --mode python or --mode sftp`,
        { host: label },
      );
    }
    if (!this.hashes.includes(algorithm)) throw new FerryError('USAGE', `the helper on ${label} cannot hash ${algorithm} (it has ${this.hashes.join(', ')}): choose one of those with --hash`, { host: label });
    const problem = batchEntriesProblem(entries);
    if (problem) throw new FerryError('INTERNAL', `a batch for ${label} is malformed: ${problem}`, { host: label });
    const parts = partsThatFit(entries, algorithm);
    if (parts.length > 1) {
      // Too large a body for one BATCH (long paths): in parts, each answered before the next is
      // sent, so that a hard link in a later part finds its file in place.
      const results: BatchResult[] = [];
      for (const [start, end] of parts) results.push(...(await this.writeBatch(entries.slice(start, end), algorithm, (i) => read(start + i))));
      return results;
    }
    await this.batchSlots.acquire();
    try {
      const outcomes: Array<SourceOutcome | undefined> = [];
      // The next batch's bytes follow this one's COMMIT at once; its answer is awaited outside.
      const w = await this.batchSending.run(async () => {
        const w = this.helper.writeBatch(entries, algorithm);
        for (let i = 0; i < entries.length && !w.failed; i++) {
          const e = entries[i]!;
          if (e.kind !== 'file') continue;
          outcomes[i] = await readExactly(read(i), e.size ?? 0, algorithm, { host: label, path: e.path }, (data, zero) => (zero ? w.zeros(data.length) : w.data(data)));
        }
        if (!w.failed) await w.commit(entries.map((_, i) => outcomes[i]?.srcHash ?? null));
        return w;
      });
      const results = await w.answer;
      return results.map((r, i): BatchResult => {
        const e = entries[i]!;
        const o = outcomes[i];
        // The client knows why it sent no hash better than the helper can.
        if (o?.problem) return { ok: false, error: o.problem.toData() };
        if (!r.ok) return { ok: false, error: entryError(r.error, e, label) };
        if (e.kind !== 'file') return { ok: true };
        return { ok: true, srcHash: o!.srcHash!, ...(r.hash === undefined || r.hash === null ? {} : { dstHash: r.hash }) };
      });
    } finally {
      this.batchSlots.release();
    }
  }

  private needTreeRead(): void {
    if (this.helper.hello?.capabilities.includes(TREE_READ_CAPABILITY) === true) return;
    throw new FerryError(
      'HELPER_UNAVAILABLE',
      `the helper on ${this.label} (${this.helper.hello?.software ?? 'unknown'}) is older than this ferry and cannot walk or read a tree for a pull: install the same ferry version there, or use --mode python or --mode sftp`,
      { host: this.label },
    );
  }

  async *walk(root: string, wanted: WalkWanted = {}): AsyncGenerator<WalkItem> {
    this.needTreeRead();
    if (wanted.names || wanted.xattrs || wanted.acls) this.needMeta("report a tree's owners or extended attributes");
    const frames: WireWalkItem[][] = [];
    let ended = false;
    let failure: unknown;
    let wake: (() => void) | undefined;
    let paused = false;
    const notify = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    const { hashes, ...meta } = wanted;
    const hashing = hashes !== undefined && this.helper.hello?.capabilities.includes(WALK_HASH_CAPABILITY) === true && this.hashes.includes(hashes.algorithm);
    const body = hashing ? { ...meta, hash: hashes.algorithm, hashMaxBytes: hashes.maxBytes } : meta;
    const { id, done } = this.helper.walk(root, (items) => {
      frames.push(items);
      // A few frames waiting (a few thousand entries): stop reading until the consumer takes them.
      if (frames.length >= WALK_FRAMES_AHEAD && !paused) {
        paused = true;
        this.helper.pause();
      }
      notify();
    }, body);
    done.then(
      () => {
        ended = true;
        notify();
      },
      (err: unknown) => {
        failure = err;
        notify();
      },
    );
    try {
      for (;;) {
        const items = frames.shift();
        if (items) {
          if (paused && frames.length < WALK_FRAMES_AHEAD / 2) {
            paused = false;
            this.helper.resume();
          }
          for (const item of items) yield walkItemOf(item);
          continue;
        }
        if (failure !== undefined) throw failure;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    } finally {
      if (paused) this.helper.resume();
      if (!ended && failure === undefined) this.helper.abandon(id, new FerryError('INTERRUPTED', `the walk of ${this.label}:${root} was given up`, { host: this.label }));
    }
  }

  async readBatch(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm, sink: ReadBatchSink): Promise<ReadBatchResult[]> {
    const label = this.label;
    this.needTreeRead();
    if (!this.hashes.includes(algorithm)) throw new FerryError('USAGE', `the helper on ${label} cannot hash ${algorithm} (it has ${this.hashes.join(', ')}): choose one of those with --hash`, { host: label });
    const problem = readBatchProblem(entries);
    if (problem) throw new FerryError('INTERNAL', `a read batch for ${label} is malformed: ${problem}`, { host: label });
    if (entries.length > 1 && mayExceedBatchBody(entries) && encodeControl('READ_BATCH', 0, { algorithm, entries: [...entries] }).length - FRAME_HEADER_BYTES > MAX_BATCH_BODY_BYTES) {
      // Long paths: in two halves, one after the other.
      const mid = Math.floor(entries.length / 2);
      const first = await this.readBatch(entries.slice(0, mid), algorithm, sink);
      return [...first, ...(await this.readBatch(entries.slice(mid), algorithm, (i, data, zero) => sink(mid + i, data, zero)))];
    }
    await this.readSlots.acquire();
    try {
      const helper = this.helper;
      let index = 0;
      let got = 0;
      let failure: unknown;
      let queued = 0;
      let paused = false;
      let tail: Promise<void> = Promise.resolve();
      const fail = (err: unknown) => {
        if (failure !== undefined) return;
        failure = err;
        helper.abandon(read.id, toFerryError(err));
      };
      const settle = () => {
        queued--;
        if (paused && queued <= SINK_QUEUE / 4) {
          paused = false;
          helper.resume();
        }
      };
      const read = helper.readBatch(entries, algorithm, (chunk, zero) => {
        let at = 0;
        while (at < chunk.length && failure === undefined) {
          while (index < entries.length && got === entries[index]!.size) {
            index++;
            got = 0;
          }
          if (index >= entries.length) {
            fail(new FerryError('PROTOCOL', `the helper on ${label} sent more bytes than the files of a read batch hold`, { host: label }));
            helper.close();
            return;
          }
          const k = Math.min(entries[index]!.size - got, chunk.length - at);
          // The decoder's view is valid only now: copied, as the sink may take its time.
          const piece = zero ? ZERO_CHUNK.subarray(0, k) : Buffer.from(chunk.subarray(at, at + k));
          const i = index;
          got += k;
          at += k;
          queued++;
          tail = tail.then(() => (failure === undefined ? sink(i, piece, zero) : undefined)).then(settle, (err: unknown) => {
            fail(err);
            settle();
          });
          if (!paused && queued >= SINK_QUEUE) {
            paused = true;
            helper.pause();
          }
        }
      });
      let results;
      try {
        results = await read.done;
      } catch (err) {
        await tail;
        throw failure ?? err;
      }
      await tail;
      if (failure !== undefined) throw failure;
      while (index < entries.length && got === entries[index]!.size) {
        index++;
        got = 0;
      }
      if (index < entries.length) throw new FerryError('PROTOCOL', `the helper on ${label} answered a read batch before sending all its bytes`, { host: label });
      return results.map((r, i): ReadBatchResult => (r.ok ? { ok: true, hash: r.hash ?? '' } : { ok: false, error: readEntryError(r.error, entries[i]!.path, label) }));
    } finally {
      this.readSlots.release();
    }
  }

  async hashFiles(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm): Promise<ReadBatchResult[]> {
    if (this.helper.hello?.capabilities.includes(HASH_ONLY_CAPABILITY) !== true) return this.readBatch(entries, algorithm, async () => {});
    const label = this.label;
    if (!this.hashes.includes(algorithm)) throw new FerryError('USAGE', `the helper on ${label} cannot hash ${algorithm} (it has ${this.hashes.join(', ')}): choose one of those with --hash`, { host: label });
    const problem = readBatchProblem(entries);
    if (problem) throw new FerryError('INTERNAL', `a read batch for ${label} is malformed: ${problem}`, { host: label });
    if (entries.length > 1 && mayExceedBatchBody(entries) && encodeControl('READ_BATCH', 0, { algorithm, entries: [...entries], hashOnly: true }).length - FRAME_HEADER_BYTES > MAX_BATCH_BODY_BYTES) {
      const mid = Math.floor(entries.length / 2);
      return [...(await this.hashFiles(entries.slice(0, mid), algorithm)), ...(await this.hashFiles(entries.slice(mid), algorithm))];
    }
    await this.readSlots.acquire();
    try {
      const read = this.helper.readBatch(
        entries,
        algorithm,
        () => {
          this.helper.abandon(read.id, new FerryError('PROTOCOL', `the helper on ${label} sent bytes for a read batch that asked for hashes only`, { host: label }));
        },
        true,
      );
      const results = await read.done;
      return results.map((r, i): ReadBatchResult => (r.ok ? { ok: true, hash: r.hash ?? '' } : { ok: false, error: readEntryError(r.error, entries[i]!.path, label) }));
    } finally {
      this.readSlots.release();
    }
  }

  rename(from: string, to: string): Promise<void> {
    return this.helper.rename(from, to);
  }

  unlink(path: string): Promise<void> {
    return this.helper.unlink(path);
  }

  rmdir(path: string): Promise<void> {
    return this.helper.unlink(path, true);
  }

  async hashRange(path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    const { handle } = await this.helper.open(path, 'read');
    try {
      if (this.hashes.includes(algorithm)) return await this.helper.hash(handle, offset, length, algorithm);
      // A helper without this algorithm (the Python one has no xxh3) sends the bytes instead.
      const h = createHasher(algorithm);
      await this.helper.readRange(handle, offset, length, this.hashes[0]!, (chunk) => h.update(chunk)).done;
      return h.digest();
    } finally {
      // Not waited for: the helper takes frames in order, and a check of many small files would
      // pay a round trip per file for an answer that says nothing.
      void this.helper.closeFile(handle).catch(() => {});
    }
  }

  async realpath(path: string): Promise<string> {
    if (path.startsWith('/')) return path;
    const home = await this.loginDirectory();
    return path === '.' ? home : `${home}/${path}`;
  }

  /** Where sshd starts remote commands (and the helper): the login directory. */
  private async loginDirectory(): Promise<string> {
    const res = await this.carrier.exec('pwd');
    // The last line: a chatty shell start-up file may have printed before.
    const home = res.stdout.trim().split('\n').pop()?.trim() ?? '';
    if (res.code !== 0 || !home.startsWith('/')) {
      throw new FerryError('PROTOCOL', `cannot tell the login directory on ${this.label}: 'pwd' ${res.code === 0 ? `printed '${home}'` : `exited with ${res.code ?? res.signal}`}: write the remote path out in full`, { host: this.label });
    }
    return home;
  }

  async homeDirectory(user?: string): Promise<string | undefined> {
    if (user === undefined) return this.loginDirectory();
    return lookupHome((command) => this.carrier.exec(command), user, this.label);
  }

  close(): void {
    this.helper.close();
    this.carrier.end();
  }
}

/** ENTRIES frames a walk lets wait before the connection stops reading. */
const WALK_FRAMES_AHEAD = 4;
/** Pieces of a read batch waiting for the sink before the connection stops reading. */
const SINK_QUEUE = 64;

/**
 * `entries` cut into runs [start, end) whose BATCH bodies fit in
 * MAX_BATCH_BODY_BYTES: one run unless their paths are long (4,096 entries
 * of 256 bytes are already 1 MiB).
 */
export function partsThatFit(entries: readonly BatchEntry[], algorithm: HashAlgorithm, start = 0, end = entries.length): Array<[number, number]> {
  const bytes = encodeControl('BATCH', 0, batchBody(algorithm, entries.slice(start, end))).length - FRAME_HEADER_BYTES;
  if (bytes <= MAX_BATCH_BODY_BYTES || end - start <= 1) return [[start, end]];
  const mid = start + Math.floor((end - start) / 2);
  return [...partsThatFit(entries, algorithm, start, mid), ...partsThatFit(entries, algorithm, mid, end)];
}

/** Standard tools that hash a remote range in SFTP mode, by algorithm: how to find them, run them and read their output. */
const HASH_TOOLS: Partial<Record<HashAlgorithm, { probe: string; pipe: string; parse: (out: string) => string | undefined }>> = {
  xxh3: { probe: 'xxhsum', pipe: 'xxhsum -H3', parse: (out) => /([0-9a-f]{16})\s*$/.exec(out.trim())?.[1] },
  sha256: { probe: 'sha256sum', pipe: 'sha256sum', parse: (out) => /^([0-9a-f]{64})\b/.exec(out.trim())?.[1] },
};

class SftpConnection implements RemoteConnection {
  readonly mode = 'sftp' as const;
  private tools: Promise<Set<string>> | undefined;
  private readonly watch: { readonly ended: boolean };

  constructor(
    readonly client: Client,
    private readonly session: SftpSession,
    readonly label: string,
    private readonly windowBytes: number,
    private readonly chunkBytes: number,
    readonly fallbacks: readonly Fallback[] = [],
  ) {
    this.watch = watchClient(client);
  }

  get sendWindow(): SendWindow | undefined {
    return this.session.sendWindow;
  }

  get alive(): boolean {
    return !this.watch.ended;
  }

  async stat(path: string): Promise<StatResult | undefined> {
    try {
      return await this.session.stat(path);
    } catch (err) {
      if (notFound(err)) return undefined;
      throw err;
    }
  }

  async createSized(path: string, size: number, mode?: number): Promise<void> {
    let handle: Buffer;
    try {
      handle = await this.session.open(path, 'w', mode);
    } catch (err) {
      throw await sftpWriteError(this.session, err, path);
    }
    try {
      await this.session.truncate(handle, size);
    } catch (err) {
      throw await sftpWriteError(this.session, err, path);
    } finally {
      await this.session.close(handle).catch(() => {});
    }
  }

  async createNew(path: string, size: number): Promise<FileIdentity> {
    let handle: Buffer;
    try {
      handle = await this.session.open(path, 'wx', 0o600);
    } catch (err) {
      // sftp-server says only "failure" for O_EXCL's EEXIST: look at what is there.
      if (await this.session.lstat(path).then(() => true, () => false)) throw Object.assign(new Error(`${path} exists`), { code: 'EEXIST' });
      throw await sftpWriteError(this.session, err, path);
    }
    try {
      await this.session.truncate(handle, size);
      const st = await this.session.fstat(handle);
      // SFTP v3 has no inode numbers: the owner and the size are what identify the file here.
      return { ...identityOf(st), size };
    } catch (err) {
      throw await sftpWriteError(this.session, err, path);
    } finally {
      await this.session.close(handle).catch(() => {});
    }
  }

  /**
   * sftp-server's umask: SFTP cannot ask for it, so an empty probe file is
   * created (EXCL, mode 0777) next to `nearPath`, its mode read and the file
   * removed. It never holds data. 077 when that fails.
   */
  async umask(nearPath: string): Promise<number> {
    const probe = posix.join(posix.dirname(nearPath), `.ferry-umask-${randomBytes(8).toString('hex')}`);
    let handle: Buffer;
    try {
      handle = await this.session.open(probe, 'wx', 0o777);
    } catch {
      return 0o077;
    }
    try {
      const st = await this.session.fstat(handle);
      return 0o777 & ~st.mode;
    } catch {
      return 0o077;
    } finally {
      await this.session.close(handle).catch(() => {});
      await this.session.unlink(probe).catch(() => {});
    }
  }

  /** Which hash tools the remote shell has (probed once per connection). */
  private remoteTools(): Promise<Set<string>> {
    this.tools ??= execCapture(this.client, 'command -v dd sha256sum xxhsum', this.label).then(
      (res) => new Set(res.stdout.split('\n').map((l) => l.trim().split('/').pop() ?? '').filter(Boolean)),
      () => new Set<string>(),
    );
    return this.tools;
  }

  /** Hash of a remote range by a standard tool over exec, or undefined when the host lacks one. */
  private async toolHash(path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string | undefined> {
    const tool = HASH_TOOLS[algorithm];
    if (!tool) return undefined;
    const tools = await this.remoteTools();
    if (!tools.has('dd') || !tools.has(tool.probe)) return undefined;
    const cmd = `dd if=${shellQuote(path)} bs=1M iflag=skip_bytes,count_bytes skip=${offset} count=${length} status=none | ${tool.pipe}`;
    const res = await execCapture(this.client, cmd, this.label);
    if (res.code !== 0) return undefined;
    return tool.parse(res.stdout);
  }

  async openFile(path: string, policy: 'write' | 'read', options: OpenFileOptions = {}): Promise<RemoteFile> {
    const direct = options.direct === true && policy === 'write' ? { direct: false, directReason: 'sftp mode writes through the remote sftp-server, which has no direct I/O' } : {};
    const expect = policy === 'write' ? options.expect : undefined;
    // SFTP has no O_NOFOLLOW: a link at the name is refused by lstat first (that leaves a race
    // with a swap, which the fstat below narrows to a file of the same owner and size).
    if (expect && (await this.session.lstat(path).then((st) => st.link, () => false))) throw replacedError(`${this.label}:${path}`, 'a symbolic link', { host: this.label });
    let handle: Buffer;
    try {
      handle = await this.session.open(path, policy === 'write' ? 'r+' : 'r');
    } catch (err) {
      if (policy === 'write') throw await sftpWriteError(this.session, err, path);
      throw err;
    }
    const session = this.session;
    const label = this.label;
    if (expect) {
      // SFTP opens follow links and its fstat has no inode: a file that is not the one
      // created shows by its owner or size, and is closed before a byte is written.
      // (Opening it 'r+' changed nothing in it.)
      const st = await session.fstat(handle).catch(() => undefined);
      const problem = st ? identityProblem({ ...agentIdentity(expect), ino: st.ino }, st) : 'a file whose attributes cannot be read';
      if (problem) {
        await session.close(handle).catch(() => {});
        throw replacedError(`${label}:${path}`, problem, { host: label });
      }
    }
    const windowBytes = this.windowBytes;
    const chunkBytes = this.chunkBytes;
    const readBack = (offset: number, length: number, algorithm: HashAlgorithm) => this.readHash(handle, offset, length, algorithm);
    const toolHash = (offset: number, length: number, algorithm: HashAlgorithm) => this.toolHash(path, offset, length, algorithm);
    /** A written range's hash, read back: by a remote tool where the host has one, else over SFTP. */
    const storedHash = async (offset: number, length: number, algorithm: HashAlgorithm) => (await toolHash(offset, length, algorithm)) ?? (await readBack(offset, length, algorithm));
    let ring: Buffer[] | undefined;
    return {
      headroom: 0,
      ...direct,
      beginWrite: (offset, length, algorithm): RangeWrite => {
        let inFlight = 0;
        let error: unknown;
        let sent = 0;
        const waiting: Array<() => void> = [];
        const all: Array<Promise<void>> = [];
        let rejectFailed!: (err: unknown) => void;
        const failed = new Promise<never>((_, reject) => {
          rejectFailed = reject;
        });
        failed.catch(() => {});
        return {
          headroom: 0,
          failed,
          write: async (buf, start, end, done) => {
            if (error !== undefined) {
              done();
              throw error;
            }
            const n = end - start;
            const p = session.writeAt(handle, buf, start, end, offset + sent);
            sent += n;
            // ssh2 has copied the bytes into its packets: the buffer is free now.
            done();
            inFlight += n;
            const tracked = p.then(
              () => {
                inFlight -= n;
                waiting.shift()?.();
              },
              async (err: unknown) => {
                inFlight -= n;
                if (error === undefined) {
                  error = await sftpWriteError(session, err, path);
                  rejectFailed(error);
                }
                for (const w of waiting.splice(0)) w();
              },
            );
            all.push(tracked);
            while (inFlight >= windowBytes && error === undefined) await new Promise<void>((r) => waiting.push(r));
            if (error !== undefined) throw error;
          },
          // A run of zeros is not written: the temporary file was sized when it was made
          // (createNew), so what is never written there is a hole. The hash end() reads back
          // proves the run reads as zeros; pump.ts writes them on an attempt after a failed one.
          zerosUnchecked: true,
          zeros: async (n) => {
            if (error !== undefined) throw error;
            sent += n;
          },
          end: async () => {
            await Promise.all(all);
            if (error !== undefined) throw error;
            return { bytes: sent, hash: await storedHash(offset, length, algorithm) };
          },
        };
      },
      read: async (offset, length, algorithm, sink) => {
        // Reads run ahead up to the window into a ring of buffers; chunks are
        // handed to the sink in order, and a buffer is reused once the sink is done with it.
        // The ring belongs to the file: one range at a time is read through it.
        ring ??= Array.from({ length: Math.max(2, Math.ceil(windowBytes / chunkBytes)) }, () => Buffer.allocUnsafe(chunkBytes));
        const free: Buffer[] = [...ring];
        const queue: Array<{ buf: Buffer; n: number; done: Promise<void> }> = [];
        let next = 0;
        const received = createHasher(algorithm);
        const issue = () => {
          while (next < length && free.length > 0) {
            const n = Math.min(chunkBytes, length - next);
            const buf = free.pop()!;
            queue.push({ buf, n, done: session.readAt(handle, buf, 0, n, offset + next) });
            next += n;
          }
        };
        issue();
        try {
          while (queue.length > 0) {
            const head = queue.shift()!;
            await head.done;
            const view = head.buf.subarray(0, head.n);
            received.update(view);
            await sink(view, false);
            free.push(head.buf);
            issue();
          }
        } catch (err) {
          await Promise.allSettled(queue.map((q) => q.done));
          throw err;
        }
        return { hash: (await toolHash(offset, length, algorithm)) ?? received.digest() };
      },
      fsync: () => session.fsync(handle),
      ...(policy === 'write'
        ? {
            resize: (size: number) =>
              session.truncate(handle, size).catch(async (err: unknown) => {
                throw await sftpWriteError(session, err, path);
              }),
          }
        : {}),
      ...(policy === 'write' && session.canCopyData
        ? {
            // The server's `copy-data` extension copies on the remote host; the bytes are then hashed as the new file holds them.
            copyFrom: async (from: string, offset: number, length: number, algorithm: HashAlgorithm) => {
              const st = await session.lstat(from);
              if (st.link || st.type !== 'file') throw new FerryError('DEST_CONFLICT', `${label}:${from} is not a regular file: its ranges are not reused`, { host: label, path: from });
              if (st.size < offset + length) throw new FerryError('DEST_REPLACED', `${label}:${from} ended at ${st.size} bytes, within the range being reused: it changed`, { host: label, path: from });
              const source = await session.open(from, 'r');
              try {
                await session.copyData(source, offset, length, handle, offset);
              } finally {
                await session.close(source).catch(() => {});
              }
              return storedHash(offset, length, algorithm);
            },
          }
        : {}),
      hashStored: storedHash,
      writeHashIsStored: true,
      close: () => session.close(handle),
      setstat: (attrs) =>
        session.fsetstat(handle, attrs).catch((err: unknown) => {
          throw destinationError(Object.assign(err as Error, { code: sftpErrno(err) }), { host: label, path });
        }),
      renameTo: async (from, to) => {
        // Without inode numbers: the name must not be a link, and must have this file's owner, size and time.
        const mine = await session.fstat(handle);
        const check = async (name: string, when: string) => {
          const st = await session.lstat(name).catch(() => undefined);
          const problem = !st ? `nothing ${when}` : st.link ? 'a symbolic link' : st.type !== 'file' ? 'something that is not a regular file' : st.uid !== mine.uid || st.size !== mine.size || st.mtimeMs !== mine.mtimeMs ? `another file (owner ${st.uid ?? '?'}, ${st.size} bytes)` : undefined;
          if (problem) throw replacedError(`${label}:${name}`, `${problem} ${when}`, { host: label });
        };
        await check(from, 'before the rename');
        await this.rename(from, to);
        await check(to, 'after the rename');
      },
    };
  }

  /** Reads a remote range back over SFTP and hashes it: the verification of last resort. */
  private async readHash(handle: Buffer, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    const h = createHasher(algorithm);
    const step = this.chunkBytes;
    const depth = Math.max(1, Math.floor(this.windowBytes / step));
    const bufs = Array.from({ length: depth }, () => Buffer.allocUnsafe(step));
    const pending: Array<{ buf: Buffer; n: number; p: Promise<void> }> = [];
    let next = 0;
    let slot = 0;
    while (next < length || pending.length > 0) {
      while (next < length && pending.length < depth) {
        const n = Math.min(step, length - next);
        const buf = bufs[slot++ % depth]!;
        pending.push({ buf, n, p: this.session.readAt(handle, buf, 0, n, offset + next) });
        next += n;
      }
      const head = pending.shift()!;
      await head.p;
      h.update(head.buf.subarray(0, head.n));
    }
    return h.digest();
  }

  writeBatch(entries: readonly BatchEntry[], algorithm: HashAlgorithm, read: BatchRead): Promise<BatchResult[]> {
    const problem = batchEntriesProblem(entries);
    if (problem) return Promise.reject(new FerryError('INTERNAL', `a batch for ${this.label} is malformed: ${problem}`, { host: this.label }));
    return sftpWriteBatch({ session: this.session, label: this.label, windowBytes: this.windowBytes, chunkBytes: this.chunkBytes }, entries, algorithm, read);
  }

  /** Owners by number (SFTP has no names); no extended attributes; the login's uid is not told. */
  readonly metadata = { owners: true, names: false, xattrs: false, xattrsExact: false };

  /** readdir and matching here (core's glob.ts): nothing runs on the remote host. */
  async glob(pattern: string): Promise<string[]> {
    try {
      return await expandGlob(pattern, {
        list: async (dir) => {
          try {
            const list = await new Promise<Array<{ filename: string }>>((resolve, reject) => this.session.sftp.readdir(dir, (err, l) => (err ? reject(err) : resolve(l))));
            return list.map((e) => e.filename).filter((n) => n !== '.' && n !== '..');
          } catch {
            return undefined;
          }
        },
        exists: (path) => this.session.lstat(path).then(() => true, () => false),
      });
    } catch (err) {
      if (err instanceof RangeError) throw new FerryError('USAGE', `${err.message}: narrow the pattern, or copy the directory with -r`, { host: this.label, path: pattern });
      throw err;
    }
  }

  /** Names are not looked up and attributes not read (SFTP has neither): entries carry the numbers they have. */
  walk(root: string, _wanted?: WalkWanted): AsyncIterable<WalkItem> {
    return sftpWalk(this.session, root);
  }

  readBatch(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm, sink: ReadBatchSink): Promise<ReadBatchResult[]> {
    return sftpReadBatch(this.session, this.label, entries, algorithm, sink);
  }

  async setstat(path: string, attrs: SetAttrs): Promise<void> {
    if ((attrs.xattrs && Object.keys(attrs.xattrs).length > 0) || attrs.xattrsExact) throw new FerryError('USAGE', `SFTP cannot set extended attributes or ACLs (${this.label}:${path}): use --mode helper or python, or copy without --xattrs/--acls`, { host: this.label, path });
    const { uid, gid, mode, mtimeMs, atimeMs } = attrs;
    // The owner alone first and never through a link (lsetstat: lchown); sftp-server would chown after the chmod, clearing set-id bits.
    if (uid !== undefined || gid !== undefined) {
      await this.session.lsetstat(path, { ...(uid === undefined ? {} : { uid }), ...(gid === undefined ? {} : { gid }) }).catch((err: unknown) => {
        throw destinationError(Object.assign(err as Error, { code: sftpErrno(err) }), { host: this.label, path });
      });
    }
    const rest = { ...(mode === undefined ? {} : { mode }), ...(mtimeMs === undefined ? {} : { mtimeMs }), ...(atimeMs === undefined ? {} : { atimeMs }) };
    if (Object.keys(rest).length === 0) return;
    const fail = (err: unknown): never => {
      throw destinationError(Object.assign(err as Error, { code: sftpErrno(err) }), { host: this.label, path });
    };
    // Never through a link at the name where the server can (a link has no mode: lsetstat fails on one).
    try {
      await this.session.lsetstat(path, rest);
      return;
    } catch (err) {
      if (sftpErrno(err) === 'ENOENT' || sftpErrno(err) === 'EACCES') fail(err);
    }
    // It could not (no lsetstat@openssh.com, or a C library that cannot chmod without following, or a
    // link there now): SETSTAT by name follows a link, so what is there is looked at first, and a link
    // or anything but a directory or a file is refused, as the helpers refuse it.
    const st = await this.session.lstat(path).catch(fail);
    const notSet = 'its mode and times were not set';
    if (st.link) throw new FerryError('DEST_CONFLICT', `${this.label}:${path} is a symbolic link now: ${notSet} (the link was not followed); move it away and rerun`, { host: this.label, path });
    if (st.type === 'other') throw new FerryError('DEST_CONFLICT', `${this.label}:${path} is no longer a directory or a file: ${notSet}; move it away and rerun`, { host: this.label, path });
    await this.session.setstat(path, rest).catch(fail);
  }

  rename(from: string, to: string): Promise<void> {
    return this.session.rename(from, to).catch((err: unknown) => {
      throw destinationError(Object.assign(err as Error, { code: sftpErrno(err) }), { host: this.label, path: to });
    });
  }

  unlink(path: string): Promise<void> {
    return this.session.unlink(path);
  }

  hashFiles(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm): Promise<ReadBatchResult[]> {
    return this.readBatch(entries, algorithm, async () => {});
  }

  rmdir(path: string): Promise<void> {
    return this.session.rmdir(path);
  }

  async hashRange(path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    const viaTool = await this.toolHash(path, offset, length, algorithm);
    if (viaTool !== undefined) return viaTool;
    const handle = await this.session.open(path, 'r');
    try {
      return await this.readHash(handle, offset, length, algorithm);
    } finally {
      await this.session.close(handle).catch(() => {});
    }
  }

  realpath(path: string): Promise<string> {
    return this.session.realpath(path);
  }

  async homeDirectory(user?: string): Promise<string | undefined> {
    if (user === undefined) return this.session.realpath('.');
    // Not SFTP's own extensions: OpenSSH before 9.5 answers `home-directory` with the
    // login user's home whoever is asked for, and ssh2 1.17 sends `expand-path@openssh.com`
    // malformed (the server drops the session).
    return lookupHome((command) => execCapture(this.client, command, this.label), user, this.label);
  }

  close(): void {
    this.session.sftp.end();
    this.client.end();
  }
}
