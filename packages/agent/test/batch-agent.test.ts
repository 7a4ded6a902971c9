import { describe, expect, it } from 'vitest';
import { MESSAGE_VERSION, encodeMessage } from '@ferry/core';
import type { BatchEntryResult } from '@ferry/core';
import { batchDoneParts } from '../src/batch-agent.js';

const base = { v: MESSAGE_VERSION, job: 'abcd1234', type: 'batch.done' as const, batch: 1, attempt: 0, agent: 'cn1-r1', remoteHost: 'dtn1' };

describe("a batch's results in stored messages", () => {
  it('sends a small batch in one message', () => {
    const results: BatchEntryResult[] = [{ ok: true, hash: '0123456789abcdef' }, { ok: false, error: { code: 'SOURCE_NOT_FOUND', message: 'gone' } }];
    expect(batchDoneParts(base, results)).toEqual([{ ...base, from: 0, results }]);
  });

  it('cuts 4,096 failures with long messages into parts that each fit in a NATS message, in order, none lost', () => {
    const results: BatchEntryResult[] = Array.from({ length: 4096 }, (_, i) => ({ ok: false, error: { code: 'DEST_IO', message: `${'x'.repeat(3000)} ${i}`, path: `/d/${'p'.repeat(1000)}${i}` } }));
    const parts = batchDoneParts(base, results);
    expect(parts.length).toBeGreaterThan(1);
    for (const p of parts) expect(encodeMessage(p).length).toBeLessThan(1024 * 1024);
    expect(parts.map((p) => p.from)).toEqual(parts.map((_, k) => parts.slice(0, k).reduce((n, q) => n + q.results.length, 0)));
    expect(parts.flatMap((p) => p.results)).toEqual(results);
  });
});
