/**
 * `npm test` on a fresh machine installs what the tests run: scripts/setup.mjs
 * looks for each program the tests, their fixtures and ferry under test start,
 * and installs the Debian package that provides it. These tests hold that
 * table to the test sources, to the packages Debian really ships the programs
 * in, and to .ci/run.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { missingPrograms, programsFor } from '../scripts/setup.mjs';
import { CLUSTER_PROGRAMS } from './fixtures/cluster.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) return e === 'node_modules' || e === 'dist' ? [] : sources(p);
    return /\.(ts|mjs)$/.test(e) && !e.endsWith('.d.mts') ? [p] : [];
  });
}

/**
 * Programs named as the first argument of a spawn in the tests and fixtures:
 * spawn, spawnSync, execFile and execFileSync with a literal program name, and
 * the cluster fixture's run and nsExec.
 * Programs that only appear inside shell command strings are not found here;
 * the table lists those by hand.
 */
function spawnedPrograms(): Map<string, Set<string>> {
  const dirs = ['test', 'launcher/test', ...readdirSync(join(ROOT, 'packages')).map((p) => `packages/${p}/test`)];
  const patterns = [/\b(?:spawn|spawnSync|execFile|execFileSync|execFileP)\(\s*'([^']+)'/g, /\.run\(\s*'([^']+)'/g, /\bnsExec\(\s*[^,()]+,\s*'([^']+)'/g];
  const found = new Map<string, Set<string>>();
  for (const file of dirs.flatMap((d) => sources(join(ROOT, d)))) {
    const text = readFileSync(file, 'utf8');
    for (const re of patterns) for (const [, program] of text.matchAll(re)) found.set(program!, (found.get(program!) ?? new Set()).add(file.slice(ROOT.length)));
  }
  return found;
}

describe('scripts/setup.mjs', () => {
  it('names every program the tests and their fixtures spawn, in what `npm test` installs', () => {
    const spawned = spawnedPrograms();
    // The scan must see the spawns it is there for, or it proves nothing.
    expect([...spawned.keys()]).toEqual(expect.arrayContaining(['ssh-keygen', 'nats-server', 'srun', 'sbatch', 'mpirun', 'mount', 'mkfs.ext4', 'openssl', 'fincore', 'dpkg']));
    const table = programsFor('test');
    const absent = [...spawned].filter(([program]) => !(program in table)).map(([program, files]) => `${program} (${[...files].join(', ')})`);
    expect(absent).toEqual([]);
    expect(CLUSTER_PROGRAMS.filter((p) => !(p in table))).toEqual([]);
  });

  describe('finding what is missing', () => {
    let dir: string | undefined;
    afterEach(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
      dir = undefined;
    });

    it('asks for the packages of exactly the programs it cannot find', () => {
      dir = mkdtempSync(join(tmpdir(), 'ferry-setup-'));
      const hidden = ['srun', 'sbatch', 'sinfo', 'scontrol', 'mpirun'];
      for (const program of Object.keys(programsFor('test'))) if (!hidden.includes(program)) writeFileSync(join(dir, program), '');
      expect(missingPrograms('test', [dir])).toEqual({ programs: hidden, packages: ['slurm-client', 'openmpi-bin'] });
      // The demo runs neither.
      expect(missingPrograms('demo', [dir])).toEqual({ programs: [], packages: [] });
    });

    it('keeps the demo light: sshd, ssh-keygen and nats-server', () => {
      dir = mkdtempSync(join(tmpdir(), 'ferry-setup-'));
      expect(missingPrograms('demo', [dir]).packages).toEqual(['openssh-server', 'openssh-client', 'nats-server']);
    });
  });

  it('names for each program the Debian package that ships it (dpkg -S on this machine)', () => {
    const systemDirs = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'];
    const toggleUsr = (p: string) => (p.startsWith('/usr/') ? p.slice(4) : `/usr${p}`);
    // The paths each installed program may be recorded under: merged /usr, alternatives and diversions.
    const candidates = new Map<string, string[]>();
    for (const program of Object.keys(programsFor('bench'))) {
      const at = systemDirs.map((d) => join(d, program)).find((p) => existsSync(p));
      if (!at) continue;
      const paths = [...new Set([at, realpathSync(at)])];
      candidates.set(program, [...paths, ...paths.map(toggleUsr)]);
    }
    const notInstalled = Object.keys(programsFor('test')).filter((p) => !candidates.has(p));
    expect(notInstalled, 'run node scripts/setup.mjs first').toEqual([]);
    const dpkg = spawnSync('dpkg', ['-S', ...new Set([...candidates.values()].flat())], { encoding: 'utf8' });
    const owners = new Map<string, string[]>();
    for (const [, pkgs, path] of dpkg.stdout.matchAll(/^(?!diversion )([^:\n]+): (\/\S+)$/gm)) owners.set(path!, pkgs!.split(', ').map((p) => p.split(':')[0]!));
    const bench = programsFor('bench');
    const wrong = [...candidates]
      .map(([program, paths]) => [program, [...new Set(paths.flatMap((p) => owners.get(p) ?? []))]] as const)
      .filter(([program, pkgs]) => !pkgs.includes(bench[program]!))
      .map(([program, pkgs]) => `${program}: table says ${bench[program]}, dpkg says ${pkgs.join(', ') || 'no package'}`);
    expect(wrong).toEqual([]);
  });

  it('.ci/run and the README name the packages `npm test` installs (those not always there)', () => {
    const line = /apt-get install ([^\n&;|]*)/.exec(readFileSync(join(ROOT, '.ci/run'), 'utf8'))?.[1] ?? '';
    const named = line.split(/\s+/).filter((w) => w && !w.startsWith('-'));
    const packages = [...new Set(Object.values(programsFor('test')))];
    const query = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${Essential}\n', ...packages], { encoding: 'utf8' });
    const essential = new Set(query.stdout.split('\n').filter((l) => l.endsWith(' yes')).map((l) => l.split(' ')[0]));
    expect(essential).toContain('coreutils');
    const installed = packages.filter((p) => !essential.has(p));
    expect(named.sort()).toEqual([...installed].sort());
    // And the README's "Try it" says so.
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const tryIt = readme.slice(readme.indexOf('## Try it'), readme.indexOf('## Install'));
    expect(installed.filter((p) => !new RegExp(`[\\s\`]${p}[\\s\`]`).test(tryIt))).toEqual([]);
  });
});
