#!/usr/bin/env node
// Makes a fresh checkout ready to run: system packages (sshd, nats-server),
// npm dependencies, and the build. Safe to run again; it only does what is
// missing. Runs before `npm test`, `npm run demo` and `npm run bench`.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const say = (msg) => process.stderr.write(`setup: ${msg}\n`);

function which(cmd) {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  return dirs.some((d) => d && existsSync(join(d, cmd)));
}

// 1. System packages.
const needed = [
  ['sshd', 'openssh-server'],
  ['ssh', 'openssh-client'],
  ['ssh-keygen', 'openssh-client'],
  ['nats-server', 'nats-server'],
  // A test runs the helper's pipe resizing through python3 (perl is always there: perl-base).
  ['python3', 'python3-minimal'],
  ...(process.argv.includes('--bench') ? [['scp', 'openssh-client'], ['rsync', 'rsync'], ['xxhsum', 'xxhash'], ['rclone', 'rclone'], ['lftp', 'lftp']] : []),
];
const missing = [...new Set(needed.filter(([cmd]) => !which(cmd)).map(([, pkg]) => pkg))];
if (missing.length > 0) {
  const isRoot = process.getuid?.() === 0;
  if (isRoot && which('apt-get')) {
    say(`installing ${missing.join(' ')} with apt-get`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    execFileSync('apt-get', ['update', '-q'], { stdio: 'inherit', env });
    execFileSync('apt-get', ['install', '-y', '-q', ...missing], { stdio: 'inherit', env });
  } else {
    say(`missing ${missing.join(', ')}: install them (Debian/Ubuntu: sudo apt-get install -y ${missing.join(' ')}) and run again`);
    process.exit(1);
  }
}

// 2. npm dependencies, when absent or older than the lockfile.
const lock = join(root, 'package-lock.json');
const installed = join(root, 'node_modules', '.package-lock.json');
if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(lock).mtimeMs) {
  say('installing npm dependencies (npm ci)');
  const r = spawnSync('npm', ['ci'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

// 3. ssh2's native crypto binding is optional and silently skipped when it fails to build.
const probe = spawnSync(process.execPath, ['-e', "process.stdout.write(String(require('ssh2/lib/protocol/crypto.js').bindingAvailable))"], { cwd: root, encoding: 'utf8' });
if (probe.stdout !== 'true') say('warning: ssh2 native crypto binding is not built (needs python3, make, g++): transfers will be slower');

// 4. Build.
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const build = spawnSync(process.execPath, [tsc, '-b'], { cwd: root, stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
