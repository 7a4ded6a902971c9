// Benchmark scenario `sync` (issue 32): re-syncing a copy that is almost up to date, ferry sync
// against rsync over the same loopback sshd. Two shapes:
//   tree: the `tree` scenario's generated tree, copied once by each tool; then each round changes
//         1% of its files and adds 1% new ones, and each tool brings its copy up to date
//         (`ferry sync` with no flags, `rsync -a`); a rerun with nothing changed is timed too.
//   file: one big file (default 4 GiB) copied once by each tool; each round rewrites one MiB in
//         its middle and each tool brings its copy up to date (`ferry sync`, `rsync --inplace
//         --no-whole-file`), and the ranges ferry sent are counted.
// After every run the copy is compared with the source. Registered in bench/run.mjs's SCENARIOS:
// `npm run bench -- sync [options]`. See bench/README.md ("sync").
import { cp, mkdir, mkdtemp, open, readFile, readdir, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { ferryVersion, fileHash, fmt, leanLogin, log, machine, makeRandomFile, markdownTable, measure, median, onCleanup, shq, syncDisks, waitForIdle, cliOf } from './common.mjs';
import { compareTrees } from './tree-lib.mjs';
import { sourceTree } from './tree.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

const HELP = `usage: npm run bench -- sync [options]

  --shape <s>          tree, file or both (default both)
  --files <n>          small files of the tree (default 20000; the tree scenario's generator)
  --big <n>            big files in the tree (default 1), each --big-size (default 256MiB)
  --big-size <size>
  --file-size <size>   the file shape's file (default 4GiB)
  --runs <k>           rounds (default 3); each changes the source and runs every tool once
  --lean-login         sessions of the bench's sshd read no shell start-up files
  --idle-wait <s>      before each run, wait up to this many seconds for 5 idle seconds (default 60)
  --keep               keep the work directory
  --out <dir>          where sync.md and sync.json go (default bench/results)
  --name <name>        base name of the result files (default sync)
`;

/** Every `step`-th regular file of `root` (sorted paths), starting at `from`. */
async function everyNth(root, step, from) {
  const files = [];
  const walk = async (rel) => {
    for (const e of (await readdir(join(root, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) files.push(p);
    }
  };
  await walk('');
  return files.filter((_, i) => i % step === from % step);
}

/** Round `round`'s change to the tree: 1% of the files grow by a line, 1% new files appear. */
async function changeTree(src, round) {
  const changed = await everyNth(src, 100, round * 7);
  for (const p of changed) await appendFile(join(src, p), `round ${round}\n`);
  const beside = await everyNth(src, 100, round * 7 + 50);
  for (const p of beside) await writeFile(join(src, `${p}.new${round}`), `added in round ${round}: ${p}\n`);
  return { changed: changed.length, added: beside.length };
}

/** Round `round`'s change to the big file: one MiB of new bytes in its middle. */
async function changeFile(path, size, round) {
  const fh = await open(path, 'r+');
  try {
    const mib = Buffer.alloc(1 << 20, (round * 37 + 11) & 0xff);
    await fh.write(mib, 0, mib.length, Math.floor(size / 2 / (1 << 20)) * (1 << 20) + round * 4096);
  } finally {
    await fh.close();
  }
}

export async function sync(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      shape: { type: 'string', default: 'both' },
      files: { type: 'string', default: '20000' },
      big: { type: 'string', default: '1' },
      'big-size': { type: 'string', default: '256MiB' },
      'file-size': { type: 'string', default: '4GiB' },
      runs: { type: 'string', default: '3' },
      'lean-login': { type: 'boolean', default: false },
      'idle-wait': { type: 'string', default: '60' },
      keep: { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
      name: { type: 'string', default: 'sync' },
      help: { type: 'boolean', default: false },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  const shapes = o.shape === 'both' ? ['tree', 'file'] : [o.shape];
  if (!shapes.every((s) => s === 'tree' || s === 'file')) throw new Error(`--shape must be tree, file or both, got "${o.shape}"`);
  const runs = Number(o.runs);
  const idleWaitMs = Number(o['idle-wait']) * 1000;
  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-sync-'));
  onCleanup(() => (o.keep ? log(`kept ${work}`) : rm(work, { recursive: true, force: true })));
  const sshd = await startSshd({ dir: join(work, 'sshd'), extraConfig: await leanLogin(o['lean-login'], work) });
  onCleanup(() => sshd.stop({ keepDir: o.keep }));
  const at = `${sshd.user}@${sshd.host}`;
  const sshLine = ['ssh', '-F', '/dev/null', '-i', sshd.userKey, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${sshd.knownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'Ciphers=aes128-gcm@openssh.com', '-p', String(sshd.port)].map(shq).join(' ');
  const ferrySync = (src, dst) => [process.execPath, CLI, 'sync', src, `${at}:${sshd.port}:${dst}`, '-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', `${shq(process.execPath)} ${shq(CLI)} serve`, '--state-dir', join(work, 'state'), '--json'];
  const rsync = (flags, src, dst) => ['rsync', ...flags, '-e', sshLine, src, `${at}:${dst}`];
  const run = async (label, argv) => {
    if (idleWaitMs > 0) await waitForIdle({ quietSeconds: 5, maxMs: idleWaitMs, log });
    const m = await measure(argv, { sshdPid: sshd.pid, timeoutMs: 3_600_000, stdout: true });
    if (m.error) throw new Error(`${label}: ${m.error}`);
    log(`${label}: ${fmt(m.seconds, 2)} s`);
    return m;
  };
  const results = [];

  if (shapes.includes('tree')) {
    const tree = await sourceTree({ files: Number(o.files), big: Number(o.big), bigBytes: parseSize(o['big-size']), seed: 1, smallOnly: false });
    const src = join(work, 'tree-src');
    await cp(tree.path, src, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
    const dst = { ferry: join(work, 'tree-ferry'), rsync: join(work, 'tree-rsync') };
    const tools = [
      ['ferry sync', () => ferrySync(src, dst.ferry), dst.ferry],
      ['rsync -a', () => rsync(['-a'], `${src}/`, `${dst.rsync}/`), dst.rsync],
    ];
    syncDisks();
    for (const [name, argv] of tools) await run(`tree first copy, ${name}`, argv());
    for (let round = 0; round < runs; round++) {
      const change = round === 0 ? { changed: 0, added: 0 } : await changeTree(src, round);
      syncDisks();
      for (const [name, argv, d] of tools) {
        const m = await run(`tree round ${round} (${change.changed} changed, ${change.added} added), ${name}`, argv());
        const diff = await compareTrees(src, d, { owner: false });
        const done = name.startsWith('ferry') ? JSON.parse(m.stdout.split('\n').filter((l) => l.includes('"tree.done"'))[0] ?? '{}') : undefined;
        results.push({ shape: 'tree', round, nothingChanged: round === 0, ...change, tool: name, seconds: m.seconds, cpuSeconds: m.cpuSeconds, differences: Object.fromEntries(Object.entries(diff.differences).map(([k, v]) => [k, v.length])), ...(done ? { sentFiles: done.files, sentBytes: done.bytes, unchanged: done.unchanged } : {}) });
      }
    }
  }

  if (shapes.includes('file')) {
    const size = parseSize(o['file-size']);
    const dir = join(work, 'file');
    await mkdir(dir, { recursive: true });
    const src = join(dir, 'big.bin');
    log(`writing a ${formatBytes(size)} source`);
    await makeRandomFile(src, size);
    const dst = { ferry: join(dir, 'ferry.bin'), rsync: join(dir, 'rsync.bin') };
    const tools = [
      ['ferry sync', () => ferrySync(src, dst.ferry), dst.ferry],
      ['rsync --inplace --no-whole-file', () => rsync(['-a', '--inplace', '--no-whole-file'], src, dst.rsync), dst.rsync],
    ];
    syncDisks();
    for (const [name, argv] of tools) await run(`file first copy, ${name}`, argv());
    for (let round = 1; round <= runs; round++) {
      await changeFile(src, size, round);
      syncDisks();
      const want = await fileHash(src);
      for (const [name, argv, d] of tools) {
        const m = await run(`file round ${round}, ${name}`, argv());
        const same = (await fileHash(d)) === want;
        if (!same) throw new Error(`${name}: the copy differs from the source after round ${round}`);
        const events = name.startsWith('ferry') ? m.stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l)) : [];
        const done = events.find((e) => e.type === 'done');
        results.push({ shape: 'file', round, tool: name, seconds: m.seconds, cpuSeconds: m.cpuSeconds, ...(done ? { movedBytes: done.movedBytes, rangesSent: done.rangesSent ?? events.filter((e) => e.type === 'range.done').length, ranges: done.ranges } : {}) });
      }
    }
  }

  const rows = [];
  const of = (shape, tool, pick) => results.filter((r) => r.shape === shape && r.tool === tool && pick(r));
  const med = (rs) => median(rs.map((r) => r.seconds));
  /** Differences left by a tool's runs, by kind over all its runs: "none", or "hardlink 100". */
  const kinds = (rs) => {
    const n = {};
    for (const r of rs) for (const [k, c] of Object.entries(r.differences)) n[k] = Math.max(n[k] ?? 0, c);
    return Object.entries(n).map(([k, c]) => `${k} ${c}`).join(', ') || 'none';
  };
  if (shapes.includes('tree')) {
    for (const [what, pick] of [['nothing changed', (r) => r.nothingChanged], ['1% changed + 1% added', (r) => !r.nothingChanged]]) {
      const f = of('tree', 'ferry sync', pick);
      const r = of('tree', 'rsync -a', pick);
      if (f.length === 0) continue;
      rows.push(['tree', what, `${fmt(med(f), 2)} s`, `${fmt(med(r), 2)} s`, `${fmt(med(r) / med(f), 2)}x`, `${f.map((x) => x.sentFiles).join(', ')} files`, kinds(f), kinds(r)]);
    }
  }
  if (shapes.includes('file')) {
    const f = of('file', 'ferry sync', () => true);
    const r = of('file', 'rsync --inplace --no-whole-file', () => true);
    rows.push(['file', `1 MiB of ${o['file-size']} changed`, `${fmt(med(f), 2)} s`, `${fmt(med(r), 2)} s`, `${fmt(med(r) / med(f), 2)}x`, `${f.map((x) => `${x.rangesSent}/${x.ranges} ranges`).join(', ')}`, 'none (hash)', 'none (hash)']);
  }
  const m = machine();
  const md = [
    `# Benchmark: sync`,
    '',
    `${new Date().toISOString().slice(0, 10)}, ferry ${ferryVersion()}, ${m.nproc} cores, loopback sshd; ${runs} rounds. ferry sync with no flags; rsync over ssh with aes128-gcm.`,
    `tree: ${o.files} files + ${o.big} x ${o['big-size']}; file: ${o['file-size']}. Speed-up: rsync's median time / ferry's (above 1: ferry is faster).`,
    '',
    markdownTable(['shape', 'change', 'ferry sync', 'rsync', 'speed-up', 'ferry sent', 'ferry: differences after', 'rsync: differences after'], rows),
    '',
  ].join('\n');
  await mkdir(resolve(o.out), { recursive: true });
  await writeFile(join(resolve(o.out), `${o.name}.md`), md);
  await writeFile(join(resolve(o.out), `${o.name}.json`), JSON.stringify({ scenario: 'sync', date: new Date().toISOString(), ferry: ferryVersion(), machine: m, options: o, results }, null, 1) + '\n');
  process.stdout.write(md);
}
