// Benchmark scenario `tree` (issue 31): a whole generated project tree copied through one
// loopback sshd by ferry and by the tools a user reaches for (tar over ssh, rsync, scp, sftp),
// push and pull; after every run the destination is compared with the source (bench/tree-lib.mjs)
// and the differences are counted by kind. With --wan the tools run in the client namespace of
// the wan testbed (bench/wan-testbed.mjs) and the sshd in its server namespace, across the
// shaped link. Registered in bench/run.mjs's SCENARIOS: `npm run bench -- tree [options]`. See
// bench/README.md ("tree").
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { CLK_TCK, SAMPLE_MS, ferryTool, ferryVersion, fmt, isNoisy, journaledDir, leanLogin, log, machine, markdownTable, measure, median, onCleanup, runRounds, shq, syncDisks, waitForIdle, which, cliOf } from './common.mjs';
import { compareTrees, generateTree } from './tree-lib.mjs';
import { openWanTestbed } from './wan-testbed.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = cliOf(ROOT);
// The built core package, by path: bench/ is not a workspace, so '@ferry/core' does not resolve here.
const { parseSize, formatBytes } = await import(pathToFileURL(join(ROOT, 'packages/core/dist/index.js')).href);

/** Every peer of issue 31, and ferry as a user types it. */
const DEFAULT_PEERS = ['tar', 'rsync -a', 'rsync -aH', 'scp -r', 'scp -rp', 'sftp -r', 'ferry'];
const PEER_NAMES = 'tar, rsync -a, rsync -aH, scp -r, scp -rp, sftp -r';
/** Where generated trees are kept between runs, beside the other scenarios' temporary work. */
const CACHE_DIR = join(tmpdir(), 'ferry-bench-tree');

const HELP = `usage: npm run bench -- tree [options]

  --files <n>          small files in the tree (default 200000); directories (files/40),
                       symlinks (1%) and extra hard links (0.5%) scale with it
  --big <n>            big files (default 4), each --big-size
  --big-size <size>    size of each big file (default 1GiB)
  --no-big             no big files: the small-files-alone shape
  --small-only         the scale shape (issue 31, a million files): regular files only,
                       sizes uniform in 0-4 KiB, one directory per 1,000 files; no big
                       or sparse files, no links. Memory (peak RSS per process) and the
                       journal's size are the figures to read. Contents are not compared
                       (names, types, sizes, modes and times are)
  --seed <n>           the tree's seed (default 1)
  --direction <d>      push, pull or both (default both)
  --runs <k>           rounds; each round runs every tool once per direction (default 3)
  --peers <list>       comma-separated tools (default "${DEFAULT_PEERS.join(',')}"):
                       ${PEER_NAMES}, or ferry with optional flags
                       ('ferry -p'); every ferry entry runs \`ferry cp -r\`;
                       'ferry-agents [flags]' (push): the batches through two agents
                       started by --launcher ssh over the job's nats-server
  --lean-login         sessions of the bench's sshd read no shell start-up files
                       (bench/README.md, "Heavy shell start-up files")
  --idle-wait <s>      before each run, wait up to this many seconds for 5 idle seconds
                       (default 60; 0: no wait)
  --retry-noisy <n>    repeat a run disturbed by other load up to n times (default 1)
  --wan                through the wan testbed (needs root): the tools in one network
                       namespace, the sshd in another, each TCP stream capped at
                       --stream-mbit and the link at --link-mbit (bench/wan-testbed.mjs);
                       adds each tool's share of the link and the port buckets
                       (TCP streams) that carried data
  --link-mbit <n>      with --wan: the link's total rate, Mbit/s (default 2000)
  --stream-mbit <n>    with --wan: the cap of one TCP stream, Mbit/s (default 200)
  --dest-fs auto|same  auto (default): where the work directory is on ext4 without a
                       journal and this runs as root, the destinations go to a journaled
                       ext4 image loop-mounted for the run (creating files right after
                       a run removed thousands is slow on such a file system);
                       same: next to the source, whatever the file system
  --keep               keep the work directory (sshd, the last run's destination)
  --out <dir>          where tree.md and tree.json go (default bench/results)
  --name <name>        base name of the result files (default tree, with --wan tree-wan)

The tree is generated once (bench/tree-lib.mjs) into ${CACHE_DIR}/
under a name with its seed and shape, and reused by later runs; remove it by hand.
`;

// ---------------------------------------------------------------------------
// The source tree, generated once per seed and shape.

/** A size as a short word for a file name: 1GiB, 256MiB, or bytes. */
function sizeWord(bytes) {
  if (bytes % 2 ** 30 === 0) return `${bytes / 2 ** 30}GiB`;
  if (bytes % 2 ** 20 === 0) return `${bytes / 2 ** 20}MiB`;
  return String(bytes);
}

/**
 * Disk bytes a tree of this shape takes, a little high: small files average ~20 KiB (log-normal,
 * median 16 KiB) plus up to a block each, a directory's block, sparse files as they arrive when a
 * tool fills them in (64 MiB each).
 */
function estimateBytes({ files, big, bigBytes, smallOnly }) {
  // The scale shape: 2 KiB on average, a block and an inode each, a directory per 1,000.
  if (smallOnly) return files * (2048 + 4096 + 1024) + (files / 1000) * 4096;
  const sparse = Math.min(5, Math.max(1, Math.floor(files / 40_000)));
  return files * 24 * 1024 + (files / 40) * 4096 + big * bigBytes + sparse * 64 * 2 ** 20;
}

async function freeBytes(dir) {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

/**
 * The cached source tree for this shape: generated now when it is not there yet (a tree without
 * its description file is a half-made one and is made again). Fails before writing anything
 * when the disk cannot hold the tree (if it is new) and one copy of it.
 */
export async function sourceTree({ files, big, bigBytes, seed, smallOnly }) {
  await mkdir(CACHE_DIR, { recursive: true });
  const name = smallOnly ? `tree-seed${seed}-files${files}-small` : `tree-seed${seed}-files${files}-big${big}x${sizeWord(bigBytes)}`;
  const path = join(CACHE_DIR, name);
  const described = `${path}.json`;
  const cached = existsSync(described);
  const need = estimateBytes({ files, big, bigBytes, smallOnly }) * (cached ? 1 : 2) + 2 ** 30;
  const free = await freeBytes(CACHE_DIR);
  if (free < need) {
    throw new Error(
      `not enough free space in ${CACHE_DIR}: ${cached ? 'one copy of the cached tree' : 'the tree and one copy of it'} need about ${formatBytes(need)} (1 GiB spare included), ${formatBytes(free)} free; ` +
        'use a smaller --files or --big-size, --no-big, or free some space (other cached trees there can go)',
    );
  }
  if (cached) {
    log(`reusing the tree in ${path}`);
    return { path, name, ...JSON.parse(await readFile(described, 'utf8')) };
  }
  await rm(path, { recursive: true, force: true });
  log(`generating ${files} files${smallOnly ? ' of 0-4 KiB' : `, ${big} x ${formatBytes(bigBytes)}`} into ${path} (once; later runs reuse it)`);
  const t0 = Date.now();
  const shape = smallOnly ? { big: 0, sparse: 0, links: false, maxBytes: 4096, filesPerDir: 1000 } : { big, bigBytes };
  const counts = await generateTree(path, { files, seed, ...shape });
  syncDisks(); // its writeback must not land in the first run
  const meta = { seed, ...counts, generatedSeconds: (Date.now() - t0) / 1000 };
  await writeFile(described, JSON.stringify(meta, null, 1) + '\n');
  log(`generated in ${fmt(meta.generatedSeconds)} s: ${JSON.stringify(counts)}`);
  return { path, name, ...meta };
}

// ---------------------------------------------------------------------------
// The tools. Each argv builder gets one run's endpoints: the source tree `src` (a directory
// named `name`), the directory `dstParent` the copy goes into (as `dstParent/name`), and the
// direction. Both ends are on this machine; the remote one is reached through the bench's sshd.

function treeTool(entry, ctx) {
  const { userKey, knownHosts, port, user, host, wan } = ctx;
  const at = `${user}@${host}`;
  // The OpenSSH options of the loopback scenario (run.mjs): no ssh_config, key auth only,
  // AES-128-GCM, the cipher ferry's ssh2 picks first on CPUs with AES-NI.
  const sshOpts = [
    '-F', '/dev/null', '-i', userKey, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'Ciphers=aes128-gcm@openssh.com',
  ];
  const sshLine = ['ssh', ...sshOpts, '-p', String(port)].map(shq).join(' ');
  if (entry === 'tar') {
    return {
      name: 'tar',
      needs: 'tar',
      argv: ({ src, dstParent, push }) => {
        const pack = `tar -C ${shq(dirname(src))} -cf - ${shq(basename(src))}`;
        const unpack = `tar -C ${shq(dstParent)} -xf -`;
        const line = push ? `${pack} | ${sshLine} ${shq(at)} ${shq(unpack)}` : `${sshLine} ${shq(at)} ${shq(pack)} | ${unpack}`;
        return ['bash', '-c', `set -o pipefail; ${line}`];
      },
    };
  }
  const rsync = /^rsync (-aH?)$/.exec(entry);
  if (rsync) {
    return {
      name: entry,
      needs: 'rsync',
      // No trailing slash on the source: the tree arrives as dstParent/name.
      argv: ({ src, dstParent, push }) => ['rsync', rsync[1], '-e', sshLine, ...(push ? [src, `${at}:${dstParent}/`] : [`${at}:${src}`, `${dstParent}/`])],
    };
  }
  const scp = /^scp (-rp?)$/.exec(entry);
  if (scp) {
    return {
      name: entry,
      needs: 'scp',
      argv: ({ src, dstParent, push }) => ['scp', '-q', scp[1], ...sshOpts, '-P', String(port), ...(push ? [src, `${at}:${dstParent}/`] : [`${at}:${src}`, `${dstParent}/`])],
    };
  }
  if (entry === 'sftp -r' || entry === 'sftp') {
    return {
      name: 'sftp -r',
      needs: 'sftp',
      argv: async ({ src, dstParent, push, work }) => {
        const batch = join(work, 'sftp-batch');
        const dst = join(dstParent, basename(src));
        await writeFile(batch, `${push ? 'put' : 'get'} -r "${src}" "${dst}"\n`);
        return ['sftp', '-q', '-b', batch, ...sshOpts, '-P', String(port), at];
      },
    };
  }
  // `ferry-agents [flags]`: the batches through agents that ssh(1) starts on this machine through
  // the bench's sshd (--launcher ssh, two agents unless the flags say otherwise), the way
  // agents on other nodes take them: a work queue on the job's nats-server. Push only.
  const agents = /^ferry-agents(?:\s+(.*))?$/.exec(entry);
  // Its agents would log in to the server namespace and copy from there to its own sshd, never crossing the link.
  if (agents && wan) throw new Error("--peers: 'ferry-agents' does not cross the wan link (its agents would run beside the sshd); use ferry with agents of its own, e.g. 'ferry -a 2 -s 8'");
  const ferry = ferryTool(agents ? `ferry ${agents[1] ?? ''}`.trim() : entry, CLI, PEER_NAMES);
  return {
    name: agents ? `ferry-agents${agents[1] ? ` ${agents[1]}` : ''}` : ferry.name,
    needs: null,
    argv: ({ src, dstParent, push, stateDir }) => {
      const argv = ferry.cp({
        ...(push ? { from: src, to: `${at}:${port}:${dstParent}/` } : { from: `${at}:${port}:${src}`, to: `${dstParent}/` }),
        userKey, knownHosts, stateDir, output: ['--quiet'],
      });
      // `ferry cp -r SRC_DIR host:DST_DIR` (issue 31), as a user types it: -r right after cp.
      argv.splice(argv.indexOf('cp') + 1, 0, '-r');
      if (agents) {
        if (!push) throw new Error('ferry-agents: a pull has no batches over agents yet (README, "Not yet")');
        // The agents run the same node and build as the coordinator.
        const agentCmd = argv.slice(argv.findIndex((a) => a === process.execPath || /(^|\/)node$/.test(a)), argv.indexOf('cp')).map(shq).join(' ');
        argv.push('--launcher', 'ssh', '--hosts', host, '--ssh-option', `Port=${port}`, '--ssh-option', `IdentityFile=${userKey}`, '--ssh-option', `UserKnownHostsFile=${knownHosts}`,
          '--nats-listen', '127.0.0.1', '--nats-advertise', '127.0.0.1', '--agent-cmd', agentCmd, ...(/(^|\s)(-a|--agents)\b/.test(agents[1] ?? '') ? [] : ['-a', '2']));
      }
      return argv;
    },
  };
}

// ---------------------------------------------------------------------------
// Differences.

/** "mtime 20123, hardlink 200" from { kind: count }; "none" when empty. */
const kindsText = (counts) => Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(', ') || 'none';

/**
 * Per kind, the counts over several runs as one word: "200", or "198-200" when the runs
 * differed.
 */
function kindsOverRuns(runs) {
  const kinds = [...new Set(runs.flatMap((r) => Object.keys(r.differences)))];
  if (runs.length === 0) return '-';
  return kinds.map((k) => {
    const ns = runs.map((r) => r.differences[k] ?? 0);
    const lo = Math.min(...ns);
    const hi = Math.max(...ns);
    return `${k} ${lo === hi ? lo : `${lo}-${hi}`}`;
  }).join(', ') || 'none';
}

/**
 * The destination against the source: counts of each kind of difference (tree-lib's kinds,
 * `missing` being the whole tree when it never arrived), three example paths each, and
 * `stray`: names in dstParent other than the tree's (a tool that put the tree elsewhere).
 */
async function differencesOf(source, dstParent, sourceHashes, content) {
  const dst = join(dstParent, source.name);
  const stray = (await readdir(dstParent)).filter((n) => n !== source.name);
  if (!existsSync(dst)) return { differences: { missing: source.entries, ...(stray.length ? { stray: stray.length } : {}) }, examples: { missing: ['(the whole tree)'], ...(stray.length ? { stray: stray.slice(0, 3) } : {}) } };
  const r = await compareTrees(source.path, dst, { sourceHashes, content });
  const differences = {};
  const examples = {};
  for (const [kind, paths] of Object.entries(r.differences)) {
    differences[kind] = paths.length;
    examples[kind] = paths.slice(0, 3).map((p) => p || '.');
  }
  if (stray.length) {
    differences.stray = stray.length;
    examples.stray = stray.slice(0, 3);
  }
  return { differences, examples };
}

/** Bytes of the tree journals (tree.ndjson) a run left under ferry's state directory. */
async function journalBytesIn(stateDir) {
  let total = 0;
  const walk = async (dir) => {
    for (const d of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (d.isDirectory()) await walk(join(dir, d.name));
      else if (d.name === 'tree.ndjson') total += (await stat(join(dir, d.name))).size;
    }
  };
  await walk(stateDir);
  return total;
}

/**
 * With --wan, after a run: what crossed the link in the data's direction (`side`: who sent it)
 * since `before`, and the port buckets that carried more than 1 MB of it (one per TCP
 * connection: the testbed gives each its own); then every process of the run is gone from the
 * namespaces (killed after 10 s, and named).
 */
async function wanView(bed, side, before, seconds) {
  const leftovers = await bed.settle();
  const wireBytes = bed.wireBytes(side) - before.bytes;
  const bucketMB = bed.bucketMB(before.classes, bed.classBytes(side));
  // The wire's rate second by second: where a run filled the link and where it did not.
  const perSecond = [];
  for (let t = 1, i = 0, last = 0; t <= Math.ceil(seconds); t++) {
    while (i < before.samples.length - 1 && before.samples[i + 1][0] <= t) i++;
    const bytes = t >= seconds ? wireBytes : (before.samples[i]?.[1] ?? 0);
    perSecond.push(Math.round((bytes - last) / 1e6));
    last = bytes;
  }
  return { wireBytes, wireMBps: wireBytes / 1e6 / seconds, buckets: Object.keys(bucketMB).length, bucketMB, perSecondMB: perSecond, leftovers };
}

// ---------------------------------------------------------------------------
// The scenario.

export async function tree(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      files: { type: 'string', default: '200000' },
      big: { type: 'string', default: '4' },
      'big-size': { type: 'string', default: '1GiB' },
      'no-big': { type: 'boolean', default: false },
      'small-only': { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      direction: { type: 'string', default: 'both' },
      runs: { type: 'string', default: '3' },
      peers: { type: 'string', default: DEFAULT_PEERS.join(',') },
      'lean-login': { type: 'boolean', default: false },
      'idle-wait': { type: 'string', default: '60' },
      'retry-noisy': { type: 'string', default: '1' },
      wan: { type: 'boolean', default: false },
      'link-mbit': { type: 'string', default: '2000' },
      'stream-mbit': { type: 'string', default: '200' },
      'dest-fs': { type: 'string', default: 'auto' },
      keep: { type: 'boolean', default: false },
      out: { type: 'string', default: 'bench/results' },
      name: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) return void process.stdout.write(HELP);
  o.name ??= o.wan ? 'tree-wan' : 'tree';
  const count = (flag, min) => {
    const n = Number(o[flag]);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${flag} must be a whole number of at least ${min}, got '${o[flag]}'`);
    return n;
  };
  const files = count('files', 1);
  const smallOnly = o['small-only'];
  const big = o['no-big'] || smallOnly ? 0 : count('big', 0);
  const bigBytes = parseSize(o['big-size']);
  if (!bigBytes) throw new Error(`--big-size must be a size like 1GiB or 256MiB, got '${o['big-size']}'`);
  const seed = count('seed', 0);
  const runs = count('runs', 1);
  const retryNoisy = count('retry-noisy', 0);
  const idleWait = Number(o['idle-wait']);
  if (!(idleWait >= 0)) throw new Error(`--idle-wait must be a number of seconds, got '${o['idle-wait']}'`);
  if (!['auto', 'same'].includes(o['dest-fs'])) throw new Error(`--dest-fs must be auto or same, got '${o['dest-fs']}'`);
  if (!['push', 'pull', 'both'].includes(o.direction)) throw new Error(`--direction must be push, pull or both, got '${o.direction}'`);
  const directions = o.direction === 'both' ? ['push', 'pull'] : [o.direction];
  const linkMbit = Number(o['link-mbit']);
  const streamMbit = Number(o['stream-mbit']);
  if (o.wan && !(linkMbit > 0 && streamMbit > 0 && streamMbit <= linkMbit)) throw new Error(`--link-mbit and --stream-mbit must be positive numbers with the stream's cap at most the link's, got '${o['link-mbit']}' and '${o['stream-mbit']}'`);
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run node scripts/setup.mjs --bench (or npx tsc -b)`);
  const outDir = resolve(o.out);
  const loadAtStart = loadavg();

  const source = await sourceTree({ files, big, bigBytes: big > 0 ? bigBytes : 0, seed, smallOnly });
  source.entries = source.files + source.dirs + source.symlinks + source.hardlinks;
  // Files per second count every name that is not a directory: regular files, symlinks, further hard links.
  source.names = source.files + source.symlinks + source.hardlinks;

  // The work directory on the same filesystem as the tree: the tools see one disk, as on a site.
  const work = await mkdtemp(join(CACHE_DIR, 'work-'));
  onCleanup(() => (o.keep ? log(`kept ${work}`) : rm(work, { recursive: true, force: true })));
  let sshd;
  let bed; // the wan testbed, with --wan
  if (o.wan) {
    // Its own signal handler tears the namespaces down; run.mjs's ends the measured command and runs the cleanups.
    // --idle-wait also bounds the shaping check's waits for a quiet machine (30 s each at most).
    bed = await openWanTestbed({ linkMbit, streamMbit, sshdDir: join(work, 'sshd'), sshdConfig: await leanLogin(o['lean-login'], work), log, idleWaitMs: Math.min(idleWait, 30) * 1000 });
    onCleanup(() => bed.close());
    sshd = bed.sshd;
  } else {
    sshd = await startSshd({ dir: join(work, 'sshd'), extraConfig: await leanLogin(o['lean-login'], work) });
    onCleanup(() => sshd.stop({ keepDir: o.keep }));
  }
  const host = bed?.host ?? sshd.host;
  const port = bed?.port ?? sshd.port;
  log(`sshd on ${host}:${port} (pid ${sshd.pid}), work dir ${work}`);
  const ctx = { userKey: sshd.userKey, knownHosts: sshd.knownHosts, port, user: sshd.user, host, wan: o.wan };

  const tools = o.peers.split(',').map((s) => s.trim()).filter(Boolean).map((e) => treeTool(e, ctx));
  // With --wan every tool runs in the client namespace: its connections cross the shaped link.
  if (bed) for (const t of tools) t.argv = ((argvOf) => async (run) => [...bed.inClient, ...(await argvOf(run))])(t.argv);
  const skipped = tools.filter((t) => t.needs && !which(t.needs)).map((t) => ({ tool: t.name, reason: `${t.needs} not installed` }));
  const active = tools.filter((t) => !skipped.some((s) => s.tool === t.name));
  for (const s of skipped) log(`skipping ${s.tool}: ${s.reason}`);

  // Hashing the source once leaves it in the page cache, as the one-file scenarios do, and keeps
  // its hashes for every comparison after a run.
  const sourceHashes = new Map();
  // The scale shape compares names, types, sizes, modes and times only: hashing a million files
  // on both sides would take longer than the copy (ferry checks every file's hash itself).
  const content = !smallOnly;
  log(content ? 'hashing the source (page cache, and the hashes every comparison reuses)' : 'listing the source (--small-only: contents are not compared)');
  const self = await compareTrees(source.path, source.path, { sourceHashes, content });
  if (!self.same) throw new Error(`the cached tree ${source.path} differs from itself (${Object.keys(self.differences).join(', ')}): remove it and run again`);

  // --dest-fs auto: destinations on a journaled file system where the work directory's is ext4 without one (common.mjs).
  const destFs = o['dest-fs'] === 'auto' ? await journaledDir(work, source.bytes * 1.5 + 2 ** 30) : { path: work, describe: "the work directory's file system (--dest-fs same)" };
  const dstParent = join(destFs.path, 'dst');
  const stateDir = join(work, 'state');
  // Generous: slower than 5 MB/s and 100 files/s is broken, not slow.
  const timeoutMs = Math.max(300_000, (source.bytes / 5e6 + source.names / 100) * 1000);
  const results = await runRounds({
    rounds: runs,
    jobs: directions.flatMap((direction) => active.map((tool) => ({ direction, tool }))),
    retryNoisy,
    run: async (round, { direction, tool }) => {
      await rm(dstParent, { recursive: true, force: true });
      await mkdir(dstParent);
      await rm(stateDir, { recursive: true, force: true }); // ferry resumes a job it finds in its state
      syncDisks();
      const idleWaitSeconds = idleWait > 0 ? await waitForIdle({ quietSeconds: 5, maxMs: idleWait * 1000, log }) : 0;
      const push = direction === 'push';
      const argv = await tool.argv({ src: source.path, dstParent, push, work, stateDir });
      // The link's view: bytes on the wire in the data's direction and the port buckets (TCP streams) that carried them.
      const side = push ? 'client' : 'server';
      const wire0 = bed && { bytes: bed.wireBytes(side), classes: bed.classBytes(side), samples: [], t0: performance.now() };
      const sampler = bed && setInterval(() => wire0.samples.push([(performance.now() - wire0.t0) / 1000, bed.wireBytes(side) - wire0.bytes]), 250);
      const m = await measure(argv, { sshdPid: sshd.pid, timeoutMs }).finally(() => clearInterval(sampler));
      const wan = bed && (await wanView(bed, side, wire0, m.seconds));
      const journalBytes = await journalBytesIn(stateDir);
      // Not part of the time: what the tool left in the page cache.
      const syncSeconds = syncDisks();
      const { differences, examples } = await differencesOf(source, dstParent, sourceHashes, content);
      // A run counts when the tool exited 0, or when it went through the whole tree and
      // complained about a few entries (scp about a dangling symlink, say: at most 1% missing):
      // its time counts and its exit status is shown. What it left out is in its differences.
      // One that timed out, never started, stopped early or made no tree at all does not.
      const arrived = existsSync(join(dstParent, source.name));
      const finished = arrived && !/^(spawn|timed out)/.test(m.error ?? '') && (!m.error || (differences.missing ?? 0) <= source.entries / 100);
      const rec = {
        round,
        direction,
        tool: tool.name,
        argv,
        ok: finished,
        exit: m.error ? (/^exit (\S+):/.exec(m.error)?.[1] ?? 'error') : '0',
        error: finished ? undefined : `${m.error ?? 'the copy is incomplete'}${m.stderrFirstLine ? ` (first line of stderr: ${m.stderrFirstLine})` : ''}`,
        stderrFirstLine: m.stderrFirstLine || undefined,
        seconds: m.seconds,
        mbps: finished ? source.bytes / 1e6 / m.seconds : NaN,
        filesPerSecond: finished ? source.names / m.seconds : NaN,
        syncSeconds,
        cpuSeconds: m.cpuSeconds,
        otherCpuSeconds: m.otherCpuSeconds,
        stealSeconds: m.stealSeconds,
        kernelCpuSeconds: m.kernelCpuSeconds,
        harnessCpuSeconds: m.harnessCpuSeconds,
        noisy: isNoisy(m),
        idleWaitSeconds,
        differences,
        examples,
        processes: m.processes.length,
        peakRssMiB: m.peakRssMiB,
        journalBytes,
        ...(wan ? { wan, vsLink: finished ? source.bytes / 1e6 / m.seconds / bed.linkMBps : NaN } : {}),
      };
      if (wan) log(`[${round}/${runs}] ${direction} ${tool.name}: ${fmt(rec.vsLink * 100)}% of the link, ${fmt(wan.wireMBps)} MB/s on the wire, ${wan.buckets} stream(s) carried data${wan.leftovers.length ? `; killed leftovers: ${wan.leftovers.join('; ')}` : ''}`);
      log(`[${round}/${runs}] ${direction} ${tool.name}: exit ${rec.exit}${m.stderrFirstLine ? ` (${m.stderrFirstLine.slice(0, 160)})` : ''}; differences: ${kindsText(differences)}`);
      return rec;
    },
  });
  if (!results) return;
  const kept = results.filter((r) => !r.discarded);

  // Per direction and tool: medians of the finished runs; ratios as speed over tar's and rsync -a's, same run and direction.
  const medianSecondsOf = (direction, name) => median(kept.filter((r) => r.direction === direction && r.tool === name && r.ok).map((r) => r.seconds));
  const summary = directions.flatMap((direction) => {
    const tar = medianSecondsOf(direction, 'tar');
    const rsync = medianSecondsOf(direction, 'rsync -a');
    return tools.map((t) => {
      const mine = kept.filter((r) => r.direction === direction && r.tool === t.name);
      const good = mine.filter((r) => r.ok);
      const seconds = median(good.map((r) => r.seconds));
      return {
        direction,
        tool: t.name,
        skipped: skipped.find((s) => s.tool === t.name)?.reason,
        ok: good.length,
        runs: mine.length,
        exits: [...new Set(mine.map((r) => r.exit))],
        medianSeconds: seconds,
        minSeconds: Math.min(...good.map((r) => r.seconds)),
        maxSeconds: Math.max(...good.map((r) => r.seconds)),
        medianMBps: source.bytes / 1e6 / seconds,
        filesPerSecond: source.names / seconds,
        ...(bed ? { vsLink: source.bytes / 1e6 / seconds / bed.linkMBps, medianWireMBps: median(good.map((r) => r.wan.wireMBps)), medianBuckets: median(good.map((r) => r.wan.buckets)) } : {}),
        vsTar: tar / seconds,
        vsRsync: rsync / seconds,
        medianSecondsWithSync: median(good.map((r) => r.seconds + r.syncSeconds)),
        cpuSeconds: median(good.map((r) => r.cpuSeconds)),
        // Memory: the largest peak of each role over the runs (the coordinator, its helpers, nats-server).
        peakRssMiB: Object.fromEntries(['coordinator', 'helper', 'agent', 'nats'].map((role) => [role, Math.max(0, ...mine.map((r) => r.peakRssMiB?.[role] ?? 0))])),
        journalBytes: Math.max(0, ...mine.map((r) => r.journalBytes ?? 0)),
        differences: kindsOverRuns(good.length > 0 ? good : mine),
        // For the table: the exit and the first line the tool wrote to stderr (a timeout says so).
        firstFailure: ((r) => r && (r.exit === 'error' ? r.error : `exit ${r.exit}: ${r.stderrFirstLine ?? ''}`))(mine.find((x) => !x.ok)),
      };
    });
  });

  // With --wan, after MB/s: the share of the link, and the TCP streams that carried data.
  const wanHeader = bed ? ['vs link', 'streams'] : [];
  const wanCells = (s) => (bed ? [Number.isFinite(s.vsLink) ? `${fmt(s.vsLink * 100)}%` : '-', fmt(s.medianBuckets)] : []);
  const header = ['direction', 'tool', 'ok', 'exit', 'median s', 'min-max s', 'MB/s', ...wanHeader, 'files/s', 'vs tar', 'vs rsync -a', 's incl. sync', 'CPU s', 'RSS cp / agent / helper / nats MiB', 'journal MiB', 'differences from the source'];
  const mib = (x) => (x > 0 ? fmt(x) : '-');
  const memory = (s) => (s.tool.startsWith('ferry') ? [`${mib(s.peakRssMiB.coordinator)} / ${mib(s.peakRssMiB.agent)} / ${mib(s.peakRssMiB.helper)} / ${mib(s.peakRssMiB.nats)}`, s.journalBytes > 0 ? fmt(s.journalBytes / 2 ** 20, 1) : '-'] : ['', '']);
  const ratio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-');
  const rows = summary.map((s) =>
    s.skipped
      ? [s.direction, s.tool, `skipped: ${s.skipped}`, ...header.slice(3).map(() => '')]
      : [
          s.direction, s.tool, `${s.ok}/${s.runs}`, s.exits.join('/'), fmt(s.medianSeconds, 2), s.ok ? `${fmt(s.minSeconds, 2)}-${fmt(s.maxSeconds, 2)}` : '-',
          fmt(s.medianMBps), ...wanCells(s), fmt(s.filesPerSecond), ratio(s.vsTar), ratio(s.vsRsync), fmt(s.medianSecondsWithSync, 2), fmt(s.cpuSeconds, 1), ...memory(s),
          s.ok ? s.differences : `failed: ${(s.firstFailure ?? '').slice(0, 200)}`,
        ].map((c) => String(c).replaceAll('|', '\\|')),
  );
  const table = markdownTable(header, rows);
  process.stdout.write(`\n${table}\n`);

  const m = machine();
  const date = new Date().toISOString();
  const loadAtEnd = loadavg();
  const noisy = kept.filter((r) => r.noisy);
  const failures = kept.filter((r) => !r.ok);
  // One example run per tool and direction for the examples of each kind.
  const exampleLines = summary.filter((s) => !s.skipped).flatMap((s) => {
    const r = kept.find((x) => x.direction === s.direction && x.tool === s.tool && x.ok) ?? kept.find((x) => x.direction === s.direction && x.tool === s.tool);
    if (!r) return [];
    const kinds = Object.entries(r.examples);
    return [`- ${s.direction} ${s.tool}: ${kinds.length === 0 ? 'none' : kinds.map(([k, ps]) => `${k} ${r.differences[k]} (${ps.map((p) => `\`${p}\``).join(', ')}${r.differences[k] > ps.length ? ', ...' : ''})`).join('; ')}`];
  });
  const md = [
    `# Benchmark: ${o.name}${o.name === 'tree' ? '' : ' (tree scenario)'}`,
    '',
    `A generated project tree (bench/tree-lib.mjs) copied whole through one throwaway sshd ${bed ? `in the wan testbed's server namespace (bench/wan-testbed.mjs), the tools in its client namespace: a link of ${bed.linkMbit} Mbit/s (${fmt(bed.linkMBps)} MB/s) with each TCP stream capped at ${bed.streamMbit} Mbit/s (${fmt(bed.streamMBps, 1)} MB/s), the limit RTT and windows put on one stream (no added delay: netem is absent)` : 'on 127.0.0.1'}; the source in the page cache; the destinations on ${destFs.describe}. After every run the destination is compared with the source by ${content ? 'content, ' : ''}type, mode, size, mtime, link target, hard links and sparseness${content ? '' : ' (--small-only: not by content)'}.`,
    'Generated by `npm run bench -- tree` (see bench/README.md, "tree").',
    '',
    `- Date: ${date}`,
    `- Machine: ${m.nproc} CPUs (nproc), ${m.cpu}, ${m.ramGiB} GiB RAM; load average ${loadAtStart.map((x) => x.toFixed(2)).join(' ')} at the start, ${loadAtEnd.map((x) => x.toFixed(2)).join(' ')} at the end`,
    `- Kernel: ${m.kernel}; Node ${m.node}; ${m.openssh}`,
    `- ferry: ${ferryVersion()}`,
    `- Tree${smallOnly ? ' (--small-only: regular files of 0-4 KiB, 1,000 per directory)' : ''}: seed ${seed}, ${source.files} files (${big} of ${formatBytes(bigBytes)}${big > 0 ? '' : ': none'}, ${source.sparse} sparse), ${source.dirs} directories, ${source.symlinks} symlinks, ${source.hardlinks} extra hard links; ${source.bytes} bytes (${formatBytes(source.bytes)}, sparse files at their full size), ${source.names} names that are not directories`,
    `- Runs: ${runs} per tool and direction, in rounds (every tool once per round, the order rotating)`,
    ...(bed ? [`- Shaping: ${bed.shapingText}`, `- Shaping check (plain TCP): ${bed.checkText}${bed.warnings.length ? ` (warning: ${bed.warnings.join('; ')})` : ''}`] : []),
    `- Logins: ${o['lean-login'] ? 'lean (--lean-login: the remote shell reads no start-up files)' : "the remote user's own shell start-up files (~/.bashrc) run on every login"}`,
    `- Command: \`${['node bench/run.mjs tree', ...argv.map(shq)].join(' ')}\``,
    '',
    table,
    '',
    '- ok: finished runs / runs. A run is finished when the tool exited 0, or exited non-zero after copying all but at most 1% of the entries (it went through the tree and complained about some); exit: the exit statuses seen.',
    '- median s, min-max s: wall-clock seconds from spawn to exit over finished runs. MB/s: file bytes (each inode once, sparse files at full size) / 1e6 / median s. files/s: names that are not directories (files, symlinks, further hard links) / median s.',
    ...(bed ? [`- vs link (--wan): MB/s over the link's ${fmt(bed.linkMBps)} MB/s; TCP/IP headers take ~4.5% of each frame, so about 95% is the most a tool can show. streams: port buckets that carried more than 1 MB in the data's direction (median), one per TCP connection.`] : []),
    "- vs tar, vs rsync -a: tar's (rsync -a's) median seconds over this tool's, same run and direction (above 1: faster).",
    '- s incl. sync: with a `sync` run right after the exit (what the tool left in the page cache). CPU s: user+system CPU of the client\'s processes and the sshd sessions serving them, median.',
    '- RSS cp / agent / helper / nats MiB (ferry): peak resident memory (VmHWM, sampled every 100 ms) of the coordinator (`ferry cp`), the largest agent (ferry-agents), the largest remote helper (`ferry serve`) and nats-server (`-`: none ran; a single-node tree copy of small files needs neither agents nor NATS), the largest over the runs. journal MiB: the tree journal (tree.ndjson) the run left in its state directory.',
    '- differences from the source (bench/tree-lib.mjs `compareTrees`), count per kind over the finished runs (lo-hi when runs differed): missing, extra, type (a symlink arrived as a file, say), content, size, mode, mtime (files), dir-mtime, target (symlinks), hardlink (a name no longer shares its inode with the same names), sparse (arrived filled in), owner; stray: names beside the tree in the destination directory.',
    `- Other load: task CPU outside the measured processes and the harness while runs were measured: median ${fmt(median(kept.map((r) => r.otherCpuSeconds)), 2)} s per run, at most ${fmt(Math.max(...kept.map((r) => r.otherCpuSeconds)), 2)} s; steal median ${fmt(median(kept.map((r) => r.stealSeconds / r.seconds)) * 100)}% of a CPU.`,
    '',
    '## Differences, with examples',
    '',
    ...exampleLines,
    ...(bed ? ['', '## The link second by second (--wan)', '', `MB put on the wire in each second of each run, in the data's direction (the link holds ${fmt(bed.linkMBps)}, one stream ${fmt(bed.streamMBps)}):`, '', ...kept.filter((r) => r.wan).map((r) => `- round ${r.round} ${r.direction} ${r.tool}: ${r.wan.perSecondMB.join(' ')}`)] : []),
    ...(noisy.length > 0 ? ['', '## Runs with other load on the machine', '', ...noisy.map((r) => `- round ${r.round} ${r.direction} ${r.tool}${r.discarded ? ' (repeated)' : ''}: ${fmt(r.seconds, 2)} s, other CPU ${fmt(r.otherCpuSeconds, 2)} s, steal ${fmt(r.stealSeconds, 2)} s`)] : []),
    ...(failures.length > 0 ? ['', '## Failed runs', '', ...failures.map((f) => `- round ${f.round} ${f.direction} ${f.tool}: ${f.error}`)] : []),
    '',
  ].join('\n');
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, `${o.name}.md`), md);
  await writeFile(
    join(outDir, `${o.name}.json`),
    JSON.stringify({ scenario: 'tree', date, ferry: ferryVersion(), machine: m, load: { start: loadAtStart, end: loadAtEnd }, options: { files, smallOnly, big, bigBytes, seed, runs, directions, retryNoisy, idleWait, peers: tools.map((t) => t.name), leanLogin: o['lean-login'], ...(bed ? { wan: { linkMbit, streamMbit } } : {}) }, ...(bed ? { shapingCheck: bed.check } : {}), source: { ...source, path: undefined }, clockTicks: CLK_TCK, sampleMs: SAMPLE_MS, skipped, summary, runs: results }, null, 1) + '\n',
  );
  log(`wrote ${join(outDir, `${o.name}.md`)} and ${o.name}.json; the tree stays in ${source.path}`);
  if (failures.length > 0) process.exitCode = 1;
}
