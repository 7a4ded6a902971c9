import { describe, expect, it } from 'vitest';
import { slotHost, slotStaggerMs } from '../src/index.js';

describe('connection slots', () => {
  it('spread over the hosts by global slot number', () => {
    // 2 agents x 3 streams over 2 hosts: global slots 0..5 -> hosts 0,1,0,1,0,1.
    const hosts = [0, 1].flatMap((agent) => [0, 1, 2].map((slot) => slotHost(agent, slot, 3, 2, 0)));
    expect(hosts).toEqual([0, 1, 0, 1, 0, 1]);
  });

  it('leave slots idle beyond a cap per host', () => {
    // At most 1 connection per host, 2 hosts: only global slots 0 and 1 work.
    const hosts = [0, 1].flatMap((agent) => [0, 1].map((slot) => slotHost(agent, slot, 2, 2, 1)));
    expect(hosts).toEqual([0, 1, undefined, undefined]);
  });

  it('connect first in waves of 8, half a second apart', () => {
    expect([0, 7, 8, 15, 16].map((g) => slotStaggerMs(0, g, 32))).toEqual([0, 0, 500, 500, 1000]);
    // Agent 3 with 4 streams: global slots 12..15, the second wave.
    expect(slotStaggerMs(3, 0, 4)).toBe(500);
  });
});
