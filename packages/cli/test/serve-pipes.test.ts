/**
 * `ferry serve` between real pipes, as sshd starts it (anonymous pipes on
 * stdin and stdout): it resizes them to 1 MiB (serve/src/pipes.ts), keeps its
 * protocol stream clean meanwhile, and works as before where it cannot,
 * saying why in OPEN's answer.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, PROTOCOL_VERSION, encodeControl } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { PIPE_BYTES } from '@ferry/serve';

const MAIN = fileURLToPath(new URL('../dist/bundle/main.js', import.meta.url));
const DEFAULT_PIPE = 64 * 1024;

/** The size of the pipe on `fd` of process `pid` (F_GETPIPE_SZ, through perl: Node has no fcntl). */
function pipeSize(pid: number, fd: number): number {
  return Number(execFileSync('perl', ['-e', 'open(my $f, "<", $ARGV[0]) or die "$ARGV[0]: $!"; print fcntl($f, 1032, 0)', `/proc/${pid}/fd/${fd}`], { encoding: 'utf8' }));
}

/**
 * Runs `cat | ferry serve | cat` (or `cat | node ARGS | cat`), so that the
 * helper's stdin and stdout are pipes; `path` is the PATH the helper gets.
 * Once `check(pid)` has returned, sends HELLO and an OPEN (for reading) of
 * this test's own file, and ends the input.
 */
function serveBetweenPipes(path: string, check: (pid: number) => Promise<void>, args = [MAIN, 'serve']): Promise<{ code: number | null; out: Buffer; err: string }> {
  return new Promise((resolve, reject) => {
    const script = 'cat | sh -c \'echo "pid $$" >&2; p="$1"; shift; exec env PATH="$p" "$@"\' sh "$@" | cat';
    const child = spawn('sh', ['-c', script, 'sh', path, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    let checked = false;
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      err += d;
      const m = /^pid (\d+)\n/.exec(err);
      if (!m || checked) return;
      checked = true;
      err = err.slice(m[0].length);
      check(Number(m[1])).then(
        () => {
          child.stdin.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
          child.stdin.end(encodeControl('OPEN', 2, { path: fileURLToPath(import.meta.url), policy: 'read' }));
        },
        (e: unknown) => {
          child.kill();
          reject(e);
        },
      );
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
  });
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); ) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function decodeFrames(out: Buffer): DecodedFrame[] {
  const frames: DecodedFrame[] = [];
  new FrameDecoder((f) => frames.push(f)).push(out);
  return frames;
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A PATH of one directory that has only `program` (from /usr/bin or /bin, not from a version manager's shims; `apt-get install python3-minimal` for python3). */
function pathWithOnly(program: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-path-'));
  dirs.push(dir);
  symlinkSync(execFileSync('sh', ['-c', `command -v ${program}`], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } }).trim(), join(dir, program));
  return dir;
}

describe('ferry serve on sshd-style pipes', () => {
  it.each(['perl', 'python3'])('resizes its stdin and stdout pipes to 1 MiB with %s and writes nothing but its answers', async (program) => {
    let sizes: number[] = [];
    const r = await serveBetweenPipes(pathWithOnly(program), async (pid) => {
      await until('the pipes to grow', () => (sizes = [pipeSize(pid, 0), pipeSize(pid, 1)]).every((s) => s === PIPE_BYTES));
    });
    expect(sizes).toEqual([PIPE_BYTES, PIPE_BYTES]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const [hello, open] = decodeFrames(r.out);
    expect(hello).toMatchObject({ type: 'OK', id: 1, body: { hello: { version: PROTOCOL_VERSION } } });
    expect(open).toMatchObject({ type: 'OK', id: 2 });
    expect(open!.body).not.toHaveProperty('pipesReason');
  });

  it.each(['perl', 'python3'])('never shrinks a pipe (%s)', async (program) => {
    // growPipes asked for less than the default 64 KiB: nothing to do, and a success. The script lives until its input ends.
    const serveDist = fileURLToPath(new URL('../../serve/dist/index.js', import.meta.url));
    const script = `import(${JSON.stringify(serveDist)}).then((m) => m.growPipes(16384)).then((r) => process.stderr.write(r === undefined ? 'grown' : 'not grown: ' + r)); process.stdin.resume()`;
    let sizes: number[] = [];
    const r = await serveBetweenPipes(
      pathWithOnly(program),
      async (pid) => {
        await new Promise((res) => setTimeout(res, 1000));
        sizes = [pipeSize(pid, 0), pipeSize(pid, 1)];
      },
      ['-e', script],
    );
    expect(r.err).toBe('grown');
    expect(sizes).toEqual([DEFAULT_PIPE, DEFAULT_PIPE]);
  });

  it('keeps the default pipes, works, and says why where neither perl nor python3 is on PATH', async () => {
    let sizes: number[] = [];
    const r = await serveBetweenPipes('/nonexistent', async (pid) => {
      // Long enough for a resize to have happened, had it been possible (the test above sees it well within this).
      await new Promise((res) => setTimeout(res, 1500));
      sizes = [pipeSize(pid, 0), pipeSize(pid, 1)];
    });
    expect(sizes).toEqual([DEFAULT_PIPE, DEFAULT_PIPE]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const [hello, open] = decodeFrames(r.out);
    expect(hello).toMatchObject({ type: 'OK', id: 1, body: { hello: { version: PROTOCOL_VERSION } } });
    expect(open).toMatchObject({ type: 'OK', id: 2, body: { pipesReason: 'neither perl nor python3 is on its PATH' } });
  });
});
