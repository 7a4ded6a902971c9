/**
 * `ferry cp --verify` against a real sshd and nats-server: a write that
 * stores other bytes than arrived (a fixture flips one byte on its way to
 * the disk, after ferry hashed it) passes the hash as received, and is caught
 * and sent again when every range is read back from storage.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { CLI, fileHash, killStrays, makeRandomFile, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const TEAR_FIRST_WRITE = fileURLToPath(new URL('./fixtures/tear-first-write.mjs', import.meta.url));
const RANGE = 8 * MiB;
/** The range whose first write is torn. */
const TORN = 3;

let sshd: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;
let srcHash: string;

function remote(path: string): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}:${path}`;
}

function common(remoteCmd = REMOTE_CMD): string[] {
  return ['-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', remoteCmd, '--state-dir', join(work.path, 'state'), '--range-size', '8MiB', '--json'];
}

/** The environment that makes the fixture tear the first write of range TORN, once. */
function tearEnv(marker: string): Record<string, string> {
  return { FERRY_TEST_TEAR_AT: String(TORN * RANGE), FERRY_TEST_TEAR_MARKER: marker };
}

/** A helper command that loads the fixture. */
function tearingHelper(marker: string): string {
  const env = Object.entries(tearEnv(marker)).map(([k, v]) => `${k}=${v}`);
  return [...env, process.execPath, '--import', TEAR_FIRST_WRITE, CLI, 'serve'].join(' ');
}

function resentRanges(stdout: string): unknown[] {
  return parseEvents(stdout)
    .filter((e) => e.type === 'range.resend')
    .map((e) => e.range);
}

async function bytesDiffering(a: string, b: string): Promise<number[]> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  const at: number[] = [];
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) at.push(i);
  return at;
}

beforeAll(async () => {
  sshd = await startSshd();
  work = await tempDir('ferry-verify-');
  src = join(work.path, 'src.bin');
  await makeRandomFile(src, 64 * MiB + 4321);
  srcHash = await fileHash(src);
});

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await work?.remove();
});

describe('ferry cp --verify', () => {
  it('without it, a byte stored wrong after arriving intact goes unnoticed (the gap --verify closes)', async () => {
    const dir = join(work.path, 'unverified');
    await mkdir(dir);
    const marker = join(dir, 'torn');
    const target = join(dir, 'dst.bin');
    const r = await runFerry(['cp', src, remote(target), '-a', '1', '-s', '2', ...common(tearingHelper(marker))]);
    expect(r.code).toBe(0);
    expect(existsSync(marker)).toBe(true);
    expect(resentRanges(r.stdout)).toEqual([]);
    const differing = await bytesDiffering(src, target);
    expect(differing).toHaveLength(1);
    expect(Math.floor(differing[0]! / RANGE)).toBe(TORN);
  });

  it('push, helper mode with --direct-io: reads every range back after its fsync and re-sends the one stored wrong', async () => {
    const dir = join(work.path, 'push');
    await mkdir(dir);
    const marker = join(dir, 'torn');
    const target = join(dir, 'dst.bin');
    const r = await runFerry(['cp', src, remote(target), '-a', '1', '-s', '2', '--direct-io', '--verify', ...common(tearingHelper(marker))]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(existsSync(marker)).toBe(true);
    const events = parseEvents(r.stdout);
    const resends = events.filter((e) => e.type === 'range.resend');
    expect(resends.map((e) => e.range)).toEqual([TORN]);
    expect(String(resends[0]!.reason)).toMatch(/^hash mismatch \(source \w+, destination \w+ as read back from storage\)/);
    expect(events.find((e) => e.type === 'done')!.resends).toBe(1);
    expect(await fileHash(target)).toBe(srcHash);
  });

  it.each([
    ['helper', ['--direct-io']],
    ['sftp', []],
  ])('pull, %s mode %j: reads every range back from the local file and re-sends the one stored wrong', async (mode, flags) => {
    const dir = join(work.path, `pull-${mode}`);
    await mkdir(dir);
    const marker = join(dir, 'torn');
    const target = join(dir, 'dst.bin');
    // One agent, inside `ferry cp`: the fixture reaches its writes through NODE_OPTIONS.
    const r = await runFerry(['cp', remote(src), target, '--mode', mode, '-a', '1', '-s', '2', '--verify', ...flags, ...common()], {
      env: { ...tearEnv(marker), NODE_OPTIONS: `--import ${TEAR_FIRST_WRITE}` },
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(existsSync(marker)).toBe(true);
    const resends = parseEvents(r.stdout).filter((e) => e.type === 'range.resend');
    expect(resends.map((e) => e.range)).toEqual([TORN]);
    expect(String(resends[0]!.reason)).toContain('as read back from storage');
    expect(await fileHash(target)).toBe(srcHash);
  });
});
