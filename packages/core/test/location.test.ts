import { describe, expect, it } from 'vitest';
import { FerryError, describeHost, expandHostlist, formatLocation, hostLabel, parseLocation, remoteHostKey, tildePrefix, underHome } from '@ferry/core';

function usageError(fn: () => unknown): FerryError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('USAGE');
    return err as FerryError;
  }
  throw new Error('expected a USAGE error, nothing was thrown');
}

describe('parseLocation: remote locations', () => {
  it('reads host:path', () => {
    expect(parseLocation('example.org:/data/big.bin')).toEqual({
      kind: 'remote',
      user: undefined,
      host: 'example.org', hosts: ['example.org'],
      port: undefined,
      path: '/data/big.bin',
    });
  });

  it('reads user@host:path', () => {
    expect(parseLocation('alice@login1.hpc.example.org:/scratch/x.tar')).toEqual({
      kind: 'remote',
      user: 'alice',
      host: 'login1.hpc.example.org', hosts: ['login1.hpc.example.org'],
      port: undefined,
      path: '/scratch/x.tar',
    });
  });

  it('reads host:port:path', () => {
    expect(parseLocation('dtn01:2222:/data/file')).toEqual({
      kind: 'remote',
      user: undefined,
      host: 'dtn01', hosts: ['dtn01'],
      port: 2222,
      path: '/data/file',
    });
  });

  it('reads user@host:port:path', () => {
    expect(parseLocation('bob@10.0.0.5:22:in/file.dat')).toEqual({
      kind: 'remote',
      user: 'bob',
      host: '10.0.0.5', hosts: ['10.0.0.5'],
      port: 22,
      path: 'in/file.dat',
    });
  });

  it('keeps a relative remote path as given (relative to the login directory)', () => {
    expect(parseLocation('host:data/file')).toMatchObject({ kind: 'remote', host: 'host', hosts: ['host'], path: 'data/file' });
    expect(parseLocation('host:~/file')).toMatchObject({ kind: 'remote', host: 'host', hosts: ['host'], path: '~/file' });
  });

  it('turns an empty remote path into the login directory', () => {
    expect(parseLocation('host:')).toEqual({ kind: 'remote', user: undefined, host: 'host', hosts: ['host'], port: undefined, path: '.' });
    expect(parseLocation('u@host:')).toEqual({ kind: 'remote', user: 'u', host: 'host', hosts: ['host'], port: undefined, path: '.' });
    expect(parseLocation('host:2200:')).toEqual({ kind: 'remote', user: undefined, host: 'host', hosts: ['host'], port: 2200, path: '.' });
  });

  it('reads a bracketed IPv6 host without the brackets', () => {
    expect(parseLocation('[::1]:/tmp/x')).toEqual({ kind: 'remote', user: undefined, host: '::1', hosts: ['::1'], port: undefined, path: '/tmp/x' });
    expect(parseLocation('[::1]:path')).toEqual({ kind: 'remote', user: undefined, host: '::1', hosts: ['::1'], port: undefined, path: 'path' });
  });

  it('reads a bracketed IPv6 host with a user and a port', () => {
    expect(parseLocation('carol@[fe80::1:2]:2022:/d/f')).toEqual({
      kind: 'remote',
      user: 'carol',
      host: 'fe80::1:2', hosts: ['fe80::1:2'],
      port: 2022,
      path: '/d/f',
    });
  });

  it('reads an empty path after a bracketed IPv6 host as the login directory', () => {
    expect(parseLocation('[2001:db8::7]:')).toEqual({ kind: 'remote', user: undefined, host: '2001:db8::7', hosts: ['2001:db8::7'], port: undefined, path: '.' });
  });

  it('keeps colons inside the remote path', () => {
    expect(parseLocation('host:/data/a:b:c')).toMatchObject({ kind: 'remote', host: 'host', hosts: ['host'], port: undefined, path: '/data/a:b:c' });
  });

  it('reads digits after the host as a port only when a path colon follows', () => {
    expect(parseLocation('host:1234')).toMatchObject({ kind: 'remote', host: 'host', hosts: ['host'], port: undefined, path: '1234' });
    expect(parseLocation('host:1234:x')).toMatchObject({ kind: 'remote', host: 'host', hosts: ['host'], port: 1234, path: 'x' });
    expect(parseLocation('host:123456:x')).toMatchObject({ kind: 'remote', host: 'host', hosts: ['host'], port: undefined, path: '123456:x' });
  });

  it('keeps a newline inside the remote path', () => {
    expect(parseLocation('host:a\nb')).toMatchObject({ kind: 'remote', path: 'a\nb' });
  });

  it('accepts ports 1 and 65535', () => {
    expect(parseLocation('h:1:p')).toMatchObject({ port: 1 });
    expect(parseLocation('h:65535:p')).toMatchObject({ port: 65535 });
  });

  it('rejects port 0 with a USAGE error naming the argument and the port', () => {
    const err = usageError(() => parseLocation('host:0:/x'));
    expect(err.message).toBe("port in 'host:0:/x' must be 1-65535, got 0");
  });

  it('rejects port 65536 with a USAGE error naming the argument and the port', () => {
    const err = usageError(() => parseLocation('u@host:65536:/x'));
    expect(err.message).toBe("port in 'u@host:65536:/x' must be 1-65535, got 65536");
  });
});

describe('parseLocation: local locations', () => {
  it('reads an absolute path as local', () => {
    expect(parseLocation('/data/big.bin')).toEqual({ kind: 'local', path: '/data/big.bin' });
  });

  it('reads a relative path as local', () => {
    expect(parseLocation('big.bin')).toEqual({ kind: 'local', path: 'big.bin' });
    expect(parseLocation('dir/big.bin')).toEqual({ kind: 'local', path: 'dir/big.bin' });
    expect(parseLocation('.')).toEqual({ kind: 'local', path: '.' });
    expect(parseLocation('~/x')).toEqual({ kind: 'local', path: '~/x' });
  });

  it('reads a colon after a slash as part of a local path', () => {
    expect(parseLocation('./a:b')).toEqual({ kind: 'local', path: './a:b' });
    expect(parseLocation('../a:b')).toEqual({ kind: 'local', path: '../a:b' });
    expect(parseLocation('/data/x:y')).toEqual({ kind: 'local', path: '/data/x:y' });
    expect(parseLocation('dir/a:b')).toEqual({ kind: 'local', path: 'dir/a:b' });
    expect(parseLocation('dir/host:2222:p')).toEqual({ kind: 'local', path: 'dir/host:2222:p' });
  });

  it('reads text whose host part is not a valid host name as local', () => {
    expect(parseLocation(':path')).toEqual({ kind: 'local', path: ':path' });
    expect(parseLocation('my host:path')).toEqual({ kind: 'local', path: 'my host:path' });
    expect(parseLocation('a@b@host:path')).toEqual({ kind: 'local', path: 'a@b@host:path' });
    expect(parseLocation('[::1]')).toEqual({ kind: 'local', path: '[::1]' });
  });

  it('rejects an empty argument with a USAGE error', () => {
    const err = usageError(() => parseLocation(''));
    expect(err.message).toBe('empty path: give a local path or [user@]host[:port]:path');
  });
});

describe('formatLocation', () => {
  it('prints a local path unchanged', () => {
    expect(formatLocation({ kind: 'local', path: './a:b' })).toBe('./a:b');
  });

  it('prints user, host, port and path', () => {
    expect(formatLocation({ kind: 'remote', user: 'alice', host: 'h', hosts: ['h'], port: 2222, path: '/x' })).toBe('alice@h:2222:/x');
    expect(formatLocation({ kind: 'remote', user: undefined, host: 'h', hosts: ['h'], port: undefined, path: 'rel' })).toBe('h:rel');
  });

  it('brackets an IPv6 host', () => {
    expect(formatLocation({ kind: 'remote', user: undefined, host: '::1', hosts: ['::1'], port: 22, path: '/t' })).toBe('[::1]:22:/t');
  });

  it('gives back text that parses to the same location', () => {
    for (const text of ['alice@h:2222:/x', 'h:rel', '[::1]:22:/t', 'u@[fe80::1]:/a:b', '/local/a:b', 'file']) {
      const loc = parseLocation(text);
      expect(formatLocation(loc)).toBe(text);
      expect(parseLocation(formatLocation(loc))).toEqual(loc);
    }
  });
});

describe('describeHost and remoteHostKey', () => {
  const route = { hostName: '10.1.2.3', identityFiles: [], knownHostsFiles: [], globalKnownHostsFiles: [], connectTimeoutMs: 1, keepaliveIntervalMs: 1, keepaliveCountMax: 1 };

  it('names a host as written, and where ssh_config sent it when that differs', () => {
    expect(describeHost({ host: 'mydtn', port: 2222, user: 'u', label: 'mydtn', route })).toBe('mydtn (10.1.2.3:2222)');
    expect(describeHost({ host: 'mydtn', port: 22, user: 'u', route })).toBe('mydtn (10.1.2.3)');
    expect(describeHost({ host: '10.1.2.3', port: 2222, user: 'u', route })).toBe('10.1.2.3:2222');
    expect(describeHost({ host: 'v6', port: 2222, user: 'u', label: 'v6', route: { ...route, hostName: '::1' } })).toBe('v6 ([::1]:2222)');
    expect(describeHost({ host: 'plain', port: 22, user: 'u' })).toBe('plain');
  });

  it('gives two descriptions of a host the same key exactly when they agree, field order and absent fields aside', () => {
    const a = { host: 'h', port: 22, user: 'u', route };
    const b = JSON.parse(JSON.stringify({ route: { ...route }, user: 'u', port: 22, host: 'h', label: undefined }));
    expect(remoteHostKey(a)).toBe(remoteHostKey(b));
    expect(remoteHostKey(a)).not.toBe(remoteHostKey({ ...a, route: { ...route, identitiesOnly: true } }));
  });
});

describe('hostLabel', () => {
  it('names a host without a port or on port 22 by its name alone', () => {
    expect(hostLabel({ host: 'dtn01' })).toBe('dtn01');
    expect(hostLabel({ host: 'dtn01', port: undefined })).toBe('dtn01');
    expect(hostLabel({ host: 'dtn01', port: 22 })).toBe('dtn01');
  });

  it('adds a port other than 22', () => {
    expect(hostLabel({ host: 'dtn01', port: 2222 })).toBe('dtn01:2222');
  });

  it('brackets an IPv6 address, with or without a port, as it is typed', () => {
    expect(hostLabel({ host: '::1' })).toBe('[::1]');
    expect(hostLabel({ host: '::1', port: 22 })).toBe('[::1]');
    expect(hostLabel({ host: '::1', port: 2222 })).toBe('[::1]:2222');
    expect(hostLabel({ host: 'fe80::1:2', port: 2022 })).toBe('[fe80::1:2]:2022');
  });

  it('makes `label:path` a location that parses back to the same host, port and path', () => {
    for (const text of ['[::1]:/tmp/x', '[::1]:2222:/tmp/x', 'dtn01:2222:/x', 'dtn01:rel']) {
      const loc = parseLocation(text) as Extract<ReturnType<typeof parseLocation>, { kind: 'remote' }>;
      expect(`${hostLabel(loc)}:${loc.path}`).toBe(text);
    }
  });
});

describe('host lists', () => {
  it('expands a Slurm hostlist and comma lists in the host part', () => {
    expect(parseLocation('me@dtn[1-3]:/in/')).toEqual({ kind: 'remote', user: 'me', host: 'dtn1', hosts: ['dtn1', 'dtn2', 'dtn3'], port: undefined, path: '/in/' });
    expect(parseLocation('dtn1,dtn2:2222:/x')).toMatchObject({ host: 'dtn1', hosts: ['dtn1', 'dtn2'], port: 2222 });
    expect(expandHostlist('node[08-10],x,node09')).toEqual(['node08', 'node09', 'node10', 'x']);
    expect(expandHostlist('r[1-2]-n[1,3]')).toEqual(['r1-n1', 'r1-n3', 'r2-n1', 'r2-n3']);
  });

  it('prints a host list back joined by commas', () => {
    expect(formatLocation(parseLocation('u@dtn[1-2]:/p'))).toBe('u@dtn1,dtn2:/p');
  });

  it('rejects malformed host lists with a USAGE error naming them', () => {
    expect(() => expandHostlist('dtn[3-1]')).toThrow("bad range '3-1' in host list 'dtn[3-1]': 1 is below 3");
    expect(() => expandHostlist('dtn[1-2')).toThrow("unbalanced '[' in host list 'dtn[1-2'");
    expect(() => expandHostlist('dtn[a]')).toThrow("bad range 'a' in host list 'dtn[a]': use forms like node[1-4,7] or node[01-16]");
    expect(() => expandHostlist('a,,b')).toThrow("empty host name in host list 'a,,b'");
  });
});

describe('tildePrefix and underHome (scp\'s ~ on the remote side)', () => {
  it('reads ~ and ~/path as the login directory', () => {
    expect(tildePrefix('~')).toEqual({ user: undefined, rest: '' });
    expect(tildePrefix('~/')).toEqual({ user: undefined, rest: '' });
    expect(tildePrefix('~/data/x')).toEqual({ user: undefined, rest: 'data/x' });
    expect(tildePrefix('~/in/')).toEqual({ user: undefined, rest: 'in/' });
  });

  it('reads ~user and ~user/path as that user\'s home', () => {
    expect(tildePrefix('~bob')).toEqual({ user: 'bob', rest: '' });
    expect(tildePrefix('~bob/in/x')).toEqual({ user: 'bob', rest: 'in/x' });
    // Whatever follows ~ up to the slash is the name, to be looked up quoted.
    expect(tildePrefix("~a;b'c/x")).toEqual({ user: "a;b'c", rest: 'x' });
  });

  it('leaves other paths alone, a ~ inside a path included', () => {
    expect(tildePrefix('/data/~x')).toBeUndefined();
    expect(tildePrefix('data/~')).toBeUndefined();
    expect(tildePrefix('.')).toBeUndefined();
  });

  it('puts the rest under the home directory, keeping a trailing slash', () => {
    expect(underHome('/home/u', '')).toBe('/home/u');
    expect(underHome('/home/u', 'in/')).toBe('/home/u/in/');
    expect(underHome('/home/u/', 'x')).toBe('/home/u/x');
    expect(underHome('/', 'x')).toBe('/x');
  });
});
