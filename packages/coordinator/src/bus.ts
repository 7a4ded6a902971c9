/**
 * What the coordinator uses of NATS at run time, in a module of its own so
 * that loading it (~60 ms of the coordinator's start-up) overlaps the SSH
 * connection to the remote host instead of coming before it: the first
 * connection's login and helper start leave this process waiting. See
 * runCopy and docs/architecture.md ("A copy's fixed cost, step by step").
 */
export { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, jetstream, jetstreamManager } from '@nats-io/jetstream';
export { Kvm } from '@nats-io/kv';
export { nanos } from '@nats-io/transport-node';
export { JetStreamPublisher, connectBus } from '@ferry/agent/nats';
