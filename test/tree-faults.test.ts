/**
 * Faults of a tree copy (`ferry cp -r`) with real processes, the counterparts
 * of faults.test.ts's single-file ones: the remote sshd and every session it
 * serves killed mid-tree (push and pull), one connection's sshd session
 * killed mid-tree or while its helper starts, SIGINT, the destination filling up, source files deleted, grown
 * and shrunk between the walk and their read, and one grown while it is
 * copied, a journal whose last line a crash tore, the one of two remote
 * hosts in use going down (the copy goes on over the other), an external
 * nats-server restarted under a tree whose batches go to agents, and files
 * changed (same size) or replaced (new inode) between an interrupted run
 * and its rerun. (The coordinator's SIGKILL is in tree.test.ts, an agent's in
 * nodes.test.ts.) Each time the copy stops or lists what it could
 * not copy with a clear error, nothing half-written stands at a file's name,
 * and the rerun of the same command (once the cause is gone) ends with the
 * destination equal to the source.
 *
 * The full disk runs against ferry serve and against a host without node
 * (the python helper): its error comes from the helper that writes. The kill
 * ends every connection alike, and the sender's reconnects are one code for
 * every mode: it runs in helper mode, a push and a pull. The source changes
 * are found on this side, by the code that reads the files for every mode,
 * and run once, in helper mode.
 *
 * Timing windows without timing: the test hook FERRY_TEST_STOP_BEFORE_READ
 * (core's test-hooks.ts) makes ferry stop itself (SIGSTOP) just before it
 * reads a listed file; the test acts and sends SIGCONT. A file big enough to
 * be copied as a job of its own moves under --limit-rate.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { appendFile, copyFile, lstat, mkdir, readFile, rename, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { listAll, on, tempFilesUnder, treeArgs } from './tree-helpers.js';
import { childPids, killStrays, processTree, REMOTE_CMD, startFerry, tempDir } from './helpers.js';
import type { FerryEvent, LiveRun, RunResult } from './helpers.js';
// A plain ES module of the benchmarks (no types).
import { compareTrees, generateTree } from '../bench/tree-lib.mjs';

const MiB = 1024 * 1024;

interface Variant {
  name: string;
  mode: 'helper' | 'python';
  /** Programs the remote sessions do not find. */
  without: Array<'node' | 'python3'>;
  flags: string[];
}

const HELPER: Variant = { name: 'ferry serve on the remote host', mode: 'helper', without: [], flags: ['--remote-cmd', REMOTE_CMD] };
const PYTHON: Variant = { name: 'nothing installed on the remote host (python helper)', mode: 'python', without: ['node'], flags: [] };

let work: { path: string; remove(): Promise<void> };
const cleanups: Array<() => Promise<unknown> | unknown> = [];

beforeAll(async () => {
  work = await tempDir('ferry-tree-faults-');
});

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch(() => {});
});

afterAll(async () => {
  // Whatever a failed test left running under the work directory (sshd, ferry, helpers).
  if (work) await killStrays(work.path);
  await work?.remove();
});

async function testDir(name: string): Promise<string> {
  const dir = join(work.path, name);
  await mkdir(dir);
  return dir;
}

/** An sshd of the variant's kind, stopped after the test. */
async function sshdFor(v: Variant, dir: string, port?: number): Promise<Sshd> {
  const s = await startSshd({ dir, without: v.without, ...(port ? { port } : {}) });
  cleanups.push(() => s.stop());
  return s;
}

/** Starts a ferry command stopped with SIGKILL after the test, whatever happened. */
function ferry(args: string[], env: Record<string, string> = {}): LiveRun {
  const run = startFerry(args, { env });
  cleanups.push(() => run.child.kill('SIGKILL'));
  return run;
}

/** Starts nats-server with `args` and resolves once it accepts connections on `port`. */
async function startNats(args: string[], port: number): Promise<ChildProcess> {
  const child = spawn('nats-server', args, { stdio: 'ignore' });
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nats-server ${args.join(' ')} exited with ${child.exitCode}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (up) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The process's state letter from /proc (`T`: stopped), or undefined once it is gone. */
async function stateOf(pid: number): Promise<string | undefined> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return s ? s.slice(s.lastIndexOf(')') + 2).split(' ')[0] : undefined;
}

const HOOK_LINE = /^ferry: test hook: stopped before reading (.*)$/gm;

/** stderr without the read hook's lines. */
const stderrOf = (text: string) => text.replace(/^ferry: test hook: .*\n/gm, '');

/** Stops of each run seen so far. */
const stopsSeen = new WeakMap<LiveRun, number>();

/**
 * Waits until `run` stopped itself before a read (the hook) and returns the
 * tree path it stopped before; undefined when it exited instead.
 */
async function stopped(run: LiveRun, timeoutMs = 60_000): Promise<string | undefined> {
  const seen = stopsSeen.get(run) ?? 0;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await stateOf(run.child.pid!);
    const lines = [...run.stderr().matchAll(HOOK_LINE)];
    if (s === 'T' && lines.length > seen) {
      stopsSeen.set(run, seen + 1);
      return lines[seen]![1];
    }
    if (s === undefined || s === 'Z' || run.child.exitCode !== null) return undefined;
    if (Date.now() > deadline) throw new Error(`ferry did not stop before a read within ${timeoutMs / 1000}s; stderr: ${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** SIGKILLs an sshd and every process below it: its sessions and the helpers they run. */
async function killHost(s: Sshd): Promise<number> {
  const below = await processTree(s.pid!);
  process.kill(s.pid!, 'SIGKILL');
  for (const p of below) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // It ended with its parent.
    }
  }
  await new Promise((r) => (s.child.exitCode !== null || s.child.signalCode !== null ? r(null) : s.child.once('exit', r)));
  return below.length;
}

/** Regular files of a tree (relative paths), every `every`-th of them in a stable order. */
async function someFiles(root: string, every: number): Promise<string[]> {
  const files: string[] = [];
  for (const p of (await listAll(root)).sort()) if ((await lstat(join(root, p))).isFile() && /\/f[0-9a-z]+(\.dat|\.txt)?$|^f[0-9a-z]+(\.dat|\.txt)?$/.test(p)) files.push(p);
  return files.filter((_, i) => i % every === every - 1);
}

async function journalSize(stateDir: string): Promise<number> {
  return stat(join(stateDir, 'tree.ndjson')).then((s) => s.size, () => 0);
}

interface Failed {
  path: string;
  code: string;
  message: string;
}

async function failedList(jobDir: string): Promise<Failed[]> {
  const text = await readFile(join(jobDir, 'failed.ndjson'), 'utf8');
  return text.trim() === '' ? [] : text.trim().split('\n').map((l) => JSON.parse(l) as Failed);
}

const eventOf = (events: FerryEvent[], type: string) => events.find((e) => e.type === type);

/** Checks a finished rerun: exit 0, the destination equal to the source, no temporary file anywhere. */
async function completes(r: RunResult, src: string, dst: string): Promise<void> {
  expect(stderrOf(r.stderr)).toBe('');
  expect(r.code).toBe(0);
  expect((await compareTrees(src, dst)).differences).toEqual({});
  expect(await tempFilesUnder(dst)).toEqual([]);
}

/** A tree on a fresh sshd, and `ferry cp -r` of it (push, or pull) with the read hook on every 5th file. */
async function slowTreeCopy(v: Variant, name: string, pull: boolean) {
  const dir = await testDir(name);
  const src = join(dir, 'src');
  await generateTree(src, { files: 100, big: 0, sparse: 0, seed: 11, medianBytes: 4096 });
  const host = await sshdFor(v, join(dir, 'sshd'));
  const dst = join(dir, 'dst');
  // One connection and batches of 16 KiB: many batches, one after the other.
  const flags = [...v.flags, '-a', '1', '-s', '1', '--batch-size', '16KiB'];
  const args = ['cp', '-r', '-p', ...treeArgs(host, join(dir, 'state'), flags), ...(pull ? [on(host, src), dst] : [src, on(host, dst)])];
  const first = ferry(args, { FERRY_TEST_STOP_BEFORE_READ: (await someFiles(src, 5)).join(',') });
  const start = await first.waitFor((e) => e.type === 'tree.start');
  return { dir, src, dst, host, args, first, jobDir: String(start.stateDir) };
}

/** Lets `run` go on from stop to stop until one comes after something was journaled; it is stopped there. */
async function stopOnceJournaled(run: LiveRun, jobDir: string): Promise<void> {
  for (;;) {
    expect(await stopped(run)).toBeDefined();
    if ((await journalSize(jobDir)) > 0) return;
    process.kill(run.child.pid!, 'SIGCONT');
  }
}

/** Sends SIGCONT to a stopped `run` and again at each further stop, until it exits; its result. */
async function goOn(run: LiveRun): Promise<RunResult> {
  process.kill(run.child.pid!, 'SIGCONT');
  const going = (async () => {
    while ((await stopped(run)) !== undefined) process.kill(run.child.pid!, 'SIGCONT');
  })().catch((err: unknown) => err);
  const r = await run.result;
  expect(await going).toBeUndefined();
  return r;
}

/**
 * The remote sshd and every process below it are killed once part of the
 * tree is journaled: the copy stops as a whole with CONNECTION_LOST, and the
 * same command, once an sshd runs again on that port, completes from the
 * journal. A push when `pull` is false, else a pull of the same tree.
 */
async function hostKilled(v: Variant, name: string, pull: boolean): Promise<void> {
  const { dir, src, dst, host, args, first, jobDir } = await slowTreeCopy(v, name, pull);
  // Stopped before the read of a listed file once something is journaled: the host dies there.
  await stopOnceJournaled(first, jobDir);
  expect(await killHost(host)).toBeGreaterThan(0);
  const r = await goOn(first);
  expect(r.code).toBe(41);
  expect(stderrOf(r.stderr)).toMatch(
    new RegExp(`^ferry: error: lost the connection to ${host.host}:${host.port} and could not connect again \\(3 tries: cannot reach ${host.host}:${host.port} over SSH \\(ECONNREFUSED\\)[^\\n]*\\); what arrived is journaled: rerun the same command to go on\\n$`),
  );
  expect(eventOf(first.events, 'error')).toMatchObject({ code: 'CONNECTION_LOST', exitCode: 41 });
  // Nothing was listed as failed: the copy stopped as a whole.
  expect(first.events.filter((e) => e.type === 'file.failed')).toEqual([]);

  // The host comes back on the same port; the same command goes on from the journal.
  await sshdFor(v, join(dir, 'sshd'), host.port);
  const again = ferry(args);
  await completes(await again.result, src, dst);
  expect(Number(eventOf(again.events, 'tree.done')!.resumedFiles)).toBeGreaterThan(0);
}

describe('a tree push with ferry serve on the remote host', () => {
  it('stops with a clear error when the remote sshd and all its sessions are killed, and the rerun on a restarted sshd completes', async () => {
    await hostKilled(HELPER, 'push-host-killed', false);
  }, 120_000);

  it('sends a batch again on a new connection when the sshd session serving its connection is killed, and completes exactly', async () => {
    const { src, dst, host, first, jobDir } = await slowTreeCopy(HELPER, 'session-killed', false);
    await stopOnceJournaled(first, jobDir);
    // The newest session is the batches' connection (the coordinator's own came first).
    const sessions = await childPids(host.pid!);
    expect(sessions.length).toBeGreaterThanOrEqual(2);
    process.kill(sessions.at(-1)!, 'SIGKILL');
    await completes(await goOn(first), src, dst);
    expect(first.events.some((e) => e.type === 'log' && /^connection trouble \(CONNECTION_LOST: .*\): a batch of \d+ entries goes out again$/.test(String(e.message)))).toBe(true);
  }, 120_000);

  it('connects again when a connection drops while its helper starts, and completes exactly', async () => {
    const dir = await testDir('drop-at-start');
    const src = join(dir, 'src');
    await generateTree(src, { files: 50, big: 0, sparse: 0, seed: 14, medianBytes: 4096 });
    // The second start of ferry serve (the batches' connection; the coordinator's came first)
    // loses its connection there: its sshd session is killed before the helper runs.
    const starts = join(dir, 'starts');
    const script = join(dir, 'drop-second-start.sh');
    await writeFile(
      script,
      `#!/bin/sh\ncase "$SSH_ORIGINAL_COMMAND" in *"main.js serve"*)\n  n=$(cat ${starts} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${starts}\n  if [ "$n" = 2 ]; then kill -KILL $PPID; exit 0; fi;;\nesac\nexec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n`,
      { mode: 0o755 },
    );
    const host = await startSshd({ dir: join(dir, 'sshd'), extraConfig: [`ForceCommand ${script}`] });
    cleanups.push(() => host.stop());
    const dst = join(dir, 'dst');
    // No warm start: the helpers start in the order counted above.
    const run = ferry(['cp', '-r', '-p', ...treeArgs(host, join(dir, 'state'), [...HELPER.flags, '-s', '1']), src, on(host, dst)], { FERRY_WARM_START: '0' });
    await completes(await run.result, src, dst);
    // Not a missing helper (HELPER_UNAVAILABLE, exit 61): a dropped connection, connected again.
    expect(run.events.some((e) => e.type === 'log' && /^connection trouble \(CONNECTION_LOST: the connection to \S+ dropped while '[^']*main\.js serve' was starting \(helper session on \S+ ended\)\): a batch of \d+ entries goes out again$/.test(String(e.message)))).toBe(true);
    expect(Number((await readFile(starts, 'utf8')).trim())).toBe(3);
  }, 120_000);

  it('resumes from a journal whose last line was torn: the line is cut off, the entries before it are kept, and the rerun completes', async () => {
    const { src, dst, args, first, jobDir } = await slowTreeCopy(HELPER, 'torn', false);
    await stopOnceJournaled(first, jobDir);
    process.kill(first.child.pid!, 'SIGINT');
    expect((await goOn(first)).code).toBe(130);
    // A crash in the middle of a journal write: the last line loses its end.
    const journal = join(jobDir, 'tree.ndjson');
    const lines = (await readFile(journal, 'utf8')).trimEnd().split('\n');
    await truncate(journal, (await stat(journal)).size - 5);
    const again = ferry(args);
    await completes(await again.result, src, dst);
    expect(again.events.some((e) => e.type === 'log' && String(e.message).startsWith(`tree journal had a torn last line (${Buffer.byteLength(lines.at(-1)!) - 4} bytes, ${lines.length - 1} entries kept)`))).toBe(true);
    expect(Number(eventOf(again.events, 'tree.start')!.resumedEntries)).toBe(lines.length - 1);
  }, 120_000);

  it('exits 130 on SIGINT with a resumable job, and the rerun completes', async () => {
    const { src, dst, args, first, jobDir } = await slowTreeCopy(HELPER, 'sigint', false);
    await stopOnceJournaled(first, jobDir);
    // Delivered when it goes on.
    process.kill(first.child.pid!, 'SIGINT');
    const r = await goOn(first);
    expect(r.code).toBe(130);
    expect(stderrOf(r.stderr)).toBe('ferry: error: interrupted: rerun the same command to go on; what is journaled is not sent again\n');
    expect(eventOf(first.events, 'error')).toMatchObject({ code: 'INTERRUPTED', exitCode: 130 });
    const again = ferry(args);
    await completes(await again.result, src, dst);
    expect(Number(eventOf(again.events, 'tree.done')!.resumedFiles)).toBeGreaterThan(0);
  }, 120_000);
  it('sends again whole, on the rerun after SIGINT, a journaled file changed since (same size, new mtime) and one replaced by a new inode (same size and mtime)', async () => {
    const { src, dst, args, first, jobDir } = await slowTreeCopy(HELPER, 'changed-since', false);
    await stopOnceJournaled(first, jobDir);
    process.kill(first.child.pid!, 'SIGINT');
    expect((await goOn(first)).code).toBe(130);
    // Two files the journal holds as durable, single-named, not empty.
    const candidates: string[] = [];
    for (const line of (await readFile(join(jobDir, 'tree.ndjson'), 'utf8')).trim().split('\n')) {
      const p = (JSON.parse(line) as { p: string }).p;
      const st = await lstat(join(src, p));
      if (st.isFile() && st.nlink === 1 && st.size > 0) candidates.push(p);
    }
    expect(candidates.length).toBeGreaterThanOrEqual(2);
    const [rewritten, replaced] = candidates as [string, string];
    for (const p of [rewritten, replaced]) expect(await readFile(join(dst, p))).toEqual(await readFile(join(src, p)));
    // Rewritten in place: the same size and inode, another mtime.
    const a = join(src, rewritten);
    const aBefore = await stat(a);
    const aNew = Buffer.alloc(aBefore.size, 'a');
    await writeFile(a, aNew);
    await utimes(a, aBefore.atime, new Date(aBefore.mtimeMs + 5000));
    // Replaced by a rename: the same size and mtime, a new inode.
    const b = join(src, replaced);
    const bBefore = await stat(b);
    const bNew = Buffer.alloc(bBefore.size, 'b');
    await writeFile(`${b}.new`, bNew, { mode: bBefore.mode & 0o7777 });
    await utimes(`${b}.new`, bBefore.atime, bBefore.mtime);
    await rename(`${b}.new`, b);
    const bAfter = await stat(b);
    expect([bAfter.size, bAfter.mtimeMs]).toEqual([bBefore.size, bBefore.mtimeMs]);
    expect(bAfter.ino).not.toBe(bBefore.ino);
    // The directory's mtime changed with the rename: the copy keeps the directory's new one.
    const again = ferry(args);
    await completes(await again.result, src, dst);
    expect(await readFile(join(dst, rewritten))).toEqual(aNew);
    expect(await readFile(join(dst, replaced))).toEqual(bNew);
    expect(Number(eventOf(again.events, 'tree.done')!.resumedFiles)).toBeGreaterThan(0);
  }, 120_000);
});

// The full destination's errors come from the helper that writes there: ferry serve or the python helper.
describe.each([HELPER, PYTHON])('a tree push with $name', (v) => {

  it('stops with exit 22 when the destination fills up, and the rerun after a remount with more space completes', async () => {
    const dir = await testDir(`${v.mode}-full`);
    const src = join(dir, 'src');
    // ~3 MB of small files on a 2 MiB filesystem.
    await generateTree(src, { files: 150, big: 0, sparse: 0, seed: 12, medianBytes: 16384 });
    const small = join(dir, 'small-fs');
    await mkdir(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
    cleanups.push(() => execFileSync('umount', ['-l', small]));
    // Started after the mount: an sshd in a mount namespace of its own (no node) sees only the mounts made before it.
    const host = await sshdFor(v, join(dir, 'sshd'));
    const dst = join(small, 'tree');
    const args = ['cp', '-r', '-p', ...treeArgs(host, join(dir, 'state'), [...v.flags, '-s', '2', '--batch-size', '256KiB']), src, on(host, dst)];
    const full = ferry(args);
    const r = await full.result;
    expect(r.code).toBe(22);
    expect(r.stderr).toMatch(new RegExp(`^ferry: error: no space left on the destination filesystem writing ${host.host}:${host.port}:${dst}/\\S+: free space \\(or raise the quota\\) and rerun the same command to resume\\n$`));
    expect(eventOf(full.events, 'error')).toMatchObject({ code: 'DEST_NO_SPACE', exitCode: 22 });
    // The entries that met the full disk are listed, with that reason alone.
    const failed = await failedList(String(eventOf(full.events, 'tree.start')!.stateDir));
    expect(failed.length).toBeGreaterThan(0);
    expect(new Set(failed.map((f) => f.code))).toEqual(new Set(['DEST_NO_SPACE']));
    // No temporary file is left to hold the space.
    expect(await tempFilesUnder(dst)).toEqual([]);
    execFileSync('mount', ['-o', 'remount,size=32m', small]);
    const again = ferry(args);
    await completes(await again.result, src, dst);
  }, 120_000);
});

describe('a tree push to two remote hosts of one file system (ferry serve)', () => {
  it('finishes on the other host when the one it uses goes down, exactly', async () => {
    const dir = await testDir('two-hosts');
    const src = join(dir, 'src');
    await generateTree(src, { files: 100, big: 0, sparse: 0, seed: 12, medianBytes: 4096 });
    // A second sshd on 127.0.0.3 (faults.test.ts, which may run alongside, has 127.0.0.2) and the same port, taking the same user key.
    const first = await startSshd({ dir: join(dir, 'sshd1'), listen: '127.0.0.1' });
    cleanups.push(() => first.stop());
    await mkdir(join(dir, 'sshd2'));
    await copyFile(first.userKey, join(dir, 'sshd2', 'userkey'));
    await copyFile(`${first.userKey}.pub`, join(dir, 'sshd2', 'userkey.pub'));
    const other = await startSshd({ dir: join(dir, 'sshd2'), listen: '127.0.0.3', port: first.port });
    cleanups.push(() => other.stop());
    const kh = join(dir, 'known_hosts');
    await writeFile(kh, `${first.hostKeyLine}\n${other.hostKeyLine}\n`);
    const dst = join(dir, 'dst');
    const args = ['cp', '-r', '-p', src, `${first.user}@127.0.0.1,127.0.0.3:${first.port}:${dst}`, '-i', first.userKey, '--known-hosts', kh, '--state-dir', join(dir, 'state'), '--json', ...HELPER.flags, '-a', '1', '-s', '1', '--batch-size', '16KiB'];
    const run = ferry(args, { FERRY_TEST_STOP_BEFORE_READ: (await someFiles(src, 5)).join(',') });
    const start = await run.waitFor((e) => e.type === 'tree.start');
    await stopOnceJournaled(run, String(start.stateDir));
    // The host in use (the first that answers) dies, with every session it serves.
    expect(await killHost(first)).toBeGreaterThan(0);
    const before = ((await readFile(other.log, 'utf8')).match(/Accepted publickey/g) ?? []).length;
    await completes(await goOn(run), src, dst);
    // The copy went on over the other host.
    expect(((await readFile(other.log, 'utf8')).match(/Accepted publickey/g) ?? []).length).toBeGreaterThan(before);
  }, 120_000);
});

describe('a tree push whose batches go to agents over an external nats-server (ferry serve)', () => {
  it('rides out a restart of the nats-server: batches published while it is down are stored again, nothing is journaled twice or lost, and the copy completes exactly', async () => {
    const dir = await testDir('nats-restart');
    const src = join(dir, 'src');
    await generateTree(src, { files: 200, big: 0, sparse: 0, seed: 15, medianBytes: 8192 });
    const host = await sshdFor(HELPER, join(dir, 'sshd'));
    // The test's own nats-server with JetStream, on a free port, stopped and started again by pid only.
    const port = await freePort();
    const token = 'ferry-tree-nats-restart';
    const natsArgs = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'js'), '--auth', token];
    let nats = await startNats(natsArgs, port);
    cleanups.push(() => nats.kill('SIGKILL'));
    const dst = join(dir, 'dst');
    // Two agents started through the test sshd by ssh(1): every batch is a work item in the server's JetStream.
    const agents = ['--launcher', 'ssh', '--hosts', host.host, '-a', '2', '-s', '1', '--ssh-option', `Port=${host.port}`, '--ssh-option', `IdentityFile=${host.userKey}`,
      '--ssh-option', `UserKnownHostsFile=${host.knownHosts}`, '--agent-cmd', REMOTE_CMD.replace(/ serve$/, ''), '--nats', `nats://127.0.0.1:${port}`];
    const args = ['cp', '-r', '-p', ...treeArgs(host, join(dir, 'state'), [...HELPER.flags, '--batch-size', '16KiB', '--limit-rate', '1MB', ...agents]), src, on(host, dst)];
    const run = ferry(args, { FERRY_NATS_TOKEN: token });
    // The agents run below the sshd (and their ssh clients below ferry): killed by pid, whatever happened.
    cleanups.push(async () => {
      for (const p of [...(await processTree(run.child.pid!)), ...(await processTree(host.pid!))]) process.kill(p.pid, 'SIGKILL');
    });
    const jobDir = String((await run.waitFor((e) => e.type === 'tree.start')).stateDir);
    // The first batches are journaled, most are to come. The coordinator is held (SIGSTOP) while the
    // server stops, then goes on while it is down: the batches it publishes meanwhile go to a server
    // that is gone, or that answers before its JetStream is back.
    while ((await journalSize(jobDir)) === 0) {
      expect(run.child.exitCode).toBeNull();
      await new Promise((r) => setTimeout(r, 20));
    }
    process.kill(run.child.pid!, 'SIGSTOP');
    const stoppedNats = new Promise((r) => nats.once('exit', r));
    nats.kill('SIGTERM');
    await stoppedNats;
    process.kill(run.child.pid!, 'SIGCONT');
    await new Promise((r) => setTimeout(r, 1500));
    nats = await startNats(natsArgs, port);
    const journaledBefore = (await readFile(join(jobDir, 'tree.ndjson'), 'utf8')).trim().split('\n').length;

    await completes(await run.result, src, dst);
    expect(eventOf(run.events, 'tree.done')).toMatchObject({ files: 200, failed: 0 });
    expect(run.events.filter((e) => e.type === 'agent.start')).toHaveLength(2);
    // Every file and symbolic link journaled once (a hard link's further names are made at the end,
    // unjournaled), most of them after the restart.
    const journaled = (await readFile(join(jobDir, 'tree.ndjson'), 'utf8')).trim().split('\n').map((l) => (JSON.parse(l) as { p: string }).p);
    const entries = new Map<string, string>();
    for (const p of await listAll(src)) {
      const st = await lstat(join(src, p));
      if (!st.isDirectory()) entries.set(p, st.nlink > 1 ? `ino ${st.ino}` : p);
    }
    expect(new Set(journaled).size).toBe(journaled.length);
    expect([...new Set(journaled.map((p) => entries.get(p)))].sort()).toEqual([...new Set(entries.values())].sort());
    expect(journaled.length - journaledBefore).toBeGreaterThan(journaled.length / 2);
  }, 120_000);
});

describe('a tree pull with ferry serve on the remote host', () => {
  it('stops with a clear error when the remote sshd and all its sessions are killed, and the rerun on a restarted sshd completes', async () => {
    await hostKilled(HELPER, 'pull-host-killed', true);
  }, 120_000);
});

describe('a tree push whose source changes during the copy (ferry serve)', () => {
  it('lists the deleted, grown and shrunk files with their reasons, copies the rest, exits 72, and the rerun completes', async () => {
    const dir = await testDir('source-changes');
    const src = join(dir, 'src');
    await generateTree(src, { files: 100, big: 0, sparse: 0, seed: 13, medianBytes: 4096 });
    // A file of 1.5 MiB: a batch of its own, read in pieces rather than whole.
    await mkdir(join(src, 'mid'));
    await writeFile(join(src, 'mid', 'shrinks.bin'), Buffer.alloc(1.5 * MiB, 3));
    // 8 MiB: copied as a job of its own (over --stripe-files-over), ~4 s at the rate below. Its
    // ranges share that rate, so several can end together: with 3 MiB the first range.done
    // sometimes came with the last, and the file grew only after its job had finished.
    await writeFile(join(src, 'mid', 'grows.h5'), Buffer.alloc(8 * MiB, 5));
    const [deleted, grown] = await someFiles(src, 40);
    const host = await sshdFor(HELPER, join(dir, 'sshd'));
    const dst = join(dir, 'dst');
    const args = ['cp', '-r', '-p', ...treeArgs(host, join(dir, 'state'), [...HELPER.flags, '--range-size', '1MiB', '--limit-rate', '2MB']), src, on(host, dst)];
    const run = ferry(args, { FERRY_TEST_STOP_BEFORE_READ: [deleted, grown, 'mid/shrinks.bin'].join(',') });
    // Each stop comes after the walk listed the file and before its read; the order is the walk's.
    const changes: Record<string, () => Promise<void>> = {
      [deleted!]: () => rm(join(src, deleted!)),
      [grown!]: () => appendFile(join(src, grown!), 'more\n'),
      'mid/shrinks.bin': () => truncate(join(src, 'mid', 'shrinks.bin'), MiB),
    };
    for (let i = 0; i < 3; i++) {
      const path = await stopped(run);
      expect(Object.keys(changes)).toContain(path);
      await changes[path!]!();
      process.kill(run.child.pid!, 'SIGCONT');
    }
    // The big file grows while its ranges move.
    await run.waitFor((e) => e.type === 'range.done');
    await appendFile(join(src, 'mid', 'grows.h5'), Buffer.alloc(MiB, 6));
    const r = await run.result;
    expect(r.code).toBe(72);
    const done = eventOf(run.events, 'tree.done')!;
    const failed = await failedList(String(done.stateDir));
    expect(failed.map((f) => [f.path, f.code]).sort()).toEqual(
      [
        [deleted, 'SOURCE_NOT_FOUND'],
        [grown, 'SOURCE_CHANGED'],
        ['mid/grows.h5', 'SOURCE_CHANGED'],
        ['mid/shrinks.bin', 'SOURCE_CHANGED'],
      ].sort(),
    );
    for (const p of [deleted!, grown!, 'mid/shrinks.bin', 'mid/grows.h5']) await expect(stat(join(dst, p))).rejects.toMatchObject({ code: 'ENOENT' });
    // The batches' files left no temporary file; the big file's job keeps its partial file (as a
    // single file's does) until the rerun starts that file over.
    expect((await tempFilesUnder(dst)).filter((p) => !/^mid\/\.grows\.h5\.ferry-[0-9a-f]{24}\.part$/.test(p))).toEqual([]);
    // Everything else arrived (the deleted file's directory has another mtime now than when it was walked).
    const diff = (await compareTrees(src, dst)).differences as Record<string, string[]>;
    expect(diff.missing?.sort()).toEqual([grown!, 'mid/grows.h5', 'mid/shrinks.bin'].sort());
    expect(diff.extra?.every((p) => /^mid\/\.grows\.h5\.ferry-[0-9a-f]{24}\.part$/.test(p))).toBe(true);
    expect(Object.keys(diff).filter((k) => !['missing', 'extra', 'dir-mtime'].includes(k))).toEqual([]);
    // The source settles: the same command copies what failed.
    const again = ferry(args);
    await completes(await again.result, src, dst);
  }, 120_000);
});
