import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  appendKnownHost,
  checkHostKey,
  formatKnownHostsLine,
  hostKeyAlgorithmsFor,
  hostKeyName,
  knownKeyTypes,
  matchHost,
  parseKnownHosts,
  readKnownHostsFiles,
  type KnownHostEntry,
} from '../src/known-hosts.js';

interface TestKey {
  type: string;
  b64: string;
  blob: Buffer;
}

let dir: string;
let ed1: TestKey;
let ed2: TestKey;
let rsa: TestKey;
let ecdsa: TestKey;

function genKey(name: string, args: string[]): TestKey {
  const path = join(dir, name);
  execFileSync('ssh-keygen', ['-q', ...args, '-N', '', '-C', '', '-f', path]);
  const [type, b64] = readFileSync(`${path}.pub`, 'utf8').trim().split(' ') as [string, string];
  return { type, b64, blob: Buffer.from(b64, 'base64') };
}

/** `type base64`, the key part of a known_hosts line. */
function k(key: TestKey): string {
  return `${key.type} ${key.b64}`;
}

/** Does OpenSSH's own matcher (`ssh-keygen -F`) find `name` in `file`? */
function opensshFinds(file: string, name: string): boolean {
  const r = spawnSync('ssh-keygen', ['-F', name, '-f', file], { encoding: 'utf8' });
  if (r.status !== 0 && r.status !== 1) throw new Error(`ssh-keygen -F failed: ${r.stderr}`);
  return r.status === 0;
}

function only(text: string): KnownHostEntry {
  const entries = parseKnownHosts(text);
  expect(entries).toHaveLength(1);
  return entries[0]!;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-known-hosts-'));
  ed1 = genKey('ed1', ['-t', 'ed25519']);
  ed2 = genKey('ed2', ['-t', 'ed25519']);
  rsa = genKey('rsa', ['-t', 'rsa', '-b', '2048']);
  ecdsa = genKey('ecdsa', ['-t', 'ecdsa', '-b', '256']);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('hostKeyName', () => {
  test('a host on port 22 is named by its bare host name', () => {
    expect(hostKeyName('login.example.org', 22)).toBe('login.example.org');
    expect(hostKeyName('10.0.0.5', 22)).toBe('10.0.0.5');
  });

  test('a host on another port is named [host]:port', () => {
    expect(hostKeyName('login.example.org', 2222)).toBe('[login.example.org]:2222');
    expect(hostKeyName('::1', 2200)).toBe('[::1]:2200');
  });
});

describe('parseKnownHosts', () => {
  test('an ordinary line yields its patterns, key type, key blob and comment', () => {
    const e = only(`a.example,[b.example]:2222,10.1.2.3 ${k(ed1)} my  host key\n`);
    expect(e.marker).toBe(null);
    expect(e.patterns).toEqual(['a.example', '[b.example]:2222', '10.1.2.3']);
    expect(e.keyType).toBe('ssh-ed25519');
    expect(e.key.equals(ed1.blob)).toBe(true);
    expect(e.comment).toBe('my host key');
    expect(e.line).toBe(1);
    expect(e.file).toBe(undefined);
  });

  test('rsa and ecdsa keys are parsed with their own key types', () => {
    const entries = parseKnownHosts(`h ${k(rsa)}\nh ${k(ecdsa)}\n`);
    expect(entries.map((e) => e.keyType)).toEqual(['ssh-rsa', 'ecdsa-sha2-nistp256']);
    expect(entries.map((e) => e.comment)).toEqual(['', '']);
  });

  test('the @revoked and @cert-authority markers are recorded', () => {
    const entries = parseKnownHosts(`@revoked * ${k(ed1)}\n@cert-authority *.example ${k(ed2)}\n`);
    expect(entries.map((e) => e.marker)).toEqual(['revoked', 'cert-authority']);
    expect(entries.map((e) => e.patterns)).toEqual([['*'], ['*.example']]);
  });

  test('blank, comment and malformed lines are skipped without throwing', () => {
    const text = [
      '', // 1 blank
      '   \t ', // 2 whitespace only
      '# a comment', // 3
      `  # indented comment ${k(ed1)}`, // 4
      `good1 ${k(ed1)}`, // 5
      'onlyahost', // 6
      'host ssh-ed25519', // 7 no key
      'host ssh-ed25519 not*base64!', // 8
      `host ssh-rsa ${ed1.b64}`, // 9 declared type differs from the blob's type
      `host ssh-ed25519 ${ed1.b64.slice(0, 8)}`, // 10 truncated blob
      `@bogus host ${k(ed1)}`, // 11 unknown marker
      `@revoked ${k(ed1)}`, // 12 marker but no host field
      `|1|notbase64!|xx ${k(ed1)}`, // 13 malformed hashed name
      `,,, ${k(ed1)}`, // 14 empty pattern list
      `host,! ${k(ed1)}`, // 15 bare negation
      'host 1024 35 1234567890', // 16 legacy SSH-1 RSA line
      `\tgood2 ${k(ed2)}\r`, // 17 leading tab, CRLF ending
    ].join('\n');
    const entries = parseKnownHosts(text);
    expect(entries.map((e) => [e.line, e.patterns])).toEqual([
      [5, ['good1']],
      [17, ['good2']],
    ]);
    expect(entries[1]!.key.equals(ed2.blob)).toBe(true);
  });

  test('text that is not known_hosts at all yields no entries', () => {
    expect(parseKnownHosts('\u0000\u0001 garbage\n{"json": true}\n@@@\n')).toEqual([]);
  });
});

describe('matchHost', () => {
  test('plain patterns match the exact name, ignoring case', () => {
    const e = only(`Login.Example.org,10.0.0.5 ${k(ed1)}`);
    expect(matchHost(e, 'login.example.org')).toBe(true);
    expect(matchHost(e, 'LOGIN.EXAMPLE.ORG')).toBe(true);
    expect(matchHost(e, '10.0.0.5')).toBe(true);
    expect(matchHost(e, 'login.example')).toBe(false);
    expect(matchHost(e, 'xlogin.example.org')).toBe(false);
  });

  test('a bracketed name only matches the same host on the same port', () => {
    const e = only(`[login.example.org]:2222 ${k(ed1)}`);
    expect(matchHost(e, '[login.example.org]:2222')).toBe(true);
    expect(matchHost(e, 'login.example.org')).toBe(false);
    expect(matchHost(e, '[login.example.org]:22222')).toBe(false);
  });

  test('* matches any run of characters and ? matches exactly one', () => {
    const e = only(`*.example.org,node??.hpc,[gw]:* ${k(ed1)}`);
    expect(matchHost(e, 'a.example.org')).toBe(true);
    expect(matchHost(e, 'a.b.example.org')).toBe(true);
    expect(matchHost(e, 'example.org')).toBe(false);
    expect(matchHost(e, 'node01.hpc')).toBe(true);
    expect(matchHost(e, 'node1.hpc')).toBe(false);
    expect(matchHost(e, 'node001.hpc')).toBe(false);
    expect(matchHost(e, '[gw]:2222')).toBe(true);
    expect(matchHost(e, 'gw')).toBe(false);
  });

  test('a negated pattern rejects a name even when another pattern matches it', () => {
    const e = only(`*.example.org,!bad.example.org ${k(ed1)}`);
    expect(matchHost(e, 'good.example.org')).toBe(true);
    expect(matchHost(e, 'bad.example.org')).toBe(false);
    expect(matchHost(e, 'BAD.example.org')).toBe(false);
  });

  test('an entry of only negated patterns matches nothing', () => {
    const e = only(`!bad.example.org ${k(ed1)}`);
    expect(matchHost(e, 'good.example.org')).toBe(false);
    expect(matchHost(e, 'bad.example.org')).toBe(false);
  });

  test('unhashed plain, wildcard and negated patterns agree with ssh-keygen -F', () => {
    const file = join(dir, 'agree-plain');
    writeFileSync(
      file,
      [
        `alpha.example,[alpha.example]:2222 ${k(ed1)}`,
        `*.wild.example,!deny.wild.example ${k(ed1)}`,
        `node?.hpc,10.0.* ${k(ed1)}`,
      ].join('\n') + '\n',
    );
    const entries = parseKnownHosts(readFileSync(file, 'utf8'));
    const names = [
      'alpha.example',
      'ALPHA.example',
      '[alpha.example]:2222',
      '[alpha.example]:2223',
      'beta.example',
      'x.wild.example',
      'a.b.wild.example',
      'deny.wild.example',
      'wild.example',
      'node1.hpc',
      'node12.hpc',
      '10.0.3.4',
      '10.1.3.4',
    ];
    const ours = names.map((n) => entries.some((e) => matchHost(e, n)));
    const theirs = names.map((n) => opensshFinds(file, n));
    expect(ours).toEqual(theirs);
    expect(ours).toEqual([
      true, true, true, false, false, true, true, false, false, true, false, true, false,
    ]);
  });

  test('names hashed by ssh-keygen -H are matched like OpenSSH matches them', () => {
    const file = join(dir, 'hashed');
    writeFileSync(
      file,
      [
        `Alpha.example,10.9.8.7 ${k(ed1)}`,
        `[beta.example]:2222 ${k(rsa)}`,
        `gamma.example ${k(ecdsa)}`,
      ].join('\n') + '\n',
    );
    execFileSync('ssh-keygen', ['-q', '-H', '-f', file], { stdio: 'ignore' });
    const entries = parseKnownHosts(readFileSync(file, 'utf8'));
    // ssh-keygen -H writes one hashed line per name.
    expect(entries).toHaveLength(4);
    for (const e of entries) {
      expect(e.patterns).toHaveLength(1);
      expect(e.patterns[0]!).toMatch(/^\|1\|[A-Za-z0-9+/]{27}=\|[A-Za-z0-9+/]{27}=$/);
    }
    const names = [
      'alpha.example',
      '10.9.8.7',
      '[beta.example]:2222',
      'beta.example',
      '[beta.example]:22',
      'gamma.example',
      'delta.example',
    ];
    const ours = names.map((n) => entries.some((e) => matchHost(e, n)));
    expect(ours).toEqual(names.map((n) => opensshFinds(file, n)));
    expect(ours).toEqual([true, true, true, false, false, true, false]);
    // OpenSSH hashes the lower-cased name, so a mixed-case lookup still matches.
    expect(entries.some((e) => matchHost(e, 'ALPHA.Example'))).toBe(true);
    expect(checkHostKey(entries, 'beta.example', 2222, rsa.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'gamma.example', 22, ecdsa.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'gamma.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
  });

  test('a hashed pattern is HMAC-SHA1 of the name keyed by the salt', () => {
    const salt = Buffer.alloc(20, 7);
    // Computed independently: printf '%s' host.example | openssl dgst -sha1 -mac HMAC -macopt hexkey:0707...07
    const mac = execFileSync(
      'openssl',
      ['dgst', '-sha1', '-binary', '-mac', 'HMAC', '-macopt', `hexkey:${salt.toString('hex')}`],
      { input: 'host.example' },
    );
    const e = only(`|1|${salt.toString('base64')}|${mac.toString('base64')} ${k(ed1)}`);
    expect(matchHost(e, 'host.example')).toBe(true);
    expect(matchHost(e, 'host.example2')).toBe(false);
  });
});

describe('checkHostKey', () => {
  test('a host whose matching entry holds the same key is known', () => {
    const entries = parseKnownHosts(`login.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'known' });
  });

  test('a host with no matching entry is unknown', () => {
    const entries = parseKnownHosts(`other.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
    expect(checkHostKey([], 'login.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
  });

  test('an entry for port 22 does not vouch for the same host on another port', () => {
    const entries = parseKnownHosts(`login.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 2222, ed1.blob)).toEqual({ status: 'unknown' });
    const bracketed = parseKnownHosts(`[login.example]:2222 ${k(ed1)}\n`);
    expect(checkHostKey(bracketed, 'login.example', 2222, ed1.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(bracketed, 'login.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
  });

  test('a different key of the same type as the recorded one is changed', () => {
    const entries = parseKnownHosts(`login.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed2.blob)).toEqual({
      status: 'changed',
      keyType: 'ssh-ed25519',
    });
  });

  test('a key of a type not on record for the host is unknown rather than changed', () => {
    const entries = parseKnownHosts(`login.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, rsa.blob)).toEqual({ status: 'unknown' });
    expect(checkHostKey(entries, 'login.example', 22, ecdsa.blob)).toEqual({ status: 'unknown' });
  });

  test('a matching entry with the same key wins over another entry with a different key', () => {
    const entries = parseKnownHosts(`*.example ${k(ed2)}\nlogin.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'login.example', 22, ed2.blob)).toEqual({ status: 'known' });
  });

  test('an rsa key is changed only against a recorded rsa key', () => {
    const other = genKey('rsa-other', ['-t', 'rsa', '-b', '2048']);
    const entries = parseKnownHosts(`login.example ${k(rsa)}\nlogin.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, rsa.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'login.example', 22, other.blob)).toEqual({
      status: 'changed',
      keyType: 'ssh-rsa',
    });
  });

  test('a negated pattern keeps an entry from vouching for that host', () => {
    const entries = parseKnownHosts(`*.example,!evil.example ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'good.example', 22, ed1.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'evil.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
    expect(checkHostKey(entries, 'evil.example', 22, ed2.blob)).toEqual({ status: 'unknown' });
  });

  test('a revoked key is revoked even when an ordinary entry also lists it', () => {
    const entries = parseKnownHosts(`login.example ${k(ed1)}\n@revoked * ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'revoked' });
    expect(checkHostKey(entries, 'login.example', 22, ed2.blob)).toEqual({
      status: 'changed',
      keyType: 'ssh-ed25519',
    });
  });

  test('a revoked key is revoked for every host whatever the revocation line names', () => {
    const entries = parseKnownHosts(`@revoked some.other.host ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'revoked' });
    expect(checkHostKey(entries, 'login.example', 2222, ed1.blob)).toEqual({ status: 'revoked' });
  });

  test('cert-authority entries never make a host key known or changed', () => {
    const entries = parseKnownHosts(`@cert-authority * ${k(ed1)}\n`);
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
    expect(checkHostKey(entries, 'login.example', 22, ed2.blob)).toEqual({ status: 'unknown' });
  });

  test('a malformed key blob is rejected with an error', () => {
    expect(() => checkHostKey([], 'login.example', 22, Buffer.from([0, 0, 0, 9, 1]))).toThrow(
      'malformed SSH public key blob',
    );
  });
});

describe('knownKeyTypes and hostKeyAlgorithmsFor', () => {
  test('the key types on record for a host are listed once each in file order', () => {
    const entries = parseKnownHosts(
      [
        `login.example ${k(ecdsa)}`,
        `other.example ${k(ed2)}`,
        `*.example ${k(rsa)}`,
        `login.example ${k(ed1)}`,
        `[login.example]:2222 ${k(ed2)}`,
        `login.example ${k(ecdsa)}`,
        `@cert-authority * ${k(ed2)}`,
      ].join('\n'),
    );
    expect(knownKeyTypes(entries, 'login.example', 22)).toEqual([
      'ecdsa-sha2-nistp256',
      'ssh-rsa',
      'ssh-ed25519',
    ]);
    expect(knownKeyTypes(entries, 'login.example', 2222)).toEqual(['ssh-ed25519']);
    expect(knownKeyTypes(entries, 'nowhere.org', 22)).toEqual([]);
  });

  test('revoked keys and marker entries contribute no key types', () => {
    const entries = parseKnownHosts(
      [`login.example ${k(ed1)}`, `login.example ${k(rsa)}`, `@revoked * ${k(ed1)}`].join('\n'),
    );
    expect(knownKeyTypes(entries, 'login.example', 22)).toEqual(['ssh-rsa']);
  });

  test('ssh-rsa expands to the rsa-sha2 algorithms and other types map to themselves', () => {
    expect(hostKeyAlgorithmsFor(['ssh-rsa'])).toEqual(['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
    expect(hostKeyAlgorithmsFor(['ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256'])).toEqual([
      'ssh-ed25519',
      'rsa-sha2-512',
      'rsa-sha2-256',
      'ssh-rsa',
      'ecdsa-sha2-nistp256',
    ]);
    expect(hostKeyAlgorithmsFor([])).toEqual([]);
  });
});

describe('formatKnownHostsLine and appendKnownHost', () => {
  test('a formatted line is name, key type and base64 key', () => {
    expect(formatKnownHostsLine('login.example', 22, ed1.blob)).toBe(
      `login.example ssh-ed25519 ${ed1.b64}`,
    );
    expect(formatKnownHostsLine('login.example', 2222, rsa.blob)).toBe(
      `[login.example]:2222 ssh-rsa ${rsa.b64}`,
    );
  });

  test('appending creates the directory 0700 and file 0600 and the host is then known', async () => {
    const sshDir = join(dir, 'append1', 'nested', '.ssh');
    const file = join(sshDir, 'known_hosts');
    await appendKnownHost(file, 'login.example', 2222, ed1.blob);
    expect(statSync(join(dir, 'append1', 'nested')).mode & 0o777).toBe(0o700);
    expect(statSync(sshDir).mode & 0o777).toBe(0o700);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toBe(`[login.example]:2222 ssh-ed25519 ${ed1.b64}\n`);

    await appendKnownHost(file, 'other.example', 22, rsa.blob);
    expect(readFileSync(file, 'utf8')).toBe(
      `[login.example]:2222 ssh-ed25519 ${ed1.b64}\nother.example ssh-rsa ${rsa.b64}\n`,
    );

    const entries = await readKnownHostsFiles([file]);
    expect(checkHostKey(entries, 'login.example', 2222, ed1.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'other.example', 22, rsa.blob)).toEqual({ status: 'known' });
    expect(checkHostKey(entries, 'login.example', 22, ed1.blob)).toEqual({ status: 'unknown' });
    expect(opensshFinds(file, '[login.example]:2222')).toBe(true);
    expect(opensshFinds(file, 'other.example')).toBe(true);
  });

  test('appending to a file without a final newline starts a new line first', async () => {
    const file = join(dir, 'append2');
    writeFileSync(file, `first.example ${k(ed2)}`, { mode: 0o644 });
    await appendKnownHost(file, 'second.example', 22, ed1.blob);
    expect(readFileSync(file, 'utf8')).toBe(
      `first.example ${k(ed2)}\nsecond.example ssh-ed25519 ${ed1.b64}\n`,
    );
    // An existing file keeps its mode.
    expect(statSync(file).mode & 0o777).toBe(0o644);
  });

  test('appending to an empty file writes just the line', async () => {
    const file = join(dir, 'append3');
    writeFileSync(file, '');
    await appendKnownHost(file, 'login.example', 22, ecdsa.blob);
    expect(readFileSync(file, 'utf8')).toBe(`login.example ecdsa-sha2-nistp256 ${ecdsa.b64}\n`);
  });
});

describe('readKnownHostsFiles', () => {
  test('existing files are read in order with their path and missing files are skipped', async () => {
    const a = join(dir, 'read-a');
    const b = join(dir, 'read-b');
    writeFileSync(a, `# comment\na.example ${k(ed1)}\n`);
    writeFileSync(b, `b.example ${k(ed2)}\n`);
    const entries = await readKnownHostsFiles([
      join(dir, 'missing'),
      a,
      join(dir, 'no-such-dir', 'known_hosts'),
      join(dir, 'read-a', 'known_hosts'), // parent is a file: ENOTDIR
      b,
    ]);
    expect(entries.map((e) => [e.file, e.line, e.patterns])).toEqual([
      [a, 2, ['a.example']],
      [b, 1, ['b.example']],
    ]);
    expect(await readKnownHostsFiles([join(dir, 'missing')])).toEqual([]);
  });

  test('a path that cannot be read for another reason throws', async () => {
    const d = join(dir, 'a-directory');
    mkdirSync(d);
    await expect(readKnownHostsFiles([d])).rejects.toMatchObject({ code: 'EISDIR' });
  });
});
