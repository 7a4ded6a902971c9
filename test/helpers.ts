/**
 * Helpers for integration tests: run the real `ferry` binary, make test files,
 * compare them.
 */
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { Writable } from 'node:stream';
import type { Readable } from 'node:stream';
import { FrameDecoder, createHasher } from '@ferry/core';
import type { DecodedFrame, HashAlgorithm } from '@ferry/core';
import type { RemoteConnection } from '@ferry/transport';
import { HelperClient } from '../packages/transport/src/helper-client.js';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { mkdir, mkdtemp, open, rename, rm, stat, symlink, utimes } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The CLI as bin/ferry runs it: the bundle (scripts/bundle.mjs), made by the global setup. */
export const CLI = join(ROOT, 'packages/cli/dist/bundle/main.js');
/** How the remote side starts the helper in tests: the same build, on the same machine. */
export const REMOTE_CMD = `${process.execPath} ${CLI} serve`;

/** Decodes a helper's answers from `output`; the returned function waits for the answer to request `id`. */
export function repliesById(output: Readable): (id: number) => Promise<DecodedFrame> {
  const replies = new Map<number, DecodedFrame>();
  const waiting = new Map<number, (f: DecodedFrame) => void>();
  const decoder = new FrameDecoder((f) => {
    const w = waiting.get(f.id);
    if (w) {
      waiting.delete(f.id);
      w(f);
    } else replies.set(f.id, f);
  }, 'client');
  output.on('data', (chunk: Buffer) => decoder.push(chunk));
  return (id) => new Promise((resolve) => (replies.has(id) ? resolve(replies.get(id)!) : waiting.set(id, resolve)));
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  timeoutMs?: number;
  /** Run under another uid/gid with setpriv (for permission tests as root). */
  asUser?: { uid: number; gid: number };
  /** startFerry: in a process group of its own, as a shell runs a job (signal it with kill(-pid)). */
  detached?: boolean;
}

export function runFerry(args: string[], options: RunOptions = {}): Promise<RunResult> {
  const env = { ...process.env, ...options.env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  const argv = [CLI, ...args];
  const [file, fileArgs] = options.asUser
    ? ['setpriv', [`--reuid=${options.asUser.uid}`, `--regid=${options.asUser.gid}`, '--clear-groups', process.execPath, ...argv]]
    : [process.execPath, argv];
  return new Promise((resolve, reject) => {
    const child = spawn(file, fileArgs as string[], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 180_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Flips (xor 0xff) the byte at `offset` of `path`, keeping its size and everything else. */
export async function flipByte(path: string, offset: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, offset);
  } finally {
    await fh.close();
  }
}

/** Writes `bytes` of random data (seeded per call, different each time). */
export async function makeRandomFile(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'w');
  const chunk = Buffer.allocUnsafe(4 * 1024 * 1024);
  try {
    for (let at = 0; at < bytes; at += chunk.length) {
      const n = Math.min(chunk.length, bytes - at);
      randomFillSync(chunk, 0, n);
      await fh.write(chunk, 0, n, at);
    }
  } finally {
    await fh.close();
  }
}

/** Content hash of a file for comparisons (xxh3: tests compare gigabytes). */
/**
 * xxh3 of a whole file, read through one reused buffer: fresh 4 MiB chunks
 * from a read stream cost page faults (a 6 GiB sparse file took 13 s to
 * hash that way, 2-3 s this way).
 */
export async function fileHash(path: string): Promise<string> {
  const h = createHasher('xxh3');
  const buf = Buffer.allocUnsafe(1024 * 1024);
  const fh = await open(path, 'r');
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest();
}

export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** NDJSON output of `ferry cp --json` as objects. */
export function parseEvents(stdout: string): Array<Record<string, unknown> & { type: string }> {
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown> & { type: string });
}

export type FerryEvent = Record<string, unknown> & { type: string };

export interface LiveRun {
  child: import('node:child_process').ChildProcess;
  events: FerryEvent[];
  stderr(): string;
  /** Resolves with the first event matching, or when `count` events matched. */
  waitFor(predicate: (e: FerryEvent) => boolean, count?: number, timeoutMs?: number): Promise<FerryEvent>;
  result: Promise<RunResult>;
}

/** Starts `ferry ... --json` and follows its events as they come. */
export function startFerry(args: string[], options: RunOptions = {}): LiveRun {
  const env = { ...process.env, ...options.env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: options.detached === true });
  const events: FerryEvent[] = [];
  const waiters: Array<() => void> = [];
  let out = '';
  let err = '';
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) {
      if (!l.trim()) continue;
      try {
        events.push(JSON.parse(l) as FerryEvent);
      } catch {
        // not an event line
      }
    }
    for (const w of waiters.splice(0)) w();
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 240_000);
  const result = new Promise<RunResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      for (const w of waiters.splice(0)) w();
      resolve({ code, signal, stdout: out, stderr: err });
    });
  });
  let exited = false;
  void result.then(() => (exited = true));
  const waitFor = (predicate: (e: FerryEvent) => boolean, count = 1, timeoutMs = 120_000): Promise<FerryEvent> =>
    new Promise((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`timed out waiting for ${count} matching events; got: ${events.map((e) => e.type).join(' ')}; stderr: ${err}`)), timeoutMs);
      const check = () => {
        const hits = events.filter(predicate);
        if (hits.length >= count) {
          clearTimeout(deadline);
          resolve(hits[count - 1]!);
        } else if (exited) {
          clearTimeout(deadline);
          reject(new Error(`ferry exited before ${count} matching events; got: ${events.map((e) => e.type).join(' ')}; stderr: ${err}`));
        } else waiters.push(check);
      };
      check();
    });
  return { child, events, stderr: () => err, waitFor, result };
}

/** Child pids of a process (from /proc), e.g. the per-connection processes of an sshd. */
export async function childPids(pid: number): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    // Field 4 (after the parenthesised command) is the parent pid.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(rest[1]) === pid) out.push(Number(name));
  }
  return out.sort((a, b) => a - b);
}

export interface ProcessInfo {
  pid: number;
  /** Start time in clock ticks since boot (field 22 of /proc/PID/stat): a pid reused later has another. */
  startedAt: number;
  cmdline: string;
}

async function processInfo(pid: number): Promise<(ProcessInfo & { state: string; ppid: number }) | undefined> {
  const { readFile } = await import('node:fs/promises');
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  if (!stat) return undefined;
  // After the parenthesised command: state (3), ppid (4), ... starttime (22).
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ').trim();
  return { pid, state: rest[0]!, ppid: Number(rest[1]), startedAt: Number(rest[19]), cmdline };
}

/** Every process below `pid` (children, their children, ...), as they are now. */
export async function processTree(pid: number): Promise<ProcessInfo[]> {
  const out: ProcessInfo[] = [];
  let parents = [pid];
  while (parents.length > 0) {
    const next: number[] = [];
    for (const parent of parents) {
      for (const child of await childPids(parent)) {
        const info = await processInfo(child);
        if (info && info.state !== 'Z') {
          out.push({ pid: info.pid, startedAt: info.startedAt, cmdline: info.cmdline });
          next.push(child);
        }
      }
    }
    parents = next;
  }
  return out;
}

/** Those of `processes` still running (the same process, not a reused pid; a zombie has ended). */
export async function stillRunning(processes: ProcessInfo[]): Promise<ProcessInfo[]> {
  const out: ProcessInfo[] = [];
  for (const p of processes) {
    const now = await processInfo(p.pid);
    if (now && now.state !== 'Z' && now.startedAt === p.startedAt) out.push(p);
  }
  return out;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * SIGKILLs every process whose command line mentions `dir` (a test's work
 * directory): what a failed or timed-out test left behind, such as the
 * nats-server of a coordinator killed with SIGKILL (kept alive on purpose for
 * a rerun) or agents whose coordinator vanished. Returns their command lines.
 */
export async function killStrays(dir: string): Promise<string[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const killed: string[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const cmd = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ').trim();
    if (!(cmd.includes(`${dir}/`) || cmd.includes(`${dir} `) || cmd.endsWith(dir))) continue;
    try {
      process.kill(Number(name), 'SIGKILL');
      killed.push(cmd);
    } catch {
      // gone already
    }
  }
  return killed;
}

/**
 * Writes `data` as one range through a connection (createSized, openFile, one
 * range write in pieces of 1 MiB); resolves with the destination's hash.
 */
export async function writeRange(conn: RemoteConnection, path: string, data: Buffer, algorithm: HashAlgorithm = 'sha256'): Promise<string> {
  const piece = 1024 * 1024;
  await conn.createSized(path, data.length);
  const file = await conn.openFile(path, 'write');
  try {
    const w = file.beginWrite(0, data.length, algorithm);
    const h = w.headroom;
    for (let at = 0; at < data.length; at += piece) {
      const part = data.subarray(at, Math.min(data.length, at + piece));
      const buf = Buffer.allocUnsafe(h + part.length);
      part.copy(buf, h);
      await Promise.race([w.write(buf, h, buf.length, () => {}), w.failed]);
    }
    return (await Promise.race([w.end(), w.failed])).hash;
  } finally {
    await file.close();
  }
}

/**
 * A helper on this machine spoken to over its stdin and stdout, as a
 * connection's channel would: `ferry serve` or the python helper (sent its
 * script first, with only /usr/bin and /bin on PATH). `writes` counts the
 * writes the client made to it (one per frame sent).
 */
export async function startLocalHelper(kind: 'serve' | 'python'): Promise<{ helper: HelperClient; writes: () => number }> {
  const script = kind === 'python' ? pythonHelperScript() : undefined;
  const child = script
    ? spawn('sh', ['-c', pythonHelperCommand(script.length)], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(process.execPath, [CLI, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let writes = 0;
  const input = new Writable({
    write(chunk: Buffer, _enc, done) {
      writes++;
      if (child.stdin.write(chunk)) done();
      else child.stdin.once('drain', () => done());
    },
    final(done) {
      child.stdin.end(done);
    },
  });
  const helper = new HelperClient({ input, output: child.stdout, stderr: child.stderr, close: () => child.kill() }, 'here');
  if (script) child.stdin.write(script);
  await helper.handshake(10_000);
  return { helper, writes: () => writes };
}

/**
 * Another user's move on a directory of a copy: `dir` renamed away and a
 * symbolic link to `victim` (a directory of the user's, made here with known
 * mode and times) put at its name. What `victim` was, to check it untouched.
 */
export async function swapInLink(dir: string, victim: string): Promise<Stats> {
  await mkdir(victim, { mode: 0o700 });
  await utimes(victim, 1_500_000_000, 1_500_000_000);
  const before = await stat(victim);
  await rename(dir, `${dir}.moved`);
  await symlink(victim, dir);
  return before;
}
