/**
 * Proves test/fixtures/cluster.mjs: a real Slurm cluster of network namespaces with
 * DTNs behind sshd, and that stop() leaves nothing behind. Needs root (CI runs as root).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCluster, type Cluster } from './fixtures/cluster.mjs';

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn('test/cluster.test.ts skipped: the cluster fixture needs root (network namespaces, bridge, slurmd, munged).');

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function netnsNames(): string[] {
  try {
    return readdirSync('/var/run/netns');
  } catch {
    return [];
  }
}

/** Pids in a namespace (by inode of its /var/run/netns file). */
function pidsInNetns(name: string): number[] {
  const link = `net:[${statSync(`/var/run/netns/${name}`).ino}]`;
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        return readlinkSync(`/proc/${e}/ns/net`) === link;
      } catch {
        return false;
      }
    })
    .map(Number);
}

function pidsWithCmdline(needle: string): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e) && Number(e) !== process.pid)
    .filter((e) => {
      try {
        return readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(needle);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Alive and not a zombie (this machine's init reaps orphans only after a while, so exited daemons linger as zombies). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

function mungeWorks(): boolean {
  try {
    execFileSync('munge', ['-n'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!isRoot)('cluster fixture: 2 compute nodes, 2 DTNs', () => {
  const prefix = 'fyt';
  let c: Cluster;
  let mungeBefore = false;

  beforeAll(async () => {
    mungeBefore = mungeWorks();
    c = await startCluster({ computeNodes: 2, dtns: 2, prefix, subnet: '10.77.1' });
    console.log(`cluster up in ${c.startupMs} ms`);
  }, 60_000);

  // Also after a failed test: the cluster must never outlive the suite.
  afterAll(async () => {
    await c?.stop();
  });

  it('srun -N 2 -n 2 hostname runs one task on each node', async () => {
    const r = await c.run('srun', ['-N', '2', '-n', '2', 'hostname']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n').sort()).toEqual(['fyt-cn1', 'fyt-cn2']);
  });

  it('nodes have their own address, hostname and resolvable names', async () => {
    const r = await c.nsExec('fyt-cn2', 'sh', ['-c', 'hostname; ip -o -4 addr show dev eth0; getent hosts fyt-dtn1']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^fyt-cn2\n/);
    expect(r.stdout).toContain('inet 10.77.1.12/24');
    expect(r.stdout).toMatch(/10\.77\.1\.101\s+fyt-dtn1/);
    expect(c.computeNodes.map((n) => [n.name, n.ip])).toEqual([
      ['fyt-cn1', '10.77.1.11'],
      ['fyt-cn2', '10.77.1.12'],
    ]);
    expect(c.dtns.map((n) => [n.name, n.ip])).toEqual([
      ['fyt-dtn1', '10.77.1.101'],
      ['fyt-dtn2', '10.77.1.102'],
    ]);
    expect(c.bridgeIp).toBe('10.77.1.1');
    expect(c.env.SLURM_CONF).toBe(c.slurmConf);
  });

  it('a task on each compute node can ssh into each DTN, and the DTN sees the node address', async () => {
    const script = join(c.dir, 'ssh-dtns.sh');
    const lines = ['set -e'];
    for (const d of c.dtns) {
      // By name for one DTN and by IP for the other: known_hosts lists both.
      const host = d === c.dtns[0] ? d.name : d.ip;
      lines.push(`out=$(ssh ${c.sshArgs(host).map(q).join(' ')} 'echo ok; hostname')`, `echo "$(hostname) -> ${d.name}: $(echo $out)"`);
    }
    writeFileSync(script, lines.join('\n') + '\n');
    const r = await c.run('srun', ['-N', '2', '-n', '2', 'sh', script]);
    expect(r.code, r.stderr).toBe(0);
    const got = r.stdout.trim().split('\n').sort();
    expect(got).toEqual(['fyt-cn1 -> fyt-dtn1: ok fyt-dtn1', 'fyt-cn1 -> fyt-dtn2: ok fyt-dtn2', 'fyt-cn2 -> fyt-dtn1: ok fyt-dtn1', 'fyt-cn2 -> fyt-dtn2: ok fyt-dtn2']);
    for (const d of c.dtns) {
      const log = readFileSync(d.sshd.log, 'utf8');
      for (const n of c.computeNodes) expect(log).toMatch(new RegExp(`Accepted publickey for root from ${n.ip.replace(/\./g, '\\.')} port \\d+`));
    }
  });

  it('compute nodes run sshd too (for an ssh launcher), with the same key and known_hosts', async () => {
    for (const n of c.computeNodes) {
      const r = await c.run('ssh', [...c.sshArgs(n.name), 'hostname']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(n.name);
    }
  });

  it('sbatch --wait runs a two-node batch job', async () => {
    const script = join(c.dir, 'job.sh');
    writeFileSync(script, `#!/bin/sh\n#SBATCH -N 2\n#SBATCH -o ${c.dir}/job-%j.out\nsrun hostname\n`);
    const t0 = Date.now();
    const r = await c.run('sbatch', ['--wait', '--parsable', script]);
    console.log(`sbatch --wait took ${Date.now() - t0} ms`);
    expect(r.code, r.stderr).toBe(0);
    const id = r.stdout.trim();
    expect(id).toMatch(/^\d+$/);
    expect(readFileSync(join(c.dir, `job-${id}.out`), 'utf8').trim().split('\n').sort()).toEqual(['fyt-cn1', 'fyt-cn2']);
  });

  it('stopDtn kills the sshd and its sessions; startDtn brings it back with the same host key', async () => {
    const d = c.dtns[1]!;
    const session = c.nsExec('fyt-cn1', 'ssh', [...c.sshArgs(d.ip), 'sleep 60']);
    // Wait for the session to exist on the DTN (sshd + its session processes + sleep).
    for (let i = 0; i < 100 && pidsInNetns(d.netns).length < 3; i++) await new Promise((r) => setTimeout(r, 50));
    expect(pidsInNetns(d.netns).length).toBeGreaterThanOrEqual(3);
    const t0 = Date.now();
    await c.stopDtn(1);
    const s = await session;
    expect(s.code).toBe(255); // the ssh client saw its connection die
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(pidsInNetns(d.netns)).toEqual([]);
    const refused = await c.nsExec('fyt-cn1', 'ssh', [...c.sshArgs(d.ip), 'true']);
    expect(refused.code).toBe(255);
    expect(refused.stderr).toMatch(/refused/);
    // The other DTN is untouched.
    expect((await c.nsExec('fyt-cn1', 'ssh', [...c.sshArgs(c.dtns[0]!.ip), 'echo ok'])).stdout).toBe('ok\n');
    await c.startDtn(1);
    const back = await c.nsExec('fyt-cn2', 'ssh', [...c.sshArgs(d.name), 'echo ok']);
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toBe('ok\n');
  });

  it('stop() removes every process, namespace, link, hosts entry and file, and is idempotent', async () => {
    const nodes = [...c.computeNodes, ...c.dtns];
    const pids = [...nodes.flatMap((n) => pidsInNetns(n.netns)), ...pidsWithCmdline(c.dir)];
    // slurmctld, 2 slurmd, 4 sshd at least.
    expect(pids.length).toBeGreaterThanOrEqual(7);
    const t0 = Date.now();
    await c.stop();
    console.log(`cluster stopped in ${Date.now() - t0} ms`);
    await c.stop();
    expect(pids.filter(running)).toEqual([]);
    expect(pidsWithCmdline(c.dir)).toEqual([]);
    expect(netnsNames().filter((n) => n.startsWith(`${prefix}-`))).toEqual([]);
    const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
    expect(links).not.toMatch(/fytbr0|fyt-(cn|dtn)\d/);
    const hosts = readFileSync('/etc/hosts', 'utf8');
    expect(hosts).not.toMatch(/fyt-|ferry-cluster:fyt/);
    expect(existsSync(c.dir)).toBe(false);
    expect(existsSync(`/run/ferry-cluster-${prefix}`)).toBe(false);
    // A munged the fixture started is gone; one that was already running is left alone.
    expect(mungeWorks()).toBe(mungeBefore);
  });
});

describe.skipIf(!isRoot)('cluster fixture: shaped links', () => {
  let c: Cluster;
  beforeAll(async () => {
    c = await startCluster({ computeNodes: 1, dtns: 1, prefix: 'fys', subnet: '10.77.2', linkRateMbit: 20 });
  }, 60_000);
  afterAll(async () => {
    await c?.stop();
  });

  it('limits a compute node to linkRateMbit in both directions', async () => {
    const qdisc = execFileSync('tc', ['qdisc', 'show', 'dev', 'fys-cn1'], { encoding: 'utf8' });
    expect(qdisc).toMatch(/tbf .*rate 20Mbit/);
    const bytes = 4_000_000; // 1.6 s at 20 Mbit/s, a few ms unshaped
    const ssh = c.sshArgs('fys-dtn1').map(q).join(' ');
    for (const cmd of [`head -c ${bytes} /dev/zero | ssh ${ssh} 'cat > /dev/null'`, `ssh ${ssh} 'head -c ${bytes} /dev/zero' | wc -c`]) {
      const t0 = Date.now();
      const r = await c.nsExec('fys-cn1', 'sh', ['-c', cmd]);
      const s = (Date.now() - t0) / 1000;
      expect(r.code, r.stderr).toBe(0);
      console.log(`${bytes} bytes over a 20 Mbit/s link: ${s.toFixed(2)} s (${((bytes * 8) / s / 1e6).toFixed(1)} Mbit/s)`);
      // The first bucket of tbf passes unshaped; the rest cannot beat the rate.
      expect(s).toBeGreaterThan(1.2);
      expect(s).toBeLessThan(15);
    }
  });
});
