/**
 * NATS connection settings shared by agents and the coordinator: a job's
 * connection must ride out nats-server restarts, so it reconnects forever.
 */
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { FerryError } from '@ferry/core';
import type { NatsClientTls } from '@ferry/core';

export interface BusOptions {
  url: string;
  token?: string | undefined;
  name: string;
  /**
   * The job's credential beyond loopback: the server must prove it holds a
   * certificate of the job's CA, and this client presents its own.
   */
  tls?: NatsClientTls | undefined;
  /** How long the first connection may take. @default 10s */
  timeoutMs?: number;
}

export async function connectBus(options: BusOptions): Promise<NatsConnection> {
  try {
    return await connect({
      servers: options.url,
      ...(options.token ? { token: options.token } : {}),
      // The CA given is the only one trusted: not the system's, not one a server names.
      ...(options.tls ? { tls: { ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key } } : {}),
      name: options.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      timeout: options.timeoutMs ?? 10_000,
      pingInterval: 10_000,
      // Without this, every request (each JetStream publish and ackAck, thousands a second)
      // builds an Error to record where it started: a large part of its CPU. ferry wraps NATS
      // errors in its own, with their own context.
      noAsyncTraces: true,
    });
  } catch (err) {
    throw new FerryError('NATS_UNREACHABLE', `cannot connect to NATS at ${options.url}: ${(err as Error).message}`, { cause: err });
  }
}
