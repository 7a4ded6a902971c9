import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { LocalLauncher, SshLauncher, StderrTail, WarmAgents, rankFromEnv, shellQuote } from '../src/index.js';

describe('rankFromEnv', () => {
  it('reads Slurm, Open MPI and PMI ranks, in that order of preference', () => {
    expect(rankFromEnv({ SLURM_PROCID: '3', SLURM_NTASKS: '8', SLURM_JOB_ID: '42', SLURM_STEP_ID: '1' })).toEqual({ rank: 3, size: 8, source: 'slurm', launchId: 'slurm-42.1' });
    expect(rankFromEnv({ OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_SIZE: '3', PMIX_NAMESPACE: 'prterun-x-123@1' })).toEqual({ rank: 2, size: 3, source: 'openmpi', launchId: 'ompi-prterun-x-123@1' });
    expect(rankFromEnv({ PMI_RANK: '0', PMI_SIZE: '4', PMI_KVSNAME: 'kvs_99_0' })).toEqual({ rank: 0, size: 4, source: 'pmi', launchId: 'pmi-kvs_99_0' });
    expect(rankFromEnv({ SLURM_PROCID: '1', SLURM_NTASKS: '2', OMPI_COMM_WORLD_RANK: '0', OMPI_COMM_WORLD_SIZE: '1' }).source).toBe('slurm');
  });

  it('is rank 0 of 1 outside any launcher, and ignores garbage', () => {
    expect(rankFromEnv({})).toEqual({ rank: 0, size: 1, source: 'none', launchId: undefined });
    expect(rankFromEnv({ SLURM_PROCID: 'x', SLURM_NTASKS: '2' })).toEqual({ rank: 0, size: 1, source: 'none', launchId: undefined });
  });
});

describe('shellQuote', () => {
  it('leaves plain words alone and single-quotes the rest', () => {
    expect(shellQuote('/usr/bin/node')).toBe('/usr/bin/node');
    expect(shellQuote('a b')).toBe("'a b'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
  });
});

describe('launchers', () => {
  it('reports each local agent exit with its index, code and stderr tail', async () => {
    const launched = await new LocalLauncher().launch({
      count: 2,
      command: [process.execPath, '-e', 'console.error("agent " + process.argv[1] + " parent " + (process.env.FERRY_AGENT_PARENT_PID === String(process.ppid))); process.exit(Number(process.argv[1]) + 3)'],
      env: {},
      argsFor: (i) => [String(i)],
    });
    const exits = await launched.exited;
    expect(exits.map((e) => [e.index, e.code, e.stderrTail, e.launcher])).toEqual([
      [0, 3, 'agent 0 parent true', 'local'],
      [1, 4, 'agent 1 parent true', 'local'],
    ]);
  });

  it('hands secrets to ssh-launched agents on stdin, never on the command line', async () => {
    // A stand-in for ssh that prints its arguments and the first line of its stdin.
    const dir = mkdtempSync(join(tmpdir(), 'ferry-fake-ssh-'));
    const fakeSsh = join(dir, 'ssh');
    writeFileSync(fakeSsh, '#!/bin/sh\nread line\nprintf "%s|" "$@" >&2\necho " $line" >&2\n', { mode: 0o755 });
    try {
      const launched = await new SshLauncher({ hosts: ['n1', 'n2'], ssh: fakeSsh, sshArgs: ['-o', 'Port=2222'] }).launch({
        count: 2,
        command: ['ferry', 'agent', '--job', 'abc'],
        env: { FERRY_TEST: 'x y' },
        secretEnv: { FERRY_NATS_TOKEN: 'sekret' },
        argsFor: (i) => ['--index', String(i)],
      });
      const exits = await launched.exited;
      expect(exits[0]!.stderrTail).toBe(`-T|-o|BatchMode=yes|-o|Port=2222|n1|env 'FERRY_TEST=x y' ferry agent --job abc --index 0 --secrets-stdin| {"FERRY_NATS_TOKEN":"sekret"}`);
      expect(exits[1]!.stderrTail).toContain('|n2|');
      expect(exits[0]!.commandLine).not.toContain('sekret');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses an ssh launcher without hosts', () => {
    expect(() => new SshLauncher({ hosts: [] })).toThrow('the ssh launcher needs hosts: pass --hosts node[01-04] or --hosts-file FILE');
  });
});

describe('warm agents', () => {
  // A stand-in agent: echoes the flag it got and each stdin line to stderr, exits when stdin ends.
  const echo = [process.execPath, '-e', 'process.stderr.write("argv " + process.argv.slice(1).join(" ") + "\\n"); require("readline").createInterface({ input: process.stdin }).on("line", (l) => process.stderr.write("line " + l + "\\n")).on("close", () => process.exit(0))', '--'];
  const hint = (i: number) => ({ v: 1, connections: [], ssh: { knownHostsFile: `/k${i}`, identityFiles: [], connectTimeoutMs: 1 }, mode: 'auto' as const, remoteCommand: 'ferry serve', windowBytes: 1 });

  it('get their hint at once and their job later; the ones not needed leave when dismissed', async () => {
    const warm = new WarmAgents({ count: 3, command: echo, env: {}, hintFor: hint });
    expect(warm.count).toBe(3);
    const lines: Array<[number, string]> = [];
    const launched = warm.go(2, (i) => ({ job: 'j1', nats: 'nats://x', index: i, env: { FERRY_NATS_TOKEN: 't' } }), { launcher: 'local', onStderr: (i, l) => lines.push([i, l]) });
    expect(launched.count).toBe(2);
    await warm.dismiss();
    // The agents handed a job keep running (stdin open) until stopped; stop them only once
    // they have echoed both lines (a slow start would otherwise be killed before it wrote).
    await vi.waitFor(() => expect(lines.length).toBe(6), { timeout: 20_000, interval: 50 });
    const exits = await launched.stop(2000);
    expect(exits.map((e) => e.index)).toEqual([0, 1]);
    // Still running when stopped: ended by the SIGTERM, not by themselves.
    expect(exits.map((e) => e.signal)).toEqual(['SIGTERM', 'SIGTERM']);
    for (const i of [0, 1]) {
      expect(lines.filter(([k]) => k === i).map(([, l]) => l)).toEqual([
        'argv --warm',
        `line ${JSON.stringify(hint(i))}`,
        `line ${JSON.stringify({ job: 'j1', nats: 'nats://x', index: i, env: { FERRY_NATS_TOKEN: 't' } })}`,
      ]);
    }
    expect(exits[0]!.commandLine).toMatch(/--warm$/);
  });

  it('start more agents when the job needs more than were started ahead', async () => {
    const warm = new WarmAgents({ count: 1, command: echo, env: {}, hintFor: hint });
    const lines: Array<[number, string]> = [];
    const goFor = (i: number) => ({ job: 'j2', nats: 'nats://y', index: i, env: {} });
    const launched = warm.go(3, goFor, { launcher: 'local', onStderr: (i, l) => lines.push([i, l]) });
    expect(launched.count).toBe(3);
    await vi.waitFor(() => expect(lines.length).toBe(9), { timeout: 20_000, interval: 50 });
    const exits = await launched.stop(2000);
    expect(exits.map((e) => e.signal)).toEqual(['SIGTERM', 'SIGTERM', 'SIGTERM']);
    for (const i of [0, 1, 2]) expect(lines.filter(([k]) => k === i).map(([, l]) => l)).toEqual(['argv --warm', `line ${JSON.stringify(hint(i))}`, `line ${JSON.stringify(goFor(i))}`]);
  });

  it('report an agent that died before its job like any failed launch', async () => {
    const warm = new WarmAgents({ count: 1, command: ['/nonexistent/ferry', 'agent'], env: {}, hintFor: hint });
    await new Promise((r) => setTimeout(r, 200));
    const launched = warm.go(1, (i) => ({ job: 'j', nats: 'n', index: i, env: {} }), { launcher: 'local' });
    const exits = await launched.exited;
    expect(exits[0]!.code).toBe(127);
    expect(exits[0]!.stderrTail).toContain('cannot run /nonexistent/ferry');
  });

  it('all leave when dismissed before any job exists', async () => {
    const warm = new WarmAgents({ count: 2, command: echo, env: {}, hintFor: hint });
    // They leave by themselves when stdin closes, not by the SIGKILL after the grace time.
    expect(await warm.dismiss(30_000)).toEqual([{ code: 0, signal: null }, { code: 0, signal: null }]);
    expect(() => warm.go(1, () => ({ job: 'j', nats: 'n', index: 0, env: {} }), { launcher: 'local' })).toThrow(/cannot hand/);
  });
});

describe('StderrTail', () => {
  it('keeps the last lines only, oldest first', () => {
    const tail = new StderrTail(3);
    expect(tail.text()).toBe('');
    for (const line of ['a', 'b', 'c', 'd', 'e']) tail.push(line);
    expect(tail.text()).toBe('c\nd\ne');
    const wide = new StderrTail();
    for (let i = 0; i < 25; i++) wide.push(`line ${i}`);
    expect(wide.text().split('\n')).toEqual(Array.from({ length: 20 }, (_, i) => `line ${i + 5}`));
  });
});
