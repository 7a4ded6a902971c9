/**
 * Every error case of `ferry cp` against a real sshd: the exit code, and a
 * message that names the host and path and says what to do.
 */
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { killStrays, makeRandomFile, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;

function remote(path: string, port = sshd.port): string {
  return `${sshd.user}@${sshd.host}:${port}:${path}`;
}

function common(overrides: { knownHosts?: string; key?: string } = {}): string[] {
  return ['-i', overrides.key ?? sshd.userKey, '--known-hosts', overrides.knownHosts ?? sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'state')];
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-errors-');
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, 2 * 1024 * 1024);
});

afterAll(async () => {
  // Whatever a failed test left running under the work directory (nats-server, agents).
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe('ferry cp error cases', () => {
  it('exits 10 when the local source does not exist', async () => {
    const missing = join(work.path, 'no-such-file');
    const r = await runFerry(['cp', missing, remote(work.path), ...common()]);
    expect(r.code).toBe(10);
    expect(r.stderr).toBe(`ferry: error: source ${missing} does not exist: check the path\n`);
  });

  it('exits 10 when the remote source does not exist, naming the host and the first missing directory', async () => {
    const r = await runFerry(['cp', remote('/no/such/remote/file'), join(work.path, 'x'), ...common()]);
    expect(r.code).toBe(10);
    expect(r.stderr).toBe(`ferry: error: source ${sshd.host}:${sshd.port}:/no/such/remote/file does not exist: /no is missing; check the path\n`);
    const r2 = await runFerry(['cp', remote(join(work.path, 'no-such-file')), join(work.path, 'x'), ...common()]);
    expect(r2.code).toBe(10);
    expect(r2.stderr).toBe(`ferry: error: source ${sshd.host}:${sshd.port}:${work.path}/no-such-file does not exist: check the path\n`);
  });

  it.each(['helper', 'sftp'])('exits 10 naming a file that stands where a directory of the remote source should be (%s mode)', async (mode) => {
    const r = await runFerry(['cp', remote(`${src}/inner.bin`), join(work.path, 'x'), '--mode', mode, ...common()]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 10,
      stderr: `ferry: error: source ${sshd.host}:${sshd.port}:${src}/inner.bin does not exist: ${src} is not a directory; check the path\n`,
    });
  });

  it('exits 10 naming a file that stands where a directory of the local source should be', async () => {
    const r = await runFerry(['cp', `${src}/inner.bin`, remote(`${work.path}/`), ...common()]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 10, stderr: `ferry: error: source ${src}/inner.bin does not exist: ${src} is not a directory; check the path\n` });
  });

  it('exits 11 when the source cannot be read', async () => {
    const secret = join(work.path, 'secret.bin');
    await writeFile(secret, 'no peeking');
    await chmod(secret, 0o600);
    await chmod(work.path, 0o755);
    // Root reads everything, so read it as nobody.
    const r = await runFerry(['cp', secret, remote('/tmp/'), '--state-dir', '/tmp/ferry-nobody-state'], { asUser: { uid: 65534, gid: 65534 } });
    expect(r.code).toBe(11);
    expect(r.stderr).toBe(`ferry: error: cannot read source ${secret} (EACCES): check its permissions\n`);
  });

  it('exits 20 when the remote directory is missing, naming the first missing one', async () => {
    const r = await runFerry(['cp', src, remote('/no/such/dir/'), ...common()]);
    expect(r.code).toBe(20);
    expect(r.stderr).toBe(`ferry: error: destination directory ${sshd.host}:${sshd.port}:/no/such/dir/ does not exist: /no is missing; create it first (ferry does not create directories)\n`);
    const r2 = await runFerry(['cp', src, remote('/no/such/dir/file.bin'), ...common()]);
    expect(r2.code).toBe(20);
    expect(r2.stderr).toBe(`ferry: error: destination directory ${sshd.host}:${sshd.port}:/no/such/dir does not exist: /no is missing; create it first (ferry does not create directories)\n`);
    const r3 = await runFerry(['cp', src, remote(`${work.path}/new-dir/file.bin`), ...common()]);
    expect(r3.code).toBe(20);
    expect(r3.stderr).toBe(`ferry: error: destination directory ${sshd.host}:${sshd.port}:${work.path}/new-dir does not exist: create it first (ferry does not create directories)\n`);
  });

  it.each(['helper', 'sftp'])('exits 20 naming a file that stands where a directory of the remote destination should be (%s mode)', async (mode) => {
    // `src` is a regular file: `src/x` and `src/` cannot be written.
    for (const [dest, under] of [[`${src}/x.bin`, src], [`${src}/`, src], [`${src}/deeper/x.bin`, src]] as const) {
      const r = await runFerry(['cp', src, remote(dest), '--mode', mode, ...common()]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 20,
        stderr: `ferry: error: destination ${sshd.host}:${sshd.port}:${dest} cannot be created: ${under} is not a directory: choose a destination in an existing directory\n`,
      });
    }
  });

  it('exits 20 on a pull whose local destination is under a file or a missing directory, naming it', async () => {
    const source = remote(src);
    const underFile = await runFerry(['cp', source, `${src}/x.bin`, ...common()]);
    expect({ code: underFile.code, stderr: underFile.stderr }).toEqual({
      code: 20,
      stderr: `ferry: error: destination ${src}/x.bin cannot be created: ${src} is not a directory: choose a destination in an existing directory\n`,
    });
    const missing = join(work.path, 'gone', 'deeper');
    const under = await runFerry(['cp', source, `${missing}/x.bin`, ...common()]);
    expect({ code: under.code, stderr: under.stderr }).toEqual({
      code: 20,
      stderr: `ferry: error: destination directory ${missing} does not exist: ${join(work.path, 'gone')} is missing; create it first (ferry does not create directories)\n`,
    });
    const slash = await runFerry(['cp', source, `${missing}/`, ...common()]);
    expect({ code: slash.code, stderr: slash.stderr }).toEqual({
      code: 20,
      stderr: `ferry: error: destination directory ${missing}/ does not exist: ${join(work.path, 'gone')} is missing; create it first (ferry does not create directories)\n`,
    });
  });

  it.each(['helper', 'sftp'])('exits 21 when the remote directory is not writable (%s mode)', async (mode) => {
    // Root may write anywhere a permission bit forbids, but not to a read-only mount.
    const ro = join(work.path, `readonly-${mode}`);
    await mkdir(ro);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro]);
    try {
      const r = await runFerry(['cp', src, remote(`${ro}/`), '--mode', mode, ...common()]);
      expect(r.code).toBe(21);
      expect(r.stderr).toMatch(new RegExp(`^ferry: error: permission denied writing ${sshd.host}:${sshd.port}:${ro}/\\.src\\.bin\\.ferry-[0-9a-f]{24}\\.part: choose a directory you can write to, or fix its permissions\\n$`));
    } finally {
      execFileSync('umount', [ro]);
    }
  });

  it('exits 31 when the host key is unknown, and --accept-new-host-key records it', async () => {
    const kh = join(work.path, 'empty_known_hosts');
    await writeFile(kh, '');
    const dir = join(work.path, 'accept');
    await mkdir(dir);
    const r = await runFerry(['cp', src, remote(`${dir}/`), ...common({ knownHosts: kh })]);
    expect(r.code).toBe(31);
    expect(r.stderr).toBe(
      `ferry: error: host key of ${sshd.host}:${sshd.port} is not in ${kh}: check its fingerprint with the host's admins, then rerun with --accept-new-host-key (or add it with ssh-keyscan)\n`,
    );
    expect(await readdir(dir)).toEqual([]);
    const ok = await runFerry(['cp', src, remote(`${dir}/`), '--accept-new-host-key', ...common({ knownHosts: kh })]);
    expect(ok.code).toBe(0);
    expect((await readFile(kh, 'utf8')).trim()).toBe(sshd.hostKeyLine);
  });

  it('exits 32 when the host key has changed', async () => {
    const kh = join(work.path, 'wrong_known_hosts');
    const other = join(work.path, 'otherhostkey');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const pub = (await readFile(`${other}.pub`, 'utf8')).trim().split(/\s+/);
    await writeFile(kh, `[${sshd.host}]:${sshd.port} ${pub[0]} ${pub[1]}\n`);
    const r = await runFerry(['cp', src, remote('/tmp/'), ...common({ knownHosts: kh })]);
    expect(r.code).toBe(32);
    expect(r.stderr).toBe(
      `ferry: error: host key of ${sshd.host}:${sshd.port} (ssh-ed25519) differs from the one in ${kh}: this may be an attack; if the host was reinstalled, remove the old key with 'ssh-keygen -R [${sshd.host}]:${sshd.port} -f ${kh}'\n`,
    );
  });

  it('asks a host with several host keys for the one on record', async () => {
    // sshd offers ed25519 and ECDSA; known_hosts has only the ECDSA key. Offering
    // ed25519 first (ssh2's default) would look like an unknown key.
    const dir = join(work.path, 'two-keys');
    await mkdir(dir);
    const ecdsa = join(dir, 'hostkey_ecdsa');
    execFileSync('ssh-keygen', ['-q', '-t', 'ecdsa', '-N', '', '-f', ecdsa]);
    const multi = await startSshd({ dir: join(dir, 'sshd'), extraConfig: [`HostKey ${ecdsa}`] });
    try {
      const pub = (await readFile(`${ecdsa}.pub`, 'utf8')).trim().split(/\s+/);
      const kh = join(dir, 'known_hosts');
      await writeFile(kh, `[${multi.host}]:${multi.port} ${pub[0]} ${pub[1]}\n`);
      const r = await runFerry(['cp', src, `${multi.user}@${multi.host}:${multi.port}:${dir}/`, '-i', multi.userKey, '--known-hosts', kh, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'state')]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    } finally {
      await multi.stop();
    }
  });

  it('exits 30 when authentication fails', async () => {
    const stranger = join(work.path, 'strangerkey');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]);
    const r = await runFerry(['cp', src, remote('/tmp/'), ...common({ key: stranger })], { env: { SSH_AUTH_SOCK: undefined } });
    expect(r.code).toBe(30);
    expect(r.stderr).toBe(
      `ferry: error: authentication as ${sshd.user}@${sshd.host}:${sshd.port} failed (tried ${stranger}): add your public key to ~${sshd.user}/.ssh/authorized_keys on ${sshd.host}, or pass -i KEYFILE\n`,
    );
  });

  it('exits 40 when the host is unreachable', async () => {
    const closed = await freePort();
    const r = await runFerry(['cp', src, remote('/tmp/', closed), ...common()]);
    expect(r.code).toBe(40);
    expect(r.stderr).toBe(
      `ferry: error: cannot reach ${sshd.host}:${closed} over SSH (ECONNREFUSED): check the host name and port, the network path, and that sshd runs there\n`,
    );
  });

  it('exits 60 when a job needs nats-server (agents in processes of their own) and it is not installed', async () => {
    const dir = join(work.path, 'nonats');
    await mkdir(dir);
    // One agent in ferry's own process needs no NATS; FERRY_LOCAL_BUS=0 asks for it all the same.
    const r = await runFerry(['cp', src, remote(`${dir}/`), ...common()], { env: { FERRY_NATS_SERVER: '/nonexistent/nats-server', FERRY_LOCAL_BUS: '0' } });
    expect(r.code).toBe(60);
    expect(r.stderr).toBe(
      'ferry: error: nats-server is not installed (FERRY_NATS_SERVER=/nonexistent/nats-server is not an executable): install it (Debian/Ubuntu: apt-get install nats-server), set FERRY_NATS_SERVER to its path, or pass --nats URL of a running server with JetStream\n',
    );
  });

  it('exits 61 when --mode helper is forced and the helper is missing', async () => {
    const r = await runFerry(['cp', src, remote('/tmp/'), ...common(), '--mode', 'helper', '--remote-cmd', 'ferry-not-installed-here serve']);
    expect(r.code).toBe(61);
    expect(r.stderr).toBe(
      `ferry: error: cannot start 'ferry-not-installed-here serve' on ${sshd.host}:${sshd.port} (command not found): install ferry there, point --remote-cmd at it, or use --mode sftp\n`,
    );
  });

  it('exits 2 on usage errors with a message naming the option', async () => {
    const both = await runFerry(['cp', src, join(work.path, 'copy'), ...common()]);
    expect(both.code).toBe(2);
    expect(both.stderr).toBe(`ferry: error: both ${src} and ${join(work.path, 'copy')} are local: one side must be remote, written [user@]host[:port]:path\n`);
    const size = await runFerry(['cp', src, remote('/tmp/'), '--range-size', '3.5MiB', ...common()]);
    expect(size.code).toBe(2);
    expect(size.stderr).toBe("ferry: error: --range-size must be a multiple of 1MiB (ranges are aligned to 1 MiB), got '3.5MiB'\n");
    const agents = await runFerry(['cp', src, remote('/tmp/'), '--agents', 'many', ...common()]);
    expect(agents.code).toBe(2);
    expect(agents.stderr).toBe("ferry: error: --agents must be a whole number from 1 to 4096, got 'many'\n");
    const missing = await runFerry(['cp', src]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe('ferry: error: missing the destination: ferry cp SOURCE... DESTINATION (run ferry cp --help)\n');
  });
});

describe('ferry cp error cases with --transport openssh (ssh itself checks keys and authenticates)', () => {
  const openssh = ['--transport', 'openssh'];

  it('exits 31 when the host key is unknown, and --accept-new-host-key records it', async () => {
    const kh = join(work.path, 'openssh_empty_known_hosts');
    await writeFile(kh, '');
    const dir = join(work.path, 'openssh-accept');
    await mkdir(dir);
    const r = await runFerry(['cp', src, remote(`${dir}/`), ...openssh, ...common({ knownHosts: kh })]);
    expect(r.code).toBe(31);
    expect(r.stderr).toBe(
      `ferry: error: host key of ${sshd.host}:${sshd.port} is not in ${kh}: check its fingerprint with the host's admins, then rerun with --accept-new-host-key (or add it with ssh-keyscan)\n`,
    );
    expect(await readdir(dir)).toEqual([]);
    const ok = await runFerry(['cp', src, remote(`${dir}/`), '--accept-new-host-key', ...openssh, ...common({ knownHosts: kh })]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    // ssh wrote the key (hashed or not, as its configuration says); a strict rerun now passes.
    expect((await readFile(kh, 'utf8')).trim()).toContain(sshd.hostKeyLine.split(' ').slice(1).join(' '));
    const again = await runFerry(['cp', src, remote(`${dir}/again.bin`), ...openssh, ...common({ knownHosts: kh })]);
    expect(again.code).toBe(0);
  });

  it('exits 32 when the host key has changed', async () => {
    const kh = join(work.path, 'openssh_wrong_known_hosts');
    const other = join(work.path, 'openssh_otherhostkey');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const pub = (await readFile(`${other}.pub`, 'utf8')).trim().split(/\s+/);
    await writeFile(kh, `[${sshd.host}]:${sshd.port} ${pub[0]} ${pub[1]}\n`);
    const r = await runFerry(['cp', src, remote('/tmp/'), ...openssh, ...common({ knownHosts: kh })]);
    expect(r.code).toBe(32);
    expect(r.stderr).toBe(
      `ferry: error: host key of ${sshd.host}:${sshd.port} differs from the one in ${kh}: this may be an attack; if the host was reinstalled, remove the old key with 'ssh-keygen -R [${sshd.host}]:${sshd.port} -f ${kh}'\n`,
    );
  });

  it('exits 30 when authentication fails, quoting ssh', async () => {
    const stranger = join(work.path, 'openssh_strangerkey');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]);
    const r = await runFerry(['cp', src, remote('/tmp/'), ...openssh, ...common({ key: stranger })], { env: { SSH_AUTH_SOCK: undefined } });
    expect(r.code).toBe(30);
    expect(r.stderr).toMatch(new RegExp(`^ferry: error: authentication as ${sshd.user}@${sshd.host}:${sshd.port} failed \\(ssh said: .*Permission denied.*\\): add your public key`));
  });

  it('exits 40 when the host is unreachable', async () => {
    const closed = await freePort();
    const r = await runFerry(['cp', src, remote('/tmp/', closed), ...openssh, ...common()]);
    expect(r.code).toBe(40);
    expect(r.stderr).toMatch(new RegExp(`^ferry: error: cannot reach ${sshd.host}:${closed} over SSH \\(ssh said: .*Connection refused\\): check the host name`));
  });

  it('exits 61 when --mode helper is forced and the helper is missing', async () => {
    const r = await runFerry(['cp', src, remote('/tmp/'), ...openssh, ...common(), '--mode', 'helper', '--remote-cmd', 'ferry-not-installed-here serve']);
    // Code and message together, so that a failure shows what ssh said.
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 61,
      stderr: `ferry: error: cannot start 'ferry-not-installed-here serve' on ${sshd.host}:${sshd.port} (command not found): install ferry there, point --remote-cmd at it, or leave --mode at auto (ferry's python helper; --transport ssh2 can also fall back to SFTP)\n`,
    });
  });

  it('exits 63 when the ssh program cannot be run', async () => {
    const r = await runFerry(['cp', src, remote('/tmp/'), ...openssh, '--ssh-cmd', '/nonexistent/ssh -v', ...common()]);
    expect(r.code).toBe(63);
    expect(r.stderr).toBe(
      "ferry: error: cannot run '/nonexistent/ssh' for --transport openssh (ENOENT): install OpenSSH's client, point --ssh-cmd at it, or use --transport ssh2\n",
    );
  });

  it('exits 2 when the options do not fit together', async () => {
    const sftp = await runFerry(['cp', src, remote('/tmp/'), ...openssh, '--mode', 'sftp', ...common()]);
    expect(sftp.code).toBe(2);
    expect(sftp.stderr).toBe('ferry: error: --transport openssh carries the helper protocol only: drop --mode sftp, or use --transport ssh2 for SFTP\n');
    const cmd = await runFerry(['cp', src, remote('/tmp/'), '--ssh-cmd', 'ssh -4', ...common()]);
    expect(cmd.code).toBe(2);
    expect(cmd.stderr).toBe('ferry: error: --ssh-cmd is used by --transport openssh only: add --transport openssh\n');
  });
});
