/**
 * `ferry check SRC DST` against a real sshd: identical trees exit 0 (local
 * against remote, both orders); a changed byte, a file on one side only, a
 * link's target, a change in the middle of a 96 MiB file cut into ranges are
 * each found and listed (exit 53), `--size-only` misses what has the same
 * size; an entry that cannot be read is `!` (exit 54); SFTP mode once; the
 * list files are written as `>` would, never through a link.
 */
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readFile, readlink, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { on } from './tree-helpers.js';
import { flipByte, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
/** The reference tree, and copies of it made with cp -a. */
let src: string;
/** Bytes of the files besides big.bin. */
let smallBytes = 0;

function conn(extra: string[] = []): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--range-size', '8MiB', ...extra];
}

async function copyOf(name: string): Promise<string> {
  const dst = join(work.path, name);
  execFileSync('cp', ['-a', src, dst]);
  return dst;
}

/** The `MARK path` lines of a human run's stdout, sorted (entries come as they are decided). */
function marks(stdout: string): string[] {
  return stdout
    .split('\n')
    .filter((l) => /^[=*+!-] /.test(l))
    .sort();
}

function done(stdout: string): Record<string, unknown> {
  return parseEvents(stdout).find((e) => e.type === 'check.done')!;
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-check-');
  src = join(work.path, 'src');
  await mkdir(join(src, 'sub', 'deeper'), { recursive: true });
  await mkdir(join(src, 'empty-dir'));
  const small = async (path: string, text: string) => {
    await writeFile(join(src, path), text);
    smallBytes += Buffer.byteLength(text);
  };
  for (let i = 0; i < 20; i++) await small(`sub/f${i}.txt`, `file ${i}\n`.repeat(i * 50 + 1));
  await small('sub/deeper/notes.txt', 'some notes\n');
  await small('empty.txt', '');
  await small('going.txt', 'only in the source after the change\n');
  await makeRandomFile(join(src, 'big.bin'), 96 * MiB);
  await symlink('sub/f1.txt', join(src, 'link'));
}, 60_000);

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe('ferry check', () => {
  it('exits 0 for identical trees, local against remote and remote against local', async () => {
    const same = await copyOf('same');
    const push = await runFerry(['check', ...conn(['--json']), src, on(sshd, same)]);
    expect(push.stderr).toBe('');
    expect(push.code).toBe(0);
    const events = parseEvents(push.stdout);
    expect(events.filter((e) => e.type === 'check.entry')).toEqual([]);
    expect(events[0]).toMatchObject({ type: 'check.start', hash: 'xxh3', modes: ['local', 'helper'] });
    // 20 + 4 files, 3 directories, 1 link; the roots are not entries.
    expect(done(push.stdout)).toMatchObject({ same: 28, differ: 0, missingOnDst: 0, missingOnSrc: 0, errors: 0, bytesHashed: 96 * MiB + smallBytes, exitCode: 0 });
    const pull = await runFerry(['check', ...conn(), on(sshd, same), src]);
    expect(pull.code).toBe(0);
    expect(marks(pull.stdout)).toEqual([]);
    expect(pull.stdout).toMatch(/: 28 same, 0 differ, 0 only in source, 0 only in destination, 0 errors; 96\.\d MiB hashed \(xxh3\)/);
  }, 120_000);

  it('finds a changed byte, a file on one side only, a link target and a change in the middle of a big file; writes the lists', async () => {
    const changed = await copyOf('changed');
    await flipByte(join(changed, 'sub', 'f7.txt'), 100);
    await flipByte(join(changed, 'big.bin'), 50 * MiB + 3);
    await unlink(join(changed, 'going.txt'));
    await writeFile(join(changed, 'sub', 'new.txt'), 'only in the destination\n');
    await unlink(join(changed, 'link'));
    await symlink('sub/f2.txt', join(changed, 'link'));
    const lists = join(work.path, 'lists');
    await mkdir(lists);
    // An existing file of the user's is written over, as > would.
    await writeFile(join(lists, 'combined.txt'), 'old content, longer than what replaces it '.repeat(1000));
    const flags = ['combined', 'match', 'differ', 'missing-on-dst', 'missing-on-src', 'error'].flatMap((k) => [`--${k}`, join(lists, `${k}.txt`)]);
    const expected = ['* big.bin', '* link', '* sub/f7.txt', '+ going.txt', '- sub/new.txt'];
    for (const [from, to] of [
      [src, on(sshd, changed)],
      [on(sshd, src), changed],
    ] as const) {
      const r = await runFerry(['check', ...conn(flags), from, to]);
      expect(r.code).toBe(53);
      expect(marks(r.stdout)).toEqual(expected);
      expect(r.stderr).toMatch(/the copies differ: 3 differ, 1 only in the source, 1 only in the destination/);
      const list = async (k: string) => (await readFile(join(lists, `${k}.txt`), 'utf8')).split('\n').filter(Boolean).sort();
      expect(await list('differ')).toEqual(['big.bin', 'link', 'sub/f7.txt']);
      expect(await list('missing-on-dst')).toEqual(['going.txt']);
      expect(await list('missing-on-src')).toEqual(['sub/new.txt']);
      expect(await list('error')).toEqual([]);
      expect(await list('match')).toHaveLength(24);
      expect(await list('match')).toContain('sub/f1.txt');
      const combined = await list('combined');
      expect(combined).toHaveLength(29);
      expect(combined.filter((l) => !l.startsWith('= '))).toEqual(expected);
    }
  }, 120_000);

  it('misses a changed byte with --size-only (exit 0), finds it without', async () => {
    const onebyte = await copyOf('onebyte');
    await flipByte(join(onebyte, 'sub', 'f3.txt'), 10);
    const full = await runFerry(['check', ...conn(), src, on(sshd, onebyte)]);
    expect(full.code).toBe(53);
    expect(marks(full.stdout)).toEqual(['* sub/f3.txt']);
    const fast = await runFerry(['check', ...conn(['--size-only', '--json']), src, on(sshd, onebyte)]);
    expect(fast.code).toBe(0);
    expect(done(fast.stdout)).toMatchObject({ same: 28, differ: 0, hash: 'none', bytesHashed: 0 });
  }, 120_000);

  it('compares two remote trees, and a local file with a remote one', async () => {
    const onebyte = join(work.path, 'onebyte');
    const both = await runFerry(['check', ...conn(['--json']), on(sshd, src), on(sshd, onebyte)]);
    expect(both.code).toBe(53);
    const events = parseEvents(both.stdout);
    expect(events[0]).toMatchObject({ type: 'check.start', modes: ['helper', 'helper'] });
    expect(events.filter((e) => e.type === 'check.entry').map((e) => e.path)).toEqual(['sub/f3.txt']);
    // Both walks hashed the small files as they went (ferry serve's walk-hash): the same finding,
    // the same bytes counted as with the python helper, whose walk brings no hashes.
    const python = await runFerry(['check', ...conn(['--json', '--mode', 'python']), on(sshd, src), on(sshd, onebyte)]);
    expect(python.code).toBe(53);
    const pyEvents = parseEvents(python.stdout);
    expect(pyEvents[0]).toMatchObject({ type: 'check.start', modes: ['python', 'python'] });
    expect(pyEvents.filter((e) => e.type === 'check.entry').map((e) => e.path)).toEqual(['sub/f3.txt']);
    const counts = (evs: Array<Record<string, unknown>>) => {
      const d = evs.find((e) => e.type === 'check.done')!;
      return { same: d.same, differ: d.differ, bytesHashed: d.bytesHashed };
    };
    expect(counts(events)).toEqual(counts(pyEvents));
    // Files as the roots: the entry goes by the source's name.
    const file = await runFerry(['check', ...conn(), join(src, 'sub', 'f3.txt'), on(sshd, join(onebyte, 'sub', 'f3.txt'))]);
    expect(file.code).toBe(53);
    expect(marks(file.stdout)).toEqual(['* f3.txt']);
  }, 120_000);

  it('compares in SFTP mode too (sha256 by the remote sha256sum, or read back)', async () => {
    const changed = join(work.path, 'changed');
    const r = await runFerry(['check', ...conn(['--mode', 'sftp', '--json']), on(sshd, src), changed]);
    expect(r.code).toBe(53);
    const events = parseEvents(r.stdout);
    expect(events[0]).toMatchObject({ type: 'check.start', hash: 'sha256', modes: ['sftp', 'local'] });
    expect(events.filter((e) => e.type === 'check.entry').map((e) => `${String(e.mark)} ${String(e.path)}`).sort()).toEqual(['* big.bin', '* link', '* sub/f7.txt', '+ going.txt', '- sub/new.txt']);
  }, 120_000);

  it('marks an entry it cannot read with ! and exits 54 when nothing differs', async () => {
    const a = join(work.path, 'odd-a');
    const b = join(work.path, 'odd-b');
    for (const root of [a, b]) {
      await mkdir(root);
      await writeFile(join(root, 'fine.txt'), 'fine\n');
      // A name that is not UTF-8: no walk can report it as a path, on either side.
      await writeFile(Buffer.concat([Buffer.from(`${root}/bad-`), Buffer.from([0xff, 0xfe])]), 'x');
    }
    const r = await runFerry(['check', ...conn(['--json']), a, on(sshd, b)]);
    expect(r.code).toBe(54);
    const entries = parseEvents(r.stdout).filter((e) => e.type === 'check.entry');
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ status: 'error', mark: '!', reason: expect.stringMatching(/not valid UTF-8/) });
    expect(done(r.stdout)).toMatchObject({ same: 1, errors: 1, exitCode: 54 });
  }, 60_000);

  it('marks a file it may not read (mode 000) with ! and exits 54', async () => {
    const a = join(work.path, 'locked-a');
    const b = join(work.path, 'locked-b');
    for (const root of [a, b]) {
      await mkdir(root);
      await writeFile(join(root, 'fine.txt'), 'fine\n');
      await writeFile(join(root, 'locked.txt'), 'secret\n');
    }
    await chmod(join(b, 'locked.txt'), 0o000);
    // Root reads anything: the check runs as nobody there (local against local, no sshd needed).
    if (isRoot) await chmod(work.path, 0o755);
    const r = await runFerry(['check', a, b], isRoot ? { asUser: { uid: 65534, gid: 65534 } } : {});
    expect(r.code).toBe(54);
    expect(marks(r.stdout)).toEqual(['! locked.txt']);
    expect(r.stderr).toMatch(/not compared: locked\.txt: .*EACCES/);
    expect(r.stderr).toMatch(/1 entry could not be compared/);
  }, 60_000);

  it('never writes a list through a symbolic link at its name', async () => {
    const target = join(work.path, 'precious.txt');
    await writeFile(target, 'keep me\n');
    const planted = join(work.path, 'planted.txt');
    await symlink(target, planted);
    const r = await runFerry(['check', '--differ', planted, src, src]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`--differ ${planted} is a symbolic link, which ferry does not write through`);
    expect(await readFile(target, 'utf8')).toBe('keep me\n');
    expect(await readlink(planted)).toBe(target);
  }, 60_000);
});
