/**
 * Warm start (see @ferry/launcher's warm.ts): with local agents, the
 * coordinator starts them before it prepares the copy, and tells each which
 * connections its slots will open, so their start-up overlaps the
 * coordinator's own instead of following it. Agent 0 runs inside the
 * coordinator's process and one of its slots uses the coordinator's own
 * connection: a copy with one agent and one stream starts no process and
 * logs in once. FERRY_WARM_START=0 turns all this off (agents then start as
 * processes once the job exists, as with every other launcher).
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { MESSAGE_VERSION, chooseRangeBytes, globalSlot, parseLocation, remoteHostKey, slotHost, slotStaggerMs, workItemCount } from '@ferry/core';
import type { ModeChoice, RemoteHost, ResolvedCopyOptions, SshSettings, WarmGo, WarmHint } from '@ferry/core';
import type { AgentBus, Preconnected } from '@ferry/agent';
import { WarmAgents } from '@ferry/launcher';
import type { LaunchedAgents, StartOptions } from '@ferry/launcher';
import { diesWithThisProcess } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import type { CopyRequest } from './copy.js';
import { mergeLaunched, runAgentInProcess } from './in-process.js';
import type { ResolvedRemote } from './prepare.js';

export const WARM_START_ENV = 'FERRY_WARM_START';

/**
 * The connections agent `index` will open: one per slot that is not idle, with
 * its first wait; with the number of work items known (`itemCount`: a push),
 * none for slots beyond it (they connect only if work reaches them).
 */
export function warmHint(index: number, agents: number, hosts: RemoteHost[], ssh: SshSettings, options: Pick<ResolvedCopyOptions, 'firstStreams' | 'maxConnectionsPerHost' | 'mode' | 'remoteCommand' | 'windowBytes'>, itemCount = Infinity): WarmHint {
  const connections: WarmHint['connections'] = [];
  // The connections the job starts with (the stream tuner may add more later; they connect then).
  for (let slot = 0; slot < options.firstStreams; slot++) {
    if (globalSlot(index, slot, agents) >= itemCount) break;
    const h = slotHost(index, slot, agents, hosts.length, options.maxConnectionsPerHost);
    if (h !== undefined) connections.push({ host: hosts[h]!, delayMs: slotStaggerMs(index, slot, agents) });
  }
  return { v: MESSAGE_VERSION, connections, ssh, mode: options.mode, remoteCommand: options.remoteCommand, windowBytes: options.windowBytes };
}

/**
 * The local agents of a copy, started ahead of its preparation: agent 0 in
 * this process, the others as `ferry agent --warm` processes.
 */
export class WarmStart {
  /** Agent 0's connections, from connect() until go() or dismiss(). */
  private preconnected: Promise<Preconnected> | undefined;
  private settled = false;

  constructor(
    readonly processes: WarmAgents,
    private readonly agentModule: Promise<typeof import('@ferry/agent')>,
    private readonly hintFor: (index: number) => WarmHint,
    /** The data path the hints ask for: the one the coordinator's connection ended up in, once it is up. */
    private readonly resolved: { mode: ModeChoice } = { mode: 'auto' },
  ) {
    // A failed import shows where it is awaited.
    agentModule.catch(() => {});
  }

  /**
   * The coordinator's connection (`conn`, to `host`) is up: the agent
   * processes may connect, and agent 0 opens what its other slots need and is
   * lent `conn` for the first slot that goes to `host`.
   */
  connect(conn: RemoteConnection, host: RemoteHost): void {
    // With --mode auto the agents need not try the paths the coordinator found missing.
    this.resolved.mode = conn.mode;
    this.processes.connect();
    if (this.settled || this.preconnected) return;
    this.preconnected = this.agentModule.then(({ Preconnected }) => {
      const hint = this.hintFor(0);
      const mine = hint.connections.findIndex((c) => remoteHostKey(c.host) === remoteHostKey(host));
      const pre = new Preconnected({ ...hint, connections: hint.connections.filter((_, i) => i !== mine) });
      pre.lend(host, conn);
      return pre;
    });
    this.preconnected.catch(() => {});
  }

  /**
   * Hands `count` agents their job: agent 0 runs here, the rest are the warm
   * processes (and more started now if needed). Tracked as launched agents.
   */
  async go(count: number, goFor: (index: number) => WarmGo, options: StartOptions, bus?: AgentBus): Promise<LaunchedAgents> {
    this.settled = true;
    const { runAgent } = await this.agentModule;
    const preconnected = await this.preconnected;
    this.preconnected = undefined;
    const inProcess = runAgentInProcess(runAgent, goFor(0), preconnected, options, bus);
    const processes = this.processes.go(count - 1, goFor, options);
    return mergeLaunched([inProcess, processes]);
  }

  /** Dismisses what was not handed a job (see WarmAgents.dismiss). */
  async dismiss(): Promise<void> {
    this.settled = true;
    void this.preconnected?.then((pre) => pre.close(), () => {});
    this.preconnected = undefined;
    await this.processes.dismiss();
  }
}

/**
 * Starts the local agents of a copy ahead of its preparation, or returns
 * undefined where that does not apply (another launcher, agents that join by
 * themselves, a discard benchmark, a command line prepare will refuse anyway).
 * A push starts no more agents than its ranges need, a pull one (its size is
 * not known yet); the job's launch adds the rest (WarmStart.go).
 */
export async function startWarmAgents(request: CopyRequest, options: ResolvedCopyOptions, discard: boolean, remote: ResolvedRemote | undefined): Promise<WarmStart | undefined> {
  if (process.env[WARM_START_ENV] === '0' || discard || !remote) return undefined;
  if ((request.externalAgents ?? 0) > 0 || (request.launcher && request.launcher.name !== 'local')) return undefined;
  const src = parseLocation(request.source);
  // Connections opened ahead: one per slot that will have a work item. A pull does not know
  // the size yet: only the first slot, which every copy uses (the others connect once the
  // job exists, as without warm start, so a small file costs no connection it won't use).
  let ahead = 1;
  try {
    if (src.kind === 'local') {
      const size = (await stat(resolve(src.path))).size;
      const rangeBytes = options.rangeBytes ?? chooseRangeBytes(size);
      ahead = Math.max(1, workItemCount(Math.ceil(size / rangeBytes), rangeBytes));
    }
  } catch {
    // prepareCopy says what is wrong.
    return undefined;
  }
  // Agents that will be needed whatever the job turns out to be; go() starts any more it needs.
  const count = Math.min(options.agents, Math.ceil(ahead / options.firstStreams));
  // The job's agents, as runCopy will count them: no more than its work items.
  const agents = Math.min(options.agents, ahead);
  // The hosts and settings resolved for the copy itself, so a connection opened ahead suits its spec;
  // the data path the coordinator's connection finds (WarmStart.connect).
  const resolved: { mode: ModeChoice } = { mode: options.mode };
  const hintFor = (i: number) => warmHint(i, agents, remote.hosts, remote.ssh, { ...options, mode: resolved.mode }, ahead);
  // Agents die with this process: without it (and NATS) they can do nothing useful.
  const processes = new WarmAgents({ count: count - 1, firstIndex: 1, command: request.agentCommand, env: {}, hintFor, wrapCommand: (argv) => diesWithThisProcess(argv, 'KILL') });
  return new WarmStart(processes, import('@ferry/agent'), hintFor, resolved);
}
