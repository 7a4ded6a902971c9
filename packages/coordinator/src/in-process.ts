/**
 * The agent that runs inside the coordinator's process (warm start, local
 * launcher): the same runAgent as `ferry agent`, given the job the way a warm
 * agent process gets it (a WarmGo), and tracked like launched agents.
 */
import { AGENT_EXEC_ENV, CORRUPT_RANGES_ENV, FerryError, JOB_SPEC_SHA256_ENV, NATS_TLS_ENV, corruptRangesFrom, decodeAgentExec, decodeClientTls, toFerryError } from '@ferry/core';
import type { WarmGo } from '@ferry/core';
import type { AgentBus, Preconnected, runAgent as RunAgent } from '@ferry/agent';
import { StderrTail } from '@ferry/launcher';
import type { AgentExit, LaunchedAgents, StartOptions } from '@ferry/launcher';

/** `bus`: the job's control plane in memory (a job of this one agent); absent: NATS at `go.nats`. */
export function runAgentInProcess(runAgent: typeof RunAgent, go: WarmGo, preconnected: Preconnected | undefined, options: StartOptions, bus?: AgentBus): LaunchedAgents {
  const abort = new AbortController();
  const signal = options.signal ? AbortSignal.any([abort.signal, options.signal]) : abort.signal;
  const tail = new StderrTail();
  const log = (line: string) => {
    tail.push(line);
    options.onStderr?.(go.index, line);
  };
  const corruptRanges = corruptRangesFrom(go.env[CORRUPT_RANGES_ENV]);
  const listeners: Array<(exit: AgentExit) => void> = [];
  const exitOf = (code: number | null, signalName: string | null): AgentExit => ({
    index: go.index,
    code,
    signal: signalName,
    stderrTail: tail.text(),
    launcher: options.launcher,
    commandLine: '(agent in the coordinator process)',
  });
  let settled: AgentExit | undefined;
  let settle!: (exit: AgentExit) => void;
  const done = new Promise<AgentExit>((resolve) => (settle = resolve));
  const finish = (exit: AgentExit) => {
    if (settled) return;
    settled = exit;
    for (const l of listeners) l(exit);
    settle(exit);
  };
  void (async () => {
    try {
      await runAgent({
        jobId: go.job,
        ...(bus ? { bus } : { natsUrl: go.nats, natsToken: go.env.FERRY_NATS_TOKEN, ...(go.env[NATS_TLS_ENV] ? { natsTls: decodeClientTls(go.env[NATS_TLS_ENV]) } : {}) }),
        index: go.index,
        exec: decodeAgentExec(go.env[AGENT_EXEC_ENV]),
        ...(go.env[JOB_SPEC_SHA256_ENV] ? { specSha256: go.env[JOB_SPEC_SHA256_ENV] } : {}),
        inProcess: true,
        signal,
        log,
        ...(preconnected ? { preconnected } : {}),
        ...(corruptRanges ? { corruptRanges } : {}),
      });
      finish(exitOf(0, null));
    } catch (err) {
      const e = toFerryError(err);
      log(`ferry agent: ${e.message}`);
      finish(exitOf(e.exitCode, null));
    } finally {
      preconnected?.close();
    }
  })();
  const exited = done.then((exit) => [exit]);
  return {
    count: 1,
    exited,
    pids: [process.pid],
    onExit: (listener) => {
      listeners.push(listener);
    },
    /** Stops the agent; one that has not finished after `graceMs` is left behind and reported gone. */
    stop: async (graceMs = 5000) => {
      abort.abort(new FerryError('INTERRUPTED', 'the coordinator stopped its agents'));
      const timer = setTimeout(() => finish(exitOf(null, 'SIGKILL')), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Several groups of launched agents as one. */
export function mergeLaunched(parts: LaunchedAgents[]): LaunchedAgents {
  return {
    count: parts.reduce((n, p) => n + p.count, 0),
    exited: Promise.all(parts.map((p) => p.exited)).then((all) => all.flat().sort((a, b) => a.index - b.index)),
    pids: parts.flatMap((p) => p.pids),
    onExit: (listener) => {
      for (const p of parts) p.onExit(listener);
    },
    stop: async (graceMs) => (await Promise.all(parts.map((p) => p.stop(graceMs)))).flat().sort((a, b) => a.index - b.index),
  };
}
