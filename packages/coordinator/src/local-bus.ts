/**
 * The control plane in memory (see job-bus.ts), for a job whose only agent
 * runs in the coordinator's own process: the agent's AgentBus and the
 * coordinator's JobBus are two faces of one object. It keeps what the agent
 * relies on from JetStream: work items handed out one at a time with a
 * delivery count and the count left behind them, nak (again after a delay),
 * term, a limit of deliveries, and completions that count as stored once the
 * coordinator has journaled them.
 *
 * Nothing here outlives the process, and nothing needs to: the agent and the
 * coordinator die together, and the journal (fsynced before a completion is
 * acknowledged) is the job's record. A rerun resumes from it as from any run.
 */
import type { AgentEvent, Heartbeat, JobSpec, RangePlan, WorkItem } from '@ferry/core';
import { encodeMessage } from '@ferry/core';
import type { AgentBus, WorkDelivery, WorkFetch } from '@ferry/agent';
import type { CompletionFeed, CompletionMessage, JobBus, Recovered } from './job-bus.js';

interface Queued {
  item: WorkItem;
  data: Uint8Array;
  deliveries: number;
}

/** An unbounded queue with one consumer that iterates it. */
class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      while (this.items.length > 0) yield this.items.shift()!;
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

export class LocalBus implements JobBus {
  readonly kind = 'local' as const;
  readonly join = undefined;
  private spec: JobSpec | undefined;
  private readonly ready: Queued[] = [];
  /** Pending fetches, oldest first: each takes the next item that becomes ready (false: it has ended). */
  private readonly fetchers: Array<{ take: (q: Queued) => boolean; end: () => void }> = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private feed: Channel<CompletionMessage> | undefined;
  /** Completions stored before the coordinator listens for them (there are none in practice). */
  private early: CompletionMessage[] = [];
  private unacked = 0;
  private heartbeat: (data: Uint8Array) => void = () => {};
  private event: (data: Uint8Array) => void = () => {};
  private maxDeliveries: (item: WorkItem | undefined, deliveries: number) => void = () => {};
  private readonly controls = new Set<(data: Uint8Array) => void>();
  private readonly kept = new Map<'stop' | 'streams' | 'rate', Uint8Array>();
  private closed = false;

  async recover(_plan: RangePlan): Promise<Recovered> {
    return { completions: [], mirrored: [] };
  }

  async start(spec: JobSpec): Promise<void> {
    this.spec = spec;
  }

  async publishWork(item: WorkItem, data: Uint8Array, _id: string): Promise<void> {
    this.offer({ item, data, deliveries: 0 });
  }

  /** Hands `q` to the oldest waiting fetch, or queues it. */
  private offer(q: Queued): void {
    if (this.closed) return;
    while (this.fetchers.length > 0) if (this.fetchers.shift()!.take(q)) return;
    this.ready.push(q);
  }

  private deliver(q: Queued): WorkDelivery {
    q.deliveries++;
    let settled = false;
    const settle = () => {
      const first = !settled;
      settled = true;
      return first;
    };
    return {
      data: q.data,
      info: { deliveryCount: q.deliveries, pending: this.ready.length },
      ack: () => void settle(),
      term: () => void settle(),
      working: () => {},
      nak: (delayMs?: number) => {
        if (!settle()) return;
        if (this.spec && q.deliveries >= this.spec.maxDeliver) {
          this.maxDeliveries(q.item, q.deliveries);
          return;
        }
        if (!delayMs) return this.offer(q);
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          this.offer(q);
        }, delayMs);
        this.timers.add(timer);
      },
    };
  }

  private fetchWork(expiresMs: number): WorkFetch {
    const channel = new Channel<WorkDelivery>();
    let open = true;
    const finish = () => {
      if (!open) return false;
      open = false;
      clearTimeout(timer);
      channel.end();
      return true;
    };
    const take = (q: Queued): boolean => {
      if (!open) return false;
      channel.push(this.deliver(q));
      finish();
      return true;
    };
    const timer = setTimeout(finish, expiresMs);
    const next = this.closed ? undefined : this.ready.shift();
    if (next) take(next);
    else if (this.closed) finish();
    else this.fetchers.push({ take, end: finish });
    return { messages: channel, stop: () => void finish() };
  }

  async completions(): Promise<CompletionFeed> {
    const feed = new Channel<CompletionMessage>();
    this.feed = feed;
    for (const m of this.early.splice(0)) feed.push(m);
    return { messages: feed, stop: () => feed.end() };
  }

  private storeCompletions(data: Uint8Array): Promise<void> {
    return new Promise((resolve) => {
      this.unacked++;
      const message: CompletionMessage = {
        data,
        ack: () => {
          this.unacked--;
          resolve();
        },
      };
      if (this.feed) this.feed.push(message);
      else this.early.push(message);
    });
  }

  onHeartbeat(handler: (data: Uint8Array) => void): void {
    this.heartbeat = handler;
  }

  onEvent(handler: (data: Uint8Array) => void): void {
    this.event = handler;
  }

  onMaxDeliveries(handler: (item: WorkItem | undefined, deliveries: number) => void): void {
    this.maxDeliveries = handler;
  }

  async control(data: Uint8Array, key: 'stop' | 'streams' | 'rate'): Promise<void> {
    this.kept.set(key, data);
    for (const c of this.controls) c(data);
  }

  async settle(): Promise<void> {
    for (let i = 0; i < 50 && this.unacked > 0; i++) await new Promise((r) => setTimeout(r, 100));
  }

  async close(): Promise<{ after?: Promise<unknown> }> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const f of this.fetchers.splice(0)) f.end();
    this.feed?.end();
    return {};
  }

  /** The agent's face of this bus. */
  agentBus(): AgentBus {
    const spec = this.spec;
    if (!spec) throw new Error('LocalBus.agentBus() before start()');
    return {
      spec,
      fetchWork: async (expiresMs) => this.fetchWork(expiresMs),
      storeCompletions: (data) => this.storeCompletions(data),
      publishEvent: (event: AgentEvent) => this.event(encodeMessage(event)),
      publishHeartbeat: (hb: Heartbeat) => this.heartbeat(encodeMessage(hb)),
      listenControl: async (onControl) => {
        this.controls.add(onControl);
        for (const data of this.kept.values()) onControl(data);
      },
      disconnectedSince: () => undefined,
      flush: async () => {},
      close: async () => {},
    };
  }
}
