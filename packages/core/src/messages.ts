/**
 * Control-plane messages between the coordinator and the agents. Plain data
 * with a version field, one builder each, all encoded by the msgpack codec.
 * Subjects and stream names for a job come from `jobSubjects()` so that both
 * sides always agree.
 */
import { decode, encode } from './codec.js';
import { isPlainMap } from './protocol.js';
import type { BatchEntry, BatchEntryResult } from './protocol.js';
import type { ErrorData } from './errors.js';
import { FerryError } from './errors.js';
import type { HashAlgorithm } from './hash.js';
import type { FileIdentity } from './dest-file.js';
import { rangeAt } from './ranges.js';
import type { ByteRange, RangePlan } from './ranges.js';

/**
 * 3: a spec's `streams` is the most slots an agent may use, `activeStreams`
 * how many it starts with, and a `streams` control message changes that; an
 * agent of version 2 would open every slot.
 * 4: a spec may be a tree's (`tree`), whose work items are batches of files
 * (`BatchWorkItem`); an agent of version 3 would take them for malformed
 * ranges and drop them.
 * 5: a tree's spec may be a pull's (`direction` 'pull'): its agents read
 * each batch from the remote side and write it under the local root; an
 * agent of version 4 would take the spec for a push and send the local
 * destination's files over the remote source.
 */
export const MESSAGE_VERSION = 5;

export type Direction =
  /** Local source, remote destination. */
  | 'push'
  /** Remote source, local destination. */
  | 'pull';

export type TransferMode =
  /** `ferry serve` on the remote host, framed helper protocol. */
  | 'helper'
  /**
   * Nothing of ferry installed remotely: the same protocol, spoken by a small
   * Python helper that each connection sends to the remote host's own python3
   * (transport/remote/helper.py).
   */
  | 'python'
  /** Plain SFTP, nothing installed remotely. */
  | 'sftp';

export const TRANSFER_MODES: readonly TransferMode[] = ['helper', 'python', 'sftp'];

export interface RemoteHost {
  /** The host as the user wrote it: messages, status and job ids name it so. */
  host: string;
  /** Port to connect to: the location's, else ssh_config's Port, else 22. */
  port: number;
  /** User to log in as: the location's, else ssh_config's User, else the local user. */
  user: string;
  /** How messages name the host when that is not `host[:port]` (the port came from ssh_config). */
  label?: string;
  /**
   * How to reach the host, resolved from ssh_config and the command line by the
   * coordinator, once: agents, which may run on nodes without the user's
   * configuration, connect with this alone. Absent: `host` itself, with the
   * job's SshSettings.
   */
  route?: SshRoute;
}

/**
 * Everything the embedded client needs to reach one host, as ssh would with the
 * same configuration (see the transport's ssh-config.ts). Paths are absolute,
 * tokens expanded.
 */
export interface SshRoute {
  /** Address to connect to (HostName, `%h` expanded; else the host as written). */
  hostName: string;
  /** The location gave the port / the user (the openssh transport passes only those to ssh, which reads its configuration itself). */
  portGiven?: boolean;
  userGiven?: boolean;
  /** Private keys to offer, in order: -i, then IdentityFile; the default keys when neither names one. */
  identityFiles: string[];
  /** IdentitiesOnly: ssh-agent's keys are offered only when they are one of identityFiles. */
  identitiesOnly?: boolean;
  /** ssh-agent socket (IdentityAgent, else SSH_AUTH_SOCK); absent: no agent. */
  agentSocket?: string;
  /** known_hosts files of the user (--known-hosts, UserKnownHostsFile); a new host key is recorded in the first. */
  knownHostsFiles: string[];
  /** System known_hosts files (GlobalKnownHostsFile), read only. */
  globalKnownHostsFiles: string[];
  /** HostKeyAlias: the name host keys are looked up and recorded under, instead of hostName:port. */
  hostKeyAlias?: string;
  /**
   * An unknown host key may be recorded (--accept-new-host-key; StrictHostKeyChecking
   * accept-new, or no, which ferry takes as accept-new). Only the coordinator's own
   * connections record keys; a changed key always fails.
   */
  acceptNewHostKey?: boolean;
  /** SSH handshake and login, at most (--connect-timeout, ConnectTimeout). */
  connectTimeoutMs: number;
  /** ServerAliveInterval (0: none) and ServerAliveCountMax. */
  keepaliveIntervalMs: number;
  keepaliveCountMax: number;
  /** AddressFamily inet / inet6; absent: any. */
  addressFamily?: 'inet' | 'inet6';
  /** Ciphers, MACs, KexAlgorithms as ssh2 names them, in order of preference; absent: ssh2's own. */
  algorithms?: { cipher?: string[]; hmac?: string[]; kex?: string[] };
  /** Where GSSAPIAuthentication yes was set (`file line n`), named if a login fails on a server that takes Kerberos. */
  gssapi?: string;
  /** Hosts to go through first (ProxyJump), the first one connected to directly; each resolved the same way, without jumps of its own. */
  jumps?: RemoteHost[];
}

export interface SshSettings {
  knownHostsFile: string;
  /** Whether knownHostsFile came from --known-hosts (the openssh transport otherwise leaves it to ssh's configuration). */
  knownHostsGiven?: boolean;
  /** Private key files to offer, in order. */
  identityFiles: string[];
  /** ssh-agent socket, when one is to be used. */
  agentSocket?: string;
  connectTimeoutMs: number;
  /**
   * 'ssh2': the embedded client. 'openssh': each connection is an `ssh` process
   * (sshCommand) running the helper, so ~/.ssh/config, ProxyJump, GSSAPI and
   * OpenSSH's own crypto apply. Absent: 'ssh2'.
   */
  transport?: SshTransport;
  /** The ssh program and leading arguments, for the openssh transport. */
  sshCommand?: string[];
  /** -F: the one ssh client configuration file read (the openssh transport passes it to ssh); 'none' for none. */
  configFile?: string;
  /**
   * Most bytes sent on one SSH channel and not yet read by an OpenSSH server
   * (--send-window; ssh2 transport). Absent or 0: the server's whole window.
   */
  sendWindowBytes?: number;
  /**
   * Connections of one process to one host share a helper (--shared-helper;
   * ssh2 transport, helper mode): the first starts it, the others reach it
   * over `direct-streamlocal` channels. Absent: a helper per connection.
   */
  sharedHelper?: boolean;
}

export type SshTransport = 'ssh2' | 'openssh';

/**
 * What a local agent started ahead of its job (`ferry agent --warm`) may do
 * while the coordinator still prepares: open the SSH connections its slots
 * will use. Sent as the first line of the agent's stdin; the job itself
 * (id, NATS URL) follows on the second. Everything here comes from the command
 * line and ssh_config, before any remote host has been contacted, so the agent
 * uses a connection only if the job's spec agrees (see the agent's preconnect.ts).
 */
export interface WarmHint {
  v: number;
  /** One entry per slot that will connect, in slot order: the host and how long to wait first (sshd MaxStartups). */
  connections: Array<{ host: RemoteHost; delayMs: number }>;
  ssh: SshSettings;
  /** As given (auto tries the helper first): the spec's resolved mode must match the connection's. */
  mode: TransferMode | 'auto';
  remoteCommand: string;
  windowBytes: number;
}

/** What a warm agent reads as its second stdin line: the job to join. */
export interface WarmGo {
  job: string;
  nats: string;
  index: number;
  /** Environment to add before the agent starts (the NATS token, test switches). */
  env: Record<string, string>;
}

/** Everything an agent needs to work on a job; stored in the job's KV bucket under `spec`. */
export interface JobSpec {
  v: number;
  jobId: string;
  direction: Direction;
  mode: TransferMode;
  /** Local file: the source for push, the temporary destination for pull. */
  localPath: string;
  /** Remote file: the temporary destination for push, the source for pull. */
  remotePath: string;
  /**
   * The temporary destination file as the coordinator created it: agents
   * open it only if it is still that file (dest-file.ts). Absent from older
   * coordinators.
   */
  tempFile?: FileIdentity;
  remoteHosts: RemoteHost[];
  /** Command that starts the helper on the remote host, in helper mode. */
  remoteCommand: string;
  fileBytes: number;
  rangeBytes: number;
  rangeCount: number;
  hash: HashAlgorithm;
  /** Connection slots per agent, at most. */
  streams: number;
  /**
   * Slots each agent works with from the start (absent: all `streams`); the
   * coordinator changes it during the copy with a `streams` control message
   * (stream tuning, coordinator's tuner.ts).
   */
  activeStreams?: number;
  /** Bytes of one range kept in flight on one connection. */
  windowBytes: number;
  /**
   * Rate cap of one connection moving data in bytes per second at the start,
   * 0 for none: the cap over every connection slot of the job. The
   * coordinator sends the share as it changes (a `rate` control message).
   */
  connectionBytesPerSec: number;
  /** Connections one remote host gets from the whole job at most, 0 for no cap. */
  maxConnectionsPerHost: number;
  /** Agents in the job (with `streams`, how many connection slots there are). */
  agentCount: number;
  ackWaitMs: number;
  /** Deliveries of one work item before it is given up (JetStream max_deliver). */
  maxDeliver: number;
  /** A connection fsyncs the destination after this many written ranges... */
  durableEveryRanges: number;
  /** ...or this long after its oldest unsynced range, whichever comes first. */
  durableIntervalMs: number;
  ssh: SshSettings;
  createdAt: number;
  /**
   * Aligned writes of the destination bypass its page cache (O_DIRECT): `true`
   * (--direct-io), `auto` (the default: where the destination is on a local
   * disk file system, core's directIoFits); absent: never (--no-direct-io).
   */
  directIo?: true | 'auto';
  /**
   * --verify: after its fsync, every range is read back from the destination's
   * storage and hashed again; the hash as received is not enough to count it done.
   */
  verify?: boolean;
  /**
   * A tree copy over agents (`ferry run -r`, `cp -r` with agents on other
   * nodes): `localPath` is the tree's local root (the source of a push, the
   * destination of a pull), `remotePath` its remote one; work items are
   * batches of files (`BatchWorkItem`) whose paths are relative to both, and
   * there are no ranges (`rangeCount` 0).
   */
  tree?: boolean;
  /**
   * A tree pull: the inode of the local destination root as the coordinator
   * made it. An agent writes only where its node sees that same directory
   * (a node-local directory of the same name is not the destination).
   */
  treeRootIno?: number;
  /**
   * Control-plane benchmark only (FERRY_BENCH_DISCARD=1, see discard.ts): agents
   * open no connection and move no byte; each range completes at once with
   * `discardHash()` as both hashes, through the usual report and ack path.
   */
  discard?: boolean;
}

export interface WorkItem {
  v: number;
  job: string;
  range: number;
  offset: number;
  length: number;
  /** 0 for the first send; incremented by the coordinator for each re-send. */
  attempt: number;
  /**
   * Consecutive ranges this item carries, `range` the first: small ranges travel
   * in runs (see `rangesPerWorkItem`), `offset` and `length` then cover the
   * whole run. Absent for one range.
   */
  count?: number;
}

/**
 * A batch of a tree's small files as a work item: the entries of one BATCH
 * (core's BatchEntry) with paths relative to the tree's roots (the spec's
 * `localPath` and `remotePath`), no bytes; the agent that takes it reads the
 * files and writes the batch over its own connection.
 */
export interface BatchWorkItem {
  v: number;
  job: string;
  type: 'batch';
  /** The coordinator's number for the batch, unique in the run. */
  batch: number;
  attempt: number;
  /** `file` and `symlink` entries only; `path` relative, `/`-separated. */
  entries: BatchEntry[];
}

/**
 * Results of a batch work item: one per entry, for the entries from `from`
 * on (a big batch's results come in several messages, each under NATS's
 * payload limit). Stored (JetStream) before the item is acked; a result
 * means the entry is durable where it was written.
 */
export interface BatchDone {
  v: number;
  job: string;
  type: 'batch.done';
  batch: number;
  attempt: number;
  agent: string;
  /** The remote host the batch was written on. */
  remoteHost: string;
  from: number;
  results: BatchEntryResult[];
}

export interface Completion {
  v: number;
  job: string;
  range: number;
  attempt: number;
  offset: number;
  length: number;
  /** Hash of the bytes as read at the source. */
  srcHash: string;
  /** Hash of the bytes as received (or read back) at the destination. */
  dstHash: string;
  /** True when `dstHash` was read back from the destination's storage after its fsync (--verify). */
  readBack?: boolean;
  /** True once the destination has fsynced the range. */
  durable: boolean;
  agent: string;
  remoteHost: string;
  startedAt: number;
  finishedAt: number;
  /** Set when the attempt failed for good (not retryable by this agent). */
  error?: ErrorData;
}

/**
 * The completions of one durable batch in one message: an agent reports the
 * ranges an fsync made durable together, one publish (and one stored message)
 * for up to `COMPLETIONS_PER_MESSAGE` ranges rather than one each.
 */
export interface CompletionBatch {
  v: number;
  job: string;
  /** Complete completions, each with its own `v` and `job` (equal to the batch's). */
  completions: Completion[];
}

/** Completions in one batch message, at most: some 250 bytes each, well under NATS's 1 MiB payload limit. */
export const COMPLETIONS_PER_MESSAGE = 256;

export function makeCompletionBatch(job: string, completions: Completion[]): CompletionBatch {
  return { v: MESSAGE_VERSION, job, completions };
}

export interface Heartbeat {
  v: number;
  job: string;
  agent: string;
  node: string;
  pid: number;
  /** Bytes moved by this agent since it started, including ranges in flight. */
  bytes: number;
  rangesDone: number;
  inFlight: number;
  /** Ranges written and waiting to be made durable. */
  pending?: number;
  /** --limit-rate: its connections moving data, as last announced (see AgentPacer). */
  active?: number;
  errors: number;
  /** Connection slots the agent works with now... */
  streams?: number;
  /** ...and how many of them have a connection up. */
  connected?: number;
  /** Share of one core the agent used since its last heartbeat, 0..1 (stream tuning)... */
  utilization?: number;
  /** ...and how many cores of its node were idle meanwhile. */
  idleCores?: number;
  at: number;
}

export type ControlMessage =
  | { v: number; job: string; type: 'stop' | 'cancel'; reason?: string }
  /** Work with this many connection slots from now on (at most the spec's `streams`). */
  | { v: number; job: string; type: 'streams'; streams: number }
  /**
   * --limit-rate: what each connection moving data may use from now on (the
   * cap over the job's connections moving data; core's RateShares).
   */
  | { v: number; job: string; type: 'rate'; connectionBytesPerSec: number };

export type AgentEvent =
  | { v: number; job: string; type: 'agent.started'; agent: string; node: string; pid: number; index: number }
  | { v: number; job: string; type: 'agent.error'; agent: string; node: string; error: ErrorData; fatal: boolean }
  /** --limit-rate: the agent's connections moving data changed (AgentPacer says when). */
  | { v: number; job: string; type: 'agent.active'; agent: string; node: string; active: number };

export interface JobSubjects {
  workStream: string;
  workSubject: string;
  workConsumer: string;
  doneStream: string;
  doneSubject: string;
  doneConsumer: string;
  heartbeat: string;
  control: string;
  events: string;
  kvBucket: string;
}

/** Job ids are lowercase hex; the names below stay valid NATS stream, subject and bucket names. */
export function jobSubjects(jobId: string): JobSubjects {
  if (!/^[0-9a-f]{4,64}$/.test(jobId)) throw new FerryError('USAGE', `job id must be lowercase hex, got '${jobId}'`);
  return {
    workStream: `FERRY_WORK_${jobId}`,
    workSubject: `ferry.${jobId}.work`,
    workConsumer: 'agents',
    doneStream: `FERRY_DONE_${jobId}`,
    doneSubject: `ferry.${jobId}.done`,
    doneConsumer: 'coordinator',
    heartbeat: `ferry.${jobId}.hb`,
    control: `ferry.${jobId}.control`,
    events: `ferry.${jobId}.events`,
    kvBucket: `ferry_${jobId}`,
  };
}

export function workItemId(item: Pick<WorkItem, 'job' | 'range' | 'attempt'>): string {
  return `${item.job}:${item.range}:${item.attempt}`;
}

export function makeWorkItem(job: string, range: { index: number; offset: number; length: number }, attempt = 0): WorkItem {
  return { v: MESSAGE_VERSION, job, range: range.index, offset: range.offset, length: range.length, attempt };
}

/** A work item's run of ranges covers this many bytes at most... */
export const WORK_ITEM_BYTES = 16 * 1024 * 1024;
/** ...and at most this many ranges. */
export const MAX_RANGES_PER_WORK_ITEM = 16;

/**
 * Ranges one first-attempt work item carries: one for ranges of 16 MiB and more,
 * up to 16 consecutive ones for smaller ranges. Each message, pull and ack of
 * the control plane then stands for up to 16 MiB, whatever the range size;
 * every range is still hashed, reported and journaled on its own.
 */
export function rangesPerWorkItem(rangeBytes: number): number {
  if (!(rangeBytes > 0)) return 1;
  return Math.max(1, Math.min(MAX_RANGES_PER_WORK_ITEM, Math.floor(WORK_ITEM_BYTES / rangeBytes)));
}

/** Work items of a plan of `rangeCount` ranges published at once (consecutive first attempts). */
export function workItemCount(rangeCount: number, rangeBytes: number): number {
  return Math.ceil(rangeCount / rangesPerWorkItem(rangeBytes));
}

/** One work item for consecutive ranges (`ranges[i].index === ranges[0].index + i`), all of one attempt. */
export function makeWorkRun(job: string, ranges: readonly { index: number; offset: number; length: number }[], attempt = 0): WorkItem {
  const first = ranges[0];
  if (!first) throw new FerryError('INTERNAL', 'a work item needs at least one range');
  if (ranges.length === 1) return makeWorkItem(job, first, attempt);
  const last = ranges[ranges.length - 1]!;
  return { v: MESSAGE_VERSION, job, range: first.index, offset: first.offset, length: last.offset + last.length - first.offset, attempt, count: ranges.length };
}

/**
 * The work items for ranges `indices` (ascending) of a plan: first attempts of
 * consecutive ranges in runs of up to `rangesPerWorkItem`, a re-send
 * (attempt > 0) alone.
 */
export function* workItemsOf(job: string, plan: RangePlan, indices: Iterable<number>, attemptOf: (index: number) => number): Generator<WorkItem> {
  const perItem = rangesPerWorkItem(plan.rangeBytes);
  let run: ByteRange[] = [];
  let runAttempt = 0;
  for (const i of indices) {
    const attempt = attemptOf(i);
    const last = run[run.length - 1];
    if (last && (attempt !== 0 || runAttempt !== 0 || last.index + 1 !== i || run.length >= perItem)) {
      yield makeWorkRun(job, run, runAttempt);
      run = [];
    }
    if (run.length === 0) runAttempt = attempt;
    run.push(rangeAt(plan, i));
  }
  if (run.length > 0) yield makeWorkRun(job, run, runAttempt);
}

/**
 * The ranges of a work item, one item each, given the plan's range size. A run
 * that does not fit the plan's ranges is malformed (PROTOCOL).
 */
export function splitWorkItem(item: WorkItem, rangeBytes: number): WorkItem[] {
  const count = item.count ?? 1;
  if (count === 1) return [item];
  const fits =
    Number.isInteger(count) &&
    count > 1 &&
    count <= MAX_RANGES_PER_WORK_ITEM &&
    item.offset === item.range * rangeBytes &&
    item.length > (count - 1) * rangeBytes &&
    item.length <= count * rangeBytes;
  if (!fits) {
    throw new FerryError('PROTOCOL', `work item of ${String(count)} ranges from range ${item.range} (bytes ${item.offset}-${item.offset + item.length}) does not fit ranges of ${rangeBytes} bytes`);
  }
  const end = item.offset + item.length;
  const out: WorkItem[] = [];
  for (let i = 0; i < count; i++) {
    const offset = item.offset + i * rangeBytes;
    out.push({ v: item.v, job: item.job, range: item.range + i, offset, length: Math.min(rangeBytes, end - offset), attempt: item.attempt });
  }
  return out;
}

export function encodeMessage(message: WorkItem | BatchWorkItem | BatchDone | Completion | CompletionBatch | Heartbeat | ControlMessage | AgentEvent | JobSpec): Buffer {
  return encode(message);
}

function decodeRecord(what: string, data: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = decode(data);
  } catch (err) {
    throw new FerryError('PROTOCOL', `${what} message is not valid msgpack: ${(err as Error).message}`);
  }
  if (!isPlainMap(value)) throw new FerryError('PROTOCOL', `${what} message is not a map`);
  return value;
}

function checkRecord(what: string, rec: Record<string, unknown>, required: readonly string[], job: string | undefined): void {
  if (!isPlainMap(rec)) throw new FerryError('PROTOCOL', `${what} message is not a map`);
  if (rec.v !== MESSAGE_VERSION) throw new FerryError('PROTOCOL', `${what} message has version ${String(rec.v)}, this ferry speaks ${MESSAGE_VERSION}: run the same ferry version everywhere`);
  for (const k of required) {
    // msgpack has no undefined: other encoders write an absent field as nil.
    if (rec[k] === undefined || rec[k] === null) throw new FerryError('PROTOCOL', `${what} message lacks '${k}'`);
  }
  const msgJob = rec.job ?? rec.jobId;
  if (job !== undefined && msgJob !== job) throw new FerryError('PROTOCOL', `${what} message belongs to job ${String(msgJob)}, not ${job}`);
}

function decodeOf<T>(what: string, required: readonly string[]) {
  return (data: Uint8Array, job?: string): T => {
    const rec = decodeRecord(what, data);
    checkRecord(what, rec, required, job);
    return rec as T;
  };
}

export const decodeWorkItem = decodeOf<WorkItem>('work item', ['job', 'range', 'offset', 'length', 'attempt']);
const COMPLETION_FIELDS = ['job', 'range', 'attempt', 'srcHash', 'dstHash', 'agent'] as const;
export const decodeCompletion = decodeOf<Completion>('completion', COMPLETION_FIELDS);
/**
 * The completions one message on a job's done subject carries: a single
 * completion (reported at once: a hash mismatch, a failed range) or a
 * `CompletionBatch` (the ranges of one durable batch). A malformed entry makes
 * the whole message malformed.
 */
export function decodeCompletions(data: Uint8Array, job?: string): Completion[] {
  const rec = decodeRecord('completion', data);
  if (!('completions' in rec)) {
    checkRecord('completion', rec, COMPLETION_FIELDS, job);
    return [rec as unknown as Completion];
  }
  checkRecord('completion batch', rec, ['job', 'completions'], job);
  const list = rec.completions;
  if (!Array.isArray(list)) throw new FerryError('PROTOCOL', 'completion batch message has no list of completions');
  for (const c of list) checkRecord('completion', c as Record<string, unknown>, COMPLETION_FIELDS, job);
  return list as Completion[];
}

export const decodeBatchWorkItem = decodeOf<BatchWorkItem>('batch work item', ['job', 'type', 'batch', 'attempt', 'entries']);
export const decodeBatchDone = decodeOf<BatchDone>('batch completion', ['job', 'type', 'batch', 'attempt', 'agent', 'from', 'results']);
export const decodeHeartbeat = decodeOf<Heartbeat>('heartbeat', ['job', 'agent', 'bytes']);
export const decodeControl = decodeOf<ControlMessage>('control', ['job', 'type']);
export const decodeAgentEvent = decodeOf<AgentEvent>('agent event', ['job', 'type', 'agent']);
export const decodeJobSpec = decodeOf<JobSpec>('job spec', ['jobId', 'direction', 'mode', 'localPath', 'remotePath', 'remoteHosts', 'rangeBytes']);
