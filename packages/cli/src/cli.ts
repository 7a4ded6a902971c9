/**
 * The `ferry` program. `createCli()` returns the commander program so tests can
 * parse argv without a process exit; `main()` wires it to the process.
 */
import { Command, CommanderError, Option } from 'commander';
import { AGENT_EXEC_ENV, CORRUPT_RANGES_ENV, EXIT_CODES, FerryError, JOB_SPEC_SHA256_ENV, NATS_TLS_ENV, corruptRangesFrom, decodeAgentExec, decodeClientTls, toFerryError } from '@ferry/core';
import type { CopyOptions, WarmGo, WarmHint } from '@ferry/core';
import { copy, expandSources, parseSecretsLine, reportError, stdinLines, syncTree } from './actions.js';
import type { CliIo, LaunchOptions } from './actions.js';
import { runSpmd, sbatchScript, submitSbatch } from './launch.js';
import { runServe } from './serve-command.js';
import { checkCommand, checkListsFrom } from './check-command.js';
import { formatJob, formatJobList, loadJob, loadJobs } from './status.js';
import { addVerifyCommands } from './verify-command.js';
import { VERSION } from './version.js';

export type { CliIo } from './actions.js';

export { VERSION };

/** As the coordinator's DEFAULT_CHECK_STREAMS, without loading the coordinator for --help. */
const DEFAULT_CHECK_STREAMS_TEXT = '4';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function describeExitCodes(): string {
  const rows = Object.entries(EXIT_CODES)
    .sort((a, b) => a[1] - b[1])
    .map(([code, n]) => `  ${String(n).padStart(3)}  ${code}`);
  return `\nExit codes:\n${rows.join('\n')}\n`;
}

/** A destination path with a trailing '/', so that it must be an existing directory (`host:`, the login directory, as it is). */
function intoDirectory(destination: string): string {
  return destination.endsWith('/') || destination.endsWith(':') ? destination : `${destination}/`;
}

/** How a command's agents are started: `--launcher` and what goes with it (cp and sync). */
function addLaunchOptions(cmd: Command): void {
  cmd
    .addOption(new Option('--launcher <name>', 'how agents are started').choices(['local', 'ssh', 'srun', 'mpirun']).default('local'))
    .option('--hosts <hostlist>', 'ssh and mpirun launchers: hosts to start agents on, e.g. node[01-04] or n1,n2')
    .option('--hosts-file <file>', 'ssh and mpirun launchers: a file with one host per line')
    .option('--nodes <n>', 'srun launcher: nodes to spread the agents over')
    .option('--agents-per-node <n>', 'srun launcher: agents per node')
    .option('--agent-cmd <command>', 'how the launched nodes start ferry (default: this node\'s node binary and ferry)')
    .option('--ssh-option <option>', 'ssh launcher: an ssh -o option, e.g. IdentityFile=~/.ssh/id_cluster (repeatable)', collect, [])
    .option('--nats-listen <address>', 'address the embedded nats-server listens on (default: 127.0.0.1 for local agents, else 0.0.0.0)')
    .option('--nats-advertise <address>', 'address agents on other nodes reach it by (default: this node\'s first non-loopback IPv4)');
}

/** What `ferry sync` adds to the copy options (and `ferry run --sync`, where `prefix` says so). */
function addSyncOptions(cmd: Command, prefix: string): Command {
  return cmd
    .addOption(new Option('--compare <level>', `${prefix}when an entry at the destination counts as the same: exists; size; mtime (the default: size, modification time to the second, and mode); checksum (size and content, both sides hashed)`).choices(['exists', 'size', 'mtime', 'checksum']))
    .option('--delete', `${prefix}remove what the destination has and the source does not, once everything else arrived (never after a failure)`)
    .option('-n, --dry-run', `${prefix}list what would be created, updated and deleted, and change nothing`)
    .option('--exit-code', `${prefix}exit 0 only when nothing had to change, and 3 when something was (with --dry-run: would be) created, updated or deleted`);
}

/** The options addSyncOptions adds, as commander names them, with their flags: `ferry run` refuses them without --sync. */
const SYNC_ONLY: ReadonlyArray<[string, string]> = [['compare', '--compare'], ['delete', '--delete'], ['dryRun', '--dry-run'], ['exitCode', '--exit-code']];

function syncOptionsFrom(opts: Record<string, unknown>): CopyOptions {
  return {
    ...copyOptionsFrom(opts),
    // A sync compares times: the copy keeps them (and modes), as rsync -a does.
    preserve: true,
    compare: (opts.compare as string | undefined) ?? 'mtime',
    ...(opts.delete === true ? { delete: true } : {}),
    ...(opts.dryRun === true ? { dryRun: true } : {}),
  };
}

/** `--sbatch`: print (or, with `--sbatch submit`, submit) the batch script of this copy or sync. */
async function sbatch(io: CliIo, source: string, destination: string, opts: Record<string, unknown>): Promise<void> {
  try {
    const script = sbatchScript(source, destination, opts);
    if (opts.sbatch === 'submit') await submitSbatch(io, script);
    else io.stdout.write(script);
    io.exitCode = 0;
  } catch (err) {
    reportError(io, toFerryError(err));
  }
}

/** The launch options addLaunchOptions parsed. */
function launchOptionsFrom(opts: Record<string, unknown>): LaunchOptions {
  return {
    launcher: opts.launcher as LaunchOptions['launcher'],
    ...(opts.hosts !== undefined ? { hosts: opts.hosts as string } : {}),
    ...(opts.hostsFile !== undefined ? { hostsFile: opts.hostsFile as string } : {}),
    ...(opts.nodes !== undefined ? { nodes: opts.nodes as string } : {}),
    ...(opts.agentsPerNode !== undefined ? { agentsPerNode: opts.agentsPerNode as string } : {}),
    ...(opts.agentCmd !== undefined ? { agentCmd: opts.agentCmd as string } : {}),
    sshOptions: opts.sshOption as string[],
    ...(opts.natsListen !== undefined ? { natsListen: opts.natsListen as string } : {}),
    ...(opts.natsAdvertise !== undefined ? { natsAdvertise: opts.natsAdvertise as string } : {}),
  };
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

  const cp = program
    .command('cp')
    .description('copy SOURCE to DESTINATION (a directory tree with -r), or several sources into the directory DESTINATION; one side is remote, written [user@]host[:port]:path')
    .usage('[options] SOURCE... DESTINATION')
    .argument('<paths...>', 'SOURCE: a local path or [user@]host[:port]:path (several: each goes into DESTINATION, which must be a directory); DESTINATION, last: a local or remote path, a directory gets the source\'s name');
  addCopyOptions(cp);
  addLaunchOptions(cp);
  cp.option('--sbatch [submit]', 'print a Slurm batch script that runs this copy with srun ferry run (or submit it: --sbatch submit)')
    .option('--time <limit>', 'with --sbatch: the job\'s time limit', '1-00:00:00')
    .addHelpText('after', describeExitCodes())
    .action(async (paths: string[], opts: Record<string, unknown>) => {
      if (paths.length < 2) return reportError(io, new FerryError('USAGE', `missing the destination: ferry cp SOURCE... DESTINATION (run ferry cp --help)`));
      const destination = paths[paths.length - 1]!;
      const copyOptions = copyOptionsFrom(opts);
      let sources: string[];
      try {
        // Remote patterns (host:'/data/run*') as scp's remote shell would expand them, without one.
        sources = await expandSources(paths.slice(0, -1), copyOptions, io.signal);
      } catch (err) {
        return reportError(io, toFerryError(err));
      }
      const source = sources[0]!;
      if (sources.length > 1 && (opts.sbatch !== undefined || opts.launcher !== 'local')) {
        return reportError(io, new FerryError('USAGE', `several sources go with the local launcher only for now: run one ferry cp per source with --${opts.sbatch !== undefined ? 'sbatch' : 'launcher'}`));
      }
      if (opts.sbatch !== undefined) return sbatch(io, source, destination, opts);
      const launch = launchOptionsFrom(opts);
      if (sources.length === 1) return copy(io, source, destination, copyOptions, opts.verbose === true, launch, {}, opts.recursive === true);
      // As scp: each source goes into the destination, which must be a directory (a trailing
      // '/' makes a missing one an error, never the first source's new name); one that fails
      // does not stop the others, and the first failure's exit code is the command's.
      const into = intoDirectory(destination);
      let first = 0;
      for (const one of sources) {
        await copy(io, one, into, copyOptions, opts.verbose === true, launch, {}, opts.recursive === true);
        if (first === 0 && io.exitCode !== 0) first = io.exitCode;
      }
      io.exitCode = first;
    });

  const check = program
    .command('check')
    .description('compare DESTINATION with SOURCE, as its copy: both walked and hashed at once, range by range; lines as rclone check --combined marks them (* differ, + only in source, - only in destination, ! not compared); exit 0 only when identical')
    .usage('[options] SOURCE DESTINATION')
    .argument('<source>', 'a local path or [user@]host[:port]:path, a directory or a file')
    .argument('<destination>', 'the same, compared as the copy of SOURCE itself (never as a directory it went into)');
  addConnectionOptions(check);
  check
    .option('-s, --streams <n>', `hashing connections per remote side (default: ${DEFAULT_CHECK_STREAMS_TEXT})`)
    .option('--range-size <size>', 'a file is hashed in ranges of this size, all at once, a multiple of 1MiB (default: 64MiB)')
    .addOption(new Option('--hash <algorithm>', 'content hash (default: xxh3; crc32 where a side has only the python helper; sha256 in SFTP mode, computed remotely by sha256sum)').choices(['xxh3', 'crc32', 'sha256']))
    .option('--size-only', 'compare sizes only, not content: a fast pass')
    .option('--combined <file>', 'write every entry to FILE, marked = same, * differ, + only in source, - only in destination, ! error (- : stdout)')
    .option('--match <file>', 'write the paths that are the same on both sides to FILE')
    .option('--differ <file>', 'write the paths that differ to FILE')
    .option('--missing-on-dst <file>', 'write the paths only in the source to FILE')
    .option('--missing-on-src <file>', 'write the paths only in the destination to FILE')
    .option('--error <file>', 'write the paths that could not be compared to FILE')
    .option('--window <size>', 'bytes in flight per connection', '8MiB')
    .option('--json', 'NDJSON events on stdout (check.start, check.entry for each entry that is not the same, check.done)')
    .option('-q, --quiet', 'print nothing but errors')
    .option('-v, --verbose', 'say why each entry differs')
    .addHelpText('after', describeExitCodes())
    .action(async (source: string, destination: string, opts: Record<string, unknown>) => {
      let lists;
      try {
        lists = checkListsFrom(opts);
      } catch (err) {
        return reportError(io, toFerryError(err));
      }
      await checkCommand(io, source, destination, { copyOptions: copyOptionsFrom(opts), sizeOnly: opts.sizeOnly === true, verbose: opts.verbose === true, lists });
    });

  const run = program
    .command('run')
    .description('SPMD entry for srun/mpirun: rank 0 coordinates (and runs an agent), every other rank is an agent')
    .argument('<source>', 'local path or [user@]host[:port]:path')
    .argument('<destination>', 'local or remote path; a directory gets the source file name');
  addCopyOptions(run);
  run
    .option('--rendezvous <file>', 'file on a filesystem all ranks share where rank 0 says how to join, in a directory only you can write (default: <state-dir>/rendezvous/<launch id>.json)')
    .option('--no-rank0-agent', 'rank 0 only coordinates')
    .option('--nats-listen <address>', 'address rank 0\'s nats-server listens on', '0.0.0.0')
    .option('--nats-advertise <address>', 'address the other ranks reach it by (default: rank 0\'s first non-loopback IPv4)')
    .option('--rendezvous-timeout <duration>', 'how long ranks other than 0 wait for rank 0', '10m')
    .option('--sync', 'run `ferry sync SOURCE DESTINATION` instead of a copy: rank 0 compares and deletes, every rank\'s agent sends what differs');
  addSyncOptions(run, 'with --sync: ')
    .addHelpText('after', describeExitCodes())
    .action(async (source: string, destination: string, opts: Record<string, unknown>) => {
      if (opts.sync !== true) {
        const stray = SYNC_ONLY.find(([key]) => opts[key] !== undefined && opts[key] !== false);
        if (stray) return reportError(io, new FerryError('USAGE', `${stray[1]} goes with --sync: srun ferry run --sync ${stray[1]} SOURCE DESTINATION`));
        return runSpmd(io, source, destination, copyOptionsFrom(opts), opts);
      }
      await runSpmd(io, source, destination, syncOptionsFrom(opts), opts, { exitCode: opts.exitCode === true });
    });

  const sync = program
    .command('sync')
    .description('make DESTINATION the same as SOURCE (a directory tree or a file), sending only what differs; one side is remote, written [user@]host[:port]:path')
    .argument('<source>', 'a local path or [user@]host[:port]:path: a directory or a file')
    .argument('<destination>', 'the copy itself: created when missing; an existing directory is compared with SOURCE, not entered (a file source goes into a directory under its own name)');
  addCopyOptions(sync);
  addLaunchOptions(sync);
  addSyncOptions(sync, '')
    .option('--sbatch [submit]', 'print a Slurm batch script that runs this sync with srun ferry run --sync (or submit it: --sbatch submit)')
    .option('--time <limit>', 'with --sbatch: the job\'s time limit', '1-00:00:00')
    .addHelpText('after', describeExitCodes())
    .action(async (source: string, destination: string, opts: Record<string, unknown>) => {
      if (opts.sbatch !== undefined) return sbatch(io, source, destination, { ...opts, sync: true });
      await syncTree(io, source, destination, syncOptionsFrom(opts), opts.verbose === true, opts.exitCode === true, launchOptionsFrom(opts));
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
        const view = await loadJob(stateDir, id);
        const job = view.job;
        const options: CopyOptions = { ...job.options, stateDir, json: opts.json === true, quiet: opts.quiet === true };
        delete options.restart;
        if (view.kind === 'tree') await copy(io, job.source, job.destination, options, opts.verbose === true, { launcher: 'local' }, {}, true);
        else await copy(io, view.job.source, view.job.destination, options, opts.verbose === true, (view.job.launch as LaunchOptions | undefined) ?? { launcher: 'local' });
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

  addVerifyCommands(program, io);

  program
    .command('serve')
    .description('helper for the remote side: speaks ferry\'s framed protocol on stdin/stdout (started by ferry over SSH)')
    .action(async () => {
      await runServe(io);
    });

  program
    .command('agent', { hidden: true })
    .description('run one agent of a job (started by the coordinator\'s launcher)')
    .option('--job <id>', 'job id (required unless --warm)')
    .option('--nats <url>', 'NATS URL; token from FERRY_NATS_TOKEN, TLS credential from FERRY_NATS_TLS (required unless --warm); what the agent runs (SSH client, remote command) from FERRY_AGENT_EXEC, never from NATS')
    .option('--index <n>', 'index of this agent (default: the rank from SLURM_PROCID, OMPI_COMM_WORLD_RANK or PMI_RANK, else 0)')
    .option('--id <name>', 'agent name (default: hostname-pid)')
    .option('--secrets-stdin', 'read secret environment (the NATS token) as a JSON line on stdin, and stop when stdin closes')
    .option('--warm', 'started ahead of the job (local launcher): read what to connect to, then the job, as JSON lines on stdin; stop when stdin closes')
    .action(async (opts: { job?: string; nats?: string; index?: string; id?: string; secretsStdin?: boolean; warm?: boolean }) => {
      let preconnected: import('@ferry/agent').Preconnected | undefined;
      try {
        const { runAgent, Preconnected } = await import('@ferry/agent');
        const { rankFromEnv } = await import('@ferry/launcher');
        let launcherGone: Promise<void> | undefined;
        let job = opts.job;
        let nats = opts.nats;
        let index = opts.index !== undefined ? Number(opts.index) : undefined;
        if (opts.warm) {
          const lines = stdinLines();
          const hint = await lines.next();
          if (hint === undefined) return;
          preconnected = new Preconnected(JSON.parse(hint) as WarmHint);
          const go = await Promise.race([lines.next(), new Promise<undefined>((resolve) => io.signal?.addEventListener('abort', () => resolve(undefined), { once: true }))]);
          // No job for this agent (the copy failed to start, or needs fewer agents): leave quietly.
          if (go === undefined) return;
          const g = JSON.parse(go) as WarmGo;
          for (const [k, v] of Object.entries(g.env)) process.env[k] = v;
          ({ job, nats, index } = g);
          launcherGone = lines.ended;
          lines.release();
        } else if (opts.secretsStdin) {
          // The first line holds the secrets; stdin ending later means the launcher is gone.
          const lines = stdinLines();
          for (const [k, v] of Object.entries(parseSecretsLine(await lines.next()))) process.env[k] = v;
          launcherGone = lines.ended;
        }
        if (job === undefined || nats === undefined) throw new FerryError('USAGE', 'ferry agent needs --job and --nats (or --warm)');
        const corruptRanges = corruptRangesFrom(process.env[CORRUPT_RANGES_ENV]);
        await runAgent({
          jobId: job,
          natsUrl: nats,
          natsToken: process.env.FERRY_NATS_TOKEN,
          ...(process.env[NATS_TLS_ENV] ? { natsTls: decodeClientTls(process.env[NATS_TLS_ENV]) } : {}),
          // What it runs: from its launcher, never from NATS.
          exec: decodeAgentExec(process.env[AGENT_EXEC_ENV]),
          ...(process.env[JOB_SPEC_SHA256_ENV] ? { specSha256: process.env[JOB_SPEC_SHA256_ENV] } : {}),
          index: index ?? rankFromEnv().rank,
          ...(launcherGone ? { launcherGone } : {}),
          ...(preconnected ? { preconnected } : {}),
          ...(opts.id ? { agentId: opts.id } : {}),
          ...(io.signal ? { signal: io.signal } : {}),
          log: (line) => io.stderr.write(`${line}\n`),
          ...(corruptRanges ? { corruptRanges } : {}),
          ...(process.env.FERRY_AGENT_PARENT_PID ? { parentPid: Number(process.env.FERRY_AGENT_PARENT_PID) } : {}),
        });
        io.exitCode = 0;
      } catch (err) {
        reportError(io, toFerryError(err));
      } finally {
        preconnected?.close();
      }
    });

  return program;
}

/** How a command reaches a remote host: the options `ferry cp`, `ferry run` and `ferry check` share. */
function addConnectionOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--mode <mode>', "data path: helper runs `ferry serve` remotely, python sends ferry's helper to the remote python3, sftp needs nothing remote; auto takes the first that starts").choices(['auto', 'helper', 'python', 'sftp']).default('auto'))
    .option('--remote-cmd <command>', 'command that starts the helper on the remote host', 'ferry serve')
    .addOption(new Option('--transport <client>', 'SSH client of the data connections: ssh2 (embedded) or openssh (an ssh process per connection: ~/.ssh/config applies, helper mode only)').choices(['ssh2', 'openssh']).default('ssh2'))
    .option('--ssh-cmd <command>', 'with --transport openssh: the ssh program and leading options, e.g. "ssh -F ~/.ssh/hpc_config"')
    .option('-F, --ssh-config <file>', "ssh client configuration to read instead of ~/.ssh/config and /etc/ssh/ssh_config, as ssh -F ('none': none)")
    .option('--known-hosts <file>', "known_hosts file (default: ssh_config's UserKnownHostsFile, else ~/.ssh/known_hosts and known_hosts2; /etc/ssh/ssh_known_hosts is read too)")
    .option('--accept-new-host-key', 'add an unknown host key to known_hosts instead of failing')
    .option('-i, --identity <file>', "private key file (repeatable; default: ssh-agent, then ssh_config's IdentityFile, else ~/.ssh/id_ed25519, id_ecdsa, id_rsa)", collect, [])
    .option('--connect-timeout <duration>', "SSH connection timeout (default: ssh_config's ConnectTimeout, else 20s), and how long the coordinator waits for the remote helper to answer (agents wait 4x as long; default 20s)");
}

/** The options `ferry cp` and `ferry run` share. */
function addCopyOptions(cmd: Command): Command {
  addConnectionOptions(cmd);
  return cmd
    .option('-a, --agents <n>', 'agent processes to start (default: one per 4 cores of this node, 1 to 8; with --launcher srun --nodes N, N x --agents-per-node; with --hosts, one per host)')
    .option('-s, --streams <n>', 'SSH connections per agent (default: tuned during the copy, 1 to 16)')
    .option('-r, --recursive', 'copy a whole directory tree (push or pull): an existing destination directory receives it under its own name, as scp -r; a file is copied as the file')
    .option('--range-size <size>', 'range size, a multiple of 1MiB (default: from the file size, 16MiB-1GiB)')
    .option('--batch-files-under <size>', 'with -r: files smaller than this travel many to a batch (default: 4MiB)')
    .option('--batch-size <size>', 'with -r: bytes of small files sent as one batch, at most (default: 64MiB; 4096 files at most)')
    .option('--stripe-files-over <size>', 'with -r: files at least this big are striped over every agent and stream, each as a copy of its own (default: 256MiB)')
    .addOption(new Option('--hash <algorithm>', 'range hash (default: xxh3, crc32 where the remote side has no ferry, or what a resumed job used)').choices(['xxh3', 'crc32', 'sha256']))
    .option('-p, --preserve', 'preserve mode and modification time')
    .addOption(new Option('--preserve=owner', 'with -r: keep owner and group even where the destination side is not root (as root there they are kept anyway)'))
    .option('--numeric-ids', 'with -r: owner and group by number, not mapped by name on the destination (as rsync --numeric-ids)')
    .option('--xattrs', 'with -r: copy extended attributes (user.*; trusted.* and security.* as root; never lustre.*): helper and python modes')
    .option('--acls', 'with -r: copy POSIX ACLs (system.posix_acl_access and _default): helper and python modes')
    .option('--fail-fast', 'with -r: stop at the first entry that fails, with its own exit code (default: list it in failed.ndjson, go on, exit 72)')
    .option('--direct-io', 'write the destination with O_DIRECT, around the page cache, on any file system (default: only on a local disk file system: ext4, xfs, btrfs, f2fs; falls back to buffered writes where the file system refuses)')
    .option('--no-direct-io', 'write the destination through the page cache, even on a local disk file system')
    .option('--verify', 'read every range back from the destination after its fsync and hash it again: catches what goes wrong between receiving and storing, at the cost of reading the file once more where it is written')
    .option('--delta', 'where the destination file exists: hash both sides per range, send only the ranges that differ, and copy the unchanged ones from the old file on the destination host (the new file still replaces the old one only when complete and verified)')
    .option('--inplace', 'with --delta: write the changed ranges straight into the existing destination file, for files too big to hold twice (an interrupted run leaves a file that is neither old nor new until a rerun finishes, and readers see it change)')
    .option('--shared-helper', "one helper serves up to 8 of a process's connections to a host, reached over OpenSSH streamlocal forwarding: fewer processes to start (helper mode, ssh2 transport)")
    .option('--nats <url>', 'use this NATS server (JetStream enabled) instead of starting one; token from FERRY_NATS_TOKEN')
    .option('--state-dir <dir>', 'job state directory (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry)')
    .option('--ack-wait <duration>', 'time a range may go without progress before another agent takes it', '30s')
    .option('--window <size>', 'bytes in flight per connection', '8MiB')
    .option('--send-window <size>', "cap the unread bytes an OpenSSH server holds per connection, e.g. 512KiB: cheaper for a CPU-bound sshd on a short link, but limits each stream to size/RTT (0: the server's whole window)", '0')
    .option('--limit-rate <rate>', 'cap the whole copy at this many bytes per second, e.g. 500MB or 1GiB (default: no cap)')
    .option('--max-per-host <n>', 'connections each remote host gets from the whole copy, at most (default: no cap)')
    .option('--max-resends <n>', 're-sends of one range after hash mismatches before failing', '3')
    .option('--restart', 'start over instead of resuming an earlier run of the same copy')
    .option('--json', 'NDJSON events on stdout instead of the progress bar and summary')
    .option('-q, --quiet', 'print nothing but errors')
    .option('-v, --verbose', 'print agent diagnostics');
}

function copyOptionsFrom(opts: Record<string, unknown>): CopyOptions {
  const o: CopyOptions = {
    mode: opts.mode as string,
    remoteCmd: opts.remoteCmd as string,
    transport: opts.transport as string,
    preserve: opts.preserve === true,
    acceptNewHostKey: opts.acceptNewHostKey === true,
    identity: opts.identity as string[],
    ackWait: opts.ackWait as string,
    window: opts.window as string,
    sendWindow: opts.sendWindow as string,
    maxResends: opts.maxResends as string,
    json: opts.json === true,
    quiet: opts.quiet === true,
  };
  if (opts.agents !== undefined) o.agents = opts.agents as string;
  if (opts.streams !== undefined) o.streams = opts.streams as string;
  if (opts.rangeSize !== undefined) o.rangeSize = opts.rangeSize as string;
  if (opts.batchFilesUnder !== undefined) o.batchFilesUnder = opts.batchFilesUnder as string;
  if (opts.stripeFilesOver !== undefined) o.stripeFilesOver = opts.stripeFilesOver as string;
  if (opts.batchSize !== undefined) o.batchSize = opts.batchSize as string;
  if (opts.hash !== undefined) o.hash = opts.hash as string;
  if (opts.restart === true) o.restart = true;
  if (opts.failFast === true) o.failFast = true;
  if (opts['preserve=owner'] === true) o.preserveOwner = true;
  if (opts.numericIds === true) o.numericIds = true;
  if (opts.xattrs === true) o.xattrs = true;
  if (opts.acls === true) o.acls = true;
  if (typeof opts.directIo === 'boolean') o.directIo = opts.directIo;
  if (opts.verify === true) o.verify = true;
  if (opts.delta === true) o.delta = true;
  if (opts.inplace === true) o.inplace = true;
  if (opts.sharedHelper === true) o.sharedHelper = true;
  if (opts.limitRate !== undefined) o.limitRate = opts.limitRate as string;
  if (opts.maxPerHost !== undefined) o.maxPerHost = opts.maxPerHost as string;
  if (opts.knownHosts !== undefined) o.knownHosts = opts.knownHosts as string;
  if (opts.sshConfig !== undefined) o.sshConfig = opts.sshConfig as string;
  if (opts.connectTimeout !== undefined) o.connectTimeout = opts.connectTimeout as string;
  if (opts.sshCmd !== undefined) o.sshCmd = opts.sshCmd as string;
  if (opts.nats !== undefined) o.nats = opts.nats as string;
  if (opts.stateDir !== undefined) o.stateDir = opts.stateDir as string;
  return o;
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
