// Benchmark scenario `wan`: an emulated long fat network between two network namespaces.
//
// `export async function wan(argv)`, in the style of the scenarios in bench/run.mjs (register it
// in its SCENARIOS map), or standalone: `node bench/wan.mjs [options]`. Needs root.
//
// The testbed (bench/wan-testbed.mjs): a client namespace (runs scp, sftp, rsync and ferry) and a
// server namespace (a throwaway sshd), the client's egress shaped per TCP stream (default 200
// Mbit/s) under the link's total rate (default 2 Gbit/s). One file of random data is pushed. See
// bench/README.md for what runs and how to read the results.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { mkdtemp, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { plotThroughput } from './plot.mjs';
import { BUCKETS, PORT_BASE, openWanTestbed } from './wan-testbed.mjs';
import { CLK_TCK, ferryRole, ferryTool, fileHash, fmt, log, machine, median, waitForIdle, ferryVersion, leanLogin, machineTicks, makeRandomFile, markdownTable, readText, sh, shq, sshDdTool, syncDisks, which, cliOf } from './common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

// The peers that matter on a long fat link (one stream, and what a user hand-rolls to fill it),
// ferry as a user gets it (no flags), and ferry's best shapes: one stream (against scp) and 16
// (the link; bench/README.md, "One agent, sixteen streams").
const DEFAULT_CONFIGS = ['scp', 'rsync', 'ssh-dd:16', 'ferry', '-a 1 -s 1 --direct-io', '-a 1 -s 16 --shared-helper --send-window 512KiB --direct-io'];

const HELP = `usage: npm run bench -- wan [options]         (needs root)

  --size <size>         file size (default 2GiB)
  --runs <n>            rounds; each round runs every tool once (default 2)
  --configs <list>      comma-separated; scp, sftp, rsync, ssh-dd:<n> (the file in n slices, each
                        piped by dd through its own ssh login), ferry alone (no flags: what a
                        user gets), or ferry flags, optionally after the word ferry (a list
                        starting with a dash needs --configs='-a 2 -s 2' or --configs
                        'ferry -a 2 -s 2'), after any
                        NAME=value environment words (NODE_FLAGS=<flag>,... replaces bin/ferry's
                        node flags; empty: none); 'ferry@<dir> <flags>' runs the build in
                        another checkout <dir> (an A/B in one run)
                        (default "${DEFAULT_CONFIGS.join(',')}")
  --link-mbit <n>       the link's total rate, Mbit/s (default 2000)
  --stream-mbit <n>     the cap of one TCP stream, Mbit/s (default 200)
  --out <dir>           where wan.md and wan.json go (default bench/results)
  --name <name>         base name of the result files instead of wan
  --lean-login          sessions of the bench's sshd get HOME set to an empty directory
                        (sshd_config SetEnv), so the remote shell reads no start-up files
                        (~/.bashrc): every tool's login costs what sshd and the tool cost,
                        not the machine's shell set-up (bench/README.md, "Heavy shell start-up files")
  --timeline            run ferry with --json -v instead of --quiet and write <name>-timeline.txt:
                        each run's events and agent messages, in seconds from spawn, and every
                        0.1 s when the destination's disk was held (no write completed while
                        some waited) or 3 threads or more of ferry, sshd and nats-server waited
                        in the kernel: which, and where (wchan)
`;

const IDLE_MAX_MS = 30_000;

// ---------------------------------------------------------------------------
// The tools.

/** One entry of --configs as a tool (argv built like loopbackTool in bench/run.mjs, run in the client namespace). */
function wanTool(entry, ctx) {
  const { userKey, knownHosts, user, timeline, host, port, inClient } = ctx;
  // The same ssh options for every OpenSSH tool as in the loopback scenario.
  const sshOpts = [
    '-F', '/dev/null', '-i', userKey, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'Ciphers=aes128-gcm@openssh.com',
  ];
  // ssh with those options, as one shell line (rsync -e, ssh-dd).
  const sshCmdLine = ['ssh', ...sshOpts, '-p', String(port)].map(shq).join(' ');
  if (entry === 'scp') return { name: 'scp', needs: 'scp', streams: 1, argv: ({ src, dstFile }) => [...inClient, 'scp', '-q', ...sshOpts, '-P', String(port), src, `${user}@${host}:${dstFile}`] };
  if (entry === 'sftp') {
    return {
      name: 'sftp',
      needs: 'sftp',
      streams: 1,
      argv: async ({ src, dstFile, work }) => {
        const batch = join(work, 'sftp-batch');
        await writeFile(batch, `put "${src}" "${dstFile}"\n`);
        return [...inClient, 'sftp', '-q', '-b', batch, ...sshOpts, '-P', String(port), `${user}@${host}`];
      },
    };
  }
  if (entry === 'rsync') {
    return { name: 'rsync', needs: 'rsync', streams: 1, argv: ({ src, dstFile }) => [...inClient, 'rsync', '--whole-file', '-e', sshCmdLine, src, `${user}@${host}:${dstFile}`] };
  }
  const dd = sshDdTool(entry, { ssh: `${sshCmdLine} ${shq(`${user}@${host}`)}`, prefix: inClient });
  if (dd) return dd;
  const ferry = ferryTool(entry, CLI, 'scp, sftp, rsync, ssh-dd:<n>');
  const { flags } = ferry;
  // Streams = agents x connections per agent (ferry's defaults: 2 and 2).
  const flag = (short, long, dflt) => {
    const i = flags.findIndex((f) => f === short || f === long);
    const eq = flags.find((f) => f.startsWith(`${long}=`));
    return Number(i >= 0 ? flags[i + 1] : eq ? eq.split('=')[1] : dflt);
  };
  const streams = flag('-a', '--agents', 2) * flag('-s', '--streams', 2);
  return {
    name: ferry.name,
    needs: null,
    events: timeline,
    streams,
    // A fresh state directory per run: ferry resumes a job it finds in its journal.
    argv: ({ src, dstDir, stateDir }) => [
      ...inClient,
      ...ferry.cp({ from: src, to: `${user}@${host}:${port}:${dstDir}/`, userKey, knownHosts, stateDir, output: timeline ? ['--json', '-v'] : ['--quiet'] }),
    ],
  };
}

/** Where a cumulative byte counter, sampled as [seconds, bytes], passed `bytes` (linear between samples). */
function crossing(samples, bytes) {
  for (let i = 1; i < samples.length; i++) {
    const [t0, b0] = samples[i - 1];
    const [t1, b1] = samples[i];
    if (b1 >= bytes) return b1 === b0 ? t1 : t0 + ((bytes - b0) / (b1 - b0)) * (t1 - t0);
  }
  return NaN;
}

/** One line of a --timeline: an agent's message as it is, other events by type with what names them. */
function eventText(e) {
  if (e.type === 'log') return e.message;
  if (e.type === 'agent.start') return `agent.start ${e.index} (pid ${e.pid})`;
  if (e.type === 'agent.exit') return `agent.exit ${e.index} code ${e.code}`;
  const why = e.error?.message ?? e.message;
  return why ? `${e.type}: ${why}` : e.type;
}

/** A reader of the write counters in /proc/diskstats of the disk with device number `dev` (a file system's st_dev). */
function diskOf(dev) {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  return () => {
    const line = (readText('/proc/diskstats') ?? '')
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .find((f) => Number(f[0]) === major && Number(f[1]) === minor);
    return line ? { writtenSectors: Number(line[9]), inFlight: Number(line[11]) } : undefined;
  };
}

/** What a process is, for the blocking watch: a ferry role, sshd or nats-server; undefined for the rest. */
function processKind(pid) {
  const argv = (readText(`/proc/${pid}/cmdline`) ?? '').split('\0');
  const role = ferryRole(argv);
  if (role) return role;
  if (argv[0].startsWith('sshd') || argv[0].endsWith('/sshd')) return 'sshd'; // "sshd: user@notty" once running
  if (argv[0].endsWith('nats-server')) return 'nats-server';
  return undefined;
}

/**
 * With --timeline: every 100 ms, whether the destination's disk completed no
 * write while requests waited on it (a flush holding it), and which threads of
 * ferry, sshd and nats-server waited in the kernel (state D) and where
 * (wchan). Samples with a held disk or 3 blocked threads or more become
 * timeline lines, as [seconds from `t0`, text]: what a dip coincides with.
 */
function watchBlocking(disk, t0) {
  const lines = [];
  const kinds = new Map();
  let last = disk();
  const timer = setInterval(() => {
    const now = disk();
    const blocked = new Map();
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      if (!kinds.has(pid)) kinds.set(pid, processKind(pid));
      const kind = kinds.get(pid);
      if (!kind) continue;
      let tasks = [];
      try {
        tasks = readdirSync(`/proc/${pid}/task`);
      } catch {
        continue; // gone
      }
      for (const tid of tasks) {
        const stat = readText(`/proc/${pid}/task/${tid}/stat`) ?? '';
        if (stat[stat.lastIndexOf(')') + 2] !== 'D') continue; // the state follows "(comm) "
        const key = `${kind} (${readText(`/proc/${pid}/task/${tid}/wchan`) || '?'})`;
        blocked.set(key, (blocked.get(key) ?? 0) + 1);
      }
    }
    const held = last && now && now.writtenSectors === last.writtenSectors && now.inFlight > 0;
    const count = [...blocked.values()].reduce((a, b) => a + b, 0);
    if (held || count >= 3) {
      const who = [...blocked].map(([k, n]) => (n > 1 ? `${n}x ${k}` : k)).join(', ');
      const diskText = held ? `disk held (no write done in 0.1 s, ${now.inFlight} waiting)` : 'disk moving';
      lines.push([Math.round(performance.now() - t0) / 1000, `${diskText}; blocked: ${who || 'none'}`]);
    }
    last = now;
  }, 100);
  return () => {
    clearInterval(timer);
    return lines;
  };
}

/**
 * Runs one command in its own process group; samples the client's wire bytes
 * meanwhile. With `events`, its stdout is ferry's --json stream: the events
 * other than progress and range.done are kept, as [seconds from spawn, text],
 * and so are the samples of watchBlocking() on `disk`.
 */
async function measure(bed, argv, timeoutMs, events = false, disk = undefined, onChild = () => {}) {
  const rx = bed.wireBytes;
  const rx0 = rx();
  const m0 = machineTicks();
  const samples = [[0, 0]];
  const t0 = performance.now();
  const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', events ? 'pipe' : 'ignore', 'pipe'] });
  onChild(child);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const timeline = [];
  if (events) {
    let partial = '';
    child.stdout.on('data', (d) => {
      const t = Math.round(performance.now() - t0) / 1000;
      const lines = (partial + d).split('\n');
      partial = lines.pop();
      for (const line of lines) {
        let e;
        try {
          e = JSON.parse(line);
        } catch {
          timeline.push([t, line]);
          continue;
        }
        if (e.type !== 'progress' && e.type !== 'range.done') timeline.push([t, eventText(e)]);
      }
    });
  }
  const sampler = setInterval(() => samples.push([(performance.now() - t0) / 1000, rx() - rx0]), 50);
  const stopWatch = events && disk ? watchBlocking(disk, t0) : undefined;
  let timedOut = false;
  const killer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }, timeoutMs);
  const { code, signal, spawnError } = await new Promise((r) => {
    child.once('error', (err) => r({ spawnError: err }));
    child.once('exit', (c, s) => r({ code: c, signal: s }));
  });
  const seconds = (performance.now() - t0) / 1000;
  samples.push([seconds, rx() - rx0]);
  clearInterval(sampler);
  if (stopWatch) timeline.push(...stopWatch());
  timeline.sort((a, b) => a[0] - b[0]);
  clearTimeout(killer);
  onChild(undefined);
  const m1 = machineTicks();
  let error;
  if (spawnError) error = `spawn: ${spawnError.message}`;
  else if (timedOut) error = `timed out after ${timeoutMs / 1000} s`;
  else if (code !== 0) error = `exit ${code ?? signal}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`;
  return {
    seconds,
    error,
    wireBytes: samples.at(-1)[1],
    samples,
    ...(events ? { timeline } : {}),
    cpuBusy: (m1.tasks + m1.irq - m0.tasks - m0.irq) / CLK_TCK / seconds, // cores busy, whole machine
    stealSeconds: (m1.steal - m0.steal) / CLK_TCK,
  };
}

export async function wan(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '2GiB' },
      runs: { type: 'string', default: '2' },
      configs: { type: 'string', default: DEFAULT_CONFIGS.join(',') },
      'link-mbit': { type: 'string', default: '2000' },
      'stream-mbit': { type: 'string', default: '200' },
      out: { type: 'string', default: 'bench/results' },
      name: { type: 'string', default: 'wan' },
      'lean-login': { type: 'boolean', default: false },
      timeline: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  const size = parseSize(o.size);
  const runs = Number(o.runs);
  const linkMbit = Number(o['link-mbit']);
  const streamMbit = Number(o['stream-mbit']);
  if (!size) throw new Error(`--size: not a size: ${o.size}`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs: not a positive integer: ${o.runs}`);
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run node scripts/setup.mjs`);
  const outDir = resolve(o.out);

  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-wan-'));
  let bed;
  let current; // the measured child process, if one is running
  try {
    bed = await openWanTestbed({ linkMbit, streamMbit, sshdDir: join(work, 'sshd'), sshdConfig: await leanLogin(o['lean-login'], work), log });
    // On a signal, before the namespaces go: the measured command's group (ferry's agents and
    // nats-server with it), then the work directory.
    bed.onTeardown(() => rmSync(work, { recursive: true, force: true }));
    bed.onTeardown(() => current && process.kill(-current.pid, 'SIGKILL'));
    const { sshd, check, linkMBps, streamMBps } = bed;
    const shapingWarnings = bed.warnings;
    log(`work dir ${work}`);
    const ctx = { userKey: sshd.userKey, knownHosts: sshd.knownHosts, user: sshd.user, host: bed.host, port: bed.port, inClient: bed.inClient, timeline: o.timeline };

    const tools = o.configs.split(',').map((s) => s.trim()).filter(Boolean).map((e) => wanTool(e, ctx));
    const skipped = tools.filter((t) => t.needs && !which(t.needs)).map((t) => ({ tool: t.name, reason: `${t.needs} not installed` }));
    const active = tools.filter((t) => !skipped.some((s) => s.tool === t.name));
    for (const s of skipped) log(`skipping ${s.tool}: ${s.reason}`);

    const src = join(work, 'src', 'source.bin');
    const dstDir = join(work, 'dst');
    const dstFile = join(dstDir, 'source.bin');
    await mkdir(join(work, 'src'));
    await mkdir(dstDir);
    const dstDisk = diskOf(statSync(dstDir).dev);
    log(`writing ${formatBytes(size)} of random data to ${src}`);
    await makeRandomFile(src, size);
    syncDisks();
    const srcHash = await fileHash(src); // also puts it in the page cache
    // A run slower than a quarter of one stream's cap is broken, not slow.
    const timeoutMs = Math.max(120_000, (size / 1e6 / (streamMBps / 4)) * 1000);

    async function runOnce(round, tool) {
      for (const name of await readdir(dstDir)) await rm(join(dstDir, name), { recursive: true, force: true });
      syncDisks();
      const idleWaitSeconds = await waitForIdle({ quietSeconds: 3, maxMs: IDLE_MAX_MS, log });
      const stateDir = join(work, 'state');
      await rm(stateDir, { recursive: true, force: true });
      const argv = await tool.argv({ src, dstDir, dstFile, work, stateDir });
      const before = bed.classBytes();
      const m = await measure(bed, argv, timeoutMs, tool.events === true, dstDisk, (c) => (current = c));
      const leftovers = await bed.settle();
      const bucketMB = bed.bucketMB(before, bed.classBytes());
      const syncSeconds = syncDisks();
      if (!m.error) {
        const st = existsSync(dstFile) ? statSync(dstFile) : undefined;
        if (!st) m.error = 'destination file missing';
        else if (st.size !== size) m.error = `destination has ${st.size} bytes, expected ${size}`;
        else if ((await fileHash(dstFile)) !== srcHash) m.error = 'destination content differs from source';
      }
      const ok = !m.error;
      // The wire view (bytes the client sent, headers included): how long until data flowed (1% of
      // the file), and the rate between 10% and 90% of the run's wire bytes.
      const firstDataSeconds = crossing(m.samples, 0.01 * size);
      const t10 = crossing(m.samples, 0.1 * m.wireBytes);
      const t90 = crossing(m.samples, 0.9 * m.wireBytes);
      const steadyWireMBps = (0.8 * m.wireBytes) / 1e6 / (t90 - t10);
      return {
        round,
        tool: tool.name,
        streams: tool.streams,
        argv,
        ok,
        error: m.error,
        seconds: m.seconds,
        mbps: ok ? size / 1e6 / m.seconds : NaN,
        syncSeconds,
        mbpsWithSync: ok ? size / 1e6 / (m.seconds + syncSeconds) : NaN,
        wireBytes: m.wireBytes,
        firstDataSeconds,
        steadyWireMBps,
        bucketsUsed: Object.keys(bucketMB).length,
        bucketMB,
        cpuBusyCores: m.cpuBusy,
        stealSeconds: m.stealSeconds,
        idleWaitSeconds,
        busyBefore: idleWaitSeconds >= IDLE_MAX_MS / 1000,
        leftovers,
        wireSamples: m.samples.filter((_, i) => i % 4 === 0).map(([t, b]) => [Math.round(t * 1000) / 1000, b]),
        ...(m.timeline ? { timeline: m.timeline } : {}),
      };
    }

    const results = [];
    for (let round = 1; round <= runs; round++) {
      // Every round runs every tool once; the order rotates by one place each round.
      const order = active.map((_, i) => active[(i + round - 1) % active.length]);
      for (const tool of order) {
        const rec = await runOnce(round, tool);
        results.push(rec);
        log(
          `[${round}/${runs}] ${tool.name}: ` +
            (rec.ok
              ? `${rec.seconds.toFixed(2)} s, ${rec.mbps.toFixed(1)} MB/s (${fmt((rec.mbps / linkMBps) * 100)}% of the link), steady ${fmt(rec.steadyWireMBps)} MB/s on the wire, first data after ${fmt(rec.firstDataSeconds, 2)} s, ${rec.bucketsUsed} bucket(s), ${fmt(rec.cpuBusyCores, 2)} cores busy`
              : `FAILED: ${rec.error}`) +
            (rec.busyBefore ? ' (machine busy before the run)' : '') +
            (rec.leftovers.length ? ` (killed leftovers: ${rec.leftovers.join('; ')})` : ''),
        );
      }
    }

    // Summary per tool.
    const scpMedian = median(results.filter((r) => r.ok && r.tool === 'scp').map((r) => r.mbps));
    const summary = tools.map((tool) => {
      const skip = skipped.find((s) => s.tool === tool.name);
      const mine = results.filter((r) => r.tool === tool.name);
      const good = mine.filter((r) => r.ok);
      const rates = good.map((r) => r.mbps);
      return {
        tool: tool.name,
        streams: tool.streams,
        skipped: skip?.reason,
        ok: good.length,
        runs: mine.length,
        medianMBps: median(rates),
        minMBps: Math.min(...rates),
        maxMBps: Math.max(...rates),
        vsLink: median(rates) / linkMBps,
        vsScp: median(rates) / scpMedian,
        medianSteadyWireMBps: median(good.map((r) => r.steadyWireMBps)),
        medianFirstDataSeconds: median(good.map((r) => r.firstDataSeconds)),
        medianMBpsWithSync: median(good.map((r) => r.mbpsWithSync)),
        medianBucketsUsed: median(good.map((r) => r.bucketsUsed)),
        medianCpuBusyCores: median(good.map((r) => r.cpuBusyCores)),
      };
    });

    // The targets of issue 5.
    const ferry = summary.filter((s) => s.tool.startsWith('ferry') && s.ok > 0);
    const best = (xs) => xs.reduce((a, b) => (b.medianMBps > (a?.medianMBps ?? -1) ? b : a), undefined);
    const best16 = best(ferry.filter((s) => s.streams >= 16));
    const ferry1 = ferry.filter((s) => s.streams === 1);
    const targets = [];
    if (best16) targets.push({ target: `ferry at 16 streams >= 90% of the link (${fmt(0.9 * linkMBps)} MB/s)`, tool: best16.tool, value: best16.vsLink, met: best16.vsLink >= 0.9, text: `${fmt(best16.medianMBps, 1)} MB/s = ${fmt(best16.vsLink * 100)}% of the link` });
    for (const s of ferry1) if (Number.isFinite(s.vsScp)) targets.push({ target: 'ferry at 1 stream within 10% of scp', tool: s.tool, value: s.vsScp, met: s.vsScp >= 0.9, text: `${fmt(s.medianMBps, 1)} MB/s = ${fmt(s.vsScp, 2)}x scp` });

    const header = ['tool', 'streams', 'ok', 'median MB/s', 'min-max MB/s', 'vs link', 'vs scp', 'steady wire MB/s', 'first data s', 'MB/s incl. sync', 'buckets', 'cores busy'];
    const rows = summary.map((s) =>
      s.skipped
        ? [s.tool, s.streams, `skipped: ${s.skipped}`, '', '', '', '', '', '', '', '', '']
        : [
            s.tool,
            s.streams,
            `${s.ok}/${s.runs}`,
            fmt(s.medianMBps, 1),
            s.ok ? `${fmt(s.minMBps, 1)}-${fmt(s.maxMBps, 1)}` : '-',
            Number.isFinite(s.vsLink) ? `${fmt(s.vsLink * 100)}%` : '-',
            Number.isFinite(s.vsScp) ? `${s.vsScp.toFixed(2)}x` : '-',
            fmt(s.medianSteadyWireMBps),
            fmt(s.medianFirstDataSeconds, 2),
            fmt(s.medianMBpsWithSync, 1),
            fmt(s.medianBucketsUsed),
            fmt(s.medianCpuBusyCores, 2),
          ],
    );
    const table = markdownTable(header, rows);
    const failures = results.filter((r) => !r.ok);
    const busy = results.filter((r) => r.busyBefore);
    const m = machine();
    const date = new Date().toISOString();
    process.stdout.write(`\n${table}\n`);
    for (const t of targets) process.stdout.write(`${t.met ? 'met    ' : 'NOT met'}  ${t.target}: ${t.tool}: ${t.text}\n`);
    if (failures.length > 0) process.stdout.write(`\n${failures.length} failed run(s):\n${failures.map((f) => `  round ${f.round} ${f.tool}: ${f.error}`).join('\n')}\n`);

    const md = [
      `# Benchmark: ${o.name}${o.name === 'wan' ? '' : ' (wan scenario)'}`,
      '',
      `Two network namespaces on a private bridge; the link emulated as ${linkMbit} Mbit/s (${fmt(linkMBps)} MB/s) in total with each TCP stream capped at ${streamMbit} Mbit/s (${fmt(streamMBps, 1)} MB/s), the limit that RTT and windows put on one stream of a long fat network (no added delay: netem is absent). Push from the client namespace to an sshd in the server namespace. Generated by \`npm run bench -- wan\` (see bench/README.md).`,
      '',
      `- Date: ${date}`,
      `- Machine: ${m.nproc} CPUs (nproc), ${m.cpu}, ${m.ramGiB} GiB RAM; kernel ${m.kernel}; Node ${m.node}; ${m.openssh}`,
      `- ferry: ${ferryVersion()}`,
      `- File: ${size} bytes (${formatBytes(size)}), random, ${size * 2 <= totalmem() ? 'from the page cache' : 'larger than half the RAM, so partly read from the disk during the runs'}; destination on the same filesystem (${tmpdir()})`,
      `- Logins: ${o['lean-login'] ? 'lean (--lean-login: HOME is an empty directory, the remote shell reads no start-up files)' : "the remote user's own shell start-up files (~/.bashrc) run on every login"}`,
      ...(o.timeline ? [`- Timeline: ferry ran with --json -v instead of --quiet (a little more CPU); its events, with the moments the destination's disk was held or threads were blocked in the kernel, are in ${o.name}-timeline.txt`] : []),
      `- Runs: ${runs} per tool, in rounds (every tool once per round, order rotating by one each round)`,
      `- Shaping: ${bed.shapingText}`,
      `- Shaping check (plain TCP): ${bed.checkText}`,
      `- Command: \`${['node bench/run.mjs wan', ...argv.map(shq)].join(' ')}\``,
      '',
      table,
      '',
      ...(targets.length > 0 ? ['Targets (issue 5):', '', ...targets.map((t) => `- ${t.met ? 'met' : '**not met**'}: ${t.target}: ${t.tool}, ${t.text}`), ''] : []),
      '- MB/s: 1e6 file bytes per second of wall-clock time from spawn to exit (including ssh handshakes and, for ferry, starting nats-server, agents and helpers); median and range over successful runs. Every destination was checked byte-identical (size and xxh3).',
      `- vs link: median MB/s over the link's ${fmt(linkMBps)} MB/s. TCP/IP headers alone take ~4.5% of each frame, so about 95% is the most any tool can show.`,
      "- vs scp: median MB/s over scp's median in the same run.",
      "- steady wire MB/s: bytes the client put on the link (frames, headers included) per second between 10% and 90% of the run's wire bytes: how full the link was while data flowed, without the start and the end.",
      '- first data s: seconds from spawn until 1% of the file size had crossed the link: connection set-up and start-up.',
      '- MB/s incl. sync: wall time plus a `sync` right after the exit (ferry fsyncs before it exits; scp, sftp and rsync do not).',
      "- buckets: port buckets that carried more than 1 MB in a run (median): the TCP streams that carried data.",
      '- cores busy: CPU time of the whole machine (tasks and interrupts, both namespaces and anything else) per second of the run; the machine has ' + m.nproc + ' cores, and both ends (encryption, decryption) run on them.',
      `- Steal: median ${fmt(median(results.map((r) => r.stealSeconds / r.seconds)) * 100)}% of one CPU during runs.`,
      ...(shapingWarnings.length > 0 || busy.length > 0
        ? ['', '## Warnings', '', ...shapingWarnings.map((w) => `- ${w}`), ...(busy.length > 0 ? [`- ${busy.length} run(s) started while the machine was still busy after ${IDLE_MAX_MS / 1000} s of waiting (other work on the machine; they are counted): ${busy.map((r) => `round ${r.round} ${r.tool}`).join(', ')}`] : [])]
        : []),
      ...(failures.length > 0 ? ['', '## Failed runs', '', ...failures.map((f) => `- round ${f.round} ${f.tool}: ${f.error}`)] : []),
      '',
    ].join('\n');
    await mkdir(outDir, { recursive: true });
    await writeFile(join(outDir, `${o.name}.md`), md);
    await writeFile(
      join(outDir, `${o.name}.json`),
      JSON.stringify(
        {
          scenario: 'wan',
          date,
          ferry: ferryVersion(),
          machine: m,
          options: { size, runs, linkMbit, streamMbit, buckets: BUCKETS, portRange: [PORT_BASE, PORT_BASE + BUCKETS - 1], configs: tools.map((t) => t.name) },
          shapingCheck: check,
          skipped,
          targets,
          summary,
          runs: results,
        },
        null,
        1,
      ) + '\n',
    );
    const timelines = results.filter((r) => r.timeline);
    if (timelines.length > 0) {
      // Each run's events, each with the link's rate over the half second before it: what the start waits on.
      const rateAt = (r, t) => {
        const s = r.wireSamples;
        const i = s.findIndex(([ts]) => ts >= t);
        if (i <= 0) return '';
        const j = s.findIndex(([ts]) => ts >= t - 0.5);
        const [ta, ba] = s[Math.max(0, Math.min(j, i - 1))];
        const [tb, bb] = s[i];
        return tb > ta ? ` [${fmt((bb - ba) / 1e6 / (tb - ta))} MB/s on the wire]` : '';
      };
      const text = timelines.flatMap((r) => [`round ${r.round}: ${r.tool} (${fmt(r.seconds, 2)} s)`, ...r.timeline.map(([t, what]) => `  ${t.toFixed(3)}  ${what}${rateAt(r, t)}`), '']).join('\n');
      await writeFile(join(outDir, `${o.name}-timeline.txt`), text);
    }
    await plotThroughput(summary.map((r) => ({ ...r, direction: 'push' })), `wan: ${linkMbit} Mbit/s link, ${streamMbit} Mbit/s per stream, ${date}`, join(outDir, `${o.name}.svg`));
    log(`wrote ${join(outDir, `${o.name}.md`)}, ${o.name}.json and ${o.name}.svg`);
    if (failures.length > 0) process.exitCode = 1;
  } finally {
    await bed?.close();
    await rm(work, { recursive: true, force: true });
  }
}

// Standalone: node bench/wan.mjs [options]
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await wan(process.argv.slice(2));
  } catch (err) {
    log(`error: ${err.message}`);
    process.exitCode = 1;
  }
}
