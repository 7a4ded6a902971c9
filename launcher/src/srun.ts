/**
 * The srun launcher: one job step of `count` tasks, inside the allocation the
 * coordinator runs in (or a new one, from a login node). Each task learns its
 * agent index from SLURM_PROCID; srun passes the environment, secrets included,
 * to the tasks and to nobody else.
 */
import { shellQuote, startProcess, track } from './process-group.js';
import type { LaunchSpec, LaunchedAgents, Launcher } from './types.js';

export interface SrunLauncherOptions {
  /** Nodes to spread the agents over. @default srun's choice */
  nodes?: number;
  /** Agents per node. @default srun's choice */
  agentsPerNode?: number;
  /** More srun arguments, e.g. ['--partition', 'io']. */
  extraArgs?: string[];
  /** The srun program. @default 'srun' */
  srun?: string;
}

export class SrunLauncher implements Launcher {
  readonly name = 'srun';
  constructor(private readonly options: SrunLauncherOptions = {}) {}

  async launch(spec: LaunchSpec, options: { signal?: AbortSignal } = {}): Promise<LaunchedAgents> {
    const srun = this.options.srun ?? 'srun';
    const args = [
      '--ntasks', String(spec.count),
      ...(this.options.nodes ? ['--nodes', String(this.options.nodes)] : []),
      ...(this.options.agentsPerNode ? ['--ntasks-per-node', String(this.options.agentsPerNode)] : []),
      // One agent failing must not take the others down; the coordinator decides.
      '--kill-on-bad-exit=0',
      '--export=ALL',
      ...(this.options.extraArgs ?? []),
      ...spec.command,
    ];
    const child = startProcess(srun, args, { ...process.env, ...spec.env, ...spec.secretEnv });
    const indices = Array.from({ length: spec.count }, (_, i) => i);
    return track([{ child, indices, commandLine: [srun, ...args].map(shellQuote).join(' ') }], {
      launcher: this.name,
      ...(spec.onStderr ? { onStderr: spec.onStderr } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }
}
