/**
 * How agents get started. A launcher turns "N agents running this command"
 * into processes somewhere (here, on Slurm nodes, through mpirun or ssh) and
 * reports each exit. The coordinator only sees this interface.
 */

export interface LaunchSpec {
  /** Agents to start. */
  count: number;
  /** argv of the agent command, e.g. [node, cli.js, 'agent', '--job', id]. */
  command: string[];
  /** Extra environment for every agent. */
  env: Record<string, string>;
  /**
   * Environment that must not show on a command line (the NATS token). Local,
   * srun and mpirun agents get it in their environment; ssh-launched agents
   * read it from stdin (`--secrets-stdin`).
   */
  secretEnv?: Record<string, string>;
  /** Arguments appended for agent `index`. */
  argsFor?: (index: number) => string[];
  /** Each line an agent writes on stderr, tagged with its index. */
  onStderr?: (index: number, line: string) => void;
}

export interface AgentExit {
  index: number;
  code: number | null;
  signal: string | null;
  /** Last lines the agent wrote on stderr. */
  stderrTail: string;
  /** The launcher and the command line that started it, for error messages. */
  launcher: string;
  commandLine: string;
}

export interface LaunchedAgents {
  readonly count: number;
  /** Resolves when every agent has exited. */
  readonly exited: Promise<AgentExit[]>;
  /** Called once per agent as it exits. */
  onExit(listener: (exit: AgentExit) => void): void;
  /** Process ids, where the launcher knows them. */
  readonly pids: ReadonlyArray<number | undefined>;
  /** SIGTERM, then SIGKILL after `graceMs`. Resolves when all have exited. */
  stop(graceMs?: number): Promise<AgentExit[]>;
}

export interface Launcher {
  readonly name: string;
  launch(spec: LaunchSpec, options?: { signal?: AbortSignal }): Promise<LaunchedAgents>;
}
