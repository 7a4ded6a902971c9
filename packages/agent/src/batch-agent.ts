/**
 * An agent of a tree job (the spec's `tree`): its work items are batches of
 * small files, not ranges. Each connection slot takes one batch at a time
 * from the job's shared queue and moves it over its own SSH connection with
 * the coordinator's code: a push reads the files from the (shared) source
 * tree and the remote helper writes them (tree-push.ts); a pull has the
 * remote helper read them (READ_BATCH) and writes them here under the
 * (shared) destination tree (tree-pull.ts, serve's BatchWriter). Then it
 * stores one result per entry and only then acks the item. A batch whose
 * agent dies is handed out again by JetStream after its ack wait; one whose
 * connection fails goes back at once (nak).
 *
 * Nothing a work item says is run or trusted: every entry is checked (core's
 * checkedBatchItem: a file or a symlink, at a relative path that stays under
 * the tree's roots). A push reads without following a link; a pull writes
 * only through directories that are directories (no link in the way,
 * destDirProblem), each file new under a random temporary name renamed into
 * place, and only on a node that sees the destination root the coordinator
 * made (the same inode).
 */
import { setMaxListeners } from 'node:events';
import { stat } from 'node:fs/promises';
import {
  AgentPacer,
  FerryError,
  HOLD_BATCHES_ENV,
  MESSAGE_VERSION,
  checkControl,
  checkedBatchItem,
  decodeBatchWorkItem,
  decodeControl,
  encodeMessage,
  hostLabel,
  slotHost,
  slotStaggerMs,
  toFerryError,
} from '@ferry/core';
import type { AgentEvent, BatchDone, BatchEntryResult, CheckedBatchEntry, ErrorCode, ErrorData, Heartbeat, JobSpec, TreeEntry } from '@ferry/core';
import { connectRemote } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import type { AgentBus, WorkDelivery } from './agent-bus.js';
import { signalListeners } from './concurrency.js';
import { pushTransfer } from './tree-push.js';
import { destDirProblem, pullTransfer } from './tree-pull.js';
import type { Pace } from './tree-push.js';

export interface BatchAgentContext {
  bus: AgentBus;
  spec: JobSpec;
  jobId: string;
  agentId: string;
  node: string;
  index: number;
  log: (line: string) => void;
  signal?: AbortSignal | undefined;
  /** Stop when this process is no longer our parent (agents started as local children). */
  parentPid?: number | undefined;
  /** Resolves when whoever launched this agent is gone (ssh launcher: stdin closed). */
  launcherGone?: Promise<void> | undefined;
  /** How long a helper this agent starts may stay silent. */
  helperTimeoutMs: number;
}

export interface BatchAgentSummary {
  agent: string;
  batches: number;
  bytes: number;
  errors: number;
}

/** Errors after which this agent can do nothing useful: it says so and leaves the batches to the others. */
const FATAL_FOR_AGENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['SSH_AUTH_FAILED', 'HOST_KEY_UNKNOWN', 'HOST_KEY_CHANGED', 'HELPER_UNAVAILABLE', 'HELPER_UNTRUSTED', 'SSH_CLIENT_MISSING']);
const FETCH_EXPIRES_MS = 2_000;
/** Results of one batch in one stored message, at most, and their rough size: well under NATS's 1 MiB payload. */
const RESULTS_PER_MESSAGE = 1024;
const RESULT_BYTES_PER_MESSAGE = 512 * 1024;
/** Consecutive failures of one slot (over every host) before the agent gives up. */
const FAILURES_BEFORE_GIVING_UP = 8;
/** NATS unreachable this long: the job is gone, stop. */
const NATS_GONE_MS = 120_000;
/** How long a result may fail to store (NATS restarting) before the agent gives up on it. */
const PUBLISH_DEADLINE_MS = 5 * 60_000;

/** How often the agent looks whether its connections moving data have become fewer (--limit-rate; AgentPacer.tick). */
const RATE_TICK_MS = 100;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const backoffMs = (n: number) => Math.min(10_000, 250 * 2 ** Math.min(n, 6));

/** The results of a batch from entry 0 on, cut into messages under NATS's payload limit. */
export function batchDoneParts(base: Omit<BatchDone, 'from' | 'results'>, results: readonly BatchEntryResult[]): BatchDone[] {
  const parts: BatchDone[] = [];
  let from = 0;
  let bytes = 0;
  for (let i = 0; i < results.length; i++) {
    const r = results[i]!;
    const size = r.ok ? 40 : 80 + r.error.message.length + (r.error.path?.length ?? 0);
    if (i > from && (i - from >= RESULTS_PER_MESSAGE || bytes + size > RESULT_BYTES_PER_MESSAGE)) {
      parts.push({ ...base, from, results: results.slice(from, i) });
      from = i;
      bytes = 0;
    }
    bytes += size;
  }
  if (results.length > from) parts.push({ ...base, from, results: results.slice(from) });
  return parts;
}

/**
 * Moves the entries that passed the checks as one batch over `conn`: a push
 * writes them there, a pull writes them here; the refused ones keep their
 * refusal. One result per entry, in order.
 */
async function moveChecked(conn: RemoteConnection, checked: readonly CheckedBatchEntry[], spec: JobSpec, pace?: Pace): Promise<{ results: BatchEntryResult[]; bytes: number }> {
  const results: BatchEntryResult[] = checked.map((c) => (c.ok ? { ok: false, error: { code: 'INTERNAL', message: 'not written' } } : { ok: false, error: c.error }));
  // A pull writes here: not through a directory that is not one (a link planted in its place).
  const seen = new Map<string, ErrorData | null>();
  const ok = checked.flatMap((c, i) => {
    if (!c.ok) return [];
    const problem = spec.direction === 'pull' ? destDirProblem(spec.localPath, c.path, seen) : undefined;
    if (problem) {
      results[i] = { ok: false, error: problem };
      return [];
    }
    return [{ c, i }];
  });
  if (ok.length === 0) return { results, bytes: 0 };
  // The transfers read an entry's path, kind and size only.
  const entries = ok.map(({ c }) => ({ path: c.path, kind: c.kind, size: c.size }) as TreeEntry);
  const sources = new Map(ok.map(({ c }) => [c.path, c.source] as const));
  const bytes = ok.reduce((n, { c }) => n + c.size, 0);
  const transfer = spec.direction === 'pull' ? pullTransfer : pushTransfer;
  const got = await transfer(spec.hash, (e) => sources.get(e.path)!, pace)(conn, { entries, wire: ok.map(({ c }) => c.wire), bytes, attempts: 0 });
  if (got.length !== ok.length) throw new FerryError('PROTOCOL', `${conn.label} answered a batch of ${ok.length} entries with ${got.length} results`, { host: conn.label });
  got.forEach((r, k) => {
    results[ok[k]!.i] = r.ok ? { ok: true, ...(r.dstHash ? { hash: r.dstHash } : {}) } : { ok: false, error: r.error };
  });
  return { results, bytes };
}

/**
 * The tree's local root as this node sees it: a push's source, a pull's
 * destination (the directory the coordinator made: the same inode). On a
 * node that does not mount it, every entry would fail (a push) or land
 * where nobody looks (a pull): the agent says so and leaves the batches to
 * the others.
 */
async function checkLocalRoot(spec: JobSpec, node: string): Promise<void> {
  const what = spec.direction === 'pull' ? 'destination' : 'source';
  const root = await stat(spec.localPath).catch((err: unknown) => {
    throw new FerryError(spec.direction === 'pull' ? 'DEST_DIR_MISSING' : 'SOURCE_NOT_FOUND', `${what} tree ${spec.localPath} is not visible on ${node} (${(err as Error).message}): is it on a filesystem every node mounts?`, { path: spec.localPath });
  });
  if (!root.isDirectory()) throw new FerryError(spec.direction === 'pull' ? 'DEST_CONFLICT' : 'SOURCE_NOT_FOUND', `${what} tree ${spec.localPath} is not a directory on ${node}: is it on a filesystem every node mounts?`, { path: spec.localPath });
  if (spec.direction === 'pull' && spec.treeRootIno !== undefined && root.ino !== spec.treeRootIno) {
    throw new FerryError('DEST_DIR_MISSING', `destination tree ${spec.localPath} on ${node} is not the directory the coordinator made (inode ${root.ino}, not ${spec.treeRootIno}): a directory of this node's own? The destination must be on a filesystem every node mounts`, { path: spec.localPath });
  }
}

export async function runBatchAgent(ctx: BatchAgentContext): Promise<BatchAgentSummary> {
  const { bus, spec, jobId, agentId, node, log } = ctx;
  const summary: BatchAgentSummary = { agent: agentId, batches: 0, bytes: 0, errors: 0 };
  const publishEvent = (event: AgentEvent) => bus.publishEvent(event);
  const agentError = (e: FerryError, fatal: boolean): AgentEvent => ({ v: MESSAGE_VERSION, job: jobId, type: 'agent.error', agent: agentId, node, error: e.toData(), fatal });
  let stopping = false;
  let fatal: FerryError | undefined;
  const abort = new AbortController();
  setMaxListeners(signalListeners(spec.streams), abort.signal);
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    log(`stopping: ${why}`);
    abort.abort(new Error(why));
  };
  const onSignal = () => stop('interrupted');
  ctx.signal?.addEventListener('abort', onSignal, { once: true });
  const timers: NodeJS.Timeout[] = [];
  if (ctx.parentPid !== undefined) {
    const parentPid = ctx.parentPid;
    const t = setInterval(() => {
      if (process.ppid !== parentPid) stop('the coordinator process is gone');
    }, 500);
    t.unref();
    timers.push(t);
  }
  const lonely = setInterval(() => {
    const since = bus.disconnectedSince();
    if (since !== undefined && Date.now() - since > NATS_GONE_MS) stop(`no NATS for ${NATS_GONE_MS / 1000} s`);
  }, 5000);
  lonely.unref();
  timers.push(lonely);
  void ctx.launcherGone?.then(() => stop('the launcher connection closed'));

  const connected = new Set<number>();
  let inFlight = 0;
  // --limit-rate: one bucket for all this agent's connections, at the coordinator's share per
  // connection moving data times their number, as for ranges (agent.ts, core's pacer.ts).
  const pacing = spec.connectionBytesPerSec > 0 ? new AgentPacer(spec.connectionBytesPerSec, Date.now()) : undefined;
  const announce = (moving: number | undefined) => {
    if (moving !== undefined) publishEvent({ v: MESSAGE_VERSION, job: jobId, type: 'agent.active', agent: agentId, node, active: moving });
  };
  const pace: Pace | undefined = pacing
    ? (n) => {
        const waitMs = pacing.take(n, Date.now());
        return waitMs > 0 ? sleep(waitMs) : undefined;
      }
    : undefined;
  const heartbeat = () => {
    const hb: Heartbeat = { v: MESSAGE_VERSION, job: jobId, agent: agentId, node, pid: process.pid, bytes: summary.bytes, rangesDone: summary.batches, inFlight, errors: summary.errors, streams: spec.streams, connected: connected.size, ...(pacing ? { active: pacing.announced } : {}), at: Date.now() };
    bus.publishHeartbeat(hb);
  };
  try {
    // The tree's local side must be visible here (a shared file system).
    await checkLocalRoot(spec, node);
    await bus.listenControl((data) => {
      try {
        const control = decodeControl(data, jobId);
        checkControl(control, spec.streams);
        if (control.type === 'stop' || control.type === 'cancel') stop(control.reason ?? `the coordinator said ${control.type}`);
        else if (control.type === 'rate' && pacing) pacing.setConnectionRate(control.connectionBytesPerSec, Date.now());
      } catch (e) {
        log(`ignoring control message: ${(e as Error).message}`);
      }
    });
  } catch (err) {
    const e = toFerryError(err);
    log(e.message);
    publishEvent(agentError(e, true));
    for (const t of timers) clearInterval(t);
    ctx.signal?.removeEventListener('abort', onSignal);
    await bus.close();
    throw e;
  }
  publishEvent({ v: MESSAGE_VERSION, job: jobId, type: 'agent.started', agent: agentId, node, pid: process.pid, index: ctx.index });
  const hbTimer = setInterval(heartbeat, 1000);
  heartbeat();
  const rateTicker = pacing ? setInterval(() => announce(pacing.tick()), RATE_TICK_MS) : undefined;
  rateTicker?.unref();

  const hold = process.env[HOLD_BATCHES_ENV];
  const holdResults = hold !== undefined && hold !== '' && agentId.endsWith(hold);
  const hosts = spec.remoteHosts;
  const roots = spec.direction === 'pull' ? { sourceRoot: spec.remotePath, destRoot: spec.localPath } : { sourceRoot: spec.localPath, destRoot: spec.remotePath };

  /** Stores one message, retrying through a NATS restart until a deadline. */
  const store = async (data: Uint8Array) => {
    const deadline = Date.now() + PUBLISH_DEADLINE_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        return await bus.storeCompletions(data);
      } catch (err) {
        if (Date.now() > deadline || (stopping && attempt > 20)) throw new FerryError('NATS_UNREACHABLE', `cannot store a batch's results in NATS: ${(err as Error).message}`, { cause: err });
        await sleep(Math.min(2000, 100 * 2 ** attempt));
      }
    }
  };

  /** One delivery, or null when none came before the request expired (or the agent stops). */
  const take = async (): Promise<WorkDelivery | null> => {
    const fetch = await bus.fetchWork(FETCH_EXPIRES_MS);
    const onStop = () => fetch.stop();
    abort.signal.addEventListener('abort', onStop, { once: true });
    try {
      for await (const m of fetch.messages) {
        // Taken while stopping: back at once rather than after its ack wait.
        if (stopping) {
          m.nak();
          return null;
        }
        return m;
      }
      return null;
    } finally {
      abort.signal.removeEventListener('abort', onStop);
    }
  };

  const worker = async (slot: number) => {
    const preferred = slotHost(ctx.index, slot, spec.agentCount, hosts.length, spec.maxConnectionsPerHost);
    if (preferred === undefined) return;
    let hostIndex = preferred;
    let conn: RemoteConnection | undefined;
    let failures = 0;
    const stagger = slotStaggerMs(ctx.index, slot, spec.agentCount);
    if (stagger > 0) await sleep(stagger);
    const drop = () => {
      connected.delete(slot);
      conn?.close();
      conn = undefined;
    };
    abort.signal.addEventListener('abort', drop, { once: true });
    try {
      while (!stopping && !fatal) {
        let m: WorkDelivery | null;
        try {
          m = await take();
        } catch (err) {
          if (stopping) break;
          log(`waiting for work: ${(err as Error).message}`);
          await sleep(500);
          continue;
        }
        if (!m) continue;
        let checked: CheckedBatchEntry[];
        let batch = -1;
        let attempt = 0;
        try {
          const item = decodeBatchWorkItem(m.data, jobId);
          checked = checkedBatchItem(item, roots);
          batch = item.batch;
          attempt = item.attempt;
        } catch (err) {
          log(`dropping malformed work item: ${(err as Error).message}`);
          m.term();
          continue;
        }
        // Kept from being handed out again while it is worked on.
        const delivery = m;
        const working = setInterval(() => delivery.working(), Math.max(1000, Math.floor(spec.ackWaitMs / 3)));
        inFlight++;
        try {
          if (!conn) {
            const host = hosts[hostIndex]!;
            conn = await connectRemote(host, spec.ssh, { mode: spec.mode, remoteCommand: spec.remoteCommand, windowBytes: spec.windowBytes, helperTimeoutMs: ctx.helperTimeoutMs, signal: abort.signal });
            connected.add(slot);
          }
          announce(pacing?.start(slot, Date.now()));
          let moved;
          try {
            moved = await moveChecked(conn, checked, spec, pace);
          } finally {
            announce(pacing?.stop(slot, Date.now()));
          }
          const { results, bytes } = moved;
          if (holdResults) {
            log(`batch ${batch}: written; holding its results (${HOLD_BATCHES_ENV})`);
            await new Promise<void>((resolve) => abort.signal.addEventListener('abort', () => resolve(), { once: true }));
            throw new FerryError('INTERRUPTED', 'stopping');
          }
          const base = { v: MESSAGE_VERSION, job: jobId, type: 'batch.done' as const, batch, attempt, agent: agentId, remoteHost: hostLabel(hosts[hostIndex]!) };
          for (const part of batchDoneParts(base, results)) await store(encodeMessage(part));
          m.ack();
          summary.batches++;
          summary.bytes += bytes;
          failures = 0;
        } catch (err) {
          const e = toFerryError(err);
          m.nak(stopping ? undefined : backoffMs(failures));
          if (stopping) break;
          summary.errors++;
          if (FATAL_FOR_AGENT.has(e.code)) {
            fatal ??= e;
            publishEvent(agentError(e, true));
            stop(e.message);
            break;
          }
          failures++;
          drop();
          hostIndex = (hostIndex + 1) % hosts.length;
          log(`batch ${batch}: ${e.code}: ${e.message}`);
          publishEvent(agentError(e, false));
          if (failures >= FAILURES_BEFORE_GIVING_UP * hosts.length) {
            fatal ??= new FerryError(e.code === 'CONNECTION_LOST' ? 'HOST_UNREACHABLE' : e.code, `${agentId}: ${failures} batches in a row failed (last: ${e.message}); leaving them to the other agents`, { host: e.host ?? hostLabel(hosts[hostIndex]!) });
            publishEvent(agentError(fatal, true));
            stop(fatal.message);
            break;
          }
          await sleep(backoffMs(failures));
        } finally {
          clearInterval(working);
          inFlight--;
        }
      }
    } finally {
      abort.signal.removeEventListener('abort', drop);
      drop();
    }
  };

  try {
    await Promise.all(Array.from({ length: spec.streams }, (_, slot) => worker(slot)));
  } finally {
    clearInterval(hbTimer);
    if (rateTicker) clearInterval(rateTicker);
    for (const t of timers) clearInterval(t);
    heartbeat();
    ctx.signal?.removeEventListener('abort', onSignal);
    await bus.flush().catch(() => {});
    await bus.close();
  }
  if (fatal) throw fatal;
  return summary;
}
