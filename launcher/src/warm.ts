/**
 * Warm start of local agents: the coordinator starts them before it knows the
 * job (while it connects to the remote host and prepares the destination), so
 * their start-up (loading Node modules, opening SSH connections, the remote
 * shell and helper starting) overlaps its own. Each agent runs
 * `<command> --warm` and reads two JSON lines on stdin: a WarmHint (what it
 * may open ahead) at once, and a WarmGo (the job to join) once the job
 * exists. An agent whose stdin closes before the second line leaves quietly.
 */
import { FerryError } from '@ferry/core';
import type { WarmGo, WarmHint } from '@ferry/core';
import { shellQuote, startProcess, track, watchExit } from './process-group.js';
import type { Started, StartOptions } from './process-group.js';
import type { LaunchedAgents } from './types.js';

export interface WarmSpec {
  count: number;
  /** The agent command without job arguments, e.g. [node, cli.js, 'agent']; `--warm` is appended. */
  command: string[];
  /** Extra environment for every agent (as LaunchSpec.env). */
  env: Record<string, string>;
  hintFor(index: number): WarmHint;
}

export class WarmAgents {
  private readonly processes: Started[];
  private handed = 0;
  /** Set once go() or dismiss() has run: the agents have their orders. */
  private settled = false;

  constructor(spec: WarmSpec) {
    const [file, ...args] = spec.command;
    if (!file) throw new FerryError('USAGE', 'local launcher: empty agent command');
    // As with launched agents: they watch this pid and stop when the coordinator is gone.
    const env = { ...process.env, ...spec.env, FERRY_AGENT_PARENT_PID: String(process.pid) };
    const argv = [...args, '--warm'];
    const commandLine = [file, ...argv].map(shellQuote).join(' ');
    this.processes = Array.from({ length: spec.count }, (_, index) => {
      const child = startProcess(file, argv, env, 'pipe');
      void watchExit(child);
      // An agent that died early (a wrong command) shows in its exit status, not as EPIPE here.
      child.stdin?.on('error', () => {});
      child.stdin?.write(JSON.stringify(spec.hintFor(index)) + '\n');
      return { child, indices: [index], commandLine };
    });
  }

  get count(): number {
    return this.processes.length;
  }

  /**
   * Hands the first `count` agents their job and tracks them as launched
   * agents; the others are told to leave.
   */
  go(count: number, goFor: (index: number) => WarmGo, options: StartOptions): LaunchedAgents {
    if (this.settled || count > this.processes.length) throw new FerryError('INTERNAL', `cannot hand ${count} of ${this.processes.length} warm agents their job`);
    const used = this.processes.slice(0, count);
    for (const [i, { child }] of used.entries()) child.stdin?.write(JSON.stringify(goFor(i)) + '\n');
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
