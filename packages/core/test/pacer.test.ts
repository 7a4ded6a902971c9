import { describe, expect, it } from 'vitest';
import { AgentPacer, PACER_BURST_MS, Pacer, RateShares } from '@ferry/core';

const MiB = 1024 * 1024;
const RATE = 12_500_000;

/**
 * A sender that sends `chunk` bytes whenever the pacer lets it, for `ms`
 * milliseconds of a simulated clock; `late(ms)` is how much later than asked
 * each sleep ends (timer granularity, a busy event loop). Returns bytes sent.
 */
function greedy(pacer: Pacer, chunk: number, ms: number, start = 0, late = () => 0): number {
  let now = start;
  let sent = 0;
  for (;;) {
    const wait = pacer.take(chunk, now);
    if (wait > 0) now += wait + late();
    if (now > start + ms) return sent;
    sent += chunk;
  }
}

describe('Pacer', () => {
  it('holds a greedy sender to its rate, from the first byte (no opening burst)', () => {
    const pacer = new Pacer(RATE, 0);
    expect(pacer.take(MiB, 0)).toBeCloseTo((MiB / RATE) * 1000, 6);
    const sent = greedy(new Pacer(RATE, 0), MiB, 100_000);
    expect(sent / 100).toBeGreaterThan(RATE * 0.999);
    expect(sent / 100).toBeLessThanOrEqual(RATE);
  });

  it('makes up for sleeps that end late: the schedule is absolute, not per sleep', () => {
    let i = 0;
    // Every sleep ends 1-8 ms late.
    const sent = greedy(new Pacer(RATE, 0), 256 * 1024, 60_000, 0, () => 1 + (i++ % 8));
    expect(sent / 60).toBeGreaterThan(RATE * 0.995);
    expect(sent / 60).toBeLessThanOrEqual(RATE * 1.01);
  });

  it('lets a pause shorter than the burst (a range boundary) cost nothing', () => {
    const pacer = new Pacer(RATE, 0);
    let now = 0;
    let sent = 0;
    const range = 16 * MiB;
    for (let r = 0; r < 20; r++) {
      for (let at = 0; at < range; at += MiB) {
        now += pacer.take(MiB, now);
        sent += MiB;
      }
      // Between ranges: the answer's round trip and the next work item.
      now += 150;
    }
    expect(sent / (now / 1000)).toBeGreaterThan(RATE * 0.99);
  });

  it('banks at most the burst while idle: after a long pause it catches up that much, then holds the rate', () => {
    const pacer = new Pacer(RATE, 0);
    greedy(pacer, MiB, 1000);
    // 10 s idle; then everything that goes without waiting is the burst's worth (and the chunk that ends it).
    let now = 11_000;
    let free = 0;
    while (pacer.take(MiB, now) === 0) free += MiB;
    expect(free).toBeLessThanOrEqual((RATE * PACER_BURST_MS) / 1000 + MiB);
    expect(free).toBeGreaterThanOrEqual((RATE * PACER_BURST_MS) / 1000 - MiB);
    now += pacer.take(0, now);
    const sent = greedy(pacer, MiB, 30_000, now);
    expect(sent / 30).toBeLessThanOrEqual(RATE);
    expect(sent / 30).toBeGreaterThan(RATE * 0.99);
  });

  it('pays what is owed at the new rate after setRate', () => {
    const pacer = new Pacer(10_000_000, 0);
    expect(pacer.take(10_000_000, 0)).toBe(1000);
    pacer.setRate(20_000_000, 0);
    expect(pacer.take(0, 0)).toBe(500);
    pacer.setRate(5_000_000, 250);
    // 250 ms were left at 20 MB/s (5 MB): 1000 ms at 5 MB/s.
    expect(pacer.take(0, 250)).toBe(1000);
  });

  it('shares one rate among connections that take turns, and gives an idle one\'s share to the rest', () => {
    const pacer = new Pacer(RATE, 0);
    // Three connections, each asking again when its last chunk has gone.
    const next = [0, 0, 0];
    const sent = [0, 0, 0];
    for (;;) {
      const i = next.indexOf(Math.min(...next));
      const now = next[i]!;
      if (now > 60_000) break;
      // Connection 2 stops after 20 s.
      if (i === 2 && now > 20_000) {
        next[2] = Infinity;
        continue;
      }
      next[i] = now + pacer.take(MiB, now);
      sent[i]! += MiB;
    }
    const total = sent.reduce((a, b) => a + b, 0);
    // (Counted when asked for: up to a chunk per connection is still to go at the end.)
    expect(total / 60).toBeGreaterThan(RATE * 0.99);
    expect(total / 60).toBeLessThanOrEqual(RATE + (3 * MiB) / 60);
    expect(sent[0]! / 60).toBeGreaterThan((RATE / 3) * 1.2);
  });

  it('refuses a rate that is not a positive number', () => {
    expect(() => new Pacer(0, 0)).toThrow('a rate must be a positive number of bytes per second, got 0');
    expect(() => new Pacer(RATE, 0).setRate(Number.NaN, 0)).toThrow(RangeError);
  });
});

describe('AgentPacer', () => {
  it('runs at the per-connection share times the connections moving data', () => {
    const p = new AgentPacer(1_000_000, 0);
    expect(p.bytesPerSec).toBe(1_000_000);
    p.start(0, 0);
    p.start(1, 0);
    expect(p.bytesPerSec).toBe(2_000_000);
    p.setConnectionRate(3_000_000, 0);
    expect(p.bytesPerSec).toBe(6_000_000);
    p.stop(1, 0);
    expect(p.bytesPerSec).toBe(3_000_000);
    // With none moving, the rate is one connection's (whoever starts next gets it).
    p.stop(0, 0);
    expect(p.bytesPerSec).toBe(3_000_000);
  });

  it('announces a growing count at once', () => {
    const p = new AgentPacer(RATE, 0);
    expect(p.start(0, 0)).toBe(1);
    expect(p.start(1, 0)).toBe(2);
    // A slot starting again (its next range) changes nothing.
    expect(p.start(1, 0)).toBeUndefined();
    expect(p.active).toBe(2);
    expect(p.announced).toBe(2);
  });

  it('does not announce a dip that does not last a tick (a range boundary)', () => {
    const p = new AgentPacer(RATE, 0);
    p.start(0, 0);
    p.start(1, 0);
    expect(p.tick()).toBeUndefined();
    p.stop(1, 5);
    p.start(1, 10);
    expect(p.tick()).toBeUndefined();
  });

  it('announces at once that a connection will get no more work', () => {
    const p = new AgentPacer(RATE, 0);
    p.start(0, 0);
    p.start(1, 0);
    expect(p.stop(1, 0, true)).toBe(1);
    expect(p.tick()).toBeUndefined();
    // Not done for good: said once it has held for a whole tick.
    p.stop(0, 0);
    expect(p.tick()).toBeUndefined();
    expect(p.tick()).toBe(0);
  });

  it('announces a lower count once it has held for a whole tick', () => {
    const p = new AgentPacer(RATE, 0);
    p.start(0, 0);
    p.start(1, 0);
    p.stop(1, 0);
    // The tick it happened in still saw two.
    expect(p.tick()).toBeUndefined();
    expect(p.tick()).toBe(1);
    p.stop(0, 0);
    expect(p.tick()).toBeUndefined();
    expect(p.tick()).toBe(0);
    expect(p.tick()).toBeUndefined();
    expect(p.announced).toBe(0);
  });

  it('keeps the credit of a range boundary but not of a long idle spell (it had no share then)', () => {
    const p = new AgentPacer(RATE, 0);
    p.start(0, 0);
    let now = 0;
    for (let i = 0; i < 32; i++) now += p.take(MiB, now);
    // A boundary: 50 ms with nothing moving, then on at once.
    p.stop(0, now);
    now += 50;
    p.start(0, now);
    expect(p.take(MiB / 2, now)).toBe(0);
    // A long spell idle: the agent starts again paced from the first byte, as a new one does.
    for (let i = 0; i < 8; i++) now += p.take(MiB, now);
    p.stop(0, now);
    now += 5000;
    p.start(0, now);
    expect(p.take(MiB, now)).toBeCloseTo((MiB / RATE) * 1000, 6);
  });
});

describe('RateShares', () => {
  it('divides the cap among the connections moving data across the job', () => {
    const shares = new RateShares(RATE);
    expect(shares.perConnection(0)).toBe(RATE);
    shares.report('a', 1, 0);
    expect(shares.perConnection(0)).toBe(RATE);
    shares.report('b', 3, 0);
    expect(shares.perConnection(0)).toBe(RATE / 4);
    shares.report('b', 0, 10);
    expect(shares.perConnection(10)).toBe(RATE);
  });

  it('forgets an agent not heard of for a while, or told to', () => {
    const shares = new RateShares(RATE, 5000);
    shares.report('a', 2, 0);
    shares.report('b', 2, 4000);
    expect(shares.connections(4000)).toBe(4);
    expect(shares.connections(5001)).toBe(2);
    shares.forget('b');
    expect(shares.connections(5001)).toBe(0);
  });
});

/**
 * A whole copy on a simulated clock: agents with slots that connect at
 * different times and take 16 MiB ranges from one queue until it is empty,
 * each agent pacing its slots with an AgentPacer, announcing its count and
 * sending heartbeats as the agent does, the coordinator answering after
 * `latencyMs`. The link itself is infinitely fast: only the pacing holds the
 * bytes back. Returns the bytes and the seconds from the first range's start to
 * the last byte.
 */
function simulateCopy(options: { cap: number; ranges: number; agents: number; streams: number; connectAtMs: number[][]; latencyMs: number; boundaryMs: number }) {
  const { cap, agents, streams, latencyMs } = options;
  const range = 16 * MiB;
  const shares = new RateShares(cap);
  const pacers = Array.from({ length: agents }, () => new AgentPacer(cap / (agents * streams), 0));
  const messages: Array<{ at: number; run: (now: number) => void }> = [];
  const post = (at: number, run: (now: number) => void) => messages.push({ at, run });
  const report = (a: number, count: number, now: number) =>
    post(now + latencyMs, (t) => {
      shares.report(`agent${a}`, count, t);
      const share = shares.perConnection(t);
      post(t + latencyMs, (u) => {
        for (const p of pacers) p.setConnectionRate(share, u);
      });
    });
  let queue = options.ranges;
  const slots: Array<{ a: number; s: number; next: number; left: number; stopAt?: number }> = [];
  for (let a = 0; a < agents; a++) for (let s = 0; s < streams; s++) slots.push({ a, s, next: options.connectAtMs[a]![s]!, left: 0 });
  let first = Infinity;
  let last = 0;
  let sent = 0;
  for (let now = 0; slots.some((x) => x.next !== Infinity); now++) {
    const due = messages.filter((x) => x.at <= now);
    messages.splice(0, messages.length, ...messages.filter((x) => x.at > now));
    for (const m of due) m.run(now);
    for (const [a, p] of pacers.entries()) {
      if (now % 100 === 0) {
        const count = p.tick();
        if (count !== undefined) report(a, count, now);
      }
      // Heartbeats repeat the count once a second.
      if (now % 1000 === 0) report(a, p.announced, now);
    }
    for (const slot of slots) {
      const p = pacers[slot.a]!;
      if (slot.stopAt !== undefined && slot.stopAt <= now) {
        // Its last chunk has gone: the range is done, and until the next one the slot moves
        // nothing; with the queue empty, it is done for good.
        const count = p.stop(slot.s, now, queue === 0);
        if (count !== undefined) report(slot.a, count, now);
        slot.stopAt = undefined;
      }
      while (slot.next <= now) {
        if (slot.left === 0) {
          if (queue === 0) {
            slot.next = Infinity;
            break;
          }
          queue--;
          slot.left = range;
          first = Math.min(first, now);
          const count = p.start(slot.s, now);
          if (count !== undefined) report(slot.a, count, now);
        }
        const goesAt = now + p.take(MiB, now);
        last = Math.max(last, goesAt);
        sent += MiB;
        slot.left -= MiB;
        if (slot.left === 0) {
          // The next range comes after the boundary's round trip.
          slot.stopAt = goesAt;
          slot.next = Math.ceil(goesAt) + options.boundaryMs;
        } else slot.next = Math.ceil(goesAt);
      }
    }
  }
  return { sent, seconds: (last - first) / 1000 };
}

describe('a whole copy under --limit-rate (simulated clock)', () => {
  it('holds the cap within 2% while connections come up late and finish at different times', () => {
    // 2 agents x 2 streams, 8 ranges of 16 MiB: agent 0's first slot alone for 1.5 s while the
    // others log in (measured on the test machine), then uneven ends.
    const { sent, seconds } = simulateCopy({ cap: RATE, ranges: 8, agents: 2, streams: 2, connectAtMs: [[0, 1800], [1500, 2000]], latencyMs: 5, boundaryMs: 10 });
    expect(sent).toBe(128 * MiB);
    const rate = sent / seconds;
    expect(rate).toBeGreaterThan(RATE * 0.98);
    expect(rate).toBeLessThan(RATE * 1.02);
  });

  it('holds it with many connections, more ranges than connections, and slow announcements', () => {
    const connectAtMs = Array.from({ length: 4 }, (_, a) => Array.from({ length: 4 }, (_, s) => a * 300 + s * 100));
    const { sent, seconds } = simulateCopy({ cap: 100_000_000, ranges: 61, agents: 4, streams: 4, connectAtMs, latencyMs: 50, boundaryMs: 40 });
    const rate = sent / seconds;
    expect(rate).toBeGreaterThan(100_000_000 * 0.97);
    expect(rate).toBeLessThan(100_000_000 * 1.02);
  });
});
