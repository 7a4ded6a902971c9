/**
 * Shared plumbing of the launchers: start processes, keep the tail of their
 * stderr, report exits, stop them gracefully then forcibly.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import type { AgentExit, LaunchedAgents } from './types.js';

/** The last lines an agent wrote to stderr, kept for the report of its exit. */
export class StderrTail {
  private readonly lines: string[] = [];
  constructor(private readonly limit = 20) {}
  push(line: string): void {
    this.lines.push(line);
    if (this.lines.length > this.limit) this.lines.shift();
  }
  text(): string {
    return this.lines.join('\n');
  }
}

/** Quotes a word for a POSIX shell (remote commands, printed command lines). */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export interface Started {
  child: ChildProcess;
  /** Agent indices this process stands for (srun and mpirun start many with one process). */
  indices: number[];
  commandLine: string;
}

export interface StartOptions {
  launcher: string;
  /** Called with each stderr line and the first index of the process that wrote it. */
  onStderr?: (index: number, line: string) => void;
  signal?: AbortSignal;
}

/** Wraps started processes as LaunchedAgents: one exit per agent index. */
export function track(processes: Started[], options: StartOptions): LaunchedAgents {
  const listeners: Array<(exit: AgentExit) => void> = [];
  const exits: Array<Promise<AgentExit[]>> = processes.map(({ child, indices, commandLine }) => {
    const tail = new StderrTail();
    let partial = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        tail.push(line);
        options.onStderr?.(indices[0] ?? 0, line);
      }
    });
    return watchExit(child).then(({ code, signal, spawnError }) => {
      if (partial) tail.push(partial);
      if (spawnError) tail.push(`cannot run ${commandLine.split(' ')[0]}: ${spawnError.message}`);
      const out = indices.map((index) => ({ index, code: spawnError ? 127 : code, signal, stderrTail: tail.text(), launcher: options.launcher, commandLine }));
      for (const exit of out) for (const l of listeners) l(exit);
      return out;
    });
  });
  const exited = Promise.all(exits).then((all) => all.flat().sort((a, b) => a.index - b.index));
  const running = () => processes.filter(({ child }) => child.exitCode === null && child.signalCode === null);
  const stop = async (graceMs = 5000) => {
    for (const { child } of running()) child.kill('SIGTERM');
    const timer = setTimeout(() => {
      for (const { child } of running()) child.kill('SIGKILL');
    }, graceMs);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };
  options.signal?.addEventListener('abort', () => void stop(), { once: true });
  return {
    count: processes.reduce((n, p) => n + p.indices.length, 0),
    exited,
    pids: processes.map(({ child }) => child.pid),
    onExit: (l) => listeners.push(l),
    stop,
  };
}

interface ProcessEnd {
  code: number | null;
  signal: string | null;
  spawnError?: Error;
}

const ends = new WeakMap<ChildProcess, Promise<ProcessEnd>>();

/**
 * How `child` ended, once all its output is read. The first call starts
 * watching; a process started ahead of being tracked (warm agents) is watched
 * from its start, so an early death is not missed.
 */
export function watchExit(child: ChildProcess): Promise<ProcessEnd> {
  let end = ends.get(child);
  if (!end) {
    end = new Promise<ProcessEnd>((resolve) => {
      let spawnError: Error | undefined;
      child.once('error', (err) => {
        spawnError = err;
      });
      child.once('close', (code, signal) => resolve({ code, signal, ...(spawnError ? { spawnError } : {}) }));
    });
    ends.set(child, end);
  }
  return end;
}

/**
 * How a launcher's caller wants a local child's command line changed before
 * it starts, e.g. so that it dies with this process (the coordinator passes
 * transport's diesWithThisProcess; the launcher itself knows nothing of it).
 */
export type WrapCommand = (argv: string[]) => string[];

export function startProcess(file: string, args: string[], env: NodeJS.ProcessEnv, stdin: 'ignore' | 'pipe' = 'ignore', wrap?: WrapCommand): ChildProcess {
  const [run, ...runArgs] = wrap ? wrap([file, ...args]) : [file, ...args];
  return spawn(run!, runArgs, { env, stdio: [stdin, 'ignore', 'pipe'] });
}
