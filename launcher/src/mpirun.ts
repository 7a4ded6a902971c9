/**
 * The mpirun launcher, Open MPI or MPICH (Hydra) style: one mpirun of `count`
 * ranks; each agent learns its index from OMPI_COMM_WORLD_RANK or PMI_RANK.
 */
import { execFileSync } from 'node:child_process';
import { shellQuote, startProcess, track } from './process-group.js';
import type { LaunchSpec, LaunchedAgents, Launcher } from './types.js';

export type MpiStyle = 'openmpi' | 'mpich';

export interface MpirunLauncherOptions {
  /** Hosts to run on. @default mpirun's choice (its hostfile or the allocation) */
  hosts?: string[];
  /** @default detected from `mpirun --version` */
  style?: MpiStyle;
  /** The mpirun program. @default 'mpirun' */
  mpirun?: string;
  extraArgs?: string[];
}

export function detectMpiStyle(mpirun = 'mpirun'): MpiStyle {
  try {
    const out = execFileSync(mpirun, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return /open mpi|open-mpi|openrte/i.test(out) ? 'openmpi' : 'mpich';
  } catch {
    return 'openmpi';
  }
}

export class MpirunLauncher implements Launcher {
  readonly name = 'mpirun';
  constructor(private readonly options: MpirunLauncherOptions = {}) {}

  async launch(spec: LaunchSpec, options: { signal?: AbortSignal } = {}): Promise<LaunchedAgents> {
    const mpirun = this.options.mpirun ?? 'mpirun';
    const style = this.options.style ?? detectMpiStyle(mpirun);
    const env: NodeJS.ProcessEnv = { ...process.env, ...spec.env, ...spec.secretEnv };
    const names = [...Object.keys(spec.env), ...Object.keys(spec.secretEnv ?? {})];
    let args: string[];
    if (style === 'openmpi') {
      // Open MPI refuses to run as root unless told twice.
      if (process.getuid?.() === 0) Object.assign(env, { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' });
      args = [
        '-np', String(spec.count),
        '--oversubscribe',
        ...(this.options.hosts ? ['--host', this.options.hosts.map((h) => `${h}:${spec.count}`).join(',')] : []),
        // Remote ranks get only the variables named with -x (values stay off the command line).
        ...names.flatMap((n) => ['-x', n]),
        ...(this.options.extraArgs ?? []),
        ...spec.command,
      ];
    } else {
      args = ['-n', String(spec.count), ...(names.length ? ['-genvlist', names.join(',')] : []), ...(this.options.hosts ? ['-hosts', this.options.hosts.join(',')] : []), ...(this.options.extraArgs ?? []), ...spec.command];
    }
    const child = startProcess(mpirun, args, env);
    const indices = Array.from({ length: spec.count }, (_, i) => i);
    return track([{ child, indices, commandLine: [mpirun, ...args].map(shellQuote).join(' ') }], {
      launcher: this.name,
      ...(spec.onStderr ? { onStderr: spec.onStderr } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }
}
