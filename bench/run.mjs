#!/usr/bin/env node
// Benchmark harness: `npm run bench -- <scenario> [options]`.
//
// Each scenario is an async function in SCENARIOS below that gets its own argv,
// runs the tools it compares and writes <out>/<scenario>.md and .json. The
// shared pieces (timing a command, CPU/RSS sampling from /proc, statistics,
// cleanup on Ctrl-C) live in common.mjs so that new scenarios stay short.
// See bench/README.md for what is measured and how to read the results.
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { plotThroughput } from './plot.mjs';
import { coordinator } from './coordinator.mjs';
import { hash } from './hash.mjs';
import { wan } from './wan.mjs';
import { firstContact } from './first-contact.mjs';
import { tree } from './tree.mjs';
import { sync } from './sync.mjs';
import { check } from './check.mjs';
import { delta } from './delta.mjs';
import { CLK_TCK, SAMPLE_MS, cleanupAll, copyCells, copyNotes, copyProblems, ferryTool, fileHash, fmt, log, ferryVersion, leanLogin, machine, makeRandomFile, markdownTable, measureCopy, median, onCleanup, prepareCopy, runRounds, shq, sshDdTool, stopOnSignals, summarizeCopies, which, cliOf } from './common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

stopOnSignals();

// ---------------------------------------------------------------------------
// Scenario: loopback. Every tool against one sshd on 127.0.0.1.

// Every peer, ferry as a user gets it (no flags), and ferry's best shapes: one stream for the
// push, two for the pull (bench/results/loopback.md).
const LOOPBACK_DEFAULT_CONFIGS = ['scp', 'sftp', 'rsync', 'rclone', 'lftp', 'ssh-dd:2', 'ferry', '-a 1 -s 1 --direct-io', '-a 1 -s 2 --direct-io --send-window 512KiB'];

const LOOPBACK_HELP = `usage: npm run bench -- loopback [options]

  --size <size>        file size (default 4GiB)
  --runs <n>           rounds; each round runs every tool once (default 3)
  --configs <list>     comma-separated; scp, sftp, rsync, rclone, lftp, ssh-dd:<n> (the file in n
                       slices, each through its own ssh login with dd at both ends), ferry
                       alone (no flags: what a user gets), or ferry flags, optionally after
                       the word ferry (a list starting with a dash needs
                       --configs='-a 2 -s 2' or --configs 'ferry -a 2 -s 2'); ferry
                       flags may follow NAME=value environment words, as in
                       'ferry FERRY_WARM_START=0 -a 1 -s 1', and NODE_FLAGS=<flag>,... (empty:
                       none) replaces the node flags of bin/ferry that ferry and its helpers
                       run with; 'ferry@<dir> <flags>' runs the build in another checkout
                       <dir> (an A/B of two builds in one run)
                       (default "${LOOPBACK_DEFAULT_CONFIGS.join(',')}")
  --direction <d>      push, pull or both (default both)
  --out <dir>          where loopback.md and loopback.json go (default bench/results)
  --name <name>        base name of the result files instead of loopback (e.g. startup)
  --retry-noisy <n>    repeat a run disturbed by other load or steal up to n times (default 2)
  --idle-wait <s>      before each run, wait up to this many seconds for 5 idle seconds (default
                       300; 0: no wait, for a quick check on a busy machine)
  --lean-login         sessions of the bench's sshd get HOME set to an empty directory
                       (sshd_config SetEnv), so the remote shell reads no start-up files
                       (~/.bashrc): every tool's login costs what sshd and the tool cost,
                       not the machine's shell set-up (bench/README.md, "Heavy shell start-up files")
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
      size: { type: 'string', default: '4GiB' },
      runs: { type: 'string', default: '3' },
      configs: { type: 'string', default: LOOPBACK_DEFAULT_CONFIGS.join(',') },
      direction: { type: 'string', default: 'both' },
      out: { type: 'string', default: 'bench/results' },
      name: { type: 'string', default: 'loopback' },
      'retry-noisy': { type: 'string', default: '2' },
      'idle-wait': { type: 'string', default: '300' },
      'lean-login': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(LOOPBACK_HELP);
  const idleWait = Number(o['idle-wait']);
  if (!(idleWait >= 0)) throw new Error(`--idle-wait: not a number of seconds: ${o['idle-wait']}`);
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
  onCleanup(() => rm(work, { recursive: true, force: true }));
  const sshd = await startSshd({ dir: join(work, 'sshd'), extraConfig: await leanLogin(o['lean-login'], work) });
  onCleanup(() => sshd.stop());
  log(`sshd on ${sshd.host}:${sshd.port} (pid ${sshd.pid}), work dir ${work}`);
  const ctx = { userKey: sshd.userKey, knownHosts: sshd.knownHosts, port: sshd.port, user: sshd.user };

  const tools = o.configs.split(',').map((s) => s.trim()).filter(Boolean).map((e) => loopbackTool(e, ctx));
  const skipped = tools.filter((t) => t.needs && !which(t.needs)).map((t) => ({ tool: t.name, reason: `${t.needs} not installed` }));
  const active = tools.filter((t) => !skipped.some((s) => s.tool === t.name));
  for (const s of skipped) log(`skipping ${s.tool}: ${s.reason}`);

  log(`writing ${formatBytes(size)} of random data to ${join(work, 'src')}`);
  const copy = await prepareCopy(work, size);
  const stateDir = join(work, 'state');

  const results = await runRounds({
    rounds: runs,
    jobs: directions.flatMap((direction) => active.map((tool) => ({ direction, tool }))),
    retryNoisy,
    run: async (round, { direction, tool }) => {
      const rec = await measureCopy(copy, {
        sshdPid: sshd.pid,
        idleWaitMs: idleWait * 1000,
        command: async () => {
          // A fresh state directory per run: ferry resumes a job it finds in its journal.
          await rm(stateDir, { recursive: true, force: true });
          return tool.argv({ src: copy.src, dstDir: copy.dstDir, dstFile: copy.dstFile, push: direction === 'push', work, stateDir });
        },
      });
      return { round, direction, tool: tool.name, ...rec };
    },
  });
  if (!results) return;
  const kept = results.filter((r) => !r.discarded);
  const summary = summarizeCopies(kept, { directions, tools: tools.map((t) => t.name), size }).map((s) => ({ ...s, skipped: skipped.find((k) => k.tool === s.tool)?.reason }));

  const header = ['direction', 'tool', 'ok', 'median s', 'median MB/s', 'min-max MB/s', 'vs scp', 'CPU s/GB', 'MB/s incl. sync', 'RSS cp MiB', 'RSS agent MiB', 'RSS serve MiB'];
  const rows = summary.map((s) =>
    s.skipped
      ? [s.direction, s.tool, `skipped: ${s.skipped}`, '', '', '', '', '', '', '', '', '']
      : [s.direction, s.tool, ...copyCells(s), fmt(s.medianMBpsWithSync), fmt(s.peakRssMiB.coordinator), fmt(s.peakRssMiB.agent), fmt(s.peakRssMiB.helper)],
  );
  const table = markdownTable(header, rows);
  const failures = kept.filter((r) => !r.ok);
  const noisy = kept.filter((r) => r.ok && r.noisy);
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
    ...copyNotes(results, o.name),
    '- RSS: peak VmHWM of ferry\'s coordinator (`cp`), agent and helper (`serve`) processes, the largest of each role over all runs.',
    ...copyProblems(results),
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

const NODES_HELP = `usage: npm run bench -- nodes [options]         (needs root)

  --size <size>        file size (default 512MiB)
  --runs <n>           rounds; each round runs every tool once (default 2)
  --link-mbit <n>      each compute node's link, Mbit/s, both directions (default 400)
  --agents <list>      comma-separated agent counts; one ferry run each per round (default 1,2,4)
  --out <dir>          where nodes.md and nodes.json go (default bench/results)

Builds a Slurm cluster of two compute-node namespaces (each link shaped to
--link-mbit, both directions) and two DTN namespaces running sshd
(test/fixtures/cluster.mjs), and moves one file with ferry cp --launcher srun
for each agent count (spread over both nodes), and with scp from one compute
node as the single-stream peer. Rounds alternate.
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
  onCleanup(() => cluster.stop());
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
const SCENARIOS = { loopback, 'first-contact': firstContact, wan, nodes, coordinator, hash, tree, sync, check, delta };

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

