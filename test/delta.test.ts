/**
 * `ferry cp --delta` against a real sshd: a file copied once, changed a
 * little, and copied again sends only the ranges that differ; the rest is
 * copied from the old destination file on the destination host. Ranges of
 * 1 MiB (--range-size) keep the files small.
 */
import { copyFile, link, mkdir, open, readFile, stat, symlink, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { CLI, fileHash, flipByte, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, startFerry, tempDir } from './helpers.js';
import type { FerryEvent } from './helpers.js';

const MiB = 1024 * 1024;
const TEAR_FIRST_WRITE = fileURLToPath(new URL('./fixtures/tear-first-write.mjs', import.meta.url));

/** A helper command whose first write at `at` (anywhere, once: `marker`) stores one byte flipped (verify.test.ts). */
function tearingHelper(at: number, marker: string): string {
  return [`FERRY_TEST_TEAR_AT=${at}`, `FERRY_TEST_TEAR_MARKER=${marker}`, process.execPath, '--import', TEAR_FIRST_WRITE, CLI, 'serve'].join(' ');
}
/** 16 whole ranges and a short seventeenth. */
const SIZE = 16 * MiB + 1234;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };

function remote(path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

function common(dir: string, extra: string[] = []): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD, '--state-dir', join(dir, 'state'), '--range-size', '1MiB', '--json', ...extra];
}

/** The summary of a run that succeeded. */
function summaryOf(r: { code: number | null; stdout: string; stderr: string }): FerryEvent {
  expect(r.code, r.stderr).toBe(0);
  const done = parseEvents(r.stdout).find((e) => e.type === 'done');
  expect(done).toBeDefined();
  return done!;
}

function deltaEvent(stdout: string): FerryEvent | undefined {
  return parseEvents(stdout).find((e) => e.type === 'delta');
}

/** A directory with a random source file of SIZE bytes. */
async function setup(name: string): Promise<{ dir: string; src: string; dst: string }> {
  const dir = join(work.path, name);
  await mkdir(dir);
  const src = join(dir, 'src.bin');
  await makeRandomFile(src, SIZE);
  return { dir, src, dst: join(dir, 'dst.bin') };
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-delta-');
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe('ferry cp --delta', () => {
  it('sends the one range with a changed byte and copies the other sixteen from the old file on the remote host', async () => {
    const { dir, src, dst } = await setup('one-byte');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    await flipByte(src, 8 * MiB + 77);
    const s = summaryOf(await runFerry(['cp', src, remote(dst), '--delta', ...common(dir)]));
    expect(s.rangesSent).toBe(1);
    expect(s.rangesReused).toBe(16);
    expect(s.movedBytes).toBe(MiB);
    expect(s.reusedBytes).toBe(SIZE - MiB);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('without --delta sends every range again (what the test above saves)', async () => {
    const { dir, src, dst } = await setup('no-delta');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    await flipByte(src, 3);
    const s = summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    expect(s.rangesSent).toBe(17);
    expect(s.rangesReused).toBe(0);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('sends the ranges past the old end of a file that grew, and the old short last range', async () => {
    const { dir, src, dst } = await setup('grown');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    const fh = await open(src, 'a');
    await fh.write(Buffer.alloc(3 * MiB, 7));
    await fh.close();
    const s = summaryOf(await runFerry(['cp', src, remote(dst), '--delta', ...common(dir)]));
    // 19 MiB + 1234 bytes: ranges 0-15 are unchanged; 16 held 1234 bytes and now a full MiB; 17, 18 and the short 19 are new.
    expect(s.rangesReused).toBe(16);
    expect(s.rangesSent).toBe(4);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('rebuilds a file that shrank from the old file alone: even its new short last range is what the old file holds there', async () => {
    const { dir, src, dst } = await setup('shrunk');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    await truncate(src, 10 * MiB + MiB / 2);
    const s = summaryOf(await runFerry(['cp', src, remote(dst), '--delta', ...common(dir)]));
    expect(s.rangesReused).toBe(11);
    expect(s.rangesSent).toBe(0);
    expect(s.movedBytes).toBe(0);
    expect((await readFile(dst)).length).toBe(10 * MiB + MiB / 2);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('with --verify, a reused range stored wrong on the remote host is read back, found and sent; without, it is not', async () => {
    for (const verify of [false, true]) {
      const { dir, src, dst } = await setup(`tear-${verify}`);
      summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
      await flipByte(src, 8 * MiB + 1);
      // The helper's first write at 3 MiB (range 3's copy from the old file) stores a byte flipped.
      const helper = tearingHelper(3 * MiB, join(dir, 'torn'));
      const r = await runFerry(['cp', src, remote(dst), '--delta', ...(verify ? ['--verify'] : []), ...common(dir, ['--remote-cmd', helper])]);
      const s = summaryOf(r);
      if (verify) {
        expect(s.rangesReused).toBe(15);
        expect(s.rangesSent).toBe(2);
        expect(r.stdout).toContain('1 reused range(s) read back differently');
        expect(await fileHash(dst)).toBe(await fileHash(src));
      } else {
        // The gap --verify closes: the copy's hash is of the bytes as read from the old file.
        expect(s.rangesReused).toBe(16);
        expect(await fileHash(dst)).not.toBe(await fileHash(src));
      }
    }
  });

  it('with -r, updates a tree\'s big file (one copied as a job of its own) the same way', async () => {
    const { dir, src } = await setup('tree');
    const tree = join(dir, 'tree');
    await mkdir(tree);
    const big = join(tree, 'big.bin');
    await copyFile(src, big);
    const dstRoot = join(dir, 'tree-copy');
    const flags = ['-r', '--stripe-files-over', '1MiB'];
    const first = await runFerry(['cp', ...flags, tree, remote(dstRoot), ...common(dir)]);
    expect(first.code, first.stderr).toBe(0);
    await flipByte(big, 6 * MiB);
    const r = await runFerry(['cp', ...flags, '--delta', tree, remote(dstRoot), ...common(dir)]);
    expect(r.code, r.stderr).toBe(0);
    expect(deltaEvent(r.stdout)).toMatchObject({ reused: 16, toSend: 1 });
    expect(await fileHash(join(dstRoot, 'big.bin'))).toBe(await fileHash(big));
  });

  it('copies the whole file when there is no destination file yet', async () => {
    const { dir, src, dst } = await setup('missing');
    const r = await runFerry(['cp', src, remote(dst), '--delta', ...common(dir)]);
    const s = summaryOf(r);
    expect(deltaEvent(r.stdout)).toMatchObject({ oldBytes: null, reused: 0, toSend: 17 });
    expect(s.rangesSent).toBe(17);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('does not reuse what a symbolic link at the destination points to: the link is replaced by the new file', async () => {
    const { dir, src, dst } = await setup('link');
    const elsewhere = join(dir, 'elsewhere.bin');
    await copyFile(src, elsewhere);
    await symlink(elsewhere, dst);
    await flipByte(src, 5 * MiB);
    const r = await runFerry(['cp', src, remote(dst), '--delta', ...common(dir)]);
    const s = summaryOf(r);
    expect(s.rangesReused).toBe(0);
    expect(s.rangesSent).toBe(17);
    expect(await fileHash(dst)).toBe(await fileHash(src));
    // What the link pointed to is untouched.
    expect(await fileHash(elsewhere)).not.toBe(await fileHash(src));
  });

  it("works through ferry's python helper (--mode python)", async () => {
    const { dir, src, dst } = await setup('python');
    summaryOf(await runFerry(['cp', src, remote(dst), '--mode', 'python', ...common(dir)]));
    await flipByte(src, 12 * MiB + 5);
    const s = summaryOf(await runFerry(['cp', src, remote(dst), '--mode', 'python', '--delta', ...common(dir)]));
    expect(s.mode).toBe('python');
    expect(s.rangesSent).toBe(1);
    expect(s.rangesReused).toBe(16);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it("works in SFTP mode through sftp-server's copy-data extension", async () => {
    const { dir, src, dst } = await setup('sftp');
    summaryOf(await runFerry(['cp', src, remote(dst), '--mode', 'sftp', ...common(dir)]));
    await flipByte(src, 2 * MiB + 9);
    const s = summaryOf(await runFerry(['cp', src, remote(dst), '--mode', 'sftp', '--delta', ...common(dir)]));
    expect(s.mode).toBe('sftp');
    expect(s.rangesSent).toBe(1);
    expect(s.rangesReused).toBe(16);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('pulls only the changed range, copying the rest from the old local file', async () => {
    const { dir, src, dst } = await setup('pull');
    summaryOf(await runFerry(['cp', remote(src), dst, ...common(dir)]));
    await flipByte(src, 4 * MiB + 1);
    await flipByte(src, 4 * MiB + 2);
    const s = summaryOf(await runFerry(['cp', remote(src), dst, '--delta', ...common(dir)]));
    expect(s.rangesSent).toBe(1);
    expect(s.rangesReused).toBe(16);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('an interrupted delta run resumes with its reused ranges kept, and ends with the new file', async () => {
    const { dir, src, dst } = await setup('resume');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    // Every other range changes: nine to send, slowly enough to interrupt.
    for (let i = 0; i < 17; i += 2) await flipByte(src, i * MiB + 100);
    const before = await readFile(dst);
    const first = startFerry(['cp', src, remote(dst), '--delta', '--limit-rate', '1MB', ...common(dir)]);
    try {
      await first.waitFor((e) => e.type === 'delta');
      await first.waitFor((e) => e.type === 'range.done');
      first.child.kill('SIGINT');
    } finally {
      const r = await first.result;
      expect(r.code).not.toBe(0);
    }
    // Nothing was renamed into place: the old file is as it was.
    expect((await readFile(dst)).equals(before)).toBe(true);
    const r = await runFerry(['cp', src, remote(dst), '--delta', ...common(dir)]);
    const s = summaryOf(r);
    const start = parseEvents(r.stdout).find((e) => e.type === 'job.start');
    expect(start).toMatchObject({ resumed: true });
    // The eight unchanged ranges were journaled by the first run; at least one sent range too.
    expect(start!.rangesDone as number).toBeGreaterThanOrEqual(9);
    expect(s.rangesReused).toBe(0);
    expect(s.rangesSent as number).toBeLessThanOrEqual(8);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });
});

describe('ferry cp --delta --inplace', () => {
  it('writes the one changed range into the destination file itself: same inode, the rest untouched', async () => {
    const { dir, src, dst } = await setup('inplace');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    const before = await stat(dst);
    await flipByte(src, 9 * MiB + 3);
    const r = await runFerry(['cp', src, remote(dst), '--delta', '--inplace', ...common(dir)]);
    const s = summaryOf(r);
    expect(s.rangesSent).toBe(1);
    expect(s.rangesReused).toBe(16);
    expect((await stat(dst)).ino).toBe(before.ino);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it.each(['helper', 'python', 'sftp'])('grows and shrinks the destination file in place (--mode %s)', async (mode) => {
    const { dir, src, dst } = await setup(`inplace-size-${mode}`);
    const m = ['--mode', mode];
    summaryOf(await runFerry(['cp', src, remote(dst), ...m, ...common(dir)]));
    const ino = (await stat(dst)).ino;
    const fh = await open(src, 'a');
    await fh.write(Buffer.alloc(2 * MiB, 9));
    await fh.close();
    const grown = summaryOf(await runFerry(['cp', src, remote(dst), '--delta', '--inplace', ...m, ...common(dir)]));
    expect(grown.mode).toBe(mode);
    expect(grown.rangesReused).toBe(16);
    expect(grown.rangesSent).toBe(3);
    expect(await fileHash(dst)).toBe(await fileHash(src));
    await truncate(src, 5 * MiB + 10);
    const shrunk = summaryOf(await runFerry(['cp', src, remote(dst), '--delta', '--inplace', ...m, ...common(dir)]));
    expect(shrunk.rangesReused).toBe(6);
    expect(shrunk.rangesSent).toBe(0);
    expect((await stat(dst)).size).toBe(5 * MiB + 10);
    expect((await stat(dst)).ino).toBe(ino);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('an interrupted run leaves a file a rerun finishes in place', async () => {
    const { dir, src, dst } = await setup('inplace-resume');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    const ino = (await stat(dst)).ino;
    for (let i = 1; i < 17; i += 2) await flipByte(src, i * MiB + 5);
    const first = startFerry(['cp', src, remote(dst), '--delta', '--inplace', '--limit-rate', '1MB', ...common(dir)]);
    try {
      await first.waitFor((e) => e.type === 'range.done');
      first.child.kill('SIGINT');
    } finally {
      expect((await first.result).code).not.toBe(0);
    }
    const r = await runFerry(['cp', src, remote(dst), '--delta', '--inplace', ...common(dir)]);
    const s = summaryOf(r);
    expect(parseEvents(r.stdout).find((e) => e.type === 'job.start')).toMatchObject({ resumed: true });
    expect(s.rangesSent as number).toBeLessThanOrEqual(7);
    expect((await stat(dst)).ino).toBe(ino);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('pulls into the local file in place', async () => {
    const { dir, src, dst } = await setup('inplace-pull');
    summaryOf(await runFerry(['cp', remote(src), dst, ...common(dir)]));
    const ino = (await stat(dst)).ino;
    await flipByte(src, 15 * MiB);
    const s = summaryOf(await runFerry(['cp', remote(src), dst, '--delta', '--inplace', ...common(dir)]));
    expect(s.rangesSent).toBe(1);
    expect((await stat(dst)).ino).toBe(ino);
    expect(await fileHash(dst)).toBe(await fileHash(src));
  });

  it('goes through a temporary file when the destination has another name (a hard link), leaving that name the old file', async () => {
    const { dir, src, dst } = await setup('inplace-link');
    summaryOf(await runFerry(['cp', src, remote(dst), ...common(dir)]));
    const other = join(dir, 'other-name.bin');
    await link(dst, other);
    const old = await fileHash(other);
    await flipByte(src, 1);
    const s = summaryOf(await runFerry(['cp', src, remote(dst), '--delta', '--inplace', ...common(dir)]));
    expect(s.rangesSent).toBe(1);
    expect(await fileHash(dst)).toBe(await fileHash(src));
    expect(await fileHash(other)).toBe(old);
  });

  it('is refused without --delta', async () => {
    const { dir, src, dst } = await setup('inplace-alone');
    const r = await runFerry(['cp', src, remote(dst), '--inplace', ...common(dir)]);
    expect(r.code).toBe(2);
    expect(r.stdout + r.stderr).toContain('--inplace writes the changed ranges into the existing destination file and works with --delta only: add --delta');
  });
});
