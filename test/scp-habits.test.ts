/**
 * What a user coming from scp expects, against a real sshd: `~` and `~user`
 * on the remote side in both data paths and both transports, and IPv6 hosts
 * printed the way they are typed (`[::1]:2222:/path`).
 */
import { execFileSync } from 'node:child_process';
import { chmod, chown, mkdir, readFile, readdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { fileHash, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;
let srcHash: string;
/** A user whose home directory is in the test's work directory: `~` must land there, not in root's home. */
let user: string;
let home: string;

function common(extra: string[] = []): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'state'), ...extra];
}

/** `who@host:port:path` on the test sshd. */
function at(who: string, path: string): string {
  return `${who}@${sshd.host}:${sshd.port}:${path}`;
}

beforeAll(async () => {
  sshd = await startSshd();
  // sshd reads authorized_keys as the user logging in: the test user must reach it.
  await chmod(sshd.dir, 0o755);
  work = await tempDir('ferry-scp-');
  // The test user must be able to reach its home and read the source.
  await chmod(work.path, 0o755);
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, 3 * MiB);
  await chmod(src, 0o644);
  srcHash = await fileHash(src);
  user = `ferryh${process.pid % 100000}`;
  home = join(work.path, 'home');
  await mkdir(home);
  // A password of '*' (none works) rather than useradd's '!' (locked): sshd refuses locked accounts.
  execFileSync('useradd', ['-M', '-d', home, '-s', '/bin/sh', '-p', '*', user]);
  const uid = Number(execFileSync('id', ['-u', user]).toString().trim());
  const gid = Number(execFileSync('id', ['-g', user]).toString().trim());
  await chown(home, uid, gid);
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  if (user) execFileSync('userdel', [user], { stdio: 'ignore' });
  await sshd?.stop();
  await work?.remove();
});

describe.each([
  ['helper', 'ssh2'],
  ['sftp', 'ssh2'],
  ['helper', 'openssh'],
] as const)('~ on the remote side in %s mode over %s', (mode, transport) => {
  const opts = () => common(['--mode', mode, '--transport', transport]);

  it('pushes to ~/, ~ and ~/name: the login directory', async () => {
    const dir = join(home, `push-${mode}-${transport}`);
    await mkdir(dir);
    await chown(dir, ...(await ownerOf(home)));
    const r = await runFerry(['cp', src, at(user, `~/push-${mode}-${transport}/`), ...opts()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // The summary names where the file went, ~ worked out.
    expect(r.stdout).toContain(`-> ${at(user, `${dir}/src.bin`)}\n`);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);

    const bare = await runFerry(['cp', src, at(user, '~'), ...opts()]);
    expect(bare.stderr).toBe('');
    expect(bare.code).toBe(0);
    expect(await fileHash(join(home, 'src.bin'))).toBe(srcHash);

    const named = await runFerry(['cp', src, at(user, `~/push-${mode}-${transport}/named.bin`), ...opts()]);
    expect(named.stderr).toBe('');
    expect(named.code).toBe(0);
    expect(await fileHash(join(dir, 'named.bin'))).toBe(srcHash);
    // Nothing called `~` was made anywhere.
    expect((await readdir(home)).filter((n) => n.includes('~'))).toEqual([]);
  });

  it('pulls from ~/path', async () => {
    const dir = join(work.path, `pull-${mode}-${transport}`);
    await mkdir(dir);
    const r = await runFerry(['cp', at(user, `~/push-${mode}-${transport}/src.bin`), `${dir}/`, ...opts()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`ferry: copied ${at(user, `${home}/push-${mode}-${transport}/src.bin`)} -> ${dir}/src.bin\n`);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);
  });

  it("pushes to and pulls from ~user/path: that user's home", async () => {
    const r = await runFerry(['cp', src, at('root', `~${user}/push-${mode}-${transport}/as-root.bin`), ...opts()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(join(home, `push-${mode}-${transport}`, 'as-root.bin'))).toBe(srcHash);
    const pulled = join(work.path, `pulled-user-${mode}-${transport}.bin`);
    const p = await runFerry(['cp', at('root', `~${user}/push-${mode}-${transport}/as-root.bin`), pulled, ...opts()]);
    expect(p.stderr).toBe('');
    expect(p.code).toBe(0);
    expect(await fileHash(pulled)).toBe(srcHash);
  });

  it('fails with exit 20 (push) and 10 (pull) for a ~user that does not exist, naming it', async () => {
    const label = `${sshd.host}:${sshd.port}`;
    const push = await runFerry(['cp', src, at('root', '~nosuchuser4711/in/'), ...opts()]);
    expect({ code: push.code, stderr: push.stderr }).toEqual({
      code: 20,
      stderr: `ferry: error: destination ${label}:~nosuchuser4711/in/ cannot be created: there is no user nosuchuser4711 on ${label}: check the name after ~, or write the path out in full\n`,
    });
    const pull = await runFerry(['cp', at('root', '~nosuchuser4711/x.bin'), join(work.path, 'never.bin'), ...opts()]);
    expect({ code: pull.code, stderr: pull.stderr }).toEqual({
      code: 10,
      stderr: `ferry: error: source ${label}:~nosuchuser4711/x.bin does not exist: there is no user nosuchuser4711 on ${label}; check the name after ~\n`,
    });
  });

  it('never lets a remote path or a ~user name reach a shell unquoted', async () => {
    const odd = `it's $(touch pwned-${mode}-${transport}) ;x`;
    await mkdir(join(home, odd));
    await chown(join(home, odd), ...(await ownerOf(home)));
    const r = await runFerry(['cp', src, at(user, `~/${odd}/`), ...opts()]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await fileHash(join(home, odd, 'src.bin'))).toBe(srcHash);
    const name = `$(touch${'${IFS}'}pwned-${mode}-${transport})'x`;
    const bad = await runFerry(['cp', src, at(user, `~${name}/x.bin`), ...opts()]);
    expect(bad.code).toBe(20);
    expect(bad.stderr).toContain(`there is no user ${name} on`);
    // Neither ran: no such file where a shell would have made it (the login directory).
    expect((await readdir(home)).filter((n) => n.startsWith('pwned'))).toEqual([]);
  });
});

async function ownerOf(path: string): Promise<[number, number]> {
  const { stat } = await import('node:fs/promises');
  const st = await stat(path);
  return [st.uid, st.gid];
}

/** Whether this machine can listen on the IPv6 loopback address (containers often cannot). */
async function hasIpv6Loopback(): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(0, '::1', () => srv.close(() => resolve(true)));
  });
}

const ipv6 = await hasIpv6Loopback();

describe.runIf(ipv6)('an IPv6 host is printed as it is typed, [::1]', () => {
  let sshd6: Sshd;
  let dir: string;
  let label: string;
  const opts = () => ['-i', sshd6.userKey, '--known-hosts', sshd6.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(work.path, 'state6')];

  beforeAll(async () => {
    sshd6 = await startSshd({ listen: '::1' });
    dir = join(work.path, 'v6');
    await mkdir(dir);
    label = `[::1]:${sshd6.port}`;
  });

  afterAll(async () => {
    await sshd6?.stop();
  });

  it('in the summary, the --json events, job.json and ferry status', async () => {
    const dest = `${sshd6.user}@[::1]:${sshd6.port}:${dir}/`;
    const human = await runFerry(['cp', src, dest, ...opts()]);
    expect(human.stderr).toBe('');
    expect(human.code).toBe(0);
    expect(human.stdout).toContain(`ferry: copied ${src} -> ${sshd6.user}@${label}:${dir}/src.bin\n`);

    const pulled = join(dir, 'pulled.bin');
    const json = await runFerry(['cp', `${sshd6.user}@${label}:${dir}/src.bin`, pulled, '--json', ...opts()]);
    expect(json.code).toBe(0);
    const events = parseEvents(json.stdout);
    const start = events.find((e) => e.type === 'job.start')!;
    expect(start.source).toBe(`${sshd6.user}@${label}:${dir}/src.bin`);
    const done = events.filter((e) => e.type === 'range.done');
    expect(done.length).toBeGreaterThan(0);
    for (const e of done) expect(e.host).toBe(label);
    expect(events.find((e) => e.type === 'done')!.source).toBe(`${sshd6.user}@${label}:${dir}/src.bin`);
    expect(await fileHash(pulled)).toBe(srcHash);

    const jobId = String(start.jobId);
    const job = JSON.parse(await readFile(join(work.path, 'state6', 'jobs', jobId, 'job.json'), 'utf8')) as { sourceLabel: string };
    expect(job.sourceLabel).toBe(`${sshd6.user}@${label}:${dir}/src.bin`);
    const status = await runFerry(['status', jobId, '--state-dir', join(work.path, 'state6')]);
    expect(status.code).toBe(0);
    expect(status.stdout).toContain(`  ${sshd6.user}@${label}:${dir}/src.bin -> ${pulled}\n`);
    expect(status.stdout).toContain(`    remote host ${label}: 3.0 MiB written\n`);
  });

  it('in error messages and the --json error event', async () => {
    const r = await runFerry(['cp', src, `[::1]:${sshd6.port}:/no/such/x.bin`, '--json', ...opts()]);
    expect(r.code).toBe(20);
    expect(r.stderr).toBe(`ferry: error: destination directory ${label}:/no/such does not exist: /no is missing; create it first (ferry does not create directories)\n`);
    const error = parseEvents(r.stdout).find((e) => e.type === 'error')!;
    expect(error.host).toBe(label);
  });
});
