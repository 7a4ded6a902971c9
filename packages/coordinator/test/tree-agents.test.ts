import { describe, expect, it } from 'vitest';
import { MESSAGE_VERSION, encodeMessage } from '@ferry/core';
import type { BatchWorkItem, TreeEntry } from '@ferry/core';
import type { WireBatch } from '@ferry/agent';
import { splitForBus, treeUsesAgents } from '../src/tree-agents.js';

function batch(n: number, pathBytes: number): WireBatch {
  const entries = Array.from({ length: n }, (_, i) => ({ path: `${'d'.repeat(pathBytes)}/${i}`, kind: 'file', size: 1 }) as TreeEntry);
  return { entries, wire: entries.map((e) => ({ kind: 'file', path: `/dst/${e.path}`, size: 1, mode: 0o644 })), bytes: n, attempts: 0 };
}
const itemOf = (b: WireBatch): BatchWorkItem => ({ v: MESSAGE_VERSION, job: 'abcd1234', type: 'batch', batch: 0, attempt: 0, entries: b.wire.map((w, i) => ({ ...w, path: b.entries[i]!.path })) });

describe("a tree's batches on the bus", () => {
  it('go as they are when their work item fits in a NATS message', () => {
    const b = batch(4096, 20);
    expect(splitForBus(b, itemOf)).toEqual([b]);
  });

  it('are cut in halves, in order, until each fits', () => {
    const b = batch(4096, 400);
    const parts = splitForBus(b, itemOf);
    expect(parts.length).toBeGreaterThan(1);
    for (const p of parts) expect(encodeMessage(itemOf(p)).length).toBeLessThanOrEqual(768 * 1024);
    expect(parts.flatMap((p) => p.entries)).toEqual(b.entries);
    expect(parts.flatMap((p) => p.wire)).toEqual(b.wire);
  });

  it('go to agents when agents run elsewhere (a push or a pull), never for a plain cp -r', () => {
    const srun = { name: 'srun', launch: async () => { throw new Error('not here'); } };
    expect(treeUsesAgents({ externalAgents: 1 })).toBe(true);
    expect(treeUsesAgents({ launcher: srun })).toBe(true);
    expect(treeUsesAgents({})).toBe(false);
    expect(treeUsesAgents({ launcher: { ...srun, name: 'local' } })).toBe(false);
  });
});
