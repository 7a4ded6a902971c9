/**
 * The local launcher: agents are child processes of the coordinator.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { FerryError } from '@ferry/core';
import type { AgentExit, LaunchSpec, LaunchedAgents, Launcher } from './types.js';

const TAIL_LINES = 20;

export class LocalLauncher implements Launcher {
  readonly name = 'local';

  async launch(spec: LaunchSpec, options: { signal?: AbortSignal } = {}): Promise<LaunchedAgents> {
    const [file, ...baseArgs] = spec.command;
    if (!file) throw new FerryError('USAGE', 'local launcher: empty agent command');
    const children: ChildProcess[] = [];
    const exits: Array<Promise<AgentExit>> = [];
    const listeners: Array<(exit: AgentExit) => void> = [];
    for (let index = 0; index < spec.count; index++) {
      const child = spawn(file, [...baseArgs, ...(spec.argsFor?.(index) ?? [])], {
        // Agents watch this pid: when the coordinator dies (even by SIGKILL) they stop instead of lingering.
        env: { ...process.env, ...spec.env, FERRY_AGENT_PARENT_PID: String(process.pid) },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      children.push(child);
      const tail: string[] = [];
      let partial = '';
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (text: string) => {
        const lines = (partial + text).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
          tail.push(line);
          if (tail.length > TAIL_LINES) tail.shift();
          spec.onStderr?.(index, line);
        }
      });
      exits.push(
        new Promise<AgentExit>((resolve) => {
          let spawnError: Error | undefined;
          child.once('error', (err) => {
            spawnError = err;
          });
          child.once('close', (code, signal) => {
            if (partial) tail.push(partial);
            if (spawnError) tail.push(`spawn ${file}: ${spawnError.message}`);
            const exit: AgentExit = { index, code, signal, stderrTail: tail.join('\n') };
            for (const l of listeners) l(exit);
            resolve(exit);
          });
        }),
      );
    }
    const exited = Promise.all(exits);
    const stop = async (graceMs = 5000) => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
      const timer = setTimeout(() => {
        for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      }, graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    };
    options.signal?.addEventListener('abort', () => void stop(), { once: true });
    return {
      count: spec.count,
      exited,
      pids: children.map((c) => c.pid),
      onExit: (l) => listeners.push(l),
      stop,
    };
  }
}
