/**
 * The no-install helper: where the remote host has no `ferry serve`, each
 * connection sends ferry's Python helper (../remote/helper.py) to the host's
 * own python3 and speaks the usual helper protocol with it. Data transfer
 * nodes have OpenSSH and coreutils but rarely Node.js; they nearly always have
 * a python3 (RHEL 8 keeps /usr/libexec/platform-python for its own tools even
 * where `python3` is not installed).
 *
 * The remote command is short and fixed: a POSIX `sh` (whatever the user's
 * login shell is) looks for an interpreter and runs a one-line bootstrap that
 * reads exactly the script's length from stdin and executes it; the protocol
 * frames follow on the same stdin. Nothing is written to the remote disk, and
 * the script never appears on a command line.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Interpreters tried in order, by name on the remote PATH or by absolute path. */
export const PYTHON_INTERPRETERS = ['python3', '/usr/libexec/platform-python'];

/** Exit status of the remote command when no interpreter is found: the shell's own "not found". */
export const NO_PYTHON_EXIT = 127;

let script: Buffer | undefined;

/** The helper's source, as sent to the remote interpreter. */
export function pythonHelperScript(): Buffer {
  script ??= readFileSync(fileURLToPath(new URL('../remote/helper.py', import.meta.url)));
  return script;
}

/**
 * The remote command that starts the helper: `exec sh -c '...'` so that csh or
 * fish login shells run it too. Inside, no single quotes; the Python bootstrap
 * sits in double quotes, so it has no `$`, backquote, backslash or double quote.
 * `-I -S`: no user site directory, no PYTHON* variables and no `site` import,
 * so what the remote user's environment holds does not change the helper, and
 * it starts sooner.
 */
export function pythonHelperCommand(scriptBytes: number): string {
  const boot = `import os,sys;n=${scriptBytes};b=bytearray();[b.extend(os.read(0,n-len(b)) or sys.exit(3)) for _ in iter(lambda:len(b)<n,False)];exec(bytes(b))`;
  const find = PYTHON_INTERPRETERS.map((p) => p).join(' ');
  const inner = `for p in ${find}; do if command -v $p >/dev/null 2>&1; then exec $p -I -S -c "${boot}"; fi; done; echo "ferry: neither python3 nor /usr/libexec/platform-python is on this host" >&2; exit ${NO_PYTHON_EXIT}`;
  return `exec sh -c '${inner}'`;
}
