/**
 * The rendezvous file of `ferry run` (launch.ts) against another Unix user:
 * it holds the job's NATS token, so rank 0 writes it only into a directory of
 * the user's that others cannot write, through an unguessable O_EXCL|O_NOFOLLOW
 * name, and the other ranks refuse a file or directory another user could
 * have made or can read. Also the state files' writer (coordinator's
 * private-file.ts), which job-state.ts uses.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writePrivateFile } from '@ferry/coordinator';
import { readRendezvous, writeRendezvous } from '../src/launch.js';

let root: string;
let other: string | undefined;
let otherIds: { uid: number; gid: number };
const FIX = 'put --rendezvous in a directory of your own that only you can write (the default is under --state-dir)';
const value = { launchId: 'l1', jobId: 'j1', url: 'nats://10.0.0.1:4222', token: 'secret-token', at: 1 };

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'ferry-rv-'));
  chmodSync(root, 0o755);
  other = `ferryrv${process.pid % 100000}`;
  execFileSync('useradd', ['-M', '-d', '/nonexistent', '-s', '/bin/sh', '-p', '*', other]);
  otherIds = { uid: Number(execFileSync('id', ['-u', other]).toString().trim()), gid: Number(execFileSync('id', ['-g', other]).toString().trim()) };
});

afterAll(() => {
  if (other) execFileSync('userdel', [other], { stdio: 'ignore' });
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Runs a shell command as the other user. */
function asOther(script: string): void {
  execFileSync('setpriv', [`--reuid=${otherIds.uid}`, `--regid=${otherIds.gid}`, '--clear-groups', 'sh', '-c', script]);
}

function dir(name: string, mode = 0o700): string {
  const d = join(root, name);
  mkdirSync(d);
  chmodSync(d, mode);
  return d;
}

describe('rendezvous file', () => {
  it('is written 0600 through a temporary name that is gone afterwards, and read back', async () => {
    const d = dir('ok');
    const file = join(d, 'rv.json');
    await writeRendezvous(file, value);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readdirSync(d)).toEqual(['rv.json']);
    expect(await readRendezvous(file)).toEqual(value);
    // Rewritten (rank 0's "finished"), still one file.
    await writeRendezvous(file, { launchId: 'l1', finished: true, exitCode: 0, at: 2 });
    expect(readdirSync(d)).toEqual(['rv.json']);
    expect((await readRendezvous(file))?.finished).toBe(true);
  });

  it('reads as not there yet while neither the file nor its directory exists', async () => {
    expect(await readRendezvous(join(root, 'nowhere', 'rv.json'))).toBeUndefined();
    expect(await readRendezvous(join(dir('empty'), 'rv.json'))).toBeUndefined();
  });

  it("is not written into a shared directory where another user planted links at the temporary names (the token would have gone into the other user's file)", async () => {
    const shared = dir('shared', 0o1777);
    const file = join(shared, 'rv.json');
    // The other user's trap: links at the names the writer used to use, into a file of theirs.
    asOther(`touch ${shared}/stolen && chmod 666 ${shared}/stolen && for p in $(seq ${Math.max(1, process.pid - 5)} ${process.pid + 5}); do ln -s ${shared}/stolen ${file}.tmp-$p; done`);
    await expect(writeRendezvous(file, value)).rejects.toMatchObject({
      code: 'USAGE',
      message: `rendezvous file: directory ${shared} has mode 1777, so others can replace its files: ${FIX}, or chmod go-w ${shared}`,
    });
    expect(readFileSync(join(shared, 'stolen'), 'utf8')).toBe('');
    expect(readdirSync(shared).filter((n) => !n.includes('.tmp-') && n !== 'stolen')).toEqual([]);
  });

  it('is refused by the other ranks in a group-writable directory', async () => {
    const d = dir('group', 0o770);
    chmodSync(d, 0o2775);
    await expect(readRendezvous(join(d, 'rv.json'))).rejects.toMatchObject({
      code: 'USAGE',
      message: `rendezvous file: directory ${d} has mode 2775, so others can replace its files: ${FIX}, or chmod go-w ${d}`,
    });
  });

  it("is refused in a directory that is another user's", async () => {
    const d = dir('theirs', 0o755);
    chownSync(d, otherIds.uid, otherIds.gid);
    asOther(`printf '%s' '${JSON.stringify({ ...value, url: 'nats://evil:4222' })}' > ${d}/rv.json && chmod 600 ${d}/rv.json`);
    await expect(readRendezvous(join(d, 'rv.json'))).rejects.toMatchObject({
      code: 'USAGE',
      message: `rendezvous file: directory ${d} belongs to uid ${otherIds.uid}, not you (uid ${process.getuid!()}), so its files cannot be trusted: ${FIX}`,
    });
  });

  it("is refused when the file is another user's, even in the user's own directory", async () => {
    const d = dir('planted');
    const file = join(d, 'rv.json');
    writeFileSync(file, JSON.stringify({ ...value, url: 'nats://evil:4222' }), { mode: 0o600 });
    chownSync(file, otherIds.uid, otherIds.gid);
    await expect(readRendezvous(file)).rejects.toMatchObject({ code: 'USAGE', message: `rendezvous file: ${file} belongs to uid ${otherIds.uid}, not you (uid ${process.getuid!()}): ${FIX}` });
  });

  it('is refused when it is a symbolic link, which it is not followed through', async () => {
    const d = dir('link');
    const target = join(d, 'elsewhere.json');
    writeFileSync(target, JSON.stringify(value), { mode: 0o600 });
    const file = join(d, 'rv.json');
    symlinkSync(target, file);
    await expect(readRendezvous(file)).rejects.toMatchObject({ code: 'USAGE', message: `rendezvous file: ${file} is a symbolic link, which ferry does not follow here: ${FIX}` });
  });

  it('is refused when others can read it (it holds the token)', async () => {
    const d = dir('readable');
    const file = join(d, 'rv.json');
    writeFileSync(file, JSON.stringify(value));
    chmodSync(file, 0o640);
    await expect(readRendezvous(file)).rejects.toMatchObject({ code: 'USAGE', message: `rendezvous file: ${file} has mode 0640, so others can read or change it: ${FIX}, or chmod 600 ${file}` });
  });
});

describe('private files (job state)', () => {
  it('replaces a link at the path instead of writing through it, and never opens a name planted in advance', async () => {
    const d = dir('state');
    const victim = join(d, 'precious');
    writeFileSync(victim, 'keep me', { mode: 0o600 });
    const path = join(d, 'job.json');
    symlinkSync(victim, path);
    // The old predictable name, planted: the writer does not use it.
    symlinkSync(victim, `${path}.tmp-${process.pid}`);
    await writePrivateFile(path, '{"v":1}\n');
    expect(readFileSync(victim, 'utf8')).toBe('keep me');
    expect(lstatSync(path).isFile()).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(path, 'utf8')).toBe('{"v":1}\n');
    expect(readdirSync(d).sort()).toEqual(['job.json', `job.json.tmp-${process.pid}`, 'precious']);
  });
});
