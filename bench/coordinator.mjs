// Benchmark scenario `coordinator`: the control plane alone, no bytes moved.
//
// `export async function coordinator(argv)`, in the style of the scenarios in bench/run.mjs
// (register it in its SCENARIOS map), or standalone: `node bench/coordinator.mjs [options]`.
//
// One `ferry cp` of a sparse file of --ranges x --range-size to `discard:/bench/`, with
// FERRY_BENCH_DISCARD=1: the coordinator plans, starts nats-server, publishes every range, launches
// the agents, verifies and journals every completion and writes the manifest as in a real copy,
// but the agents open no SSH connection and read and write nothing (packages/core/src/discard.ts).
// What is measured is ranges per second end to end, and CPU and peak RSS of the coordinator,
// nats-server and each agent, sampled from /proc. Every run is checked afterwards: exit status 0,
// the journal holds every range exactly once as durable, and it ends with the final record.
// See bench/coordinator.md.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { CLK_TCK, ferryRole, ferryVersion, fmt, log, machine as commonMachine, markdownTable, median, readText, sh, cliOf } from './common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { parseSize, formatBytes, replayJournal } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const HELP = `usage: npm run bench -- coordinator [options]

  --ranges <n>         ranges in the plan (default 1000000)
  --agents <n>         agents (ferry cp -a, default 8)
  --streams <n>        worker loops per agent (ferry cp -s, default 2)
  --range-size <size>  range size; the sparse source is ranges x this (default 1MiB)
  --runs <n>           runs (default 1)
  --timeout <s>        a run taking longer is killed and counted as failed (default 900)
  --idle-wait <s>      before each run, wait up to this long for 5 idle seconds (default 300, 0: no wait)
  --profile <dir>      write V8 CPU profiles of the coordinator and the agents there
  --keep               keep the temporary directory (state dir, journal, NATS store)
  --baseline <dir>     another built ferry checkout (e.g. a git worktree of an older commit):
                       each run runs it and this one, alternating which goes first, and the
                       results give this build's ranges/s as a ratio of the baseline's
  --name <name>        results file name (default coordinator, or coordinator-ab with --baseline)
  --out <dir>          where NAME.md and NAME.json go (default bench/results)
`;

// ---------------------------------------------------------------------------

const machine = () => ({ ...commonMachine(), natsServer: sh('sh', ['-c', 'nats-server --version 2>&1']) });

// ---------------------------------------------------------------------------
// /proc sampling: every process of the measured command's process group (the coordinator is
// spawned detached, so the group is its pid; agents and nats-server inherit it).

const SAMPLE_MS = 200;

function readStat(pid) {
  const s = readText(`/proc/${pid}/stat`);
  if (!s) return undefined;
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { pid: Number(pid), state: f[0], ppid: Number(f[1]), pgrp: Number(f[2]), ticks: Number(f[11]) + Number(f[12]), start: f[19] };
}

function roleOf(argv) {
  if (argv[0]?.endsWith('nats-server')) return 'nats-server';
  return ferryRole(argv) ?? 'other'; // no helper runs in this scenario
}

class GroupTracker {
  constructor(pgrp) {
    this.pgrp = pgrp;
    this.procs = new Map();
  }

  sample() {
    let live = 0;
    for (const name of readdirSync('/proc')) {
      if (name.charCodeAt(0) > 57) continue;
      const st = readStat(name);
      if (!st || st.pgrp !== this.pgrp) continue;
      if (st.state !== 'Z') live++;
      const key = `${st.pid}:${st.start}`;
      let rec = this.procs.get(key);
      if (!rec) this.procs.set(key, (rec = { pid: st.pid, argv: [], ticks: 0, hwmKiB: 0, rssMaxKiB: 0 }));
      rec.ticks = st.ticks;
      const cmdline = readText(`/proc/${st.pid}/cmdline`);
      if (cmdline) rec.argv = cmdline.split('\0').filter(Boolean);
      const status = readText(`/proc/${st.pid}/status`) ?? '';
      const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
      const rss = /VmRSS:\s+(\d+) kB/.exec(status);
      if (hwm) rec.hwmKiB = Math.max(rec.hwmKiB, Number(hwm[1]));
      if (rss) rec.rssMaxKiB = Math.max(rec.rssMaxKiB, Number(rss[1]));
    }
    return live;
  }

  result() {
    return [...this.procs.values()].map((r) => {
      const role = roleOf(r.argv);
      const idx = r.argv.indexOf('--index');
      return {
        pid: r.pid,
        role,
        ...(role === 'agent' && idx >= 0 ? { index: Number(r.argv[idx + 1]) } : {}),
        command: r.argv.slice(0, 4).join(' ').slice(0, 160),
        cpuSeconds: r.ticks / CLK_TCK,
        // VmHWM: the kernel's own peak, exact; VmRSS max: what the samples saw.
        peakRssMiB: Math.max(r.hwmKiB, r.rssMaxKiB) / 1024,
      };
    });
  }
}

function machineTaskTicks() {
  const [user, nice, system] = (readText('/proc/stat') ?? '').split('\n')[0].trim().split(/\s+/).slice(1, 4).map(Number);
  return user + nice + system;
}

/**
 * Waits, at most maxMs, until the machine has been quiet (under a tenth of a core busy) for five
 * seconds in a row (as run.mjs does); returns the seconds waited.
 */
async function waitForIdle(maxMs) {
  const t0 = Date.now();
  for (let quiet = 0; quiet < 5; ) {
    const before = machineTaskTicks();
    await new Promise((r) => setTimeout(r, 1000));
    quiet = (machineTaskTicks() - before) / CLK_TCK < 0.1 ? quiet + 1 : 0;
    if (Date.now() - t0 > maxMs) {
      log(`machine still busy after ${maxMs / 1000} s, measuring anyway`);
      break;
    }
  }
  return (Date.now() - t0) / 1000;
}

// ---------------------------------------------------------------------------
// Cleanup on Ctrl-C: synchronous, so that it is done before run.mjs's own SIGINT handler (which
// knows nothing of this module) exits the process.

let child;
let workDir;
let keepWork = false;
function cleanupSync() {
  if (child && child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  child = undefined;
  if (workDir && !keepWork) rmSync(workDir, { recursive: true, force: true });
  workDir = undefined;
}
function onSignal(sig) {
  log(`${sig}: cleaning up`);
  cleanupSync();
  if (process.listenerCount(sig) === 1) process.exit(130); // standalone; under run.mjs its handler exits
}

// ---------------------------------------------------------------------------

/** One run: spawn ferry, sample until it exits, check the journal. */
async function runOnce({ cli, src, stateDir, ranges, rangeBytes, agents, streams, timeoutMs, profileDir, idleWaitMs }) {
  rmSync(stateDir, { recursive: true, force: true });
  const idleWaitSeconds = idleWaitMs > 0 ? await waitForIdle(idleWaitMs) : 0;
  const argv = [
    process.execPath,
    ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []),
    cli, 'cp', src, 'discard:/bench/',
    '--range-size', `${rangeBytes / 2 ** 20}MiB`, '-a', String(agents), '-s', String(streams),
    '--state-dir', stateDir, '--quiet',
  ];
  const env = { ...process.env, FERRY_BENCH_DISCARD: '1', ...(profileDir ? { FERRY_PROFILE_DIR: profileDir } : {}) };
  const tasksBefore = machineTaskTicks();
  const selfBefore = process.cpuUsage();
  const startedAt = Date.now();
  const t0 = performance.now();
  child = spawn(argv[0], argv.slice(1), { detached: true, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const tracker = new GroupTracker(child.pid);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const timer = setInterval(() => tracker.sample(), SAMPLE_MS);
  tracker.sample();
  let timedOut = false;
  const killer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }, timeoutMs);
  const { code, signal } = await new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const seconds = (performance.now() - t0) / 1000;
  clearTimeout(killer);
  // Agents and nats-server are stopped by the coordinator before it exits; sample any straggler.
  const quietBy = Date.now() + 5000;
  while (tracker.sample() > 0 && Date.now() < quietBy) await new Promise((r) => setTimeout(r, 50));
  clearInterval(timer);
  const pgid = child.pid;
  child = undefined;
  try {
    process.kill(-pgid, 'SIGKILL'); // nothing of the run may outlive it
  } catch {
    // all gone, as it should be
  }
  const self = process.cpuUsage(selfBefore);
  const processes = tracker.result();
  const cpuSeconds = processes.reduce((s, p) => s + p.cpuSeconds, 0);
  const harnessCpuSeconds = (self.user + self.system) / 1e6;
  const otherCpuSeconds = Math.max(0, (machineTaskTicks() - tasksBefore) / CLK_TCK - cpuSeconds - harnessCpuSeconds);

  let error;
  if (timedOut) error = `timed out after ${timeoutMs / 1000} s`;
  else if (code !== 0) error = `exit ${code ?? signal}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`;

  // The journal must hold every range, once, durable, and the final record.
  let journal;
  const jobs = existsSync(join(stateDir, 'jobs')) ? readdirSync(join(stateDir, 'jobs')) : [];
  if (!error && jobs.length !== 1) error = `expected one job in the state directory, found ${jobs.length}`;
  if (!error) {
    const jobDir = join(stateDir, 'jobs', jobs[0]);
    const data = await readFile(join(jobDir, 'journal'));
    const { records, tornTail } = replayJournal(data);
    const seen = new Uint8Array(ranges);
    let rangeRecords = 0;
    let duplicates = 0;
    let firstAt = Infinity;
    let lastAt = -Infinity;
    let final = false;
    for (const r of records) {
      if (r.t === 'final') final = true;
      if (r.t !== 'range') continue;
      rangeRecords++;
      if (!r.durable || r.range < 0 || r.range >= ranges) continue;
      if (seen[r.range]++) duplicates++;
      if (r.at < firstAt) firstAt = r.at;
      if (r.at > lastAt) lastAt = r.at;
    }
    const missing = seen.reduce((n, v) => n + (v === 0 ? 1 : 0), 0);
    journal = { bytes: data.length, records: records.length, rangeRecords, duplicates, missing, tornTail, final, firstRangeAfterSeconds: (firstAt - startedAt) / 1000, rangeSpanSeconds: (lastAt - firstAt) / 1000 };
    if (tornTail) error = 'journal has a torn tail';
    else if (missing > 0) error = `journal lacks ${missing} of ${ranges} ranges`;
    else if (!final) error = 'journal has no final record';
    const manifest = JSON.parse(await readFile(join(jobDir, 'manifest.json'), 'utf8').catch(() => '{}'));
    if (!error && manifest.rangeHashes?.length !== ranges) error = `manifest has ${manifest.rangeHashes?.length ?? 'no'} range hashes, expected ${ranges}`;
  }
  const peak = (role) => Math.max(0, ...processes.filter((p) => p.role === role).map((p) => p.peakRssMiB));
  const cpu = (role) => processes.filter((p) => p.role === role).reduce((s, p) => s + p.cpuSeconds, 0);
  return {
    argv: argv.map((a) => (a === src ? '<sparse source>' : a)),
    ok: !error,
    error,
    seconds,
    rangesPerSecond: error ? NaN : ranges / seconds,
    // Steady state: from the first range journaled to the last (excludes startup and publishing).
    journalRangesPerSecond: error || !journal ? NaN : (ranges - 1) / Math.max(0.001, journal.rangeSpanSeconds),
    journal,
    peakRssMiB: { coordinator: peak('coordinator'), natsServer: peak('nats-server'), agentMax: peak('agent') },
    cpuSeconds: { total: cpuSeconds, coordinator: cpu('coordinator'), natsServer: cpu('nats-server'), agents: cpu('agent') },
    otherCpuSeconds,
    harnessCpuSeconds,
    idleWaitSeconds,
    agents: processes.filter((p) => p.role === 'agent').sort((a, b) => (a.index ?? 0) - (b.index ?? 0)),
    processes,
  };
}

export async function coordinator(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      ranges: { type: 'string', default: '1000000' },
      agents: { type: 'string', default: '8' },
      streams: { type: 'string', default: '2' },
      'range-size': { type: 'string', default: '1MiB' },
      runs: { type: 'string', default: '1' },
      timeout: { type: 'string', default: '900' },
      'idle-wait': { type: 'string', default: '300' },
      profile: { type: 'string' },
      keep: { type: 'boolean', default: false },
      baseline: { type: 'string' },
      name: { type: 'string' },
      out: { type: 'string', default: 'bench/results' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  const ranges = Number(o.ranges);
  const agents = Number(o.agents);
  const streams = Number(o.streams);
  const runs = Number(o.runs);
  const rangeBytes = parseSize(o['range-size']);
  const timeoutMs = Number(o.timeout) * 1000;
  const idleWaitMs = Number(o['idle-wait']) * 1000;
  if (!Number.isSafeInteger(ranges) || ranges < 1) throw new Error(`--ranges: not a positive integer: ${o.ranges}`);
  if (!Number.isInteger(agents) || agents < 1) throw new Error(`--agents: not a positive integer: ${o.agents}`);
  if (!Number.isInteger(streams) || streams < 1) throw new Error(`--streams: not a positive integer: ${o.streams}`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs: not a positive integer: ${o.runs}`);
  if (!rangeBytes || rangeBytes % 2 ** 20 !== 0) throw new Error(`--range-size: not a multiple of 1MiB: ${o['range-size']}`);
  if (!(timeoutMs > 0)) throw new Error(`--timeout: not a number of seconds: ${o.timeout}`);
  if (!(idleWaitMs >= 0)) throw new Error(`--idle-wait: not a number of seconds: ${o['idle-wait']}`);
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run node scripts/setup.mjs`);
  const baselineDir = o.baseline ? resolve(o.baseline) : undefined;
  const baselineCli = baselineDir ? cliOf(baselineDir) : undefined;
  if (baselineCli && !existsSync(baselineCli)) throw new Error(`--baseline: ${baselineCli} missing: build that checkout first (npm ci or a copy of node_modules, then npx tsc -b)`);
  const baselineVersion = baselineDir ? sh('git', ['-C', baselineDir, 'rev-parse', '--short', 'HEAD']) || baselineDir : undefined;
  const name = o.name ?? (baselineDir ? 'coordinator-ab' : 'coordinator');
  if (!/^[\w.-]+$/.test(name)) throw new Error(`--name: letters, digits, '.', '_' and '-' only: ${name}`);
  const outDir = resolve(o.out);
  const profileDir = o.profile ? resolve(o.profile) : undefined;
  if (profileDir) await mkdir(profileDir, { recursive: true });
  keepWork = o.keep;

  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, onSignal);
  const results = [];
  try {
    workDir = await mkdtemp(join(tmpdir(), 'ferry-bench-coord-'));
    // A sparse file of the plan's size: nothing is read from it but its first and last MiB
    // (the source fingerprint), which are holes.
    const src = join(workDir, 'source.bin');
    const fh = await open(src, 'w');
    await fh.truncate(ranges * rangeBytes);
    await fh.close();
    log(`sparse source of ${formatBytes(ranges * rangeBytes)} (${ranges} x ${formatBytes(rangeBytes)}), work dir ${workDir}`);
    // With a baseline, each run measures both builds, alternating which goes first (the
    // machine drifts: a fixed order would favour one).
    const builds = baselineCli ? [{ build: 'baseline', cli: baselineCli }, { build: 'this', cli: CLI }] : [{ build: 'this', cli: CLI }];
    for (let run = 1; run <= runs; run++) {
      const order = run % 2 === 1 ? builds : [...builds].reverse();
      for (const { build, cli } of order) {
        const r = await runOnce({ cli, src, stateDir: join(workDir, 'state'), ranges, rangeBytes, agents, streams, timeoutMs, profileDir, idleWaitMs });
        r.run = run;
        r.build = build;
        results.push(r);
        log(
          `[${run}/${runs}${baselineCli ? ` ${build}` : ''}] ` +
            (r.ok
              ? `${ranges} ranges in ${r.seconds.toFixed(1)} s: ${fmt(r.rangesPerSecond)} ranges/s end to end, ${fmt(r.journalRangesPerSecond)} ranges/s first to last journaled; ` +
                `RSS coordinator ${fmt(r.peakRssMiB.coordinator)} MiB, nats-server ${fmt(r.peakRssMiB.natsServer)} MiB, agent max ${fmt(r.peakRssMiB.agentMax)} MiB; ` +
                `CPU coordinator ${fmt(r.cpuSeconds.coordinator, 1)} s, nats-server ${fmt(r.cpuSeconds.natsServer, 1)} s, agents ${fmt(r.cpuSeconds.agents, 1)} s; other load ${fmt(r.otherCpuSeconds, 1)} s`
              : `FAILED: ${r.error}`),
        );
      }
    }
  } finally {
    if (keepWork && workDir) log(`kept ${workDir}`);
    cleanupSync();
    for (const sig of ['SIGINT', 'SIGTERM']) process.off(sig, onSignal);
  }

  const good = results.filter((r) => r.ok);
  const header = ['run', ...(baselineCli ? ['build'] : []), 'ok', 'wall s', 'ranges/s', 'ranges/s journaling', 'first range s', 'RSS coord MiB', 'RSS nats MiB', 'RSS agent max MiB', 'CPU coord s', 'CPU nats s', 'CPU agents s', 'other load s'];
  const rows = results.map((r) => [
    r.run, ...(baselineCli ? [r.build === 'this' ? ferryVersion() : `${baselineVersion} (baseline)`] : []), r.ok ? 'yes' : 'no', fmt(r.seconds, 1), fmt(r.rangesPerSecond), fmt(r.journalRangesPerSecond), fmt(r.journal?.firstRangeAfterSeconds, 1),
    fmt(r.peakRssMiB.coordinator), fmt(r.peakRssMiB.natsServer), fmt(r.peakRssMiB.agentMax),
    fmt(r.cpuSeconds.coordinator, 1), fmt(r.cpuSeconds.natsServer, 1), fmt(r.cpuSeconds.agents, 1), fmt(r.otherCpuSeconds, 1),
  ]);
  const table = markdownTable(header, rows);
  const agentRows = results.flatMap((r) => r.agents.map((a) => [r.run, ...(baselineCli ? [r.build] : []), a.index ?? '?', a.pid, fmt(a.peakRssMiB), fmt(a.cpuSeconds, 1)]));
  const agentTable = markdownTable(['run', ...(baselineCli ? ['build'] : []), 'agent', 'pid', 'peak RSS MiB', 'CPU s'], agentRows);
  // Medians per build; with a baseline, this build's as a ratio of the baseline's.
  const medianOf = (build, f) => median(good.filter((r) => r.build === build).map(f));
  const comparison = baselineCli
    ? [
        `- This build against the baseline (${baselineVersion}), medians of the successful runs: ` +
          `ranges/s ${fmt(medianOf('this', (r) => r.rangesPerSecond))} against ${fmt(medianOf('baseline', (r) => r.rangesPerSecond))} ` +
          `(**${fmt(medianOf('this', (r) => r.rangesPerSecond) / medianOf('baseline', (r) => r.rangesPerSecond), 2)}x**); ` +
          `journaling ${fmt(medianOf('this', (r) => r.journalRangesPerSecond))} against ${fmt(medianOf('baseline', (r) => r.journalRangesPerSecond))}; ` +
          `CPU s coordinator / nats-server / agents ${['coordinator', 'natsServer', 'agents'].map((k) => fmt(medianOf('this', (r) => r.cpuSeconds[k]), 1)).join(' / ')} ` +
          `against ${['coordinator', 'natsServer', 'agents'].map((k) => fmt(medianOf('baseline', (r) => r.cpuSeconds[k]), 1)).join(' / ')}; ` +
          `peak RSS MiB coordinator / nats-server ${fmt(medianOf('this', (r) => r.peakRssMiB.coordinator))} / ${fmt(medianOf('this', (r) => r.peakRssMiB.natsServer))} ` +
          `against ${fmt(medianOf('baseline', (r) => r.peakRssMiB.coordinator))} / ${fmt(medianOf('baseline', (r) => r.peakRssMiB.natsServer))}.`,
      ]
    : [];
  process.stdout.write(`\n${table}\n${comparison.length > 0 ? `\n${comparison.join('\n')}\n` : ''}`);
  const failures = results.filter((r) => !r.ok);
  if (failures.length > 0) process.stdout.write(`\n${failures.length} failed run(s):\n${failures.map((f) => `  run ${f.run}: ${f.error}`).join('\n')}\n`);

  const m = machine();
  const date = new Date().toISOString();
  const md = [
    '# Benchmark: coordinator',
    '',
    'The control plane alone: `FERRY_BENCH_DISCARD=1 ferry cp SPARSE discard:/bench/`, agents that move no bytes.',
    'Generated by `npm run bench -- coordinator` (see bench/README.md).',
    '',
    `- Date: ${date}`,
    `- Machine: ${m.nproc} CPUs (nproc), ${m.cpu}, ${m.ramGiB} GiB RAM`,
    `- Kernel: ${m.kernel}; Node ${m.node}; ${m.natsServer}`,
    `- ferry: ${ferryVersion()}${baselineCli ? `; baseline: ${baselineVersion} (${baselineDir})` : ''}`,
    `- Plan: ${ranges} ranges of ${formatBytes(rangeBytes)}; ${agents} agents x ${streams} streams; ${runs} run(s)`,
    `- Command: \`node bench/coordinator.mjs ${argv.join(' ')}\``,
    '',
    table,
    '',
    ...comparison,
    '- ranges/s: ranges / wall seconds from spawning `ferry cp` until it exited (nats-server start, publishing the plan, agents, journaling, manifest).',
    '- ranges/s journaling: ranges / seconds between the first and the last range record of the journal (the steady state, without startup and publishing).',
    '- first range s: seconds from spawn until the first range was journaled (nats-server start, agents starting while the plan is being published).',
    `- RSS: peak resident memory (max of VmHWM and sampled VmRSS, every ${SAMPLE_MS} ms) of the coordinator (\`ferry cp\`), nats-server, and the largest agent.`,
    '- CPU: user + system seconds from /proc; other load: task CPU of the machine outside these processes and the harness during the run.',
    '',
    '## Agents',
    '',
    agentTable,
    ...(failures.length > 0 ? ['', '## Failed runs', '', ...failures.map((f) => `- run ${f.run}: ${f.error}`)] : []),
    '',
  ].join('\n');
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, `${name}.md`), md);
  await writeFile(
    join(outDir, `${name}.json`),
    JSON.stringify(
      {
        scenario: 'coordinator',
        date,
        ferry: ferryVersion(),
        machine: m,
        options: { ranges, rangeBytes, agents, streams, runs, ...(baselineDir ? { baseline: baselineDir, baselineVersion } : {}) },
        clockTicks: CLK_TCK,
        sampleMs: SAMPLE_MS,
        summary: { okRuns: good.length, runs: results.length, medianRangesPerSecond: medianOf('this', (r) => r.rangesPerSecond), medianJournalRangesPerSecond: medianOf('this', (r) => r.journalRangesPerSecond), ...(baselineCli ? { baselineMedianRangesPerSecond: medianOf('baseline', (r) => r.rangesPerSecond), baselineMedianJournalRangesPerSecond: medianOf('baseline', (r) => r.journalRangesPerSecond) } : {}) },
        runs: results,
      },
      null,
      1,
    ) + '\n',
  );
  log(`wrote ${join(outDir, `${name}.md`)} and ${name}.json`);
  if (failures.length > 0) process.exitCode = 1;
}

// Standalone: node bench/coordinator.mjs [options]
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await coordinator(process.argv.slice(2));
  } catch (err) {
    log(`error: ${err.message}`);
    process.exitCode = 1;
  }
}
