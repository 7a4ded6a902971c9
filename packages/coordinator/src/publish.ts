/**
 * The publish stage of a single-file job: open its control plane (memory or
 * NATS), store the job spec, and hand out the ranges not done yet as work
 * items (again, one by one, when a range is sent anew: collect.ts). Control
 * messages to the agents (the --limit-rate share) go out here too.
 */
import { hostname, networkInterfaces } from 'node:os';
import { DEFAULT_DURABLE_BYTES, DEFAULT_DURABLE_INTERVAL_MS, DEFAULT_MAX_DELIVER, IntervalSet, MESSAGE_VERSION, RateShares, encodeMessage, toFerryError, workItemId, workItemsOf } from '@ferry/core';
import type { JobSpec, RangePlan } from '@ferry/core';
import type { Run, TransferContext } from './file-context.js';
import type { JobBus } from './job-bus.js';
import { LocalBus } from './local-bus.js';

/** `0`: a job of one local agent uses NATS all the same, instead of its control plane in memory (A/B benchmarks, tests of the NATS path). */
export const LOCAL_BUS_ENV = 'FERRY_LOCAL_BUS';

/** Publishes at most this many ranges before waiting for their acks. */
const PUBLISH_BATCH = 512;

/** This node's first non-internal IPv4 address: what agents on other nodes can reach. */
export function firstExternalAddress(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return hostname();
}

/** The control plane a transfer uses: memory when its one agent runs in this process, else NATS. */
export async function openJobBus(ctx: TransferContext): Promise<JobBus> {
  const { request, options } = ctx;
  if (useLocalBus(ctx)) return new LocalBus();
  const remoteAgents = (request.externalAgents ?? 0) > 0 || (request.launcher !== undefined && request.launcher.name !== 'local');
  const listen = request.natsListen ?? (remoteAgents ? '0.0.0.0' : '127.0.0.1');
  const advertise = request.natsAdvertise ?? (listen === '0.0.0.0' ? firstExternalAddress() : listen);
  const { openNatsJobBus } = await import('./nats-job-bus.js');
  return openNatsJobBus({
    jobId: ctx.prep.jobId,
    jobDir: ctx.jobDir,
    url: options.natsUrl,
    token: options.natsUrl ? process.env.FERRY_NATS_TOKEN : undefined,
    listen,
    advertise,
    fresh: !ctx.resumed,
  });
}

/**
 * A job's one agent runs in this process (local launcher, nobody joining, no
 * --nats): its control plane can be memory. FERRY_LOCAL_BUS=0 asks for NATS
 * all the same (for A/B benchmarks and tests of the NATS path).
 */
export function useLocalBus(ctx: Pick<TransferContext, 'agents' | 'request' | 'options'>): boolean {
  if (process.env[LOCAL_BUS_ENV] === '0') return false;
  const { request, options } = ctx;
  return ctx.agents === 1 && (request.externalAgents ?? 0) === 0 && (request.launcher === undefined || request.launcher.name === 'local') && options.natsUrl === undefined && !request.onRendezvous;
}

/** The job as agents get it from the control plane. */
export function jobSpecOf(ctx: TransferContext): JobSpec {
  const { prep, plan, options } = ctx;
  return {
    v: MESSAGE_VERSION,
    jobId: prep.jobId,
    direction: prep.direction,
    mode: prep.mode,
    localPath: prep.localPath,
    remotePath: prep.remotePath,
    ...(ctx.temp ? { tempFile: ctx.temp } : {}),
    remoteHosts: prep.remoteHosts,
    remoteCommand: options.remoteCommand,
    fileBytes: plan.fileBytes,
    rangeBytes: plan.rangeBytes,
    rangeCount: plan.count,
    hash: ctx.hash as JobSpec['hash'],
    streams: options.streams,
    activeStreams: options.firstStreams,
    windowBytes: options.windowBytes,
    connectionBytesPerSec: options.limitBytesPerSec ? Math.max(1, Math.floor(options.limitBytesPerSec / (ctx.agents * options.streams))) : 0,
    maxConnectionsPerHost: options.maxConnectionsPerHost,
    agentCount: ctx.agents,
    ackWaitMs: options.ackWaitMs,
    maxDeliver: DEFAULT_MAX_DELIVER,
    durableEveryRanges: Math.max(1, Math.ceil(DEFAULT_DURABLE_BYTES / plan.rangeBytes)),
    durableIntervalMs: DEFAULT_DURABLE_INTERVAL_MS,
    ssh: prep.ssh,
    createdAt: Date.now(),
    ...(prep.discard ? { discard: true } : {}),
    ...(options.directIo === 'off' ? {} : { directIo: options.directIo === 'on' ? true : ('auto' as const) }),
    ...(options.verify ? { verify: true } : {}),
  };
}

/** Publishes the ranges `indices` as work items, in batches; `published` marks each range before it goes out. */
export async function publishRanges(bus: JobBus, jobId: string, runTag: string, plan: RangePlan, indices: Iterable<number>, attemptOf: (i: number) => number, stopped: () => boolean = () => false, published?: Uint8Array): Promise<void> {
  let batch: Array<Promise<unknown>> = [];
  for (const item of workItemsOf(jobId, plan, indices, attemptOf)) {
    if (stopped()) break;
    // Marked before it goes out: a completion can only come after.
    if (published) published.fill(1, item.range, item.range + (item.count ?? 1));
    batch.push(bus.publishWork(item, encodeMessage(item), `${workItemId(item)}:${runTag}`));
    if (batch.length >= PUBLISH_BATCH) {
      await Promise.all(batch);
      batch = [];
    }
  }
  await Promise.all(batch);
}

/** Publishes ranges of this run (marked in `run.published`). */
export function publishWork(ctx: TransferContext, run: Run, indices: Iterable<number>, attemptOf: (i: number) => number, stopped: () => boolean = () => false): Promise<void> {
  return publishRanges(run.bus, ctx.prep.jobId, run.runTag, ctx.plan, indices, attemptOf, stopped, run.published);
}

/**
 * The plan is published while the agents start and work: they take ranges as they come,
 * rather than wait for a million-range plan to be stored first. (The ranges missing now:
 * a snapshot, since completions change the done set meanwhile.)
 */
export function publishPlan(ctx: TransferContext, run: Run): void {
  const { state, plan } = ctx;
  let stopPublishing = false;
  const missing = IntervalSet.from(state.done.toArray()).missing(plan.count);
  const publishing = publishWork(ctx, run, missing, (i) => state.attempts.get(i) ?? 0, () => stopPublishing || run.outcome.finished).catch((err: unknown) => run.outcome.fail(toFerryError(err)));
  run.cleanup.push(async () => {
    stopPublishing = true;
    await publishing;
  });
}

/**
 * --limit-rate: the cap over the connections moving data across the job, sent to every agent
 * whenever an agent's count changes it (and kept for agents that join late), and once a
 * second in case a message was lost. Returns the shares (undefined without a cap) and the
 * function that sends the current one.
 */
export function rateSharePublisher(ctx: TransferContext, bus: JobBus, spec: JobSpec): { shares: RateShares | undefined; publishShare: (always?: boolean) => void } {
  const { options, prep } = ctx;
  const shares = options.limitBytesPerSec ? new RateShares(options.limitBytesPerSec) : undefined;
  let sharePublished = spec.connectionBytesPerSec;
  const publishShare = (always = false) => {
    if (!shares) return;
    const share = shares.perConnection(Date.now());
    if (share === sharePublished && !always) return;
    sharePublished = share;
    void bus.control(encodeMessage({ v: MESSAGE_VERSION, job: prep.jobId, type: 'rate', connectionBytesPerSec: share }), 'rate');
  };
  return { shares, publishShare };
}
