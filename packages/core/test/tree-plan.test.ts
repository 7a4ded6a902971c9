import { describe, expect, it } from 'vitest';
import { DEFAULT_BATCH_BYTES, DEFAULT_SMALL_FILE_BYTES, MiB, TreePlanner, fileStepRanges, finishOrder, resolveTreeThresholds } from '@ferry/core';
import type { TreeEntry, TreeStep } from '@ferry/core';

let ino = 100;
function entry(path: string, kind: TreeEntry['kind'], size = 0, extra: Partial<TreeEntry> = {}): TreeEntry {
  return { path, kind, size, mode: kind === 'dir' ? 0o755 : 0o644, uid: 1000, gid: 1000, mtimeMs: 1e12, atimeMs: 1e12, dev: 1, ino: ino++, nlink: 1, ...extra };
}

function planAll(entries: TreeEntry[], thresholds = resolveTreeThresholds({}), asRoot = false): TreeStep[] {
  const planner = new TreePlanner(thresholds, { asRoot });
  const steps = entries.flatMap((e) => planner.add(e));
  return [...steps, ...planner.finish()];
}

describe('resolveTreeThresholds', () => {
  it('fills the defaults', () => {
    expect(resolveTreeThresholds({})).toEqual({ smallFileBytes: DEFAULT_SMALL_FILE_BYTES, batchBytes: DEFAULT_BATCH_BYTES, batchEntries: 4096 });
  });
  it('caps the small-file limit at the batch size', () => {
    expect(resolveTreeThresholds({ smallFileBytes: 100 * MiB, batchBytes: 8 * MiB }).smallFileBytes).toBe(8 * MiB);
  });
  it('refuses nonsense with the field named', () => {
    expect(() => resolveTreeThresholds({ batchEntries: 0 })).toThrow(/batch entry count must be a positive integer, got 0/);
    expect(() => resolveTreeThresholds({ batchBytes: 1.5 })).toThrow(/batch size/);
  });
});

describe('TreePlanner', () => {
  it('makes directories at once, batches small files and cuts big ones into ranges', () => {
    const steps = planAll([entry('', 'dir'), entry('a', 'file', 10), entry('sub', 'dir'), entry('sub/big', 'file', 100 * MiB), entry('sub/b', 'file', 20), entry('sub/l', 'symlink', 0, { target: '../a' })]);
    expect(steps.map((s) => s.type)).toEqual(['mkdir', 'mkdir', 'file', 'batch']);
    const batch = steps[3] as Extract<TreeStep, { type: 'batch' }>;
    expect(batch.entries.map((e) => e.entry.path)).toEqual(['a', 'sub/b', 'sub/l']);
    expect(batch.bytes).toBe(30);
    const big = steps[2] as Extract<TreeStep, { type: 'file' }>;
    expect(big.rangeBytes).toBe(16 * MiB);
    expect(big.ranges).toBe(7);
    expect(fileStepRanges(big).reduce((n, r) => n + r.length, 0)).toBe(100 * MiB);
  });

  it('numbers entries in walk order', () => {
    const steps = planAll([entry('', 'dir'), entry('x', 'file', 1), entry('d', 'dir')]);
    expect(steps[0]).toMatchObject({ type: 'mkdir', id: 0 });
    expect(steps[1]).toMatchObject({ type: 'mkdir', id: 2 });
    expect((steps[2] as Extract<TreeStep, { type: 'batch' }>).entries[0]!.id).toBe(1);
  });

  it('closes a batch at its byte limit, and starts a new one for a file that would overflow it', () => {
    const t = resolveTreeThresholds({ smallFileBytes: 4 * MiB, batchBytes: 10 * MiB });
    const files = Array.from({ length: 7 }, (_, i) => entry(`f${i}`, 'file', 3 * MiB));
    const batches = planAll(files, t).filter((s) => s.type === 'batch') as Array<Extract<TreeStep, { type: 'batch' }>>;
    expect(batches.map((b) => b.entries.length)).toEqual([3, 3, 1]);
    for (const b of batches) expect(b.bytes).toBeLessThanOrEqual(10 * MiB);
    expect(batches.flatMap((b) => b.entries.map((e) => e.entry.path))).toEqual(files.map((f) => f.path));
  });

  it('closes a batch at its entry limit; empty files and links count as entries', () => {
    const t = resolveTreeThresholds({ batchEntries: 3 });
    const steps = planAll([entry('e1', 'file', 0), entry('e2', 'file', 0), entry('s', 'symlink', 0, { target: 'x' }), entry('e3', 'file', 0)], t);
    expect(steps.map((s) => (s.type === 'batch' ? s.entries.length : s.type))).toEqual([3, 1]);
  });

  it('holds only the open batch: a million small files come out as they are planned', () => {
    const planner = new TreePlanner(resolveTreeThresholds({}));
    let out = 0;
    let maxOpen = 0;
    let open = 0;
    for (let i = 0; i < 1_000_000; i++) {
      const steps = planner.add(entry(`d/f${i}`, 'file', 1000));
      open++;
      for (const s of steps) if (s.type === 'batch') {
        out += s.entries.length;
        open -= s.entries.length;
      }
      maxOpen = Math.max(maxOpen, open);
    }
    for (const s of planner.finish()) if (s.type === 'batch') out += s.entries.length;
    expect(out).toBe(1_000_000);
    expect(maxOpen).toBeLessThanOrEqual(4096);
  });

  it('puts a file of exactly the small-file limit into ranges, one byte less into a batch', () => {
    const t = resolveTreeThresholds({ smallFileBytes: 2 * MiB });
    expect(planAll([entry('a', 'file', 2 * MiB)], t)[0]!.type).toBe('file');
    expect(planAll([entry('a', 'file', 2 * MiB - 1)], t)[0]!.type).toBe('batch');
  });

  it('uses the given range size for every big file', () => {
    const steps = planAll([entry('a', 'file', 10 * MiB + 1)], resolveTreeThresholds({ rangeBytes: 2 * MiB }));
    expect(steps[0]).toMatchObject({ type: 'file', rangeBytes: 2 * MiB, ranges: 6 });
  });

  it('defers hard links: their first name may still be in flight', () => {
    const steps = planAll([entry('a', 'file', 5), entry('b', 'hardlink', 0, { target: 'a' })]);
    expect(steps.map((s) => s.type)).toEqual(['hardlink', 'batch']);
  });

  it('skips special files unless root, with the reason', () => {
    expect(planAll([entry('fifo', 'special')])[0]).toMatchObject({ type: 'skip', reason: expect.stringMatching(/special file.*not copied/) });
    expect(planAll([entry('fifo', 'special')], resolveTreeThresholds({}), true)[0]!.type).toBe('batch');
  });
});

describe('finishOrder', () => {
  it('finishes the deepest directories first, the root last', () => {
    expect(finishOrder(['', 'a', 'a/b/c', 'z', 'a/b'])).toEqual(['a/b/c', 'a/b', 'a', 'z', '']);
  });
});
