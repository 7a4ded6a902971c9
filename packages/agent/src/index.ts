/**
 * @ferry/agent: the worker that moves ranges. `ferry agent` (started by a
 * launcher) runs `runAgent()`; it exits when the coordinator says stop.
 *
 * ```ts
 * await runAgent({ jobId, natsUrl: 'nats://10.0.0.1:4222', natsToken });
 * ```
 */
export { runAgent } from './agent.js';
export type { AgentBus, WorkDelivery, WorkFetch } from './agent-bus.js';
export { Preconnected } from './preconnect.js';
export type { AgentOptions, AgentSummary } from './agent.js';
export { pushRange, pullRange } from './pump.js';
export type { RangeJob, RangeResult } from './pump.js';
export { pushTransfer, stopBeforeRead } from './tree-push.js';
export { pullTransfer, destDirProblem } from './tree-pull.js';
export type { Pace, WireBatch } from './tree-push.js';
// NATS's client (connectBus, JetStreamPublisher) is in '@ferry/agent/nats' (nats.ts).
export type { BusOptions } from './bus.js';
