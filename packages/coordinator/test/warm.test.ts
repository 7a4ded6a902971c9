import { describe, expect, it } from 'vitest';
import { warmHint } from '../src/warm.js';

describe('warmHint', () => {
  const hosts = [
    { host: 'dtn1', port: 22, user: 'u' },
    { host: 'dtn2', port: 2222, user: 'u' },
  ];
  const ssh = { knownHostsFile: '/k', identityFiles: ['/id'], connectTimeoutMs: 20_000 };
  const options = { firstStreams: 3, maxConnectionsPerHost: 0, mode: 'auto' as const, remoteCommand: 'ferry serve', windowBytes: 8 << 20 };

  it('lists the host of every slot the agent starts with, as the agent will use them', () => {
    const hint = warmHint(1, 3, hosts, ssh, options);
    // Agent 1 of 3 starts with global slots 1, 4, 7: hosts 1, 0, 1.
    expect(hint.connections.map((c) => c.host.host)).toEqual(['dtn2', 'dtn1', 'dtn2']);
    expect(hint).toMatchObject({ ssh, mode: 'auto', remoteCommand: 'ferry serve', windowBytes: 8 << 20 });
    // The tuner starts with one stream: one connection ahead.
    expect(warmHint(0, 1, hosts, ssh, { ...options, firstStreams: 1 }).connections.map((c) => c.host.host)).toEqual(['dtn1']);
  });

  it('leaves out slots a per-host cap keeps idle, and staggers later waves', () => {
    // 2 per host over 2 hosts: global slots 0-3 work; agent 1 of 3 has 1 (and 4, 7 idle).
    expect(warmHint(1, 3, hosts, ssh, { ...options, maxConnectionsPerHost: 2 }).connections.map((c) => c.host.host)).toEqual(['dtn2']);
    // Agent 3 of 4: global slots 3, 7, 11; the third is in the second wave.
    expect(warmHint(3, 4, hosts, ssh, options).connections.map((c) => c.delayMs)).toEqual([0, 0, 500]);
  });

  it('opens nothing ahead for slots beyond the work item count (they connect only if work reaches them)', () => {
    // 4 work items, 2 agents of 3 streams: global slots 0, 2 (agent 0) and 1, 3 (agent 1) get work.
    expect(warmHint(0, 2, hosts, ssh, options, 4).connections).toHaveLength(2);
    expect(warmHint(1, 2, hosts, ssh, options, 4).connections.map((c) => c.host.host)).toEqual(['dtn2', 'dtn2']);
    expect(warmHint(1, 3, hosts, ssh, options, 2).connections.map((c) => c.host.host)).toEqual(['dtn2']);
    expect(warmHint(2, 3, hosts, ssh, options, 2).connections).toEqual([]);
  });
});
