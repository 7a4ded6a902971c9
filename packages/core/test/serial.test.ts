import { describe, expect, it } from 'vitest';
import { SerialQueue } from '@ferry/core';

const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 1));

describe('SerialQueue', () => {
  it('runs one task at a time, in order, and goes on after a failure', async () => {
    const q = new SerialQueue();
    const log: string[] = [];
    let running = 0;
    let most = 0;
    const task = (name: string, fail = false) => async () => {
      running++;
      most = Math.max(most, running);
      log.push(`start ${name}`);
      await tick();
      log.push(`end ${name}`);
      running--;
      if (fail) throw new Error(name);
      return name;
    };
    const a = q.run(task('a'));
    const b = q.run(task('b', true));
    const c = q.run(task('c'));
    expect(q.size).toBe(3);
    expect(await a).toBe('a');
    await expect(b).rejects.toThrow('b');
    expect(await c).toBe('c');
    expect(most).toBe(1);
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    await tick();
    expect(q.size).toBe(0);
  });
});
