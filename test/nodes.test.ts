/**
 * Many nodes, for real: a Slurm cluster of two compute-node network namespaces
 * (slurmctld, one slurmd per node, munge) and two data transfer nodes running
 * sshd, built by the test. Agents run on the compute nodes and connect from
 * their own addresses to both remote hosts.
 */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster } from './fixtures/cluster.mjs';
import type { Cluster } from './fixtures/cluster.mjs';
import { CLI, ROOT, fileHash, makeRandomFile, parseEvents, runFerry } from './helpers.js';
import type { FerryEvent } from './helpers.js';
import { compareTrees, generateTree } from '../bench/tree-lib.mjs';

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn('test/nodes.test.ts skipped: building network namespaces and a Slurm cluster needs root (CI runs as root)');

const MiB = 1024 * 1024;
const execFileAsync = promisify(execFile);
const FERRY = join(ROOT, 'bin', 'ferry');

describe.skipIf(!isRoot)('many nodes', () => {
  let cluster: Cluster;
  let src: string;
  let srcHash: string;

  const dtnLog = async (i: number) => readFile(cluster.dtns[i]!.sshd.log, 'utf8');
  const connectedFrom = async (i: number) => new Set([...(await dtnLog(i)).matchAll(/Accepted publickey for \S+ from (\S+)/g)].map((m) => m[1]));
  const common = (dir: string) => ['-i', cluster.userKey, '--known-hosts', cluster.knownHosts, '--remote-cmd', `${FERRY} serve`, '--state-dir', join(dir, 'state'), '--range-size', '16MiB'];
  const dst = (dir: string) => `root@${cluster.dtns.map((d) => d.name).join(',')}:${dir}/`;

  beforeAll(async () => {
    cluster = await startCluster({ prefix: 'fyn', subnet: '10.77.3' });
    src = join(cluster.dir, 'src.bin');
    await makeRandomFile(src, 256 * MiB);
    srcHash = await fileHash(src);
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it('sbatch --wait slurm/ferry.sbatch moves a file from both compute nodes to both remote hosts', async () => {
    const dir = join(cluster.dir, 'sbatch');
    await mkdir(dir);
    const r = await cluster.run('sbatch', ['--wait', '--nodes=2', '--ntasks-per-node=2', `--output=${join(dir, 'job.out')}`, join(ROOT, 'slurm', 'ferry.sbatch')], {
      cwd: dir,
      timeoutMs: 240_000,
      env: {
        FERRY: FERRY,
        FERRY_SRC: src,
        FERRY_DST: dst(dir),
        FERRY_STATE: join(dir, 'state'),
        FERRY_REMOTE_CMD: `${FERRY} serve`,
        FERRY_OPTS: `-i ${cluster.userKey} --known-hosts ${cluster.knownHosts} --range-size 16MiB --json`,
      },
    });
    const out = await readFile(join(dir, 'job.out'), 'utf8').catch(() => '');
    expect(r.code, `${r.stderr}\n${out}`).toBe(0);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);
    // Every compute node reached both remote hosts from its own address.
    const nodeIps = cluster.computeNodes.map((n) => n.ip);
    for (let i = 0; i < cluster.dtns.length; i++) for (const ip of nodeIps) expect(await connectedFrom(i)).toContain(ip);
    // And ferry's own report says which agents on which nodes did the work.
    const events = parseEvents(out.split('\n').filter((l) => l.startsWith('{')).join('\n'));
    const nodes = new Set(events.filter((e) => e.type === 'agent.start').map((e) => e.node));
    expect([...nodes].sort()).toEqual(cluster.computeNodes.map((n) => n.name).sort());
    expect(events.filter((e) => e.type === 'agent.start')).toHaveLength(4);
    const status = JSON.parse((await runFerry(['status', '--state-dir', join(dir, 'state'), '--json'])).stdout)[0];
    expect(status.phase).toBe('done');
    expect(status.nodes.map((n: { node: string }) => n.node).sort()).toEqual(cluster.computeNodes.map((n) => n.name).sort());
    expect(status.hosts.map((h: { host: string }) => h.host).sort()).toEqual(cluster.dtns.map((d) => d.name).sort());
  });

  it('mpirun -np 3 ferry run moves a file byte-identically', async () => {
    const dir = join(cluster.dir, 'mpirun');
    await mkdir(dir);
    const r = await cluster.run(
      'mpirun',
      ['--oversubscribe', '-np', '3', process.execPath, CLI, 'run', src, dst(dir), ...common(dir), '--nats-listen', '127.0.0.1', '--json'],
      { timeoutMs: 180_000, env: { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' } },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);
    const events = parseEvents(r.stdout.split('\n').filter((l) => l.startsWith('{')).join('\n'));
    expect(events.filter((e) => e.type === 'agent.start')).toHaveLength(3);
    expect(events.at(-1)).toMatchObject({ type: 'done', bytes: 256 * MiB });
  });

  it('the ssh launcher starts agents in the compute nodes through their sshd', async () => {
    const dir = join(cluster.dir, 'ssh');
    await mkdir(dir);
    const r = await runFerry([
      'cp', src, dst(dir), ...common(dir), '--json',
      '--launcher', 'ssh', '--hosts', cluster.computeNodes.map((n) => n.name).join(','), '-a', '2',
      '--ssh-option', `IdentityFile=${cluster.userKey}`, '--ssh-option', `UserKnownHostsFile=${cluster.knownHosts}`, '--ssh-option', 'User=root',
      '--agent-cmd', FERRY, '--nats-listen', cluster.bridgeIp, '--nats-advertise', cluster.bridgeIp,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);
    const nodes = parseEvents(r.stdout).filter((e) => e.type === 'agent.start').map((e) => e.node);
    expect(nodes.sort()).toEqual(cluster.computeNodes.map((n) => n.name).sort());
    for (const n of cluster.computeNodes) expect(await readFile(n.sshd.log, 'utf8')).toMatch(new RegExp(`Accepted publickey for root from ${cluster.bridgeIp.replace(/\./g, '\\.')}`));
  });

  it('the srun launcher starts agents on the nodes, and a wrong binary path names the launcher, command and stderr', async () => {
    const dir = join(cluster.dir, 'srun');
    await mkdir(dir);
    const args = ['cp', src, dst(dir), ...common(dir), '--launcher', 'srun', '--nodes', '2', '--agents-per-node', '1', '-a', '2', '--nats-listen', cluster.bridgeIp, '--nats-advertise', cluster.bridgeIp];
    const bad = await runFerry([...args, '--agent-cmd', '/nonexistent/bin/ferry'], { env: cluster.env });
    expect(bad.code).toBe(70);
    expect(bad.stderr).toMatch(/^ferry: error: agent launch via srun failed \(exit \d+\): srun --ntasks 2 --nodes 2 --ntasks-per-node 1 --kill-on-bad-exit=0 --export=ALL \/nonexistent\/bin\/ferry agent --job [0-9a-f]{16} --nats nats:\/\/10\.77\.3\.1:\d+\n/);
    expect(bad.stderr).toMatch(/\/nonexistent\/bin\/ferry.*No such file or directory/);
    const good = await runFerry([...args, '--agent-cmd', FERRY, '--json'], { env: cluster.env });
    expect(good.code, good.stderr).toBe(0);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);
    const nodes = parseEvents(good.stdout).filter((e) => e.type === 'agent.start').map((e) => e.node);
    expect(nodes.sort()).toEqual(cluster.computeNodes.map((n) => n.name).sort());
  });

  it('ferry cp --sbatch submit hands Slurm a job that copies the file', async () => {
    const dir = join(cluster.dir, 'sbatch-submit');
    await mkdir(dir);
    await writeFile(join(dir, '.keep'), '');
    const r = await runFerry(['cp', src, dst(dir), ...common(dir), '--sbatch', '--nodes', '2', '--agents-per-node', '1', '--agent-cmd', FERRY]);
    expect(r.code).toBe(0);
    const script = join(dir, 'job.sbatch');
    await writeFile(script, r.stdout);
    const run = await cluster.run('sbatch', ['--wait', `--output=${join(dir, 'job.out')}`, script], { cwd: dir, timeoutMs: 240_000 });
    expect(run.code, `${run.stderr}\n${await readFile(join(dir, 'job.out'), 'utf8').catch(() => '')}`).toBe(0);
    expect(await fileHash(join(dir, 'src.bin'))).toBe(srcHash);
  });

  describe('a tree through srun -N 2 ferry run -r', () => {
    let tree: string;
    const flags = (dir: string) => [
      ...common(dir), '--batch-files-under', '64KiB', '--batch-size', '16KiB', '--stripe-files-over', '2MiB', '-s', '2', '--ack-wait', '3s', '--json',
    ];
    /** `ferry run -r` of the tree into dir, on both DTNs; small batches (16 KiB), so that there are many; the 3 MiB file is striped as a job of its own. */
    const treeRun = (dir: string) => ['-N', '2', '-n', '2', '--kill-on-bad-exit=0', FERRY, 'run', '-r', '-p', tree, dst(dir), ...flags(dir)];
    /** The same the other way: `ferry run -r` of the tree from both DTNs into dir (here, on the file system both nodes share). */
    const treePull = (dir: string, to = `${dir}/`) => ['-N', '2', '-n', '2', '--kill-on-bad-exit=0', FERRY, 'run', '-r', '-p', `root@${cluster.dtns.map((d) => d.name).join(',')}:${tree}`, to, ...flags(dir)];
    /** The 3 MiB file in a batch of its own rather than a job of its own: one job, a shorter test. */
    const noHugeJob = ['--stripe-files-over', '64MiB'];
    /** Agents that reported batches, by node: the coordinator's closing lines. */
    const batchesByNode = (events: FerryEvent[]) => {
      const out = new Map<string, number>();
      for (const e of events) {
        const m = e.type === 'log' ? /^\S+ on (\S+): (\d+) batches$/.exec(String(e.message)) : null;
        if (m) out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
      }
      return out;
    };
    const names = () => cluster.computeNodes.map((n) => n.name).sort();

    /** A copy whose tree arrived exactly, each node's agents with batches to their name. */
    const expectBothNodes = async (r: { code: number | null; stdout: string; stderr: string }, copy: string) => {
      expect(r.code, r.stderr).toBe(0);
      expect((await compareTrees(tree, copy)).differences).toEqual({});
      const events = parseEvents(r.stdout);
      expect(events.at(-1)).toMatchObject({ type: 'tree.done', failed: 0 });
      expect([...new Set(events.filter((e) => e.type === 'agent.start').map((e) => e.node))].sort()).toEqual(names());
      const byNode = batchesByNode(events);
      expect([...byNode.keys()].sort()).toEqual(names());
      for (const n of names()) expect(byNode.get(n)).toBeGreaterThan(0);
    };

    /**
     * Runs srun with `args` where rank 1 writes each batch it takes and holds its results
     * (FERRY_TEST_HOLD_BATCHES), kills rank 1's agent with SIGKILL once it holds one, and
     * returns the events: only another agent can report those batches, once rank 1 is dead
     * and their ack wait has passed.
     */
    const killHolder = async (args: string[]): Promise<FerryEvent[]> => {
      const child = spawn('srun', args, { env: { ...process.env, ...cluster.env, FERRY_TEST_HOLD_BATCHES: '-r1' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      const seen: Array<() => void> = [];
      child.stdout.on('data', (d: Buffer) => ((out += d.toString()), seen.splice(0).forEach((w) => w())));
      child.stderr.on('data', (d: Buffer) => ((err += d.toString()), seen.splice(0).forEach((w) => w())));
      const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
      const until = async (ok: () => boolean, what: string) => {
        const deadline = Date.now() + 60_000;
        while (!ok()) {
          if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no ${what}; stderr:\n${err}\nstdout:\n${out.slice(-4000)}`);
          await new Promise<void>((r) => {
            seen.push(r);
            setTimeout(r, 500);
          });
        }
      };
      try {
        await until(() => /ferry rank 1: batch \d+: written; holding its results/.test(err), 'batch held by rank 1');
        const victim = parseEvents(out).find((e) => e.type === 'agent.start' && String(e.agent).endsWith('-r1'));
        expect(victim).toBeDefined();
        process.kill(Number(victim!.pid), 'SIGKILL');
        await Promise.race([exited, new Promise((_, reject) => setTimeout(() => reject(new Error(`srun did not end; stderr:\n${err}`)), 90_000))]);
      } finally {
        child.kill('SIGKILL');
      }
      return parseEvents(out);
    };

    /** After killHolder: the copy ended whole, and rank 1 reported nothing (every batch, its held ones too, came from rank 0's agent). */
    const expectRank0Alone = async (events: FerryEvent[], copy: string) => {
      expect(events.filter((e) => e.type === 'error')).toEqual([]);
      expect(events.at(-1)).toMatchObject({ type: 'tree.done', failed: 0 });
      expect((await compareTrees(tree, copy)).differences).toEqual({});
      const rank0 = events.find((e) => e.type === 'agent.start' && !String(e.agent).endsWith('-r1'))!.node;
      expect([...batchesByNode(events).entries()].filter(([, n]) => n > 0).map(([node]) => node)).toEqual([rank0]);
    };

    beforeAll(async () => {
      tree = join(cluster.dir, 'project');
      await generateTree(tree, { files: 160, big: 1, bigBytes: 3 * MiB, sparse: 0, seed: 71, medianBytes: 2048 });
    });

    it('moves the tree exactly, its batches written by the agents of both nodes', async () => {
      const dir = join(cluster.dir, 'tree-run');
      await mkdir(dir);
      await expectBothNodes(await cluster.run('srun', treeRun(dir), { timeoutMs: 120_000 }), join(dir, 'project'));
    });

    it('an agent killed with SIGKILL holding batches: another takes them and the tree arrives whole', async () => {
      const dir = join(cluster.dir, 'tree-kill');
      await mkdir(dir);
      await expectRank0Alone(await killHolder(treeRun(dir)), join(dir, 'project'));
    });

    it('pulls the tree exactly, its batches read and written here by the agents of both nodes', async () => {
      const dir = join(cluster.dir, 'tree-pull');
      await mkdir(dir);
      await expectBothNodes(await cluster.run('srun', [...treePull(dir), ...noHugeJob], { timeoutMs: 120_000 }), join(dir, 'project'));
    });

    it('ferry sync --launcher srun: the agents of both nodes make the copy, then a rerun sends only what changed and deletes what went', async () => {
      const dir = join(cluster.dir, 'sync-srun');
      const src = join(dir, 'src');
      await mkdir(dir);
      // A copy of the shared tree, changed below (the other tests compare against the original).
      await execFileAsync('cp', ['-a', tree, src]);
      const copy = join(dir, 'copy');
      const target = `root@${cluster.dtns.map((d) => d.name).join(',')}:${copy}`;
      // No -a: the agents are one per node slot (--nodes 2 x --agents-per-node 1).
      const sync = (...more: string[]) =>
        runFerry(['sync', src, target, ...flags(dir), ...noHugeJob, '--launcher', 'srun', '--nodes', '2', '--agents-per-node', '1', '--agent-cmd', FERRY, '--nats-listen', cluster.bridgeIp, '--nats-advertise', cluster.bridgeIp, ...more], { env: cluster.env });
      // Held to 1 MB/s (~4 s), so that both nodes' agents are up and take batches before the first run ends.
      const first = await sync('--limit-rate', '1MB');
      expect(first.code, first.stderr).toBe(0);
      expect((await compareTrees(src, copy)).differences).toEqual({});
      const events = parseEvents(first.stdout);
      expect([...new Set(events.filter((e) => e.type === 'agent.start').map((e) => e.node))].sort()).toEqual(names());
      expect([...batchesByNode(events).entries()].filter(([, n]) => n > 0).map(([node]) => node).sort()).toEqual(names());

      // Three files changed (same size, one byte and a later time), one added, one removed.
      const files = (await readdir(src, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
      const single: string[] = [];
      for (const f of files) if ((await stat(f)).nlink === 1 && (await stat(f)).size > 0) single.push(f);
      const [a, b, c, gone] = single;
      for (const f of [a!, b!, c!]) {
        const bytes = await readFile(f);
        bytes[0] = bytes[0]! ^ 0xff;
        await writeFile(f, bytes);
        const later = new Date(Date.now() + 60_000);
        await utimes(f, later, later);
      }
      await writeFile(join(src, 'added.txt'), 'new\n');
      await rm(gone!);
      const again = await sync('--delete');
      expect(again.code, again.stderr).toBe(0);
      expect((await compareTrees(src, copy)).differences).toEqual({});
      expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 4, deleted: 1, failed: 0 });
      expect(parseEvents(again.stdout).filter((e) => e.type === 'agent.start').length).toBe(2);
      // The job's manifest covers the whole copy, the batches the agents wrote included: verify re-reads it all.
      const job = String(parseEvents(again.stdout).find((e) => e.type === 'tree.done')!.jobId);
      const verified = await runFerry(['verify', job, '--state-dir', join(dir, 'state'), '--json'], { env: cluster.env });
      expect(verified.code, verified.stderr).toBe(0);
    });

    it('ferry sync --sbatch: Slurm runs srun ferry run --sync, both nodes\' agents make the copy, and the next job sends only the change and deletes the extra', async () => {
      const dir = join(cluster.dir, 'sync-sbatch');
      const src = join(dir, 'src');
      await mkdir(dir);
      await execFileAsync('cp', ['-a', tree, src]);
      const copy = join(dir, 'copy');
      const target = `root@${cluster.dtns.map((d) => d.name).join(',')}:${copy}`;
      /** The batch script ferry sync --sbatch prints, submitted with sbatch --wait; its output's events. */
      const submit = async (name: string, ...more: string[]) => {
        const made = await runFerry(['sync', src, target, ...flags(dir), ...noHugeJob, '--sbatch', '--nodes', '2', '--agents-per-node', '1', '--agent-cmd', FERRY, ...more]);
        expect(made.code, made.stderr).toBe(0);
        expect(made.stdout).toContain(` run --sync ${more.includes('--delete') ? '--delete ' : ''}${src} `);
        const script = join(dir, `${name}.sbatch`);
        await writeFile(script, made.stdout);
        const r = await cluster.run('sbatch', ['--wait', `--output=${join(dir, `${name}.out`)}`, script], { cwd: dir, timeoutMs: 240_000 });
        const out = await readFile(join(dir, `${name}.out`), 'utf8').catch(() => '');
        expect(r.code, `${r.stderr}\n${out}`).toBe(0);
        return parseEvents(out.split('\n').filter((l) => l.startsWith('{')).join('\n'));
      };
      // Held to 1 MB/s (~4 s), so that both nodes' agents are up and take batches before the first run ends.
      const first = await submit('first', '--limit-rate', '1MB');
      expect((await compareTrees(src, copy)).differences).toEqual({});
      expect([...new Set(first.filter((e) => e.type === 'agent.start').map((e) => e.node))].sort()).toEqual(names());

      const files = (await readdir(src, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name)).sort();
      let one = '';
      for (const f of files) if (!one && (await stat(f)).nlink === 1) one = f;
      await writeFile(one, 'changed\n');
      await writeFile(join(copy, 'extra.txt'), 'not in the source\n');
      const again = await submit('again', '--delete');
      expect((await compareTrees(src, copy)).differences).toEqual({});
      expect(again.find((e) => e.type === 'tree.done')).toMatchObject({ files: 1, deleted: 1, failed: 0 });
      const job = String(again.find((e) => e.type === 'tree.done')!.jobId);
      const verified = await runFerry(['verify', job, '--state-dir', join(dir, 'state'), '--json'], { env: cluster.env });
      expect(verified.code, verified.stderr).toBe(0);
    });

    it("a pull's agents fail, one killed with SIGKILL holding batches it wrote, one on a node that sees another directory at the destination's name: rank 0's agent writes the whole tree", async () => {
      const dir = join(cluster.dir, 'tree-pull-faults');
      const out = join(dir, 'out');
      await mkdir(out, { recursive: true });
      // Three ranks: rank 1 holds the results of the batches it writes and is killed (killHolder);
      // rank 2 runs in a mount namespace of its own with a tmpfs over out/, where a node-local
      // out/project of the same name is not the directory the coordinator made.
      const script = 'if [ "$SLURM_PROCID" = 2 ]; then exec unshare -m --propagation private sh -c "mount -t tmpfs tmpfs \\"\\$0\\" && mkdir \\"\\$0/project\\" && exec \\"\\$@\\"" "$0" "$@"; fi; exec "$@"';
      const args = treePull(dir, `${out}/`);
      const events = await killHolder(['-N', '2', '-n', '3', '--kill-on-bad-exit=0', 'sh', '-c', script, out, ...args.slice(5), ...noHugeJob]);
      expect(events.filter((e) => e.type === 'error')).toEqual([]);
      expect(events.at(-1)).toMatchObject({ type: 'tree.done', failed: 0 });
      expect((await compareTrees(tree, join(out, 'project'))).differences).toEqual({});
      const refused = events.filter((e) => e.type === 'agent.error' && e.fatal === true);
      expect(refused.map((e) => [String(e.agent).replace(/^.*-/, ''), e.code])).toEqual([['r2', 'DEST_DIR_MISSING']]);
      expect(String(refused[0]!.message)).toMatch(new RegExp(`^destination tree ${out}/project on \\S+ is not the directory the coordinator made \\(inode \\d+, not \\d+\\)`));
      // Every batch, rank 1's held ones too, was reported by rank 0's agent alone.
      const rank0 = events.find((e) => e.type === 'agent.start' && !/-r[12]$/.test(String(e.agent)))!.agent;
      const reported = events.flatMap((e) => {
        const m = e.type === 'log' ? /^(\S+) on \S+: (\d+) batches$/.exec(String(e.message)) : null;
        return m && Number(m[2]) > 0 ? [m[1]] : [];
      });
      expect(reported).toEqual([rank0]);
    });
  });
});
