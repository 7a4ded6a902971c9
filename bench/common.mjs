// Helpers shared by the benchmark scenarios (run.mjs, wan.mjs, first-contact.mjs, hash.mjs,
// coordinator.mjs): cleanup on exit and Ctrl-C, one measured run of a command (CPU and RSS from
// /proc), the ferry under test, tables.
import { execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { mkdir, open, readdir, rm, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem, userInfo } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { NODE_FLAGS } from '../packages/cli/dist/node-flags.js';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));

export function which(cmd) {
  return (process.env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, cmd)));
}

export function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

export function readText(path) {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return undefined;
  }
}

/**
 * The CLI of the built checkout at `root`, as bin/ferry runs it: the bundle
 * (scripts/bundle.mjs), or dist/main.js for a build older than the bundle.
 */
export function cliOf(root) {
  const bundled = join(root, 'packages/cli/dist/bundle/main.js');
  return existsSync(bundled) ? bundled : join(root, 'packages/cli/dist/main.js');
}

/** The ferry being measured: its git commit, and whether the working tree differs from it. */
/**
 * The ferry build a --configs entry names: `ferry` (or bare flags) is this
 * checkout; `ferry@<dir>` another built checkout (a git worktree of an older
 * commit, say), so that two builds alternate in one run (an A/B). Returns the
 * CLI to run (`cli`, also for the remote `serve`), the name's prefix and the
 * rest of the entry (environment words and flags).
 */
function ferryBuild(entry, defaultCli) {
  const m = /^ferry@(\S+)/.exec(entry);
  if (!m) return { cli: defaultCli, prefix: 'ferry', rest: entry.replace(/^ferry\b/, '') };
  const cli = cliOf(resolve(m[1]));
  if (!existsSync(cli)) throw new Error(`--configs: "${entry}": ${cli} missing: build that checkout first (npm ci or a copy of node_modules, then npx tsc -b)`);
  return { cli, prefix: `ferry@${m[1]}`, rest: entry.slice(m[0].length) };
}

/**
 * Splits the rest of a ferry entry into leading NAME=value words and ferry's
 * flags. The words are environment for ferry (e.g. FERRY_WARM_START=0, run
 * through env(1)), except NODE_FLAGS=<flag>,<flag>... (empty: none), which
 * replaces the node flags ferry runs with: by default bin/ferry's
 * (packages/cli/src/node-flags.ts), so that every ferry run here, ferry@<dir>
 * builds included, runs as an installed ferry would. Returns `words` (all of
 * them, for the entry's name), `env`, `node` (node and its flags) and `flags`.
 */
function ferryWords(rest) {
  const flags = rest.trim().split(/\s+/).filter(Boolean);
  const words = [];
  while (flags.length > 0 && /^[A-Z_][A-Z0-9_]*=/.test(flags[0])) words.push(flags.shift());
  const nodeWord = words.find((w) => w.startsWith('NODE_FLAGS='));
  const nodeFlags = nodeWord === undefined ? NODE_FLAGS : nodeWord.slice('NODE_FLAGS='.length).split(',').filter(Boolean);
  return { words, env: words.filter((w) => w !== nodeWord), node: [process.execPath, ...nodeFlags], flags };
}

/**
 * A ferry entry of --configs (`[ferry[@dir]] [NAME=value ...] <flags>`): its
 * name, its flags, and `cp()`, the argv of one `ferry cp` run. That argv runs
 * the entry's build with its node flags (environment words through env(1)),
 * starts the remote helper with the same node flags, and gives ferry's ssh
 * processes under `--transport openssh` the peers' OpenSSH options (key and
 * known_hosts come from ferry's own flags). `peers` lists the scenario's other
 * tools, for the error about an entry that is none of them.
 */
export function ferryTool(entry, defaultCli, peers) {
  const { cli, prefix, rest } = ferryBuild(entry, defaultCli);
  const { words, env, node, flags } = ferryWords(rest);
  if (flags.length > 0 && !flags[0].startsWith('-')) throw new Error(`--configs: unknown tool "${entry}" (${peers}, or ferry flags such as "-a 2 -s 2")`);
  const sshCmd = ['ssh', '-F', '/dev/null', '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'Ciphers=aes128-gcm@openssh.com'].join(' ');
  const opensshFlags = flags.join(' ').includes('--transport openssh') ? ['--ssh-cmd', sshCmd] : [];
  return {
    name: `${prefix} ${[...words, ...flags].join(' ')}`.trim(),
    flags,
    /** `output`: --quiet, or what the scenario reads instead. */
    cp: ({ from, to, userKey, knownHosts, stateDir, output }) => [
      ...(env.length > 0 ? ['env', ...env] : []), ...node, cli, 'cp', from, to,
      '-i', userKey, '--known-hosts', knownHosts,
      '--remote-cmd', [...node, cli, 'serve'].map(shq).join(' '),
      '--state-dir', stateDir, ...output, ...flags, ...opensshFlags,
    ],
  };
}

export function ferryVersion() {
  const commit = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
  if (!commit) return 'unknown (not a git checkout)';
  const dirty = sh('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no', '--', 'packages', 'launcher']);
  return dirty ? `${commit} with uncommitted changes in packages/ or launcher/` : commit;
}

export function markdownTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => `| ${cells.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

export async function makeRandomFile(path, bytes) {
  const fh = await open(path, 'w');
  const chunk = Buffer.allocUnsafe(8 << 20);
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

/** Flushes dirty pages; returns how long that took (seconds). */
export function syncDisks() {
  const t0 = performance.now();
  execFileSync('sync');
  return (performance.now() - t0) / 1000;
}

/**
 * Whether `dir` is on an ext4 file system without a journal (this machine's
 * root is one): the ext4 device's /sys/fs/ext4/NAME/journal_task reads
 * `<none>`. Undefined when it cannot tell (not ext4, no sysfs).
 */
export function ext4WithoutJournal(dir) {
  try {
    const { dev } = statSync(dir);
    const major = Math.floor(dev / 256) & 0xfff;
    const minor = (dev & 0xff) | ((Math.floor(dev / 1048576) & 0xfff) << 8);
    const name = readlinkSync(`/sys/dev/block/${major}:${minor}`).split('/').pop();
    const task = readText(`/sys/fs/ext4/${name}/journal_task`);
    return task === undefined ? undefined : task.trim() === '<none>';
  } catch {
    return undefined;
  }
}

/**
 * A directory for the destinations of a run that creates many files, on a
 * journaled file system. On ext4 without a journal, creating a file skips
 * every inode deleted in the last minute (five if its block is still dirty),
 * looking each one up: a tree created just after the last run's tree was
 * removed cost the remote helpers ~60% more CPU here (a 20,000-file push,
 * 2026-12-07), whatever the tool. Where `parent` is such a file system and this runs as root, a
 * sparse ext4 image of `bytes` (with a journal, as a site's servers have) is
 * loop-mounted under `parent` until the cleanups run; anywhere else `parent`
 * itself. `describe` says which, for the results.
 */
export async function journaledDir(parent, bytes) {
  const without = ext4WithoutJournal(parent);
  if (!without) return { path: parent, describe: without === false ? 'an ext4 file system with a journal' : 'the work directory\'s file system' };
  if (process.getuid?.() !== 0 || !which('mkfs.ext4') || !which('mount')) {
    log(`${parent} is on ext4 without a journal, where creating files just after many were deleted is slow; not root, so the destinations stay there`);
    return { path: parent, describe: 'ext4 without a journal (creating files right after a run removed many is slower there)' };
  }
  const image = join(parent, 'dest-fs.img');
  const mountPoint = join(parent, 'dest-fs');
  const size = Math.ceil(bytes / 2 ** 30) * 2 ** 30;
  execFileSync('truncate', ['-s', String(size), image]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-j', image]);
  await mkdir(mountPoint);
  execFileSync('mount', ['-o', 'loop', image, mountPoint]);
  onCleanup(async () => {
    execFileSync('umount', [mountPoint]);
    await rm(image, { force: true });
  });
  log(`destinations on a journaled ext4 image (${size / 2 ** 30} GiB, sparse) loop-mounted at ${mountPoint}: ${parent} is on ext4 without a journal`);
  return { path: mountPoint, describe: `a journaled ext4 image of ${size / 2 ** 30} GiB loop-mounted in the work directory (its file system, ext4 without a journal, makes creating files right after many were deleted slow)` };
}

/**
 * The machine's CPU ticks from /proc/stat's cpu line, in three parts: time in tasks (user, nice,
 * system: what processes' utime+stime add up to), interrupts (irq, softirq: loopback TCP runs
 * there), and steal (the hypervisor ran someone else on our virtual CPU).
 */
export function machineTicks() {
  const [user, nice, system, , , irq, softirq, steal] = (readText('/proc/stat') ?? '').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  return { tasks: user + nice + system, irq: irq + softirq, steal };
}

/** ferry role from a command line: the word after .../main.js (undefined for anything else). */
export function ferryRole(argv) {
  const i = argv.findIndex((a) => a.endsWith('main.js'));
  const role = i >= 0 ? argv[i + 1] : undefined;
  return { cp: 'coordinator', agent: 'agent', serve: 'helper' }[role];
}

export const CLK_TCK = Number(sh('getconf', ['CLK_TCK'])) || 100;

/**
 * Waits, at most maxMs, until the machine has used under a tenth of a core for
 * quietSeconds in a row (a neighbour's build must not land in the numbers).
 * Returns the seconds waited.
 */
export async function waitForIdle({ quietSeconds, maxMs, log }) {
  const t0 = Date.now();
  for (let quiet = 0; quiet < quietSeconds; ) {
    const before = machineTicks();
    await new Promise((r) => setTimeout(r, 1000));
    quiet = (machineTicks().tasks - before.tasks) / CLK_TCK < 0.1 ? quiet + 1 : 0;
    if (Date.now() - t0 > maxMs) {
      log(`machine still busy after ${maxMs / 1000} s, measuring anyway`);
      break;
    }
  }
  return (Date.now() - t0) / 1000;
}

/** xxh3 of a file (the same fast hash ferry uses; this is a copy check, not security). */
export async function fileHash(path) {
  const { createHasher } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);
  return new Promise((resolve, reject) => {
    const h = createHasher('xxh3');
    createReadStream(path, { highWaterMark: 4 << 20 })
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(h.digest()))
      .on('error', reject);
  });
}

/**
 * sshd_config lines for --lean-login: sessions get HOME set to an empty
 * directory under `work`, so `bash -c` reads no ~/.bashrc. (sshd applies SetEnv
 * after HOME; authorized keys come from the bench's own file, not from HOME.)
 */
export async function leanLogin(lean, work) {
  if (!lean) return [];
  const home = join(work, 'lean-home');
  await mkdir(home, { recursive: true });
  return [`SetEnv HOME=${home}`];
}

/** A word for a POSIX shell: as it is when it is safe, else in single quotes. */
export const shq = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** n of an `ssh-dd:<n>` entry or tool name, else undefined. */
export function sshDdStreams(entry) {
  const m = /^ssh-dd:(\d+)$/.exec(entry);
  return m ? Number(m[1]) : undefined;
}

/**
 * The `ssh-dd:<n>` peer, or undefined when `entry` is something else: what a user
 * without ferry types to get n streams. The file is cut into n slices of whole MiB;
 * each goes through its own OpenSSH login, `dd` at both ends at the slice's offset,
 * all n at once. No hashing, journal, resume or fsync; a failed slice shows only in
 * the exit code. `ssh` is the ssh command up to and including user@host, as shell
 * words; `prefix` goes before the bash that runs them (nsenter, for wan).
 */
export function sshDdTool(entry, { ssh, prefix = [] }) {
  const streams = sshDdStreams(entry);
  if (streams === undefined) return undefined;
  if (!(streams >= 1 && streams <= 64)) throw new Error(`--configs: ${entry}: the stream count must be 1-64`);
  const argv = ({ src, dstFile, push = true }) => {
    const slice = Math.max(1, Math.ceil(statSync(src).size / 2 ** 20 / streams)); // MiB per stream
    const lines = Array.from({ length: streams }, (_, i) => {
      const read = `dd if=${shq(src)} bs=1M skip=${i * slice} count=${slice} status=none`;
      const write = `dd of=${shq(dstFile)} bs=1M seek=${i * slice} conv=notrunc status=none`;
      const pipe = push ? `${read} | ${ssh} ${shq(write)}` : `${ssh} ${shq(read)} | ${write}`;
      return `${pipe} & pids="$pids $!"`;
    });
    // pipefail: a slice fails when either of its dd's or its ssh does.
    const script = ['set -o pipefail', 'pids=""', ...lines, 'rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc'];
    return [...prefix, 'bash', '-c', script.join('\n')];
  };
  return { name: entry, needs: 'ssh', streams, argv };
}

export const log = (msg) => process.stderr.write(`bench: ${msg}\n`);

// ---------------------------------------------------------------------------
// Cleanup, also on Ctrl-C: everything that must be undone registers here.

const cleanups = [];
let current; // the measured child process, if one is running
let interrupted = false;

/** Registers an undo step (run newest first by cleanupAll()). */
export const onCleanup = (fn) => void cleanups.push(fn);
/** Whether SIGINT or SIGTERM arrived: a scenario stops starting runs. */
export const isInterrupted = () => interrupted;

let cleaning;
/** Undoes everything, newest first; once, however many callers (main's finally and a signal handler). */
export function cleanupAll() {
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

/** On SIGINT or SIGTERM: end the measured command's process group, undo everything, exit 130. */
export function stopOnSignals() {
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
}

// ---------------------------------------------------------------------------
// Small helpers.

export const median = (xs) => {
  const s = [...xs].filter(Number.isFinite).sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
export const fmt = (x, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '-');
/** What the figures were measured on (in every result file). */
export function machine() {
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

export const SAMPLE_MS = 100;

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
      role: ferryRole(r.argv) ?? (/(^|\/)nats-server$/.test(r.argv[0] ?? '') ? 'nats' : undefined),
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
export async function measure(argv, { sshdPid, timeoutMs, env, stdout: keepStdout = false }) {
  const tracker = new ProcessTracker([sshdPid]);
  tracker.sample(); // baseline of the daemon
  const reapedBefore = reapedTicks('self') + reapedTicks(sshdPid);
  const machineBefore = machineTicks();
  const selfBefore = process.cpuUsage();

  const t0 = performance.now();
  // detached: its own process group, so a timeout or Ctrl-C can end ferry's agents and nats-server too.
  const child = spawn(argv[0], argv.slice(1), { detached: true, env: env ?? process.env, stdio: ['ignore', keepStdout ? 'pipe' : 'ignore', 'pipe'] });
  current = child;
  tracker.addRoot(child.pid);
  let stderr = '';
  let stderrHead = ''; // the first words too: a tool that complains per entry buries its first complaint
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
    if (stderrHead.length < 4000) stderrHead = (stderrHead + d).slice(0, 4000);
  });
  let stdout = '';
  child.stdout?.on('data', (d) => (stdout += d));
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
  return { seconds, error, stderrFirstLine: stderrHead.trim().split('\n')[0] ?? '', cpuReapedSeconds: reapedSeconds, otherCpuSeconds, stealSeconds, kernelCpuSeconds, harnessCpuSeconds, ...(keepStdout ? { stdout } : {}), ...r };
}

/**
 * A heuristic: quiet runs show a little other task CPU (our own processes too short-lived to be
 * sampled, such as a remote shell's startup files), well under half a second plus a tenth of a
 * core; more means a neighbour on this machine was busy. Steal rises with our own load on a
 * virtual machine (up to ~7% of a core in quiet runs here), so only more than a fifth of a core
 * counts: a neighbour on the host took the CPU (a 2026-12 scp run lost 31% of a core and 45% of
 * its speed that way).
 */
export const isNoisy = (m) => m.otherCpuSeconds > 0.5 + 0.1 * m.seconds || m.stealSeconds > 0.5 + 0.2 * m.seconds;

// ---------------------------------------------------------------------------
// Copy scenarios (loopback, first-contact): one source file, every tool once per round, each
// run measured and checked, medians per direction and tool.

/** A random source of `size` bytes in work/src, hashed (which leaves it in the page cache), and an empty work/dst on the same filesystem. */
export async function prepareCopy(work, size) {
  const src = join(work, 'src', 'source.bin');
  const dstDir = join(work, 'dst');
  await mkdir(join(work, 'src'), { recursive: true });
  await mkdir(dstDir, { recursive: true });
  await makeRandomFile(src, size);
  syncDisks(); // the source's writeback must not land in the first run
  return { size, src, dstDir, dstFile: join(dstDir, 'source.bin'), srcHash: await fileHash(src) };
}

/** What is wrong with the copy, or undefined when the destination holds the source's bytes. */
async function copyError({ size, dstFile, srcHash }) {
  const st = existsSync(dstFile) ? statSync(dstFile) : undefined;
  if (!st) return 'destination file missing';
  if (st.size !== size) return `destination has ${st.size} bytes, expected ${size}`;
  if ((await fileHash(dstFile)) !== srcHash) return 'destination content differs from source';
  return undefined;
}

/**
 * One run of a copy: the destination emptied and synced, a wait (at most idleWaitMs) for five
 * idle seconds, then
 * `command()` (the tool's argv, built now so that it may reset its own state) measured as
 * measure() does, a timed `sync`, and the destination checked against the source.
 */
export async function measureCopy(copy, { command, sshdPid, env, keepStdout = false, idleWaitMs = 300_000 }) {
  // A fresh destination each run, nothing dirty left to flush from the previous one.
  for (const name of await readdir(copy.dstDir)) await rm(join(copy.dstDir, name), { recursive: true, force: true });
  syncDisks();
  const idleWaitSeconds = idleWaitMs > 0 ? await waitForIdle({ quietSeconds: 5, maxMs: idleWaitMs, log }) : 0;
  if (idleWaitSeconds > 6) log(`waited ${idleWaitSeconds.toFixed(0)} s for the machine to become idle`);
  const argv = await command();
  // Generous: a run slower than 5 MB/s is broken, not slow.
  const m = await measure(argv, { sshdPid, timeoutMs: Math.max(300_000, (copy.size / 5e6) * 1000), env, stdout: keepStdout });
  // Not part of the time: ferry fsyncs the destination before it exits, scp, sftp and rsync do not.
  const syncSeconds = syncDisks();
  if (!m.error && !isInterrupted()) m.error = await copyError(copy);
  const ok = !m.error;
  return {
    argv,
    ok,
    error: m.error,
    seconds: m.seconds,
    mbps: ok ? copy.size / 1e6 / m.seconds : NaN,
    syncSeconds,
    mbpsWithSync: ok ? copy.size / 1e6 / (m.seconds + syncSeconds) : NaN,
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
    ...(keepStdout ? { stdout: m.stdout } : {}),
  };
}

/**
 * Runs every job once per round: slow drift (writeback, other tenants) hits all alike, and the
 * order rotates by one each round so that no job always runs right after the same other one. A
 * run disturbed by other load is repeated up to `retryNoisy` times (its record kept, marked
 * discarded). `run(round, job)` returns a record of measureCopy() with `direction` and `tool`.
 * Returns every record, or undefined when interrupted.
 */
export async function runRounds({ rounds, jobs, retryNoisy, run }) {
  const results = [];
  for (let round = 1; round <= rounds; round++) {
    const order = jobs.map((_, i) => jobs[(i + round - 1) % jobs.length]);
    for (const job of order) {
      for (let attempt = 1; ; attempt++) {
        if (isInterrupted()) return undefined;
        const rec = await run(round, job);
        if (isInterrupted()) return undefined;
        rec.attempt = attempt;
        rec.discarded = rec.ok && rec.noisy && attempt <= retryNoisy;
        results.push(rec);
        log(
          `[${round}/${rounds}] ${rec.direction} ${rec.tool}: ` +
            (rec.ok
              ? `${rec.seconds.toFixed(2)} s, ${rec.mbps.toFixed(0)} MB/s, CPU ${rec.cpuSeconds.toFixed(2)} s, kernel ${rec.kernelCpuSeconds.toFixed(2)} s, other ${rec.otherCpuSeconds.toFixed(2)} s, steal ${rec.stealSeconds.toFixed(2)} s, sync ${rec.syncSeconds.toFixed(2)} s`
              : `FAILED: ${rec.error}`) +
            (rec.discarded ? ' -- other load or steal, repeating' : rec.noisy ? ' (noisy)' : ''),
        );
        if (!rec.discarded) break;
      }
    }
  }
  return results;
}

/** Per direction and tool name: medians over the successful kept runs, and the ratios to scp's in the same direction. */
export function summarizeCopies(kept, { directions, tools, size }) {
  const gb = size / 1e9;
  return directions.flatMap((direction) => {
    const scp = kept.filter((r) => r.direction === direction && r.tool === 'scp' && r.ok);
    const scpMBps = median(scp.map((r) => r.mbps));
    const scpCpu = median(scp.map((r) => r.cpuSeconds / gb));
    return tools.map((tool) => {
      const mine = kept.filter((r) => r.direction === direction && r.tool === tool);
      const good = mine.filter((r) => r.ok);
      const rates = good.map((r) => r.mbps);
      const rss = {};
      for (const r of good) for (const [role, v] of Object.entries(r.peakRssMiB)) rss[role] = Math.max(rss[role] ?? 0, v);
      const cpuSecondsPerGB = median(good.map((r) => r.cpuSeconds / gb));
      return {
        direction,
        tool,
        ok: good.length,
        runs: mine.length,
        medianMBps: median(rates),
        medianSeconds: median(good.map((r) => r.seconds)),
        minMBps: Math.min(...rates),
        maxMBps: Math.max(...rates),
        vsScp: median(rates) / scpMBps,
        cpuSecondsPerGB,
        cpuVsScp: cpuSecondsPerGB / scpCpu,
        medianMBpsWithSync: median(good.map((r) => r.mbpsWithSync)),
        peakRssMiB: rss,
      };
    });
  });
}

/** The cells every copy scenario's table has for a summary row: ok, median s, median MB/s, min-max MB/s, vs scp, CPU s/GB. */
export function copyCells(s) {
  return [
    `${s.ok}/${s.runs}`,
    fmt(s.medianSeconds, 2),
    fmt(s.medianMBps),
    s.ok ? `${fmt(s.minMBps)}-${fmt(s.maxMBps)}` : '-',
    Number.isFinite(s.vsScp) ? `${s.vsScp.toFixed(2)}x` : '-',
    fmt(s.cpuSecondsPerGB, 2),
  ];
}

/** The notes under a copy scenario's table that every copy scenario shares: how to read the columns and how quiet the machine was. */
export function copyNotes(results, name) {
  const kept = results.filter((r) => !r.discarded);
  const discarded = results.filter((r) => r.discarded);
  return [
    '- median s: wall-clock seconds from spawn to exit, median over successful runs (with small files: the start-up).',
    '- MB/s: 1e6 bytes per second of wall-clock time from spawn to exit; median and range over successful runs.',
    "- vs scp: median MB/s divided by scp's median MB/s in the same direction.",
    '- CPU s/GB: user+system CPU seconds of the client process tree and of the sshd sessions serving it, per 1e9 bytes (median over runs; sampled from /proc every 100 ms).',
    '- MB/s incl. sync: wall time plus a `sync` run right after the exit; ferry fsyncs the destination before exiting, scp, sftp and rsync leave it in the page cache.',
    `- Kernel CPU (not in CPU s/GB): kernel threads and interrupts while a run was measured, e.g. writeback and loopback TCP: median ${fmt(median(kept.map((r) => r.kernelCpuSeconds)), 2)} s per run.`,
    `- Other load: task CPU outside the measured processes and this harness while a run was measured: median ${fmt(median(kept.map((r) => r.otherCpuSeconds)), 2)} s, at most ${fmt(Math.max(...kept.map((r) => r.otherCpuSeconds)), 2)} s per counted run. The harness itself (sampling /proc) used median ${fmt(median(kept.map((r) => r.harnessCpuSeconds)), 2)} s per run.`,
    `- Steal: the hypervisor took median ${fmt(median(kept.map((r) => r.stealSeconds / r.seconds)) * 100)}% of one CPU during runs (at most ${fmt(Math.max(...kept.map((r) => r.stealSeconds / r.seconds)) * 100)}%); on a virtual machine with busy neighbours on the host, all tools get less than full cores.`,
    ...(discarded.length > 0 ? [`- Repeated: ${discarded.length} run(s) disturbed by other load were run again (\`--retry-noisy\`); they are in ${name}.json with \`discarded: true\`.`] : []),
  ];
}

/** The sections at the end of a copy scenario's results: runs that stayed noisy, and failed runs. */
export function copyProblems(results) {
  const kept = results.filter((r) => !r.discarded);
  const noisy = kept.filter((r) => r.ok && r.noisy);
  const failures = kept.filter((r) => !r.ok);
  return [
    ...(noisy.length > 0
      ? ['', '## Runs with other load on the machine', '', 'Other task CPU above 0.5 s + a tenth of a core, or steal above 0.5 s + a fifth of a core, during the run (still counted in the table):', '', ...noisy.map((r) => `- round ${r.round} ${r.direction} ${r.tool}: ${fmt(r.mbps)} MB/s, other CPU ${fmt(r.otherCpuSeconds, 2)} s, steal ${fmt(r.stealSeconds, 2)} s in ${fmt(r.seconds, 2)} s`)]
      : []),
    ...(failures.length > 0 ? ['', '## Failed runs', '', ...failures.map((f) => `- round ${f.round} ${f.direction} ${f.tool}: ${f.error}`)] : []),
  ];
}

// ---------------------------------------------------------------------------
// A remote host as a new user meets it (first-contact): no Node.js there, and named by an alias
// in the user's ~/.ssh/config.

/**
 * A `wrap` for startSshd() (test/fixtures/sshd.mjs): sshd in a mount namespace of its own where
 * every `node` and `ferry` on this machine's usual and current PATH is a stand-in that says
 * "command not found" and exits 127, as on a data transfer node without Node.js
 * (TESTBED.md, "A remote host without Node.js"). Its sessions inherit the namespace; the rest of
 * the machine keeps node. Returns the wrap and the paths hidden.
 */
export async function withoutNode(dir) {
  const stub = join(dir, 'not-installed');
  await writeFile(stub, '#!/bin/sh\necho "${0##*/}: command not found" >&2\nexit 127\n', { mode: 0o755 });
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/bin', '/usr/bin', '/bin'].filter(Boolean);
  const found = [process.execPath, ...dirs.flatMap((d) => ['node', 'ferry'].map((p) => join(d, p)))].filter((p) => existsSync(p));
  const hidden = [...new Set([...found, ...found.map((p) => realpathSync(p))])];
  const script = `for p in ${hidden.map(shq).join(' ')}; do mount --bind ${shq(stub)} "$p" || exit 1; done; exec "$@"`;
  return { wrap: ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script, 'sh'], hidden };
}

/**
 * A user's home for the measured tools: ~/.ssh with the sshd's user key as id_ed25519, its host
 * key in known_hosts (as ssh records it: [127.0.0.1]:PORT), and a config that names the host
 * `alias` with HostName, Port, User, IdentityFile and UserKnownHostsFile. ferry (Node) finds ~ in
 * HOME, OpenSSH in the password database: the tools run in a mount namespace where /etc/passwd
 * is a copy giving the current user this home, and with HOME set to it. Nothing of the real user's
 * is read or changed. Returns { home, config, env, wrap (the argv prefix that runs a command
 * there), stop() }.
 */
export async function sshUserHome(dir, sshd, alias) {
  const home = join(dir, 'home');
  const ssh = join(home, '.ssh');
  await mkdir(ssh, { recursive: true, mode: 0o700 });
  const key = join(ssh, 'id_ed25519');
  await writeFile(key, readFileSync(sshd.userKey), { mode: 0o600 });
  await writeFile(`${key}.pub`, readFileSync(`${sshd.userKey}.pub`));
  await writeFile(join(ssh, 'known_hosts'), `${sshd.hostKeyLine}\n`);
  const config = [
    `Host ${alias}`,
    `  HostName ${sshd.host}`,
    `  Port ${sshd.port}`,
    `  User ${sshd.user}`,
    `  IdentityFile ${key}`,
    `  UserKnownHostsFile ${join(ssh, 'known_hosts')}`,
    // Never a prompt in a benchmark: a question would hang the run instead of failing it.
    '  BatchMode yes',
    '',
  ].join('\n');
  await writeFile(join(ssh, 'config'), config, { mode: 0o600 });

  const uid = process.getuid();
  const passwd = (readText('/etc/passwd') ?? '').split('\n').filter(Boolean);
  const mine = passwd.findIndex((l) => Number(l.split(':')[2]) === uid);
  const me = userInfo();
  const entry = mine >= 0 ? passwd[mine].split(':') : [me.username, 'x', String(uid), String(process.getgid()), '', '', me.shell ?? '/bin/sh'];
  entry[5] = home;
  if (mine >= 0) passwd[mine] = entry.join(':');
  else passwd.push(entry.join(':'));
  const copy = join(dir, 'passwd');
  await writeFile(copy, `${passwd.join('\n')}\n`);

  // A process that holds the namespace; each tool joins it with nsenter (which execs the tool).
  const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" /etc/passwd && echo ready && exec sleep 2147483647', 'sh', copy], { stdio: ['ignore', 'pipe', 'pipe'] });
  let said = '';
  holder.stdout.on('data', (d) => (said += d));
  holder.stderr.on('data', (d) => (said += d));
  for (const deadline = Date.now() + 10_000; !said.includes('ready'); await new Promise((r) => setTimeout(r, 20))) {
    if (holder.exitCode !== null || Date.now() > deadline) {
      holder.kill('SIGKILL');
      throw new Error(`could not give the tools their own home (unshare and mount --bind of /etc/passwd; needs root): ${said.trim()}`);
    }
  }
  const env = { ...process.env, HOME: home };
  // As a user runs them: no ssh-agent of the caller's, no state or config directory of theirs, no FERRY_ settings.
  for (const k of Object.keys(env)) if (k === 'SSH_AUTH_SOCK' || k.startsWith('XDG_') || k.startsWith('FERRY_')) delete env[k];
  return {
    home,
    config,
    env,
    wrap: ['nsenter', `--target=${holder.pid}`, '--mount', '--'],
    stop: () => holder.kill('SIGKILL'),
  };
}
