// Benchmark scenario `hash`: throughput per core of each range hash ferry supports.
//
// `export async function hash(argv)`, in the style of the scenarios in bench/run.mjs (register it
// in its SCENARIOS map), or standalone: `node bench/hash.mjs [options]`.
//
// ferry's own hashers (createHasher from packages/core/dist: xxh3 through @node-rs/xxhash's
// streaming Xxh3 class, sha256 through node:crypto) are fed one in-memory buffer of random bytes
// in fixed-size chunks, on this one thread, several runs each, in rounds. For context, the same
// bytes as a file in /dev/shm (tmpfs: no disk) go through `xxhsum -H3` and `sha256sum` where
// those programs are installed; their digests must equal ferry's. See bench/README.md.
import { spawn, execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { CLK_TCK, fmt, log, median, waitForIdle, ferryVersion, machineTicks, markdownTable, readText, sh, shq, which } from './common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { createHasher, parseSize, formatBytes, HASH_ALGORITHMS } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const HELP = `usage: npm run bench -- hash [options]

  --size <size>     bytes hashed per run (default 1GiB)
  --chunk <size>    update() size for ferry's hashers (default 1MiB)
  --runs <n>        runs per hasher, in rounds (default 5)
  --peers <bool>    also time xxhsum -H3 and sha256sum on a copy in /dev/shm (default true)
  --out <dir>       where hash.md and hash.json go (default bench/results)
`;

// ---------------------------------------------------------------------------

/** The longest wait for an idle machine before a run. */
const IDLE_MAX_MS = 60_000;
/** utime+stime of the waited-for children of this process (exact for a child that has been reaped). */
function reapedTicks() {
  const s = readText('/proc/self/stat') ?? '';
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[13]) + Number(f[14]);
}

function machine() {
  const cpuinfo = readText('/proc/cpuinfo') ?? '';
  const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '').split(/\s+/));
  return {
    nproc: Number(sh('nproc', [])),
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? 'unknown',
    mhz: Number(/^cpu MHz\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]) || undefined,
    // What the hashes can use: xxh3 vectorises (SSE2/AVX2/AVX-512), sha256 has SHA-NI.
    cpuFlags: ['sse2', 'avx2', 'avx512f', 'sha_ni', 'aes'].filter((f) => flags.has(f)),
    ramGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: sh('uname', ['-r']) || release(),
    node: process.version,
    openssl: process.versions.openssl,
    xxhsum: which('xxhsum') ? sh('sh', ['-c', 'xxhsum --version 2>&1 | head -1']) : undefined,
    sha256sum: which('sha256sum') ? sh('sha256sum', ['--version']).split('\n')[0] : undefined,
  };
}

// ---------------------------------------------------------------------------
// Cleanup on Ctrl-C: the /dev/shm copy and a running peer. Synchronous, so that it is done before
// run.mjs's own SIGINT handler (which knows nothing of this module) exits the process.

let shmFile;
let child;
function cleanupSync() {
  if (child && child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  if (shmFile) rmSync(shmFile, { force: true });
  shmFile = undefined;
}
function onSignal(sig) {
  log(`${sig}: cleaning up`);
  cleanupSync();
  if (process.listenerCount(sig) === 1) process.exit(130); // standalone; under run.mjs its handler exits
}

/** One timed run of ferry's hasher over buf in chunk-sized update() calls. */
function timeHasher(algorithm, buf, chunk) {
  const cpu0 = process.cpuUsage();
  const m0 = machineTicks();
  const t0 = performance.now();
  const h = createHasher(algorithm);
  for (let at = 0; at < buf.length; at += chunk) h.update(buf.subarray(at, Math.min(at + chunk, buf.length)));
  const digest = h.digest();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6, stealSeconds: (machineTicks().steal - m0.steal) / CLK_TCK, digest };
}

/** One timed run of a peer program on the /dev/shm copy; the digest is the last hex word of its output. */
function timePeer(cmd, args, timeoutMs) {
  return new Promise((resolvePeer) => {
    const ticks0 = reapedTicks();
    const m0 = machineTicks();
    const t0 = performance.now();
    child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err = (err + d).slice(-2000)));
    const killer = setTimeout(() => {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(killer);
      resolvePeer({ error: `spawn: ${e.message}` });
    });
    child.once('close', (code, signal) => {
      const seconds = (performance.now() - t0) / 1000;
      clearTimeout(killer);
      child = undefined;
      const digest = (out.match(/\b[0-9a-f]{16,64}\b/g) ?? []).at(-1);
      resolvePeer({
        seconds,
        cpuSeconds: (reapedTicks() - ticks0) / CLK_TCK,
        stealSeconds: (machineTicks().steal - m0.steal) / CLK_TCK,
        digest,
        error: code === 0 ? undefined : `exit ${code ?? signal}: ${err.trim()}`,
      });
    });
  });
}

export async function hash(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '1GiB' },
      chunk: { type: 'string', default: '1MiB' },
      runs: { type: 'string', default: '5' },
      peers: { type: 'string', default: 'true' },
      out: { type: 'string', default: 'bench/results' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  const size = parseSize(o.size);
  const chunk = parseSize(o.chunk);
  const runs = Number(o.runs);
  if (!size || size > 2 ** 32 - 1) throw new Error(`--size: not a size under 4 GiB: ${o.size}`);
  if (!chunk) throw new Error(`--chunk: not a size: ${o.chunk}`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs: not a positive integer: ${o.runs}`);
  const outDir = resolve(o.out);

  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, onSignal);
  try {
    log(`filling ${formatBytes(size)} with random bytes`);
    const buf = Buffer.allocUnsafe(size);
    for (let at = 0; at < size; at += 64 << 20) randomFillSync(buf, at, Math.min(64 << 20, size - at));

    // The tools: ferry's hashers, then the peers that are installed.
    const tools = HASH_ALGORITHMS.map((algorithm) => ({ name: `ferry ${algorithm}`, algorithm, kind: 'ferry', run: () => timeHasher(algorithm, buf, chunk) }));
    const skipped = [];
    const peerDefs = [
      { name: 'xxhsum -H3', algorithm: 'xxh3', cmd: 'xxhsum', args: ['-H3'], pkg: 'xxhash' },
      { name: 'sha256sum', algorithm: 'sha256', cmd: 'sha256sum', args: [], pkg: 'coreutils' },
    ];
    if (o.peers !== 'false') {
      for (const p of peerDefs) {
        if (!which(p.cmd)) {
          skipped.push({ tool: p.name, reason: `${p.cmd} not installed (Debian package ${p.pkg})` });
          log(`skipping ${p.name}: ${p.cmd} not installed`);
          continue;
        }
        tools.push({ name: p.name, algorithm: p.algorithm, kind: 'peer', run: () => timePeer(p.cmd, [...p.args, shmFile], 300_000) });
      }
      if (tools.some((t) => t.kind === 'peer')) {
        shmFile = join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', `ferry-bench-hash-${process.pid}.bin`);
        log(`writing the same bytes to ${shmFile} for the peers`);
        writeFileSync(shmFile, buf);
      }
    }

    // Warm-up, not counted: loads the native module, faults the buffer (and the tmpfs pages) in.
    for (const t of tools) if (t.kind === 'ferry') timeHasher(t.algorithm, buf.subarray(0, Math.min(size, 64 << 20)), chunk);

    const results = [];
    for (let round = 1; round <= runs; round++) {
      // Every round runs every tool once; the order rotates so that no tool always follows the same one.
      const order = tools.map((_, i) => tools[(i + round - 1) % tools.length]);
      for (const t of order) {
        const idleWaitSeconds = await waitForIdle({ quietSeconds: 3, maxMs: IDLE_MAX_MS, log });
        const r = await t.run();
        const rec = { round, tool: t.name, algorithm: t.algorithm, kind: t.kind, idleWaitSeconds, busyBefore: idleWaitSeconds >= IDLE_MAX_MS / 1000, ...r };
        results.push(rec);
        log(`[${round}/${runs}] ${t.name}: ` + (rec.error ? `FAILED: ${rec.error}` : `${r.seconds.toFixed(3)} s, ${(size / 1e9 / r.seconds).toFixed(2)} GB/s, CPU ${r.cpuSeconds.toFixed(2)} s`));
      }
    }
    // Every run of every tool must give the same digest per algorithm: ferry's first is the reference.
    const expected = {};
    for (const r of [...results.filter((x) => x.kind === 'ferry'), ...results]) if (!r.error) expected[r.algorithm] ??= r.digest;
    for (const r of results) {
      if (!r.error && r.digest !== expected[r.algorithm]) r.error = `digest ${r.digest} differs from ${expected[r.algorithm]}`;
      r.ok = !r.error;
      r.gbps = r.ok ? size / 1e9 / r.seconds : NaN;
      r.gbpsPerCpuSecond = r.ok && r.cpuSeconds > 0 ? size / 1e9 / r.cpuSeconds : NaN;
    }

    const summary = [];
    for (const t of tools) {
      const good = results.filter((r) => r.tool === t.name && r.ok);
      const rates = good.map((r) => r.gbps);
      const ferryMedian = median(results.filter((r) => r.ok && r.kind === 'ferry' && r.algorithm === t.algorithm).map((r) => r.gbps));
      summary.push({
        tool: t.name,
        algorithm: t.algorithm,
        kind: t.kind,
        ok: good.length,
        runs: results.filter((r) => r.tool === t.name).length,
        medianGBps: median(rates),
        minGBps: Math.min(...rates),
        maxGBps: Math.max(...rates),
        medianGBpsPerCpuSecond: median(good.map((r) => r.gbpsPerCpuSecond)),
        medianCpuPerWall: median(good.map((r) => r.cpuSeconds / r.seconds)),
        ferryOverThis: t.kind === 'peer' ? ferryMedian / median(rates) : undefined,
        digest: expected[t.algorithm],
      });
    }

    const header = ['algorithm', 'tool', 'ok', 'median GB/s', 'min-max GB/s', 'GB per CPU s', 'ferry / this'];
    const rows = summary.map((s) => [
      s.algorithm,
      s.tool,
      `${s.ok}/${s.runs}`,
      fmt(s.medianGBps, 2),
      s.ok ? `${fmt(s.minGBps, 2)}-${fmt(s.maxGBps, 2)}` : '-',
      fmt(s.medianGBpsPerCpuSecond, 2),
      s.ferryOverThis === undefined ? '' : `${fmt(s.ferryOverThis, 2)}x`,
    ]);
    for (const s of skipped) rows.push(['', s.tool, `skipped: ${s.reason}`, '', '', '', '']);
    const table = markdownTable(header, rows);
    const failures = results.filter((r) => !r.ok);
    const m = machine();
    const date = new Date().toISOString();
    process.stdout.write(`\n${table}\n`);
    if (failures.length > 0) process.stdout.write(`\n${failures.length} failed run(s):\n${failures.map((f) => `  round ${f.round} ${f.tool}: ${f.error}`).join('\n')}\n`);

    const md = [
      '# Benchmark: hash',
      '',
      'Hash throughput per core of each range hash ferry supports, single thread, and of the command-line peers.',
      'Generated by `npm run bench -- hash` (see bench/README.md).',
      '',
      `- Date: ${date}`,
      `- Machine: ${m.nproc} CPUs (nproc), ${m.cpu}${m.mhz ? ` at ${Math.round(m.mhz)} MHz` : ''}; CPU flags used by the hashes: ${m.cpuFlags.join(', ') || 'none'}; ${m.ramGiB} GiB RAM`,
      `- Kernel ${m.kernel}; Node ${m.node} (OpenSSL ${m.openssl}); ${m.xxhsum ?? 'xxhsum not installed'}; ${m.sha256sum ?? 'sha256sum not installed'}`,
      `- ferry: ${ferryVersion()}`,
      `- Data: ${size} bytes (${formatBytes(size)}) of random bytes; ferry's hashers get it from memory in ${formatBytes(chunk)} update() calls; the peers read a copy in ${shmFile ? dirnameOf(shmFile) : '/dev/shm'} (tmpfs)`,
      `- Runs: ${runs} per tool, in rounds (every tool once per round, order rotating), each after the machine had been idle for 3 s (waited at most ${IDLE_MAX_MS / 1000} s: ${results.filter((r) => r.busyBefore).length} run(s) started on a still busy machine)`,
      `- Command: \`${['node bench/run.mjs hash', ...argv.map(shq)].join(' ')}\``,
      '',
      table,
      '',
      '- GB/s: 1e9 bytes per second of wall-clock time (ferry: from createHasher() to digest(); peers: from spawn to exit, so including program start and reading the file from tmpfs); median and range over successful runs.',
      '- GB per CPU s: the same bytes per CPU second (user + system) of the hashing thread or the peer process; at or above GB/s; above it when the hasher waited (descheduled by other load or steal; for a peer also its start-up).',
      '- ferry / this: the median GB/s of ferry\'s hasher of the same algorithm over the peer\'s median.',
      `- Every run's digest was compared with ferry's for the same bytes: ${failures.length === 0 ? 'all equal' : `${failures.length} run(s) failed, see below`} (xxh3 ${expected.xxh3 ?? '-'}).`,
      `- Steal (hypervisor) during the runs: median ${fmt(median(results.map((r) => (r.stealSeconds ?? 0) / (r.seconds || 1))) * 100)}% of a CPU, at most ${fmt(Math.max(...results.map((r) => (r.stealSeconds ?? 0) / (r.seconds || 1))) * 100)}%.`,
      ...(skipped.length > 0 ? [`- Skipped: ${skipped.map((s) => `${s.tool} (${s.reason})`).join('; ')}.`] : []),
      ...(failures.length > 0 ? ['', '## Failed runs', '', ...failures.map((f) => `- round ${f.round} ${f.tool}: ${f.error}`)] : []),
      '',
    ].join('\n');
    await mkdir(outDir, { recursive: true });
    await writeFile(join(outDir, 'hash.md'), md);
    await writeFile(
      join(outDir, 'hash.json'),
      JSON.stringify({ scenario: 'hash', date, ferry: ferryVersion(), machine: m, options: { size, chunk, runs, peers: o.peers !== 'false' }, clockTicks: CLK_TCK, skipped, summary, runs: results }, null, 1) + '\n',
    );
    log(`wrote ${join(outDir, 'hash.md')} and hash.json`);
    if (failures.length > 0) process.exitCode = 1;
  } finally {
    cleanupSync();
    for (const sig of ['SIGINT', 'SIGTERM']) process.off(sig, onSignal);
  }
}

function dirnameOf(p) {
  return p.slice(0, p.lastIndexOf('/')) || '/';
}

// Standalone: node bench/hash.mjs [options]
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await hash(process.argv.slice(2));
  } catch (err) {
    log(`error: ${err.message}`);
    process.exitCode = 1;
  }
}
