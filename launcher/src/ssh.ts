/**
 * The ssh launcher: one `ssh host <agent command>` per agent, over a list of
 * hosts (compute nodes, or any machines that mount the source). Secrets travel
 * on the session's stdin, which also stays open for the agent's lifetime: when
 * the launcher goes away, the agent sees end-of-file and stops.
 */
import { FerryError } from '@ferry/core';
import { shellQuote, startProcess, track } from './process-group.js';
import type { LaunchSpec, LaunchedAgents, Launcher } from './types.js';

export interface SshLauncherOptions {
  hosts: string[];
  /** The ssh program. @default 'ssh' */
  ssh?: string;
  /** Extra ssh arguments, e.g. ['-o', 'IdentityFile=...']. */
  sshArgs?: string[];
}

export class SshLauncher implements Launcher {
  readonly name = 'ssh';
  constructor(private readonly options: SshLauncherOptions) {
    if (options.hosts.length === 0) throw new FerryError('USAGE', 'the ssh launcher needs hosts: pass --hosts node[01-04] or --hosts-file FILE');
  }

  async launch(spec: LaunchSpec, options: { signal?: AbortSignal } = {}): Promise<LaunchedAgents> {
    const ssh = this.options.ssh ?? 'ssh';
    const hosts = this.options.hosts;
    const processes = Array.from({ length: spec.count }, (_, index) => {
      const host = hosts[index % hosts.length]!;
      const envWords = Object.entries(spec.env).map(([k, v]) => `${k}=${v}`);
      const remote = [...(envWords.length ? ['env', ...envWords] : []), ...spec.command, ...(spec.argsFor?.(index) ?? []), '--secrets-stdin'].map(shellQuote).join(' ');
      const args = ['-T', '-o', 'BatchMode=yes', ...(this.options.sshArgs ?? []), host, remote];
      const child = startProcess(ssh, args, process.env, 'pipe');
      child.stdin!.on('error', () => {});
      child.stdin!.write(JSON.stringify(spec.secretEnv ?? {}) + '\n');
      return { child, indices: [index], commandLine: [ssh, ...args].map(shellQuote).join(' ') };
    });
    return track(processes, { launcher: this.name, ...(spec.onStderr ? { onStderr: spec.onStderr } : {}), ...(options.signal ? { signal: options.signal } : {}) });
  }
}
