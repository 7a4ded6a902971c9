/**
 * Runs `fn` on every item with at most `limit` calls in flight at once; resolves
 * when all have settled. `fn` must not throw (it handles its own errors): a
 * rejection is passed on only after every other call has settled.
 */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  if (failure) throw failure.err;
}

/**
 * The listener limit for an abort signal that `connections` connection
 * attempts share: connectRemote listens on it until it returns, one listener
 * per attempt in flight, and Node warns of a leak past 10 (seen with 16
 * streams connecting at once). Twice the number leaves room for other users
 * of the signal while still catching a real leak.
 */
export function signalListeners(connections: number): number {
  return Math.max(10, 2 * connections);
}
