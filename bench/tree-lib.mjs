// The `tree` benchmark's tree (issue 31): a generated project tree that looks like a real
// one, and a comparison of two trees by content, type, mode, size, mtime, link target,
// hard links and sparseness. Used by the benchmark and by integration tests.
//
//   node bench/tree-lib.mjs gen DIR [--files 200000] [--big 4] [--big-bytes 1GiB] [--seed 1]
//   node bench/tree-lib.mjs compare SRC DST [--no-times] [--no-owner]
//
// The tree: `files` small files with log-normal sizes (median 16 KiB) spread over about
// files/40 directories up to depth 8, 1% symlinks (a few of them dangling), 0.5% extra hard
// links, a few sparse files, `big` files of `big-bytes`, modes and mtimes of many kinds.
// The same seed gives the same tree (names, sizes, modes, times and bytes).
import { createHash, createCipheriv } from 'node:crypto';
import { link, lstat, mkdir, open, readdir, readlink, symlink, utimes, chmod } from 'node:fs/promises';
import { join } from 'node:path';

/** A small seeded PRNG (mulberry32): the same seed, the same tree. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Deterministic incompressible bytes: AES-256-CTR of zeros, keyed by the seed and a stream number. */
function byteStream(seed, n) {
  const key = createHash('sha256').update(`ferry-tree-${seed}`).digest();
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(n >>> 0, 0);
  return createCipheriv('aes-256-ctr', key, iv);
}

async function writeBytes(path, seed, n, bytes, mode) {
  const fh = await open(path, 'wx', mode);
  try {
    const c = byteStream(seed, n);
    const chunk = 1 << 20;
    const zeros = Buffer.alloc(Math.min(chunk, Math.max(bytes, 1)));
    for (let at = 0; at < bytes; at += chunk) {
      const len = Math.min(chunk, bytes - at);
      await fh.write(c.update(zeros.subarray(0, len)), 0, len, at);
    }
  } finally {
    await fh.close();
  }
}

export function parseBytes(s) {
  const m = /^(\d+(?:\.\d+)?)\s*(|k|ki|kib|m|mi|mib|g|gi|gib)$/i.exec(String(s).trim());
  if (!m) throw new Error(`not a size: ${s} (e.g. 1GiB, 64MiB)`);
  const unit = { '': 1, k: 1024, ki: 1024, kib: 1024, m: 2 ** 20, mi: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gi: 2 ** 30, gib: 2 ** 30 }[m[2].toLowerCase()];
  return Math.round(Number(m[1]) * unit);
}

const FILE_MODES = [0o644, 0o644, 0o644, 0o600, 0o640, 0o755, 0o664, 0o444];
const DIR_MODES = [0o755, 0o755, 0o750, 0o775, 0o700, 0o2775];

/**
 * Writes the tree into `dir` (which must not exist). Returns counts.
 * Options: files, big, bigBytes, seed, sparse (count), medianBytes, and for the many-small-files
 * shape: maxBytes (sizes uniform in 0..maxBytes instead of log-normal), filesPerDir (default 40)
 * and links (false: no symlinks and no further hard links).
 */
export async function generateTree(dir, options = {}) {
  const files = options.files ?? 200_000;
  const big = options.big ?? 4;
  const bigBytes = options.bigBytes ?? 2 ** 30;
  const seed = options.seed ?? 1;
  const sparse = options.sparse ?? Math.min(5, Math.max(1, Math.floor(files / 40_000)));
  const median = options.medianBytes ?? 16 * 1024;
  const maxBytes = options.maxBytes;
  const filesPerDir = options.filesPerDir ?? 40;
  const links = options.links !== false;
  const rnd = prng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
  const now = Math.floor(Date.UTC(2026, 0, 1) / 1000);
  const when = () => now - Math.floor(rnd() * 3 * 365 * 86400);

  await mkdir(dir, { recursive: false, mode: 0o755 });
  // Directories: a random tree up to depth 8, about one per 40 files (filesPerDir).
  const dirCount = Math.max(1, Math.round(files / filesPerDir));
  const dirs = [''];
  const depthOf = new Map([['', 0]]);
  for (let i = 0; i < dirCount; i++) {
    let parent = dirs[Math.floor(rnd() * dirs.length)];
    while (depthOf.get(parent) >= 8) parent = dirs[Math.floor(rnd() * dirs.length)];
    const name = `${parent === '' ? '' : parent + '/'}d${i.toString(36)}`;
    await mkdir(join(dir, name));
    dirs.push(name);
    depthOf.set(name, depthOf.get(parent) + 1);
  }
  const filePaths = [];
  let bytes = 0;
  let stream = 0;
  for (let i = 0; i < files; i++) {
    const d = dirs[Math.floor(rnd() * dirs.length)];
    const path = `${d === '' ? '' : d + '/'}f${i.toString(36)}${rnd() < 0.3 ? '.dat' : rnd() < 0.5 ? '.txt' : ''}`;
    // Log-normal with median `median` and sigma 0.67: mean ~1.25x the median; a few files of ~1 MiB.
    const size = maxBytes !== undefined ? Math.floor(rnd() * (maxBytes + 1)) : Math.min(8 * 2 ** 20, Math.round(median * Math.exp(0.67 * normal())));
    const empty = rnd() < 0.02;
    await writeBytes(join(dir, path), seed, stream++, empty ? 0 : size, FILE_MODES[Math.floor(rnd() * FILE_MODES.length)]);
    bytes += empty ? 0 : size;
    filePaths.push(path);
  }
  for (let i = 0; i < big; i++) {
    const path = `${dirs[1 + (i % Math.max(1, dirs.length - 1))] ?? ''}/big${i}.h5`.replace(/^\//, '');
    await writeBytes(join(dir, path), seed, stream++, bigBytes, 0o644);
    bytes += bigBytes;
    filePaths.push(path);
  }
  // Sparse files: 64 MiB of size, a MiB of data at three places.
  for (let i = 0; i < sparse; i++) {
    const path = `${dirs[Math.floor(rnd() * dirs.length)] || '.'}/sparse${i}.img`.replace(/^\.\//, '');
    const fh = await open(join(dir, path), 'wx', 0o644);
    const c = byteStream(seed, stream++);
    for (const at of [0, 20 * 2 ** 20, 50 * 2 ** 20]) await fh.write(c.update(Buffer.alloc(2 ** 20)), 0, 2 ** 20, at);
    await fh.truncate(64 * 2 ** 20);
    await fh.close();
    bytes += 64 * 2 ** 20;
    filePaths.push(path);
  }
  // Links: 1% symlinks (relative, some dangling), 0.5% further hard links.
  let symlinks = 0;
  let hardlinks = 0;
  for (let i = 0; i < (links ? Math.floor(files / 100) : 0); i++) {
    const d = dirs[Math.floor(rnd() * dirs.length)];
    const target = rnd() < 0.1 ? `missing-${i}` : '../'.repeat(depthOf.get(d)) + filePaths[Math.floor(rnd() * filePaths.length)];
    await symlink(target, join(dir, `${d === '' ? '' : d + '/'}link${i.toString(36)}`));
    symlinks++;
  }
  for (let i = 0; i < (links ? Math.floor(files / 200) : 0); i++) {
    const d = dirs[Math.floor(rnd() * dirs.length)];
    await link(join(dir, filePaths[Math.floor(rnd() * files)]), join(dir, `${d === '' ? '' : d + '/'}hard${i.toString(36)}`));
    hardlinks++;
  }
  // Modes and times last: files first, then directories deepest first (writing into a directory changes its mtime).
  for (const p of filePaths) {
    const t = when();
    await utimes(join(dir, p), t, t);
  }
  for (const d of [...dirs].sort((a, b) => depthOf.get(b) - depthOf.get(a))) {
    const t = when();
    await chmod(join(dir, d), DIR_MODES[Math.floor(rnd() * DIR_MODES.length)]);
    await utimes(join(dir, d), t, t);
  }
  return { files: filePaths.length, dirs: dirs.length, symlinks, hardlinks, sparse, bytes };
}

/** Every entry under `root`: path -> { type, size, mode, mtime, target, ino, nlink, uid, gid }. */
async function listTree(root) {
  const out = new Map();
  const walk = async (rel) => {
    const abs = rel === '' ? root : join(root, rel);
    const st = await lstat(abs);
    const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'special';
    out.set(rel, { type, size: type === 'file' ? st.size : 0, mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000), uid: st.uid, gid: st.gid, ino: `${st.dev}:${st.ino}`, nlink: st.nlink, allocated: st.blocks * 512, target: type === 'symlink' ? await readlink(abs) : undefined });
    if (type === 'dir') for (const name of (await readdir(abs)).sort()) await walk(rel === '' ? name : `${rel}/${name}`);
  };
  await walk('');
  return out;
}

async function contentHash(path) {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/**
 * Compares `dst` with `src`. Returns { same, differences: { kind: [paths] }, entries } where kind is
 * one of missing, extra, type, content, size, mode, mtime, dir-mtime, target, hardlink, sparse, owner. Directory mtimes
 * and symlink modes are not compared (Linux ignores a symlink's mode).
 * Options: times, owner, content (all default true; content false: sizes only, no bytes read), and `sourceHashes`: a Map of source path -> content
 * hash that the comparison fills and reuses, so that comparing many copies of one unchanging
 * source reads the source's bytes once.
 */
export async function compareTrees(src, dst, options = {}) {
  const times = options.times !== false;
  const owner = options.owner !== false;
  const content = options.content !== false;
  const known = options.sourceHashes;
  const sourceHash = async (p) => {
    let h = known?.get(p);
    if (h === undefined) {
      h = await contentHash(join(src, p));
      known?.set(p, h);
    }
    return h;
  };
  const a = await listTree(src);
  const b = await listTree(dst);
  const differences = {};
  const add = (kind, path) => (differences[kind] ??= []).push(path);
  // Hard-link groups: the paths of each source inode with several names.
  const groupOf = (m) => {
    const byIno = new Map();
    for (const [p, e] of m) if (e.type === 'file' && e.nlink > 1) byIno.set(e.ino, [...(byIno.get(e.ino) ?? []), p]);
    const g = new Map();
    for (const paths of byIno.values()) for (const p of paths) g.set(p, paths.sort().join('\0'));
    return g;
  };
  const ga = groupOf(a);
  const gb = groupOf(b);
  for (const [p, e] of a) {
    const f = b.get(p);
    if (!f) {
      add('missing', p);
      continue;
    }
    if (e.type !== f.type) {
      add('type', p);
      continue;
    }
    if (e.type === 'file') {
      if (e.size !== f.size) add('size', p);
      else if (content && (await sourceHash(p)) !== (await contentHash(join(dst, p)))) add('content', p);
      if ((ga.get(p) ?? p) !== (gb.get(p) ?? p)) add('hardlink', p);
      // Sparse in the source (under half allocated) and filled in the copy.
      if (e.allocated < e.size / 2 && f.allocated > Math.max(2 * e.allocated, e.allocated + 2 ** 20)) add('sparse', p);
    }
    if (e.type === 'symlink' && e.target !== f.target) add('target', p);
    if (e.type !== 'symlink' && e.mode !== f.mode) add('mode', p);
    if (times && e.type === 'file' && e.mtime !== f.mtime) add('mtime', p);
    if (times && e.type === 'dir' && p !== '' && e.mtime !== f.mtime) add('dir-mtime', p);
    if (owner && (e.uid !== f.uid || e.gid !== f.gid)) add('owner', p);
  }
  for (const p of b.keys()) if (!a.has(p)) add('extra', p);
  return { same: Object.keys(differences).length === 0, differences, entries: a.size };
}

// The command line.
if (import.meta.url === `file://${process.argv[1]}`) {
  const [cmd, ...rest] = process.argv.slice(2);
  const flag = (name, dflt) => {
    const i = rest.indexOf(`--${name}`);
    return i < 0 ? dflt : rest[i + 1];
  };
  if (cmd === 'gen' && rest[0]) {
    const t0 = Date.now();
    const r = await generateTree(rest[0], { files: Number(flag('files', 200000)), big: Number(flag('big', 4)), bigBytes: parseBytes(flag('big-bytes', '1GiB')), seed: Number(flag('seed', 1)) });
    console.log(JSON.stringify({ ...r, seconds: (Date.now() - t0) / 1000 }));
  } else if (cmd === 'compare' && rest[0] && rest[1]) {
    const r = await compareTrees(rest[0], rest[1], { times: !rest.includes('--no-times'), owner: !rest.includes('--no-owner') });
    for (const [k, v] of Object.entries(r.differences)) console.log(`${k}: ${v.length} (${v.slice(0, 3).map((p) => p || '.').join(', ')}${v.length > 3 ? ', ...' : ''})`);
    console.log(r.same ? `same (${r.entries} entries)` : 'differ');
    process.exitCode = r.same ? 0 : 1;
  } else {
    console.error('usage: node bench/tree-lib.mjs gen DIR [--files N] [--big N] [--big-bytes SIZE] [--seed N]\n       node bench/tree-lib.mjs compare SRC DST [--no-times] [--no-owner]');
    process.exitCode = 2;
  }
}
