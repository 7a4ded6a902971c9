/**
 * What an agent runs: its SSH client (the openssh transport's program, its
 * leading arguments and -F file) and the command that starts the helper on the
 * remote host. These come from the agent's own environment or command line,
 * set by whoever launched it (the coordinator, `ferry run`'s argv), never from
 * NATS: whoever can write to the job's bus must not choose a program for the
 * user's agents to run. The job's spec carries the same values; an agent whose
 * own settings and the spec disagree refuses the job.
 *
 * ```ts
 * const exec = decodeAgentExec(process.env[AGENT_EXEC_ENV]);
 * checkSpecExec(spec, exec); // throws PROTOCOL when they differ
 * ```
 */
import { createHash } from 'node:crypto';
import { FerryError } from './errors.js';
import type { JobSpec, SshTransport } from './messages.js';
import { DEFAULT_REMOTE_COMMAND } from './options.js';

export interface AgentExec {
  /** The SSH client of the data connections. */
  transport: SshTransport;
  /** The openssh transport's ssh program and leading arguments. */
  sshCommand: string[];
  /** The openssh transport's -F file ('none' for none); absent: ssh's own. */
  configFile?: string;
  /** What starts the helper on the remote host, in helper mode. */
  remoteCommand: string;
}

/** The environment variable that carries an agent's AgentExec (JSON), set by the coordinator's launch. */
export const AGENT_EXEC_ENV = 'FERRY_AGENT_EXEC';

/** The environment variable that carries the SHA-256 of the job spec the coordinator stored (hex). */
export const JOB_SPEC_SHA256_ENV = 'FERRY_JOB_SPEC_SHA256';

/** Longest command or path an agent takes. */
const MAX_TEXT = 4096;

/** What an agent started without settings runs: ferry's own defaults. */
export function defaultAgentExec(): AgentExec {
  return { transport: 'ssh2', sshCommand: ['ssh'], remoteCommand: DEFAULT_REMOTE_COMMAND };
}

/** The settings an agent of this spec must have been started with (the coordinator passes them on). */
export function agentExecOf(spec: Pick<JobSpec, 'ssh' | 'remoteCommand'>): AgentExec {
  return {
    transport: spec.ssh.transport ?? 'ssh2',
    sshCommand: spec.ssh.sshCommand ?? ['ssh'],
    ...(spec.ssh.configFile !== undefined ? { configFile: spec.ssh.configFile } : {}),
    remoteCommand: spec.remoteCommand,
  };
}

export function encodeAgentExec(exec: AgentExec): string {
  return JSON.stringify({ transport: exec.transport, sshCommand: exec.sshCommand, ...(exec.configFile !== undefined ? { configFile: exec.configFile } : {}), remoteCommand: exec.remoteCommand });
}

const text = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_TEXT && !v.includes('\0');

/** Reads FERRY_AGENT_EXEC; absent: the defaults. A malformed value is a usage error that names the variable. */
export function decodeAgentExec(value: string | undefined): AgentExec {
  if (value === undefined || value === '') return defaultAgentExec();
  let rec: Record<string, unknown> | undefined;
  try {
    const parsed: unknown = JSON.parse(value);
    rec = parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    rec = undefined;
  }
  const ok =
    rec !== undefined &&
    (rec.transport === 'ssh2' || rec.transport === 'openssh') &&
    Array.isArray(rec.sshCommand) &&
    rec.sshCommand.length > 0 &&
    rec.sshCommand.length <= 64 &&
    rec.sshCommand.every(text) &&
    (rec.configFile === undefined || text(rec.configFile)) &&
    text(rec.remoteCommand);
  if (!ok) throw new FerryError('USAGE', `${AGENT_EXEC_ENV} must be the JSON the coordinator sets ({transport, sshCommand, configFile?, remoteCommand}), got '${value.slice(0, 200)}'`);
  return { transport: rec!.transport as SshTransport, sshCommand: rec!.sshCommand as string[], ...(rec!.configFile !== undefined ? { configFile: rec!.configFile as string } : {}), remoteCommand: rec!.remoteCommand as string };
}

/** How messages show an argv. */
const shown = (argv: readonly string[]) => argv.join(' ');

/**
 * Throws PROTOCOL when the job's spec asks this agent to run anything but what
 * it was started with; the message names the first difference.
 */
export function checkSpecExec(spec: Pick<JobSpec, 'ssh' | 'remoteCommand'>, own: AgentExec): void {
  const asked = agentExecOf(spec);
  const differences: string[] = [];
  if (asked.transport !== own.transport) differences.push(`--transport ${asked.transport}, this agent was started with ${own.transport}`);
  if (shown(asked.sshCommand) !== shown(own.sshCommand) || asked.sshCommand.length !== own.sshCommand.length) differences.push(`ssh command '${shown(asked.sshCommand)}', this agent was started with '${shown(own.sshCommand)}'`);
  if (asked.configFile !== own.configFile) differences.push(`ssh -F ${asked.configFile ?? '(none given)'}, this agent was started with ${own.configFile ?? '(none given)'}`);
  if (asked.remoteCommand !== own.remoteCommand) differences.push(`remote command '${asked.remoteCommand}', this agent was started with '${own.remoteCommand}'`);
  if (differences.length > 0) {
    throw new FerryError(
      'PROTOCOL',
      `refusing the job spec in NATS: it asks for ${differences.join('; and ')}. An agent runs only what its own command line and environment say: start agents through the coordinator's launcher, or with the same --transport, --ssh-cmd, -F and --remote-cmd as the copy`,
    );
  }
}

/** The SHA-256 (hex) of a job spec as stored: agents compare it with the one their launcher gave them. */
export function specDigest(stored: Uint8Array): string {
  return createHash('sha256').update(stored).digest('hex');
}

/** Throws PROTOCOL when the spec stored in NATS is not the one the coordinator wrote (its digest given to this agent). */
export function checkSpecDigest(stored: Uint8Array, expected: string | undefined, jobId: string): void {
  if (expected === undefined || expected === '') return;
  const got = specDigest(stored);
  if (got !== expected.toLowerCase()) {
    throw new FerryError('PROTOCOL', `refusing the job spec of job ${jobId} in NATS: it is not the one the coordinator wrote (SHA-256 ${got.slice(0, 16)}..., expected ${expected.slice(0, 16)}...); someone else has written to the job's bus`);
  }
}
