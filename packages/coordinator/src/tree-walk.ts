/**
 * The walk stage of a tree copy: the source tree as a stream of entries,
 * read here for a push (serve's walk.ts `walkTree`) and by the remote
 * helper for a pull (its WALK), so bytes move before the walk ends. The
 * walker only reports entries; what becomes of each is the plan's
 * (tree-plan.ts), cut into steps by core's TreePlanner (`plannerFor`).
 */
import { TreePlanner, resolveTreeThresholds } from '@ferry/core';
import type { ResolvedCopyOptions, WalkItem } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { walkTree } from '@ferry/serve';
import type { TreeContext } from './tree-context.js';
import type { SyncState } from './tree-sync.js';

/** Entries a sync's source walk may find ahead while the destination is still being read (~300 bytes each). */
const SYNC_WALK_AHEAD = 65_536;

/** Core's planner at this run's sizes (--range-size, --batch-files-under, --batch-size). */
export function plannerFor(options: ResolvedCopyOptions): TreePlanner {
  return new TreePlanner(
    resolveTreeThresholds({
      ...(options.rangeBytes ? { rangeBytes: options.rangeBytes } : {}),
      ...(options.batchFilesUnder !== undefined ? { smallFileBytes: options.batchFilesUnder } : {}),
      ...(options.batchBytes !== undefined ? { batchBytes: options.batchBytes } : {}),
    }),
  );
}

/**
 * The source tree as a stream: walked here for a push, by the remote helper
 * for a pull. For a sync, also the destination's index once read (`sync`):
 * the walk starts first and runs ahead, but the first entry is planned only
 * when both are there.
 */
export async function walkSource(ctx: Pick<TreeContext, 'target' | 'meta' | 'request'>, control: () => Promise<RemoteConnection>, syncPending?: Promise<SyncState>): Promise<{ items: AsyncIterable<WalkItem>; sync?: SyncState }> {
  const { target, meta, request } = ctx;
  const walk =
    target.direction === 'pull'
      ? (await control()).walk(target.sourceRoot, meta.walk)
      : walkTree(target.sourceRoot, { ...(request.signal ? { signal: request.signal } : {}), ...(meta.local ? { meta: meta.local } : {}), ...(syncPending ? { highWater: SYNC_WALK_AHEAD } : {}) });
  if (!syncPending) return { items: walk };
  // A sync: the source walk starts now and runs ahead (up to SYNC_WALK_AHEAD entries here, a
  // pull's up to the SSH window) while the destination's walk is read; planning waits for that.
  // Two items asked for: the walker reports the root first and starts reading directories on the next request.
  const it = walk[Symbol.asyncIterator]();
  const primed = [it.next()];
  primed.push(primed[0]!.then((r) => (r.done ? r : it.next())));
  for (const p of primed) p.catch(() => {});
  let sync: SyncState;
  try {
    sync = await syncPending;
  } catch (err) {
    await it.return?.();
    throw err;
  }
  const items: AsyncIterable<WalkItem> = { [Symbol.asyncIterator]: () => ({ next: () => primed.shift() ?? it.next(), return: async () => (await it.return?.()) ?? { done: true, value: undefined } }) };
  return { items, sync };
}
