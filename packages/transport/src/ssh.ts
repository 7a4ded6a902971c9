/**
 * Opening an SSH connection with ssh2, as ssh would with the same
 * configuration: the host's SshRoute (resolved from ssh_config and the command
 * line by the coordinator, see ssh-route.ts) says where to connect, through
 * which ProxyJump hosts, with which keys and known_hosts files. The host key is
 * checked at every hop; keys come from ssh-agent and key files; every failure
 * is a FerryError that names the host (and where it really is) and says what
 * to do.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { AnyAuthMethod, Client, ConnectConfig, ParsedKey } from 'ssh2';

const { Client: SshClient, OpenSSHAgent, utils } = ssh2;
import { FerryError, describeHost, hostLabel, hostName } from '@ferry/core';
import type { RemoteHost, SshRoute, SshSettings } from '@ferry/core';
import { gatherWrites } from './gather-writes.js';
import { usePacketRing } from './packet-ring.js';
import { appendKnownHost, checkHostKey, hostKeyAlgorithmsFor, hostKeyName, knownKeyTypes, readKnownHostsSources } from './known-hosts.js';
import { DEFAULT_KEEPALIVE_COUNT_MAX, DEFAULT_KEEPALIVE_INTERVAL_MS } from './ssh-route.js';

export interface ConnectOptions {
  /**
   * This connection may write known_hosts (the coordinator's; agents never do,
   * so that many of them on a shared home do not append at once): an unknown
   * host key is recorded where the host's route allows it (acceptNewHostKey),
   * or always for a host without a route.
   */
  recordNewHostKeys?: boolean;
  signal?: AbortSignal;
}

/** The route of a host that has none: the job's settings, as before ssh_config was read. */
export function routeFromSettings(target: RemoteHost, ssh: SshSettings): SshRoute {
  const route: SshRoute = {
    hostName: target.host,
    identityFiles: ssh.identityFiles,
    knownHostsFiles: [ssh.knownHostsFile],
    globalKnownHostsFiles: [],
    connectTimeoutMs: ssh.connectTimeoutMs,
    keepaliveIntervalMs: DEFAULT_KEEPALIVE_INTERVAL_MS,
    keepaliveCountMax: DEFAULT_KEEPALIVE_COUNT_MAX,
    acceptNewHostKey: true,
  };
  if (ssh.agentSocket) route.agentSocket = ssh.agentSocket;
  return route;
}

interface LoadedKeys {
  keys: Array<{ file: string; key: Buffer }>;
  skipped: string[];
  /** Public keys of the files, as SSH blobs, also of those that could not be loaded (from FILE.pub): IdentitiesOnly's agent filter. */
  publicKeys: Buffer[];
}

function publicBlob(parsed: ParsedKey | ParsedKey[] | Error): Buffer | undefined {
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  return key === undefined || key instanceof Error ? undefined : key.getPublicSSH();
}

/** Loads the private keys that can be used without a passphrase; notes the others. */
async function loadKeys(files: string[]): Promise<LoadedKeys> {
  const keys: LoadedKeys['keys'] = [];
  const skipped: string[] = [];
  const publicKeys: Buffer[] = [];
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
      // ssh reads FILE.pub to know an encrypted key's public half, so the agent may sign for it.
      const pub = await readFile(`${file}.pub`).then((b) => publicBlob(utils.parseKey(b)), () => undefined);
      if (pub) publicKeys.push(pub);
      continue;
    }
    const pub = publicBlob(parsed);
    if (pub) publicKeys.push(pub);
    keys.push({ file, key });
  }
  return { keys, skipped, publicKeys };
}

/** ssh-agent, showing only the identities IdentitiesOnly lets through (those of the identity files), as ssh does. */
class ListedKeysAgent extends OpenSSHAgent {
  constructor(
    socketPath: string,
    private readonly allowed: readonly Buffer[],
  ) {
    super(socketPath);
  }

  override getIdentities(cb: (err: Error | undefined, keys?: ParsedKey[]) => void): void {
    super.getIdentities((err, keys) => {
      if (err || !keys) return cb(err ?? new Error('no identities from the agent'));
      const listed = keys.filter((k) => {
        const blob = publicBlob(utils.parseKey(k as ParsedKey));
        return blob !== undefined && this.allowed.some((a) => a.equals(blob));
      });
      cb(undefined, listed as ParsedKey[]);
    });
  }
}

function socketErrorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** One login on the way to `target`: the target itself, or a jump host before it. */
interface Hop {
  host: RemoteHost;
  route: SshRoute;
  /** How errors name this login: the target described, or "jump host X (...) on the way to T". */
  name: string;
  jump: boolean;
}

/**
 * Connects and authenticates, through the route's jump hosts if it has any.
 * Resolves with a ready client; rejects with HOST_UNREACHABLE,
 * HOST_KEY_UNKNOWN, HOST_KEY_CHANGED or SSH_AUTH_FAILED, naming the host as the
 * user wrote it (the error's `host`) and where it really is.
 */
export async function connectSsh(target: RemoteHost, ssh: SshSettings, options: ConnectOptions = {}): Promise<Client> {
  const route = target.route ?? routeFromSettings(target, ssh);
  const label = hostLabel(target);
  const hops: Hop[] = (route.jumps ?? []).map((j) => ({ host: j, route: j.route ?? routeFromSettings(j, ssh), name: `jump host ${describeHost(j)} on the way to ${label}`, jump: true }));
  hops.push({ host: target, route, name: describeHost({ ...target, route }), jump: false });
  const opened: Client[] = [];
  let sock: Duplex | undefined;
  try {
    for (let i = 0; i < hops.length; i++) {
      const hop = hops[i]!;
      const client = await login(hop, label, sock, options);
      opened.push(client);
      const next = hops[i + 1];
      if (next) sock = await forward(client, hop, next, label);
    }
  } catch (err) {
    for (const c of opened) c.end();
    throw err;
  }
  const client = opened[opened.length - 1]!;
  // The jump connections live as long as the one they carry.
  if (opened.length > 1) client.once('close', () => opened.slice(0, -1).forEach((c) => c.end()));
  return client;
}

/** A channel from `via` to the next hop's address (ssh -W), to carry the next login. */
function forward(via: Client, hop: Hop, next: Hop, label: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    via.forwardOut('127.0.0.1', 0, next.route.hostName, next.host.port, (err, stream) => {
      if (!err) return resolve(stream);
      reject(
        new FerryError(
          'HOST_UNREACHABLE',
          `${hop.name} cannot reach ${next.jump ? `jump host ${describeHost(next.host)}` : describeHost(next.host)} (${err.message}): check the host name and port, the jump host's AllowTcpForwarding, and that sshd runs there`,
          { host: label, cause: err },
        ),
      );
    });
  });
}

async function login(hop: Hop, label: string, sock: Duplex | undefined, options: ConnectOptions): Promise<Client> {
  const { host: target, route, name } = hop;
  const lookupName = route.hostKeyAlias ?? route.hostName;
  const lookupPort = route.hostKeyAlias !== undefined ? 22 : target.port;
  const knownFiles = [...route.knownHostsFiles, ...route.globalKnownHostsFiles];
  const { entries, found } = await readKnownHostsSources(knownFiles);
  // Name the file a new key would go to, and the others that exist.
  const checked = [...new Set([...route.knownHostsFiles.slice(0, 1), ...found])];
  const recordIn = route.knownHostsFiles[0];
  const keyTypes = knownKeyTypes(entries, lookupName, lookupPort);
  const { keys, skipped, publicKeys } = await loadKeys(route.identityFiles);

  const methods: AnyAuthMethod[] = [];
  if (route.agentSocket) {
    const agent = route.identitiesOnly ? new ListedKeysAgent(route.agentSocket, publicKeys) : route.agentSocket;
    methods.push({ type: 'agent' as const, username: target.user, agent });
  }
  for (const { key } of keys) methods.push({ type: 'publickey' as const, username: target.user, key });
  const tried = [...(route.agentSocket ? [route.identitiesOnly ? 'ssh-agent (IdentitiesOnly: its keys of the files named)' : 'ssh-agent'] : []), ...keys.map((k) => k.file)];
  if (methods.length === 0) {
    throw new FerryError(
      'SSH_AUTH_FAILED',
      `no SSH key to authenticate as ${target.user}@${name}: start ssh-agent with your key loaded, or pass -i KEYFILE (or name it with IdentityFile in ~/.ssh/config)` +
        (skipped.length ? ` (skipped: ${skipped.join(', ')})` : ''),
      { host: label },
    );
  }

  const recordNew = options.recordNewHostKeys === true && route.acceptNewHostKey === true;
  let hostKeyError: FerryError | undefined;
  let pendingAppend: Promise<void> | undefined;
  let serverMethods: string[] | undefined;
  let next = 0;
  const client = new SshClient();
  const config: ConnectConfig = {
    host: route.hostName,
    port: target.port,
    username: target.user,
    readyTimeout: route.connectTimeoutMs,
    keepaliveInterval: route.keepaliveIntervalMs,
    keepaliveCountMax: route.keepaliveCountMax,
    // A function, not the list, to learn which methods the server would still take (a login that fails may name GSSAPI).
    authHandler: ((left: string[] | null) => {
      if (left) serverMethods = left;
      return next < methods.length ? methods[next++]! : false;
    }) as never,
    hostVerifier: (key: Buffer, verify: (ok: boolean) => void) => {
      const result = checkHostKey(entries, lookupName, lookupPort, key);
      const keyName = hostKeyName(lookupName, lookupPort);
      switch (result.status) {
        case 'known':
          verify(true);
          return;
        case 'unknown':
          if (recordNew && recordIn !== undefined) {
            pendingAppend = appendKnownHost(recordIn, lookupName, lookupPort, key);
            pendingAppend.then(
              () => verify(true),
              (err: unknown) => {
                hostKeyError = new FerryError('HOST_KEY_UNKNOWN', `cannot record the host key of ${name} in ${recordIn}: ${(err as Error).message}`, { host: label, cause: err });
                verify(false);
              },
            );
            return;
          }
          hostKeyError = new FerryError(
            'HOST_KEY_UNKNOWN',
            `host key of ${name} is not in ${checked.join(', ') || 'any known_hosts file (UserKnownHostsFile none)'}: check its fingerprint with the host's admins, then ` +
              (hop.jump ? `add it with ssh-keyscan (or connect once with ssh; --accept-new-host-key is for the destination only, as in ssh)` : `rerun with --accept-new-host-key (or add it with ssh-keyscan)`),
            { host: label },
          );
          verify(false);
          return;
        case 'changed': {
          const file = result.file ?? recordIn ?? '';
          hostKeyError = new FerryError(
            'HOST_KEY_CHANGED',
            `host key of ${name} (${result.keyType}) differs from the one in ${file}: this may be an attack; if the host was reinstalled, remove the old key with 'ssh-keygen -R ${keyName} -f ${file}'`,
            { host: label },
          );
          verify(false);
          return;
        }
        case 'revoked':
          hostKeyError = new FerryError('HOST_KEY_CHANGED', `host key of ${name} is marked @revoked in ${checked.join(', ')}: refusing to connect`, { host: label });
          verify(false);
          return;
      }
    },
  };
  if (sock) config.sock = sock;
  if (route.addressFamily === 'inet') config.forceIPv4 = true;
  if (route.addressFamily === 'inet6') config.forceIPv6 = true;
  const algorithms: NonNullable<ConnectConfig['algorithms']> = {};
  if (keyTypes.length > 0) algorithms.serverHostKey = hostKeyPreference(hostKeyAlgorithmsFor(keyTypes)) as never;
  if (route.algorithms?.cipher) algorithms.cipher = route.algorithms.cipher as never;
  if (route.algorithms?.hmac) algorithms.hmac = route.algorithms.hmac as never;
  if (route.algorithms?.kex) algorithms.kex = route.algorithms.kex as never;
  if (Object.keys(algorithms).length > 0) config.algorithms = algorithms;

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
      // Only over a socket of its own: through a jump host, the "socket" is a channel that may keep what it is given.
      if (!sock) {
        // FERRY_PACKET_RING=0 keeps ssh2's buffer per packet (for A/B benchmarks).
        if (process.env.FERRY_PACKET_RING !== '0') usePacketRing(client);
        // FERRY_GATHER_WRITES=0 writes every packet to the socket on its own (for A/B benchmarks).
        if (process.env.FERRY_GATHER_WRITES !== '0') gatherWrites(client);
      }
      options.signal?.removeEventListener('abort', onAbort);
      client.removeAllListeners('error');
      // Later errors surface on the channels; keep one listener so they never crash the process.
      client.on('error', () => {});
      resolve(client);
    });
    client.on('error', (err: Error & { level?: string }) => {
      if (hostKeyError) return fail(hostKeyError);
      if (err.level === 'client-authentication') {
        const kerberos = route.gssapi !== undefined && serverMethods?.includes('gssapi-with-mic') === true;
        return fail(
          new FerryError(
            'SSH_AUTH_FAILED',
            `authentication as ${target.user}@${name} failed (tried ${tried.join(', ')}): add your public key to ~${target.user}/.ssh/authorized_keys on ${hostName(route.hostName)}, or pass -i KEYFILE` +
              (skipped.length ? `; skipped ${skipped.join(', ')}` : '') +
              (kerberos ? `; the server also takes Kerberos (gssapi-with-mic), which GSSAPIAuthentication asks for (${route.gssapi}) and the embedded client cannot do: use --transport openssh` : ''),
            { host: label, cause: err },
          ),
        );
      }
      // The server hung up while keys were being offered: sshd's MaxAuthTries, met by a full ssh-agent.
      if (next > 0 && typeof (err as { code?: unknown }).code === 'number') {
        return fail(
          new FerryError(
            'SSH_AUTH_FAILED',
            `authentication as ${target.user}@${name} failed: the server ended the login (${err.message}) while ferry offered ${tried.join(', ')}: with many keys in ssh-agent, set IdentitiesOnly yes and the IdentityFile for this host in ~/.ssh/config, or pass -i KEYFILE`,
            { host: label, cause: err },
          ),
        );
      }
      const code = socketErrorCode(err);
      const why = err.level === 'client-timeout' ? `no SSH handshake within ${route.connectTimeoutMs / 1000}s` : code ?? err.message;
      fail(
        new FerryError('HOST_UNREACHABLE', `cannot reach ${name} over SSH (${why}): check the host name and port, the network path, and that sshd runs there`, {
          host: label,
          cause: err,
        }),
      );
    });
    client.once('close', () => {
      if (hostKeyError) return fail(hostKeyError);
      fail(new FerryError('HOST_UNREACHABLE', `${name} closed the SSH connection during the handshake`, { host: label }));
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
