/**
 * `ferry cp` options: what a user may say (`CopyOptions`, human strings allowed)
 * resolved once into `ResolvedCopyOptions` (numbers with units in their names).
 * All defaults live here.
 */
import type { DirectIoChoice } from './direct.js';
import { FerryError } from './errors.js';
import { HASH_ALGORITHMS, isHashAlgorithm } from './hash.js';
import type { HashAlgorithm } from './hash.js';
import { RANGE_ALIGN_BYTES } from './ranges.js';
import { MiB, parseDuration, parseSize } from './units.js';
import type { SshTransport } from './messages.js';

/**
 * Agents without --agents: one per four cores of this node, 1 to 8. Each agent
 * is a process whose one thread does the SSH encryption (300-500 MB/s on the
 * test machine), so a node's cores set how much one node can move; a quarter of
 * them leaves room for the remote side's sshd on a small machine and for other
 * users on a shared login node.
 */
export function defaultAgents(cores: number): number {
  return Math.max(1, Math.min(8, Math.floor(cores / 4)));
}
/** Connections per agent without --streams: the tuner starts with this many... */
export const AUTO_FIRST_STREAMS = 1;
/** ...and goes up to this many (the number a long link with per-stream limits needed on the wan testbed). */
export const AUTO_MAX_STREAMS = 16;
export const DEFAULT_HASH: HashAlgorithm = 'xxh3';
export const DEFAULT_REMOTE_COMMAND = 'ferry serve';
export const DEFAULT_ACK_WAIT_MS = 30_000;
export const DEFAULT_WINDOW_BYTES = 8 * MiB;
/**
 * Unread bytes an OpenSSH server may hold per channel; 0: its whole window (2
 * MiB). A cap keeps a CPU-bound sshd's buffers cheap (send-window.ts) but also
 * limits a stream to cap / RTT, so it is for short links and busy servers, not
 * a default.
 */
export const DEFAULT_SEND_WINDOW_BYTES = 0;
/** Smallest non-zero --send-window: four of OpenSSH's 32 KiB packets, above where it re-opens its window. */
export const MIN_SEND_WINDOW_BYTES = 128 * 1024;
export const DEFAULT_MAX_RESENDS = 3;
export const DEFAULT_CONNECT_TIMEOUT_MS = 20_000;
/** Deliveries of one range (agent crashes, lost connections, naks) before the job fails. */
export const DEFAULT_MAX_DELIVER = 10;
/** Written ranges are made durable (fsync) at least this often per connection. */
export const DEFAULT_DURABLE_INTERVAL_MS = 5_000;
/** ...and after about this many bytes of ranges. */
export const DEFAULT_DURABLE_BYTES = 256 * MiB;
export const MAX_AGENTS = 4096;
export const MAX_STREAMS = 64;

export type ModeChoice = 'auto' | 'helper' | 'python' | 'sftp';
export type OutputStyle = 'human' | 'json' | 'quiet';

export interface CopyOptions {
  /** Agent processes to start. @default one per 4 cores, 1 to 8 (defaultAgents) */
  agents?: number | string;
  /** SSH connections per agent. @default tuned during the copy, 1 to 16 (StreamTuner) */
  streams?: number | string;
  /** Range size, e.g. `64MiB`; a multiple of 1 MiB. @default chosen from the file size */
  rangeSize?: number | string;
  /** Tree copies: files smaller than this travel many to a batch (--batch-files-under). */
  batchFilesUnder?: number | string;
  /** Tree copies: files at least this big are striped over every agent and stream as copies of their own (--stripe-files-over). */
  stripeFilesOver?: number | string;
  /** Tree copies: bytes of small files in one batch, at most (--batch-size). */
  batchSize?: number | string;
  /** Range hash algorithm. @default 'xxh3' */
  hash?: string;
  /** Data path: helper (`ferry serve` remotely), python (a helper sent to the remote python3), sftp, or auto (the first of those that starts). @default 'auto' */
  mode?: string;
  /** Command that starts the helper on the remote host. @default 'ferry serve' */
  remoteCmd?: string;
  transport?: string;
  sshCmd?: string;
  /** Preserve mode and modification time. @default false */
  preserve?: boolean;
  /** Tree copies: stop at the first entry that fails (its own exit code) instead of listing it and going on. @default false */
  failFast?: boolean;
  /** Tree copies: keep owner and group even when the destination side does not run as root (--preserve=owner). @default only as root */
  preserveOwner?: boolean;
  /** Tree copies: owner and group by number, never mapped by name (--numeric-ids). @default false */
  numericIds?: boolean;
  /** Tree copies: extended attributes (user.*; trusted.* and security.* as root; never lustre.*) (--xattrs). @default false */
  xattrs?: boolean;
  /** Tree copies: POSIX ACLs, the system.posix_acl_access/default attributes (--acls). @default false */
  acls?: boolean;
  /**
   * Write the destination with O_DIRECT where aligned: true always, false never.
   * @default where the destination is on a local disk file system (ext4, xfs, btrfs, f2fs)
   */
  directIo?: boolean;
  /** Read every range back from the destination's storage after its fsync and hash it again. @default false */
  verify?: boolean;
  /**
   * Where the destination file exists: hash both sides per range and send only
   * the ranges that differ; the unchanged ones are copied from the old file into
   * the new one on the destination host (`--delta`). @default false
   */
  delta?: boolean;
  /**
   * With `delta`: write the changed ranges straight into the existing
   * destination file instead of a new temporary file (`--inplace`), for files
   * too big to hold twice. An interrupted run leaves a file that is neither
   * the old nor the new one until a rerun finishes, and readers see it change.
   * @default false
   */
  inplace?: boolean;
  /** Connections of a process to one host share a helper (ssh2 transport, helper mode). @default false */
  sharedHelper?: boolean;
  /** known_hosts file to check host keys against (as ssh's UserKnownHostsFile). @default ssh_config's, else ~/.ssh/known_hosts and known_hosts2 */
  knownHosts?: string;
  /** ssh client configuration file read instead of ~/.ssh/config and /etc/ssh/ssh_config (ssh -F); 'none' for none. @default both */
  sshConfig?: string;
  /** Add an unknown host key to known_hosts instead of failing. @default false */
  acceptNewHostKey?: boolean;
  /** Private key files. @default ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa */
  identity?: string[];
  /** External NATS server URL. @default an embedded nats-server per job */
  nats?: string;
  /** Directory for job state (journal, embedded NATS store). @default ~/.local/state/ferry */
  stateDir?: string;
  /** How long a range may go without progress before another agent gets it. @default '30s' */
  ackWait?: string;
  /** Bytes kept in flight per connection. @default '8MiB' */
  window?: number | string;
  /** Most bytes sent on one SSH channel and not yet read by an OpenSSH server; 0: its whole window. @default 0 */
  sendWindow?: number | string;
  /** Cap on the whole job's rate in bytes per second, e.g. `500MB` (shared equally by all connections). @default no cap */
  limitRate?: number | string;
  /** Connections per remote host from the whole job, at most (stay under sshd's MaxSessions/MaxStartups). @default no cap */
  maxPerHost?: number | string;
  /** Re-sends of one range after hash mismatches before the job fails. @default 3 */
  maxResends?: number | string;
  /** NDJSON events on stdout. @default false */
  json?: boolean;
  /** No progress and no summary; errors only. @default false */
  quiet?: boolean;
  /** SSH connect timeout. @default '20s' */
  connectTimeout?: string;
  /** Start over instead of resuming an earlier run of the same copy. @default false */
  restart?: boolean;
  /**
   * `ferry sync`: the tree is compared with what the destination holds at this
   * level, and only what differs is sent (the destination is the copy itself,
   * not a directory receiving it). @default not a sync
   */
  compare?: string;
  /** `ferry sync --delete`: remove destination entries the source does not have, once the rest succeeded. @default false */
  delete?: boolean;
  /** `ferry sync --dry-run`: list what would be created, updated and deleted; change nothing. @default false */
  dryRun?: boolean;
}

/** How `ferry sync` decides that an entry at the destination is already the source's. */
export type CompareLevel = 'exists' | 'size' | 'mtime' | 'checksum';
export const COMPARE_LEVELS: readonly CompareLevel[] = ['exists', 'size', 'mtime', 'checksum'];

export interface ResolvedCopyOptions {
  agents: number;
  /** Connections per agent, at most (with tuning, the tuner's cap). */
  streams: number;
  /** Connections per agent at the start. */
  firstStreams: number;
  /** Whether the coordinator tunes the number of streams (no --streams given). */
  tuneStreams: boolean;
  /** undefined: chosen from the file size when the ranges are planned. */
  rangeBytes: number | undefined;
  /** Tree copies: files under this many bytes go in batches; undefined: core's tree-plan default. */
  batchFilesUnder: number | undefined;
  /** Tree copies: files of at least this many bytes are striped; undefined: the coordinator's default. */
  stripeFilesOver: number | undefined;
  /** Tree copies: bytes of one batch, at most; undefined: core's tree-plan default. */
  batchBytes: number | undefined;
  hash: HashAlgorithm;
  /** Whether --hash was given (a resumed job keeps its own otherwise). */
  hashGiven: boolean;
  mode: ModeChoice;
  remoteCommand: string;
  /**
   * Whether --remote-cmd was given: the user says where ferry serve is, so
   * `auto` starts ferry's python helper only if that command fails, not
   * alongside it (a python start on the remote host saved per command).
   */
  remoteCommandGiven: boolean;
  transport: SshTransport;
  /** The ssh program and its leading arguments (openssh transport). */
  sshCommand: string[];
  preserve: boolean;
  /** Tree copies: the first entry that fails stops the copy. */
  failFast: boolean;
  /** Tree copies: owners kept even where the destination is not root. */
  preserveOwner: boolean;
  numericIds: boolean;
  xattrs: boolean;
  acls: boolean;
  directIo: DirectIoChoice;
  verify: boolean;
  delta: boolean;
  inplace: boolean;
  sharedHelper: boolean;
  knownHostsFile: string | undefined;
  /** -F: the one ssh_config file to read, 'none' for none; undefined: ~/.ssh/config then /etc/ssh/ssh_config. */
  sshConfigFile: string | undefined;
  acceptNewHostKey: boolean;
  identityFiles: string[];
  natsUrl: string | undefined;
  stateDir: string | undefined;
  ackWaitMs: number;
  windowBytes: number;
  /** 0: the server's whole window. */
  sendWindowBytes: number;
  /** Bytes per second for the whole job; undefined: no cap. */
  limitBytesPerSec: number | undefined;
  /** Connections per remote host at most; 0: no cap. */
  maxConnectionsPerHost: number;
  maxResends: number;
  output: OutputStyle;
  connectTimeoutMs: number;
  /** Whether --connect-timeout was given (it then wins over ssh_config's ConnectTimeout). */
  connectTimeoutGiven: boolean;
  restart: boolean;
  /** `ferry sync`: the compare level; undefined for a copy. */
  sync: CompareLevel | undefined;
  deleteExtraneous: boolean;
  dryRun: boolean;
}

function usage(message: string): FerryError {
  return new FerryError('USAGE', message);
}

function intOption(name: string, value: number | string | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = typeof value === 'number' ? value : /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw usage(`${name} must be a whole number from ${min} to ${max}, got '${value}'`);
  }
  return n;
}

function sizeOption(name: string, value: number | string | undefined, example: string): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'number' ? value : parseSize(value);
  if (n === undefined || !Number.isSafeInteger(n) || n <= 0) throw usage(`${name} must be a positive size like ${example}, got '${value}'`);
  return n;
}

function sendWindowOption(value: number | string | undefined): number {
  if (value === undefined) return DEFAULT_SEND_WINDOW_BYTES;
  const n = typeof value === 'number' ? value : /^\s*0+\s*$/.test(value) ? 0 : parseSize(value);
  if (n === 0) return 0;
  if (n === undefined || !Number.isSafeInteger(n) || n < MIN_SEND_WINDOW_BYTES) {
    throw usage(`--send-window must be 0 (the server's whole window) or a size of at least 128KiB like 512KiB, got '${value}'`);
  }
  return n;
}

function durationOption(name: string, value: string | undefined, fallback: number, example: string): number {
  if (value === undefined) return fallback;
  const n = parseDuration(value);
  if (n === undefined || n <= 0) throw usage(`${name} must be a positive duration like ${example}, got '${value}'`);
  return n;
}

/** What resolveCopyOptions needs to know of the machine. */
export interface MachineFacts {
  /** CPUs this process may use. @default 2 */
  cores?: number;
}

export function resolveCopyOptions(options: CopyOptions = {}, machine: MachineFacts = {}): ResolvedCopyOptions {
  const rangeBytes = sizeOption('--range-size', options.rangeSize, '64MiB');
  if (rangeBytes !== undefined && rangeBytes % RANGE_ALIGN_BYTES !== 0) {
    throw usage(`--range-size must be a multiple of 1MiB (ranges are aligned to 1 MiB), got '${options.rangeSize}'`);
  }
  const hash = options.hash ?? DEFAULT_HASH;
  if (!isHashAlgorithm(hash)) throw usage(`--hash must be one of ${HASH_ALGORITHMS.join(', ')}, got '${hash}'`);
  const mode = options.mode ?? 'auto';
  if (mode !== 'auto' && mode !== 'helper' && mode !== 'python' && mode !== 'sftp') throw usage(`--mode must be auto, helper, python or sftp, got '${mode}'`);
  if (options.remoteCmd !== undefined && options.remoteCmd.trim() === '') throw usage('--remote-cmd must not be empty');
  if (options.inplace === true && options.delta !== true) throw usage('--inplace writes the changed ranges into the existing destination file and works with --delta only: add --delta');
  const transport = options.transport ?? 'ssh2';
  if (transport !== 'ssh2' && transport !== 'openssh') throw usage(`--transport must be ssh2 or openssh, got '${transport}'`);
  if (transport === 'openssh' && mode === 'sftp') throw usage('--transport openssh carries the helper protocol only: drop --mode sftp, or use --transport ssh2 for SFTP');
  const sshCommand = (options.sshCmd ?? 'ssh').trim().split(/\s+/).filter(Boolean);
  if (sshCommand.length === 0) throw usage('--ssh-cmd must not be empty');
  if (options.sshCmd !== undefined && transport !== 'openssh') throw usage('--ssh-cmd is used by --transport openssh only: add --transport openssh');
  if (options.json && options.quiet) throw usage('--json and --quiet cannot be used together');
  if (options.sshConfig !== undefined && options.sshConfig.trim() === '') throw usage("-F must name an ssh config file (or 'none'), got ''");
  if (options.nats !== undefined && !/^(nats|tls|ws|wss):\/\/\S+$/.test(options.nats)) {
    throw usage(`--nats must be a URL like nats://host:4222, got '${options.nats}'`);
  }
  const ackWaitMs = durationOption('--ack-wait', options.ackWait, DEFAULT_ACK_WAIT_MS, '30s');
  if (ackWaitMs < 1000) throw usage(`--ack-wait must be at least 1s, got '${options.ackWait}'`);
  const streams = options.streams === undefined ? undefined : intOption('--streams', options.streams, 1, 1, MAX_STREAMS);
  return {
    agents: intOption('--agents', options.agents, defaultAgents(machine.cores ?? 2), 1, MAX_AGENTS),
    streams: streams ?? AUTO_MAX_STREAMS,
    firstStreams: streams ?? AUTO_FIRST_STREAMS,
    tuneStreams: streams === undefined,
    rangeBytes,
    batchFilesUnder: sizeOption('--batch-files-under', options.batchFilesUnder, '4MiB'),
    stripeFilesOver: sizeOption('--stripe-files-over', options.stripeFilesOver, '256MiB'),
    batchBytes: sizeOption('--batch-size', options.batchSize, '64MiB'),
    hash,
    hashGiven: options.hash !== undefined,
    mode,
    remoteCommand: options.remoteCmd ?? DEFAULT_REMOTE_COMMAND,
    remoteCommandGiven: options.remoteCmd !== undefined,
    transport,
    sshCommand,
    preserve: options.preserve ?? false,
    failFast: options.failFast ?? false,
    preserveOwner: options.preserveOwner ?? false,
    numericIds: options.numericIds ?? false,
    xattrs: options.xattrs ?? false,
    acls: options.acls ?? false,
    directIo: options.directIo === undefined ? 'auto' : options.directIo ? 'on' : 'off',
    verify: options.verify ?? false,
    delta: options.delta ?? false,
    inplace: options.inplace ?? false,
    sharedHelper: options.sharedHelper ?? false,
    knownHostsFile: options.knownHosts,
    sshConfigFile: options.sshConfig,
    acceptNewHostKey: options.acceptNewHostKey ?? false,
    identityFiles: options.identity ?? [],
    natsUrl: options.nats,
    stateDir: options.stateDir,
    ackWaitMs,
    windowBytes: sizeOption('--window', options.window, '8MiB') ?? DEFAULT_WINDOW_BYTES,
    sendWindowBytes: sendWindowOption(options.sendWindow),
    limitBytesPerSec: sizeOption('--limit-rate', options.limitRate, '500MB'),
    maxConnectionsPerHost: intOption('--max-per-host', options.maxPerHost, 0, 0, 100_000),
    maxResends: intOption('--max-resends', options.maxResends, DEFAULT_MAX_RESENDS, 0, 100),
    output: options.json ? 'json' : options.quiet ? 'quiet' : 'human',
    connectTimeoutMs: durationOption('--connect-timeout', options.connectTimeout, DEFAULT_CONNECT_TIMEOUT_MS, '20s'),
    connectTimeoutGiven: options.connectTimeout !== undefined,
    restart: options.restart ?? false,
    sync: compareOption(options.compare),
    deleteExtraneous: options.delete ?? false,
    dryRun: options.dryRun ?? false,
  };
}

function compareOption(value: string | undefined): CompareLevel | undefined {
  if (value === undefined) return undefined;
  if (!(COMPARE_LEVELS as readonly string[]).includes(value)) throw usage(`--compare must be one of ${COMPARE_LEVELS.join(', ')}, got '${value}'`);
  return value as CompareLevel;
}
