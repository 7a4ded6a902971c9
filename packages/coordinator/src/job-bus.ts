/**
 * The coordinator's side of a job's control plane, behind one interface:
 * work items out, completions in (each acknowledged once journaled),
 * heartbeats and events from the agents, control messages to them. Two kinds
 * carry it: NATS JetStream (nats-job-bus.ts), whenever agents run in other
 * processes or on other nodes, and memory (local-bus.ts), for a job whose only
 * agent runs in the coordinator's own process: no nats-server to start, no
 * streams to create, no round trip per completion.
 */
import type { Completion, JobSpec, NatsClientTls, RangePlan, WorkItem } from '@ferry/core';

/**
 * Range hashes are mirrored to KV in blocks of this many ranges. Here, not in
 * nats-job-bus.ts, so that the journal's code does not load NATS with it.
 */
export const KV_HASH_BLOCK = 4096;

/** A completion message as it arrived; `ack()` once its completions are handled (journaled). */
export interface CompletionMessage {
  readonly data: Uint8Array;
  ack(): void;
}

export interface CompletionFeed {
  readonly messages: AsyncIterable<CompletionMessage>;
  /** Ends the feed: the iteration finishes after what has arrived. */
  stop(): void;
}

/** What an earlier run left that its journal may lack (a NATS job only). */
export interface Recovered {
  /** Completions its agents stored and its coordinator never journaled. */
  completions: Completion[];
  /** Ranges its KV mirror records as done, with their hashes. */
  mirrored: Array<[number, string]>;
}

export interface JobBus {
  readonly kind: 'nats' | 'local';
  /** Where agents in other processes join (NATS), undefined for a local bus. */
  readonly join: BusJoin | undefined;
  /** What an earlier run of the job left in the control plane. */
  recover(plan: RangePlan): Promise<Recovered>;
  /** Creates the job's queues and stores its spec; nothing of an earlier run is kept. */
  start(spec: JobSpec): Promise<void>;
  /** Queues one work item; `id` makes a repeated publish of the same item harmless. (A tree's batch has no WorkItem: NATS carries `data` alone.) */
  publishWork(item: WorkItem | undefined, data: Uint8Array, id: string): Promise<void>;
  completions(): Promise<CompletionFeed>;
  onHeartbeat(handler: (data: Uint8Array) => void): void;
  onEvent(handler: (data: Uint8Array) => void): void;
  /** A work item was handed out `deliveries` times without being settled (agents crashing on it); `data` as stored, where there is one. */
  onMaxDeliveries(handler: (item: WorkItem | undefined, deliveries: number, data?: Uint8Array) => void): void;
  /**
   * Sends a control message to every agent; `key` also keeps it for agents
   * that listen later ('stop', the current 'streams' and 'rate'). Best
   * effort: it never rejects (a bus closing takes no more messages).
   */
  control(data: Uint8Array, key: 'stop' | 'streams' | 'rate'): Promise<void>;
  /** Waits (a few seconds at most) until every completion stored so far has been handed over and acknowledged. */
  settle(): Promise<void>;
  /**
   * Keeps a value beside the job (NATS: its KV bucket), where a later run finds
   * it if the journal was lost; absent where nothing outlives the coordinator
   * (a local bus: the journal is the only record).
   */
  readonly keep?: (key: string, value: Uint8Array) => Promise<void>;
  /**
   * Closes the control plane. `journaled`: every range is in the journal, so
   * nothing the control plane holds is needed again (an embedded server's store
   * can go). Resolves with what may finish after (`after`: a server's exit).
   */
  close(journaled: boolean): Promise<{ after?: Promise<unknown> }>;
}

/** How agents in other processes join a job's NATS: its URL, token and, beyond loopback, TLS credential. */
export interface BusJoin {
  url: string;
  token: string | undefined;
  tls?: NatsClientTls;
}
