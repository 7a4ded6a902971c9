/**
 * Which remote host each connection slot of a job uses, and when it may first
 * connect. Slots are numbered across the job: agent `index` owns slots
 * index x streams .. index x streams + streams - 1. Both the agent (when it
 * connects) and the coordinator (when it tells warm agents what to open ahead
 * of the job) use these, so they agree.
 */

/** First connections go in waves of this many... */
export const CONNECT_WAVE_SIZE = 8;
/** ...this far apart, so sshd's MaxStartups (10 unauthenticated connections by default) is not tripped. */
export const CONNECT_WAVE_MS = 500;

/** Number of slot `slot` of agent `index` across the whole job. */
export function globalSlot(index: number, slot: number, streams: number): number {
  return index * streams + slot;
}

/**
 * Index of the host slot `slot` of agent `index` connects to first, or
 * undefined when a cap of `maxPerHost` connections per host (0: none) leaves
 * the slot idle: slot g uses host g mod H, so slots g >= maxPerHost x H are idle.
 */
export function slotHost(index: number, slot: number, streams: number, hostCount: number, maxPerHost: number): number | undefined {
  const global = globalSlot(index, slot, streams);
  if (maxPerHost > 0 && global >= maxPerHost * hostCount) return undefined;
  return global % hostCount;
}

/** Milliseconds slot `slot` of agent `index` waits before its first connection. */
export function slotStaggerMs(index: number, slot: number, streams: number): number {
  return Math.floor((globalSlot(index, slot, streams) % 256) / CONNECT_WAVE_SIZE) * CONNECT_WAVE_MS;
}
