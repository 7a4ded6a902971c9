/**
 * The agents of a single-file job: launched (warm ones handed the job, the one
 * in-process agent, or the launcher's), watched (all exited, or joined ones
 * silent), and stopped however the transfer ended, after they made what they
 * wrote durable.
 */
import { AGENT_EXEC_ENV, CORRUPT_RANGES_ENV, FerryError, JOB_SPEC_SHA256_ENV, MESSAGE_VERSION, NATS_TLS_ENV, agentExecOf, encodeAgentExec, encodeClientTls, encodeMessage, specDigest } from '@ferry/core';
import { LocalLauncher } from '@ferry/launcher';
import type { AgentExit, LaunchedAgents, Launcher } from '@ferry/launcher';
import { diesWithThisProcess } from '@ferry/transport';
import { sleep } from './file-context.js';
import type { Run, TransferContext } from './file-context.js';
import { runAgentInProcess } from './in-process.js';
import { LocalBus } from './local-bus.js';

/** An agent silent this long counts as gone (agents heartbeat every second). */
const AGENT_SILENCE_MS = 60_000;
/** Agents get this long to make their ranges durable and leave before they are killed. */
const AGENT_STOP_GRACE_MS = 15_000;

/** The agents of a transfer: those this coordinator launched (if any), and how they exited. */
export interface Agents {
  launched: LaunchedAgents | undefined;
  exits: AgentExit[];
}

/** How agents join and what they run: both from their environment, set here, never from the bus. */
function agentEnv(ctx: TransferContext, run: Run) {
  const { bus, spec } = run;
  const joinTls = bus.join?.tls ? encodeClientTls(bus.join.tls) : undefined;
  const specSha256 = specDigest(encodeMessage(spec));
  const corrupt = process.env[CORRUPT_RANGES_ENV];
  // The spec's digest lets them refuse a spec someone else wrote (issue #30).
  const env = { ...(corrupt ? { [CORRUPT_RANGES_ENV]: corrupt } : {}), [AGENT_EXEC_ENV]: encodeAgentExec(agentExecOf(spec)), [JOB_SPEC_SHA256_ENV]: specSha256 };
  // Secrets reach agents in their environment (the ssh launcher: on stdin), never argv.
  const secretEnv = bus.join?.token || joinTls ? { ...(bus.join?.token ? { FERRY_NATS_TOKEN: bus.join.token } : {}), ...(joinTls ? { [NATS_TLS_ENV]: joinTls } : {}) } : undefined;
  return { joinTls, specSha256, env, secretEnv };
}

/** Tells joining agents where the job is, then starts this coordinator's own: those this coordinator launches, and those that join on their own (ferry run). */
export async function launchAgents(ctx: TransferContext, run: Run): Promise<Agents> {
  const { prep, request } = ctx;
  const { bus } = run;
  const { joinTls, specSha256, env, secretEnv } = agentEnv(ctx, run);
  if (bus.join) await request.onRendezvous?.({ jobId: prep.jobId, url: bus.join.url, token: bus.join.token, specSha256, ...(joinTls ? { tls: joinTls } : {}) });
  const external = request.externalAgents ?? 0;
  const ownAgents = ctx.agents - external;
  const launcher: Launcher = request.launcher ?? new LocalLauncher({ wrapCommand: (argv) => diesWithThisProcess(argv, 'KILL') });
  const onStderr = (i: number, line: string) => ctx.emit({ type: 'log', message: `agent ${i}: ${line}` });
  const warm = ctx.warm && launcher.name === 'local' && ownAgents > 0 ? ctx.warm : undefined;
  const goFor = (i: number) => ({ job: prep.jobId, nats: bus.join?.url ?? '', index: external + i, env: { ...env, ...secretEnv } });
  const agentBus = bus instanceof LocalBus ? bus.agentBus() : undefined;
  let launched: LaunchedAgents | undefined;
  if (agentBus) {
    // The job's one agent, in this process, on the bus in memory (with the connections warm start opened).
    launched = warm ? await warm.go(1, goFor, { launcher: launcher.name, onStderr }, agentBus) : runAgentInProcess((await import('@ferry/agent')).runAgent, goFor(0), undefined, { launcher: launcher.name, onStderr }, agentBus);
  } else if (warm) {
    launched = await warm.go(ownAgents, goFor, { launcher: launcher.name, onStderr });
  } else if (ownAgents > 0) {
    launched = await launcher.launch({
      count: ownAgents,
      command: [...request.agentCommand, '--job', prep.jobId, '--nats', bus.join!.url],
      env,
      ...(secretEnv ? { secretEnv } : {}),
      argsFor: launcher.name === 'local' || launcher.name === 'ssh' ? (i) => ['--index', String(external + i)] : undefined,
      onStderr,
    });
  }
  if (!warm) await ctx.warm?.dismiss();
  const agents: Agents = { launched, exits: [] };
  watchAgents(ctx, run, agents);
  return agents;
}

/** Fails the transfer when every launched agent has exited, or no joined agent has reported for a while. */
function watchAgents(ctx: TransferContext, run: Run, agents: Agents): void {
  const external = ctx.request.externalAgents ?? 0;
  const ownAgents = ctx.agents - external;
  const { exits } = agents;
  agents.launched?.onExit((exit) => {
    exits.push(exit);
    ctx.emit({ type: 'agent.exit', index: exit.index, code: exit.code, signal: exit.signal });
    if (exits.length === ownAgents && external === 0 && !run.outcome.finished) run.outcome.fail(agentsGone(ctx, run, exits, `all ${ownAgents} agents exited`));
  });
  if (external > 0) {
    // Agents this coordinator did not start: gone when none has been heard of for a while.
    const started = Date.now();
    const watchdog = setInterval(() => {
      const newest = Math.max(started, ...[...run.heartbeats.values()].map((h) => h.seenAt));
      const ownDone = exits.length === ownAgents;
      if (ownDone && Date.now() - newest > AGENT_SILENCE_MS && !run.outcome.finished) run.outcome.fail(agentsGone(ctx, run, exits, `no agent has reported for ${AGENT_SILENCE_MS / 1000} s`));
    }, 1000);
    run.cleanup.push(() => clearInterval(watchdog));
  }
}

function agentsGone(ctx: TransferContext, run: Run, exits: AgentExit[], why: string): FerryError {
  const { plan, state } = ctx;
  const failed = exits.filter((e) => e.code !== 0);
  if (failed.length === exits.length && failed.length > 0 && !run.lastAgentError) {
    // Nothing ever worked: most likely the launch itself (wrong path on the nodes, no allocation).
    const last = failed.at(-1)!;
    return new FerryError('AGENTS_FAILED', `agent launch via ${last.launcher} failed (exit ${last.code ?? last.signal}): ${last.commandLine}${last.stderrTail ? `\n${last.stderrTail}` : ''}`);
  }
  const last = failed.at(-1);
  return (
    run.lastAgentError ??
    new FerryError('AGENTS_FAILED', `${why} with ${plan.count - state.done.size} of ${plan.count} ranges left${last ? ` (last: exit ${last.code ?? last.signal})${last.stderrTail ? `:\n${last.stderrTail}` : ''}` : ''}`)
  );
}

/** However the transfer ended: agents make what they wrote durable, report it, and leave. */
export async function stopAgents(ctx: TransferContext, run: Run, agents: Agents, failure: FerryError | undefined): Promise<void> {
  const reason = failure ? (failure.code === 'INTERRUPTED' ? 'interrupted' : `job failed: ${failure.code}`) : 'job done';
  await run.bus.control(encodeMessage({ v: MESSAGE_VERSION, job: ctx.prep.jobId, type: 'stop', reason }), 'stop');
  const { launched } = agents;
  if (launched) {
    const killTimer = setTimeout(() => void launched.stop(1000), AGENT_STOP_GRACE_MS);
    await launched.exited;
    clearTimeout(killTimer);
  } else {
    // Joined agents leave on the stop message; give them a moment to report what they made durable.
    const deadline = Date.now() + AGENT_STOP_GRACE_MS;
    while (Date.now() < deadline && [...run.heartbeats.values()].some((h) => Date.now() - h.seenAt < 2500 && h.inFlight + h.pending > 0)) await sleep(200);
  }
}
