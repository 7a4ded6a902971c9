/**
 * The embedded client honours ~/.ssh/config as scp would, against real sshds
 * on loopback. Every ferry here runs with HOME and the system ssh directory
 * (FERRY_TEST_SSH_ETC) pointed at this test's own directories, and no
 * ssh-agent unless a test starts one: the machine's ~/.ssh and /etc/ssh are
 * never read or touched.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { fileHash, killStrays, makeRandomFile, REMOTE_CMD, runFerry, tempDir } from './helpers.js';
import type { RunResult } from './helpers.js';

const MiB = 1024 * 1024;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;
let srcHash: string;
let cases = 0;

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-ssh-config-');
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, 40 * MiB);
  srcHash = await fileHash(src);
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

interface Case {
  dir: string;
  home: string;
  /** Stands in for /etc/ssh. */
  etc: string;
  /** Where copies land. */
  out: string;
  config: string;
  run(args: string[], env?: Record<string, string | undefined>): Promise<RunResult>;
}

/** A fresh HOME (with ~/.ssh), system ssh directory and destination directory. */
async function newCase(config?: string): Promise<Case> {
  const dir = join(work.path, `case-${++cases}`);
  const home = join(dir, 'home');
  const etc = join(dir, 'etc-ssh');
  const out = join(dir, 'out');
  await mkdir(join(home, '.ssh'), { recursive: true, mode: 0o700 });
  await mkdir(etc, { recursive: true });
  await mkdir(out);
  const file = join(home, '.ssh', 'config');
  if (config !== undefined) await writeFile(file, config, { mode: 0o600 });
  return {
    dir,
    home,
    etc,
    out,
    config: file,
    run: (args, env = {}) =>
      runFerry([...args, '--remote-cmd', REMOTE_CMD], { env: { HOME: home, FERRY_TEST_SSH_ETC: etc, SSH_AUTH_SOCK: undefined, XDG_STATE_HOME: undefined, ...env } }),
  };
}

function aliasFor(name: string, server: Sshd, extra: string[] = []): string {
  return [`Host ${name}`, `  HostName ${server.host}`, `  Port ${server.port}`, `  User ${server.user}`, `  IdentityFile ${server.userKey}`, ...extra.map((l) => `  ${l}`), ''].join('\n');
}

/** The test sshd's host key, recorded in `file` (the default user known_hosts unless said). */
async function trust(c: Case, file = join(c.home, '.ssh', 'known_hosts'), server = sshd): Promise<void> {
  await writeFile(file, `${server.hostKeyLine}\n`);
}

describe('hosts from ~/.ssh/config (embedded ssh2 client)', () => {
  it('copies both ways to an alias with HostName, Port, User and IdentityFile and no other flags; without the config it cannot', async () => {
    const c = await newCase(aliasFor('mydtn', sshd));
    await trust(c);
    const accepted = async () => ((await readFile(sshd.log, 'utf8')).match(/Accepted publickey/g) ?? []).length;
    const before = await accepted();
    // One agent of two streams, warm: agent 0 uses the coordinator's connection and one opened
    // ahead, which it takes only if the route in the job's spec is the one it connected with.
    const push = await c.run(['cp', src, `mydtn:${c.out}/`, '--agents', '1', '--streams', '2', '-v']);
    expect(push.code).toBe(0);
    expect(push.stderr).not.toContain('warning');
    expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
    expect(push.stderr).toMatch(/slot \d: using the connection to mydtn, opened while the coordinator prepared/);
    expect(push.stderr).toMatch(/slot \d: using the coordinator's connection to mydtn, opened while the coordinator prepared/);
    expect((await accepted()) - before).toBe(2);

    const pulled = join(c.dir, 'pulled.bin');
    const pull = await c.run(['cp', `mydtn:${c.out}/src.bin`, pulled]);
    expect(pull.stderr).toBe('');
    expect(pull.code).toBe(0);
    expect(await fileHash(pulled)).toBe(srcHash);

    await rm(c.config);
    const without = await c.run(['cp', src, `mydtn:${c.out}/again.bin`]);
    expect(without.code).toBe(30);
    expect(without.stderr).toBe(`ferry: error: no SSH key to authenticate as ${sshd.user}@mydtn: start ssh-agent with your key loaded, or pass -i KEYFILE (or name it with IdentityFile in ~/.ssh/config)\n`);
  });

  it('names the alias and where it really is when the host key is unknown, and the known_hosts files it checked (exit 31)', async () => {
    const c = await newCase(aliasFor('mydtn', sshd));
    const other = `[${sshd.host}]:1 ${sshd.hostKeyLine.split(' ').slice(1).join(' ')}`;
    await writeFile(join(c.home, '.ssh', 'known_hosts'), `${other}\n`);
    await writeFile(join(c.etc, 'ssh_known_hosts'), `${other}\n`);
    const r = await c.run(['cp', src, `mydtn:${c.out}/`]);
    expect(r.code).toBe(31);
    expect(r.stderr).toBe(
      `ferry: error: host key of mydtn (${sshd.host}:${sshd.port}) is not in ${join(c.home, '.ssh', 'known_hosts')}, ${join(c.etc, 'ssh_known_hosts')}: check its fingerprint with the host's admins, then rerun with --accept-new-host-key (or add it with ssh-keyscan)\n`,
    );
  });

  it('accepts a host key known only from the global known_hosts file', async () => {
    const c = await newCase(aliasFor('sitehost', sshd));
    await trust(c, join(c.etc, 'ssh_known_hosts2'));
    const r = await c.run(['cp', src, `sitehost:${c.out}/`]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
    expect(existsSync(join(c.home, '.ssh', 'known_hosts'))).toBe(false);
    // And without it, nothing else vouches for the host.
    await rm(join(c.etc, 'ssh_known_hosts2'));
    expect((await c.run(['cp', src, `sitehost:${c.out}/`])).code).toBe(31);
  });

  it('records a new host key where StrictHostKeyChecking accept-new says to, in the UserKnownHostsFile the config names', async () => {
    const kh = join(work.path, `kh-accept-new-${cases}`);
    const c = await newCase(aliasFor('newhost', sshd, ['StrictHostKeyChecking accept-new', `UserKnownHostsFile ${kh}`]));
    const r = await c.run(['cp', src, `newhost:${c.out}/`]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect((await readFile(kh, 'utf8')).trim()).toBe(sshd.hostKeyLine);
  });

  it('offers the key IdentityFile names, not the wrong one in the default place', async () => {
    const c = await newCase();
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(c.home, '.ssh', 'id_ed25519')]);
    await trust(c);
    const target = `${sshd.host}:${sshd.port}:${c.out}/`;
    const wrong = await c.run(['cp', src, target]);
    expect(wrong.code).toBe(30);
    expect(wrong.stderr).toContain(`(tried ${join(c.home, '.ssh', 'id_ed25519')})`);
    await writeFile(c.config, `Host ${sshd.host}\n  IdentityFile ${sshd.userKey}\n`, { mode: 0o600 });
    const right = await c.run(['cp', src, target]);
    expect(right.stderr).toBe('');
    expect(right.code).toBe(0);
    expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
  });

  it('offers none of ssh-agent\'s other keys with IdentitiesOnly, so a server that allows two tries gets to the right key', async () => {
    const strict = await startSshd({ dir: join(work.path, 'sshd-maxauth'), extraConfig: ['MaxAuthTries 2'] });
    let agent: ChildProcess | undefined;
    try {
      const c = await newCase();
      await trust(c, undefined, strict);
      const socket = join(c.dir, 'agent.sock');
      agent = spawn('ssh-agent', ['-D', '-a', socket], { stdio: 'ignore' });
      for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
      for (const name of ['stranger1', 'stranger2']) {
        const key = join(c.dir, name);
        execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
        execFileSync('ssh-add', ['-q', key], { env: { ...process.env, SSH_AUTH_SOCK: socket }, stdio: 'ignore' });
      }
      const config = (only: boolean) => aliasFor('strict', strict, only ? ['IdentitiesOnly yes'] : []);
      await writeFile(c.config, config(false), { mode: 0o600 });
      const flooded = await c.run(['cp', src, `strict:${c.out}/`], { SSH_AUTH_SOCK: socket });
      expect(flooded.code).toBe(30);
      expect(flooded.stderr).toBe(
        `ferry: error: authentication as ${strict.user}@strict (${strict.host}:${strict.port}) failed: the server ended the login (Too many authentication failures) while ferry offered ssh-agent, ${strict.userKey}: with many keys in ssh-agent, set IdentitiesOnly yes and the IdentityFile for this host in ~/.ssh/config, or pass -i KEYFILE\n`,
      );
      await writeFile(c.config, config(true), { mode: 0o600 });
      const r = await c.run(['cp', src, `strict:${c.out}/`], { SSH_AUTH_SOCK: socket });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
    } finally {
      agent?.kill();
      await strict.stop();
    }
  });

  it('goes through the ProxyJump host for every connection, checking both host keys', async () => {
    const jump = await startSshd({ dir: join(work.path, 'sshd-jump'), logLevel: 'DEBUG1' });
    try {
      const c = await newCase(
        [
          'Host target',
          `  HostName ${sshd.host}`,
          `  Port ${sshd.port}`,
          `  IdentityFile ${sshd.userKey}`,
          `  ProxyJump ${jump.user}@gateway:${jump.port}`,
          'Host gateway',
          `  HostName ${jump.host}`,
          `  IdentityFile ${jump.userKey}`,
          '',
        ].join('\n'),
      );
      await writeFile(join(c.home, '.ssh', 'known_hosts'), `${sshd.hostKeyLine}\n`);
      const acceptedAtTarget = async () => ((await readFile(sshd.log, 'utf8')).match(/Accepted publickey/g) ?? []).length;
      const forwards = async () => ((await readFile(jump.log, 'utf8')).match(new RegExp(`server_request_direct_tcpip: originator \\S+ port \\d+, target ${sshd.host.replace(/\./g, '\\.')} port ${sshd.port}\\b`, 'g')) ?? []).length;

      // The jump host's key is checked too: not known yet, so no connection is made.
      const unknownJump = await c.run(['cp', src, `target:${c.out}/`]);
      expect(unknownJump.code).toBe(31);
      expect(unknownJump.stderr).toContain(`ferry: error: host key of jump host gateway:${jump.port} (${jump.host}:${jump.port}) on the way to target is not in ${join(c.home, '.ssh', 'known_hosts')}:`);
      expect(await forwards()).toBe(0);

      await writeFile(join(c.home, '.ssh', 'known_hosts'), `${sshd.hostKeyLine}\n${jump.hostKeyLine}\n`);
      const before = await acceptedAtTarget();
      const push = await c.run(['cp', src, `target:${c.out}/`]);
      expect(push.stderr).toBe('');
      expect(push.code).toBe(0);
      expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
      const pulled = join(c.dir, 'pulled.bin');
      const pull = await c.run(['cp', `target:${c.out}/src.bin`, pulled]);
      expect(pull.code).toBe(0);
      expect(await fileHash(pulled)).toBe(srcHash);
      // Every login at the target came through a channel the jump host opened to it.
      const logins = (await acceptedAtTarget()) - before;
      expect(logins).toBeGreaterThanOrEqual(2);
      expect(await forwards()).toBe(logins);
    } finally {
      await jump.stop();
    }
  });

  it('says once per host what it does not honour (ProxyCommand), suggesting --transport openssh, and copies all the same', async () => {
    const c = await newCase(['Host warn*', `  HostName ${sshd.host}`, `  Port ${sshd.port}`, `  IdentityFile ${sshd.userKey}`, '  ProxyCommand nc %h %p', '  ForwardAgent yes', '  Compression yes', ''].join('\n'));
    await trust(c);
    const r = await c.run(['cp', src, `warn[1-2]:${c.out}/`, '--agents', '2', '--streams', '2']);
    expect(r.stderr).toBe(`ferry: warning: warn1, warn2: the embedded SSH client does not honour ProxyCommand (${c.config} line 5): use --transport openssh to have ssh apply it\n`);
    expect(r.code).toBe(0);
    expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
  });

  it('reads only the file -F names: not ~/.ssh/config, not the system-wide one', async () => {
    const closed = await freePort();
    const c = await newCase(`Host fhost\n  HostName ${sshd.host}\n  Port ${closed}\n  IdentityFile ${sshd.userKey}\n`);
    await writeFile(join(c.etc, 'ssh_config'), 'Host fhost\n  User nobody-here\n');
    await trust(c);
    const given = join(c.dir, 'given_config');
    await writeFile(given, `Host fhost\n  HostName ${sshd.host}\n  Port ${sshd.port}\n  IdentityFile ${sshd.userKey}\n`);
    const usual = await c.run(['cp', src, `fhost:${c.out}/`]);
    expect(usual.code).toBe(40);
    expect(usual.stderr).toBe(`ferry: error: cannot reach fhost (${sshd.host}:${closed}) over SSH (ECONNREFUSED): check the host name and port, the network path, and that sshd runs there\n`);
    const r = await c.run(['cp', src, `fhost:${c.out}/`, '-F', given]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
    const missing = await c.run(['cp', src, `fhost:${c.out}/`, '-F', join(c.dir, 'nope')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe(`ferry: error: ssh config file ${join(c.dir, 'nope')} (-F) does not exist: check the path, or give -F none for no configuration\n`);
  });

  it('refuses a ~/.ssh/config that others may write, as ssh does', async () => {
    const c = await newCase(aliasFor('mydtn', sshd));
    await chmod(c.config, 0o664);
    const r = await c.run(['cp', src, `mydtn:${c.out}/`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`bad owner or permissions on ${c.config}`);
  });

  it('passes -F on to ssh with --transport openssh', async () => {
    const c = await newCase();
    const given = join(c.dir, 'given_config');
    const kh = join(c.dir, 'known_hosts');
    await copyFile(sshd.knownHosts, kh);
    await writeFile(given, aliasFor('osshhost', sshd, [`UserKnownHostsFile ${kh}`]));
    const r = await c.run(['cp', src, `osshhost:${c.out}/`, '--transport', 'openssh', '-F', given]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(join(c.out, 'src.bin'))).toBe(srcHash);
  });
});
