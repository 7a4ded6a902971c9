/**
 * `ferry manifest JOB` and `ferry verify`: a finished job's manifest
 * (docs/manifest.md), and the data read again and compared with it, by job
 * (from the state directory alone) or by a manifest file.
 */
import { readFile } from 'node:fs/promises';
import { Option } from 'commander';
import type { Command } from 'commander';
import { FerryError, formatBytes, formatManifest, formatRate, parseManifest, toFerryError } from '@ferry/core';
import type { CopyOptions, Manifest } from '@ferry/core';
import type { VerifyEvent, VerifySummary } from '@ferry/coordinator';
import { reportError } from './actions.js';
import type { CliIo } from './actions.js';
import { loadJob } from './status.js';

const STATE_DIR_HELP = 'job state directory (default: $XDG_STATE_HOME/ferry or ~/.local/state/ferry)';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

async function stateDirOf(given: string | undefined): Promise<string> {
  const { defaultStateDir } = await import('@ferry/coordinator');
  return given ?? defaultStateDir();
}

/** The manifest of a finished job, by id or unique prefix. */
async function manifestOfJob(stateDir: string, id: string): Promise<{ text: string; view: Awaited<ReturnType<typeof loadJob>> }> {
  const { jobManifest } = await import('@ferry/coordinator');
  const view = await loadJob(stateDir, id);
  const [facts, entries] = await jobManifest(stateDir, view.job.jobId);
  return { text: formatManifest(facts, entries), view };
}

export function addVerifyCommands(program: Command, io: CliIo): void {
  program
    .command('manifest')
    .description("print a finished job's manifest: every file and symlink it copied, with per-range hashes and a root hash (format: docs/manifest.md)")
    .argument('<job>', "job id (or a unique prefix), as 'ferry status' lists them")
    .option('-o, --output <file>', 'write it to this file instead of stdout')
    .option('--state-dir <dir>', STATE_DIR_HELP)
    .action(async (id: string, opts: { output?: string; stateDir?: string }) => {
      try {
        const { text } = await manifestOfJob(await stateDirOf(opts.stateDir), id);
        if (opts.output !== undefined) {
          const { writeManifestFile } = await import('@ferry/coordinator');
          await writeManifestFile(opts.output, text).catch((err: unknown) => {
            throw new FerryError('USAGE', `cannot write the manifest to ${opts.output}: ${(err as Error).message}`, { path: opts.output! });
          });
        } else io.stdout.write(text);
        io.exitCode = 0;
      } catch (err) {
        reportError(io, toFerryError(err));
      }
    });

  program
    .command('verify')
    .description("read a finished job's destination (or --source) again and compare every file and range with its manifest; or, with --manifest, the data at PATH with a manifest file")
    .usage('[options] JOB | --manifest FILE PATH')
    .argument('<job-or-path>', 'the job id (or a unique prefix); with --manifest, the path (local or [user@]host[:port]:path) to check: a tree\'s root, or the file')
    .option('--manifest <file>', "a manifest ('ferry manifest JOB' wrote it) to check PATH against")
    .option('--source', "read the job's source instead of its destination")
    .option('-s, --streams <n>', 'connections (or local readers) hashing at once; a big file\'s ranges spread over them', '4')
    .option('--state-dir <dir>', STATE_DIR_HELP)
    .addOption(new Option('--mode <mode>', 'data path to the remote host (default: what the job used, else auto)').choices(['auto', 'helper', 'python', 'sftp']))
    .option('--remote-cmd <command>', 'command that starts the helper on the remote host (default: what the job used)')
    .addOption(new Option('--transport <client>', 'SSH client: ssh2 (embedded) or openssh').choices(['ssh2', 'openssh']))
    .option('--ssh-cmd <command>', 'with --transport openssh: the ssh program and leading options')
    .option('-F, --ssh-config <file>', "ssh client configuration to read instead of ~/.ssh/config and /etc/ssh/ssh_config ('none': none)")
    .option('--known-hosts <file>', 'known_hosts file (default: what the job used, else ssh_config\'s)')
    .option('--accept-new-host-key', 'add an unknown host key to known_hosts instead of failing')
    .option('-i, --identity <file>', 'private key file (repeatable; default: what the job used, else ssh-agent and the usual keys)', collect, [])
    .option('--connect-timeout <duration>', 'SSH connection timeout')
    .option('--json', 'NDJSON events on stdout instead of the report')
    .option('-q, --quiet', 'print nothing but errors')
    .action(async (target: string, opts: VerifyOpts) => {
      const json = opts.json === true;
      try {
        await verify(io, target, opts);
      } catch (err) {
        const e = toFerryError(err);
        if (json) io.stdout.write(JSON.stringify({ type: 'error', code: e.code, message: e.message, host: e.host, path: e.path, exitCode: e.exitCode }) + '\n');
        reportError(io, e);
      }
    });
}

interface VerifyOpts {
  manifest?: string;
  source?: boolean;
  streams: string;
  stateDir?: string;
  mode?: string;
  remoteCmd?: string;
  transport?: string;
  sshCmd?: string;
  sshConfig?: string;
  knownHosts?: string;
  acceptNewHostKey?: boolean;
  identity: string[];
  connectTimeout?: string;
  json?: boolean;
  quiet?: boolean;
}

/** The connection options given on this command line (each wins over the job's). */
function givenOptions(opts: VerifyOpts): CopyOptions {
  const o: CopyOptions = {};
  if (opts.mode !== undefined) o.mode = opts.mode;
  if (opts.remoteCmd !== undefined) o.remoteCmd = opts.remoteCmd;
  if (opts.transport !== undefined) o.transport = opts.transport;
  if (opts.sshCmd !== undefined) o.sshCmd = opts.sshCmd;
  if (opts.sshConfig !== undefined) o.sshConfig = opts.sshConfig;
  if (opts.knownHosts !== undefined) o.knownHosts = opts.knownHosts;
  if (opts.acceptNewHostKey === true) o.acceptNewHostKey = true;
  if (opts.identity.length > 0) o.identity = opts.identity;
  if (opts.connectTimeout !== undefined) o.connectTimeout = opts.connectTimeout;
  return o;
}

/** What a job's options say of how to connect (nothing of how to copy). */
function connectionOptions(job: CopyOptions): CopyOptions {
  const o: CopyOptions = {};
  for (const k of ['mode', 'remoteCmd', 'transport', 'sshCmd', 'sshConfig', 'knownHosts', 'acceptNewHostKey', 'identity', 'connectTimeout', 'sharedHelper'] as const) {
    if (job[k] !== undefined) (o as Record<string, unknown>)[k] = job[k];
  }
  return o;
}

async function verify(io: CliIo, target: string, opts: VerifyOpts): Promise<void> {
  const connections = Number(opts.streams);
  if (!Number.isInteger(connections) || connections < 1 || connections > 64) throw new FerryError('USAGE', `--streams must be a whole number from 1 to 64, got '${opts.streams}'`);
  let manifest: Manifest;
  let location: string;
  let options: CopyOptions;
  if (opts.manifest !== undefined) {
    if (opts.source) throw new FerryError('USAGE', '--source goes with a job (ferry verify JOB --source); with --manifest, PATH says where the data is');
    let text: string;
    try {
      text = await readFile(opts.manifest, 'utf8');
    } catch (err) {
      throw new FerryError('USAGE', `cannot read the manifest ${opts.manifest}: ${(err as Error).message}`, { path: opts.manifest });
    }
    manifest = parseManifest(text, opts.manifest);
    location = target;
    options = givenOptions(opts);
  } else {
    const stateDir = await stateDirOf(opts.stateDir);
    const { text, view } = await manifestOfJob(stateDir, target);
    manifest = parseManifest(text, `job ${view.job.jobId}'s manifest`);
    location = opts.source ? view.job.sourceLabel : view.job.destinationLabel;
    options = { ...connectionOptions(view.job.options), ...givenOptions(opts) };
  }
  const { runVerify } = await import('@ferry/coordinator');
  const style = opts.json ? 'json' : opts.quiet ? 'quiet' : 'human';
  const show = renderer(io, style);
  let summary: VerifySummary;
  try {
    summary = await runVerify({
      manifest,
      location,
      options,
      connections,
      onEvent: show,
      ...(io.signal ? { signal: io.signal } : {}),
    });
  } finally {
    show.clear();
  }
  if (summary.bad > 0) {
    throw new FerryError('VERIFY_FAILED', `${summary.bad} of ${summary.entries} entries at ${location} do not match the manifest${style === 'human' ? ' (listed above)' : ''}: ${problemCounts(summary)}`);
  }
  io.exitCode = 0;
}

function problemCounts(s: VerifySummary): string {
  const parts = (['changed', 'missing', 'kind', 'unreadable'] as const).filter((k) => s[k] > 0).map((k) => `${s[k]} ${k === 'kind' ? 'of another kind' : k}`);
  return parts.join(', ');
}

/** Events as output: NDJSON, or the report (and on a terminal a progress line on stderr); `clear` removes that line. */
function renderer(io: CliIo, style: 'json' | 'quiet' | 'human'): ((e: VerifyEvent) => void) & { clear(): void } {
  let shown = false;
  const clear = () => {
    if (shown) io.stderr.write('\r\x1b[2K');
    shown = false;
  };
  const show = (e: VerifyEvent) => {
    if (e.type === 'verify.progress') {
      if (style === 'human' && io.stderr.isTTY === true) {
        const pct = e.total > 0 ? ((e.bytes / e.total) * 100).toFixed(1) : '100.0';
        io.stderr.write(`\r\x1b[2Kverifying: ${pct.padStart(5)}%  ${formatBytes(e.bytes)}/${formatBytes(e.total)}  ${formatRate(e.rate)}  ${e.entriesDone}/${e.entries} entries`);
        shown = true;
      }
      if (style === 'json') io.stdout.write(JSON.stringify(e) + '\n');
      return;
    }
    clear();
    render(io, style, e);
  };
  return Object.assign(show, { clear });
}

function render(io: CliIo, style: 'json' | 'quiet' | 'human', e: VerifyEvent): void {
  if (style === 'json') {
    io.stdout.write(JSON.stringify(e) + '\n');
    return;
  }
  if (e.type === 'warning') {
    io.stderr.write(`ferry: warning: ${e.message}\n`);
    return;
  }
  if (style === 'quiet') return;
  switch (e.type) {
    case 'verify.start':
    case 'verify.progress':
      return;
    case 'verify.mismatch': {
      const lines = [`${e.path}: ${e.problem}: ${e.message}`];
      for (const r of e.ranges ?? []) {
        lines.push(`    range ${r.range} at byte ${r.offset} (${formatBytes(r.length)}): ${r.found === null ? 'past the end of the file now' : `hash ${r.found} now`}, ${r.expected} in the manifest`);
      }
      io.stdout.write(lines.join('\n') + '\n');
      return;
    }
    case 'verify.done': {
      const verdict = e.bad === 0 ? 'all match' : `${e.bad} do not match (${problemCounts(e)})`;
      io.stdout.write(`ferry: verified ${e.entries} entr${e.entries === 1 ? 'y' : 'ies'} at ${e.location}${e.job ? ` (job ${e.job})` : ''}: ${formatBytes(e.bytes)} read in ${e.seconds.toFixed(1)} s; ${verdict}\n`);
      return;
    }
  }
}
