/**
 * Fault tolerance with real processes: agents, the coordinator, sshd sessions,
 * a whole remote host and nats-server are killed mid-transfer; the disk fills
 * up; the source changes; the journal is torn; Ctrl-C. Each time the copy ends
 * byte-identical, or stops with a clear error and resumes after the fix.
 *
 * The tests that touch the data path (agents, connections, helpers, the
 * destination's writes and syncs) run twice: against a remote host with
 * `ferry serve`, and against one where nothing of ferry (and no node) is
 * installed, where the copy goes through ferry's python helper (the no-install
 * path). The tests of the coordinator's own recovery (its journal, the KV
 * mirror, NATS, the source check) see the same helper answers either way and
 * run once, against `ferry serve`.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, copyFile, mkdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { formatBytes } from '@ferry/core';
import { childPids, fileHash, isAlive, killStrays, makeRandomFile, REMOTE_CMD, startFerry, tempDir } from './helpers.js';
import type { FerryEvent, LiveRun } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 256 * MiB;
/** Ranges of the source at --range-size 16MiB. */
const RANGES = SIZE / (16 * MiB);

/** The remote host of a run of the suite: what is installed there, and the data path it leads to. */
interface Variant {
  name: string;
  /** Programs the remote sessions do not find. */
  without: Array<'node' | 'python3'>;
  /** How ferry is told to reach its helper (nothing: it finds no ferry serve and sends its python helper). */
  flags: string[];
  mode: 'helper' | 'python';
  /** A sh case pattern matching a start of this variant's helper in the remote command line. */
  startPattern: string;
}

const VARIANTS: Variant[] = [
  { name: 'ferry serve on the remote host', without: [], flags: ['--remote-cmd', REMOTE_CMD], mode: 'helper', startPattern: '*"main.js serve"*' },
  { name: 'nothing installed on the remote host (python helper)', without: ['node'], flags: [], mode: 'python', startPattern: '*platform-python*' },
];

let variant: Variant;
let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;
let srcHash: string;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

function remote(path: string, host = sshd.host, port = sshd.port): string {
  return `${sshd.user}@${host}:${port}:${path}`;
}

function common(stateDir: string, extra: string[] = [], on: Sshd = sshd): string[] {
  return ['-i', on.userKey, '--known-hosts', on.knownHosts, ...variant.flags, '--state-dir', stateDir, '--json', '--range-size', '16MiB', ...extra];
}

/**
 * An sshd of the variant's kind whose ForceCommand counts the starts of the variant's
 * helper in `starts` and makes start number `slowStart` sleep `seconds` without a word
 * before it runs (a login stuck in slow shell start-up files); every other command runs
 * at once, as given.
 */
async function slowHelperSshd(dir: string, slowStart: number, seconds: number): Promise<{ sshd: Sshd; starts: string }> {
  const starts = join(dir, 'starts');
  const script = join(dir, 'slow-start.sh');
  await writeFile(
    script,
    `#!/bin/sh\ncase "$SSH_ORIGINAL_COMMAND" in ${variant.startPattern})\n  n=$(cat ${starts} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${starts}\n  if [ "$n" = ${slowStart} ]; then sleep ${seconds}; fi;;\nesac\nexec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n`,
    { mode: 0o755 },
  );
  const slow = await startSshd({ dir: join(dir, 'sshd'), without: variant.without, extraConfig: [`ForceCommand ${script}`] });
  cleanups.push(() => slow.stop());
  return { sshd: slow, starts };
}

/**
 * Copies the source into work/`name` through slowHelperSshd (warm start off, so the starts
 * are counted in order), checks the result, and returns the run and how many helpers were
 * started.
 */
async function copyWithSlowHelper(name: string, slowStart: number, seconds: number, flags: string[]): Promise<{ run: LiveRun; starts: number }> {
  const dir = join(work.path, name);
  await mkdir(dir);
  const slow = await slowHelperSshd(dir, slowStart, seconds);
  const run = startFerry(['cp', src, remote(`${dir}/`, slow.sshd.host, slow.sshd.port), ...flags, ...common(join(dir, 'state'), [], slow.sshd)], { env: { FERRY_WARM_START: '0' } });
  cleanups.push(() => run.child.kill('SIGKILL'));
  await finish(run, join(dir, 'src.bin'));
  return { run, starts: Number((await readFile(slow.starts, 'utf8')).trim()) };
}

const doneEvents = (run: LiveRun) => run.events.filter((e) => e.type === 'range.done');
const lastEvent = (run: { events: FerryEvent[] }, type: string) => run.events.filter((e) => e.type === type).pop();

beforeAll(async () => {
  work = await tempDir('ferry-faults-');
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, SIZE);
  srcHash = await fileHash(src);
});

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch(() => {});
});

afterAll(async () => {
  // Whatever a failed test left running under the work directory (nats-server, agents).
  if (work) await killStrays(work.path);
  await work?.remove();
});

/** How long finish() waits for a copy: less than the test's timeout, so that a hang says what it hung in. */
const FINISH_MS = 100_000;

/** Runs a copy to completion and checks the result. */
async function finish(run: LiveRun, target: string, want = srcHash): Promise<FerryEvent> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const last = run.events.filter((e) => e.type !== 'progress').slice(-40).map((e) => JSON.stringify(e));
      reject(new Error(`the copy did not end within ${FINISH_MS / 1000}s; its last events:\n${last.join('\n')}\nstderr: ${run.stderr()}`));
    }, FINISH_MS);
  });
  const r = await Promise.race([run.result, hung]).finally(() => clearTimeout(timer));
  expect(r.stderr).not.toMatch(/error:/);
  expect(r.code).toBe(0);
  expect(await fileHash(target)).toBe(want);
  return lastEvent(run, 'done')!;
}

/** Starts the variant's sshd for the enclosing describe; returns how to make a directory for one test, apart from the other variant's. */
function useVariant(v: Variant): (name: string) => Promise<string> {
  beforeAll(async () => {
    variant = v;
    sshd = await startSshd({ without: v.without });
  });

  afterAll(async () => {
    if (work) await killStrays(work.path);
    await sshd?.stop();
  });

  return async (name: string) => {
    const dir = join(work.path, `${v.mode}-${name}`);
    await mkdir(dir);
    return dir;
  };
}

describe.each(VARIANTS)('fault tolerance with $name', (v) => {
  const testDir = useVariant(v);

  it('1. finishes byte-identical when one of 3 agents is killed with SIGKILL', async () => {
    const dir = await testDir('t1');
    const run = startFerry(['cp', src, remote(`${dir}/`), '--agents', '3', '--streams', '1', '--ack-wait', '3s', '--limit-rate', '60MB', ...common(join(dir, 'state'))]);
    cleanups.push(() => run.child.kill('SIGKILL'));
    const victim = await run.waitFor((e) => e.type === 'agent.start' && e.index === 1);
    await run.waitFor((e) => e.type === 'range.done', 4);
    process.kill(Number(victim.pid), 'SIGKILL');
    const done = await finish(run, join(dir, 'src.bin'));
    expect(run.events.some((e) => e.type === 'agent.exit' && e.signal === 'SIGKILL')).toBe(true);
    expect(done.ranges).toBe(RANGES);
  });

  it('1b. with ranges of 1 MiB (work items of 16 ranges), finishes byte-identical when an agent is killed and an agent connection is cut', async () => {
    const dir = await testDir('t1b');
    const run = startFerry(['cp', src, remote(`${dir}/`), '--agents', '3', '--streams', '1', '--ack-wait', '3s', '--limit-rate', '30MB', ...common(join(dir, 'state'), ['--range-size', '1MiB'])]);
    cleanups.push(() => run.child.kill('SIGKILL'));
    const victim = await run.waitFor((e) => e.type === 'agent.start' && e.index === 1);
    await run.waitFor((e) => e.type === 'range.done', 40);
    // Agent 1 dies holding part of a run: the whole item comes back after ack_wait.
    process.kill(Number(victim.pid), 'SIGKILL');
    await run.waitFor((e) => e.type === 'range.done', 120);
    // An agent's connection dies: its written, unsynced ranges and the rest of its run go back.
    // (The oldest session is the coordinator's, shared by agent 0; the newest is agent 2's,
    // which a loaded machine may still be opening.)
    let sessions = await childPids(sshd.pid!);
    for (let i = 0; i < 50 && sessions.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 200));
      sessions = await childPids(sshd.pid!);
    }
    expect(sessions.length).toBeGreaterThanOrEqual(2);
    process.kill(sessions.at(-1)!, 'SIGKILL');
    const done = await finish(run, join(dir, 'src.bin'));
    expect(run.events.some((e) => e.type === 'agent.exit' && e.signal === 'SIGKILL')).toBe(true);
    expect(done.ranges).toBe(SIZE / MiB);
    expect(new Set(doneEvents(run).map((e) => Number(e.range))).size).toBe(SIZE / MiB);
  });

  it('2. resumes after the coordinator and its nats-server are killed, moving only what was not durable', async () => {
    const dir = await testDir('t2');
    const args = ['cp', src, remote(`${dir}/`), '--agents', '2', '--streams', '2', ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '30MB']);
    cleanups.push(() => first.child.kill('SIGKILL'));
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 8);
    const natsPid = Number((await readFile(join(String(start.stateDir), 'nats', 'nats.pid'), 'utf8')).trim());
    first.child.kill('SIGKILL');
    try {
      // It dies with its coordinator already (its parent-death signal): make sure, whatever won the race.
      process.kill(natsPid, 'SIGKILL');
    } catch {
      // gone already
    }
    await first.result;
    const durableAtKill = doneEvents(first).reduce((n, e) => n + Number(e.bytes), 0);

    const second = startFerry(args);
    cleanups.push(() => second.child.kill('SIGKILL'));
    const done = await finish(second, join(dir, 'src.bin'));
    const resumedStart = second.events.find((e) => e.type === 'job.start')!;
    expect(resumedStart.resumed).toBe(true);
    // Nothing journaled is moved again; the rerun moves exactly what was not durable.
    expect(Number(done.resumedBytes)).toBeGreaterThanOrEqual(durableAtKill);
    expect(Number(done.movedBytes) + Number(done.resumedBytes)).toBe(SIZE);
    expect(Number(done.movedBytes)).toBeLessThanOrEqual(SIZE - durableAtKill);
    console.log(`test 2: the rerun moved ${(Number(done.movedBytes) / SIZE).toFixed(3)} of the file (${durableAtKill / MiB} MiB were journaled at the kill)`);
  });

  it('3. reconnects when the sshd process serving an agent connection is killed', async () => {
    const dir = await testDir('t3');
    // Slow enough that work is left for the connection killed below (see 3b).
    const run = startFerry(['cp', src, remote(`${dir}/`), '--agents', '2', '--streams', '2', '--limit-rate', '20MB', ...common(join(dir, 'state'))]);
    cleanups.push(() => run.child.kill('SIGKILL'));
    await run.waitFor((e) => e.type === 'range.done', 4);
    // The newest session belongs to an agent (the coordinator connected first; agent 0,
    // in the coordinator's process, moves data over that first one too).
    const sessions = await childPids(sshd.pid!);
    expect(sessions.length).toBeGreaterThanOrEqual(4);
    process.kill(sessions.at(-1)!, 'SIGKILL');
    await finish(run, join(dir, 'src.bin'));
    expect(run.events.some((e) => e.type === 'agent.error' && e.code === 'CONNECTION_LOST' && e.fatal === false)).toBe(true);
  });

  it('3c. retries an agent connection whose helper stays silent past its start timeout', async () => {
    // The second helper start (the agent's first connection; the coordinator's is the
    // first) hangs past the agents' helper timeout (4x --connect-timeout: 16 s here)
    // without a word, like a login stuck in slow shell start-up files; every other
    // start is the real helper.
    const { run, starts } = await copyWithSlowHelper(`${v.mode}-t3c`, 2, 18, ['--agents', '1', '--streams', '2', '--connect-timeout', '4s']);
    const slow = run.events.filter((e) => e.type === 'agent.error');
    expect(slow.length).toBeGreaterThan(0);
    expect(slow.every((e) => e.code === 'HELPER_UNAVAILABLE' && e.fatal === false)).toBe(true);
    expect(String(slow[0]!.message)).toContain('started but did not answer within 16s, without exiting or a word on stderr');
    // Coordinator, two slots, and the slow slot's retry.
    expect(starts).toBe(4);
  });

  it('3d. in auto mode, gives the coordinator\'s helper a second, longer chance before falling back to SFTP', async () => {
    // The first helper start (the coordinator's) stays silent past --connect-timeout (4 s);
    // the retry, on the same connection with twice the time, is the real helper.
    const { run, starts } = await copyWithSlowHelper(`${v.mode}-t3d`, 1, 6, ['--agents', '1', '--streams', '1', '--connect-timeout', '4s']);
    expect(run.events.find((e) => e.type === 'job.start')?.mode).toBe(v.mode);
    // The coordinator's slow start, its retry, and the agent's one connection.
    expect(starts).toBe(3);
  });

  it('3b. with --transport openssh, reconnects when an agent\'s ssh process is killed', async () => {
    const dir = await testDir('t3b');
    // Slow enough that work is left for the connection killed below: while agent 1's ssh
    // processes log in, agent 0's first connection alone may take the whole cap.
    const run = startFerry(['cp', src, remote(`${dir}/`), '--transport', 'openssh', '--agents', '2', '--streams', '2', '--limit-rate', '20MB', ...common(join(dir, 'state'))]);
    cleanups.push(() => run.child.kill('SIGKILL'));
    await run.waitFor((e) => e.type === 'range.done', 4);
    // ferry cp (running agent 0 itself) -> agent 1 -> one ssh process per connection.
    const agents = (await Promise.all((await childPids(run.child.pid!)).map(async (pid) => ((await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes('\0agent\0') ? [pid] : [])))).flat();
    expect(agents.length).toBe(1);
    const ssh = (await Promise.all(agents.map((pid) => childPids(pid)))).flat();
    expect(ssh.length).toBe(2);
    process.kill(ssh[0]!, 'SIGKILL');
    await finish(run, join(dir, 'src.bin'));
    expect(run.events.some((e) => e.type === 'agent.error' && e.code === 'CONNECTION_LOST' && e.fatal === false)).toBe(true);
  });

  it('4. finishes on the other host when one of two remote hosts goes down', async () => {
    const dir = await testDir('t4');
    // A second sshd on 127.0.0.2 and the same port, accepting the same user key.
    const second = join(dir, 'sshd2');
    await mkdir(second);
    const first = await startSshd({ dir: join(dir, 'sshd1'), listen: '127.0.0.1', without: v.without });
    cleanups.push(() => first.stop());
    await copyFile(first.userKey, join(second, 'userkey'));
    await copyFile(`${first.userKey}.pub`, join(second, 'userkey.pub'));
    const other = await startSshd({ dir: second, listen: '127.0.0.2', port: first.port, without: v.without });
    cleanups.push(() => other.stop());
    const kh = join(dir, 'known_hosts');
    await writeFile(kh, `${first.hostKeyLine}\n${other.hostKeyLine}\n`);
    const run = startFerry([
      'cp', src, `${first.user}@127.0.0.1,127.0.0.2:${first.port}:${dir}/`,
      '-i', first.userKey, '--known-hosts', kh, ...v.flags, '--state-dir', join(dir, 'state'),
      // 20 MB/s: ~13 s for the file, so that when the second host's agent comes late under
      // load, ranges are still left for it after the kill (at 30 MB/s a CI run once found none).
      '--json', '--range-size', '16MiB', '--agents', '2', '--streams', '2', '--limit-rate', '20MB',
    ]);
    cleanups.push(() => run.child.kill('SIGKILL'));
    await run.waitFor((e) => e.type === 'range.done' && String(e.host).startsWith('127.0.0.1'), 2);
    await run.waitFor((e) => e.type === 'range.done' && String(e.host).startsWith('127.0.0.2'), 2);
    // Host 127.0.0.1 dies: its sshd and every session it serves, the coordinator's included.
    const sessions = await childPids(first.pid!);
    const killedAt = Date.now();
    process.kill(first.pid!, 'SIGKILL');
    for (const pid of sessions) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // That session ended with its listener.
      }
    }
    await finish(run, join(dir, 'src.bin'));
    // A range whose hash reply left 127.0.0.1 just before the kill may be processed and
    // reported after it; once that grace has passed, every range went to 127.0.0.2.
    const after = run.events.filter((e) => e.type === 'range.done' && Number(e.finishedAt) > killedAt + 2000);
    expect(after.length).toBeGreaterThan(0);
    expect(after.every((e) => String(e.host).startsWith('127.0.0.2'))).toBe(true);
  });

  it('6. stops with a clear error when the destination fills up, and resumes once there is space', async () => {
    const dir = await testDir('t6');
    const small = join(dir, 'small-fs');
    await mkdir(small);
    // Room for well over the first durable batch: a connection whose write failed cannot
    // fsync what it wrote before (the helpers' write errors are sticky), so only what was
    // made durable before the disk filled is resumed. A connection makes its ranges durable
    // when one completes 5 s or more after the oldest unsynced one: with 8 MiB ranges at
    // the rate below (4 streams, ~3.75 MB/s each, a range every ~2.2 s) that is by ~9 s,
    // and the disk fills at ~13 s (with 16 MiB ranges a stream's first sync came at
    // ~13.5 s, after a 160 MB disk was full: CI caught it).
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=200m', 'tmpfs', small]);
    cleanups.push(() => execFileSync('umount', ['-l', small]));
    // An sshd started after the mount: one in a mount namespace of its own (nothing installed)
    // sees only the mounts made before it started.
    const host = await startSshd({ dir: join(dir, 'sshd'), without: v.without });
    cleanups.push(() => host.stop());
    const args = ['cp', src, remote(`${small}/`, host.host, host.port), '--agents', '2', '--streams', '2', ...common(join(dir, 'state'), ['--range-size', '8MiB'], host)];
    // Slow enough that connections make ranges durable well before the disk is full.
    const full = startFerry([...args, '--limit-rate', '15MB']);
    const r = await full.result;
    expect(r.code).toBe(22);
    expect(r.stderr).toMatch(
      new RegExp(`^ferry: error: no space left on the destination filesystem writing ${host.host}:${host.port}:${small}/\\.src\\.bin\\.ferry-[0-9a-f]{24}\\.part: free space \\(or raise the quota\\) and rerun the same command to resume\\n$`),
    );
    const durable = doneEvents(full).length;
    execFileSync('mount', ['-o', 'remount,size=400m', small]);
    const again = startFerry(args);
    const done = await finish(again, join(small, 'src.bin'));
    expect(again.events.find((e) => e.type === 'job.start')!.rangesDone).toBeGreaterThanOrEqual(durable);
    expect(Number(done.resumedBytes)).toBeGreaterThan(0);
  });

  it('10. exits 130 on SIGINT with a resumable job, and the rerun completes', async () => {
    const dir = await testDir('t10');
    const args = ['cp', src, remote(`${dir}/`), ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '30MB']);
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 3);
    first.child.kill('SIGINT');
    const r = await first.result;
    expect(r.code).toBe(130);
    const done = doneEvents(first).length;
    expect(r.stderr).toBe(
      `ferry: error: interrupted: ${done} of ${RANGES} ranges (${formatBytes(done * 16 * MiB)} of ${formatBytes(SIZE)}) are done and journaled; rerun the same command, or 'ferry resume ${String(start.jobId)}', to continue\n`,
    );
    expect(lastEvent(first, 'error')).toMatchObject({ code: 'INTERRUPTED', exitCode: 130 });
    // No agent outlives the coordinator.
    for (const e of first.events.filter((x) => x.type === 'agent.start')) expect(isAlive(Number(e.pid))).toBe(false);
    const second = startFerry(args);
    const fin = await finish(second, join(dir, 'src.bin'));
    expect(Number(fin.resumedBytes)).toBe(done * 16 * MiB);
  });
});

// The coordinator's recovery: the journal, the KV mirror, NATS and the source check.
// The data path answers them as it does any copy (tests 2 and 10 resume through both
// helpers), so one variant proves as much as two.
describe(`fault tolerance of the coordinator, with ${VARIANTS[0]!.name}`, () => {
  const testDir = useVariant(VARIANTS[0]!);

  it('2b. resumes after the coordinator of a one-agent job (no NATS) is killed, moving only what was not durable', async () => {
    const dir = await testDir('t2b');
    const args = ['cp', src, remote(`${dir}/`), '--agents', '1', '--streams', '2', ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '30MB']);
    cleanups.push(() => first.child.kill('SIGKILL'));
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 8);
    first.child.kill('SIGKILL');
    await first.result;
    expect(existsSync(join(String(start.stateDir), 'nats'))).toBe(false);
    const durableAtKill = doneEvents(first).reduce((n, e) => n + Number(e.bytes), 0);
    const second = startFerry(args);
    cleanups.push(() => second.child.kill('SIGKILL'));
    const done = await finish(second, join(dir, 'src.bin'));
    expect(second.events.find((e) => e.type === 'job.start')!.resumed).toBe(true);
    // What the journal had is not moved again.
    expect(Number(done.resumedBytes)).toBeGreaterThanOrEqual(durableAtKill);
    expect(Number(done.movedBytes) + Number(done.resumedBytes)).toBe(SIZE);
  });

  it('5. rides out a restart of an external nats-server', async () => {
    const dir = await testDir('t5');
    const port = await freePort();
    const token = 'ferrytesttoken';
    const natsArgs = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'js'), '--auth', token];
    let nats: ChildProcess = spawn('nats-server', natsArgs, { stdio: 'ignore' });
    cleanups.push(() => nats.kill('SIGKILL'));
    await new Promise((r) => setTimeout(r, 700));
    const run = startFerry(['cp', src, remote(`${dir}/`), '--nats', `nats://127.0.0.1:${port}`, '--agents', '2', '--streams', '2', '--limit-rate', '60MB', ...common(join(dir, 'state'))], {
      env: { FERRY_NATS_TOKEN: token },
    });
    cleanups.push(() => run.child.kill('SIGKILL'));
    await run.waitFor((e) => e.type === 'range.done', 4);
    const stopped = new Promise((r) => nats.once('exit', r));
    nats.kill('SIGTERM');
    await stopped;
    await new Promise((r) => setTimeout(r, 1500));
    nats = spawn('nats-server', natsArgs, { stdio: 'ignore' });
    await finish(run, join(dir, 'src.bin'));
  });

  it('7. detects a source appended to during the copy and renames nothing into place', async () => {
    const dir = await testDir('t7');
    const growing = join(dir, 'growing.bin');
    await copyFile(src, growing);
    const run = startFerry(['cp', growing, remote(`${dir}/out.bin`), '--limit-rate', '80MB', ...common(join(dir, 'state'))]);
    cleanups.push(() => run.child.kill('SIGKILL'));
    await run.waitFor((e) => e.type === 'range.done', 2);
    await appendFile(growing, Buffer.alloc(MiB, 7));
    const r = await run.result;
    expect(r.code).toBe(12);
    expect(r.stderr).toMatch(new RegExp(`^ferry: error: source ${growing} changed during the copy \\(size ${SIZE} -> ${SIZE + MiB}, mtime [^)]*\\): nothing was renamed into place; rerun with --restart to copy the new version\\n$`));
    await expect(stat(join(dir, 'out.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('8. refuses to resume with a different file under the same name, and --restart copies the new one', async () => {
    const dir = await testDir('t8');
    const file = join(dir, 'data.bin');
    await copyFile(src, file);
    const args = ['cp', file, remote(`${dir}/out/`), ...common(join(dir, 'state'))];
    await mkdir(join(dir, 'out'));
    const first = startFerry([...args, '--limit-rate', '30MB']);
    await first.waitFor((e) => e.type === 'range.done', 2);
    first.child.kill('SIGINT');
    expect((await first.result).code).toBe(130);
    await makeRandomFile(file, SIZE);
    const other = await fileHash(file);
    const refused = await startFerry(args).result;
    expect(refused.code).toBe(12);
    expect(refused.stderr).toMatch(new RegExp(`^ferry: error: source ${file} is not the file job [0-9a-f]{16} started copying \\([^)]*first MiB differs, last MiB differs\\): refusing to mix two versions; rerun with --restart to copy it from the beginning\\n$`));
    const restarted = startFerry([...args, '--restart']);
    const done = await finish(restarted, join(dir, 'out', 'data.bin'), other);
    expect(done.resumedBytes).toBe(0);
  });

  it('9. resumes from a journal whose last record was torn', async () => {
    const dir = await testDir('t9');
    const args = ['cp', src, remote(`${dir}/`), ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '30MB']);
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 4);
    first.child.kill('SIGINT');
    expect((await first.result).code).toBe(130);
    const journal = join(String(start.stateDir), 'journal');
    const size = (await stat(journal)).size;
    await truncate(journal, size - 3);
    const second = startFerry(args);
    await finish(second, join(dir, 'src.bin'));
    expect(second.events.some((e) => e.type === 'log' && /journal had a torn last record/.test(String(e.message)))).toBe(true);
    const resumed = second.events.find((e) => e.type === 'job.start')!;
    expect(resumed.resumed).toBe(true);
    expect(Number(resumed.rangesDone)).toBe(doneEvents(first).length - 1);
  });

  it('9b. rebuilds the done ranges from the KV mirror when the journal lost them', async () => {
    const dir = await testDir('t9b');
    // Two agents: a job on NATS (a job of one local agent keeps no mirror: its journal is all there is).
    const args = ['cp', src, remote(`${dir}/`), '--agents', '2', '--streams', '1', ...common(join(dir, 'state'))];
    const first = startFerry([...args, '--limit-rate', '30MB']);
    const start = await first.waitFor((e) => e.type === 'job.start');
    await first.waitFor((e) => e.type === 'range.done', 4);
    first.child.kill('SIGINT');
    expect((await first.result).code).toBe(130);
    // Keep only the journal's first record (the job); every range record is gone.
    const journal = join(String(start.stateDir), 'journal');
    const data = await readFile(journal);
    await writeFile(journal, data.subarray(0, 8 + data.readUInt32BE(0)));
    const second = startFerry(args);
    const done = await finish(second, join(dir, 'src.bin'));
    expect(second.events.find((e) => e.type === 'job.start')!.rangesDone).toBe(0);
    const recovered = second.events.find((e) => e.type === 'log' && /^recovered \d+ ranges/.test(String(e.message)));
    expect(Number(/^recovered (\d+)/.exec(String(recovered?.message))?.[1])).toBeGreaterThanOrEqual(doneEvents(first).length);
    expect(Number(done.movedBytes)).toBeLessThanOrEqual(SIZE - doneEvents(first).length * 16 * MiB);
  });
});
