/**
 * The collect stage's other half (collect.ts takes the completions): what the
 * agents report besides ranges done. Heartbeats (progress, stream tuning,
 * rate shares), events (started, errors), stalls (a work item handed out
 * until its deliveries ran out), and once a second the progress event,
 * status.json and, where the bus keeps one, the journal's mirror.
 */
import { FerryError, MAX_AGENTS, MESSAGE_VERSION, StreamTuner, decodeAgentEvent, decodeHeartbeat, encode, encodeMessage, formatRate, splitWorkItem } from '@ferry/core';
import type { WorkItem } from '@ferry/core';
import { rangeBytesOf, sleep } from './file-context.js';
import type { Run, TransferContext } from './file-context.js';
import { KV_HASH_BLOCK } from './job-bus.js';

/** Agent names a run keeps (a job has at most MAX_AGENTS agents; names beyond are not ours). */
const MAX_KNOWN_AGENTS = 4 * MAX_AGENTS;

/** Listens to the agents' heartbeats and events, and to work items whose deliveries ran out. */
export function watchAgentReports(ctx: TransferContext, run: Run): void {
  run.bus.onHeartbeat((data: Uint8Array) => {
    try {
      onHeartbeat(ctx, run, data);
    } catch {
      // a stray or foreign message: ignore
    }
  });
  run.bus.onEvent((data: Uint8Array) => {
    try {
      onAgentEvent(ctx, run, data);
    } catch {
      // ignore
    }
  });
  run.bus.onMaxDeliveries((item: WorkItem | undefined, deliveries: number) => {
    void stalled(ctx, run, item, deliveries).catch(() => {});
  });
}

function knowAgent(run: Run, agent: unknown): void {
  if (typeof agent === 'string' && agent.length > 0 && agent.length <= 256 && run.knownAgents.size < MAX_KNOWN_AGENTS) run.knownAgents.add(agent);
}

function onHeartbeat(ctx: TransferContext, run: Run, data: Uint8Array): void {
  const hb = decodeHeartbeat(data, ctx.prep.jobId);
  knowAgent(run, hb.agent);
  const prev = run.heartbeats.get(hb.agent);
  const rate = prev && hb.at > prev.at ? ((hb.bytes - prev.bytes) * 1000) / (hb.at - prev.at) : 0;
  run.heartbeats.set(hb.agent, {
    node: hb.node,
    bytes: hb.bytes,
    inFlight: hb.inFlight,
    pending: hb.pending ?? 0,
    errors: hb.errors,
    rate: prev ? 0.5 * prev.rate + 0.5 * rate : rate,
    connected: hb.connected ?? 0,
    utilization: hb.utilization,
    idleCores: hb.idleCores,
    at: hb.at,
    seenAt: Date.now(),
  });
  if (run.shares && typeof hb.active === 'number') {
    run.shares.report(hb.agent, hb.active, Date.now());
    run.publishShare();
  }
}

function onAgentEvent(ctx: TransferContext, run: Run, data: Uint8Array): void {
  const ev = decodeAgentEvent(data, ctx.prep.jobId);
  if (ev.type === 'agent.started') knowAgent(run, ev.agent);
  if (ev.type === 'agent.started') ctx.emit({ type: 'agent.start', agent: ev.agent, node: ev.node, pid: ev.pid, index: ev.index });
  if (ev.type === 'agent.active' && run.shares && typeof ev.active === 'number') {
    run.shares.report(ev.agent, ev.active, Date.now());
    run.publishShare();
  }
  if (ev.type === 'agent.error') {
    ctx.emit({ type: 'agent.error', agent: ev.agent, code: ev.error.code, message: ev.error.message, fatal: ev.fatal });
    if (ev.fatal) run.lastAgentError = FerryError.fromData(ev.error);
  }
}

/** A range whose deliveries ran out without any agent reporting why (agents crashing on it). */
async function stalled(ctx: TransferContext, run: Run, item: WorkItem | undefined, deliveries: number): Promise<void> {
  let ranges: WorkItem[] = [];
  try {
    ranges = item ? splitWorkItem(item, ctx.plan.rangeBytes) : [];
  } catch {
    // malformed: report with what there is
  }
  // Give the agent's own report (with the cause) a moment to arrive first.
  await sleep(2000);
  if (ranges.length > 0 && ranges.every((r) => ctx.state.done.has(r.range))) return;
  const count = item?.count ?? 1;
  const what = !item ? 'range ?' : `${count > 1 ? `ranges ${item.range}-${item.range + count - 1}` : `range ${item.range}`} (bytes ${item.offset}-${item.offset + item.length})`;
  run.outcome.fail(
    new FerryError(
      'RANGE_FAILED',
      `${what} ${count > 1 ? 'were' : 'was'} handed out ${deliveries} times without completing (agents crashing or losing their connections on it): see the agents' messages with -v`,
      item ? { range: item.range } : {},
    ),
  );
}

/** Progress and status, once a second; the journal's mirror too where the bus keeps one. */
export class Progress {
  private lastBytes = 0;
  private lastAt = Date.now();
  private rate = 0;
  private kvRuns = '';
  /** Stream tuning: the tuner watches the rate as connections are added (core's tuner.ts). */
  private readonly tuner: StreamTuner | undefined;

  constructor(
    private readonly ctx: TransferContext,
    private readonly run: Run,
  ) {
    const { options } = ctx;
    this.tuner = options.tuneStreams ? new StreamTuner({ first: options.firstStreams, max: options.streams, agents: ctx.agents }) : undefined;
    ctx.shape.streams = options.firstStreams;
  }

  /** Ticks once a second until the transfer's cleanup. */
  start(): void {
    const timer = setInterval(this.tick, 1000);
    this.run.cleanup.push(() => clearInterval(timer));
  }

  readonly tick = (): void => {
    const { ctx, run } = this;
    const { plan, state } = ctx;
    let moved = 0;
    let busy = 0;
    let inFlight = 0;
    let errors = 0;
    for (const hb of run.heartbeats.values()) {
      moved += hb.bytes;
      inFlight += hb.inFlight;
      errors += hb.errors;
      if (hb.inFlight > 0) busy++;
    }
    const now = Date.now();
    const instant = ((moved - this.lastBytes) * 1000) / Math.max(1, now - this.lastAt);
    this.rate = this.rate === 0 ? instant : 0.7 * this.rate + 0.3 * instant;
    this.lastBytes = moved;
    this.lastAt = now;
    this.tune(now, moved);
    const rate = this.rate;
    const done = rangeBytesOf(plan, state.done);
    const shown = Math.min(plan.fileBytes, Math.max(done, state.resumedBytes + moved));
    ctx.emit({
      type: 'progress',
      bytes: shown,
      total: plan.fileBytes,
      rangesDone: state.done.size,
      ranges: plan.count,
      rate,
      etaSeconds: rate > 0 ? (plan.fileBytes - shown) / rate : null,
      agentsBusy: busy,
      agents: ctx.agents,
    });
    void ctx.saveStatus({
      rangesInFlight: inFlight,
      rangesPending: Math.max(0, plan.count - state.done.size - inFlight),
      rate,
      errors,
      agents: [...run.heartbeats.entries()].map(([agent, hb]) => ({ agent, node: hb.node, bytes: hb.bytes, inFlight: hb.inFlight, errors: hb.errors, rate: hb.rate })),
      nodes: this.perNode(),
      hosts: this.perHost(now),
    });
    void this.mirror();
    run.publishShare(true);
  };

  private tune(now: number, moved: number): void {
    const { ctx, run, tuner } = this;
    if (!tuner || run.outcome.finished) return;
    let connected = 0;
    let utilization: number | undefined;
    let idleCores: number | undefined;
    for (const hb of run.heartbeats.values()) {
      connected += hb.connected;
      if (hb.utilization !== undefined) utilization = Math.max(utilization ?? 0, hb.utilization);
      if (hb.idleCores !== undefined) idleCores = Math.min(idleCores ?? Infinity, hb.idleCores);
    }
    const next = tuner.sample({ at: now, bytes: moved, connected, ...(utilization === undefined ? {} : { utilization }), ...(idleCores === undefined ? {} : { idleCores }) });
    if (next === undefined) return;
    const rates = tuner.steps.map((step) => `${step.streams}: ${formatRate(step.rate)}`).join(', ');
    ctx.emit({ type: 'log', message: `streams per agent ${ctx.shape.streams} -> ${next} (measured ${rates})` });
    ctx.shape.streams = next;
    void run.bus.control(encodeMessage({ v: MESSAGE_VERSION, job: ctx.prep.jobId, type: 'streams', streams: next }), 'streams');
  }

  private perNode(): Array<{ node: string; agents: number; bytes: number; rate: number }> {
    const nodes = new Map<string, { node: string; agents: number; bytes: number; rate: number }>();
    for (const hb of this.run.heartbeats.values()) {
      const n = nodes.get(hb.node) ?? { node: hb.node, agents: 0, bytes: 0, rate: 0 };
      n.agents++;
      n.bytes += hb.bytes;
      n.rate += hb.rate;
      nodes.set(hb.node, n);
    }
    return [...nodes.values()];
  }

  /** Bytes per remote host, and its rate over the last 10 s of durable ranges. */
  private perHost(now: number): Array<{ host: string; bytes: number; rate: number }> {
    const { hostBytes, hostRecent } = this.run;
    return [...hostBytes.entries()].map(([host, bytes]) => {
      const recent = (hostRecent.get(host) ?? []).filter((x) => now - x.at < 10_000);
      hostRecent.set(host, recent);
      return { host, bytes, rate: recent.reduce((n, x) => n + x.bytes, 0) / 10 };
    });
  }

  /** Keeps the done set and changed hash blocks beside the job (NATS: its KV bucket). */
  async mirror(): Promise<void> {
    const { bus, dirtyBlocks } = this.run;
    const { state } = this.ctx;
    if (!bus.keep) return;
    const runs = JSON.stringify(state.done.toArray());
    if (runs !== this.kvRuns) {
      this.kvRuns = runs;
      await bus.keep('done', encode({ runs: state.done.toArray(), at: Date.now() }));
    }
    for (const b of [...dirtyBlocks]) {
      dirtyBlocks.delete(b);
      await bus.keep(`hashes.${b}`, encode(state.hashes.slice(b * KV_HASH_BLOCK, (b + 1) * KV_HASH_BLOCK)));
    }
  }
}
