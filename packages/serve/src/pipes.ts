/**
 * Larger pipes between sshd and the helper.
 *
 * sshd hands a session's data to the command it runs through pipes of the
 * kernel's default 64 KiB. At a few hundred MB/s that is a fraction of a
 * millisecond of a stream: sshd writes 64 KiB, waits for the helper to read,
 * writes again, and both wake up for every 64 KiB (a loopback push, 2
 * streams: 3.64 against 4.35 CPU s/GB with 1 MiB pipes; bench/README.md,
 * "The helper's pipes"). Linux lets any process holding a pipe resize it
 * (fcntl F_SETPIPE_SZ, up to /proc/sys/fs/pipe-max-size, 1 MiB by default,
 * for users without CAP_SYS_RESOURCE), but Node has no fcntl. So the helper
 * lends its stdin and stdout to a short-lived perl (or python3) that resizes
 * them: the size belongs to the pipe, not to the process that set it.
 *
 * Best effort: without perl and python3, or over the user's pipe quota
 * (/proc/sys/fs/pipe-user-pages-soft), the pipes stay as they were and the
 * helper works as before.
 */
import { spawn } from 'node:child_process';
import { fstatSync } from 'node:fs';

/** What the helper asks for: the default pipe-max-size for unprivileged users. */
export const PIPE_BYTES = 1024 * 1024;

/** Linux's F_SETPIPE_SZ (include/uapi/linux/fcntl.h). */
const F_SETPIPE_SZ = 1031;

/**
 * Programs that resize their own stdin and stdout where those are pipes, and
 * print nothing (stdout is the helper's protocol stream). Exit 0 once every
 * pipe is resized.
 */
function resizers(bytes: number): Array<[string, string[]]> {
  return [
    ['perl', ['-e', `my $ok = 1; for my $h (*STDIN, *STDOUT) { $ok = 0 if -p $h && !fcntl($h, ${F_SETPIPE_SZ}, ${bytes}) } exit($ok ? 0 : 1)`]],
    [
      'python3',
      ['-c', `import fcntl, os, stat, sys\nok = True\nfor fd in (0, 1):\n  if stat.S_ISFIFO(os.fstat(fd).st_mode):\n    try: fcntl.fcntl(fd, ${F_SETPIPE_SZ}, ${bytes})\n    except OSError: ok = False\nsys.exit(0 if ok else 1)`],
    ],
  ];
}

function isFifo(fd: number): boolean {
  try {
    return fstatSync(fd).isFIFO();
  } catch {
    return false;
  }
}

/** The outcome: whether the pipes were resized, and why not. */
export interface PipeGrowth {
  grown: boolean;
  reason?: string;
}

/**
 * Resizes the pipes on the helper's stdin and stdout (those that are pipes)
 * to `bytes`. Never throws; the helper need not wait for it.
 */
export async function growPipes(bytes = PIPE_BYTES): Promise<PipeGrowth> {
  if (process.platform !== 'linux') return { grown: false, reason: 'not Linux' };
  const stdin = isFifo(0);
  const stdout = isFifo(1);
  if (!stdin && !stdout) return { grown: false, reason: 'stdin and stdout are not pipes' };
  const stdio: Array<number | 'ignore'> = [stdin ? 0 : 'ignore', stdout ? 1 : 'ignore', 'ignore'];
  let reason = '';
  for (const [program, args] of resizers(bytes)) {
    const code = await new Promise<number | string>((resolve) => {
      const child = spawn(program, args, { stdio });
      child.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      child.on('close', (c, signal) => resolve(c ?? `signal ${signal}`));
    });
    if (code === 0) return { grown: true };
    if (code !== 'ENOENT') return { grown: false, reason: `${program} could not resize them (exit ${code}): over pipe-max-size or the user's pipe quota` };
    reason += `${reason ? ', ' : ''}no ${program}`;
  }
  return { grown: false, reason };
}
