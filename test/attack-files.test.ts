/**
 * Temporary-file attacks in a shared project directory, played by a second
 * Unix user against a real `ferry cp` through the real sshd (issue #30,
 * findings 2 and 3).
 *
 * Two users share a group and a group-writable (2770) project directory, as
 * on an HPC site. The victim runs ferry, logged in through sshd as itself;
 * the attacker, in the same group, plants a symbolic link to the victim's
 * own 0600 file, or a 0666 file of its own, at the temporary name (known in
 * advance through the test hook FERRY_TEST_TEMP_TOKEN, as if guessed), or
 * swaps the temporary file for one of those while a slow copy runs (found by
 * listing the directory). Every time: the victim's unrelated file is
 * untouched, the attacker's file gets no data, and the copy is either
 * correct with the source's mode limited by the umask (as scp) or refused
 * with DEST_REPLACED (exit 24) and the job kept.
 */
import { execFileSync } from 'node:child_process';
import { chmod, chown, copyFile, lstat, mkdir, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { CLI, fileHash, killStrays, makeRandomFile, REMOTE_CMD, tempDir } from './helpers.js';
import type { RunResult } from './helpers.js';

const MiB = 1024 * 1024;
const SECRET = 'the victim keeps this to itself\n';
const TOKEN = 'feedfacefeedfacefeedface';
/** The slow copy's source: at 3 MB/s, 2.8 s of copying, time enough to swap its temporary file half a second in. */
const SLOW_BYTES = 8 * MiB;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let victim: { name: string; uid: number; gid: number };
let attacker: { name: string; uid: number; gid: number };
let group: string;
let key: string;
let knownHosts: string;
/** The victim's source (mode 0640) and its private file (0600), in its own 0700 directory. */
let src: string;
let srcHash: string;
let secret: string;
let slowSrc: string;
let slowHash: string;
const made: string[] = [];

function ids(name: string): { name: string; uid: number; gid: number } {
  return { name, uid: Number(execFileSync('id', ['-u', name]).toString().trim()), gid: Number(execFileSync('id', ['-g', name]).toString().trim()) };
}

/** `ferry cp` as the victim (its own uid, gid and groups). */
function runVictim(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  const home = join(work.path, 'vhome');
  const argv = ['--reuid', String(victim.uid), '--regid', String(victim.gid), '--init-groups', process.execPath, CLI, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn('setpriv', argv, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, XDG_STATE_HOME: join(home, 'state'), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A shell command as the attacker: its uid, its groups (the project's among them). */
function asAttacker(script: string, ...args: string[]): void {
  execFileSync('setpriv', ['--reuid', String(attacker.uid), '--regid', String(attacker.gid), '--init-groups', 'sh', '-c', script, 'sh', ...args], { stdio: 'pipe' });
}

function remote(path: string): string {
  return `${victim.name}@${sshd.host}:${sshd.port}:${path}`;
}

function commonFlags(mode: string, extra: string[] = []): string[] {
  return ['-i', key, '--known-hosts', knownHosts, '-F', 'none', '--remote-cmd', REMOTE_CMD, '--mode', mode, ...extra];
}

/** A fresh group-writable project directory (setgid, 2770), as sites give a project. */
async function projectDir(name: string): Promise<string> {
  const dir = join(work.path, name);
  await mkdir(dir);
  await chown(dir, 0, Number(execFileSync('getent', ['group', group]).toString().split(':')[2]));
  await chmod(dir, 0o2770);
  return dir;
}

/** The victim's private file is as it was: content, mode, owner. */
async function expectSecretUntouched(): Promise<void> {
  expect(await readFile(secret, 'utf8')).toBe(SECRET);
  const st = await stat(secret);
  expect(st.mode & 0o7777).toBe(0o600);
  expect(st.uid).toBe(victim.uid);
}

beforeAll(async () => {
  const tag = process.pid % 100000;
  group = `ferryg${tag}`;
  execFileSync('groupadd', [group]);
  made.push(`group:${group}`);
  work = await tempDir('ferry-attack-');
  await chmod(work.path, 0o755);
  for (const [role, name] of [['victim', `ferryv${tag}`], ['attacker', `ferrya${tag}`]] as const) {
    // A password of '*' (none works) rather than useradd's '!' (locked): sshd refuses locked accounts.
    execFileSync('useradd', ['-M', '-d', join(work.path, role === 'victim' ? 'vhome' : 'ahome'), '-s', '/bin/sh', '-p', '*', '-G', group, name]);
    made.push(`user:${name}`);
  }
  victim = ids(`ferryv${tag}`);
  attacker = ids(`ferrya${tag}`);
  sshd = await startSshd();
  // sshd reads authorized_keys as the user logging in.
  await chmod(sshd.dir, 0o755);
  const vhome = join(work.path, 'vhome');
  await mkdir(vhome, { mode: 0o700 });
  key = join(vhome, 'key');
  knownHosts = join(vhome, 'known_hosts');
  await copyFile(sshd.userKey, key);
  await copyFile(sshd.knownHosts, knownHosts);
  src = join(vhome, 'src.bin');
  await makeRandomFile(src, 3 * MiB);
  srcHash = await fileHash(src);
  slowSrc = join(vhome, 'slow.bin');
  await makeRandomFile(slowSrc, SLOW_BYTES);
  slowHash = await fileHash(slowSrc);
  secret = join(vhome, 'secret.txt');
  await writeFile(secret, SECRET);
  execFileSync('chown', ['-R', `${victim.uid}:${victim.gid}`, vhome]);
  await chmod(key, 0o600);
  await chmod(secret, 0o600);
  await chmod(src, 0o640);
  await chmod(slowSrc, 0o640);
}, 60_000);

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  for (const m of made.reverse()) {
    const [kind, name] = m.split(':') as [string, string];
    try {
      execFileSync(kind === 'user' ? 'userdel' : 'groupdel', [name], { stdio: 'ignore' });
    } catch {
      // gone already
    }
  }
  await work?.remove();
});

/** Where a push or pull writes, and how to name its source and target. */
function sides(direction: 'push' | 'pull', dir: string, source: string) {
  const target = join(dir, 'copy.bin');
  return direction === 'push' ? { from: source, to: remote(target), target } : { from: remote(source), to: target, target };
}

const cases = [
  ['push', 'helper', 'ssh2'],
  ['push', 'python', 'ssh2'],
  ['push', 'sftp', 'ssh2'],
  ['push', 'helper', 'openssh'],
  ['pull', 'helper', 'ssh2'],
  ['pull', 'python', 'ssh2'],
] as const;

describe.each(cases)('%s in %s mode over %s, in a group-writable project directory', (direction, mode, transport) => {
  const common = (m: string, extra: string[] = []) => commonFlags(m, ['--transport', transport, ...extra]);
  const tempAt = (dir: string) => join(dir, `.copy.bin.ferry-${TOKEN}.part`);

  it('a symbolic link planted at the temporary name is not followed: the copy lands whole, the linked file is untouched', async () => {
    const dir = await projectDir(`plant-link-${direction}-${mode}-${transport}`);
    asAttacker('ln -s "$1" "$2"', secret, tempAt(dir));
    const { from, to, target } = sides(direction, dir, src);
    const r = await runVictim(['cp', from, to, ...common(mode)], { FERRY_TEST_TEMP_TOKEN: TOKEN });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(target)).toBe(srcHash);
    await expectSecretUntouched();
    expect(await readlink(tempAt(dir))).toBe(secret);
    // scp's rule: the source's mode (0640) limited by the umask (022), not a fixed 0644.
    const st = await stat(target);
    expect(st.mode & 0o7777).toBe(0o640);
    expect(st.uid).toBe(victim.uid);
  });

  it("a 0666 file planted at the temporary name gets none of the data", async () => {
    const dir = await projectDir(`plant-file-${direction}-${mode}-${transport}`);
    asAttacker('umask 0; : > "$1"; chmod 666 "$1"', tempAt(dir));
    const { from, to, target } = sides(direction, dir, src);
    const r = await runVictim(['cp', from, to, ...common(mode)], { FERRY_TEST_TEMP_TOKEN: TOKEN });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(target)).toBe(srcHash);
    const planted = await stat(tempAt(dir));
    expect({ size: planted.size, uid: planted.uid }).toEqual({ size: 0, uid: attacker.uid });
    expect((await stat(target)).mode & 0o7777).toBe(0o640);
  });

  describe.each(['a symbolic link to the victim\'s 0600 file', 'a 0666 file of the attacker\'s'] as const)('the temporary file swapped mid-copy for %s', (what) => {
    it('is refused before the rename with DEST_REPLACED (exit 24), the job kept and refused again on a rerun', async () => {
      const dir = await projectDir(`swap-${direction}-${mode}-${transport}-${what.startsWith('a sym') ? 'link' : 'file'}`);
      const { from, to, target } = sides(direction, dir, slowSrc);
      const args = ['cp', from, to, ...common(mode, ['--limit-rate', '3MB', '--range-size', '1MiB'])];
      const running = runVictim(args);
      // The attacker lists the directory until the temporary file shows, then swaps it.
      let name: string | undefined;
      for (let i = 0; i < 2400 && !name; i++) {
        name = (await readdir(dir)).find((n) => n.endsWith('.part'));
        if (!name) await new Promise((r) => setTimeout(r, 25));
      }
      expect(name).toMatch(/^\.copy\.bin\.ferry-[0-9a-f]{24}\.part$/);
      const temp = join(dir, name!);
      await new Promise((r) => setTimeout(r, 500));
      if (what.startsWith('a sym')) asAttacker('mv "$1" "$2"; ln -s "$3" "$1"', temp, join(dir, 'moved-away'), secret);
      else asAttacker('mv "$1" "$2"; umask 0; truncate -s "$3" "$1"; chmod 666 "$1"', temp, join(dir, 'moved-away'), String(SLOW_BYTES));
      const r = await running;
      expect(r.code).toBe(24);
      expect(r.stderr).toMatch(new RegExp(`^ferry: error: the partial file \\S+ is not the file ferry created: found (a symbolic link|a file owned by uid \\d+, not uid \\d+|a file of 32 bytes, not ${SLOW_BYTES})`));
      // SFTP opens follow links (no O_NOFOLLOW in SFTP v3): the link is seen by the file it reaches, opened without change.
      if (mode !== 'sftp') expect(r.stderr).not.toContain('a file of 32 bytes');
      expect(r.stderr).toContain('rerun with --restart');
      await expectSecretUntouched();
      await expect(lstat(target)).rejects.toThrow(/ENOENT/);
      // What the victim wrote stays the victim's: the attacker moved it but cannot read it.
      const moved = await stat(join(dir, 'moved-away'));
      expect({ uid: moved.uid, mode: moved.mode & 0o777 }).toEqual({ uid: victim.uid, mode: 0o600 });
      if (!what.startsWith('a sym')) {
        const planted = await stat(temp);
        expect(planted.uid).toBe(attacker.uid);
        expect(await fileHash(temp)).not.toBe(slowHash);
      }
      // The job is kept: a rerun finds the same planted file and refuses again.
      const again = await runVictim(args.filter((a) => a !== '--limit-rate' && a !== '3MB'));
      expect(again.code).toBe(24);
      expect(again.stderr).toContain('is not the file ferry created');
      await expectSecretUntouched();
    });
  });
});
