import { describe, expect, it } from 'vitest';
import { globalSlot, slotHost, slotStaggerMs } from '../src/index.js';

describe('connection slots', () => {
  it('are numbered across the job interleaved, the first slots of every agent first', () => {
    // 3 agents x 2 slots: agent 0 has 0 and 3, agent 1 has 1 and 4, agent 2 has 2 and 5.
    expect([0, 1, 2].map((agent) => [0, 1].map((slot) => globalSlot(agent, slot, 3)))).toEqual([
      [0, 3],
      [1, 4],
      [2, 5],
    ]);
  });

  it('spread over the hosts by global slot number, evenly whatever number of slots each agent uses', () => {
    // 2 agents x 3 slots over 3 hosts: global slots 0,2,4 and 1,3,5 -> hosts 0,2,1 and 1,0,2.
    const hosts = [0, 1].flatMap((agent) => [0, 1, 2].map((slot) => slotHost(agent, slot, 2, 3, 0)));
    expect(hosts).toEqual([0, 2, 1, 1, 0, 2]);
    // With one slot each (the stream tuner's start), 4 agents reach 4 hosts.
    expect([0, 1, 2, 3].map((agent) => slotHost(agent, 0, 4, 4, 0))).toEqual([0, 1, 2, 3]);
  });

  it('leave slots idle beyond a cap per host', () => {
    // At most 1 connection per host, 2 hosts: only global slots 0 and 1 (every agent's first) work.
    const hosts = [0, 1].flatMap((agent) => [0, 1].map((slot) => slotHost(agent, slot, 2, 2, 1)));
    expect(hosts).toEqual([0, undefined, 1, undefined]);
  });

  it('connect first in waves of 8, half a second apart', () => {
    expect([0, 7, 8, 15, 16].map((slot) => slotStaggerMs(0, slot, 1))).toEqual([0, 0, 500, 500, 1000]);
    // Agent 3 of 4, slot 2: global slot 11, the second wave.
    expect(slotStaggerMs(3, 2, 4)).toBe(500);
  });
});
