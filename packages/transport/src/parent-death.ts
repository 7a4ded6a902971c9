/**
 * Children that die with ferry. A process ferry starts (nats-server, agents,
 * `ssh`) must not outlive it, even when ferry is killed with SIGKILL and
 * cannot clean up. Linux's PR_SET_PDEATHSIG does that: the kernel signals the
 * child when its parent dies. Node cannot call prctl, so the child is started
 * through util-linux's `setpriv --pdeathsig SIG -- command`, which sets it and
 * execs the command in the same process (same pid, no extra process).
 *
 * The signal follows the *thread* that forked the child, not the process.
 * Node forks in uv_spawn on the thread that calls spawn(), ferry's main
 * thread, which lives as long as the process; ferry starts no child from a
 * worker thread.
 *
 * Where setpriv is missing (macOS, minimal containers) or older than
 * util-linux 2.33, which added --pdeathsig, children start as before and the
 * other guards remain: agents watch their parent pid, ssh ends when its stdin
 * closes, and a rerun stops a stale nats-server by its pid file.
 */
import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export type DeathSignal = 'KILL' | 'TERM';

let setprivPath: string | null | undefined;

/**
 * The setpriv that can set a parent-death signal here, or undefined; looked
 * for once per process. Its binary is searched for the option's name rather
 * than run: a probe run costs 10-15 ms on the 2-core test machine, on every
 * copy's critical path, and the option's name is in the binary exactly when
 * setpriv has it.
 */
export function pdeathsigTool(): string | undefined {
  if (setprivPath === undefined) {
    setprivPath = null;
    for (const candidate of ['/usr/bin/setpriv', '/bin/setpriv', '/usr/sbin/setpriv', '/sbin/setpriv']) {
      try {
        accessSync(candidate, constants.X_OK);
        if (readFileSync(candidate).includes('pdeathsig')) {
          setprivPath = candidate;
          break;
        }
      } catch {
        // not here
      }
    }
  }
  return setprivPath ?? undefined;
}

/** `name` as execvp would find it (on PATH unless it has a slash), or undefined. */
function findProgram(name: string): string | undefined {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, name));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * `argv` made to receive `signal` when this process dies: prefixed with
 * `setpriv --pdeathsig`, or unchanged where that is not available. The
 * process keeps its pid (setpriv execs it). A program that cannot be found
 * is left unwrapped, so that spawn() fails with ENOENT as it would without
 * (not setpriv with its own message and exit status).
 */
export function diesWithThisProcess(argv: readonly string[], signal: DeathSignal): string[] {
  const setpriv = pdeathsigTool();
  if (setpriv === undefined || argv[0] === undefined || findProgram(argv[0]) === undefined) return [...argv];
  return [setpriv, '--pdeathsig', signal, '--', ...argv];
}
