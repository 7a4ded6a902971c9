// Benchmark scenario `delta`: re-syncing a big file of which one part changed, through one sshd on
// 127.0.0.1: `ferry cp --delta` (and with --inplace) against `rsync --inplace --no-whole-file`.
//
// `export async function delta(argv)`, registered in bench/run.mjs's SCENARIOS.
//
// Setup (not timed): a random source; the old version (the source before the change) kept aside;
// then `--change` bytes of the source, in its middle, replaced by other random bytes. Each run
// (not timed) copies the old version to the destination and syncs, waits for an idle machine and
// empties ferry's state directory; then (timed) one tool brings the destination up to date. The
// destination must then hash as the source does. ferry's `done` event says how many ranges it
// sent and reused; rsync's --stats how many bytes it sent as literal data. See bench/README.md.
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { ferryTool, ferryVersion, fileHash, fmt, log, machine, makeRandomFile, markdownTable, measure, median, onCleanup, shq, syncDisks, waitForIdle, which, cliOf } from './common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const DEFAULT_CONFIGS = ['rsync', 'ferry --delta', 'ferry --delta --inplace'];

const HELP = `usage: npm run bench -- delta [options]

  --size <size>       file size (default 4GiB)
  --change <size>     bytes changed in the middle of the file (default 1MiB)
  --runs <n>          rounds; each round runs every tool once (default 3)
  --configs <list>    comma-separated: rsync (rsync --inplace --no-whole-file over ssh), or ferry
                      flags after the word ferry (default "${DEFAULT_CONFIGS.join(',')}")
  --idle-wait <s>     before each run, wait up to this many seconds for 5 idle seconds (default 60)
  --out <dir>         where delta.md and delta.json go (default bench/results)
`;

/** Replaces `length` bytes at `offset` of a file by random ones. */
async function changeBytes(path, offset, length) {
  const fh = await open(path, 'r+');
  try {
    const buf = Buffer.alloc(length);
    randomFillSync(buf);
    await fh.write(buf, 0, length, offset);
  } finally {
    await fh.close();
  }
}

function toolOf(entry, ctx) {
  const { userKey, knownHosts, port, user } = ctx;
  const host = '127.0.0.1';
  if (entry === 'rsync') {
    const ssh = ['ssh', '-F', '/dev/null', '-i', userKey, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'Ciphers=aes128-gcm@openssh.com', '-p', String(port)].map(shq).join(' ');
    return {
      name: 'rsync --inplace --no-whole-file',
      argv: ({ src, dst }) => ['rsync', '--inplace', '--no-whole-file', '--stats', '-e', ssh, src, `${user}@${host}:${dst}`],
      // "Literal data: 1,048,576 bytes"
      moved: (stdout) => ({ movedBytes: Number((/Literal data: ([\d,]+)/.exec(stdout)?.[1] ?? '').replace(/,/g, '')) || undefined }),
    };
  }
  const ferry = ferryTool(entry, CLI, 'rsync');
  return {
    name: ferry.name,
    argv: ({ src, dst, stateDir }) => ferry.cp({ from: src, to: `${user}@${host}:${port}:${dst}`, userKey, knownHosts, stateDir, output: ['--json'] }),
    moved: (stdout) => {
      const done = stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l))
        .find((e) => e.type === 'done');
      return done ? { movedBytes: done.movedBytes, rangesSent: done.rangesSent, rangesReused: done.rangesReused, ranges: done.ranges } : {};
    },
  };
}

export async function delta(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '4GiB' },
      change: { type: 'string', default: '1MiB' },
      runs: { type: 'string', default: '3' },
      configs: { type: 'string', default: DEFAULT_CONFIGS.join(',') },
      'idle-wait': { type: 'string', default: '60' },
      out: { type: 'string', default: 'bench/results' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    process.stdout.write(HELP);
    return;
  }
  const size = parseSize(o.size);
  const change = parseSize(o.change);
  const rounds = Number(o.runs);
  const idleWaitMs = Number(o['idle-wait']) * 1000;
  if (change > size) throw new Error('--change must not exceed --size');
  if (o.configs.split(',').includes('rsync') && !which('rsync')) throw new Error('rsync is not installed');

  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-delta-'));
  onCleanup(() => rm(work, { recursive: true, force: true }));
  const sshd = await startSshd();
  onCleanup(() => sshd.stop());
  const tools = o.configs.split(',').map((e) => toolOf(e.trim(), sshd));

  const src = join(work, 'source.bin');
  const old = join(work, 'old.bin');
  const dst = join(work, 'dst', 'file.bin');
  await mkdir(join(work, 'dst'));
  log(`making a ${formatBytes(size)} source and its old version`);
  await makeRandomFile(src, size);
  await copyFile(src, old);
  // In the middle, not aligned to ferry's ranges: it may straddle two of them.
  const changeAt = Math.floor(size / 2 / 4096) * 4096 + 12_288;
  await changeBytes(src, Math.min(changeAt, size - change), change);
  syncDisks();
  const want = await fileHash(src);

  const results = [];
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < tools.length; k++) {
      const tool = tools[(k + round) % tools.length];
      await copyFile(old, dst);
      const stateDir = join(work, 'state');
      await rm(stateDir, { recursive: true, force: true });
      syncDisks();
      await waitForIdle({ quietSeconds: 5, maxMs: idleWaitMs, log });
      const m = await measure(tool.argv({ src, dst, stateDir }), { sshdPid: sshd.pid, timeoutMs: Math.max(300_000, (size / 5e6) * 1000), stdout: true });
      const syncSeconds = syncDisks();
      let error = m.error;
      if (!error && (await fileHash(dst)) !== want) error = 'the destination differs from the source';
      const run = { round, tool: tool.name, seconds: m.seconds, syncSeconds, cpuSeconds: m.cpuSeconds, ...tool.moved(m.stdout ?? ''), ...(error ? { error } : {}) };
      log(`${tool.name}: ${fmt(m.seconds, 1)} s${error ? ` FAILED: ${error}` : ''}`);
      results.push(run);
    }
  }

  const rows = tools.map((t) => {
    const ok = results.filter((r) => r.tool === t.name && !r.error);
    const last = ok.at(-1) ?? {};
    return { movedBytes: last.movedBytes, rangesSent: last.rangesSent, rangesReused: last.rangesReused, name: t.name, seconds: median(ok.map((r) => r.seconds)), withSync: median(ok.map((r) => r.seconds + r.syncSeconds)), cpu: median(ok.map((r) => r.cpuSeconds)), runs: ok.length };
  });
  const rsync = rows.find((r) => r.name.startsWith('rsync'));
  const table = markdownTable(
    ['tool', 'runs', 'median s', 's incl. sync', 'CPU s', 'moved', 'ranges sent / reused', 'rsync s / this'],
    rows.map((r) => [r.name, String(r.runs), fmt(r.seconds, 1), fmt(r.withSync, 1), fmt(r.cpu, 1), r.movedBytes === undefined ? '-' : formatBytes(r.movedBytes), r.rangesSent === undefined ? '-' : `${r.rangesSent} / ${r.rangesReused}`, rsync && r !== rsync ? fmt(rsync.seconds / r.seconds, 2) : '-']),
  );
  const failed = results.filter((r) => r.error);
  const md = [
    '# Benchmark: delta (one changed part of a big file, re-synced by ferry cp --delta)',
    '',
    `${formatBytes(size)} file, ${formatBytes(change)} changed in the middle, ${rounds} round(s); ferry ${ferryVersion()}.`,
    `Command: \`node bench/run.mjs delta ${argv.map(shq).join(' ')}\``,
    '',
    table,
    '',
    '- Each run starts from the old version at the destination (copied there and synced, not timed).',
    '- ferry fsyncs before it exits; rsync does not (s incl. sync adds a `sync` right after).',
    ...(failed.length > 0 ? ['', 'Failed runs:', ...failed.map((r) => `- ${r.tool} (round ${r.round}): ${r.error}`)] : []),
    '',
  ].join('\n');
  await mkdir(resolve(o.out), { recursive: true });
  await writeFile(join(resolve(o.out), 'delta.md'), md);
  await writeFile(join(resolve(o.out), 'delta.json'), JSON.stringify({ scenario: 'delta', date: new Date().toISOString(), ferry: ferryVersion(), machine: machine(), options: { size, change, rounds, configs: tools.map((t) => t.name) }, results }, null, 1) + '\n');
  process.stdout.write(md);
  if (failed.length > 0) process.exitCode = 1;
}
