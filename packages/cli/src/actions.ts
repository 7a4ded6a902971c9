/**
 * What the commands share: the process I/O they write to, starting a copy
 * with its launcher, reporting errors.
 */
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { FerryError, expandHostlist, hasGlob, parseLocation, toFerryError } from '@ferry/core';
import type { CopyOptions } from '@ferry/core';
import type { CopyRequest } from '@ferry/coordinator';
import type { Launcher } from '@ferry/launcher';
import { NODE_FLAGS } from './node-flags.js';
import { createRenderer } from './render.js';
import type { Output } from './render.js';

export interface CliIo {
  stdout: Output;
  stderr: Output;
  /** Set by a command to the exit status the process should end with. */
  exitCode: number;
  /** Aborted on SIGINT/SIGTERM. */
  signal?: AbortSignal;
  /** argv of this program, for starting agents. @default [node, this script] */
  selfCommand?: string[];
}

/**
 * How this program starts itself (for agents): node with NODE_FLAGS, then
 * main.js. FERRY_PROFILE_DIR=DIR makes every agent write a V8 CPU profile
 * there (`node --cpu-prof`), for bench/.
 */
export function selfCommand(): string[] {
  const profileDir = process.env.FERRY_PROFILE_DIR;
  return [process.execPath, ...NODE_FLAGS, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), fileURLToPath(new URL('./main.js', import.meta.url))];
}

export interface LaunchOptions {
  launcher: 'local' | 'ssh' | 'srun' | 'mpirun';
  hosts?: string;
  hostsFile?: string;
  nodes?: string;
  agentsPerNode?: string;
  agentCmd?: string;
  sshOptions?: string[];
  natsListen?: string;
  natsAdvertise?: string;
}

/** Splits a command line on blanks, honouring single and double quotes. */
export function splitCommand(text: string): string[] {
  const words: string[] = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  for (let m = re.exec(text); m; m = re.exec(text)) words.push(m[1] ?? m[2] ?? m[3]!);
  if (words.length === 0) throw new FerryError('USAGE', '--agent-cmd must not be empty');
  return words;
}

async function hostsOf(launch: LaunchOptions): Promise<string[] | undefined> {
  if (launch.hosts) return expandHostlist(launch.hosts);
  if (launch.hostsFile) {
    let text: string;
    try {
      text = await readFile(launch.hostsFile, 'utf8');
    } catch (err) {
      throw new FerryError('USAGE', `--hosts-file ${launch.hostsFile} cannot be read: ${(err as Error).message}`);
    }
    const hosts = text.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean).flatMap(expandHostlist);
    if (hosts.length === 0) throw new FerryError('USAGE', `--hosts-file ${launch.hostsFile} names no host`);
    return hosts;
  }
  return undefined;
}

function positive(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new FerryError('USAGE', `${name} must be a whole number of at least 1, got '${value}'`);
  return n;
}

export async function makeLauncher(launch: LaunchOptions): Promise<Launcher | undefined> {
  const { MpirunLauncher, SrunLauncher, SshLauncher } = await import('@ferry/launcher');
  switch (launch.launcher) {
    case 'local':
      return undefined;
    case 'ssh': {
      const hosts = await hostsOf(launch);
      if (!hosts) throw new FerryError('USAGE', '--launcher ssh needs --hosts (e.g. node[01-04]) or --hosts-file');
      return new SshLauncher({ hosts, sshArgs: (launch.sshOptions ?? []).flatMap((o) => ['-o', o]) });
    }
    case 'srun': {
      const nodes = positive('--nodes', launch.nodes);
      const agentsPerNode = positive('--agents-per-node', launch.agentsPerNode);
      return new SrunLauncher({ ...(nodes ? { nodes } : {}), ...(agentsPerNode ? { agentsPerNode } : {}) });
    }
    case 'mpirun': {
      const hosts = await hostsOf(launch);
      return new MpirunLauncher(hosts ? { hosts } : {});
    }
  }
}

/**
 * Without `-a`, a launcher given its nodes starts one agent per node slot: `--nodes N`
 * (times `--agents-per-node`) for srun, one per host of `--hosts`/`--hosts-file` for ssh and
 * mpirun. (The local default, one agent per 4 cores of this node, would leave nodes idle.)
 */
async function withLaunchAgents(options: CopyOptions, launch: LaunchOptions): Promise<CopyOptions> {
  if (options.agents !== undefined || launch.launcher === 'local') return options;
  if (launch.launcher === 'srun') {
    const nodes = positive('--nodes', launch.nodes);
    return nodes ? { ...options, agents: String(nodes * (positive('--agents-per-node', launch.agentsPerNode) ?? 1)) } : options;
  }
  const hosts = await hostsOf(launch);
  return hosts ? { ...options, agents: String(hosts.length) } : options;
}

/** How launched agents start: `--agent-cmd`, else this node's node and ferry. */
function agentCommandOf(io: CliIo, launch: LaunchOptions): string[] {
  return launch.agentCmd ? [...splitCommand(launch.agentCmd), 'agent'] : [...(io.selfCommand ?? selfCommand()), 'agent'];
}

export async function copy(io: CliIo, source: string, destination: string, copyOptions: CopyOptions, verbose: boolean, launch: LaunchOptions = { launcher: 'local' }, extra: Partial<CopyRequest> = {}, recursive = false): Promise<void> {
  const style = copyOptions.json ? 'json' : copyOptions.quiet ? 'quiet' : 'human';
  const renderer = createRenderer(style, io.stdout, io.stderr, verbose);
  let early: typeof import('@ferry/coordinator/early') | undefined;
  try {
    // The SSH login and the remote helper start now, and the rest of ferry loads while
    // the helper starts (coordinator's early.ts).
    early = await import('@ferry/coordinator/early');
    await early.connectEarly(source, destination, copyOptions, io.signal, recursive);
    // Each command loads only what it needs: `ferry serve` starts on every remote connection.
    const { runCopy, runTreeCopy, isLocalDirectory } = await import('@ferry/coordinator');
    const agentCommand = agentCommandOf(io, launch);
    // A remote source with -r is a tree pull (the coordinator checks it is a directory).
    const tree = (await isLocalDirectory(source)) || (recursive && isRemoteSource(source));
    if (tree && !recursive) throw new FerryError('USAGE', `source ${source} is a directory: use ferry cp -r to copy a directory tree`, { path: source });
    await (tree ? runTreeCopy : runCopy)({
      source,
      destination,
      options: await withLaunchAgents(copyOptions, launch),
      agentCommand,
      launcher: await makeLauncher(launch),
      launchOptions: launch as unknown as Record<string, unknown>,
      onEvent: (e) => renderer.onEvent(e),
      ...(launch.natsListen ? { natsListen: launch.natsListen } : {}),
      ...(launch.natsAdvertise ? { natsAdvertise: launch.natsAdvertise } : {}),
      ...(io.signal ? { signal: io.signal } : {}),
      ...extra,
    });
    io.exitCode = 0;
  } catch (err) {
    renderer.finish();
    const e = toFerryError(err);
    if (style === 'json') io.stdout.write(JSON.stringify({ type: 'error', code: e.code, message: e.message, host: e.host, path: e.path, range: e.range, exitCode: e.exitCode }) + '\n');
    reportError(io, e);
  } finally {
    early?.dropEarly();
  }
}

/** Exit code of `ferry sync --exit-code` when something was (or would be) created, updated or deleted. */
export const SYNC_CHANGED_EXIT = 3;

/** `ferry sync`: a tree or a file made the same as its source; with `exitCode`, 3 says something changed. */
export async function syncTree(io: CliIo, source: string, destination: string, copyOptions: CopyOptions, verbose: boolean, exitCode: boolean, launch: LaunchOptions = { launcher: 'local' }, extra: Partial<CopyRequest> = {}): Promise<void> {
  const style = copyOptions.json ? 'json' : copyOptions.quiet ? 'quiet' : 'human';
  const renderer = createRenderer(style, io.stdout, io.stderr, verbose);
  let early: typeof import('@ferry/coordinator/early') | undefined;
  try {
    early = await import('@ferry/coordinator/early');
    await early.connectEarly(source, destination, copyOptions, io.signal);
    const { runSync } = await import('@ferry/coordinator');
    const summary = await runSync({
      source,
      destination,
      options: await withLaunchAgents(copyOptions, launch),
      agentCommand: agentCommandOf(io, launch),
      launcher: await makeLauncher(launch),
      launchOptions: launch as unknown as Record<string, unknown>,
      onEvent: (e) => renderer.onEvent(e),
      ...(launch.natsListen ? { natsListen: launch.natsListen } : {}),
      ...(launch.natsAdvertise ? { natsAdvertise: launch.natsAdvertise } : {}),
      ...(io.signal ? { signal: io.signal } : {}),
      ...extra,
    });
    let changed: boolean;
    if ('plan' in summary && summary.plan) changed = summary.plan.create + summary.plan.update + summary.plan.delete > 0;
    else if ('unchanged' in summary && typeof summary.unchanged === 'boolean') {
      changed = !summary.unchanged;
      if (style === 'human') io.stdout.write(summary.unchanged ? `ferry: ${destination} is up to date\n` : 'attributes' in summary && !summary.dryRun ? `ferry: ${destination}: extended attributes set again, no bytes sent\n` : '');
    } else if ('files' in summary) changed = summary.files + summary.symlinks + summary.hardlinks + summary.dirs + summary.deleted + summary.attributes > 0;
    else changed = true;
    if (style === 'json') io.stdout.write(JSON.stringify({ type: 'sync.done', changed }) + '\n');
    io.exitCode = changed && exitCode ? SYNC_CHANGED_EXIT : 0;
  } catch (err) {
    renderer.finish();
    const e = toFerryError(err);
    if (style === 'json') io.stdout.write(JSON.stringify({ type: 'error', code: e.code, message: e.message, host: e.host, path: e.path, range: e.range, exitCode: e.exitCode }) + '\n');
    reportError(io, e);
  } finally {
    early?.dropEarly();
  }
}

/** Sources with remote glob patterns expanded (coordinator's remote-glob.ts); without one, as given and nothing loaded. */
export async function expandSources(sources: string[], options: CopyOptions, signal?: AbortSignal): Promise<string[]> {
  if (!sources.some((s) => isRemoteSource(s) && hasGlob(parseLocation(s).path))) return sources;
  const { expandRemoteSources } = await import('@ferry/coordinator');
  return expandRemoteSources(sources, options, signal);
}

function isRemoteSource(source: string): boolean {
  try {
    return parseLocation(source).kind === 'remote';
  } catch {
    return false;
  }
}

/**
 * The secrets line the ssh launcher sends first on an agent's stdin: a JSON
 * object of environment variables (the NATS token), never on a command line.
 */
export function parseSecretsLine(line: string | undefined): Record<string, string> {
  if (line === undefined) throw new FerryError('USAGE', '--secrets-stdin: stdin ended before the secrets line');
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    value = undefined;
  }
  const isStrings = (v: unknown): v is Record<string, string> =>
    v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
  if (!isStrings(value)) throw new FerryError('USAGE', '--secrets-stdin: the first line of stdin is not a JSON object of strings');
  return value;
}

/**
 * Lines of stdin one at a time (a warm agent's hint and job). `next()` gives
 * undefined once stdin has ended; `ended` resolves then. `release()` lets the
 * process exit with stdin still open.
 */
export function stdinLines(): { next(): Promise<string | undefined>; ended: Promise<void>; release(): void } {
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  const queue: string[] = [];
  const waiting: Array<(line: string | undefined) => void> = [];
  let closed = false;
  let onEnd!: () => void;
  const ended = new Promise<void>((resolve) => (onEnd = resolve));
  rl.on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else queue.push(line);
  });
  rl.on('close', () => {
    closed = true;
    onEnd();
    for (const w of waiting.splice(0)) w(undefined);
  });
  return {
    next: () => (queue.length > 0 ? Promise.resolve(queue.shift()) : closed ? Promise.resolve(undefined) : new Promise((resolve) => waiting.push(resolve))),
    ended,
    release: () => (process.stdin as { unref?: () => void }).unref?.(),
  };
}

export function reportError(io: CliIo, e: FerryError): void {
  io.stderr.write(`ferry: error: ${e.message}\n`);
  io.exitCode = e.exitCode;
}

