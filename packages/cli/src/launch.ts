/**
 * Launching agents beyond this machine: the launcher options of `ferry cp`,
 * the SPMD entry `ferry run` (started once per task by srun or mpirun), and
 * `ferry cp --sbatch`.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { FerryError, decodeClientTls, errnoOf, parseDuration, resolveCopyOptions, toFerryError } from '@ferry/core';
import type { AgentExec, CopyOptions } from '@ferry/core';
import { shellQuote } from '@ferry/launcher';
import { SYNC_CHANGED_EXIT, copy, reportError, selfCommand, syncTree } from './actions.js';
import type { CliIo } from './actions.js';

export interface Rendezvous {
  launchId: string;
  jobId?: string;
  url?: string;
  token?: string;
  /** The NATS credential beyond loopback, as FERRY_NATS_TLS holds it. */
  tls?: string;
  /** SHA-256 of the job spec rank 0 stored in NATS: the other ranks refuse any other. */
  specSha256?: string;
  /** Set by rank 0 when the copy is over, so late ranks do not wait. */
  finished?: boolean;
  exitCode?: number;
  at: number;
}

const RENDEZVOUS_FIX = 'put --rendezvous in a directory of your own that only you can write (the default is under --state-dir)';

/**
 * Rank 0's side: the file holds the job's NATS token, so it is written only
 * into a directory that is the user's and closed to others' writes, through
 * an unguessable temporary name (coordinator's private-file.ts).
 */
export async function writeRendezvous(file: string, value: Rendezvous): Promise<void> {
  const { checkPrivateDir, writePrivateFile } = await import('@ferry/coordinator');
  await checkPrivateDir(dirname(file), 'rendezvous file', RENDEZVOUS_FIX);
  await writePrivateFile(file, JSON.stringify(value) + '\n');
}

/**
 * The other ranks' side: undefined while rank 0 has not written the file;
 * throws when the file or its directory could be another user's doing (not
 * the user's, open to others, a link).
 */
export async function readRendezvous(file: string): Promise<Rendezvous | undefined> {
  const { checkPrivateDir, readPrivateFile } = await import('@ferry/coordinator');
  try {
    await checkPrivateDir(dirname(file), 'rendezvous file', RENDEZVOUS_FIX);
  } catch (err) {
    // Not there yet: rank 0 makes it.
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
  const text = await readPrivateFile(file, 'rendezvous file', RENDEZVOUS_FIX);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as Rendezvous;
  } catch {
    return undefined;
  }
}

/** What an agent started with these copy options may run: as the coordinator resolves them (prepare.ts). */
export function agentExecFromOptions(copyOptions: CopyOptions): AgentExec {
  const o = resolveCopyOptions(copyOptions);
  return {
    transport: o.transport,
    sshCommand: o.sshCommand,
    ...(o.sshConfigFile !== undefined ? { configFile: o.sshConfigFile === 'none' ? 'none' : resolvePath(o.sshConfigFile) } : {}),
    remoteCommand: o.remoteCommand,
  };
}

/**
 * `ferry run`: rank 0 runs the coordinator (and, unless --no-rank0-agent, one
 * agent); it publishes how to join in a rendezvous file on a filesystem all
 * ranks share (the token in it is readable by the user only). Every other rank
 * waits for that file and runs an agent.
 *
 * `ferry run --sync` (`sync` given): rank 0 runs `ferry sync` instead of a copy,
 * comparing and deleting by itself; what differs goes to every rank's agent as a
 * tree copy's work does, one job after another (batches, then each big file).
 */
export async function runSpmd(io: CliIo, source: string, destination: string, copyOptions: CopyOptions, opts: Record<string, unknown>, sync?: { exitCode: boolean }): Promise<void> {
  try {
    const { rankFromEnv } = await import('@ferry/launcher');
    const { defaultStateDir } = await import('@ferry/coordinator');
    const rank = rankFromEnv();
    const stateDir = copyOptions.stateDir ?? defaultStateDir();
    const launchId = rank.launchId ?? `args-${createHash('sha256').update(`${sync ? 'sync\0' : ''}${source}\0${destination}`).digest('hex').slice(0, 16)}`;
    const file = (opts.rendezvous as string | undefined) ?? join(stateDir, 'rendezvous', `${launchId}.json`);
    const rank0Agent = opts.rank0Agent !== false;
    if (rank.rank === 0) {
      await mkdir(dirname(file), { recursive: true, mode: 0o700 });
      // Before the copy starts: a directory others can write is refused now, not at the rendezvous.
      const { checkPrivateDir } = await import('@ferry/coordinator');
      await checkPrivateDir(dirname(file), 'rendezvous file', RENDEZVOUS_FIX);
      await rm(file, { force: true });
      const external = rank.size - 1;
      const agents = Math.max(1, external + (rank0Agent ? 1 : 0));
      const options = { ...copyOptions, stateDir, agents: String(agents) };
      const launch = { launcher: 'local', natsListen: opts.natsListen as string, ...(opts.natsAdvertise ? { natsAdvertise: opts.natsAdvertise as string } : {}) } as const;
      const extra = {
        externalAgents: external,
        // A tree is several jobs in a row (its batches, then each huge file): each one rewrites the file.
        onRendezvous: async ({ jobId, url, token, tls, specSha256 }: { jobId: string; url: string; token: string | undefined; specSha256: string; tls?: string }) =>
          writeRendezvous(file, { launchId, jobId, url, ...(token ? { token } : {}), ...(tls ? { tls } : {}), specSha256, at: Date.now() }),
      };
      try {
        if (sync) await syncTree(io, source, destination, options, opts.verbose === true, sync.exitCode, launch, extra);
        else await copy(io, source, destination, options, opts.verbose === true, launch, extra, opts.recursive === true);
      } finally {
        await writeRendezvous(file, { launchId, finished: true, exitCode: io.exitCode, at: Date.now() }).catch(() => {});
      }
      return;
    }
    const timeoutMs = parseDuration(String(opts.rendezvousTimeout ?? '10m')) ?? 600_000;
    const { runAgent } = await import('@ferry/agent');
    // With -r, one job after another: a tree's batches, then each of its huge files, are jobs of
    // their own, and rank 0 names each in the file as it starts; the copy is over when it says finished.
    // A sync may be a tree (and a file sync may be no job at all): the ranks wait for "finished".
    const recursive = opts.recursive === true || sync !== undefined;
    // Rank 0's exit code when all went well: a sync with --exit-code that changed something says 3.
    const fine = (code: number | undefined) => code === 0 || (sync?.exitCode === true && code === SYNC_CHANGED_EXIT);
    let joined: string | undefined;
    for (;;) {
      const deadline = Date.now() + timeoutMs;
      let rv: Rendezvous | undefined;
      for (;;) {
        rv = await readRendezvous(file);
        if (rv && (rv.finished || (rv.url && rv.jobId !== joined))) break;
        if (Date.now() > deadline) throw new FerryError('AGENTS_FAILED', `rank ${rank.rank}: rank 0 did not publish ${file} within ${timeoutMs / 1000} s: is the state directory on a filesystem every node shares (--state-dir or --rendezvous)?`, { path: file });
        if (io.signal?.aborted) throw new FerryError('INTERRUPTED', 'interrupted while waiting for rank 0');
        await new Promise((r) => setTimeout(r, 250));
      }
      if (rv.finished) {
        io.exitCode = 0;
        return;
      }
      joined = rv.jobId;
      try {
        await runAgent({
          jobId: rv.jobId!,
          natsUrl: rv.url!,
          natsToken: rv.token,
          ...(rv.tls ? { natsTls: decodeClientTls(rv.tls) } : {}),
          ...(rv.specSha256 ? { specSha256: rv.specSha256 } : {}),
          // What this rank runs comes from its own command line, the same as rank 0's.
          exec: agentExecFromOptions(copyOptions),
          index: rank.rank - 1,
          agentId: `${hostname()}-r${rank.rank}`,
          ...(io.signal ? { signal: io.signal } : {}),
          log: (line) => io.stderr.write(`ferry rank ${rank.rank}: ${line}\n`),
        });
      } catch (err) {
        // Too late to join: the copy finished, or went on to its next job, while this rank was starting.
        const after = await readRendezvous(file);
        if (after?.finished && fine(after.exitCode)) {
          io.exitCode = 0;
          return;
        }
        if (recursive && after?.jobId !== undefined && after.jobId !== joined) continue;
        throw err;
      }
      // One file is one job; a rank whose job is over is done (rank 0 may be gone already).
      if (!recursive) {
        io.exitCode = 0;
        return;
      }
    }
  } catch (err) {
    reportError(io, toFerryError(err));
  }
}

/** The `ferry run` flags for the copy options given (launcher options do not apply inside the job). */
function runFlags(opts: Record<string, unknown>): string[] {
  // Without --streams each rank's agent tunes its own count, as a local copy does.
  const out: string[] = opts.streams === undefined ? [] : ['--streams', String(opts.streams)];
  const valued: Array<[string, string, string | undefined]> = [
    ['rangeSize', '--range-size', undefined],
    ['hash', '--hash', undefined],
    ['mode', '--mode', 'auto'],
    ['remoteCmd', '--remote-cmd', 'ferry serve'],
    ['transport', '--transport', 'ssh2'],
    ['sshCmd', '--ssh-cmd', undefined],
    ['knownHosts', '--known-hosts', undefined],
    ['sshConfig', '-F', undefined],
    ['nats', '--nats', undefined],
    ['ackWait', '--ack-wait', '30s'],
    ['window', '--window', '8MiB'],
    ['sendWindow', '--send-window', '0'],
    ['limitRate', '--limit-rate', undefined],
    ['maxPerHost', '--max-per-host', undefined],
    ['maxResends', '--max-resends', '3'],
    ['connectTimeout', '--connect-timeout', undefined],
    ['batchFilesUnder', '--batch-files-under', undefined],
    ['batchSize', '--batch-size', undefined],
    ['stripeFilesOver', '--stripe-files-over', undefined],
  ];
  for (const [key, flag, fallback] of valued) {
    const v = opts[key];
    if (v !== undefined && v !== fallback) out.push(flag, String(v));
  }
  for (const id of (opts.identity as string[] | undefined) ?? []) out.push('-i', id);
  const flags: Array<[string, string]> = [
    ['recursive', '-r'], ['preserve', '-p'], ['preserve=owner', '--preserve=owner'], ['numericIds', '--numeric-ids'], ['xattrs', '--xattrs'], ['acls', '--acls'], ['failFast', '--fail-fast'],
    ['directIo', '--direct-io'], ['verify', '--verify'], ['delta', '--delta'], ['inplace', '--inplace'], ['sharedHelper', '--shared-helper'], ['acceptNewHostKey', '--accept-new-host-key'],
    ['restart', '--restart'], ['json', '--json'], ['quiet', '--quiet'], ['verbose', '--verbose'],
  ];
  for (const [key, flag] of flags) if (opts[key] === true) out.push(flag);
  if (opts.directIo === false) out.push('--no-direct-io');
  return out;
}

/** `ferry run --sync` and the sync options given (the compare level only when not the default). */
function syncFlags(opts: Record<string, unknown>): string[] {
  const out = ['--sync'];
  if (opts.compare !== undefined && opts.compare !== 'mtime') out.push('--compare', String(opts.compare));
  if (opts.delete === true) out.push('--delete');
  if (opts.dryRun === true) out.push('--dry-run');
  if (opts.exitCode === true) out.push('--exit-code');
  return out;
}

/** A batch script that runs this copy as `srun ferry run` (a sync, `opts.sync`, as `srun ferry run --sync`), one agent per task. */
export function sbatchScript(source: string, destination: string, opts: Record<string, unknown>): string {
  const nodes = (opts.nodes as string | undefined) ?? '2';
  const perNode = (opts.agentsPerNode as string | undefined) ?? '2';
  const ferry = opts.agentCmd ? (opts.agentCmd as string) : selfCommand().map(shellQuote).join(' ');
  const stateDir = opts.stateDir ? shellQuote(opts.stateDir as string) : '"$HOME/.local/state/ferry"';
  return [
    '#!/bin/bash',
    `# Made by ferry ${opts.sync === true ? 'sync' : 'cp'} --sbatch. Each task is one agent; task 0 also ${opts.sync === true ? 'compares, deletes and ' : ''}coordinates.`,
    '# The job state is in the --state-dir below (a filesystem every node shares): submit it again to resume.',
    '#SBATCH --job-name=ferry',
    `#SBATCH --nodes=${nodes}`,
    `#SBATCH --ntasks-per-node=${perNode}`,
    `#SBATCH --time=${String(opts.time ?? '1-00:00:00')}`,
    '#SBATCH --output=ferry-%j.out',
    'set -euo pipefail',
    `srun --kill-on-bad-exit=0 ${ferry} run ${[...(opts.sync === true ? syncFlags(opts) : []), source, destination, ...runFlags(opts)].map(shellQuote).join(' ')} --state-dir ${stateDir}`,
    '',
  ].join('\n');
}

export async function submitSbatch(io: CliIo, script: string): Promise<void> {
  const child = spawn('sbatch', [], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdin.end(script);
  const code = await new Promise<number | null>((resolve) => {
    child.once('error', () => resolve(127));
    child.once('close', resolve);
  });
  if (code !== 0) throw new FerryError('AGENTS_FAILED', `sbatch failed (exit ${code}): ${err.trim() || 'is Slurm installed and configured here?'}`);
  io.stdout.write(out);
}
