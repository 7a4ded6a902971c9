/**
 * Checks of what arrives over a job's bus, beyond its being well-formed
 * msgpack: the job spec and control messages an agent acts on (types and
 * bounds), and the claims of a completion against what the coordinator asked
 * for. The bus is shared by every process that holds the job's credential;
 * nothing from it is taken on its word.
 */
import { FerryError, isErrorCode } from './errors.js';
import type { ErrorData } from './errors.js';
import { HASH_ALGORITHMS } from './hash.js';
import { joinUnder } from './paths.js';
import type { BatchDone, BatchWorkItem, Completion, ControlMessage, JobSpec, RemoteHost, WorkItem } from './messages.js';
import type { BatchEntry, BatchEntryResult } from './protocol.js';
import { MAX_RANGES_PER_WORK_ITEM, TRANSFER_MODES, splitWorkItem } from './messages.js';
import { MAX_AGENTS, MAX_STREAMS } from './options.js';
import { rangeAt } from './ranges.js';
import type { RangePlan } from './ranges.js';

const MAX_TEXT = 4096;
const MAX_HOSTS = 256;
const MAX_FILES = 64;

const isInt = (v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_TEXT && !v.includes('\0');
const isTexts = (v: unknown, min = 0): v is string[] => Array.isArray(v) && v.length >= min && v.length <= MAX_FILES && v.every(isText);
/** A host or user name that reaches a command line: no leading '-' (an option), no blanks or control characters. */
const isName = (v: unknown): v is string => isText(v) && !v.startsWith('-') && !/[\s\x00-\x1f\x7f]/.test(v);
const isOptionalBoolean = (v: unknown) => v === undefined || typeof v === 'boolean';

function bad(field: string, value: unknown, want: string): never {
  let shown: string;
  try {
    shown = JSON.stringify(value) ?? String(value);
  } catch {
    shown = typeof value;
  }
  throw new FerryError('PROTOCOL', `job spec field '${field}' must be ${want}, got ${shown.slice(0, 120)}`);
}

function checkHost(h: unknown, where: string, depth: number): void {
  if (h === null || typeof h !== 'object' || Array.isArray(h)) bad(where, h, 'a remote host');
  const host = h as RemoteHost;
  if (!isName(host.host)) bad(`${where}.host`, host.host, 'a host name');
  if (!isInt(host.port, 1, 65535)) bad(`${where}.port`, host.port, 'a port (1-65535)');
  if (!isName(host.user)) bad(`${where}.user`, host.user, 'a user name');
  if (host.label !== undefined && !isText(host.label)) bad(`${where}.label`, host.label, 'text');
  const r = host.route;
  if (r === undefined) return;
  if (r === null || typeof r !== 'object') bad(`${where}.route`, r, 'a route');
  if (!isName(r.hostName)) bad(`${where}.route.hostName`, r.hostName, 'a host name');
  if (!isTexts(r.identityFiles)) bad(`${where}.route.identityFiles`, r.identityFiles, 'a list of paths');
  if (!isTexts(r.knownHostsFiles)) bad(`${where}.route.knownHostsFiles`, r.knownHostsFiles, 'a list of paths');
  if (!isTexts(r.globalKnownHostsFiles)) bad(`${where}.route.globalKnownHostsFiles`, r.globalKnownHostsFiles, 'a list of paths');
  if (r.agentSocket !== undefined && !isText(r.agentSocket)) bad(`${where}.route.agentSocket`, r.agentSocket, 'a path');
  if (r.hostKeyAlias !== undefined && !isText(r.hostKeyAlias)) bad(`${where}.route.hostKeyAlias`, r.hostKeyAlias, 'text');
  if (!isInt(r.connectTimeoutMs, 1, 3_600_000)) bad(`${where}.route.connectTimeoutMs`, r.connectTimeoutMs, 'milliseconds (1 ms to 1 h)');
  if (!isInt(r.keepaliveIntervalMs, 0, 3_600_000) || !isInt(r.keepaliveCountMax, 0, 1000)) bad(`${where}.route.keepalive`, [r.keepaliveIntervalMs, r.keepaliveCountMax], 'whole numbers');
  for (const k of ['portGiven', 'userGiven', 'identitiesOnly', 'acceptNewHostKey'] as const) if (!isOptionalBoolean(r[k])) bad(`${where}.route.${k}`, r[k], 'true or false');
  if (r.addressFamily !== undefined && r.addressFamily !== 'inet' && r.addressFamily !== 'inet6') bad(`${where}.route.addressFamily`, r.addressFamily, 'inet or inet6');
  if (r.jumps !== undefined) {
    if (depth > 0 || !Array.isArray(r.jumps) || r.jumps.length > 16) bad(`${where}.route.jumps`, r.jumps, 'a list of up to 16 hosts without jumps of their own');
    r.jumps.forEach((j, i) => checkHost(j, `${where}.route.jumps[${i}]`, depth + 1));
  }
}

/**
 * Types and bounds of a job spec an agent is about to act on: every field it
 * uses has the type and range the coordinator would give it. Throws PROTOCOL,
 * naming the field.
 */
export function checkJobSpec(spec: JobSpec): void {
  if (spec.direction !== 'push' && spec.direction !== 'pull') bad('direction', spec.direction, 'push or pull');
  if (!TRANSFER_MODES.includes(spec.mode)) bad('mode', spec.mode, TRANSFER_MODES.join(', '));
  if (!isText(spec.localPath)) bad('localPath', spec.localPath, 'a path');
  if (!isText(spec.remotePath)) bad('remotePath', spec.remotePath, 'a path');
  if (!Array.isArray(spec.remoteHosts) || spec.remoteHosts.length < 1 || spec.remoteHosts.length > MAX_HOSTS) bad('remoteHosts', spec.remoteHosts, `a list of 1 to ${MAX_HOSTS} hosts`);
  spec.remoteHosts.forEach((h, i) => checkHost(h, `remoteHosts[${i}]`, 0));
  if (!isText(spec.remoteCommand)) bad('remoteCommand', spec.remoteCommand, 'a command');
  if (!isInt(spec.fileBytes, 0)) bad('fileBytes', spec.fileBytes, 'a size in bytes');
  if (!isInt(spec.rangeBytes, 1)) bad('rangeBytes', spec.rangeBytes, 'a positive size in bytes');
  const ranges = Math.max(1, Math.ceil(spec.fileBytes / spec.rangeBytes));
  if (!isInt(spec.rangeCount, 0) || (spec.rangeCount !== ranges && !(spec.fileBytes === 0 && spec.rangeCount === 0))) bad('rangeCount', spec.rangeCount, `${ranges} (fileBytes / rangeBytes)`);
  if (!HASH_ALGORITHMS.includes(spec.hash)) bad('hash', spec.hash, HASH_ALGORITHMS.join(', '));
  if (!isInt(spec.streams, 1, MAX_STREAMS)) bad('streams', spec.streams, `1 to ${MAX_STREAMS}`);
  if (spec.activeStreams !== undefined && !isInt(spec.activeStreams, 1, spec.streams)) bad('activeStreams', spec.activeStreams, `1 to streams (${spec.streams})`);
  if (!isInt(spec.windowBytes, 1, 1 << 30)) bad('windowBytes', spec.windowBytes, 'a size of 1 byte to 1 GiB');
  if (!isInt(spec.connectionBytesPerSec, 0)) bad('connectionBytesPerSec', spec.connectionBytesPerSec, 'bytes per second (0: no cap)');
  if (!isInt(spec.maxConnectionsPerHost, 0)) bad('maxConnectionsPerHost', spec.maxConnectionsPerHost, 'a whole number (0: no cap)');
  if (!isInt(spec.agentCount, 1, MAX_AGENTS)) bad('agentCount', spec.agentCount, `1 to ${MAX_AGENTS}`);
  if (!isInt(spec.ackWaitMs, 1, 24 * 3_600_000)) bad('ackWaitMs', spec.ackWaitMs, 'milliseconds');
  if (!isInt(spec.maxDeliver, 1, 1_000_000)) bad('maxDeliver', spec.maxDeliver, 'a positive whole number');
  if (!isInt(spec.durableEveryRanges, 1)) bad('durableEveryRanges', spec.durableEveryRanges, 'a positive whole number');
  if (!isInt(spec.durableIntervalMs, 0, 24 * 3_600_000)) bad('durableIntervalMs', spec.durableIntervalMs, 'milliseconds');
  if (spec.directIo !== undefined && spec.directIo !== true && spec.directIo !== 'auto') bad('directIo', spec.directIo, "true or 'auto'");
  if (!isOptionalBoolean(spec.verify)) bad('verify', spec.verify, 'true or false');
  if (!isOptionalBoolean(spec.discard)) bad('discard', spec.discard, 'true or false');
  if (!isOptionalBoolean(spec.tree)) bad('tree', spec.tree, 'true or false');
  if (spec.treeRootIno !== undefined && !isInt(spec.treeRootIno, 0)) bad('treeRootIno', spec.treeRootIno, 'an inode number');
  const ssh = spec.ssh;
  if (ssh === null || typeof ssh !== 'object') bad('ssh', ssh, 'SSH settings');
  if (!isText(ssh.knownHostsFile)) bad('ssh.knownHostsFile', ssh.knownHostsFile, 'a path');
  if (!isTexts(ssh.identityFiles)) bad('ssh.identityFiles', ssh.identityFiles, 'a list of paths');
  if (ssh.agentSocket !== undefined && !isText(ssh.agentSocket)) bad('ssh.agentSocket', ssh.agentSocket, 'a path');
  if (!isInt(ssh.connectTimeoutMs, 1, 3_600_000)) bad('ssh.connectTimeoutMs', ssh.connectTimeoutMs, 'milliseconds (1 ms to 1 h)');
  if (ssh.transport !== undefined && ssh.transport !== 'ssh2' && ssh.transport !== 'openssh') bad('ssh.transport', ssh.transport, 'ssh2 or openssh');
  if (ssh.sshCommand !== undefined && !isTexts(ssh.sshCommand, 1)) bad('ssh.sshCommand', ssh.sshCommand, 'a program and its arguments');
  if (ssh.configFile !== undefined && !isText(ssh.configFile)) bad('ssh.configFile', ssh.configFile, 'a path');
  if (ssh.sendWindowBytes !== undefined && !isInt(ssh.sendWindowBytes, 0, 1 << 30)) bad('ssh.sendWindowBytes', ssh.sendWindowBytes, 'a size in bytes');
  for (const k of ['knownHostsGiven', 'sharedHelper'] as const) if (!isOptionalBoolean(ssh[k])) bad(`ssh.${k}`, ssh[k], 'true or false');
}

/**
 * The ranges of a work item an agent is about to move, each checked against the
 * spec's plan: a range of it, at its offset, of its length, of a whole-number
 * attempt. Offsets and lengths reach file reads and writes and, in SFTP mode,
 * a remote `dd` command line, so nothing but the plan's own numbers passes.
 * Throws PROTOCOL.
 */
export function checkedWorkItem(item: WorkItem, spec: Pick<JobSpec, 'fileBytes' | 'rangeBytes' | 'rangeCount'>): WorkItem[] {
  const plan: RangePlan = { fileBytes: spec.fileBytes, rangeBytes: spec.rangeBytes, count: spec.rangeCount };
  const count = item.count ?? 1;
  if (!isInt(item.range, 0, plan.count - 1) || !isInt(count, 1, MAX_RANGES_PER_WORK_ITEM) || item.range + count > plan.count) {
    throw new FerryError('PROTOCOL', `work item of ${String(count)} ranges from range ${String(item.range)} is not within the job's ${plan.count} ranges`);
  }
  if (!isInt(item.attempt, 0, 1_000_000)) throw new FerryError('PROTOCOL', `work item for range ${item.range} has attempt ${String(item.attempt)}, not a whole number`);
  if (!isInt(item.offset, 0) || !isInt(item.length, 1)) throw new FerryError('PROTOCOL', `work item for range ${item.range} has offset ${String(item.offset)} and length ${String(item.length)}, not whole numbers`);
  const parts = splitWorkItem(item, plan.rangeBytes);
  for (const p of parts) {
    const r = rangeAt(plan, p.range);
    if (p.offset !== r.offset || p.length !== r.length) throw new FerryError('PROTOCOL', `work item for range ${p.range} says bytes ${p.offset}-${p.offset + p.length}, the job's range is ${r.offset}-${r.offset + r.length}`);
  }
  return parts;
}

/**
 * Types and bounds of a control message an agent acts on; `streams` is the
 * spec's, the most slots a `streams` message may ask for. Throws PROTOCOL.
 */
export function checkControl(control: ControlMessage, streams: number): void {
  switch (control.type) {
    case 'stop':
    case 'cancel':
      if (control.reason !== undefined && (typeof control.reason !== 'string' || control.reason.length > MAX_TEXT)) throw new FerryError('PROTOCOL', `control '${control.type}' has a reason that is not text of up to ${MAX_TEXT} characters`);
      return;
    case 'streams':
      if (!isInt(control.streams, 1, streams)) throw new FerryError('PROTOCOL', `control 'streams' needs a whole number from 1 to ${streams}, got ${String(control.streams)}`);
      return;
    case 'rate':
      if (!isInt(control.connectionBytesPerSec, 1)) throw new FerryError('PROTOCOL', `control 'rate' needs a positive whole number of bytes per second, got ${String(control.connectionBytesPerSec)}`);
      return;
    default:
      throw new FerryError('PROTOCOL', `unknown control message type '${String((control as { type: unknown }).type)}'`);
  }
}

/** What the coordinator knows of a range when a completion for it arrives. */
export interface RangeExpectation {
  plan: RangePlan;
  /** The range is done (journaled) already. */
  isDone(range: number): boolean;
  /** The range has been published (its first work item is out). */
  isPublished(range: number): boolean;
  /** The attempt the coordinator sent last for the range. */
  attemptOf(range: number): number;
  /** The agent has announced itself (agent.started) or sent heartbeats in this run. */
  isKnownAgent(agent: string): boolean;
}

/**
 * Why the coordinator must not act on a completion:
 * - `forged`: its claims match nothing the coordinator asked for (a range not of
 *   the plan or not handed out, another offset or length, an attempt never
 *   sent, hashes of another form): no agent of the job sends that;
 * - `stale`: a range done already, or an attempt older than the one out now
 *   (a redelivered item done twice): agents send that, and it changes nothing;
 * - `unknown agent`: the rest matches, but no agent of that name has announced
 *   itself: the range is outstanding still, and must be done again.
 */
export type CompletionRejection = { kind: 'forged' | 'stale' | 'unknown agent'; reason: string };

/**
 * Why the coordinator must not act on a completion's claims, or undefined when
 * they match a range it has outstanding: one of its plan, handed out, not done,
 * of the attempt it sent last, with that range's offset and length, from an
 * agent of this run, with hashes of the job's form.
 */
export function completionRejection(c: Completion, e: RangeExpectation, hashPattern: RegExp): CompletionRejection | undefined {
  const forged = (reason: string): CompletionRejection => ({ kind: 'forged', reason });
  if (!isInt(c.range, 0, e.plan.count - 1)) return forged(`range ${String(c.range)} is not one of the job's ${e.plan.count} ranges`);
  const r = rangeAt(e.plan, c.range);
  if (c.offset !== r.offset || c.length !== r.length) return forged(`range ${c.range} is bytes ${r.offset}-${r.offset + r.length}, the completion claims ${String(c.offset)}-${Number(c.offset) + Number(c.length)}`);
  if (!isInt(c.attempt, 0)) return forged(`attempt ${String(c.attempt)} is not a whole number`);
  if (!e.isPublished(c.range)) return forged(`range ${c.range} has not been handed out yet`);
  const sent = e.attemptOf(c.range);
  if (c.attempt > sent) return forged(`attempt ${c.attempt} of range ${c.range} was never sent (the last was ${sent})`);
  if (c.error === undefined) {
    if (typeof c.srcHash !== 'string' || !hashPattern.test(c.srcHash) || typeof c.dstHash !== 'string' || !hashPattern.test(c.dstHash)) return forged(`the hashes are not of the job's form`);
  }
  const matching = c.error === undefined && c.srcHash === c.dstHash;
  if (e.isDone(c.range) && matching) return { kind: 'stale', reason: `range ${c.range} is done already` };
  if (c.attempt < sent && matching) return { kind: 'stale', reason: `attempt ${c.attempt} of range ${c.range} is not outstanding (attempt ${sent} is)` };
  if (typeof c.agent !== 'string' || !e.isKnownAgent(c.agent)) return { kind: 'unknown agent', reason: `agent '${String(c.agent)}' is not one of this job's agents` };
  return undefined;
}

/** Entries of one batch work item, at most (the planner's batches hold up to 4,096). */
export const MAX_BATCH_ITEM_ENTRIES = 65_536;

/**
 * A tree path as batches carry it: relative, `/`-separated, every part a
 * name (no empty part, no `.` or `..`), so that joined to a root it stays
 * under that root. Undefined when it is one; otherwise why not.
 */
export function treePathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string' || path.length === 0 || path.length > MAX_TEXT) return 'is not a path of 1 to 4096 characters';
  if (path.includes('\0')) return 'holds a NUL byte';
  if (path.startsWith('/')) return 'is absolute';
  if (path.split('/').some((part) => part === '' || part === '.' || part === '..')) return "leaves the tree's root or has an empty, '.' or '..' part";
  return undefined;
}

/** One entry of a batch work item as an agent may act on it, or why it may not. */
export type CheckedBatchEntry =
  | {
      ok: true;
      /** The entry as its writer gets it: `path` under the destination's root (the remote one for a push, the local one for a pull). */
      wire: BatchEntry;
      /** The tree path (relative) and the file it names under the source's root (local for a push, remote for a pull). */
      path: string;
      source: string;
      kind: 'file' | 'symlink';
      size: number;
    }
  | { ok: false; error: ErrorData };

const isTime = (v: unknown) => v === undefined || (typeof v === 'number' && Number.isFinite(v));

/**
 * The entries of a batch work item an agent is about to read and write, each
 * checked: a file (size, mode within 0o7777) or a symlink (its text), at a
 * relative path that stays under the tree's roots. An entry that is not is
 * refused alone (its result says why, the others go on); an item that is not
 * a batch at all throws PROTOCOL. Nothing here opens anything: a push's agent
 * reads `source` without following a link (O_NOFOLLOW), a pull's writes
 * `wire.path` under a fresh temporary name and checks the directories above
 * it (batch-agent.ts).
 */
export function checkedBatchItem(item: BatchWorkItem, roots: { sourceRoot: string; destRoot: string }): CheckedBatchEntry[] {
  if (item.type !== 'batch') throw new FerryError('PROTOCOL', `work item of type '${String(item.type).slice(0, 40)}' in a tree job: only batches are`);
  if (!isInt(item.batch, 0) || !isInt(item.attempt, 0, 1_000_000)) throw new FerryError('PROTOCOL', `batch work item has batch ${String(item.batch)} and attempt ${String(item.attempt)}, not whole numbers`);
  if (!Array.isArray(item.entries) || item.entries.length < 1 || item.entries.length > MAX_BATCH_ITEM_ENTRIES) throw new FerryError('PROTOCOL', `batch work item ${item.batch} must hold 1 to ${MAX_BATCH_ITEM_ENTRIES} entries`);
  return item.entries.map((raw): CheckedBatchEntry => {
    const refuse = (why: string, path?: string): CheckedBatchEntry => ({
      ok: false,
      error: { code: 'PROTOCOL', message: `batch ${item.batch}: entry ${path === undefined ? '' : `'${path.slice(0, 200)}' `}${why}: not copied`, ...(path === undefined ? {} : { path }) },
    });
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return refuse('is not an entry');
    const e = raw as Partial<BatchEntry>;
    const problem = treePathProblem(e.path);
    if (problem !== undefined) return refuse(`path ${problem}`, typeof e.path === 'string' ? e.path : undefined);
    const path = e.path!;
    if (!isTime(e.mtimeMs) || !isTime(e.atimeMs)) return refuse('has times that are not numbers', path);
    let size = 0;
    if (e.kind === 'file') {
      if (!isInt(e.size, 0)) return refuse('has no size in bytes', path);
      if (!isInt(e.mode, 0, 0o7777)) return refuse('has a mode beyond 0o7777', path);
      size = e.size;
    } else if (e.kind === 'symlink') {
      if (!isText(e.target)) return refuse("has no link text", path);
    } else {
      return refuse(`is of kind '${String(e.kind).slice(0, 20)}': batches of agents carry files and symlinks only`, path);
    }
    return { ok: true, wire: { ...(e as BatchEntry), path: joinUnder(roots.destRoot, path) }, path, source: joinUnder(roots.sourceRoot, path), kind: e.kind, size };
  });
}

const HEX_HASH = /^[0-9a-f]{8,64}$/;

/**
 * Why the coordinator must not act on a batch completion's results for a
 * batch of `entries` entries (undefined when it may): results for entries
 * `from` on, each ok with a hash of the job's form or failed with a known
 * error code and a message.
 */
export function batchDoneProblem(done: BatchDone, entries: number): string | undefined {
  if (!isInt(done.from, 0, entries - 1)) return `results from entry ${String(done.from)} of a batch of ${entries}`;
  if (!Array.isArray(done.results) || done.results.length < 1 || done.from + done.results.length > entries) return `not 1 to ${entries - Number(done.from)} results`;
  if (!isInt(done.attempt, 0)) return `attempt ${String(done.attempt)} is not a whole number`;
  if (!isText(done.remoteHost)) return 'no remote host';
  for (const r of done.results as unknown[]) {
    if (r === null || typeof r !== 'object') return 'a result that is not one';
    const x = r as BatchEntryResult;
    if (x.ok === true) {
      if (x.hash !== undefined && (typeof x.hash !== 'string' || !HEX_HASH.test(x.hash))) return "a hash not of the job's form";
    } else if (x.ok === false) {
      if (x.error === null || typeof x.error !== 'object' || !isErrorCode(x.error.code) || typeof x.error.message !== 'string' || x.error.message.length > MAX_TEXT) return 'an error without a known code and a message';
    } else return 'a result neither ok nor failed';
  }
  return undefined;
}
