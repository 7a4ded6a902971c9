#!/usr/bin/env node
// The demo: a real transfer on this machine. Starts a throwaway sshd on
// loopback (its own keys, nothing of yours is touched), makes a 1 GiB random
// file, copies it with `ferry cp` using 2 agents, checks the copy, cleans up.
//
//   npm run demo                 # 1 GiB, 2 agents
//   npm run demo -- --size 4GiB --agents 4 --streams 2
import { spawn } from 'node:child_process';
import { randomFillSync, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { NODE_FLAGS } from '../packages/cli/dist/node-flags.js';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const parseSize = (s) => {
  const m = /^(\d+)\s*(k|m|g|kib|mib|gib)?$/i.exec(s);
  if (!m) throw new Error(`bad size ${s}`);
  const unit = { k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gib: 1024 ** 3 }[(m[2] ?? '').toLowerCase()] ?? 1;
  return Number(m[1]) * unit;
};
const size = parseSize(opt('--size', '1GiB'));
const agents = opt('--agents', '2');
const streams = opt('--streams', '2');
const cli = fileURLToPath(new URL('../packages/cli/dist/bundle/main.js', import.meta.url));

const hashFile = (path) =>
  new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: 4 << 20 }).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });

const work = await mkdtemp(join(tmpdir(), 'ferry-demo-'));
let sshd;
let code = 1;
try {
  sshd = await startSshd({ dir: join(work, 'sshd') });
  console.log(`demo: throwaway sshd on ${sshd.host}:${sshd.port} (keys in ${sshd.dir})`);
  const src = join(work, 'big.bin');
  const fh = await open(src, 'w');
  const chunk = Buffer.allocUnsafe(8 << 20);
  for (let at = 0; at < size; at += chunk.length) {
    const n = Math.min(chunk.length, size - at);
    randomFillSync(chunk, 0, n);
    await fh.write(chunk, 0, n, at);
  }
  await fh.close();
  const dst = join(work, 'remote-side');
  await mkdir(dst);
  const argv = [
    cli, 'cp', src, `${sshd.user}@${sshd.host}:${sshd.port}:${dst}/`,
    '--agents', agents, '--streams', streams,
    '-i', sshd.userKey, '--known-hosts', sshd.knownHosts,
    '--remote-cmd', `${[process.execPath, ...NODE_FLAGS, cli].join(' ')} serve`,
    '--state-dir', join(work, 'state'),
  ];
  console.log(`demo: made ${src} (${size} random bytes); running:\n  ferry ${argv.slice(1).join(' ')}\n`);
  code = await new Promise((resolve) => spawn(process.execPath, [...NODE_FLAGS, ...argv], { stdio: 'inherit' }).once('close', (c) => resolve(c ?? 1)));
  if (code === 0) {
    const [a, b] = await Promise.all([hashFile(src), hashFile(join(dst, 'big.bin'))]);
    console.log(a === b ? `\ndemo: copy verified independently, sha256 ${a}` : `\ndemo: MISMATCH ${a} != ${b}`);
    if (a !== b) code = 1;
  }
} finally {
  await sshd?.stop();
  await rm(work, { recursive: true, force: true });
}
process.exit(code);
