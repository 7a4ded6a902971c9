/**
 * The embedded control plane: a `nats-server -js` per job, on a free port, with
 * its store in the job's state directory and a random token, stopped at the end.
 * Beyond loopback it speaks TLS only, with certificates of a CA made for the
 * run, and takes only clients that present the run's client certificate (and
 * the token): see nats-tls.ts and docs/security.md.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { delimiter, join } from 'node:path';
import { FerryError } from '@ferry/core';
import type { NatsClientTls } from '@ferry/core';
import { diesWithThisProcess } from '@ferry/transport';

export interface EmbeddedNats {
  url: string;
  token: string;
  /** Set when the server listens beyond loopback: what a client must present (and trust) besides the token. */
  tls: NatsClientTls | undefined;
  pid: number | undefined;
  /**
   * Stops the server: SIGTERM (it closes its store cleanly), SIGKILL after 5 s.
   * With `discard`, for a store whose contents are no longer needed (every
   * completion is in the journal), SIGKILL at once and the store is removed:
   * a clean JetStream shutdown syncs every stream's files (~60 ms here).
   */
  stop(options?: { discard?: boolean }): Promise<void>;
}

/** Finds an executable on PATH (or the FERRY_NATS_SERVER override). */
export async function findExecutable(name: string, envOverride?: string): Promise<string | undefined> {
  if (envOverride) {
    try {
      await access(envOverride, constants.X_OK);
      return envOverride;
    } catch {
      return undefined;
    }
  }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  // Debian installs it in /usr/sbin, which is not on every user's PATH.
  for (const dir of ['/usr/sbin', '/usr/local/sbin', '/usr/local/bin']) {
    try {
      await access(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return undefined;
}

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Addresses only this node can reach: there the token alone guards the server (the user's own processes hold it). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export interface EmbeddedNatsOptions {
  storeDir: string;
  /** Address to listen on. @default 127.0.0.1 */
  host?: string;
  /** Address agents use to reach it. @default host */
  advertiseHost?: string;
  /** The job it serves (its certificates name it). */
  jobId?: string;
  /** How long nats-server may take to start. @default 15s */
  startTimeoutMs?: number;
}

/**
 * A coordinator killed with SIGKILL leaves its nats-server running on the job's
 * store; the next run stops it before starting its own on the same store.
 */
export async function stopStale(pidFile: string): Promise<void> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (!cmdline.includes('nats-server')) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 100; i++) {
    if (!(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => ''))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

export async function startEmbeddedNats(options: EmbeddedNatsOptions): Promise<EmbeddedNats> {
  const override = process.env.FERRY_NATS_SERVER;
  const bin = await findExecutable('nats-server', override);
  if (!bin) {
    const where = override ? `FERRY_NATS_SERVER=${override} is not an executable` : 'not found on PATH, /usr/sbin or /usr/local/bin';
    throw new FerryError(
      'NATS_SERVER_MISSING',
      `nats-server is not installed (${where}): install it (Debian/Ubuntu: apt-get install nats-server), set FERRY_NATS_SERVER to its path, or pass --nats URL of a running server with JetStream`,
    );
  }
  const host = options.host ?? '127.0.0.1';
  await mkdir(options.storeDir, { recursive: true });
  await stopStale(join(options.storeDir, 'nats.pid'));
  // nats-server parses the variable's value as config: a leading letter keeps it a string ("7e3..." would be a number).
  const token = `ferry${randomBytes(24).toString('hex')}`;
  const startTimeoutMs = options.startTimeoutMs ?? 15_000;
  // Beyond loopback, nothing secret may cross the network in clear text, and the token alone
  // (which anyone on the path could have read before) no longer lets a client in.
  // Loaded only here: node-forge is a fifth of the coordinator's start-up, and a loopback nats-server needs no certificate.
  const tls = isLoopback(host) ? undefined : await (await import('./nats-tls.js')).createJobTls(join(options.storeDir, 'tls'), options.jobId ?? 'job', [host, options.advertiseHost ?? host]);
  const tlsBlock = tls
    ? [`tls { cert_file: ${JSON.stringify(tls.server.certFile)}, key_file: ${JSON.stringify(tls.server.keyFile)}, ca_file: ${JSON.stringify(tls.server.caFile)}, verify: true, timeout: 5 }`]
    : [];
  for (let attempt = 0; ; attempt++) {
    const port = await freePort(host);
    // The token reaches nats-server through its environment (the config refers to it), never
    // argv, where `ps` would show it, nor a file.
    const config = join(options.storeDir, 'nats-server.conf');
    await writeFile(
      config,
      [`listen: ${JSON.stringify(`${host}:${port}`)}`, `jetstream { store_dir: ${JSON.stringify(join(options.storeDir, 'jetstream'))} }`, ...tlsBlock, 'authorization { token: $FERRY_NATS_TOKEN }', ''].join('\n'),
      { mode: 0o600 },
    );
    // It dies with the coordinator, even one killed with SIGKILL (SIGTERM: it closes its store
    // cleanly; a rerun finds the journal and that store). In a process group of its own: a
    // Ctrl-C or a closed terminal must not stop it before the agents have reported what they
    // made durable; the coordinator stops it once they have.
    const [file, ...args] = diesWithThisProcess([bin, '-c', config], 'TERM');
    const child: ChildProcess = spawn(file!, args, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, FERRY_NATS_TOKEN: token },
      detached: true,
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    const deadline = Date.now() + startTimeoutMs;
    let up = false;
    while (Date.now() < deadline && child.exitCode === null && !spawnError) {
      if (await canConnect(host, port)) {
        up = true;
        break;
      }
      // nats-server is up ~20-40 ms after it starts: a shorter poll than 50 ms saves a copy ~20 ms.
      await new Promise((r) => setTimeout(r, 10));
    }
    if (up) {
      await writeFile(join(options.storeDir, 'nats.pid'), String(child.pid), { mode: 0o600 });
      const stop = async ({ discard = false } = {}) => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill(discard ? 'SIGKILL' : 'SIGTERM');
          const timer = discard ? undefined : setTimeout(() => child.kill('SIGKILL'), 5000);
          await exited;
          clearTimeout(timer);
        }
        if (discard) await rm(options.storeDir, { recursive: true, force: true });
      };
      return { url: `nats://${options.advertiseHost ?? host}:${port}`, token, tls: tls?.client, pid: child.pid, stop };
    }
    child.kill('SIGKILL');
    await exited;
    // Another process may have taken the port between our probe and nats-server's bind.
    if (/address already in use/i.test(stderr) && attempt < 3) continue;
    throw new FerryError('NATS_SERVER_MISSING', `nats-server (${bin}) did not start: ${spawnError?.message ?? (stderr.trim().split('\n').slice(-3).join(' | ') || 'no output')}`);
  }
}
