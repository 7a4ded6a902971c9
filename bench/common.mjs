// Helpers shared by the benchmark scenarios (run.mjs, wan.mjs, hash.mjs, coordinator.mjs).
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
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
  const cli = join(resolve(m[1]), 'packages/cli/dist/main.js');
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
