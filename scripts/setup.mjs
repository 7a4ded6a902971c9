#!/usr/bin/env node
// Makes a fresh checkout ready to run: the system programs that what you are
// about to run needs, npm dependencies, and the build. Safe to run again; it
// only does what is missing.
//
//   node scripts/setup.mjs [--test]   what `npm test` runs (the default)
//   node scripts/setup.mjs --demo     what `npm run demo` runs: sshd and nats-server only
//   node scripts/setup.mjs --bench    the tests' programs and the benchmarks' peers
//   node scripts/setup.mjs --check    only say which programs are missing (exit 1 if any)
//
// Missing programs are installed with apt-get when run as root on Debian or
// Ubuntu; otherwise it names the packages to install and exits with 1.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Every program the demo, the tests (with their fixtures) and the benchmarks
 * run, and the Debian 12 package that provides it. Each profile adds to the
 * one before: demo, test, bench. Programs are what is looked for, so a program
 * that came another way (a newer sshd in /usr/local/sbin) counts as there.
 * Programs of Essential packages (coreutils, dash, util-linux, ...) are listed
 * too: the table is the answer to "what do the tests run", and
 * test/setup.test.ts holds the tests to it.
 */
export const PROGRAMS = {
  demo: {
    sshd: 'openssh-server',
    'ssh-keygen': 'openssh-client',
    'nats-server': 'nats-server',
  },
  test: {
    // The cluster's and the launchers' ssh, `--transport openssh`; ssh-agent for IdentitiesOnly (test/ssh-config.test.ts).
    ssh: 'openssh-client',
    'ssh-agent': 'openssh-client',
    'ssh-add': 'openssh-client',
    // The helper grows sshd's pipes with either; a test runs each.
    perl: 'perl-base',
    python3: 'python3-minimal',
    // known_hosts' hashed names, checked against an HMAC computed independently.
    openssl: 'openssl',
    // test/fixtures/cluster.mjs: Slurm, munge, network and UTS namespaces, shaped links.
    slurmctld: 'slurmctld',
    slurmd: 'slurmd',
    srun: 'slurm-client',
    sbatch: 'slurm-client',
    sinfo: 'slurm-client',
    scontrol: 'slurm-client',
    munged: 'munge',
    munge: 'munge',
    ip: 'iproute2',
    tc: 'iproute2',
    nsenter: 'util-linux',
    unshare: 'util-linux',
    setpriv: 'util-linux',
    mount: 'mount',
    umount: 'mount',
    // `mpirun -np 3 ferry run` (test/nodes.test.ts).
    mpirun: 'openmpi-bin',
    // A loop-mounted ext4 held still (test/helper-writes.test.ts).
    'mkfs.ext4': 'e2fsprogs',
    fsfreeze: 'util-linux',
    // What a copy leaves in the page cache (test/cp.test.ts).
    fincore: 'util-linux-extra',
    // Shells and tools the tests, the sbatch script and ssh sessions run.
    sh: 'dash',
    bash: 'bash',
    hostname: 'hostname',
    getent: 'libc-bin',
    cat: 'coreutils',
    head: 'coreutils',
    sleep: 'coreutils',
    dd: 'coreutils',
    truncate: 'coreutils',
    mkfifo: 'coreutils',
    id: 'coreutils',
    // A second Unix user whose home ~user names (test/scp-habits.test.ts), and the other
    // users and groups of the attack tests (test/attack-files.test.ts and others).
    useradd: 'passwd',
    userdel: 'passwd',
    groupadd: 'passwd',
    groupdel: 'passwd',
    chown: 'coreutils',
    // cp -a of a generated tree (test/tree-lib.test.ts).
    cp: 'coreutils',
    // test/setup.test.ts asks dpkg which package ships each program above.
    dpkg: 'dpkg',
    'dpkg-query': 'dpkg',
  },
  bench: {
    // The peers ferry is measured against.
    scp: 'openssh-client',
    sftp: 'openssh-client',
    rsync: 'rsync',
    rclone: 'rclone',
    lftp: 'lftp',
    xxhsum: 'xxhash',
    sha256sum: 'coreutils',
    // The wan scenario's per-namespace port range; the harness's clock and cores.
    sysctl: 'procps',
    getconf: 'libc-bin',
    nproc: 'coreutils',
    sync: 'coreutils',
  },
};

const PROFILES = ['demo', 'test', 'bench'];

/** Program -> package for a profile and the profiles before it. */
export function programsFor(profile) {
  const upTo = PROFILES.indexOf(profile);
  if (upTo < 0) throw new Error(`setup: no profile "${profile}" (${PROFILES.join(', ')})`);
  return Object.assign({}, ...PROFILES.slice(0, upTo + 1).map((p) => PROGRAMS[p]));
}

/** Where programs are looked for: PATH, and the sbin directories a root shell's PATH may lack (the daemons live there). */
export function searchDirs(path = process.env.PATH ?? '') {
  return [...new Set([...path.split(delimiter).filter(Boolean), '/usr/local/sbin', '/usr/sbin', '/sbin'])];
}

/** The profile's programs found in none of `dirs`, and the packages that provide them (each once, in table order). */
export function missingPrograms(profile, dirs = searchDirs()) {
  const programs = Object.entries(programsFor(profile)).filter(([cmd]) => !dirs.some((d) => existsSync(join(d, cmd))));
  return { programs: programs.map(([cmd]) => cmd), packages: [...new Set(programs.map(([, pkg]) => pkg))] };
}

function main(args) {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const say = (msg) => process.stderr.write(`setup: ${msg}\n`);
  const unknown = args.filter((a) => !['--demo', '--test', '--bench', '--check'].includes(a));
  if (unknown.length > 0) {
    say(`unknown option ${unknown.join(' ')}: use --test (the default), --demo or --bench, and --check to only look`);
    process.exit(2);
  }
  const profile = ['demo', 'bench', 'test'].find((p) => args.includes(`--${p}`)) ?? 'test';

  // 1. System programs.
  const missing = missingPrograms(profile);
  if (missing.packages.length > 0) {
    const list = missing.packages.join(' ');
    const what = `${missing.programs.join(', ')} (Debian packages: ${list})`;
    const aptGet = searchDirs().map((d) => join(d, 'apt-get')).find((p) => existsSync(p));
    if (args.includes('--check') || process.getuid?.() !== 0 || !aptGet) {
      say(`missing ${what}: install them (as root: apt-get install -y ${list}) and run again`);
      process.exit(1);
    }
    say(`installing ${what} with apt-get`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    // Wait for another apt or dpkg (a second checkout's setup, unattended upgrades) instead of failing on its lock.
    const lock = ['-o', 'DPkg::Lock::Timeout=600'];
    for (const argv of [['update', '-q', ...lock], ['install', '-y', '-q', ...lock, ...missing.packages]]) {
      try {
        execFileSync(aptGet, argv, { stdio: 'inherit', env });
      } catch (err) {
        say(`apt-get ${argv[0]} failed (${err.status ?? err.message}): see its output above; then run again`);
        process.exit(1);
      }
    }
    const still = missingPrograms(profile);
    if (still.programs.length > 0) {
      say(`apt-get installed ${list}, yet ${still.programs.join(', ')} is still not on PATH nor in /usr/local/sbin, /usr/sbin, /sbin: install it another way and run again`);
      process.exit(1);
    }
  }
  if (args.includes('--check')) return;

  // 2. npm dependencies, when absent or older than the lockfile.
  const lockfile = join(root, 'package-lock.json');
  const installed = join(root, 'node_modules', '.package-lock.json');
  if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(lockfile).mtimeMs) {
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
  // bin/ferry runs the bundle (scripts/bundle.mjs says why).
  const bundled = spawnSync(process.execPath, [join(root, 'scripts', 'bundle.mjs')], { cwd: root, stdio: 'inherit' });
  if (bundled.status !== 0) process.exit(bundled.status ?? 1);
}

// Run as a script; imported (by the cluster fixture and test/setup.test.ts), only the table and its look-ups.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main(process.argv.slice(2));
