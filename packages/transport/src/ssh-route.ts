/**
 * From what ssh_config says about a host (ssh-config.ts) and the command line
 * to an SshRoute: everything the embedded client needs to reach the host as
 * ssh would, as plain data, so that agents on other nodes need no
 * configuration file of their own.
 *
 * As in ssh, the command line wins (`user@` and `:port` in the location, -i,
 * --known-hosts, --connect-timeout, --accept-new-host-key) and applies to the
 * destination only: a ProxyJump host is resolved from the configuration alone,
 * as ssh's own `ssh -W` to it would be.
 *
 * What the embedded client cannot do (ProxyCommand, ControlMaster, GSSAPI,
 * PKCS#11, certificates, algorithm lists it cannot map, Match criteria it
 * cannot evaluate, directives ssh does not know) is listed in `unsupported`,
 * for one warning per host; directives that change nothing for a file copy
 * (ForwardAgent, Compression, LogLevel, SendEnv, ...) are ignored silently.
 */
import { createHash } from 'node:crypto';
import { isAbsolute, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { FerryError, hostLabel } from '@ferry/core';
import type { RemoteHost, SshRoute } from '@ferry/core';
import { evaluateSshConfig } from './ssh-config.js';
import type { ConfigSetting, HostConfig, SshConfig } from './ssh-config.js';
import { matchPatternList } from './patterns.js';

/** Facts about this process that tokens and defaults need. */
export interface LocalFacts {
  home: string;
  user: string;
  uid: number;
  /** The local host name (`%l`; `%L` is its first label). */
  hostname: string;
  cwd: string;
  env: Readonly<Record<string, string | undefined>>;
  /** /etc/ssh: the global known_hosts files are read from here. */
  systemDir: string;
}

/** The command line's say about the destination; every field optional. */
export interface CommandLineSsh {
  /** -i, absolute, in order: offered before the configuration's IdentityFiles. */
  identityFiles?: string[];
  /** --known-hosts: replaces UserKnownHostsFile. */
  knownHostsFile?: string;
  /** --connect-timeout, when given. */
  connectTimeoutMs?: number;
  /** --accept-new-host-key. */
  acceptNewHostKey?: boolean;
}

export interface RouteDefaults {
  /** Keys offered when neither -i nor IdentityFile names one (those that exist, absolute). */
  defaultIdentityFiles: string[];
  connectTimeoutMs: number;
  keepaliveIntervalMs: number;
  keepaliveCountMax: number;
}

export interface ResolvedRemoteHost {
  host: RemoteHost;
  /**
   * What ssh would do and the embedded client will not, each as
   * `Directive (file line n)`; jump hosts' prefixed `jump host NAME: `.
   */
  unsupported: string[];
}

export interface TargetSpec {
  /** As written (the label). */
  host: string;
  user?: string | undefined;
  port?: number | undefined;
}

/** ferry's keepalive where ssh_config sets no ServerAliveInterval / ServerAliveCountMax: a dead connection shows within a minute. */
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 15_000;
export const DEFAULT_KEEPALIVE_COUNT_MAX = 4;
/** ProxyJump hosts, at most, through which one host is reached (a loop ends here). */
const MAX_JUMPS = 8;

const sshConstants = createRequire(import.meta.url)('ssh2/lib/protocol/constants.js') as Record<'SUPPORTED_CIPHER' | 'DEFAULT_CIPHER' | 'SUPPORTED_MAC' | 'DEFAULT_MAC' | 'SUPPORTED_KEX' | 'DEFAULT_KEX', string[]>;

/**
 * Directives the embedded client does not honour, with the test of a value
 * that would make ssh behave differently (`ProxyCommand none` does not).
 */
const isNo = (v: string) => /^(no|false)$/i.test(v);
const isNone = (v: string) => v.toLowerCase() === 'none';
const UNSUPPORTED: Record<string, (v: string) => boolean> = {
  proxycommand: (v) => !isNone(v),
  controlmaster: (v) => !isNo(v),
  controlpath: (v) => !isNone(v),
  gssapiauthentication: (v) => !isNo(v),
  pkcs11provider: (v) => !isNone(v),
  smartcarddevice: (v) => !isNone(v),
  certificatefile: (v) => !isNone(v),
  knownhostscommand: (v) => !isNone(v),
  revokedhostkeys: (v) => !isNone(v),
  canonicalizehostname: (v) => !isNo(v),
  bindaddress: () => true,
  bindinterface: () => true,
  hostbasedauthentication: (v) => !isNo(v),
  pubkeyauthentication: (v) => isNo(v),
  hostkeyalgorithms: () => true,
  pubkeyacceptedalgorithms: () => true,
  pubkeyacceptedkeytypes: () => true,
  casignaturealgorithms: () => true,
};

/** Directives honoured here (evaluated in resolveRemoteHost). */
const HONOURED = new Set([
  'hostname', 'user', 'port', 'identityfile', 'identitiesonly', 'identityagent', 'proxyjump', 'userknownhostsfile',
  'globalknownhostsfile', 'connecttimeout', 'serveraliveinterval', 'serveralivecountmax', 'stricthostkeychecking',
  'hostkeyalias', 'addressfamily', 'ciphers', 'macs', 'kexalgorithms', 'ignoreunknown',
]);

/**
 * Directives that change nothing for a batch file copy, or only what ssh
 * prints, or ask for what scp turns off anyway (forwardings, a tty, X11), or
 * are OpenSSH's own deprecated names: ignored without a word.
 */
const HARMLESS = new Set([
  'addkeystoagent', 'batchmode', 'canonicaldomains', 'canonicalizefallbacklocal', 'canonicalizemaxdots',
  'canonicalizepermittedcnames', 'challengeresponseauthentication', 'channeltimeout', 'checkhostip', 'cipher',
  'clearallforwardings', 'compression', 'compressionlevel', 'connectionattempts', 'controlpersist', 'dsaauthentication',
  'dynamicforward', 'enableescapecommandline', 'enablesshkeysign', 'escapechar', 'exitonforwardfailure', 'fallbacktorsh',
  'fingerprinthash', 'forkafterauthentication', 'forwardagent', 'forwardx11', 'forwardx11timeout', 'forwardx11trusted',
  'gatewayports', 'globalknownhostsfile2', 'gssapiclientidentity', 'gssapidelegatecredentials', 'gssapikeyexchange',
  'gssapikexalgorithms', 'gssapirenewalforcesrekey', 'gssapiserveridentity', 'gssapitrustdns', 'hashknownhosts',
  'hostbasedacceptedalgorithms', 'hostbasedkeytypes', 'identityfile2', 'ipqos', 'kbdinteractiveauthentication',
  'kbdinteractivedevices', 'keepalive', 'localcommand', 'localforward', 'logfacility', 'loglevel', 'logverbose',
  'nohostauthenticationforlocalhost', 'numberofpasswordprompts', 'obscurekeystroketiming', 'passwordauthentication',
  'permitlocalcommand', 'permitremoteopen', 'preferredauthentications', 'protocol', 'proxyusefdpass', 'rekeylimit',
  'remotecommand', 'remoteforward', 'requesttty', 'requiredrsasize', 'rhostsauthentication', 'rhostsrsaauthentication',
  'rsaauthentication', 'securitykeyprovider', 'sendenv', 'sessiontype', 'setenv', 'skeyauthentication', 'stdinnull',
  'streamlocalbindmask', 'streamlocalbindunlink', 'syslogfacility', 'tag', 'tcpkeepalive', 'tisauthentication', 'tunnel',
  'tunneldevice', 'updatehostkeys', 'usekeychain', 'useprivilegedport', 'useroaming', 'userknownhostsfile2', 'usersh',
  'verifyhostkeydns', 'visualhostkey', 'warnweakcrypto', 'xauthlocation',
]);

function where(s: ConfigSetting): string {
  return `${s.file} line ${s.line}`;
}

function usage(s: ConfigSetting, message: string): FerryError {
  return new FerryError('USAGE', `ssh config ${where(s)}: ${s.name} ${message}`, { path: s.file });
}

/** ssh's time format: seconds, or a run of numbers with s, m, h, d, w (`1m30s`). */
function parseSshTime(s: ConfigSetting): number {
  const v = s.args[0]!;
  const units: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
  if (!/^(\d+[smhdw]?)+$/i.test(v)) throw usage(s, `must be a time like 10 or 1m30s, got '${v}'`);
  let total = 0;
  for (const [, n, u] of v.matchAll(/(\d+)([smhdw]?)/gi)) total += Number(n) * units[u!.toLowerCase()]!;
  return total;
}

function parseYesNo(s: ConfigSetting): boolean {
  const v = s.args[0]!.toLowerCase();
  if (v === 'yes' || v === 'true') return true;
  if (v === 'no' || v === 'false') return false;
  throw usage(s, `must be yes or no, got '${s.args[0]}'`);
}

function parsePort(s: ConfigSetting): number {
  const v = s.args[0]!;
  const n = /^\d{1,5}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= 65535)) throw usage(s, `must be a port from 1 to 65535, got '${v}'`);
  return n;
}

interface TokenValues {
  host: string;
  hostName: string;
  port: number;
  user: string;
  hostKeyAlias: string | undefined;
  proxyJump: string;
}

/**
 * `~`, then `${VAR}` and `%` tokens, as ssh expands IdentityFile,
 * UserKnownHostsFile and IdentityAgent; relative results are taken from the
 * working directory, as ssh opens them.
 */
function expandPath(raw: string, s: ConfigSetting, t: TokenValues, local: LocalFacts): string {
  let v = raw === '~' ? local.home : raw.startsWith('~/') ? join(local.home, raw.slice(2)) : raw;
  v = v.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
    const value = local.env[name];
    if (value === undefined) throw usage(s, `uses \${${name}}, which is not set in the environment`);
    return value;
  });
  const shortHost = local.hostname.split('.')[0]!;
  v = v.replace(/%(.)/g, (_, c: string) => {
    switch (c) {
      case '%':
        return '%';
      case 'd':
        return local.home;
      case 'u':
        return local.user;
      case 'i':
        return String(local.uid);
      case 'l':
        return local.hostname;
      case 'L':
        return shortHost;
      case 'h':
        return t.hostName;
      case 'n':
        return t.host;
      case 'p':
        return String(t.port);
      case 'r':
        return t.user;
      case 'k':
        return t.hostKeyAlias ?? t.host;
      case 'j':
        return t.proxyJump;
      case 'C':
        return createHash('sha1').update(`${local.hostname}${t.hostName}${t.port}${t.user}`).digest('hex');
      default:
        throw usage(s, `uses %${c}, which ssh does not know: see TOKENS in ssh_config(5)`);
    }
  });
  return isAbsolute(v) ? v : resolve(local.cwd, v);
}

/** OpenSSH's algorithm list syntax (plain, `+` append, `-` remove, `^` prepend) mapped onto ssh2's algorithms; undefined when it cannot be. */
function algorithmList(s: ConfigSetting, supported: readonly string[], defaults: readonly string[]): string[] | undefined {
  const v = s.args.join(',');
  const op = /^[+\-^]/.test(v) ? v[0] : '';
  const names = (op ? v.slice(1) : v).split(',').filter(Boolean);
  if (op === '-') return defaults.filter((d) => !matchPatternList(d, names));
  const known = names.filter((n) => supported.includes(n));
  if (op === '') return known.length > 0 ? known : undefined;
  // Extra algorithms ssh would offer and ssh2 cannot: the server might want exactly those.
  if (known.length !== names.length) return undefined;
  return op === '+' ? [...defaults, ...known.filter((n) => !defaults.includes(n))] : [...known, ...defaults.filter((d) => !known.includes(d))];
}

/** `[user@]host[:port]` or `ssh://[user@]host[:port]`, one entry of ProxyJump. */
function parseJump(entry: string, s: ConfigSetting): TargetSpec {
  const m = /^(?:ssh:\/\/)?(?:([^@]+)@)?(\[[^\]]+\]|[^:@/[\]]+)(?::(\d+))?\/?$/.exec(entry);
  if (!m) throw usage(s, `entry '${entry}' is not [user@]host[:port]`);
  const host = m[2]!.startsWith('[') ? m[2]!.slice(1, -1) : m[2]!;
  let port: number | undefined;
  if (m[3] !== undefined) {
    port = Number(m[3]);
    if (!(port >= 1 && port <= 65535)) throw usage(s, `entry '${entry}' has a port outside 1-65535`);
  }
  return { host, ...(m[1] !== undefined ? { user: m[1] } : {}), ...(port !== undefined ? { port } : {}) };
}

/**
 * Resolves one remote host: what the configuration and the command line say,
 * as the SshRoute the embedded client connects with.
 */
export function resolveRemoteHost(config: SshConfig, target: TargetSpec, cli: CommandLineSsh, local: LocalFacts, defaults: RouteDefaults): ResolvedRemoteHost {
  return resolveOne(config, target, cli, local, defaults, 0, false);
}

/**
 * `depth`: jump hosts already on the way here. `jumpGiven`: a later hop of a
 * ProxyJump list, which ssh reaches with `-J` through the earlier ones, so its
 * own ProxyJump and ProxyCommand do not apply.
 */
function resolveOne(config: SshConfig, target: TargetSpec, cli: CommandLineSsh, local: LocalFacts, defaults: RouteDefaults, depth: number, jumpGiven: boolean): ResolvedRemoteHost {
  const hc: HostConfig = evaluateSshConfig(config, { host: target.host, user: target.user, localUser: local.user });
  const get = (k: string) => hc.values.get(k);
  const unsupported: string[] = [];

  const port = target.port ?? (get('port') ? parsePort(get('port')!) : 22);
  const user = target.user ?? get('user')?.args[0] ?? local.user;
  const hostKeyAliasSetting = get('hostkeyalias');
  const proxyJump = jumpGiven ? undefined : get('proxyjump');
  const tokens: TokenValues = {
    host: target.host,
    hostName: hc.hostName,
    port,
    user,
    hostKeyAlias: hostKeyAliasSetting?.args[0],
    proxyJump: proxyJump && !isNone(proxyJump.args[0]!) ? proxyJump.args[0]! : '',
  };
  const paths = (s: ConfigSetting) => s.args.filter((a) => !isNone(a)).map((a) => expandPath(a, s, tokens, local));

  const configured = (hc.lists.get('identityfile') ?? []).flatMap(paths);
  const given = cli.identityFiles ?? [];
  const identityFiles = given.length + configured.length > 0 ? [...new Set([...given, ...configured])] : defaults.defaultIdentityFiles;

  const route: SshRoute = {
    hostName: hc.hostName,
    identityFiles,
    knownHostsFiles: cli.knownHostsFile !== undefined ? [cli.knownHostsFile] : get('userknownhostsfile') ? paths(get('userknownhostsfile')!) : [join(local.home, '.ssh', 'known_hosts'), join(local.home, '.ssh', 'known_hosts2')],
    globalKnownHostsFiles: get('globalknownhostsfile') ? paths(get('globalknownhostsfile')!) : [join(local.systemDir, 'ssh_known_hosts'), join(local.systemDir, 'ssh_known_hosts2')],
    connectTimeoutMs: cli.connectTimeoutMs ?? (get('connecttimeout') ? parseSshTime(get('connecttimeout')!) * 1000 : defaults.connectTimeoutMs),
    keepaliveIntervalMs: get('serveraliveinterval') ? parseSshTime(get('serveraliveinterval')!) * 1000 : defaults.keepaliveIntervalMs,
    keepaliveCountMax: defaults.keepaliveCountMax,
  };
  if (target.port !== undefined) route.portGiven = true;
  if (target.user !== undefined) route.userGiven = true;
  const countMax = get('serveralivecountmax');
  if (countMax) {
    if (!/^\d+$/.test(countMax.args[0]!)) throw usage(countMax, `must be a whole number, got '${countMax.args[0]}'`);
    route.keepaliveCountMax = Number(countMax.args[0]);
  }
  if (get('identitiesonly') && parseYesNo(get('identitiesonly')!)) route.identitiesOnly = true;

  const agent = get('identityagent');
  const agentValue = agent?.args[0];
  if (agent === undefined || agentValue === 'SSH_AUTH_SOCK') {
    if (local.env.SSH_AUTH_SOCK) route.agentSocket = local.env.SSH_AUTH_SOCK;
  } else if (!isNone(agentValue!)) {
    // `$NAME`: the socket's path is in that variable; `${NAME}/...` is an ordinary path.
    if (agentValue!.startsWith('$') && !agentValue!.startsWith('${')) {
      const value = local.env[agentValue!.slice(1)];
      if (value) route.agentSocket = value;
    } else route.agentSocket = expandPath(agentValue!, agent, tokens, local);
  }

  if (hostKeyAliasSetting) route.hostKeyAlias = hostKeyAliasSetting.args[0]!;
  const strict = get('stricthostkeychecking');
  if (cli.acceptNewHostKey) route.acceptNewHostKey = true;
  else if (strict) {
    const v = strict.args[0]!.toLowerCase();
    // `no` lets ssh go on past a changed key; ferry never does, so it is accept-new here.
    if (v === 'accept-new' || v === 'no' || v === 'off' || v === 'false') route.acceptNewHostKey = true;
    else if (v !== 'yes' && v !== 'ask' && v !== 'true') throw usage(strict, `must be yes, accept-new, no or ask, got '${strict.args[0]}'`);
  }

  const family = get('addressfamily');
  if (family) {
    const v = family.args[0]!.toLowerCase();
    if (v === 'inet' || v === 'inet6') route.addressFamily = v;
    else if (v !== 'any') throw usage(family, `must be any, inet or inet6, got '${family.args[0]}'`);
  }

  const algorithms: NonNullable<SshRoute['algorithms']> = {};
  for (const [keyword, key, supported, defaultList] of [
    ['ciphers', 'cipher', sshConstants.SUPPORTED_CIPHER, sshConstants.DEFAULT_CIPHER],
    ['macs', 'hmac', sshConstants.SUPPORTED_MAC, sshConstants.DEFAULT_MAC],
    ['kexalgorithms', 'kex', sshConstants.SUPPORTED_KEX, sshConstants.DEFAULT_KEX],
  ] as const) {
    const s = get(keyword);
    if (!s) continue;
    const list = algorithmList(s, supported, defaultList);
    if (list) algorithms[key] = list;
    else unsupported.push(`${s.name} ${s.args.join(',')} (${where(s)})`);
  }
  if (Object.keys(algorithms).length > 0) route.algorithms = algorithms;

  const gssapi = get('gssapiauthentication');
  if (gssapi && !isNo(gssapi.args[0]!)) route.gssapi = where(gssapi);

  // What ssh would do that the embedded client will not.
  const ignoreUnknown = get('ignoreunknown')?.args.join(',').split(',') ?? [];
  const seen = [...hc.values.values(), ...(hc.lists.get('certificatefile') ?? []).slice(0, 1)];
  for (const s of seen) {
    const keyword = s.name.toLowerCase();
    if (jumpGiven && (keyword === 'proxycommand' || keyword === 'proxyjump')) continue;
    const test = UNSUPPORTED[keyword];
    if (test) {
      // Distributions turn GSSAPI on for everyone in the system-wide file: named only if a login fails.
      if (test(s.args.join(' ')) && !(keyword === 'gssapiauthentication' && s.system)) unsupported.push(`${s.name} (${where(s)})`);
    } else if (!HONOURED.has(keyword) && !HARMLESS.has(keyword) && !matchPatternList(keyword, ignoreUnknown, true)) {
      unsupported.push(`${s.name}, unknown to ferry (${where(s)})`);
    }
  }
  for (const u of hc.unevaluated) unsupported.push(`${u.name} (${where(u)}: cannot be evaluated here, so its block is taken as not matching)`);

  const host: RemoteHost = { host: target.host, port, user, route };
  // The name the user wrote is the label; the port shows only if they wrote it.
  if (target.port === undefined && port !== 22) host.label = hostLabel({ host: target.host });

  if (proxyJump && !isNone(proxyJump.args[0]!)) {
    if (depth >= MAX_JUMPS) throw usage(proxyJump, `leads through more than ${MAX_JUMPS} jump hosts to reach ${target.host}: does it loop?`);
    const hops = proxyJump.args.join(',').split(',').filter(Boolean).map((e) => parseJump(e.trim(), proxyJump));
    const jumps: RemoteHost[] = [];
    hops.forEach((hop, i) => {
      // Each hop is reached as `ssh -W` to it would be: its own configuration, none of the command line;
      // only the first hop's own ProxyJump still applies (the later ones are reached through the earlier).
      const resolved = resolveOne(config, hop, {}, local, defaults, depth + 1, i > 0);
      for (const u of resolved.unsupported) unsupported.push(u.startsWith('jump host ') ? u : `jump host ${hostLabel(resolved.host)}: ${u}`);
      const { jumps: own, ...hopRoute } = resolved.host.route!;
      if (i === 0 && own) jumps.push(...own);
      jumps.push({ ...resolved.host, route: hopRoute });
    });
    route.jumps = jumps;
  }
  return { host, unsupported };
}
