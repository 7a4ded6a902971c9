import { describe, expect, it } from 'vitest';
import {
  AUTO_FIRST_STREAMS,
  AUTO_MAX_STREAMS,
  DEFAULT_ACK_WAIT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_HASH,
  DEFAULT_MAX_RESENDS,
  DEFAULT_REMOTE_COMMAND,
  DEFAULT_WINDOW_BYTES,
  DEFAULT_SEND_WINDOW_BYTES,
  MIN_SEND_WINDOW_BYTES,
  FerryError,
  MAX_AGENTS,
  MAX_STREAMS,
  defaultAgents,
  resolveCopyOptions,
} from '@ferry/core';
import type { CopyOptions } from '@ferry/core';

function usageMessage(options: CopyOptions): string {
  try {
    resolveCopyOptions(options);
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('USAGE');
    expect((err as FerryError).exitCode).toBe(2);
    return (err as FerryError).message;
  }
  throw new Error(`expected a USAGE error for ${JSON.stringify(options)}, nothing was thrown`);
}

describe('resolveCopyOptions: defaults', () => {
  it('exports the documented defaults and limits', () => {
    expect(AUTO_FIRST_STREAMS).toBe(1);
    expect(AUTO_MAX_STREAMS).toBe(16);
    expect(DEFAULT_HASH).toBe('xxh3');
    expect(DEFAULT_REMOTE_COMMAND).toBe('ferry serve');
    expect(DEFAULT_ACK_WAIT_MS).toBe(30_000);
    expect(DEFAULT_WINDOW_BYTES).toBe(8 * 1048576);
    expect(DEFAULT_SEND_WINDOW_BYTES).toBe(0);
    expect(MIN_SEND_WINDOW_BYTES).toBe(128 * 1024);
    expect(DEFAULT_MAX_RESENDS).toBe(3);
    expect(DEFAULT_CONNECT_TIMEOUT_MS).toBe(20_000);
    expect(MAX_AGENTS).toBe(4096);
    expect(MAX_STREAMS).toBe(64);
  });

  it('takes one agent per four cores of the node, from 1 to 8', () => {
    expect([1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 256].map(defaultAgents)).toEqual([1, 1, 1, 1, 1, 2, 4, 7, 8, 8, 8]);
    expect(resolveCopyOptions({}, { cores: 16 }).agents).toBe(4);
    expect(resolveCopyOptions({ agents: '3' }, { cores: 16 }).agents).toBe(3);
  });

  it('writes with direct I/O by the destination file system unless --direct-io or --no-direct-io says', () => {
    expect(resolveCopyOptions({}).directIo).toBe('auto');
    expect(resolveCopyOptions({ directIo: true }).directIo).toBe('on');
    expect(resolveCopyOptions({ directIo: false }).directIo).toBe('off');
  });

  it('tunes the streams unless --streams is given, which fixes them', () => {
    expect(resolveCopyOptions({})).toMatchObject({ streams: 16, firstStreams: 1, tuneStreams: true });
    expect(resolveCopyOptions({ streams: '4' })).toMatchObject({ streams: 4, firstStreams: 4, tuneStreams: false });
  });

  it('resolves no options to the defaults', () => {
    expect(resolveCopyOptions()).toEqual({
      agents: 1,
      streams: 16,
      firstStreams: 1,
      tuneStreams: true,
      rangeBytes: undefined,
      hash: 'xxh3',
      hashGiven: false,
      mode: 'auto',
      remoteCommand: 'ferry serve',
      remoteCommandGiven: false,
      transport: 'ssh2',
      sshCommand: ['ssh'],
      preserve: false,
      failFast: false,
      preserveOwner: false,
      numericIds: false,
      xattrs: false,
      acls: false,
      directIo: 'auto',
      verify: false,
      delta: false,
      inplace: false,
      sharedHelper: false,
      knownHostsFile: undefined,
      sshConfigFile: undefined,
      acceptNewHostKey: false,
      identityFiles: [],
      natsUrl: undefined,
      stateDir: undefined,
      ackWaitMs: 30_000,
      windowBytes: 8388608,
      sendWindowBytes: 0,
      limitBytesPerSec: undefined,
      maxConnectionsPerHost: 0,
      maxResends: 3,
      output: 'human',
      connectTimeoutMs: 20_000,
      connectTimeoutGiven: false,
      restart: false,
      sync: undefined,
      deleteExtraneous: false,
      dryRun: false,
    });
  });

  it('resolves an empty object the same as no options', () => {
    expect(resolveCopyOptions({})).toEqual(resolveCopyOptions());
  });
});

describe('resolveCopyOptions: valid values', () => {
  it('resolves every option given as a string', () => {
    expect(
      resolveCopyOptions({
        agents: '16',
        streams: ' 4 ',
        rangeSize: '64MiB',
        hash: 'sha256',
        mode: 'sftp',
        remoteCmd: '/opt/ferry/bin/ferry serve',
        preserve: true,
        directIo: true,
        verify: true,
        delta: true,
        inplace: true,
        sharedHelper: true,
        knownHosts: '/etc/ssh/known',
        sshConfig: '/home/u/.ssh/hpc_config',
        acceptNewHostKey: true,
        identity: ['/k/id_ed25519', '/k/id_rsa'],
        nats: 'nats://10.0.0.1:4222',
        stateDir: '/var/lib/ferry',
        ackWait: '2m',
        window: '32MiB',
        sendWindow: '2MiB',
        limitRate: '100MB',
        maxResends: '0',
        json: true,
        connectTimeout: '5s',
        compare: 'checksum',
        delete: true,
        dryRun: true,
      }),
    ).toEqual({
      agents: 16,
      streams: 4,
      firstStreams: 4,
      tuneStreams: false,
      rangeBytes: 67108864,
      hash: 'sha256',
      hashGiven: true,
      mode: 'sftp',
      remoteCommand: '/opt/ferry/bin/ferry serve',
      remoteCommandGiven: true,
      transport: 'ssh2',
      sshCommand: ['ssh'],
      preserve: true,
      failFast: false,
      preserveOwner: false,
      numericIds: false,
      xattrs: false,
      acls: false,
      directIo: 'on',
      verify: true,
      delta: true,
      inplace: true,
      sharedHelper: true,
      knownHostsFile: '/etc/ssh/known',
      sshConfigFile: '/home/u/.ssh/hpc_config',
      acceptNewHostKey: true,
      identityFiles: ['/k/id_ed25519', '/k/id_rsa'],
      natsUrl: 'nats://10.0.0.1:4222',
      stateDir: '/var/lib/ferry',
      ackWaitMs: 120_000,
      windowBytes: 33554432,
      sendWindowBytes: 2097152,
      limitBytesPerSec: 100_000_000,
      maxConnectionsPerHost: 0,
      maxResends: 0,
      output: 'json',
      connectTimeoutMs: 5000,
      connectTimeoutGiven: true,
      restart: false,
      sync: 'checksum',
      deleteExtraneous: true,
      dryRun: true,
    });
  });

  it('takes --transport openssh with an --ssh-cmd split at spaces, and refuses combinations that cannot work', () => {
    const r = resolveCopyOptions({ transport: 'openssh', sshCmd: '  /opt/hpnssh/bin/ssh  -F /etc/ssh/hpc ' });
    expect(r.transport).toBe('openssh');
    expect(r.sshCommand).toEqual(['/opt/hpnssh/bin/ssh', '-F', '/etc/ssh/hpc']);
    expect(() => resolveCopyOptions({ transport: 'scp' })).toThrow("--transport must be ssh2 or openssh, got 'scp'");
    expect(() => resolveCopyOptions({ transport: 'openssh', mode: 'sftp' })).toThrow('--transport openssh carries the helper protocol only');
    expect(() => resolveCopyOptions({ transport: 'openssh', sshCmd: '   ' })).toThrow('--ssh-cmd must not be empty');
    expect(() => resolveCopyOptions({ sshCmd: 'ssh' })).toThrow('--ssh-cmd is used by --transport openssh only');
    expect(() => resolveCopyOptions({ inplace: true })).toThrow('--inplace writes the changed ranges into the existing destination file and works with --delta only: add --delta');
    expect(() => resolveCopyOptions({ compare: 'hash' })).toThrow("--compare must be one of exists, size, mtime, checksum, got 'hash'");
  });

  it('accepts numbers for the numeric options', () => {
    const r = resolveCopyOptions({ agents: 4096, streams: 64, rangeSize: 1073741824, window: 1, maxResends: 100 });
    expect(r.agents).toBe(4096);
    expect(r.streams).toBe(64);
    expect(r.rangeBytes).toBe(1073741824);
    expect(r.windowBytes).toBe(1);
    expect(r.maxResends).toBe(100);
  });

  it('takes --send-window 0 as the whole server window, and the smallest cap', () => {
    expect(resolveCopyOptions({ sendWindow: '0' }).sendWindowBytes).toBe(0);
    expect(resolveCopyOptions({ sendWindow: 0 }).sendWindowBytes).toBe(0);
    expect(resolveCopyOptions({ sendWindow: '128KiB' }).sendWindowBytes).toBe(131072);
  });

  it('accepts the smallest allowed values', () => {
    const r = resolveCopyOptions({ agents: 1, streams: '1', rangeSize: '1MiB', ackWait: '1s', connectTimeout: '1ms' });
    expect(r.agents).toBe(1);
    expect(r.streams).toBe(1);
    expect(r.rangeBytes).toBe(1048576);
    expect(r.ackWaitMs).toBe(1000);
    expect(r.connectTimeoutMs).toBe(1);
  });

  it('accepts a range size above 4 GiB that is a whole number of MiB', () => {
    expect(resolveCopyOptions({ rangeSize: '6GiB' }).rangeBytes).toBe(6442450944);
    expect(resolveCopyOptions({ rangeSize: '6g' }).rangeBytes).toBe(6442450944);
  });

  it('accepts helper and auto modes', () => {
    expect(resolveCopyOptions({ mode: 'helper' }).mode).toBe('helper');
    expect(resolveCopyOptions({ mode: 'auto' }).mode).toBe('auto');
  });

  it('accepts tls, ws and wss NATS URLs', () => {
    expect(resolveCopyOptions({ nats: 'tls://n:4222' }).natsUrl).toBe('tls://n:4222');
    expect(resolveCopyOptions({ nats: 'ws://n:8080' }).natsUrl).toBe('ws://n:8080');
    expect(resolveCopyOptions({ nats: 'wss://n' }).natsUrl).toBe('wss://n');
  });

  it('selects quiet output with quiet alone', () => {
    expect(resolveCopyOptions({ quiet: true }).output).toBe('quiet');
    expect(resolveCopyOptions({ json: false, quiet: false }).output).toBe('human');
  });
});

describe('resolveCopyOptions: invalid values are USAGE errors naming the option and the value', () => {
  const cases: Array<[string, CopyOptions, string]> = [
    ['agents zero', { agents: 0 }, "--agents must be a whole number from 1 to 4096, got '0'"],
    ['agents above the limit', { agents: 4097 }, "--agents must be a whole number from 1 to 4096, got '4097'"],
    ['agents negative text', { agents: '-1' }, "--agents must be a whole number from 1 to 4096, got '-1'"],
    ['agents fractional', { agents: 2.5 }, "--agents must be a whole number from 1 to 4096, got '2.5'"],
    ['agents fractional text', { agents: '2.0' }, "--agents must be a whole number from 1 to 4096, got '2.0'"],
    ['agents words', { agents: 'many' }, "--agents must be a whole number from 1 to 4096, got 'many'"],
    ['agents empty text', { agents: '' }, "--agents must be a whole number from 1 to 4096, got ''"],
    ['agents NaN', { agents: Number.NaN }, "--agents must be a whole number from 1 to 4096, got 'NaN'"],
    ['streams zero', { streams: '0' }, "--streams must be a whole number from 1 to 64, got '0'"],
    ['streams above the limit', { streams: 65 }, "--streams must be a whole number from 1 to 64, got '65'"],
    ['max-resends negative', { maxResends: -1 }, "--max-resends must be a whole number from 0 to 100, got '-1'"],
    ['max-resends above the limit', { maxResends: '101' }, "--max-resends must be a whole number from 0 to 100, got '101'"],
    ['range size not a size', { rangeSize: 'big' }, "--range-size must be a positive size like 64MiB, got 'big'"],
    ['range size zero', { rangeSize: '0' }, "--range-size must be a positive size like 64MiB, got '0'"],
    ['range size negative number', { rangeSize: -1048576 }, "--range-size must be a positive size like 64MiB, got '-1048576'"],
    ['range size fractional number', { rangeSize: 1.5 }, "--range-size must be a positive size like 64MiB, got '1.5'"],
    ['range size unknown unit', { rangeSize: '64PiB' }, "--range-size must be a positive size like 64MiB, got '64PiB'"],
    ['range size decimal megabytes', { rangeSize: '64MB' }, "--range-size must be a multiple of 1MiB (ranges are aligned to 1 MiB), got '64MB'"],
    ['range size half a MiB', { rangeSize: '1.5MiB' }, "--range-size must be a multiple of 1MiB (ranges are aligned to 1 MiB), got '1.5MiB'"],
    ['range size unaligned number', { rangeSize: 4096 }, "--range-size must be a multiple of 1MiB (ranges are aligned to 1 MiB), got '4096'"],
    ['hash unknown', { hash: 'md5' }, "--hash must be one of xxh3, crc32, sha256, got 'md5'"],
    ['hash in capitals', { hash: 'XXH3' }, "--hash must be one of xxh3, crc32, sha256, got 'XXH3'"],
    ['hash empty', { hash: '' }, "--hash must be one of xxh3, crc32, sha256, got ''"],
    ['mode unknown', { mode: 'scp' }, "--mode must be auto, helper, python or sftp, got 'scp'"],
    ['nats without a scheme', { nats: 'localhost:4222' }, "--nats must be a URL like nats://host:4222, got 'localhost:4222'"],
    ['nats with an http scheme', { nats: 'http://n:4222' }, "--nats must be a URL like nats://host:4222, got 'http://n:4222'"],
    ['nats with a space', { nats: 'nats://a b' }, "--nats must be a URL like nats://host:4222, got 'nats://a b'"],
    ['ack-wait not a duration', { ackWait: 'soon' }, "--ack-wait must be a positive duration like 30s, got 'soon'"],
    ['ack-wait zero', { ackWait: '0s' }, "--ack-wait must be a positive duration like 30s, got '0s'"],
    ['ack-wait below a second', { ackWait: '999ms' }, "--ack-wait must be at least 1s, got '999ms'"],
    ['window zero', { window: 0 }, "--window must be a positive size like 8MiB, got '0'"],
    ['window not a size', { window: '8 furlongs' }, "--window must be a positive size like 8MiB, got '8 furlongs'"],
    ['send-window below four OpenSSH packets', { sendWindow: '64KiB' }, "--send-window must be 0 (the server's whole window) or a size of at least 128KiB like 512KiB, got '64KiB'"],
    ['send-window not a size', { sendWindow: 'big' }, "--send-window must be 0 (the server's whole window) or a size of at least 128KiB like 512KiB, got 'big'"],
    ['send-window negative', { sendWindow: -1 }, "--send-window must be 0 (the server's whole window) or a size of at least 128KiB like 512KiB, got '-1'"],
    ['connect-timeout in days', { connectTimeout: '1d' }, "--connect-timeout must be a positive duration like 20s, got '1d'"],
    ['connect-timeout zero', { connectTimeout: '0' }, "--connect-timeout must be a positive duration like 20s, got '0'"],
  ];

  it.each(cases)('rejects %s', (_name, options, message) => {
    expect(usageMessage(options)).toBe(message);
  });

  it('rejects an empty remote command', () => {
    expect(usageMessage({ remoteCmd: '' })).toBe('--remote-cmd must not be empty');
  });

  it('rejects a remote command of only spaces', () => {
    expect(usageMessage({ remoteCmd: '   ' })).toBe('--remote-cmd must not be empty');
  });

  it('rejects --json together with --quiet', () => {
    expect(usageMessage({ json: true, quiet: true })).toBe('--json and --quiet cannot be used together');
  });
});
