// Benchmark scenario `check` (issue 32): `ferry check` against what a user runs without it,
// through one loopback sshd. Two shapes:
//
// - file: two copies of one random file, local and "remote": `ferry check a host:b` against
//   `sha256sum a` then `ssh host sha256sum b`, one after the other;
// - tree: a generated project tree (bench/tree-lib.mjs) and a copy of it (cp -a):
//   `ferry check tree host:copy` against `rsync -a -c -n tree/ host:copy/`.
//
// Both copies are identical, every tool must say so (exit 0, and rsync must list nothing);
// the files are read once before the runs, so all tools hash from the page cache. Registered in
// bench/run.mjs's SCENARIOS: `npm run bench -- check [options]`. See bench/README.md ("check").
import { spawn, execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { fileHash, ferryVersion, fmt, log, machine, makeRandomFile, markdownTable, median, onCleanup, shq, waitForIdle, which, cliOf } from './common.mjs';
import { generateTree } from './tree-lib.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const HELP = `usage: npm run bench -- check [options]

  --shape <s>          file, tree or both (default both)
  --size <size>        the file shape's file (default 4GiB)
  --files <n>          the tree shape's small files (default 20000), with one big file of --big-size
  --big-size <size>    the tree's big file (default 1GiB)
  --runs <k>           runs of each tool, in rounds (default 3)
  --idle-wait <s>      before each run, wait up to this many seconds for 5 idle seconds (default 60; 0: none)
  --ferry <flags>      extra flags for ferry check, e.g. "-s 8" (default none)
  --base <dir>         also time the ferry built in <dir> (a worktree of an older commit), in the same rounds
  --keep               keep the work directory
  --out <dir>          where check.md and check.json go (default bench/results)
`;

/** One timed run of argv; resolves with seconds, exit code and output. */
function timed(argv, env) {
  return new Promise((done) => {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err = (err + d).slice(-4000)));
    child.once('close', (code, signal) => done({ seconds: (performance.now() - t0) / 1000, code: code ?? signal, out, err }));
  });
}

export async function check(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      shape: { type: 'string', default: 'both' },
      size: { type: 'string', default: '4GiB' },
      files: { type: 'string', default: '20000' },
      'big-size': { type: 'string', default: '1GiB' },
      runs: { type: 'string', default: '3' },
      'idle-wait': { type: 'string', default: '60' },
      ferry: { type: 'string', default: '' },
      base: { type: 'string' },
      keep: { type: 'boolean', default: false },
      out: { type: 'string', default: 'bench/results' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  if (!['file', 'tree', 'both'].includes(o.shape)) throw new Error(`--shape must be file, tree or both, got '${o.shape}'`);
  const size = parseSize(o.size);
  const bigBytes = parseSize(o['big-size']);
  const files = Number(o.files);
  const runs = Number(o.runs);
  const idleMs = Number(o['idle-wait']) * 1000;
  for (const tool of ['sha256sum', 'rsync', 'ssh']) if (!which(tool)) throw new Error(`${tool} is not installed: setup.mjs --bench installs the peers`);

  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-check-'));
  const sshd = await startSshd({ dir: join(work, 'sshd') });
  onCleanup(async () => {
    await sshd.stop();
    if (!o.keep) await rm(work, { recursive: true, force: true });
  });
  const host = `${sshd.host}`;
  const ssh = ['ssh', '-F', '/dev/null', '-i', sshd.userKey, '-o', `UserKnownHostsFile=${sshd.knownHosts}`, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-p', String(sshd.port)];
  const ferryOf = (cli) => [process.execPath, cli, 'check', '-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', `${process.execPath} ${cli} serve`, ...o.ferry.split(/\s+/).filter(Boolean)];
  const ferry = ferryOf(CLI);
  // --base: the same check by another build (its CLI and its serve), named by its commit.
  const baseCli = o.base === undefined ? undefined : cliOf(resolve(o.base));
  const baseName = o.base === undefined ? undefined : `ferry check @${execFileSync('git', ['-C', resolve(o.base), 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()}`;
  const baseTool = (a, b) => (baseCli === undefined ? [] : [{ name: baseName, argv: [...ferryOf(baseCli), a, b], ok: (r) => r.code === 0 }]);
  const remote = (path) => `${host}:${sshd.port}:${path}`;

  /** name -> { argv, ok(result) }, per shape. */
  const shapes = [];
  if (o.shape !== 'tree') {
    const a = join(work, 'a.bin');
    const b = join(work, 'b.bin');
    log(`making two ${formatBytes(size)} files`);
    await makeRandomFile(a, size);
    execFileSync('cp', [a, b]);
    await Promise.all([fileHash(a), fileHash(b)]);
    shapes.push({
      name: 'file',
      what: `two copies of one ${formatBytes(size)} file`,
      tools: [
        { name: 'ferry check', argv: [...ferry, a, remote(b)], ok: (r) => r.code === 0 },
        ...baseTool(a, remote(b)),
        { name: 'sha256sum, then ssh sha256sum', argv: ['bash', '-c', `sha256sum ${shq(a)} && ${ssh.map(shq).join(' ')} ${shq(host)} sha256sum ${shq(b)}`], ok: (r) => r.code === 0 && new Set(r.out.match(/^[0-9a-f]{64}/gm)).size === 1 },
      ],
    });
  }
  if (o.shape !== 'file') {
    const tree = join(work, 'tree');
    const copy = join(work, 'copy');
    log(`making a tree of ${files} files and one of ${formatBytes(bigBytes)}`);
    await generateTree(tree, { files, big: 1, bigBytes, seed: 32 });
    execFileSync('cp', ['-a', tree, copy]);
    execFileSync('bash', ['-c', `find ${shq(tree)} ${shq(copy)} -type f -exec cat {} + > /dev/null`]);
    shapes.push({
      name: 'tree',
      what: `a tree of ${files} files and one of ${formatBytes(bigBytes)}, and its copy`,
      tools: [
        { name: 'ferry check', argv: [...ferry, tree, remote(copy)], ok: (r) => r.code === 0 },
        ...baseTool(tree, remote(copy)),
        // -n: nothing is changed; -c: every file's checksum on both sides; --out-format lists what would move.
        { name: 'rsync -a -c -n', argv: ['rsync', '-a', '-c', '-n', '--out-format=%n', '-e', ssh.map(shq).join(' '), `${tree}/`, `${host}:${copy}/`], ok: (r) => r.code === 0 && r.out.trim() === '' },
      ],
    });
  }

  const results = [];
  for (const shape of shapes) {
    for (let round = 0; round < runs; round++) {
      // The order alternates: drift on the machine hits both alike.
      const tools = round % 2 === 0 ? shape.tools : [...shape.tools].reverse();
      for (const tool of tools) {
        if (idleMs > 0) await waitForIdle({ quietSeconds: 5, maxMs: idleMs, log });
        const r = await timed(tool.argv);
        const ok = tool.ok(r);
        log(`${shape.name} ${tool.name}: ${fmt(r.seconds, 2)} s${ok ? '' : ` FAILED (exit ${r.code}): ${r.err.trim().slice(-300)}`}`);
        results.push({ shape: shape.name, tool: tool.name, round, seconds: r.seconds, ok, ...(ok ? {} : { code: r.code, stderr: r.err.slice(-2000) }) });
      }
    }
  }

  const rows = [];
  const summary = [];
  for (const shape of shapes) {
    const med = Object.fromEntries(shape.tools.map((t) => [t.name, median(results.filter((r) => r.shape === shape.name && r.tool === t.name && r.ok).map((r) => r.seconds))]));
    const ferrySeconds = med['ferry check'];
    for (const t of shape.tools) {
      const ratio = t.name === 'ferry check' ? '' : `${fmt(med[t.name] / ferrySeconds, 2)}x`;
      rows.push([shape.name, t.name, fmt(med[t.name], 2), ratio]);
    }
    summary.push({ shape: shape.name, what: shape.what, medians: med });
  }
  const md = [
    '# Benchmark: check',
    '',
    `\`npm run bench -- check ${argv.join(' ')}\` on ${new Date().toISOString().slice(0, 10)}, ferry ${ferryVersion()}.`,
    '',
    ...shapes.map((s) => `- ${s.name}: ${s.what}`),
    '',
    markdownTable(['shape', 'tool', 'median s', 'slower than ferry'], rows),
    '',
    `${runs} runs each; every run must find the copies identical (failed runs are left out of the medians and listed in check.json).`,
    '',
  ].join('\n');
  await mkdir(resolve(o.out), { recursive: true });
  await writeFile(join(resolve(o.out), 'check.md'), md);
  await writeFile(join(resolve(o.out), 'check.json'), JSON.stringify({ scenario: 'check', date: new Date().toISOString(), ferry: ferryVersion(), machine: machine(), options: o, summary, runs: results }, null, 1) + '\n');
  process.stdout.write(md);
  if (results.some((r) => !r.ok)) process.exitCode = 1;
}
