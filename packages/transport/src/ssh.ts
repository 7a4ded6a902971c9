/**
 * Opening an SSH connection with ssh2: host key checked against known_hosts,
 * keys from ssh-agent and key files, and every failure turned into a FerryError
 * that names the host and says what to do.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import ssh2 from 'ssh2';
import type { AnyAuthMethod, Client, ConnectConfig } from 'ssh2';

const { Client: SshClient, utils } = ssh2;
import { FerryError, hostLabel, hostName } from '@ferry/core';
import type { RemoteHost, SshSettings } from '@ferry/core';
import { gatherWrites } from './gather-writes.js';
import { usePacketRing } from './packet-ring.js';
import { appendKnownHost, checkHostKey, hostKeyAlgorithmsFor, knownKeyTypes, readKnownHostsFiles } from './known-hosts.js';

export interface ConnectOptions {
  /** Write an unknown host key to `ssh.knownHostsFile` instead of failing. */
  acceptNewHostKey?: boolean;
  /** Extra known_hosts files read (never written), e.g. /etc/ssh/ssh_known_hosts. */
  extraKnownHostsFiles?: string[];
  signal?: AbortSignal;
}

/** Loads the private keys that can be used without a passphrase; notes the others. */
async function loadKeys(files: string[]): Promise<{ keys: Array<{ file: string; key: Buffer }>; skipped: string[] }> {
  const keys: Array<{ file: string; key: Buffer }> = [];
  const skipped: string[] = [];
  for (const file of files) {
    let key: Buffer;
    try {
      key = await readFile(file);
    } catch (err) {
      skipped.push(`${file} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
      continue;
    }
    const parsed = utils.parseKey(key);
    if (parsed instanceof Error) {
      skipped.push(`${file} (${/passphrase|encrypted/i.test(parsed.message) ? 'encrypted: load it into ssh-agent' : parsed.message})`);
      continue;
    }
    keys.push({ file, key });
  }
  return { keys, skipped };
}

function socketErrorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * Connects and authenticates. Resolves with a ready client; rejects with
 * HOST_UNREACHABLE, HOST_KEY_UNKNOWN, HOST_KEY_CHANGED or SSH_AUTH_FAILED.
 */
export async function connectSsh(target: RemoteHost, ssh: SshSettings, options: ConnectOptions = {}): Promise<Client> {
  const label = hostLabel(target);
  const entries = await readKnownHostsFiles([ssh.knownHostsFile, ...(options.extraKnownHostsFiles ?? [])]);
  const keyTypes = knownKeyTypes(entries, target.host, target.port);
  const { keys, skipped } = await loadKeys(ssh.identityFiles);

  const methods: AnyAuthMethod[] = [];
  if (ssh.agentSocket) methods.push({ type: 'agent' as const, username: target.user, agent: ssh.agentSocket });
  for (const { key } of keys) methods.push({ type: 'publickey' as const, username: target.user, key });
  const tried = [...(ssh.agentSocket ? ['ssh-agent'] : []), ...keys.map((k) => k.file)];
  if (methods.length === 0) {
    throw new FerryError(
      'SSH_AUTH_FAILED',
      `no SSH key to authenticate as ${target.user}@${label}: start ssh-agent with your key loaded, or pass -i KEYFILE` +
        (skipped.length ? ` (skipped: ${skipped.join(', ')})` : ''),
      { host: label },
    );
  }

  let hostKeyError: FerryError | undefined;
  let pendingAppend: Promise<void> | undefined;
  const client = new SshClient();
  const config: ConnectConfig = {
    host: target.host,
    port: target.port,
    username: target.user,
    readyTimeout: ssh.connectTimeoutMs,
    keepaliveInterval: 15_000,
    keepaliveCountMax: 4,
    authHandler: methods,
    hostVerifier: (key: Buffer, verify: (ok: boolean) => void) => {
      const result = checkHostKey(entries, target.host, target.port, key);
      switch (result.status) {
        case 'known':
          verify(true);
          return;
        case 'unknown':
          if (options.acceptNewHostKey) {
            pendingAppend = appendKnownHost(ssh.knownHostsFile, target.host, target.port, key);
            pendingAppend.then(
              () => verify(true),
              (err: unknown) => {
                hostKeyError = new FerryError('HOST_KEY_UNKNOWN', `cannot record the host key of ${label} in ${ssh.knownHostsFile}: ${(err as Error).message}`, { host: label, cause: err });
                verify(false);
              },
            );
            return;
          }
          hostKeyError = new FerryError(
            'HOST_KEY_UNKNOWN',
            `host key of ${label} is not in ${ssh.knownHostsFile}: check its fingerprint with the host's admins, then rerun with --accept-new-host-key (or add it with ssh-keyscan)`,
            { host: label },
          );
          verify(false);
          return;
        case 'changed':
          hostKeyError = new FerryError(
            'HOST_KEY_CHANGED',
            `host key of ${label} (${result.keyType}) differs from the one in ${ssh.knownHostsFile}: this may be an attack; if the host was reinstalled, remove the old key with 'ssh-keygen -R ${target.port === 22 ? target.host : `[${target.host}]:${target.port}`} -f ${ssh.knownHostsFile}'`,
            { host: label },
          );
          verify(false);
          return;
        case 'revoked':
          hostKeyError = new FerryError('HOST_KEY_CHANGED', `host key of ${label} is marked @revoked in ${ssh.knownHostsFile}: refusing to connect`, { host: label });
          verify(false);
          return;
      }
    },
  };
  if (keyTypes.length > 0) config.algorithms = { serverHostKey: hostKeyPreference(hostKeyAlgorithmsFor(keyTypes)) as never };

  return new Promise<Client>((resolve, reject) => {
    let settled = false;
    const onAbort = () => {
      fail(new FerryError('INTERRUPTED', `connection to ${label} cancelled`, { host: label }));
      client.end();
    };
    const fail = (err: FerryError) => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener('abort', onAbort);
      client.destroy();
      reject(err);
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    client.once('ready', () => {
      if (settled) return;
      settled = true;
      // FERRY_PACKET_RING=0 keeps ssh2's buffer per packet (for A/B benchmarks).
      if (process.env.FERRY_PACKET_RING !== '0') usePacketRing(client);
      // FERRY_GATHER_WRITES=0 writes every packet to the socket on its own (for A/B benchmarks).
      if (process.env.FERRY_GATHER_WRITES !== '0') gatherWrites(client);
      options.signal?.removeEventListener('abort', onAbort);
      client.removeAllListeners('error');
      // Later errors surface on the channels; keep one listener so they never crash the process.
      client.on('error', () => {});
      resolve(client);
    });
    client.on('error', (err: Error & { level?: string }) => {
      if (hostKeyError) return fail(hostKeyError);
      if (err.level === 'client-authentication') {
        return fail(
          new FerryError(
            'SSH_AUTH_FAILED',
            `authentication as ${target.user}@${label} failed (tried ${tried.join(', ')}): add your public key to ~${target.user}/.ssh/authorized_keys on ${hostName(target.host)}, or pass -i KEYFILE` +
              (skipped.length ? `; skipped ${skipped.join(', ')}` : ''),
            { host: label, cause: err },
          ),
        );
      }
      const code = socketErrorCode(err);
      const why = err.level === 'client-timeout' ? `no SSH handshake within ${ssh.connectTimeoutMs / 1000}s` : code ?? err.message;
      fail(
        new FerryError('HOST_UNREACHABLE', `cannot reach ${label} over SSH (${why}): check the host name and port, the network path, and that sshd runs there`, {
          host: label,
          cause: err,
        }),
      );
    });
    client.once('close', () => {
      if (hostKeyError) return fail(hostKeyError);
      fail(new FerryError('HOST_UNREACHABLE', `${label} closed the SSH connection during the handshake`, { host: label }));
    });
    client.connect(config);
  });
}

const sshConstants = createRequire(import.meta.url)('ssh2/lib/protocol/constants.js') as {
  DEFAULT_SERVER_HOST_KEY: string[];
  SUPPORTED_SERVER_HOST_KEY: string[];
};

/**
 * Host key algorithms in the order to offer: those already on record for the
 * host first (so a host known by its ed25519 key is not asked for an ECDSA one,
 * which would look like a changed key), then ssh2's defaults.
 */
export function hostKeyPreference(known: string[]): string[] {
  const first = known.filter((a) => sshConstants.SUPPORTED_SERVER_HOST_KEY.includes(a));
  return [...first, ...sshConstants.DEFAULT_SERVER_HOST_KEY.filter((a) => !first.includes(a))];
}

/** Quotes a string for a POSIX shell. Remote paths only ever reach a shell through this. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
