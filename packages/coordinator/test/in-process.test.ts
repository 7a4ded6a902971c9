import { describe, expect, it } from 'vitest';
import { FerryError } from '@ferry/core';
import type { AgentOptions, AgentSummary, runAgent as RunAgent } from '@ferry/agent';
import type { AgentExit, LaunchedAgents } from '@ferry/launcher';
import { mergeLaunched, runAgentInProcess } from '../src/in-process.js';

const go = { job: 'j1', nats: 'nats://127.0.0.1:4222', index: 0, env: { FERRY_NATS_TOKEN: 'secret', FERRY_TEST_CORRUPT_RANGES: '3,5' } };
const summary: AgentSummary = { agent: 'a', ranges: 0, bytes: 0, errors: 0 };

describe('runAgentInProcess', () => {
  it('runs the agent with the job of a WarmGo and reports its end as an exit', async () => {
    let seen: AgentOptions | undefined;
    const lines: string[] = [];
    const fake = (async (o: AgentOptions) => {
      seen = o;
      o.log?.('working');
      return summary;
    }) as typeof RunAgent;
    const launched = runAgentInProcess(fake, go, undefined, { launcher: 'local', onStderr: (i, l) => lines.push(`${i}: ${l}`) });
    const exits: AgentExit[] = [];
    launched.onExit((e) => exits.push(e));
    const [exit] = await launched.exited;
    expect(exit).toMatchObject({ index: 0, code: 0, signal: null, launcher: 'local' });
    expect(exits).toEqual([exit]);
    expect(launched.pids).toEqual([process.pid]);
    expect(seen).toMatchObject({ jobId: 'j1', natsUrl: 'nats://127.0.0.1:4222', natsToken: 'secret', index: 0, inProcess: true });
    expect([...seen!.corruptRanges!]).toEqual([3, 5]);
    expect(lines).toEqual(['0: working']);
  });

  it('reports a failed agent with the exit code of its error and the message in the tail', async () => {
    const fake = (async () => {
      throw new FerryError('HOST_UNREACHABLE', 'no remote host is reachable');
    }) as typeof RunAgent;
    const [exit] = await runAgentInProcess(fake, go, undefined, { launcher: 'local' }).exited;
    expect(exit!.code).toBe(new FerryError('HOST_UNREACHABLE', 'x').exitCode);
    expect(exit!.code).not.toBe(0);
    expect(exit!.stderrTail).toContain('no remote host is reachable');
  });

  it('stop() aborts the agent, and gives up on one that does not end within the grace', async () => {
    const obeys = ((o: AgentOptions) => new Promise<AgentSummary>((resolve) => o.signal!.addEventListener('abort', () => resolve(summary)))) as typeof RunAgent;
    expect((await runAgentInProcess(obeys, go, undefined, { launcher: 'local' }).stop(5000))[0]).toMatchObject({ code: 0, signal: null });
    const ignores = (() => new Promise<AgentSummary>(() => {})) as typeof RunAgent;
    expect((await runAgentInProcess(ignores, go, undefined, { launcher: 'local' }).stop(50))[0]).toMatchObject({ code: null, signal: 'SIGKILL' });
  });
});

describe('mergeLaunched', () => {
  const group = (indices: number[]): LaunchedAgents & { end(): void; stopped: number } => {
    const listeners: Array<(e: AgentExit) => void> = [];
    const out = indices.map((index) => ({ index, code: 0, signal: null, stderrTail: '', launcher: 'local', commandLine: 'x' }));
    let end!: () => void;
    const exited = new Promise<AgentExit[]>((resolve) => (end = () => {
      for (const e of out) for (const l of listeners) l(e);
      resolve(out);
    }));
    const g = {
      count: indices.length,
      exited,
      pids: indices.map((i) => 100 + i),
      onExit: (l: (e: AgentExit) => void) => void listeners.push(l),
      stopped: 0,
      stop: async () => {
        g.stopped++;
        end();
        return exited;
      },
      end: () => end(),
    };
    return g;
  };

  it('is one group: counts, pids, every exit once, in index order', async () => {
    const a = group([0]);
    const b = group([2, 1]);
    const all = mergeLaunched([a, b]);
    expect(all.count).toBe(3);
    expect(all.pids).toEqual([100, 102, 101]);
    const seen: number[] = [];
    all.onExit((e) => seen.push(e.index));
    b.end();
    a.end();
    expect((await all.exited).map((e) => e.index)).toEqual([0, 1, 2]);
    expect(seen).toEqual([2, 1, 0]);
    await all.stop(10);
    expect([a.stopped, b.stopped]).toEqual([1, 1]);
  });
});
