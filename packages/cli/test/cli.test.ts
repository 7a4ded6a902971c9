import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, PROTOCOL_VERSION, encodeControl } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { VERSION, createRenderer, formatSummary, progressLine, runCli } from '../src/index.js';
import { parseSecretsLine, splitCommand } from '../src/actions.js';
import type { CliIo } from '../src/index.js';
import type { CopySummary } from '@ferry/coordinator';

function io(tty = false): CliIo & { out: string; err: string } {
  const self = {
    out: '',
    err: '',
    exitCode: 0,
    stdout: { write: (s: string) => void (self.out += s), isTTY: tty, columns: 100 },
    stderr: { write: (s: string) => void (self.err += s), isTTY: tty, columns: 100 },
  };
  return self;
}

const summary: CopySummary = {
  jobId: '0123456789abcdef',
  source: '/data/big.h5',
  destination: 'me@dtn:/in/big.h5',
  bytes: 3 * 1024 ** 3,
  movedBytes: 3 * 1024 ** 3,
  resumedBytes: 0,
  reusedBytes: 0,
  rangesSent: 192,
  rangesReused: 0,
  seconds: 12.5,
  mbps: 257.7,
  ranges: 192,
  resends: 1,
  hash: 'xxh3',
  rootHash: 'f33bad4eb87440d2',
  mode: 'helper',
  agents: 4,
  streams: 2,
};

describe('the ferry command line', () => {
  it('prints its version and exits 0', async () => {
    const s = io();
    expect(await runCli(['--version'], s)).toBe(0);
    expect(s.out).toBe('0.1.0\n');
  });

  it('lists every exit code in the help of cp', async () => {
    const s = io();
    expect(await runCli(['cp', '--help'], s)).toBe(0);
    expect(s.out).toContain('--range-size <size>');
    expect(s.out).toContain('   22  DEST_NO_SPACE');
    expect(s.out).toContain('  130  INTERRUPTED');
  });

  it('exits 2 for an unknown option and for a hash it does not know', async () => {
    const a = io();
    expect(await runCli(['cp', 'a', 'h:b', '--bogus'], a)).toBe(2);
    expect(a.err).toContain("error: unknown option '--bogus'");
    const b = io();
    expect(await runCli(['cp', 'a', 'h:b', '--hash', 'md5'], b)).toBe(2);
    expect(b.err).toContain("error: option '--hash <algorithm>' argument 'md5' is invalid. Allowed choices are xxh3, crc32, sha256.");
  });

  it('rejects --json with --quiet before touching the network', async () => {
    const s = io();
    expect(await runCli(['cp', '/etc/hostname', 'nohost.invalid:/x', '--json', '--quiet'], s)).toBe(2);
    expect(s.out).toBe(
      '{"type":"error","code":"USAGE","message":"--json and --quiet cannot be used together","exitCode":2}\n',
    );
    expect(s.err).toBe('ferry: error: --json and --quiet cannot be used together\n');
  });
});

const MAIN = fileURLToPath(new URL('../dist/bundle/main.js', import.meta.url));

/** Runs the built `ferry` with `args`, stdin closed; resolves with its exit code, stdout and stderr. */
function runFerry(args: string[], input?: Buffer): Promise<{ code: number | null; out: Buffer; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
    child.stdin.end(input);
  });
}

describe('ferry serve as sshd starts it', () => {
  it('answers HELLO with its version and exits 0 when its input ends (the short path past commander)', async () => {
    const r = await runFerry(['serve'], encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const frames: DecodedFrame[] = [];
    new FrameDecoder((f) => frames.push(f)).push(r.out);
    expect(frames[0]).toMatchObject({ type: 'OK', id: 1, body: { hello: { version: PROTOCOL_VERSION, software: `ferry ${VERSION}` } } });
  });

  it('still has the whole command line for serve with options', async () => {
    const r = await runFerry(['serve', '--help']);
    expect(r.code).toBe(0);
    expect(r.out.toString()).toContain('Usage: ferry serve');
  });
});

describe('output', () => {
  it('summarises a copy in four lines', () => {
    expect(formatSummary(summary)).toBe(
      [
        'ferry: copied /data/big.h5 -> me@dtn:/in/big.h5',
        '  3.0 GiB (3221225472 bytes) in 12.5 s, 257.7 MB/s',
        '  192 ranges, 1 re-sent, 4 agents x 2 streams, helper mode',
        '  root hash (xxh3): f33bad4eb87440d2',
        '',
      ].join('\n'),
    );
  });

  it('says how much a resumed copy found done and moved', () => {
    const text = formatSummary({ ...summary, movedBytes: 1024 ** 3, resumedBytes: 2 * 1024 ** 3 });
    expect(text.split('\n')[1]).toBe('  3.0 GiB (3221225472 bytes) in 12.5 s, 85.9 MB/s; resumed: 2.0 GiB were done before, 1.0 GiB moved now');
  });

  it('says how many ranges a --delta copy sent and how many it reused from the old file', () => {
    const text = formatSummary({ ...summary, movedBytes: 16 * 1024 ** 2, reusedBytes: 3 * 1024 ** 3 - 16 * 1024 ** 2, rangesSent: 1, rangesReused: 191 });
    expect(text.split('\n')[2]).toBe('  delta: 1 range sent, 191 (3.0 GiB) reused from the old file');
    expect(formatSummary(summary)).not.toContain('delta:');
  });

  it('draws a progress line with rate, ETA and busy agents', () => {
    const line = progressLine({ type: 'progress', bytes: 512 * 1024 ** 2, total: 1024 ** 3, rangesDone: 32, ranges: 64, rate: 250e6, etaSeconds: 2.1, agentsBusy: 2, agents: 2 }, 100);
    expect(line).toBe('[####################....................]  50.0%  512 MiB/1.0 GiB  250.0 MB/s  ETA 2s  agents 2/2');
  });

  it('draws the bar only on a terminal and prints the summary on stdout', () => {
    const tty = io(true);
    const r = createRenderer('human', tty.stdout, tty.stderr);
    r.onEvent({ type: 'progress', bytes: 1, total: 2, rangesDone: 0, ranges: 1, rate: 0, etaSeconds: null, agentsBusy: 1, agents: 1 });
    expect(tty.err).toMatch(/^\r\x1b\[2K\[/);
    r.onEvent({ type: 'done', ...summary });
    expect(tty.err.endsWith('\r\x1b[2K')).toBe(true);
    expect(tty.out).toBe(formatSummary(summary));

    const pipe = io(false);
    const p = createRenderer('human', pipe.stdout, pipe.stderr);
    p.onEvent({ type: 'progress', bytes: 1, total: 2, rangesDone: 0, ranges: 1, rate: 0, etaSeconds: null, agentsBusy: 1, agents: 1 });
    expect(pipe.err).toBe('');
  });

  it('writes one JSON object per event with --json', () => {
    const s = io();
    const r = createRenderer('json', s.stdout, s.stderr);
    r.onEvent({ type: 'range.resend', range: 3, attempt: 1, reason: 'hash mismatch' });
    r.onEvent({ type: 'done', ...summary });
    const lines = s.out.trim().split('\n').map((l) => JSON.parse(l) as { type: string });
    expect(lines.map((l) => l.type)).toEqual(['range.resend', 'done']);
  });
});

describe('launching beyond this machine', () => {
  it('prints a batch script that runs the copy with srun ferry run, keeping copy options and dropping launcher ones', async () => {
    const s = io();
    const argv = ['cp', '/lustre/big.h5', 'me@dtn[1-2]:/in/', '--sbatch', '--nodes', '4', '--agents-per-node', '2', '--streams', '3', '-p', '--verify', '--launcher', 'srun', '--state-dir', '/home/me/ferry-state', '--agent-cmd', '/opt/ferry/bin/ferry'];
    expect(await runCli(argv, s)).toBe(0);
    expect(s.out).toContain('#SBATCH --nodes=4\n#SBATCH --ntasks-per-node=2\n#SBATCH --time=1-00:00:00\n');
    expect(s.out).toContain("srun --kill-on-bad-exit=0 /opt/ferry/bin/ferry run /lustre/big.h5 'me@dtn[1-2]:/in/' --streams 3 -p --verify --state-dir /home/me/ferry-state\n");
    expect(s.out).not.toContain('--launcher');
  });

  it('keeps a --send-window other than the default in the batch script', async () => {
    const s = io();
    expect(await runCli(['cp', '/lustre/big.h5', 'me@dtn1:/in/', '--sbatch', '--nodes', '2', '--send-window', '512KiB', '--state-dir', '/s'], s)).toBe(0);
    expect(s.out).toContain(" run /lustre/big.h5 me@dtn1:/in/ --send-window 512KiB --state-dir /s\n");
    const d = io();
    expect(await runCli(['cp', '/lustre/big.h5', 'me@dtn1:/in/', '--sbatch', '--nodes', '2', '--send-window', '0', '--state-dir', '/s'], d)).toBe(0);
    expect(d.out).not.toContain('--send-window');
  });

  it('keeps -F and a given --connect-timeout in the batch script, and no --connect-timeout when none was given', async () => {
    const s = io();
    expect(await runCli(['cp', '/lustre/big.h5', 'dtn1:/in/', '--sbatch', '-F', '/home/me/hpc_config', '--connect-timeout', '45s', '--state-dir', '/s'], s)).toBe(0);
    expect(s.out).toContain(" run /lustre/big.h5 dtn1:/in/ -F /home/me/hpc_config --connect-timeout 45s --state-dir /s\n");
    const d = io();
    expect(await runCli(['cp', '/lustre/big.h5', 'dtn1:/in/', '--sbatch', '--state-dir', '/s'], d)).toBe(0);
    expect(d.out).not.toContain('--connect-timeout');
  });

  it('keeps -r and the batch options in the batch script of a tree', async () => {
    const s = io();
    expect(await runCli(['cp', '-r', '/lustre/project', 'dtn1:/in/', '--sbatch', '--batch-files-under', '1MiB', '--batch-size', '16MiB', '--stripe-files-over', '1GiB', '--state-dir', '/s'], s)).toBe(0);
    expect(s.out).toContain(' run /lustre/project dtn1:/in/ --batch-files-under 1MiB --batch-size 16MiB --stripe-files-over 1GiB -r --state-dir /s\n');
  });

  it('prints a batch script that runs a sync with srun ferry run --sync, keeping the sync and attribute options', async () => {
    const s = io();
    const argv = ['sync', '/lustre/proj', 'me@dtn2:/gpfs/proj', '--sbatch', '--nodes', '4', '--agents-per-node', '2', '--compare', 'checksum', '--delete', '--exit-code', '--xattrs', '--acls', '--numeric-ids', '--launcher', 'srun', '--state-dir', '/home/me/ferry-state', '--agent-cmd', '/opt/ferry/bin/ferry', '--time', '04:00:00'];
    expect(await runCli(argv, s)).toBe(0);
    expect(s.out).toContain('# Made by ferry sync --sbatch. Each task is one agent; task 0 also compares, deletes and coordinates.\n');
    expect(s.out).toContain('#SBATCH --nodes=4\n#SBATCH --ntasks-per-node=2\n#SBATCH --time=04:00:00\n');
    expect(s.out).toContain('srun --kill-on-bad-exit=0 /opt/ferry/bin/ferry run --sync --compare checksum --delete --exit-code /lustre/proj me@dtn2:/gpfs/proj --numeric-ids --xattrs --acls --state-dir /home/me/ferry-state\n');
    expect(s.out).not.toContain('--launcher');
    // The default level is left out; a dry run is kept.
    const d = io();
    expect(await runCli(['sync', '/lustre/proj', 'dtn2:/gpfs/proj', '--sbatch', '--compare', 'mtime', '-n', '--state-dir', '/s'], d)).toBe(0);
    expect(d.out).toContain(' run --sync --dry-run /lustre/proj dtn2:/gpfs/proj --state-dir /s\n');
  });

  it('refuses a sync option in ferry run without --sync', async () => {
    const s = io();
    expect(await runCli(['run', '--compare', 'checksum', '/lustre/proj', 'dtn2:/gpfs/proj'], s)).toBe(2);
    expect(s.err).toBe('ferry: error: --compare goes with --sync: srun ferry run --sync --compare SOURCE DESTINATION\n');
  });

  it('splits an agent command like a shell would', () => {
    expect(splitCommand(`/opt/node "/path with space/main.js" --x 'a b'`)).toEqual(['/opt/node', '/path with space/main.js', '--x', 'a b']);
    expect(() => splitCommand('   ')).toThrow('--agent-cmd must not be empty');
  });

  it('refuses the ssh launcher without hosts before connecting anywhere', async () => {
    const s = io();
    expect(await runCli(['cp', '/etc/hostname', 'nohost.invalid:/x', '--launcher', 'ssh'], s)).toBe(2);
    expect(s.err).toBe('ferry: error: --launcher ssh needs --hosts (e.g. node[01-04]) or --hosts-file\n');
  });
});

describe('parseSecretsLine', () => {
  it('reads the JSON object of environment variables the ssh launcher sends', () => {
    expect(parseSecretsLine('{"FERRY_NATS_TOKEN":"sekret","FERRY_TEST":"x y"}')).toEqual({ FERRY_NATS_TOKEN: 'sekret', FERRY_TEST: 'x y' });
    expect(parseSecretsLine('{}')).toEqual({});
  });

  it('refuses anything else with a usage error that names the option', () => {
    for (const line of [undefined, '', 'sekret', '[]', 'null', '"x"', '{"FERRY_NATS_TOKEN":1}']) {
      let err: unknown;
      try {
        parseSecretsLine(line);
      } catch (e) {
        err = e;
      }
      expect(err, String(line)).toMatchObject({ code: 'USAGE' });
      expect((err as Error).message).toMatch(/^--secrets-stdin: /);
    }
  });
});
