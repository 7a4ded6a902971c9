/**
 * @ferry/agent/nats: the agent package's NATS client, for the coordinator's
 * side of the control plane (connected the same way as the agents). Apart
 * from the package's index so that importing the agent (agent 0 runs in the
 * coordinator's process) does not load NATS: a one-agent copy never uses it.
 *
 * ```ts
 * const nc = await connectBus({ url, token, name: 'coordinator' });
 * ```
 */
export { connectBus } from './bus.js';
export type { BusOptions } from './bus.js';
export { JetStreamPublisher, PublishError, pubAckError } from './publisher.js';
