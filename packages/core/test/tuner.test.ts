import { describe, expect, it } from 'vitest';
import { StreamTuner } from '@ferry/core';

/**
 * Drives a tuner against a model of a link: `rateOf(streams)` bytes per second
 * per agent, connections up `connectMs` after they are asked for, samples every
 * `stepMs`. Returns what the tuner asked for, in order, and when.
 */
function drive(tuner: StreamTuner, rateOf: (streams: number) => number, options: { agents?: number; utilization?: (streams: number) => number; idleCores?: (streams: number) => number; connectMs?: number; stepMs?: number; untilMs?: number } = {}) {
  const agents = options.agents ?? 1;
  const stepMs = options.stepMs ?? 250;
  let streams = tuner.current;
  let askedAt = 0;
  let bytes = 0;
  const asked: Array<{ at: number; streams: number }> = [];
  for (let at = 0; at <= (options.untilMs ?? 60_000); at += stepMs) {
    const up = at - askedAt >= (options.connectMs ?? 0) ? streams : Math.min(streams, asked.at(-2)?.streams ?? tuner.first);
    bytes += (rateOf(up) * agents * stepMs) / 1000;
    const utilization = options.utilization?.(up);
    const idleCores = options.idleCores?.(up);
    const next = tuner.sample({ at, bytes, connected: up * agents, ...(utilization === undefined ? {} : { utilization }), ...(idleCores === undefined ? {} : { idleCores }) });
    if (next !== undefined) {
      asked.push({ at, streams: next });
      streams = next;
      askedAt = at;
    }
    if (tuner.phase === 'done') break;
  }
  return { asked, final: tuner.current };
}

describe('StreamTuner', () => {
  it('goes to the cap at once where streams are held back each and the agent idles (a long link with per-stream limits)', () => {
    // 25 MB/s per stream, up to a 250 MB/s link; the agent's thread mostly idle.
    const tuner = new StreamTuner({ first: 1, max: 16, agents: 1 });
    const run = drive(tuner, (n) => Math.min(25e6 * n, 250e6), { utilization: () => 0.1, idleCores: () => 1.6, connectMs: 800 });
    expect(run.asked.map((a) => a.streams)).toEqual([16]);
    expect(run.final).toBe(16);
    expect(tuner.steps.map((s) => s.streams)).toEqual([1, 16]);
    // One measured window with one stream, then the connections, a settle and a window with 16.
    expect(run.asked[0]!.at).toBeLessThanOrEqual(3000);
  });

  it('where a jump to the cap does not pay, doubles from where it jumped (a loopback pull: idle agents, a pipeline short of a second stream)', () => {
    // One stream 80 MB/s, two 140, four 150; sixteen logins and helpers on the same cores: 70.
    const rates: Record<number, number> = { 1: 80e6, 2: 140e6, 4: 150e6, 16: 70e6 };
    const tuner = new StreamTuner({ first: 1, max: 16, agents: 1 });
    const run = drive(tuner, (n) => rates[n]!, { utilization: () => 0.3, idleCores: () => 0.8 });
    expect(run.asked.map((a) => a.streams)).toEqual([16, 2, 4, 2]);
    expect(run.final).toBe(2);
    expect(tuner.steps.map((s) => s.streams)).toEqual([1, 16, 2, 4]);
  });

  it('doubles, not jumps, where one stream already moves 100 MB/s or more, idle agents or not', () => {
    const rates: Record<number, number> = { 1: 250e6, 2: 340e6, 4: 350e6, 16: 230e6 };
    const tuner = new StreamTuner({ first: 1, max: 16, agents: 1 });
    const run = drive(tuner, (n) => rates[n]!, { utilization: () => 0.3, idleCores: () => 0.8 });
    expect(run.asked.map((a) => a.streams)).toEqual([2, 4, 2]);
    expect(run.final).toBe(2);
  });

  it('a jump that does not pay where the next doubling is the cap stops at what paid', () => {
    const tuner = new StreamTuner({ first: 1, max: 2, agents: 1 });
    const run = drive(tuner, (n) => (n === 1 ? 30e6 : 29e6), { utilization: () => 0.3, idleCores: () => 0.8 });
    expect(run.asked.map((a) => a.streams)).toEqual([2, 1]);
    expect(run.final).toBe(1);
  });

  it('doubles instead where the agent idles on a node without idle cores (a loaded machine starves everything)', () => {
    const tuner = new StreamTuner({ first: 1, max: 16, agents: 1 });
    const run = drive(tuner, (n) => 20e6 * n, { utilization: () => 0.1, idleCores: () => 0.1 });
    expect(run.asked.map((a) => a.streams)).toEqual([2, 4, 8, 16]);
  });

  it('doubles while each doubling gains at least 10%, where the agent is busy, and keeps the last that gained', () => {
    // A link whose rate grows with streams but the agent works hard: 1, 2, 4, 8 streams tried.
    const rates: Record<number, number> = { 1: 100e6, 2: 190e6, 4: 300e6, 8: 320e6, 16: 330e6 };
    const tuner = new StreamTuner({ first: 1, max: 16, agents: 1 });
    const run = drive(tuner, (n) => rates[n]!, { utilization: () => 0.9 });
    expect(run.asked.map((a) => a.streams)).toEqual([2, 4, 8, 4]);
    expect(run.final).toBe(4);
    expect(tuner.phase).toBe('done');
  });

  it('goes back to one stream where a second does not gain 10% (a short link on few cores)', () => {
    const tuner = new StreamTuner({ first: 1, max: 16, agents: 1 });
    const run = drive(tuner, (n) => (n === 1 ? 450e6 : 430e6), { utilization: () => 0.95 });
    expect(run.asked.map((a) => a.streams)).toEqual([2, 1]);
    expect(run.final).toBe(1);
  });

  it('waits for every agent\'s new connections before it measures them', () => {
    // Connections take 3 s to come up: a window measured before would see the old rate.
    const tuner = new StreamTuner({ first: 1, max: 4, agents: 3, settleMs: 0, windowMs: 1000 });
    const run = drive(tuner, (n) => 10e6 * n, { agents: 3, utilization: () => 0.9, connectMs: 3000 });
    expect(run.asked.map((a) => a.streams)).toEqual([2, 4]);
    expect(run.asked[1]!.at - run.asked[0]!.at).toBeGreaterThanOrEqual(4000);
    expect(run.final).toBe(4);
  });

  it('measures anyway when connections never all come up (slots without work)', () => {
    const tuner = new StreamTuner({ first: 1, max: 2, agents: 1, connectWaitMs: 5000 });
    let at = 0;
    let bytes = 0;
    const sample = (connected: number) => {
      at += 500;
      bytes += 50e6;
      return tuner.sample({ at, bytes, connected });
    };
    expect(sample(1)).toBeUndefined();
    for (let i = 0; i < 10 && tuner.phase !== 'connecting'; i++) sample(1);
    expect(tuner.current).toBe(2);
    // One of the two never connects: after 5 s of waiting the tuner measures what there is.
    for (let i = 0; i < 9; i++) expect(sample(1)).toBeUndefined();
    expect(tuner.phase).toBe('connecting');
    sample(1);
    expect(tuner.phase).toBe('settling');
  });

  it('does nothing when the count is fixed (first equals max)', () => {
    const tuner = new StreamTuner({ first: 4, max: 4, agents: 2 });
    expect(tuner.phase).toBe('done');
    expect(tuner.sample({ at: 0, bytes: 0, connected: 8 })).toBeUndefined();
    expect(tuner.current).toBe(4);
  });
});
