/**
 * `setupJobStreams` for the package's users (tests that drive a job's
 * streams by hand), loading NATS only when called: the package's index must
 * not load it, or every command that imports the coordinator pays for it
 * (~70 ms of CPU on the test machine), a one-agent copy included, which
 * never speaks NATS (local-bus.ts).
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { JobSpec } from '@ferry/core';

/** Streams, consumers and KV bucket of a run (nats-job-bus.ts). */
export async function setupJobStreams(nc: NatsConnection, jsm: JetStreamManager, spec: JobSpec): Promise<KV> {
  return (await import('./nats-job-bus.js')).setupJobStreams(nc, jsm, spec);
}
