/**
 * An agent: pulls ranges from the job's shared work consumer, moves them over
 * its own SSH connections, publishes a completion (and waits for JetStream to
 * store it) before acking the work item, so no finished range is ever lost.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { jetstream } from '@nats-io/jetstream';
import type { Consumer, JsMsg } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  BufferPool,
  FerryError,
  FRAME_HEADER_BYTES,
  MESSAGE_VERSION,
  decodeControl,
  decodeJobSpec,
  decodeWorkItem,
  destinationError,
  encodeMessage,
  errnoOf,
  hostLabel,
  jobSubjects,
  toFerryError,
} from '@ferry/core';
import type { AgentEvent, Completion, ErrorCode, Heartbeat, JobSpec, RemoteHost, WorkItem } from '@ferry/core';
import { connectRemote } from '@ferry/transport';
import type { RemoteConnection, RemoteFile } from '@ferry/transport';
import { connectBus } from './bus.js';
import { pullRange, pushRange } from './pump.js';

export interface AgentOptions {
  jobId: string;
  natsUrl: string;
  natsToken?: string | undefined;
  /** Name in reports and heartbeats. @default `<hostname>-<pid>` */
  agentId?: string;
  /** Index of this agent among the job's agents, used to spread connections over remote hosts. @default 0 */
  index?: number;
  signal?: AbortSignal;
  /** Diagnostic lines (stderr of the agent process). */
  log?: (line: string) => void;
  /** Range indices to corrupt on their first attempt (test-only fault injection). */
  corruptRanges?: ReadonlySet<number>;
}

export interface AgentSummary {
  agent: string;
  ranges: number;
  bytes: number;
  errors: number;
}

/** Errors after which this agent cannot do anything useful: it reports them and exits. */
const FATAL_FOR_AGENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['SSH_AUTH_FAILED', 'HOST_KEY_UNKNOWN', 'HOST_KEY_CHANGED', 'HELPER_UNAVAILABLE', 'SOURCE_NOT_FOUND', 'SOURCE_UNREADABLE']);
/** Errors that end the job: every agent would meet them. Reported in a completion. */
const FATAL_FOR_JOB: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['DEST_NO_SPACE', 'DEST_NOT_WRITABLE', 'DEST_DIR_MISSING', 'SOURCE_CHANGED']);

const NEXT_EXPIRES_MS = 2_000;
const CHUNK_BYTES = 1024 * 1024;

function backoffMs(attempt: number): number {
  return Math.min(30_000, 500 * 2 ** Math.min(attempt, 6));
}

async function openLocal(spec: JobSpec): Promise<FileHandle> {
  try {
    return await open(spec.localPath, spec.direction === 'push' ? 'r' : 'r+');
  } catch (err) {
    if (spec.direction === 'pull') throw destinationError(err, { path: spec.localPath });
    const errno = errnoOf(err);
    if (errno === 'ENOENT') throw new FerryError('SOURCE_NOT_FOUND', `source ${spec.localPath} disappeared on this node: is it on a filesystem every node mounts?`, { path: spec.localPath, cause: err });
    throw new FerryError('SOURCE_UNREADABLE', `cannot read ${spec.localPath}: ${(err as Error).message}`, { path: spec.localPath, cause: err });
  }
}

export async function runAgent(options: AgentOptions): Promise<AgentSummary> {
  const agentId = options.agentId ?? `${hostname()}-${process.pid}`;
  const log = options.log ?? (() => {});
  const subjects = jobSubjects(options.jobId);
  const nc: NatsConnection = await connectBus({ url: options.natsUrl, token: options.natsToken, name: `ferry-agent-${agentId}` });
  const js = jetstream(nc);
  const summary: AgentSummary = { agent: agentId, ranges: 0, bytes: 0, errors: 0 };
  let inFlight = 0;
  let stopping = false;
  let fatal: FerryError | undefined;
  let wake: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const stop = () => {
    stopping = true;
    wake();
  };
  options.signal?.addEventListener('abort', stop, { once: true });

  const publishEvent = (event: AgentEvent) => nc.publish(subjects.events, encodeMessage(event));

  let spec: JobSpec;
  let consumer: Consumer;
  let local: FileHandle;
  try {
    const kv = await new Kvm(nc).open(subjects.kvBucket);
    const entry = await kv.get('spec');
    if (!entry || entry.length === 0) throw new FerryError('PROTOCOL', `job ${options.jobId} has no spec in NATS: is the coordinator running?`);
    spec = decodeJobSpec(entry.value, options.jobId);
    consumer = await js.consumers.get(subjects.workStream, subjects.workConsumer);
    local = await openLocal(spec);
  } catch (err) {
    const e = toFerryError(err);
    publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node: hostname(), error: e.toData(), fatal: true });
    await nc.drain().catch(() => {});
    throw e;
  }

  nc.subscribe(subjects.control, {
    callback: (err, msg) => {
      if (err) return;
      try {
        const control = decodeControl(msg.data, options.jobId);
        if (control.type === 'stop' || control.type === 'cancel') stop();
      } catch (e) {
        log(`ignoring control message: ${(e as Error).message}`);
      }
    },
  });
  publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.started', agent: agentId, node: hostname(), pid: process.pid });

  const heartbeat = () => {
    const hb: Heartbeat = {
      v: MESSAGE_VERSION,
      job: options.jobId,
      agent: agentId,
      node: hostname(),
      pid: process.pid,
      bytes: summary.bytes,
      rangesDone: summary.ranges,
      inFlight,
      errors: summary.errors,
      at: Date.now(),
    };
    nc.publish(`${subjects.heartbeat}.${agentId}`, encodeMessage(hb));
  };
  const hbTimer = setInterval(heartbeat, 1000);
  heartbeat();

  const pool = new BufferPool(FRAME_HEADER_BYTES + CHUNK_BYTES, spec.streams * 5);
  const hosts = spec.remoteHosts;
  const index = options.index ?? 0;

  const worker = async (slot: number) => {
    const host: RemoteHost = hosts[(index * spec.streams + slot) % hosts.length]!;
    let conn: RemoteConnection | undefined;
    let file: RemoteFile | undefined;
    let failures = 0;
    const drop = () => {
      conn?.close();
      conn = undefined;
      file = undefined;
    };
    while (!stopping && !fatal) {
      let msg: JsMsg | null;
      try {
        msg = await Promise.race([consumer.next({ expires: NEXT_EXPIRES_MS }), stopped.then(() => null)]);
      } catch (err) {
        if (stopping) break;
        log(`waiting for work: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      if (!msg) continue;
      let item: WorkItem;
      try {
        item = decodeWorkItem(msg.data, options.jobId);
      } catch (err) {
        log(`dropping malformed work item: ${(err as Error).message}`);
        msg.term();
        continue;
      }
      inFlight++;
      const startedAt = Date.now();
      const ticker = setInterval(() => msg.working(), Math.max(1000, Math.floor(spec.ackWaitMs / 3)));
      let moved = 0;
      try {
        if (!file) {
          conn = await connectRemote(host, spec.ssh, { mode: spec.mode, remoteCommand: spec.remoteCommand, windowBytes: spec.windowBytes });
          file = await conn.openFile(spec.remotePath, spec.direction === 'push' ? 'write' : 'read');
        }
        const job = {
          offset: item.offset,
          length: item.length,
          algorithm: spec.hash,
          corrupt: item.attempt === 0 && options.corruptRanges?.has(item.range) === true,
          onBytes: (n: number) => {
            moved += n;
            summary.bytes += n;
          },
        };
        const result = spec.direction === 'push' ? await pushRange(local, spec.localPath, file, pool, job) : await pullRange(local, spec.localPath, file, pool, job);
        const completion: Completion = {
          v: MESSAGE_VERSION,
          job: options.jobId,
          range: item.range,
          attempt: item.attempt,
          offset: item.offset,
          length: item.length,
          srcHash: result.srcHash,
          dstHash: result.dstHash,
          durable: false,
          agent: agentId,
          remoteHost: hostLabel(host),
          startedAt,
          finishedAt: Date.now(),
        };
        // The completion must be stored before the work item goes away.
        await js.publish(subjects.doneSubject, encodeMessage(completion));
        await msg.ackAck();
        summary.ranges++;
        failures = 0;
      } catch (err) {
        summary.bytes -= moved;
        summary.errors++;
        const e = toFerryError(err);
        log(`range ${item.range} on ${hostLabel(host)}: ${e.code}: ${e.message}`);
        if (FATAL_FOR_AGENT.has(e.code)) {
          fatal = e;
          msg.nak();
          publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node: hostname(), error: e.toData(), fatal: true });
        } else if (FATAL_FOR_JOB.has(e.code)) {
          const completion: Completion = {
            v: MESSAGE_VERSION,
            job: options.jobId,
            range: item.range,
            attempt: item.attempt,
            offset: item.offset,
            length: item.length,
            srcHash: '',
            dstHash: '',
            durable: false,
            agent: agentId,
            remoteHost: hostLabel(host),
            startedAt,
            finishedAt: Date.now(),
            error: e.toData(),
          };
          await js.publish(subjects.doneSubject, encodeMessage(completion)).catch(() => {});
          msg.term(e.code);
          drop();
        } else {
          // Connection trouble or a helper failure: another try, here or elsewhere, after a pause.
          drop();
          failures++;
          msg.nak(backoffMs(failures));
          publishEvent({ v: MESSAGE_VERSION, job: options.jobId, type: 'agent.error', agent: agentId, node: hostname(), error: e.toData(), fatal: false });
          if (!stopping) await Promise.race([new Promise((r) => setTimeout(r, backoffMs(failures))), stopped]);
        }
      } finally {
        clearInterval(ticker);
        inFlight--;
      }
    }
    drop();
  };

  try {
    await Promise.all(Array.from({ length: spec.streams }, (_, slot) => worker(slot)));
  } finally {
    clearInterval(hbTimer);
    heartbeat();
    await local.close().catch(() => {});
    await nc.drain().catch(() => {});
    options.signal?.removeEventListener('abort', stop);
  }
  if (fatal) throw fatal;
  return summary;
}
