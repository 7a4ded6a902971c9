/**
 * Larger pipes between sshd and the helper.
 *
 * sshd hands a session's data to the command it runs through pipes of the
 * kernel's default 64 KiB. At a few hundred MB/s that is a fraction of a
 * millisecond of a stream: sshd writes 64 KiB, waits for the helper to read,
 * writes again, and both wake up for every 64 KiB (with 1 MiB pipes a
 * two-stream loopback push moved 1.22x as much at 0.80x the CPU per GB;
 * bench/README.md, "The helper's pipes"). Linux lets any process holding a pipe resize it
 * (fcntl F_SETPIPE_SZ, up to /proc/sys/fs/pipe-max-size, 1 MiB by default,
 * for users without CAP_SYS_RESOURCE), but Node has no fcntl. So the helper
 * lends its stdin and stdout to a short-lived perl (or python3) that grows
 * them: the size belongs to the pipe, not to the process that set it. A pipe
 * already larger is left alone.
 *
 * Best effort: without perl and python3, or over the user's pipe quota
 * (/proc/sys/fs/pipe-user-pages-soft), the pipes stay as they were and the
 * helper works as before; it tells the client why in OPEN's answer
 * (`pipesReason`), and the agent says so with -v.
 */
import { spawn } from 'node:child_process';
import { fstatSync } from 'node:fs';

/** What the helper asks for: the default pipe-max-size for unprivileged users. */
export const PIPE_BYTES = 1024 * 1024;

/** Linux's F_SETPIPE_SZ and F_GETPIPE_SZ (include/uapi/linux/fcntl.h). */
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;

/**
 * Programs that grow their own stdin and stdout, where those are pipes
 * smaller than `bytes`, and print nothing (stdout is the helper's protocol
 * stream). Exit 0 once no pipe is left smaller.
 *
 * Each also sets O_NONBLOCK on both again before it exits. The flag belongs
 * to the open file description, which the helper shares with its child, and
 * libuv clears it on a child's stdio before the exec: without this, the
 * helper's stdout was left blocking, and a pull's every 1 MiB write stopped
 * its event loop until sshd had drained the pipe (47% of a one-stream pull's
 * time in the write, reads not overlapped with it).
 */
function resizers(bytes: number): Array<[string, string[]]> {
  return [
    [
      'perl',
      [
        '-e',
        `use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK); my $ok = 1; for my $h (*STDIN, *STDOUT) { next unless -p $h; $ok = 0 if fcntl($h, ${F_GETPIPE_SZ}, 0) < ${bytes} && !fcntl($h, ${F_SETPIPE_SZ}, ${bytes}); my $fl = fcntl($h, F_GETFL, 0); fcntl($h, F_SETFL, $fl | O_NONBLOCK) if defined $fl } exit($ok ? 0 : 1)`,
      ],
    ],
    [
      'python3',
      ['-c', `import fcntl, os, stat, sys\nok = True\nfor fd in (0, 1):\n  if not stat.S_ISFIFO(os.fstat(fd).st_mode): continue\n  if fcntl.fcntl(fd, ${F_GETPIPE_SZ}) < ${bytes}:\n    try: fcntl.fcntl(fd, ${F_SETPIPE_SZ}, ${bytes})\n    except OSError: ok = False\n  fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)\nsys.exit(0 if ok else 1)`],
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

/**
 * Grows the pipes on the helper's stdin and stdout (those that are pipes) to
 * `bytes`. Resolves with undefined when they are that large now (or there are
 * none, or the system is not Linux), else with why not. Never throws; the
 * helper need not wait for it.
 */
export async function growPipes(bytes = PIPE_BYTES): Promise<string | undefined> {
  if (process.platform !== 'linux') return undefined;
  const stdin = isFifo(0);
  const stdout = isFifo(1);
  if (!stdin && !stdout) return undefined;
  const stdio: Array<number | 'ignore'> = [stdin ? 0 : 'ignore', stdout ? 1 : 'ignore', 'ignore'];
  for (const [program, args] of resizers(bytes)) {
    const code = await new Promise<number | string | null>((resolve) => {
      const child = spawn(program, args, { stdio });
      child.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? null));
      child.on('close', resolve);
    });
    if (code === 0) return undefined;
    // Not there: try the next; there but failed (over pipe-max-size or the user's pipe quota): give up.
    if (code !== 'ENOENT') return `${program} could not resize them (over /proc/sys/fs/pipe-max-size, or the user's pipe quota is spent)`;
  }
  return 'neither perl nor python3 is on its PATH';
}
