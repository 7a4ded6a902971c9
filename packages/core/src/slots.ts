/**
 * Which remote host each connection slot of a job uses, and when it may first
 * connect. Slots are numbered across the job, interleaved: slot `s` of agent
 * `index` among `agents` is number s x agents + index, so the first slots of
 * every agent come first, whatever number of slots each uses (agents start
 * with few and the coordinator's stream tuning adds more). Both the agent
 * (when it connects) and the coordinator (when it tells warm agents what to
 * open ahead of the job) use these, so they agree.
 */

/** First connections go in waves of this many... */
export const CONNECT_WAVE_SIZE = 8;
/** ...this far apart, so sshd's MaxStartups (10 unauthenticated connections by default) is not tripped. */
export const CONNECT_WAVE_MS = 500;

/** Number of slot `slot` of agent `index` (of `agents`) across the whole job. */
export function globalSlot(index: number, slot: number, agents: number): number {
  return slot * Math.max(1, agents) + index;
}

/**
 * Index of the host slot `slot` of agent `index` connects to first, or
 * undefined when a cap of `maxPerHost` connections per host (0: none) leaves
 * the slot idle: slot g uses host g mod H, so slots g >= maxPerHost x H are idle.
 */
export function slotHost(index: number, slot: number, agents: number, hostCount: number, maxPerHost: number): number | undefined {
  const global = globalSlot(index, slot, agents);
  if (maxPerHost > 0 && global >= maxPerHost * hostCount) return undefined;
  return global % hostCount;
}

/** Milliseconds slot `slot` of agent `index` waits before its first connection. */
export function slotStaggerMs(index: number, slot: number, agents: number): number {
  return Math.floor((globalSlot(index, slot, agents) % 256) / CONNECT_WAVE_SIZE) * CONNECT_WAVE_MS;
}
