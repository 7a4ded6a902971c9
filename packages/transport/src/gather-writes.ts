/**
 * One socket write per turn of the event loop instead of one per SSH packet.
 *
 * ssh2 hands each packet (at most about 32 KiB of channel data) to the socket
 * on its own, so a 1 MiB range piece becomes 32 `write` calls, each of which,
 * on an idle socket, goes straight to the kernel: 32 system calls, 32 trips
 * through TCP, and on loopback up to 32 wake-ups of the receiving sshd. In a
 * loopback push that was the sending thread's largest cost (`writeBuffer`, a
 * third of the coordinator's main thread in a V8 profile), and that thread is
 * the push's critical path on two cores (bench/README.md, "Packets gathered
 * into one write").
 *
 * Corking the socket at its first write of a turn and uncorking it on the next
 * tick hands everything written in between to the kernel as one `writev`.
 * Order is kept (cork only delays), nothing is copied, and a write callback
 * still fires once the kernel has its bytes. The delay is until the current
 * JavaScript returns to the event loop, so it adds no latency that a timer or
 * network round trip would notice.
 */
/** What a gathering socket did (for tests and the benchmark notes). */
export interface GatherStats {
  /** Turns of the event loop in which something was written (each ends in one uncork). */
  turns: number;
  /** `write` calls gathered into those turns. */
  writes: number;
}

interface Corkable {
  write: (...args: unknown[]) => boolean;
  cork: () => void;
  uncork: () => void;
}

const statsOf = new WeakMap<object, GatherStats>();

/** The counters of a client's gathering socket, if it has one. */
export function gatherStats(client: object): GatherStats | undefined {
  return statsOf.get(client);
}

function isCorkable(sock: Partial<Corkable> | undefined): sock is Corkable {
  return sock !== undefined && typeof sock.write === 'function' && typeof sock.cork === 'function' && typeof sock.uncork === 'function';
}

/**
 * Makes the socket of an ssh2 client (its `_sock`) gather each turn's writes
 * into one. Returns the counters, or undefined (nothing changed) when the
 * client has no socket that can be corked.
 */
export function gatherWrites(client: object): GatherStats | undefined {
  const sock = (client as { _sock?: Partial<Corkable> })._sock;
  if (!isCorkable(sock)) return undefined;
  const write = sock.write;
  const stats: GatherStats = { turns: 0, writes: 0 };
  let corked = false;
  const flush = (): void => {
    corked = false;
    // After end() or destroy() this is a no-op: end() has uncorked already.
    sock.uncork();
  };
  sock.write = function (this: unknown, ...args: unknown[]): boolean {
    if (!corked) {
      corked = true;
      stats.turns++;
      sock.cork();
      process.nextTick(flush);
    }
    stats.writes++;
    return write.apply(this, args);
  };
  statsOf.set(client, stats);
  return stats;
}
