/**
 * What an agent needs of the control plane, behind one small interface: the
 * job's spec, work items one at a time, durable storage for completions, and
 * fire-and-forget events, heartbeats and control messages. Two kinds carry it:
 * NATS JetStream (nats-agent-bus.ts), for agents in their own processes and on
 * other nodes, and an in-memory one the coordinator gives the agent that runs
 * in its own process when it is the job's only agent (coordinator's
 * local-bus.ts): such a job needs no nats-server at all.
 */
import type { AgentEvent, Heartbeat, JobSpec } from '@ferry/core';
import type { WorkMessage } from './work.js';

/** One delivered work item, with what JetStream says of it. */
export interface WorkDelivery extends WorkMessage {
  /** The encoded work item (core's encodeMessage). */
  readonly data: Uint8Array;
  readonly info: {
    /** How often it has been handed out, this time included. */
    readonly deliveryCount: number;
    /** Items left undelivered behind it (0: the queue ran dry). */
    readonly pending: number;
  };
}

/** An open request for work: it yields at most one item, and ends when that came or it expired. */
export interface WorkFetch {
  readonly messages: AsyncIterable<WorkDelivery>;
  /** Ends the request early (what arrives after is handed back). */
  stop(): void;
}

export interface AgentBus {
  /** The job, as the coordinator published it. */
  readonly spec: JobSpec;
  /** Asks for one work item, waiting at most `expiresMs`. */
  fetchWork(expiresMs: number): Promise<WorkFetch>;
  /** Stores a completion message (one completion or a batch); resolves once it is stored. */
  storeCompletions(data: Uint8Array): Promise<void>;
  publishEvent(event: AgentEvent): void;
  publishHeartbeat(heartbeat: Heartbeat): void;
  /**
   * Calls `onControl` with every control message from now on, and with a stop
   * the coordinator sent before this agent listened (a short job).
   */
  listenControl(onControl: (data: Uint8Array) => void): Promise<void>;
  /** Since when the control plane has been unreachable, or undefined while it is reachable. */
  disconnectedSince(): number | undefined;
  /** Resolves once everything sent so far (acks included) is on its way. */
  flush(): Promise<void>;
  close(): Promise<void>;
}
