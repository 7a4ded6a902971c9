/**
 * ssh_config resolution, text in and settings out: which directives apply to
 * a host (ssh-config.ts), and the route the embedded client connects with
 * (ssh-route.ts). The last block checks the evaluation against OpenSSH's own
 * (`ssh -G`), which reads the same text without connecting anywhere.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FerryError } from '@ferry/core';
import { evaluateSshConfig, loadSshConfig, parseSshConfig } from '../src/ssh-config.js';
import type { SshConfig, SshConfigIo } from '../src/ssh-config.js';
import { resolveRemoteHost } from '../src/ssh-route.js';
import type { CommandLineSsh, LocalFacts, RouteDefaults } from '../src/ssh-route.js';

const USER_CONFIG = '/home/ann/.ssh/config';
const SYSTEM_CONFIG = '/etc/ssh/ssh_config';

function config(text: string, system?: string): SshConfig {
  const files = [{ path: USER_CONFIG, items: parseSshConfig(text, USER_CONFIG) }];
  if (system !== undefined) files.push({ path: SYSTEM_CONFIG, items: parseSshConfig(system, SYSTEM_CONFIG, true) });
  return { files };
}

function evaluate(text: string, host: string, user?: string) {
  return evaluateSshConfig(config(text), { host, user, localUser: 'ann' });
}

function value(text: string, host: string, keyword: string, user?: string): string | undefined {
  return evaluate(text, host, user).values.get(keyword)?.args.join(' ');
}

const local: LocalFacts = { home: '/home/ann', user: 'ann', uid: 1000, hostname: 'login1.site.org', cwd: '/work', env: { SSH_AUTH_SOCK: '/tmp/agent.sock', SCRATCH: '/scratch/ann' }, systemDir: '/etc/ssh' };
const defaults: RouteDefaults = { defaultIdentityFiles: ['/home/ann/.ssh/id_ed25519'], connectTimeoutMs: 20_000, keepaliveIntervalMs: 15_000, keepaliveCountMax: 4 };

function resolve(text: string, host: string, options: { user?: string; port?: number; cli?: CommandLineSsh; system?: string } = {}) {
  return resolveRemoteHost(config(text, options.system), { host, user: options.user, port: options.port }, options.cli ?? {}, local, defaults);
}

describe('parseSshConfig', () => {
  it('numbers every directive by the line it is on, comments, blank lines, Host and Match blocks included', () => {
    const items = parseSshConfig(
      ['# top', 'User top', '', 'Host a b', '  # inside', '  Port 2222', '', '', 'Match host x exec "test -f /y"', '\tIdentityFile "~/my key"', 'Include conf.d/*', ''].join('\n'),
      USER_CONFIG,
    );
    expect(items.map((i) => [i.type, i.line])).toEqual([
      ['directive', 2],
      ['host', 4],
      ['directive', 6],
      ['match', 9],
      ['directive', 10],
      ['include', 11],
    ]);
    expect(items[1]).toMatchObject({ patterns: ['a', 'b'] });
    expect(items[3]).toMatchObject({ criteria: [{ name: 'host', negated: false, arg: 'x' }, { name: 'exec', negated: false, arg: 'test -f /y' }] });
    expect(items[4]).toMatchObject({ keyword: 'identityfile', args: ['~/my key'] });
  });

  it('takes key=value, tabs and CRLF line ends', () => {
    const items = parseSshConfig('Host=a\r\n\tPort=2200\r\nUser  bob\r\n', USER_CONFIG);
    expect(items.map((i) => (i.type === 'directive' ? [i.keyword, i.args, i.line] : [i.type, i.line]))).toEqual([
      ['host', 1],
      ['port', ['2200'], 2],
      ['user', ['bob'], 3],
    ]);
  });

  it('refuses an unterminated quote, naming the file', () => {
    expect(() => parseSshConfig('Host a\n  IdentityFile "~/x\n', USER_CONFIG)).toThrow(/cannot read ssh config \/home\/ann\/.ssh\/config: Unexpected line break/);
  });
});

describe('evaluateSshConfig', () => {
  it('takes the first value of a directive and adds up IdentityFiles, without repeats', () => {
    const text = 'Host dtn*\n  Port 2222\n  IdentityFile ~/.ssh/a\nHost *\n  Port 22\n  User x\n  IdentityFile ~/.ssh/b\n  IdentityFile ~/.ssh/a\n';
    const hc = evaluate(text, 'dtn1');
    expect(hc.values.get('port')?.args).toEqual(['2222']);
    expect(hc.values.get('port')).toMatchObject({ file: USER_CONFIG, line: 2 });
    expect(hc.values.get('user')?.args).toEqual(['x']);
    expect(hc.lists.get('identityfile')?.map((s) => s.args[0])).toEqual(['~/.ssh/a', '~/.ssh/b']);
    expect(evaluate(text, 'login').values.get('port')?.args).toEqual(['22']);
  });

  it('matches Host patterns with wildcards and negation, case-sensitively as ssh does', () => {
    const text = 'Host *.site.org !bad.site.org\n  Port 1\nHost dtn?\n  Port 2\nHost MyDTN\n  Port 3\n';
    expect(value(text, 'dtn.site.org', 'port')).toBe('1');
    expect(value(text, 'bad.site.org', 'port')).toBeUndefined();
    expect(value(text, 'dtn7', 'port')).toBe('2');
    expect(value(text, 'dtn', 'port')).toBeUndefined();
    expect(value(text, 'dtn17', 'port')).toBeUndefined();
    expect(value(text, 'MyDTN', 'port')).toBe('3');
    expect(value(text, 'mydtn', 'port')).toBeUndefined();
  });

  it('matches `Match host` against the HostName set so far, case-insensitively, and `originalhost` against the name written', () => {
    const text = 'Host short\n  HostName Short.%h.Site.org\nMatch host *.site.org\n  Port 7\nMatch originalhost SHORT\n  User u\nMatch !host *.site.org\n  Port 9\n';
    const hc = evaluate(text, 'short');
    expect(hc.hostName).toBe('short.short.site.org');
    expect(hc.values.get('port')?.args).toEqual(['7']);
    expect(hc.values.get('user')?.args).toEqual(['u']);
    expect(value(text, 'other', 'port')).toBe('9');
  });

  it('matches `Match user` against the location\'s user first, then User, then the local user', () => {
    const text = 'Match user root\n  Port 1\nHost a\n  User root\nMatch user root\n  Port 2\nMatch localuser ann\n  Port 3\n';
    expect(value(text, 'a', 'port', 'root')).toBe('1');
    expect(value(text, 'a', 'port')).toBe('2');
    expect(value(text, 'b', 'port')).toBe('3');
    expect(value('Match all\n  Port 4\n', 'anything', 'port')).toBe('4');
  });

  it('takes a Match with a criterion it cannot evaluate as not matching, and says which', () => {
    const hc = evaluate('Match host a exec "true"\n  Port 1\nMatch !localnetwork 10.0.0.0/8\n  User x\n', 'a');
    expect(hc.values.has('port')).toBe(false);
    expect(hc.values.has('user')).toBe(false);
    expect(hc.unevaluated.map((u) => [u.name, u.line])).toEqual([
      ['Match exec', 1],
      ['Match !localnetwork', 3],
    ]);
  });

  it('reads the files again with the resolved name when a Match asks for the final pass', () => {
    const text = 'Host a\n  HostName real.site.org\nMatch final host real.site.org\n  Port 4000\nHost real.site.org\n  User finaluser\n  HostName ignored\n';
    const hc = evaluate(text, 'a');
    expect(hc.values.get('port')?.args).toEqual(['4000']);
    expect(hc.values.get('user')?.args).toEqual(['finaluser']);
    expect(hc.hostName).toBe('real.site.org');
    expect(evaluate('Host a\n  Port 1\nMatch canonical\n  Port 2\n', 'a').values.get('port')?.args).toEqual(['1']);
  });

  it('lets whichever of ProxyJump and ProxyCommand comes first win', () => {
    const hc = evaluate('Host a\n  ProxyJump gw\nHost *\n  ProxyCommand nc %h %p\n', 'a');
    expect(hc.values.has('proxycommand')).toBe(false);
    const hc2 = evaluate('Host a\n  ProxyCommand none\nHost *\n  ProxyJump gw\n', 'a');
    expect(hc2.values.has('proxyjump')).toBe(false);
  });

  it('reads the user\'s file before the system\'s, each starting in effect', () => {
    const hc = evaluateSshConfig(config('Host other\n  Port 1\n', 'Port 2\nUser sys\n'), { host: 'a', localUser: 'ann' });
    expect(hc.values.get('port')).toMatchObject({ args: ['2'], file: SYSTEM_CONFIG, line: 1, system: true });
  });
});

function memoryIo(files: Record<string, string>, modes: Record<string, { uid?: number; mode?: number }> = {}): SshConfigIo {
  return {
    readFile: async (p) => files[p],
    stat: async (p) => (p in files ? { uid: modes[p]?.uid ?? 1000, mode: modes[p]?.mode ?? 0o100600, isFile: true } : undefined),
    readdir: async (dir) => {
      const names = Object.keys(files)
        .filter((p) => p.startsWith(`${dir}/`) && !p.slice(dir.length + 1).includes('/'))
        .map((p) => p.slice(dir.length + 1));
      return names.length > 0 ? names : undefined;
    },
  };
}

describe('loadSshConfig', () => {
  const ctx = { home: '/home/ann', uid: 1000, systemDir: '/etc/ssh' };

  it('follows Include relative to ~/.ssh, in glob order, only within the block that includes it, and restores the block after', async () => {
    const io = memoryIo({
      [USER_CONFIG]: 'Host dtn*\n  Include conf.d/*.conf\n  User afterinclude\nHost *\n  Port 22\n',
      '/home/ann/.ssh/conf.d/b.conf': 'Port 2002\nHost other\n  User other\n',
      '/home/ann/.ssh/conf.d/a.conf': 'IdentityFile ~/.ssh/a\n',
      '/home/ann/.ssh/conf.d/.hidden.conf': 'Port 1\n',
      '/home/ann/.ssh/conf.d/c.txt': 'Port 3\n',
    });
    const cfg = await loadSshConfig([{ path: USER_CONFIG, system: false, checkPermissions: true }], ctx, io);
    const dtn = evaluateSshConfig(cfg, { host: 'dtn1', localUser: 'ann' });
    expect(dtn.values.get('port')).toMatchObject({ args: ['2002'], file: '/home/ann/.ssh/conf.d/b.conf', line: 1 });
    expect(dtn.lists.get('identityfile')?.map((s) => s.args[0])).toEqual(['~/.ssh/a']);
    // `Host other` inside the included file ended there: the including block is in effect again.
    expect(dtn.values.get('user')?.args).toEqual(['afterinclude']);
    expect(evaluateSshConfig(cfg, { host: 'login', localUser: 'ann' }).values.get('port')?.args).toEqual(['22']);
  });

  it('takes the system file\'s relative Includes from /etc/ssh', async () => {
    const io = memoryIo({ '/etc/ssh/ssh_config': 'Include /etc/ssh/ssh_config.d/*.conf\nInclude extra\n', '/etc/ssh/ssh_config.d/site.conf': 'Port 7\n', '/etc/ssh/extra': 'User sys\n' }, { '/etc/ssh/ssh_config.d/site.conf': { uid: 0 }, '/etc/ssh/extra': { uid: 0 } });
    const cfg = await loadSshConfig([{ path: USER_CONFIG, system: false, checkPermissions: true }, { path: '/etc/ssh/ssh_config', system: true }], ctx, io);
    const hc = evaluateSshConfig(cfg, { host: 'x', localUser: 'ann' });
    expect(hc.values.get('port')).toMatchObject({ args: ['7'], system: true });
    expect(hc.values.get('user')?.args).toEqual(['sys']);
  });

  it('refuses a user config that others can write, as ssh does', async () => {
    const io = memoryIo({ [USER_CONFIG]: 'Port 1\n' }, { [USER_CONFIG]: { mode: 0o100664 } });
    await expect(loadSshConfig([{ path: USER_CONFIG, system: false, checkPermissions: true }], ctx, io)).rejects.toThrow(`bad owner or permissions on ${USER_CONFIG}`);
    const other = memoryIo({ [USER_CONFIG]: 'Port 1\n' }, { [USER_CONFIG]: { uid: 1234 } });
    await expect(loadSshConfig([{ path: USER_CONFIG, system: false, checkPermissions: true }], ctx, other)).rejects.toThrow(FerryError);
  });

  it('skips files that do not exist, but not the one -F names', async () => {
    const io = memoryIo({});
    expect(await loadSshConfig([{ path: USER_CONFIG, system: false, checkPermissions: true }, { path: SYSTEM_CONFIG, system: true }], ctx, io)).toEqual({ files: [] });
    await expect(loadSshConfig([{ path: '/x/cfg', system: false, required: true }], ctx, io)).rejects.toThrow('ssh config file /x/cfg (-F) does not exist');
  });

  it('stops an Include that includes itself', async () => {
    const io = memoryIo({ [USER_CONFIG]: 'Include config\n' });
    await expect(loadSshConfig([{ path: USER_CONFIG, system: false, checkPermissions: true }], ctx, io)).rejects.toThrow('Include nested more than 16 deep');
  });
});

describe('resolveRemoteHost', () => {
  const alias = 'Host mydtn\n  HostName 10.1.2.3\n  Port 2222\n  User alice\n  IdentityFile ~/.ssh/id_%h_%r\n';

  it('resolves an alias: address, port, user and key; the name written stays the label', () => {
    const { host, unsupported } = resolve(alias, 'mydtn');
    expect(host).toMatchObject({ host: 'mydtn', port: 2222, user: 'alice', label: 'mydtn' });
    expect(host.route).toMatchObject({
      hostName: '10.1.2.3',
      identityFiles: ['/home/ann/.ssh/id_10.1.2.3_alice'],
      agentSocket: '/tmp/agent.sock',
      knownHostsFiles: ['/home/ann/.ssh/known_hosts', '/home/ann/.ssh/known_hosts2'],
      globalKnownHostsFiles: ['/etc/ssh/ssh_known_hosts', '/etc/ssh/ssh_known_hosts2'],
      connectTimeoutMs: 20_000,
      keepaliveIntervalMs: 15_000,
      keepaliveCountMax: 4,
    });
    expect(host.route?.portGiven).toBeUndefined();
    expect(unsupported).toEqual([]);
  });

  it('lets the command line win: user@ and :port, -i before IdentityFile, --known-hosts, --connect-timeout, --accept-new-host-key', () => {
    const text = `${alias}  UserKnownHostsFile /kh/a\n  ConnectTimeout 5\n  StrictHostKeyChecking yes\n`;
    const { host } = resolve(text, 'mydtn', { user: 'bob', port: 2200, cli: { identityFiles: ['/keys/cli'], knownHostsFile: '/kh/cli', connectTimeoutMs: 9000, acceptNewHostKey: true } });
    expect(host).toMatchObject({ host: 'mydtn', port: 2200, user: 'bob' });
    expect(host.label).toBeUndefined();
    expect(host.route).toMatchObject({ portGiven: true, userGiven: true, identityFiles: ['/keys/cli', '/home/ann/.ssh/id_10.1.2.3_bob'], knownHostsFiles: ['/kh/cli'], connectTimeoutMs: 9000, acceptNewHostKey: true });
    const plain = resolve(text, 'mydtn').host.route!;
    expect(plain).toMatchObject({ knownHostsFiles: ['/kh/a'], connectTimeoutMs: 5000 });
    expect(plain.acceptNewHostKey).toBeUndefined();
  });

  it('offers the default keys only when neither -i nor IdentityFile names one', () => {
    expect(resolve('', 'h').host.route?.identityFiles).toEqual(['/home/ann/.ssh/id_ed25519']);
    expect(resolve('', 'h', { cli: { identityFiles: ['/k'] } }).host.route?.identityFiles).toEqual(['/k']);
  });

  it('expands ~, ${VAR} and the % tokens in paths, and refuses tokens ssh does not know', () => {
    const text = 'Host h\n  HostName real\n  Port 2200\n  IdentityFile ${SCRATCH}/%u@%l/%L%d/%n-%p-%k-%i-%%\n  UserKnownHostsFile ~/kh/%C relative/kh\n';
    const route = resolve(text, 'h').host.route!;
    expect(route.identityFiles).toEqual(['/scratch/ann/ann@login1.site.org/login1/home/ann/h-2200-h-1000-%']);
    // %C: SHA-1 of %l%h%p%r, as OpenSSH 9.2 has it.
    const c = createHash('sha1').update('login1.site.orgreal2200ann').digest('hex');
    expect(route.knownHostsFiles).toEqual([`/home/ann/kh/${c}`, '/work/relative/kh']);
    expect(() => resolve('IdentityFile ~/%z\n', 'h')).toThrow(`ssh config ${USER_CONFIG} line 1: IdentityFile uses %z, which ssh does not know`);
    expect(() => resolve('IdentityFile ${NOPE}/k\n', 'h')).toThrow('IdentityFile uses ${NOPE}, which is not set in the environment');
  });

  it('maps StrictHostKeyChecking, IdentitiesOnly, IdentityAgent, ServerAlive*, AddressFamily and HostKeyAlias', () => {
    const route = (text: string) => resolve(text, 'h').host.route!;
    expect(route('StrictHostKeyChecking accept-new\n').acceptNewHostKey).toBe(true);
    expect(route('StrictHostKeyChecking no\n').acceptNewHostKey).toBe(true);
    expect(route('StrictHostKeyChecking ask\n').acceptNewHostKey).toBeUndefined();
    expect(() => route('StrictHostKeyChecking maybe\n')).toThrow("StrictHostKeyChecking must be yes, accept-new, no or ask, got 'maybe'");
    expect(route('IdentitiesOnly yes\n').identitiesOnly).toBe(true);
    expect(route('IdentityAgent none\n').agentSocket).toBeUndefined();
    expect(route('IdentityAgent ~/agent.%u\n').agentSocket).toBe('/home/ann/agent.ann');
    expect(route('IdentityAgent $SCRATCH\n').agentSocket).toBe('/scratch/ann');
    expect(route('ServerAliveInterval 1m\nServerAliveCountMax 2\n')).toMatchObject({ keepaliveIntervalMs: 60_000, keepaliveCountMax: 2 });
    expect(route('ServerAliveInterval 0\n').keepaliveIntervalMs).toBe(0);
    expect(route('AddressFamily inet6\n').addressFamily).toBe('inet6');
    expect(route('HostKeyAlias dtn-cluster\n').hostKeyAlias).toBe('dtn-cluster');
    expect(() => route('Port 70000\n')).toThrow(`ssh config ${USER_CONFIG} line 1: Port must be a port from 1 to 65535, got '70000'`);
  });

  it('resolves every ProxyJump hop through the configuration itself, the first hop\'s own ProxyJump included, without the command line', () => {
    const text = [
      'Host target',
      '  HostName 10.0.0.9',
      '  ProxyJump carol@gw1:2201,gw2',
      'Host gw1',
      '  HostName 192.0.2.1',
      '  User ignored',
      '  ProxyJump edge',
      '  IdentityFile ~/.ssh/gw1',
      'Host gw2',
      '  ProxyJump never-used',
      '  ProxyCommand also-never-used',
      '  Port 2202',
      'Host edge',
      '  HostName edge.site.org',
      '',
    ].join('\n');
    const { host, unsupported } = resolve(text, 'target', { cli: { identityFiles: ['/k/cli'], knownHostsFile: '/kh/cli' } });
    const jumps = host.route!.jumps!;
    expect(jumps.map((j) => [j.host, j.route!.hostName, j.port, j.user])).toEqual([
      ['edge', 'edge.site.org', 22, 'ann'],
      ['gw1', '192.0.2.1', 2201, 'carol'],
      ['gw2', 'gw2', 2202, 'ann'],
    ]);
    expect(jumps[1]!.route!.identityFiles).toEqual(['/home/ann/.ssh/gw1']);
    expect(jumps[1]!.route!.knownHostsFiles).toEqual(['/home/ann/.ssh/known_hosts', '/home/ann/.ssh/known_hosts2']);
    expect(jumps.every((j) => j.route!.jumps === undefined)).toBe(true);
    expect(host.route!.identityFiles).toEqual(['/k/cli']);
    expect(unsupported).toEqual([]);
    expect(resolve('Host a\n  ProxyJump ssh://u@[2001:db8::1]:2200\n', 'a').host.route!.jumps!.map((j) => [j.host, j.port, j.user])).toEqual([['2001:db8::1', 2200, 'u']]);
    expect(() => resolve('Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n', 'a')).toThrow('leads through more than 8 jump hosts');
  });

  it('lists what the embedded client cannot honour, with file and line, and keeps quiet about what changes nothing', () => {
    const text = [
      'Host h',
      '  ProxyCommand nc %h %p',
      '  ControlMaster auto',
      '  ControlPath ~/.ssh/cm-%r@%h:%p',
      '  ControlPersist 10m',
      '  GSSAPIAuthentication yes',
      '  ForwardAgent yes',
      '  Compression yes',
      '  LogLevel ERROR',
      '  SendEnv LANG',
      '  AddKeysToAgent yes',
      '  FancyNewOption 1',
      '  Ciphers chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-cbc-nope',
      '  MACs +hmac-made-up',
      'Match exec "test -d /x"',
      '  Port 1',
      '',
    ].join('\n');
    const { host, unsupported } = resolve(text, 'h');
    expect(unsupported).toEqual([
      `MACs +hmac-made-up (${USER_CONFIG} line 14)`,
      `ProxyCommand (${USER_CONFIG} line 2)`,
      `ControlMaster (${USER_CONFIG} line 3)`,
      `ControlPath (${USER_CONFIG} line 4)`,
      `GSSAPIAuthentication (${USER_CONFIG} line 6)`,
      `FancyNewOption, unknown to ferry (${USER_CONFIG} line 12)`,
      `Match exec (${USER_CONFIG} line 15: cannot be evaluated here, so its block is taken as not matching)`,
    ]);
    expect(host.route!.algorithms).toEqual({ cipher: ['chacha20-poly1305@openssh.com', 'aes128-gcm@openssh.com'] });
    expect(host.route!.gssapi).toBe(`${USER_CONFIG} line 6`);
    expect(resolve('Host h\n  ProxyCommand none\n  ControlMaster no\n  GSSAPIAuthentication no\n  IgnoreUnknown Fancy*\n  FancyNewOption 1\n', 'h').unsupported).toEqual([]);
  });

  it('names GSSAPIAuthentication from the system-wide file only if a login fails, as distributions turn it on for everyone', () => {
    const { host, unsupported } = resolve('', 'h', { system: 'Host *\n    SendEnv LANG LC_*\n    HashKnownHosts yes\n    GSSAPIAuthentication yes\n' });
    expect(unsupported).toEqual([]);
    expect(host.route!.gssapi).toBe(`${SYSTEM_CONFIG} line 4`);
  });

  it('names the unsupported directives of a jump host as the jump host\'s', () => {
    const { unsupported } = resolve('Host a\n  ProxyJump gw\nHost gw\n  ControlMaster auto\n', 'a');
    expect(unsupported).toEqual([`jump host gw: ControlMaster (${USER_CONFIG} line 4)`]);
  });
});

const SSH = ['/usr/bin/ssh', '/usr/local/bin/ssh'].find((p) => {
  try {
    execFileSync(p, ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});

describe.skipIf(!SSH)('evaluateSshConfig agrees with ssh -G', () => {
  const cases: Array<{ text: string; hosts: Array<string | { host: string; user?: string; port?: number }> }> = [
    {
      text: [
        'Host *.site.org !bad.site.org',
        '  User siteuser',
        '  IdentityFile /k/site',
        'Host dtn? MyDTN',
        '  HostName %h.site.org',
        '  Port 2222',
        'Match host *.SITE.org user siteuser',
        '  ConnectTimeout 7',
        '  IdentityFile /k/match',
        'Match originalhost dtn1',
        '  ServerAliveInterval 1m30s',
        'Host alias',
        '  HostName 10.1.2.3',
        '  ProxyJump bob@gw:2200,gw2',
        '  ProxyCommand nc %h %p',
        '  UserKnownHostsFile /kh/%h /kh/two',
        '  StrictHostKeyChecking accept-new',
        'Match final host 10.1.2.3',
        '  HostKeyAlias final-alias',
        'Host *',
        '  User everyone',
        '  Port 22',
        '  IdentitiesOnly yes',
        '  GlobalKnownHostsFile /g1 /g2',
        '',
      ].join('\n'),
      hosts: ['dtn1', 'dtn2', 'mydtn', 'MyDTN', 'bad.site.org', 'x.site.org', 'alias', { host: 'alias', user: 'cli', port: 2022 }, { host: 'dtn3', user: 'siteuser' }, 'other'],
    },
    {
      text: [
        'Match !host *.internal !originalhost gw*',
        '  ProxyJump gw1',
        'Host gw*',
        '  ProxyCommand none',
        'Host web',
        '  HostName web.internal',
        'Match final host *.internal',
        '  User finaluser',
        '  Port 2200',
        'Host web.internal',
        '  Port 2300',
        '  HostName not-taken',
        '  ConnectTimeout 1m',
        'Match user root',
        '  IdentityFile /k/root',
        '',
      ].join('\n'),
      hosts: ['web', 'web.internal', 'gw1', 'db', { host: 'db', user: 'root' }, { host: 'web', user: 'someone' }],
    },
  ];

  for (const { text, hosts } of cases) {
    it.each(hosts.map((h) => (typeof h === 'string' ? { host: h } : h)))('resolves $host ($user, $port) as ssh does', ({ host, user, port }) => {
      const dir = mkdtempSync(join(tmpdir(), 'ferry-ssh-g-'));
      try {
        const file = join(dir, 'config');
        writeFileSync(file, text);
        const args = ['-G', '-F', file, ...(user ? ['-l', user] : []), ...(port ? ['-p', String(port)] : []), host];
        const out = execFileSync(SSH!, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
        const ssh = new Map<string, string[]>();
        for (const line of out.split('\n')) {
          const [k, ...rest] = line.split(' ');
          if (k) ssh.set(k, [...(ssh.get(k) ?? []), rest.join(' ')]);
        }
        const cfg = { files: [{ path: file, items: parseSshConfig(text, file) }] };
        const hc = evaluateSshConfig(cfg, { host, user, localUser: ssh.get('localuser')?.[0] ?? 'root' });
        const { host: resolved } = resolveRemoteHost(cfg, { host, user, port }, {}, { ...local, user: 'root', home: '/root' }, { ...defaults, defaultIdentityFiles: [] });
        expect(hc.hostName).toBe(ssh.get('hostname')?.[0]);
        expect(String(resolved.port)).toBe(ssh.get('port')?.[0]);
        expect(resolved.user).toBe(ssh.get('user')?.[0]);
        expect((hc.lists.get('identityfile') ?? []).map((s) => s.args[0])).toEqual((ssh.get('identityfile') ?? []).filter((f) => !f.startsWith('~/.ssh/id_')));
        expect(hc.values.get('proxyjump')?.args[0]).toBe(ssh.get('proxyjump')?.[0]);
        expect(hc.values.get('hostkeyalias')?.args[0]).toBe(ssh.get('hostkeyalias')?.[0]);
        expect(resolved.route!.identitiesOnly === true).toBe(ssh.get('identitiesonly')?.[0] === 'yes');
        expect(resolved.route!.acceptNewHostKey === true).toBe(ssh.get('stricthostkeychecking')?.[0] === 'accept-new');
        expect(String(resolved.route!.connectTimeoutMs / 1000)).toBe(ssh.get('connecttimeout')?.[0] === 'none' ? '20' : ssh.get('connecttimeout')?.[0]);
        expect(String(resolved.route!.keepaliveIntervalMs / 1000)).toBe(ssh.get('serveraliveinterval')?.[0] === '0' ? '15' : ssh.get('serveraliveinterval')?.[0]);
        if (hc.values.has('userknownhostsfile')) expect(resolved.route!.knownHostsFiles.join(' ')).toBe(ssh.get('userknownhostsfile')?.[0]);
        expect(resolved.route!.globalKnownHostsFiles.join(' ')).toBe(hc.values.has('globalknownhostsfile') ? ssh.get('globalknownhostsfile')?.[0] : '/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
