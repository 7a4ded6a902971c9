/**
 * `ferry verify JOB`, `ferry manifest JOB` and `ferry verify --manifest FILE
 * PATH` against a real sshd: a finished copy's destination (or source) read
 * again from the state directory alone, every range and file that no longer
 * matches named; a manifest exported and checked against the data.
 */
import { chmod, mkdir, readFile, rm, stat, symlink, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { flipByte, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';
import type { FerryEvent } from './helpers.js';
import { on, treeArgs } from './tree-helpers.js';

const MiB = 1024 * 1024;
const RANGE = 4 * MiB;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let stateDir: string;

function remote(path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

/** How every command here reaches the test sshd. */
function ssh(): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD];
}

function mismatches(stdout: string): FerryEvent[] {
  return parseEvents(stdout).filter((e) => e.type === 'verify.mismatch');
}

function done(stdout: string): FerryEvent {
  const d = parseEvents(stdout).find((e) => e.type === 'verify.done');
  expect(d).toBeDefined();
  return d!;
}

/** `ferry verify ... --json` (the job's own connection options, from its state). */
function verify(args: string[]) {
  return runFerry(['verify', ...args, '--state-dir', stateDir, '--json']);
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-verify-job-');
  stateDir = join(work.path, 'state');
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe('ferry verify JOB, one file', () => {
  let src: string;
  let dst: string;
  let job: string;

  beforeAll(async () => {
    const dir = join(work.path, 'one');
    await mkdir(join(dir, 'in'), { recursive: true });
    src = join(dir, 'src.bin');
    dst = join(dir, 'in', 'src.bin');
    // Five ranges, the last one short.
    await makeRandomFile(src, 4 * RANGE + 12345);
    const r = await runFerry(['cp', src, remote(join(dir, 'in') + '/'), ...ssh(), '--state-dir', stateDir, '--range-size', '4MiB', '-a', '1', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    job = String(parseEvents(r.stdout).find((e) => e.type === 'done')!.jobId);
  });

  it('a destination as copied matches: exit 0, every range hashed remotely over several connections', async () => {
    const r = await verify([job.slice(0, 8), '-s', '3']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const events = parseEvents(r.stdout);
    expect(events[0]).toMatchObject({ type: 'verify.start', job, kind: 'file', entries: 1, connections: 3, mode: 'helper', location: remote(dst) });
    expect(done(r.stdout)).toMatchObject({ entries: 1, matched: 1, bad: 0, hashed: 5, badRanges: 0, bytes: 4 * RANGE + 12345 });
  });

  it('one byte flipped in the middle: exit 50, naming that range and no other; the text report says the same', async () => {
    await flipByte(dst, 2 * RANGE + 777);
    try {
      const r = await verify([job]);
      expect(r.code).toBe(50);
      const bad = mismatches(r.stdout);
      expect(bad).toHaveLength(1);
      expect(bad[0]).toMatchObject({ path: 'src.bin', problem: 'changed' });
      expect((bad[0]!.ranges as Array<{ range: number; offset: number }>).map((x) => [x.range, x.offset])).toEqual([[2, 2 * RANGE]]);
      expect(done(r.stdout)).toMatchObject({ bad: 1, changed: 1, badRanges: 1 });
      expect(r.stderr).toContain('1 of 1 entries at');
      expect(r.stderr).toContain('do not match the manifest');

      const text = await runFerry(['verify', job, '--state-dir', stateDir]);
      expect(text.code).toBe(50);
      expect(text.stdout).toContain('src.bin: changed: 1 of 5 ranges differ (range 2)');
      expect(text.stdout).toContain(`range 2 at byte ${2 * RANGE} (4.0 MiB)`);
      expect(text.stderr).toMatch(/^ferry: error: 1 of 1 entries at .* do not match the manifest \(listed above\): 1 changed\n$/);
    } finally {
      await flipByte(dst, 2 * RANGE + 777);
    }
  });

  it('--source reads the source instead: it matches while the destination does not, and a change there is found', async () => {
    await flipByte(dst, 5);
    try {
      expect((await verify([job])).code).toBe(50);
      const r = await verify([job, '--source']);
      expect(r.code).toBe(0);
      expect(parseEvents(r.stdout)[0]).toMatchObject({ type: 'verify.start', location: src, mode: 'local' });
      await flipByte(src, 4 * RANGE + 1);
      try {
        const s = await verify([job, '--source']);
        expect(s.code).toBe(50);
        expect((mismatches(s.stdout)[0]!.ranges as Array<{ range: number }>).map((x) => x.range)).toEqual([4]);
      } finally {
        await flipByte(src, 4 * RANGE + 1);
      }
    } finally {
      await flipByte(dst, 5);
    }
  });

  it('a truncated destination: the ranges past its end and the one cut short are named, with the size', async () => {
    const keep = await readFile(dst);
    try {
      await truncate(dst, 2 * RANGE + 100);
      const r = await verify([job]);
      expect(r.code).toBe(50);
      const [bad] = mismatches(r.stdout);
      expect(bad!.problem).toBe('changed');
      expect(bad!.message).toContain(`size ${2 * RANGE + 100} bytes now, ${4 * RANGE + 12345} in the manifest`);
      const ranges = bad!.ranges as Array<{ range: number; found: string | null }>;
      expect(ranges.map((x) => x.range)).toEqual([2, 3, 4]);
      expect(ranges.map((x) => x.found === null)).toEqual([false, true, true]);
    } finally {
      await writeFile(dst, keep);
    }
  });

  it('a deleted destination is reported missing (exit 50)', async () => {
    const keep = await readFile(dst);
    await unlink(dst);
    try {
      const r = await verify([job]);
      expect(r.code).toBe(50);
      expect(mismatches(r.stdout)).toEqual([expect.objectContaining({ path: 'src.bin', problem: 'missing' })]);
      expect(done(r.stdout)).toMatchObject({ missing: 1, bad: 1 });
    } finally {
      await writeFile(dst, keep);
    }
    expect((await verify([job])).code).toBe(0);
  });

  it('a manifest of one file checks the file named, or the directory holding it', async () => {
    const m = join(work.path, 'one.manifest');
    const out = await runFerry(['manifest', job, '--state-dir', stateDir, '-o', m]);
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    // Kept with the data: as readable as the umask allows, not private as the state directory's files.
    expect((await stat(m)).mode & 0o777).toBe(0o666 & ~process.umask());
    const nowhere = join(work.path, 'no-such-dir', 'm');
    const bad = await runFerry(['manifest', job, '--state-dir', stateDir, '-o', nowhere]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(new RegExp(`^ferry: error: cannot write the manifest to ${nowhere}: ENOENT`));
    const lines = (await readFile(m, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({ format: 'ferry-manifest', version: 1, kind: 'file', job, hash: 'xxh3', entries: 1, bytes: 4 * RANGE + 12345 });
    expect(lines[1]).toMatchObject({ path: 'src.bin', type: 'file', size: 4 * RANGE + 12345, rangeBytes: RANGE });
    expect(lines[1]!.ranges).toHaveLength(5);
    for (const where of [remote(dst), remote(join(work.path, 'one', 'in')), dst]) {
      const r = await runFerry(['verify', '--manifest', m, where, ...ssh(), '--json']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(done(r.stdout)).toMatchObject({ matched: 1, hashed: 5 });
    }
  });
});

describe('ferry verify JOB, a tree', () => {
  let tree: string;
  let dst: string;
  let job: string;

  beforeAll(async () => {
    const dir = join(work.path, 'tree');
    tree = join(dir, 'proj');
    await mkdir(join(tree, 'sub'), { recursive: true });
    await mkdir(join(dir, 'into'));
    await writeFile(join(tree, 'a.txt'), 'alpha\n');
    await writeFile(join(tree, 'sub', 'c.txt'), 'gamma\n');
    await writeFile(join(tree, 'empty'), '');
    await makeRandomFile(join(tree, 'sub', 'mid.bin'), 200 * 1024);
    // Over --stripe-files-over 2MiB: a copy of its own, in 1 MiB ranges.
    await makeRandomFile(join(tree, 'big.bin'), 3 * MiB + 99);
    await symlink('a.txt', join(tree, 'link'));
    const r = await runFerry(['cp', '-r', tree, on(sshd, join(dir, 'into') + '/'), ...treeArgs(sshd, stateDir, ['--remote-cmd', REMOTE_CMD, '--range-size', '1MiB', '-a', '1'])]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    job = String(parseEvents(r.stdout).find((e) => e.type === 'tree.done')!.jobId);
    dst = join(dir, 'into', 'proj');
    const m = await runFerry(['manifest', job, '--state-dir', stateDir, '-o', join(work.path, 'tree.manifest')]);
    expect(m.stderr).toBe('');
    expect(m.code).toBe(0);
  });

  it('ferry manifest lists every file and symlink sorted, the big file by ranges, and stdout and -o agree', async () => {
    const r = await runFerry(['manifest', job.slice(0, 6), '--state-dir', stateDir]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({ format: 'ferry-manifest', version: 1, kind: 'tree', job, hash: 'xxh3', entries: 6, bytes: 6 + 6 + 200 * 1024 + 3 * MiB + 99 });
    expect(lines.slice(1).map((l) => [l.path, l.type])).toEqual([
      ['a.txt', 'file'],
      ['big.bin', 'file'],
      ['empty', 'file'],
      ['link', 'symlink'],
      ['sub/c.txt', 'file'],
      ['sub/mid.bin', 'file'],
    ]);
    expect(lines[2]).toMatchObject({ rangeBytes: MiB });
    expect(lines[2]!.ranges).toHaveLength(4);
    expect(lines[4]).toEqual({ path: 'link', type: 'symlink', target: 'a.txt' });
    expect(await readFile(join(work.path, 'tree.manifest'), 'utf8')).toBe(r.stdout);
  });

  it('the tree as copied matches; a file changed, a file deleted, a symlink retargeted and a range of the big file flipped are each named (exit 50)', async () => {
    const ok = await verify([job]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(done(ok.stdout)).toMatchObject({ entries: 6, matched: 6, bad: 0 });

    await writeFile(join(dst, 'sub', 'c.txt'), 'GAMMA\n');
    await unlink(join(dst, 'a.txt'));
    await unlink(join(dst, 'link'));
    await symlink('sub/c.txt', join(dst, 'link'));
    await flipByte(join(dst, 'big.bin'), 3 * MiB + 5);
    await rm(join(dst, 'empty'));
    await mkdir(join(dst, 'empty'));
    const r = await verify([job, '-s', '2']);
    expect(r.code).toBe(50);
    const bad = Object.fromEntries(mismatches(r.stdout).map((e) => [e.path, e]));
    expect(Object.keys(bad).sort()).toEqual(['a.txt', 'big.bin', 'empty', 'link', 'sub/c.txt']);
    expect(bad['a.txt']!.problem).toBe('missing');
    expect(bad['sub/c.txt']!.problem).toBe('changed');
    expect(bad['link']).toMatchObject({ problem: 'changed', message: 'a symbolic link to sub/c.txt now, to a.txt in the manifest' });
    expect(bad['empty']).toMatchObject({ problem: 'kind', message: 'a file in the manifest, a directory now' });
    expect((bad['big.bin']!.ranges as Array<{ range: number }>).map((x) => x.range)).toEqual([3]);
    expect(done(r.stdout)).toMatchObject({ entries: 6, matched: 1, bad: 5, missing: 1, changed: 3, kind: 1 });

    const text = await runFerry(['verify', job, '--state-dir', stateDir]);
    expect(text.code).toBe(50);
    const lines = text.stdout.split('\n');
    // Reported as each entry's hashing ends: in no fixed order.
    expect(lines.filter((l) => /^\S+: \w+: /.test(l)).sort()).toEqual([
      'a.txt: missing: missing',
      'big.bin: changed: 1 of 4 ranges differ (range 3)',
      'empty: kind: a file in the manifest, a directory now',
      'link: changed: a symbolic link to sub/c.txt now, to a.txt in the manifest',
      expect.stringMatching(/^sub\/c\.txt: changed: its bytes differ: hash [0-9a-f]{16}, [0-9a-f]{16} in the manifest$/),
    ]);
    expect(lines).toContain(`    range 3 at byte ${3 * MiB} (99 B): hash ${(mismatches(r.stdout).find((e) => e.path === 'big.bin')!.ranges as Array<{ found: string }>)[0]!.found} now, ${(mismatches(r.stdout).find((e) => e.path === 'big.bin')!.ranges as Array<{ expected: string }>)[0]!.expected} in the manifest`);
    expect(text.stdout).toMatch(new RegExp(`ferry: verified 6 entries at ${remote(dst).replace(`${sshd.user}@`, '')} \\(job ${job}\\): .* read in [0-9.]+ s; 5 do not match \\(3 changed, 1 missing, 1 of another kind\\)\n$`));
  });

  it('a round trip: the exported manifest checks a copy anywhere (here: the source, local and over SSH in each data path)', async () => {
    const m = join(work.path, 'tree.manifest');
    for (const [where, mode] of [[tree, 'local'], [remote(tree), 'helper'], [remote(tree), 'python'], [remote(tree), 'sftp']] as const) {
      const r = await runFerry(['verify', '--manifest', m, where, ...ssh(), ...(mode === 'local' ? [] : ['--mode', mode]), '--json']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(parseEvents(r.stdout)[0]).toMatchObject({ type: 'verify.start', mode });
      expect(done(r.stdout)).toMatchObject({ entries: 6, matched: 6, hashed: 8 });
    }
    const gone = await runFerry(['verify', '--manifest', m, join(work.path, 'no-such-tree'), '--json']);
    expect(gone.code).toBe(50);
    expect(done(gone.stdout)).toMatchObject({ entries: 6, missing: 6 });
  });

  it('an entry that cannot be read is reported as such, and every other entry is still checked', async () => {
    const m = join(work.path, 'tree.manifest');
    await chmod(work.path, 0o755);
    await chmod(join(tree, 'sub', 'mid.bin'), 0o600);
    try {
      // Root reads everything, so read it as nobody.
      const r = await runFerry(['verify', '--manifest', m, tree, '--json'], { asUser: { uid: 65534, gid: 65534 } });
      expect(r.code).toBe(50);
      expect(mismatches(r.stdout)).toEqual([expect.objectContaining({ path: 'sub/mid.bin', problem: 'unreadable', code: 'EACCES' })]);
      expect(done(r.stdout)).toMatchObject({ entries: 6, matched: 5, bad: 1, unreadable: 1 });
      expect(r.stderr).toBe(`ferry: error: 1 of 6 entries at ${tree} do not match the manifest: 1 unreadable\n`);
    } finally {
      await chmod(join(tree, 'sub', 'mid.bin'), 0o644);
      await chmod(work.path, 0o700);
    }
  });

  it('a manifest of an unknown version, or edited after it was written, is refused (exit 2)', async () => {
    const text = await readFile(join(work.path, 'tree.manifest'), 'utf8');
    const newer = join(work.path, 'v2.manifest');
    await writeFile(newer, text.replace('"version":1', '"version":2'));
    const r = await runFerry(['verify', '--manifest', newer, tree]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`ferry: error: ${newer}: a ferry manifest of version 2, which this ferry does not read (it reads version 1): verify it with the ferry that wrote it, or a newer one\n`);
    const edited = join(work.path, 'edited.manifest');
    await writeFile(edited, text.replace('"target":"a.txt"', '"target":"b.txt"'));
    const e = await runFerry(['verify', '--manifest', edited, tree]);
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/edited\.manifest: damaged: its entries hash to [0-9a-f]{16}, its header says [0-9a-f]{16}/);
  });
});

describe('ferry verify JOB, a tree pulled', () => {
  it('checks the local destination, and with --source the remote tree it came from', async () => {
    const dir = join(work.path, 'pull');
    const from = join(dir, 'remote-side');
    await mkdir(join(from, 'd'), { recursive: true });
    await mkdir(join(dir, 'here'));
    await writeFile(join(from, 'x.txt'), 'x\n');
    await writeFile(join(from, 'd', 'y.txt'), 'y\n');
    await symlink('d/y.txt', join(from, 'ln'));
    const cp = await runFerry(['cp', '-r', on(sshd, from), join(dir, 'here') + '/', ...treeArgs(sshd, stateDir, ['--remote-cmd', REMOTE_CMD])]);
    expect(cp.stderr).toBe('');
    expect(cp.code).toBe(0);
    const job = String(parseEvents(cp.stdout).find((e) => e.type === 'tree.done')!.jobId);
    const local = await verify([job]);
    expect(local.code).toBe(0);
    expect(parseEvents(local.stdout)[0]).toMatchObject({ location: join(dir, 'here', 'remote-side'), mode: 'local', entries: 3 });
    await writeFile(join(from, 'd', 'y.txt'), 'Y\n');
    const source = await verify([job, '--source']);
    expect(source.code).toBe(50);
    expect(parseEvents(source.stdout)[0]).toMatchObject({ mode: 'helper', entries: 3 });
    expect(mismatches(source.stdout)).toEqual([expect.objectContaining({ path: 'd/y.txt', problem: 'changed', message: expect.stringMatching(/^its bytes differ: hash [0-9a-f]{16}, [0-9a-f]{16} in the manifest$/) })]);
  });
});
