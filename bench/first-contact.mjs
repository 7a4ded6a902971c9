// Benchmark scenario `first-contact`: what a new user meets. The remote host has no ferry and no
// Node.js (a loopback sshd whose sessions find neither), it is named by an alias in the user's
// ~/.ssh/config, and every tool runs as typed with no options: scp, sftp, rsync and ferry. ferry
// has to find out by itself that the remote side has no helper. Registered in run.mjs as
// `first-contact`; needs root (mount namespaces). See bench/README.md.
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { plotThroughput } from './plot.mjs';
import {
  CLK_TCK, ROOT, SAMPLE_MS, copyCells, copyNotes, copyProblems, ferryVersion, fmt, leanLogin, log, machine, markdownTable, measureCopy, onCleanup,
  prepareCopy, runRounds, shq, sshUserHome, summarizeCopies, which, withoutNode,
} from './common.mjs';

const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const ALIAS = 'mydtn';
const TOOLS = ['scp', 'sftp', 'rsync', 'ferry'];
// The fields ferry's --json events had when this scenario was written (README, "--json events");
// any other field of job.start or done is shown as it comes, since it says more about the path taken.
const KNOWN_FIELDS = new Set(['type', 'jobId', 'source', 'destination', 'bytes', 'ranges', 'rangeBytes', 'agents', 'streams', 'mode', 'hash', 'stateDir', 'resumed', 'rangesDone', 'bytesDone', 'movedBytes', 'resumedBytes', 'seconds', 'mbps', 'resends', 'rootHash']);

const HELP = `usage: npm run bench -- first-contact [options]         (needs root)

A new user's first copy: a loopback sshd whose sessions find no node and no
ferry, named by the alias ${ALIAS} in the user's ~/.ssh/config (a temporary home
the tools run with); scp, sftp, rsync and ferry with no options at all.

  --size <size>        file size (default 4GiB)
  --rounds <n>         rounds; each round runs every tool once per direction (default 3)
  --direction <d>      push, pull or both (default both)
  --tools <list>       comma-separated, of ${TOOLS.join(', ')} (default all)
  --no-alias           name the host 127.0.0.1 with its port, and give the key and known_hosts
                       as flags (-P/-p, -i, -o UserKnownHostsFile; ferry's -i and --known-hosts)
                       instead of the alias
  --lean-login         sessions get HOME set to an empty directory, so the remote shell reads no
                       start-up files (~/.bashrc; see loopback --help)
  --retry-noisy <n>    repeat a run disturbed by other load or steal up to n times (default 2)
  --idle-wait <s>      before each run, wait up to this many seconds for 5 idle seconds (default
                       300; 0: no wait)
  --out <dir>          where first-contact.md, .json and .svg go (default bench/results)
  --name <name>        base name of the result files instead of first-contact
`;

/**
 * A tool's command line as a user types it. With the alias, nothing but the host's name; with
 * --no-alias, the address, port, key and known_hosts the alias would have given.
 */
function firstContactTool(name, { alias, sshd, home }) {
  const key = join(home, '.ssh', 'id_ed25519');
  const knownHosts = join(home, '.ssh', 'known_hosts');
  const at = alias ? ALIAS : `${sshd.user}@${sshd.host}`;
  const sshFlags = alias ? [] : ['-i', key, '-o', `UserKnownHostsFile=${knownHosts}`];
  const ends = ({ src, dst, push }, remote = at) => (push ? [src, `${remote}:${dst}`] : [`${remote}:${src}`, dst]);
  switch (name) {
    case 'scp':
      return ({ src, dstFile, push }) => ['scp', ...sshFlags, ...(alias ? [] : ['-P', String(sshd.port)]), ...ends({ src, dst: dstFile, push })];
    case 'sftp':
      return async ({ src, dstFile, push, work }) => {
        const batch = join(work, 'sftp-batch');
        await writeFile(batch, push ? `put "${src}" "${dstFile}"\n` : `get "${src}" "${dstFile}"\n`);
        return ['sftp', '-b', batch, ...sshFlags, ...(alias ? [] : ['-P', String(sshd.port)]), at];
      };
    case 'rsync': {
      const rsh = alias ? [] : ['-e', ['ssh', '-p', String(sshd.port), ...sshFlags].map(shq).join(' ')];
      return ({ src, dstFile, push }) => ['rsync', ...rsh, ...ends({ src, dst: dstFile, push })];
    }
    case 'ferry': {
      // bin/ferry, as installed; --json only changes what it prints (the events say which path it took).
      const remote = alias ? ALIAS : `${sshd.user}@${sshd.host}:${sshd.port}`;
      const flags = alias ? [] : ['-i', key, '--known-hosts', knownHosts];
      return ({ src, dstDir, push }) => [join(ROOT, 'bin', 'ferry'), 'cp', '--json', ...flags, ...ends({ src, dst: `${dstDir}/`, push }, remote)];
    }
    default:
      throw new Error(`--tools: unknown tool "${name}" (${TOOLS.join(', ')})`);
  }
}

/** What ferry said about the path it took: its job.start and done events (or its error), and its log lines. */
function ferryReport(stdout) {
  const events = (stdout ?? '').split('\n').filter((l) => l.startsWith('{')).flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
  const pick = (type) => events.find((e) => e.type === type);
  const start = pick('job.start');
  const done = pick('done');
  const last = done ?? start ?? {};
  const extra = Object.fromEntries(Object.entries({ ...start, ...done }).filter(([k, v]) => !KNOWN_FIELDS.has(k) && v !== undefined));
  return {
    mode: last.mode,
    agents: last.agents,
    streams: last.streams,
    extra,
    start,
    done,
    error: pick('error'),
    logs: events.filter((e) => e.type === 'log').map((e) => e.message).slice(0, 20),
  };
}

/** "sftp, 2 agents x 2 streams" and any new fields, for the table. */
function pathText(p) {
  if (!p?.mode) return '-';
  const extra = Object.entries(p.extra).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`);
  return [`${p.mode}, ${p.agents} agent${p.agents === 1 ? '' : 's'} x ${p.streams} stream${p.streams === 1 ? '' : 's'}`, ...extra].join('; ');
}

/** What the remote host offers a session: whether node runs, and which of the programs ferry and the peers may use are on its PATH. */
function probeRemote(wrap, env, login) {
  const script = 'node --version >/dev/null 2>&1; echo "node exit $?"; for p in ferry perl python3 xxhsum sha256sum dd rsync; do command -v "$p" >/dev/null && echo "has $p"; done; true';
  const r = spawnSync(wrap[0], [...wrap.slice(1), 'ssh', ...login, script], { env, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`ssh ${login.join(' ')} failed (${r.status ?? r.signal ?? r.error?.message}): ${(r.stderr ?? '').trim()}`);
  const nodeExit = Number(/^node exit (\d+)$/m.exec(r.stdout)?.[1]);
  const has = [...r.stdout.matchAll(/^has (\S+)$/gm)].map((m) => m[1]);
  return { nodeExit, has };
}

export async function firstContact(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '4GiB' },
      rounds: { type: 'string', default: '3' },
      direction: { type: 'string', default: 'both' },
      tools: { type: 'string', default: TOOLS.join(',') },
      'no-alias': { type: 'boolean', default: false },
      'lean-login': { type: 'boolean', default: false },
      'retry-noisy': { type: 'string', default: '2' },
      'idle-wait': { type: 'string', default: '300' },
      out: { type: 'string', default: 'bench/results' },
      name: { type: 'string', default: 'first-contact' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  const size = parseSize(o.size);
  const rounds = Number(o.rounds);
  const retryNoisy = Number(o['retry-noisy']);
  const idleWait = Number(o['idle-wait']);
  if (!size) throw new Error(`--size: not a size: ${o.size}`);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: not a positive integer: ${o.rounds}`);
  if (!['push', 'pull', 'both'].includes(o.direction)) throw new Error(`--direction: push, pull or both, not ${o.direction}`);
  if (!Number.isInteger(retryNoisy) || retryNoisy < 0) throw new Error(`--retry-noisy: not a count: ${o['retry-noisy']}`);
  if (!(idleWait >= 0)) throw new Error(`--idle-wait: not a number of seconds: ${o['idle-wait']}`);
  const toolNames = o.tools.split(',').map((s) => s.trim()).filter(Boolean);
  for (const t of toolNames) if (!TOOLS.includes(t)) throw new Error(`--tools: unknown tool "${t}" (${TOOLS.join(', ')})`);
  if (process.getuid?.() !== 0) throw new Error('first-contact runs the sshd and the tools in mount namespaces of their own: run it as root');
  for (const p of ['unshare', 'nsenter', 'mount', ...toolNames.filter((t) => t !== 'ferry')]) if (!which(p)) throw new Error(`${p} is not installed: run node scripts/setup.mjs --bench`);
  const alias = !o['no-alias'];
  const directions = o.direction === 'both' ? ['push', 'pull'] : [o.direction];
  const outDir = resolve(o.out);

  // One temporary directory: source, destination, the remote sshd's files and the user's home.
  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-first-'));
  onCleanup(() => rm(work, { recursive: true, force: true }));
  const noNode = await withoutNode(work);
  const sshd = await startSshd({ dir: join(work, 'sshd'), extraConfig: await leanLogin(o['lean-login'], work), wrap: noNode.wrap });
  onCleanup(() => sshd.stop());
  log(`sshd on ${sshd.host}:${sshd.port} (pid ${sshd.pid}) without node (${noNode.hidden.join(', ')} hidden), work dir ${work}`);
  const user = await sshUserHome(work, sshd, ALIAS);
  onCleanup(() => user.stop());

  // The host must really lack node, and the tools must reach it as named.
  const login = alias ? [ALIAS] : ['-p', String(sshd.port), '-i', join(user.home, '.ssh', 'id_ed25519'), '-o', `UserKnownHostsFile=${join(user.home, '.ssh', 'known_hosts')}`, `${sshd.user}@${sshd.host}`];
  const remote = probeRemote(user.wrap, user.env, login);
  if (remote.nodeExit !== 127) throw new Error(`the remote sessions still run node (node --version exited ${remote.nodeExit}): first-contact needs a host without it`);
  log(`the remote host: node exits 127; on its PATH: ${remote.has.join(', ') || 'none of ferry, perl, python3, xxhsum, sha256sum, dd, rsync'}`);

  log(`writing ${formatBytes(size)} of random data to ${join(work, 'src')}`);
  const copy = await prepareCopy(work, size);
  const tools = toolNames.map((name) => ({ name, argv: firstContactTool(name, { alias, sshd, home: user.home }) }));
  // ferry's state directory as a user has it: under the home, emptied before each run (a job found there would be resumed).
  const stateDir = join(user.home, '.local', 'state');
  await mkdir(stateDir, { recursive: true });

  const results = await runRounds({
    rounds,
    jobs: directions.flatMap((direction) => tools.map((tool) => ({ direction, tool }))),
    retryNoisy,
    run: async (round, { direction, tool }) => {
      const rec = await measureCopy(copy, {
        sshdPid: sshd.pid,
        env: user.env,
        keepStdout: tool.name === 'ferry',
        idleWaitMs: idleWait * 1000,
        command: async () => {
          await rm(stateDir, { recursive: true, force: true });
          return [...user.wrap, ...(await tool.argv({ src: copy.src, dstDir: copy.dstDir, dstFile: copy.dstFile, push: direction === 'push', work }))];
        },
      });
      const { stdout, ...kept } = rec;
      if (tool.name !== 'ferry') return { round, direction, tool: tool.name, ...kept };
      const ferry = ferryReport(stdout);
      // With --json, ferry's error is its last event, not stderr.
      if (!kept.ok && ferry.error) kept.error = `${kept.error.split(':')[0]}: ${ferry.error.code}: ${ferry.error.message}`;
      return { round, direction, tool: tool.name, ...kept, ferry };
    },
  });
  if (!results) return;
  const kept = results.filter((r) => !r.discarded);

  // ferry's path per direction: the one its runs took (all of them, should they differ).
  const paths = (direction) => [...new Set(kept.filter((r) => r.tool === 'ferry' && r.direction === direction && r.ferry?.mode).map((r) => pathText(r.ferry)))];
  const summary = summarizeCopies(kept, { directions, tools: toolNames, size }).map((s) => {
    if (s.tool !== 'ferry') return s;
    const run = kept.find((r) => r.tool === 'ferry' && r.direction === s.direction && r.ferry?.mode);
    return { ...s, path: paths(s.direction).join(' | ') || undefined, series: run ? `ferry ${run.ferry.mode}` : undefined, connections: run ? run.ferry.agents * run.ferry.streams : undefined };
  });

  const header = ['direction', 'tool', 'ok', 'median s', 'median MB/s', 'min-max MB/s', 'vs scp', 'CPU s/GB', 'CPU vs scp', 'MB/s incl. sync', "ferry's path"];
  const rows = summary.map((s) => [
    s.direction,
    s.tool,
    ...copyCells(s),
    Number.isFinite(s.cpuVsScp) ? `${s.cpuVsScp.toFixed(2)}x` : '-',
    fmt(s.medianMBpsWithSync),
    s.tool === 'ferry' ? (s.path ?? '-') : '',
  ]);
  const table = markdownTable(header, rows);
  const failures = kept.filter((r) => !r.ok);
  const m = machine();
  const date = new Date().toISOString();
  process.stdout.write(`\n${table}\n`);
  if (failures.length > 0) process.stdout.write(`\n${failures.length} failed run(s):\n${failures.map((f) => `  round ${f.round} ${f.direction} ${f.tool}: ${f.error}`).join('\n')}\n`);

  // Each tool's command line once per direction, with the run's paths named.
  const named = (a) => a.replaceAll(join(work, 'sftp-batch'), 'BATCH').replaceAll(copy.dstDir, 'DST').replaceAll(copy.src, 'SRC').replaceAll(user.home, '~').replaceAll(join(ROOT, 'bin', 'ferry'), 'ferry');
  const commands = directions.flatMap((direction) =>
    toolNames.flatMap((t) => {
      const r = kept.find((x) => x.tool === t && x.direction === direction);
      return r ? [`- ${direction} ${t}: \`${named(r.argv.slice(user.wrap.length).map(shq).join(' '))}\``] : [];
    }),
  );
  const md = [
    `# Benchmark: ${o.name}${o.name === 'first-contact' ? '' : ' (first-contact scenario)'}`,
    '',
    `A new user's first copy. The remote host is a loopback sshd whose sessions find no \`node\` and no \`ferry\` (a mount namespace where each is a stand-in that exits 127); the tools run as typed, with no options, and ${alias ? `name the host \`${ALIAS}\`, an alias in the user's ~/.ssh/config` : 'name the host 127.0.0.1 with its port, key and known_hosts as flags (--no-alias)'}. Source and destination on the same filesystem; source in the page cache. Generated by \`npm run bench -- first-contact\` (see bench/README.md).`,
    '',
    `![median MB/s against SSH connections, per tool](${o.name}.svg)`,
    '',
    `- Date: ${date}`,
    `- Machine: ${m.nproc} CPUs (nproc), ${m.cpu}, ${m.ramGiB} GiB RAM; kernel ${m.kernel}; Node ${m.node}; ${m.openssh}`,
    `- ferry: ${ferryVersion()}`,
    `- File: ${size} bytes (${formatBytes(size)}), random`,
    `- Rounds: ${rounds}; every tool once per round and direction, the order rotating`,
    `- Remote host: \`node --version\` exits ${remote.nodeExit}; on its PATH: ${remote.has.join(', ') || 'none of ferry, perl, python3, xxhsum, sha256sum, dd, rsync'}`,
    `- Logins: ${o['lean-login'] ? 'lean (--lean-login: HOME is an empty directory, the remote shell reads no start-up files)' : "the remote user's own shell start-up files (~/.bashrc) run on every login"}`,
    `- Ciphers and everything else: OpenSSH's and ferry's own defaults`,
    `- Command: \`${['node bench/run.mjs first-contact', ...argv.map(shq)].join(' ')}\``,
    '',
    table,
    '',
    ...copyNotes(results, o.name),
    "- CPU vs scp: CPU s/GB over scp's in the same direction.",
    "- ferry's path: the data path (`mode`), agents and streams from ferry's own `--json` events (`job.start`, `done`), and any field of them this harness does not know yet.",
    '',
    '## The commands',
    '',
    ...(alias ? ['~/.ssh/config:', '', '```', user.config.replaceAll(user.home, '~').trimEnd(), '```', ''] : []),
    ...commands,
    ...(toolNames.includes('sftp') ? ['', 'BATCH: `put "SRC" "DST/source.bin"` (push), `get "SRC" "DST/source.bin"` (pull).'] : []),
    ...copyProblems(results),
    '',
  ].join('\n');
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, `${o.name}.md`), md);
  await writeFile(
    join(outDir, `${o.name}.json`),
    JSON.stringify({ scenario: 'first-contact', date, ferry: ferryVersion(), machine: m, options: { size, rounds, directions, tools: toolNames, alias, leanLogin: o['lean-login'], retryNoisy }, remote, sshConfig: alias ? user.config : undefined, clockTicks: CLK_TCK, sampleMs: SAMPLE_MS, summary, runs: results }, null, 1) + '\n',
  );
  await plotThroughput(summary, `first-contact: ${formatBytes(size)}, no flags, a remote host without ferry, ${date}`, join(outDir, `${o.name}.svg`));
  log(`wrote ${join(outDir, `${o.name}.md`)}, ${o.name}.json and ${o.name}.svg`);
  if (failures.length > 0) process.exitCode = 1;
}
