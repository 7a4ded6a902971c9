import { describe, expect, it } from 'vitest';
import type { RemoteHost, SshRoute, SshSettings } from '@ferry/core';
import { classifySshFailure, opensshArgs } from '../src/openssh.js';

const target: RemoteHost = { host: 'dtn1.example.org', port: 2222, user: 'alice' };
const ssh: SshSettings = { knownHostsFile: '/home/alice/kh', identityFiles: ['/home/alice/.ssh/id_hpc'], connectTimeoutMs: 20_000, transport: 'openssh', sshCommand: ['ssh', '-F', '/etc/ferry/ssh_config'] };

describe('opensshArgs', () => {
  it('puts the leading --ssh-cmd words first, then strict, non-interactive options, then host and command', () => {
    const { file, args } = opensshArgs(target, { ...ssh, knownHostsGiven: true }, {}, 'ferry serve');
    expect(file).toBe('ssh');
    expect(args.slice(0, 2)).toEqual(['-F', '/etc/ferry/ssh_config']);
    expect(args).toContain('BatchMode=yes');
    expect(args).toContain('StrictHostKeyChecking=yes');
    expect(args).toContain('UserKnownHostsFile="/home/alice/kh"');
    expect(args).toContain('ConnectTimeout=20');
    expect(args.slice(-3)).toEqual(['--', 'dtn1.example.org', 'ferry serve']);
    expect(args.join(' ')).toContain('-p 2222 -l alice -i /home/alice/.ssh/id_hpc');
  });

  it('passes -F on, and leaves to ssh the port and user its configuration gives (only those the location gave go on the command line)', () => {
    const route: SshRoute = { hostName: '10.1.2.3', identityFiles: [], knownHostsFiles: [], globalKnownHostsFiles: [], connectTimeoutMs: 20_000, keepaliveIntervalMs: 15_000, keepaliveCountMax: 4 };
    const fromConfig: RemoteHost = { host: 'mydtn', port: 2222, user: 'alice', label: 'mydtn', route };
    const { args } = opensshArgs(fromConfig, { ...ssh, sshCommand: ['ssh'], configFile: '/home/alice/hpc_config' }, {}, 'ferry serve');
    expect(args.slice(0, 2)).toEqual(['-F', '/home/alice/hpc_config']);
    expect(args).not.toContain('-p');
    expect(args).not.toContain('-l');
    expect(args.slice(-3)).toEqual(['--', 'mydtn', 'ferry serve']);
    const given = opensshArgs({ ...fromConfig, route: { ...route, portGiven: true, userGiven: true } }, ssh, {}, 'pwd').args.join(' ');
    expect(given).toContain('-p 2222 -l alice');
    // The coordinator may record a new key only where the host's route says so.
    expect(opensshArgs(fromConfig, ssh, { recordNewHostKeys: true }, 'pwd').args).toContain('StrictHostKeyChecking=yes');
    expect(opensshArgs({ ...fromConfig, route: { ...route, acceptNewHostKey: true } }, ssh, { recordNewHostKeys: true }, 'pwd').args).toContain('StrictHostKeyChecking=accept-new');
    expect(opensshArgs({ ...fromConfig, route: { ...route, acceptNewHostKey: true } }, ssh, {}, 'pwd').args).toContain('StrictHostKeyChecking=yes');
  });

  it('leaves known_hosts to ssh\'s configuration unless --known-hosts was given, and accepts new keys only when asked', () => {
    const { args } = opensshArgs(target, ssh, { recordNewHostKeys: true }, 'pwd');
    expect(args.some((a) => a.startsWith('UserKnownHostsFile'))).toBe(false);
    expect(args).toContain('StrictHostKeyChecking=accept-new');
  });
});

describe('classifySshFailure', () => {
  const classify = (stderr: string, code: number | null = 255) => classifySshFailure(stderr, code, target, ssh, 'ferry serve');

  it('tells a changed host key from an unknown one', () => {
    const changed = classify('@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@\nHost key verification failed.\n');
    expect(changed.code).toBe('HOST_KEY_CHANGED');
    expect(changed.message).toContain("ssh-keygen -R [dtn1.example.org]:2222 -f /home/alice/kh");
    expect(classify('No ED25519 host key is known for [dtn1.example.org]:2222 and you have requested strict checking.\nHost key verification failed.\n').code).toBe('HOST_KEY_UNKNOWN');
  });

  it('quotes what ssh said about authentication and reachability', () => {
    const auth = classify('alice@dtn1.example.org: Permission denied (publickey,gssapi-with-mic).\n');
    expect(auth.code).toBe('SSH_AUTH_FAILED');
    expect(auth.message).toContain('ssh said: alice@dtn1.example.org: Permission denied (publickey,gssapi-with-mic).');
    expect(classify('ssh: connect to host dtn1.example.org port 2222: Connection refused\n').code).toBe('HOST_UNREACHABLE');
    expect(classify('ssh: Could not resolve hostname dtn1.example.org: Name or service not known\n').code).toBe('HOST_UNREACHABLE');
    expect(classify('', 255).message).toContain('ssh said: exit 255');
  });

  it('calls anything else from the remote side a missing helper', () => {
    const missing = classify('bash: line 1: ferry: command not found\n', 127);
    expect(missing.code).toBe('HELPER_UNAVAILABLE');
    expect(missing.message).toContain("cannot start 'ferry serve' on dtn1.example.org:2222 (command not found)");
    expect(classify('Traceback: something broke\n', 1).message).toContain('(Traceback: something broke)');
  });
});
