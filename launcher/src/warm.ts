/**
 * Warm start of local agents: the coordinator starts them before it knows the
 * job (while it connects to the remote host and prepares the destination), so
 * their start-up (loading Node modules, opening SSH connections, the remote
 * shell and helper starting) overlaps its own. Each agent runs
 * `<command> --warm` and reads two JSON lines on stdin: a WarmHint (what it
 * may open ahead) once the coordinator's own connection is up (connect()),
 * and a WarmGo (the job to join) once the job exists. An agent whose stdin
 * closes before a line it waits for leaves quietly.
 */
import { FerryError } from '@ferry/core';
import type { WarmGo, WarmHint } from '@ferry/core';
import { shellQuote, startProcess, track, watchExit } from './process-group.js';
import type { Started, StartOptions, WrapCommand } from './process-group.js';
import type { LaunchedAgents } from './types.js';

export interface WarmSpec {
  count: number;
  /** The agent command without job arguments, e.g. [node, cli.js, 'agent']; `--warm` is appended. */
  command: string[];
  /** Extra environment for every agent (as LaunchSpec.env). */
  env: Record<string, string>;
  /** The agent index of the first process (the coordinator may run agent 0 itself). @default 0 */
  firstIndex?: number;
  /** Changes each agent's command line before it starts (see WrapCommand). */
  wrapCommand?: WrapCommand;
  hintFor(index: number): WarmHint;
}

export class WarmAgents {
  private readonly processes: Started[];
  private handed = 0;
  /** Set once go() or dismiss() has run: the agents have their orders. */
  private settled = false;

  /** Set once the hints are written: the agents may connect. */
  private hinted = false;

  constructor(private readonly spec: WarmSpec) {
    if (!spec.command[0]) throw new FerryError('USAGE', 'local launcher: empty agent command');
    this.processes = Array.from({ length: spec.count }, (_, i) => this.spawn(this.indexOf(i)));
  }

  /**
   * Lets the agents open their connections (writes each its hint). Until then
   * they only load: the coordinator calls this once its own connection is up,
   * so that theirs do not compete with it for the remote host's logins.
   */
  connect(): void {
    if (this.hinted || this.settled) return;
    this.hinted = true;
    for (const [i, p] of this.processes.entries()) this.writeHint(p, this.indexOf(i));
  }

  /** The agent index of the i-th process. */
  private indexOf(i: number): number {
    return (this.spec.firstIndex ?? 0) + i;
  }

  private writeHint({ child }: Started, index: number): void {
    child.stdin?.write(JSON.stringify(this.spec.hintFor(index)) + '\n');
  }

  private spawn(index: number): Started {
    const [file, ...args] = this.spec.command as [string, ...string[]];
    // As with launched agents: they watch this pid and stop when the coordinator is gone.
    const env = { ...process.env, ...this.spec.env, FERRY_AGENT_PARENT_PID: String(process.pid) };
    const argv = [...args, '--warm'];
    const child = startProcess(file, argv, env, 'pipe', this.spec.wrapCommand);
    void watchExit(child);
    // An agent that died early (a wrong command) shows in its exit status, not as EPIPE here.
    child.stdin?.on('error', () => {});
    return { child, indices: [index], commandLine: [file, ...argv].map(shellQuote).join(' ') };
  }

  get count(): number {
    return this.processes.length;
  }

  /**
   * Hands `count` agents their job and tracks them as launched agents: the
   * warm ones first, then as many more as needed, started now (with their
   * hint and job at once); warm ones beyond `count` are told to leave.
   * `goFor` gets the agent index (from firstIndex on).
   */
  go(count: number, goFor: (index: number) => WarmGo, options: StartOptions): LaunchedAgents {
    if (this.settled) throw new FerryError('INTERNAL', `cannot hand warm agents a job: they were ${this.handed > 0 ? 'handed one' : 'dismissed'} already`);
    this.connect();
    for (let i = this.processes.length; i < count; i++) {
      const p = this.spawn(this.indexOf(i));
      this.writeHint(p, this.indexOf(i));
      this.processes.push(p);
    }
    const used = this.processes.slice(0, count);
    for (const [i, { child }] of used.entries()) child.stdin?.write(JSON.stringify(goFor(this.indexOf(i))) + '\n');
    this.handed = count;
    void this.dismiss();
    return track(used, options);
  }

  /**
   * Tells the agents not handed a job to leave (stdin closed) and resolves once
   * they have (how each ended); any still running after `graceMs` is killed.
   */
  async dismiss(graceMs = 3000): Promise<Array<{ code: number | null; signal: string | null }>> {
    this.settled = true;
    const rest = this.processes.slice(this.handed);
    for (const { child } of rest) {
      child.stdin?.end();
      // Nobody reads their stderr now; it must not hold up their exit.
      child.stderr?.resume();
    }
    const timer = setTimeout(() => {
      for (const { child } of rest) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }, graceMs);
    try {
      return (await Promise.all(rest.map(({ child }) => watchExit(child)))).map(({ code, signal }) => ({ code, signal }));
    } finally {
      clearTimeout(timer);
    }
  }
}
