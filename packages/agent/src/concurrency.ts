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

/** A worker pulls up to this many bytes of ranges at a time... */
export const PREFETCH_BYTES = 16 * 1024 * 1024;
/** ...and never more than this many ranges. */
export const MAX_PREFETCH = 16;

/**
 * Work items one worker pulls at once: one for ranges of 16 MiB or more (the
 * worker takes a range when it is ready for it, so fast workers take more), and
 * up to 16 for smaller ones, whose pull request would otherwise cost more than
 * moving them. A worker holds at most 16 MiB it has not started.
 */
export function prefetchCount(rangeBytes: number): number {
  if (!(rangeBytes > 0)) return 1;
  return Math.max(1, Math.min(MAX_PREFETCH, Math.floor(PREFETCH_BYTES / rangeBytes)));
}
