/**
 * The wan testbed (bench/wan-testbed.mjs) that the `wan` and `tree --wan`
 * benchmarks share: a real shaped link between two network namespaces with
 * an sshd behind it, reached from the client namespace, and nothing of it
 * left afterwards: no namespace, veth, bridge or process, also when the
 * process holding it is interrupted. Needs root (skipped otherwise). It uses
 * the testbed's fixed names, so it must not run beside a wan benchmark.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TESTBED = pathToFileURL(join(ROOT, 'bench', 'wan-testbed.mjs')).href;
const root = process.getuid?.() === 0;

/** What of the testbed is on the machine: its namespaces and its host-side links. */
function leftovers(): string[] {
  const netns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  const names = netns.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith('fwan-'));
  const links = ['fwan-c', 'fwan-s', 'fwanbr0'].filter((d) => existsSync(`/sys/class/net/${d}`));
  return [...names, ...links];
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

/** ssh from the client namespace to the testbed's sshd, running `command` there. */
function sshThrough(bed: { inClient: string[]; host: string; port: number; sshd: { userKey: string; knownHosts: string; user: string } }, command: string) {
  const { userKey, knownHosts, user } = bed.sshd;
  return spawnSync(
    bed.inClient[0]!,
    [...bed.inClient.slice(1), 'ssh', '-F', '/dev/null', '-i', userKey, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-p', String(bed.port), `${user}@${bed.host}`, command],
    { encoding: 'utf8', timeout: 30_000, maxBuffer: 16 * 2 ** 20 },
  );
}

describe.skipIf(!root)('the wan testbed', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'ferry-wan-testbed-test-'));
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('holds each TCP stream to its cap, lets the client reach the sshd across the link, and close() leaves nothing behind', async () => {
    const { openWanTestbed } = await import(TESTBED);
    const logged: string[] = [];
    const bed = await openWanTestbed({ linkMbit: 400, streamMbit: 40, sshdDir: join(work, 'sshd'), log: (m: string) => logged.push(m), checkSeconds: 1, idleWaitMs: 0 });
    const sshdPid: number = bed.sshd.pid;
    try {
      // One stream under its 5 MB/s cap (above it, opening fails), on a bucket of its own.
      expect(bed.check[0].streams).toBe(1);
      expect(bed.check[0].buckets).toBe(1);
      expect(bed.check[0].MBps).toBeLessThanOrEqual(5 * 1.02);
      const client = bed.classBytes();
      const server = bed.classBytes('server');
      const wire = bed.wireBytes('server');
      const r = sshThrough(bed, 'head -c 3000000 /dev/zero');
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.length).toBe(3_000_000);
      // The reply crossed the server's shaping in the bucket of the one connection's port; the client sent little.
      expect(Object.keys(bed.bucketMB(server, bed.classBytes('server')))).toHaveLength(1);
      expect(bed.bucketMB(client, bed.classBytes())).toEqual({});
      expect(bed.wireBytes('server') - wire).toBeGreaterThan(3_000_000);
      expect(await bed.settle()).toEqual([]);
    } finally {
      await bed.close();
    }
    expect(leftovers()).toEqual([]);
    expect(alive(sshdPid)).toBe(false);
  });

  it('tears everything down and exits 130 when the process holding it gets SIGINT', async () => {
    const script = `
      const { openWanTestbed } = await import(${JSON.stringify(TESTBED)});
      const bed = await openWanTestbed({ linkMbit: 400, streamMbit: 40, sshdDir: ${JSON.stringify(join(work, 'sshd2'))}, log: () => {}, checkSeconds: 1, idleWaitMs: 0 });
      // A session that would outlive us if nobody killed it, in the client namespace.
      const { spawn } = await import('node:child_process');
      const sleeper = spawn(bed.inClient[0], [...bed.inClient.slice(1), 'sleep', '600'], { stdio: 'ignore' });
      console.log(JSON.stringify({ sshd: bed.sshd.pid, sleeper: sleeper.pid }));
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let pids: { sshd: number; sleeper: number } | undefined;
    try {
      let out = '';
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      pids = await new Promise((resolve, reject) => {
        child.stdout.on('data', (d) => {
          out += d;
          const line = out.split('\n').find((l) => l.startsWith('{'));
          if (line) resolve(JSON.parse(line));
        });
        child.once('exit', (code) => reject(new Error(`the testbed's process exited ${code} before it was open: ${err}`)));
      });
      expect(alive(pids!.sleeper)).toBe(true);
      expect(leftovers().length).toBeGreaterThan(0);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(leftovers()).toEqual([]);
      expect(alive(pids!.sshd)).toBe(false);
      expect(alive(pids!.sleeper)).toBe(false);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      // Whatever the test saw, leave the machine as it was.
      if (leftovers().length > 0) (await import(TESTBED)).removeWanTestbed();
      for (const pid of [pids?.sshd, pids?.sleeper]) if (pid && alive(pid)) process.kill(pid, 'SIGKILL');
    }
  });
});
