/**
 * The OpenSSH-subprocess transport: each connection is an `ssh host ferry serve`
 * process and the helper protocol runs over its stdin/stdout. The user's
 * ~/.ssh/config applies (ProxyJump, GSSAPI, ControlMaster, ciphers), and the
 * encryption runs in OpenSSH's C code instead of Node's event loop. Host keys are
 * checked by ssh itself against the same known_hosts file ferry would use.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess, ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { FerryError, describeHost, hostLabel, hostName } from '@ferry/core';
import type { RemoteHost, SshSettings } from '@ferry/core';
import type { ExecResult } from './exec.js';
import { HelperClient, isHelloTimeout, isSlowHelperStart, slowStart } from './helper-client.js';
import { diesWithThisProcess } from './parent-death.js';
import { pythonHelperCommand, pythonHelperScript } from './python-helper.js';
import { HelperConnection } from './remote.js';
import type { Fallback, RemoteConnection, RemoteOptions } from './remote.js';

const STDERR_TAIL_BYTES = 4000;
/** How messages name the python helper's remote command (the command itself is a long one-liner). */
const PYTHON_HELPER_SHOWN = "python3 (ferry's python helper)";

/** The `ssh` argument vector for one connection running `command` on `target`. */
export function opensshArgs(target: RemoteHost, ssh: SshSettings, options: { recordNewHostKeys?: boolean }, command: string): { file: string; args: string[] } {
  const [file = 'ssh', ...leading] = ssh.sshCommand ?? ['ssh'];
  const args = [
    ...leading,
    // ssh reads its configuration itself: ferry passes on what the command line said, not what it resolved.
    ...(ssh.configFile ? ['-F', ssh.configFile] : []),
    '-T',
    '-x',
    '-o', 'BatchMode=yes',
    '-o', `ConnectTimeout=${Math.max(1, Math.ceil(ssh.connectTimeoutMs / 1000))}`,
    '-o', 'ServerAliveInterval=15',
    '-o', 'ServerAliveCountMax=4',
    ...(ssh.knownHostsGiven ? ['-o', `UserKnownHostsFile="${ssh.knownHostsFile}"`] : []),
    '-o', `StrictHostKeyChecking=${options.recordNewHostKeys && (target.route ? target.route.acceptNewHostKey === true : true) ? 'accept-new' : 'yes'}`,
  ];
  if (!target.route || target.route.portGiven) args.push('-p', String(target.port));
  if (!target.route || target.route.userGiven) args.push('-l', target.user);
  for (const identity of ssh.identityFiles) args.push('-i', identity);
  args.push('--', target.host, command);
  return { file, args };
}

/** Turns what a failed `ssh` printed into the error a user can act on. */
export function classifySshFailure(stderr: string, exitCode: number | null, target: RemoteHost, ssh: SshSettings, command: string): FerryError {
  const label = hostLabel(target);
  // What ferry made of the configuration (ssh made its own; they agree but for Match exec and the like).
  const name = describeHost(target);
  const address = hostName(target.route?.hostName ?? target.host);
  const said = stderr.trim().split('\n').filter((l) => l.trim() && !/^\s*(@+|Warning: Permanently added)/.test(l)).slice(-3).join('; ');
  if (/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed/i.test(stderr)) {
    return new FerryError(
      'HOST_KEY_CHANGED',
      `host key of ${name} differs from the one in ${ssh.knownHostsFile}: this may be an attack; if the host was reinstalled, remove the old key with 'ssh-keygen -R ${target.port === 22 ? address : `[${address}]:${target.port}`} -f ${ssh.knownHostsFile}'`,
      { host: label },
    );
  }
  if (/Host key verification failed|No .*host key is known/i.test(stderr)) {
    return new FerryError(
      'HOST_KEY_UNKNOWN',
      `host key of ${name} is not in ${ssh.knownHostsFile}: check its fingerprint with the host's admins, then rerun with --accept-new-host-key (or add it with ssh-keyscan)`,
      { host: label },
    );
  }
  if (/Permission denied|Too many authentication failures|no more authentication methods/i.test(stderr)) {
    return new FerryError(
      'SSH_AUTH_FAILED',
      `authentication as ${target.user}@${name} failed (ssh said: ${said}): add your public key to ~${target.user}/.ssh/authorized_keys on ${address}, load it into ssh-agent, or pass -i KEYFILE`,
      { host: label },
    );
  }
  if (exitCode === 255 || /Connection refused|No route to host|timed out|Could not resolve hostname|Network is unreachable|kex_exchange_identification|Connection closed by/i.test(stderr)) {
    return new FerryError(
      'HOST_UNREACHABLE',
      `cannot reach ${name} over SSH (ssh said: ${said || `exit ${exitCode}`}): check the host name and port, the network path, and that sshd runs there`,
      { host: label },
    );
  }
  const why = exitCode === 127 || /not found/i.test(stderr) ? 'command not found' : said || `exit ${exitCode}`;
  return new FerryError(
    'HELPER_UNAVAILABLE',
    command === PYTHON_HELPER_SHOWN
      ? `cannot start ferry's python helper on ${label} (${why}): the host needs python3 (3.6 or later) or /usr/libexec/platform-python, or use --transport ssh2, which can fall back to SFTP`
      : `cannot start '${command}' on ${label} (${why}): install ferry there, point --remote-cmd at it, or leave --mode at auto (ferry's python helper; --transport ssh2 can also fall back to SFTP)`,
    { host: label },
  );
}

function missingClient(file: string, err: Error): FerryError {
  return new FerryError('SSH_CLIENT_MISSING', `cannot run '${file}' for --transport openssh (${(err as NodeJS.ErrnoException).code ?? err.message}): install OpenSSH's client, point --ssh-cmd at it, or use --transport ssh2`, { cause: err });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('close', () => resolve()));
}

/**
 * Starts an `ssh` process that dies with this one (see parent-death.ts) and
 * sits in a process group of its own: a Ctrl-C or a closed terminal signals
 * the terminal's foreground group, and ssh would end at once, before the
 * agent has made what it wrote through it durable. The agent ends it itself.
 */
function spawnSsh(file: string, args: string[], stdin: 'pipe'): ChildProcessByStdio<Writable, Readable, Readable>;
function spawnSsh(file: string, args: string[], stdin: 'ignore'): ChildProcessByStdio<null, Readable, Readable>;
function spawnSsh(file: string, args: string[], stdin: 'pipe' | 'ignore'): ChildProcess {
  const [tied, ...tiedArgs] = diesWithThisProcess([file, ...args], 'KILL');
  return spawn(tied!, tiedArgs, { stdio: [stdin, 'pipe', 'pipe'], detached: true });
}

/** Runs one short command over a fresh `ssh` process and captures its output. */
function runOnce(target: RemoteHost, ssh: SshSettings, options: RemoteOptions, command: string): Promise<ExecResult> {
  const { file, args } = opensshArgs(target, ssh, options, command);
  return new Promise((resolve, reject) => {
    const child = spawnSsh(file, args, 'ignore');
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-STDERR_TAIL_BYTES)));
    child.once('error', (err) => reject(missingClient(file, err)));
    child.once('close', (code, signal) => {
      if (code === 255) return reject(classifySshFailure(stderr, code, target, ssh, command));
      resolve({ code, signal: signal ?? undefined, stdout, stderr });
    });
  });
}

/** One `ssh target command` process speaking the helper protocol; `preamble` goes to its stdin first. */
async function startOverSsh(target: RemoteHost, ssh: SshSettings, options: RemoteOptions, command: string, shown: string, preamble?: Buffer): Promise<{ helper: HelperClient; child: ChildProcess }> {
  const label = hostLabel(target);
  if (options.signal?.aborted) throw new FerryError('INTERRUPTED', `connection to ${label} cancelled`, { host: label });
  const { file, args } = opensshArgs(target, ssh, options, command);
  const helperTimeoutMs = options.helperTimeoutMs ?? ssh.connectTimeoutMs;
  const child = spawnSsh(file, args, 'pipe');
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-STDERR_TAIL_BYTES)));
  const spawnError = new Promise<never>((_, reject) => child.once('error', (err) => reject(missingClient(file, err))));
  spawnError.catch(() => {});
  let killed = false;
  const kill = () => {
    killed = true;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  };
  const helper = new HelperClient({ input: child.stdin!, output: child.stdout!, close: kill }, label);
  if (preamble) child.stdin!.write(preamble);
  const onAbort = () => kill();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.race([helper.handshake(ssh.connectTimeoutMs + helperTimeoutMs), spawnError]);
  } catch (err) {
    // A helper that is not there ends the session on its own (ssh exits 127): a moment for that
    // exit first, or the kill below would decide it (ssh killed by SIGTERM exits 255, which reads
    // as an unreachable host: a loaded CI machine lost that race).
    if (!isHelloTimeout(err)) await Promise.race([exited(child), new Promise((r) => setTimeout(r, 1000).unref())]);
    // Before the kill: ssh may say something about being killed.
    const silent = !stderr.trim();
    const killedElsewhere = !killed && child.signalCode !== null;
    const exitedOnItsOwn = child.exitCode !== null || child.signalCode !== null;
    kill();
    if (err instanceof FerryError && err.code === 'SSH_CLIENT_MISSING') throw err;
    await Promise.race([exited(child), new Promise((r) => setTimeout(r, 2000))]);
    if (options.signal?.aborted) throw new FerryError('INTERRUPTED', `connection to ${label} cancelled`, { host: label });
    // The ssh process was killed by someone else while the helper started (ferry itself sends SIGTERM):
    // a lost connection, not a missing helper.
    if (killedElsewhere || (child.signalCode !== null && child.signalCode !== 'SIGTERM')) {
      throw new FerryError('CONNECTION_LOST', `the ssh process for ${label} was killed (${child.signalCode}) while the helper started`, { host: label, cause: err });
    }
    // No word from ssh or the remote side, only silence: a slow start, not a missing helper.
    if (isHelloTimeout(err) && silent) throw slowStart(shown, label, ssh.connectTimeoutMs + helperTimeoutMs, err);
    // An exit status the kill caused says nothing about the host: only what ssh printed counts then.
    throw classifySshFailure(stderr, exitedOnItsOwn ? child.exitCode : null, target, ssh, shown);
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
  return { helper, child };
}

/**
 * Starts `ssh target remoteCommand` and speaks the helper protocol over it;
 * with --mode auto, where that helper is missing, ferry's Python helper
 * (python-helper.ts) over a second `ssh` process.
 */
export async function connectOpenSsh(target: RemoteHost, ssh: SshSettings, options: RemoteOptions): Promise<RemoteConnection> {
  const label = hostLabel(target);
  if (options.mode === 'sftp') {
    throw new FerryError('USAGE', '--transport openssh carries the helper protocol only: use --mode helper (or auto), or --transport ssh2 for --mode sftp');
  }
  const fallbacks: Fallback[] = [];
  let started: { helper: HelperClient; child: ChildProcess } | undefined;
  let mode: 'helper' | 'python' = 'helper';
  if (options.mode !== 'python') {
    try {
      started = await startOverSsh(target, ssh, options, options.remoteCommand, options.remoteCommand);
    } catch (err) {
      // Only a helper that is not there makes the Python one worth a try; a refused key or host key would fail it too.
      if (options.mode !== 'auto' || !(err instanceof FerryError) || err.code !== 'HELPER_UNAVAILABLE' || isSlowHelperStart(err)) throw err;
      fallbacks.push({ mode: 'helper', reason: `'${options.remoteCommand}' ${/command not found/.test(err.message) ? 'not found (exit 127)' : `failed: ${err.message}`}` });
    }
  }
  if (!started) {
    const script = pythonHelperScript();
    started = await startOverSsh(target, ssh, options, pythonHelperCommand(script.length), PYTHON_HELPER_SHOWN, script);
    mode = 'python';
  }
  const { helper, child } = started;
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  };
  return new HelperConnection(
    {
      get ended() {
        return child.exitCode !== null || child.signalCode !== null;
      },
      end: kill,
      exec: (command) => runOnce(target, ssh, options, command),
    },
    helper,
    label,
    undefined,
    undefined,
    mode,
    fallbacks,
  );
}
