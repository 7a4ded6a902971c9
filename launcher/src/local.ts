/**
 * The local launcher: agents are child processes of the coordinator.
 */
import { FerryError } from '@ferry/core';
import { shellQuote, startProcess, track } from './process-group.js';
import type { WrapCommand } from './process-group.js';
import type { LaunchSpec, LaunchedAgents, Launcher } from './types.js';

export interface LocalLauncherOptions {
  /** Changes each agent's command line before it starts (see WrapCommand). */
  wrapCommand?: WrapCommand;
}

export class LocalLauncher implements Launcher {
  readonly name = 'local';

  constructor(private readonly options: LocalLauncherOptions = {}) {}

  async launch(spec: LaunchSpec, launchOptions: { signal?: AbortSignal } = {}): Promise<LaunchedAgents> {
    const [file, ...baseArgs] = spec.command;
    if (!file) throw new FerryError('USAGE', 'local launcher: empty agent command');
    // Agents watch this pid: when the coordinator dies (even by SIGKILL) they stop instead of lingering.
    const env = { ...process.env, ...spec.env, ...spec.secretEnv, FERRY_AGENT_PARENT_PID: String(process.pid) };
    const processes = Array.from({ length: spec.count }, (_, index) => {
      const args = [...baseArgs, ...(spec.argsFor?.(index) ?? [])];
      return { child: startProcess(file, args, env, 'ignore', this.options.wrapCommand), indices: [index], commandLine: [file, ...args].map(shellQuote).join(' ') };
    });
    return track(processes, { launcher: this.name, ...(spec.onStderr ? { onStderr: spec.onStderr } : {}), ...(launchOptions.signal ? { signal: launchOptions.signal } : {}) });
  }
}
