/**
 * The plan stage of a tree copy (tree-plan.ts) on its own: entries in, the
 * send stage's calls and the run's counts out. The sink records what it is
 * handed; no connection, no file.
 */
import { FerryError, resolveCopyOptions } from '@ferry/core';
import type { ErrorData, TreeEntry } from '@ferry/core';
import { describe, expect, it } from 'vitest';
import { SyncRecords } from '../src/sync-manifest.js';
import type { Counters, TreeContext } from '../src/tree-context.js';
import { DoneEntries } from '../src/tree-journal.js';
import type { MetaPlan } from '../src/tree-meta.js';
import { TreePlan } from '../src/tree-plan.js';
import type { TreeTarget } from '../src/tree-target.js';

const entry = (path: string, kind: TreeEntry['kind'] = 'file', extra: Partial<TreeEntry> = {}): TreeEntry => ({
  path,
  kind,
  size: kind === 'file' ? 100 : 0,
  mode: kind === 'dir' ? 0o755 : 0o644,
  uid: 1000,
  gid: 1000,
  mtimeMs: 1_700_000_000_000,
  atimeMs: 1_700_000_000_000,
  dev: 1,
  ino: path.length + 10,
  nlink: 1,
  ...extra,
});

/** A plan over an empty journal (or `done`), with a sink and failure list that record what they get. */
function planOf(done = new DoneEntries(), stripeFilesOver = 1000) {
  const sent: string[][] = [];
  const failed: Array<{ path: string; error: ErrorData }> = [];
  let dirBatches = 0;
  const counters: Counters = { files: 0, bytes: 0, resumedFiles: 0, resumedBytes: 0, dirs: 0, symlinks: 0, hardlinks: 0, failed: 0, skipped: 0, unchanged: 0, deleted: 0, attributes: 0 };
  const meta: MetaPlan = { owners: false, names: false, xattrs: false, exact: undefined, walk: {}, local: undefined };
  const ctx: TreeContext = {
    request: { source: '/src', destination: 'host:/dst', agentCommand: [] },
    options: { ...resolveCopyOptions({}), stripeFilesOver },
    target: { sourceLabel: '/src' } as TreeTarget,
    algorithm: 'xxh3',
    umask: 0o022,
    meta,
    counters,
    emit: () => {},
    fail: (path, error) => failed.push({ path, error }),
    checkStop: () => {},
    sourcePath: (p) => `/src/${p}`,
    destPath: (p) => `/dst/${p}`,
  };
  const plan = new TreePlan(ctx, { done, tornBytes: 0 }, new SyncRecords('xxh3'), {
    send: async (entries) => {
      sent.push(entries.map((e) => e.path));
    },
    makeDirs: async () => {
      dirBatches++;
    },
  });
  return { plan, sent, failed, counters, dirBatches: () => dirBatches };
}

describe('the plan stage of a tree copy', () => {
  it('refuses an entry the walk reported before its directory, ending the copy with PROTOCOL', () => {
    const { plan } = planOf();
    expect(plan.admit(entry('', 'dir'))).toBe(true);
    let thrown: unknown;
    try {
      plan.admit(entry('d/x.txt'));
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(FerryError);
    expect(thrown).toMatchObject({ code: 'PROTOCOL', message: 'the walk of /src reported d/x.txt before its directory: not copied' });
  });

  it('sends what the journal does not hold unchanged, counts the rest as resumed, and keeps big files for the end', async () => {
    const done = new DoneEntries();
    const { plan: probe } = planOf();
    const kept = entry('a.txt');
    done.set('a.txt', kept.size, kept.mtimeMs, kept.ino, { a: probe.digestOf(kept) });
    // Same size and mtime, but another inode: the file was replaced since.
    const replaced = entry('b.txt');
    done.set('b.txt', replaced.size, replaced.mtimeMs, replaced.ino + 1, { a: probe.digestOf(replaced) });
    const { plan, sent, counters } = planOf(done);
    await plan.publish({ type: 'batch', entries: [kept, replaced, entry('c.txt')].map((e, id) => ({ id, entry: e })), bytes: 300 });
    const big = entry('big.bin', 'file', { size: 5000 });
    await plan.publish({ type: 'file', id: 4, entry: big, rangeBytes: 1000, ranges: 5 });
    expect(sent).toEqual([['b.txt', 'c.txt']]);
    expect(counters).toMatchObject({ resumedFiles: 1, resumedBytes: 100 });
    expect(plan.huge.map((e) => e.path)).toEqual(['big.bin']);
  });

  it('holds directories until the send stage takes them, and lists what it skips', async () => {
    const { plan, counters, dirBatches } = planOf();
    await plan.publish({ type: 'mkdir', id: 0, entry: entry('', 'dir') });
    await plan.publish({ type: 'mkdir', id: 1, entry: entry('d', 'dir') });
    await plan.publish({ type: 'skip', id: 2, entry: entry('d/fifo', 'special'), reason: 'fifo' });
    expect(dirBatches()).toBe(0);
    expect(plan.takePendingDirs().map((e) => e.path)).toEqual(['', 'd']);
    expect(plan.takePendingDirs()).toEqual([]);
    expect(counters.skipped).toBe(1);
    expect(plan.skips).toEqual([JSON.stringify({ path: 'd/fifo', reason: 'fifo' })]);
  });

  it('fails what lands under a directory that could not be made, below it too, and makes no link there', async () => {
    const { plan, failed } = planOf();
    for (const [id, d] of ['', 'd', 'ok'].entries()) {
      plan.admit(entry(d, 'dir'));
      await plan.publish({ type: 'mkdir', id, entry: entry(d, 'dir') });
    }
    expect([...plan.dirsToFinish().keys()]).toEqual(['', 'd', 'ok']);
    await plan.publish({ type: 'hardlink', id: 3, entry: entry('d/link', 'hardlink', { target: 'ok/first' }) });
    plan.dirNotMade('d');
    expect(plan.admit(entry('d/x.txt'))).toBe(false);
    expect(plan.admit(entry('d/sub', 'dir'))).toBe(false);
    expect(plan.admit(entry('d/sub/y.txt'))).toBe(false);
    expect(plan.admit(entry('ok/z.txt'))).toBe(true);
    expect(plan.linksToMake()).toEqual([]);
    expect(failed.map((f) => [f.path, f.error.code])).toEqual([
      ['d/x.txt', 'DEST_CONFLICT'],
      ['d/sub', 'DEST_CONFLICT'],
      ['d/sub/y.txt', 'DEST_CONFLICT'],
      ['d/link', 'DEST_CONFLICT'],
    ]);
    expect(failed[0]!.error.message).toBe('/dst/d/x.txt was not made: its directory /dst/d could not be');
    expect(failed[2]!.error.message).toBe('/dst/d/sub/y.txt was not made: its directory /dst/d/sub could not be');
    expect(plan.dirsToFinish().has('d')).toBe(false);
  });
});
