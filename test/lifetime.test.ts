/**
 * What ferry leaves behind when it is stopped from outside, with real
 * processes: a closed terminal (SIGHUP to the process group, as a shell and
 * the kernel send it) stops a copy as Ctrl-C does, and a `ferry cp` killed
 * with SIGKILL takes its nats-server, agents and ssh processes with it. Both
 * times the job resumes and ends byte-identical.
 */
import { readFile } from 'node:fs/promises';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { formatBytes } from '@ferry/core';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { fileHash, killStrays, makeRandomFile, processTree, REMOTE_CMD, startFerry, stillRunning, tempDir } from './helpers.js';
import type { FerryEvent, LiveRun, ProcessInfo } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 256 * MiB;
const RANGES = SIZE / (16 * MiB);

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;
let srcHash: string;
const cleanups: Array<() => unknown> = [];

function remote(path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

function common(stateDir: string, extra: string[] = []): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', stateDir, '--json', '--range-size', '16MiB', '-a', '2', '-s', '2', ...extra];
}

const doneEvents = (run: LiveRun) => run.events.filter((e) => e.type === 'range.done');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits up to `ms` for none of `processes` to be running; returns those still running then. */
async function gone(processes: ProcessInfo[], ms: number): Promise<ProcessInfo[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = await stillRunning(processes);
    if (left.length === 0 || Date.now() > deadline) return left;
    await sleep(100);
  }
}

/** Runs the copy again to the end: it must resume what the first run made durable and end byte-identical. */
async function rerun(args: string[], target: string, durable: number): Promise<FerryEvent> {
  const second = startFerry(args);
  cleanups.push(() => second.child.kill('SIGKILL'));
  const r = await second.result;
  expect(r.stderr).not.toMatch(/error:/);
  expect(r.code).toBe(0);
  expect(await fileHash(target)).toBe(srcHash);
  const start = second.events.find((e) => e.type === 'job.start')!;
  expect(start.resumed).toBe(true);
  expect(Number(start.rangesDone)).toBeGreaterThanOrEqual(durable);
  return start;
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-lifetime-');
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, SIZE);
  srcHash = await fileHash(src);
});

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch(() => {});
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe('a closed terminal (SIGHUP)', () => {
  it.each([
    ['helper', 'ssh2'],
    ['sftp', 'ssh2'],
    ['helper', 'openssh'],
  ] as const)('stops a copy in %s mode over %s as Ctrl-C does: written ranges made durable, exit 130, resumable', async (mode, transport) => {
    const dir = join(work.path, `hup-${mode}-${transport}`);
    await mkdir(dir);
    const args = ['cp', src, remote(`${dir}/`), '--mode', mode, '--transport', transport, ...common(join(dir, 'state'))];
    // In a process group of its own, as a shell runs a job; the group is what a hang-up signals.
    const first = startFerry([...args, '--limit-rate', '25MB'], { detached: true });
    cleanups.push(() => first.child.kill('SIGKILL'));
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 2);
    const tree = await processTree(first.child.pid!);
    // The shell hangs up its jobs, then the kernel the foreground group as the shell exits: twice.
    process.kill(-first.child.pid!, 'SIGHUP');
    await sleep(100);
    process.kill(-first.child.pid!, 'SIGHUP');
    const r = await first.result;
    const done = doneEvents(first).length;
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 130,
      stderr: `ferry: error: interrupted: ${done} of ${RANGES} ranges (${formatBytes(done * 16 * MiB)} of 256 MiB) are done and journaled; rerun the same command, or 'ferry resume ${String(start.jobId)}', to continue\n`,
    });
    expect(first.events.at(-1)).toMatchObject({ type: 'error', code: 'INTERRUPTED', exitCode: 130 });
    // Every connection lived through the hang-up (an ssh process killed by it would have lost
    // what its agent wrote through it): the ranges in flight went back, none was lost.
    expect(first.events.filter((e) => e.type === 'agent.error')).toEqual([]);
    expect(first.events.filter((e) => e.type === 'log' && /go back|CONNECTION_LOST/.test(String(e.message)))).toEqual([]);
    // Nothing of the job is left running: agents, nats-server, ssh.
    expect(await gone(tree, 2000)).toEqual([]);
    await rerun(args, join(dir, 'src.bin'), done);
  });

  it('stops a copy whose terminal is gone (writing to stderr fails) all the same', async () => {
    const dir = join(work.path, 'hup-no-tty');
    await mkdir(dir);
    const args = ['cp', src, remote(`${dir}/`), ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '25MB'], { detached: true });
    cleanups.push(() => first.child.kill('SIGKILL'));
    await first.waitFor((e) => e.type === 'range.done', 2);
    // Nobody reads stderr any more: the message ferry writes on its way out fails (EPIPE), as
    // writes to a hung-up terminal do (EIO).
    first.child.stderr!.destroy();
    process.kill(-first.child.pid!, 'SIGHUP');
    const r = await first.result;
    expect(r.code).toBe(130);
    expect(first.events.at(-1)).toMatchObject({ type: 'error', code: 'INTERRUPTED', exitCode: 130 });
    await rerun(args, join(dir, 'src.bin'), doneEvents(first).length);
  });
});

describe('ferry cp killed with SIGKILL', () => {
  it.each(['ssh2', 'openssh'] as const)('leaves no nats-server, agent or ssh process of its job (%s), and a rerun resumes', async (transport) => {
    const dir = join(work.path, `kill-${transport}`);
    await mkdir(dir);
    const args = ['cp', src, remote(`${dir}/`), '--transport', transport, ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '25MB']);
    cleanups.push(() => first.child.kill('SIGKILL'));
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 2);
    // What this job started, found from its coordinator's pid and its state directory.
    const tree = await processTree(first.child.pid!);
    const natsPid = Number((await readFile(join(String(start.stateDir), 'nats', 'nats.pid'), 'utf8')).trim());
    expect(tree.find((p) => p.pid === natsPid)?.cmdline).toMatch(/nats-server/);
    // Agent 1 (agent 0 runs inside the coordinator).
    expect(tree.filter((p) => / agent --warm$/.test(p.cmdline))).toHaveLength(1);
    if (transport === 'openssh') expect(tree.filter((p) => /^(\S*\/)?ssh -T /.test(p.cmdline)).length).toBeGreaterThanOrEqual(4);
    // The remote side: the sshd sessions and helpers of this job's connections.
    const remoteSide = await processTree(sshd.pid!);
    expect(remoteSide.length).toBeGreaterThan(0);

    first.child.kill('SIGKILL');
    await first.result;
    expect(await gone(tree, 3000)).toEqual([]);
    // Their connections closed, the helpers and sshd sessions end too.
    expect(await gone(remoteSide, 10_000)).toEqual([]);
    await rerun(args, join(dir, 'src.bin'), doneEvents(first).length);
  });
});
