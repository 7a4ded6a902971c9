#!/usr/bin/env node
// Benchmark harness: `npm run bench -- <scenario> [options]`.
//
// Each scenario is an async function in SCENARIOS below that gets its own argv,
// runs the tools it compares and writes <out>/<scenario>.md and .json. The
// shared pieces (timing a command, CPU/RSS sampling from /proc, verification,
// statistics, cleanup on Ctrl-C) live here so that new scenarios stay short.
// See bench/README.md for what is measured and how to read the results.
import { spawn, execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, mkdir, open, readdir, rm, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { plotThroughput } from './plot.mjs';
import { coordinator } from './coordinator.mjs';
import { hash } from './hash.mjs';
import { wan } from './wan.mjs';
import { CLK_TCK, ferryRole, ferryTool, fileHash, waitForIdle, ferryVersion, leanLogin, machineTicks, makeRandomFile, markdownTable, readText, sh, shq, sshDdTool, syncDisks, which } from './common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'packages/cli/dist/main.js');
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { createHasher, parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const log = (msg) => process.stderr.write(`bench: ${msg}\n`);

// ---------------------------------------------------------------------------
// Cleanup, also on Ctrl-C: everything that must be undone registers here.

const cleanups = [];
let current; // the measured child process, if one is running
let interrupted = false;

let cleaning;
/** Undoes everything, newest first; once, however many callers (main's finally and a signal handler). */
function cleanupAll() {
  cleaning ??= (async () => {
    while (cleanups.length > 0) await Promise.resolve(cleanups.pop()()).catch((err) => log(`cleanup: ${err.message}`));
  })();
  return cleaning;
}

/** Ends a measured command and everything it started (it runs in its own process group). */
function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    if (interrupted) return; // a second Ctrl-C while cleaning up: let the cleanup finish
    interrupted = true;
    log(`${sig}: stopping and cleaning up`);
    if (current) {
      // SIGTERM first so ferry stops its agents and nats-server itself, then no mercy.
      const child = current;
      killGroup(child, 'SIGTERM');
      const t = setTimeout(() => killGroup(child, 'SIGKILL'), 5000);
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', r)));
      clearTimeout(t);
    }
    await cleanupAll();
    process.exit(130);
  });
}

// ---------------------------------------------------------------------------
// Small helpers.

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (x, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-');



function machine() {
  return {
    nproc: Number(sh('nproc', [])),
    cpu: /^model name\s*:\s*(.*)$/m.exec(readText('/proc/cpuinfo') ?? '')?.[1] ?? cpus()[0]?.model ?? 'unknown',
    ramGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: sh('uname', ['-r']) || release(),
    node: process.version,
    openssh: sh('sh', ['-c', 'ssh -V 2>&1']), // ssh -V writes to stderr
  };
}




// ---------------------------------------------------------------------------
// CPU and memory from /proc. utime/stime are in clock ticks (USER_HZ).

const SAMPLE_MS = 100;

function readStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // comm (field 2) is in parentheses and may contain spaces: split after the last ')'.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { pid: Number(pid), state: f[0], ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]), sysTicks: Number(f[12]), start: f[19] };
  } catch {
    return undefined; // exited between readdir and read
  }
}


/**
 * Follows every process below some root pids, remembering for each (keyed by
 * pid + start time, so a reused pid is a new process) its CPU ticks and peak
 * RSS at the last sample in which it was alive.
 */
class ProcessTracker {
  constructor(roots) {
    this.roots = new Set(roots);
    this.procs = new Map();
  }

  addRoot(pid) {
    this.roots.add(pid);
  }

  /** Reads /proc once; returns how many tracked processes other than the roots are alive. */
  sample() {
    const all = new Map();
    for (const name of readdirSync('/proc')) {
      if (name.charCodeAt(0) > 57) continue; // not a pid directory
      const st = readStat(name);
      if (st) all.set(st.pid, st);
    }
    // Ours: below a root, or below a process once seen below one (an agent whose coordinator
    // exited first is re-parented to init but still works for this run).
    const inTree = (pid) => {
      for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
        if (this.roots.has(p) || this.procs.has(`${p}:${all.get(p)?.start}`)) return true;
        p = all.get(p)?.ppid ?? 0;
      }
      return false;
    };
    // Kernel threads (children of kthreadd, pid 2), for what the kernel did meanwhile.
    let kernelTicks = 0;
    for (const st of all.values()) if (st.pid === 2 || st.ppid === 2) kernelTicks += st.ticks;
    this.kernelTicksFirst ??= kernelTicks;
    this.kernelTicksLast = kernelTicks;
    let live = 0;
    for (const st of all.values()) {
      if (!inTree(st.pid)) continue;
      if (!this.roots.has(st.pid) && st.state !== 'Z') live++; // a zombie has finished its work
      const key = `${st.pid}:${st.start}`;
      let rec = this.procs.get(key);
      if (!rec) {
        // A process already running at the first sample (the sshd daemon) only counts from then on.
        rec = { pid: st.pid, ppid: st.ppid, baseTicks: this.sampled ? 0 : st.ticks, ticks: 0, baseSysTicks: this.sampled ? 0 : st.sysTicks, sysTicks: 0, argv: [], hwmKiB: 0 };
        this.procs.set(key, rec);
      }
      rec.ticks = st.ticks;
      rec.sysTicks = st.sysTicks;
      // The command line changes at exec (fork first shows the parent's): keep the latest.
      const cmdline = readText(`/proc/${st.pid}/cmdline`);
      if (cmdline) rec.argv = cmdline.split('\0').filter(Boolean);
      const hwm = /VmHWM:\s+(\d+) kB/.exec(readText(`/proc/${st.pid}/status`) ?? '');
      if (hwm) rec.hwmKiB = Number(hwm[1]);
    }
    this.sampled = true;
    return live;
  }

  /** CPU of kernel threads between the first and the last sample (threads that exit meanwhile are missed). */
  kernelThreadSeconds() {
    return Math.max(0, this.kernelTicksLast - this.kernelTicksFirst) / CLK_TCK;
  }

  result() {
    const processes = [...this.procs.values()].map((r) => ({
      pid: r.pid,
      ppid: r.ppid,
      command: r.argv.slice(0, 4).join(' ').slice(0, 160),
      role: ferryRole(r.argv),
      cpuSeconds: (r.ticks - r.baseTicks) / CLK_TCK,
      systemSeconds: (r.sysTicks - r.baseSysTicks) / CLK_TCK,
      peakRssMiB: r.hwmKiB / 1024,
    }));
    const peakRssMiB = {};
    for (const p of processes) if (p.role) peakRssMiB[p.role] = Math.max(peakRssMiB[p.role] ?? 0, p.peakRssMiB);
    return { cpuSeconds: processes.reduce((s, p) => s + p.cpuSeconds, 0), peakRssMiB, processes };
  }
}



/** utime+stime of the reaped children of a process (fields 16, 17): exact, where sampling may miss some. */
function reapedTicks(pid) {
  const s = readText(`/proc/${pid}/stat`) ?? '';
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[13]) + Number(f[14]);
}

/**
 * Runs one command and measures it: wall time from spawn to exit, CPU of the
 * command's process tree and of everything the sshd daemon forks meanwhile.
 * Keeps sampling after the exit until the sshd sessions are gone, since the
 * server side may still be closing the file.
 */
async function measure(argv, { sshdPid, timeoutMs }) {
  const tracker = new ProcessTracker([sshdPid]);
  tracker.sample(); // baseline of the daemon
  const reapedBefore = reapedTicks('self') + reapedTicks(sshdPid);
  const machineBefore = machineTicks();
  const selfBefore = process.cpuUsage();

  const t0 = performance.now();
  // detached: its own process group, so a timeout or Ctrl-C can end ferry's agents and nats-server too.
  const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  current = child;
  tracker.addRoot(child.pid);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const closed = new Promise((r) => child.once('close', r));
  const timer = setInterval(() => tracker.sample(), SAMPLE_MS);
  let timedOut = false;
  const killer = setTimeout(() => {
    timedOut = true;
    killGroup(child, 'SIGKILL');
  }, timeoutMs);
  const { code, signal, spawnError } = await new Promise((resolve) => {
    child.once('error', (err) => resolve({ code: null, signal: null, spawnError: err }));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const seconds = (performance.now() - t0) / 1000;
  clearTimeout(killer);
  current = undefined;
  // The last words on stderr may arrive after the exit; a grandchild holding the pipe must not hang us.
  await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);

  // Sessions serving the transfer may outlive the client by a moment: sample until they are gone.
  const quietBy = Date.now() + 10_000;
  while (tracker.sample() > 0 && Date.now() < quietBy) await new Promise((r) => setTimeout(r, SAMPLE_MS));
  clearInterval(timer);
  // Machine counters over the same span as the samples: from spawn until the sessions are gone.
  const machineAfter = machineTicks();
  const self = process.cpuUsage(selfBefore);
  const harnessCpuSeconds = (self.user + self.system) / 1e6;
  const reapedSeconds = (reapedTicks('self') + reapedTicks(sshdPid) - reapedBefore) / CLK_TCK;

  let error;
  if (spawnError) error = `spawn: ${spawnError.message}`;
  else if (timedOut) error = `timed out after ${timeoutMs / 1000} s`;
  else if (code !== 0) error = `exit ${code ?? signal}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`;
  const r = tracker.result();
  const delta = (k) => (machineAfter[k] - machineBefore[k]) / CLK_TCK;
  // Kernel threads (writeback, journal) and interrupts: work the transfer causes in the kernel, not
  // in its processes. Reported, not counted in the run's CPU.
  const kernelCpuSeconds = tracker.kernelThreadSeconds() + delta('irq');
  const stealSeconds = delta('steal');
  // Task CPU of anything else: a neighbour, and our own processes too short-lived to be sampled.
  const otherCpuSeconds = Math.max(0, delta('tasks') - r.cpuSeconds - harnessCpuSeconds - tracker.kernelThreadSeconds());
  return { seconds, error, cpuReapedSeconds: reapedSeconds, otherCpuSeconds, stealSeconds, kernelCpuSeconds, harnessCpuSeconds, ...r };
}

/**
 * A heuristic: quiet runs show a little other task CPU (our own processes too short-lived to be
 * sampled, such as a remote shell's startup files), well under half a second plus a tenth of a
 * core; more means a neighbour on this machine was busy. Steal rises with our own load on a
 * virtual machine (up to ~7% of a core in quiet runs here), so only more than a fifth of a core
 * counts: a neighbour on the host took the CPU (a 2026-12 scp run lost 31% of a core and 45% of
 * its speed that way).
 */
const isNoisy = (m) => m.otherCpuSeconds > 0.5 + 0.1 * m.seconds || m.stealSeconds > 0.5 + 0.2 * m.seconds;

// ---------------------------------------------------------------------------
// Tables.


// ---------------------------------------------------------------------------
// Scenario: loopback. Every tool against one sshd on 127.0.0.1.

const LOOPBACK_DEFAULT_CONFIGS = ['scp', 'sftp', 'rsync', 'rclone', 'lftp', '-a 1 -s 1', '-a 1 -s 2', '-a 2 -s 2', '--transport openssh -a 1 -s 1', '--transport openssh -a 1 -s 2', '--transport openssh -a 2 -s 2', '--mode sftp -a 2 -s 2'];

const LOOPBACK_HELP = `usage: npm run bench -- loopback [options]

  --size <size>        file size (default 2GiB)
  --runs <n>           rounds; each round runs every tool once (default 3)
  --configs <list>     comma-separated; scp, sftp, rsync, rclone, lftp, ssh-dd:<n> (the file in n
                       slices, each through its own ssh login with dd at both ends), or ferry flags, optionally
                       after the word ferry (a list starting with a dash needs
                       --configs='-a 2 -s 2' or --configs 'ferry -a 2 -s 2'); ferry
                       flags may follow NAME=value environment words, as in
                       'ferry FERRY_WARM_START=0 -a 1 -s 1', and NODE_FLAGS=<flag>,... (empty:
                       none) replaces the node flags of bin/ferry that ferry and its helpers
                       run with; 'ferry@<dir> <flags>' runs the build in another checkout
                       <dir> (an A/B of two builds in one run)
                       (default "${LOOPBACK_DEFAULT_CONFIGS.join(',')}")
  --direction <d>      push, pull or both (default push)
  --out <dir>          where loopback.md and loopback.json go (default bench/results)
  --name <name>        base name of the result files instead of loopback (e.g. startup)
  --retry-noisy <n>    repeat a run disturbed by other load or steal up to n times (default 2)
  --lean-login         sessions of the bench's sshd get HOME set to an empty directory
                       (sshd_config SetEnv), so the remote shell reads no start-up files
                       (~/.bashrc): every tool's login costs what sshd and the tool cost,
                       not the machine's shell set-up (see "Heavy shell start-up files")
`;

/** One entry of --configs as a tool: a name, and argv for a direction given the endpoints. */
function loopbackTool(entry, ctx) {
  const { userKey, knownHosts, port, user } = ctx;
  const host = '127.0.0.1';
  // The same ssh options for every OpenSSH tool: no user or system ssh_config (-F /dev/null), key
  // auth only, and AES-128-GCM, the cipher ferry's ssh2 picks first on CPUs with AES-NI.
  const sshOpts = [
    '-F', '/dev/null', '-i', userKey, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'Ciphers=aes128-gcm@openssh.com',
  ];
  // ssh with those options, as one shell line (rsync -e, ssh-dd).
  const sshCmdLine = ['ssh', ...sshOpts, '-p', String(port)].map(shq).join(' ');
  // Each argv builder gets the local and remote side of one run: { src, dstDir, dstFile, push }.
  if (entry === 'scp') {
    return { name: 'scp', needs: 'scp', argv: ({ src, dstFile, push }) => ['scp', '-q', ...sshOpts, '-P', String(port), ...(push ? [src, `${user}@${host}:${dstFile}`] : [`${user}@${host}:${src}`, dstFile])] };
  }
  if (entry === 'sftp') {
    return {
      name: 'sftp',
      needs: 'sftp',
      argv: async ({ src, dstFile, push, work }) => {
        const batch = join(work, 'sftp-batch');
        await writeFile(batch, push ? `put "${src}" "${dstFile}"\n` : `get "${src}" "${dstFile}"\n`);
        return ['sftp', '-q', '-b', batch, ...sshOpts, '-P', String(port), `${user}@${host}`];
      },
    };
  }
  if (entry === 'rsync') {
    return { name: 'rsync', needs: 'rsync', argv: ({ src, dstFile, push }) => ['rsync', '--whole-file', '-e', sshCmdLine, ...(push ? [src, `${user}@${host}:${dstFile}`] : [`${user}@${host}:${src}`, dstFile])] };
  }
  if (entry === 'rclone') {
    // Go's SSH client (rclone's own cipher order starts with aes128-gcm); an on-the-fly sftp remote, no config file.
    const remote = `:sftp,host=${host},port=${port},user=${user},key_file=${userKey},known_hosts_file=${knownHosts}:`;
    return { name: 'rclone', needs: 'rclone', argv: ({ src, dstFile, push }) => ['rclone', 'copyto', '-q', ...(push ? [src, `${remote}${dstFile}`] : [`${remote}${src}`, dstFile])] };
  }
  if (entry === 'lftp') {
    // lftp's sftp runs ssh with the peers' options; pull uses its segmented download (pget -n 4).
    const connect = ['ssh', '-a', '-x', ...sshOpts].map(shq).join(' ');
    return {
      name: 'lftp',
      needs: 'lftp',
      argv: ({ src, dstFile, push }) => ['lftp', '-c', `set sftp:connect-program ${shq(connect)}; open sftp://${user}:x@${host}:${port}; ${push ? `put ${shq(src)} -o ${shq(dstFile)}` : `pget -n 4 ${shq(src)} -o ${shq(dstFile)}`}`],
    };
  }
  const dd = sshDdTool(entry, { ssh: `${sshCmdLine} ${shq(`${user}@${host}`)}` });
  if (dd) return dd;
  const ferry = ferryTool(entry, CLI, 'scp, sftp, rsync, rclone, lftp, ssh-dd:<n>');
  return {
    name: ferry.name,
    needs: null,
    // A fresh state directory per run: ferry resumes a job it finds in its journal.
    argv: ({ src, dstDir, push, stateDir }) =>
      ferry.cp({
        ...(push ? { from: src, to: `${user}@${host}:${port}:${dstDir}/` } : { from: `${user}@${host}:${port}:${src}`, to: `${dstDir}/` }),
        userKey, knownHosts, stateDir, output: ['--quiet'],
      }),
  };
}

async function loopback(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '2GiB' },
      runs: { type: 'string', default: '3' },
      configs: { type: 'string', default: LOOPBACK_DEFAULT_CONFIGS.join(',') },
      direction: { type: 'string', default: 'push' },
      out: { type: 'string', default: 'bench/results' },
      name: { type: 'string', default: 'loopback' },
      'retry-noisy': { type: 'string', default: '2' },
      'lean-login': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(LOOPBACK_HELP);
  const size = parseSize(o.size);
  const runs = Number(o.runs);
  if (!size) throw new Error(`--size: not a size: ${o.size}`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs: not a positive integer: ${o.runs}`);
  if (!['push', 'pull', 'both'].includes(o.direction)) throw new Error(`--direction: push, pull or both, not ${o.direction}`);
  const retryNoisy = Number(o['retry-noisy']);
  if (!Number.isInteger(retryNoisy) || retryNoisy < 0) throw new Error(`--retry-noisy: not a count: ${o['retry-noisy']}`);
  const directions = o.direction === 'both' ? ['push', 'pull'] : [o.direction];
  const outDir = resolve(o.out);
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run node scripts/setup.mjs`);

  // Source and destination in one temporary directory: one filesystem, as the tools would see on a site.
  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-'));
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const sshd = await startSshd({ dir: join(work, 'sshd'), extraConfig: await leanLogin(o['lean-login'], work) });
  cleanups.push(() => sshd.stop());
  log(`sshd on ${sshd.host}:${sshd.port} (pid ${sshd.pid}), work dir ${work}`);
  const ctx = { userKey: sshd.userKey, knownHosts: sshd.knownHosts, port: sshd.port, user: sshd.user };

  const tools = o.configs.split(',').map((s) => s.trim()).filter(Boolean).map((e) => loopbackTool(e, ctx));
  const skipped = tools.filter((t) => t.needs && !which(t.needs)).map((t) => ({ tool: t.name, reason: `${t.needs} not installed` }));
  const active = tools.filter((t) => !skipped.some((s) => s.tool === t.name));
  for (const s of skipped) log(`skipping ${s.tool}: ${s.reason}`);

  const src = join(work, 'src', 'source.bin');
  const dstDir = join(work, 'dst');
  const dstFile = join(dstDir, 'source.bin');
  await mkdir(join(work, 'src'));
  await mkdir(dstDir);
  log(`writing ${formatBytes(size)} of random data to ${src}`);
  await makeRandomFile(src, size);
  syncDisks(); // the source's writeback must not land in the first run
  const srcHash = await fileHash(src); // also reads it once, so every run finds it in the page cache
  // Generous: a run slower than 5 MB/s is broken, not slow.
  const timeoutMs = Math.max(300_000, (size / 5e6) * 1000);

  /** One measured run of one tool, verified; returns its record. */
  async function runOnce(round, direction, tool) {
    const push = direction === 'push';
    // A fresh destination each run, nothing dirty left to flush from the previous one.
    for (const name of await readdir(dstDir)) await rm(join(dstDir, name), { recursive: true, force: true });
    syncDisks();
    const idleWaitSeconds = await waitForIdle({ quietSeconds: 5, maxMs: 300_000, log });
    if (idleWaitSeconds > 6) log(`waited ${idleWaitSeconds.toFixed(0)} s for the machine to become idle`);
    const stateDir = join(work, 'state');
    await rm(stateDir, { recursive: true, force: true });
    const argv = await tool.argv({ src, dstDir, dstFile, push, work, stateDir });
    const m = await measure(argv, { sshdPid: sshd.pid, timeoutMs });
    // Not part of the time: ferry fsyncs the destination before it exits, scp, sftp and rsync do not.
    const syncSeconds = syncDisks();
    if (!m.error && !interrupted) {
      const st = existsSync(dstFile) ? statSync(dstFile) : undefined;
      if (!st) m.error = 'destination file missing';
      else if (st.size !== size) m.error = `destination has ${st.size} bytes, expected ${size}`;
      else if ((await fileHash(dstFile)) !== srcHash) m.error = 'destination content differs from source';
    }
    const ok = !m.error;
    return {
      round,
      direction,
      tool: tool.name,
      argv,
      ok,
      error: m.error,
      seconds: m.seconds,
      mbps: ok ? size / 1e6 / m.seconds : NaN,
      syncSeconds,
      mbpsWithSync: ok ? size / 1e6 / (m.seconds + syncSeconds) : NaN,
      cpuSeconds: m.cpuSeconds,
      cpuReapedSeconds: m.cpuReapedSeconds,
      otherCpuSeconds: m.otherCpuSeconds,
      stealSeconds: m.stealSeconds,
      kernelCpuSeconds: m.kernelCpuSeconds,
      noisy: isNoisy(m),
      harnessCpuSeconds: m.harnessCpuSeconds,
      idleWaitSeconds,
      peakRssMiB: m.peakRssMiB,
      processes: m.processes,
    };
  }

  const results = [];
  // Every round runs every tool once, so slow drift (writeback, other tenants) hits all alike; the
  // order rotates by one each round so that no tool always runs right after the same other one.
  const jobs = directions.flatMap((direction) => active.map((tool) => ({ direction, tool })));
  for (let round = 1; round <= runs; round++) {
    const order = jobs.map((_, i) => jobs[(i + round - 1) % jobs.length]);
    for (const { direction, tool } of order) {
      // A run disturbed by other load is repeated (its record is kept, marked discarded).
      for (let attempt = 1; ; attempt++) {
        if (interrupted) return;
        const rec = await runOnce(round, direction, tool);
        if (interrupted) return;
        rec.attempt = attempt;
        rec.discarded = rec.ok && rec.noisy && attempt <= retryNoisy;
        results.push(rec);
        log(
          `[${round}/${runs}] ${direction} ${tool.name}: ` +
            (rec.ok
              ? `${rec.seconds.toFixed(2)} s, ${rec.mbps.toFixed(0)} MB/s, CPU ${rec.cpuSeconds.toFixed(2)} s, kernel ${rec.kernelCpuSeconds.toFixed(2)} s, other ${rec.otherCpuSeconds.toFixed(2)} s, steal ${rec.stealSeconds.toFixed(2)} s, sync ${rec.syncSeconds.toFixed(2)} s`
              : `FAILED: ${rec.error}`) +
            (rec.discarded ? ' -- other load or steal, repeating' : rec.noisy ? ' (noisy)' : ''),
        );
        if (!rec.discarded) break;
      }
    }
  }
  const kept = results.filter((r) => !r.discarded);

  // Summary per direction and tool.
  const gb = size / 1e9;
  const summary = [];
  for (const direction of directions) {
    const scpRuns = kept.filter((r) => r.direction === direction && r.tool === 'scp' && r.ok);
    const scpMedian = median(scpRuns.map((r) => r.mbps));
    for (const tool of tools) {
      const skip = skipped.find((s) => s.tool === tool.name);
      const mine = kept.filter((r) => r.direction === direction && r.tool === tool.name);
      const good = mine.filter((r) => r.ok);
      const rates = good.map((r) => r.mbps);
      const rss = {};
      for (const r of good) for (const [role, v] of Object.entries(r.peakRssMiB)) rss[role] = Math.max(rss[role] ?? 0, v);
      summary.push({
        direction,
        tool: tool.name,
        skipped: skip?.reason,
        ok: good.length,
        runs: mine.length,
        medianMBps: median(rates),
        medianSeconds: median(good.map((r) => r.seconds)),
        minMBps: Math.min(...rates),
        maxMBps: Math.max(...rates),
        vsScp: median(rates) / scpMedian,
        cpuSecondsPerGB: median(good.map((r) => r.cpuSeconds / gb)),
        medianMBpsWithSync: median(good.map((r) => r.mbpsWithSync)),
        peakRssMiB: rss,
      });
    }
  }

  const header = ['direction', 'tool', 'ok', 'median s', 'median MB/s', 'min-max MB/s', 'vs scp', 'CPU s/GB', 'MB/s incl. sync', 'RSS cp MiB', 'RSS agent MiB', 'RSS serve MiB'];
  const rows = summary.map((s) =>
    s.skipped
      ? [s.direction, s.tool, `skipped: ${s.skipped}`, '', '', '', '', '', '', '', '', '']
      : [
          s.direction,
          s.tool,
          `${s.ok}/${s.runs}`,
          fmt(s.medianSeconds, 2),
          fmt(s.medianMBps),
          s.ok ? `${fmt(s.minMBps)}-${fmt(s.maxMBps)}` : '-',
          Number.isFinite(s.vsScp) ? `${s.vsScp.toFixed(2)}x` : '-',
          fmt(s.cpuSecondsPerGB, 2),
          fmt(s.medianMBpsWithSync),
          fmt(s.peakRssMiB.coordinator),
          fmt(s.peakRssMiB.agent),
          fmt(s.peakRssMiB.helper),
        ],
  );
  const table = markdownTable(header, rows);
  const failures = kept.filter((r) => !r.ok);
  const noisy = kept.filter((r) => r.ok && r.noisy);
  const discarded = results.filter((r) => r.discarded);
  const m = machine();
  const date = new Date().toISOString();

  process.stdout.write(`\n${table}\n`);
  if (noisy.length > 0) process.stdout.write(`\n${noisy.length} run(s) with other load on the machine (see ${join(o.out, `${o.name}.md`)})\n`);
  if (failures.length > 0) process.stdout.write(`\n${failures.length} failed run(s):\n${failures.map((f) => `  round ${f.round} ${f.direction} ${f.tool}: ${f.error}`).join('\n')}\n`);

  const md = [
    `# Benchmark: ${o.name}${o.name === 'loopback' ? '' : ' (loopback scenario)'}`,
    '',
    'One throwaway sshd on 127.0.0.1; source and destination on the same filesystem; source in the page cache.',
    'Generated by `npm run bench -- loopback` (see bench/README.md).',
    '',
    `![median MB/s against SSH connections, per tool](${o.name}.svg)`,
    '',
    `- Date: ${date}`,
    `- Machine: ${m.nproc} CPUs (nproc), ${m.cpu}, ${m.ramGiB} GiB RAM`,
    `- Kernel: ${m.kernel}; Node ${m.node}; ${m.openssh}`,
    `- ferry: ${ferryVersion()}`,
    `- File: ${size} bytes (${formatBytes(size)}), random`,
    `- Runs: ${runs} per tool and direction, in rounds (every tool once per round)`,
    `- Logins: ${o['lean-login'] ? 'lean (--lean-login: HOME is an empty directory, the remote shell reads no start-up files)' : `the remote user's own shell start-up files (~/.bashrc) run on every login`}`,
    `- Command: \`${['node bench/run.mjs loopback', ...argv.map(shq)].join(' ')}\``,
    '',
    table,
    '',
    '- median s: wall-clock seconds from spawn to exit, median over successful runs (with small files: the start-up).',
    '- MB/s: 1e6 bytes per second of wall-clock time from spawn to exit; median and range over successful runs.',
    '- vs scp: median MB/s divided by scp\'s median MB/s in the same direction.',
    '- CPU s/GB: user+system CPU seconds of the client process tree and of the sshd sessions serving it, per 1e9 bytes (median over runs; sampled from /proc every 100 ms).',
    '- MB/s incl. sync: wall time plus a `sync` run right after the exit; ferry fsyncs the destination before exiting, scp, sftp and rsync leave it in the page cache.',
    `- Kernel CPU (not in CPU s/GB): kernel threads and interrupts while a run was measured, e.g. writeback and loopback TCP: median ${fmt(median(kept.map((r) => r.kernelCpuSeconds)), 2)} s per run.`,
    `- Other load: task CPU outside the measured processes and this harness while a run was measured: median ${fmt(median(kept.map((r) => r.otherCpuSeconds)), 2)} s, at most ${fmt(Math.max(...kept.map((r) => r.otherCpuSeconds)), 2)} s per counted run. The harness itself (sampling /proc) used median ${fmt(median(kept.map((r) => r.harnessCpuSeconds)), 2)} s per run.`,
    `- Steal: the hypervisor took median ${fmt(median(kept.map((r) => r.stealSeconds / r.seconds)) * 100)}% of one CPU during runs (at most ${fmt(Math.max(...kept.map((r) => r.stealSeconds / r.seconds)) * 100)}%); on a virtual machine with busy neighbours on the host, all tools get less than full cores.`,
    ...(discarded.length > 0 ? [`- Repeated: ${discarded.length} run(s) disturbed by other load were run again (\`--retry-noisy\`); they are in ${o.name}.json with \`discarded: true\`.`] : []),
    '- RSS: peak VmHWM of ferry\'s coordinator (`cp`), agent and helper (`serve`) processes, the largest of each role over all runs.',
    ...(noisy.length > 0
      ? ['', '## Runs with other load on the machine', '', 'Other task CPU above 0.5 s + a tenth of a core, or steal above 0.5 s + a fifth of a core, during the run (still counted in the table):', '', ...noisy.map((r) => `- round ${r.round} ${r.direction} ${r.tool}: ${fmt(r.mbps)} MB/s, other CPU ${fmt(r.otherCpuSeconds, 2)} s, steal ${fmt(r.stealSeconds, 2)} s in ${fmt(r.seconds, 2)} s`)]
      : []),
    ...(failures.length > 0 ? ['', '## Failed runs', '', ...failures.map((f) => `- round ${f.round} ${f.direction} ${f.tool}: ${f.error}`)] : []),
    '',
  ].join('\n');
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, `${o.name}.md`), md);
  await writeFile(
    join(outDir, `${o.name}.json`),
    JSON.stringify({ scenario: 'loopback', date, ferry: ferryVersion(), machine: m, options: { size, runs, directions, retryNoisy, configs: tools.map((t) => t.name) }, clockTicks: CLK_TCK, sampleMs: SAMPLE_MS, skipped, summary, runs: results }, null, 1) + '\n',
  );
  await plotThroughput(summary, `loopback: ${formatBytes(size)} through one sshd on 127.0.0.1, ${date}`, join(outDir, `${o.name}.svg`));
  log(`wrote ${join(outDir, `${o.name}.md`)}, ${o.name}.json and ${o.name}.svg`);
  if (failures.length > 0) process.exitCode = 1;
}

// ---------------------------------------------------------------------------
// nodes: compute-node namespaces with a capped link each, two remote hosts.

const NODES_HELP = `node bench/run.mjs nodes [--size 512MiB] [--runs 2] [--link-mbit 400] [--agents 1,2,4] [--out bench/results]

Builds a Slurm cluster of two compute-node namespaces (each link shaped to
--link-mbit, both directions) and two DTN namespaces running sshd
(test/fixtures/cluster.mjs, needs root), and moves one file with
ferry cp --launcher srun for each agent count (spread over both nodes), and
with scp from one compute node as the single-stream peer. Rounds alternate.
`;

async function nodes(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '512MiB' },
      runs: { type: 'string', default: '2' },
      'link-mbit': { type: 'string', default: '400' },
      agents: { type: 'string', default: '1,2,4' },
      out: { type: 'string', default: 'bench/results' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(NODES_HELP);
  if (process.getuid?.() !== 0) throw new Error('the nodes scenario builds network namespaces: run it as root');
  const size = parseSize(o.size);
  const runs = Number(o.runs);
  const linkMbit = Number(o['link-mbit']);
  const counts = o.agents.split(',').map(Number);
  const { startCluster } = await import('../test/fixtures/cluster.mjs');
  const cluster = await startCluster({ prefix: 'fyb', subnet: '10.77.9', linkRateMbit: linkMbit });
  cleanups.push(() => cluster.stop());
  const src = join(cluster.dir, 'src.bin');
  await makeRandomFile(src, size);
  const want = await fileHash(src);
  const ferryBin = join(ROOT, 'bin', 'ferry');
  const dtns = cluster.dtns.map((d) => d.name).join(',');
  const tools = [
    {
      name: 'scp (from one node)',
      run: (dir) => cluster.nsExec(cluster.computeNodes[0].netns, 'scp', ['-q', '-o', 'Ciphers=aes128-gcm@openssh.com', ...cluster.sshArgs(cluster.dtns[0].name).slice(0, -1), src, `root@${cluster.dtns[0].name}:${dir}/src.bin`], { timeoutMs: 900_000 }),
    },
    ...counts.map((n) => ({
      name: `ferry ${n} agent${n > 1 ? 's' : ''}`,
      run: (dir) =>
        cluster.run(ferryBin, [
          'cp', src, `root@${dtns}:${dir}/`, '-i', cluster.userKey, '--known-hosts', cluster.knownHosts, '--remote-cmd', `${ferryBin} serve`,
          '--state-dir', join(dir, 'state'), '--quiet', '--launcher', 'srun', '--nodes', String(Math.min(n, 2)), '--agents-per-node', String(Math.ceil(n / 2)),
          '-a', String(n), '--streams', '2', '--agent-cmd', ferryBin, '--nats-listen', cluster.bridgeIp, '--nats-advertise', cluster.bridgeIp,
        ], { timeoutMs: 900_000 }),
    })),
  ];
  const results = [];
  for (let round = 1; round <= runs; round++) {
    for (const tool of tools) {
      const dir = join(cluster.dir, `r${round}-${tool.name.replace(/\W+/g, '-')}`);
      await mkdir(dir, { recursive: true });
      const t0 = performance.now();
      const r = await tool.run(dir);
      const seconds = (performance.now() - t0) / 1000;
      const ok = r.code === 0 && (await fileHash(join(dir, 'src.bin')).catch(() => '')) === want;
      results.push({ round, tool: tool.name, seconds, mbps: size / 1e6 / seconds, ok, error: ok ? undefined : (r.stderr || `exit ${r.code}`).slice(-500) });
      log(`[${round}/${runs}] ${tool.name}: ${seconds.toFixed(2)} s, ${(size / 1e6 / seconds).toFixed(1)} MB/s${ok ? '' : ` FAILED: ${results.at(-1).error}`}`);
      await rm(dir, { recursive: true, force: true });
    }
  }
  const base = median(results.filter((r) => r.ok && r.tool === tools[0].name).map((r) => r.mbps));
  const rows = tools.map((t) => {
    const ok = results.filter((r) => r.ok && r.tool === t.name).map((r) => r.mbps);
    const med = median(ok);
    return [t.name, `${ok.length}/${runs}`, fmt(med), ok.length ? `${fmt(Math.min(...ok))}-${fmt(Math.max(...ok))}` : '-', base ? `${fmt(med / base, 2)}x` : '-'];
  });
  const table = markdownTable(['tool', 'ok', 'median MB/s', 'min-max MB/s', 'vs scp'], rows);
  process.stdout.write(`\n${table}\n`);
  const m = machine();
  const md = [
    '# Benchmark: nodes',
    '',
    `Two compute-node namespaces, each link shaped to ${linkMbit} Mbit/s (${fmt(linkMbit / 8)} MB/s) both ways, two DTN namespaces with sshd, Slurm (srun launcher). Generated by \`npm run bench -- nodes\`.`,
    '',
    `- Date: ${new Date().toISOString()}; ferry ${ferryVersion()}`,
    `- Machine: ${m.nproc} CPUs, ${m.cpu}; ${m.openssh}`,
    `- File: ${formatBytes(size)}, random; ${runs} rounds; ferry with --streams 2, agents spread over both nodes (1 agent: one node)`,
    '',
    table,
    '',
    '- vs scp: median MB/s over scp\'s median, scp run from one compute node to one DTN (one stream, one node link).',
    '',
  ].join('\n');
  await mkdir(resolve(o.out), { recursive: true });
  await writeFile(join(resolve(o.out), 'nodes.md'), md);
  await writeFile(join(resolve(o.out), 'nodes.json'), JSON.stringify({ scenario: 'nodes', size, linkMbit, results }, null, 1) + '\n');
}

/** Scenario name -> async function(argv). Add new scenarios here. */
const SCENARIOS = { loopback, nodes, wan, hash, coordinator };

const [name, ...rest] = process.argv.slice(2);
if (!name || name === '-h' || name === '--help' || !SCENARIOS[name]) {
  if (name && !name.startsWith('-')) log(`unknown scenario "${name}"`);
  process.stdout.write(`usage: npm run bench -- <scenario> [options]\n\nscenarios: ${Object.keys(SCENARIOS).join(', ')}\n(npm run bench -- <scenario> --help for its options)\n`);
  process.exit(name && !name.startsWith('-') ? 2 : 0);
}
try {
  await SCENARIOS[name](rest);
} catch (err) {
  log(`error: ${err.message}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}

