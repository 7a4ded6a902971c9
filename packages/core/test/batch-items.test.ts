import { describe, expect, it } from 'vitest';
import { MESSAGE_VERSION, batchDoneProblem, checkedBatchItem, decodeBatchDone, decodeBatchWorkItem, encodeMessage, treePathProblem } from '../src/index.js';
import type { BatchDone, BatchEntry, BatchWorkItem } from '../src/index.js';

const roots = { sourceRoot: '/scratch/project', destRoot: '/lustre/in/project' };

function item(entries: unknown[], over: Partial<BatchWorkItem> = {}): BatchWorkItem {
  return { v: MESSAGE_VERSION, job: 'abcd1234', type: 'batch', batch: 7, attempt: 0, entries: entries as BatchEntry[], ...over };
}

describe('a batch work item as an agent checks it', () => {
  it('maps relative paths under both roots and keeps what the helper needs', () => {
    const got = checkedBatchItem(item([
      { kind: 'file', path: 'a/b.txt', size: 12, mode: 0o644, mtimeMs: 1000 },
      { kind: 'symlink', path: 'a/link', target: '../../etc/passwd' },
    ]), roots);
    expect(got).toEqual([
      { ok: true, path: 'a/b.txt', source: '/scratch/project/a/b.txt', kind: 'file', size: 12, wire: { kind: 'file', path: '/lustre/in/project/a/b.txt', size: 12, mode: 0o644, mtimeMs: 1000 } },
      // A link's text is stored as given, never followed: it may point anywhere.
      { ok: true, path: 'a/link', source: '/scratch/project/a/link', kind: 'symlink', size: 0, wire: { kind: 'symlink', path: '/lustre/in/project/a/link', target: '../../etc/passwd' } },
    ]);
  });

  it.each([
    ['../outside', "path leaves the tree's root or has an empty, '.' or '..' part"],
    ['a/../../outside', "path leaves the tree's root or has an empty, '.' or '..' part"],
    ['/etc/passwd', 'path is absolute'],
    ['a//b', "path leaves the tree's root or has an empty, '.' or '..' part"],
    ['./a', "path leaves the tree's root or has an empty, '.' or '..' part"],
    ['a\0b', 'path holds a NUL byte'],
  ])('refuses the entry at %j alone, and copies the others', (path, why) => {
    const got = checkedBatchItem(item([{ kind: 'file', path, size: 1, mode: 0o600 }, { kind: 'file', path: 'ok', size: 1, mode: 0o600 }]), roots);
    expect(got[0]).toEqual({ ok: false, error: { code: 'PROTOCOL', message: `batch 7: entry '${path}' ${why}: not copied`, path } });
    expect(got[1]!.ok).toBe(true);
  });

  it.each([
    [{ kind: 'dir', path: 'd' }, "batch 7: entry 'd' is of kind 'dir': batches of agents carry files and symlinks only: not copied"],
    [{ kind: 'hardlink', path: 'h', target: '/etc/shadow' }, "batch 7: entry 'h' is of kind 'hardlink': batches of agents carry files and symlinks only: not copied"],
    [{ kind: 'file', path: 'f', size: -1, mode: 0o644 }, "batch 7: entry 'f' has no size in bytes: not copied"],
    [{ kind: 'file', path: 'f', size: 1, mode: 0o10000 }, "batch 7: entry 'f' has a mode beyond 0o7777: not copied"],
    [{ kind: 'symlink', path: 's' }, "batch 7: entry 's' has no link text: not copied"],
    [{ kind: 'file', path: 'f', size: 1, mode: 0o644, mtimeMs: 'soon' }, "batch 7: entry 'f' has times that are not numbers: not copied"],
    [{ kind: 'file', size: 1, mode: 0o644 }, 'batch 7: entry path is not a path of 1 to 4096 characters: not copied'],
    ['text', 'batch 7: entry is not an entry: not copied'],
  ])('refuses %j', (entry, message) => {
    const [got] = checkedBatchItem(item([entry]), roots);
    expect(got!.ok).toBe(false);
    expect(got!.ok === false && got!.error.message).toBe(message);
  });

  it('refuses an item that is not a batch at all', () => {
    expect(() => checkedBatchItem(item([], {}), roots)).toThrow('batch work item 7 must hold 1 to 65536 entries');
    expect(() => checkedBatchItem(item([{ kind: 'file', path: 'a', size: 1, mode: 0 }], { batch: -1 }), roots)).toThrow('batch work item has batch -1 and attempt 0, not whole numbers');
    expect(() => checkedBatchItem({ ...item([]), type: 'range' } as unknown as BatchWorkItem, roots)).toThrow("work item of type 'range' in a tree job: only batches are");
  });

  it('names a tree path that would leave its root', () => {
    expect(treePathProblem('a/b')).toBeUndefined();
    expect(treePathProblem('..')).toMatch(/leaves the tree's root/);
    expect(treePathProblem('')).toMatch(/not a path/);
  });

  it('round-trips through the codec, and a decoder of another job refuses it', () => {
    const i = item([{ kind: 'file', path: 'a', size: 1, mode: 0o644 }]);
    expect(decodeBatchWorkItem(encodeMessage(i), 'abcd1234')).toEqual(i);
    expect(() => decodeBatchWorkItem(encodeMessage(i), 'beef0000')).toThrow('batch work item message belongs to job abcd1234, not beef0000');
  });
});

describe("a batch's results as the coordinator checks them", () => {
  const done = (over: Partial<BatchDone> = {}): BatchDone => ({
    v: MESSAGE_VERSION,
    job: 'abcd1234',
    type: 'batch.done',
    batch: 3,
    attempt: 0,
    agent: 'cn1-r1',
    remoteHost: 'dtn1',
    from: 0,
    results: [{ ok: true, hash: '0123456789abcdef' }, { ok: false, error: { code: 'DEST_NO_SPACE', message: 'full' } }],
    ...over,
  });

  it('takes results for entries of the batch', () => {
    expect(batchDoneProblem(done(), 2)).toBeUndefined();
    expect(batchDoneProblem(done({ from: 1, results: [{ ok: true }] }), 2)).toBeUndefined();
    expect(decodeBatchDone(encodeMessage(done()), 'abcd1234')).toEqual(done());
  });

  it.each([
    [{ from: 2 }, 'results from entry 2 of a batch of 2'],
    [{ from: 1 }, 'not 1 to 1 results'],
    [{ results: [] }, 'not 1 to 2 results'],
    [{ results: [{ ok: true, hash: 'not hex!' }] }, "a hash not of the job's form"],
    [{ results: [{ ok: false, error: { code: 'MADE_UP', message: 'x' } }] }, 'an error without a known code and a message'],
    [{ results: [{ ok: 'yes' }] }, 'a result neither ok nor failed'],
    [{ remoteHost: '' }, 'no remote host'],
  ])('refuses %j', (over, why) => {
    expect(batchDoneProblem(done(over as Partial<BatchDone>), 2)).toBe(why);
  });
});
