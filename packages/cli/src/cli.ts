/**
 * The `ferry` program. `createCli()` returns the commander program so tests can
 * parse argv without a process exit; `main()` wires it to the process.
 */
import { Command, CommanderError, Option } from 'commander';
import { createWriteStream, fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { EXIT_CODES, FerryError, toFerryError } from '@ferry/core';
import type { CopyOptions } from '@ferry/core';
import { createRenderer } from './render.js';
import { formatJob, formatJobList, loadJob, loadJobs } from './status.js';
import type { Output } from './render.js';

export const VERSION = '0.1.0';

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
 * How this program starts itself (for agents). FERRY_PROFILE_DIR=DIR makes
 * every agent write a V8 CPU profile there (`node --cpu-prof`), for bench/.
 */
function selfCommand(): string[] {
  const profileDir = process.env.FERRY_PROFILE_DIR;
  return [process.execPath, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), fileURLToPath(new URL('./main.js', import.meta.url))];
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function describeExitCodes(): string {
  const rows = Object.entries(EXIT_CODES)
    .sort((a, b) => a[1] - b[1])
    .map(([code, n]) => `  ${String(n).padStart(3)}  ${code}`);
  return `\nExit codes:\n${rows.join('\n')}\n`;
}

export function createCli(io: CliIo): Command {
  const program = new Command('ferry')
    .description('Copy one huge file to or from a remote host over SSH, in parallel ranges over many agents and streams, each range verified by hash.')
    .version(VERSION)
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .showHelpAfterError('(run ferry --help for usage)')
    .exitOverride();

  program
    .command('cp')
    .description('copy SOURCE to DESTINATION; exactly one of them is remote, written [user@]host[:port]:path')
    .argument('<source>', 'local path or [user@]host[:port]:path')
    .argument('<destination>', 'local or remote path; a directory gets the source file name')
    .option('-a, --agents <n>', 'agent processes to start', '2')
    .option('-s, --streams <n>', 'SSH connections per agent', '2')
    .option('-r, --range-size <size>', 'range size, a multiple of 1MiB (default: from the file size, 16MiB-1GiB)')
    .addOption(new Option('--hash <algorithm>', 'range hash (default: xxh3, or what a resumed job used)').choices(['xxh3', 'sha256']))
    .addOption(new Option('--mode <mode>', 'data path: helper runs `ferry serve` remotely, sftp needs nothing remote').choices(['auto', 'helper', 'sftp']).default('auto'))
    .option('--remote-cmd <command>', 'command that starts the helper on the remote host', 'ferry serve')
    .option('-p, --preserve', 'preserve mode and modification time')
    .option('--known-hosts <file>', 'known_hosts file (default: ~/.ssh/known_hosts)')
    .option('--accept-new-host-key', 'add an unknown host key to known_hosts instead of failing')
    .option('-i, --identity <file>', 'private key file (repeatable; default: ssh-agent, ~/.ssh/id_ed25519, id_ecdsa, id_rsa)', collect, [])
    .option('--nats <url>', 'use this NATS server (JetStream enabled) instead of starting one; token from FERRY_NATS_TOKEN')
    .option('--state-dir <dir>', 'job state directory (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry)')
    .option('--ack-wait <duration>', 'time a range may go without progress before another agent takes it', '30s')
    .option('--window <size>', 'bytes in flight per connection', '8MiB')
    .option('--limit-rate <rate>', 'cap the whole copy at this many bytes per second, e.g. 500MB or 1GiB (default: no cap)')
    .option('--max-resends <n>', 're-sends of one range after hash mismatches before failing', '3')
    .option('--connect-timeout <duration>', 'SSH connection timeout', '20s')
    .option('--restart', 'start over instead of resuming an earlier run of the same copy')
    .option('--json', 'NDJSON events on stdout instead of the progress bar and summary')
    .option('-q, --quiet', 'print nothing but errors')
    .option('-v, --verbose', 'print agent diagnostics')
    .addHelpText('after', describeExitCodes())
    .action(async (source: string, destination: string, opts: Record<string, unknown>) => {
      const copyOptions: CopyOptions = {
        agents: opts.agents as string,
        streams: opts.streams as string,
        mode: opts.mode as string,
        remoteCmd: opts.remoteCmd as string,
        preserve: opts.preserve === true,
        acceptNewHostKey: opts.acceptNewHostKey === true,
        identity: opts.identity as string[],
        ackWait: opts.ackWait as string,
        window: opts.window as string,
        maxResends: opts.maxResends as string,
        connectTimeout: opts.connectTimeout as string,
        json: opts.json === true,
        quiet: opts.quiet === true,
      };
      if (opts.rangeSize !== undefined) copyOptions.rangeSize = opts.rangeSize as string;
      if (opts.hash !== undefined) copyOptions.hash = opts.hash as string;
      if (opts.restart === true) copyOptions.restart = true;
      if (opts.limitRate !== undefined) copyOptions.limitRate = opts.limitRate as string;
      if (opts.knownHosts !== undefined) copyOptions.knownHosts = opts.knownHosts as string;
      if (opts.nats !== undefined) copyOptions.nats = opts.nats as string;
      if (opts.stateDir !== undefined) copyOptions.stateDir = opts.stateDir as string;
      await copy(io, source, destination, copyOptions, opts.verbose === true);
    });

  program
    .command('resume')
    .description('continue an interrupted or failed copy, with the options it was started with')
    .argument('<job>', "job id (or a unique prefix), as 'ferry status' lists them")
    .option('--state-dir <dir>', 'job state directory (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry)')
    .option('--json', 'NDJSON events on stdout')
    .option('-q, --quiet', 'print nothing but errors')
    .option('-v, --verbose', 'print agent diagnostics')
    .action(async (id: string, opts: { stateDir?: string; json?: boolean; quiet?: boolean; verbose?: boolean }) => {
      try {
        const { defaultStateDir } = await import('@ferry/coordinator');
        const stateDir = opts.stateDir ?? defaultStateDir();
        const { job } = await loadJob(stateDir, id);
        const options: CopyOptions = { ...job.options, stateDir, json: opts.json === true, quiet: opts.quiet === true };
        delete options.restart;
        await copy(io, job.source, job.destination, options, opts.verbose === true);
      } catch (err) {
        reportError(io, toFerryError(err));
      }
    });

  program
    .command('status')
    .description('show the jobs in the state directory, or one job in detail')
    .argument('[job]', 'job id or unique prefix')
    .option('--state-dir <dir>', 'job state directory (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry)')
    .option('--json', 'print the status as JSON')
    .action(async (id: string | undefined, opts: { stateDir?: string; json?: boolean }) => {
      try {
        const { defaultStateDir } = await import('@ferry/coordinator');
        const stateDir = opts.stateDir ?? defaultStateDir();
        if (id) {
          const view = await loadJob(stateDir, id);
          io.stdout.write(opts.json ? JSON.stringify({ ...view.status, phase: view.phase, job: view.job }) + '\n' : formatJob(view));
        } else {
          const views = await loadJobs(stateDir);
          io.stdout.write(opts.json ? JSON.stringify(views.map((v) => ({ ...v.status, phase: v.phase, job: v.job }))) + '\n' : formatJobList(views, stateDir));
        }
        io.exitCode = 0;
      } catch (err) {
        reportError(io, toFerryError(err));
      }
    });

  program
    .command('serve')
    .description('helper for the remote side: speaks ferry\'s framed protocol on stdin/stdout (started by ferry over SSH)')
    .action(async () => {
      // A pipe or socket (as under sshd) gets an asynchronous stream; anything else a file stream.
      const st = fstatSync(1);
      const output = st.isFIFO() || st.isSocket() ? new Socket({ fd: 1, readable: false }) : createWriteStream('', { fd: 1 });
      try {
        const { serve } = await import('@ferry/serve');
        await serve({ input: process.stdin, output, software: `ferry ${VERSION}` });
        await new Promise<void>((resolve) => output.end(() => resolve()));
        io.exitCode = 0;
      } catch (err) {
        reportError(io, toFerryError(err));
      }
    });

  program
    .command('agent', { hidden: true })
    .description('run one agent of a job (started by the coordinator\'s launcher)')
    .requiredOption('--job <id>', 'job id')
    .requiredOption('--nats <url>', 'NATS URL; token from FERRY_NATS_TOKEN')
    .option('--index <n>', 'index of this agent', '0')
    .option('--id <name>', 'agent name (default: hostname-pid)')
    .action(async (opts: { job: string; nats: string; index: string; id?: string }) => {
      const corrupt = process.env.FERRY_TEST_CORRUPT_RANGES;
      try {
        const { runAgent } = await import('@ferry/agent');
        await runAgent({
          jobId: opts.job,
          natsUrl: opts.nats,
          natsToken: process.env.FERRY_NATS_TOKEN,
          index: Number(opts.index),
          ...(opts.id ? { agentId: opts.id } : {}),
          ...(io.signal ? { signal: io.signal } : {}),
          log: (line) => io.stderr.write(`${line}\n`),
          ...(corrupt ? { corruptRanges: new Set(corrupt.split(',').map(Number)) } : {}),
          ...(process.env.FERRY_AGENT_PARENT_PID ? { parentPid: Number(process.env.FERRY_AGENT_PARENT_PID) } : {}),
        });
        io.exitCode = 0;
      } catch (err) {
        reportError(io, toFerryError(err));
      }
    });

  return program;
}

async function copy(io: CliIo, source: string, destination: string, copyOptions: CopyOptions, verbose: boolean): Promise<void> {
  const style = copyOptions.json ? 'json' : copyOptions.quiet ? 'quiet' : 'human';
  const renderer = createRenderer(style, io.stdout, io.stderr, verbose);
  try {
    // Each command loads only what it needs: `ferry serve` starts on every remote connection.
    const { runCopy } = await import('@ferry/coordinator');
    await runCopy({
      source,
      destination,
      options: copyOptions,
      agentCommand: [...(io.selfCommand ?? selfCommand()), 'agent'],
      onEvent: (e) => renderer.onEvent(e),
      ...(io.signal ? { signal: io.signal } : {}),
    });
    io.exitCode = 0;
  } catch (err) {
    renderer.finish();
    const e = toFerryError(err);
    if (style === 'json') io.stdout.write(JSON.stringify({ type: 'error', code: e.code, message: e.message, host: e.host, path: e.path, range: e.range, exitCode: e.exitCode }) + '\n');
    reportError(io, e);
  }
}

function reportError(io: CliIo, e: FerryError): void {
  io.stderr.write(`ferry: error: ${e.message}\n`);
  io.exitCode = e.exitCode;
}

/** Runs the program on argv; resolves with the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const program = createCli(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return EXIT_CODES.USAGE;
    }
    const e = toFerryError(err);
    reportError(io, e);
  }
  return io.exitCode;
}

export { FerryError };
